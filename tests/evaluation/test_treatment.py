"""Treatment × score interaction model: coefficients and out-of-fold AUC against R ``glm``, the
planted predictive effect recovered and absent under its null, no leak of a held-out patient
into its own prediction, flagged separated fits, and the errors."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from stromalens.evaluation.treatment import (
    COLUMNS,
    fit_logistic,
    out_of_fold_probabilities,
    response_design,
    treatment_analysis,
    treatment_metrics,
)

from ._planted_cohort import LOG_OR_INTERACTION, LOG_OR_LR, simulate_interaction

REFERENCE = Path(__file__).parent / "reference"
INTERACTION = "lr_per_sd:treatment_surgery+RT"


@pytest.fixture(scope="module")
def r_data():
    data = pd.read_csv(REFERENCE / "interaction_data.csv", index_col="patient_id")
    return data[["lr"]], data.drop(columns=["lr", "fold"]), data["fold"]


@pytest.fixture(scope="module")
def r_expected():
    # Produced by `Rscript interaction_reference.R` in tests/evaluation/reference (R 4.2.2):
    # glm(response ~ lr_per_sd + treatment + lr_per_sd:treatment + clinical, binomial) on all
    # patients, confint.default, summary(fit) Pr(>|z|); and the Mann–Whitney AUC (wilcox.test)
    # of the pooled held-out probabilities of per-fold refits with and without the score.
    return pd.read_csv(REFERENCE / "interaction_expected.csv", index_col="term")


def test_interaction_coefficients_match_r(r_data, r_expected):
    scores, clinical, _ = r_data
    X = response_design(clinical.assign(lr=scores["lr"]))
    fit = fit_logistic(X, clinical["response"])
    expected = r_expected.drop(index=["auc_oof", "auc_base_oof"])
    assert list(X.columns) == list(expected.index)
    assert fit.problems == ()
    # Reference: R coef(fit), sqrt(diag(vcov(fit))).
    np.testing.assert_allclose(fit.result.params[expected.index], expected["coef"], rtol=1e-6)
    np.testing.assert_allclose(fit.result.bse[expected.index], expected["se"], rtol=1e-6)


def test_treatment_table_matches_r(r_data, r_expected):
    scores, clinical, folds = r_data
    table = treatment_analysis(scores, clinical, folds, n_boot=200, seed=1)
    assert list(table.columns) == list(COLUMNS)
    rows = table.set_index("term")
    expected = r_expected.drop(index=["auc_oof", "auc_base_oof"])
    # Reference: R exp(coef), exp(confint.default(fit)), summary(fit) Pr(>|z|).
    for ours, theirs in (("estimate", "or"), ("ci_low", "ci_low"), ("ci_high", "ci_high")):
        np.testing.assert_allclose(rows.loc[expected.index, ours], expected[theirs], rtol=1e-6)
    np.testing.assert_allclose(rows.loc[expected.index, "p"], expected["p"], rtol=1e-5)
    assert rows.loc["lr_per_sd", "role"] == "prognostic"
    assert rows.loc[INTERACTION, "role"] == "predictive"
    assert rows.loc["treatment_surgery+RT", "role"] == "treatment"
    assert (table["flag"] == "").all() and (table["auc_flag"] == "").all()
    # Reference: R per-fold glm refits, predict(type = "response") on the held-out fold,
    # W/(n1·n0) of the pooled held-out probabilities (rows auc_oof, auc_base_oof).
    auc, base = r_expected.loc["auc_oof", "coef"], r_expected.loc["auc_base_oof", "coef"]
    assert rows["auc_oof"].iloc[0] == pytest.approx(auc, rel=1e-9)
    assert rows["auc_gain"].iloc[0] == pytest.approx(auc - base, rel=1e-9)
    assert rows["auc_oof_ci_low"].iloc[0] < auc < rows["auc_oof_ci_high"].iloc[0]
    assert rows["auc_gain_ci_low"].iloc[0] > 0  # the score adds discrimination here
    assert (table["n"] == 240).all()


def test_planted_predictive_effect_is_recovered_and_null_stays_null():
    scores, clinical, folds = simulate_interaction(800, seed=3)
    rows = treatment_analysis(scores, clinical, folds, n_boot=50).set_index("term")
    # Known answer: the simulation's log odds ratios (tests/evaluation/_planted_cohort.py).
    truth = np.exp(LOG_OR_INTERACTION["surgery+RT"])
    assert rows.loc[INTERACTION, "ci_low"] < truth < rows.loc[INTERACTION, "ci_high"]
    assert rows.loc[INTERACTION, "ci_high"] < 1 and rows.loc[INTERACTION, "p"] < 1e-3
    assert rows.loc["lr_per_sd", "ci_low"] < np.exp(LOG_OR_LR) < rows.loc["lr_per_sd", "ci_high"]

    scores, clinical, folds = simulate_interaction(800, seed=3, predictive=False)
    rows = treatment_analysis(scores, clinical, folds, n_boot=50).set_index("term")
    # Null: no interaction planted, so the interval of the ratio of odds ratios holds 1.
    assert rows.loc[INTERACTION, "ci_low"] < 1 < rows.loc[INTERACTION, "ci_high"]
    assert rows.loc["lr_per_sd", "ci_high"] < 1  # still prognostic


def test_held_out_patient_never_enters_its_own_fit():
    scores, clinical, folds = simulate_interaction(150, seed=8)
    frame = clinical.assign(lr=scores["lr"])
    before, _ = out_of_fold_probabilities(frame, folds)
    # Flip one patient's response and move its score far out: only the *other* folds' refits
    # see it, so its own held-out probability cannot change.
    changed = frame.copy()
    pid = frame.index[0]
    changed.loc[pid, "response"] = 1 - changed.loc[pid, "response"]
    after, _ = out_of_fold_probabilities(changed, folds)
    same_fold = (folds.loc[frame.index] == folds.loc[pid]).to_numpy()
    np.testing.assert_array_equal(before[same_fold], after[same_fold])
    assert not np.allclose(before[~same_fold], after[~same_fold])


def test_separated_fit_is_flagged_not_reported(caplog):
    scores, clinical, folds = simulate_interaction(120, seed=6)
    # Every sacral tumour responds and no other does: the location terms separate the outcome,
    # and the fit runs off to an odds ratio of 10⁶-and-more with an unbounded interval.
    clinical = clinical.assign(response=(clinical["location"] == "sacrum").astype(int))
    with caplog.at_level(logging.WARNING, logger="stromalens.evaluation.treatment"):
        table = treatment_analysis(scores, clinical, folds, n_boot=20)
    rows = table.set_index("term")
    assert any("logistic fit problem" in r.getMessage() for r in caplog.records)
    assert rows.loc["location_sacrum", "estimate"] > 1e3
    assert rows.loc["location_sacrum", "flag"] != ""
    assert "fit problems in fold(s)" in rows["auc_flag"].iloc[0]
    # the folds' separated fits still predict (saturated 0/1, no overflow warning: warnings are
    # errors here)
    assert 0 <= rows["auc_oof"].iloc[0] <= 1
    metrics = treatment_metrics(table)
    assert metrics["treatment.flagged_terms"] == len(table)
    assert np.isnan(metrics["treatment.prognostic.or"])
    assert np.isnan(metrics["treatment.predictive.surgery+RT.p"])


def test_huge_unstable_estimate_is_flagged():
    # A term seen in two patients only, both responders (quasi-separation), on a cohort that
    # is otherwise ordinary: its SE explodes even if the optimiser reports convergence.
    scores, clinical, folds = simulate_interaction(200, seed=9)
    clinical = clinical.copy()
    rare = clinical.index[:2]
    clinical["sex"] = "F"
    clinical.loc[rare, "sex"] = "M"
    clinical.loc[rare, "response"] = 1
    rows = treatment_analysis(scores, clinical, folds, n_boot=20).set_index("term")
    assert rows.loc["sex_M", "ci_high"] / rows.loc["sex_M", "ci_low"] > 1e6
    assert "unstable" in rows.loc["sex_M", "flag"]
    # the whole fit is flagged (Newton did not settle), so no term of it is reported as a finding
    assert np.isnan(treatment_metrics(rows.reset_index())["treatment.prognostic.or"])


def test_one_arm_leaves_a_prognostic_only_model_and_missing_rows_are_dropped(caplog):
    scores, clinical, folds = simulate_interaction(200, seed=4)
    clinical = clinical.assign(treatment="surgery").astype({"response": float})
    clinical.loc[["P0001", "P0005"], "response"] = np.nan
    with caplog.at_level(logging.WARNING, logger="stromalens.evaluation.treatment"):
        table = treatment_analysis(scores, clinical, folds, n_boot=20)
    assert set(table["role"]) == {"prognostic", "clinical"}
    assert (table["n"] == 198).all()
    dropped = [r for r in caplog.records if "left out for missing" in r.getMessage()]
    assert dropped and dropped[0].fields["patients"] == ["P0001", "P0005"]
    metrics = treatment_metrics(table)
    assert not any(k.startswith("treatment.predictive") for k in metrics)
    assert np.isfinite(metrics["treatment.prognostic.or"])


def test_metrics_read_back_from_csv(tmp_path, r_data):
    scores, clinical, folds = r_data
    table = treatment_analysis(scores, clinical, folds, n_boot=20)
    table.to_csv(tmp_path / "treatment.csv", index=False)
    again = treatment_metrics(pd.read_csv(tmp_path / "treatment.csv"))
    assert again == pytest.approx(treatment_metrics(table), nan_ok=True)
    assert again["treatment.flagged_terms"] == 0
    assert again["treatment.predictive.surgery+RT.or"] == pytest.approx(0.3136126862, rel=1e-6)


def test_errors_name_the_problem():
    scores, clinical, folds = simulate_interaction(60, seed=5)
    with pytest.raises(ValueError, match=r"clinical data lack column\(s\) \['response'\]"):
        treatment_analysis(scores, clinical.drop(columns="response"), folds)
    with pytest.raises(ValueError, match=r"response takes one value \(1\) in all 60 patients"):
        treatment_analysis(scores, clinical.assign(response=1), folds)
    with pytest.raises(ValueError, match="response must be 0/1"):
        treatment_analysis(scores, clinical.assign(response=2), folds)
    bad = scores.copy()
    bad.loc["P0004", "lr"] = np.nan
    with pytest.raises(
        ValueError, match=r"non-finite lr predictions for 1 patient\(s\): \['P0004'\]"
    ):
        treatment_analysis(bad, clinical, folds)
    with pytest.raises(ValueError, match=r"scores lack column\(s\) \['lr'\]"):
        treatment_analysis(scores.drop(columns="lr"), clinical, folds)
    with pytest.raises(ValueError, match=r"1 patient\(s\) have no CV fold: \['P0000'\]"):
        treatment_analysis(scores, clinical, folds.drop("P0000"))
    with pytest.raises(TypeError, match="folds must be a pandas Series"):
        treatment_analysis(scores, clinical, folds.to_dict())
