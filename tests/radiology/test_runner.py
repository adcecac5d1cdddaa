"""The cohort run: synthetic and real cases, missing sequences, failures, resumption, CLI."""

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from stromalens.config import ConfigError, load_config, validate_settings
from stromalens.radiology.runner import run_radiomics
from stromalens.radiology.settings import RadiomicsConfig

from .conftest import RADIOLOGY, require

CONFIGS = Path(__file__).resolve().parents[2] / "configs"

#: Light settings: the pipeline's every step, few features.
LIGHT = {
    "preprocess": {"n4": {"fit_spacing_mm": 8.0, "iterations": [5]}, "crop_margin_mm": 5},
    "extraction": {
        "imageType": {"Original": {}},
        "featureClass": {"firstorder": [], "shape": ["VoxelVolume"], "glcm": ["Contrast"]},
        "setting": {"binCount": 16},
    },
    "stability": {"perturbations": 2, "patients": 3},
    "harmonisation_check": {"folds": 2},
}


def light(**overrides) -> RadiomicsConfig:
    return validate_settings(RadiomicsConfig, LIGHT | overrides, source="test")


def test_shipped_configs_are_valid():
    for name in ("radiomics.yaml", "radiomics_demo.yaml"):
        config = load_config(CONFIGS / name, RadiomicsConfig)
        assert [s.name for s in config.sequences] == ["t1", "t2", "ce"]
    full = load_config(CONFIGS / "radiomics.yaml", RadiomicsConfig)
    assert set(full.extraction.imageType) == {"Original", "LoG", "Wavelet"}
    assert {"glcm", "glrlm", "glszm", "ngtdm"} <= set(full.extraction.featureClass)


def test_the_built_in_default_is_configs_radiomics_yaml():
    """`stromalens radiomics` without --config computes what the shipped file documents."""
    shipped = load_config(CONFIGS / "radiomics.yaml", RadiomicsConfig)
    assert shipped.model_dump() == RadiomicsConfig().model_dump()
    assert shipped.preprocess.normalise.region == "body"


