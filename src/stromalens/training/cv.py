"""Leakage-free validation: patient-level K-fold CV stratified by site, nested selection, and
leave-site-out runs.

Protocol, per outer fold k (``run_cv``):

1. ``FoldPreprocessor.fit`` on the outer-training patients only (ICC filter, ComBat, radiomics
   standardisation, target z-scoring and min–max scaling); the held-out fold is only transformed.
2. Nested selection for every model, with the same budget rule for all: every point of the
   model's grid (the cartesian product over the keys of ``grid`` that the model's fit reads,
   e.g. τ × q × λ_coral × weight decay for the gated fusion, weight decay alone for mean
   pooling: :func:`model_grid`) is scored by the macro-r (mean over targets of Pearson's r of
   the pooled inner out-of-fold predictions) over the same ``inner_folds`` site-stratified
   folds of the outer-training patients, each inner fold re-fitting its own preprocessor on
   its inner-training patients. The best point trains the outer model. A model whose grid
   has one point (no key it reads has two values) is fitted with it directly.
3. Every model is trained on the outer-training patients and predicts the held-out patients;
   predictions are returned to target units with the training fold's scaler.

Every fit (a model on an outer fold, or a grid point on an inner fold) is one task of
:mod:`.schedule`'s worker pool, so the cores stay busy whatever the number of folds; a
model's fit on a fold starts once its selection there is scored. The results do not depend on
the number of workers or the order in which the tasks ran (each fit seeds itself).

Outputs: ``folds.csv`` (patient_id, site, fold), ``predictions.parquet`` (patient_id, fold,
model, target, y_true, y_pred; ``model`` is the study's name of each trained model, from the
registry: ``fusion``, ``fusion_no_coral``, ``wsi_clip``, ``mri``, ``mri_student``, the baselines
by their registered names), ``metrics.json`` (per model and target r, RMSE, MAE; macro-r;
the selected settings per fold and model), ``selection.csv`` (fold, model, grid point, inner
score), checkpoints under
``checkpoints/fold<k>/``. ``run_leave_site_out`` trains on all sites but one and tests on it,
with and without CORAL, into ``leave_site_out/``, and the shuffled-target control is
``run_cv(permute_targets=True)``: both select on the same nested grid as the main CV (inner
folds within the training sites; the permuted targets), so every comparison is at the same
tuning budget, and both write their ``selection.csv``.
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
from ..rundir import TrainLayout
from .curriculum import TrainSettings
from .data import StudyData, fit_fold_lr, fold_targets
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


#: The fit output a model's nested selection scores (its own output unless named here): the
#: curriculum's is the study model, stage III with CORAL.
SCORED_OUTPUT = {"gated_fusion": "gated_fusion_coral"}


def model_grid(name: str, grid: dict | None) -> list[dict]:
    """The grid points of model ``name``: the cartesian product over the keys of ``grid`` the
    model's fit reads (:func:`~stromalens.training.curriculum.settings_read`). A key it does
    not read is not multiplied (it would refit the same model), so e.g. ``lambda_coral``
    gives gated fusion its points and leaves ``mean_pool`` with one."""
    from .curriculum import settings_read

    parameter_grid(grid)  # validates the whole grid, keys the model ignores included
    used = settings_read(name)
    return parameter_grid({k: v for k, v in (grid or {}).items() if k in used})


def _selection_tasks(data: StudyData, fold, train_ids, base: TrainSettings, name, points, inner,
                     fold_dir: Path | None = None):  # fmt: skip
    """The nested selection's fits of model ``name`` for outer fold ``fold``: every grid point
    on every inner fold of ``train_ids`` (site-stratified; the same inner folds for every
    model), each scored on its inner-held-out patients. With ``fold_dir`` (the outer fold's
    checkpoint folder) each fit keeps its checkpoint under ``select/point<p>_inner<f>/``
    there, so that a resumed study refits none of them (the checkpoint's digest covers its
    settings and arrays)."""

    def checkpoint_dir(p, f):
        if fold_dir is None:
            return None
        return fold_dir / "select" / f"point{p}_inner{f}"

    train_ids = list(train_ids)
    folds = assign_folds(train_ids, data.site_of().loc[train_ids], inner, base.seed + 1)
    return [
        FitTask(
            key=("select", fold, name, p, f),
            model=name,
            train_ids=tuple(folds.index[folds != f]),
            test_ids=tuple(folds.index[folds == f]),
            settings=base.with_(**point),
            checkpoint_dir=checkpoint_dir(p, f),
            with_student=False,
            with_plain=False,  # the selection scores gated_fusion_coral only
            priority=1,  # they unblock the fold's fit of the model
        )
        for p, point in enumerate(points)
        for f in range(inner)
    ]


def _selection_scores(results: dict, fold, name, points, inner_folds) -> list[dict]:
    """Macro-r of each grid point's pooled inner out-of-fold predictions (z-scored units)."""
    scores = []
    scored = SCORED_OUTPUT.get(name, name)
    for p, point in enumerate(points):
        parts = [results[("select", fold, name, p, f)] for f in range(inner_folds)]
        y = np.concatenate([r.y_z for r in parts])
        pred = np.concatenate([r.predictions_z[scored] for r in parts])
        scores.append({"point": point, "score": round(_macro_r(y, pred), 4)})
    return scores


