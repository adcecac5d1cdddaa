"""Treatment-response model: coefficients against R ``glm``, AUC against sklearn and R, planted
odds ratio, and the errors."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from stromalens.evaluation.treatment import (
    COLUMNS,
    fit_logistic,
    response_design,
    treatment_analysis,
)

from ._planted_cohort import LOG_OR_LR, LOG_OR_TREATMENT, simulate_response

REFERENCE = Path(__file__).parent / "reference"


@pytest.fixture(scope="module")
def r_data():
    data = pd.read_csv(REFERENCE / "logistic_data.csv", index_col="patient_id")
    return data[["lr"]], data.drop(columns="lr")


@pytest.fixture(scope="module")
def r_expected():
    # Produced by `Rscript logistic_reference.R` in tests/evaluation/reference (R 4.2.2):
    # glm(response ~ <the module's terms>, family = binomial), confint.default, and the
    # Mann–Whitney AUC of fitted(fit) from wilcox.test.
    return pd.read_csv(REFERENCE / "logistic_expected.csv", index_col="term")


def test_logistic_coefficients_match_r(r_data, r_expected):
    scores, clinical = r_data
    frame = clinical.assign(lr=scores["lr"])
    X = response_design(frame)
    result = fit_logistic(X, frame["response"])
    expected = r_expected.drop(index="auc")
    assert list(X.columns) == list(expected.index)
    # Reference: R coef(fit), sqrt(diag(vcov(fit))).
    np.testing.assert_allclose(result.params[expected.index], expected["coef"], rtol=1e-6)
    np.testing.assert_allclose(result.bse[expected.index], expected["se"], rtol=1e-6)


def test_treatment_table_matches_r(r_data, r_expected):
    scores, clinical = r_data
    table = treatment_analysis(scores, clinical, n_boot=200, seed=1)
    assert list(table.columns) == list(COLUMNS)
    rows = table.set_index("term")
    expected = r_expected.drop(index="auc")
    # Reference: R exp(coef), exp(confint.default(fit)), summary(fit) Pr(>|z|).
    for ours, theirs in (("estimate", "or"), ("ci_low", "ci_low"), ("ci_high", "ci_high")):
        np.testing.assert_allclose(rows.loc[expected.index, ours], expected[theirs], rtol=1e-6)
    np.testing.assert_allclose(rows.loc[expected.index, "p"], expected["p"], rtol=1e-5)
    assert table["term"].iloc[0] == "lr_per_sd"
    # Reference: R W/(n1·n0) of fitted(fit) via wilcox.test — the AUC of the fitted model.
    assert rows["auc"].iloc[0] == pytest.approx(r_expected.loc["auc", "coef"], rel=1e-9)
    assert (table["auc"] == table["auc"].iloc[0]).all() and (table["n"] == 150).all()
    low, high = rows["auc_ci_low"].iloc[0], rows["auc_ci_high"].iloc[0]
    assert 0.5 < low < rows["auc"].iloc[0] < high <= 1.0


def test_auc_is_sklearns_auc_of_the_fitted_probabilities(r_data):
    scores, clinical = r_data
    frame = clinical.assign(lr=scores["lr"])
    result = fit_logistic(response_design(frame), frame["response"])
    table = treatment_analysis(scores, clinical, n_boot=20)
    # Reference: sklearn.metrics.roc_auc_score(y, fitted probabilities).
    assert table["auc"].iloc[0] == pytest.approx(
        roc_auc_score(frame["response"], result.predict()), rel=1e-12
    )


def test_planted_odds_ratio_is_recovered():
    scores, clinical = simulate_response(600, seed=3)
    rows = treatment_analysis(scores, clinical, n_boot=100).set_index("term")
    # Known answer: the simulation's log odds ratios (tests/evaluation/_planted_cohort.py).
    assert rows.loc["lr_per_sd", "ci_low"] < np.exp(LOG_OR_LR) < rows.loc["lr_per_sd", "ci_high"]
    assert rows.loc["lr_per_sd", "p"] < 1e-6
    for level in ("surgery", "surgery+RT"):
        truth = np.exp(LOG_OR_TREATMENT[level] - LOG_OR_TREATMENT["RT"])
        term = f"treatment_{level}"
        assert rows.loc[term, "ci_low"] < truth < rows.loc[term, "ci_high"], term


def test_single_treatment_is_left_out_and_missing_response_dropped(caplog):
    scores, clinical = simulate_response(200, seed=4)
    clinical = clinical.assign(treatment="RT").astype({"response": float})
    clinical.loc[["P0001", "P0005"], "response"] = np.nan
    with caplog.at_level(logging.WARNING, logger="stromalens.evaluation.treatment"):
        table = treatment_analysis(scores, clinical, n_boot=20)
    assert not table["term"].str.startswith("treatment").any()
    assert (table["n"] == 198).all()
    dropped = [r for r in caplog.records if "left out for missing" in r.getMessage()]
    assert dropped and dropped[0].fields["patients"] == ["P0001", "P0005"]


def test_errors_name_the_problem():
    scores, clinical = simulate_response(60, seed=5)
    with pytest.raises(ValueError, match=r"clinical data lack column\(s\) \['response'\]"):
        treatment_analysis(scores, clinical.drop(columns="response"))
    with pytest.raises(ValueError, match=r"response takes one value \(1\) in all 60 patients"):
        treatment_analysis(scores, clinical.assign(response=1))
    with pytest.raises(ValueError, match="response must be 0/1"):
        treatment_analysis(scores, clinical.assign(response=2))
    bad = scores.copy()
    bad.loc["P0004", "lr"] = np.nan
    with pytest.raises(
        ValueError, match=r"non-finite lr predictions for 1 patient\(s\): \['P0004'\]"
    ):
        treatment_analysis(bad, clinical)
    with pytest.raises(ValueError, match=r"scores lack column\(s\) \['lr'\]"):
        treatment_analysis(scores.drop(columns="lr"), clinical)


def test_separation_is_logged_not_raised(caplog):
    scores, clinical = simulate_response(120, seed=6)
    # Every sacral tumour responds and no other does: the location terms separate the outcome.
    clinical = clinical.assign(response=(clinical["location"] == "sacrum").astype(int))
    with caplog.at_level(logging.WARNING, logger="stromalens.evaluation.treatment"):
        rows = treatment_analysis(scores, clinical, n_boot=20).set_index("term")
    assert any("logistic fit problem" in r.getMessage() for r in caplog.records)
    assert rows.loc["location_sacrum", "estimate"] > 1e3
    assert rows["auc"].iloc[0] == pytest.approx(1.0)
