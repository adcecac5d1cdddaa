"""Attention heat-map overlays on the slide thumbnails (Fig. 2 of the study).

Three steps: :func:`select_overlays` chooses the model × target and the patients to draw (and
says why the others are not drawn); :func:`draw_overlay` renders one figure from a thumbnail,
the slide's tiles and attention and its annotations; :func:`save_overlays` reads the
thumbnails, draws and writes ``<patient_id>.png``. Beside them,
:func:`save_attention_geojson` writes every slide's tiles with their attention per target as
``<patient_id>.geojson``, which QuPath imports (*File → Import objects from file*) to browse
the attention on the full-resolution slide.

Each figure shows the attention scaled to the slide's maximum,

    a'_i = a_i / max_j a_j,

averaged over the tiles covering each raster cell (:class:`~.annotations.TileRaster`), with the
top-K tiles (:func:`~.attention.top_k`, :func:`~.attention.default_k`) and the IoU of
:func:`~.attention.colocalise_slide` in the title.

Example
-------
>>> tiles = pd.read_parquet("TRAIN/evaluation/attention_tiles.parquet")   # doctest: +SKIP
>>> cohort = load_manifest("cohort.csv")                                   # doctest: +SKIP
>>> out = "TRAIN/evaluation/attention"
>>> save_overlays(tiles, cohort.frame, cohort.path.parent, out)            # doctest: +SKIP
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ..logs import event, get_logger
from ..names import TARGETS
from ..rundir import check_name
from .annotations import Annotations, TileRaster, load_patient_annotations, resolve_path
from .attention import check_tiles, colocalise_slide, top_k

log = get_logger(__name__)

#: Target drawn when none is asked for: the study's first (ERS–CAF activity).
DEFAULT_TARGET = TARGETS[0]


# --------------------------------------------------------------------------- selection
@dataclass(frozen=True)
class OverlayInput:
    """What one overlay is drawn from: the patient's slide, annotations and attention tiles."""

    patient_id: str
    slide: Path
    mpp: float | None
    annotations: Annotations
    tiles: pd.DataFrame  # this patient's rows of the chosen model × target


@dataclass(frozen=True)
class OverlaySelection:
    """The output of :func:`select_overlays`.

    Attributes
    ----------
    model, target : the attention map drawn.
    inputs : one :class:`OverlayInput` per overlay, in drawing order.
    skipped : patient → why no overlay is drawn (no tiles, annotations or slide).
    """

    model: str
    target: str
    inputs: list[OverlayInput] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)


def _pick(values: list[str], preferred: str | None, what: str, wanted: str | None) -> str:
    if wanted is not None:
        if wanted not in values:
            raise ValueError(f"{what} '{wanted}' is not in the attention tiles ({values})")
        return wanted
    return preferred if preferred in values else values[0]


def _spread_over_grades(candidates: list[str], grades: dict, limit: int) -> list[str]:
    """Up to ``limit`` patients, round-robin over grades (ascending, missing last)."""
    by_grade: dict = {}
    for pid in sorted(candidates):
        g = grades.get(pid)
        by_grade.setdefault(-1 if g is None or pd.isna(g) else int(g), []).append(pid)
    order = sorted(by_grade, key=lambda g: (g < 0, g))
    chosen: list[str] = []
    while len(chosen) < limit and any(by_grade[g] for g in order):
        for g in order:
            if by_grade[g] and len(chosen) < limit:
                chosen.append(by_grade[g].pop(0))
    return chosen


