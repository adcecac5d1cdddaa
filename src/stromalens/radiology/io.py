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
    problem = nifti_payload_problem(path)
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


def nifti_payload_problem(path: Path | str) -> str | None:
    """What is wrong with a NIfTI file's payload, or None (also for files that are not NIfTI).

    ITK reads a truncated NIfTI with the missing voxels as zeros, so the size is checked here:
    the header's data must fit in the (decompressed) file,

    .. math:: \\text{size} \\ge \\text{vox\\_offset} + \\prod_{i=1}^{\\text{dim}[0]}
              \\text{dim}[i] \\cdot \\text{bitpix} / 8 .

    A ``.nii.gz`` is decompressed once for this (a truncated gzip stream is named as such).
    Reference: the NIfTI-1 and NIfTI-2 header layouts, nifti.nimh.nih.gov.
    """
    import gzip
    import zlib

    path = Path(path)
    name = path.name.lower()
    if not (name.endswith(".nii") or name.endswith(".nii.gz")):
        return None
    try:
        with gzip.open(path, "rb") if name.endswith(".gz") else open(path, "rb") as stream:
            header = stream.read(540)
            expected = _nifti_expected_size(header)
            if expected is None:
                return None  # not a single-file NIfTI-1/2: left to ITK
            size = len(header)
            while chunk := stream.read(1 << 22):
                size += len(chunk)
    except (EOFError, gzip.BadGzipFile, zlib.error) as exc:
        return f"the compressed file is truncated or damaged ({exc}); re-export or re-copy it"
    if size < expected:
        return (
            f"the file holds {size:,} bytes of data where its header promises {expected:,} "
            f"({size / expected:.0%}); it is truncated — re-export or re-copy it"
        )
    return None


def _nifti_expected_size(header: bytes) -> int | None:
    """vox_offset + voxel bytes from a NIfTI-1 (348-byte) or NIfTI-2 (540-byte) header."""
    import struct

    for endian in "<>":
        if len(header) >= 348 and struct.unpack(endian + "i", header[:4])[0] == 348:
            if header[344:347] != b"n+1":
                return None
            dims = struct.unpack(endian + "8h", header[40:56])
            bitpix = struct.unpack(endian + "h", header[72:74])[0]
            offset = int(struct.unpack(endian + "f", header[108:112])[0])
            break
        if len(header) >= 540 and struct.unpack(endian + "i", header[:4])[0] == 540:
            if header[4:7] != b"n+2":
                return None
            bitpix = struct.unpack(endian + "h", header[14:16])[0]
            dims = struct.unpack(endian + "8q", header[16:80])
            offset = struct.unpack(endian + "q", header[168:176])[0]
            break
    else:
        return None
    n_dim = min(max(int(dims[0]), 1), 7)
    voxels = int(np.prod([max(int(d), 1) for d in dims[1 : n_dim + 1]], dtype=np.int64))
    return offset + voxels * int(bitpix) // 8


def check_finite(image, path: Path | str = "image"):
    """Return ``image``, or raise :class:`CorruptImageError` if any voxel is NaN or infinite.

    stromalens does not guess a value for such voxels (ITK would pass them on, and PyRadiomics'
    binning turns them into a bin of their own or zeros), so the file is refused.
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
