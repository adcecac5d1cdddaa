import cv2
import numpy as np
import pytest

from stromalens.wsi.reader import open_slide
from stromalens.wsi.tiling import TilingSpec, choose_level, iter_blocks, plan_tiles, qc_pass
from stromalens.wsi.tissue import otsu_threshold, tissue_mask

from .conftest import REAL_SLIDE, needs_real_data


def _maps(path):
    stem = str(path)[: -len(".tiff")]
    labels = cv2.imread(stem + ".labels.png", cv2.IMREAD_UNCHANGED)
    artefacts = cv2.imread(stem + ".artefacts.png", cv2.IMREAD_UNCHANGED)
    return labels, artefacts


def test_otsu_separates_two_modes():
    values = np.concatenate([np.full(500, 10), np.full(500, 200)]).astype(np.uint8)
    assert 10 <= otsu_threshold(values) < 200


def test_tissue_mask_rejects_bad_input():
    with pytest.raises(ValueError, match="uint8"):
        tissue_mask(np.zeros((10, 10)), mpp=8.0)
    with pytest.raises(ValueError, match="mpp"):
        tissue_mask(np.zeros((10, 10, 3), np.uint8), mpp=0)


def test_choose_level_prefers_the_coarsest_sufficient_level():
    assert choose_level([0.25, 0.5, 1.0], 0.5, 0.02) == 1
    assert choose_level([0.25, 1.0], 0.5, 0.02) == 0
    with pytest.raises(ValueError, match="finer"):
        choose_level([1.0, 4.0], 0.5, 0.02)


def test_tissue_mask_matches_the_label_map(synthetic_slides):
    ious = []
    for path in synthetic_slides:
        labels, _ = _maps(path)
        with open_slide(path) as slide:
            plan = plan_tiles(slide)
        truth = cv2.resize(
            (labels > 0).astype(np.uint8),
            plan.mask.shape[::-1],
            interpolation=cv2.INTER_NEAREST,
        ).astype(bool)
        ious.append((plan.mask & truth).sum() / (plan.mask | truth).sum())
    assert np.min(ious) > 0.85, ious


def test_tile_tissue_fraction_matches_truth(synthetic_slides):
    errors = []
    for path in synthetic_slides[:4]:
        labels, _ = _maps(path)
        with open_slide(path) as slide:
            plan = plan_tiles(slide, TilingSpec(min_tissue=0.0))
        for (x, y), fraction in zip(plan.coords // 4, plan.tissue, strict=True):
            errors.append(fraction - np.mean(labels[y : y + 56, x : x + 56] > 0))
    assert np.mean(np.abs(errors)) < 0.08


def test_qc_catches_blur_and_pen_and_keeps_clean_tiles(synthetic_slides):
    rows = []
    for path in synthetic_slides:
        _, artefacts = _maps(path)
        with open_slide(path) as slide:
            plan = plan_tiles(slide)
            for indices, _, qc in iter_blocks(slide, plan):
                kept = qc_pass(qc, plan.spec)
                for k, (x, y) in enumerate(plan.coords[indices] // 4):
                    a = artefacts[y : y + 56, x : x + 56]
                    rows.append((np.mean(a & 1 > 0), np.mean(a & 2 > 0), kept[k]))
    blur, pen, kept = np.array(rows).T
    kept = kept.astype(bool)
    clean = (blur == 0) & (pen == 0)
    assert clean.sum() > 50
    assert kept[clean].mean() > 0.95
    if (blur > 0.8).any():
        assert not kept[blur > 0.8].any()
    if (pen > 0.2).any():
        assert (~kept[pen > 0.2]).mean() > 0.8


def test_resampling_covers_the_same_area(synthetic_slides):
    with open_slide(synthetic_slides[0]) as slide:
        fine = plan_tiles(slide, TilingSpec(target_mpp=0.5))
        coarse = plan_tiles(slide, TilingSpec(target_mpp=1.0, min_tissue=0.0))
        assert fine.read_px == 224 and not fine.resample
        assert coarse.level == 0 and coarse.read_px == 448 and coarse.resample
        assert coarse.tile_level0_px == pytest.approx(448)
        _, tiles, _ = next(iter_blocks(slide, coarse))
        assert tiles.shape[1:] == (224, 224, 3)


def test_spec_rejects_bad_values():
    with pytest.raises(ValueError, match="min_tissue"):
        TilingSpec(min_tissue=1.5)
    with pytest.raises(ValueError, match="target_mpp"):
        TilingSpec(target_mpp=0)


@needs_real_data
def test_real_slide_tiles_and_mostly_passes_qc():
    with open_slide(REAL_SLIDE) as slide:
        plan = plan_tiles(slide)
        assert not plan.resample  # 0.499 µm/px is within tolerance of 0.5
        kept = np.concatenate([qc_pass(qc, plan.spec) for _, _, qc in iter_blocks(slide, plan)])
    assert len(plan) > 30
    assert kept.mean() > 0.8