def _overlay_input(
    frame: pd.DataFrame,
    pid: str,
    tiles: pd.DataFrame,
    manifest_dir: Path | str | None,
    cache: dict,
) -> tuple[OverlayInput | None, str]:
    """A patient's :class:`OverlayInput`, or ``None`` and why the patient cannot be drawn.
    The overlay is drawn on the patient's first slide, the one its manifest row names (and its
    annotations are drawn on); further slides are exported as GeoJSON only."""
    slide_tiles = tiles[tiles["patient_id"] == pid]
    if "slide_id" in slide_tiles and len(slide_tiles):
        slide_tiles = slide_tiles[slide_tiles["slide_id"] == slide_tiles["slide_id"].iloc[0]]
    if slide_tiles.empty:
        return None, "no attention tiles"
    annotations, reason = load_patient_annotations(frame, pid, manifest_dir, cache)
    if annotations is None:
        return None, reason
    wsi = resolve_path(frame.at[pid, "wsi"], manifest_dir) if "wsi" in frame.columns else None
    if wsi is None or not Path(wsi).is_file():
        return None, "no slide" if wsi is None else f"slide not found: {wsi}"
    mpp = frame.at[pid, "wsi_mpp"] if "wsi_mpp" in frame.columns else None
    mpp = None if mpp is None or pd.isna(mpp) else float(mpp)
    return OverlayInput(pid, wsi, mpp, annotations, slide_tiles), ""


def select_overlays(
    tiles: pd.DataFrame,
    manifest_frame: pd.DataFrame,
    manifest_dir: Path | str | None,
    patients: list[str] | None = None,
    max_patients: int = 6,
    *,
    model: str | None = None,
    target: str | None = None,
) -> OverlaySelection:
    """Choose the overlays :func:`save_overlays` draws; draws, writes and logs nothing.

    Parameters
    ----------
    tiles : the contract's attention-tile table (:data:`~.attention.TILE_COLUMNS`).
    manifest_frame : manifest frame indexed by ``patient_id`` with ``annotations`` and ``wsi``
        (absolute, or relative to ``manifest_dir``) and optionally ``wsi_mpp`` and
        ``fibrosis_grade``.
    manifest_dir : directory relative paths are resolved against.
    patients : patients to draw, in this order; default: up to ``max_patients`` of those with
        tiles, annotations and a slide, round-robin over fibrosis grades (ascending, missing
        last; patients by id within a grade).
    max_patients : the limit of the default choice.
    model, target : the attention map; default the proposed model (``fusion``) and
        :data:`DEFAULT_TARGET` when present, else the first in sorted order.

    Returns
    -------
    :class:`OverlaySelection`. The annotation files are read (to drop unreadable ones) and
    the slides' existence checked; the slides themselves are not opened.

    Raises
    ------
    ValueError
        For a ``model`` or ``target`` not in the tiles, or an invalid tile table
        (:func:`~.attention.check_tiles`).
    """
    from ..names import PROPOSED

    tiles = check_tiles(tiles)
    model = _pick(sorted(tiles["model"].unique()), PROPOSED, "model", model)
    target = _pick(sorted(tiles["target"].unique()), DEFAULT_TARGET, "target", target)
    tiles = tiles[(tiles["model"] == model) & (tiles["target"] == target)]
    frame = manifest_frame.copy()
    frame.index = frame.index.astype(str)
    cache: dict = {}
    found: dict[str, OverlayInput] = {}
    inputs: list[OverlayInput] = []
    skipped: dict[str, str] = {}
    requested = sorted(tiles["patient_id"].unique()) if patients is None else list(patients)
    for pid in requested:
        item, reason = _overlay_input(frame, pid, tiles, manifest_dir, cache)
        if item is None:
            skipped[pid] = reason
        else:
            found[pid] = item
            inputs.append(item)
    if patients is None:
        grades = {
            pid: (frame.at[pid, "fibrosis_grade"] if "fibrosis_grade" in frame else None)
            for pid in found
        }
        inputs = [found[pid] for pid in _spread_over_grades(list(found), grades, int(max_patients))]
    return OverlaySelection(model, target, inputs, skipped)


# --------------------------------------------------------------------------- drawing
def _heat_map(x, y, tile_px, attention, subdivisions: int) -> tuple[np.ndarray, tuple]:
    """Attention / slide maximum averaged over the tiles of each cell (NaN off the tiles),
    and its level-0 ``imshow`` extent ``(left, right, bottom, top)``."""
    grid = TileRaster.build(x, y, tile_px, subdivisions)
    heat = np.zeros(grid.shape)
    count = np.zeros(grid.shape)
    scaled = attention / attention.max() if attention.max() > 0 else attention
    for (ra, rb, ca, cb), value in zip(grid.spans, scaled, strict=True):
        heat[ra:rb, ca:cb] += value
        count[ra:rb, ca:cb] += 1
    heat = np.divide(heat, count, out=np.full(grid.shape, np.nan), where=count > 0)
    x0, y0 = grid.origin
    extent = (x0, x0 + grid.shape[1] * grid.cell, y0 + grid.shape[0] * grid.cell, y0)
    return heat, extent


