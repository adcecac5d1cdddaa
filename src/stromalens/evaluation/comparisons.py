r"""Headline comparisons as paired differences: is the proposed model better than each baseline,
and is CORAL better than no CORAL, beyond the noise of a finite cohort?

For models A and B scored on the same patients, the difference in macro-r,

.. math::

    \Delta = \frac{1}{R}\sum_{r=1}^{R}\left[\frac{1}{J}\sum_{j=1}^{J}
    r\!\left(y_j, \hat y^{A}_{j,r}\right) - \frac{1}{J}\sum_{j=1}^{J}
    r\!\left(y_j, \hat y^{B}_{j,r}\right)\right],

Pearson's r (:func:`stromalens.correlation.pearson`) over the pooled out-of-fold predictions of
the J targets, averaged over the R repeats of the cross-validation (different fold splits or
seeds) when the predictions carry a ``repeat`` column (R = 1 without). Its 95% interval is a
paired percentile bootstrap: each replicate draws the patients with replacement and uses the
same draw for A and B, so the patient-by-patient agreement of the two models cancels (Efron &
Tibshirani 1993, ch. 13); with R > 1 it also draws the R repeats with replacement, so the
interval holds the variability of the fold split too (a two-stage bootstrap, Davison &
Hinkley 1997, §2.4). p is the two-sided bootstrap p
(:func:`stromalens.evaluation.stats.bootstrap_p`). ``verdict`` reads ``within noise`` unless
this interval and the one over the fits (below) both exclude 0, else which model is better.

The bootstrap resamples out-of-fold predictions; it does not retrain, so it leaves out the
variability of training itself (Bouthillier et al. 2021, *MLSys*). Beside it each row has the
comparison over the fits: per fold j of each repeat (J = k·R splits), the fold's macro-r
difference d_j on its held-out patients, their mean ``cv_estimate`` and Nadeau and Bengio's
corrected resampled t interval ``cv_ci_low``, ``cv_ci_high`` and p ``cv_p``
(:func:`~stromalens.evaluation.stats.corrected_resampled_t`; Nadeau & Bengio 2003, *Mach.
Learn.* 52:239–281), which holds how much the difference moves between models trained on
different patients. A difference is claimed (``verdict`` other than ``within noise``) only
when both intervals exclude 0 on the same side: it must hold against resampling the patients
and against refitting.

Example
-------
>>> table = paired_comparisons(predictions, n_boot=1000)  # doctest: +SKIP
>>> table.loc[table["model_b"] == "late_fusion", ["estimate", "verdict"]]  # doctest: +SKIP
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..correlation import pearson
from ..names import PROPOSED, TARGETS
from .stats import bootstrap_p, corrected_resampled_t, paired_difference

#: The predictions' column of the CV repeat, when the run repeated the cross-validation.
REPEAT = "repeat"
#: The model compared with the proposed one for the effect of CORAL.
NO_CORAL = "fusion_no_coral"
COLUMNS: tuple[str, ...] = (
    "comparison",
    "model_a",
    "model_b",
    "estimate",
    "ci_low",
    "ci_high",
    "p",
    "cv_estimate",
    "cv_ci_low",
    "cv_ci_high",
    "cv_p",
    "verdict",
    "n",
    "repeats",
    "splits",
)
#: The columns of :func:`fold_differences`.
SPLIT_COLUMNS = ("repeat", "fold", "n_test", "n_train", "difference")
WITHIN_NOISE = "within noise"


def headline_pairs(models) -> list[tuple[str, str, str]]:
    """(comparison, A, B): the proposed model against CORAL's absence (``coral``) and against
    every other model present (``baseline``) — the MRI-only student included."""
    models = set(models)
    if PROPOSED not in models:
        return []
    pairs = [("coral", PROPOSED, NO_CORAL)] if NO_CORAL in models else []
    pairs += [("baseline", PROPOSED, m) for m in sorted(models - {PROPOSED, NO_CORAL})]
    return pairs


def prediction_cube(predictions: pd.DataFrame, models) -> tuple[np.ndarray, dict, list]:
    """y (n, J) and per model ŷ (n, J, R) over the patients every model predicted for every
    target and repeat, and those patients' ids."""
    preds = predictions if REPEAT in predictions else predictions.assign(**{REPEAT: 0})
    preds = preds[preds["model"].isin(models)]
    targets = [t for t in TARGETS if t in set(preds["target"])]
    repeats = sorted(preds[REPEAT].unique())
    wide = preds.pivot_table(
        index="patient_id", columns=["model", "target", REPEAT], values="y_pred", aggfunc="first"
    ).dropna()  # patients without some model's, target's or repeat's prediction drop out
    truth = preds.groupby(["patient_id", "target"])["y_true"].first().unstack()
    patients = list(wide.index)
    y = truth.loc[patients, targets].to_numpy(float)
    cube = {}
    for model in models:
        columns = [(model, t, r) for t in targets for r in repeats]
        cube[model] = wide[columns].to_numpy(float).reshape(len(patients), len(targets), -1)
    return y, cube, patients


