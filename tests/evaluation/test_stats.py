"""The statistical kernels against scipy (reference calls beside the expected values)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from scipy import stats as sps

from stromalens.evaluation.stats import (
    bh_fdr,
    bootstrap_ci,
    bootstrap_p,
    calibration,
    corrected_resampled_t,
    paired_difference,
    pearson_ci,
    permutation_p,
)


def _correlated(n: int, rho: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=n)
    y = rho * x + np.sqrt(1.0 - rho**2) * rng.normal(size=n)
    return x, y


@pytest.mark.parametrize("n, rho, alpha", [(8, 0.6, 0.05), (50, -0.3, 0.05), (200, 0.1, 0.1)])
def test_pearson_ci_matches_scipy(n, rho, alpha):
    x, y = _correlated(n, rho, seed=n)
    out = pearson_ci(x, y, alpha=alpha)
    # Reference: scipy.stats.pearsonr(x, y) and its Fisher-z confidence_interval(1 - alpha).
    ref = sps.pearsonr(x, y)
    ci = ref.confidence_interval(confidence_level=1.0 - alpha)
    assert out["r"] == pytest.approx(ref.statistic, rel=1e-12)
    assert out["p"] == pytest.approx(ref.pvalue, rel=1e-9)
    assert out["ci_low"] == pytest.approx(ci.low, rel=1e-12)
    assert out["ci_high"] == pytest.approx(ci.high, rel=1e-12)
    assert out["n"] == n


def test_pearson_ci_drops_non_finite_pairs():
    x, y = _correlated(30, 0.5, seed=1)
    x_bad, y_bad = x.copy(), y.copy()
    x_bad[[2, 7]] = np.nan
    y_bad[11] = np.inf
    keep = np.ones(30, bool)
    keep[[2, 7, 11]] = False
    out = pearson_ci(x_bad, y_bad)
    # Reference: scipy.stats.pearsonr on the 27 finite pairs.
    assert out["n"] == 27
    assert out["r"] == pytest.approx(sps.pearsonr(x[keep], y[keep]).statistic, rel=1e-12)


def test_pearson_ci_errors_and_constant_input():
    with pytest.raises(ValueError, match="at least 4 finite pairs, got 3"):
        pearson_ci([1.0, 2.0, 3.0, np.nan], [1.0, 2.0, 4.0, 5.0])
    with pytest.raises(ValueError, match="differ in length"):
        pearson_ci([1.0, 2.0, 3.0, 4.0], [1.0, 2.0, 3.0])
    out = pearson_ci([1.0, 1.0, 1.0, 1.0, 1.0], [1.0, 2.0, 3.0, 4.0, 5.0])
    assert np.isnan(out["r"]) and np.isnan(out["ci_low"]) and out["n"] == 5


def test_bootstrap_ci_reproduces_scipy_percentile_bootstrap():
    x, y = _correlated(40, 0.5, seed=3)

    def r(a, b):
        return np.corrcoef(a, b)[0, 1]

    # 600 replicates: more than one internal batch of draws.
    low, high = bootstrap_ci(r, x, y, n_boot=600, seed=7, alpha=0.1)
    # Reference: the same index draws in scipy (paired, percentile, one batch).
    ref = sps.bootstrap(
        (x, y),
        r,
        paired=True,
        vectorized=False,
        method="percentile",
        n_resamples=600,
        confidence_level=0.9,
        rng=np.random.default_rng(7),
    ).confidence_interval
    assert low == pytest.approx(ref.low, rel=1e-12)
    assert high == pytest.approx(ref.high, rel=1e-12)


def test_bootstrap_ci_covers_the_mean_and_validates():
    values = np.random.default_rng(0).normal(5.0, 1.0, 400)
    low, high = bootstrap_ci(np.mean, values, n_boot=1000, seed=0)
    # Known answer: the normal-theory half-width is 1.96·σ/√n ≈ 0.098.
    assert low < values.mean() < high
    assert high - low == pytest.approx(2 * 1.96 / np.sqrt(400), rel=0.15)
    with pytest.raises(ValueError, match="differ in length"):
        bootstrap_ci(np.mean, np.ones(3), np.ones(4))
    with pytest.raises(ValueError, match="n_boot"):
        bootstrap_ci(np.mean, np.ones(3), n_boot=0)


def test_permutation_p_matches_exact_enumeration():
    x = np.array([0.3, 1.2, -0.4, 2.2, 0.9, -1.1, 0.1])
    y = np.array([0.1, 0.8, 0.3, 1.5, 0.2, -0.6, 0.9])
    # Reference: exact enumeration of all 7! = 5040 pairings (scipy.stats.permutation_test with
    # permutation_type="pairings", n_resamples=np.inf gives the same number but takes gigabytes).
    r_obs = abs(np.corrcoef(x, y)[0, 1])
    count = sum(
        abs(np.corrcoef(x, y[list(order)])[0, 1]) >= r_obs - 1e-12
        for order in itertools.permutations(range(7))
    )
    exact = count / 5040
    p = permutation_p(x, y, n_perm=20000, seed=1)
    # Monte-Carlo error of p ≈ sqrt(p(1−p)/B) ≈ 0.003.
    assert p == pytest.approx(exact, abs=0.012)


def test_permutation_p_plus_one_correction_and_null():
    x = np.arange(40.0)
    assert permutation_p(x, 2 * x + 1, n_perm=99, seed=0) == pytest.approx(0.01)
    rng = np.random.default_rng(5)
    # Under the null p is uniform: its mean over many data sets is ≈ 0.5.
    ps = [
        permutation_p(rng.normal(size=30), rng.normal(size=30), n_perm=199, seed=i)
        for i in range(60)
    ]
    assert 0.35 < np.mean(ps) < 0.65
    assert np.isnan(permutation_p(x, np.ones(40), n_perm=10))  # r undefined


def test_bh_fdr_matches_scipy():
    p = np.random.default_rng(2).uniform(size=50) ** 3
    # Reference: scipy.stats.false_discovery_control(p, method="bh").
    np.testing.assert_allclose(bh_fdr(p), sps.false_discovery_control(p, method="bh"), rtol=1e-12)
    # Known answer (hand computation): m = 3, sorted 0.01, 0.03, 0.04 → 0.03, 0.04, 0.04.
    np.testing.assert_allclose(bh_fdr([0.01, 0.04, 0.03]), [0.03, 0.04, 0.04])


def test_bh_fdr_keeps_nan_out_of_m():
    p = np.array([0.01, np.nan, 0.04, 0.03])
    q = bh_fdr(p)
    assert np.isnan(q[1])
    # Reference: scipy on the three finite p-values.
    np.testing.assert_allclose(q[[0, 2, 3]], sps.false_discovery_control([0.01, 0.04, 0.03]))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        bh_fdr([0.5, 1.5])


def test_calibration_matches_linregress():
    y_pred, noise = _correlated(60, 0.0, seed=4)
    y_true = 0.3 + 0.7 * y_pred + 0.2 * noise
    slope, intercept = calibration(y_true, y_pred)
    # Reference: scipy.stats.linregress(y_pred, y_true) — observed on predicted.
    ref = sps.linregress(y_pred, y_true)
    assert slope == pytest.approx(ref.slope, rel=1e-12)
    assert intercept == pytest.approx(ref.intercept, rel=1e-12)
    # Known answer: a perfectly calibrated predictor.
    assert calibration(y_pred, y_pred) == pytest.approx((1.0, 0.0))
    y_true[0] = np.nan
    ref = sps.linregress(y_pred[1:], y_true[1:])
    assert calibration(y_true, y_pred)[0] == pytest.approx(ref.slope, rel=1e-12)


def _r_difference(y, a, b):
    return sps.pearsonr(y, a).statistic - sps.pearsonr(y, b).statistic


def test_paired_difference_matches_scipy_bootstrap():
    rng = np.random.default_rng(3)
    y = rng.normal(size=80)
    a = y + rng.normal(scale=0.8, size=80)
    b = y + rng.normal(scale=1.0, size=80)
    out = paired_difference(_r_difference, y, a, b, n_boot=300, seed=5)
    # Reference: scipy.stats.bootstrap((y, a, b), Δr, paired=True, method="percentile",
    # n_resamples=300, rng=np.random.default_rng(5)): the same draws, the same interval.
    ref = sps.bootstrap(
        (y, a, b),
        _r_difference,
        paired=True,
        vectorized=False,
        method="percentile",
        n_resamples=300,
        rng=np.random.default_rng(5),
    )
    assert out["ci_low"] == pytest.approx(ref.confidence_interval.low, rel=1e-12)
    assert out["ci_high"] == pytest.approx(ref.confidence_interval.high, rel=1e-12)
    assert out["estimate"] == pytest.approx(_r_difference(y, a, b), rel=1e-12)
    d = ref.bootstrap_distribution
    # Reference: the two-sided bootstrap p, 2·min(1 + #{d* ≤ 0}, 1 + #{d* ≥ 0}) / (B + 1).
    expected_p = min(1.0, 2 * min(1 + (d <= 0).sum(), 1 + (d >= 0).sum()) / (d.size + 1))
    assert out["p"] == pytest.approx(expected_p, rel=1e-12)
    assert out["within_noise"] == bool(out["ci_low"] <= 0 <= out["ci_high"])
    assert out["n"] == 80


def test_paired_difference_cancels_shared_noise():
    # Two predictors that share their error patient by patient differ by a constant: the paired
    # interval is a point although each one's own interval is wide.
    rng = np.random.default_rng(0)
    x = rng.normal(size=40)
    out = paired_difference(lambda a, b: np.mean(a) - np.mean(b), x + 0.5, x, n_boot=200)
    assert out["ci_low"] == pytest.approx(0.5) and out["ci_high"] == pytest.approx(0.5)
    assert out["within_noise"] is False and out["p"] == pytest.approx(2 / 201)
    same = paired_difference(lambda a, b: np.mean(a) - np.mean(b), x, x, n_boot=50)
    assert same["within_noise"] is True and same["p"] == 1.0


def test_bootstrap_p_and_errors():
    # Known answer: 1 of 4 replicates ≤ 0, 3 ≥ 0 → 2·min(2, 4)/5.
    assert bootstrap_p([0.1, 0.2, 0.3, -0.1]) == pytest.approx(0.8)
    assert np.isnan(bootstrap_p([np.nan]))
    with pytest.raises(ValueError, match="arrays differ in length"):
        paired_difference(np.subtract, np.ones(3), np.ones(4))
    with pytest.raises(ValueError, match="n_boot must be ≥ 1, got 0"):
        paired_difference(np.subtract, np.ones(3), np.ones(3), n_boot=0)


@pytest.mark.parametrize("ratio", [1e-12, 0.25, 1.0 / 3.0])
def test_corrected_resampled_t_is_scipys_one_sample_t_widened_by_the_correction(ratio):
    # the corrected variance is (1/J + n2/n1)·σ̂² = (1 + J·n2/n1)·σ̂²/J, so against
    # scipy.stats.ttest_1samp (σ̂²/J): t shrinks and the interval widens by sqrt(1 + J·ratio)
    d = np.random.default_rng(3).normal(0.05, 0.1, size=15)
    out = corrected_resampled_t(d, n_train=100.0, n_test=100.0 * ratio)
    ref = sps.ttest_1samp(d, 0.0)
    ci = ref.confidence_interval(0.95)
    widen = np.sqrt(1.0 + len(d) * ratio)
    assert out["estimate"] == pytest.approx(d.mean(), abs=1e-15)
    assert out["t"] == pytest.approx(ref.statistic / widen, rel=1e-12)
    p_ref = 2 * sps.t.sf(abs(ref.statistic) / widen, len(d) - 1)
    assert out["p"] == pytest.approx(p_ref, rel=1e-10)
    half = out["ci_high"] - out["estimate"]
    assert half == pytest.approx((ci.high - d.mean()) * widen, rel=1e-10)
    assert out["df"] == len(d) - 1 and out["splits"] == len(d)
    if ratio < 1e-9:  # no correction: scipy's own test
        assert out["p"] == pytest.approx(ref.pvalue, rel=1e-9)
        assert (out["ci_low"], out["ci_high"]) == pytest.approx((ci.low, ci.high), rel=1e-9)


def test_corrected_resampled_t_known_answer_one_5_fold_cv():
    # the worked example of CBIG_corrected_resampled_ttest_kfoldCV.m (Thomas Yeo lab, MIT):
    # accuracies [0.5 0.6 0.9 0.4 0.6] against 0.5, one 5-fold CV (n2/n1 = 1/4); by hand:
    # mean 0.1, σ̂² = 0.14/4 = 0.035, var = (1/5 + 1/4)·0.035 = 0.01575, t = 0.1/0.12550 =
    # 0.79682, p = 2·t_4.sf(0.79682) = 0.47018
    out = corrected_resampled_t(np.array([0.5, 0.6, 0.9, 0.4, 0.6]) - 0.5, n_train=4, n_test=1)
    assert out["se"] == pytest.approx(np.sqrt(0.01575), rel=1e-12)
    assert out["t"] == pytest.approx(0.79682, abs=1e-5)
    assert out["p"] == pytest.approx(0.47018, abs=1e-5)


def test_corrected_resampled_t_drops_non_finite_splits_and_validates():
    out = corrected_resampled_t([0.1, np.nan, 0.3], n_train=[40, 40, 41], n_test=[10, 10, 9])
    assert out["splits"] == 2 and out["estimate"] == pytest.approx(0.2)
    one = corrected_resampled_t([0.1, np.nan], n_train=40, n_test=10)
    assert one["estimate"] == pytest.approx(0.1) and np.isnan(one["ci_low"])
    with pytest.raises(ValueError, match="sizes must be > 0"):
        corrected_resampled_t([0.1, 0.2], n_train=0, n_test=10)
