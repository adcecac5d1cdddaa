"""``stromalens train``: configuration errors are one clear line and exit 1."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from stromalens.config import StudyConfig, load_config

SCRIPT = Path(sys.executable).parent / "stromalens"


def test_train_without_a_training_block_exits_1(tmp_path):
    config = tmp_path / "study.yaml"
    config.write_text("cohort:\n  manifest: cohort.csv\n")
    run = subprocess.run(
        [str(SCRIPT), "train", "--config", str(config), "--out", str(tmp_path / "run")],
        capture_output=True,
        encoding="utf-8",
    )
    assert run.returncode == 1
    assert "no 'training' block" in run.stderr


def test_the_example_study_config_validates():
    root = Path(__file__).resolve().parents[2]
    study = load_config(root / "configs" / "study.yaml", StudyConfig)
    assert study.training.folds == 5 and study.training.grid["tau"] == [0.25, 0.5, 1.0]
    from stromalens.training import TrainSettings

    assert isinstance(study.training.settings, TrainSettings)  # validated on load
    assert study.training.settings.epochs_stage2 == 60


def test_train_on_the_example_config_asks_for_a_study_folder(tmp_path):
    """configs/study.yaml leaves the stage outputs to `stromalens run`; `train` says to give
    the study folder, and checks that the folder is one."""
    root = Path(__file__).resolve().parents[2]
    base = [str(SCRIPT), "train", "--config", str(root / "configs" / "study.yaml")]
    run = subprocess.run(
        [*base, "--out", str(tmp_path / "run")], capture_output=True, encoding="utf-8", cwd=root
    )
    assert run.returncode == 1 and "--study" in run.stderr
    run = subprocess.run(
        [*base, "--study", str(tmp_path), "--out", str(tmp_path / "run")],
        capture_output=True,
        encoding="utf-8",
        cwd=root,
    )
    assert run.returncode == 1 and "targets.parquet not found" in run.stderr
    assert "Traceback" not in run.stderr