def _best(scores: list[dict]) -> int:
    """The index of the best score; an undefined one (a constant prediction) ranks last and
    ties go to the first point (the grid's order), so the choice is deterministic."""
    return max(range(len(scores)), key=lambda i: np.nan_to_num(scores[i]["score"], nan=-np.inf))


def _fold_rows(fold, ids, data, name, pred, repeat: int = 0, train=None) -> pd.DataFrame:
    # the truth the fold's models were trained towards: lr rescored with the gene scaling of
    # the fold's training patients ``train`` (when the study has S_LR inputs), like with like
    truth = fold_targets(data, ids, fit_fold_lr(data, train) if train is not None else None)
    truth = truth.to_numpy()
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
                    "repeat": repeat,
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
    repeat: int = 0,
    fold_folders: dict | None = None,
) -> dict:
    """Fit every model on every split's training patients and predict its test patients.

    ``splits`` are ``(fold, train_ids, test_ids)``. Each model's fit on each split is one task
    (:mod:`.schedule`). Every model whose grid (:func:`model_grid`: the keys of ``grid`` it
    reads) has more than one point first has its settings chosen by the nested selection on
    the split's training patients, over the same inner folds for every model, and is fitted
    as soon as that is scored; the others use ``settings`` with the grid's one point. Returns
    the prediction rows, the chosen settings and selection scores per fold and model, and each
    fit's seconds. ``repeat`` (of a repeated CV) labels the rows; a repeat r ≥ 1 keeps its
    checkpoints under ``repeat<r>/fold<k>/`` of ``checkpoint_root``. ``fold_folders`` names a
    fold's checkpoint folder where ``fold<k>`` would not do (a fold keyed by a site label from
    the user's manifest, which is not used as a path)."""
    from ..models import study_name

    if checkpoint_root is not None and repeat:
        checkpoint_root = checkpoint_root / f"repeat{repeat}"

    points = {name: model_grid(name, grid) for name in models}
    by_fold = {fold: (list(train), list(test)) for fold, train, test in splits}
    chosen = {(f, m): settings.with_(**points[m][0]) for f in by_fold for m in models}
    scores = {(f, m): [{"point": points[m][0], "score": None}] for f in by_fold for m in models}

    def fold_dir(fold) -> Path | None:
        if checkpoint_root is None:
            return None
        return checkpoint_root / (fold_folders or {}).get(fold, f"fold{fold}")

    def fit_task(fold, name: str, priority: float = 0.0):
        train, test = by_fold[fold]
        return FitTask(
            key=("fit", fold, name),
            model=name,
            train_ids=tuple(train),
            test_ids=tuple(test),
            settings=chosen[(fold, name)],
            checkpoint_dir=fold_dir(fold),
            with_student=with_student,
            priority=priority,
        )

    tasks, pending = [], {}
    for fold, (train, _) in by_fold.items():
        for name in models:
            if len(points[name]) > 1:
                tasks += _selection_tasks(
                    data, fold, train, settings, name, points[name], inner_folds, fold_dir(fold)
                )
                pending[(fold, name)] = len(points[name]) * inner_folds
            else:
                tasks.append(fit_task(fold, name))
    results: dict = {}

    def on_result(result) -> list[FitTask]:
        results[result.key] = result
        if result.key[0] != "select":
            return []
        fold, name = result.key[1], result.key[2]
        pending[(fold, name)] -= 1
        if pending[(fold, name)]:
            return []
        scores[(fold, name)] = _selection_scores(results, fold, name, points[name], inner_folds)
        chosen[(fold, name)] = settings.with_(**points[name][_best(scores[(fold, name)])])
        return [fit_task(fold, name, priority=2)]

    # each selected model's final fit on a fold is queued once its inner scores are in
    planned = len(pending)
    run_tasks(
        tasks, data, workers, harmonise, icc_threshold, on_result, progress, description, planned
    )
    rows, seconds = [], {str(fold): {} for fold in by_fold}
    for fold, (train, test) in by_fold.items():
        for name in models:
            result = results[("fit", fold, name)]
            seconds[str(fold)][name] = result.seconds
            for out_name, pred in result.predictions.items():
                name_out = study_name(out_name)
                rows.append(_fold_rows(fold, test, data, name_out, pred, repeat, train=train))
    return {
        "rows": pd.concat(rows, ignore_index=True),
        "selected": {
            str(fold): {name: chosen[(fold, name)].to_dict() for name in models} for fold in by_fold
        },
        "selection": [
            {"fold": fold, "model": name, **s["point"], "score": s["score"]}
            for fold in by_fold
            for name in models
            if len(points[name]) > 1
            for s in scores[(fold, name)]
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


def repeat_metrics(predictions: pd.DataFrame) -> dict:
    """Per model, the macro-r of each repeat of a repeated CV (pooled out-of-fold predictions
    of that repeat's folds), their mean and SD (ddof = 1; 0 for one repeat)."""
    out = {}
    for model, frame in predictions.groupby("model", sort=True):
        values = [
            compute_metrics(part)[model]["macro_r"]
            for _, part in frame.groupby("repeat", sort=True)
        ]
        out[model] = {
            "macro_r": values,
            "macro_r_mean": round(float(np.mean(values)), 4),
            "macro_r_sd": round(float(np.std(values, ddof=1)), 4) if len(values) > 1 else 0.0,
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


def _check_text(data: StudyData, models) -> None:
    """Refuse, before any file is written, a model that runs the text tower (CoOp) when the
    study has none."""
    from ..models import model_info
    from ..models.clip_mil import require_text_tower

    if any(model_info(m).needs_text for m in models):
        require_text_tower(data.text)


def _permuted(data: StudyData, seed: int) -> StudyData:
    """``data`` with its targets shuffled across patients (the negative control)."""
    rng = np.random.default_rng(seed + 12345)
    return data.permuted(rng.permutation(len(data.patients)))


def repeat_folds(data: StudyData, folds: int, seed: int, repeats: int) -> pd.DataFrame:
    """The outer folds of each repeat (columns ``0..repeats−1``, index patient_id): repeat r
    deals the site-stratified folds with the seed ``seed + r``, so repeat 0 is the single CV's
    assignment and every repeat partitions the patients differently."""
    return pd.DataFrame(
        {r: assign_folds(data.patients, data.sites, folds, seed + r) for r in range(repeats)}
    )


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
    repeats: int = 1,
    description: str | None = None,
) -> dict:
    """K-fold CV of ``models`` on ``data``, ``repeats`` times with different fold assignments
    (:func:`repeat_folds`; the training seed stays ``settings.seed``, so the repeats differ by
    the partition alone); writes the run files into ``out_dir``.

    ``predictions.parquet`` holds every repeat (column ``repeat``); ``folds.csv`` has repeat
    0's folds in ``fold`` and repeat r's in ``fold_repeat<r>``; ``metrics.json``'s ``models``
    are repeat 0's (the run whose fold models form the bundle) and ``repeats`` each model's
    macro-r per repeat with mean and SD. ``permute_targets`` shuffles the targets across
    patients first (a negative control: every model's r should then be ≈ 0; the nested
    selection then scores the shuffled targets too). ``description`` labels the progress bar."""
    if not isinstance(repeats, int) or repeats < 1:
        raise ValueError(f"repeats must be an integer ≥ 1, got {repeats!r}")
    settings = settings or TrainSettings()
    out = Path(out_dir)
    models = _check_models(models)
    _check_text(data, models)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    if permute_targets:
        data = _permuted(data, settings.seed)
    assignment = repeat_folds(data, folds, settings.seed, repeats)
    table = pd.DataFrame({"patient_id": data.patients, "site": data.sites})
    for r in range(repeats):
        table["fold" if r == 0 else f"fold_repeat{r}"] = assignment[r].to_numpy()
    table.to_csv(out / "folds.csv", index=False)
    results = []
    for r in range(repeats):
        fold_of = assignment[r]
        splits = [
            (k, fold_of.index[fold_of != k].tolist(), fold_of.index[fold_of == k].tolist())
            for k in range(folds)
        ]
        label = description or ("CV fits (shuffled targets)" if permute_targets else "CV fits")
        result = run_protocol(
            data, splits, models, settings, grid, inner_folds, harmonise, icc_threshold,
            workers, out / "checkpoints" if checkpoints else None, progress=progress,
            description=label if repeats == 1 else f"{label}, repeat {r + 1}/{repeats}",
            repeat=r,
        )  # fmt: skip
        results.append(result)
    predictions = pd.concat([res["rows"] for res in results], ignore_index=True)
    predictions.to_parquet(out / "predictions.parquet", index=False)
    _selection_table(results).to_csv(out / "selection.csv", index=False)
    metrics = {
        "models": compute_metrics(predictions[predictions["repeat"] == 0]),
        "repeats": {"n": repeats, "models": repeat_metrics(predictions)},
        "folds": folds,
        "inner_folds": inner_folds,
        "grid": grid or {},
        "selected": results[0]["selected"],
        "fit_seconds": results[0]["seconds"],
        "permuted_targets": permute_targets,
        "seconds": round(time.perf_counter() - started, 1),
    }
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2), encoding="utf-8")
    return metrics


