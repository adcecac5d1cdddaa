"""Cell-type deconvolution of bulk expression: quanTIseq, CIBERSORT-style ν-SVR, constrained
least squares, and MCP-counter marker scores.

The fraction methods estimate, per sample, the weights f of a signature matrix S (genes × cell
types) whose mix best explains the sample's expression y on the signature genes, y ≈ S f.

**quanTIseq** (``method="quantiseq"``; Finotello et al. 2019, Genome Med 11:34; reference: the
``quanTIseq_decon.R``/``DOCKER_codes.R`` deconvolution module of icbi-lab/quanTIseq, BSD-3, whose
output on GSE107572 this module reproduces to 1e-7 — see tests/targets/reference):

1. ``fixMixture`` (:func:`fix_mixture`): anti-log (2^x) when the maximum is below 50, quantile
   normalisation for microarrays (``arrays=True``), and every sample rescaled to sum 1e6 over
   **all** its genes, before the signature genes are taken. (quanTIseq's HGNC re-annotation,
   ``mapGenes``, is not repeated here: symbols are taken as given — map them beforehand. On
   GSE107572 it moves fractions by up to 0.018 and a cell type's r by up to 0.04.)
   RNA-seq input must be TPM (or FPKM, which the rescaling turns into TPM): counts weight genes
   by length, and no rescaling undoes that. On a count-like copy of GSE107572 the reference code
   itself gives neutrophils r = 0.12 against flow cytometry, on GEO's TPM 0.50.
2. Signature genes removed: ``TIL10_rmgenes.txt`` (noisy in RNA-seq; not for ``arrays``) and,
   with ``tumor=True``, ``TIL10_TCGA_aberrant_immune_genes.txt`` (expressed by tumour cells).
3. Constrained least squares (``limSolve::lsei``) per sample,

       f̂ = argmin ‖S f − y‖²  subject to  f ≥ 0,  Σ f ≤ 1,

   solved exactly (:func:`constrained_lsq`), then the mRNA scaling c_k = (f̂_k / m_k) /
   Σ_j (f̂_j / m_j) · Σ_j f̂_j and other = max(0, 1 − Σ_k c_k).
4. Tregs/CD4 correction: the fit is repeated without CD4 T cells; where the first fit gives
   Tregs < 0.02, Tregs ← (T₁ + T₂)/2 and CD4 ← max(0, CD4 − (T₂ + Tregs)/2) with the *updated*
   Tregs, exactly as the reference code does (so CD4 loses (3 T₂ + T₁)/4).
5. Rows renormalised to sum 1 (cell types + ``other``).

**ν-SVR** (``method="nusvr"``; Newman et al. 2015, Nat Methods 12:453 — CIBERSORT). As
CIBERSORT.R: anti-log (2^x) when the maximum is below 50; optional quantile normalisation over
all genes (``quantile_normalisation=True``; CIBERSORT.R's own default ``QN = TRUE``, which
CIBERSORT advises against for RNA-seq — off here); the signature genes taken; S standardised
over all its entries, y over its genes; a linear ν-SVR y ~ S for ν ∈ {0.25, 0.5, 0.75} (cost 1,
libsvm as e1071); negative weights set to 0, the rest renormalised to sum 1, and the ν with the
smallest RMSE kept. The result is each type's share of the signature-explained mRNA.

**Constrained least squares** (``method="lsq"``): step 3 of quanTIseq alone on the expression as
given (no renormalisation, no Tregs correction) — kept for the targets' second pipeline.

**MCP-counter** (``method="mcpcounter"``; Becht et al. 2016, Genome Biol 17:218; reference
``ebecht/MCPcounter``, ``MCPcounter.estimate(featuresType="HUGO_symbols")``): per population, the
mean log2 expression of its marker genes present in the data. It needs a handful of markers per
population, not a full signature, so it works on small panels and microarrays. Its scores are
**not fractions**: they are on a log scale, in units that differ between populations, and only
comparable between samples within a population. An entropy of them would be meaningless
(renormalising them to sum 1 does not make them proportions), so
:func:`~stromalens.targets.heterogeneity.shannon_entropy` refuses them; H needs a fraction method.

Signatures: TIL10 (quanTIseq; shipped, see resources/TIL10_NOTICE.txt) is the default; a user's
matrix in CIBERSORT format (genes in the first column, one column per cell type, tab-separated —
e.g. LM22, which cannot be shipped) is read with :func:`read_signature`; fraction tables exported
by CIBERSORTx are read with :func:`read_cibersortx`.

Example
-------
>>> fractions = deconvolve(tpm, method="quantiseq")            # doctest: +SKIP
>>> scores = deconvolve(panel, method="mcpcounter")            # doctest: +SKIP
"""

