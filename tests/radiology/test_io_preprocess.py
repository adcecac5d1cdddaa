"""Reading (NIfTI, NRRD, DICOM series), mask checks, and preprocessing invariants."""

import numpy as np
import pytest

from stromalens.radiology import io, nifti, preprocess
from stromalens.radiology.settings import PreprocessSettings, StabilitySettings

from .conftest import RADIOLOGY, require

sitk = pytest.importorskip("SimpleITK")


def _phantom(shape=(20, 40, 40), spacing=(0.8, 0.8, 2.5), bias=0.0, radius=7):
    z, y, x = np.mgrid[: shape[0], : shape[1], : shape[2]]
    cz, cy, cx = shape[0] // 2, shape[1] // 2, shape[2] // 2
    body = ((y - cy) ** 2 + (x - cx) ** 2) < (0.45 * shape[1]) ** 2
    tumour = ((z - cz) ** 2 * 6 + (y - cy) ** 2 + (x - cx - 2) ** 2) < radius**2
    rng = np.random.default_rng(0)
    values = np.where(body, 100.0, 0.0) + np.where(tumour, 60.0, 0.0) + rng.normal(0, 2, shape)
    values *= 1 + bias * (x / shape[2] - 0.5)
    image = sitk.GetImageFromArray(np.clip(values, 0, None).astype(np.float32))
    mask = sitk.GetImageFromArray(tumour.astype(np.uint8))
    for im in (image, mask):
        im.SetSpacing(spacing)
        im.SetOrigin((-10.0, 5.0, 3.0))
    return image, mask


def test_reads_nifti_and_nrrd():
    folder = require(RADIOLOGY / "ibsi_sts" / "STS_001")
    image = io.read_image(folder / "MR_T1_image.nii.gz")
    mask = io.check_mask(image, io.read_image(folder / "MR_T1_mask.nii.gz"), patient="STS_001")
    assert mask.GetSize() == image.GetSize()
    nrrd = io.read_image(require(RADIOLOGY / "pyradiomics") / "breast1_image.nrrd")
    assert nrrd.GetSize() == (45, 120, 21)


def test_reads_a_dicom_series(tmp_path):
    image, _ = _phantom()
    image = sitk.Cast(sitk.RescaleIntensity(image, 0, 1000), sitk.sitkInt16)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    series = "1.2.826.0.1.3680043.2.1125.1"
    for k in range(image.GetDepth()):
        piece = image[:, :, k]
        origin = image.TransformIndexToPhysicalPoint((0, 0, k))
        for tag, value in {
            "0008|0060": "MR",
            "0020|000e": series,
            "0020|0013": str(k + 1),
            "0020|0032": "\\".join(f"{v:.6f}" for v in origin),
            "0020|0037": "1\\0\\0\\0\\1\\0",
            "0028|0030": "0.8\\0.8",
            "0018|0050": "2.5",
        }.items():
            piece.SetMetaData(tag, value)
        writer.SetFileName(str(tmp_path / f"slice{k:03d}.dcm"))
        writer.Execute(piece)
    read = io.read_image(tmp_path)
    assert read.GetSize() == image.GetSize()
    np.testing.assert_allclose(read.GetSpacing(), image.GetSpacing(), rtol=1e-5)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(read), sitk.GetArrayFromImage(image))


def test_mask_mismatch_is_named_or_resampled():
    image, mask = _phantom()
    shifted = sitk.Image(mask)
    shifted.SetOrigin((-9.0, 5.0, 3.0))
    with pytest.raises(io.GeometryError, match="patient P7, sequence t2: .*origin"):
        io.check_mask(image, shifted, patient="P7", sequence="t2")
    fixed = io.check_mask(image, shifted, on_mismatch="resample")
    assert fixed.GetOrigin() == image.GetOrigin() and sitk.GetArrayViewFromImage(fixed).any()
    with pytest.raises(io.GeometryError, match="no voxel of label 1"):
        io.check_mask(image, mask * 0, patient="P7")
    outside = sitk.Image(mask)
    outside.SetOrigin((500.0, 5.0, 3.0))
    with pytest.raises(io.GeometryError, match="outside the image"):
        io.check_mask(image, outside, on_mismatch="resample")
    with pytest.raises(FileNotFoundError):
        io.read_image("/nonexistent/t1.nii.gz")


