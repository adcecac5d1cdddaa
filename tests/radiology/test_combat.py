"""ComBat against R sva::ComBat (reference/combat.R), and its leakage guarantees."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from stromalens.radiology import ComBat
from stromalens.radiology.combat import NotFittedError

REFERENCE = Path(__file__).parent / "reference"


@pytest.fixture(scope="module")
def data():
    frame = pd.read_csv(REFERENCE / "combat_input.csv", index_col=0)
    return frame.filter(regex="^f"), frame["site"], frame[["age", "sex"]]


@pytest.mark.parametrize(
    ("case", "settings", "with_covariates"),
    [
        ("parametric", {}, False),
        ("parametric_covariates", {}, True),
        ("nonparametric_covariates", {"parametric": False}, True),
        ("mean_only", {"mean_only": True}, False),
    ],
)
def test_matches_r_sva(data, case, settings, with_covariates):
    X, sites, cov = data
    expected = pd.read_csv(REFERENCE / f"combat_{case}.csv", index_col=0)
    got = ComBat(**settings).fit_transform(X, sites, cov if with_covariates else None)
    assert list(got.columns) == list(expected.columns)
    assert np.abs(got.to_numpy() - expected.to_numpy()).max() <= 1e-6


@pytest.mark.parametrize(
    ("case", "settings", "with_covariates"),
    [
        ("missing_parametric_covariates", {}, True),
        ("missing_nonparametric", {"parametric": False}, False),
    ],
)
def test_missing_values_match_r_sva(case, settings, with_covariates):
    """Per-feature availability: sva's NA branch (reference/combat.R, combat_input_missing.csv:
    ``ComBat(dat = t(X), batch = site, mod = model.matrix(~ age + sex), par.prior = TRUE)`` and
    ``ComBat(dat = t(X), batch = site, mod = NULL, par.prior = FALSE)`` with NAs)."""
    frame = pd.read_csv(REFERENCE / "combat_input_missing.csv", index_col=0)
    X, sites, cov = frame.filter(regex="^f"), frame["site"], frame[["age", "sex"]]
    assert X.isna().any().sum() == 8
    expected = pd.read_csv(REFERENCE / f"combat_{case}.csv", index_col=0)
    got = ComBat(**settings).fit_transform(X, sites, cov if with_covariates else None)
    assert (got.isna() == expected.isna()).all().all()  # missing stays missing
    assert np.nanmax(np.abs(got.to_numpy() - expected.to_numpy())) <= 1e-6


def test_a_feature_missing_at_a_site_is_named(data):
    X, sites, _ = data
    X = X.copy()
    X.loc[sites == "C", "f02"] = np.nan
    with pytest.raises(ValueError, match="f02 at site C"):
        ComBat().fit(X, sites)


def _fitted_state(model: ComBat) -> dict:
    return {
        k: (v.copy() if hasattr(v, "copy") else v)
        for k, v in vars(model).items()
        if k.endswith("_")
    }


def _assert_same_state(a: dict, b: dict):
    assert a.keys() == b.keys()
    for key in a:
        va, vb = a[key], b[key]
        if isinstance(va, pd.DataFrame | pd.Series | pd.Index):
            assert va.equals(vb), key
        elif isinstance(va, np.ndarray):
            assert np.array_equal(va, vb), key
        else:
            assert va == vb, key


def test_transform_never_changes_the_fitted_model(data):
    X, sites, cov = data
    train = np.arange(len(X)) % 3 != 0
    model = ComBat().fit(X[train], sites[train], cov[train])
    before = _fitted_state(model)
    model.transform(X[~train], sites[~train], cov[~train])
    model.transform(X[~train] * 100 + 7, sites[~train], cov[~train])  # wildly different test rows
    _assert_same_state(before, _fitted_state(model))


def test_fit_on_fold_a_ignores_fold_b(data):
    """Fitting on fold A gives the same model whatever fold B's rows hold."""
    X, sites, cov = data
    fold_a = np.arange(len(X)) % 2 == 0
    model = ComBat().fit(X[fold_a], sites[fold_a], cov[fold_a])
    X_other = X.copy()
    X_other.loc[~fold_a] = np.random.default_rng(0).normal(50, 9, ((~fold_a).sum(), X.shape[1]))
    other = ComBat().fit(X_other[fold_a], sites[fold_a], cov[fold_a])
    _assert_same_state(_fitted_state(model), _fitted_state(other))
    # and transforming A's rows does not depend on B's rows either
    pd.testing.assert_frame_equal(
        model.transform(X[fold_a], sites[fold_a], cov[fold_a]),
        other.transform(X_other[fold_a], sites[fold_a], cov[fold_a]),
    )


