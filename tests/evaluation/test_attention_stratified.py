"""The stratified chance level of attention co-localisation (attention permuted within each
tissue compartment), against exact hypergeometric answers on constructed slides."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from scipy import stats

from stromalens.evaluation import validation
from stromalens.evaluation.annotations import Annotations, rasterise_polygons
from stromalens.evaluation.attention import colocalisation, colocalise_slide
from stromalens.evaluation.compartments import (
    CompartmentMaps,
    dominant_compartments,
    label_map_path,
    read_label_map,
)

from ._annotation_shapes import TILE, geojson, grid, rect
from .test_attention import exact_binary_iou, naive_iou

STROMA, TUMOUR = 1, 2


def _hypergeom_pmf(n: int, f: int, k: int) -> np.ndarray:
    """P(h), h = 0..f, of h ~ Hypergeom(N, |F|, K): scipy.stats.hypergeom(M=N, n=|F|, N=K)."""
    return stats.hypergeom(n, f, k).pmf(np.arange(f + 1))


def _iou_moments(pmf_h: np.ndarray, k: int, f: int) -> tuple[float, float]:
    """E and SD of IoU = h / (K + |F| − h) for binary tiles (tile units), h with pmf ``pmf_h``."""
    h = np.arange(len(pmf_h))
    g = h / (k + f - h)
    mean = float((pmf_h * g).sum())
    return mean, float(np.sqrt((pmf_h * (g - mean) ** 2).sum()))


def _stroma_left_slide():
    """10 × 10 tiles, the left six columns stroma (60 tiles), the right four tumour (40)."""
    x, y = grid(10, 10)
    return x, y, np.where(x < 6 * TILE, STROMA, TUMOUR)


def test_stratified_iou_is_the_hypergeometric_within_the_annotated_compartment():
    n_perm = 4000
    x, y, comp = _stroma_left_slide()
    # Fibrosis: the top two rows of the stroma, 12 tiles; attention prefers stroma, not fibrosis:
    # the top ten are eight stroma tiles off the fibrosis (rows 5-6) and two tumour tiles.
    ann = Annotations([[rect(0, 0, 6 * TILE, 2 * TILE)]])
    att = np.zeros(100)
    stroma_off = np.flatnonzero((comp == STROMA) & (y >= 5 * TILE))[:8]
    att[stroma_off] = 1.0
    att[np.flatnonzero(comp == TUMOUR)[:2]] = 1.0
    res = colocalise_slide(x, y, TILE, att, ann, k=10, n_perm=n_perm, rng=5, compartments=comp)
    assert res["iou"] == 0.0
    # Plain: h ~ Hypergeom(100, 12, 10). Stratified: the two tumour tiles never meet F, and
    # h ~ Hypergeom(N_stroma = 60, |F| = 12, K_stroma = 8); IoU = h / (10 + 12 − h).
    plain, plain_sd = exact_binary_iou(100, 12, 10)
    strat, strat_sd = _iou_moments(_hypergeom_pmf(60, 12, 8), 10, 12)
    assert res["iou_shuffled"] == pytest.approx(plain, abs=4 * plain_sd / np.sqrt(n_perm))
    assert res["iou_stratified"] == pytest.approx(strat, abs=4 * strat_sd / np.sqrt(n_perm))
    assert strat > plain  # choosing stroma alone beats the plain chance level


def test_stratified_iou_convolves_the_compartments_when_fibrosis_spans_both():
    n_perm = 4000
    x, y, comp = _stroma_left_slide()
    # Fibrosis: row 0 over columns 3–9: 3 stroma tiles and 4 tumour tiles; top-6 = 4 + 2.
    ann = Annotations([[rect(3 * TILE, 0, 10 * TILE, TILE)]])
    att = np.zeros(100)
    att[np.flatnonzero(comp == STROMA)[-4:]] = 1.0
    att[np.flatnonzero(comp == TUMOUR)[-2:]] = 1.0
    res = colocalise_slide(x, y, TILE, att, ann, k=6, n_perm=n_perm, rng=1, compartments=comp)
    # h = h_s + h_t, independent: Hypergeom(60, 3, 4) and Hypergeom(40, 4, 2), convolved.
    pmf = np.convolve(_hypergeom_pmf(60, 3, 4), _hypergeom_pmf(40, 4, 2))
    mean, sd = _iou_moments(pmf, 6, 7)
    assert res["iou_stratified"] == pytest.approx(mean, abs=4 * sd / np.sqrt(n_perm))


def test_stratified_hit_rate_is_exact_per_compartment():
    x, y, comp = _stroma_left_slide()
    points = np.stack([x + TILE / 2, y + TILE / 2], 1)  # one point per tile
    att = np.zeros(100)
    att[np.flatnonzero(comp == STROMA)[:3]] = 1.0
    att[np.flatnonzero(comp == TUMOUR)[:7]] = 1.0
    res = colocalise_slide(x, y, TILE, att, Annotations([], points), k=10, n_perm=0,
                           compartments=comp)  # fmt: skip
    # non-overlapping tiles: P(hit) = K_s / N_s for a point in compartment s
    assert res["hit_rate_shuffled"] == pytest.approx(10 / 100)
    assert res["hit_rate_stratified"] == pytest.approx((60 * 3 / 60 + 40 * 7 / 40) / 100)
    assert np.isnan(res["iou_stratified"])  # n_perm = 0: no IoU draws


def test_overlapping_tiles_stratified_match_brute_force():
    # Five 32-px tiles at a 16-px stride, compartments S S T T S; top-2 = tiles 1 (S), 3 (T).
    x, y = np.arange(5) * 16.0, np.zeros(5)
    comp = np.array([STROMA, STROMA, TUMOUR, TUMOUR, STROMA])
    att = np.array([0.3, 0.9, 0.1, 0.5, 0.2])
    points = np.array([[2.0, 3], [20, 3], [40, 3], [70, 3], [90, 3]])
    ann = Annotations([[rect(0, 0, 40, TILE)]], points)
    res = colocalise_slide(x, y, TILE, att, ann, k=2, n_perm=4000, rng=0, compartments=comp)
    # Every equally likely stratified draw: one of the stroma tiles {0, 1, 4} and one of the
    # tumour tiles {2, 3}.
    draws = [set(d) for d in itertools.product([0, 1, 4], [2, 3])]
    shape, cell = (8, 28), 4.0
    fib = rasterise_polygons(ann.polygons, (0, 0), cell, shape)
    ious = [naive_iou(x, y, TILE, d, fib, cell, shape) for d in draws]
    assert res["iou_stratified"] == pytest.approx(np.mean(ious), abs=4 * np.std(ious) / 63)

    def covered(point, chosen):
        return any(x[i] <= point[0] < x[i] + TILE for i in chosen)

    brute = np.mean([np.mean([covered(p, d) for p in points]) for d in draws])
    assert res["hit_rate_stratified"] == pytest.approx(brute)  # exact
    with pytest.raises(ValueError, match="compartments has shape"):
        colocalise_slide(x, y, TILE, att, ann, k=2, compartments=comp[:3])


def test_one_compartment_gives_the_plain_baseline():
    x, y = grid(6, 6)
    ann = Annotations([[rect(0, 0, 3 * TILE, 3 * TILE)]], np.array([[5.0, 5.0], [100, 100]]))
    att = np.random.default_rng(0).random(36)
    res = colocalise_slide(x, y, TILE, att, ann, k=4, n_perm=300, rng=2,
                           compartments=np.full(36, STROMA))  # fmt: skip
    assert res["hit_rate_stratified"] == pytest.approx(res["hit_rate_shuffled"])
    mean, sd = exact_binary_iou(36, 9, 4)
    assert res["iou_stratified"] == pytest.approx(mean, abs=4 * sd / np.sqrt(300))


# --------------------------------------------------------------------------- label maps
def test_dominant_compartment_of_each_tile_footprint():
    labels = np.zeros((6, 8), np.uint8)  # downsample 2: a 12 × 16 px slide
    labels[:, :4] = STROMA
    labels[:2, 4:] = TUMOUR
    labels[2:, 4:] = 3
    labels[0, 0] = TUMOUR  # a minority inside the first tile
    # Tiles of 4 px: (0, 0) stroma; (8, 0) tumour; (8, 4) half tumour, half immune → tie to 2;
    # (8, 8) immune; one tile outside the map → −1.
    codes = dominant_compartments(labels, 2, [0, 8, 8, 8, 40], [0, 0, 2, 8, 40], 4)
    assert codes.tolist() == [STROMA, TUMOUR, TUMOUR, 3, -1]


def _labelled_cohort(tmp_path: Path):
    """Four 10 × 10-tile slides with label maps (stroma left, tumour right) and annotations on
    the stroma's top two rows; attention on the stroma tiles off the annotation."""
    x, y, comp = _stroma_left_slide()
    ds = 4
    labels = np.where(np.arange(10 * TILE // ds) < 6 * TILE // ds, STROMA, TUMOUR)
    labels = np.tile(labels.astype(np.uint8), (10 * TILE // ds, 1))
    (tmp_path / "wsi").mkdir()
    (tmp_path / "ann").mkdir()
    rows, manifest = [], []
    for i in range(4):
        pid = f"P{i}"
        Image.fromarray(labels).save(label_map_path(tmp_path / "wsi" / f"{pid}.tiff"))
        doc = geojson([[rect(0, 0, 6 * TILE, 2 * TILE)]])
        (tmp_path / "ann" / f"{pid}.geojson").write_text(json.dumps(doc))
        att = np.where((comp == STROMA) & (y >= 4 * TILE), 1.0, 0.01) + 0.001 * i
        rows += [
            (pid, "fusion", "ers_caf", xi, yi, TILE, a) for xi, yi, a in zip(x, y, att, strict=True)
        ]
        manifest.append(
            {
                "patient_id": pid,
                "annotations": f"ann/{pid}.geojson",
                "fibrosis_grade": 2,
                "exclusion_grade": 1,
                "wsi": f"wsi/{pid}.tiff",
            }
        )
    columns = ["patient_id", "model", "target", "x", "y", "tile_px", "attention"]
    return pd.DataFrame(rows, columns=columns), pd.DataFrame(manifest).set_index("patient_id")


def test_colocalisation_uses_the_label_maps_of_a_synthetic_cohort_only(tmp_path):
    tiles, frame = _labelled_cohort(tmp_path)
    real = colocalisation(tiles, frame, tmp_path, n_perm=200, k=10).per_patient
    assert real["iou_stratified"].isna().all()  # no synth.json: a real cohort, plain baseline
    (tmp_path / "synth.json").write_text(json.dumps({"label_downsample": 4}))
    assert CompartmentMaps.find(tmp_path) == CompartmentMaps(tmp_path, 4)
    result = colocalisation(tiles, frame, tmp_path, n_perm=200, k=10)
    per = result.per_patient
    # ten stroma tiles off the annotation: IoU 0; the stratified chance level is that of
    # Hypergeom(60, 12, 10) with IoU = h / (10 + 12 − h), above the plain one
    strat, sd = _iou_moments(_hypergeom_pmf(60, 12, 10), 10, 12)
    assert per["iou_stratified"].to_numpy() == pytest.approx(strat, abs=4 * sd / np.sqrt(200))
    assert (per["iou_stratified"] > per["iou_shuffled"]).all()
    summary = result.summary.query("metric == 'iou' and grade_stratum == 'all'").iloc[0]
    assert summary["stratified"] == pytest.approx(per["iou_stratified"].mean())
    # (d)'s row takes the stratified chance level when every patient has it
    sizes = validation.planted_sizes(_planted())
    row = validation.validation_table(sizes, {}, {"attention": per}, None, None)
    row = row.set_index("mechanism").loc["annotation"]
    assert row["effect"] == pytest.approx((per["iou"] - per["iou_stratified"]).mean())
    assert "within" in row["claim"] and not row["detected"]
    plain = validation.validation_table(
        sizes, {}, {"attention": per.drop(columns="iou_stratified")}, None, None
    ).set_index("mechanism")
    assert plain.loc["annotation", "effect"] == pytest.approx(
        (per["iou"] - per["iou_shuffled"]).mean()
    )


def test_a_broken_label_map_is_named(tmp_path):
    path = tmp_path / "P0.labels.png"
    path.write_bytes(b"not a png")
    with pytest.raises(ValueError, match="P0.labels.png"):
        read_label_map(path)


def _planted():
    from stromalens.synthetic.mechanisms import planted

    return planted().as_dict()
