"""Target scaling fitted on training samples only.

S_ERS–CAF is the ssGSEA score z-scored across the cohort, z = (s − μ̂) / σ̂, with μ̂ and σ̂
(sample SD) fitted on the training fold when used in cross-validation, and applied unchanged to
the held-out fold.
"""

from __future__ import annotations

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
