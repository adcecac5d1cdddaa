"""Small statistical kernels shared by the evaluation: Pearson's r with its Fisher-z interval,
the paired percentile bootstrap (an interval, and a paired difference with its two-sided
bootstrap p), the corrected resampled t of cross-validated differences, the permutation p-value
of r, Benjamini–Hochberg q-values and the calibration line.

Every function takes plain arrays, drops nothing silently except where it says so (non-finite
pairs in :func:`pearson_ci`, :func:`permutation_p` and :func:`calibration`; NaN p-values in
:func:`bh_fdr`), and is tested against scipy (``tests/evaluation/test_stats.py``).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from scipy import stats as sps

#: Rows of bootstrap indices drawn at a time. The draws are consecutive calls on one generator,
#: which yield the same stream as one (n_boot, n) draw, so results do not depend on the batch.
_BOOT_BATCH = 256


def _finite_pairs(x, y) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(x, dtype=float).ravel()
    y = np.asarray(y, dtype=float).ravel()
    if x.shape != y.shape:
        raise ValueError(f"x and y differ in length: {x.size} vs {y.size}")
    ok = np.isfinite(x) & np.isfinite(y)
    return x[ok], y[ok]


def _r(x: np.ndarray, y: np.ndarray) -> float:
    """Pearson's r, NaN when either side is constant (r is undefined there)."""
    xc, yc = x - x.mean(), y - y.mean()
    denom = np.sqrt((xc @ xc) * (yc @ yc))
    if denom <= 0.0:
        return float("nan")
    return float(np.clip((xc @ yc) / denom, -1.0, 1.0))


def pearson_ci(x, y, alpha: float = 0.05) -> dict[str, float]:
    r"""Pearson's r with its Fisher-z confidence interval and two-sided p-value.

    .. math::

        z = \operatorname{artanh} r, \qquad
        \mathrm{CI}_{1-\alpha} = \tanh\!\left(z \pm \frac{z_{1-\alpha/2}}{\sqrt{n-3}}\right),
        \qquad t = r\sqrt{\frac{n-2}{1-r^2}} \sim t_{n-2}\ \text{under}\ \rho = 0.

    Fisher (1921) *Metron* 1:3–32. Pairs where either value is not finite are dropped first; ``n``
    is the number of pairs used. When either side is constant r is undefined and every number but
    ``n`` is NaN.

    Raises
    ------
    ValueError
        Fewer than 4 finite pairs (the interval needs n − 3 > 0 degrees of freedom).

    Example
    -------
    >>> out = pearson_ci([1, 2, 3, 4, 5], [1.1, 1.9, 3.2, 3.9, 5.3])
    >>> round(out["r"], 3), out["n"]
    (0.995, 5)
    """
    x, y = _finite_pairs(x, y)
    n = x.size
    if n < 4:
        raise ValueError(f"Pearson CI needs at least 4 finite pairs, got {n}")
    r = _r(x, y)
    if not np.isfinite(r):
        return {"r": r, "ci_low": r, "ci_high": r, "p": r, "n": n}
    z = np.arctanh(r) if abs(r) < 1.0 else np.sign(r) * np.inf
    half = sps.norm.ppf(1.0 - alpha / 2.0) / np.sqrt(n - 3)
    # Exact null distribution of r is a symmetric beta on [-1, 1] — the same as the t test.
    dist = sps.beta(n / 2.0 - 1.0, n / 2.0 - 1.0, loc=-1.0, scale=2.0)
    p = float(min(1.0, 2.0 * dist.sf(abs(r))))
    return {
        "r": r,
        "ci_low": float(np.tanh(z - half)),
        "ci_high": float(np.tanh(z + half)),
        "p": p,
        "n": int(n),
    }


def _bootstrap_distribution(
    statistic: Callable[..., float], arrays: list[np.ndarray], n_boot: int, seed: int
) -> np.ndarray:
    n = arrays[0].shape[0]
    rng = np.random.default_rng(seed)
    values = np.empty(n_boot)
    for start in range(0, n_boot, _BOOT_BATCH):
        rows = min(_BOOT_BATCH, n_boot - start)
        # Same draw as scipy.stats.bootstrap(paired=True): rng.integers(0, n, (n_boot, n)).
        index = rng.integers(0, n, (rows, n))
        for j, i in enumerate(index):
            values[start + j] = statistic(*(a[i] for a in arrays))
    return values


