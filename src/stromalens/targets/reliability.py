"""Noise ceiling of a target from the concordance of two independent pipelines.

If two pipelines measure the same latent quantity with independent errors, their correlation ρ
estimates the target's reliability, and no predictor can correlate with the target better than
√ρ (Spearman's correction for attenuation; the study's Eqs. 8–10; Lage-Castellanos et al. 2019,
PLoS Comput Biol 15:e1006397 for noise ceilings). ρ is reported with a percentile bootstrap CI
over samples.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..correlation import pearson


def pipeline_concordance(
    a: pd.Series, b: pd.Series, *, n_boot: int = 2000, seed: int = 0, level: float = 0.95
) -> dict:
    """Pearson r between two pipelines, its bootstrap CI, and the implied ceiling √max(r, 0)."""
    joined = pd.concat([a.rename("a"), b.rename("b")], axis=1).dropna()
    if len(joined) < 4:
        raise ValueError(f"need at least 4 samples scored by both pipelines, got {len(joined)}")
    x, y = joined["a"].to_numpy(), joined["b"].to_numpy()
    r = pearson(x, y)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(x), size=(n_boot, len(x)))
    xs, ys = x[idx], y[idx]
    xs = xs - xs.mean(axis=1, keepdims=True)
    ys = ys - ys.mean(axis=1, keepdims=True)
    # the same r, vectorised over the resamples (a constant resample gives NaN and is dropped)
    with np.errstate(invalid="ignore", divide="ignore"):
        boot = (xs * ys).sum(1) / np.sqrt((xs**2).sum(1) * (ys**2).sum(1))
    boot = boot[np.isfinite(boot)]
    tail = (1 - level) / 2
    low, high = np.quantile(boot, [tail, 1 - tail])
    return {
        "r": r,
        "ci_low": float(low),
        "ci_high": float(high),
        "ceiling": float(np.sqrt(max(r, 0.0))),
        "ceiling_ci_low": float(np.sqrt(max(low, 0.0))),
        "ceiling_ci_high": float(np.sqrt(max(high, 0.0))),
        "n": int(len(x)),
        "n_boot": int(len(boot)),
    }
