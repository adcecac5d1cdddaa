"""Cell-type deconvolution of bulk expression: CIBERSORT-style ν-SVR and constrained least squares.

Both estimate, per sample, the weights f of a signature matrix S (genes × cell types) whose mix
best explains the sample's expression y on the signature genes, y ≈ S f.

**ν-SVR** (Newman et al. 2015, Nat Methods 12:453 — CIBERSORT). S and y are standardised (S over
all its entries, y over its genes); a linear ν-support-vector regression y ~ S is fitted for
ν ∈ {0.25, 0.5, 0.75} (cost 1, libsvm via scikit-learn, as CIBERSORT's e1071 call); negative
weights are set to 0, the rest renormalised to sum 1, and the ν with the smallest RMSE between
y and S f is kept. The result is each type's share of the signature-explained mRNA.

**Constrained least squares** (quanTIseq style; Finotello et al. 2019, Genome Med 11:34).

    f̂ = argmin ‖S f − y‖²  subject to  f ≥ 0,  Σ f ≤ 1

on linear-scale (TPM) data. The slack 1 − Σ f̂ is the mRNA share of cells the signature does not
describe ("other"). mRNA-content scaling converts mRNA shares into cell fractions:
c_k = (f̂_k / m_k) / Σ_j (f̂_j / m_j) · Σ_j f̂_j, other = 1 − Σ_j f̂_j, where m_k is the mRNA per
cell of type k (TIL10's scaling factors by default; 1 when unknown).

Signatures: TIL10 (quanTIseq; shipped, see resources/TIL10_NOTICE.txt) is the default; a user's
matrix in CIBERSORT format (genes in the first column, one column per cell type, tab-separated —
e.g. LM22, which cannot be shipped) is read with :func:`read_signature`; fraction tables exported
by CIBERSORTx are read with :func:`read_cibersortx`.
"""

from __future__ import annotations

import warnings
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import optimize

from .scores import as_expression_frame

NU_GRID = (0.25, 0.5, 0.75)
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
    """Genes quanTIseq removes before deconvolving (aberrantly expressed in tumours)."""
    return _RESOURCES.joinpath("TIL10_rmgenes.txt").read_text(encoding="utf-8").split()


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
    if len(genes) < max(min_genes, signature.shape[1] + 1):
        raise ValueError(
            f"only {len(genes)} of the signature's {len(signature)} genes are in the "
            "expression data; check gene identifiers (symbols expected)"
        )
    if len(genes) < 0.5 * len(signature):
        warnings.warn(
            f"only {len(genes)} of {len(signature)} signature genes are in the data",
            UserWarning,
            stacklevel=3,
        )
    return expr[genes].to_numpy(), signature.loc[genes].to_numpy(dtype=float), genes


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
    """argmin ‖s f − y‖² subject to f ≥ 0 and Σ f ≤ 1 (exact: NNLS, then the equality case).

    If the non-negative least-squares solution already sums to ≤ 1 it is optimal. Otherwise the
    sum constraint is active at the optimum (the problem is convex), and the solution is the
    NNLS on the simplex Σ f = 1, solved by eliminating the last weight's equality with SLSQP.
    """
    f, _ = optimize.nnls(s, y)
    if f.sum() <= 1.0 + 1e-12:
        return f
    k = s.shape[1]
    scale = max(float(np.abs(y).max()), 1e-12)  # well-conditioned objective for SLSQP
    sn, yn = s / scale, y / scale
    result = optimize.minimize(
        lambda v: float(np.sum((sn @ v - yn) ** 2)),
        x0=f / f.sum(),
        jac=lambda v: 2.0 * sn.T @ (sn @ v - yn),
        bounds=[(0.0, None)] * k,
        constraints=[{"type": "eq", "fun": lambda v: v.sum() - 1.0, "jac": lambda v: np.ones(k)}],
        method="SLSQP",
        options={"ftol": 1e-15, "maxiter": 1000},
    )
    return np.clip(result.x, 0.0, None)


def deconvolve(
    expr,
    *,
    method: str = "nusvr",
    signature: pd.DataFrame | Path | str | None = None,
    mrna_scaling: pd.Series | dict | None = None,
    remove_genes: list[str] | None = None,
) -> pd.DataFrame:
    """Cell-type fractions per sample (samples × cell types).

    Parameters
    ----------
    expr : samples × genes, **linear scale** (TPM); DataFrame or AnnData.
    method : ``"nusvr"`` (CIBERSORT-style; fractions of the signature mRNA, sum 1) or ``"lsq"``
        (constrained least squares with mRNA scaling; adds an ``other`` column, rows sum to 1).
    signature : genes × cell types DataFrame or a CIBERSORT-format file; default TIL10.
    mrna_scaling : mRNA per cell by cell type (``lsq`` only); default TIL10's factors for TIL10,
        1 otherwise.
    remove_genes : signature genes to leave out; default TIL10's list for TIL10.

    Example
    -------
    >>> fractions = deconvolve(tpm, method="lsq")                    # doctest: +SKIP
    """
    frame = as_expression_frame(expr, allow_negative=False)
    if frame.to_numpy().max() < 50:
        warnings.warn(
            "the expression's maximum is below 50: deconvolution needs linear-scale "
            "data (TPM), not log values",
            UserWarning,
            stacklevel=2,
        )
    default = signature is None
    if default:
        sig = til10_signature()
        remove_genes = til10_removed_genes() if remove_genes is None else remove_genes
        if mrna_scaling is None:
            mrna_scaling = til10_mrna_scaling()
    elif isinstance(signature, str | Path):
        sig = read_signature(signature)
    else:
        sig = signature.astype(float)
    if remove_genes:
        sig = sig.drop(index=[g for g in remove_genes if g in sig.index])
    y_all, s, _ = _align(frame, sig)
    cell_types = list(sig.columns)

    if method == "nusvr":
        s_std = (s - s.mean()) / s.std(ddof=1)
        rows = [nusvr_weights(y, s_std)[0] for y in y_all]
        return pd.DataFrame(rows, index=frame.index, columns=cell_types)
    if method == "lsq":
        scaling = pd.Series(1.0, index=cell_types)
        if mrna_scaling is not None:
            given = pd.Series(mrna_scaling, dtype=float)
            missing = [c for c in cell_types if c not in given.index]
            if missing:
                raise ValueError(f"mrna_scaling lacks cell types: {', '.join(missing)}")
            scaling = given.loc[cell_types]
        rows = []
        for y in y_all:
            f = constrained_lsq(y, s)
            total = f.sum()
            cells = f / scaling.to_numpy()
            cells = cells / cells.sum() * total if cells.sum() > 0 else cells
            rows.append(np.append(cells, 1.0 - total))
        return pd.DataFrame(rows, index=frame.index, columns=[*cell_types, "other"])
    raise ValueError(f"method must be 'nusvr' or 'lsq', not {method!r}")