from __future__ import annotations

import logging
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import optimize, stats

from .scores import as_expression_frame

logger = logging.getLogger(__name__)

NU_GRID = (0.25, 0.5, 0.75)
LOG_MAX = 50.0  # quanTIseq's and CIBERSORT's rule: a maximum below 50 means log2 values
MIN_TREGS = 0.02  # quanTIseq's threshold for the Tregs/CD4 correction
METHODS = ("nusvr", "lsq", "quantiseq", "mcpcounter")
FRACTION_METHODS = ("nusvr", "lsq", "quantiseq")
KIND_ATTR = "stromalens_kind"  # DataFrame.attrs key: "fractions" or "scores"
_RESOURCES = resources.files(__package__).joinpath("resources")


def til10_signature() -> pd.DataFrame:
    """quanTIseq's TIL10 signature (170 genes × 10 immune cell types), TPM scale."""
    with _RESOURCES.joinpath("TIL10_signature.txt").open(encoding="utf-8") as handle:
        return pd.read_csv(handle, sep="\t", index_col=0)


def til10_mrna_scaling() -> pd.Series:
    """mRNA content per cell of the TIL10 cell types (quanTIseq's scaling factors)."""
    with _RESOURCES.joinpath("TIL10_mRNA_scaling.txt").open(encoding="utf-8") as handle:
        return pd.read_csv(handle, sep="\t", header=None, index_col=0).iloc[:, 0].rename(None)


def til10_removed_genes() -> list[str]:
    """Genes quanTIseq removes before deconvolving RNA-seq (``TIL10_rmgenes.txt``, noisy)."""
    return _RESOURCES.joinpath("TIL10_rmgenes.txt").read_text(encoding="utf-8").split()


def til10_tumor_genes() -> list[str]:
    """Genes quanTIseq removes with ``tumor=TRUE`` (``TIL10_TCGA_aberrant_immune_genes.txt``:
    signature genes highly expressed by tumour cells in TCGA)."""
    path = _RESOURCES.joinpath("TIL10_TCGA_aberrant_immune_genes.txt")
    return path.read_text(encoding="utf-8").split()


def mcpcounter_markers() -> pd.DataFrame:
    """MCP-counter's marker genes (``genes.txt`` of ebecht/MCPcounter, CC0): a long table with
    columns ``gene`` and ``population`` (10 populations, 111 genes)."""
    with _RESOURCES.joinpath("MCPcounter_genes.txt").open(encoding="utf-8") as handle:
        table = pd.read_csv(handle, sep="\t", dtype=str)
    return table.rename(columns={"HUGO symbols": "gene", "Cell population": "population"})[
        ["gene", "population"]
    ]


def read_signature(path: Path | str) -> pd.DataFrame:
    """A signature matrix in CIBERSORT format: genes × cell types, gene ids in the first column."""
    path = Path(path)
    if not path.exists():
        raise ValueError(f"signature file not found: {path}")
    sep = "," if path.suffix.lower() == ".csv" else "\t"
    sig = pd.read_csv(path, sep=sep, index_col=0)
    if sig.shape[1] < 2:
        raise ValueError(f"{path}: a signature needs at least two cell-type columns")
    if not sig.index.is_unique:
        raise ValueError(
            f"{path}: duplicated genes in the signature, e.g. "
            f"{sig.index[sig.index.duplicated()][0]}"
        )
    sig = sig.apply(pd.to_numeric, errors="coerce")
    if sig.isna().any().any() or (sig.to_numpy() < 0).any():
        raise ValueError(f"{path}: the signature must hold non-negative numbers only")
    return sig


