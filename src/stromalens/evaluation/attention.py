"""Attention co-localisation with the pathologist's annotations (analysis 7 of the study).

Does a model attend where the pathologist sees fibrosis and immune exclusion? For every
patient × model × target the tiles with the K highest attention weights are compared with the
slide's annotations (:mod:`stromalens.evaluation.annotations`: a ``Fibrosis`` (Multi)Polygon,
holes allowed, and ``Immune exclusion`` (Multi)Points, level-0 px), and with what attention
shuffled across the slide's tiles would give. The heat-map figures are drawn by
:mod:`stromalens.evaluation.overlays`.

Definitions
-----------
Raster. All areas are measured on one raster per slide whose cells are ``c = tile_px /
subdivisions`` level-0 px wide (default 8 × 8 cells per tile), with its origin at the top-left
tile corner (:class:`~stromalens.evaluation.annotations.TileRaster`). A tile covers the
``tile_px / c`` × ``tile_px / c`` block of cells starting at its corner, snapped to the nearest
cell (so by at most ``c / 2`` px). A cell belongs to the fibrosis region when its *centre* lies
inside the polygon by the even–odd rule (holes are outside; see
:func:`~stromalens.evaluation.annotations.rasterise_polygons`). Because attention can only fall
on tiles, both the fibrosis region and the exclusion points are restricted to the tiled area
``D`` (the union of the slide's tiles): fibrosis outside ``D`` (background, tiles removed by QC)
would otherwise cap the IoU below 1 whatever the model did.

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

Stratified baseline (``iou_stratified``, ``hit_rate_stratified``): the same expectations when
attention is permuted only among tiles of the same dominant compartment (stroma, tumour,
immune; :mod:`stromalens.evaluation.compartments`). Such a permutation keeps the number
``K_s`` of top-K tiles in each compartment ``s``, so ``T`` is the union of independent uniformly
random ``K_s``-subsets of each compartment's ``N_s`` tiles (for attention without ties; ``K_s``
is counted on the observed top-K). An attention that merely prefers stroma beats the plain
baseline whenever the annotation lies in stroma; the stratified baseline asks whether it finds
the annotated part of the stroma beyond choosing stroma. The hit-rate is again exact,

    E[hit] = mean_p [1 − ∏_s C(N_s − c_{p,s}, K_s) / C(N_s, K_s)],

``c_{p,s}`` the tiles of compartment ``s`` covering ``p``; the IoU is the mean over ``n_perm``
stratified draws (for binary tiles with ``F`` inside one compartment ``s``:
Σ_h P(h) · h / (K + |F| − h), h ~ Hypergeom(N_s, |F|, K_s)). Only a cohort that knows each
tile's compartment has it: the synthetic one, whose slides carry label maps; elsewhere the two
columns are ``NaN``.

Summary: per model × target × grade stratum × metric, the mean observed, shuffled and
stratified values,
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
"""

from __future__ import annotations

import logging
import zlib
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd

from ..logs import event, get_logger
from .annotations import Annotations, TileRaster, load_patient_annotations, rasterise_polygons
from .compartments import CompartmentMaps

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
    "iou_stratified",
    "hit_rate_stratified",
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
    "stratified",
)
#: Columns of the skipped-slide table.
SKIPPED_COLUMNS: tuple[str, ...] = ("patient_id", "model", "target", "reason")
STRATA: tuple[str, ...] = ("0-1", "2-3")
METRIC_GRADE: dict[str, str] = {"iou": "fibrosis_grade", "hit_rate": "exclusion_grade"}


