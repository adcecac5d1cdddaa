"""Zero-shot application to an external cohort (analysis 11): ``stromalens predict``.

A trained run is applied frozen — no re-fitting of anything, not even the scalers — to a new
cohort: each outer fold's models, with that fold's preprocessing fitted on the development
cohort, predict every external patient, and the K predictions are averaged (in target units).
Patients without MRI (the external cohorts are often WSI-only) are predicted from the slide
alone: the fusion models take a missing modality by design (its latent is zero, as under
modality dropout in training).

The external targets are computed by the same targets pipeline (``stromalens targets``) from the
external RNA-seq; the concordance of predictions and targets is reported with Fisher and
bootstrap CIs, a permutation control (shuffled predictions) and Benjamini–Hochberg FDR across
targets and cohorts.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pandas as pd

from ..correlation import pearson
from ..logs import event, get_logger
from ..names import PROPOSED, TARGETS
from ..training.data import StudyData

log = get_logger("evaluation.external")


def _external_data(manifest, features_dir, targets, bundle) -> StudyData:
    """The external cohort in memory: its slides' bags (each store checked against the
    bundle's feature contract), no radiomics, its targets when given."""
    from ..cohort import load_manifest
    from ..training.bundle import FeatureContract
    from ..training.data import read_bags
    from ..wsi.store import feature_path, read_attrs

    cohort = load_manifest(manifest, check_files=False)
    frame, slides = cohort.frame, cohort.slide_ids()
    patients = [str(p) for p in frame.index]
    for pid in patients:
        for sid in slides.get(pid, [pid]):
            path = feature_path(features_dir, sid)
            if path.is_file():
                attrs, width = read_attrs(path)
                bundle.contract.check(FeatureContract.of_store(attrs, width), str(path))
    table = pd.DataFrame(np.nan, index=patients, columns=list(TARGETS))
    if targets is not None:
        loaded = pd.read_parquet(targets)
        loaded.index = loaded.index.astype(str)
        missing = [t for t in TARGETS if t not in loaded.columns]
        if missing:
            raise ValueError(f"{targets}: target column(s) {missing} missing")
        table = loaded.reindex(patients)[list(TARGETS)].astype(float)
    return StudyData(
        patients=patients,
        sites=frame["site"].astype(str).to_numpy(),
        bags=read_bags(features_dir, patients, bundle.max_tiles, bundle.seed, slides),
        radiomics=pd.DataFrame(index=patients),
        targets=table,
        prompts=bundle.prompts,
    )


def _store_folders_hint(features_dir) -> str:
    """`` — did you mean …`` naming the ``<encoder>/<tiling>`` folders below ``features_dir``
    that hold stores (``--features`` takes the folder of the ``.h5`` files itself)."""
    root = Path(features_dir)
    found = sorted({p.parent for p in root.glob("*/*/*.h5")}) if root.is_dir() else []
    if not found:
        return ""
    return " — --features takes the folder holding the .h5 files: " + ", ".join(map(str, found))


def _slide_models(bundle) -> list[str]:
    """The bundle's models that can predict from a slide (all but the MRI-only ones)."""
    from ..models import model_info, output_info

    return [m for m in bundle.models if "wsi" in model_info(output_info(m).model).modalities]


def _mean_over_folds(bundle, data: StudyData, models: list[str]) -> pd.DataFrame:
    """Long predictions (patient_id, model, target, y_pred): each fold's model with its own
    preprocessing, averaged over the folds in target units."""
    from ..training.curriculum import predict

    sums = {m: 0.0 for m in models}
    for fold in bundle.folds:
        arrays = fold.prep.transform(data, data.patients)
        for name in models:
            if not fold.has(name):
                raise FileNotFoundError(f"{fold.directory}: no checkpoint of {name!r}")
            sums[name] = sums[name] + fold.prep.inverse_targets(predict(fold.load(name), arrays))
    rows = []
    for name in models:
        mean = sums[name] / len(bundle.folds)  # (P, J)
        for j, target in enumerate(TARGETS):
            rows.append(pd.DataFrame({"patient_id": data.patients, "model": name,
                                      "target": target, "y_pred": mean[:, j]}))  # fmt: skip
    return pd.concat(rows, ignore_index=True)