@pytest.mark.parametrize("name", ["t1.nii.gz", "t1.nii"])
def test_a_truncated_nifti_is_refused(tmp_path, name):
    image, _ = _phantom()
    sitk.WriteImage(image, str(tmp_path / name))
    whole = (tmp_path / name).read_bytes()
    cut = tmp_path / f"cut_{name}"
    cut.write_bytes(whole[: int(0.7 * len(whole))])
    # what the check guards against: ITK reads the missing 30% as zeros, without an error
    silent = sitk.GetArrayViewFromImage(sitk.ReadImage(str(cut)))
    assert (silent == 0).mean() > 0.25
    with pytest.raises(io.CorruptImageError, match=f"cut_{name}: .*truncated"):
        io.read_image(cut)
    with pytest.raises(io.CorruptImageError, match="truncated"):
        io.read_mask(cut, image)
    assert io.read_image(tmp_path / name).GetSize() == image.GetSize()  # the whole file reads


def test_nifti_size_is_the_headers_promise(tmp_path):
    image, _ = _phantom(shape=(4, 5, 6))
    sitk.WriteImage(image, str(tmp_path / "x.nii"))
    # NIfTI-1: vox_offset 352 + 4 x 5 x 6 float32 voxels (nibabel.load(path).header has the same)
    assert (tmp_path / "x.nii").stat().st_size == 352 + 4 * 5 * 6 * 4
    assert nifti.payload_problem(tmp_path / "x.nii") is None
    (tmp_path / "x.nii").write_bytes((tmp_path / "x.nii").read_bytes()[:-4])
    problem = nifti.payload_problem(tmp_path / "x.nii")
    assert "holds 828 bytes of data where its header promises 832 (99.5%)" in problem


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_nan_and_inf_volumes_are_refused(tmp_path, dtype):
    image, _ = _phantom()
    values = sitk.GetArrayFromImage(image).astype(dtype)
    values[3, 10, 10:13] = np.nan
    values[4, 11, 11] = -np.inf
    bad = sitk.GetImageFromArray(values)
    bad.CopyInformation(image)
    for name in ("nan.nii.gz", "nan.nii"):
        sitk.WriteImage(bad, str(tmp_path / name))
        # what the check guards against: ITK's NIfTI reader turns them into 0 without a word
        assert np.isfinite(sitk.GetArrayViewFromImage(sitk.ReadImage(str(tmp_path / name)))).all()
        with pytest.raises(io.CorruptImageError, match=f"{name}: 3 NaN and 1 infinite voxel"):
            io.read_image(tmp_path / name)
    sitk.WriteImage(bad, str(tmp_path / "nan.nrrd"))  # other formats: checked after reading
    with pytest.raises(io.CorruptImageError, match="nan.nrrd: 3 NaN and 1 infinite voxel"):
        io.read_image(tmp_path / "nan.nrrd")


def test_resampling_to_1mm_keeps_volume_and_grid():
    image, mask = _phantom()
    prepared = preprocess.prepare(image, mask, PreprocessSettings(), n4=False)
    img, msk = preprocess.resample_pair(prepared, (1.0, 1.0, 1.0))
    assert img.GetSpacing() == (1.0, 1.0, 1.0) and msk.GetSize() == img.GetSize()
    native = sitk.GetArrayViewFromImage(mask).sum() * np.prod(mask.GetSpacing())
    resampled = sitk.GetArrayViewFromImage(msk).sum()
    assert resampled == pytest.approx(native, rel=0.1)


def test_normalisation_is_z_scored_over_the_roi():
    image, mask = _phantom()
    roi = PreprocessSettings(normalise={"region": "roi"})
    prepared = preprocess.prepare(image, mask, roi, n4=False)
    values = sitk.GetArrayViewFromImage(prepared.image)[
        sitk.GetArrayViewFromImage(prepared.mask) > 0
    ]
    assert values.mean() == pytest.approx(0, abs=1e-5) and values.std() == pytest.approx(
        1, rel=1e-4
    )


def test_n4_removes_a_bias_field():
    image, mask = _phantom(bias=0.6)
    body = sitk.GetArrayViewFromImage(image) > 50
    corrected = preprocess.n4_correct(image, fit_spacing_mm=2.0, iterations=(50, 50))

    def gradient(img):  # body intensity trend along x, relative to the mean
        array = sitk.GetArrayFromImage(img)
        columns = np.array([array[..., i][body[..., i]].mean() for i in range(8, 32)])
        return np.polyfit(np.arange(len(columns)), columns / columns.mean(), 1)[0]

    assert abs(gradient(corrected)) < 0.5 * abs(gradient(image))


