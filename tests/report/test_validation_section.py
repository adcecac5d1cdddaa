"""The report's "method validation" section: the run's validation table, or the matrix of the
``validate-method`` folder the run is one half of, and the sentence of what was recovered."""

from __future__ import annotations

import shutil

import pandas as pd

from stromalens.evaluation.validation import COLUMNS, MECHANISMS, combine
from stromalens.report.html import render, section_validation
from stromalens.rundir import RunFiles, StudyLayout, ValidationLayout


def _table(null: bool) -> pd.DataFrame:
    """A validation.csv: on the planted cohort the first two rows recovered, the rest not."""
    rows = []
    for i, (name, claim) in enumerate(MECHANISMS):
        low = -0.05 if null or i > 1 else 0.04
        rows.append({"mechanism": name, "claim": claim, "planted": 0.0 if null else 0.5,
                     "effect": 0.1, "ci_low": low, "ci_high": 0.2, "detected": low > 0,
                     "n": 30})  # fmt: skip
    return pd.DataFrame(rows, columns=list(COLUMNS))


def _half(train_dir, folder, null: bool):
    """A copy of the complete run as ``folder/train``, with its validation table."""
    train = StudyLayout(folder).train.root
    shutil.copytree(train_dir, train)
    _table(null).to_csv(train / "evaluation" / "validation.csv", index=False)
    return train


def test_a_run_without_planted_mechanisms_has_no_such_section(train_dir):
    run = RunFiles.read(train_dir)
    assert section_validation(run) is None
    assert "evaluation/validation.csv" not in run.missing
    assert "Method validation" not in render(run)


def test_the_table_and_the_sentence_of_one_run(train_dir, tmp_path):
    run = RunFiles.read(_half(train_dir, tmp_path / "study", null=False))
    table, note = section_validation(run).blocks[-2:]
    assert table.columns[-1] == "detected" and len(table.rows) == len(MECHANISMS)
    first = dict(zip(table.columns, table.rows[0], strict=True))
    assert first["recovered effect [95% CI]"] == "0.100 [0.040, 0.200]"
    assert first["detected"] == "yes" and table.rows[2][-1] == "no"
    assert note.text.startswith("Recovered (95% CI excluding the null): sparse_evidence, ")
    assert "Not recovered: reliability, site, annotation" in note.text and "not tuned" in note.text


def test_a_half_of_a_validate_method_folder_shows_the_matrix(train_dir, tmp_path):
    layout = ValidationLayout(tmp_path / "vm")
    train = _half(train_dir, layout.half(False), null=False)
    combine(_table(False), _table(True)).to_csv(layout.matrix_csv, index=False)
    section = section_validation(RunFiles.read(train))
    table, note = section.blocks[-2:]
    assert table.title.startswith("Validation matrix")
    assert table.columns[-4:-1] == ["null planted", "null effect [95% CI]", "null detected"]
    assert table.rows[0][-4:-1] == ["0.00", "0.100 [-0.050, 0.200]", "no"]
    assert table.columns[-1] == "planted − null [95% CI]"  # validation.combine's difference
    assert "false positives): none." in note.text
    html = render(RunFiles.read(train))
    assert "Method validation" in html and "Validation matrix (planted and null cohorts)" in html