def predict_cohort(
    model: Path | str,
    manifest: Path | str,
    out_dir: Path | str,
    *,
    features_dir: Path | str | None = None,
    targets: Path | str | None = None,
    name: str | None = None,
    models=None,
) -> pd.DataFrame:
    """Apply the frozen model bundle ``model`` (``TRAIN/model/`` or the training run folder)
    to the cohort of ``manifest``; nothing of the training cohort is read.

    Every slide store must match the bundle's feature contract (encoder, weights, width,
    tiling); a mismatch is a :class:`~stromalens.training.bundle.BundleError` naming both sides.
    Writes ``out_dir/predictions.parquet`` (patient_id, model, target, y_pred; the mean over
    folds) and ``out_dir/predict.json``; returns the predictions. ``models`` are study names
    (default: every bundled model that reads slides)."""
    from ..rundir import PREDICT_INFO, PREDICTIONS
    from ..training.bundle import load_bundle

    started = time.perf_counter()
    if features_dir is None:
        raise ValueError(
            "zero-shot prediction needs the external slides' features (--features DIR): "
            "embed them with `stromalens wsi embed` and the model's encoder"
        )
    bundle = load_bundle(model)
    data = _external_data(manifest, features_dir, targets, bundle)
    if not data.bags:
        raise ValueError(
            f"no slide features for any patient of {manifest} in {features_dir}"
            + _store_folders_hint(features_dir)
        )
    models = list(models) if models is not None else _slide_models(bundle)
    predictions = _mean_over_folds(bundle, data, models)
    predictions = predictions[predictions["patient_id"].isin(set(data.bags))]
    predictions = predictions.reset_index(drop=True)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    predictions.to_parquet(out / PREDICTIONS, index=False)
    info = {
        "cohort": name or Path(manifest).parent.name,
        "manifest": str(manifest),
        "features": str(features_dir),
        "targets": str(targets) if targets is not None else None,
        "model": str(bundle.root),
        "models": models,
        "folds_averaged": len(bundle.folds),
        "patients": len(data.patients),
        "patients_with_slide": len(data.bags),
        "skipped_no_slide": sorted(set(data.patients) - set(data.bags)),
        "seconds": round(time.perf_counter() - started, 1),
    }
    (out / PREDICT_INFO).write_text(json.dumps(info, indent=2), encoding="utf-8")
    event(log, "external cohort predicted", cohort=info["cohort"], patients=len(data.bags))
    return predictions


def find_external(train_dir: Path | str) -> list[Path]:
    """Directories under ``train_dir/external/`` written by :func:`predict_cohort`."""
    root = Path(train_dir) / "external"
    return sorted(p.parent for p in root.glob("*/predict.json"))


def external_table(
    cohorts: dict[str, tuple[pd.DataFrame, pd.DataFrame]],
    *,
    n_boot: int = 2000,
    n_perm: int = 2000,
    seed: int = 0,
) -> pd.DataFrame:
    """cohort, model, target, n, r, Fisher CI, bootstrap CI, p, p_perm, q_fdr.

    ``cohorts`` maps a cohort name to (predictions, targets): its ``predict`` output and its
    targets table (patients × targets). q_fdr is Benjamini–Hochberg over every cohort × target
    of a model (the permutation p values)."""
    from .stats import bh_fdr, bootstrap_ci, pearson_ci, permutation_p

    rows = []
    for cohort, (predictions, targets) in cohorts.items():
        for (model, target), part in predictions.groupby(["model", "target"], sort=True):
            if target not in targets.columns:
                continue
            pred = part.set_index("patient_id")["y_pred"]
            obs = targets[target].reindex(pred.index)
            ok = obs.notna().to_numpy() & np.isfinite(pred.to_numpy())
            y, p = obs.to_numpy(float)[ok], pred.to_numpy(float)[ok]
            if len(y) < 4:
                continue
            fisher = pearson_ci(p, y)
            low, high = bootstrap_ci(pearson, p, y, n_boot=n_boot, seed=seed)
            rows.append(
                {
                    "cohort": cohort,
                    "model": model,
                    "target": target,
                    "n": int(len(y)),
                    "r": fisher["r"],
                    "r_ci_low": fisher["ci_low"],
                    "r_ci_high": fisher["ci_high"],
                    "r_boot_low": low,
                    "r_boot_high": high,
                    "p": fisher["p"],
                    "p_perm": permutation_p(p, y, n_perm=n_perm, seed=seed),
                }
            )
    table = pd.DataFrame(rows)
    if table.empty:
        return table
    table["q_fdr"] = np.nan
    for _, idx in table.groupby("model").groups.items():
        table.loc[idx, "q_fdr"] = bh_fdr(table.loc[idx, "p_perm"].to_numpy())
    return table


