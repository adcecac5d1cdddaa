"""The runner's contract on a toy graph: skip when done with the same digest, rerun only what
depends on a change, resume an interrupted stage without emptying its folder."""

from __future__ import annotations

import json

import pytest

from stromalens.config import StudyConfig
from stromalens.study import Stage, read_manifest, run_study


def _config(**training) -> StudyConfig:
    return StudyConfig.model_validate(
        {
            "cohort": {"manifest": "cohort.csv"},
            "training": {"targets": "t.parquet", **training},
            "wsi": {"tile_px": 224},
        }
    )


def _graph(calls: list, fail_in: str | None = None) -> list[Stage]:
    """a (reads wsi) → b (reads training.folds) → c (reads nothing of its own)."""

    def make(name):
        def run(config, study):
            calls.append(name)
            folder = study / name
            folder.mkdir(exist_ok=True)
            (folder / "partial").write_text("started")
            if name == fail_in:
                raise KeyboardInterrupt("killed")
            (folder / "out.txt").write_text(name)
            return {"skipped": [{"item": "P1", "reason": f"{name}: no data"}]}

        return run

    settings = {
        "a": lambda c: {"wsi": c.wsi.model_dump(mode="json")},
        "b": lambda c: {"folds": c.training.folds},
        "c": lambda c: {},
    }
    after = {"a": (), "b": ("a",), "c": ("b",)}
    return [
        Stage(
            name,
            make(name),
            settings=settings[name],
            inputs=lambda c: [],
            outputs=lambda c, n=name: [f"{n}/out.txt"],
            clean=lambda c, n=name: [n],
            after=after[name],
        )
        for name in "abc"
    ]


def test_a_second_run_skips_every_finished_stage(tmp_path):
    calls: list = []
    first = run_study(_config(), tmp_path, stages=_graph(calls))
    assert first.ran == ["a", "b", "c"] and calls == ["a", "b", "c"]
    before = read_manifest(tmp_path)
    second = run_study(_config(), tmp_path, stages=_graph(calls))
    assert second.skipped == ["a", "b", "c"] and calls == ["a", "b", "c"]
    after = read_manifest(tmp_path)
    for name in "abc":
        assert after["stages"][name] == before["stages"][name]  # digests, time stamps
    assert after["stages"]["a"]["summary"]["skipped"] == [{"item": "P1", "reason": "a: no data"}]


def test_changing_one_setting_reruns_that_stage_and_downstream_only(tmp_path):
    calls: list = []
    run_study(_config(folds=5), tmp_path, stages=_graph(calls))
    calls.clear()
    result = run_study(_config(folds=3), tmp_path, stages=_graph(calls))
    assert result.skipped == ["a"] and calls == ["b", "c"]


def test_a_missing_output_reruns_the_stage(tmp_path):
    calls: list = []
    run_study(_config(), tmp_path, stages=_graph(calls))
    (tmp_path / "b" / "out.txt").unlink()
    calls.clear()
    run_study(_config(), tmp_path, stages=_graph(calls))
    assert calls == ["b"]  # c's upstream digest is unchanged: b's settings and inputs are


def test_an_interrupted_stage_resumes_with_its_partial_work(tmp_path):
    calls: list = []
    with pytest.raises(KeyboardInterrupt):
        run_study(_config(), tmp_path, stages=_graph(calls, fail_in="b"))
    manifest = read_manifest(tmp_path)
    assert manifest["stages"]["a"]["status"] == "done"
    assert manifest["stages"]["b"]["status"] == "interrupted"
    assert "c" not in manifest["stages"]
    (tmp_path / "b" / "keep").write_text("per-item work of the interrupted run")
    calls.clear()
    result = run_study(_config(), tmp_path, stages=_graph(calls))
    assert calls == ["b", "c"] and result.skipped == ["a"]
    assert (tmp_path / "b" / "keep").exists()  # same digest: the folder was not emptied
    assert read_manifest(tmp_path)["stages"]["b"]["resumed"] is True


def test_new_settings_start_the_stage_from_an_empty_folder(tmp_path):
    calls: list = []
    run_study(_config(folds=5), tmp_path, stages=_graph(calls))
    (tmp_path / "b" / "stale").write_text("made with folds=5")
    run_study(_config(folds=3), tmp_path, stages=_graph(calls))
    assert not (tmp_path / "b" / "stale").exists()


def test_the_manifest_is_valid_json_with_one_record_per_stage(tmp_path):
    run_study(_config(), tmp_path, stages=_graph([]))
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    record = manifest["stages"]["b"]
    assert {"digest", "settings_digest", "inputs_digest", "upstream", "seconds", "status"} <= set(
        record
    )
    assert record["upstream"] == {"a": manifest["stages"]["a"]["digest"]}
    assert not list(tmp_path.glob(".manifest.json.*"))  # written atomically, no leftovers


def test_only_runs_the_named_stages_once_their_upstream_is_done(tmp_path):
    calls: list = []
    run_study(_config(), tmp_path, stages=_graph(calls), only=["a"])
    assert calls == ["a"]
    run_study(_config(), tmp_path, stages=_graph(calls), only=["b"])
    assert calls == ["a", "b"]
    with pytest.raises(ValueError, match="'b' is not done"):
        run_study(_config(folds=2), tmp_path, stages=_graph(calls), only=["c"])


def test_a_users_folder_where_a_stage_writes_is_never_deleted(tmp_path):
    """--out may be an existing folder: what a stage would clean but no earlier run of it
    wrote is the user's; the run stops, naming it, and deletes nothing."""
    notes = tmp_path / "b" / "my_notes.txt"
    notes.parent.mkdir()
    notes.write_text("mine")
    calls: list = []
    with pytest.raises(FileExistsError, match="no earlier `stromalens run`"):
        run_study(_config(), tmp_path, stages=_graph(calls))
    assert notes.read_text() == "mine" and calls == ["a"]
    # once the stage's folder is the program's (recorded), new settings clean it as before
    notes.unlink()
    notes.parent.rmdir()
    run_study(_config(), tmp_path, stages=_graph(calls))
    (tmp_path / "b" / "extra.txt").write_text("x")
    run_study(_config(folds=3), tmp_path, stages=_graph(calls))
    assert not (tmp_path / "b" / "extra.txt").exists()