def bootstrap_ci(
    statistic: Callable[..., float],
    *arrays,
    n_boot: int = 2000,
    seed: int = 0,
    alpha: float = 0.05,
) -> tuple[float, float]:
    r"""Percentile bootstrap interval of ``statistic(*arrays)``, resampling rows (paired).

    Each of ``n_boot`` replicates draws n row indices with replacement and applies the same
    indices to every array, so paired data (truth and prediction, two models' scores of the same
    patients) stay paired. The interval is

    .. math:: \left[\hat\theta^*_{(\alpha/2)},\ \hat\theta^*_{(1-\alpha/2)}\right]

    the empirical quantiles (linear interpolation) of the replicates (Efron & Tibshirani 1993,
    *An Introduction to the Bootstrap*, ch. 13). Replicates where the statistic is not finite
    (e.g. r of a resample with a constant column) are left out of the quantiles; if none is
    finite the interval is NaN. With the same ``seed`` the replicates are exactly those of
    ``scipy.stats.bootstrap(arrays, statistic, paired=True, method="percentile",
    rng=np.random.default_rng(seed))``.

    Example
    -------
    >>> low, high = bootstrap_ci(np.mean, np.arange(20.0), n_boot=500)
    >>> low < 9.5 < high
    True
    """
    if not arrays:
        raise ValueError("bootstrap_ci needs at least one array")
    if n_boot < 1:
        raise ValueError(f"n_boot must be ≥ 1, got {n_boot}")
    arrays = [np.asarray(a) for a in arrays]
    n = arrays[0].shape[0]
    lengths = {a.shape[0] for a in arrays}
    if len(lengths) > 1:
        raise ValueError(f"arrays differ in length: {sorted(lengths)}")
    if n < 2:
        raise ValueError(f"bootstrap needs at least 2 rows, got {n}")
    values = _bootstrap_distribution(statistic, arrays, n_boot, seed)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return float("nan"), float("nan")
    low, high = np.quantile(values, [alpha / 2.0, 1.0 - alpha / 2.0])
    return float(low), float(high)


def bootstrap_p(differences) -> float:
    r"""Two-sided bootstrap p-value of H0: difference = 0 from bootstrap replicates d*.

    .. math:: p = \min\left\{1,\ \frac{2\,\min(1 + \#\{d^* \le 0\},\ 1 + \#\{d^* \ge 0\})}
              {B + 1}\right\}

    the percentile-interval test inverted: p < α exactly when the (1 − α) percentile interval
    excludes 0, up to the +1s, which keep p above 0 (Efron & Tibshirani 1993, ch. 16;
    Davison & Hinkley 1997, *Bootstrap Methods*, §4.4). Non-finite replicates are left out; NaN
    when none is finite.

    Example
    -------
    >>> bootstrap_p(np.array([0.1, 0.2, 0.3, -0.1]))
    0.8
    """
    d = np.asarray(differences, float)
    d = d[np.isfinite(d)]
    if d.size == 0:
        return float("nan")
    tail = min(np.sum(d <= 0) + 1, np.sum(d >= 0) + 1)
    return float(min(1.0, 2.0 * tail / (d.size + 1)))


def paired_difference(
    statistic: Callable[..., float],
    *arrays,
    n_boot: int = 2000,
    seed: int = 0,
    alpha: float = 0.05,
) -> dict[str, float | bool]:
    r"""A paired difference Δ = ``statistic(*arrays)`` (e.g. r(y, ŷ_A) − r(y, ŷ_B) on the same
    patients) with its percentile bootstrap interval and two-sided bootstrap p.

    Rows (patients) are resampled once per replicate and the same rows enter both sides of
    the difference, so what the patients share cancels: the interval is that of the paired
    difference, narrower than the two marginal intervals suggest when the models agree patient
    by patient (Efron & Tibshirani 1993, ch. 13). Replicates are those of :func:`bootstrap_ci`
    (the same ``seed`` gives the same interval); p is :func:`bootstrap_p`. ``within_noise`` is
    True when the interval spans 0 (or is undefined): the data do not tell the two apart.

    Returns
    -------
    dict
        ``estimate``, ``ci_low``, ``ci_high``, ``p``, ``within_noise``, ``n``.

    Example
    -------
    >>> rng = np.random.default_rng(0)
    >>> a, b = rng.normal(size=50), rng.normal(size=50)
    >>> out = paired_difference(lambda x, y: np.mean(x - y), a + 1.0, a, n_boot=200)
    >>> round(out["estimate"], 6), out["within_noise"]
    (1.0, False)
    """
    if not arrays:
        raise ValueError("paired_difference needs at least one array")
    if n_boot < 1:
        raise ValueError(f"n_boot must be ≥ 1, got {n_boot}")
    arrays = [np.asarray(a) for a in arrays]
    lengths = {a.shape[0] for a in arrays}
    if len(lengths) > 1:
        raise ValueError(f"arrays differ in length: {sorted(lengths)}")
    n = arrays[0].shape[0]
    if n < 2:
        raise ValueError(f"bootstrap needs at least 2 rows, got {n}")
    estimate = float(statistic(*arrays))
    values = _bootstrap_distribution(statistic, arrays, n_boot, seed)
    finite = values[np.isfinite(values)]
    if finite.size:
        low, high = (float(v) for v in np.quantile(finite, [alpha / 2.0, 1.0 - alpha / 2.0]))
    else:
        low = high = float("nan")
    spans = not (low > 0.0 or high < 0.0)  # NaN bounds: undefined, so not a finding either
    return {
        "estimate": estimate,
        "ci_low": low,
        "ci_high": high,
        "p": bootstrap_p(finite),
        "within_noise": bool(spans),
        "n": int(n),
    }