def _selection_table(results: list[dict]) -> pd.DataFrame:
    """``selection.csv``'s rows (repeat, fold, model, the grid point's settings, inner score)
    of one or more :func:`run_protocol` results (one per repeat)."""
    selection = pd.DataFrame(
        [{"repeat": r, **row} for r, res in enumerate(results) for row in res["selection"]]
    )
    if selection.empty:  # no model had two grid points: the header alone
        selection = pd.DataFrame(columns=["repeat", "fold", "model", "score"])
    return selection


def run_leave_site_out(
    data: StudyData,
    out_dir: Path | str,
    settings: TrainSettings | None = None,
    harmonise: bool = True,
    icc_threshold: float | None = 0.75,
    workers: int = 1,
    progress: bool = False,
    grid: dict | None = None,
    inner_folds: int = 3,
    checkpoints: bool = True,
) -> dict:
    """Train on every site but one, test on it, for each site; the gated-fusion curriculum with
    (``fusion``) and without (``fusion_no_coral``) CORAL. ``fold`` is the held-out site.
    The held-out site is unseen by ComBat, which applies the pooled standardisation to it.

    The settings are chosen as in the main CV (:func:`run_protocol`): every point of the gated
    fusion's ``grid`` (:func:`model_grid`) is scored over ``inner_folds`` site-stratified
    inner folds of the training sites' patients, so the held-out site takes no part in the
    selection and the comparison with the K-fold CV is at the same tuning budget. The chosen
    points go to ``selection.csv`` (fold = the held-out site) and ``metrics.json``'s
    ``selected``.

    With ``checkpoints`` every fit keeps its checkpoint under ``checkpoints/site<k>/`` (k: the
    held-out site's position in sorted order; a site label is not used as a path), so an
    interrupted run resumes without refitting."""
    settings = settings or TrainSettings()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    site_of = data.site_of()
    sites = sorted(site_of.unique())
    splits = [
        (site, site_of.index[site_of != site].tolist(), site_of.index[site_of == site].tolist())
        for site in sites
    ]
    folders = {site: f"site{k}" for k, site in enumerate(sites)}
    result = run_protocol(
        data,
        splits,
        ["gated_fusion"],
        settings,
        grid,
        inner_folds,
        harmonise=harmonise,
        icc_threshold=icc_threshold,
        workers=workers,
        with_student=False,
        progress=progress,
        description="leave-site-out fits",
        checkpoint_root=TrainLayout(out).checkpoints if checkpoints else None,
        fold_folders=folders,
    )
    predictions = result["rows"]  # no student: with_student=False
    predictions.to_parquet(out / "predictions.parquet", index=False)
    _selection_table([result]).to_csv(out / "selection.csv", index=False)
    per_site = {
        site: compute_metrics(frame) for site, frame in predictions.groupby("fold", sort=True)
    }
    metrics = {
        "pooled": compute_metrics(predictions),
        "per_site": per_site,
        "grid": grid or {},
        "inner_folds": inner_folds,
        "selected": result["selected"],
    }
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2), encoding="utf-8")
    return metrics
