"""Attention co-localisation with the pathologist's annotations (analysis 7 of the study).

Does a model attend where the pathologist sees fibrosis and immune exclusion? For every
patient × model × target the tiles with the K highest attention weights are compared with the
slide's annotations (QuPath GeoJSON, level-0 pixel coordinates: a ``Fibrosis`` (Multi)Polygon,
holes allowed, and ``Immune exclusion`` (Multi)Points), and with what attention shuffled across
the slide's tiles would give.

Definitions
-----------
Raster. All areas are measured on one raster per slide whose cells are ``c = tile_px /
subdivisions`` level-0 px wide (default 8 × 8 cells per tile), with its origin at the top-left
tile corner. A tile covers the ``tile_px / c`` × ``tile_px / c`` block of cells starting at its
corner, snapped to the nearest cell (so by at most ``c / 2`` px). A cell belongs to the
fibrosis region when its *centre* lies inside the polygon by the even–odd rule (holes are
outside; see :func:`rasterise_polygons`). Because attention can only fall on tiles, both the
fibrosis region and the exclusion points are restricted to the tiled area ``D`` (the union of
the slide's tiles): fibrosis outside ``D`` (background, tiles removed by QC) would otherwise
cap the IoU below 1 whatever the model did.

Top-K. ``T`` is the union of the ``K`` tiles of highest attention, with ``K = max(1,
round(k_fraction · N))`` of the slide's ``N`` tiles unless ``k`` is given (``min(k, N)``). Ties
are broken by position: :func:`colocalisation` first sorts a slide's tiles by ``y``, then ``x``,
so no result depends on the row order of the table.

IoU (Jaccard index) of the top-K tiles and the fibrosis region ``F = F_annotated ∩ D``, in
area (cells):

    IoU = |T ∩ F| / |T ∪ F|.

It is 1 only when the top-K tiles are exactly the fibrotic area; with no fibrosis it is 0.

Hit-rate: the share of the exclusion points inside ``D`` that fall in ``T``,

    hit = #{p : p ∈ T} / #{p : p ∈ D},

``NaN`` for a slide without exclusion points in ``D``. A point belongs to the raster cell that
contains it.

Shuffled baseline: the expected value of each metric when the attention values are randomly
permuted across the slide's tiles (ties broken at random) — equivalently, when ``T`` is a
uniformly random K-subset of the ``N`` tiles. For the hit-rate it is exact: a point covered by
``c_p`` tiles is missed only when none of them is drawn, a hypergeometric probability,

    E[hit] = mean_p [1 − C(N − c_p, K) / C(N, K)],

which is ``K / N`` for non-overlapping tiles. The expected IoU is a ratio and has no such closed
form in general (for binary tiles it is Σ_h P(h) · h / (K + |F| − h) with ``h`` hypergeometric —
the tests check against it), so it is the mean over ``n_perm`` random K-subsets drawn with a
seed derived from ``seed`` and the slide's (patient, model, target).

Summary: per model × target × grade stratum × metric, the mean observed and shuffled values,
``n`` and the two-sided Wilcoxon signed-rank p of the paired differences observed − shuffled
(Wilcoxon 1945; ``scipy.stats.wilcoxon``, zero differences dropped, exact null distribution up
to 50 untied differences, else the normal approximation; ``NaN`` when every difference is 0).
IoU is stratified by the fibrosis grade and the hit-rate by the exclusion grade, ``0-1`` against
``2-3``; rows of stratum ``all`` pool every patient. The strata are compared by a two-sided
Mann–Whitney U test (Mann & Whitney 1947) of the per-patient excess observed − shuffled
(``p_strata``): the excess, not the observed value, since a larger fibrosis region alone raises
the IoU of any attention.

References
----------
Jaccard P. (1912) The distribution of the flora in the alpine zone. New Phytol 11:37–50.
Ilse M., Tomczak J., Welling M. (2018) Attention-based deep multiple instance learning. ICML.
Wilcoxon F. (1945) Individual comparisons by ranking methods. Biometrics Bulletin 1:80–83.
Mann H.B., Whitney D.R. (1947) Ann Math Stat 18:50–60.

Example
-------
>>> tiles = pd.read_parquet("TRAIN/evaluation/attention_tiles.parquet")   # doctest: +SKIP
>>> cohort = load_manifest("cohort.csv")                                   # doctest: +SKIP
>>> result = colocalisation(tiles, cohort.frame, cohort.path.parent)       # doctest: +SKIP
>>> write_colocalisation(result, "TRAIN/evaluation")                       # doctest: +SKIP
>>> save_overlays(tiles, cohort.frame, cohort.path.parent, "TRAIN/evaluation/attention")
"""

from __future__ import annotations

import json
import logging
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd

from ..logs import event, get_logger

log = get_logger(__name__)

