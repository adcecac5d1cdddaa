"""The run-directory contract: paths and metric keys built and parsed in one place."""

from __future__ import annotations

from pathlib import Path

import pytest

from stromalens.rundir import (
    RunDirError,
    RunFiles,
    StudyLayout,
    TrainLayout,
    metric_key,
    metric_parts,
    open_run,
    parse_metric_key,
)


@pytest.mark.parametrize(
    "parts",
    [
        ("cv", "fusion", "r", "ers_caf"),
        ("external", "tcga.luad", "r", "lr"),
        ("lso", "St.Olav", "after"),
        ("external", "odd%2Ename", "c_index", "os", "clinical_ai"),
    ],
)
def test_a_metric_key_parses_back_into_its_parts(parts):
    key = metric_key(*parts)
    assert parse_metric_key(key) == parts
    assert key.count(".") == len(parts) - 1  # a dotted name stays one part


def test_plain_keys_are_the_documented_dotted_form():
    assert metric_key("cv", "fusion", "macro_r") == "cv.fusion.macro_r"
    assert (
        metric_key("survival", "os", "c_index", "clinical_ai") == "survival.os.c_index.clinical_ai"
    )
    with pytest.raises(ValueError, match="empty"):
        metric_key("cv", "", "r")


def test_metric_parts_selects_by_prefix_and_length():
    metrics = {
        metric_key("external", "tcga.luad", "r", "lr"): 0.4,
        metric_key("external", "tcga.luad", "fusion", "r", "lr"): 0.4,
        metric_key("cv", "fusion", "macro_r"): 0.5,
    }
    found = list(metric_parts(metrics, "external", length=4))
    assert found == [(("external", "tcga.luad", "r", "lr"), 0.4)]


def test_a_cohort_with_a_dot_in_its_name_reaches_the_report_headline(tmp_path):
    from stromalens.report.html import headline

    metrics = {metric_key("external", "tcga.luad", "r", t): 0.3 for t in ("ers_caf", "lr")}
    cards = headline(RunFiles(tmp_path, config={}, metrics=metrics))
    assert any("tcga.luad" in card.title for card in cards)


def test_layouts_name_every_file_under_their_root(tmp_path):
    study = StudyLayout(tmp_path)
    assert study.train.predictions == tmp_path / "train" / "predictions.parquet"
    assert study.features("development") == tmp_path / "features" / "development"
    assert study.train.bundle == tmp_path / "train" / "model"
    assert study.train.checkpoint_dir(2) == tmp_path / "train" / "checkpoints" / "fold2"
    assert TrainLayout(tmp_path).external("ext") == tmp_path / "external" / "ext"
    for bad in ("..", "a/b", ""):
        with pytest.raises(ValueError, match="folder name"):
            study.external(bad)


def test_a_run_without_its_files_is_refused_naming_them(tmp_path):
    with pytest.raises(RunDirError, match="config.yaml, folds.csv, predictions.parquet"):
        open_run(tmp_path)
    run = RunFiles.read(tmp_path)  # the report's view: lenient, missing files recorded
    assert run.predictions is None and "predictions.parquet" in run.missing
    assert run.manifest_path is None and run.config == {}


def test_relative_paths_in_a_runs_configuration_are_the_runs(tmp_path):
    run = RunFiles(tmp_path, config={"cohort": {"manifest": "../cohort/cohort.csv"}})
    assert run.manifest_path == tmp_path / "../cohort/cohort.csv"
    absolute = RunFiles(tmp_path, config={"cohort": {"manifest": "/data/cohort.csv"}})
    assert absolute.manifest_path == Path("/data/cohort.csv")
