"""Leakage-free validation: patient-level K-fold CV stratified by site, nested selection, and
leave-site-out runs.

Protocol, per outer fold k (``run_cv``):

1. ``FoldPreprocessor.fit`` on the outer-training patients only (ICC filter, ComBat, radiomics
   standardisation, target z-scoring and min–max scaling); the held-out fold is only transformed.
2. Nested selection for the study model (``gated_fusion``): every point of the grid (the
   cartesian product of ``grid``, e.g. τ × q × λ_coral × weight decay × hidden size) is scored by
   the macro-r (mean over targets of Pearson's r of the pooled inner out-of-fold predictions)
   over ``inner_folds`` site-stratified folds of the outer-training patients, each inner fold
   re-fitting its own preprocessor on its inner-training patients. The best point trains the
   outer model. Baselines use the base settings (no selection; same folds, same preprocessing).
3. Every model is trained on the outer-training patients and predicts the held-out patients;
   predictions are returned to target units with the training fold's scaler.

Every fit (a model on an outer fold, or a grid point on an inner fold) is one task of
:mod:`.schedule`'s worker pool, so the cores stay busy whatever the number of folds; a fold's
gated-fusion fit starts once its selection is scored. The results do not depend on the
number of workers or the order in which the tasks ran (each fit seeds itself).

Outputs: ``folds.csv`` (patient_id, site, fold), ``predictions.parquet`` (patient_id, fold,
model, target, y_true, y_pred; ``model`` is the study's name of each trained model, from the
registry: ``fusion``, ``fusion_no_coral``, ``wsi_clip``, ``mri``, ``mri_student``, the baselines
by their registered names), ``metrics.json`` (per model and target r, RMSE, MAE; macro-r;
the selected settings per fold), ``selection.csv`` (inner scores), checkpoints under
``checkpoints/fold<k>/``. ``run_leave_site_out`` trains on all sites but one and tests on it,
with and without CORAL, into ``leave_site_out/``.
"""

from __future__ import annotations

import itertools
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd

from ..correlation import pearson
from ..names import TARGETS
from .curriculum import TrainSettings
from .data import StudyData
from .schedule import FitTask, run_tasks


def assign_folds(patients, sites, k: int = 5, seed: int = 0) -> pd.Series:
    """Patient-level folds stratified by site: each site's patients, shuffled (``seed``), are
    dealt in turn to folds 0..k−1, starting where the previous site stopped, so every fold gets
    its share of every site and the folds' sizes differ by at most one."""
    patients = list(patients)
    if k < 2:
        raise ValueError(f"number of folds must be ≥ 2, got {k}")
    if len(patients) < k:
        raise ValueError(f"{len(patients)} patients cannot make {k} folds")
    sites = pd.Series(np.asarray(sites).astype(str), index=patients)
    rng = np.random.default_rng(seed)
    fold = pd.Series(-1, index=patients, name="fold")
    offset = 0
    for site in sorted(sites.unique()):
        members = sites.index[sites == site].to_numpy()
        members = members[rng.permutation(len(members))]
        fold[members] = (offset + np.arange(len(members))) % k
        offset = (offset + len(members)) % k
    return fold


def parameter_grid(grid: dict | None) -> list[dict]:
    """The cartesian product of ``{setting: [values]}`` (``[{}]`` when empty)."""
    if not grid:
        return [{}]
    keys = sorted(grid)
    if {"rad_components", "rad_reduction"} & set(keys):
        # The inner folds' preprocessing is fitted once, before the grid is searched.
        raise ValueError(
            "rad_components and rad_reduction are preprocessing settings: set them in settings"
        )
    for key in keys:
        if not isinstance(grid[key], list | tuple) or not grid[key]:
            raise ValueError(f"grid values of {key!r} must be a non-empty list, got {grid[key]!r}")
    return [
        dict(zip(keys, values, strict=True))
        for values in itertools.product(*(grid[k] for k in keys))
    ]


