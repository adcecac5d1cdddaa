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

Outputs: ``folds.csv`` (patient_id, site, fold), ``predictions.parquet`` (patient_id, fold,
model, target, y_true, y_pred), ``metrics.json`` (per model and target r, RMSE, MAE; macro-r;
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

from ..logs import event, get_logger
from .curriculum import TrainSettings, fit_model, predict
from .data import TARGETS, FoldPreprocessor, StudyData

log = get_logger("training.cv")

#: Outputs that ``fit_model("gated_fusion")`` produces besides its own name.
CURRICULUM_OUTPUTS = ("gated_fusion", "gated_fusion_coral", "student")


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


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    ok = np.isfinite(a) & np.isfinite(b)
    if ok.sum() < 3 or np.std(a[ok]) < 1e-12 or np.std(b[ok]) < 1e-12:
        return 0.0
    return float(np.corrcoef(a[ok], b[ok])[0, 1])


def _macro_r(y: np.ndarray, pred: np.ndarray) -> float:
    return float(np.mean([pearson(y[:, j], pred[:, j]) for j in range(y.shape[1])]))


def select_settings(
    data: StudyData,
    train_ids,
    base: TrainSettings,
    grid: dict | None,
    inner_folds: int = 3,
    harmonise: bool = True,
    icc_threshold: float | None = 0.75,
) -> tuple[TrainSettings, list[dict]]:
    """Nested selection of the study model's settings on ``train_ids`` only."""
    points = parameter_grid(grid)
    if len(points) == 1:
        return base.with_(**points[0]), [{"point": points[0], "score": None}]
    train_ids = list(train_ids)
    folds = assign_folds(train_ids, data.site_of().loc[train_ids], inner_folds, base.seed + 1)
    preps = []
    for f in range(inner_folds):
        inner_train = folds.index[folds != f].tolist()
        inner_val = folds.index[folds == f].tolist()
        prep = FoldPreprocessor.for_settings(harmonise, icc_threshold, base).fit(data, inner_train)
        preps.append((prep.transform(data, inner_train), prep.transform(data, inner_val)))
    scores = []
    for point in points:
        settings = base.with_(**point)
        ys, preds = [], []
        for train_arrays, val_arrays in preps:
            models = fit_model(
                "gated_fusion",
                train_arrays,
                data.prompts,
                data.tile_dim,
                len(set(data.sites)),
                settings,
                with_student=False,
            )
            preds.append(predict(models["gated_fusion_coral"], val_arrays))
            ys.append(val_arrays.y)
        score = _macro_r(np.concatenate(ys), np.concatenate(preds))
        scores.append({"point": point, "score": round(score, 4)})
    best = max(range(len(points)), key=lambda i: scores[i]["score"])
    return base.with_(**points[best]), scores


def _fold_rows(fold, ids, data, prep, name, pred_z) -> pd.DataFrame:
    pred = prep.inverse_targets(pred_z)
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


def run_fold(
    data: StudyData,
    train_ids,
    test_ids,
    fold,
    models,
    settings: TrainSettings,
    grid: dict | None,
    inner_folds: int,
    harmonise: bool,
    icc_threshold: float | None,
    checkpoint_dir: Path | None,
) -> dict:
    """One outer fold: fit the preprocessor and every model on ``train_ids``, predict
    ``test_ids``. Returns the prediction rows, the selected settings and timings."""
    started = time.perf_counter()
    prep = FoldPreprocessor.for_settings(harmonise, icc_threshold, settings).fit(data, train_ids)
    train, test = prep.transform(data, train_ids), prep.transform(data, test_ids)
    chosen, scores = settings, []
    if "gated_fusion" in models:
        chosen, scores = select_settings(
            data, train_ids, settings, grid, inner_folds, harmonise, icc_threshold
        )
    rows = []
    seconds = {}
    for name in models:
        t0 = time.perf_counter()
        fitted = fit_model(
            name,
            train,
            data.prompts,
            data.tile_dim,
            len(prep.sites_),
            chosen if name == "gated_fusion" else settings,
            checkpoint_dir,
        )
        for out_name, model in fitted.items():
            rows.append(
                _fold_rows(fold, list(test_ids), data, prep, out_name, predict(model, test))
            )
        seconds[name] = round(time.perf_counter() - t0, 2)
    if checkpoint_dir is not None:
        checkpoint_dir.mkdir(parents=True, exist_ok=True)
        (checkpoint_dir / "preprocessor.json").write_text(
            json.dumps(prep.state(), indent=1, default=str), encoding="utf-8"
        )
    event(log, "fold done", fold=fold, seconds=round(time.perf_counter() - started, 1))
    return {
        "fold": fold,
        "rows": pd.concat(rows, ignore_index=True),
        "selected": chosen.to_dict(),
        "selection": scores,
        "seconds": seconds,
    }


def _fold_job(job: dict) -> dict:
    import torch

    torch.set_num_threads(job.pop("threads"))
    return run_fold(**job)


def _run_jobs(jobs: list[dict], workers: int) -> list[dict]:
    """Folds in order here (``workers`` ≤ 1), or in spawned processes with one torch thread
    each; a fold's result does not depend on which."""
    if workers <= 1 or len(jobs) == 1:
        import torch

        return [_fold_job(job | {"threads": torch.get_num_threads()}) for job in jobs]
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(min(workers, len(jobs)), mp_context=mp.get_context("spawn")) as pool:
        return list(pool.map(_fold_job, [job | {"threads": 1} for job in jobs]))


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
    jobs = [
        {
            "data": data,
            "train_ids": fold_of.index[fold_of != k].tolist(),
            "test_ids": fold_of.index[fold_of == k].tolist(),
            "fold": k,
            "models": models,
            "settings": settings,
            "grid": grid,
            "inner_folds": inner_folds,
            "harmonise": harmonise,
            "icc_threshold": icc_threshold,
            "checkpoint_dir": out / "checkpoints" / f"fold{k}" if checkpoints else None,
        }
        for k in range(folds)
    ]
    results = _run_jobs(jobs, workers)
    predictions = pd.concat([r["rows"] for r in results], ignore_index=True)
    predictions.to_parquet(out / "predictions.parquet", index=False)
    selection = pd.DataFrame(
        [
            {"fold": r["fold"], **s["point"], "score": s["score"]}
            for r in results
            for s in r["selection"]
        ]
    )
    selection.to_csv(out / "selection.csv", index=False)
    metrics = {
        "models": compute_metrics(predictions),
        "folds": folds,
        "inner_folds": inner_folds,
        "grid": grid or {},
        "selected": {str(r["fold"]): r["selected"] for r in results},
        "fit_seconds": {str(r["fold"]): r["seconds"] for r in results},
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
) -> dict:
    """Train on every site but one, test on it, for each site; the gated-fusion curriculum with
    (``gated_fusion_coral``) and without (``gated_fusion``) CORAL. ``fold`` is the held-out site.
    The held-out site is unseen by ComBat, which applies the pooled standardisation to it."""
    settings = settings or TrainSettings()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    site_of = data.site_of()
    jobs = [
        {
            "data": data,
            "train_ids": site_of.index[site_of != site].tolist(),
            "test_ids": site_of.index[site_of == site].tolist(),
            "fold": site,
            "models": ["gated_fusion"],
            "settings": settings,
            "grid": None,
            "inner_folds": 2,
            "harmonise": harmonise,
            "icc_threshold": icc_threshold,
            "checkpoint_dir": None,
        }
        for site in sorted(site_of.unique())
    ]
    results = _run_jobs(jobs, workers)
    predictions = pd.concat([r["rows"] for r in results], ignore_index=True)
    predictions = predictions[predictions["model"] != "student"]
    predictions.to_parquet(out / "predictions.parquet", index=False)
    per_site = {
        site: compute_metrics(frame) for site, frame in predictions.groupby("fold", sort=True)
    }
    metrics = {"pooled": compute_metrics(predictions), "per_site": per_site}
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2), encoding="utf-8")
    return metrics
