"""The console says what happened without raw Python warnings: warnings go to the run log as
one line (:func:`stromalens.logs.capture_warnings`, installed by ``configure_logging``, which the
CLI entry calls), and the evaluation's own "Mean of empty slice" is fixed at its source."""

from __future__ import annotations

import json
import logging
import warnings

import numpy as np
import pandas as pd
import pytest

from stromalens.evaluation.fidelity import fidelity, fidelity_macro, finite_mean
from stromalens.logs import capture_warnings, configure_logging


@pytest.fixture
def logged(tmp_path):
    """configure_logging with a JSON-lines file; undone afterwards."""
    path = tmp_path / "run.jsonl"
    configure_logging("INFO", json_file=path)
    yield path
    capture_warnings(False)
    root = logging.getLogger("stromalens")
    for handler in list(root.handlers):
        handler.close()
        root.removeHandler(handler)


def test_a_warning_becomes_one_log_line(logged, capfd):
    with warnings.catch_warnings():
        # this test is about a warning Python shows; the suite's "error" filter would raise it
        warnings.simplefilter("always")
        warnings.warn("something odd in a fit", UserWarning, stacklevel=1)
    records = [json.loads(line) for line in logged.read_text().splitlines()]
    [record] = [r for r in records if r["logger"] == "stromalens.warnings"]
    assert record["level"] == "WARNING"
    assert record["message"] == "UserWarning: something odd in a fit"
    assert record["source"] == "test_console.py:" + record["source"].split(":")[1]
    # Python's own print (file:line: Category: message, then the source line) never appears
    err = capfd.readouterr().err
    assert "warnings.warn(" not in err
    assert "test_console.py:" not in err


def test_filters_still_apply(logged):
    # capture_warnings changes where a warning goes, not whether it is raised
    with pytest.raises(RuntimeWarning):
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            warnings.warn("boom", RuntimeWarning, stacklevel=1)


def test_capture_is_not_installed_by_import():
    import importlib

    import stromalens.logs

    before = warnings.showwarning
    importlib.reload(stromalens.logs)
    assert warnings.showwarning is before


def test_finite_mean_of_nothing_is_nan_without_a_warning():
    # np.nanmean([nan, nan]) returns nan with "RuntimeWarning: Mean of empty slice"
    assert np.isnan(finite_mean([np.nan, np.nan]))
    assert finite_mean([1.0, np.nan, 3.0]) == 2.0  # np.nanmean([1, nan, 3]) = 2.0


def test_fidelity_of_a_constant_model_warns_nothing():
    """Every fold of one model predicts a constant: its per-fold r are undefined. Before the
    fix, fidelity.py's nanmean raised "Mean of empty slice" (an error under the suite's
    filters); now r_fold_mean is NaN and the other model is unaffected."""
    rng = np.random.default_rng(0)
    n = 24
    y = rng.normal(size=n)
    rows = []
    for model, pred in (("constant", np.zeros(n)), ("good", y + 0.3 * rng.normal(size=n))):
        rows.append(
            pd.DataFrame(
                {
                    "patient_id": [f"P{i}" for i in range(n)],
                    "fold": np.arange(n) % 3,
                    "model": model,
                    "target": "ers_caf",
                    "y_true": y,
                    "y_pred": pred,
                }
            )
        )
    table = fidelity(pd.concat(rows, ignore_index=True)).set_index("model")
    assert np.isnan(table.loc["constant", "r_fold_mean"])
    assert np.isfinite(table.loc["good", "r_fold_mean"])
    macro = fidelity_macro(pd.concat(rows, ignore_index=True)).set_index("model")
    assert np.isnan(macro.loc["constant", "macro_r_fold_mean"])


def test_the_training_progress_total_is_stable(tmp_path, caplog):
    """With nested selection each fold's final gated-fusion fit is queued only once its
    selection is scored; the total (the bar's, and the ``of`` of every "task done" line) counts
    it from the start instead of growing."""
    from stromalens.training.cv import run_cv

    from ..training.conftest import make_study
    from ..training.test_training import FAST

    with caplog.at_level(logging.INFO, logger="stromalens"):
        run_cv(
            make_study(n=24),
            tmp_path,
            FAST.with_(epochs_stage2=1, epochs_baseline=1),
            models=["gated_fusion", "mri_only"],
            folds=3,
            inner_folds=2,
            grid={"tau": [0.25, 1.0]},
        )
    done = [r.fields for r in caplog.records if r.getMessage() == "task done"]
    # 3 folds × (2 grid points × 2 inner folds of selection + gated_fusion + mri_only) = 18
    assert [d["done"] for d in done] == list(range(1, 19))
    assert {d["of"] for d in done} == {18}