def test_perturbations_are_small_and_seeded():
    image, mask = _phantom(shape=(24, 64, 64), spacing=(1.0, 1.0, 2.0), radius=16)
    pre = PreprocessSettings()
    prepared = preprocess.prepare(image, mask, pre, n4=False)
    stab = StabilitySettings()
    a = preprocess.perturb(prepared, pre, stab, np.random.default_rng(1))
    b = preprocess.perturb(prepared, pre, stab, np.random.default_rng(1))
    c = preprocess.perturb(prepared, pre, stab, np.random.default_rng(2))
    arr = [sitk.GetArrayFromImage(m) for _, m in (a, b, c)]
    np.testing.assert_array_equal(arr[0], arr[1])
    assert not np.array_equal(arr[0], arr[2])
    overlap = 2 * (arr[0] & arr[2]).sum() / (arr[0].sum() + arr[2].sum())
    assert 0.7 < overlap < 1.0  # perturbed, not destroyed


def test_the_resampling_grid_is_centred_on_the_original_grid():
    # IBSI reference manual, "Interpolation", grid alignment: n_b = ceil(n_a s_a / s_b),
    # x_b0 = x_a0 + (s_a (n_a - 1) - s_b (n_b - 1)) / 2. For n_a = 40, s_a = 0.8 -> s_b = 1:
    # n_b = 32 and x_b0 = x_a0 + (31.2 - 31) / 2 = x_a0 + 0.1 mm; n_a = 20, s_a = 2.5:
    # n_b = 50, x_b0 = x_a0 + (47.5 - 49) / 2 = x_a0 - 0.75 mm.
    image, _ = _phantom()
    grid = preprocess.target_grid(image, (1.0, 1.0, 1.0))
    assert grid.GetSize() == (32, 32, 50)
    np.testing.assert_allclose(grid.GetOrigin(), (-10.0 + 0.1, 5.0 + 0.1, 3.0 - 0.75), atol=1e-9)
    np.testing.assert_allclose(
        preprocess.grid_centre(grid), preprocess.grid_centre(image), atol=1e-9
    )
    # on an oblique image too (the offset follows the direction cosines)
    oblique = sitk.Image(image)
    c, s_ = np.cos(0.4), np.sin(0.4)
    oblique.SetDirection((c, 0, s_, 0, 1, 0, -s_, 0, c))
    np.testing.assert_allclose(
        preprocess.grid_centre(preprocess.target_grid(oblique, (1.0, 1.0, 1.0))),
        preprocess.grid_centre(oblique),
        atol=1e-9,
    )


def test_the_perturbation_rotates_about_the_slice_normal():
    # a sagittal series: its third axis (across slices) is physical x
    image, mask = _phantom(shape=(12, 48, 48), spacing=(1.0, 1.0, 4.0), radius=14)
    for im in (image, mask):
        im.SetDirection((0, 0, 1, 1, 0, 0, 0, 1, 0))  # columns: y, z, x
    np.testing.assert_allclose(preprocess.slice_normal(image), (1.0, 0.0, 0.0))
    pre = PreprocessSettings(spacing_mm=None, normalise={"region": "roi"})
    stab = StabilitySettings(rotation_deg=20, translation_mm=0, noise_sd=0, mask="none")
    prepared = preprocess.prepare(image, mask, pre, n4=False)
    _, moved = preprocess.perturb(prepared, pre, stab, np.random.default_rng(4))
    before = sitk.GetArrayFromImage(prepared.mask).astype(bool)
    after = sitk.GetArrayFromImage(moved).astype(bool)
    # a rotation about the slice normal keeps each slice's content in its slice: the number
    # of tumour voxels per slice (array axis 0) is unchanged up to in-plane interpolation
    per_slice = before.sum(axis=(1, 2)), after.sum(axis=(1, 2))
    np.testing.assert_allclose(per_slice[1], per_slice[0], rtol=0.1, atol=3)
    assert not np.array_equal(before, after)  # it did rotate (in plane)


def test_a_multi_label_mask_needs_the_labels_named():
    _, mask = _phantom()
    labels = sitk.GetArrayFromImage(mask).astype(np.uint8)
    labels[:, :, :20] *= 2  # two labels: 1 and 2
    multi = sitk.GetImageFromArray(labels)
    multi.CopyInformation(mask)
    with pytest.raises(ValueError, match=r"several labels \[1, 2\]; name the tumour's"):
        preprocess.select_labels(multi, None, where="patient P1, sequence t1")
    one = sitk.GetArrayFromImage(preprocess.select_labels(multi, (2,)))
    np.testing.assert_array_equal(one, labels == 2)
    both = sitk.GetArrayFromImage(preprocess.select_labels(multi, (1, 2)))
    np.testing.assert_array_equal(both, labels > 0)
    with pytest.raises(ValueError, match=r"no voxel of label\(s\) \[3\] \(labels: \[1, 2\]\)"):
        preprocess.select_labels(multi, (3,))
    single = sitk.GetArrayFromImage(preprocess.select_labels(mask, None))
    np.testing.assert_array_equal(single, sitk.GetArrayViewFromImage(mask))