def _macro_r(y: np.ndarray, pred: np.ndarray) -> float:
    """Mean over targets of Pearson's r; NaN when r is undefined for a target."""
    return float(np.mean([pearson(y[:, j], pred[:, j]) for j in range(y.shape[1])]))


def _selection_tasks(data: StudyData, fold, train_ids, base: TrainSettings, points, inner_folds):
    """The nested selection's fits for outer fold ``fold``: every grid point on every inner
    fold of ``train_ids`` (site-stratified), each scored on its inner-held-out patients."""
    train_ids = list(train_ids)
    folds = assign_folds(train_ids, data.site_of().loc[train_ids], inner_folds, base.seed + 1)
    return [
        FitTask(
            key=("select", fold, p, f),
            model="gated_fusion",
            train_ids=tuple(folds.index[folds != f]),
            test_ids=tuple(folds.index[folds == f]),
            settings=base.with_(**point),
            with_student=False,
            with_plain=False,  # the selection scores gated_fusion_coral only
            priority=1,  # they unblock the fold's gated-fusion fit
        )
        for p, point in enumerate(points)
        for f in range(inner_folds)
    ]


def _selection_scores(results: dict, fold, points, inner_folds) -> list[dict]:
    """Macro-r of each grid point's pooled inner out-of-fold predictions (z-scored units)."""
    scores = []
    for p, point in enumerate(points):
        parts = [results[("select", fold, p, f)] for f in range(inner_folds)]
        y = np.concatenate([r.y_z for r in parts])
        pred = np.concatenate([r.predictions_z["gated_fusion_coral"] for r in parts])
        scores.append({"point": point, "score": round(_macro_r(y, pred), 4)})
    return scores


def _fold_rows(fold, ids, data, name, pred) -> pd.DataFrame:
    truth = data.targets.loc[ids, list(TARGETS)].to_numpy()
    frames = []
    for j, target in enumerate(TARGETS):
        frames.append(
            pd.DataFrame(
                {
                    "patient_id": ids,
                    "fold": fold,
                    "model": name,
                    "target": target,
                    "y_true": truth[:, j],
                    "y_pred": pred[:, j],
                }
            )
        )
    return pd.concat(frames, ignore_index=True)