def read_external_cohorts(
    dirs: list[Path], notes: list[str]
) -> dict[str, tuple[pd.DataFrame, pd.DataFrame]]:
    """``{cohort: (predictions, targets)}`` of the :func:`predict_cohort` outputs ``dirs`` that
    were given targets, the input of :func:`external_table`; a note in ``notes`` for each
    cohort without."""
    cohorts = {}
    for directory in dirs:
        info = json.loads((directory / "predict.json").read_text(encoding="utf-8"))
        if not info.get("targets"):
            notes.append(f"external cohort {info['cohort']}: no targets, no concordance")
            continue
        targets = pd.read_parquet(info["targets"])
        targets.index = targets.index.astype(str)
        cohorts[info["cohort"]] = (pd.read_parquet(directory / "predictions.parquet"), targets)
    return cohorts


def external_survival(
    dirs: list[Path], *, n_boot: int, seed: int, thresholds, notes: list[str]
) -> pd.DataFrame:
    """C-index of clinical-only vs clinical + AI Cox models on each external cohort that has
    outcomes (``survival_cindex`` rows of :func:`~stromalens.evaluation.survival.survival_analysis`
    with a ``cohort`` column; empty when no cohort has them).

    The image model stays frozen (its zero-shot predictions of the proposed model are the AI
    scores); only the two Cox models are fitted, out of fold over 5 folds of the external cohort
    (3 folds below 80 patients). A cohort without an endpoint of ≥ 5 events, or whose Cox models
    do not converge, gets a note in ``notes`` instead."""
    from lifelines.exceptions import ConvergenceError

    from ..cohort import load_manifest
    from ..training.cv import assign_folds
    from .survival import survival_analysis

    frames = []
    for directory in dirs:
        info = json.loads((directory / "predict.json").read_text(encoding="utf-8"))
        clinical = load_manifest(info["manifest"], check_files=False).frame
        clinical.index = clinical.index.astype(str)
        preds = pd.read_parquet(directory / "predictions.parquet")
        preds = preds[preds["model"] == PROPOSED]
        if preds.empty:
            continue
        scores = preds.pivot(index="patient_id", columns="target", values="y_pred")[list(TARGETS)]
        endpoints = [
            e
            for e in ("os", "pfs")
            if {f"{e}_time", f"{e}_event"} <= set(clinical.columns)
            and clinical.loc[scores.index, f"{e}_event"].fillna(0).sum() >= 5
        ]
        if not endpoints:
            notes.append(f"external cohort {info['cohort']}: no outcomes with events, no C-index")
            continue
        k = 5 if len(scores) >= 80 else 3  # small cohorts: larger training folds for the Cox
        folds = assign_folds(scores.index, clinical.loc[scores.index, "site"], k, seed)
        try:
            tables = survival_analysis(
                scores,
                clinical.loc[scores.index],
                folds,
                endpoints=endpoints,
                n_boot=n_boot,
                seed=seed,
                thresholds=thresholds,
            )
        except ConvergenceError as exc:
            notes.append(f"external cohort {info['cohort']}: Cox models did not converge ({exc})")
            continue
        frames.append(tables["survival_cindex"].assign(cohort=info["cohort"]))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