#: Columns of the contract's ``attention_tiles.parquet``.
TILE_COLUMNS: tuple[str, ...] = ("patient_id", "model", "target", "x", "y", "tile_px", "attention")
#: Columns of ``attention.csv``: the contract's, then extras. ``grade``/``grade_stratum`` are the
#: fibrosis grade (IoU's stratifier); the exclusion grade (the hit-rate's) follows.
PER_PATIENT_COLUMNS: tuple[str, ...] = (
    "patient_id",
    "model",
    "target",
    "grade",
    "grade_stratum",
    "k",
    "iou",
    "iou_shuffled",
    "hit_rate",
    "hit_rate_shuffled",
    "exclusion_grade",
    "exclusion_stratum",
    "n_tiles",
    "n_points",
    "fibrosis_share",
)
#: Columns of ``attention_summary.csv``: the contract's, then extras.
SUMMARY_COLUMNS: tuple[str, ...] = (
    "model",
    "target",
    "grade_stratum",
    "metric",
    "observed",
    "shuffled",
    "n",
    "p",
    "grade_by",
    "excess",
    "p_strata",
)
#: Columns of the skipped-slide table.
SKIPPED_COLUMNS: tuple[str, ...] = ("patient_id", "model", "target", "reason")
#: QuPath classification names of the annotations (``stromalens.synthetic.annotations``).
FIBROSIS_NAME = "Fibrosis"
EXCLUSION_NAME = "Immune exclusion"
STRATA: tuple[str, ...] = ("0-1", "2-3")
METRIC_GRADE: dict[str, str] = {"iou": "fibrosis_grade", "hit_rate": "exclusion_grade"}
#: Largest raster (cells) built for one slide; lower ``subdivisions`` for bigger slides.
MAX_RASTER_CELLS = 60_000_000


# --------------------------------------------------------------------------- annotations
@dataclass(frozen=True)
class Annotations:
    """A slide's pathologist annotations in level-0 px.

    ``polygons``: each polygon a list of rings (``(n, 2)`` arrays of x, y), the exterior first,
    then its holes. ``points``: ``(m, 2)`` immune-exclusion points.
    """

    polygons: list[list[np.ndarray]] = field(default_factory=list)
    points: np.ndarray = field(default_factory=lambda: np.zeros((0, 2)))


def _class_name(properties: dict | None) -> str:
    cls = (properties or {}).get("classification")
    if isinstance(cls, dict):
        cls = cls.get("name")
    return str(cls or "").strip().lower()


