"""Open a training run directory for evaluation (layout: ``docs/run_directory.md``).

Every problem with the run — a missing file, predictions with NaN, a configuration that points
at nothing — raises :class:`RunDirError` naming what is missing, before any analysis starts.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from ..training.data import TARGETS
from .naming import study_name

#: Files every training run has (relative to the run directory).
REQUIRED = ("config.yaml", "folds.csv", "predictions.parquet")


class RunDirError(FileNotFoundError):
    """A run directory that cannot be evaluated; the message names each missing piece."""


@dataclass
class RunFiles:
    """What the evaluation reads from one training run.

    predictions   out-of-fold rows (patient_id, fold, model, target, y_true, y_pred) with the
                  study's model names (``fusion`` …) and the registered name in ``registered``
    clinical      the cohort manifest's frame (index patient_id)
    targets       the targets table (patients × ers_caf, lr, heterogeneity)
    reliability   the targets stage's ``reliability.json`` (noise ceilings) or None
    truth         the synthetic cohort's ``truth.parquet`` (planted latents) or None
    lso           leave-site-out predictions or None
    """

    root: Path
    config: dict
    folds: pd.Series
    predictions: pd.DataFrame
    manifest_path: Path
    clinical: pd.DataFrame
    targets: pd.DataFrame
    reliability: dict | None = None
    truth: pd.DataFrame | None = None
    lso: pd.DataFrame | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def training(self) -> dict:
        return self.config.get("training") or {}

    def wide(self, model: str) -> pd.DataFrame:
        """Out-of-fold predictions of ``model`` (study name) as patients × targets."""
        part = self.predictions[self.predictions["model"] == model]
        if part.empty:
            raise RunDirError(f"{self.root}: no predictions of model {model!r}")
        return part.pivot(index="patient_id", columns="target", values="y_pred")[list(TARGETS)]


def resolve_path(path: str | None, root: Path) -> Path | None:
    """A path from the run's configuration: as written (relative to the working directory, as
    training read it), else relative to the run directory and its parents (the study's root is
    usually one of them, when the run is read from another working directory)."""
    if not path:
        return None
    p = Path(path)
    if p.exists() or p.is_absolute():
        return p
    for base in (root, *root.resolve().parents):
        if (base / p).exists():
            return base / p
    return p


def check_predictions(predictions: pd.DataFrame, source: str) -> None:
    """Predictions must have the contract's columns and no NaN; names the offending rows."""
    needed = {"patient_id", "fold", "model", "target", "y_true", "y_pred"}
    missing = sorted(needed - set(predictions.columns))
    if missing:
        raise RunDirError(f"{source}: column(s) {missing} missing")
    bad = predictions[~np.isfinite(predictions["y_pred"].to_numpy(float))]
    if len(bad):
        where = ", ".join(
            f"{m}/{t}/{p}" for m, t, p in bad[["model", "target", "patient_id"]].head(5).to_numpy()
        )
        raise RunDirError(
            f"{source}: {len(bad)} prediction(s) are NaN or infinite (model/target/patient: "
            f"{where}{', …' if len(bad) > 5 else ''}); retrain or drop the model"
        )


def open_run(train_dir: Path | str) -> RunFiles:
    """Read and check a training run directory."""
    root = Path(train_dir)
    if not root.is_dir():
        raise RunDirError(f"run directory not found: {root}")
    missing = [name for name in REQUIRED if not (root / name).is_file()]
    if missing:
        raise RunDirError(
            f"{root} is not a complete training run: missing {', '.join(missing)} "
            "(run `stromalens train` first)"
        )
    config = yaml.safe_load((root / "config.yaml").read_text(encoding="utf-8")) or {}
    training = config.get("training") or {}
    manifest = resolve_path((config.get("cohort") or {}).get("manifest"), root)
    targets_path = resolve_path(training.get("targets"), root)
    problems = []
    if manifest is None or not manifest.is_file():
        problems.append(f"the cohort manifest ({manifest})")
    if targets_path is None or not targets_path.is_file():
        problems.append(f"the targets table ({targets_path})")
    if problems:
        raise RunDirError(f"{root}/config.yaml points at missing files: {'; '.join(problems)}")

    predictions = pd.read_parquet(root / "predictions.parquet")
    check_predictions(predictions, str(root / "predictions.parquet"))
    predictions = predictions.assign(
        patient_id=predictions["patient_id"].astype(str),
        registered=predictions["model"],
        model=predictions["model"].map(study_name),
    )
    folds = pd.read_csv(root / "folds.csv", dtype={"patient_id": str})
    folds = folds.set_index("patient_id")["fold"]

    from ..cohort import load_manifest

    clinical = load_manifest(manifest, check_files=False).frame
    clinical.index = clinical.index.astype(str)
    targets = pd.read_parquet(targets_path)
    targets.index = targets.index.astype(str)

    notes = []
    reliability = None
    rel_path = targets_path.parent / "reliability.json"
    if rel_path.is_file():
        reliability = json.loads(rel_path.read_text(encoding="utf-8"))
    else:
        notes.append(f"no noise ceilings: {rel_path} missing")
    truth = None
    truth_path = manifest.parent / "truth.parquet"
    if truth_path.is_file():
        truth = pd.read_parquet(truth_path)
        truth.index = truth.index.astype(str)
    lso = None
    lso_path = root / "leave_site_out" / "predictions.parquet"
    if lso_path.is_file():
        lso = pd.read_parquet(lso_path)
        check_predictions(lso, str(lso_path))
        lso = lso.assign(registered=lso["model"], model=lso["model"].map(study_name))
    else:
        notes.append(f"no leave-site-out run: {lso_path} missing")
    return RunFiles(
        root=root,
        config=config,
        folds=folds,
        predictions=predictions,
        manifest_path=manifest,
        clinical=clinical,
        targets=targets,
        reliability=reliability,
        truth=truth,
        lso=lso,
        notes=notes,
    )
