"""Masks as planning systems export them: DICOM RTSTRUCT contours and DICOM-SEG segments.

Both are returned as a uint8 label image (1 inside) on the grid of ``reference``, the image the
mask was drawn on (normally read by :func:`stromalens.radiology.dicom.read_series`).

**Which structure.** The only one the file holds, or the one ``roi`` names (its exact name, else
a case-insensitive shell pattern: ``"GTV*"``). Several and no name, or a name matching none or
several, is one :class:`~stromalens.radiology.dicom.DicomError` listing them.

**Which image.** A mask whose FrameOfReferenceUID, or whose referenced series, differs from the
image's is refused, naming both. When the image is not DICOM (a NIfTI), there are no UIDs to
compare and the contours are only checked to lie on its slices.

**RTSTRUCT.** Read with pydicom; each CLOSED_PLANAR contour of the ROI is rasterised onto the
image grid. A voxel is inside when its centre lies inside the polygon — the crossing-number
(even–odd) test, for a voxel centre :math:`(i, j)` and polygon edges
:math:`(x_a, y_a) \\to (x_b, y_b)` in continuous index space,

.. math:: \\text{inside} = \\#\\{\\text{edges}: (y_a > j) \\ne (y_b > j),\\;
          x_a + (j - y_a)\\tfrac{x_b - x_a}{y_b - y_a} > i\\} \\bmod 2,

and the contours of one ROI on one slice combine by exclusive or, so an inner contour cuts a
hole (the convention of plastimatch and MIRP). A contour must lie on a slice of the image (within
a quarter of the slice spacing); one between slices means the RTSTRUCT was drawn on another grid.

**DICOM-SEG.** Read with highdicom (``segread`` → ``get_volume``), which decodes every SEG
encoding (BINARY, FRACTIONAL — thresholded at 0.5 — LABELMAP, omitted empty frames) and gives the
segment's voxel grid in patient coordinates; that grid is resampled onto the image by nearest
neighbour (an identity when the SEG was made on that image).

**Why these libraries.** pydicom is the DICOM parser the others build on. highdicom (MIT, the
Imaging Data Commons' library, released monthly) is the maintained reader of DICOM-SEG;
pydicom-seg has not been released since 2023. rt-utils was read and not taken: it requires
``opencv-python``, which installs over this project's ``opencv-python-headless`` (both own the
``cv2`` module, and the GUI build needs libGL on a server), and a ``dataclasses`` backport; its
last release (1.2.7, January 2023) rounds polygon vertices to whole pixels before
``cv2.fillPoly`` (boundary voxels always inside), takes PixelSpacing's row spacing as the column
spacing, and finds a slice's contours only through the optional ContourImageSequence. highdicom
reads no RTSTRUCT, hence the short rasteriser here, checked against the IBSI's own NIfTI masks of
the same contours (``tests/radiology/test_dicom.py``, Dice ≥ 0.99).

References
----------
DICOM PS3.3 C.8.8.6 (ROI Contour Module), A.51 (Segmentation IOD).
Haines E. Point in polygon strategies. Graphics Gems IV, 24–46 (1994).
Zwanenburg A. et al. The Image Biomarker Standardization Initiative. Radiology 295, 328 (2020).

Example
-------
>>> image = read_series("STS_004/MR_T1/image")                              # doctest: +SKIP
>>> mask = read_rtstruct("STS_004/MR_T1/mask/RS.dcm", image, roi="GTV_Mass*")  # doctest: +SKIP
"""

from __future__ import annotations

import fnmatch
from pathlib import Path

import numpy as np

from .dicom import CONTOUR_SLICE_TOL, FRAME_UID_KEY, SERIES_UID_KEY, DicomError