def read_cibersortx(path: Path | str) -> pd.DataFrame:
    """Fractions exported by CIBERSORTx (samples × cell types), without its statistics columns
    (``P-value``, ``Correlation``, ``RMSE``, ``Absolute score (sig.score)``)."""
    path = Path(path)
    sep = "," if path.suffix.lower() == ".csv" else "\t"
    table = pd.read_csv(path, sep=sep, index_col=0)
    stats_columns = {
        "P-value",
        "Correlation",
        "RMSE",
        "Absolute score (sig.score)",
        "Absolute score",
    }
    fractions = table.drop(columns=[c for c in table.columns if c in stats_columns])
    if fractions.empty or fractions.shape[1] < 2:
        raise ValueError(f"{path}: no cell-type columns found in this CIBERSORTx table")
    return fractions.astype(float)


def _align(expr: pd.DataFrame, signature: pd.DataFrame, min_genes: int = 10):
    genes = [g for g in signature.index if g in expr.columns]
    needed = max(min_genes, signature.shape[1] + 1)
    if len(genes) < needed:
        missing = [g for g in signature.index if g not in expr.columns]
        raise ValueError(
            f"only {len(genes)} of the signature's {len(signature)} genes are in the "
            f"expression data (missing, e.g.: {', '.join(missing[:5])}); a fit of "
            f"{signature.shape[1]} cell types needs at least {needed}. Check the gene "
            "identifiers (HGNC symbols expected; map probes first), give a signature whose "
            "genes the data measure, or, for a small panel or a microarray, use "
            "method='mcpcounter' (marker scores, not fractions)"
        )
    if len(genes) < 0.5 * len(signature):
        logger.warning(
            "only %d of %d signature genes are in the data; the fit rests on those",
            len(genes),
            len(signature),
        )
    return expr[genes].to_numpy(dtype=float), signature.loc[genes].to_numpy(dtype=float), genes


def unlog(frame: pd.DataFrame, antilog: bool | str = "auto") -> pd.DataFrame:
    """2^x when ``antilog`` is True, or when ``"auto"`` and the maximum is below 50 (the rule of
    quanTIseq's ``fixMixture`` and of CIBERSORT.R: ``if (max(Y) < 50) Y <- 2^Y``).

    Note the references undo log2(x), not log2(x + 1): a log2(TPM + 1) table comes back as
    TPM + 1, which the per-sample renormalisation of quanTIseq then absorbs only in part.
    """
    if antilog not in (True, False, "auto"):
        raise ValueError(f"antilog must be True, False or 'auto', not {antilog!r}")
    top = float(frame.to_numpy().max())
    if antilog is True or (antilog == "auto" and top < LOG_MAX):
        logger.info(
            "expression maximum %.3g < %g: taken for log2 values, 2^x applied", top, LOG_MAX
        )
        return np.exp2(frame)
    return frame


def linear_frame(expr, antilog: bool | str = "auto") -> pd.DataFrame:
    """Samples × genes on a linear scale: anti-logged where :func:`unlog` says so (log2 values
    may be negative, below 1 TPM), then refused if any value is still negative."""
    frame = unlog(as_expression_frame(expr, allow_negative=True), antilog)
    if (frame.to_numpy() < 0).any():
        raise ValueError(
            "expression has negative values; this method needs a linear, non-negative scale "
            "(TPM or counts), or log2 values (maximum below 50), which are anti-logged"
        )
    return frame


def quantile_normalise(frame: pd.DataFrame) -> pd.DataFrame:
    """Quantile normalisation across samples (rows), as ``preprocessCore::normalize.quantiles``.

    The reference distribution is the mean over samples of each sample's sorted values; each
    value takes the reference at its rank. Ties (preprocessCore's default): a tied group takes
    the reference at its average rank r, or — when r is a half-integer — the mean of the two
    references around it.

    Example
    -------
    >>> quantile_normalise(pd.DataFrame([[1.0, 2.0], [3.0, 5.0]])).to_numpy().tolist()
    [[2.0, 3.5], [2.0, 3.5]]
    """
    x = frame.to_numpy(dtype=float)  # (samples, genes)
    reference = np.sort(x, axis=1).mean(axis=0)  # (genes,)
    out = np.empty_like(x)
    for i, row in enumerate(x):
        rank = stats.rankdata(row, method="average")  # 1-based
        low = np.floor(rank).astype(int) - 1
        half = (rank - np.floor(rank)) > 0.4
        values = reference[low].copy()
        values[half] = 0.5 * (reference[low[half]] + reference[low[half] + 1])
        out[i] = values
    return pd.DataFrame(out, index=frame.index, columns=frame.columns)


