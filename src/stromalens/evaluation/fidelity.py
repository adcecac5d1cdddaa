"""Fidelity of every model's out-of-fold predictions (the study's Tables 1–2), with the noise
ceiling of each target beside it.

Per model and target, over the pooled out-of-fold predictions ŷ and the observed targets y:

* Pearson r with its Fisher-z 95% CI, ``tanh(atanh r ± 1.96/√(n−3))``, and the two-sided p of
  H0: ρ = 0 (``scipy.stats.pearsonr``);
* RMSE = √mean(ŷ − y)², MAE = mean|ŷ − y|;
* calibration slope b and intercept a of the observed on the predicted, y = a + b ŷ (ordinary
  least squares; b = 1, a = 0 for a calibrated model, b < 1 for over-dispersed predictions —
  Van Calster et al. 2019, *BMC Med* 17:230);
* mean ± SD over the K outer folds of the per-fold r and RMSE.

The macro-r of a model is the mean over targets of the pooled r; its fold mean ± SD is that of
the per-fold macro-r. The noise ceiling (targets stage, ``reliability.json``) is the highest r a
perfect image model could reach given the targets' own measurement noise.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats

from ..correlation import pearson
from ..names import TARGETS
from ..rundir import metric_key

#: Columns of :func:`fidelity` that ``metrics.json`` carries, as ``cv.<model>.<column>.<target>``.
METRIC_COLUMNS: tuple[str, ...] = (
    "r",
    "r_ci_low",
    "r_ci_high",
    "r_fold_sd",
    "rmse",
    "mae",
    "calibration_slope",
    "calibration_intercept",
)


def pearson_summary(y: np.ndarray, pred: np.ndarray) -> dict:
    """r (:func:`stromalens.correlation.pearson`, NaN where undefined), its Fisher-z 95% CI and
    p (``scipy.stats.pearsonr``; NaN below the 4 pairs a Fisher interval needs)."""
    ok = np.isfinite(y) & np.isfinite(pred)
    y, pred = y[ok], pred[ok]
    r = pearson(pred, y)
    out = {"r": r, "r_ci_low": np.nan, "r_ci_high": np.nan, "p": np.nan, "n": int(ok.sum())}
    if len(y) < 4 or not np.isfinite(r):
        return out
    res = stats.pearsonr(pred, y)
    ci = res.confidence_interval(0.95)  # Fisher z
    out.update(r_ci_low=float(ci.low), r_ci_high=float(ci.high))
    out["p"] = float(res.pvalue)
    return out


def calibration(y: np.ndarray, pred: np.ndarray) -> tuple[float, float]:
    """(slope, intercept) of the OLS regression of observed ``y`` on predicted ``pred``."""
    ok = np.isfinite(y) & np.isfinite(pred)
    if ok.sum() < 3 or np.ptp(pred[ok]) == 0:
        return np.nan, np.nan
    res = stats.linregress(pred[ok], y[ok])
    return float(res.slope), float(res.intercept)


def _fold_values(part: pd.DataFrame) -> tuple[list[float], list[float]]:
    rs, rmses = [], []
    for _, fold in part.groupby("fold"):
        y, p = fold["y_true"].to_numpy(float), fold["y_pred"].to_numpy(float)
        rs.append(pearson_summary(y, p)["r"])
        rmses.append(float(np.sqrt(np.mean((p - y) ** 2))))
    return rs, rmses


def finite_mean(values) -> float:
    """Mean of the finite ``values``; NaN when there are none (a fold or target whose r is
    undefined), without numpy's "Mean of empty slice" warning."""
    values = np.asarray(values, float)
    values = values[np.isfinite(values)]
    return float(values.mean()) if len(values) else np.nan


def _sd(values) -> float:
    values = np.asarray(values, float)
    values = values[np.isfinite(values)]
    return float(np.std(values, ddof=1)) if len(values) > 1 else np.nan


def fidelity(predictions: pd.DataFrame, reliability: dict | None = None) -> pd.DataFrame:
    """One row per model × target (columns in ``docs/run_directory.md``)."""
    rows = []
    for (model, target), part in predictions.groupby(["model", "target"], sort=True):
        y, p = part["y_true"].to_numpy(float), part["y_pred"].to_numpy(float)
        summary = pearson_summary(y, p)
        slope, intercept = calibration(y, p)
        fold_r, fold_rmse = _fold_values(part)
        ceiling = (reliability or {}).get(target, {})
        rows.append(
            {
                "model": model,
                "target": target,
                **{k: summary[k] for k in ("r", "r_ci_low", "r_ci_high", "p")},
                "r_fold_mean": finite_mean(fold_r),
                "r_fold_sd": _sd(fold_r),
                "rmse": float(np.sqrt(np.mean((p - y) ** 2))),
                "rmse_fold_sd": _sd(fold_rmse),
                "mae": float(np.mean(np.abs(p - y))),
                "calibration_slope": slope,
                "calibration_intercept": intercept,
                "n": summary["n"],
                "ceiling": ceiling.get("ceiling", np.nan),
                "ceiling_ci_low": ceiling.get("ceiling_ci_low", np.nan),
                "ceiling_ci_high": ceiling.get("ceiling_ci_high", np.nan),
            }
        )
    table = pd.DataFrame(rows)
    table["_order"] = table["target"].map({t: i for i, t in enumerate(TARGETS)})
    return table.sort_values(["model", "_order"]).drop(columns="_order").reset_index(drop=True)


def macro_r(predictions: pd.DataFrame) -> float:
    """Mean over targets of the pooled Pearson r of one model's predictions."""
    return finite_mean(
        [
            pearson_summary(p["y_true"].to_numpy(float), p["y_pred"].to_numpy(float))["r"]
            for _, p in predictions.groupby("target")
        ]
    )


def fidelity_macro(predictions: pd.DataFrame) -> pd.DataFrame:
    """One row per model: pooled macro-r and the mean ± SD over folds of the per-fold macro-r."""
    rows = []
    for model, part in predictions.groupby("model", sort=True):
        per_fold = [macro_r(f) for _, f in part.groupby("fold")]
        rows.append(
            {
                "model": model,
                "macro_r": macro_r(part),
                "macro_r_fold_mean": finite_mean(per_fold),
                "macro_r_fold_sd": _sd(per_fold),
            }
        )
    return pd.DataFrame(rows).sort_values("macro_r", ascending=False).reset_index(drop=True)


def fidelity_metrics(table: pd.DataFrame, macro: pd.DataFrame) -> dict[str, float]:
    """The ``metrics.json`` numbers of :func:`fidelity` and :func:`fidelity_macro`:
    ``cv.<model>.<column>.<target>`` for the columns of ``METRIC_COLUMNS``,
    ``cv.<model>.macro_r`` and ``cv.<model>.macro_r_fold_sd``, and ``ceiling.<target>`` where the
    targets stage measured one."""
    out = {}
    for row in table.itertuples(index=False):
        for column in METRIC_COLUMNS:
            out[metric_key("cv", row.model, column, row.target)] = getattr(row, column)
    for row in macro.itertuples(index=False):
        out[metric_key("cv", row.model, "macro_r")] = row.macro_r
        out[metric_key("cv", row.model, "macro_r_fold_sd")] = row.macro_r_fold_sd
    for target in TARGETS:
        part = table[table["target"] == target]
        if len(part) and np.isfinite(part["ceiling"].iloc[0]):
            out[metric_key("ceiling", target)] = part["ceiling"].iloc[0]
    return out