def corrected_resampled_t(differences, n_train, n_test, alpha: float = 0.05) -> dict[str, float]:
    r"""The mean of per-split differences d_1..d_J of a cross-validation (one per fold of each
    repeat, e.g. r(A) − r(B) on the fold's held-out patients) with Nadeau and Bengio's
    corrected resampled t interval:

    .. math::

        \bar d = \frac1J \sum_j d_j, \qquad
        \widehat{\mathrm{var}}(\bar d) = \left(\frac1J + \frac{n_2}{n_1}\right) \hat\sigma^2,
        \qquad \bar d \pm t_{1-\alpha/2,\,J-1}\,\sqrt{\widehat{\mathrm{var}}(\bar d)},

    :math:`\hat\sigma^2` the sample variance of the d_j (ddof 1), :math:`n_1, n_2` the mean
    training and test sizes (Nadeau & Bengio 2003, *Mach. Learn.* 52:239–281; for repeated
    k-fold CV, J = k·R and n₂/n₁ ≈ 1/(k − 1), Bouckaert & Frank 2004, *PAKDD*, LNCS 3056:3–12).

    Why not the plain t over the J splits: their training sets overlap, so the d_j are
    positively correlated and σ̂²/J underestimates the variance of d̄ (a t test with it rejects
    far too often). The n₂/n₁ term is the correction for that correlation; it also brings in
    what differs between fits on different training sets, which a patient bootstrap of one
    set of predictions does not see. With n₂/n₁ = 0 this is the one-sample t test of the d_j
    (``scipy.stats.ttest_1samp``). Non-finite d_j (a split where a model has no predictions)
    are left out; fewer than 2 finite ones give NaN bounds.

    Returns
    -------
    dict
        ``estimate`` (d̄), ``se``, ``ci_low``, ``ci_high``, ``t``, ``p`` (two-sided), ``df``,
        ``splits`` (J).

    Example
    -------
    >>> out = corrected_resampled_t([0.0, 0.1, 0.4, -0.1, 0.1], n_train=100, n_test=25)
    >>> round(out["estimate"], 3), round(out["se"], 4), round(out["p"], 3)
    (0.1, 0.1255, 0.47)
    """
    d = np.asarray(differences, float)
    d = d[np.isfinite(d)]
    n1, n2 = float(np.mean(n_train)), float(np.mean(n_test))
    if not (n1 > 0 and n2 > 0):
        raise ValueError(f"training and test sizes must be > 0, got {n1!r} and {n2!r}")
    nan = float("nan")
    out = dict.fromkeys(("se", "ci_low", "ci_high", "t", "p"), nan)
    out.update(
        estimate=float(d.mean()) if d.size else nan, df=float(d.size - 1), splits=int(d.size)
    )
    if d.size < 2:
        return out
    se = float(np.sqrt((1.0 / d.size + n2 / n1) * d.var(ddof=1)))
    half = float(sps.t.ppf(1.0 - alpha / 2.0, d.size - 1)) * se
    out.update(se=se, ci_low=out["estimate"] - half, ci_high=out["estimate"] + half)
    if se > 0:
        t = out["estimate"] / se
        out.update(t=float(t), p=float(2.0 * sps.t.sf(abs(t), d.size - 1)))
    return out