def _draw_fibrosis(ax, annotations: Annotations) -> None:
    """Fibrosis outlines in white, holes dashed; the first exterior ring carries the label."""
    for rings in annotations.polygons:
        for i, ring in enumerate(rings):
            closed = np.vstack([ring, ring[:1]])
            ax.plot(
                closed[:, 0], closed[:, 1], color="white", lw=1.2, ls="-" if i == 0 else "--",
                label="fibrosis" if i == 0 and rings is annotations.polygons[0] else None,
            )  # fmt: skip


def _draw_top_k(ax, x, y, side, attention, k: int) -> None:
    """The top-K tiles as orange squares; the highest carries the label."""
    from matplotlib.patches import Rectangle

    for rank, i in enumerate(top_k(attention, k)):
        ax.add_patch(
            Rectangle(
                (x[i], y[i]), side[i], side[i], fill=False, ec="#E69F00", lw=0.9,
                label=f"top-{k} tiles" if rank == 0 else None,
            )
        )  # fmt: skip


def draw_overlay(
    thumbnail: np.ndarray,
    dimensions: tuple[int, int],
    x,
    y,
    tile_px,
    attention,
    annotations: Annotations,
    *,
    k: int,
    title: str,
    subdivisions: int = 4,
):
    """One attention overlay: a thumbnail with heat map, top-K tiles and annotations.

    The attention, scaled to the slide's maximum, is drawn in *viridis* over the tiles; the
    top-K tiles as orange squares, the fibrosis outline in white (holes dashed), the exclusion
    points as sky-blue ×, with a colour bar.

    Parameters
    ----------
    thumbnail : ``(h, w[, c])`` image of the whole slide.
    dimensions : level-0 ``(width, height)`` of the slide; the axes are in level-0 px.
    x, y, tile_px : level-0 top-left corners and side(s) of the ``N`` tiles.
    attention : ``(N,)`` non-negative attention weights.
    annotations : the slide's :class:`~.annotations.Annotations`.
    k : number of top tiles outlined.
    title : the axes title.
    subdivisions : heat-map cells per tile side.

    Returns
    -------
    matplotlib.figure.Figure
        A pyplot figure; the caller saves and closes it.
    """
    import matplotlib.pyplot as plt

    x, y, attention = np.asarray(x), np.asarray(y), np.asarray(attention, float)
    side = np.broadcast_to(np.asarray(tile_px), x.shape)
    width, height = dimensions
    heat, extent = _heat_map(x, y, side, attention, subdivisions)
    fig, ax = plt.subplots(figsize=(7, 7 * height / width + 0.6))
    ax.imshow(thumbnail, extent=(0, width, height, 0), interpolation="bilinear")
    image = ax.imshow(
        np.ma.masked_invalid(heat), extent=extent, cmap="viridis", vmin=0, vmax=1,
        alpha=0.55, interpolation="nearest",
    )  # fmt: skip
    _draw_fibrosis(ax, annotations)
    _draw_top_k(ax, x, y, side, attention, k)
    if len(annotations.points):
        ax.scatter(
            annotations.points[:, 0], annotations.points[:, 1], marker="x", s=18,
            color="#56B4E9", linewidths=1.0, label="immune exclusion",
        )  # fmt: skip
    ax.set_xlim(0, width)
    ax.set_ylim(height, 0)
    ax.set_axis_off()
    if annotations.polygons or len(annotations.points):
        ax.legend(
            loc="lower right", fontsize=7, facecolor="0.3", labelcolor="white", framealpha=0.8
        )
    bar = fig.colorbar(image, ax=ax, fraction=0.04, pad=0.02)
    bar.set_label("attention / slide maximum")
    ax.set_title(title, fontsize=9)
    return fig


