"""RunFiles.prompt_sets reads the retrained prompt sets of the run it belongs to only."""

from __future__ import annotations

import pandas as pd
import yaml

from stromalens.rundir import RunFiles, TrainLayout


def _write_run(root, option: bool, set_folds: list[int]) -> None:
    layout = TrainLayout(root)
    root.mkdir(parents=True)
    layout.config.write_text(
        yaml.safe_dump({"training": {"prompt_perturbation": option}}), encoding="utf-8"
    )
    ids = ["P1", "P2", "P3", "P4"]
    pd.DataFrame({"patient_id": ids, "site": "A", "fold": [0, 0, 1, 1]}).to_csv(
        layout.folds, index=False
    )
    run = layout.prompt_set("SYN")
    run.root.mkdir(parents=True)
    pd.DataFrame({"patient_id": ids, "site": "A", "fold": set_folds}).to_csv(run.folds, index=False)
    pd.DataFrame(
        {
            "patient_id": ids,
            "fold": set_folds,
            "model": "wsi_clip",
            "target": "lr",
            "y_true": [0.1, 0.2, 0.3, 0.4],
            "y_pred": [0.2, 0.1, 0.4, 0.3],
            "repeat": 0,
        }
    ).to_parquet(run.predictions)


def test_a_set_on_the_runs_folds_is_read_with_its_label(tmp_path):
    _write_run(tmp_path / "t", True, [0, 0, 1, 1])
    frame = RunFiles.read(tmp_path / "t").prompt_sets
    assert set(frame["prompt_set"]) == {"SYN"} and len(frame) == 4


def test_a_stale_set_is_left_out_with_a_note(tmp_path):
    _write_run(tmp_path / "folds", True, [1, 1, 0, 0])  # trained on other folds
    run = RunFiles.read(tmp_path / "folds")
    assert run.prompt_sets is None and any("other folds" in n for n in run.notes)
    _write_run(tmp_path / "off", False, [0, 0, 1, 1])  # the option was turned off since
    run = RunFiles.read(tmp_path / "off")
    assert run.prompt_sets is None and any("prompt_perturbation off" in n for n in run.notes)
