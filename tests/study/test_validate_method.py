"""``stromalens validate-method``: a planted and a null half combined into the matrix."""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from stromalens.evaluation.validation import COLUMNS, MECHANISMS
from stromalens.rundir import StudyLayout, ValidationLayout
from stromalens.study.validation import read_half, validate_method, write_matrix


def _table(planted: float, effect: float, low: float, high: float) -> pd.DataFrame:
    """A validation.csv as an evaluated half writes it, every mechanism at the same numbers."""
    rows = [
        {"mechanism": name, "claim": claim, "planted": planted, "effect": effect,
         "ci_low": low, "ci_high": high, "detected": bool(low > 0), "n": 12}
        for name, claim in MECHANISMS
    ]  # fmt: skip
    return pd.DataFrame(rows, columns=list(COLUMNS))


def _write_half(folder, table: pd.DataFrame) -> None:
    path = StudyLayout(folder).train.evaluation_file("validation.csv")
    path.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(path, index=False)


def test_the_matrix_pairs_each_mechanism_with_its_null(tmp_path):
    layout = ValidationLayout(tmp_path)
    planted = _table(0.5, 0.2, 0.1, 0.3)
    planted.loc[planted["mechanism"] == "site", ["effect", "ci_low", "ci_high"]] = np.nan
    planted.loc[planted["mechanism"] == "site", "detected"] = False
    _write_half(layout.half(False), planted)
    _write_half(layout.half(True), _table(0.0, 0.01, -0.1, 0.12))
    matrix = write_matrix(tmp_path)
    row = matrix.set_index("mechanism")
    assert row.loc["reliability", "effect"] == 0.2 and row.loc["reliability", "detected"]
    assert row.loc["reliability", "null_effect"] == 0.01
    assert not row.loc["reliability", "null_detected"]
    assert math.isnan(row.loc["site", "effect"]) and not row.loc["site", "detected"]
    # planted − null: 0.2 − 0.01, se from each 95% interval, (0.3 − 0.1)/3.919928 and
    # (0.12 + 0.1)/3.919928; 0.19 ± 1.959964·sqrt(se_p² + se_0²) = [0.04134, 0.33866] by hand
    assert row.loc["reliability", "planted_minus_null"] == pytest.approx(0.19)
    assert row.loc["reliability", "pmn_ci_low"] == pytest.approx(0.04134, abs=1e-5)
    assert row.loc["reliability", "pmn_ci_high"] == pytest.approx(0.33866, abs=1e-5)
    assert row.loc["reliability", "pmn_detected"]
    assert math.isnan(row.loc["site", "planted_minus_null"])
    # the files: the CSV reads back to the same matrix; the Markdown says what was recovered
    again = pd.read_csv(layout.matrix_csv)
    pd.testing.assert_frame_equal(again, matrix, check_dtype=False)
    text = layout.matrix_md.read_text(encoding="utf-8")
    row_md = "| reliability | 0.5 | 0.200 [0.100, 0.300] | yes | 0 | 0.010 [-0.100, 0.120] | no |"
    assert row_md in text
    assert "| site | 0.5 | — | no |" in text
    assert "Not recovered: site." in text and "false positives): none." in text
    assert "0.190 [0.041, 0.339] |" in text and "Planted above null" in text
    assert "not tuned" in text
    assert ValidationLayout.around(layout.half(True)) == layout
    assert ValidationLayout.around(tmp_path / "elsewhere") is None


def test_a_missing_table_or_a_planted_null_half_is_refused_naming_the_folder(tmp_path):
    layout = ValidationLayout(tmp_path)
    _write_half(layout.half(False), _table(0.5, 0.2, 0.1, 0.3))
    with pytest.raises(ValueError, match=r"null.*validation\.csv: no validation table"):
        write_matrix(tmp_path)
    _write_half(layout.half(True), _table(0.5, 0.2, 0.1, 0.3))  # not a null cohort
    with pytest.raises(ValueError, match=r"the null half plants sparse_evidence"):
        write_matrix(tmp_path)
    broken = _table(0.0, 0.0, 0.0, 0.0).drop(columns="ci_low")
    _write_half(layout.half(True), broken)
    with pytest.raises(ValueError, match=r"columns \['ci_low'\] missing"):
        read_half(layout.half(True))


def test_validate_method_runs_planted_then_null_into_their_folders(tmp_path):
    """The driver's order and folders; the halves are the real demo in the slow test below."""
    calls = []

    def run_half(folder, null):
        calls.append((folder.name, null))
        _write_half(folder, _table(0.0 if null else 0.5, 0.1, -0.1 if null else 0.05, 0.2))

    matrix = validate_method(tmp_path, run_half)
    assert calls == [("planted", False), ("null", True)]
    assert list(matrix["mechanism"]) == [m for m, _ in MECHANISMS]
    assert matrix["detected"].all() and not matrix["null_detected"].any()


@pytest.mark.slow
def test_the_quick_command_writes_the_matrix_and_resumes(tmp_path):
    """The real command, both halves of the quick demo (a few minutes each), then once more:
    every stage is skipped and the same matrix is written."""
    command = [sys.executable, "-m", "stromalens.cli", "validate-method", "--quick"]
    done = subprocess.run([*command, "--out", str(tmp_path)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    layout = ValidationLayout(tmp_path)
    first = pd.read_csv(layout.matrix_csv)
    assert list(first["mechanism"]) == [m for m, _ in MECHANISMS]
    assert (first["null_planted"] == 0).all() and (first["planted"] > 0).all()
    again = subprocess.run([*command, "--out", str(tmp_path)], capture_output=True, text=True)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "skipped" in again.stdout
    pd.testing.assert_frame_equal(pd.read_csv(layout.matrix_csv), first)
