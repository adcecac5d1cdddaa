"""Single-sample gene-set scores: ssGSEA and GSVA, numerically identical to Bioconductor GSVA 1.46.

Both take expression in AnnData orientation (samples × genes) and return samples × sets.

**ssGSEA** (Barbie et al. 2009, Nature 462:108; as implemented in GSVA 1.46). Per sample, genes
are ranked by expression (average ranks for ties, then truncated to integers as GSVA's
``mode(R) <- "integer"`` does) and ordered by decreasing rank (ties keep the genes' input order,
as R's stable ``order`` does). With p_g the position of gene g in that order (1 = highest),
r_g its rank, n genes and a set S of k genes, the score is the sum over positions of the
difference between the weighted in-set and the out-of-set empirical CDFs, which has the closed
form

    ES = Σ_S r_g^α (n − p_g + 1) / Σ_S r_g^α  −  (n(n+1)/2 − Σ_S (n − p_g + 1)) / (n − k).

With ``normalize=True`` every score is divided by the range (max − min) of the whole score matrix
(GSVA's ``ssgsea.norm``).

**GSVA** (Hänzelmann, Castelo & Guinney 2013, BMC Bioinformatics 14:7). Per gene, each sample's
expression is turned into a log-odds of its kernel-estimated CDF over all samples,

    F̂(y_j) = (1/N) Σ_i K((y_j − x_i) / h),   z_j = log(F̂ / (1 − F̂)),

with a Gaussian kernel and h = sd(x)/4 (``kcdf="gaussian"``; Φ is read from GSVA's 10,000-step
lookup table on [0, 10] so results match to rounding), a Poisson kernel with λ = x_i + 0.5
(``kcdf="poisson"``, for counts; see the note in :func:`gsva`), or the empirical CDF
(``kcdf="none"``). Genes are then ordered per sample by decreasing z, scored |n − p + 1 − n/2|
by position p, and a Kolmogorov–Smirnov-like random walk runs down the order: +score/Σ_S score
at set genes, −1/(n − k) elsewhere. The score is max⁺ + max⁻ of the walk (``mx_diff=True``) or
the larger-magnitude extreme (``mx_diff=False``). Genes constant across samples are dropped (as
GSVA does for this method; ssGSEA keeps them).

Example
-------
>>> scores = ssgsea(expr, {"UPR": ["HSPA5", "XBP1", "ATF4"]})      # doctest: +SKIP
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator

import numpy as np
import pandas as pd
from scipy import stats

from . import rmath
from .genesets import GeneSetsLike, MatchedGeneSets, match_gene_sets

_GSVA_SIGMA_FACTOR = 4.0
_GSVA_PRECOMPUTE_RESOLUTION = 10_000
_GSVA_MAX_PRECOMPUTE = 10.0
# Bound on the relative error of SciPy's Poisson kernel CDF F̂ (Cephes pdtr vs R's pgamma); the
# log-odds error is then ≤ this / (1 − F̂). Measured |Δz|(1 − F̂) ≤ 2.1e-15 against R on the Hoek
# and synthetic cohorts: a 500× margin.
_POISSON_REL_ERROR = 1e-12
# Below this F (z < log F ≈ −667) the sum involves subnormal CDFs whose precision is lower.
_POISSON_TINY_LOG_ODDS = -650.0


class GeneSetWarning(UserWarning):
    """Gene sets were dropped or genes filtered; the message says which and why."""


# --------------------------------------------------------------------------- input handling
def as_expression_frame(expr, *, allow_negative: bool = True) -> pd.DataFrame:
    """Samples × genes float DataFrame from a DataFrame or an AnnData; clear errors otherwise."""
    if hasattr(expr, "obs_names") and hasattr(expr, "var_names") and hasattr(expr, "X"):
        x = expr.X
        x = x.toarray() if hasattr(x, "toarray") else np.asarray(x)
        frame = pd.DataFrame(x, index=list(expr.obs_names), columns=list(expr.var_names))
    elif isinstance(expr, pd.DataFrame):
        frame = expr
    else:
        raise TypeError(
            f"expression must be a pandas DataFrame (samples × genes) or an AnnData, "
            f"not {type(expr).__name__}"
        )
    if frame.shape[0] < 1 or frame.shape[1] < 2:
        raise ValueError(
            f"expression needs at least 1 sample and 2 genes, got shape "
            f"{frame.shape} (samples × genes)"
        )
    for axis, what in ((frame.index, "sample"), (frame.columns, "gene")):
        if not axis.is_unique:
            dup = axis[axis.duplicated()].unique()[:5]
            raise ValueError(
                f"duplicated {what} ids: {', '.join(map(str, dup))} (aggregate them "
                "first, e.g. stromalens.targets.io.aggregate_duplicates)"
            )
    try:
        values = frame.to_numpy(dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"expression must be numeric: {exc}") from None
    if np.isnan(values).any():
        rows, cols = np.nonzero(np.isnan(values))
        raise ValueError(
            f"expression has {len(rows)} missing (NaN) values, e.g. sample "
            f"'{frame.index[rows[0]]}', gene '{frame.columns[cols[0]]}'"
        )
    if not allow_negative and (values < 0).any():
        raise ValueError(
            "expression has negative values; this method needs a linear, "
            "non-negative scale (TPM or counts)"
        )
    return pd.DataFrame(values, index=frame.index.astype(str), columns=frame.columns.astype(str))


def _matched(gene_sets: GeneSetsLike, genes, min_size, max_size) -> MatchedGeneSets:
    matched = match_gene_sets(gene_sets, genes, min_size=min_size, max_size=max_size)
    if not matched.indices:
        raise ValueError(
            "no gene set has enough genes in the expression data "
            f"({len(matched.dropped)} dropped; check gene identifiers)"
        )
    if matched.dropped:
        details = "; ".join(f"{k}: {v}" for k, v in matched.dropped.items())
        warnings.warn(
            f"{len(matched.dropped)} gene set(s) dropped — {details}", GeneSetWarning, stacklevel=3
        )
    return matched


def _membership(matched: MatchedGeneSets, n_genes: int) -> np.ndarray:
    m = np.zeros((len(matched.indices), n_genes))
    for row, idx in enumerate(matched.indices.values()):
        m[row, idx] = 1.0
    return m


def _chunks(n: int, size: int) -> Iterator[slice]:
    for start in range(0, n, size):
        yield slice(start, min(n, start + size))


# --------------------------------------------------------------------------- ssGSEA
def _ssgsea_gene_terms(x: np.ndarray, alpha: float) -> tuple[np.ndarray, np.ndarray]:
    """Per sample (rows of x, (B, G)): r_g^α and n − p_g + 1, in gene order.

    One stable sort by decreasing value gives both: tie groups are contiguous in it, a group
    spanning positions s..e (0-based) has average ascending rank n − (s + e)/2, and the
    truncated integer rank keeps distinct values in order, so ordering by decreasing integer
    rank with ties in input order (GSVA's order()) is this same sort.
    """
    b, n = x.shape
    order = np.argsort(-x, axis=1, kind="stable")  # (B, G)
    ordered = np.take_along_axis(x, order, axis=1)
    index = np.broadcast_to(np.arange(n), (b, n))
    first = np.ones((b, n), bool)
    first[:, 1:] = ordered[:, 1:] != ordered[:, :-1]
    last = np.ones((b, n), bool)
    last[:, :-1] = first[:, 1:]
    start = np.maximum.accumulate(np.where(first, index, 0), axis=1)
    end = np.minimum.accumulate(np.where(last, index, n)[:, ::-1], axis=1)[:, ::-1]
    rank = np.floor(n - (start + end) / 2.0)  # average rank, truncated as GSVA stores it
    weights = np.empty((b, n))
    reverse_position = np.empty((b, n))
    np.put_along_axis(weights, order, rank**alpha, axis=1)
    np.put_along_axis(reverse_position, order, (n - index).astype(np.float64), axis=1)
    return weights, reverse_position


def ssgsea(
    expr,
    gene_sets: GeneSetsLike,
    *,
    alpha: float = 0.25,
    normalize: bool = False,
    min_size: int = 1,
    max_size: float = float("inf"),
    chunk_size: int = 32,
) -> pd.DataFrame:
    """Single-sample GSEA scores (samples × sets), identical to ``GSVA::gsva(method="ssgsea")``.

    Parameters
    ----------
    expr : samples × genes DataFrame or AnnData (any monotone scale; only ranks matter).
    gene_sets : dict name → genes, a GMT/YAML path, or a long ``source, target`` DataFrame.
    alpha : weight exponent τ on the ranks (GSVA's ``tau``, default 0.25).
    normalize : divide by the range of all scores (GSVA's ``ssgsea.norm``).
    min_size, max_size : keep sets with this many genes found in the data; dropped sets are
        reported in a :class:`GeneSetWarning`.
    chunk_size : samples processed at once (bounds memory to ~ genes × chunk_size × 80 bytes;
        small chunks are also faster: they stay in cache).

    Reference: R, GSVA 1.46 —
    ``gsva(t(expr), sets, method="ssgsea", tau=alpha, ssgsea.norm=normalize)``.
    """
    frame = as_expression_frame(expr)
    genes = list(frame.columns)
    matched = _matched(gene_sets, genes, min_size, max_size)
    membership = _membership(matched, len(genes))  # (S, G)
    set_sizes = membership.sum(axis=1)  # (S,)
    n = len(genes)
    values = frame.to_numpy()
    scores = np.empty((len(frame), len(matched.indices)))
    membership_t = membership.T  # (G, S)
    for block in _chunks(len(frame), chunk_size):
        weights, reverse_position = _ssgsea_gene_terms(values[block], alpha)  # (B, G) each
        weighted = (weights * reverse_position) @ membership_t  # (B, S)
        weight_sum = weights @ membership_t
        in_set_position = reverse_position @ membership_t
        out_term = (n * (n + 1) / 2.0 - in_set_position) / (n - set_sizes)[None, :]
        scores[block] = weighted / weight_sum - out_term
    if normalize:
        scores = scores / (scores.max() - scores.min())
    return pd.DataFrame(scores, index=frame.index, columns=list(matched.indices))


# --------------------------------------------------------------------------- GSVA
def _gsva_normal_table() -> np.ndarray:
    grid = (
        _GSVA_MAX_PRECOMPUTE
        * np.arange(_GSVA_PRECOMPUTE_RESOLUTION + 1)
        / float(_GSVA_PRECOMPUTE_RESOLUTION)
    )
    return stats.norm.cdf(grid)


def _gaussian_kernel_cdf(diff: np.ndarray, bandwidth: np.ndarray, table: np.ndarray) -> np.ndarray:
    """GSVA's ``precomputedCdf``: Φ(v) read from the lookup table, v = diff / bandwidth."""
    v = diff / bandwidth
    index = (np.abs(v) / _GSVA_MAX_PRECOMPUTE * _GSVA_PRECOMPUTE_RESOLUTION).astype(np.int64)
    cdf = table[np.minimum(index, _GSVA_PRECOMPUTE_RESOLUTION)]
    cdf = np.where(v < 0, 1.0 - cdf, cdf)
    cdf = np.where(v < -_GSVA_MAX_PRECOMPUTE, 0.0, cdf)
    return np.where(v > _GSVA_MAX_PRECOMPUTE, 1.0, cdf)


def _kernel_log_odds(left: np.ndarray) -> np.ndarray:
    """z = −log((1 − F̂)/F̂) as GSVA's C code writes it (bit-identical for identical F̂)."""
    with np.errstate(divide="ignore"):
        return -np.log((1.0 - left) / left)


def _sum_in_sample_order(kernel: np.ndarray) -> np.ndarray:
    """Mean over the last axis, summed in sample order as GSVA's C loop does: mathematically
    tied log-odds then round alike, so their order (and the scores) match GSVA's."""
    left = np.zeros(kernel.shape[:-1])
    for i in range(kernel.shape[-1]):
        left += kernel[..., i]
    return left / kernel.shape[-1]


def _gene_log_odds(x: np.ndarray, kcdf: str, gene_chunk: int = 64) -> np.ndarray:
    """z (genes × samples): log-odds of each sample's kernel CDF within its gene."""
    n_genes, n = x.shape
    if kcdf == "none":
        # ecdf(x)(x) = fraction of samples ≤ x ('max' rank / n).
        cdf = stats.rankdata(x, method="max", axis=1) / n
        with np.errstate(divide="ignore"):
            return np.log(cdf / (1.0 - cdf))
    out = np.empty_like(x)
    table = _gsva_normal_table() if kcdf == "gaussian" else None
    for block in _chunks(n_genes, max(1, gene_chunk * 500 // max(n, 1))):
        xb = x[block]  # (g, N): density samples; the same samples are the test points
        if kcdf == "gaussian":
            # GSVA's sd(): sample standard deviation (n − 1), bandwidth sd / 4.
            bandwidth = xb.std(axis=1, ddof=1)[:, None, None] / _GSVA_SIGMA_FACTOR
            diff = xb[:, :, None] - xb[:, None, :]  # (g, test j, density i)
            kernel = _gaussian_kernel_cdf(diff, bandwidth, table)
        else:  # poisson: P(Y ≤ y_j) with λ = x_i + 0.5
            kernel = stats.poisson.cdf(xb[:, :, None], xb[:, None, :] + 0.5)
        out[block] = _kernel_log_odds(_sum_in_sample_order(kernel))
    if kcdf == "poisson":
        _recompute_near_ties_with_r(x, out)
    return out


def _recompute_near_ties_with_r(x: np.ndarray, z: np.ndarray) -> None:
    """Replace, in place, the Poisson log-odds whose order within their sample SciPy's rounding
    could decide by the values R's own ``ppois`` gives (:mod:`.rmath`).

    GSVA's scores depend on z only through each sample's gene order. SciPy's CDFs carry a
    relative error ε ≤ ``_POISSON_REL_ERROR``, which moves z = log(F/(1 − F)) by at most
    ε/(1 − F) = ε(1 + eᶻ). Two genes whose SciPy z differ by more than the sum of their bounds
    are ordered as in R; for the rest (ties, near ties, infinite or subnormal F) z is recomputed
    exactly as GSVA does — R's ``ppois`` summed in sample order — so the whole order, and hence
    every score, is R's. Usually a small fraction of the entries: (genes × samples) calls of
    ``ppois`` would take minutes on a large cohort, SciPy's vectorised CDF seconds.
    """
    if rmath.library_path() is None:
        rmath.warn_fallback()
        return
    with np.errstate(over="ignore"):
        bound = _POISSON_REL_ERROR * (1.0 + np.exp(z))  # (G, N); inf where F rounds to 1
    exact = ~np.isfinite(bound) | ~(z > _POISSON_TINY_LOG_ODDS)
    order = np.argsort(z, axis=0, kind="stable")  # (G, N)
    zs = np.take_along_axis(z, order, axis=0)
    bs = np.take_along_axis(bound, order, axis=0)
    with np.errstate(invalid="ignore"):  # inf − inf: a tie at ±inf, recomputed
        near = ~(np.diff(zs, axis=0) > bs[:-1] + bs[1:])  # (G − 1, N)
    columns = np.broadcast_to(np.arange(z.shape[1]), near.shape)
    exact[order[:-1][near], columns[near]] = True
    exact[order[1:][near], columns[near]] = True
    genes, samples = np.nonzero(exact)
    if genes.size:
        kernel = rmath.ppois(x[genes, samples][:, None], x[genes] + 0.5)  # (F, N)
        z[genes, samples] = _kernel_log_odds(_sum_in_sample_order(kernel))


def gsva(
    expr,
    gene_sets: GeneSetsLike,
    *,
    kcdf: str = "gaussian",
    mx_diff: bool = True,
    tau: float = 1.0,
    min_size: int = 1,
    max_size: float = float("inf"),
) -> pd.DataFrame:
    """GSVA enrichment scores (samples × sets), identical to ``GSVA::gsva(method="gsva")``.

    Parameters
    ----------
    expr : samples × genes DataFrame or AnnData; log-scale continuous values for
        ``kcdf="gaussian"``, integer counts for ``kcdf="poisson"``, anything for ``"none"``.
    kcdf : ``"gaussian"``, ``"poisson"`` or ``"none"`` (empirical CDF).
    mx_diff : score as max⁺ + max⁻ of the walk (True) or its larger-magnitude extreme (False).
    tau : exponent on the rank scores in the walk (GSVA's ``tau``, default 1).

    Reference: R, GSVA 1.46 —
    ``gsva(t(expr), sets, method="gsva", kcdf=c("Gaussian","Poisson","none"), mx.diff=mx_diff)``.
    The Gaussian kernel uses GSVA's lookup table for Φ, so results agree to rounding (< 1e-10
    in our tests), not just to the table's resolution. The Poisson kernel is computed with
    SciPy, then the log-odds whose order SciPy's last bits could decide (ties and near ties,
    common on small cohorts) are recomputed with R's own ``ppois`` from libRmath (Debian
    ``r-mathlib``, :mod:`stromalens.targets.rmath`): the gene order, and so every score, is
    then R's (5e-16 on 8 PBMC samples). Without libRmath a few near-tied genes may swap
    places (3.1e-4 there) and a log line says so.
    """
    kcdf = kcdf.lower()
    if kcdf not in {"gaussian", "poisson", "none"}:
        raise ValueError(f"kcdf must be 'gaussian', 'poisson' or 'none', not {kcdf!r}")
    frame = as_expression_frame(expr, allow_negative=kcdf != "poisson")
    if kcdf == "poisson":
        values = frame.to_numpy()
        if not np.allclose(values, np.round(values)):
            warnings.warn(
                "kcdf='poisson' expects integer counts; non-integer values are "
                "floored by the Poisson CDF",
                GeneSetWarning,
                stacklevel=2,
            )
    # GSVA drops genes with (numerically) constant expression for this method.
    sd = frame.std(axis=0, ddof=1).to_numpy()
    constant = sd < 1e-10
    if constant.any():
        warnings.warn(
            f"{int(constant.sum())} gene(s) with constant expression across samples "
            "dropped, as GSVA does",
            GeneSetWarning,
            stacklevel=2,
        )
        frame = frame.loc[:, ~constant]
    genes = list(frame.columns)
    if len(genes) < 2:
        raise ValueError("fewer than two non-constant genes in the expression data")
    matched = _matched(gene_sets, genes, min_size, max_size)
    n = len(genes)
    z = _gene_log_odds(frame.to_numpy().T, kcdf)  # (G, N)
    order = np.argsort(-z, axis=0, kind="stable")  # (G, N): gene indices by decreasing z
    rank_score = np.abs(np.arange(n, 0, -1) - n / 2.0)  # score at sorted position
    rank_score_tau = rank_score**tau if tau != 1 else rank_score

    scores = np.empty((len(frame), len(matched.indices)))
    is_member = np.zeros(n, bool)
    for s, idx in enumerate(matched.indices.values()):
        is_member[:] = False
        is_member[idx] = True
        in_sorted = is_member[order]  # (G, N) membership along each sample's order
        k = len(idx)
        set_total = (rank_score_tau[:, None] * in_sorted).sum(axis=0)  # Σ_S score^τ
        step = np.where(in_sorted, rank_score_tau[:, None] / set_total, -1.0 / (n - k))
        walk = np.cumsum(step, axis=0)
        top = np.maximum(walk.max(axis=0), 0.0)
        bottom = np.minimum(walk.min(axis=0), 0.0)
        scores[:, s] = top + bottom if mx_diff else np.where(top > np.abs(bottom), top, bottom)
    return pd.DataFrame(scores, index=frame.index, columns=list(matched.indices))
