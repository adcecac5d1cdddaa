"""``stromalens run`` checks every name of the study file before the first stage: models,
encoders, prompt banks (registries), training settings and grid keys and values (schema), and
reports them all in one error with the valid choices."""

from __future__ import annotations

import shutil
import sys

import pytest

from stromalens.cli import main
from stromalens.config import ConfigError, StudyConfig, validate_settings
from stromalens.study import run_study
from stromalens.study.checks import name_problems

from .conftest import ROOT, tiny_study, write_study


def _config(data) -> StudyConfig:
    return validate_settings(StudyConfig, data)


def test_a_valid_study_has_no_name_problems(tiny):
    assert name_problems(_config(tiny)) == []


def test_every_bad_name_in_one_error_before_any_stage(small_cohort, tmp_path):
    banks = tmp_path / "prompts"
    banks.mkdir()
    shutil.copy(ROOT / "configs" / "prompts" / "ers_caf.yaml", banks)  # lr, heterogeneity missing
    data = tiny_study(small_cohort)
    data["wsi"] = {**data["wsi"], "encoder": "synthclpi"}
    data["training"] = {
        **data["training"],
        "models": ["abmil", "gated_fusoin", "student"],
        "prompts": str(banks),
    }
    study = tmp_path / "study"
    with pytest.raises(ConfigError) as raised:
        run_study(_config(data), study)
    message = str(raised.value)
    assert "wsi.encoder: unknown encoder 'synthclpi'; registered: " in message
    assert "synthclip" in message.split("wsi.encoder")[1].splitlines()[0]
    assert "training.models: unknown model 'gated_fusoin'; registered: " in message
    assert "'student' needs 'gated_fusion'" in message
    assert "no prompt bank for target(s) lr, heterogeneity" in message
    assert not study.exists() or not any(study.iterdir())  # no stage ran, no lock taken


def test_names_and_file_problems_are_listed_together(small_cohort, tmp_path):
    data = tiny_study(small_cohort)
    data["wsi"] = {**data["wsi"], "encoder": "nope"}
    data["cohort"] = {**data["cohort"], "expression": str(tmp_path / "missing.tsv")}
    with pytest.raises(ConfigError) as raised:
        run_study(_config(data), tmp_path / "study")
    lines = str(raised.value).splitlines()
    assert lines[0] == "invalid study configuration"
    assert any(line.startswith("  wsi.encoder: unknown encoder 'nope'") for line in lines)
    assert any(line.startswith("  cohort.expression: not found") for line in lines)


def test_a_bank_that_does_not_validate_is_named(small_cohort, tmp_path):
    banks = tmp_path / "prompts"
    shutil.copytree(ROOT / "configs" / "prompts", banks)
    (banks / "lr.yaml").write_text("target: lr\ncurated: []\n")
    data = tiny_study(small_cohort)
    data["training"] = {**data["training"], "prompts": str(banks)}
    (problem,) = name_problems(_config(data))
    assert problem.startswith("training.prompts: ") and "lr.yaml" in problem


@pytest.mark.parametrize(
    "training, shown",
    [
        ({"settings": {"hiden": 16}}, "training.settings.hiden: Extra inputs are not permitted"),
        ({"grid": {"tua": [0.5]}}, "grid key 'tua' is not a training setting"),
        ({"grid": {"tau": ["high"]}}, "grid value tau='high'"),
    ],
)
def test_settings_and_grid_names_fail_when_the_file_is_read(
    small_cohort, tmp_path, training, shown, monkeypatch, capsys
):
    """Through the CLI: one message, exit 1, nothing written."""
    data = tiny_study(small_cohort)
    data["training"] = {**data["training"], **training}
    path = write_study(tmp_path / "study.yaml", data)
    monkeypatch.setattr(sys, "argv", ["stromalens", "run", str(path), "--out", str(tmp_path / "s")])
    with pytest.raises(SystemExit) as done:
        main()
    assert done.value.code == 1
    assert shown in capsys.readouterr().err
    assert not (tmp_path / "s").exists()


def test_an_image_only_encoder_is_refused_for_text_guided_models_only(tmp_path):
    """UNI (no text tower) serves the models that need no prompts; a text-guided one is named."""
    from stromalens.config import StudyConfig
    from stromalens.models import text_guided
    from stromalens.study.checks import name_problems

    guided = text_guided(None)
    assert "clip_mil" in guided and "abmil" not in guided
    base = {"cohort": {"manifest": str(tmp_path / "m.csv")}, "wsi": {"encoder": "uni"}}
    ok = StudyConfig.model_validate({**base, "training": {"encoder": "uni", "models": ["abmil"]}})
    assert name_problems(ok) == []
    bad = StudyConfig.model_validate(
        {**base, "training": {"encoder": "uni", "models": ["abmil", "clip_mil"]}}
    )
    (problem,) = name_problems(bad)
    assert "'uni' has no text encoder" in problem and "clip_mil" in problem
    assert "synthclip" in problem  # the encoders that would do


def test_a_study_file_spelling_out_null_encoder_weights_is_valid(tiny):
    """The study.yaml a run writes lists every key, ``training.encoder_weights: null`` among
    them: null means "use wsi.weights", not a second, different value."""
    from stromalens.study.stages import validate_study

    data = {**tiny, "training": {**tiny["training"], "encoder_weights": None}}
    try:
        validate_study(StudyConfig.model_validate(data))
    except ConfigError as exc:
        assert "encoder_weights" not in str(exc), exc
    data["training"]["encoder_weights"] = "other.safetensors"
    with pytest.raises(ConfigError, match="training.encoder_weights: must match wsi.weights"):
        validate_study(StudyConfig.model_validate(data))