def test_transform_of_training_rows_equals_fit_transform(data):
    X, sites, cov = data
    model = ComBat().fit(X, sites, cov)
    one_row = model.transform(X.iloc[[5]], sites.iloc[[5]], cov.iloc[[5]])
    pd.testing.assert_frame_equal(one_row, model.transform(X, sites, cov).iloc[[5]])


def test_covariates_are_used_at_transform_time(data):
    X, sites, cov = data
    model = ComBat().fit(X, sites, cov)
    older = cov.copy()
    older["age"] += 10
    assert not np.allclose(model.transform(X, sites, cov), model.transform(X, sites, older))
    with pytest.raises(ValueError, match="covariates"):
        model.transform(X, sites)
    unknown = cov.assign(sex="X")
    with pytest.raises(ValueError, match="'sex' has levels \\['X'\\]"):
        model.transform(X, sites, unknown)


def test_site_effect_is_removed(data):
    X, sites, _ = data
    harmonised = ComBat().fit_transform(X, sites)
    means = harmonised.groupby(sites.to_numpy()).mean()
    raw_means = X.groupby(sites.to_numpy()).mean()
    assert means.std().mean() < 0.2 * raw_means.std().mean()


def test_unseen_site_policies(data, caplog):
    X, sites, _ = data
    seen = sites != "C"
    pooled = ComBat().fit(X[seen], sites[seen])
    with caplog.at_level("INFO", logger="stromalens"):
        out = pooled.transform(X[~seen], sites[~seen])
    assert "unseen" in caplog.text
    np.testing.assert_allclose(out.to_numpy(), X[~seen].to_numpy())  # no site correction
    with pytest.raises(ValueError, match="not seen in fit"):
        ComBat(unseen_site="error").fit(X[seen], sites[seen]).transform(X[~seen], sites[~seen])
    estimated = ComBat(unseen_site="estimate").fit(X[seen], sites[seen])
    est = estimated.transform(X[~seen], sites[~seen])
    reference = estimated.transform(X[seen], sites[seen]).mean()
    # the new site is moved towards the fitted sites' harmonised mean
    assert (est.mean() - reference).abs().mean() < (X[~seen].mean() - reference).abs().mean()


def test_bad_input_is_named(data):
    X, sites, cov = data
    with pytest.raises(NotFittedError):
        ComBat().transform(X, sites)
    with pytest.raises(ValueError, match="unseen_site='maybe'"):
        ComBat(unseen_site="maybe").fit(X, sites)
    with pytest.raises(ValueError, match="at least two sites"):
        ComBat().fit(X, ["A"] * len(X))
    with pytest.raises(ValueError, match="one label per sample"):
        ComBat().fit(X, sites[:-1])
    bad = X.copy()
    bad.iloc[0, 3] = np.inf
    with pytest.raises(ValueError, match="infinite values in features.*f03"):
        ComBat().fit(bad, sites)
    confounded = pd.DataFrame({"hospital": sites.to_numpy()}, index=X.index)
    with pytest.raises(ValueError, match="confounded"):
        ComBat().fit(X, sites, confounded)
    with pytest.raises(ValueError, match="missing"):
        ComBat().fit(X, sites).transform(X.drop(columns="f01"), sites)


def test_constant_feature_passes_through(data):
    X, sites, _ = data
    X = X.assign(flat=1.0)
    out = ComBat().fit_transform(X, sites)
    assert (out["flat"] == 1.0).all()
    assert ComBat().fit(X, sites).constant_features_ == ["flat"]
