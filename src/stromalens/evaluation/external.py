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

from ..logs import event, get_logger
from ..training.data import TARGETS, StudyData
from .naming import study_name

log = get_logger("evaluation.external")


def _external_data(manifest, features_dir, targets, prompts, max_tiles, seed) -> StudyData:
    from ..cohort import load_manifest
    from ..training.data import read_bags

    frame = load_manifest(manifest, check_files=False).frame
    patients = [str(p) for p in frame.index]
    table = pd.DataFrame(np.nan, index=patients, columns=list(TARGETS))
    if targets is not None:
        loaded = pd.read_parquet(targets)
        loaded.index = loaded.index.astype(str)
        missing = [t for t in TARGETS if t not in loaded.columns]
        if missing:
            raise ValueError(f"{targets}: target column(s) {missing} missing")
        table = loaded.reindex(patients)[list(TARGETS)].astype(float)
    bags = read_bags(features_dir, patients, max_tiles, seed) if features_dir else {}
    return StudyData(
        patients=patients,
        sites=frame["site"].astype(str).to_numpy(),
        bags=bags,
        radiomics=pd.DataFrame(index=patients),
        targets=table,
        prompts=prompts,
    )


def predict_cohort(
    train_dir: Path | str,
    manifest: Path | str,
    out_dir: Path | str,
    *,
    features_dir: Path | str | None = None,
    targets: Path | str | None = None,
    name: str | None = None,
    models=None,
) -> pd.DataFrame:
    """Apply the frozen fold models of ``train_dir`` to the cohort of ``manifest``.

    Writes ``out_dir/predictions.parquet`` (patient_id, model, target, y_pred; the mean over
    folds) and ``out_dir/predict.json``; returns the predictions. ``models`` are registered
    names (default: every model of the run whose slide branch can run, i.e. all but the
    MRI-only ones when the cohort has no MRI)."""
    from ..models import model_info
    from ..training.curriculum import predict
    from .probes import load_data, refit_folds
    from .rundir import open_run

    started = time.perf_counter()
    run = open_run(train_dir)
    if features_dir is None:
        raise ValueError(
            "zero-shot prediction needs the external slides' features (--features DIR): "
            "embed them with `stromalens wsi embed` and the run's encoder"
        )
    dev = load_data(run)
    folds = refit_folds(run, dev)
    cfg = run.training
    seed = (cfg.get("settings") or {}).get("seed", 0)
    data = _external_data(manifest, features_dir, targets, dev.prompts, cfg.get("max_tiles"), seed)
    if not data.bags:
        raise ValueError(f"no slide features for any patient of {manifest} in {features_dir}")
    if models is None:
        registered = sorted(set(run.predictions["registered"]))
        models = [
            m
            for m in registered
            if m in ("gated_fusion", "gated_fusion_coral")
            or (m != "student" and "wsi" in model_info(m).modalities)
        ]
    preds = []
    for fold in folds:
        arrays = fold.prep.transform(data, data.patients)
        for model_name in models:
            if not fold.has(model_name):
                raise FileNotFoundError(f"{fold.directory}: no checkpoint of {model_name!r}")
            pred = fold.prep.inverse_targets(predict(fold.load(model_name), arrays))
            preds.append((model_name, pred))
    rows = []
    for model_name in models:
        mean = np.mean([p for m, p in preds if m == model_name], axis=0)  # (P, J)
        for j, target in enumerate(TARGETS):
            rows.append(
                pd.DataFrame(
                    {
                        "patient_id": data.patients,
                        "model": study_name(model_name),
                        "target": target,
                        "y_pred": mean[:, j],
                    }
                )
            )
    predictions = pd.concat(rows, ignore_index=True)
    has_slide = predictions["patient_id"].isin(set(data.bags))
    predictions = predictions[has_slide].reset_index(drop=True)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    predictions.to_parquet(out / "predictions.parquet", index=False)
    info = {
        "cohort": name or Path(manifest).parent.name,
        "manifest": str(manifest),
        "features": str(features_dir),
        "targets": str(targets) if targets is not None else None,
        "train_dir": str(train_dir),
        "models": [study_name(m) for m in models],
        "folds_averaged": len(folds),
        "patients": len(data.patients),
        "patients_with_slide": len(data.bags),
        "skipped_no_slide": sorted(set(data.patients) - set(data.bags)),
        "seconds": round(time.perf_counter() - started, 1),
    }
    (out / "predict.json").write_text(json.dumps(info, indent=2), encoding="utf-8")
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

    def r_of(a, b):
        return np.corrcoef(a, b)[0, 1]

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
            low, high = bootstrap_ci(r_of, p, y, n_boot=n_boot, seed=seed)
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