# --------------------------------------------------------------------------- saving
def _read_thumbnail(slide_path: Path, mpp: float | None, max_pixels: int):
    """``(thumbnail, (width, height))`` of a slide; raises ``SlideError`` when unreadable.

    The thumbnail holds at most ``max_pixels`` pixels and is read by
    :func:`stromalens.wsi.tiling.read_thumbnail` from the smallest level at least that large, in
    chunks of at most 2048² level pixels, each downsampled as it is read: memory stays bounded
    by the thumbnail on any slide, a pyramid-less 100k × 80k one included.
    """
    from ..wsi.reader import open_slide
    from ..wsi.tiling import read_thumbnail

    with open_slide(slide_path, mpp=mpp) as slide:
        thumbnail, _ = read_thumbnail(slide, slide.mpp, max_pixels)
        return thumbnail, slide.dimensions


def _log_skipped(skipped: dict[str, str]) -> None:
    if skipped:
        event(
            log,
            "attention overlays skipped patients",
            logging.WARNING,
            n=len(skipped),
            patients=",".join(sorted(skipped)),
            reasons="; ".join(sorted(set(skipped.values()))),
        )


def save_overlays(
    tiles: pd.DataFrame,
    manifest_frame: pd.DataFrame,
    manifest_dir: Path | str | None,
    out_dir: Path | str,
    patients: list[str] | None = None,
    max_patients: int = 6,
    *,
    model: str | None = None,
    target: str | None = None,
    k_fraction: float = 0.1,
    k: int | None = None,
    subdivisions: int = 4,
    max_thumbnail_pixels: int = 2_000_000,
    dpi: int = 110,
) -> list[Path]:
    """Heatmap overlays ``out_dir/<patient_id>.png`` of one model × target's attention.

    The patients, model and target are chosen by :func:`select_overlays` (same arguments);
    each figure is :func:`draw_overlay` on the slide thumbnail (read with
    :func:`stromalens.wsi.reader.open_slide`), titled with the patient, model, target and the
    IoU of the top-K tiles (``k``, ``k_fraction``: :func:`~.attention.default_k`). Patients
    without a slide, annotations or tiles, or whose slide cannot be read, are skipped and
    logged.

    Returns
    -------
    list of Path
        The written files, in drawing order.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..wsi.reader import SlideError

    choice = select_overlays(
        tiles, manifest_frame, manifest_dir, patients, max_patients, model=model, target=target
    )
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    skipped = dict(choice.skipped)
    written = []
    for item in choice.inputs:
        pid, ann = item.patient_id, item.annotations
        x, y = item.tiles["x"].to_numpy(), item.tiles["y"].to_numpy()
        side, att = item.tiles["tile_px"].to_numpy(), item.tiles["attention"].to_numpy()
        metrics = colocalise_slide(
            x, y, side, att, ann, k=k, k_fraction=k_fraction, n_perm=0, subdivisions=subdivisions
        )
        try:
            thumb, dimensions = _read_thumbnail(item.slide, item.mpp, max_thumbnail_pixels)
        except SlideError as exc:
            skipped[pid] = str(exc)
            continue
        title = (
            f"{pid} · {choice.model} · {choice.target} · "
            f"IoU(top-{metrics['k']}) = {metrics['iou']:.2f}"
        )
        fig = draw_overlay(
            thumb, dimensions, x, y, side, att, ann, k=metrics["k"], title=title,
            subdivisions=subdivisions,
        )  # fmt: skip
        path = out_dir / f"{pid}.png"
        fig.savefig(path, dpi=dpi, bbox_inches="tight")
        plt.close(fig)
        written.append(path)
    _log_skipped(skipped)
    return written


# --------------------------------------------------------------------------- QuPath GeoJSON
#: QuPath's object type of the exported tiles (a ``PathTileObject``; ``"detection"`` also
#: imports, as a detection).
GEOJSON_OBJECT_TYPE = "tile"


def measurement_name(target: str) -> str:
    """The QuPath measurement holding a tile's attention for ``target``."""
    return f"attention {target}"


