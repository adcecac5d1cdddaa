"""Robustness tables from the probes: missing modalities (analysis 3) and prompt perturbation
(analysis 6)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from .fidelity import macro_r, pearson_summary

PROMPT_SETS = ("NONE", "CUR", "COOP", "SYN", "ANTI", "OOD")


def missing_modality_table(rows: pd.DataFrame) -> pd.DataFrame:
    """model, modality, level, macro_r, macro_r_sd: the pooled out-of-fold macro-r of each draw
    (tile subsets) or combination (sequences removed), mean and SD over draws/combinations."""
    if rows.empty:
        return pd.DataFrame(columns=["model", "modality", "level", "macro_r", "macro_r_sd"])
    out = []
    for (model, modality, level), part in rows.groupby(["model", "modality", "level"]):
        per_draw = [macro_r(p) for _, p in part.groupby("repeat")]
        out.append(
            {
                "model": model,
                "modality": modality,
                "level": float(level),
                "macro_r": float(np.mean(per_draw)),
                "macro_r_sd": float(np.std(per_draw, ddof=1)) if len(per_draw) > 1 else 0.0,
            }
        )
    return pd.DataFrame(out)


def prompt_perturbation_table(predictions: pd.DataFrame, perturbed: pd.DataFrame) -> pd.DataFrame:
    """prompt_set, target, r, r_fold_sd, n for the WSI branch: NONE (``clip_mil_none``), CUR
    (``wsi_clip``), COOP (``clip_mil_coop``) from the out-of-fold predictions; SYN, ANTI, OOD
    from the CUR model with swapped prompt text."""
    sources = {
        "NONE": predictions[predictions["model"] == "clip_mil_none"],
        "CUR": predictions[predictions["model"] == "wsi_clip"],
        "COOP": predictions[predictions["model"] == "clip_mil_coop"],
    }
    if not perturbed.empty:
        for label in ("SYN", "ANTI", "OOD"):
            sources[label] = perturbed[perturbed["prompt_set"] == label]
    rows = []
    for label in PROMPT_SETS:
        part = sources.get(label)
        if part is None or part.empty:
            continue
        for target, t_part in part.groupby("target", sort=False):
            pooled = pearson_summary(t_part["y_true"].to_numpy(float), t_part["y_pred"].to_numpy())
            folds = [
                pearson_summary(f["y_true"].to_numpy(float), f["y_pred"].to_numpy())["r"]
                for _, f in t_part.groupby("fold")
            ]
            folds = np.asarray(folds, float)
            folds = folds[np.isfinite(folds)]
            rows.append(
                {
                    "prompt_set": label,
                    "target": target,
                    "r": pooled["r"],
                    "r_fold_sd": float(np.std(folds, ddof=1)) if len(folds) > 1 else np.nan,
                    "n": pooled["n"],
                }
            )
    return pd.DataFrame(rows)
