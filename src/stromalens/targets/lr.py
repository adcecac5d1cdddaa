"""ERS–CAF → immune ligand–receptor crosstalk from bulk expression.

**Product score** (the study's S_LR). Over curated triplets t = (ligand l, receptor r, receiving
cell type c) with weights w_t,

    S_LR(i) = (1/Z) Σ_t w_t · z(x_il) · z(x_ir) · p_ic,      Z = Σ_t w_t,

where x is log2(TPM + 1), z(·) standardises each gene with a mean and SD fitted on the training
samples (:class:`LRCrosstalk` is an estimator: fit on the training fold, transform any fold), and
p_ic is the deconvolved fraction of the receiving cell type.

**CellChat-style score** (an independent pipeline for the noise ceiling; Jin et al. 2021,
Nat Commun 12:1088, bulk mode): with ligand and receptor expression max-scaled to [0, 1] over
the training samples (L', R'),

    P_t(i) = L'·R' / (0.5 + L'·R'),     S_CC(i) = (1/Z) Σ_t w_t · P_t(i) · p_ic.

Weights: by default the number of LIANA resources listing the pair (``n_resources`` in
``resources/ers_caf_lr_triplets.csv``); ``weights="uniform"`` sets w = 1.
"""

from __future__ import annotations

from importlib import resources

import numpy as np
import pandas as pd


def curated_triplets() -> pd.DataFrame:
    """The shipped ERS–CAF → immune triplets with provenance (see the file's header)."""
    with (
        resources.files(__package__)
        .joinpath("resources/ers_caf_lr_triplets.csv")
        .open(encoding="utf-8") as f
    ):
        return pd.read_csv(f, comment="#")


class LRCrosstalk:
    """S_LR as a scikit-learn-style estimator (gene scaling fitted on training samples only).

    Parameters
    ----------
    triplets : DataFrame with ``ligand, receptor, cell_type`` (and ``n_resources``); default the
        curated table.
    weights : ``"resources"`` (w = n_resources) or ``"uniform"``.
    method : ``"product"`` (S_LR) or ``"cellchat"``.
    """

    def __init__(
        self,
        triplets: pd.DataFrame | None = None,
        *,
        weights: str = "resources",
        method: str = "product",
    ):
        self.triplets = triplets
        self.weights = weights
        self.method = method

    def _table(self) -> pd.DataFrame:
        table = curated_triplets() if self.triplets is None else self.triplets
        missing = {"ligand", "receptor", "cell_type"} - set(table.columns)
        if missing:
            raise ValueError(f"triplets need columns {', '.join(sorted(missing))}")
        if self.weights == "resources":
            if "n_resources" not in table:
                raise ValueError("weights='resources' needs an 'n_resources' column")
            w = table["n_resources"].astype(float)
        elif self.weights == "uniform":
            w = pd.Series(1.0, index=table.index)
        else:
            raise ValueError(f"weights must be 'resources' or 'uniform', not {self.weights!r}")
        if self.method not in {"product", "cellchat"}:
            raise ValueError(f"method must be 'product' or 'cellchat', not {self.method!r}")
        return table.assign(weight=w.to_numpy())

    def fit(self, log_expr: pd.DataFrame, fractions: pd.DataFrame | None = None) -> LRCrosstalk:
        """Fit the per-gene scaling on training samples (samples × genes, log2(TPM + 1))."""
        table = self._table()
        genes = sorted(set(table["ligand"]) | set(table["receptor"]))
        absent = [g for g in genes if g not in log_expr.columns]
        if len(absent) == len(genes):
            raise ValueError("none of the ligand/receptor genes is in the expression data")
        present = [g for g in genes if g in log_expr.columns]
        x = log_expr[present]
        self.mean_ = x.mean()
        self.sd_ = x.std(ddof=1).replace(0.0, np.nan)
        self.max_ = x.max().replace(0.0, np.nan)
        self.table_ = table[table["ligand"].isin(present) & table["receptor"].isin(present)]
        self.missing_genes_ = absent
        return self

    def transform(self, log_expr: pd.DataFrame, fractions: pd.DataFrame) -> pd.Series:
        """S_LR (or the CellChat-style score) per sample."""
        if not hasattr(self, "table_"):
            raise RuntimeError("LRCrosstalk is not fitted; call fit() on the training samples")
        table = self.table_
        absent_types = sorted(set(table["cell_type"]) - set(fractions.columns))
        if absent_types:
            raise ValueError(f"the fractions lack receiving cell types: {', '.join(absent_types)}")
        fractions = fractions.loc[log_expr.index]
        if self.method == "product":
            z = (log_expr[self.mean_.index] - self.mean_) / self.sd_
            pair = z[table["ligand"]].to_numpy() * z[table["receptor"]].to_numpy()
        else:
            scaled = (log_expr[self.max_.index] / self.max_).clip(lower=0.0)
            lr = scaled[table["ligand"]].to_numpy() * scaled[table["receptor"]].to_numpy()
            pair = lr / (0.5 + lr)
        pair = np.nan_to_num(pair)  # a constant gene carries no crosstalk information
        receiving = fractions[table["cell_type"]].to_numpy()
        w = table["weight"].to_numpy()
        score = (pair * receiving) @ w / w.sum()
        return pd.Series(score, index=log_expr.index, name="lr")

    def fit_transform(self, log_expr, fractions):
        return self.fit(log_expr, fractions).transform(log_expr, fractions)
