"""Simulated cohorts with planted effects for the survival and treatment tests."""

from __future__ import annotations

import numpy as np
import pandas as pd

#: Planted log hazard ratios of the simulated cohorts.
LOG_HR = {
    "age_per_10y": 0.15,
    "log_volume_cc": 0.30,
    "sex_M": 0.0,
    "location_sacrum": 0.2,
    "location_skull_base": -0.2,
    "ers_caf_T2_vs_T1": 0.3,
    "ers_caf_T3_vs_T1": 0.8,
    "lr_T2_vs_T1": 0.0,
    "lr_T3_vs_T1": -0.5,
    "heterogeneity_per_sd": 0.7,
}


def simulate_cohort(n: int = 300, seed: int = 0, signal: bool = True, k: int = 5):
    """(scores, clinical, folds) of ``n`` patients whose OS and PFS hazards follow ``LOG_HR`` on
    the very terms the survival module builds (tertiles of the scores, H per sample SD) when
    ``signal``; without it the scores are independent of the outcomes."""
    rng = np.random.default_rng(seed)
    ids = pd.Index([f"P{i:04d}" for i in range(n)], name="patient_id")
    scores = pd.DataFrame(
        rng.normal(size=(n, 3)), index=ids, columns=["ers_caf", "lr", "heterogeneity"]
    )
    clinical = pd.DataFrame(
        {
            "age": np.clip(rng.normal(60, 12, n), 18, 90).round(1),
            "sex": rng.choice(["F", "M"], n, p=[0.4, 0.6]),
            "location": rng.choice(
                ["mobile_spine", "sacrum", "skull_base"], n, p=[0.2, 0.45, 0.35]
            ),
            "volume_cc": np.exp(rng.normal(np.log(50), 0.6, n)).round(2),
        },
        index=ids,
    )
    terms = pd.DataFrame(index=ids)
    terms["age_per_10y"] = clinical["age"] / 10
    terms["log_volume_cc"] = np.log(clinical["volume_cc"])
    terms["sex_M"] = (clinical["sex"] == "M").astype(float)
    terms["location_sacrum"] = (clinical["location"] == "sacrum").astype(float)
    terms["location_skull_base"] = (clinical["location"] == "skull_base").astype(float)
    for t in ("ers_caf", "lr"):
        q1, q2 = np.quantile(scores[t], [1 / 3, 2 / 3])
        terms[f"{t}_T2_vs_T1"] = ((scores[t] > q1) & (scores[t] <= q2)).astype(float)
        terms[f"{t}_T3_vs_T1"] = (scores[t] > q2).astype(float)
    h = scores["heterogeneity"]
    terms["heterogeneity_per_sd"] = (h - h.mean()) / h.std(ddof=1)
    beta = pd.Series(LOG_HR)
    if not signal:
        beta[[c for c in beta.index if c.split("_")[0] in ("ers", "lr", "heterogeneity")]] = 0.0
    lp = terms[beta.index].to_numpy() @ beta.to_numpy()
    lp = lp - lp.mean()
    for endpoint, scale in (("os", 60.0), ("pfs", 30.0)):
        t_event = rng.exponential(scale * np.exp(-lp))
        t_cens = rng.uniform(12.0, 72.0, n)
        clinical[f"{endpoint}_time"] = np.maximum(np.minimum(t_event, t_cens), 0.1).round(1)
        clinical[f"{endpoint}_event"] = (t_event <= t_cens).astype(int)
    folds = pd.Series(rng.permutation(np.arange(n) % k), index=ids, name="fold")
    return scores, clinical, folds


#: Planted log odds ratio of response per SD of the LR surrogate, and per treatment vs RT.
LOG_OR_LR = -0.9
LOG_OR_TREATMENT = {"RT": 0.0, "surgery": 0.4, "surgery+RT": 0.9}


def simulate_response(n: int = 400, seed: int = 0):
    """(scores, clinical) with ``response`` logistic in LR per SD (``LOG_OR_LR``) and treatment;
    the clinical covariates carry no effect."""
    scores, clinical, _ = simulate_cohort(n, seed=seed)
    rng = np.random.default_rng([seed, 7])
    clinical["treatment"] = rng.choice(list(LOG_OR_TREATMENT), n, p=[0.3, 0.3, 0.4])
    lr = scores["lr"]
    logit = (
        0.2
        + LOG_OR_LR * (lr - lr.mean()) / lr.std(ddof=1)
        + clinical["treatment"].map(LOG_OR_TREATMENT)
    )
    clinical["response"] = (rng.uniform(size=n) < 1 / (1 + np.exp(-logit))).astype(int)
    return scores, clinical


#: Planted treatment × LR interaction (log ratio of the per-SD odds ratios, arm vs surgery):
#: the score predicts response under radiotherapy and not after surgery alone.
LOG_OR_INTERACTION = {"surgery": 0.0, "surgery+RT": -1.2}


def simulate_interaction(n: int = 400, seed: int = 0, predictive: bool = True, k: int = 5):
    """(scores, clinical, folds) with ``response`` logistic in LR per SD (``LOG_OR_LR`` in the
    reference arm ``surgery``), treatment, and — when ``predictive`` — the treatment × LR
    interaction ``LOG_OR_INTERACTION``; the clinical covariates carry no effect."""
    scores, clinical, folds = simulate_cohort(n, seed=seed, k=k)
    rng = np.random.default_rng([seed, 11])
    arms = list(LOG_OR_INTERACTION)
    clinical["treatment"] = rng.choice(arms, n, p=[0.45, 0.55])
    lr = scores["lr"]
    s = (lr - lr.mean()) / lr.std(ddof=1)
    slope = LOG_OR_LR + (clinical["treatment"].map(LOG_OR_INTERACTION) if predictive else 0.0)
    logit = 0.1 + 0.5 * (clinical["treatment"] == "surgery+RT") + slope * s
    clinical["response"] = (rng.uniform(size=n) < 1 / (1 + np.exp(-logit))).astype(int)
    return scores, clinical, folds
