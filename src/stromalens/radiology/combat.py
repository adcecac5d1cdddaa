"""ComBat site harmonisation as a scikit-learn-style estimator, fitted on training patients only.

The model (Johnson, Li & Rabinovic 2007, *Biostatistics* 8:118) for feature ``g`` of sample ``j``
at site ``i`` is

    x_ijg = α_g + C_j β_g + γ_ig + δ_ig ε_ijg,      ε_ijg ~ N(0, σ_g²),

with protected biological covariates ``C``. ``fit`` estimates, exactly as R ``sva::ComBat``
(Leek et al., sva 3.x) does:

1. ``B̂ = (DᵀD)⁻¹ Dᵀ X`` on the design ``D = [site one-hot | covariates]``;
   ``α̂_g = Σ_i (n_i / n) B̂_ig`` and the pooled variance ``σ̂_g² = (1/n) Σ_j (x_jg − D_j B̂_g)²``;
2. standardised data ``z_jg = (x_jg − α̂_g − C_j β̂_g) / σ̂_g``;
3. per-site moments ``γ̂_ig`` (mean of z) and ``δ̂²_ig`` (variance, n_i − 1) and the
   empirical-Bayes priors ``γ_ig ~ N(γ̄_i, τ̄_i²)`` and ``δ²_ig ~ InvGamma(λ̄_i, θ̄_i)``
   (method of moments: ``λ̄ = (2s² + m²)/s²``, ``θ̄ = (m s² + m³)/s²``);
4. the posterior estimates, by the fixed-point iteration

       γ*_ig = (n_i τ̄² γ̂_ig + δ*²_ig γ̄) / (n_i τ̄² + δ*²_ig),
       δ*²_ig = (θ̄ + ½ Σ_j (z_ijg − γ*_ig)²) / (n_i/2 + λ̄ − 1),

   or, with ``parametric=False``, the non-parametric posterior means of ``γ`` and ``δ²`` under
   the empirical distribution of the other features' estimates.

**Missing values** (a sequence missing for some patients) are handled as ``sva::ComBat`` does
when ``dat`` has NAs: each feature's regression uses the samples that have it (``Beta.NA``), the
pooled variance becomes the sample variance of the available residuals (``rowVars(na.rm =
TRUE)``, denominator n − 1: sva's rule in this case), the site moments and the posterior sums run
over the available values, with ``n_i`` the count of them per feature. A feature needs at least
two values at every site (one at a ``mean_only`` fit). ``transform`` leaves a missing value
missing.

``transform`` then returns ``x*_ijg = σ̂_g (z_ijg − γ*_ig) / δ*_ig + α̂_g + C_j β̂_g``, using the
covariates of the samples it transforms (some ports ignore them at apply time). It never
changes a fitted attribute, so a fold's test patients cannot leak into the fitted model.

Sites unseen at fit time follow ``unseen_site``: ``"pooled"`` (default) applies the pooled
standardisation only, i.e. no site-specific correction (the model has nothing to say about that
site; a log line names the sites); ``"estimate"`` estimates the new site's ``γ*, δ*`` from its own
samples (at least two) under the fitted priors, without changing the fitted model; ``"error"``
raises ``ValueError``.

References
----------
Johnson WE, Li C, Rabinovic A. Adjusting batch effects in microarray expression data using
empirical Bayes methods. Biostatistics 2007;8:118–127.
Fortin J-P et al. Harmonization of cortical thickness measurements across scanners and sites.
NeuroImage 2018;167:104–120.

Example
-------
>>> combat = ComBat().fit(X_train, sites_train, covariates=age_sex_train)   # doctest: +SKIP
>>> X_test_h = combat.transform(X_test, sites_test, covariates=age_sex_test)  # doctest: +SKIP

The R call that the tests' expected values come from is in
``tests/radiology/reference/combat.R``: ``sva::ComBat(dat = t(X), batch = site,
mod = model.matrix(~ age + sex), par.prior = TRUE)``.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..logs import event, get_logger

log = get_logger(__name__)

UNSEEN_POLICIES = ("pooled", "estimate", "error")


class NotFittedError(ValueError):
    """``transform`` was called before ``fit``."""


class ComBat:
    """ComBat harmonisation (parametric or non-parametric empirical Bayes).

    Parameters
    ----------
    parametric : bool
        Parametric priors (``sva::ComBat(par.prior=TRUE)``); ``False`` for the non-parametric
        integration (``par.prior=FALSE``).
    mean_only : bool
        Adjust site means only, not variances (``mean.only=TRUE``).
    unseen_site : {"pooled", "estimate", "error"}
        What ``transform`` does with a site it has not seen in ``fit`` (see the module notes).
    conv : float
        Convergence tolerance of the parametric fixed-point iteration (sva uses 1e-4).
    max_iter : int
        Iteration limit of that fixed point.

    Attributes
    ----------
    sites_ : ndarray of the fitted site labels (sorted)
    features_ : Index of the feature names
    covariate_columns_ : list of the design's covariate columns (after dummy coding)
    covariate_levels_ : dict of categorical covariate → its levels (the first is the reference)
    grand_mean_ : Series (features) α̂
    beta_ : DataFrame (covariate columns × features) β̂
    var_pooled_ : Series (features) σ̂²
    gamma_hat_, delta_hat_ : DataFrame (sites × features) per-site moments of z
    gamma_star_, delta_star_ : DataFrame (sites × features) the empirical-Bayes estimates
    gamma_bar_, tau2_, a_prior_, b_prior_ : Series (sites) the priors' hyper-parameters
    n_per_site_ : Series (sites) training samples per site
    constant_features_ : list of features constant within some site; passed through unchanged
    """

    def __init__(
        self,
        parametric: bool = True,
        mean_only: bool = False,
        unseen_site: str = "pooled",
        conv: float = 1e-4,
        max_iter: int = 10_000,
    ):
        self.parametric = parametric
        self.mean_only = mean_only
        self.unseen_site = unseen_site
        self.conv = conv
        self.max_iter = max_iter

    # ------------------------------------------------------------------ fit
    def fit(self, X, sites, covariates=None) -> ComBat:
        """Estimate the site effects on training samples.

        Parameters
        ----------
        X : DataFrame (samples × features) or 2-D array
        sites : array-like (samples,) site labels
        covariates : DataFrame (samples × covariates) or None; numeric columns enter linearly,
            others (strings, categories, booleans) are dummy-coded against their first level.
        """
        if self.unseen_site not in UNSEEN_POLICIES:
            raise ValueError(
                f"unseen_site={self.unseen_site!r} is not one of {', '.join(UNSEEN_POLICIES)}"
            )
        X = _as_frame(X)
        sites = _as_sites(sites, len(X))
        values = X.to_numpy(dtype=float)
        if np.isinf(values).any():
            bad = X.columns[np.isinf(values).any(axis=0)].tolist()
            raise ValueError(f"X has infinite values in features {bad[:5]}")
        labels, counts = np.unique(sites, return_counts=True)
        if len(labels) < 2:
            raise ValueError(f"ComBat needs at least two sites; got {labels.tolist()}")
        if (counts < 2).any() and not self.mean_only:
            single = labels[counts < 2].tolist()
            raise ValueError(
                f"sites {single} have a single sample; their variance cannot be estimated "
                "(use mean_only=True or drop them)"
            )
        levels, cov = _covariate_design(covariates, X.index, None)
        n, n_batch = len(X), len(labels)
        batch = (sites[:, None] == labels[None, :]).astype(float)  # (n, B)
        design = np.hstack([batch, cov])  # (n, B + C)
        if np.linalg.matrix_rank(design) < design.shape[1]:
            raise ValueError(
                "the covariates are confounded with site (the design matrix is not of full "
                "rank); ComBat would remove the biology with the site effect"
            )

        # Features constant within a site are passed through unchanged, as sva does (a site
        # with a missing value of the feature does not count: R's var() is NA there).
        constant = np.zeros(values.shape[1], bool)
        for i in range(n_batch):
            rows = values[sites == labels[i]]
            if len(rows) > 1:
                constant |= rows.var(axis=0) == 0
        keep = ~constant
        dat = values[:, keep]  # (n, G)
        missing = bool(np.isnan(dat).any())
        if missing:
            _check_available(dat, sites, labels, X.columns[keep], 1 if self.mean_only else 2)

        B_hat = _least_squares(design, dat)  # (B + C, G)
        grand_mean = (counts / n) @ B_hat[:n_batch]  # (G,)
        resid = dat - design @ B_hat
        # sva: 1/n without NAs, rowVars(na.rm = TRUE) (n − 1, centred) with them
        var_pooled = np.nanvar(resid, axis=0, ddof=1) if missing else (resid**2).mean(axis=0)
        beta = B_hat[n_batch:]  # (C, G)
        stand_mean = grand_mean[None, :] + cov @ beta
        z = (dat - stand_mean) / np.sqrt(var_pooled)[None, :]

        gamma_hat = _least_squares(batch, z)  # (B, G) per-site means of the available z
        delta_hat = np.ones_like(gamma_hat)
        if not self.mean_only:
            for i in range(n_batch):
                delta_hat[i] = np.nanvar(z[sites == labels[i]], axis=0, ddof=1)
        gamma_bar = gamma_hat.mean(axis=1)
        tau2 = gamma_hat.var(axis=1, ddof=1)
        if self.mean_only:  # δ is fixed at 1; its prior is not used (and undefined)
            a_prior = b_prior = np.full(n_batch, np.nan)
        else:
            a_prior = np.array([_aprior(d) for d in delta_hat])
            b_prior = np.array([_bprior(d) for d in delta_hat])

        gamma_star = np.empty_like(gamma_hat)
        delta_star = np.ones_like(gamma_hat)
        for i in range(n_batch):
            zi = z[sites == labels[i]]
            g, d = self._posterior(
                zi, gamma_hat[i], delta_hat[i], gamma_bar[i], tau2[i], a_prior[i], b_prior[i]
            )
            gamma_star[i] = g
            delta_star[i] = d

        features = X.columns
        kept = features[keep]
        self.sites_ = labels
        self.features_ = features
        self.covariate_columns_ = list(levels["columns"])
        self.covariate_levels_ = dict(levels["levels"])
        self._covariate_names = list(levels["names"])
        self.n_per_site_ = pd.Series(counts, index=labels, name="n")
        self.constant_features_ = features[constant].tolist()
        self.grand_mean_ = pd.Series(grand_mean, index=kept)
        self.var_pooled_ = pd.Series(var_pooled, index=kept)
        self.beta_ = pd.DataFrame(beta, index=self.covariate_columns_, columns=kept)
        self.gamma_hat_ = pd.DataFrame(gamma_hat, index=labels, columns=kept)
        self.delta_hat_ = pd.DataFrame(delta_hat, index=labels, columns=kept)
        self.gamma_star_ = pd.DataFrame(gamma_star, index=labels, columns=kept)
        self.delta_star_ = pd.DataFrame(delta_star, index=labels, columns=kept)
        self.gamma_bar_ = pd.Series(gamma_bar, index=labels)
        self.tau2_ = pd.Series(tau2, index=labels)
        self.a_prior_ = pd.Series(a_prior, index=labels)
        self.b_prior_ = pd.Series(b_prior, index=labels)
        return self

    def _posterior(self, zi, g_hat, d_hat, g_bar, t2, a, b):
        """γ*, δ*² of one site from its standardised samples ``zi`` (n_i × G)."""
        if self.parametric:
            g, d = _it_sol(zi, g_hat, d_hat, g_bar, t2, a, b, self.conv, self.max_iter)
            if self.mean_only:
                g = _postmean(g_hat, g_bar, 1.0, 1.0, t2)
                d = np.ones_like(g)
            return g, d
        g, d = _int_eprior(zi, g_hat, d_hat)
        if self.mean_only:
            d = np.ones_like(g)
        return g, d

    # ------------------------------------------------------------ transform
    def transform(self, X, sites, covariates=None) -> pd.DataFrame:
        """Harmonise samples of fitted sites (``unseen_site`` decides for the others).

        Returns a DataFrame like ``X``; the fitted attributes are left untouched.
        """
        if not hasattr(self, "gamma_star_"):
            raise NotFittedError("this ComBat is not fitted yet; call fit(X, sites) first")
        X = _as_frame(X, self.features_)
        sites = _as_sites(sites, len(X))
        if list(X.columns) != list(self.features_):
            missing = [f for f in self.features_ if f not in X.columns]
            extra = [f for f in X.columns if f not in set(self.features_)]
            if missing or extra:
                raise ValueError(
                    f"X's features differ from the fitted ones: missing {missing[:5]}, "
                    f"unexpected {extra[:5]}"
                )
            X = X[self.features_]
        if self._covariate_names and covariates is None:
            raise ValueError(
                f"the model was fitted with covariates {self._covariate_names}; pass them "
                "for the samples to transform too"
            )
        levels = {"names": self._covariate_names, "levels": self.covariate_levels_}
        _, cov = _covariate_design(covariates, X.index, levels)
        kept = self.grand_mean_.index
        dat = X[kept].to_numpy(dtype=float)  # a missing value stays missing
        if np.isinf(dat).any():
            raise ValueError("X has infinite values")
        stand_mean = self.grand_mean_.to_numpy()[None, :] + cov @ self.beta_.to_numpy()
        sd = np.sqrt(self.var_pooled_.to_numpy())[None, :]
        z = (dat - stand_mean) / sd
        gamma = np.zeros_like(z)
        delta = np.ones_like(z)
        known = set(self.sites_.tolist())
        unseen = sorted({s for s in sites.tolist() if s not in known}, key=str)
        if unseen and self.unseen_site == "error":
            raise ValueError(f"sites {unseen} were not seen in fit (unseen_site='error')")
        for site in np.unique(sites):
            rows = sites == site
            if site in known:
                gamma[rows] = self.gamma_star_.loc[site].to_numpy()
                delta[rows] = self.delta_star_.loc[site].to_numpy()
            elif self.unseen_site == "estimate":
                gamma[rows], delta[rows] = self._estimate_new_site(z[rows], site)
        if unseen:
            event(
                log,
                "ComBat: sites unseen in fit",
                sites=unseen,
                policy=self.unseen_site,
                action="pooled standardisation only (no site correction)"
                if self.unseen_site == "pooled"
                else "site effect estimated from its own samples under the fitted priors",
            )
        out = (z - gamma) / np.sqrt(delta) * sd + stand_mean
        result = X.copy()
        result[kept] = out
        return result

    def fit_transform(self, X, sites, covariates=None) -> pd.DataFrame:
        """``fit`` then ``transform`` on the same samples (sva::ComBat's output)."""
        return self.fit(X, sites, covariates).transform(X, sites, covariates)

    def _estimate_new_site(self, zi: np.ndarray, site) -> tuple[np.ndarray, np.ndarray]:
        if len(zi) < 2:
            raise ValueError(
                f"unseen site {site!r} has {len(zi)} sample(s); 'estimate' needs at least 2"
            )
        g_hat = np.nanmean(zi, axis=0)
        d_hat = np.nanvar(zi, axis=0, ddof=1) if not self.mean_only else np.ones_like(g_hat)
        # Priors of a new site: the pooled hyper-parameters of the fitted sites.
        g_bar = float(self.gamma_bar_.mean())
        t2 = float(self.tau2_.mean())
        a, b = float(self.a_prior_.mean()), float(self.b_prior_.mean())
        return self._posterior(zi, g_hat, d_hat, g_bar, t2, a, b)


# ---------------------------------------------------------------- kernels
def _aprior(delta_hat: np.ndarray) -> float:
    m, s2 = delta_hat.mean(), delta_hat.var(ddof=1)
    return (2 * s2 + m**2) / s2


def _bprior(delta_hat: np.ndarray) -> float:
    m, s2 = delta_hat.mean(), delta_hat.var(ddof=1)
    return (m * s2 + m**3) / s2


def _postmean(g_hat, g_bar, n, d_star, t2):
    return (t2 * n * g_hat + d_star * g_bar) / (t2 * n + d_star)


def _postvar(sum2, n, a, b):
    return (0.5 * sum2 + b) / (n / 2.0 + a - 1.0)


def _it_sol(zi, g_hat, d_hat, g_bar, t2, a, b, conv, max_iter):
    """sva's ``it.sol``: alternate the posterior mean and variance until the relative change
    (signed, as sva computes it) is below ``conv``."""
    n = (~np.isnan(zi)).sum(axis=0)  # per feature: sva's rowSums(!is.na(sdat))
    g_old, d_old = g_hat, d_hat
    with np.errstate(divide="ignore", invalid="ignore"):
        for _ in range(max_iter):
            g_new = _postmean(g_hat, g_bar, n, d_old, t2)
            sum2 = np.nansum((zi - g_new[None, :]) ** 2, axis=0)
            d_new = _postvar(sum2, n, a, b)
            change = max(
                np.max(np.abs(g_new - g_old) / g_old), np.max(np.abs(d_new - d_old) / d_old)
            )
            g_old, d_old = g_new, d_new
            if not change > conv:
                break
        else:  # pragma: no cover - sva has no limit; this is a safety net
            raise ValueError(f"ComBat's empirical-Bayes iteration did not converge in {max_iter}")
    return g_new, d_new


def _int_eprior(zi: np.ndarray, g_hat: np.ndarray, d_hat: np.ndarray):
    """sva's ``int.eprior``: for each feature, the posterior means of γ and δ² under the
    empirical distribution of the other features' (γ̂, δ̂²), weighted by the likelihood of this
    feature's samples. Computed in log space (sva's direct product underflows for large n)."""
    counts = (~np.isnan(zi)).sum(axis=0)  # (G,) available samples per feature
    G = zi.shape[1]
    g_star = np.empty(G)
    d_star = np.empty(G)
    sq = np.nansum(zi**2, axis=0)  # (G,)
    s1 = np.nansum(zi, axis=0)  # (G,)
    for k in range(G):
        n = counts[k]
        others = np.arange(G) != k
        g, d = g_hat[others], d_hat[others]
        # Σ_j (x_j − g)² = Σx² − 2 g Σx + n g²
        sum2 = sq[k] - 2 * g * s1[k] + n * g**2
        log_lh = -0.5 * n * np.log(2 * np.pi * d) - sum2 / (2 * d)
        w = np.exp(log_lh - log_lh.max())
        g_star[k] = (g * w).sum() / w.sum()
        d_star[k] = (d * w).sum() / w.sum()
    return g_star, d_star


def _least_squares(design: np.ndarray, dat: np.ndarray) -> np.ndarray:
    """``(DᵀD)⁻¹ Dᵀ y`` per feature over the samples that have it (sva's ``Beta.NA``); the
    features sharing a pattern of missing samples are solved together."""
    present = ~np.isnan(dat)
    if present.all():
        return np.linalg.solve(design.T @ design, design.T @ dat)
    out = np.empty((design.shape[1], dat.shape[1]))
    patterns, which = np.unique(present, axis=1, return_inverse=True)
    for k in range(patterns.shape[1]):
        rows, cols = patterns[:, k], np.flatnonzero(which.ravel() == k)
        d = design[rows]
        out[:, cols] = np.linalg.solve(d.T @ d, d.T @ dat[np.ix_(rows, cols)])
    return out


def _check_available(dat, sites, labels, features, least: int) -> None:
    """Every feature needs ``least`` available values at every site (else its site effect
    cannot be estimated); raise naming the features and sites that lack them."""
    short = []
    for label in labels:
        counts = (~np.isnan(dat[sites == label])).sum(axis=0)
        short += [(features[g], label) for g in np.flatnonzero(counts < least)]
    if short:
        listed = ", ".join(f"{f} at site {s}" for f, s in short[:5])
        raise ValueError(
            f"ComBat needs at least {least} values of a feature at each site; missing for "
            f"{len(short)} (feature, site) pair(s): {listed} (drop those features)"
        )


# ---------------------------------------------------------------- inputs
def _as_frame(X, features=None) -> pd.DataFrame:
    if isinstance(X, pd.DataFrame):
        return X
    array = np.asarray(X, dtype=float)
    if array.ndim != 2:
        raise ValueError(f"X must be 2-D (samples × features); got shape {array.shape}")
    columns = features if features is not None and len(features) == array.shape[1] else None
    return pd.DataFrame(array, columns=columns)


def _as_sites(sites, n: int) -> np.ndarray:
    sites = np.asarray(pd.Series(sites).astype(str) if not isinstance(sites, np.ndarray) else sites)
    sites = sites.astype(str)
    if sites.ndim != 1 or len(sites) != n:
        raise ValueError(f"sites must have one label per sample ({n}); got shape {sites.shape}")
    return sites


def _covariate_design(covariates, index, fitted) -> tuple[dict, np.ndarray]:
    """Numeric covariates as they are; categorical ones dummy-coded against their first level
    (R's ``model.matrix`` treatment contrasts with sorted levels)."""
    if covariates is None:
        return {"names": [], "levels": {}, "columns": []}, np.zeros((len(index), 0))
    if not isinstance(covariates, pd.DataFrame):
        raise TypeError(f"covariates must be a DataFrame or None; got {type(covariates).__name__}")
    if len(covariates) != len(index):
        raise ValueError(f"covariates have {len(covariates)} rows but X has {len(index)} samples")
    names = list(covariates.columns) if fitted is None else list(fitted["names"])
    missing = [c for c in names if c not in covariates.columns]
    if missing:
        raise ValueError(f"covariates {missing} are missing")
    levels: dict = {} if fitted is None else dict(fitted["levels"])
    blocks, columns = [], []
    for name in names:
        col = covariates[name]
        if col.isna().any():
            raise ValueError(f"covariate '{name}' has missing values")
        categorical = (
            name in levels
            if fitted is not None
            else not pd.api.types.is_numeric_dtype(col) or pd.api.types.is_bool_dtype(col)
        )
        if categorical:
            values = col.astype(str).to_numpy()
            if fitted is None:
                levels[name] = sorted(set(values.tolist()))
            unknown = sorted(set(values.tolist()) - set(levels[name]))
            if unknown:
                raise ValueError(
                    f"covariate '{name}' has levels {unknown} that were not seen in fit "
                    f"(known: {levels[name]})"
                )
            for level in levels[name][1:]:
                blocks.append((values == level).astype(float))
                columns.append(f"{name}[{level}]")
        else:
            blocks.append(col.to_numpy(dtype=float))
            columns.append(str(name))
    design = np.column_stack(blocks) if blocks else np.zeros((len(index), 0))
    return {"names": names, "levels": levels, "columns": columns}, design
