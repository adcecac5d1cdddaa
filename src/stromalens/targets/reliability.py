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


#: What each concordance bounds (written beside it in ``reliability.json``).
BOUNDS = {
    "shared_inputs": "agreement of two scoring methods on the same inputs (gene set, triplets, "
    "signature): errors of those inputs are in both pipelines and count as agreement, so this "
    "over-estimates the target's reliability; it bounds only the noise the method adds",
    "independent": "agreement of two pipelines that share no gene set, signature gene or "
    "ligand-receptor pair: a conservative (lower-bound) estimate of the target's reliability, "
    "and sqrt(r) the noise ceiling on any predictor's r (the study's Eqs. 8-10)",
}


def noise_ceiling(
    targets: pd.DataFrame,
    shared: tuple[str, str],
    independent: tuple[str, str] | None,
    *,
    split_half: bool = False,
    n_boot: int = 2000,
    seed: int = 0,
) -> dict:
    """The record of one target in ``reliability.json``.

    Both concordances are given, each labelled (``bounds``) with its pipelines; the top-level
    ``r``/``ceiling`` fields (what evaluation and the report read) are the independent one, or
    the shared-input one where no independent pipeline could run (``ceiling_from`` says which).
    ``split_half``: the independent pipelines each used half the signature's genes, and the
    Spearman–Brown value is added.
    """
    from .independent import spearman_brown

    def one(a: str, b: str, kind: str) -> dict:
        out = pipeline_concordance(targets[a], targets[b], n_boot=n_boot, seed=seed)
        return out | {"pipelines": [a, b], "bounds": BOUNDS[kind]}

    record = {"shared_inputs": one(*shared, "shared_inputs")}
    if independent is not None:
        record["independent"] = one(*independent, "independent")
        if split_half:
            record["independent"]["r_spearman_brown"] = spearman_brown(record["independent"]["r"])
    chosen = "independent" if "independent" in record else "shared_inputs"
    return dict(record[chosen]) | {"ceiling_from": chosen} | record