def fix_mixture(expr, *, arrays: bool = False, antilog: bool | str = "auto") -> pd.DataFrame:
    """quanTIseq's ``fixMixture``: anti-log when logged, quantile normalisation for arrays, and
    each sample rescaled to sum 1e6 over all its genes (samples × genes in, samples × genes out).

        y_g ← y_g · 10⁶ / Σ_all genes y

    Rescaling over **all** genes (before the signature genes are taken) keeps Σ f ≤ 1 and
    "other" on quanTIseq's scale; a table that is a gene subset is rescaled over that subset.

    Example
    -------
    >>> fix_mixture(pd.DataFrame({"A": [100.0], "B": [300.0]})).to_numpy().tolist()
    [[250000.0, 750000.0]]
    """
    frame = linear_frame(expr, antilog)
    if arrays:
        frame = quantile_normalise(frame)
    totals = frame.sum(axis=1)
    if (totals <= 0).any():
        raise ValueError(f"sample '{totals.index[totals <= 0][0]}' has no positive expression")
    return frame.div(totals, axis=0) * 1e6


def nusvr_weights(y: np.ndarray, s: np.ndarray, nus=NU_GRID) -> tuple[np.ndarray, float, float]:
    """CIBERSORT's core for one sample: best-RMSE ν-SVR weights; returns (weights, ν, RMSE).

    ``s`` must already be standardised over all its entries (see :func:`deconvolve`).
    """
    from sklearn.svm import NuSVR

    y = (y - y.mean()) / y.std(ddof=1)
    best = (None, None, np.inf)
    for nu in nus:
        model = NuSVR(kernel="linear", nu=nu, C=1.0).fit(s, y)
        w = np.clip(model.coef_.ravel(), 0.0, None)
        if w.sum() > 0:
            w = w / w.sum()
        rmse = float(np.sqrt(np.mean((s @ w - y) ** 2)))
        if rmse < best[2]:
            best = (w, nu, rmse)
    return best


def constrained_lsq(y: np.ndarray, s: np.ndarray) -> np.ndarray:
    """argmin ‖s f − y‖² subject to f ≥ 0 and Σ f ≤ 1 — ``limSolve::lsei`` with quanTIseq's
    constraints, solved exactly.

    The inequality-constrained least squares (LSI) problem is reduced to a least-distance
    problem and that to a non-negative least squares (Lawson & Hanson 1974, *Solving Least
    Squares Problems*, ch. 23): with s = QR and c = Qᵀy, z = R f − c,

        min ‖z‖  s.t.  E z ≥ d,   E = G R⁻¹,  d = h − G R⁻¹ c,   G = [I; −1ᵀ],  h = [0; −1],

    whose solution is z = −r₁..ₙ / rₙ₊₁ with r = [Eᵀ; dᵀ] u − eₙ₊₁ and u = NNLS(...). Then
    f = R⁻¹ (z + c). Exact up to rounding (the active set is found by NNLS).

    Example
    -------
    >>> s = np.eye(3)
    >>> constrained_lsq(np.array([0.2, 0.3, 0.1]), s).round(12).tolist()
    [0.2, 0.3, 0.1]
    """
    s = np.asarray(s, dtype=float)
    y = np.asarray(y, dtype=float)
    k = s.shape[1]
    q, r = np.linalg.qr(s)
    if np.abs(np.diag(r)).min() <= 1e-12 * np.abs(np.diag(r)).max():
        raise ValueError("the signature matrix is rank-deficient on the genes present")
    c = q.T @ y
    g = np.vstack([np.eye(k), -np.ones((1, k))])
    h = np.concatenate([np.zeros(k), [-1.0]])
    r_inv = np.linalg.inv(r)
    e = g @ r_inv
    d = h - e @ c
    if (d <= 0).all():  # the unconstrained solution is feasible
        return r_inv @ c
    # Each constraint row scaled to unit norm and d to unit size: the same feasible set and
    # minimiser (z = t w), but an NNLS on O(1) numbers whatever the scale of y.
    norms = np.linalg.norm(e, axis=1)
    e, d = e / norms[:, None], d / norms
    t = float(np.abs(d).max())
    m = np.vstack([e.T, d[None, :] / t])  # (k + 1, k + 1 constraints)
    target = np.zeros(k + 1)
    target[-1] = 1.0
    u, _ = optimize.nnls(m, target, maxiter=50 * m.shape[1])
    resid = m @ u - target
    if abs(resid[-1]) < 1e-14:
        raise ValueError("the constraints f >= 0, sum f <= 1 are infeasible")  # cannot happen
    f = r_inv @ (-t * resid[:-1] / resid[-1] + c)
    return _polish(s, y, f, active=u > 1e-12 * max(float(u.max()), 1e-300))


