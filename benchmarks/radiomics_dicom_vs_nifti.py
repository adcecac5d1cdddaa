"""PyRadiomics features from DICOM + RTSTRUCT against the same patients' NIfTI (IBSI STS 004–006).

    python benchmarks/radiomics_dicom_vs_nifti.py [--data DIR] [--filters]

For each patient and modality (CT, MR T1, PET) the image is read twice through
``stromalens.radiology.io`` — the DICOM series folder with its RTSTRUCT (``GTV_Mass*``)
rasterised onto it, and the NIfTI image with its NIfTI mask (both made by MIRP from the same
DICOM for the IBSI) — and PyRadiomics 3.0.1 extracts the features of ``configs/radiomics.yaml``
(``extraction`` block, read through ``stromalens.radiology.settings``) on the native grid, with
the Original image only unless ``--filters`` adds the file's LoG and wavelet images (preprocessing
— resampling, N4, normalisation — is left out: it would act identically on both and only the
reading is compared). Printed: the masks' Dice, the mesh volume of each, and per feature class
the median and largest relative difference |a − b| / max(|b|, 1e-12) over features and cases.

Measured (PyRadiomics 3.0.1, Original image, 93 features per case, 9 cases, commit of this
script):

    masks       Dice 1.000000 in all 9 cases (voxel-identical to MIRP's NIfTI masks)
    MeshVolume  e.g. STS_005/CT 584.701086 mL (DICOM) vs 584.701110 mL (NIfTI), rel. ≤ 4.2e-8
    class       features  median rel. diff  max rel. diff
    firstorder     18        0               7.3e-08   (PET: float64 SUV in DICOM, float32 NIfTI)
    shape          14        5.8e-09         4.2e-08   (NIfTI stores spacing/origin as float32)
    glcm           24        0               0
    glrlm          16        0               0
    glszm          16        0               0
    ngtdm           5        0               0

With ``--filters`` (LoG σ = 1, 2, 3 mm and 8 wavelet images, 962 features per case): median
relative difference 0 for every texture class and 1.4e-7 for first order; the largest are
firstorder 3.3e-3, glcm 7.0e-4, glszm 4.4e-4, glrlm 8.1e-5, ngtdm 2.5e-5 — all on wavelet
images of the MR, e.g. ``wavelet-HHL_firstorder_Median`` 0.00307 vs 0.00308 (a median near 0;
the DICOM pixels are int16, the NIfTI float32, and the filters' arithmetic follows the input
type). Feature time is the same both ways (≈ 1.0×: the mask and image are identical).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from stromalens.radiology import features as feat
from stromalens.radiology import io
from stromalens.radiology.settings import RadiomicsConfig

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "radiology" / "ibsi_sts"
PATIENTS = ("STS_004", "STS_005", "STS_006")
MODALITIES = ("CT", "MR_T1", "PET")


def _params(filters: bool) -> dict:
    config = RadiomicsConfig.model_validate(
        yaml.safe_load((ROOT / "configs" / "radiomics.yaml").read_text())
    )
    params = config.extraction.pyradiomics_params()
    if not filters:
        params["imageType"] = {"Original": {}}
    return params


def _dice(a, b) -> float:
    import SimpleITK as sitk

    x, y = sitk.GetArrayViewFromImage(a) > 0, sitk.GetArrayViewFromImage(b) > 0
    return float(2 * np.sum(x & y) / (np.sum(x) + np.sum(y)))


def _case(folder: Path, patient: str, modality: str, extractor) -> tuple[dict, pd.DataFrame]:
    """Features of one case read both ways; (summary row, per-feature comparison)."""
    dicom = folder / "dicom" / patient / modality
    image_d = io.read_image(dicom / "image")
    mask_d = io.read_mask(dicom / "mask" / "RS.dcm", image_d, roi="GTV_Mass*")
    image_n = io.read_image(folder / patient / f"{modality}_image.nii.gz")
    mask_n = io.check_mask(
        image_n, io.read_mask(folder / patient / f"{modality}_mask.nii.gz", image_n)
    )
    t0 = time.perf_counter()
    from_dicom, _ = feat.extract(extractor, image_d, mask_d)
    t1 = time.perf_counter()
    from_nifti, _ = feat.extract(extractor, image_n, mask_n)
    t2 = time.perf_counter()
    table = pd.DataFrame({"dicom": from_dicom, "nifti": from_nifti})
    table["rel_diff"] = (table.dicom - table.nifti).abs() / table.nifti.abs().clip(lower=1e-12)
    table["class"] = [name.split("_")[1] for name in table.index]
    table["case"] = f"{patient}/{modality}"
    row = {
        "case": f"{patient}/{modality}",
        "dice": _dice(mask_d, mask_n),
        "volume_dicom_ml": from_dicom["original_shape_MeshVolume"] / 1000,
        "volume_nifti_ml": from_nifti["original_shape_MeshVolume"] / 1000,
        "seconds_dicom": t1 - t0,
        "seconds_nifti": t2 - t1,
    }
    return row, table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--filters", action="store_true", help="add the YAML's LoG + wavelet")
    args = parser.parse_args()
    if not (args.data / "dicom").is_dir():
        raise SystemExit(f"no IBSI STS DICOM data under {args.data}")
    extractor = feat.make_extractor(_params(args.filters))
    rows, tables = [], []
    for patient in PATIENTS:
        for modality in MODALITIES:
            if (args.data / "dicom" / patient / modality).is_dir():
                row, table = _case(args.data, patient, modality, extractor)
                rows.append(row)
                tables.append(table)
    cases = pd.DataFrame(rows).set_index("case")
    everything = pd.concat(tables)
    per_class = everything.groupby("class").rel_diff.agg(
        features=lambda s: s.size // len(rows), median="median", max="max"
    )
    with pd.option_context("display.width", 120, "display.float_format", "{:.3g}".format):
        print(f"{len(rows)} cases, {len(tables[0])} features each\n")
        print(cases.to_string(float_format=lambda v: f"{v:.6f}"))
        print("\nrelative difference |dicom - nifti| / |nifti| per feature class")
        print(per_class.to_string())
        worst = everything.sort_values("rel_diff").tail(3)
        print("\nlargest differences\n" + worst[["case", "dicom", "nifti", "rel_diff"]].to_string())


if __name__ == "__main__":
    main()
