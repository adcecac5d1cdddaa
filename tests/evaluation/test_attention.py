"""Attention co-localisation (analysis 7): known answers on hand-made tile grids and GeoJSON."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from stromalens.evaluation.annotations import Annotations, rasterise_polygons
from stromalens.evaluation.attention import (
    PER_PATIENT_COLUMNS,
    SUMMARY_COLUMNS,
    TILE_COLUMNS,
    colocalisation,
    colocalise_slide,
    default_k,
    expected_hit_probability,
    grade_stratum,
    summarise,
    write_colocalisation,
)

from ._annotation_shapes import TILE, geojson, grid, rect


def naive_iou(x, y, side, selected, fib_mask, cell, shape) -> float:
    """Reference: paint the selected tiles cell by cell and compare with the fibrosis mask."""
    tiles = np.zeros(shape, bool)
    domain = np.zeros(shape, bool)
    n = int(round(side / cell))
    for i, (xi, yi) in enumerate(zip(x, y, strict=True)):
        r, c = int(round(yi / cell)), int(round(xi / cell))
        domain[r : r + n, c : c + n] = True
        if i in selected:
            tiles[r : r + n, c : c + n] = True
    fib = fib_mask & domain
    union = (tiles | fib).sum()
    return float((tiles & fib).sum() / union) if union else 0.0


# --------------------------------------------------------------------------- one slide
def test_attention_on_fibrosis_gives_iou_one_and_all_hits():
    x, y = grid(10, 10)
    # Fibrosis: an 8×2-tile block with a 2×... hole-free L plus a tile-aligned frame with a hole.
    frame = [rect(0, 0, 4 * TILE, 4 * TILE), rect(TILE, TILE, 3 * TILE, 3 * TILE)]  # 12 tiles
    bar = [rect(6 * TILE, 5 * TILE, 9 * TILE, 6 * TILE)]  # 3 tiles
    cx, cy = x + TILE / 2, y + TILE / 2
    fib_tile = ((cx < 4 * TILE) & (cy < 4 * TILE)) & ~(
        (cx > TILE) & (cx < 3 * TILE) & (cy > TILE) & (cy < 3 * TILE)
    )
    fib_tile |= (cx > 6 * TILE) & (cx < 9 * TILE) & (cy > 5 * TILE) & (cy < 6 * TILE)
    assert fib_tile.sum() == 15
    points = np.stack([cx[fib_tile] + 3, cy[fib_tile] - 5], axis=1)  # inside fibrotic tiles
    ann = Annotations([frame, bar], points)
    res = colocalise_slide(x, y, TILE, fib_tile.astype(float), ann, k=15, n_perm=50)
    assert res["iou"] == pytest.approx(1.0)
    assert res["hit_rate"] == 1.0 and res["n_points"] == 15
    assert res["fibrosis_share"] == pytest.approx(0.15)
    # Attention on the hole (non-fibrotic tiles) scores 0 on both.
    res = colocalise_slide(x, y, TILE, (~fib_tile).astype(float), ann, k=15, n_perm=0)
    assert res["iou"] == 0.0 and res["hit_rate"] == 0.0
    assert np.isnan(res["iou_shuffled"])


@pytest.mark.parametrize("subdivisions", [1, 4, 8])
def test_partial_overlap_known_iou(subdivisions):
    x, y = grid(4, 1)
    # Fibrosis: tile 0 and tile 1 entirely; top-2 = tiles 1 and 2 → |T∩F| = 1, |T∪F| = 3 tiles.
    ann = Annotations([[rect(0, 0, 2 * TILE, TILE)]])
    res = colocalise_slide(x, y, TILE, [0.1, 0.9, 0.8, 0.0], ann, k=2, n_perm=0)
    assert res["iou"] == pytest.approx(1 / 3)
    if subdivisions >= 4:  # the left half of tile 0 only; top-1 = tile 0 → IoU = ½
        half = Annotations([[rect(0, 0, TILE / 2, TILE)]])
        res = colocalise_slide(
            x, y, TILE, [1.0, 0, 0, 0], half, k=1, n_perm=0, subdivisions=subdivisions
        )
        assert res["iou"] == pytest.approx(0.5)


def test_fibrosis_outside_tiles_and_points_outside_are_not_counted():
    x, y = grid(2, 1)
    # Fibrosis covers tile 0 and untiled area to the left; one point off every tile.
    ann = Annotations([[rect(-5 * TILE, 0, TILE, TILE)]], np.array([[5.0, 5.0], [-50.0, 5.0]]))
    res = colocalise_slide(x, y, TILE, [1.0, 0.0], ann, k=1, n_perm=0)
    assert res["iou"] == pytest.approx(1.0)
    assert res["n_points"] == 1 and res["hit_rate"] == 1.0


def test_no_fibrosis_and_no_points():
    x, y = grid(3, 3)
    res = colocalise_slide(x, y, TILE, np.arange(9.0), Annotations(), n_perm=10)
    assert res["iou"] == 0.0 and res["iou_shuffled"] == 0.0 and res["fibrosis_share"] == 0.0
    assert np.isnan(res["hit_rate"]) and np.isnan(res["hit_rate_shuffled"])
    assert res["n_points"] == 0 and res["k"] == 1  # round(0.9) = 1


def test_default_k():
    assert default_k(100) == 10
    assert default_k(4) == 1  # max(1, round(0.4))
    assert default_k(25) == 3  # 2.5 rounds half up
    assert default_k(50, k_fraction=0.2) == 10
    assert default_k(5, k=9) == 5
    with pytest.raises(ValueError, match="k_fraction"):
        default_k(10, k_fraction=0.0)
    with pytest.raises(ValueError, match="k must be"):
        default_k(10, k=0)


def test_ties_are_broken_by_row_order():
    x, y = grid(4, 1)
    ann = Annotations([[rect(0, 0, TILE, TILE)]])
    res = colocalise_slide(x, y, TILE, np.ones(4), ann, k=1, n_perm=0)
    assert res["iou"] == 1.0  # the first of four tied tiles


# --------------------------------------------------------------------------- baselines
def exact_binary_iou(n: int, f: int, k: int) -> tuple[float, float]:
    """E and SD of IoU = h / (K + |F| − h), h ~ Hypergeom(N, |F|, K) (in tile units)."""
    h = np.arange(0, min(f, k) + 1)
    pmf = stats.hypergeom(n, f, k).pmf(h)  # scipy.stats.hypergeom(M=N, n=|F|, N=K)
    g = h / (k + f - h)
    mean = float((pmf * g).sum())
    return mean, float(np.sqrt((pmf * (g - mean) ** 2).sum()))


def test_shuffled_iou_equals_hypergeometric_expectation():
    n_perm = 4000
    x, y = grid(10, 10)
    ann = Annotations([[rect(0, 0, 10 * TILE, 2 * TILE)]])  # 20 of 100 tiles fibrotic
    res = colocalise_slide(x, y, TILE, np.arange(100.0), ann, k=10, n_perm=n_perm, rng=3)
    mean, sd = exact_binary_iou(100, 20, 10)
    assert res["iou_shuffled"] == pytest.approx(mean, abs=4 * sd / np.sqrt(n_perm))
    assert res["hit_rate_shuffled"] is not None


def test_random_attention_averages_to_the_baseline():
    # Observed IoU and overlap under uniformly random attention: E|T∩F| = K·|F|/N tiles.
    rng = np.random.default_rng(7)
    x, y = grid(8, 5)
    n, k, f = 40, 6, 10
    ann = Annotations([[rect(0, 0, 8 * TILE, TILE), rect(0, TILE, 2 * TILE, 2 * TILE)]])
    points = np.stack([x + TILE / 2, y + TILE / 2], 1)  # one point per tile
    ann = Annotations(ann.polygons, points)
    draws = 300
    ious, hits = [], []
    for _ in range(draws):
        res = colocalise_slide(x, y, TILE, rng.random(n), ann, k=k, n_perm=0)
        ious.append(res["iou"])
        hits.append(res["hit_rate"])
    iou = np.array(ious)
    overlap = iou * (k + f) / (1 + iou)  # h from IoU = h / (K + F − h)
    expected = k * f / n
    sd_h = np.sqrt(stats.hypergeom(n, f, k).var())
    assert overlap.mean() == pytest.approx(expected, abs=4 * sd_h / np.sqrt(draws))
    mean, sd = exact_binary_iou(n, f, k)
    assert iou.mean() == pytest.approx(mean, abs=4 * sd / np.sqrt(draws))
    assert np.mean(hits) == pytest.approx(k / n, abs=0.02)
    assert res["hit_rate_shuffled"] == pytest.approx(k / n)


def test_overlapping_tiles_match_brute_force():
    # Five 32-px tiles at a 16-px stride on a row, fibrosis on x ∈ [0, 40); all K-subsets.
    x = np.arange(5) * 16.0
    y = np.zeros(5)
    att = np.array([0.3, 0.9, 0.1, 0.5, 0.2])
    points = np.array([[2.0, 3], [20, 3], [40, 3], [70, 3], [90, 3], [100, 3]])
    ann = Annotations([[rect(0, 0, 40, TILE)]], points)
    k, cell = 2, 4.0
    res = colocalise_slide(x, y, TILE, att, ann, k=k, n_perm=4000, rng=0, subdivisions=8)
    shape = (8, 28)
    fib = rasterise_polygons(ann.polygons, (0, 0), cell, shape)
    assert res["iou"] == pytest.approx(naive_iou(x, y, TILE, {1, 3}, fib, cell, shape))
    subsets = list(itertools.combinations(range(5), k))
    ious = [naive_iou(x, y, TILE, set(s), fib, cell, shape) for s in subsets]
    sd = np.std(ious)
    assert res["iou_shuffled"] == pytest.approx(np.mean(ious), abs=4 * sd / np.sqrt(4000))

    def covered(point, chosen):
        return any(x[i] <= point[0] < x[i] + TILE for i in chosen)

    inside = [p for p in points if covered(p, range(5))]
    assert res["n_points"] == len(inside) == 5
    hit = np.mean([covered(p, {1, 3}) for p in inside])
    assert res["hit_rate"] == pytest.approx(hit)
    brute = np.mean([np.mean([covered(p, s) for p in inside]) for s in subsets])
    assert res["hit_rate_shuffled"] == pytest.approx(brute)  # exact, not Monte Carlo


def test_expected_hit_probability():
    # 1 − C(N−c, K)/C(N, K) against math.comb.
    from math import comb

    n, k = 12, 4
    cov = np.array([0, 1, 2, 3, 9])
    expected = [1 - comb(n - c, k) / comb(n, k) for c in cov]
    assert np.allclose(expected_hit_probability(cov, n, k), expected)


# --------------------------------------------------------------------------- cohort + summary
def make_cohort(tmp_path: Path, n_patients: int, planted: bool, seed: int = 0):
    """Hand-made slides: 6×6 tiles, a random rectangle of fibrosis, points in fibrotic tiles.

    ``planted``: attention = fibrosis indicator + small noise; otherwise uniform noise.
    """
    rng = np.random.default_rng(seed)
    x, y = grid(6, 6)
    rows, manifest = [], []
    (tmp_path / "ann").mkdir(exist_ok=True)
    for i in range(n_patients):
        pid = f"P{i:02d}"
        c0, r0 = rng.integers(0, 3, 2)
        w, h = rng.integers(2, 4, 2)
        fib = (x >= c0 * TILE) & (x < (c0 + w) * TILE) & (y >= r0 * TILE) & (y < (r0 + h) * TILE)
        points = np.stack([x[fib] + 10, y[fib] + 10], 1)
        doc = geojson([[rect(c0 * TILE, r0 * TILE, (c0 + w) * TILE, (r0 + h) * TILE)]], points)
        (tmp_path / "ann" / f"{pid}.geojson").write_text(json.dumps(doc))
        att = fib + 0.1 * rng.random(36) if planted else rng.random(36)
        rows += [
            (pid, "fusion", "ers_caf", xi, yi, TILE, a) for xi, yi, a in zip(x, y, att, strict=True)
        ]
        manifest.append(
            {
                "patient_id": pid,
                "annotations": f"ann/{pid}.geojson",
                "fibrosis_grade": i % 4,
                "exclusion_grade": (i + 1) % 4,
                "wsi": None,
            }
        )
    tiles = pd.DataFrame(rows, columns=list(TILE_COLUMNS))
    frame = pd.DataFrame(manifest).set_index("patient_id")
    frame["fibrosis_grade"] = frame["fibrosis_grade"].astype("Int64")
    frame["exclusion_grade"] = frame["exclusion_grade"].astype("Int64")
    return tiles, frame


def test_colocalisation_tables_and_planted_effect(tmp_path):
    tiles, frame = make_cohort(tmp_path, 12, planted=True)
    result = colocalisation(tiles, frame, tmp_path, n_perm=100, seed=1)
    per, summary = result.per_patient, result.summary
    assert list(per.columns) == list(PER_PATIENT_COLUMNS)
    assert list(summary.columns) == list(SUMMARY_COLUMNS)
    assert len(per) == 12 and result.skipped.empty
    assert (per["k"] == 4).all()  # round(0.1 · 36)
    # Strata: fibrosis grade for grade_stratum (i % 4), exclusion grade for exclusion_stratum.
    assert per.set_index("patient_id").loc["P01", "grade_stratum"] == "0-1"
    assert per.set_index("patient_id").loc["P01", "exclusion_stratum"] == "2-3"
    # One point per fibrotic tile (4–9 tiles), all 4 top tiles fibrotic → hit-rate 4 / |F|.
    assert per["n_points"].between(4, 9).all()
    assert np.allclose(per["hit_rate"], 4 / per["n_points"])
    assert np.allclose(per["hit_rate_shuffled"], 4 / 36)
    iou_all = summary.query("metric == 'iou' and grade_stratum == 'all'").iloc[0]
    assert iou_all["n"] == 12 and iou_all["grade_by"] == "fibrosis_grade"
    assert iou_all["observed"] > iou_all["shuffled"]
    assert iou_all["p"] == pytest.approx(2 / 2**12)  # exact Wilcoxon: all 12 differences > 0
    hit_all = summary.query("metric == 'hit_rate' and grade_stratum == 'all'").iloc[0]
    assert hit_all["p"] < 0.01  # tied differences: normal approximation
    strata = summary.query("metric == 'iou' and grade_stratum != 'all'").set_index("grade_stratum")
    assert strata.loc["0-1", "n"] == strata.loc["2-3", "n"] == 6
    assert strata.loc["0-1", "observed"] == pytest.approx(per.loc[per["grade"] <= 1, "iou"].mean())
    paths = write_colocalisation(result, tmp_path / "evaluation")
    assert [p.name for p in paths] == ["attention.csv", "attention_summary.csv"]
    back = pd.read_csv(paths[0])
    assert list(back.columns) == list(PER_PATIENT_COLUMNS) and len(back) == 12


def test_null_attention_is_not_detected(tmp_path):
    tiles, frame = make_cohort(tmp_path, 12, planted=False, seed=5)
    summary = colocalisation(tiles, frame, tmp_path, n_perm=200).summary
    rows = summary.query("grade_stratum == 'all'")
    assert (rows["p"] > 0.05).all()
    assert (rows["observed"] - rows["shuffled"]).abs().max() < 0.1


def test_wilcoxon_keeps_its_size_and_strata_test_finds_a_difference():
    rng = np.random.default_rng(0)
    rejections = 0
    for _ in range(100):
        shuffled = rng.uniform(0.05, 0.2, 16)
        per = pd.DataFrame(
            {
                "patient_id": [f"P{i}" for i in range(16)],
                "model": "m",
                "target": "t",
                "grade": np.repeat([0, 3], 8),
                "grade_stratum": np.repeat(["0-1", "2-3"], 8),
                "k": 3,
                "iou": shuffled + rng.normal(0, 0.05, 16),
                "iou_shuffled": shuffled,
                "hit_rate": shuffled + np.repeat([0.0, 0.3], 8) + rng.normal(0, 0.02, 16),
                "hit_rate_shuffled": shuffled,
            }
        )
        summary = summarise(per).set_index(["metric", "grade_stratum"])
        rejections += summary.loc[("iou", "all"), "p"] < 0.05
        assert summary.loc[("hit_rate", "2-3"), "p"] < 0.05
        assert summary.loc[("hit_rate", "all"), "p_strata"] < 0.01
        # Without exclusion_stratum the hit-rate falls back to grade_stratum.
        assert summary.loc[("hit_rate", "2-3"), "n"] == 8
    assert 0.01 <= rejections / 100 <= 0.10


def test_summary_p_is_nan_without_differences():
    per = pd.DataFrame(
        {
            "patient_id": ["a", "b"],
            "model": "m",
            "target": "t",
            "grade": [0, 1],
            "grade_stratum": ["0-1", "0-1"],
            "k": 1,
            "iou": [0.2, 0.3],
            "iou_shuffled": [0.2, 0.3],
            "hit_rate": [np.nan, np.nan],
            "hit_rate_shuffled": [np.nan, np.nan],
        }
    )
    s = summarise(per).set_index(["metric", "grade_stratum"])
    assert np.isnan(s.loc[("iou", "0-1"), "p"]) and s.loc[("iou", "0-1"), "n"] == 2
    assert s.loc[("iou", "2-3"), "n"] == 0 and np.isnan(s.loc[("iou", "2-3"), "observed"])
    assert np.isnan(s.loc[("iou", "all"), "p_strata"])
    assert s.loc[("hit_rate", "all"), "n"] == 0


def test_results_do_not_depend_on_other_slides(tmp_path):
    tiles, frame = make_cohort(tmp_path, 4, planted=False, seed=2)
    both = colocalisation(tiles, frame, tmp_path, n_perm=50, seed=4).per_patient
    alone = colocalisation(
        tiles[tiles["patient_id"] == "P02"].iloc[::-1], frame, tmp_path, n_perm=50, seed=4
    ).per_patient
    pd.testing.assert_series_equal(
        both.set_index("patient_id").loc["P02"], alone.set_index("patient_id").loc["P02"]
    )


def test_grade_stratum():
    assert [grade_stratum(g) for g in (0, 1, 2, 3)] == ["0-1", "0-1", "2-3", "2-3"]
    assert grade_stratum(pd.NA) is None and grade_stratum(None) is None
    with pytest.raises(ValueError, match="grade must be 0–3"):
        grade_stratum(5)


# --------------------------------------------------------------------------- bad input
@pytest.fixture
def cohort3(tmp_path):
    return make_cohort(tmp_path, 3, planted=True) + (tmp_path,)


def test_missing_columns_raise(cohort3):
    tiles, frame, root = cohort3
    with pytest.raises(ValueError, match="lack column.*attention"):
        colocalisation(tiles.drop(columns="attention"), frame, root)
    with pytest.raises(TypeError, match="DataFrame"):
        colocalisation(tiles.to_dict(), frame, root)


@pytest.mark.parametrize(
    ("column", "value", "message"),
    [
        ("attention", np.nan, "non-finite 'attention'.*P01"),
        ("attention", -0.5, "negative attention"),
        ("x", np.inf, "non-finite 'x'"),
        ("tile_px", 0, "tile_px ≤ 0"),
    ],
)
def test_bad_values_raise(cohort3, column, value, message):
    tiles, frame, root = cohort3
    tiles = tiles.copy()
    tiles[column] = tiles[column].astype(float)
    tiles.loc[tiles["patient_id"] == "P01", column] = value
    with pytest.raises(ValueError, match=message):
        colocalisation(tiles, frame, root)


def test_duplicated_tiles_raise(cohort3):
    tiles, frame, root = cohort3
    with pytest.raises(ValueError, match="duplicated tile"):
        colocalisation(pd.concat([tiles, tiles.iloc[:1]]), frame, root)


def test_missing_annotations_are_recorded_skips(cohort3, caplog):
    tiles, frame, root = cohort3
    frame = frame.copy()
    frame["annotations"] = frame["annotations"].astype(object)
    frame.loc["P00", "annotations"] = None
    frame.loc["P01", "annotations"] = "ann/absent.geojson"
    (root / "broken.geojson").write_text("{")
    extra = tiles[tiles["patient_id"] == "P02"].assign(patient_id="P99")  # not in the manifest
    zero = tiles[tiles["patient_id"] == "P02"].assign(patient_id="P98", attention=0.0)
    frame.loc["P98"] = frame.loc["P02"]
    frame.loc["P97"] = frame.loc["P02"]
    frame.loc["P97", "annotations"] = "broken.geojson"
    broken = tiles[tiles["patient_id"] == "P02"].assign(patient_id="P97")
    with caplog.at_level("WARNING", logger="stromalens"):
        result = colocalisation(pd.concat([tiles, extra, zero, broken]), frame, root, n_perm=10)
    assert list(result.per_patient["patient_id"]) == ["P02"]
    reasons = result.skipped.set_index("patient_id")["reason"]
    assert reasons["P00"] == "no annotations"
    assert reasons["P01"].startswith("annotations not found")
    assert reasons["P99"] == "patient not in the manifest"
    assert reasons["P98"] == "attention is zero on every tile"
    assert reasons["P97"].startswith("cannot read annotations")
    assert "skipped slides" in caplog.text
    paths = write_colocalisation(result, root / "out")
    assert paths[-1].name == "attention_skipped.csv"
