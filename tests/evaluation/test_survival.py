"""Survival analysis: Cox fits against R ``survival``, planted effects, out-of-fold discipline,
decision curves against Kaplan–Meier, and the errors."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from lifelines import KaplanMeierFitter
from lifelines.utils import concordance_index

from stromalens.evaluation.survival import (
    TABLE_COLUMNS,
    AITerms,
    clinical_design,
    fit_cox,
    out_of_fold_predictions,
    survival_analysis,
    survival_metrics,
)

from ._planted_cohort import LOG_HR, simulate_cohort

REFERENCE = Path(__file__).parent / "reference"


@pytest.fixture(scope="module")
def r_cohort():
    data = pd.read_csv(REFERENCE / "cox_data.csv", index_col="patient_id")
    scores = data[["ers_caf", "lr", "heterogeneity"]]
    clinical = data.drop(columns=scores.columns)
    folds = pd.Series(np.arange(len(data)) % 5, index=data.index)
    return scores, clinical, folds


@pytest.fixture(scope="module")
def r_expected():
    # Produced by `Rscript cox_reference.R` in tests/evaluation/reference (R 4.2.2, survival
    # 3.5.3): coxph(Surv(os_time, os_event) ~ <the module's terms>, ties = "efron").
    return pd.read_csv(REFERENCE / "cox_expected.csv", index_col="term")


def test_cox_coefficients_match_r(r_cohort, r_expected):
    scores, clinical, _ = r_cohort
    frame = scores.join(clinical)
    X = clinical_design(frame).join(AITerms().fit(frame).transform(frame))
    cph = fit_cox(X, frame["os_time"], frame["os_event"])
    expected = r_expected.drop(index="concordance")
    assert list(cph.params_.index) == list(expected.index)
    # Reference: R coef(fit) and sqrt(diag(vcov(fit))).
    np.testing.assert_allclose(cph.params_, expected["coef"], rtol=1e-5, atol=1e-8)
    np.testing.assert_allclose(cph.standard_errors_, expected["se"], rtol=1e-5)
    # Reference: R concordance(fit)$concordance (Harrell's C of the linear predictor).
    lp = X.to_numpy() @ cph.params_.to_numpy()
    c = concordance_index(frame["os_time"], -lp, frame["os_event"])
    assert c == pytest.approx(r_expected.loc["concordance", "coef"], abs=1e-9)


def test_hazard_ratio_table_matches_r(r_cohort, r_expected):
    scores, clinical, folds = r_cohort
    tables = survival_analysis(scores, clinical, folds, endpoints=("os",), horizons=(), n_boot=2)
    hr = tables["survival_hr"].set_index("term")
    expected = r_expected.drop(index="concordance")
    # Reference: R summary(fit)$conf.int (exp(coef), lower/upper .95) and Pr(>|z|).
    for column in ("hr", "ci_low", "ci_high", "p"):
        np.testing.assert_allclose(hr.loc[expected.index, column], expected[column], rtol=1e-5)
    assert (hr["n"] == 90).all() and (hr["events"] == clinical["os_event"].sum()).all()
    assert list(tables["survival_hr"].columns) == list(TABLE_COLUMNS["survival_hr"])


@pytest.fixture(scope="module")
def planted():
    scores, clinical, folds = simulate_cohort(400, seed=1)
    tables = survival_analysis(
        scores,
        clinical,
        folds,
        endpoints=("os",),
        horizons=(24,),
        n_boot=40,
        thresholds=(0.1, 0.3, 0.5),
    )
    return scores, clinical, folds, tables


def test_planted_hazard_ratios_are_recovered(planted):
    *_, tables = planted
    hr = tables["survival_hr"].set_index("term")
    # Known answer: the simulation's log hazard ratios (tests/evaluation/_cohorts.py).
    for term in ("heterogeneity_per_sd", "ers_caf_T3_vs_T1", "lr_T3_vs_T1", "log_volume_cc"):
        truth = np.exp(LOG_HR[term])
        assert hr.loc[term, "ci_low"] < truth < hr.loc[term, "ci_high"], term
    assert hr.loc["heterogeneity_per_sd", "p"] < 1e-4


def test_ai_signal_raises_discrimination(planted):
    *_, tables = planted
    c = tables["survival_cindex"].set_index(["model", "metric"])["value"]
    assert c["clinical_ai", "harrell"] > c["clinical", "harrell"] + 0.05
    assert c["clinical_ai", "uno_24"] > c["clinical", "uno_24"] + 0.05
    diff = tables["survival_cindex_diff"].set_index("metric")
    assert diff.loc["harrell", "ci_low"] > 0 and diff.loc["uno_24", "ci_low"] > 0
    # The difference is the difference of the two C-indices of the table.
    assert diff.loc["harrell", "diff"] == pytest.approx(
        c["clinical_ai", "harrell"] - c["clinical", "harrell"]
    )
    auc = tables["survival_auc"].set_index("model")["auc"]
    assert auc["clinical_ai"] > auc["clinical"]
    metrics = survival_metrics(tables)
    hr = tables["survival_hr"].set_index("term")["hr"]
    assert metrics == {
        "survival.os.c_index.clinical": c["clinical", "harrell"],
        "survival.os.c_index.clinical_ai": c["clinical_ai", "harrell"],
        "survival.os.hr.ers_caf_T3_vs_T1": hr["ers_caf_T3_vs_T1"],
        "survival.os.hr.lr_T3_vs_T1": hr["lr_T3_vs_T1"],
        "survival.os.hr.heterogeneity_per_sd": hr["heterogeneity_per_sd"],
    }
    for name, columns in TABLE_COLUMNS.items():
        assert list(tables[name].columns) == list(columns), name


def test_treat_all_net_benefit_matches_kaplan_meier(planted):
    _, clinical, _, tables = planted
    curve = tables["decision_curve"]
    assert set(curve["model"]) == {"clinical", "clinical_ai", "treat_all", "treat_none"}
    assert (curve["horizon"] == 24).all()
    # Reference: NB_all(p) = F(h) − (1 − F(h))·p/(1 − p), F = 1 − KM survival at h
    # (lifelines.KaplanMeierFitter), the net benefit of treating everyone.
    km = KaplanMeierFitter().fit(clinical["os_time"], clinical["os_event"])
    risk = 1.0 - float(km.survival_function_at_times(24).iloc[0])
    treat_all = curve[curve["model"] == "treat_all"].set_index("threshold")["net_benefit"]
    for p, nb in treat_all.items():
        assert nb == pytest.approx(risk - (1 - risk) * p / (1 - p), rel=1e-9)
    assert (curve.loc[curve["model"] == "treat_none", "net_benefit"] == 0).all()


def test_no_signal_difference_includes_zero():
    scores, clinical, folds = simulate_cohort(300, seed=2, signal=False)
    tables = survival_analysis(
        scores, clinical, folds, endpoints=("os",), horizons=(24,), n_boot=100, thresholds=(0.2,)
    )
    diff = tables["survival_cindex_diff"].set_index("metric")
    for metric in ("harrell", "uno_24"):
        assert diff.loc[metric, "ci_low"] < 0 < diff.loc[metric, "ci_high"], metric
        assert diff.loc[metric, "p"] > 0.05


def test_held_out_fold_never_sees_its_outcomes():
    scores, clinical, folds = simulate_cohort(150, seed=3)
    frame = scores.join(clinical).rename(columns={"os_time": "time", "os_event": "event"})
    frame["fold"] = folds
    before = out_of_fold_predictions(frame, horizons=(24,))
    changed = frame.copy()
    held = changed["fold"] == 0
    changed.loc[held, "time"] = changed.loc[held, "time"][::-1].to_numpy()
    changed.loc[held, "event"] = 1 - changed.loc[held, "event"]
    after = out_of_fold_predictions(changed, horizons=(24,))
    for model in ("clinical", "clinical_ai"):
        # Fold 0 is predicted by models fitted without it: its predictions cannot move …
        pd.testing.assert_frame_equal(before[model][held], after[model][held])
        # … while every other fold's model saw the change.
        assert not np.allclose(before[model].loc[~held, "lp"], after[model].loc[~held, "lp"])


def test_missing_clinical_values_drop_patients_and_log(caplog):
    scores, clinical, folds = simulate_cohort(120, seed=4)
    clinical = clinical.astype({"age": float})
    clinical.loc[["P0003", "P0010"], "age"] = np.nan
    clinical.loc["P0020", "pfs_time"] = np.nan
    with caplog.at_level(logging.WARNING, logger="stromalens.evaluation.survival"):
        tables = survival_analysis(scores, clinical, folds, horizons=(), n_boot=2)
    n = tables["survival_hr"].groupby("endpoint")["n"].first()
    assert n["os"] == 118 and n["pfs"] == 117
    messages = [r for r in caplog.records if "left out for missing" in r.getMessage()]
    assert len(messages) == 2
    assert messages[1].fields["patients"] == ["P0003", "P0010", "P0020"]


def test_errors_name_the_problem():
    scores, clinical, folds = simulate_cohort(60, seed=5)
    no_events = clinical.assign(pfs_event=0)
    with pytest.raises(ValueError, match="endpoint 'pfs' has no events among 60 patients"):
        survival_analysis(scores, no_events, folds, horizons=(), n_boot=1)
    with pytest.raises(
        ValueError, match=r"clinical data lack column\(s\) \['volume_cc', 'os_time'\]"
    ):
        survival_analysis(
            scores, clinical.drop(columns=["volume_cc", "os_time"]), folds, horizons=(), n_boot=1
        )
    with pytest.raises(ValueError, match=r"scores lack column\(s\) \['lr'\]"):
        survival_analysis(scores.drop(columns="lr"), clinical, folds, horizons=(), n_boot=1)
    bad = scores.copy()
    bad.loc["P0007", "lr"] = np.nan
    bad.loc["P0009", ["ers_caf", "heterogeneity"]] = np.inf
    with pytest.raises(ValueError, match="P0007: lr; P0009: ers_caf, heterogeneity"):
        survival_analysis(bad, clinical, folds, horizons=(), n_boot=1)
    with pytest.raises(ValueError, match=r"have no folds: \['P0002'\]"):
        survival_analysis(scores, clinical, folds.drop("P0002"), horizons=(), n_boot=1)
    with pytest.raises(ValueError, match="unknown endpoint"):
        survival_analysis(scores, clinical, folds, endpoints=("dfs",))


def test_separated_tertile_is_logged_not_raised(caplog):
    scores, clinical, folds = simulate_cohort(90, seed=8)
    # No event in the lowest ERS–CAF tertile: the T2/T3 vs T1 hazard ratios are unbounded.
    low = scores["ers_caf"] <= scores["ers_caf"].quantile(1 / 3)
    clinical.loc[low, "os_event"] = 0
    with caplog.at_level(logging.WARNING, logger="stromalens.evaluation.survival"):
        tables = survival_analysis(
            scores, clinical, folds, endpoints=("os",), horizons=(), n_boot=2
        )
    assert any("did not converge" in r.getMessage() for r in caplog.records)
    hr = tables["survival_hr"].set_index("term")
    assert hr.loc["ers_caf_T3_vs_T1", "hr"] > 1e3 and hr.loc["ers_caf_T3_vs_T1", "p"] > 0.5


def test_a_singular_design_is_refitted_with_a_ridge_penalty(caplog):
    """Two identical columns make the Cox information matrix singular: lifelines raises
    ConvergenceError (R's coxph would return NA for one). fit_cox refits with the ridge penalty
    SINGULAR_PENALIZER and logs it. Reference: lifelines' own CoxPHFitter(penalizer=0.1) on the
    same data; under a ridge penalty two identical columns share the effect equally."""
    from lifelines import CoxPHFitter
    from lifelines.exceptions import ConvergenceError

    from stromalens.evaluation.survival import SINGULAR_PENALIZER

    rng = np.random.default_rng(0)
    x = rng.normal(size=80)
    X = pd.DataFrame({"a": x, "b": x, "c": rng.normal(size=80)})
    time = rng.exponential(np.exp(-0.7 * x))
    event_ = (rng.random(80) < 0.8).astype(float)
    data = X.assign(_time=time, _event=event_)
    with pytest.raises(ConvergenceError):
        CoxPHFitter().fit(data, duration_col="_time", event_col="_event")
    with caplog.at_level(logging.WARNING):
        cph = fit_cox(X, time, event_, label="collinear")
    assert cph.penalizer == SINGULAR_PENALIZER
    assert any("singular Cox information matrix" in r.getMessage() for r in caplog.records)
    reference = CoxPHFitter(penalizer=SINGULAR_PENALIZER).fit(
        data, duration_col="_time", event_col="_event", fit_options={"precision": 1e-12}
    )
    np.testing.assert_allclose(cph.params_, reference.params_, rtol=1e-8)
    assert cph.params_["a"] == pytest.approx(cph.params_["b"], rel=1e-8)
    assert cph.params_["a"] > 0.1  # the planted effect (log-HR 0.7 split over two columns)


def test_concordance_without_a_comparable_pair_is_nan_not_an_error():
    # two events at the same time: lifelines.utils.concordance_index raises
    # ZeroDivisionError("No admissable pairs in the dataset."); a bootstrap replicate like it
    # (small cohorts) has no value instead of ending the evaluation
    from stromalens.evaluation.survival import _concordances

    values = _concordances(np.array([5.0, 5.0]), np.array([1.0, 1.0]), np.array([0.1, 0.2]), [3])
    assert np.isnan(values).all()
