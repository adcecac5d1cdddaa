"""Registration of a sequence onto the mask-carrying one, and the moved mask."""

import numpy as np
import pytest
import SimpleITK as sitk

from stromalens.radiology.registration import (
    RegistrationError,
    centroid_shift,
    dice,
    move_mask,
    register,
)
from stromalens.radiology.settings import RegistrationSettings


def phantom(spacing=(1.5, 1.5, 2.0), size=(48, 48, 36)):
    """Smooth blobs of different intensities (textured enough for mutual information)."""
    rng = np.random.default_rng(3)
    z, y, x = np.meshgrid(*[np.arange(n) for n in size[::-1]], indexing="ij")
    physical = [x * spacing[0], y * spacing[1], z * spacing[2]]
    array = np.zeros(size[::-1], np.float32)
    extent = np.array(size) * np.array(spacing)
    for _ in range(12):
        centre = rng.uniform(0.25, 0.75, 3) * extent
        radius = rng.uniform(4, 10)
        d2 = sum((p - c) ** 2 for p, c in zip(physical, centre, strict=True))
        array += rng.uniform(50, 200) * np.exp(-d2 / (2 * radius**2))
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing)
    image.SetOrigin((-30.0, 12.0, 5.0))
    return image


def known_rigid():
    transform = sitk.Euler3DTransform()
    transform.SetCenter((6.0, 48.0, 41.0))
    transform.SetRotation(*np.deg2rad([4.0, -3.0, 6.0]))
    transform.SetTranslation((3.0, -2.5, 1.5))
    return transform


def test_a_known_rigid_transform_is_recovered():
    fixed = phantom()
    truth = known_rigid()  # fixed points -> moving points
    # moving(T(x)) = fixed(x): resample fixed through T⁻¹ onto its own grid
    moving = sitk.Resample(fixed, fixed, truth.GetInverse(), sitk.sitkLinear, 0.0)
    result = register(
        fixed, moving, RegistrationSettings(method="rigid", sampling=0.5, iterations=200)
    )
    # the transforms agree on points across the tumour's region (mm)
    offsets = [(dx, dy, dz) for dx in (-15, 15) for dy in (-15, 15) for dz in (-10, 10)]
    points = [(6.0 + dx, 48.0 + dy, 41.0 + dz) for dx, dy, dz in offsets]
    errors = [
        np.linalg.norm(np.subtract(result.transform.TransformPoint(p), truth.TransformPoint(p)))
        for p in points
    ]
    assert max(errors) < 0.2, errors  # mm; voxels are 1.5 × 1.5 × 2 mm
    assert result.metric_after < result.metric_before


def test_the_mask_moves_with_the_transform():
    fixed = phantom()
    truth = known_rigid()
    moving = sitk.Resample(fixed, fixed, truth.GetInverse(), sitk.sitkLinear, 0.0)
    mask = sitk.Cast(fixed > 100, sitk.sitkUInt8)
    expected = sitk.Cast(moving > 100, sitk.sitkUInt8)  # the same structure, seen in moving
    moved, inside = move_mask(mask, moving, truth)
    assert dice(moved, expected) > 0.9
    assert inside > 0.95
    shift = sitk.TranslationTransform(3, (3.0, -4.0, 0.0))
    assert centroid_shift(mask, shift) == pytest.approx(5.0)
    assert centroid_shift(mask, shift, start=shift) == pytest.approx(0.0)  # from the start


def test_a_mask_moved_off_the_image_reports_how_much_is_inside():
    fixed = phantom()
    mask = sitk.Cast(fixed > 100, sitk.sitkUInt8)
    shift = sitk.TranslationTransform(3, (200.0, 0.0, 0.0))  # far outside the moving image
    moved, inside = move_mask(mask, fixed, shift)
    assert inside == 0.0 and not sitk.GetArrayViewFromImage(moved).any()


def test_a_registration_that_cannot_work_says_why():
    fixed = phantom()
    blank = sitk.Image(fixed.GetSize(), sitk.sitkFloat32)
    blank.CopyInformation(fixed)
    with pytest.raises(RegistrationError, match="moving image is constant"):
        register(fixed, blank, RegistrationSettings(method="rigid"))


def test_shared_frame_of_reference_is_the_identity():
    fixed = phantom()
    result = register(fixed, fixed, RegistrationSettings(method="none"))
    assert result.metric_before == result.metric_after
    assert result.transform.GetParameters() == (0.0,) * 6