def choose_roi(rois: dict[int, str], roi: str | None, path: Path | str) -> int:
    """The number of the structure named ``roi`` (exact name, else a case-insensitive pattern).

    Raises :class:`DicomError` listing the structures when there is no single match.
    """
    listing = ", ".join(f"{name!r}" for name in rois.values())
    if not rois:
        raise DicomError(f"{path} holds no structure")
    if roi is None:
        if len(rois) == 1:
            return next(iter(rois))
        raise DicomError(f"{path} holds {len(rois)} structures; name one as roi: {listing}")
    matches = [n for n, name in rois.items() if name == roi] or [
        n for n, name in rois.items() if fnmatch.fnmatch(name.lower(), roi.lower())
    ]
    if len(matches) != 1:
        what = "matches no structure" if not matches else f"matches {len(matches)} structures"
        raise DicomError(f"{path}: roi {roi!r} {what}; the structures are: {listing}")
    return matches[0]


def check_reference(path, frame_uid: str | None, series_uids: set[str], reference) -> None:
    """Refuse a mask drawn in another frame of reference, or on another series, than the image."""
    have_frame = _metadata(reference, FRAME_UID_KEY)
    have_series = _metadata(reference, SERIES_UID_KEY)
    if frame_uid and have_frame and frame_uid != have_frame:
        raise DicomError(
            f"{path} is drawn in frame of reference {frame_uid}, but the image (series "
            f"{have_series}) is in frame of reference {have_frame}: the mask belongs to another "
            "image; give the series it was drawn on (or register the images first)"
        )
    if series_uids and have_series and have_series not in series_uids:
        raise DicomError(
            f"{path} references series {', '.join(sorted(series_uids))}, not the image's series "
            f"{have_series}; give the series the mask was drawn on"
        )


def _metadata(image, key: str) -> str | None:
    if not image.HasMetaDataKey(key):
        return None
    return image.GetMetaData(key) or None


def read_rtstruct(path: Path | str, reference, roi: str | None = None):
    """Rasterise one ROI of an RTSTRUCT onto ``reference``'s grid (uint8, 1 inside).

    Raises
    ------
    DicomError
        not an RTSTRUCT; no single ROI matching ``roi``; drawn on another image; no closed
        contour; contours off the image's slices or outside it.
    """
    import pydicom
    import SimpleITK as sitk

    ds = pydicom.dcmread(path)
    if str(ds.get("Modality", "")) != "RTSTRUCT":
        raise DicomError(f"{path} is not an RTSTRUCT (Modality {ds.get('Modality')!r})")
    structures = {int(r.ROINumber): r for r in ds.get("StructureSetROISequence", [])}
    number = choose_roi({n: str(r.ROIName) for n, r in structures.items()}, roi, path)
    name = str(structures[number].ROIName)
    check_reference(
        path,
        str(structures[number].get("ReferencedFrameOfReferenceUID", "")) or None,
        _rtstruct_series(ds),
        reference,
    )
    contours = [
        np.asarray(c.ContourData, dtype=float).reshape(-1, 3)
        for rc in ds.get("ROIContourSequence", [])
        if int(rc.ReferencedROINumber) == number
        for c in rc.get("ContourSequence", [])
        if str(c.get("ContourGeometricType", "")) == "CLOSED_PLANAR"
    ]
    if not contours:
        raise DicomError(f"{path}: ROI {name!r} has no closed planar contour")
    labels = sitk.GetImageFromArray(rasterise(contours, reference, f"{path}, ROI {name!r}"))
    labels.CopyInformation(reference)
    return labels


def _rtstruct_series(ds) -> set[str]:
    return {
        str(series.SeriesInstanceUID)
        for frame in ds.get("ReferencedFrameOfReferenceSequence", [])
        for study in frame.get("RTReferencedStudySequence", [])
        for series in study.get("RTReferencedSeriesSequence", [])
    }


