"""Work redone only where inputs changed (issue 18, item 5), on real stages of a tiny study over
a copy of the synthetic cohort: what each stage redid is counted from its report in
``manifest.json`` and from the files it wrote (modification times), not from a mock."""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest

from stromalens.config import StudyConfig, validate_settings
from stromalens.study import read_manifest, run_study, stage_digests
from stromalens.study.stages import default_stages

from .conftest import tiny_study

ALL = ["targets", "wsi", "radiomics", "train", "external", "evaluate", "report"]


@pytest.fixture
def cohort(small_cohort, tmp_path) -> Path:
    """A private copy of the 10-patient cohort (its files are edited); returns its manifest."""
    root = shutil.copytree(small_cohort.parent, tmp_path / "cohort")
    return root / small_cohort.name


def _config(manifest: Path, **overrides) -> StudyConfig:
    return validate_settings(StudyConfig, tiny_study(manifest, **overrides))


def _run(manifest: Path, study: Path, *only: str, **overrides):
    return run_study(_config(manifest, **overrides), study, only=only or None)


def _edit_manifest(manifest: Path, edit) -> None:
    frame = pd.read_csv(manifest, dtype=str, keep_default_na=False)
    edit(frame)
    frame.to_csv(manifest, index=False)


def _mtimes(folder: Path, pattern: str) -> dict[str, int]:
    """Every file matching ``pattern`` under ``folder`` with its modification time (ns)."""
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in folder.rglob(pattern)}


def _summary(study: Path, stage: str) -> dict:
    return read_manifest(study)["stages"][stage]["summary"]


def _n_slides(manifest: Path) -> int:
    return int((pd.read_csv(manifest, dtype=str, keep_default_na=False)["wsi"] != "").sum())


def _slide_of(manifest: Path) -> tuple[str, Path]:
    frame = pd.read_csv(manifest, dtype=str, keep_default_na=False)
    row = frame[frame["wsi"] != ""].iloc[0]
    return row["patient_id"], manifest.parent / row["wsi"]


# ---------------------------------------------------------------------------- item 1
def test_one_os_time_changes_the_digests_of_train_and_what_reads_it_only(cohort):
    before = {k: v["digest"] for k, v in stage_digests(_config(cohort), default_stages()).items()}

    def edit(frame):
        frame.loc[0, "os_time"] = str(float(frame.loc[0, "os_time"]) + 1.0)

    _edit_manifest(cohort, edit)
    after = {k: v["digest"] for k, v in stage_digests(_config(cohort), default_stages()).items()}
    assert [s for s in ALL if before[s] != after[s]] == ["train", "external", "evaluate", "report"]


def test_one_os_time_changed_re_embeds_no_slide(cohort, tmp_path):
    study = tmp_path / "study"
    _run(cohort, study, "targets", "wsi")
    stores = _mtimes(study / "features", "*.h5")
    assert len(stores) == _n_slides(cohort) > 1

    def edit(frame):
        frame.loc[0, "os_time"] = str(float(frame.loc[0, "os_time"]) + 1.0)

    _edit_manifest(cohort, edit)
    again = _run(cohort, study, "targets", "wsi")
    assert again.skipped == ["targets", "wsi"] and again.ran == []
    assert _mtimes(study / "features", "*.h5") == stores  # not one store rewritten


def test_a_new_slide_setting_of_one_slide_re_embeds_that_slide_only(cohort, tmp_path):
    # the wsi stage reruns (its slide table changed) but keeps the stores that still match
    study = tmp_path / "study"
    _run(cohort, study, "wsi")
    stores = _mtimes(study / "features", "*.h5")
    patient, _ = _slide_of(cohort)

    def edit(frame):
        frame.loc[frame["patient_id"] == patient, "wsi_mpp"] = "0.26"

    _edit_manifest(cohort, edit)
    again = _run(cohort, study, "wsi")
    assert again.ran == ["wsi"]
    assert _summary(study, "wsi")["slides"] == {"done": 1, "skipped": _n_slides(cohort) - 1}
    now = _mtimes(study / "features", "*.h5")
    assert [k for k in stores if now[k] != stores[k]] == [k for k in stores if patient in k]


