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