def _macro(y: np.ndarray, pred: np.ndarray) -> float:
    # (n, J) and (n, J): mean over targets of the pooled r
    return float(np.nanmean([pearson(pred[:, j], y[:, j]) for j in range(y.shape[1])]))


def macro_difference(y: np.ndarray, a: np.ndarray, b: np.ndarray) -> float:
    """Δ of the module docstring for y (n, J), ŷ^A and ŷ^B (n, J, R)."""
    return float(
        np.mean([_macro(y, a[:, :, r]) - _macro(y, b[:, :, r]) for r in range(a.shape[2])])
    )


def _two_stage(y, a, b, n_boot: int, seed: int, alpha: float) -> dict:
    """Patients and repeats both drawn with replacement; patients from the stream of
    :func:`paired_difference` (seed), repeats from a second one (``[seed, 1]``), so identical
    repeats give exactly the R = 1 interval."""
    n, reps = a.shape[0], a.shape[2]
    patients, repeats = np.random.default_rng(seed), np.random.default_rng([seed, 1])
    values = np.empty(n_boot)
    for k in range(n_boot):
        i, r = patients.integers(0, n, n), repeats.integers(0, reps, reps)
        values[k] = macro_difference(y[i], a[i][:, :, r], b[i][:, :, r])
    finite = values[np.isfinite(values)]
    low, high = np.quantile(finite, [alpha / 2, 1 - alpha / 2]) if finite.size else (np.nan, np.nan)
    return {
        "estimate": macro_difference(y, a, b),
        "ci_low": float(low),
        "ci_high": float(high),
        "p": bootstrap_p(finite),
        "within_noise": not (low > 0 or high < 0),
    }


def compare(y, a, b, n_boot: int = 1000, seed: int = 0, alpha: float = 0.05) -> dict:
    """Δ with its paired bootstrap interval, p and ``within_noise`` (module docstring)."""
    if a.shape[2] == 1:
        return paired_difference(macro_difference, y, a, b, n_boot=n_boot, seed=seed, alpha=alpha)
    return _two_stage(y, a, b, n_boot, seed, alpha)


def fold_differences(
    predictions: pd.DataFrame,
    model_a: str,
    model_b: str,
    targets=None,
    truth: pd.Series | None = None,
) -> pd.DataFrame:
    """Per fold of each CV repeat, macro-r(A) − macro-r(B) over ``targets`` (default every
    target present) on the fold's held-out patients with both models' predictions of every
    target; y is the measured target (``y_true``), or ``truth`` (a Series by patient_id, e.g.
    a latent) for every target when given. Columns :data:`SPLIT_COLUMNS`: ``n_train`` counts
    the repeat's other patients, who trained the fold's models; ``difference`` is NaN for a
    fold of fewer than 3 such patients. These are the d_j of :func:`corrected_resampled_t`."""
    preds = predictions if REPEAT in predictions else predictions.assign(**{REPEAT: 0})
    part = preds[preds["model"].isin([model_a, model_b])]
    present = set(part["target"])
    targets = [t for t in (targets or TARGETS) if t in present]
    part = part[part["target"].isin(targets)]
    need = [(m, t) for m in (model_a, model_b) for t in targets]
    rows = []
    for repeat, in_repeat in part.groupby(REPEAT, sort=True):
        patients = in_repeat["patient_id"].nunique()
        for fold, in_fold in in_repeat.groupby("fold", sort=True):
            wide = in_fold.pivot_table(index="patient_id", columns=["model", "target"],
                                       values="y_pred", aggfunc="first")  # fmt: skip
            if not targets or not set(need) <= set(wide.columns):
                continue
            wide = wide[need].dropna()
            if truth is None:
                y = in_fold.groupby(["patient_id", "target"])["y_true"].first().unstack()
                y = y.reindex(index=wide.index, columns=targets)
            else:
                y = pd.DataFrame({t: truth.reindex(wide.index) for t in targets})
            keep = y.notna().all(axis=1).to_numpy()
            y, yhat = y.to_numpy(float)[keep], wide.to_numpy(float)[keep]
            k = len(targets)
            difference = (_macro(y, yhat[:, :k]) - _macro(y, yhat[:, k:])
                          if len(y) > 2 else np.nan)  # fmt: skip
            rows.append({"repeat": repeat, "fold": fold, "n_test": int(len(y)),
                         "n_train": int(patients - in_fold["patient_id"].nunique()),
                         "difference": float(difference)})  # fmt: skip
    return pd.DataFrame(rows, columns=list(SPLIT_COLUMNS))


