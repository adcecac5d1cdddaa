"""Target scaling fitted on training samples only.

S_ERS–CAF is the ssGSEA score z-scored across the cohort, z = (s − μ̂) / σ̂, with μ̂ and σ̂
(sample SD) fitted on the training fold when used in cross-validation, and applied unchanged to
the held-out fold. :class:`GeneScaler` does the same per gene for the ligand–receptor score.
"""

from __future__ import annotations

import numpy as np
import pandas as pd


class TargetScaler:
    """z-scoring of target columns: ``fit`` on training rows, ``transform`` any rows."""

    def fit(self, targets: pd.DataFrame | pd.Series) -> TargetScaler:
        frame = targets.to_frame() if isinstance(targets, pd.Series) else targets
        sd = frame.std(ddof=1)
        if (sd == 0).any() or sd.isna().any():
            bad = sd.index[(sd == 0) | sd.isna()][0]
            raise ValueError(f"target '{bad}' is constant (or has < 2 values) on the training rows")
        self.mean_ = frame.mean()
        self.scale_ = sd
        return self

    def transform(self, targets: pd.DataFrame | pd.Series):
        if not hasattr(self, "mean_"):
            raise RuntimeError("TargetScaler is not fitted; call fit() on the training rows")
        if isinstance(targets, pd.Series):
            return (targets - self.mean_[targets.name]) / self.scale_[targets.name]
        return (targets[self.mean_.index] - self.mean_) / self.scale_

    def fit_transform(self, targets):
        return self.fit(targets).transform(targets)


#: How :class:`GeneScaler` maps a gene's log expression x (per gene, fitted on training rows).
GENE_SCALINGS = ("z", "minmax", "max")


class GeneScaler:
    """Per-gene scaling of log expression, fitted on training samples (an estimator).

    ``kind="z"``:       s(x) = (x − μ̂) / σ̂                 (the z-scores of S_LR's Eq. 6)
    ``kind="minmax"``:  s(x) = max(0, (x − min̂) / (max̂ − min̂))   (≥ 0 and increasing in x)
    ``kind="max"``:     s(x) = max(0, x / max̂)              (CellChat's bulk scaling)

    μ̂, σ̂ (sample SD), min̂ and max̂ are each gene's over the rows given to :meth:`fit`; a
    held-out sample below the training minimum scales to 0, above the maximum beyond 1 (so the
    order of samples is kept). A gene constant on the training rows scales to NaN (no
    information); the caller decides what that means.

    Example
    -------
    >>> import pandas as pd
    >>> x = pd.DataFrame({"CXCL12": [1.0, 2.0, 3.0]})
    >>> GeneScaler("minmax").fit(x).transform(x)["CXCL12"].tolist()
    [0.0, 0.5, 1.0]
    """

    def __init__(self, kind: str = "z"):
        self.kind = kind

    def fit(self, log_expr: pd.DataFrame) -> GeneScaler:
        if self.kind not in GENE_SCALINGS:
            raise ValueError(f"kind must be one of {', '.join(GENE_SCALINGS)}, not {self.kind!r}")
        if len(log_expr) < 2:
            raise ValueError(
                f"need at least 2 training samples to scale genes, got {len(log_expr)}"
            )
        self.mean_ = log_expr.mean()
        self.sd_ = log_expr.std(ddof=1)
        self.min_ = log_expr.min()
        self.max_ = log_expr.max()
        return self

    def transform(self, log_expr: pd.DataFrame) -> pd.DataFrame:
        if not hasattr(self, "mean_"):
            raise RuntimeError("GeneScaler is not fitted; call fit() on the training samples")
        x = log_expr[self.mean_.index]
        if self.kind == "z":
            return (x - self.mean_) / self.sd_.replace(0.0, np.nan)
        if self.kind == "minmax":
            span = (self.max_ - self.min_).replace(0.0, np.nan)
            return ((x - self.min_) / span).clip(lower=0.0)
        return (x / self.max_.replace(0.0, np.nan)).clip(lower=0.0)

    def fit_transform(self, log_expr: pd.DataFrame) -> pd.DataFrame:
        return self.fit(log_expr).transform(log_expr)

    def state(self) -> dict:
        """The fitted parameters as plain numbers (for ``targets.json`` and model bundles)."""
        return {
            "kind": self.kind,
            **{
                name: {g: float(v) for g, v in getattr(self, f"{name}_").items()}
                for name in ("mean", "sd", "min", "max")
            },
        }
