"""Read MRI/CT volumes and masks (NIfTI, NRRD, DICOM series) and check that they belong together.

:func:`read_image` reads a file or a DICOM series folder (the series chosen as
:mod:`stromalens.radiology.dicom` describes) and refuses corrupt volumes — a NIfTI shorter than
its header says (ITK would read the missing voxels as zeros) and NaN or infinite voxels — with a
:class:`CorruptImageError` naming the file, so the radiomics stage fails that patient instead of
extracting features from damaged data. :func:`read_mask` reads a label volume, or an RTSTRUCT /
DICOM-SEG rasterised onto its image (:mod:`stromalens.radiology.dicom_masks`).

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

from . import nifti


class GeometryError(ValueError):
    """An image and its mask do not match, or the mask is empty / outside the image."""


class CorruptImageError(ValueError):
    """An image file is damaged: truncated, or holding NaN / infinite voxels."""


def read_image(path: Path | str, *, series: str | None = None):
    """Read a volume with SimpleITK, refusing corrupt files.

    Parameters
    ----------
    path : a file (NIfTI, NRRD, MHA, a single DICOM file) or a folder of DICOM files
    series : for a folder, the series to read — a SeriesInstanceUID or a SeriesDescription
        pattern, optionally with ``;TAG=VALUE`` terms choosing one volume of a multi-echo or
        4-D series (see :mod:`stromalens.radiology.dicom`); ignored for files

    Raises
    ------
    FileNotFoundError
        the path does not exist
    stromalens.radiology.dicom.DicomError
        a folder without exactly one matching regular 3-D series (the message lists them)
    CorruptImageError
        a NIfTI whose payload is shorter than its header says, or NaN / infinite voxels
    ValueError
        a file SimpleITK cannot read
    """
    import SimpleITK as sitk

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"image not found: {path}")
    if path.is_dir():
        from .dicom import read_series

        return check_finite(read_series(path, series), path)
    problem = nifti.payload_problem(path)
    if problem:
        raise CorruptImageError(f"{path}: {problem}")
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        raise ValueError(f"{path} cannot be read as an image: {exc}".splitlines()[0]) from None
    return check_finite(image, path)


def read_mask(path: Path | str, reference, *, roi: str | None = None):
    """Read a segmentation as a label image on ``reference``'s grid where the format says how.

    Parameters
    ----------
    path : a label volume file (NIfTI, NRRD, …; returned as stored — :func:`check_mask` then
        checks its grid), a DICOM RTSTRUCT or DICOM-SEG file, or a folder holding exactly one
        RTSTRUCT or SEG file (both rasterised onto ``reference``, uint8 with 1 inside)
    reference : the SimpleITK image the mask was drawn on (as :func:`read_image` returned it,
        so that its series and frame of reference can be checked)
    roi : the structure to take from an RTSTRUCT or SEG (exact name, else a case-insensitive
        pattern, e.g. ``"GTV*"``); needed only when the file holds several; ignored for label
        volumes (whose label is the radiomics ``label`` setting)

    Raises
    ------
    stromalens.radiology.dicom.DicomError
        no single structure matching ``roi`` (the message lists them), a mask drawn on another
        image, contours off the image's slices
    """
    from . import dicom, dicom_masks

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"mask not found: {path}")
    target = _mask_object(path) if path.is_dir() else path
    modality = dicom.dicom_modality(target) if target is not None else None
    if modality == "RTSTRUCT":
        return dicom_masks.read_rtstruct(target, reference, roi)
    if modality == "SEG":
        return dicom_masks.read_seg(target, reference, roi)
    return read_image(path)


def _mask_object(folder: Path) -> Path | None:
    """The one RTSTRUCT or SEG file in ``folder`` (None if there is none)."""
    from .dicom import DicomError, dicom_modality

    found = [
        p
        for p in sorted(folder.iterdir())
        if p.is_file() and dicom_modality(p) in ("RTSTRUCT", "SEG")
    ]
    if len(found) > 1:
        names = ", ".join(p.name for p in found)
        raise DicomError(f"{folder} holds {len(found)} RTSTRUCT/SEG files ({names}); name one")
    return found[0] if found else None


def check_finite(image, path: Path | str = "image"):
    """Return ``image``, or raise :class:`CorruptImageError` if any voxel is NaN or infinite.

    stromalens does not guess a value for such voxels (PyRadiomics would bin them as numbers or
    fail late), so the file is refused. ITK's NIfTI reader replaces them by 0 before this check
    can see them; :func:`stromalens.radiology.nifti.payload_problem` finds them in the file.
    """
    import SimpleITK as sitk

    values = sitk.GetArrayViewFromImage(image)
    if np.issubdtype(values.dtype, np.floating):
        finite = np.isfinite(values)
        if not finite.all():
            n_nan = int(np.isnan(values).sum())
            n_inf = int((~finite).sum()) - n_nan
            raise CorruptImageError(
                f"{path}: {n_nan:,} NaN and {n_inf:,} infinite voxel(s) of {values.size:,}; "
                "replace or mask them before radiomics (no value is guessed for them)"
            )
    return image


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
