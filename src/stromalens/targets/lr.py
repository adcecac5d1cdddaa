"""ERS–CAF → immune ligand–receptor crosstalk from bulk expression.

Over curated triplets t = (ligand l, receptor r, receiving cell type c) with weights w_t, each
score is a weighted mean of a pair term P_t times the deconvolved fraction p_ic of the receiving
cell type,

    S(i) = (1/Z) Σ_t w_t · P_t(i) · p_ic,      Z = Σ_t w_t,

where x is log2(TPM + 1) and every gene scaling is fitted on the training samples
(:class:`~stromalens.targets.scaling.GeneScaler`; :class:`LRCrosstalk` is an estimator: fit on
the training fold, transform any fold).

**Eq. 6 as written** (``method="product"``, the study's S_LR): P_t = z(x_il) · z(x_ir), with
z = (x − μ̂)/σ̂. A patient with low ligand *and* low receptor (z = −1, −1) scores +1, as high as
one with both high: the product is not monotone in expression.

**Monotone variant** (``method="monotone"``): P_t = s(x_il) · s(x_ir) with the min–max scaling
s(x) = max(0, (x − min̂)/(max̂ − min̂)) ∈ [0, 1] on the training samples, so P_t never
decreases when the ligand or the receptor rises, and both low gives 0.

**CellChat-style score** (``method="cellchat"``; Jin et al. 2021, Nat Commun 12:1088, bulk
mode): with expression max-scaled to [0, 1] over the training samples (L', R'),
P_t = L'R' / (0.5 + L'R').

Weights: by default the number of LIANA resources listing the pair (``n_resources`` in
``resources/ers_caf_lr_triplets.csv``); ``weights="uniform"`` sets w = 1.

Example
-------
>>> model = LRCrosstalk(method="monotone").fit(log_expr.loc[train])     # doctest: +SKIP
>>> s_lr = model.transform(log_expr, fractions)                         # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources

import numpy as np
import pandas as pd

from .scaling import GeneScaler

#: Pair term of each method → the gene scaling it uses.
LR_METHODS: dict[str, str] = {"product": "z", "monotone": "minmax", "cellchat": "max"}
#: The method of the ``lr`` target: the monotone variant recovers the synthetic cohort's planted
#: crosstalk better than Eq. 6 (README, "targets"; tests/targets/test_pipeline.py).
DEFAULT_LR_METHOD = "monotone"
TRIPLETS_FILE = "resources/ers_caf_lr_triplets.csv"
#: Other ERS–CAF → immune pairs, sharing no gene with TRIPLETS_FILE (independent noise ceiling).
INDEPENDENT_TRIPLETS_FILE = "resources/ers_caf_lr_triplets_independent.csv"


def curated_triplets(independent: bool = False) -> pd.DataFrame:
    """The shipped ERS–CAF → immune triplets with provenance (see the files' headers);
    ``independent=True``: the second table, whose genes the first does not use."""
    name = INDEPENDENT_TRIPLETS_FILE if independent else TRIPLETS_FILE
    with resources.files(__package__).joinpath(name).open(encoding="utf-8") as f:
        return pd.read_csv(f, comment="#")


class LRCrosstalk:
    """S_LR as a scikit-learn-style estimator (gene scaling fitted on training samples only).

    Parameters
    ----------
    triplets : DataFrame with ``ligand, receptor, cell_type`` (and ``n_resources``); default the
        curated table.
    weights : ``"resources"`` (w = n_resources) or ``"uniform"``.
    method : ``"product"`` (Eq. 6), ``"monotone"`` or ``"cellchat"`` (see the module).
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
        if self.method not in LR_METHODS:
            raise ValueError(f"method must be one of {', '.join(LR_METHODS)}, not {self.method!r}")
        return table.assign(weight=w.to_numpy())

    def fit(self, log_expr: pd.DataFrame, fractions: pd.DataFrame | None = None) -> LRCrosstalk:
        """Fit the per-gene scaling on training samples (samples × genes, log2(TPM + 1))."""
        table = self._table()
        genes = sorted(set(table["ligand"]) | set(table["receptor"]))
        present = [g for g in genes if g in log_expr.columns]
        if not present:
            raise ValueError("none of the ligand/receptor genes is in the expression data")
        self.scaler_ = GeneScaler(LR_METHODS[self.method]).fit(log_expr[present])
        self.table_ = table[table["ligand"].isin(present) & table["receptor"].isin(present)]
        self.missing_genes_ = [g for g in genes if g not in log_expr.columns]
        return self

    def transform(self, log_expr: pd.DataFrame, fractions: pd.DataFrame) -> pd.Series:
        """The score per sample (``method``'s pair term, see the module)."""
        if not hasattr(self, "table_"):
            raise RuntimeError("LRCrosstalk is not fitted; call fit() on the training samples")
        table = self.table_
        absent_types = sorted(set(table["cell_type"]) - set(fractions.columns))
        if absent_types:
            raise ValueError(f"the fractions lack receiving cell types: {', '.join(absent_types)}")
        fractions = fractions.loc[log_expr.index]
        scaled = self.scaler_.transform(log_expr)
        # float casts: a table restored from a JSON state may hold its numbers as objects
        ligand = scaled[table["ligand"]].to_numpy(float)
        pair = ligand * scaled[table["receptor"]].to_numpy(float)
        if self.method == "cellchat":
            pair = pair / (0.5 + pair)
        pair = np.nan_to_num(pair)  # a gene constant in training carries no crosstalk information
        receiving = fractions[list(table["cell_type"])].to_numpy(float)
        w = table["weight"].to_numpy(float)
        score = (pair * receiving) @ w / w.sum()
        return pd.Series(score, index=log_expr.index, name="lr")

    def fit_transform(self, log_expr, fractions):
        return self.fit(log_expr, fractions).transform(log_expr, fractions)


@dataclass
class LRInputs:
    """What a cross-validation fold needs to recompute S_LR with its own gene scaling.

    The targets stage fits S_LR's gene scaling on ``fitted_on`` (the whole cohort by default),
    so the ``lr`` column of ``targets.parquet`` of a held-out patient depends on the held-out
    patients' expression. Training instead refits :class:`LRCrosstalk` on each fold's training
    patients (:meth:`fit`) and scores every patient with it (:meth:`score`).

    Attributes
    ----------
    log_expr : DataFrame, patients × the measured ligand and receptor genes, log2(TPM + 1)
    fractions : DataFrame, patients × the receiving cell types, the fractions S_LR reads
        (quanTIseq's)
    triplets : DataFrame, the triplet table (``ligand, receptor, cell_type``, ``n_resources``)
    method, weights : the :class:`LRCrosstalk` settings of the ``lr`` target
    fitted_on : the rows whose gene scaling gave the targets table's ``lr`` column

    Example
    -------
    >>> model = inputs.fit(train_ids)                   # doctest: +SKIP
    >>> s_lr = inputs.score(model)                      # every patient, the fold's scaling
    """

    log_expr: pd.DataFrame
    fractions: pd.DataFrame
    triplets: pd.DataFrame
    method: str
    weights: str
    fitted_on: list

    def estimator(self) -> LRCrosstalk:
        """The unfitted :class:`LRCrosstalk` of the ``lr`` target."""
        return LRCrosstalk(self.triplets, weights=self.weights, method=self.method)

    def complete(self, ids=None) -> pd.Series:
        """Whether each row of ``ids`` (default all) has every gene and fraction."""
        ids = list(self.log_expr.index) if ids is None else list(ids)
        return self.log_expr.loc[ids].notna().all(axis=1) & self.fractions.loc[ids].notna().all(
            axis=1
        )

    def fit(self, ids) -> LRCrosstalk:
        """:class:`LRCrosstalk` with its gene scaling fitted on the rows ``ids`` that have
        complete inputs."""
        ids = list(ids)
        missing = [i for i in ids if i not in self.log_expr.index]
        if missing:
            raise ValueError(
                f"no ligand/receptor expression for {len(missing)} training rows "
                f"(e.g. {', '.join(map(str, missing[:5]))})"
            )
        rows = self.complete(ids)
        return self.estimator().fit(self.log_expr.loc[rows.index[rows]])

    def score(self, model: LRCrosstalk, ids=None) -> pd.Series:
        """S_LR of the rows ``ids`` (default all) under the fitted ``model``; NaN for a row
        with incomplete inputs (the pair term would otherwise read a missing gene as 0)."""
        ids = list(self.log_expr.index) if ids is None else list(ids)
        score = model.transform(self.log_expr.loc[ids], self.fractions.loc[ids])
        return score.where(self.complete(ids))

    def reindex(self, ids) -> LRInputs:
        """These inputs with rows ``ids`` (NaN where a row is absent)."""
        ids = list(ids)
        return LRInputs(
            self.log_expr.reindex(ids),
            self.fractions.reindex(ids),
            self.triplets,
            self.method,
            self.weights,
            self.fitted_on,
        )

    def relabel(self, mapping: dict) -> LRInputs:
        """These inputs with row ids mapped through ``mapping`` (sample → patient)."""
        return LRInputs(
            self.log_expr.rename(index=mapping),
            self.fractions.rename(index=mapping),
            self.triplets,
            self.method,
            self.weights,
            [mapping.get(i, i) for i in self.fitted_on],
        )