# --------------------------------------------------------------------------- one slide
def top_k(attention: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` largest values, ties broken by position (stable).

    Example
    -------
    >>> top_k(np.array([0.2, 0.9, 0.2, 0.5]), 2)
    array([1, 3])
    """
    order = np.argsort(-np.asarray(attention, float), kind="stable")
    return order[: int(k)]


def default_k(n_tiles: int, k_fraction: float = 0.1, k: int | None = None) -> int:
    """Top-K size of a slide of ``N`` tiles.

        K = min(k, N)                        if k is given,
        K = min(N, max(1, ⌊f · N + ½⌋))      else (f = k_fraction, rounding half up).

    Raises :class:`ValueError` for ``k < 1`` or ``k_fraction`` outside ``(0, 1]``.

    Example
    -------
    >>> default_k(25), default_k(5, k=9)
    (3, 5)
    """
    if k is not None:
        if int(k) < 1:
            raise ValueError(f"k must be ≥ 1, got {k!r}")
        return min(int(k), n_tiles)
    if not 0 < float(k_fraction) <= 1:
        raise ValueError(f"k_fraction must be in (0, 1], got {k_fraction!r}")
    return min(n_tiles, max(1, int(np.floor(k_fraction * n_tiles + 0.5))))


def expected_hit_probability(coverage: np.ndarray, n_tiles: int, k: int) -> np.ndarray:
    """Probability that a point covered by ``c`` tiles lies in a uniformly random K-subset.

        P = 1 − C(N − c, K) / C(N, K) = 1 − ∏_{j<c} (N − K − j) / (N − j)

    (hypergeometric: the point is missed only when none of its ``c`` tiles is drawn).

    Example
    -------
    >>> expected_hit_probability(np.array([0, 1]), 10, 2)
    array([0. , 0.2])
    """
    coverage = np.asarray(coverage, np.int64)
    miss = np.ones(len(coverage))
    for j in range(int(coverage.max(initial=0))):
        step = max(n_tiles - k - j, 0) / (n_tiles - j)
        miss = np.where(coverage > j, miss * step, miss)
    return 1.0 - miss


def _iou(atom_fib: np.ndarray, cells: np.ndarray, covered: np.ndarray) -> np.ndarray:
    """IoU = |T ∩ F| / |T ∪ F| in cells from per-atom counts; ``covered`` is (A,) or (A, B)."""
    f_total = float(atom_fib.sum())
    inter = atom_fib @ covered
    union = cells @ covered + f_total - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


#: Groups of tiles a random top-K set is drawn from: (tile indices, how many of them).
Groups = list[tuple[np.ndarray, int]]


def _groups(n: int, k: int, strata: np.ndarray | None = None, top=None) -> Groups:
    """One group of all ``n`` tiles drawing ``k`` (the plain baseline), or one per stratum
    drawing as many as the observed top-K tiles ``top`` hold (the stratified baseline)."""
    if strata is None:
        return [(np.arange(n), int(k))]
    codes, inverse = np.unique(strata, return_inverse=True)
    held = np.bincount(inverse[top], minlength=len(codes))
    return [(np.flatnonzero(inverse == i), int(held[i])) for i in range(len(codes))]


def _random_selection(n: int, groups: Groups, b: int, gen: np.random.Generator) -> np.ndarray:
    """``(n, b)`` 0/1: in each of ``b`` columns a uniformly random ``k``-subset of each group."""
    chosen = np.zeros((n, b))
    for members, k in groups:
        if k == 0:
            continue
        picks = np.argpartition(gen.random((b, len(members))), k - 1, axis=1)[:, :k]  # (b, k)
        chosen[members[picks], np.arange(b)[:, None]] = 1
    return chosen


def _shuffled_iou(grid: TileRaster, atom_fib: np.ndarray, groups: Groups, n_perm: int, rng):
    """Mean IoU of ``n_perm`` random top-K sets drawn by ``groups``, in batches."""
    gen = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    n, cells = grid.n_tiles, grid.atom_cells.astype(float)
    batch = max(1, min(int(n_perm), 2_000_000 // n))  # bounds the (N, B) selection matrix
    values = []
    for start in range(0, int(n_perm), batch):
        chosen = _random_selection(n, groups, min(batch, int(n_perm) - start), gen)
        values.append(_iou(atom_fib, cells, grid.covered_atoms(chosen)))
    return float(np.concatenate(values).mean())


def _expected_hits(grid: TileRaster, atoms: np.ndarray, groups: Groups) -> float:
    """Mean over points (their atoms) of P(hit) when the top-K set is drawn by ``groups``:
    missed only when every group misses (independent draws)."""
    miss = np.ones(len(atoms))
    for members, k in groups:
        coverage = np.asarray(grid.membership[:, members].sum(axis=1)).ravel().astype(np.int64)
        miss *= 1.0 - expected_hit_probability(coverage[atoms], len(members), k)
    return float((1.0 - miss).mean())


def _hit_rates(grid: TileRaster, covered: np.ndarray, points: np.ndarray, baselines) -> dict:
    """``n_points`` in the tiled area, their observed hit-rate and its exact expectation under
    each baseline (``{column: groups}``)."""
    atoms = grid.point_atoms(points)
    atoms = atoms[atoms >= 0]
    result = {"n_points": int(len(atoms)), "hit_rate": float("nan")}
    result |= {f"hit_rate_{name}": float("nan") for name in ("shuffled", "stratified")}
    if len(atoms):
        result["hit_rate"] = float(covered[atoms].mean())
        for name, groups in baselines.items():
            result[f"hit_rate_{name}"] = _expected_hits(grid, atoms, groups)
    return result


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
    compartments=None,
) -> dict:
    """IoU and hit-rate of one slide's top-K tiles, and their shuffled baselines.

        IoU = |T ∩ F| / |T ∪ F|,        hit = #{p : p ∈ T} / #{p : p ∈ D},

    with ``T`` the top-K tiles, ``F`` the fibrosis inside the tiled area ``D`` and ``p`` the
    exclusion points (module docstring).

    Parameters
    ----------
    x, y : level-0 top-left corners of the ``N`` tiles; ``tile_px`` their level-0 side(s).
    attention : ``(N,)`` non-negative attention weights.
    annotations : the slide's :class:`~stromalens.evaluation.annotations.Annotations`.
    k, k_fraction : see :func:`default_k`.
    n_perm : random K-subsets for the expected IoU (0: ``iou_shuffled`` is NaN).
    rng : generator or seed of those permutations.
    subdivisions : raster cells per tile side.
    compartments : ``(N,)`` each tile's dominant compartment code, for the stratified baseline
        (module docstring); None leaves ``iou_stratified`` and ``hit_rate_stratified`` NaN.

    Returns
    -------
    dict with ``k, iou, iou_shuffled, iou_stratified, hit_rate, hit_rate_shuffled,
    hit_rate_stratified, n_tiles, n_points`` (exclusion points in the tiled area) and
    ``fibrosis_share`` (``|F| / |D|``).

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
    cells = grid.atom_cells.astype(float)
    top = top_k(attention, kk)
    selected = np.zeros(n)
    selected[top] = 1
    covered = grid.covered_atoms(selected)
    baselines = {"shuffled": _groups(n, kk)}
    if compartments is not None:
        compartments = np.asarray(compartments)
        if compartments.shape != (n,):
            raise ValueError(f"compartments has shape {compartments.shape}, expected ({n},)")
        baselines["stratified"] = _groups(n, kk, compartments, top)
    result = {
        "k": kk,
        "iou": float(_iou(atom_fib, cells, covered)),
        "iou_shuffled": float("nan"),
        "iou_stratified": float("nan"),
        "n_tiles": n,
        "fibrosis_share": float(atom_fib.sum()) / float(cells.sum()),
    }
    gen = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    for name, groups in baselines.items() if n_perm > 0 else ():
        # the plain draws first, so that adding the stratified baseline leaves them unchanged
        result[f"iou_{name}"] = _shuffled_iou(grid, atom_fib, groups, n_perm, gen)
    result.update(_hit_rates(grid, covered, annotations.points, baselines))
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

    An optional ``slide_id`` column tells a patient's slides apart (several slides per patient;
    coordinates are in each slide's own frame); without it every tile is on the slide named
    after the patient.

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
    out["slide_id"] = (
        tiles["slide_id"].astype(str) if "slide_id" in tiles else out["patient_id"].astype(str)
    )
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
    dup = out.duplicated(["patient_id", "slide_id", "model", "target", "x", "y"])
    if dup.any():
        first = out.loc[dup].iloc[0]
        raise ValueError(
            f"{int(dup.sum())} duplicated tile(s), e.g. patient {first.patient_id}, "
            f"model {first.model}, target {first.target} at ({first.x:g}, {first.y:g})"
        )
    return out


def _grade(frame: pd.DataFrame, pid: str, column: str):
    if column not in frame.columns:
        return pd.NA
    value = frame.at[pid, column]
    return pd.NA if pd.isna(value) else int(value)


def _slide_seed(seed: int, pid: str, model: str, target: str) -> np.random.Generator:
    key = zlib.crc32(f"{pid}\x1f{model}\x1f{target}".encode())
    return np.random.default_rng([int(seed), key])


def _slide_row(
    frame: pd.DataFrame,
    pid: str,
    model: str,
    target: str,
    slide: pd.DataFrame,
    annotations: Annotations,
    *,
    seed: int,
    maps: CompartmentMaps | None = None,
    **options,
) -> dict:
    """One ``attention.csv`` row: the slide's metrics and the patient's grade strata; the
    stratified baseline too when ``maps`` has the slide's compartments."""
    slide = slide.sort_values(["y", "x"], kind="stable")  # row order never matters
    x, y, side = (slide[c].to_numpy() for c in ("x", "y", "tile_px"))
    compartments = maps.tile_compartments(frame, pid, x, y, side) if maps is not None else None
    metrics = colocalise_slide(
        x,
        y,
        side,
        slide["attention"].to_numpy(),
        annotations,
        rng=_slide_seed(seed, pid, model, target),
        compartments=compartments,
        **options,
    )
    fib, exc = _grade(frame, pid, "fibrosis_grade"), _grade(frame, pid, "exclusion_grade")
    return {
        "patient_id": pid,
        "model": model,
        "target": target,
        "grade": fib,
        "grade_stratum": grade_stratum(fib),
        "exclusion_grade": exc,
        "exclusion_stratum": grade_stratum(exc),
        **metrics,
    }


def _log_skipped(skipped: pd.DataFrame) -> None:
    if len(skipped):
        event(
            log,
            "attention co-localisation skipped slides",
            logging.WARNING,
            n=len(skipped),
            patients=",".join(sorted(skipped["patient_id"].unique())),
            reasons="; ".join(sorted(skipped["reason"].unique())),
        )


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
    manifest_dir : directory relative annotation paths are resolved against; a synthetic
        cohort's ``synth.json`` there gives the tiles' compartments for the stratified
        baseline (:class:`~stromalens.evaluation.compartments.CompartmentMaps`), else that
        baseline is NaN.
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
    options = {"k": k, "k_fraction": k_fraction, "n_perm": n_perm, "subdivisions": subdivisions}
    options["maps"] = CompartmentMaps.find(manifest_dir)
    cache: dict = {}
    rows, skipped = [], []
    for (pid, model, target), slide in tiles.groupby(["patient_id", "model", "target"], sort=True):
        # the manifest's annotations of a patient are drawn on the patient's first slide
        slide = slide[slide["slide_id"] == slide["slide_id"].iloc[0]]
        annotations, reason = load_patient_annotations(frame, pid, manifest_dir, cache)
        if annotations is not None and not (slide["attention"] > 0).any():
            annotations, reason = None, "attention is zero on every tile"
        if annotations is None:
            skipped.append({"patient_id": pid, "model": model, "target": target, "reason": reason})
            continue
        rows.append(_slide_row(frame, pid, model, target, slide, annotations, seed=seed, **options))
    per_patient = pd.DataFrame(rows, columns=list(PER_PATIENT_COLUMNS))
    for col in ("grade", "exclusion_grade"):
        per_patient[col] = per_patient[col].astype("Int64")
    skipped = pd.DataFrame(skipped, columns=list(SKIPPED_COLUMNS))
    _log_skipped(skipped)
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
            column = f"{metric}_stratified"  # absent from a table written before it existed
            strat = data[column].to_numpy(float) if column in data else np.full(len(obs), np.nan)
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
                        # NaN unless every patient of the stratum has it (compartments known)
                        "stratified": float(strat[sel].mean()) if n else float("nan"),
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