def test_config_errors_name_the_key(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("stability:\n  threshold: 1.5\n  perturbation: 3\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, RadiomicsConfig)
    assert "stability.threshold" in str(info.value)
    assert "stability.perturbation" in str(info.value)


def test_synthetic_cohort_run(mri_cohort, tmp_path):
    out = tmp_path / "radiomics"
    summary = run_radiomics(mri_cohort, out, light(), workers=2, progress=False, check=False)
    features = pd.read_parquet(out / "radiomics.parquet")
    cohort = pd.read_csv(mri_cohort, dtype=str, keep_default_na=False)
    assert list(features.index) == cohort["patient_id"].tolist()
    assert all(c.split("__")[0] in {"t1", "t2", "ce"} for c in features.columns)
    assert "t1__original_glcm_Contrast" in features
    assert not any("diagnostics" in c for c in features.columns)
    # the sequences share one mask: its shape features are extracted once and given to every
    # sequence present (so no patient's shape columns are NaN for a sequence it has)
    for seq in ("t1", "t2", "ce"):
        present = features.filter(like=f"{seq}__original_firstorder_").notna().all(axis=1)
        shape = features.filter(like=f"{seq}__original_shape_")
        assert not shape.empty and shape[present].notna().all().all()
        assert shape[~present].isna().all().all()
    both = features["t2__original_shape_VoxelVolume"].notna()
    pd.testing.assert_series_equal(
        features.loc[both, "t1__original_shape_VoxelVolume"],
        features.loc[both, "t2__original_shape_VoxelVolume"],
        check_names=False,
    )
    diagnostics = pd.read_parquet(out / "diagnostics.parquet")
    assert all("__diagnostics_" in c or "stromalens" in c for c in diagnostics.columns)
    # a missing sequence is a missing block, recorded
    status = pd.read_csv(out / "patients.csv", index_col=0, keep_default_na=False)
    no_t2 = cohort.loc[cohort["mri_t2"] == "", "patient_id"].tolist()
    assert no_t2, "the fixture should lack some T2"
    for pid in no_t2:
        assert status.loc[pid, "missing_sequences"] == "t2"
        assert features.loc[pid].filter(like="t2__").isna().all()
    stability = pd.read_parquet(out / "stability.parquet")
    assert {"icc", "ci_low", "ci_high", "stable"} <= set(stability.columns)
    assert stability["n_perturbations"].iloc[0] == 2
    perturbed = pd.read_parquet(out / "perturbations.parquet")
    assert perturbed.index.get_level_values(0).nunique() == 3
    assert summary["patients_ok"] == 6

    # resumable: a second run reuses every patient
    again = run_radiomics(mri_cohort, out, light(), workers=1, progress=False, check=False)
    status = pd.read_csv(out / "patients.csv", index_col=0)
    assert status["resumed"].all() and again["features"] == summary["features"]
    pd.testing.assert_frame_equal(pd.read_parquet(out / "radiomics.parquet"), features)


def test_a_bad_patient_is_reported_and_skipped(mri_cohort, tmp_path):
    frame = pd.read_csv(mri_cohort, dtype=str, keep_default_na=False)
    base = mri_cohort.parent
    for col in ("mri_t1", "mri_t2", "mri_ce", "mri_mask"):
        frame[col] = [str(base / v) if v else "" for v in frame[col]]
    broken = tmp_path / "broken.nii.gz"
    broken.write_bytes(b"not an image")
    frame.loc[1, "mri_mask"] = str(broken)
    frame = frame.iloc[:3]
    manifest = tmp_path / "cohort.csv"
    frame.to_csv(manifest, index=False)
    config = light(stability={"enabled": False})
    summary = run_radiomics(manifest, tmp_path / "out", config, workers=1, progress=False)
    assert summary["patients_failed"] == [frame.loc[1, "patient_id"]]
    status = pd.read_csv(tmp_path / "out" / "patients.csv", index_col=0)
    assert "cannot be read" in status.loc[frame.loc[1, "patient_id"], "error"]
    assert len(pd.read_parquet(tmp_path / "out" / "radiomics.parquet")) == 2


@pytest.mark.slow
def test_real_cases_nifti_mr_ct_and_nrrd_via_cli(tmp_path):
    """IBSI soft-tissue sarcoma MR + CT (NIfTI) and PyRadiomics' NRRD cases, through the CLI."""
    sts = require(RADIOLOGY / "ibsi_sts")
    nrrd = require(RADIOLOGY / "pyradiomics")
    rows = []
    for pid in ("STS_001", "STS_002", "STS_003"):
        folder = sts / pid
        rows.append(
            {
                "patient_id": pid,
                "site": "STS",
                "mri_t1": folder / "MR_T1_image.nii.gz",
                "mri_mask": folder / "MR_T1_mask.nii.gz",
                "ct": folder / "CT_image.nii.gz",
                "ct_mask": folder / "CT_mask.nii.gz",
            }
        )
    for case in ("brain1", "breast1"):
        rows.append(
            {
                "patient_id": case,
                "site": "PYRAD",
                "mri_t1": nrrd / f"{case}_image.nrrd",
                "mri_mask": nrrd / f"{case}_label.nrrd",
            }
        )
    manifest = tmp_path / "real.csv"
    pd.DataFrame(rows).to_csv(manifest, index=False)
    config = tmp_path / "real.yaml"
    config.write_text(
        "sequences:\n"
        # the IBSI MR images are already N4-corrected and normalised (see their README)
        "  - {name: t1, image: mri_t1, mask: mri_mask, n4: false}\n"
        "  - {name: ct, image: ct, mask: ct_mask, n4: false, normalise: false,\n"
        "     setting: {binWidth: 25}}\n"
        "preprocess: {crop_margin_mm: 10}\n"
        "extraction:\n"
        "  imageType: {Original: {}}\n"
        "  featureClass: {firstorder: [], shape: [], glcm: [], glrlm: [], glszm: [], ngtdm: []}\n"
        "  setting: {binCount: 32}\n"
        "stability: {perturbations: 2, patients: null}\n"
        "harmonisation_check: {enabled: false}\n"
    )
    out = tmp_path / "out"
    script = Path(sys.executable).parent / "stromalens"
    result = subprocess.run(
        [str(script), "radiomics", "--manifest", str(manifest), "--out", str(out)]
        + ["--config", str(config), "--workers", "2", "--no-progress"],
        capture_output=True,
        encoding="utf-8",
    )
    assert result.returncode == 0, result.stderr
    features = pd.read_parquet(out / "radiomics.parquet")
    assert list(features.index) == ["STS_001", "STS_002", "STS_003", "brain1", "breast1"]
    assert features.loc["STS_001"].filter(like="ct__").notna().all()
    assert features.loc["brain1"].filter(like="ct__").isna().all()
    assert features.loc["brain1"].filter(like="t1__").notna().all()
    # the CT is not normalised: its mean is in Hounsfield units
    assert abs(features.loc["STS_001", "ct__original_firstorder_Mean"]) > 5
    stability = pd.read_parquet(out / "stability.parquet")
    assert stability.loc["t1__original_shape_VoxelVolume", "icc"] > 0.75
    summary = json.loads((out / "radiomics.json").read_text())
    assert summary["patients_ok"] == 5


def test_cli_reports_bad_input_in_one_line(tmp_path):
    manifest = tmp_path / "cohort.csv"
    manifest.write_text("patient_id,site,mri_t1,mri_mask\nP1,A,,\n")
    config = tmp_path / "r.yaml"
    config.write_text("sequences:\n  - {name: t1, image: mri_t1x}\n")
    script = Path(sys.executable).parent / "stromalens"
    result = subprocess.run(
        [str(script), "radiomics", "--manifest", str(manifest), "--out", str(tmp_path / "o")]
        + ["--config", str(config)],
        capture_output=True,
        encoding="utf-8",
    )
    assert result.returncode == 1
    assert "mri_t1x" in result.stderr and "Traceback" not in result.stderr


def test_executor_is_chosen_by_name(small_cohort, tmp_path):
    """Patients go to a local pool or to Ray by name; an unknown executor is a clear error."""
    with pytest.raises(ValueError, match="executor must be 'process' or 'ray'"):
        run_radiomics(small_cohort, tmp_path / "r", executor="slurm", progress=False)


def test_the_site_check_runs_on_a_synthetic_multi_site_cohort(tmp_path):
    """The before/after site classifier is in radiomics.json on a `stromalens synth` cohort
    with gaps (missing sequences): per-feature availability, not complete patients only."""
    from stromalens.config import MissingRates, SynthConfig
    from stromalens.synthetic import generate_cohort

    synth = SynthConfig(
        patients=24, seed=11, missing=MissingRates(wsi=1.0, mri_t2=0.25, mri_ce=0.2), workers=1
    )
    manifest = generate_cohort(tmp_path / "cohort", synth, progress=False)
    config = light(stability={"enabled": False})
    summary = run_radiomics(manifest, tmp_path / "out", config, workers=2, progress=False)
    check = json.loads((tmp_path / "out" / "radiomics.json").read_text())["site_check"]
    assert check == summary["site_check"]
    assert "skipped" not in check, check
    accuracy = check["balanced_accuracy"]
    assert set(accuracy) == {"raw", "combat", "chance"}
    assert len(check["sites"]) >= 2 and check["missing_fraction"] > 0
    features = pd.read_parquet(tmp_path / "out" / "radiomics.parquet")
    assert features.notna().all(axis=1).sum() < len(features)  # some patients incomplete
    assert check["patients"] == sum(check["sites"].values())


def test_per_sequence_masks_registration_and_a_failed_sequence(mri_cohort, tmp_path):
    """Own masks, a sequence that borrows the T1 mask by registration (QC in patients.csv),
    and one sequence that fails (an empty mask) without failing its patient."""
    import SimpleITK as sitk

    frame = pd.read_csv(mri_cohort, dtype=str, keep_default_na=False)
    base = mri_cohort.parent
    for col in ("mri_t1", "mri_t2", "mri_ce", "mri_mask"):
        frame[col] = [str(base / v) if v else "" for v in frame[col]]
    frame = frame.iloc[:3].copy()
    frame["mri_t1_mask"] = frame["mri_mask"]
    frame["mri_ce_mask"] = frame["mri_mask"]
    empty = sitk.ReadImage(frame.loc[0, "mri_mask"]) * 0
    sitk.WriteImage(empty, str(tmp_path / "empty.nii.gz"))
    frame.loc[0, "mri_ce_mask"] = str(tmp_path / "empty.nii.gz")
    frame = frame.drop(columns="mri_mask")  # no shared mask: t2 must borrow t1's
    frame.loc[:, "mri_t2"] = frame["mri_t2"].where(frame["mri_t2"] != "", frame["mri_t1"])
    manifest = tmp_path / "cohort.csv"
    frame.to_csv(manifest, index=False)
    config = light(
        sequences=[
            {"name": "t1", "image": "mri_t1"},
            {"name": "t2", "image": "mri_t2", "mask_from": "t1"},
            {"name": "ce", "image": "mri_ce"},
        ],
        stability={"enabled": False},
        preprocess=LIGHT["preprocess"] | {"registration": {"method": "none"}},
    )
    summary = run_radiomics(manifest, tmp_path / "out", config, workers=1, progress=False)
    assert summary["patients_ok"] == 3
    status = pd.read_csv(tmp_path / "out" / "patients.csv", index_col=0, keep_default_na=False)
    first, second = frame["patient_id"].iloc[:2]
    assert status.loc[first, "failed_sequences"].startswith("ce: ")
    assert "mask is empty" in status.loc[first, "failed_sequences"]
    assert status.loc[second, "failed_sequences"] == ""
    assert status.loc[second, "mask_source"] == "t1:own,t2:registered,ce:own"
    assert float(status.loc[second, "t2_registration_inside"]) == 1.0
    assert float(status.loc[second, "t2_registration_shift_mm"]) == 0.0
    assert status.loc[second, "t2_registration_reference"] == "t1"
    features = pd.read_parquet(tmp_path / "out" / "radiomics.parquet")
    assert features.loc[first].filter(like="ce__").isna().all()
    assert features.loc[first].filter(like="t2__").notna().all()
