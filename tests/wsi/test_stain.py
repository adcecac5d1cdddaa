import numpy as np
import pytest

from stromalens.wsi.reader import open_slide
from stromalens.wsi.stain import (
    MacenkoNormalizer,
    default_reference,
    fit_macenko,
    reference_from_image,
)

from .conftest import REAL_SLIDE, REAL_TARGET, needs_real_data


def test_bundled_reference_is_a_pair_of_unit_od_vectors():
    ref = default_reference()
    assert ref.stain_matrix.shape == (3, 2)
    assert np.allclose(np.linalg.norm(ref.stain_matrix, axis=0), 1.0, atol=1e-4)
    assert (ref.stain_matrix > 0).all()
    assert ref.stain_matrix[0, 0] > ref.stain_matrix[0, 1]  # haematoxylin absorbs more red


def test_fit_needs_stained_pixels():
    with pytest.raises(ValueError, match="stained pixels"):
        fit_macenko(np.full((64, 64, 3), 250, np.uint8))


def test_unfitted_transform_is_an_error():
    with pytest.raises(ValueError, match="not fitted"):
        MacenkoNormalizer().transform(np.zeros((1, 8, 8, 3), np.uint8))


def test_batched_transform_equals_per_tile_and_keeps_types(synthetic_slides):
    import torch

    with open_slide(synthetic_slides[0]) as slide:
        tiles = np.stack([slide.read_region((600 + 224 * i, 600), 0, (224, 224)) for i in range(3)])
    norm = MacenkoNormalizer().fit(tiles)
    batch = norm.transform(tiles)
    single = np.stack([norm.transform(t) for t in tiles])
    assert batch.dtype == np.uint8 and batch.shape == tiles.shape
    assert np.array_equal(batch, single)
    as_torch = norm.transform(torch.from_numpy(tiles.copy()))
    assert isinstance(as_torch, torch.Tensor)
    assert np.array_equal(as_torch.numpy(), batch)


@needs_real_data
def test_macenko_agrees_with_torchstain_on_real_he():
    """torchstain 1.4 TorchMacenkoNormalizer: fit(target), normalize(source, stains=False)."""
    torchstain = pytest.importorskip("torchstain", reason="torchstain is a test extra")
    import torch
    from PIL import Image

    target = np.asarray(Image.open(REAL_TARGET).convert("RGB"))
    with open_slide(REAL_SLIDE) as slide:
        source = slide.read_region((800, 1200), 0, (512, 512))
    reference = torchstain.normalizers.MacenkoNormalizer(backend="torch")
    reference.fit(torch.from_numpy(target.copy()).permute(2, 0, 1))
    expected, _, _ = reference.normalize(torch.from_numpy(source.copy()).permute(2, 0, 1))
    ours = MacenkoNormalizer(reference_from_image(target)).fit(source).transform(source)
    diff = np.abs(ours.astype(float) - expected.numpy().astype(float))
    # torchstain truncates to int, we round: differences of one grey level are expected.
    assert diff.mean() < 1.0
    assert np.percentile(diff, 99.9) <= 2.0
    assert np.allclose(
        reference.HERef.numpy(), reference_from_image(target).stain_matrix, atol=5e-3
    )


@needs_real_data
def test_bundled_reference_is_the_real_target_tile():
    fitted = reference_from_image(REAL_TARGET)
    assert np.allclose(fitted.stain_matrix, default_reference().stain_matrix, atol=1e-4)


# ---------------------------------------------------------------- batched torch vs numpy
def _real_tiles(n_side: int = 224):
    """Every whole 224-px tile of the real CMU-1 region (117 tiles, skin H&E and glass)."""
    with open_slide(REAL_SLIDE) as slide:
        width, height = slide.dimensions
        return np.stack(
            [
                slide.read_region((x, y), 0, (n_side, n_side))
                for x in range(0, width - n_side + 1, n_side)
                for y in range(0, height - n_side + 1, n_side)
            ]
        )


def _assert_within_one_grey_level(torch_out: np.ndarray, numpy_out: np.ndarray) -> None:
    diff = np.abs(torch_out.astype(int) - numpy_out.astype(int))
    assert diff.max() <= 1
    assert (diff > 0).mean() < 1e-3  # float32 vs float64 only moves values at a rounding edge


@needs_real_data
def test_torch_transform_equals_numpy_float64_on_real_tiles():
    """Reference: MacenkoNormalizer.transform_numpy, the paper's map in float64 numpy."""
    import torch

    tiles = _real_tiles()
    norm = MacenkoNormalizer().fit(tiles[::4])
    expected = norm.transform_numpy(tiles)
    _assert_within_one_grey_level(norm.transform(torch.from_numpy(tiles)).numpy(), expected)
    assert not np.array_equal(expected, tiles)  # the slide's stain really moved


def test_torch_transform_equals_numpy_float64_on_synthetic_tiles(synthetic_slides):
    import torch

    with open_slide(synthetic_slides[0]) as slide:
        tiles = np.stack([slide.read_region((300 + 224 * i, 500), 0, (224, 224)) for i in range(6)])
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 256, (2, 224, 224, 3), dtype=np.uint8)  # every grey level, extremes
    tiles = np.concatenate([tiles, noise])
    norm = MacenkoNormalizer().fit(tiles[:6])
    _assert_within_one_grey_level(
        norm.transform(torch.from_numpy(tiles)).numpy(), norm.transform_numpy(tiles)
    )


def test_torch_transform_ignores_a_tf32_matmul_setting(synthetic_slides):
    """``set_float32_matmul_precision('high')`` (TF32 on a GPU) must not reach the transform."""
    import torch

    with open_slide(synthetic_slides[0]) as slide:
        tiles = np.stack([slide.read_region((300 + 224 * i, 500), 0, (224, 224)) for i in range(2)])
    norm = MacenkoNormalizer().fit(tiles)
    exact = norm.transform(torch.from_numpy(tiles))
    saved = torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision("high")
        assert torch.equal(norm.transform(torch.from_numpy(tiles)), exact)
        assert torch.get_float32_matmul_precision() == "high"  # restored after the transform
    finally:
        torch.set_float32_matmul_precision(saved)


@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs a CUDA GPU")
def test_transform_on_the_gpu_equals_numpy(synthetic_slides):
    import torch

    with open_slide(synthetic_slides[0]) as slide:
        tiles = np.stack([slide.read_region((300 + 224 * i, 500), 0, (224, 224)) for i in range(4)])
    norm = MacenkoNormalizer().fit(tiles)
    on_gpu = norm.transform(torch.from_numpy(tiles).cuda())
    assert on_gpu.device.type == "cuda" and on_gpu.dtype == torch.uint8
    _assert_within_one_grey_level(on_gpu.cpu().numpy(), norm.transform_numpy(tiles))


def test_numpy_transform_refuses_channels_first():
    norm = MacenkoNormalizer()
    norm.stain_matrix_, norm.max_concentrations_ = (
        default_reference().stain_matrix,
        default_reference().max_concentrations,
    )
    with pytest.raises(ValueError, match="channels-last"):
        norm.transform_numpy(np.zeros((1, 3, 8, 8), np.uint8))