def read_annotations(path: Path | str) -> Annotations:
    """Read QuPath GeoJSON: ``Fibrosis`` (Multi)Polygons and ``Immune exclusion`` (Multi)Points.

    Accepts a FeatureCollection, a single Feature or a list of Features; class names are matched
    case-insensitively; other classes and geometries are ignored. Raises :class:`ValueError` for
    a file that is not GeoJSON.
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"cannot read annotations {path}: {exc}") from None
    if isinstance(data, dict) and data.get("type") == "FeatureCollection":
        features = data.get("features") or []
    elif isinstance(data, dict) and data.get("type") == "Feature":
        features = [data]
    elif isinstance(data, list):
        features = data
    else:
        raise ValueError(f"{path} is not a GeoJSON FeatureCollection, Feature or feature list")
    polygons: list[list[np.ndarray]] = []
    points: list[np.ndarray] = []
    for feature in features:
        if not isinstance(feature, dict) or not isinstance(feature.get("geometry"), dict):
            continue
        name = _class_name(feature.get("properties"))
        kind = feature["geometry"].get("type")
        coords = feature["geometry"].get("coordinates")
        try:
            if name == FIBROSIS_NAME.lower() and kind in ("Polygon", "MultiPolygon"):
                for poly in [coords] if kind == "Polygon" else coords:
                    rings = [np.asarray(r, float).reshape(-1, 2) for r in poly]
                    rings = [r for r in rings if len(r) >= 3]
                    if rings:
                        polygons.append(rings)
            elif name == EXCLUSION_NAME.lower() and kind in ("Point", "MultiPoint"):
                points.append(np.asarray(coords, float).reshape(-1, 2))
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{path}: malformed {kind} coordinates of '{name}': {exc}") from None
    pts = np.concatenate(points) if points else np.zeros((0, 2))
    return Annotations(polygons=polygons, points=pts)


# --------------------------------------------------------------------------- raster
def rasterise_polygons(
    polygons: list[list[np.ndarray]],
    origin: tuple[float, float],
    cell: float,
    shape: tuple[int, int],
) -> np.ndarray:
    """Boolean ``(rows, cols)`` mask of the cells whose centre lies inside the polygons.

    Cell ``(r, c)`` has its centre at ``origin + ((c + ½)·cell, (r + ½)·cell)``. Inside is the
    even–odd rule per polygon (exterior ring and holes together, so holes are outside), and the
    union over polygons; a centre exactly on a left or top edge counts as inside, on a right or
    bottom edge as outside (half-open, so tiled polygons never share a cell).

    Example
    -------
    >>> square = [np.array([[0, 0], [4, 0], [4, 4], [0, 4]])]
    >>> rasterise_polygons([square], (0, 0), 1.0, (5, 5)).sum()
    16
    """
    rows, cols = int(shape[0]), int(shape[1])
    mask = np.zeros((rows, cols), bool)
    ox, oy = float(origin[0]), float(origin[1])
    for rings in polygons:
        starts, ends = [], []
        for ring in rings:
            ring = (np.asarray(ring, float).reshape(-1, 2) - (ox, oy)) / cell - 0.5
            if not np.array_equal(ring[0], ring[-1]):
                ring = np.vstack([ring, ring[:1]])
            starts.append(ring[:-1])
            ends.append(ring[1:])
        a, b = np.concatenate(starts), np.concatenate(ends)  # (E, 2) edges in cell units
        lo, hi = np.minimum(a[:, 1], b[:, 1]), np.maximum(a[:, 1], b[:, 1])
        # Rows whose centre y (an integer r) satisfies lo ≤ r < hi.
        r0 = np.clip(np.ceil(lo), 0, rows).astype(np.int64)
        r1 = np.clip(np.ceil(hi), 0, rows).astype(np.int64)
        span = r1 - r0
        keep = span > 0
        if not keep.any():
            continue
        a, b, r0, span = a[keep], b[keep], r0[keep], span[keep]
        edge = np.repeat(np.arange(len(a)), span)
        offset = np.arange(span.sum()) - np.repeat(np.cumsum(span) - span, span)
        r = r0[edge] + offset
        t = (r - a[edge, 1]) / (b[edge, 1] - a[edge, 1])
        x = a[edge, 0] + t * (b[edge, 0] - a[edge, 0])
        # Crossing at x toggles every cell whose centre c ≥ x.
        first = np.clip(np.ceil(x), 0, cols).astype(np.int64)
        toggles = np.zeros((rows, cols + 1), np.int32)
        np.add.at(toggles, (r, first), 1)
        mask |= (np.cumsum(toggles, axis=1)[:, :cols] % 2).astype(bool)
    return mask


@dataclass
class TileRaster:
    """A slide's tiles on a raster, with the cells grouped into *atoms*.

    An atom is the set of cells covered by exactly the same tiles (for non-overlapping tiles,
    one atom per tile); metrics of any tile selection need only per-atom counts.

    Attributes
    ----------
    origin, cell, shape : level-0 origin, cell side (px) and ``(rows, cols)`` of the raster.
    spans : ``(N, 4)`` int cell bounds of each tile, ``r0, r1, c0, c1`` (half-open).
    atom_of_cell : ``(rows, cols)`` int atom index, −1 outside every tile.
    atom_cells : ``(A,)`` cells of each atom.
    membership : ``(A, N)`` sparse 0/1, atom ``a`` lies in tile ``i``.
    """

    origin: tuple[float, float]
    cell: float
    shape: tuple[int, int]
    spans: np.ndarray
    atom_of_cell: np.ndarray
    atom_cells: np.ndarray
    membership: object

    @property
    def n_tiles(self) -> int:
        return len(self.spans)

    @classmethod
    def build(cls, x, y, tile_px, subdivisions: int = 8) -> TileRaster:
        """Raster of tiles with level-0 top-left corners ``x, y`` and sides ``tile_px``."""
        from scipy import sparse

        x, y = np.asarray(x, float), np.asarray(y, float)
        side = np.broadcast_to(np.asarray(tile_px, float), x.shape)
        if int(subdivisions) < 1:
            raise ValueError(f"subdivisions must be ≥ 1, got {subdivisions!r}")
        cell = float(side.min()) / int(subdivisions)
        origin = (float(x.min()), float(y.min()))
        c0 = np.round((x - origin[0]) / cell).astype(np.int64)
        r0 = np.round((y - origin[1]) / cell).astype(np.int64)
        n = np.maximum(1, np.round(side / cell).astype(np.int64))
        spans = np.stack([r0, r0 + n, c0, c0 + n], axis=1)
        shape = (int(spans[:, 1].max()), int(spans[:, 3].max()))
        if shape[0] * shape[1] > MAX_RASTER_CELLS:
            raise ValueError(
                f"a raster of {shape[0]}×{shape[1]} cells is too large; lower subdivisions "
                f"(now {subdivisions})"
            )
        # Zobrist signature: each cell XORs a random 64-bit key per covering tile.
        keys = np.random.default_rng(0).integers(1, 2**63 - 1, len(x), dtype=np.int64)
        signature = np.zeros(shape, np.int64)
        coverage = np.zeros(shape, np.int32)
        for i, (ra, rb, ca, cb) in enumerate(spans):
            signature[ra:rb, ca:cb] ^= keys[i]
            coverage[ra:rb, ca:cb] += 1
        covered = coverage > 0
        atom_of_cell = np.full(shape, -1, np.int64)
        uniq, inverse, counts = np.unique(
            signature[covered], return_inverse=True, return_counts=True
        )
        atom_of_cell[covered] = inverse
        rows, cols = [], []
        for i, (ra, rb, ca, cb) in enumerate(spans):
            atoms = np.unique(atom_of_cell[ra:rb, ca:cb])
            atoms = atoms[atoms >= 0]
            rows.append(atoms)
            cols.append(np.full(len(atoms), i))
        rows, cols = np.concatenate(rows), np.concatenate(cols)
        membership = sparse.csr_matrix(
            (np.ones(len(rows)), (rows, cols)), shape=(len(uniq), len(x))
        )
        return cls(origin, cell, shape, spans, atom_of_cell, counts, membership)

    def atom_sums(self, mask: np.ndarray) -> np.ndarray:
        """``(A,)`` number of cells of each atom inside a ``shape`` boolean mask."""
        inside = self.atom_of_cell[mask & (self.atom_of_cell >= 0)]
        return np.bincount(inside, minlength=len(self.atom_cells))

    def point_atoms(self, points: np.ndarray) -> np.ndarray:
        """Atom of each level-0 point (the cell containing it), −1 outside the tiled area."""
        points = np.asarray(points, float).reshape(-1, 2)
        col = np.floor((points[:, 0] - self.origin[0]) / self.cell).astype(np.int64)
        row = np.floor((points[:, 1] - self.origin[1]) / self.cell).astype(np.int64)
        ok = (row >= 0) & (row < self.shape[0]) & (col >= 0) & (col < self.shape[1])
        atoms = np.full(len(points), -1, np.int64)
        atoms[ok] = self.atom_of_cell[row[ok], col[ok]]
        return atoms

    def covered_atoms(self, selected: np.ndarray) -> np.ndarray:
        """``(A,)`` bool (or ``(A, B)`` for ``(N, B)`` selections): atom in a selected tile."""
        return np.asarray(self.membership @ np.asarray(selected, float)) > 0


def top_k(attention: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` largest values, ties broken by position (stable)."""
    order = np.argsort(-np.asarray(attention, float), kind="stable")
    return order[: int(k)]