# ---------------------------------------------------------------------------- item 2
def test_a_repaired_slide_is_embedded_on_the_next_run_and_the_others_are_not(cohort, tmp_path):
    study = tmp_path / "study"
    patient, slide = _slide_of(cohort)
    good = slide.read_bytes()
    slide.write_bytes(b"this is not a TIFF")
    first = _run(cohort, study, "wsi")
    assert first.ran == ["wsi"]
    assert _summary(study, "wsi")["slides"] == {"failed": 1, "done": _n_slides(cohort) - 1}
    assert _summary(study, "wsi")["retry"] == [patient]
    stores = _mtimes(study / "features", "*.h5")

    # not repaired yet: the failed slide is tried again (and fails), the others are kept
    second = _run(cohort, study, "wsi")
    assert second.ran == ["wsi"]
    assert _summary(study, "wsi")["slides"] == {"failed": 1, "skipped": _n_slides(cohort) - 1}
    assert read_manifest(study)["stages"]["wsi"]["resumed"] is True

    slide.write_bytes(good)  # repaired
    third = _run(cohort, study, "wsi")
    assert third.ran == ["wsi"]
    assert _summary(study, "wsi")["slides"] == {"done": 1, "skipped": _n_slides(cohort) - 1}
    assert _summary(study, "wsi")["retry"] == []
    now = _mtimes(study / "features", "*.h5")
    assert {k: now[k] for k in stores} == stores and len(now) == _n_slides(cohort)
    assert _run(cohort, study, "wsi").skipped == ["wsi"]  # nothing left to retry


def test_a_slide_that_breaks_loses_its_old_store(cohort, tmp_path):
    # training must not read features of the earlier file once the slide fails
    study = tmp_path / "study"
    patient, slide = _slide_of(cohort)
    _run(cohort, study, "wsi")
    slide.write_bytes(b"this is not a TIFF")
    _run(cohort, study, "wsi")
    assert _summary(study, "wsi")["slides"] == {"failed": 1, "skipped": _n_slides(cohort) - 1}
    assert not list((study / "features").rglob(f"{patient}.h5"))


def _mri_of(manifest: Path) -> tuple[str, Path]:
    frame = pd.read_csv(manifest, dtype=str, keep_default_na=False)
    row = frame[frame["mri_t1"] != ""].iloc[0]
    return row["patient_id"], manifest.parent / row["mri_t1"]


def test_a_changed_image_file_recomputes_that_patients_radiomics_only(cohort, tmp_path):
    import numpy as np
    import SimpleITK as sitk

    study = tmp_path / "study"
    _run(cohort, study, "radiomics")
    records = _mtimes(study / "radiomics" / "patients", "*.json")
    before = pd.read_parquet(study / "radiomics" / "radiomics.parquet")
    patient, image = _mri_of(cohort)
    volume = sitk.ReadImage(str(image))
    voxels = sitk.GetArrayFromImage(volume).astype(np.float32)
    noisy = voxels + np.random.default_rng(0).normal(0, voxels.std(), voxels.shape)
    changed = sitk.GetImageFromArray(noisy.astype(np.float32))
    changed.CopyInformation(volume)
    sitk.WriteImage(changed, str(image))

    again = _run(cohort, study, "radiomics")
    assert again.ran == ["radiomics"]
    summary = _summary(study, "radiomics")
    assert summary["patients_resumed"] == summary["patients_ok"] - 1
    now = _mtimes(study / "radiomics" / "patients", "*.json")
    assert [k for k in records if now[k] != records[k]] == [f"{patient}.json"]
    after = pd.read_parquet(study / "radiomics" / "radiomics.parquet")
    t1 = [c for c in before.columns if c.startswith("t1__")]
    differs = (before[t1] - after.loc[before.index, t1]).abs().max(axis=1) > 0
    assert differs[differs].index.tolist() == [patient]  # the new volume's features only


