"""``stromalens init``: the study file it writes for a manifest loads, names the cohort's sites
and the models its modalities allow, and passes every check ``stromalens run`` makes before its
first stage (names and files: :func:`~stromalens.study.runner.check_study`)."""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from stromalens.cli import main
from stromalens.config import ConfigError, StudyConfig, load_config, resources_root
from stromalens.study.init import write_study_file
from stromalens.study.runner import check_study
from stromalens.study.stages import validate_study

PATH_COLUMNS = ("mri_t1", "mri_t2", "mri_ce", "mri_mask", "wsi", "annotations")


def _variant(manifest: Path, out: Path, **blank) -> Path:
    """A copy of ``manifest`` at ``out`` with absolute paths (so it may live elsewhere) and the
    columns named in ``blank`` emptied (``site="A"`` sets every site to A instead)."""
    frame = pd.read_csv(manifest, dtype=str, keep_default_na=False)
    for col in PATH_COLUMNS:
        frame[col] = [str(manifest.parent / v) if v else "" for v in frame[col]]
    for col, value in blank.items():
        frame[col] = value
    frame.to_csv(out, index=False)
    return out


def _expression(manifest: Path) -> Path:
    return manifest.parent / "rnaseq" / "tpm.tsv"


def test_the_written_study_passes_the_checks_of_run(small_cohort, tmp_path, monkeypatch, capsys):
    study = tmp_path / "studies" / "first.yaml"
    args = ["init", "--manifest", str(small_cohort), "--out", str(study),
            "--expression", str(_expression(small_cohort))]  # fmt: skip
    monkeypatch.setattr(sys, "argv", ["stromalens", *args])
    main()  # the CLI as a user calls it; raises SystemExit on any error
    assert f"wrote {study}" in capsys.readouterr().out

    raw = yaml.safe_load(study.read_text())
    assert not Path(raw["cohort"]["manifest"]).is_absolute()  # relative to the study file
    config = load_config(study, StudyConfig)
    assert config.cohort.manifest == small_cohort.resolve()
    assert config.cohort.sites == ("A", "B", "C", "D", "E")  # the synthetic cohort's sites
    assert config.training.prompts == resources_root() / "prompts"
    assert config.training.models is None  # slides and MRI: every model
    check_study(config, validate_study)  # raises a ConfigError listing every problem


@pytest.mark.parametrize(
    "blank, kind",
    [({"mri_t1": "", "mri_t2": "", "mri_ce": "", "mri_mask": ""}, "wsi"),
     ({"wsi": "", "wsi_mpp": "", "annotations": ""}, "mri")],
    ids=["slides only", "MRI only"],
)  # fmt: skip
def test_the_models_follow_the_modalities(blank, kind, small_cohort, tmp_path):
    from stromalens.models import list_models

    manifest = _variant(small_cohort, tmp_path / "cohort.csv", **blank)
    study = write_study_file(
        manifest, tmp_path / "study.yaml", expression=_expression(small_cohort)
    )
    config = load_config(study, StudyConfig)
    expected = [m for m in list_models(kind) if m != "student"]  # student: needs the fusion
    assert list(config.training.models) == expected
    check_study(config, validate_study)


def test_one_site_turns_off_what_needs_two(small_cohort, tmp_path):
    manifest = _variant(small_cohort, tmp_path / "cohort.csv", site="A")
    study = write_study_file(
        manifest, tmp_path / "study.yaml", expression=_expression(small_cohort)
    )
    config = load_config(study, StudyConfig)
    assert config.cohort.sites == ("A",)
    assert not config.training.harmonise and not config.training.leave_site_out
    assert (config.training.folds, config.training.inner_folds) == (2, 2)  # 10 patients


def test_without_expression_run_names_the_missing_key(small_cohort, tmp_path):
    study = write_study_file(small_cohort, tmp_path / "study.yaml")
    with pytest.raises(ConfigError, match="cohort.expression: required"):
        check_study(load_config(study, StudyConfig), validate_study)


def test_an_existing_file_is_kept_unless_forced(small_cohort, tmp_path):
    study = tmp_path / "study.yaml"
    study.write_text("mine")
    with pytest.raises(ValueError, match="already exists; choose another --out or give --force"):
        write_study_file(small_cohort, study)
    assert study.read_text() == "mine"
    write_study_file(small_cohort, study, force=True)
    assert load_config(study, StudyConfig).cohort.manifest == small_cohort.resolve()


def test_a_cohort_without_rna_is_refused(small_cohort, tmp_path):
    manifest = _variant(small_cohort, tmp_path / "cohort.csv", rna_sample="")
    with pytest.raises(ValueError, match="no patient has an rna_sample"):
        write_study_file(manifest, tmp_path / "study.yaml")
    assert not (tmp_path / "study.yaml").exists()
