"""DICOM as scanners and planning systems export it: image series, RTSTRUCT contours, DICOM-SEG.

**Series.** A folder may hold several series (a scanner export, a PACS download). Every file's
header is read with pydicom; image series are grouped by SeriesInstanceUID (RTSTRUCT, SEG and
other non-image objects in the folder are left out). With one series it is taken; with several, a
``selector`` names one — a SeriesInstanceUID, or a shell-style pattern (``fnmatch``,
case-insensitive) matched against SeriesDescription, e.g. ``"t1*post*"``. No selector, or a
selector matching none or several, is one :class:`DicomError` listing the series (uid,
description, modality, number of slices).

A selected series must be one regular 3-D volume:

- several volumes sharing the SeriesInstanceUID (multi-echo, dynamic / 4-D, repeated
  acquisitions) show as slices at duplicate positions. They are refused with the tag that tells
  the volumes apart (EchoNumbers, TemporalPositionIdentifier, TriggerTime, AcquisitionNumber, …)
  and its values; the selector then picks one with ``;TAG=VALUE`` terms, e.g.
  ``"1.2.3.4;EchoNumbers=2"`` or ``"*;TemporalPositionIdentifier=1"`` (``*`` = the only series);
- multi-frame (enhanced) objects, one file per volume, are refused with a conversion hint
  (their per-frame geometry is not read here);
- slices of several orientations (localisers), a sheared stack (gantry tilt), irregular spacing
  or a missing slice (a gap of about twice the spacing) are refused, naming the positions.

The pixels are then read by SimpleITK (GDCM) from the checked, sorted file list, and the image
carries its SeriesInstanceUID (``0020|000e``) and FrameOfReferenceUID (``0020|0052``) as
metadata, so that a mask can be checked against the series it was drawn on.

Masks drawn on these series (RTSTRUCT, DICOM-SEG) are read by :mod:`.dicom_masks`.

References
----------
DICOM PS3.3 C.7.6.2 (Image Plane: ImagePositionPatient, ImageOrientationPatient).

Example
-------
>>> image = read_series("STS_004/MR_T1/image")                              # doctest: +SKIP
>>> read_series("export/", "t2*;EchoNumbers=2")                          # doctest: +SKIP
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

#: SimpleITK metadata keys carrying the series identity (DICOM tags as GDCM spells them).
SERIES_UID_KEY = "0020|000e"
FRAME_UID_KEY = "0020|0052"
#: Modalities of objects that are not image slices (left out of a folder's series).
NON_IMAGE_MODALITIES = frozenset(
    {"RTSTRUCT", "SEG", "RTPLAN", "RTDOSE", "RTRECORD", "REG", "SR", "PR", "KO", "DOC"}
)
#: Tags that tell apart several volumes sharing one SeriesInstanceUID, most specific first.
VOLUME_TAGS = (
    "EchoNumbers",
    "TemporalPositionIdentifier",
    "TriggerTime",
    "DiffusionBValue",
    "InversionTime",
    "AcquisitionNumber",
    "ImageType",
)
#: Slice gaps may differ from the median gap by this fraction (DICOM positions are rounded).
SPACING_RTOL = 0.01
#: A contour may lie this fraction of a slice spacing off the slice centre.
CONTOUR_SLICE_TOL = 0.25


class DicomError(ValueError):
    """A DICOM folder or object cannot be read as the volume or mask asked for."""


@dataclass
class Slice:
    path: Path
    position: np.ndarray  # ImagePositionPatient, mm
    orientation: np.ndarray  # ImageOrientationPatient (row cosines, column cosines)
    shape: tuple  # Rows, Columns, PixelSpacing
    frames: int
    tags: dict  # VOLUME_TAGS present, as strings


@dataclass
class Series:
    uid: str
    description: str
    modality: str
    frame_of_reference: str
    slices: list[Slice] = field(default_factory=list)

    def summary(self) -> str:
        return f"{self.uid}  '{self.description}'  {self.modality}  {len(self.slices)} slices"


def scan_folder(folder: Path | str) -> list[Series]:
    """The image series in ``folder`` (not its subfolders), from the headers of its files."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    found: dict[str, Series] = {}
    for path in sorted(p for p in Path(folder).iterdir() if p.is_file()):
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except (InvalidDicomError, OSError, ValueError, EOFError):
            continue  # not DICOM (a README, DICOMDIR's siblings) or unreadable: not a slice
        modality = str(ds.get("Modality", ""))
        if "Rows" not in ds or "SeriesInstanceUID" not in ds or modality in NON_IMAGE_MODALITIES:
            continue
        uid = str(ds.SeriesInstanceUID)
        series = found.setdefault(
            uid,
            Series(uid, str(ds.get("SeriesDescription", "")), modality, _frame_uid(ds)),
        )
        series.slices.append(_slice_of(path, ds))
    return list(found.values())


