"""Robustness tables from the probes: missing modalities (analysis 3) and prompt perturbation
(analysis 6)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..names import PROMPT_SETS
from .fidelity import macro_r, pearson_summary


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


def _rows_r(y: np.ndarray, p: np.ndarray) -> np.ndarray:
    """Pearson r of each row pair of (B, n) arrays."""
    y = y - y.mean(1, keepdims=True)
    p = p - p.mean(1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (y * p).sum(1) / np.sqrt((y**2).sum(1) * (p**2).sum(1))


def paired_r_difference(
    y: np.ndarray, pred_a: np.ndarray, pred_b: np.ndarray, n_boot: int = 1000, seed: int = 0
) -> tuple[float, float, float, float]:
    """r(y, a) − r(y, b) on the same patients, its 95% paired percentile-bootstrap CI (patients
    resampled) and the two-sided bootstrap p, min(1, 2·min(P*(Δ ≤ 0), P*(Δ ≥ 0))) (Efron &
    Tibshirani 1993, §16), floored at 1/(B + 1)."""
    n = len(y)
    diff = float(_rows_r(y[None], pred_a[None])[0] - _rows_r(y[None], pred_b[None])[0])
    idx = np.random.default_rng(seed).integers(0, n, size=(n_boot, n))
    boot = _rows_r(y[idx], pred_a[idx]) - _rows_r(y[idx], pred_b[idx])
    boot = boot[np.isfinite(boot)]
    low, high = np.quantile(boot, [0.025, 0.975])
    p = min(1.0, 2 * min((boot <= 0).mean(), (boot >= 0).mean()))
    return diff, float(low), float(high), float(max(p, 1 / (len(boot) + 1)))


#: The prompt-perturbation table's columns of the difference to CUR over the folds.
CV_COLUMNS = ("cv_diff_vs_cur", "cv_ci_low", "cv_ci_high", "cv_p_vs_cur")


def _over_folds(perturbed: pd.DataFrame, cur: pd.DataFrame, target: str) -> dict:
    """The CV_COLUMNS of one prompt set against CUR on the same folds (NaN without 2 folds)."""
    from .comparisons import fold_differences, over_folds

    frame = pd.concat([perturbed.assign(model="set"), cur.assign(model="CUR")])
    out = over_folds(fold_differences(frame, "set", "CUR", [target]))
    if out is None:
        return {}
    return dict(zip(CV_COLUMNS, (out["estimate"], out["ci_low"], out["ci_high"], out["p"]),
                    strict=True))  # fmt: skip


def prompt_perturbation_table(
    predictions: pd.DataFrame, perturbed: pd.DataFrame | None, n_boot: int = 1000, seed: int = 0
) -> pd.DataFrame:
    """prompt_set, target, r with its Fisher-z 95% CI (``r_ci_low``, ``r_ci_high``), r_fold_sd,
    n, and the difference to CUR with its paired-bootstrap CI and p (``diff_vs_cur``,
    ``diff_ci_low``, ``diff_ci_high``, ``p_vs_cur``), for the WSI branch, all out of fold on
    the same folds: NONE (``clip_mil_none``), CUR (``wsi_clip``), COOP (``clip_mil_coop``) of
    the main CV; SYN, ANTI, OOD (``perturbed``, column ``prompt_set``) of the CLIP-guided
    model retrained with each prompt set (:mod:`stromalens.training.prompt_sets`). Beside the
    patient bootstrap, which resamples patients but not fits, the difference over the folds:
    the mean per-fold r difference with Nadeau and Bengio's corrected resampled t interval and
    p (``cv_diff_vs_cur``, ``cv_ci_low``, ``cv_ci_high``, ``cv_p_vs_cur``;
    :func:`~stromalens.evaluation.comparisons.over_folds`), which holds how much the
    difference moves between fits."""
    sources = {
        "NONE": predictions[predictions["model"] == "clip_mil_none"],
        "CUR": predictions[predictions["model"] == "wsi_clip"],
        "COOP": predictions[predictions["model"] == "clip_mil_coop"],
    }
    if perturbed is not None and not perturbed.empty:
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
            row = {
                "prompt_set": label,
                "target": target,
                "r": pooled["r"],
                "r_ci_low": pooled["r_ci_low"],
                "r_ci_high": pooled["r_ci_high"],
                "r_fold_sd": float(np.std(folds, ddof=1)) if len(folds) > 1 else np.nan,
                "n": pooled["n"],
                "diff_vs_cur": np.nan,
                "diff_ci_low": np.nan,
                "diff_ci_high": np.nan,
                "p_vs_cur": np.nan,
                **dict.fromkeys(CV_COLUMNS, np.nan),
            }
            cur = sources.get("CUR")
            if label != "CUR" and cur is not None and not cur.empty:
                a = t_part.set_index("patient_id")
                b = cur[cur["target"] == target].set_index("patient_id")
                common = a.index.intersection(b.index)
                if len(common) >= 4:
                    diff, low, high, p = paired_r_difference(
                        a.loc[common, "y_true"].to_numpy(float),
                        a.loc[common, "y_pred"].to_numpy(float),
                        b.loc[common, "y_pred"].to_numpy(float),
                        n_boot,
                        seed,
                    )
                    row.update(diff_vs_cur=diff, diff_ci_low=low, diff_ci_high=high, p_vs_cur=p)
                row.update(_over_folds(t_part, cur[cur["target"] == target], target))
            rows.append(row)
    return pd.DataFrame(rows)