def run_protocol(
    data: StudyData,
    splits: list[tuple],
    models: list[str],
    settings: TrainSettings,
    grid: dict | None = None,
    inner_folds: int = 3,
    harmonise: bool = True,
    icc_threshold: float | None = 0.75,
    workers: int = 1,
    checkpoint_root: Path | None = None,
    with_student: bool = True,
    progress: bool = False,
    description: str = "model fits",
) -> dict:
    """Fit every model on every split's training patients and predict its test patients.

    ``splits`` are ``(fold, train_ids, test_ids)``. Each model's fit on each split is one task
    (:mod:`.schedule`); ``gated_fusion`` first has its settings chosen by the nested selection
    on the split's training patients (when ``grid`` has more than one point), and is fitted as
    soon as that is scored. Baselines use ``settings``. Returns the prediction rows, the chosen
    settings and selection scores per fold, and each fit's seconds."""
    from ..models import study_name

    points = parameter_grid(grid)
    select = "gated_fusion" in models and len(points) > 1
    by_fold = {fold: (list(train), list(test)) for fold, train, test in splits}
    chosen = {fold: settings.with_(**points[0]) for fold in by_fold}
    scores = {fold: [{"point": points[0], "score": None}] for fold in by_fold}

    def fit_task(fold, name: str, fit_settings: TrainSettings, priority: float = 0.0):
        train, test = by_fold[fold]
        return FitTask(
            key=("fit", fold, name),
            model=name,
            train_ids=tuple(train),
            test_ids=tuple(test),
            settings=fit_settings,
            checkpoint_dir=checkpoint_root / f"fold{fold}" if checkpoint_root else None,
            with_student=with_student,
            priority=priority,
        )

    tasks = []
    for fold, (train, _) in by_fold.items():
        for name in models:
            if name == "gated_fusion" and select:
                tasks += _selection_tasks(data, fold, train, settings, points, inner_folds)
            else:
                own = chosen[fold] if name == "gated_fusion" else settings
                tasks.append(fit_task(fold, name, own))

    pending = {fold: len(points) * inner_folds for fold in by_fold}
    results: dict = {}

    def on_result(result) -> list[FitTask]:
        results[result.key] = result
        if result.key[0] != "select":
            return []
        fold = result.key[1]
        pending[fold] -= 1
        if pending[fold]:
            return []
        scores[fold] = _selection_scores(results, fold, points, inner_folds)
        # an undefined score (a constant prediction) ranks last
        best = max(
            range(len(points)), key=lambda i: np.nan_to_num(scores[fold][i]["score"], nan=-np.inf)
        )
        chosen[fold] = settings.with_(**points[best])
        return [fit_task(fold, "gated_fusion", chosen[fold], priority=2)]

    # with selection, each fold's final gated_fusion fit is queued once its scores are in
    planned = len(by_fold) if select else 0
    run_tasks(
        tasks, data, workers, harmonise, icc_threshold, on_result, progress, description, planned
    )
    rows, seconds = [], {str(fold): {} for fold in by_fold}
    for fold, (_, test) in by_fold.items():
        for name in models:
            result = results[("fit", fold, name)]
            seconds[str(fold)][name] = result.seconds
            for out_name, pred in result.predictions.items():
                rows.append(_fold_rows(fold, test, data, study_name(out_name), pred))
    return {
        "rows": pd.concat(rows, ignore_index=True),
        "selected": {str(fold): chosen[fold].to_dict() for fold in by_fold},
        "selection": [
            {"fold": fold, **s["point"], "score": s["score"]}
            for fold in by_fold
            for s in scores[fold]
        ],
        "seconds": seconds,
    }


def compute_metrics(predictions: pd.DataFrame) -> dict:
    """Per model: r, RMSE, MAE and n per target over the pooled out-of-fold predictions, the
    macro-r (mean r over targets) and the mean ± SD over folds of the per-fold macro-r."""
    out = {}
    for model, frame in predictions.groupby("model", sort=True):
        per_target = {}
        for target, part in frame.groupby("target", sort=False):
            ok = part[["y_true", "y_pred"]].dropna()
            err = ok["y_pred"] - ok["y_true"]
            per_target[target] = {
                "r": round(pearson(ok["y_true"].to_numpy(), ok["y_pred"].to_numpy()), 4),
                "rmse": round(float(np.sqrt((err**2).mean())), 4),
                "mae": round(float(err.abs().mean()), 4),
                "n": int(len(ok)),
            }
        fold_r = [
            np.mean(
                [
                    pearson(p["y_true"].to_numpy(), p["y_pred"].to_numpy())
                    for _, p in f.groupby("target")
                ]
            )
            for _, f in frame.groupby("fold")
        ]
        out[model] = {
            "macro_r": round(float(np.mean([v["r"] for v in per_target.values()])), 4),
            "fold_macro_r_mean": round(float(np.mean(fold_r)), 4),
            "fold_macro_r_sd": round(float(np.std(fold_r, ddof=1)) if len(fold_r) > 1 else 0.0, 4),
            "targets": per_target,
        }
    return out


def default_models() -> list[str]:
    """Every registered model except the student (trained inside the gated-fusion fit)."""
    from ..models import list_models

    return [m for m in list_models() if m != "student"]


def _check_models(models) -> list[str]:
    from ..models import list_models

    models = list(models) if models is not None else default_models()
    unknown = [m for m in models if m not in list_models()]
    if unknown:
        raise ValueError(f"unknown model(s) {unknown}; registered: {', '.join(list_models())}")
    if "student" in models:
        if "gated_fusion" not in models:
            raise ValueError("'student' needs 'gated_fusion' (its teacher) in the model list")
        models.remove("student")
    return models


