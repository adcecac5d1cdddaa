"""Known truth (synthetic cohorts): how well each model's out-of-fold predictions track the
planted latent biology of ``truth.parquet`` — ERS–CAF activity ``a``, CAF→immune crosstalk ``b``
and heterogeneity ``h`` — rather than the noisy RNA-derived targets."""

from __future__ import annotations

import pandas as pd

from ..names import LATENTS
from .fidelity import pearson_summary


def truth_table(predictions: pd.DataFrame, truth: pd.DataFrame) -> pd.DataFrame:
    """model, target, latent, r, n: Pearson r between predictions and the planted latent."""
    missing = [v for v in LATENTS.values() if v not in truth.columns]
    if missing:
        raise ValueError(f"truth table lacks the latent column(s) {missing}")
    rows = []
    for (model, target), part in predictions.groupby(["model", "target"], sort=True):
        latent = LATENTS.get(target)
        if latent is None:
            continue
        pred = part.set_index("patient_id")["y_pred"]
        common = pred.index.intersection(truth.index)
        s = pearson_summary(truth.loc[common, latent].to_numpy(float), pred.loc[common].to_numpy())
        rows.append({"model": model, "target": target, "latent": latent, "r": s["r"], "n": s["n"]})
    return pd.DataFrame(rows)