def over_folds(splits: pd.DataFrame, alpha: float = 0.05) -> dict | None:
    """:func:`~stromalens.evaluation.stats.corrected_resampled_t` of :func:`fold_differences`'
    rows (those with a finite difference and a training set), or None with fewer than 2."""
    splits = splits.astype({"difference": float, "n_train": float, "n_test": float})
    splits = splits[np.isfinite(splits["difference"]) & (splits["n_train"] > 0)]
    if len(splits) < 2:
        return None
    return corrected_resampled_t(splits["difference"], splits["n_train"], splits["n_test"],
                                 alpha=alpha)  # fmt: skip


def _verdict(out: dict, folds: dict | None, a: str, b: str) -> str:
    """``within noise`` unless the patient bootstrap and, where the run has folds, the
    corrected resampled t over them both exclude 0 on the same side."""
    sides = [np.sign(out["ci_low"]) if not out["within_noise"] else 0.0]
    if folds is not None:
        low, high = folds["ci_low"], folds["ci_high"]
        sides.append(1.0 if low > 0 else -1.0 if high < 0 else 0.0)
    if 0.0 in sides or len(set(sides)) > 1:
        return WITHIN_NOISE
    return f"{a} better" if sides[0] > 0 else f"{b} better"


def paired_comparisons(
    predictions: pd.DataFrame, n_boot: int = 1000, seed: int = 0, alpha: float = 0.05
) -> pd.DataFrame:
    """The ``comparisons`` table: one row per pair of :func:`headline_pairs` (columns
    :data:`COLUMNS`; ``estimate`` is Δ macro-r, A − B). Empty without the proposed model.

    Raises
    ------
    ValueError
        A pair shares fewer than 4 patients with every target predicted.
    """
    pairs = headline_pairs(predictions["model"].unique())
    rows = []
    for comparison, a, b in pairs:
        y, cube, patients = prediction_cube(predictions, [a, b])
        if len(patients) < 4:
            raise ValueError(
                f"{a} vs {b}: only {len(patients)} patient(s) have predictions of both models "
                "for every target; a paired comparison needs at least 4"
            )
        out = compare(y, cube[a], cube[b], n_boot=n_boot, seed=seed, alpha=alpha)
        folds = None
        if "fold" in predictions:
            folds = over_folds(fold_differences(predictions, a, b), alpha)
        nan = float("nan")
        rows.append(
            {
                "comparison": comparison,
                "model_a": a,
                "model_b": b,
                **{k: out[k] for k in ("estimate", "ci_low", "ci_high", "p")},
                **{
                    f"cv_{k}": (folds or {}).get(k, nan)
                    for k in ("estimate", "ci_low", "ci_high", "p")
                },  # fmt: skip
                "verdict": _verdict(out, folds, a, b),
                "n": len(patients),
                "repeats": cube[a].shape[2],
                "splits": int(folds["splits"]) if folds is not None else 0,
            }
        )
    return pd.DataFrame(rows, columns=list(COLUMNS))


def comparison_metrics(table: pd.DataFrame) -> dict[str, float]:
    """``compare.<A>.<B>.<macro_r_diff|ci_low|ci_high|p|cv_ci_low|cv_ci_high|cv_p|within_noise>``
    per row."""
    from ..rundir import metric_key

    m: dict[str, float] = {}
    for row in table.itertuples(index=False):
        parts = ("compare", row.model_a, row.model_b)
        m[metric_key(*parts, "macro_r_diff")] = row.estimate
        m[metric_key(*parts, "ci_low")] = row.ci_low
        m[metric_key(*parts, "ci_high")] = row.ci_high
        m[metric_key(*parts, "p")] = row.p
        m[metric_key(*parts, "cv_ci_low")] = row.cv_ci_low
        m[metric_key(*parts, "cv_ci_high")] = row.cv_ci_high
        m[metric_key(*parts, "cv_p")] = row.cv_p
        m[metric_key(*parts, "within_noise")] = float(row.verdict == WITHIN_NOISE)
    return m
