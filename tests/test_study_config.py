"""The study file is checked when it is loaded: ``training.settings`` and ``training.grid`` are
typed by :class:`~stromalens.training.TrainSettings`, and relative paths are the file's."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from stromalens.config import ConfigError, StudyConfig, load_config, validate_settings
from stromalens.training import TrainSettings

ROOT = Path(__file__).resolve().parents[1]


def _study(path, data: dict):
    path.write_text(yaml.safe_dump({"cohort": {"manifest": "c.csv"}, **data}), encoding="utf-8")
    return path


def _load_error(tmp_path, data: dict) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(_study(tmp_path / "study.yaml", data), StudyConfig)
    return str(info.value)


# ---------------------------------------------------------------------------- training.settings
def test_a_typo_in_the_training_settings_fails_at_load_naming_the_key(tmp_path):
    message = _load_error(tmp_path, {"training": {"settings": {"epochs_stage22": 3}}})
    assert "training.settings.epochs_stage22" in message


def test_a_bad_training_setting_value_fails_at_load(tmp_path):
    message = _load_error(tmp_path, {"training": {"settings": {"modality_dropout": 1.5}}})
    assert "training.settings.modality_dropout" in message
    message = _load_error(tmp_path, {"training": {"settings": {"rad_reduction": "ica"}}})
    assert "training.settings.rad_reduction" in message


def test_the_training_settings_load_as_train_settings(tmp_path):
    config = load_config(
        _study(tmp_path / "study.yaml", {"training": {"settings": {"epochs_stage2": 3}}})
    )
    settings = config.training.settings
    assert isinstance(settings, TrainSettings)
    assert settings == TrainSettings(epochs_stage2=3)
    assert load_config(_study(tmp_path / "s.yaml", {"training": {}})).training.settings == (
        TrainSettings()
    )


def test_a_grid_key_that_is_not_a_setting_fails_at_load(tmp_path):
    message = _load_error(tmp_path, {"training": {"grid": {"tua": [0.5, 1.0]}}})
    assert "training.grid" in message and "'tua'" in message
    message = _load_error(tmp_path, {"training": {"grid": {"modality_dropout": [0.5, 1.5]}}})
    assert "training.grid" in message and "modality_dropout=1.5" in message


def test_train_settings_validate_copy_and_pickle():
    settings = TrainSettings()
    with pytest.raises(ValueError, match="modality_dropout"):
        TrainSettings(modality_dropout=1.0)
    with pytest.raises(ValueError, match="epochs_stage1"):
        settings.with_(epochs_stage1=-1)  # with_ validates the copy
    with pytest.raises(ValueError, match=r"unknown training setting\(s\): \['nope'\]"):
        settings.with_(nope=1)
    with pytest.raises(ValueError, match="frozen"):
        settings.tau = 2.0
    assert settings.with_(tau=1.0).tau == 1.0 and settings.tau == 0.5
    assert pickle.loads(pickle.dumps(settings.with_(seed=3))) == settings.with_(seed=3)
    assert list(settings.to_dict()) == list(TrainSettings.model_fields)
    assert TrainSettings.model_validate(settings.to_dict()) == settings


def test_importing_the_configuration_does_not_import_torch():
    code = "import sys, stromalens.config, stromalens.training; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, encoding="utf-8")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


# ---------------------------------------------------------------------------- paths
def test_relative_paths_are_the_study_files_not_the_working_directorys(tmp_path, monkeypatch):
    tmp_path = tmp_path.resolve()  # the folder's real path is what load_config gives
    folder = tmp_path / "studies"
    folder.mkdir()
    (folder / "w.pt").write_bytes(b"")
    _study(
        folder / "study.yaml",
        {
            "cohort": {"manifest": "data/cohort.csv", "expression": "../rna/tpm.tsv"},
            "targets": {"signature": "sig.tsv"},
            "wsi": {"weights": "w.pt"},
            "radiomics": {"config": "radiomics.yaml"},
            "training": {"prompts": "prompts", "prompt_cache": "cache"},
            "external": [
                {"name": "ext", "manifest": "ext/cohort.csv", "targets": {"gene_sets": "g.gmt"}}
            ],
        },
    )
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # another working directory; the file named relative to it
    config = load_config(Path("..") / "studies" / "study.yaml", StudyConfig)
    assert config.cohort.manifest == folder / "data" / "cohort.csv"
    assert config.cohort.expression == tmp_path / "rna" / "tpm.tsv"  # '..' collapsed
    assert config.targets.signature == folder / "sig.tsv"
    assert config.wsi.weights == str(folder / "w.pt")
    assert config.radiomics.config == folder / "radiomics.yaml"
    assert config.training.prompts == folder / "prompts"
    assert config.training.prompt_cache == folder / "cache"
    assert config.external[0].manifest == folder / "ext" / "cohort.csv"
    assert config.external[0].targets.gene_sets == folder / "g.gmt"


def test_absolute_paths_keywords_and_defaults_stay_as_they_are(tmp_path):
    manifest = tmp_path / "elsewhere" / "cohort.csv"
    path = _study(
        tmp_path / "study.yaml",
        {
            "cohort": {"manifest": str(manifest)},
            "wsi": {"weights": "random"},
            "training": {"encoder_weights": "missing.pt", "folds": 3},
        },
    )
    config = load_config(path, StudyConfig)
    assert config.cohort.manifest == manifest and config.cohort.expression is None
    assert config.wsi.weights == "random"  # a keyword, not a file
    assert config.training.encoder_weights == "missing.pt"  # no such file beside the study
    assert config.training.prompts == Path("configs/prompts")  # the default, not set
    assert config.targets.signature is None and config.wsi.stain_reference is None


def test_the_shipped_study_points_at_the_checkout_from_any_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = load_config(ROOT / "configs" / "study.yaml", StudyConfig)
    assert config.cohort.manifest == ROOT / "runs" / "demo" / "cohort" / "cohort.csv"
    assert config.radiomics.config == ROOT / "configs" / "radiomics.yaml"
    assert config.radiomics.config.is_file()
    assert (config.training.prompts / "ers_caf.yaml").is_file()


def test_a_written_configuration_reads_back_the_same_from_another_folder(tmp_path, monkeypatch):
    from stromalens.config import absolute_paths

    tmp_path = tmp_path.resolve()
    monkeypatch.chdir(tmp_path)
    config = validate_settings(
        StudyConfig, {"cohort": {"manifest": "c.csv"}, "training": {"folds": 3}}
    )
    written = absolute_paths(config)
    assert written.cohort.manifest == tmp_path / "c.csv"
    assert written.training.prompts == tmp_path / "configs" / "prompts"  # defaults too
    copy = tmp_path / "study" / "study.yaml"
    copy.parent.mkdir()
    copy.write_text(yaml.safe_dump(json.loads(written.model_dump_json())), encoding="utf-8")
    assert load_config(copy, StudyConfig) == written