def permutation_p(x, y, n_perm: int = 2000, seed: int = 0) -> float:
    r"""Two-sided permutation p-value of Pearson's r, shuffling ``y`` (the predictions).

    .. math:: p = \frac{1 + \#\{b : |r^{*}_b| \ge |r|\}}{1 + B}

    The +1 counts the observed arrangement among the permutations, so p is never 0 and the test
    is exact at level α for any B (Phipson & Smyth 2010, *Stat. Appl. Genet. Mol. Biol.* 9:39).
    Non-finite pairs are dropped first; NaN when either side is constant.

    Example
    -------
    >>> permutation_p(np.arange(30.0), np.arange(30.0), n_perm=99)
    0.01
    """
    x, y = _finite_pairs(x, y)
    if x.size < 3:
        raise ValueError(f"permutation test needs at least 3 finite pairs, got {x.size}")
    if n_perm < 1:
        raise ValueError(f"n_perm must be ≥ 1, got {n_perm}")
    observed = _r(x, y)
    if not np.isfinite(observed):
        return float("nan")
    xc = (x - x.mean()) / np.linalg.norm(x - x.mean())
    yc = (y - y.mean()) / np.linalg.norm(y - y.mean())
    rng = np.random.default_rng(seed)
    hits = 0
    for start in range(0, n_perm, _BOOT_BATCH):
        rows = min(_BOOT_BATCH, n_perm - start)
        # (rows, n) independent shuffles; r of a shuffle is the dot product of unit vectors.
        order = rng.permuted(np.broadcast_to(np.arange(x.size), (rows, x.size)), axis=1)
        r_perm = yc[order] @ xc
        # A relative tolerance keeps permutations that reproduce |r| exactly (ties, e.g. the
        # identity) from being lost to rounding.
        hits += int(np.sum(np.abs(r_perm) >= abs(observed) * (1.0 - 1e-12)))
    return (1.0 + hits) / (1.0 + n_perm)


def bh_fdr(pvalues) -> np.ndarray:
    r"""Benjamini–Hochberg q-values (step-up false discovery rate).

    With the m finite p-values sorted, :math:`p_{(1)} \le \dots \le p_{(m)}`,

    .. math:: q_{(i)} = \min\!\left(1,\ \min_{j \ge i} \frac{m}{j}\, p_{(j)}\right)

    Benjamini & Hochberg (1995) *J. R. Stat. Soc. B* 57:289–300; the same numbers as
    ``scipy.stats.false_discovery_control(p, method="bh")``. NaN p-values stay NaN and do not
    count in m (a test that could not be run is not a test). Returns the input's shape.

    Example
    -------
    >>> bh_fdr([0.01, 0.04, 0.03]).round(3).tolist()
    [0.03, 0.04, 0.04]
    """
    p = np.asarray(pvalues, dtype=float)
    out = np.full(p.shape, np.nan)
    flat = p.ravel()
    ok = ~np.isnan(flat)
    if np.any((flat[ok] < 0) | (flat[ok] > 1)):
        raise ValueError(f"p-values must lie in [0, 1], got {flat[ok].min()}..{flat[ok].max()}")
    finite = flat[ok]
    m = finite.size
    if m == 0:
        return out
    order = np.argsort(finite)
    scaled = finite[order] * m / np.arange(1, m + 1)
    # Step-up: each q is the smallest scaled p at or above its rank.
    q_sorted = np.minimum(1.0, np.minimum.accumulate(scaled[::-1])[::-1])
    q = np.empty(m)
    q[order] = q_sorted
    out_flat = out.ravel()
    out_flat[ok] = q
    return out_flat.reshape(p.shape)


def calibration(y_true, y_pred) -> tuple[float, float]:
    r"""Calibration slope and intercept: OLS of the observed on the predicted values.

    .. math::

        y = a + b\,\hat y + \varepsilon, \qquad
        b = \frac{\operatorname{cov}(y, \hat y)}{\operatorname{var}(\hat y)}, \qquad
        a = \bar y - b\,\bar{\hat y}

    A calibrated predictor has b = 1, a = 0; b < 1 means predictions spread too widely
    (over-fitting), b > 1 too narrowly (Cox 1958, *Biometrika* 45:562–565; Van Calster et al.
    2019, *BMC Med.* 17:230). Non-finite pairs are dropped; NaN when the predictions are constant.

    Example
    -------
    >>> calibration([2.0, 4.0, 6.0], [1.0, 2.0, 3.0])
    (2.0, 0.0)
    """
    y, pred = _finite_pairs(y_true, y_pred)
    if y.size < 2:
        raise ValueError(f"calibration needs at least 2 finite pairs, got {y.size}")
    pc = pred - pred.mean()
    ss = pc @ pc
    if ss <= 0.0:
        return float("nan"), float("nan")
    slope = float(pc @ (y - y.mean()) / ss)
    return slope, float(y.mean() - slope * pred.mean())