def _polish(s: np.ndarray, y: np.ndarray, f: np.ndarray, active: np.ndarray) -> np.ndarray:
    """Re-solve on the active set (the constraints with a positive multiplier) as an equality-
    constrained least squares through its KKT system; keep it if it is feasible."""
    k = s.shape[1]
    free = ~active[:k]
    out = np.zeros(k)
    if free.any():
        a = s[:, free]
        if active[k]:  # Σ f = 1
            n = int(free.sum())
            kkt = np.block([[a.T @ a, np.ones((n, 1))], [np.ones((1, n)), np.zeros((1, 1))]])
            out[free] = np.linalg.solve(kkt, np.concatenate([a.T @ y, [1.0]]))[:-1]
        else:
            out[free] = np.linalg.lstsq(a, y, rcond=None)[0]
    if out.min() >= -1e-10 and out.sum() <= 1.0 + 1e-10:
        return np.clip(out, 0.0, None)
    return np.clip(f, 0.0, None)


def _scaling_vector(cell_types, mrna_scaling) -> np.ndarray:
    if mrna_scaling is None:
        return np.ones(len(cell_types))
    given = pd.Series(mrna_scaling, dtype=float)
    missing = [c for c in cell_types if c not in given.index]
    if missing:
        raise ValueError(f"mrna_scaling lacks cell types: {', '.join(missing)}")
    return given.loc[list(cell_types)].to_numpy()


def lsq_fractions(y_all: np.ndarray, s: np.ndarray, scaling: np.ndarray) -> np.ndarray:
    """quanTIseq's ``DClsei`` for every sample (rows of ``y_all``): constrained least squares,
    the mRNA scaling c = (f/m) / Σ(f/m) · Σf, and other = max(0, 1 − Σc) as the last column."""
    rows = []
    for y in y_all:
        f = constrained_lsq(y, s)
        total = f.sum()
        cells = f / scaling
        cells = cells / cells.sum() * total if cells.sum() > 0 else cells
        rows.append(np.append(cells, max(0.0, 1.0 - cells.sum())))
    return np.array(rows)


def tregs_correction(full: pd.DataFrame, without_cd4: pd.DataFrame, *, cd4: str, tregs: str):
    """quanTIseq's Tregs/CD4 correction (``quanTIseq_decon.R``): where the full fit gives
    Tregs < 0.02, Tregs ← (T₁ + T₂)/2 and CD4 ← max(0, CD4 − (T₂ + Tregs_new)/2), T₂ being the
    Tregs of the fit without CD4 T cells (the reference subtracts with the updated Tregs)."""
    out = full.copy()
    low = out[tregs] < MIN_TREGS
    out.loc[low, tregs] = (without_cd4.loc[low, tregs] + out.loc[low, tregs]) / 2
    out.loc[low, cd4] = np.maximum(
        0.0, out.loc[low, cd4] - (without_cd4.loc[low, tregs] + out.loc[low, tregs]) / 2
    )
    return out