def default_k(n_tiles: int, k_fraction: float = 0.1, k: int | None = None) -> int:
    """``min(k, N)`` if ``k`` is given, else ``max(1, round(k_fraction · N))`` (half up)."""
    if k is not None:
        if int(k) < 1:
            raise ValueError(f"k must be ≥ 1, got {k!r}")
        return min(int(k), n_tiles)
    if not 0 < float(k_fraction) <= 1:
        raise ValueError(f"k_fraction must be in (0, 1], got {k_fraction!r}")
    return min(n_tiles, max(1, int(np.floor(k_fraction * n_tiles + 0.5))))


def expected_hit_probability(coverage: np.ndarray, n_tiles: int, k: int) -> np.ndarray:
    """P(a point covered by ``c`` tiles is in a random K-subset) = 1 − C(N−c, K) / C(N, K)."""
    coverage = np.asarray(coverage, np.int64)
    miss = np.ones(len(coverage))
    for j in range(int(coverage.max(initial=0))):
        step = max(n_tiles - k - j, 0) / (n_tiles - j)
        miss = np.where(coverage > j, miss * step, miss)
    return 1.0 - miss


def colocalise_slide(
    x,
    y,
    tile_px,
    attention,
    annotations: Annotations,
    *,
    k: int | None = None,
    k_fraction: float = 0.1,
    n_perm: int = 1000,
    rng: np.random.Generator | int | None = 0,
    subdivisions: int = 8,
) -> dict:
    """IoU and hit-rate of one slide's top-K tiles, and their shuffled baselines.

    Parameters
    ----------
    x, y : level-0 top-left corners of the ``N`` tiles; ``tile_px`` their level-0 side(s).
    attention : ``(N,)`` non-negative attention weights.
    annotations : the slide's :class:`Annotations`.
    k, k_fraction : see :func:`default_k`.
    n_perm : random K-subsets for the expected IoU (0: ``iou_shuffled`` is NaN).
    rng : generator or seed of those permutations.
    subdivisions : raster cells per tile side.

    Returns
    -------
    dict with ``k, iou, iou_shuffled, hit_rate, hit_rate_shuffled, n_tiles, n_points``
    (exclusion points in the tiled area) and ``fibrosis_share`` (``|F| / |D|``).

    Example
    -------
    >>> ann = Annotations([[np.array([[0, 0], [10, 0], [10, 10], [0, 10]])]])
    >>> colocalise_slide([0, 10], [0, 0], 10, [1.0, 0.0], ann, k=1)["iou"]
    1.0
    """
    attention = np.asarray(attention, float)
    grid = TileRaster.build(x, y, tile_px, subdivisions)
    n = grid.n_tiles
    if attention.shape != (n,):
        raise ValueError(f"attention has shape {attention.shape}, expected ({n},)")
    kk = default_k(n, k_fraction, k)
    fib = rasterise_polygons(annotations.polygons, grid.origin, grid.cell, grid.shape)
    atom_fib = grid.atom_sums(fib).astype(float)
    cells, f_total = grid.atom_cells.astype(float), float(atom_fib.sum())

    def iou(covered):  # covered: (A,) or (A, B) bool
        inter = atom_fib @ covered
        union = cells @ covered + f_total - inter
        return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)

    selected = np.zeros(n)
    selected[top_k(attention, kk)] = 1
    covered = grid.covered_atoms(selected)
    result = {
        "k": kk,
        "iou": float(iou(covered)),
        "iou_shuffled": float("nan"),
        "n_tiles": n,
        "fibrosis_share": f_total / float(cells.sum()),
    }
    if n_perm > 0:
        gen = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
        batch = max(1, min(int(n_perm), 2_000_000 // n))
        values = []
        for start in range(0, int(n_perm), batch):
            b = min(batch, int(n_perm) - start)
            draws = np.argpartition(gen.random((b, n)), kk - 1, axis=1)[:, :kk]  # (b, K)
            chosen = np.zeros((n, b))
            chosen[draws, np.arange(b)[:, None]] = 1
            values.append(iou(grid.covered_atoms(chosen)))
        result["iou_shuffled"] = float(np.concatenate(values).mean())
    atoms = grid.point_atoms(annotations.points)
    atoms = atoms[atoms >= 0]
    result["n_points"] = int(len(atoms))
    if len(atoms):
        coverage = np.asarray(grid.membership.sum(axis=1)).ravel().astype(np.int64)
        result["hit_rate"] = float(covered[atoms].mean())
        result["hit_rate_shuffled"] = float(expected_hit_probability(coverage[atoms], n, kk).mean())
    else:
        result["hit_rate"] = result["hit_rate_shuffled"] = float("nan")
    return result


# --------------------------------------------------------------------------- cohort
class Colocalisation(NamedTuple):
    """Output of :func:`colocalisation`: ``attention.csv``, ``attention_summary.csv`` and the
    slides that were skipped, with the reason (``patient_id, model, target, reason``)."""

    per_patient: pd.DataFrame
    summary: pd.DataFrame
    skipped: pd.DataFrame


def grade_stratum(grade) -> str | None:
    """``'0-1'`` for grades 0–1, ``'2-3'`` for 2–3, None for a missing grade."""
    if grade is None or pd.isna(grade):
        return None
    g = int(grade)
    if g not in (0, 1, 2, 3):
        raise ValueError(f"grade must be 0–3, got {grade!r}")
    return "0-1" if g <= 1 else "2-3"


def check_tiles(tiles: pd.DataFrame) -> pd.DataFrame:
    """Validate an attention-tile table; returns it with numeric columns as float.

    Raises :class:`ValueError` naming missing columns, non-finite or negative attention,
    non-finite coordinates, non-positive ``tile_px``, or duplicated tiles.
    """
    if not isinstance(tiles, pd.DataFrame):
        raise TypeError(f"tiles must be a pandas DataFrame, got {type(tiles).__name__}")
    missing = [c for c in TILE_COLUMNS if c not in tiles.columns]
    if missing:
        raise ValueError(f"attention tiles lack column(s): {', '.join(missing)}")
    if tiles.empty:
        raise ValueError("attention tiles table is empty")
    out = tiles.loc[:, list(TILE_COLUMNS)].copy()
    for col in ("x", "y", "tile_px", "attention"):
        values = pd.to_numeric(out[col], errors="coerce").astype(float)
        bad = ~np.isfinite(values.to_numpy())
        if bad.any():
            pids = sorted(out.loc[bad, "patient_id"].astype(str).unique())[:5]
            raise ValueError(
                f"{int(bad.sum())} tile(s) with a missing or non-finite '{col}' "
                f"(patients {', '.join(pids)})"
            )
        out[col] = values
    for col, label in (("attention", "negative attention"), ("tile_px", "tile_px ≤ 0")):
        bad = out[col] < 0 if col == "attention" else out[col] <= 0
        if bad.any():
            pids = sorted(out.loc[bad, "patient_id"].astype(str).unique())[:5]
            raise ValueError(f"{int(bad.sum())} tile(s) with {label} (patients {', '.join(pids)})")
    for col in ("patient_id", "model", "target"):
        out[col] = out[col].astype(str)
    dup = out.duplicated(["patient_id", "model", "target", "x", "y"])
    if dup.any():
        first = out.loc[dup].iloc[0]
        raise ValueError(
            f"{int(dup.sum())} duplicated tile(s), e.g. patient {first.patient_id}, "
            f"model {first.model}, target {first.target} at ({first.x:g}, {first.y:g})"
        )
    return out


def _resolve(value, manifest_dir: Path | str | None) -> Path | None:
    if value is None or (not isinstance(value, str | Path) and pd.isna(value)):
        return None
    if isinstance(value, str) and not value.strip():
        return None
    path = Path(value).expanduser()
    if not path.is_absolute() and manifest_dir is not None:
        path = Path(manifest_dir) / path
    return path


def _grade(frame: pd.DataFrame, pid: str, column: str):
    if column not in frame.columns:
        return pd.NA
    value = frame.at[pid, column]
    return pd.NA if pd.isna(value) else int(value)


def _slide_seed(seed: int, pid: str, model: str, target: str) -> np.random.Generator:
    key = zlib.crc32(f"{pid}\x1f{model}\x1f{target}".encode())
    return np.random.default_rng([int(seed), key])


def _load_annotations(frame, pid, manifest_dir, cache) -> tuple[Annotations | None, str]:
    if pid not in frame.index:
        return None, "patient not in the manifest"
    if "annotations" not in frame.columns:
        return None, "manifest has no 'annotations' column"
    path = _resolve(frame.at[pid, "annotations"], manifest_dir)
    if path is None:
        return None, "no annotations"
    if path not in cache:
        if not path.is_file():
            cache[path] = (None, f"annotations not found: {path}")
        else:
            try:
                cache[path] = (read_annotations(path), "")
            except ValueError as exc:
                cache[path] = (None, str(exc))
    return cache[path]


def colocalisation(
    tiles: pd.DataFrame,
    manifest_frame: pd.DataFrame,
    manifest_dir: Path | str | None = None,
    *,
    k_fraction: float = 0.1,
    k: int | None = None,
    n_perm: int = 1000,
    seed: int = 0,
    subdivisions: int = 8,
) -> Colocalisation:
    """Attention co-localisation of every patient × model × target (``attention.csv``).

    Parameters
    ----------
    tiles : the contract's attention-tile table (:data:`TILE_COLUMNS`).
    manifest_frame : ``load_manifest(path).frame`` — index ``patient_id``, columns
        ``annotations`` (absolute, or relative to ``manifest_dir``), ``fibrosis_grade``,
        ``exclusion_grade``.
    manifest_dir : directory relative annotation paths are resolved against.
    k_fraction, k : top-K size (:func:`default_k`).
    n_perm, seed : permutations of the shuffled IoU and their seed.
    subdivisions : raster cells per tile side.

    Returns
    -------
    :class:`Colocalisation` — per-patient table (:data:`PER_PATIENT_COLUMNS`), summary
    (:func:`summarise`) and skipped slides (no annotations, file missing or unreadable, patient
    not in the manifest, attention all zero), which are also logged.
    """
    tiles = check_tiles(tiles)
    if not isinstance(manifest_frame, pd.DataFrame):
        raise TypeError(f"manifest_frame must be a DataFrame, got {type(manifest_frame).__name__}")
    frame = manifest_frame.copy()
    frame.index = frame.index.astype(str)
    cache: dict = {}
    rows, skipped = [], []
    for (pid, model, target), slide in tiles.groupby(["patient_id", "model", "target"], sort=True):
        annotations, reason = _load_annotations(frame, pid, manifest_dir, cache)
        if annotations is not None and not (slide["attention"] > 0).any():
            annotations, reason = None, "attention is zero on every tile"
        if annotations is None:
            skipped.append({"patient_id": pid, "model": model, "target": target, "reason": reason})
            continue
        slide = slide.sort_values(["y", "x"], kind="stable")  # row order never matters
        metrics = colocalise_slide(
            slide["x"].to_numpy(),
            slide["y"].to_numpy(),
            slide["tile_px"].to_numpy(),
            slide["attention"].to_numpy(),
            annotations,
            k=k,
            k_fraction=k_fraction,
            n_perm=n_perm,
            rng=_slide_seed(seed, pid, model, target),
            subdivisions=subdivisions,
        )
        fib, exc = _grade(frame, pid, "fibrosis_grade"), _grade(frame, pid, "exclusion_grade")
        rows.append(
            {
                "patient_id": pid,
                "model": model,
                "target": target,
                "grade": fib,
                "grade_stratum": grade_stratum(fib),
                "exclusion_grade": exc,
                "exclusion_stratum": grade_stratum(exc),
                **metrics,
            }
        )
    per_patient = pd.DataFrame(rows, columns=list(PER_PATIENT_COLUMNS))
    for col in ("grade", "exclusion_grade"):
        per_patient[col] = per_patient[col].astype("Int64")
    skipped = pd.DataFrame(skipped, columns=list(SKIPPED_COLUMNS))
    if len(skipped):
        event(
            log,
            "attention co-localisation skipped slides",
            logging.WARNING,
            n=len(skipped),
            patients=",".join(sorted(skipped["patient_id"].unique())),
            reasons="; ".join(sorted(skipped["reason"].unique())),
        )
    return Colocalisation(per_patient, summarise(per_patient), skipped)


def _wilcoxon_p(diff: np.ndarray) -> float:
    from scipy import stats

    diff = np.asarray(diff, float)
    diff = diff[diff != 0]  # Wilcoxon's convention: zero differences are dropped
    if len(diff) == 0:
        return float("nan")
    # Exact null distribution without ties, else the normal approximation with tie correction
    # (never scipy's random permutation fallback, so p is reproducible).
    tied = len(np.unique(np.abs(diff))) < len(diff)
    method = "exact" if len(diff) <= 50 and not tied else "approx"
    return float(stats.wilcoxon(diff, method=method).pvalue)


def _mannwhitney_p(a: np.ndarray, b: np.ndarray) -> float:
    from scipy import stats

    if len(a) == 0 or len(b) == 0:
        return float("nan")
    return float(stats.mannwhitneyu(a, b, alternative="two-sided").pvalue)


def summarise(per_patient: pd.DataFrame) -> pd.DataFrame:
    """``attention_summary.csv`` from a per-patient table (:data:`SUMMARY_COLUMNS`).

    One row per model × target × metric × stratum (``0-1``, ``2-3``, ``all``): mean observed and
    shuffled value, ``n`` (patients with the metric defined), ``p`` (Wilcoxon signed-rank of
    observed − shuffled), ``grade_by`` (the grade that stratifies the metric), ``excess`` (mean
    observed − shuffled) and ``p_strata`` (Mann–Whitney U of the excess, ``0-1`` vs ``2-3``; the
    same on the three rows of a model × target × metric).
    """
    missing = [c for c in PER_PATIENT_COLUMNS[:10] if c not in per_patient.columns]
    if missing:
        raise ValueError(f"per-patient table lacks column(s): {', '.join(missing)}")
    stratum_of = {"iou": "grade_stratum", "hit_rate": "exclusion_stratum"}
    out = []
    for (model, target), group in per_patient.groupby(["model", "target"], sort=True):
        for metric, grade_col in METRIC_GRADE.items():
            col = stratum_of[metric] if stratum_of[metric] in group else "grade_stratum"
            ok = group[[metric, f"{metric}_shuffled"]].notna().all(axis=1)
            data = group.loc[ok]
            obs = data[metric].to_numpy(float)
            shuf = data[f"{metric}_shuffled"].to_numpy(float)
            strata = data[col].to_numpy(object)
            excess = {s: (obs - shuf)[strata == s] for s in STRATA}
            p_strata = _mannwhitney_p(excess["0-1"], excess["2-3"])
            for stratum in (*STRATA, "all"):
                sel = np.ones(len(obs), bool) if stratum == "all" else strata == stratum
                n = int(sel.sum())
                out.append(
                    {
                        "model": model,
                        "target": target,
                        "grade_stratum": stratum,
                        "metric": metric,
                        "observed": float(obs[sel].mean()) if n else float("nan"),
                        "shuffled": float(shuf[sel].mean()) if n else float("nan"),
                        "n": n,
                        "p": _wilcoxon_p(obs[sel] - shuf[sel]),
                        "grade_by": grade_col,
                        "excess": float((obs[sel] - shuf[sel]).mean()) if n else float("nan"),
                        "p_strata": p_strata,
                    }
                )
    return pd.DataFrame(out, columns=list(SUMMARY_COLUMNS))


def write_colocalisation(result: Colocalisation, out_dir: Path | str) -> list[Path]:
    """Write ``attention.csv`` and ``attention_summary.csv`` (and ``attention_skipped.csv`` when
    slides were skipped) into ``out_dir``; returns the paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / "attention.csv", out_dir / "attention_summary.csv"]
    result.per_patient.to_csv(paths[0], index=False)
    result.summary.to_csv(paths[1], index=False)
    if len(result.skipped):
        paths.append(out_dir / "attention_skipped.csv")
        result.skipped.to_csv(paths[2], index=False)
    return paths


# --------------------------------------------------------------------------- overlays
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

    Each figure shows the slide thumbnail (read with :func:`stromalens.wsi.reader.open_slide`),
    the attention (scaled to the slide's maximum) in *viridis* over the tiles, the top-K tiles
    (orange squares), the fibrosis outline (white; holes dashed) and the exclusion points (sky
    blue ×), a colour bar, and a title with the patient, model, target and IoU of the top-K
    tiles.

    ``model`` defaults to the proposed model (``fusion``) when present, ``target`` to
    ``ers_caf``; ``patients`` defaults to up to ``max_patients`` chosen round-robin across
    fibrosis grades. Patients without a slide, annotations or tiles are skipped and logged.
    Returns the written paths.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    from ..wsi.reader import SlideError, open_slide
    from .naming import PROPOSED

    tiles = check_tiles(tiles)
    model = _pick(sorted(tiles["model"].unique()), PROPOSED, "model", model)
    target = _pick(sorted(tiles["target"].unique()), "ers_caf", "target", target)
    tiles = tiles[(tiles["model"] == model) & (tiles["target"] == target)]
    frame = manifest_frame.copy()
    frame.index = frame.index.astype(str)
    cache: dict = {}
    skipped: dict[str, str] = {}
    usable = []
    requested = sorted(tiles["patient_id"].unique()) if patients is None else list(patients)
    for pid in requested:
        if pid not in set(tiles["patient_id"]):
            skipped[pid] = "no attention tiles"
            continue
        annotations, reason = _load_annotations(frame, pid, manifest_dir, cache)
        if annotations is None:
            skipped[pid] = reason
            continue
        wsi = _resolve(frame.at[pid, "wsi"], manifest_dir) if "wsi" in frame.columns else None
        if wsi is None or not Path(wsi).is_file():
            skipped[pid] = "no slide" if wsi is None else f"slide not found: {wsi}"
        else:
            usable.append(pid)
    if patients is None:
        grades = {
            pid: (frame.at[pid, "fibrosis_grade"] if "fibrosis_grade" in frame else None)
            for pid in usable
        }
        usable = _spread_over_grades(usable, grades, int(max_patients))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for pid in usable:
        annotations = cache[_resolve(frame.at[pid, "annotations"], manifest_dir)][0]
        slide_tiles = tiles[tiles["patient_id"] == pid]
        x, y = slide_tiles["x"].to_numpy(), slide_tiles["y"].to_numpy()
        side, att = slide_tiles["tile_px"].to_numpy(), slide_tiles["attention"].to_numpy()
        metrics = colocalise_slide(
            x, y, side, att, annotations, k=k, k_fraction=k_fraction, n_perm=0,
            subdivisions=subdivisions,
        )  # fmt: skip
        try:
            mpp = frame.at[pid, "wsi_mpp"] if "wsi_mpp" in frame.columns else None
            mpp = None if mpp is None or pd.isna(mpp) else float(mpp)
            with open_slide(_resolve(frame.at[pid, "wsi"], manifest_dir), mpp=mpp) as slide:
                level = slide.thumbnail_level(max_thumbnail_pixels)
                thumb = slide.read_level(level)
                width, height = slide.dimensions
        except SlideError as exc:
            skipped[pid] = str(exc)
            continue
        grid = TileRaster.build(x, y, side, subdivisions)
        heat = np.zeros(grid.shape)
        count = np.zeros(grid.shape)
        scaled = att / att.max() if att.max() > 0 else att
        for (ra, rb, ca, cb), value in zip(grid.spans, scaled, strict=True):
            heat[ra:rb, ca:cb] += value
            count[ra:rb, ca:cb] += 1
        heat = np.divide(heat, count, out=np.full(grid.shape, np.nan), where=count > 0)
        x0, y0 = grid.origin
        extent = (x0, x0 + grid.shape[1] * grid.cell, y0 + grid.shape[0] * grid.cell, y0)

        fig, ax = plt.subplots(figsize=(7, 7 * height / width + 0.6))
        ax.imshow(thumb, extent=(0, width, height, 0), interpolation="bilinear")
        image = ax.imshow(
            np.ma.masked_invalid(heat), extent=extent, cmap="viridis", vmin=0, vmax=1,
            alpha=0.55, interpolation="nearest",
        )  # fmt: skip
        for rings in annotations.polygons:
            for i, ring in enumerate(rings):
                closed = np.vstack([ring, ring[:1]])
                ax.plot(
                    closed[:, 0], closed[:, 1], color="white", lw=1.2, ls="-" if i == 0 else "--",
                    label="fibrosis" if i == 0 and rings is annotations.polygons[0] else None,
                )  # fmt: skip
        for i in top_k(att, metrics["k"]):
            ax.add_patch(
                Rectangle(
                    (x[i], y[i]), side[i], side[i], fill=False, ec="#E69F00", lw=0.9,
                    label=f"top-{metrics['k']} tiles" if i == top_k(att, 1)[0] else None,
                )
            )  # fmt: skip
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
        ax.set_title(
            f"{pid} · {model} · {target} · IoU(top-{metrics['k']}) = {metrics['iou']:.2f}",
            fontsize=9,
        )
        path = out_dir / f"{pid}.png"
        fig.savefig(path, dpi=dpi, bbox_inches="tight")
        plt.close(fig)
        written.append(path)
    if skipped:
        event(
            log,
            "attention overlays skipped patients",
            logging.WARNING,
            n=len(skipped),
            patients=",".join(sorted(skipped)),
            reasons="; ".join(sorted(set(skipped.values()))),
        )
    return written
