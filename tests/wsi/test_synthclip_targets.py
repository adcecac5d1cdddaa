"""The synthetic CLIP's contrastive targets: a caption is a positive of exactly the tiles it
describes, so a caption naming a fibroblast density never matches a tile of the other density
(issue 17, mechanism (g): with same-class targets the v4 CLIP embedded "… with many
fibroblasts" and "… with few fibroblasts" at cosine 0.999)."""

import numpy as np

from stromalens.wsi.synthclip import caption_density, contrastive_targets, make_caption

STROMA = np.array([0.95, 0.05, 0.0])
TUMOUR = np.array([0.05, 0.95, 0.0])


def test_caption_density_reads_back_what_the_caption_names():
    rng = np.random.default_rng(0)
    for dense in (True, False):
        named = {caption_density(make_caption(STROMA, dense, False, rng, density_rate=1.0))}
        assert named == {dense}
        unnamed = {caption_density(make_caption(STROMA, dense, True, rng, density_rate=0.0))}
        assert unnamed == {None}
    # the stroma synonyms "cancer-associated fibroblasts", "fibroblasts in collagen" name none
    tumour = [make_caption(TUMOUR, True, True, rng, density_rate=1.0) for _ in range(50)]
    assert {caption_density(c) for c in tumour} == {None}
    assert caption_density("cancer-associated fibroblasts and tumour cells") is None


def test_targets_match_a_hand_computed_example():
    # tiles: 0 dense stroma, 1 sparse stroma, 2 dense stroma, 3 tumour; captions (one per tile):
    # 0 names none, 1 "few fibroblasts", 2 "many fibroblasts", 3 names none
    m = contrastive_targets(
        np.array([0, 0, 0, 1]), np.array([True, False, True, False]), [None, False, True, None]
    )
    expected = np.array(
        [
            [1, 0, 1, 0],  # dense stroma: not the "few" caption
            [1, 1, 0, 0],  # sparse stroma: not the "many" caption
            [1, 0, 1, 0],
            [0, 0, 0, 1],  # another class: only its own caption
        ],
        np.float32,
    )
    np.testing.assert_array_equal(m, expected)


def test_unnamed_density_gives_the_same_class_targets_of_the_null():
    rng = np.random.default_rng(3)
    classes, dense = rng.integers(0, 9, 64), rng.uniform(size=64) < 0.5
    m = contrastive_targets(classes, dense, [None] * 64)
    np.testing.assert_array_equal(m, (classes[:, None] == classes[None, :]).astype(np.float32))


def test_every_tile_and_every_caption_keeps_a_positive():
    rng = np.random.default_rng(4)
    classes, dense = rng.integers(0, 3, 96), rng.uniform(size=96) < 0.5
    captions = [
        make_caption(np.eye(3)[c] * 0.9 + 0.03, bool(d), False, rng, density_rate=0.4)
        for c, d in zip(classes, dense, strict=True)
    ]
    m = contrastive_targets(classes, dense, [caption_density(c) for c in captions])
    assert np.all(np.diag(m) == 1)  # each caption describes its own tile
    assert m.sum(axis=0).min() >= 1 and m.sum(axis=1).min() >= 1
    named = np.array([caption_density(c) is not None for c in captions])
    assert named.any() and (m[:, named] < (classes[:, None] == classes[None, named])).any()


def _tiles(fibroblasts, slide, stroma):
    from stromalens.wsi.synthclip import TileSet

    n = len(fibroblasts)
    shares = np.array([[s, 1 - s, 0.0] for s in stroma])
    return TileSet(
        images=np.zeros((n, 1, 1, 3), np.uint8),
        shares=shares,
        fibroblasts=np.asarray(fibroblasts, float),
        lymphocytes=np.zeros(n),
        slide=np.asarray(slide),
        classes=np.zeros(n, np.int64),
    )


def test_density_labels_cut_at_each_slides_own_median():
    from stromalens.wsi.synthclip import density_labels

    # slide 0: a CAF-poor slide with one hotspot tile (9); slide 1: CAF-rich, one hotspot (40);
    # the last tile of slide 1 is tumour (stroma 0.2) and does not enter the median
    tiles = _tiles([2, 3, 9, 20, 22, 40, 100], [0, 0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1, 0.2])
    # medians by hand: slide 0 → 3, slide 1 → 22 (of 20, 22, 40); global → 15.5 (of six)
    assert density_labels(tiles, "slide").tolist() == [False, False, True, False, False, True, True]
    assert density_labels(tiles, "global").tolist() == [False, False, False, True, True, True, True]


def test_density_labels_fall_back_to_the_global_median_and_refuse_other_cuts():
    import pytest

    from stromalens.wsi.synthclip import ClipTrainSettings, density_labels

    tiles = _tiles([5, 10, 30], [0, 0, 1], [1, 1, 0.1])  # slide 1 has no stromal tile
    assert density_labels(tiles, "slide").tolist() == [False, True, True]  # 30 > median 7.5
    with pytest.raises(ValueError, match="'slide' or 'global'"):
        density_labels(tiles, "local")
    with pytest.raises(ValueError, match="density_cut"):
        ClipTrainSettings(density_cut="median")