def _frame_uid(ds) -> str:
    return str(ds.get("FrameOfReferenceUID", ""))


def _slice_of(path: Path, ds) -> Slice:
    position = ds.get("ImagePositionPatient")
    orientation = ds.get("ImageOrientationPatient")
    return Slice(
        path=path,
        position=np.array(position, dtype=float) if position is not None else None,
        orientation=np.array(orientation, dtype=float) if orientation is not None else None,
        shape=(int(ds.Rows), int(ds.Columns), tuple(float(v) for v in ds.get("PixelSpacing", []))),
        frames=int(ds.get("NumberOfFrames", 1) or 1),
        tags={tag: _tag_text(ds.get(tag)) for tag in VOLUME_TAGS if ds.get(tag) is not None},
    )


def _tag_text(value) -> str:
    if isinstance(value, list | tuple) or type(value).__name__ == "MultiValue":
        return "\\".join(str(v) for v in value)
    return str(value)


def read_series(folder: Path | str, selector: str | None = None):
    """Read the DICOM series of ``folder`` that ``selector`` names as a SimpleITK image.

    Parameters
    ----------
    folder : a directory of DICOM files
    selector : SeriesInstanceUID or SeriesDescription pattern, optionally followed by
        ``;TAG=VALUE`` terms picking one volume of a multi-volume series (module notes)

    Raises
    ------
    DicomError
        no series, several and no selector, a selector matching none or several, or a series
        that is not one regular 3-D volume (the message lists the candidates or the problem).
    """
    import SimpleITK as sitk

    folder = Path(folder)
    candidates = scan_folder(folder)
    if not candidates:
        raise DicomError(f"{folder} holds no DICOM image series")
    pattern, filters = _split_selector(selector)
    series = _select(candidates, pattern, folder)
    slices = _one_volume(series, filters)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames([str(s.path) for s in slices])
    try:
        image = reader.Execute()
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[-1]
        raise DicomError(f"{folder}: series {series.uid} cannot be read: {first}") from None
    image.SetMetaData(SERIES_UID_KEY, series.uid)
    image.SetMetaData(FRAME_UID_KEY, series.frame_of_reference)
    return image


def _split_selector(selector: str | None) -> tuple[str | None, dict[str, str]]:
    if selector is None:
        return None, {}
    pattern, *terms = (part.strip() for part in str(selector).split(";"))
    filters = {}
    for term in terms:
        tag, sep, value = term.partition("=")
        if not sep or tag.strip() not in VOLUME_TAGS:
            raise DicomError(
                f"series selector term {term!r} is not TAG=VALUE with TAG one of "
                f"{', '.join(VOLUME_TAGS)}"
            )
        filters[tag.strip()] = value.strip()
    if pattern in ("", "*"):
        pattern = None  # the only series of the folder
    return pattern, filters


def _listing(candidates: list[Series]) -> str:
    # one line: the radiomics stage records the first line of a patient's error
    return " " + "; ".join(f"[{i}] {s.summary()}" for i, s in enumerate(candidates, start=1))


def _select(candidates: list[Series], pattern: str | None, folder: Path) -> Series:
    if pattern is None:
        if len(candidates) == 1:
            return candidates[0]
        raise DicomError(
            f"{folder} holds {len(candidates)} DICOM series; choose one with a series selector "
            "(its SeriesInstanceUID, or a pattern matched against SeriesDescription):"
            + _listing(candidates)
        )
    by_uid = [s for s in candidates if s.uid == pattern]
    matches = by_uid or [
        s for s in candidates if fnmatch.fnmatch(s.description.lower(), pattern.lower())
    ]
    if len(matches) == 1:
        return matches[0]
    what = "matches no series" if not matches else f"matches {len(matches)} series"
    raise DicomError(
        f"{folder}: series selector {pattern!r} {what}; the series are:"
        + _listing(matches or candidates)
    )


