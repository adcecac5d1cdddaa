"""The study file is checked when it is loaded: ``training.settings`` and ``training.grid`` are
typed by :class:`~stromalens.training.TrainSettings`, and relative paths are the file's."""

from __future__ import annotations

import pickle
import subprocess
import sys

import pytest
import yaml

from stromalens.config import ConfigError, StudyConfig, load_config
from stromalens.training import TrainSettings


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