def rasterise(contours: list[np.ndarray], reference, where: str = "contour") -> np.ndarray:
    """Planar polygons in patient mm (each n × 3) → a (z, y, x) uint8 mask on ``reference``.

    Each polygon is mapped to continuous voxel indices, :math:`x = (D\\,\\mathrm{diag}(s))^{-1}
    (p - o)`, must lie on one slice, and is filled by :func:`fill_polygon`; polygons on one slice
    combine by exclusive or.
    """
    size = reference.GetSize()
    scale = np.array(reference.GetDirection(), dtype=float).reshape(3, 3) * np.array(
        reference.GetSpacing()
    )
    origin = np.array(reference.GetOrigin(), dtype=float)
    mask = np.zeros(size[::-1], dtype=bool)
    for points in contours:
        index = np.linalg.solve(scale, (points - origin).T).T  # (n, 3) continuous (x, y, z)
        k = float(np.mean(index[:, 2]))
        if np.ptp(index[:, 2]) > 2 * CONTOUR_SLICE_TOL or abs(k - round(k)) > CONTOUR_SLICE_TOL:
            raise DicomError(
                f"{where}: a contour at slice index {k:.2f} does not lie on a slice of the image "
                "(drawn on another grid or not parallel to the slices); give the series it was "
                "drawn on"
            )
        if 0 <= round(k) < size[2]:
            mask[round(k)] ^= fill_polygon(index[:, :2], (size[1], size[0]))
    if not mask.any():
        raise DicomError(f"{where}: the contours lie outside the image")
    return mask.astype(np.uint8)


def fill_polygon(xy: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Pixels of a ``shape`` = (rows, columns) grid whose centres lie inside polygon ``xy``.

    ``xy`` holds (column, row) vertices in continuous index space (the polygon closes itself).
    Crossing-number test, one image row at a time (module notes).

    Example
    -------
    >>> int(fill_polygon(np.array([[0.5, 0.5], [3.5, 0.5], [3.5, 2.5], [0.5, 2.5]]), (4, 5)).sum())
    6
    """
    inside = np.zeros(shape, dtype=bool)
    xa, ya = xy[:, 0], xy[:, 1]
    xb, yb = np.roll(xa, -1), np.roll(ya, -1)
    rows = range(max(0, int(np.ceil(ya.min()))), min(shape[0], int(np.floor(ya.max())) + 1))
    columns = np.arange(shape[1])
    for j in rows:
        crosses = (ya > j) != (yb > j)
        if not crosses.any():
            continue
        x_cross = xa[crosses] + (j - ya[crosses]) * (xb[crosses] - xa[crosses]) / (
            yb[crosses] - ya[crosses]
        )
        # number of crossings right of each column centre, odd = inside
        right = x_cross.size - np.searchsorted(np.sort(x_cross), columns, side="right")
        inside[j] = right % 2 == 1
    return inside


def read_seg(path: Path | str, reference, roi: str | None = None):
    """One segment of a DICOM-SEG on ``reference``'s grid (uint8, 1 inside), via highdicom.

    Raises :class:`DicomError` when there is no single segment matching ``roi``, when the SEG is
    drawn on another image, or when the segment lies outside ``reference``.
    """
    import highdicom as hd
    import SimpleITK as sitk

    seg = hd.seg.segread(path)
    segments = {int(s.SegmentNumber): str(s.SegmentLabel) for s in seg.SegmentSequence}
    number = choose_roi(segments, roi, path)
    series = {str(s.SeriesInstanceUID) for s in seg.get("ReferencedSeriesSequence", [])}
    check_reference(path, str(seg.get("FrameOfReferenceUID", "")) or None, series, reference)
    volume = seg.get_volume(segment_numbers=[number], combine_segments=False)
    array = np.asarray(volume.array)
    array = array[..., 0] if array.ndim == 4 else array  # (slice, row, column[, segment])
    moving = sitk.GetImageFromArray((array > 0.5).astype(np.uint8))
    # highdicom's affine maps (slice, row, column) indices to mm; SimpleITK's index is (x, y, z)
    # = (column, row, slice), so its direction × spacing columns are the affine's, reversed.
    columns = np.asarray(volume.affine, dtype=float)[:3, [2, 1, 0]]
    spacing = np.linalg.norm(columns, axis=0)
    moving.SetSpacing(spacing.tolist())
    moving.SetDirection((columns / spacing).ravel().tolist())
    moving.SetOrigin(np.asarray(volume.affine, dtype=float)[:3, 3].tolist())
    labels = sitk.Resample(
        moving, reference, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8
    )
    if not sitk.GetArrayViewFromImage(labels).any():
        raise DicomError(f"{path}: segment {segments[number]!r} lies outside the image")
    labels.CopyInformation(reference)
    return labels
