"""The study configuration: validated on load, every error names its key."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from stromalens.config import ConfigError, StudyConfig, load_config, validate_settings
from stromalens.study.stages import validate_study

from .conftest import ROOT, tiny_study, write_study


def _errors(data: dict) -> str:
    with pytest.raises(ConfigError) as info:
        validate_settings(StudyConfig, data)
    return str(info.value)


def test_unknown_and_invalid_keys_are_named():
    message = _errors(
        {
            "cohort": {"manifest": "c.csv"},
            "wsi": {"tile_pz": 224, "stain": "reinhard"},
            "evaluation": {"n_boot": 5},
            "training": {"folds": 1},
        }
    )
    for key in ("wsi.tile_pz", "wsi.stain", "evaluation.n_boot", "training.folds"):
        assert key in message


def test_inline_radiomics_settings_are_validated_with_their_key():
    message = _errors(
        {
            "cohort": {"manifest": "c.csv"},
            "radiomics": {"settings": {"extraction": {"imageType": {"Fourier": {}}}}},
        }
    )
    assert "radiomics" in message and "settings.extraction.imageType" in message
    assert "Fourier" in message


def test_external_cohorts_need_unique_names():
    message = _errors(
        {
            "cohort": {"manifest": "c.csv"},
            "external": [{"name": "x", "manifest": "a.csv"}, {"name": "x", "manifest": "b.csv"}],
        }
    )
    assert "external" in message and "unique" in message


def test_the_study_checks_name_the_key(small_cohort, tmp_path):
    data = tiny_study(small_cohort)
    data["cohort"].pop("expression")
    data["targets"]["signature"] = str(tmp_path / "missing.tsv")
    data["training"] = dict(data["training"], encoder="plip", targets="t.parquet")
    with pytest.raises(ConfigError) as info:
        validate_study(load_config(write_study(tmp_path / "s.yaml", data)))
    message = str(info.value)
    for key in ("cohort.expression", "targets.signature", "training.encoder", "training.targets"):
        assert key in message


@pytest.mark.parametrize("name", ["study.yaml", "demo.yaml"])
def test_the_shipped_configurations_validate(name):
    config = load_config(ROOT / "configs" / name, StudyConfig)
    assert config.training is not None and config.training.models is None  # every model


def test_the_demo_configuration_points_at_the_generated_cohorts(tmp_path):
    from stromalens.cli.demo import demo_config

    config = demo_config(tmp_path / "cohort", tmp_path / "ext", quick=True)
    assert config.cohort.manifest == tmp_path / "cohort" / "cohort.csv"
    # the shipped resources (TIL10, curated set), never the generator's profiles (issue 17)
    assert config.targets.signature is None and config.external[0].targets.signature is None
    assert config.targets.gene_sets is None
    assert config.training.folds == 3 and config.training.models is None
    assert config.training.repeats == 1  # the quick demo's; the demo's own is 2
    assert demo_config(tmp_path / "cohort", tmp_path / "ext").training.repeats == 2
    again = demo_config(tmp_path / "cohort", tmp_path / "ext", quick=True, repeats=4)
    assert again.training.repeats == 4


def test_stromalens_run_reports_a_bad_key_in_one_message_and_exits_1(tmp_path):
    config = tmp_path / "study.yaml"
    config.write_text("cohort:\n  manifest: c.csv\nwsi:\n  tile_pz: 224\n", encoding="utf-8")
    script = Path(sys.executable).parent / "stromalens"
    run = subprocess.run(
        [str(script), "run", str(config), "--out", str(tmp_path / "study")],
        capture_output=True,
        encoding="utf-8",
    )
    assert run.returncode == 1
    assert "wsi.tile_pz" in run.stderr and "Traceback" not in run.stderr
    assert not (tmp_path / "study").exists()  # nothing written for an invalid study


def test_a_typo_in_the_training_settings_stops_stromalens_run_before_any_stage(tmp_path):
    config = tmp_path / "study.yaml"
    config.write_text(
        "cohort:\n  manifest: c.csv\ntraining:\n  settings:\n    epochs_stage22: 3\n",
        encoding="utf-8",
    )
    script = Path(sys.executable).parent / "stromalens"
    run = subprocess.run(
        [str(script), "run", str(config), "--out", str(tmp_path / "study")],
        capture_output=True,
        encoding="utf-8",
    )
    assert run.returncode == 1 and "Traceback" not in run.stderr
    assert "training.settings.epochs_stage22" in " ".join(run.stderr.split())
    assert not (tmp_path / "study").exists()


def test_the_cohort_sites_and_file_checks_are_applied_before_any_stage(small_cohort, tmp_path):
    """``cohort.sites`` restricts the site labels and ``check_files`` checks every file the
    manifest names; both are read when the study is validated, before a stage runs."""
    import pandas as pd

    data = tiny_study(small_cohort)
    data["cohort"]["sites"] = ["nowhere"]
    with pytest.raises(ConfigError, match="(?s)cohort.manifest:.*nowhere"):
        validate_study(load_config(write_study(tmp_path / "s.yaml", data)))
    frame = pd.read_csv(small_cohort)
    frame.loc[0, "wsi"] = "slides/absent.tiff"
    broken = small_cohort.parent / "broken.csv"
    frame.to_csv(broken, index=False)
    try:
        data = tiny_study(broken)
        with pytest.raises(ConfigError, match="(?s)cohort.manifest:.*absent.tiff"):
            validate_study(load_config(write_study(tmp_path / "t.yaml", data)))
        data["cohort"]["check_files"] = False
        validate_study(load_config(write_study(tmp_path / "u.yaml", data)))
    finally:
        broken.unlink()
