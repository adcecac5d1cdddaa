"""The real stage graph's digests: a setting changes the digests of the stages that read it
and of the stages downstream of them, and no other."""

from __future__ import annotations

from pathlib import Path

from stromalens.config import StudyConfig, validate_settings
from stromalens.study import stage_digests
from stromalens.study.stages import default_stages

ALL = ["targets", "wsi", "radiomics", "train", "external", "evaluate", "report"]


def _digests(data: dict) -> dict[str, str]:
    config = validate_settings(StudyConfig, data)
    return {k: v["digest"] for k, v in stage_digests(config, default_stages(config)).items()}


def _changed(base: dict, edit) -> list[str]:
    before = _digests(base)
    data = {k: (dict(v) if isinstance(v, dict) else v) for k, v in base.items()}
    edit(data)
    after = _digests(data)
    return [name for name in ALL if before[name] != after[name]]


def test_the_graph_is_in_the_documented_order(tiny):
    assert list(_digests(tiny)) == ALL


def test_training_settings_rerun_training_and_what_reads_it(tiny):
    def edit(d):
        d["training"] = dict(d["training"], folds=3)

    assert _changed(tiny, edit) == ["train", "external", "evaluate", "report"]


def test_wsi_settings_do_not_touch_targets_or_radiomics(tiny):
    def edit(d):
        d["wsi"] = dict(d["wsi"], min_tissue=0.6)

    assert _changed(tiny, edit) == ["wsi", "train", "external", "evaluate", "report"]


def test_radiomics_settings(tiny):
    def edit(d):
        d["radiomics"] = dict(
            d["radiomics"], settings=dict(d["radiomics"]["settings"], stability={"patients": 5})
        )

    assert _changed(tiny, edit) == ["radiomics", "train", "external", "evaluate", "report"]


def test_evaluation_options_rerun_evaluation_and_report_only(tiny):
    def edit(d):
        d["evaluation"] = dict(d["evaluation"], n_boot=200)

    assert _changed(tiny, edit) == ["evaluate", "report"]


def test_the_study_notes_rerun_the_report_only(tiny):
    def edit(d):
        d["notes"] = "lighter settings"

    assert _changed(tiny, edit) == ["report"]


def test_the_expression_table_content_is_hashed(tiny, tmp_path):
    source = tiny["cohort"]["expression"]
    copy = tmp_path / "tpm.tsv"
    copy.write_bytes(Path(source).read_bytes())

    def same_content(d):
        d["cohort"] = dict(d["cohort"], expression=str(copy))

    assert _changed(tiny, same_content) == []  # the path moved, the content did not
    copy.write_bytes(Path(source).read_bytes() + b"\n")
    assert _changed(tiny, same_content)[0] == "targets"
