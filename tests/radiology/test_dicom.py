"""DICOM series selection, RTSTRUCT and DICOM-SEG masks: real files written with pydicom and
highdicom in the test, and the IBSI soft-tissue-sarcoma patients exported by MIRP."""

from __future__ import annotations

import numpy as np
import pytest

from stromalens.radiology import io
from stromalens.radiology.dicom import DicomError
from stromalens.radiology.dicom_masks import fill_polygon

from .conftest import RADIOLOGY, require

sitk = pytest.importorskip("SimpleITK")
pydicom = pytest.importorskip("pydicom")
from pydicom.dataset import Dataset, FileMetaDataset  # noqa: E402
from pydicom.uid import ExplicitVRLittleEndian, generate_uid  # noqa: E402

MR_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
RTSTRUCT_STORAGE = "1.2.840.10008.5.1.4.1.1.481.3"
SPACING = (0.8, 0.8, 2.5)  # column, row, slice (mm)
ORIGIN = (-10.0, 5.0, 3.0)
SHAPE = (6, 12, 10)  # slices, rows, columns
STUDY = generate_uid()
FRAME = generate_uid()


def _volume(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 1000, SHAPE).astype(np.int16)


def _image_dataset(pixels: np.ndarray, position, series: str, description: str, **tags):
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = MR_STORAGE
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SOPClassUID = MR_STORAGE
    ds.PatientID, ds.PatientName, ds.PatientBirthDate, ds.PatientSex = "P1", "Test^P1", "", "O"
    ds.StudyInstanceUID, ds.StudyID, ds.StudyDate, ds.StudyTime = STUDY, "1", "20240101", "1200"
    ds.AccessionNumber, ds.ReferringPhysicianName = "", ""
    ds.SeriesInstanceUID, ds.SeriesDescription, ds.SeriesNumber = series, description, 1
    ds.Modality, ds.FrameOfReferenceUID, ds.PositionReferenceIndicator = "MR", FRAME, ""
    ds.Manufacturer = "stromalens tests"
    ds.ImagePositionPatient = [float(v) for v in position]
    ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    ds.PixelSpacing = [SPACING[1], SPACING[0]]  # row spacing, column spacing
    ds.SliceThickness = SPACING[2]
    ds.Rows, ds.Columns = pixels.shape[-2:]
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.ScanningSequence, ds.SequenceVariant, ds.ScanOptions, ds.MRAcquisitionType = (
        "SE",
        "NONE",
        "",
        "2D",
    )
    ds.InstanceNumber = tags.pop("InstanceNumber", 1)
    for key, value in tags.items():
        setattr(ds, key, value)
    ds.PixelData = np.ascontiguousarray(pixels).tobytes()
    return ds


def write_series(folder, volume=None, *, series=None, description="t1 axial", z_mm=None, **tags):
    """Write ``volume`` (slices, rows, columns) as a classic MR series; returns the datasets."""
    folder.mkdir(parents=True, exist_ok=True)
    volume = _volume() if volume is None else volume
    series = series or generate_uid()
    z_mm = [ORIGIN[2] + k * SPACING[2] for k in range(len(volume))] if z_mm is None else z_mm
    written = []
    for k, (pixels, z) in enumerate(zip(volume, z_mm, strict=True)):
        ds = _image_dataset(
            pixels, (ORIGIN[0], ORIGIN[1], z), series, description, InstanceNumber=k + 1, **tags
        )
        ds.save_as(folder / f"{ds.SOPInstanceUID}.dcm", enforce_file_format=True)
        written.append(ds)
    return written


def _square(z: float, lo: float, hi: float) -> list[float]:
    """A closed square contour in patient mm with corners at voxel indices lo and hi."""
    x = [ORIGIN[0] + v * SPACING[0] for v in (lo, hi, hi, lo)]
    y = [ORIGIN[1] + v * SPACING[1] for v in (lo, lo, hi, hi)]
    return [c for xi, yi in zip(x, y, strict=True) for c in (xi, yi, z)]


