"""Fit warnings gathered per analysis (``stromalens.evaluation.fit_warnings``) from real fits
that warn: a Cox model with a completely separated covariate (lifelines) and a logistic model
with a perfectly separating LR score (statsmodels); and the driver that writes them to
``fit_warnings.csv``, ``warnings.<analysis>.count`` and the run log."""

from __future__ import annotations

import logging
import warnings

import numpy as np
import pandas as pd
import pytest

from stromalens.evaluation.fit_warnings import (
    COLUMNS,
    capture,
    ratio_flags,
    table_flags,
    warnings_table,
)


def _separated_cox_data(n: int = 40, seed: int = 0):
    """Every event in the x = 1 group, every x = 0 patient censored later: β_x → ∞."""
    rng = np.random.default_rng(seed)
    x = np.r_[np.ones(n // 2), np.zeros(n // 2)]
    time = np.r_[rng.uniform(1, 10, n // 2), rng.uniform(10, 20, n // 2)]
    event = np.r_[np.ones(n // 2), np.zeros(n // 2)]
    return pd.DataFrame({"x": x, "age": rng.normal(size=n)}), time, event


def _hr_table(cph, endpoint="os") -> pd.DataFrame:
    s = cph.summary
    return pd.DataFrame(
        {
            "endpoint": endpoint,
            "term": s.index.astype(str),
            "hr": s["exp(coef)"].to_numpy(),
            "ci_low": s["exp(coef) lower 95%"].to_numpy(),
            "ci_high": s["exp(coef) upper 95%"].to_numpy(),
        }
    )


def test_a_separated_cox_fit_is_captured_with_its_table_and_flagged():
    from stromalens.evaluation.survival import fit_cox

    X, time, event = _separated_cox_data()
    with capture("survival") as caught:
        cph = fit_cox(X, time, event, label="os hazard ratios", table="survival_hr.csv")
    hr = _hr_table(cph)
    rows = caught.rows({"survival_hr.csv": hr, "survival_cindex.csv": hr})
    # lifelines' ConvergenceWarning ("complete separation"), as fit_cox logs it
    assert rows and all(r["table"] == "survival_hr.csv" for r in rows)
    assert any("separation" in r["message"] for r in rows)
    assert all(r["source"] == "stromalens.evaluation.survival" for r in rows)
    # R on data of the same design (set.seed(1); x, t, e as in _separated_cox_data, age <-
    # rnorm(40); coxph(Surv(t, e) ~ x + age, ties = "efron")) warns "Loglik converged before
    # variable 1; coefficient may be infinite", exp(coef): x 9.7e9, age 1.71 — x unbounded,
    # age ordinary
    flags = table_flags("survival", {"survival_hr.csv": hr})
    assert [f["message"].split(":")[0] for f in flags] == ["os x"]
    assert flags[0]["source"] == "check" and flags[0]["table"] == "survival_hr.csv"


def test_a_separated_logistic_fit_is_captured_and_its_odds_ratios_flagged():
    from stromalens.evaluation.treatment import treatment_analysis

    rng = np.random.default_rng(1)
    n = 40
    lr = rng.normal(size=n)
    clinical = pd.DataFrame(
        {
            "response": (lr > 0).astype(int),  # LR separates responders perfectly
            "age": rng.normal(60, 10, n),
            "sex": rng.choice(["F", "M"], n),
            "location": "sacrum",
            "volume_cc": rng.lognormal(3, 0.4, n),
            "treatment": np.where(np.arange(n) % 2 == 0, "surgery", "surgery+RT"),
        },
        index=[f"P{i}" for i in range(n)],
    )
    folds = pd.Series(np.arange(n) % 4, index=clinical.index)
    with capture("treatment") as caught:
        table = treatment_analysis(
            pd.DataFrame({"lr": lr}, index=clinical.index), clinical, folds, n_boot=50
        )
    rows = warnings_table(caught.rows({"treatment.csv": table}))
    # statsmodels' PerfectSeparationWarning, logged by fit_logistic; repeats dropped
    assert rows["message"].str.contains("separation").any()
    assert not rows.duplicated().any()
    assert set(rows["table"]) == {"treatment.csv"}  # the analysis's only table
    flagged = [term for term, _ in ratio_flags(table, ("term", "estimate", "ci_low", "ci_high"))]
    assert "lr_per_sd" in flagged


def test_ratio_flags_rule():
    table = pd.DataFrame(
        {
            "term": ["fine", "huge", "tiny", "wide", "nan", "edge"],
            "hr": [1.8, 985_304.0, 1e-16, 2.0, np.nan, 999.0],
            "ci_low": [1.1, 3.0, 0.0, 0.5, 0.1, 500.0],
            "ci_high": [2.9, 2e12, np.inf, 1500.0, 1.0, 1400.0],
        }
    )
    flagged = dict(ratio_flags(table, ("term", "hr", "ci_low", "ci_high")))
    # the Cox HR of 985,304 with CI to 2e12 and a logistic 1e-16 with p = 1
    assert set(flagged) == {"huge", "tiny", "wide", "nan"}
    assert "|log ratio| = 13.8 > 6.9" in flagged["huge"]  # ln(985304) = 13.80
    assert "wider than 1000" in flagged["wide"]


def test_python_warnings_are_recorded_and_logged(caplog):
    with warnings.catch_warnings():
        # what the driver does in production (default filters); the suite's "error" would raise
        warnings.simplefilter("always")
        with caplog.at_level(logging.WARNING, logger="stromalens"):
            with capture("probes") as caught:
                warnings.warn("Mean of empty slice", RuntimeWarning, stacklevel=1)
    [row] = caught.rows({"a.csv": pd.DataFrame(), "b.csv": pd.DataFrame()})
    assert row["table"] == ""  # two tables: the warning concerns the analysis
    assert row["message"] == "Mean of empty slice"
    assert row["source"].startswith("RuntimeWarning (test_fit_warnings.py:")
    assert "probes: RuntimeWarning: Mean of empty slice" in caplog.text


def test_warnings_table_has_the_contract_columns():
    assert list(warnings_table([]).columns) == list(COLUMNS)


# ------------------------------------------------------------------------ the driver
@pytest.fixture(scope="module")
def fidelity_only(tiny_run, tmp_path_factory):
    from stromalens.evaluation import evaluate_run
    from stromalens.evaluation.evaluate import ANALYSES

    out = tmp_path_factory.mktemp("fidelity_only")
    skip = tuple(a.name for a in ANALYSES if a.skippable)
    return out, evaluate_run(tiny_run, out, skip=skip, n_boot=20)


def test_the_driver_writes_the_warnings_and_their_count(fidelity_only):
    out, metrics = fidelity_only
    table = pd.read_csv(out / "fit_warnings.csv")
    assert list(table.columns) == list(COLUMNS)
    assert metrics["warnings.fidelity.count"] == len(table[table["analysis"] == "fidelity"])
    assert not any(k.startswith("warnings.probes") for k in metrics)  # skipped: no count


def test_the_driver_flags_an_analysis_whose_fit_warns(tmp_path):
    """One registered-style analysis that fits the separated Cox model: its table is written,
    the captured and the checked warnings come back, and the run log says so."""
    from stromalens.evaluation.evaluate import Analysis, Context, _run_analysis
    from stromalens.evaluation.survival import fit_cox

    def run(context):
        X, time, event = _separated_cox_data()
        cph = fit_cox(X, time, event, label="os hazard ratios", table="survival_hr.csv")
        return {"survival_hr.csv": _hr_table(cph)}

    analysis = Analysis("survival", run, lambda tables, context: {"n": 1.0})
    context = Context(None, tmp_path, frozenset(), None, 1, 1, 1, 0.1, 0, 0)
    metrics, flags = _run_analysis(analysis, context)
    assert metrics == {"n": 1.0}
    assert (tmp_path / "survival_hr.csv").is_file()
    sources = {f["source"] for f in flags}
    assert sources == {"stromalens.evaluation.survival", "check"}
    assert {f["table"] for f in flags} == {"survival_hr.csv"}