def run_cv(
    data: StudyData,
    out_dir: Path | str,
    settings: TrainSettings | None = None,
    models=None,
    folds: int = 5,
    inner_folds: int = 3,
    grid: dict | None = None,
    harmonise: bool = True,
    icc_threshold: float | None = 0.75,
    workers: int = 1,
    permute_targets: bool = False,
    checkpoints: bool = True,
    progress: bool = False,
) -> dict:
    """K-fold CV of ``models`` on ``data``; writes the run files into ``out_dir``.

    ``permute_targets`` shuffles the targets across patients first (a negative control: every
    model's r should then be ≈ 0)."""
    settings = settings or TrainSettings()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    models = _check_models(models)
    started = time.perf_counter()
    if permute_targets:
        rng = np.random.default_rng(settings.seed + 12345)
        shuffled = data.targets.iloc[rng.permutation(len(data.patients))].to_numpy()
        data = StudyData(
            **{
                **data.__dict__,
                "targets": pd.DataFrame(
                    shuffled, index=data.patients, columns=data.targets.columns
                ),
            }
        )
    fold_of = assign_folds(data.patients, data.sites, folds, settings.seed)
    pd.DataFrame(
        {"patient_id": data.patients, "site": data.sites, "fold": fold_of.to_numpy()}
    ).to_csv(out / "folds.csv", index=False)
    splits = [
        (k, fold_of.index[fold_of != k].tolist(), fold_of.index[fold_of == k].tolist())
        for k in range(folds)
    ]
    result = run_protocol(
        data,
        splits,
        models,
        settings,
        grid,
        inner_folds,
        harmonise,
        icc_threshold,
        workers,
        out / "checkpoints" if checkpoints else None,
        progress=progress,
        description="CV fits (shuffled targets)" if permute_targets else "CV fits",
    )
    predictions = result["rows"]
    predictions.to_parquet(out / "predictions.parquet", index=False)
    pd.DataFrame(result["selection"]).to_csv(out / "selection.csv", index=False)
    metrics = {
        "models": compute_metrics(predictions),
        "folds": folds,
        "inner_folds": inner_folds,
        "grid": grid or {},
        "selected": result["selected"],
        "fit_seconds": result["seconds"],
        "permuted_targets": permute_targets,
        "seconds": round(time.perf_counter() - started, 1),
    }
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2), encoding="utf-8")
    return metrics


def run_leave_site_out(
    data: StudyData,
    out_dir: Path | str,
    settings: TrainSettings | None = None,
    harmonise: bool = True,
    icc_threshold: float | None = 0.75,
    workers: int = 1,
    progress: bool = False,
) -> dict:
    """Train on every site but one, test on it, for each site; the gated-fusion curriculum with
    (``fusion``) and without (``fusion_no_coral``) CORAL. ``fold`` is the held-out site.
    The held-out site is unseen by ComBat, which applies the pooled standardisation to it."""
    settings = settings or TrainSettings()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    site_of = data.site_of()
    splits = [
        (site, site_of.index[site_of != site].tolist(), site_of.index[site_of == site].tolist())
        for site in sorted(site_of.unique())
    ]
    result = run_protocol(
        data,
        splits,
        ["gated_fusion"],
        settings,
        harmonise=harmonise,
        icc_threshold=icc_threshold,
        workers=workers,
        with_student=False,
        progress=progress,
        description="leave-site-out fits",
    )
    predictions = result["rows"]  # no student: with_student=False
    predictions.to_parquet(out / "predictions.parquet", index=False)
    per_site = {
        site: compute_metrics(frame) for site, frame in predictions.groupby("fold", sort=True)
    }
    metrics = {"pooled": compute_metrics(predictions), "per_site": per_site}
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2), encoding="utf-8")
    return metrics