def write_rtstruct(path, images, rois: dict[str, list[list[float]]], *, frame=FRAME, series=None):
    """An RTSTRUCT with one ROI per entry of ``rois`` (name → closed contours in patient mm)."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = RTSTRUCT_STORAGE
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SOPClassUID, ds.Modality = RTSTRUCT_STORAGE, "RTSTRUCT"
    ds.PatientID, ds.StudyInstanceUID, ds.SeriesInstanceUID = "P1", STUDY, generate_uid()
    referenced_series = Dataset()
    referenced_series.SeriesInstanceUID = series or images[0].SeriesInstanceUID
    study = Dataset()
    study.RTReferencedSeriesSequence = [referenced_series]
    reference = Dataset()
    reference.FrameOfReferenceUID = frame
    reference.RTReferencedStudySequence = [study]
    ds.ReferencedFrameOfReferenceSequence = [reference]
    ds.StructureSetROISequence, ds.ROIContourSequence = [], []
    for number, (name, contours) in enumerate(rois.items(), start=1):
        roi = Dataset()
        roi.ROINumber, roi.ROIName, roi.ReferencedFrameOfReferenceUID = number, name, frame
        ds.StructureSetROISequence.append(roi)
        items = []
        for points in contours:
            contour = Dataset()
            contour.ContourGeometricType = "CLOSED_PLANAR"
            contour.NumberOfContourPoints = len(points) // 3
            contour.ContourData = [float(v) for v in points]
            items.append(contour)
        roi_contour = Dataset()
        roi_contour.ReferencedROINumber = number
        roi_contour.ContourSequence = items
        ds.ROIContourSequence.append(roi_contour)
    ds.save_as(path, enforce_file_format=True)
    return path


# --- series ------------------------------------------------------------------------------------


def test_a_series_reads_onto_its_grid(tmp_path):
    volume = _volume(1)
    write_series(tmp_path, volume)
    image = io.read_image(tmp_path)
    assert image.GetSize() == SHAPE[::-1]
    np.testing.assert_allclose(image.GetSpacing(), SPACING, rtol=1e-6)
    np.testing.assert_allclose(image.GetOrigin(), ORIGIN, atol=1e-6)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image), volume)
    assert image.GetMetaData("0020|0052") == FRAME


def test_several_series_are_listed_and_selected(tmp_path):
    t1 = write_series(tmp_path, _volume(1), description="T1 axial")[0].SeriesInstanceUID
    t2 = write_series(tmp_path, _volume(2), description="T2 axial")[0].SeriesInstanceUID
    write_series(tmp_path, _volume(3)[:4], description="DWI b1000", z_mm=[3.0, 5.5, 8.0, 10.5])
    with pytest.raises(DicomError, match="holds 3 DICOM series") as error:
        io.read_image(tmp_path)
    for text in (t1, "'T1 axial'", "'DWI b1000'", "MR", "6 slices", "4 slices"):
        assert text in str(error.value)
    assert "\n" not in str(error.value)  # one line, as the radiomics stage records it
    by_uid = sitk.GetArrayFromImage(io.read_image(tmp_path, series=t2))
    np.testing.assert_array_equal(by_uid, _volume(2))
    by_pattern = sitk.GetArrayFromImage(io.read_image(tmp_path, series="t1*"))  # case-blind
    np.testing.assert_array_equal(by_pattern, _volume(1))
    with pytest.raises(DicomError, match="'flair\\*' matches no series.*'T2 axial'"):
        io.read_image(tmp_path, series="flair*")
    with pytest.raises(DicomError, match="'\\*axial' matches 2 series") as error:
        io.read_image(tmp_path, series="*axial")
    assert "DWI" not in str(error.value)  # only the candidates that matched


def test_multi_echo_is_refused_then_selected(tmp_path):
    uid = generate_uid()
    write_series(tmp_path, _volume(1), series=uid, EchoNumbers=1, EchoTime=10.0)
    write_series(tmp_path, _volume(2), series=uid, EchoNumbers=2, EchoTime=80.0)
    with pytest.raises(DicomError, match="several volumes.*EchoNumbers takes the values 1, 2"):
        io.read_image(tmp_path)
    echo2 = io.read_image(tmp_path, series=f"{uid};EchoNumbers=2")
    np.testing.assert_array_equal(sitk.GetArrayFromImage(echo2), _volume(2))
    with pytest.raises(DicomError, match="no slice has EchoNumbers=3 \\(values: 1, 2\\)"):
        io.read_image(tmp_path, series="*;EchoNumbers=3")
    with pytest.raises(DicomError, match="not TAG=VALUE"):
        io.read_image(tmp_path, series="*;Echo=2")


def test_a_4d_series_is_refused_then_selected(tmp_path):
    uid = generate_uid()
    for t in (1, 2, 3):
        write_series(tmp_path / "dyn", _volume(t), series=uid, TemporalPositionIdentifier=t)
    with pytest.raises(DicomError, match="TemporalPositionIdentifier takes the values 1, 2, 3"):
        io.read_image(tmp_path / "dyn")
    third = io.read_image(tmp_path / "dyn", series="*;TemporalPositionIdentifier=3")
    np.testing.assert_array_equal(sitk.GetArrayFromImage(third), _volume(3))
    copies = write_series(tmp_path / "copies", _volume(1), description="copied")
    for k, ds in enumerate(copies):  # the same slices saved twice under new instance UIDs
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.save_as(tmp_path / "copies" / f"copy{k}.dcm", enforce_file_format=True)
    with pytest.raises(DicomError, match="12 slices at only 6 positions.*copied files"):
        io.read_image(tmp_path / "copies")


def test_multi_frame_is_refused(tmp_path):
    ds = _image_dataset(_volume(1)[:3], ORIGIN, generate_uid(), "enhanced", NumberOfFrames=3)
    tmp_path.mkdir(exist_ok=True)
    ds.save_as(tmp_path / "enhanced.dcm", enforce_file_format=True)
    with pytest.raises(DicomError, match="multi-frame \\(enhanced\\) object of 3 frames"):
        io.read_image(tmp_path)


def test_missing_and_irregular_slices_are_refused(tmp_path):
    z = [ORIGIN[2] + k * SPACING[2] for k in range(6)]
    write_series(tmp_path / "gap", _volume(1)[:5], z_mm=z[:2] + z[3:])
    with pytest.raises(DicomError, match="a missing slice: a gap of 5.000 mm .* spacing is 2.500"):
        io.read_image(tmp_path / "gap")
    write_series(tmp_path / "uneven", _volume(1), z_mm=z[:3] + [v + 0.8 for v in z[3:]])
    with pytest.raises(DicomError, match="irregular slice spacing: a gap of 3.300 mm"):
        io.read_image(tmp_path / "uneven")
    localiser = write_series(tmp_path / "scout", _volume(1), description="scout")
    localiser[0].ImageOrientationPatient = [0.0, 1.0, 0.0, 0.0, 0.0, -1.0]
    localiser[0].save_as(sorted((tmp_path / "scout").iterdir())[0], enforce_file_format=True)
    with pytest.raises(DicomError, match="mixes slice orientations"):
        io.read_image(tmp_path / "scout")


def test_a_folder_without_series_is_named(tmp_path):
    (tmp_path / "notes.txt").write_text("not dicom")
    with pytest.raises(DicomError, match="holds no DICOM image series"):
        io.read_image(tmp_path)


# --- RTSTRUCT ----------------------------------------------------------------------------------


def test_fill_polygon_counts_voxel_centres():
    # a 4 x 4 square of voxel centres (indices 2..5), with a one-voxel hole cut by XOR below
    square = np.array([[1.5, 1.5], [5.5, 1.5], [5.5, 5.5], [1.5, 5.5]])
    inside = fill_polygon(square, (8, 9))
    assert inside.sum() == 16 and inside[2:6, 2:6].all()
    triangle = np.array([[0.0, 0.0], [8.0, 0.0], [0.0, 8.0]])  # centres with i + j < 8, i, j > 0
    expected = sum(1 for i in range(1, 9) for j in range(1, 9) if i + j < 8)
    assert fill_polygon(triangle, (9, 9))[1:, 1:].sum() == expected


def test_rtstruct_roi_is_rasterised_and_chosen(tmp_path):
    images = write_series(tmp_path / "image", _volume(1))
    image = io.read_image(tmp_path / "image")
    z1, z2 = ORIGIN[2] + SPACING[2], ORIGIN[2] + 2 * SPACING[2]
    gtv = [_square(z1, 1.5, 5.5), _square(z2, 1.5, 5.5), _square(z2, 2.5, 3.5)]  # hole on z2
    path = write_rtstruct(tmp_path / "rs.dcm", images, {"GTV_Mass": gtv})
    mask = io.read_mask(path, image)
    labels = sitk.GetArrayFromImage(mask)
    assert mask.GetSize() == image.GetSize() and mask.GetOrigin() == image.GetOrigin()
    assert labels[1].sum() == 16 and labels[2].sum() == 15 and labels.sum() == 31
    assert labels[2, 3, 3] == 0  # the hole
    two = write_rtstruct(tmp_path / "two.dcm", images, {"GTV_Mass": gtv, "Body": gtv[:1]})
    with pytest.raises(DicomError, match="holds 2 structures; name one as roi: 'GTV_Mass', 'Body'"):
        io.read_mask(two, image)
    with pytest.raises(DicomError, match="roi 'CTV' matches no structure.*'GTV_Mass', 'Body'"):
        io.read_mask(two, image, roi="CTV")
    assert sitk.GetArrayFromImage(io.read_mask(two, image, roi="body")).sum() == 16


def test_rtstruct_of_another_image_is_refused(tmp_path):
    images = write_series(tmp_path / "image", _volume(1))
    image = io.read_image(tmp_path / "image")
    z1 = ORIGIN[2] + SPACING[2]
    elsewhere = write_rtstruct(
        tmp_path / "a.dcm", images, {"GTV": [_square(z1, 1.5, 5.5)]}, frame=generate_uid()
    )
    with pytest.raises(DicomError, match="drawn in frame of reference .* another image"):
        io.read_mask(elsewhere, image)
    other = write_rtstruct(
        tmp_path / "b.dcm", images, {"GTV": [_square(z1, 1.5, 5.5)]}, series=generate_uid()
    )
    with pytest.raises(DicomError, match="references series .*not the image's series"):
        io.read_mask(other, image)
    between = write_rtstruct(tmp_path / "c.dcm", images, {"GTV": [_square(z1 + 1.25, 1, 5)]})
    with pytest.raises(DicomError, match="does not lie on a slice of the image"):
        io.read_mask(between, image)
    outside = write_rtstruct(tmp_path / "d.dcm", images, {"GTV": [_square(z1, 40.5, 45.5)]})
    with pytest.raises(DicomError, match="lie outside the image"):
        io.read_mask(outside, image)


# --- DICOM-SEG ---------------------------------------------------------------------------------


def _write_seg(path, images, masks: dict[str, np.ndarray]):
    hd = pytest.importorskip("highdicom")
    from pydicom.sr.codedict import codes

    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=n,
            segment_label=label,
            segmented_property_category=codes.SCT.Tissue,
            segmented_property_type=codes.SCT.Tissue,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL,
        )
        for n, label in enumerate(masks, start=1)
    ]
    stacked = np.stack(list(masks.values()), axis=-1).astype(np.uint8)  # (slices, rows, cols, s)
    seg = hd.seg.Segmentation(
        source_images=images,
        pixel_array=stacked,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=generate_uid(),
        series_number=2,
        sop_instance_uid=generate_uid(),
        instance_number=1,
        manufacturer="stromalens tests",
        manufacturer_model_name="test",
        software_versions="0",
        device_serial_number="0",
    )
    seg.save_as(path)
    return path


def test_seg_segment_is_read_onto_the_image(tmp_path):
    images = write_series(tmp_path / "image", _volume(1))
    image = io.read_image(tmp_path / "image")
    tumour = np.zeros(SHAPE, dtype=np.uint8)
    tumour[2:4, 3:8, 2:6] = 1
    oedema = np.zeros(SHAPE, dtype=np.uint8)
    oedema[1:5, 2:9, 1:7] = 1
    one = _write_seg(tmp_path / "one.dcm", images, {"tumour": tumour})
    mask = io.read_mask(one, image)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(mask), tumour)
    assert mask.GetOrigin() == image.GetOrigin()
    (tmp_path / "segdir").mkdir()
    two = _write_seg(tmp_path / "segdir" / "two.dcm", images, {"tumour": tumour, "oedema": oedema})
    with pytest.raises(DicomError, match="holds 2 structures; name one as roi: 'tumour', 'oedema'"):
        io.read_mask(two, image)
    with pytest.raises(DicomError, match="roi 'necrosis' matches no structure"):
        io.read_mask(two, image, roi="necrosis")
    picked = io.read_mask(tmp_path / "segdir", image, roi="oedema")  # a folder with one SEG
    np.testing.assert_array_equal(sitk.GetArrayFromImage(picked), oedema)


# --- the IBSI soft-tissue sarcoma patients: DICOM + RTSTRUCT against MIRP's NIfTI -------------

IBSI = RADIOLOGY / "ibsi_sts"


@pytest.mark.parametrize("patient", ["STS_004", "STS_005", "STS_006"])
@pytest.mark.parametrize("modality", ["CT", "MR_T1", "PET"])
def test_ibsi_dicom_matches_nifti(patient, modality):
    folder = require(IBSI / "dicom" / patient / modality)
    image = io.read_image(folder / "image")
    nifti = io.read_image(IBSI / patient / f"{modality}_image.nii.gz")
    assert io.geometry_mismatch(nifti, image, tolerance=1e-5) == []
    # MIRP wrote the NIfTI from these DICOM files (PET as float64 SUV, CT/MR as int16)
    np.testing.assert_allclose(
        sitk.GetArrayFromImage(image), sitk.GetArrayFromImage(nifti), rtol=0, atol=2e-6
    )
    mask = sitk.GetArrayFromImage(io.read_mask(folder / "mask" / "RS.dcm", image, roi="GTV*"))
    reference = sitk.GetArrayFromImage(io.read_image(IBSI / patient / f"{modality}_mask.nii.gz"))
    dice = 2 * np.sum((mask > 0) & (reference > 0)) / (np.sum(mask > 0) + np.sum(reference > 0))
    assert dice >= 0.999  # measured: 1.0 (voxel-identical) for all 9 cases


def test_ibsi_rtstruct_of_another_modality_is_refused():
    folder = require(IBSI / "dicom" / "STS_004")
    mr = io.read_image(folder / "MR_T1" / "image")
    with pytest.raises(DicomError, match="roi 'GTV_Mass' matches no structure.*GTV_Mass_MR_T1"):
        io.read_mask(folder / "MR_T1" / "mask" / "RS.dcm", mr, roi="GTV_Mass")
    with pytest.raises(DicomError, match="references series|frame of reference"):
        io.read_mask(folder / "CT" / "mask" / "RS.dcm", mr)