def attention_geojson(
    tiles: pd.DataFrame, patient_id: str, model: str, slide_id: str | None = None
) -> dict:
    """The tiles of one slide as a GeoJSON ``FeatureCollection`` in QuPath's import layout.

    One ``Feature`` per tile: a ``Polygon`` geometry, the closed ring
    ``(x, y) → (x+s, y) → (x+s, y+s) → (x, y+s) → (x, y)`` of its level-0 top-left corner
    ``(x, y)`` and side ``s`` (QuPath's coordinates: pixels of the full-resolution image, origin
    at its top-left corner — QuPath docs, "Exporting annotations: GeoJSON"); ``properties`` with
    ``objectType`` :data:`GEOJSON_OBJECT_TYPE`, a ``name`` and ``measurements``, a map of
    :func:`measurement_name` to the tile's attention weight for each target of ``model`` (the
    raw weight a_i, summing to 1 over the slide's tiles; QuPath ≥ 0.4 reads measurements as a
    name → number map). NaN weights are left out (JSON has no NaN).

    Parameters
    ----------
    tiles : the contract's attention-tile table (:data:`~.attention.TILE_COLUMNS`).
    patient_id, model : the patient and the model whose attention is exported.
    slide_id : which of the patient's slides (default: the one named after the patient, i.e.
        the only slide of a single-slide patient).
    """
    part = check_tiles(tiles)
    slide_id = str(patient_id) if slide_id is None else str(slide_id)
    part = part[
        (part["patient_id"].astype(str) == str(patient_id))
        & (part["slide_id"] == slide_id)
        & (part["model"] == model)
    ]
    if part.empty:
        raise ValueError(
            f"no attention tiles of patient {patient_id!r}, slide {slide_id!r}, model {model!r}"
        )
    wide = part.pivot_table(
        index=["x", "y", "tile_px"], columns="target", values="attention", aggfunc="first"
    )
    targets = [t for t in TARGETS if t in wide.columns] + sorted(
        t for t in wide.columns if t not in TARGETS
    )
    features = []
    for i, ((x, y, side), row) in enumerate(wide.iterrows()):
        x, y, side = float(x), float(y), float(side)
        ring = [[x, y], [x + side, y], [x + side, y + side], [x, y + side], [x, y]]
        measurements = {measurement_name(t): float(row[t]) for t in targets if np.isfinite(row[t])}
        features.append(
            {
                "type": "Feature",
                "geometry": {"type": "Polygon", "coordinates": [ring]},
                "properties": {
                    "objectType": GEOJSON_OBJECT_TYPE,
                    "name": f"{model} tile {i}",
                    "measurements": measurements,
                },
            }
        )
    return {"type": "FeatureCollection", "features": features}


def save_attention_geojson(
    tiles: pd.DataFrame, out_dir: Path | str, model: str | None = None
) -> list[Path]:
    """``out_dir/<slide_id>.geojson`` (:func:`attention_geojson`) for every slide with tiles
    of ``model`` (default: the proposed model when present, else the first in sorted order),
    written atomically; returns the files. A single-slide patient's slide id is the patient id;
    a patient with several slides gets one file per slide, each in that slide's coordinates. A
    slide id that is not a safe file name is refused (:func:`stromalens.rundir.check_name`)."""
    import json

    from ..names import PROPOSED

    tiles = check_tiles(tiles)
    model = _pick(sorted(tiles["model"].unique()), PROPOSED, "model", model)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    slides = tiles.loc[tiles["model"] == model, ["patient_id", "slide_id"]].drop_duplicates()
    for pid, sid in sorted(slides.astype(str).itertuples(index=False)):
        path = out_dir / f"{check_name(sid, 'slide')}.geojson"
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(attention_geojson(tiles, pid, model, sid)), encoding="utf-8")
        tmp.replace(path)
        written.append(path)
    event(log, "attention written as QuPath GeoJSON", slides=len(written), model=model)
    return written