def test_a_failed_radiomics_patient_is_retried_once_its_file_is_repaired(cohort, tmp_path):
    study = tmp_path / "study"
    patient, image = _mri_of(cohort)
    good = image.read_bytes()
    image.write_bytes(good[: len(good) // 3])  # a truncated gzip: the patient fails
    _run(cohort, study, "radiomics")
    assert _summary(study, "radiomics")["retry"] == [patient]
    image.write_bytes(good)
    _run(cohort, study, "radiomics")
    summary = _summary(study, "radiomics")
    assert summary["retry"] == []
    assert summary["patients_resumed"] == summary["patients_ok"] - 1


def test_a_stage_whose_retried_items_recover_reruns_what_reads_it(tmp_path):
    # a toy graph: "a" fails item X until the file "x.ok" exists; "b" reads a's results
    from stromalens.study import Stage

    calls: list[str] = []

    def run_a(config, study):
        calls.append("a")
        (study / "a").mkdir(exist_ok=True)
        (study / "a" / "out").write_text("a")
        return {"retry": [] if (study / "x.ok").exists() else ["X"]}

    def run_b(config, study):
        calls.append("b")
        (study / "b").mkdir(exist_ok=True)
        (study / "b" / "out").write_text("b")
        return {}

    def graph():
        return [
            Stage(
                name,
                fn,
                settings=lambda c: {},
                inputs=lambda c: [],
                outputs=lambda c, n=name: [f"{n}/out"],
                clean=lambda c, n=name: [n],
                after=after,
            )  # fmt: skip
            for name, fn, after in (("a", run_a, ()), ("b", run_b, ("a",)))
        ]

    config = StudyConfig.model_validate({"cohort": {"manifest": "cohort.csv"}})
    run_study(config, tmp_path, stages=graph())
    assert run_study(config, tmp_path, stages=graph()).ran == ["a"]  # X fails again: b kept
    (tmp_path / "x.ok").write_text("repaired")
    assert run_study(config, tmp_path, stages=graph()).ran == ["a", "b"]
    assert run_study(config, tmp_path, stages=graph()).skipped == ["a", "b"]
    assert calls == ["a", "b", "a", "a", "b"]


# ---------------------------------------------------------------------------- item 4
def test_training_resumes_from_the_fits_already_written(cohort, tmp_path):
    study = tmp_path / "study"
    stages = ("targets", "wsi", "radiomics", "train")
    _run(cohort, study, *stages)
    checkpoints = study / "train" / "checkpoints"
    fits = _mtimes(checkpoints, "*.safetensors")
    assert any("/select/" in k for k in fits)  # the nested selection's fits are kept too
    # killed after the fits, before the run files: the outputs are gone, the checkpoints not
    for rel in ("metrics.json", "predictions.parquet"):
        (study / "train" / rel).unlink()
    shutil.rmtree(study / "train" / "model")
    again = _run(cohort, study, *stages)
    assert again.ran == ["train"]
    assert read_manifest(study)["stages"]["train"]["resumed"] is True
    assert _mtimes(checkpoints, "*.safetensors") == fits  # zero refits

    # a new os_time reruns train (it reads the manifest) from its checkpoints: zero refits
    def edit(frame):
        frame.loc[0, "os_time"] = str(float(frame.loc[0, "os_time"]) + 1.0)

    _edit_manifest(cohort, edit)
    third = _run(cohort, study, *stages)
    assert third.ran == ["train"]
    assert _mtimes(checkpoints, "*.safetensors") == fits


# ---------------------------------------------------------------------------- item 3
def _wsi_embed(manifest: Path, out: Path, *args: str) -> None:
    import os
    import subprocess
    import sys

    script = Path(sys.executable).parent / "stromalens"
    command = [str(script), "wsi", "embed", str(manifest),
               "--out", str(out), "--weights", "random", "--executor", "local", *args]  # fmt: skip
    done = subprocess.run(command, capture_output=True, encoding="utf-8", env=os.environ,
                          timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr


def test_a_study_adopts_the_stores_of_a_standalone_wsi_embed(cohort, tmp_path):
    standalone = tmp_path / "my_features"
    _wsi_embed(cohort, standalone)
    theirs = _mtimes(standalone, "*.h5")
    study = tmp_path / "study"
    result = _run(cohort, study, "wsi", wsi={**_wsi(cohort), "features": str(standalone)})
    assert result.ran == ["wsi"]
    summary = _summary(study, "wsi")
    n = _n_slides(cohort)
    assert summary["slides"] == {"skipped": n} and len(summary["adopted"]) == n  # none embedded
    ours = sorted((study / "features").rglob("*.h5"))
    assert len(ours) == n and all(p.is_symlink() for p in ours)
    assert _mtimes(standalone, "*.h5") == theirs  # the user's files untouched


def test_a_standalone_store_made_with_other_settings_is_not_adopted(cohort, tmp_path):
    standalone = tmp_path / "my_features"
    _wsi_embed(cohort, standalone, "--min-tissue", "0.3")  # same folder name, other QC
    theirs = _mtimes(standalone, "*.h5")
    study = tmp_path / "study"
    _run(cohort, study, "wsi", wsi={**_wsi(cohort), "features": str(standalone)})
    summary = _summary(study, "wsi")
    assert summary["slides"] == {"done": _n_slides(cohort)} and summary["adopted"] == []
    assert not any(p.is_symlink() for p in (study / "features").rglob("*.h5"))
    assert _mtimes(standalone, "*.h5") == theirs


def _wsi(manifest: Path) -> dict:
    return tiny_study(manifest)["wsi"]


# ------------------------------------------------------------------ adopting standalone outputs
def _standalone_targets(cohort: Path, out: Path, **settings) -> None:
    from stromalens.config import TargetsConfig
    from stromalens.targets.run import run_targets

    block = tiny_study(cohort)["targets"]
    run_targets(cohort, cohort.parent / "rnaseq" / "tpm.tsv", TargetsConfig(**block, **settings),
                out)  # fmt: skip


def test_a_study_adopts_a_standalone_targets_folder_with_its_inputs_and_settings(cohort, tmp_path):
    standalone = tmp_path / "my_targets"
    _standalone_targets(cohort, standalone)
    theirs = _mtimes(standalone, "*")
    study = tmp_path / "study"
    block = {**tiny_study(cohort)["targets"], "adopt": str(standalone)}
    _run(cohort, study, "targets", targets=block)
    assert _summary(study, "targets")["adopted"] == str(standalone)
    pd.testing.assert_frame_equal(
        pd.read_parquet(study / "targets" / "targets.parquet"),
        pd.read_parquet(standalone / "targets.parquet"),
    )
    assert _mtimes(standalone, "*") == theirs  # copied from, never written to


def test_a_targets_folder_made_with_other_settings_is_computed_again(cohort, tmp_path):
    standalone = tmp_path / "my_targets"
    _standalone_targets(cohort, standalone, lr_method="product")
    study = tmp_path / "study"
    block = {**tiny_study(cohort)["targets"], "adopt": str(standalone)}
    _run(cohort, study, "targets", targets=block)
    assert "adopted" not in _summary(study, "targets")
    ours = pd.read_parquet(study / "targets" / "targets.parquet")
    assert not ours["lr"].equals(pd.read_parquet(standalone / "targets.parquet")["lr"])


def test_a_study_adopts_matching_standalone_radiomics_records(cohort, tmp_path):
    from stromalens.radiology.runner import run_radiomics
    from stromalens.radiology.settings import RadiomicsConfig

    from .conftest import TINY_RADIOMICS

    standalone = tmp_path / "my_radiomics"
    run_radiomics(cohort, standalone, RadiomicsConfig.model_validate(TINY_RADIOMICS), workers=1)
    theirs = _mtimes(standalone / "patients", "*.json")
    study = tmp_path / "study"
    block = {"settings": TINY_RADIOMICS, "workers": 1, "adopt": str(standalone)}
    _run(cohort, study, "radiomics", radiomics=block)
    summary = _summary(study, "radiomics")
    assert summary["adopted"] and summary["patients_resumed"] == len(summary["adopted"])
    assert summary["patients_resumed"] == summary["patients_ok"]  # nothing recomputed
    assert _mtimes(standalone / "patients", "*.json") == theirs
    # other settings: every record is recomputed, the link replaced, the user's file kept
    other = {**TINY_RADIOMICS, "stability": {**TINY_RADIOMICS["stability"], "perturbations": 3}}
    _run(cohort, tmp_path / "study2", "radiomics",
         radiomics={**block, "settings": other})  # fmt: skip
    assert _summary(tmp_path / "study2", "radiomics")["adopted"] == []
    assert not any(p.is_symlink() for p in (tmp_path / "study2" / "radiomics").rglob("*.json"))
    assert _mtimes(standalone / "patients", "*.json") == theirs
