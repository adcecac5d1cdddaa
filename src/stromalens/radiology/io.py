"""Read MRI/CT volumes and masks (NIfTI, NRRD, DICOM series) and check that they belong together.

A mask must share its image's grid: same size, and spacing, origin and direction equal within
``tolerance`` (relative for spacing, in mm for the origin, absolute for direction cosines); it
must be non-empty and lie inside the image. A mismatch raises :class:`GeometryError` naming the
patient and the sequence, unless ``on_mismatch="resample"`` asks to resample the mask onto the
image grid (nearest neighbour, so labels stay labels) — after which it must still be non-empty
and must not have lost labelled voxels outside the image.

Example
-------
>>> image = read_image("P0001/t1.nii.gz")                       # doctest: +SKIP
>>> mask = check_mask(image, read_image("P0001/mask.nii.gz"), patient="P0001", sequence="t1")
... # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


class GeometryError(ValueError):
    """An image and its mask do not match, or the mask is empty / outside the image."""


def read_image(path: Path | str, *, series: str | None = None):
    """Read a volume with SimpleITK: a file (NIfTI, NRRD, MHA, a single DICOM file) or a
    directory holding one DICOM series (the series with the most files if there are several).

    ``series`` selects a DICOM series in a folder (a SeriesInstanceUID, or a pattern matched
    against SeriesDescription); ignored for files.
    """
    import SimpleITK as sitk

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"image not found: {path}")
    if path.is_dir():
        reader = sitk.ImageSeriesReader()
        series = reader.GetGDCMSeriesIDs(str(path))
        if not series:
            raise ValueError(f"{path} is a directory without a DICOM series")
        files = max((reader.GetGDCMSeriesFileNames(str(path), sid) for sid in series), key=len)
        reader.SetFileNames(files)
        return reader.Execute()
    try:
        return sitk.ReadImage(str(path))
    except RuntimeError as exc:
        raise ValueError(f"{path} cannot be read as an image: {exc}".splitlines()[0]) from None


def read_mask(path: Path | str, reference, *, roi: str | None = None):
    """Read a segmentation as a label image: a label volume file (NIfTI, NRRD, …), or a DICOM
    RTSTRUCT / DICOM-SEG file rasterised onto ``reference`` (the image it contours).

    ``roi`` names the structure to take from an RTSTRUCT or SEG that holds several.
    """
    return read_image(path)


def geometry(image) -> dict:
    """Size, spacing, origin and direction of a SimpleITK image (for messages and records)."""
    return {
        "size": tuple(int(v) for v in image.GetSize()),
        "spacing": tuple(float(v) for v in image.GetSpacing()),
        "origin": tuple(float(v) for v in image.GetOrigin()),
        "direction": tuple(float(v) for v in image.GetDirection()),
    }


def geometry_mismatch(image, mask, tolerance: float = 1e-3) -> list[str]:
    """What differs between the two grids (empty list if they match within ``tolerance``)."""
    a, b = geometry(image), geometry(mask)
    problems = []
    if a["size"] != b["size"]:
        problems.append(f"size {b['size']} ≠ image {a['size']}")
    if not np.allclose(a["spacing"], b["spacing"], rtol=tolerance, atol=0):
        problems.append(f"spacing {b['spacing']} ≠ image {a['spacing']}")
    if not np.allclose(a["origin"], b["origin"], rtol=0, atol=max(tolerance, 1e-6) * 10):
        problems.append(f"origin {b['origin']} ≠ image {a['origin']}")
    if not np.allclose(a["direction"], b["direction"], rtol=0, atol=tolerance):
        problems.append(f"direction {b['direction']} ≠ image {a['direction']}")
    return problems


def check_mask(
    image,
    mask,
    *,
    label: int = 1,
    patient: str = "?",
    sequence: str = "?",
    on_mismatch: str = "error",
    tolerance: float = 1e-3,
):
    """Return a uint8 mask of ``label`` on the image's grid, or raise :class:`GeometryError`.

    Parameters
    ----------
    on_mismatch : "error" (default) or "resample" (nearest-neighbour onto the image grid)
    tolerance : see the module notes
    """
    import SimpleITK as sitk

    if on_mismatch not in ("error", "resample"):
        raise ValueError(f"on_mismatch={on_mismatch!r} is not 'error' or 'resample'")
    where = f"patient {patient}, sequence {sequence}"
    if image.GetDimension() != 3 or mask.GetDimension() != 3:
        raise GeometryError(
            f"{where}: image and mask must be 3-D; got {image.GetDimension()}-D image and "
            f"{mask.GetDimension()}-D mask"
        )
    labels = sitk.GetArrayViewFromImage(mask)
    n_label = int((labels == label).sum())
    if n_label == 0:
        found = sorted(int(v) for v in np.unique(labels) if v != 0)[:10]
        raise GeometryError(f"{where}: the mask has no voxel of label {label} (labels: {found})")
    problems = geometry_mismatch(image, mask, tolerance)
    if problems and on_mismatch == "error":
        raise GeometryError(
            f"{where}: the mask's geometry does not match the image: {'; '.join(problems)} "
            "(set mask_mismatch: resample to resample the mask onto the image)"
        )
    binary = sitk.Cast(sitk.BinaryThreshold(mask, label, label, 1, 0), sitk.sitkUInt8)
    if problems:
        physical = _physical_volume(binary)
        binary = sitk.Resample(
            binary, image, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8
        )
        kept = _physical_volume(binary)
        if kept == 0:
            raise GeometryError(f"{where}: the mask lies outside the image")
        if kept < 0.5 * physical:
            raise GeometryError(
                f"{where}: after resampling onto the image, the mask keeps only "
                f"{kept / physical:.0%} of its volume; it lies partly outside the image"
            )
    binary.CopyInformation(image)
    return binary


def _physical_volume(mask) -> float:
    import SimpleITK as sitk

    return float(sitk.GetArrayViewFromImage(mask).sum()) * float(np.prod(mask.GetSpacing()))