def quantiseq(
    expr,
    *,
    signature: pd.DataFrame | Path | str | None = None,
    mrna_scaling: pd.Series | dict | None = None,
    remove_genes: list[str] | None = None,
    tumor: bool = False,
    arrays: bool = False,
    scale_mrna: bool = True,
    antilog: bool | str = "auto",
) -> pd.DataFrame:
    """quanTIseq (Finotello et al. 2019) cell fractions, samples × (cell types + ``other``),
    rows summing to 1; see the module docstring for the five steps.

    Parameters
    ----------
    expr : samples × genes (TPM, or log2 values, anti-logged when the maximum is below 50).
    signature : default TIL10 (with its mRNA scaling, removed genes and tumour genes).
    mrna_scaling : mRNA per cell by cell type; default TIL10's factors for TIL10, else 1.
    remove_genes : signature genes to leave out; default TIL10's ``rmgenes`` for RNA-seq, none
        for ``arrays`` (quanTIseq's ``rmgenes="unassigned"``).
    tumor : also remove TIL10's genes aberrantly expressed in tumours (tumour samples).
    arrays : microarray data: quantile normalisation, no default gene removal.
    scale_mrna : False disables the mRNA-content correction (quanTIseq's ``mRNAscale``).

    Example
    -------
    >>> quantiseq(tpm, tumor=True)                                     # doctest: +SKIP
    """
    mixture = fix_mixture(expr, arrays=arrays, antilog=antilog)
    sig, mrna_scaling, remove_genes = _resolve_signature(signature, mrna_scaling, remove_genes)
    if signature is None and arrays and remove_genes == til10_removed_genes():
        remove_genes = []
    drop = set(remove_genes or [])
    if tumor:
        if signature is not None:
            raise ValueError("tumor=True removes TIL10's tumour genes: give remove_genes instead")
        drop |= set(til10_tumor_genes())
    sig = sig.drop(index=[g for g in sig.index if g in drop])
    cell_types = list(sig.columns)
    scaling = _scaling_vector(cell_types, mrna_scaling if scale_mrna else None)
    y_all, s, genes = _align(mixture, sig)
    logger.info("quanTIseq: %d of %d signature genes in the data", len(genes), len(sig))
    columns = [*cell_types, "other"]
    result = pd.DataFrame(lsq_fractions(y_all, s, scaling), index=mixture.index, columns=columns)
    cd4, tregs = "T.cells.CD4", "Tregs"
    if cd4 in cell_types and tregs in cell_types:
        keep = [j for j, c in enumerate(cell_types) if c != cd4]
        second = pd.DataFrame(
            lsq_fractions(y_all, s[:, keep], scaling[keep]),
            index=mixture.index,
            columns=[*(cell_types[j] for j in keep), "other"],
        )
        result = tregs_correction(result, second, cd4=cd4, tregs=tregs)
    return result.div(result.sum(axis=1), axis=0)


def mcp_counter(expr, *, markers: pd.DataFrame | None = None, log: bool = True) -> pd.DataFrame:
    """MCP-counter scores (Becht et al. 2016), samples × populations:

        score_p = mean_{g ∈ markers(p) ∩ data} x_g,   x = log2(expr + 1) (``log=True``)

    as ``MCPcounter.estimate(log2(expr + 1), featuresType = "HUGO_symbols")`` (which averages the
    values it is given; its paper scores log2 microarray data). Populations none of whose markers
    are in the data are left out, and logged; when more than half the populations have none,
    the panel is refused with the per-population counts.

    The scores are not fractions (see the module docstring): the result carries
    ``attrs["stromalens_kind"] = "scores"``.

    Example
    -------
    >>> scores = mcp_counter(panel)                                 # doctest: +SKIP
    """
    frame = as_expression_frame(expr, allow_negative=not log)
    table = mcpcounter_markers() if markers is None else markers
    if not {"gene", "population"} <= set(table.columns):
        raise ValueError("markers must be a table with columns 'gene' and 'population'")
    values = np.log2(frame + 1.0) if log else frame
    populations = list(dict.fromkeys(table["population"]))
    found = {
        p: [g for g in table.loc[table["population"] == p, "gene"] if g in frame.columns]
        for p in populations
    }
    missing = [p for p in populations if not found[p]]
    if len(missing) == len(populations):
        raise ValueError(
            f"none of the {len(table)} MCP-counter marker genes are in the expression data; "
            "check the gene identifiers (HGNC symbols expected; map probes first)"
        )
    if 2 * len(missing) > len(populations):
        counts = "; ".join(
            f"{p} {len(found[p])} of {int((table['population'] == p).sum())}" for p in populations
        )
        raise ValueError(
            f"MCP-counter markers in the data, per population: {counts} — {len(missing)} of "
            f"{len(populations)} populations have none. Use a panel that measures them, or "
            "give markers= (columns gene, population) for genes this panel holds"
        )
    if missing:
        logger.warning("MCP-counter: no marker in the data for %s", ", ".join(missing))
    scores = pd.DataFrame(
        {p: values[genes].mean(axis=1) for p, genes in found.items() if genes}, index=frame.index
    )
    scores.attrs[KIND_ATTR] = "scores"
    scores.attrs["markers_found"] = {p: len(g) for p, g in found.items()}
    return scores


