"""End to end (slow): train a tiny real study, evaluate it with
``stromalens.evaluation.evaluate_run``, then write and check the report."""

from __future__ import annotations

import json

import pytest

from .test_report import SECTIONS, parse


@pytest.mark.slow
def test_the_report_of_a_real_evaluated_run(tmp_path):
    evaluation = pytest.importorskip("stromalens.evaluation")
    if not hasattr(evaluation, "evaluate_run"):
        pytest.skip("stromalens.evaluation.evaluate_run is not there yet")
    try:
        from tests.evaluation.conftest import build_tiny_study
    except ImportError:
        pytest.skip("tests/evaluation/conftest.py has no build_tiny_study")
    from stromalens.config import StudyConfig, load_config
    from stromalens.report import write_report
    from stromalens.training.run import train_study

    config = build_tiny_study(tmp_path / "study")
    train = tmp_path / "study" / "train"
    train_study(load_config(config, StudyConfig), train)
    evaluation.evaluate_run(train)
    out = write_report(train)

    page = parse(out)
    assert list(page.sections) == list(SECTIONS)
    metrics = json.loads((train / "evaluation" / "metrics.json").read_text(encoding="utf-8"))
    assert page.metrics, "no headline numbers"
    for m in page.metrics:
        assert float(m["value"]) == pytest.approx(metrics[m["key"]], abs=1e-12), m["key"]
    for name, section in page.sections.items():
        assert "figure failed" not in section["text"], (name, section["text"])
        # a section either shows its figure/table or says which input file is missing
        if name not in {"headline", "configuration"}:
            assert section["img"] + section["table"] > 0 or "not run:" in section["text"], name
    assert page.sections["tables12"]["table"] >= 2