def _one_volume(series: Series, filters: dict[str, str]) -> list[Slice]:
    """The series' slices sorted along the slice normal, checked to form one regular volume."""
    slices = _filtered(series, filters)
    where = f"series {series.uid} ('{series.description}')"
    multi = [s for s in slices if s.frames > 1]
    if multi:
        raise DicomError(
            f"{where} is a multi-frame (enhanced) object of {multi[0].frames} frames in "
            f"{multi[0].path.name}; convert it to a classic series or NIfTI (e.g. dcm2niix) first"
        )
    if any(s.position is None or s.orientation is None for s in slices):
        raise DicomError(f"{where}: slices without ImagePositionPatient/ImageOrientationPatient")
    orientation = slices[0].orientation
    if any(not np.allclose(s.orientation, orientation, atol=1e-4) for s in slices):
        raise DicomError(f"{where} mixes slice orientations (a localiser?); it is not a volume")
    if len({s.shape for s in slices}) > 1:
        raise DicomError(f"{where} mixes slice sizes or pixel spacings; it is not a volume")
    normal = np.cross(orientation[:3], orientation[3:])
    slices = sorted(slices, key=lambda s: float(s.position @ normal))
    depth = np.array([float(s.position @ normal) for s in slices])
    _check_distinct(where, series.uid, slices, depth)
    _check_spacing(where, slices, depth, normal)
    return slices


def _filtered(series: Series, filters: dict[str, str]) -> list[Slice]:
    slices = series.slices
    for tag, value in filters.items():
        kept = [s for s in slices if _same_value(s.tags.get(tag), value)]
        if not kept:
            present = sorted({s.tags.get(tag, "absent") for s in slices})
            raise DicomError(
                f"series {series.uid}: no slice has {tag}={value} (values: {', '.join(present)})"
            )
        slices = kept
    return slices


def _same_value(have: str | None, want: str) -> bool:
    if have is None:
        return False
    try:
        return float(have) == float(want)
    except ValueError:
        return have.strip().lower() == want.strip().lower()


def _check_distinct(where: str, uid: str, slices: list[Slice], depth: np.ndarray) -> None:
    """Refuse several volumes at the same positions, naming the tag that separates them."""
    if len(slices) < 2 or np.min(np.diff(depth)) > 1e-3:
        return
    n_positions = len(np.unique(np.round(depth, 2)))
    varying = {
        tag: sorted({s.tags.get(tag, "absent") for s in slices}, key=_natural)
        for tag in VOLUME_TAGS
        if len({s.tags.get(tag) for s in slices}) > 1
    }
    if not varying:
        raise DicomError(
            f"{where} holds {len(slices)} slices at only {n_positions} positions, with nothing "
            "telling them apart (copied files?); keep one copy of each slice"
        )
    tag, values = next(iter(varying.items()))
    raise DicomError(
        f"{where} holds several volumes at the same {n_positions} positions (multi-echo, "
        f"dynamic/4-D or repeated: {tag} takes the values {', '.join(values)}); select one with "
        f"the series selector '<uid or description>;{tag}=<value>', e.g. "
        f"'{uid};{tag}={values[0]}'"
    )


def _natural(text: str):
    try:
        return (0, float(text), "")
    except ValueError:
        return (1, 0.0, text)


def _check_spacing(where: str, slices: list[Slice], depth: np.ndarray, normal) -> None:
    """Refuse a sheared stack (gantry tilt), irregular spacing or missing slices."""
    if len(slices) < 2:
        return
    steps = np.diff(np.stack([s.position for s in slices]), axis=0)
    off_normal = np.linalg.norm(steps - np.outer(steps @ normal, normal), axis=1)
    if off_normal.max() > 1e-2:
        raise DicomError(
            f"{where}: successive slices shift by up to {off_normal.max():.2f} mm within the "
            "slice plane (gantry tilt or a sheared stack); resample it to a regular grid first"
        )
    gaps = np.diff(depth)
    spacing = float(np.median(gaps))
    bad = np.flatnonzero(np.abs(gaps - spacing) > SPACING_RTOL * spacing)
    if bad.size == 0:
        return
    first = int(bad[0])
    missing = abs(gaps[first] / spacing - round(gaps[first] / spacing)) < 0.1
    kind = "a missing slice" if missing and gaps[first] > spacing else "irregular slice spacing"
    raise DicomError(
        f"{where}: {kind}: a gap of {gaps[first]:.3f} mm between the slices at "
        f"{depth[first]:.3f} and {depth[first + 1]:.3f} mm along the slice normal where the "
        f"series' spacing is {spacing:.3f} mm ({bad.size} such gap(s))"
    )


def dicom_modality(path: Path | str) -> str | None:
    """The Modality of a DICOM file (``"RTSTRUCT"``, ``"SEG"``, ``"MR"``…), None if not DICOM."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["Modality"])
    except (InvalidDicomError, OSError, ValueError, EOFError):
        return None
    return str(ds.get("Modality", "")) or None