def _resolve_signature(signature, mrna_scaling, remove_genes):
    if signature is None:
        sig = til10_signature()
        remove_genes = til10_removed_genes() if remove_genes is None else remove_genes
        if mrna_scaling is None:
            mrna_scaling = til10_mrna_scaling()
    elif isinstance(signature, str | Path):
        sig = read_signature(signature)
    else:
        sig = signature.astype(float)
    return sig, mrna_scaling, remove_genes


def deconvolve(
    expr,
    *,
    method: str = "nusvr",
    signature: pd.DataFrame | Path | str | None = None,
    mrna_scaling: pd.Series | dict | None = None,
    remove_genes: list[str] | None = None,
    tumor: bool = False,
    arrays: bool = False,
    quantile_normalisation: bool = False,
    antilog: bool | str = "auto",
    markers: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """Cell-type fractions (or, for ``mcpcounter``, marker scores) per sample.

    Parameters
    ----------
    expr : samples × genes, linear scale (TPM); DataFrame or AnnData. Log2 values (maximum
        below 50) are anti-logged as quanTIseq and CIBERSORT do (``antilog``: True, False or
        ``"auto"``), and this is logged.
    method : ``"quantiseq"`` (quanTIseq, faithful; ``other`` column, rows sum 1), ``"nusvr"``
        (CIBERSORT-style; fractions of the signature mRNA, sum 1), ``"lsq"`` (constrained least
        squares with mRNA scaling on the values as given; ``other`` column) or
        ``"mcpcounter"`` (MCP-counter scores — not fractions).
    signature : genes × cell types DataFrame or a CIBERSORT-format file; default TIL10.
    mrna_scaling : mRNA per cell by cell type (``lsq``, ``quantiseq``); default TIL10's factors
        for TIL10, 1 otherwise.
    remove_genes : signature genes to leave out; default TIL10's list for TIL10.
    tumor, arrays : quanTIseq's options (``quantiseq`` only; see :func:`quantiseq`).
    quantile_normalisation : CIBERSORT's ``QN`` (``nusvr`` only): quantile normalisation over all
        genes before the signature genes are taken; off by default (RNA-seq).
    markers : MCP-counter marker table (``gene``, ``population``); default MCP-counter's genes.

    Example
    -------
    >>> fractions = deconvolve(tpm, method="quantiseq")              # doctest: +SKIP
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}, not {method!r}")
    if method == "mcpcounter":
        return mcp_counter(linear_frame(expr, antilog), markers=markers)
    if method == "quantiseq":
        result = quantiseq(
            expr,
            signature=signature,
            mrna_scaling=mrna_scaling,
            remove_genes=remove_genes,
            tumor=tumor,
            arrays=arrays,
            antilog=antilog,
        )
        result.attrs[KIND_ATTR] = "fractions"
        return result
    frame = linear_frame(expr, antilog)
    sig, mrna_scaling, remove_genes = _resolve_signature(signature, mrna_scaling, remove_genes)
    if remove_genes:
        sig = sig.drop(index=[g for g in remove_genes if g in sig.index])
    cell_types = list(sig.columns)
    if method == "nusvr":
        if quantile_normalisation:
            frame = quantile_normalise(frame)
        y_all, s, _ = _align(frame, sig)
        s_std = (s - s.mean()) / s.std(ddof=1)
        rows = [nusvr_weights(y, s_std)[0] for y in y_all]
        result = pd.DataFrame(rows, index=frame.index, columns=cell_types)
    else:  # lsq
        y_all, s, _ = _align(frame, sig)
        scaling = _scaling_vector(cell_types, mrna_scaling)
        result = pd.DataFrame(
            lsq_fractions(y_all, s, scaling), index=frame.index, columns=[*cell_types, "other"]
        )
    result.attrs[KIND_ATTR] = "fractions"
    return result
