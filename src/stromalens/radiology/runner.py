"""The cohort run behind ``stromalens radiomics``: every patient, then the cohort tables.

Per patient (in a worker process, resumable, isolated): for each configured sequence present in
the manifest, read the image and mask, check the mask, preprocess (:mod:`.preprocess`), extract
the PyRadiomics features (:mod:`.features`), and, for the stability subset of patients, extract
them again from ``stability.perturbations`` perturbed copies. The record is written atomically to
``patients/<id>.json`` with a hash of the settings and the identity of its input files
(:func:`input_identity`), so a rerun skips finished patients whose files did not change; a patient
that fails is reported in ``patients.csv`` and left out, the others go on. A missing sequence is
a missing block of features (recorded in ``patients.csv``), not an error.

Outputs in ``out``::

    radiomics.parquet      patients × "<sequence>__<feature>" (NaN where a sequence is missing)
    diagnostics.parquet    patients × "<sequence>__diagnostics_*" (PyRadiomics provenance)
    perturbations.parquet  (patient_id, perturbation) × features of the perturbed copies
    stability.parquet      feature × ICC, CI, stable (ICC ≥ threshold) on all perturbed patients
    patients.csv           status per patient: ok / failed (error), missing sequences, seconds
    radiomics.json         settings, versions, timings, counts and the site-classifier check
    config.yaml            the resolved settings

No harmonised table is written: ComBat and the stability filter are fitted inside each training
fold (``ComBat``, :func:`.stability.select_stable` with the fold's patients). The out-of-fold
site-classifier check in ``radiomics.json`` does exactly that.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from .. import __version__
from ..executors import run_items
from ..logs import event, get_logger
from .settings import RadiomicsConfig

log = get_logger(__name__)


def settings_hash(config: RadiomicsConfig) -> str:
    payload = config.model_dump(mode="json", exclude={"workers", "harmonisation_check"})
    payload["version"] = __version__
    payload["layout"] = 2  # 2: shape features once per mask file (records of 1 are redone)
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".partial-{os.getpid()}-{path.name}")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


def _write_parquet(frame: pd.DataFrame, path: Path) -> None:
    tmp = path.with_name(f".partial-{path.name}")
    frame.to_parquet(tmp)
    tmp.replace(path)


def _resolve(value, base: Path) -> Path | None:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return None
    if isinstance(value, Path):
        return value
    text = str(value).strip()
    if not text:
        return None
    path = Path(text).expanduser()
    return path if path.is_absolute() else base / path


def input_identity(sequences: dict) -> dict:
    """What identifies a patient's input files: per sequence, the image's and the mask's path,
    size and content sha256 (``{"t1": {"image": {...}, "mask": {...}}}``). A record is reused
    only when this equals the current files' (:func:`process_patient`), so a replaced or
    repaired volume is processed again; a file that cannot be read gives ``None`` (the patient
    then fails, as it would anyway)."""
    from ..hashing import sha256_file

    def identity(path):
        if path is None:
            return None
        path = Path(path)
        try:
            if path.is_dir():  # a DICOM series: its files' names, sizes and times
                files = sorted(p for p in path.rglob("*") if p.is_file())
                listing = [[str(p.relative_to(path)), *_stat(p)] for p in files]
                text = json.dumps(listing).encode()
                return {"path": str(path), "listing_sha256": hashlib.sha256(text).hexdigest()}
            return {"path": str(path), "size": path.stat().st_size, "sha256": sha256_file(path)}
        except OSError:
            return None

    return {
        name: {"image": identity(paths["image"]), "mask": identity(paths["mask"])}
        for name, paths in sorted(sequences.items())
    }


def _stat(path: Path) -> list[int]:
    stat = path.stat()
    return [int(stat.st_size), int(stat.st_mtime_ns)]


def _seed_of(patient_id: str, seed: int) -> list[int]:
    digest = hashlib.sha256(patient_id.encode()).digest()
    return [seed, int.from_bytes(digest[:8], "little")]


def process_patient(job: dict) -> dict:
    """Features (and perturbed features) of one patient; runs in a worker process."""
    from . import features as feat
    from . import io, preprocess

    record_path = Path(job["record"])
    if record_path.exists():
        record = json.loads(record_path.read_text(encoding="utf-8"))
        same_files = record.get("inputs") == job.get("inputs")
        if record.get("settings") == job["settings"] and same_files:
            return record | {"resumed": True}
    import SimpleITK as sitk

    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)  # one process per core already
    config = RadiomicsConfig.model_validate(job["config"])
    pre, stab = config.preprocess, config.stability
    pid = job["patient_id"]
    started = time.perf_counter()
    record: dict = {
        "patient_id": pid,
        "settings": job["settings"],
        "inputs": job.get("inputs"),
        "features": {},
        "diagnostics": {},
        "perturbations": [],
        "missing": [],
        "seconds": {},
    }
    rng = np.random.default_rng(_seed_of(pid, stab.seed))
    perturbed: list[dict] = [{} for _ in range(stab.perturbations if job["perturb"] else 0)]
    shaped: set[str] = set()  # mask files whose shape features are already extracted
    for spec in config.sequences:
        paths = job["sequences"].get(spec.name)
        if paths is None:
            record["missing"].append(spec.name)
            continue
        t0 = time.perf_counter()
        image = io.read_image(paths["image"])
        if paths["mask"] is None:
            raise ValueError(f"patient {pid}, sequence {spec.name}: no mask given")
        mask = io.check_mask(
            image,
            io.read_mask(paths["mask"], image),
            label=pre.label,
            patient=pid,
            sequence=spec.name,
            on_mismatch=pre.mask_mismatch,
            tolerance=pre.geometry_tolerance,
        )
        use_n4 = pre.n4.enabled if spec.n4 is None else spec.n4
        use_norm = pre.normalise.enabled if spec.normalise is None else spec.normalise
        prepared = preprocess.prepare(image, mask, pre, n4=use_n4, normalise=use_norm)
        params = config.extraction.pyradiomics_params(spec.setting)
        if str(paths["mask"]) in shaped and "shape" in params["featureClass"]:
            # Shape features describe the mask, not the image: a mask shared by several
            # sequences gives them once, under the first sequence (saves the costly mesh and
            # diameters on every further sequence and perturbation).
            classes = {k: v for k, v in params["featureClass"].items() if k != "shape"}
            params = params | {"featureClass": classes}
        shaped.add(str(paths["mask"]))
        extractor = feat.make_extractor(params)
        img, msk = preprocess.resample_pair(prepared, pre.spacing_mm, pre.interpolator)
        values, diagnostics = feat.extract(extractor, img, msk, label=1)
        prefix = f"{spec.name}__"
        record["features"].update({prefix + k: v for k, v in values.items()})
        record["diagnostics"].update({prefix + k: v for k, v in diagnostics.items()})
        record["diagnostics"][prefix + "stromalens_normalisation"] = json.dumps(prepared.stats)
        for i in range(len(perturbed)):
            p_img, p_msk = preprocess.perturb(prepared, pre, stab, rng)
            p_values, _ = feat.extract(extractor, p_img, p_msk, label=1)
            perturbed[i].update({prefix + k: v for k, v in p_values.items()})
        record["seconds"][spec.name] = round(time.perf_counter() - t0, 3)
    record["perturbations"] = perturbed
    record["seconds"]["total"] = round(time.perf_counter() - started, 3)
    record_path.parent.mkdir(parents=True, exist_ok=True)
    _write_atomic(record_path, json.dumps(record, allow_nan=True))
    return record


def run_radiomics(
    manifest: Path | str,
    out: Path | str,
    config: RadiomicsConfig | None = None,
    *,
    workers: int | None = None,
    progress: bool = True,
    check: bool | None = None,
    executor: str = "process",
) -> dict:
    """Run the radiomics stage over a cohort manifest; returns the summary in radiomics.json.

    Patients run in a local process pool (``executor="process"``) or as Ray tasks
    (``executor="ray"``, the optional extra; connects to a running cluster if there is one).
    """
    from ..cohort import load_manifest

    config = config or RadiomicsConfig()
    out = Path(out)
    (out / "patients").mkdir(parents=True, exist_ok=True)
    cohort = load_manifest(manifest, check_files=False)
    base = Path(manifest).parent
    frame = cohort.frame
    unknown = sorted(
        {c for s in config.sequences for c in (s.image, s.mask) if c not in frame.columns}
    )
    if unknown:
        raise ValueError(
            f"{manifest}: the configured sequences use columns {unknown} that the manifest lacks"
        )
    settings = settings_hash(config)
    ids = list(frame.index)
    stab = config.stability
    if stab.enabled:
        rng = np.random.default_rng(stab.seed)
        n = len(ids) if stab.patients is None else min(stab.patients, len(ids))
        perturb_ids = set(rng.choice(ids, size=n, replace=False).tolist()) if n >= 2 else set()
    else:
        perturb_ids = set()
    config_data = config.model_dump(mode="json")
    jobs = []
    for pid in ids:
        row = frame.loc[pid]
        sequences = {}
        for spec in config.sequences:
            image = _resolve(row[spec.image], base)
            if image is not None:
                sequences[spec.name] = {"image": image, "mask": _resolve(row[spec.mask], base)}
        job = {
            "patient_id": pid,
            "sequences": sequences,
            "config": config_data,
            "settings": settings,
            "perturb": pid in perturb_ids,
            "inputs": input_identity(sequences),
            "record": out / "patients" / f"{pid}.json",
        }
        jobs.append((pid, job))
    started = time.perf_counter()
    results = run_items(
        process_patient,
        jobs,
        workers=workers or config.workers,
        description="radiomics",
        progress=progress,
        executor=executor,
    )
    elapsed = time.perf_counter() - started

    statuses, feature_rows, diag_rows, pert_rows = [], {}, {}, []
    for result in results:
        pid = result.key
        if not result.ok:
            message = result.error.splitlines()[0]
            event(log, "radiomics: patient failed", logging.WARNING, patient=pid, error=message)
            statuses.append({"patient_id": pid, "status": "failed", "error": message})
            continue
        record = result.value
        feature_rows[pid] = record["features"]
        diag_rows[pid] = record["diagnostics"]
        for i, values in enumerate(record["perturbations"]):
            pert_rows.append({"patient_id": pid, "perturbation": i} | values)
        statuses.append(
            {
                "patient_id": pid,
                "status": "ok",
                "error": "",
                "missing_sequences": ",".join(record["missing"]),
                "perturbed": bool(record["perturbations"]),
                "seconds": record["seconds"].get("total"),
                "resumed": bool(record.get("resumed", False)),
            }
        )
    status = pd.DataFrame(statuses).set_index("patient_id")
    status.to_csv(out / ".partial-patients.csv")
    (out / ".partial-patients.csv").replace(out / "patients.csv")
    if not feature_rows:
        raise ValueError(f"no patient could be processed; see {out / 'patients.csv'}")

    features = pd.DataFrame.from_dict(feature_rows, orient="index").astype(float)
    features.index.name = "patient_id"
    columns = [c for c in _ordered_columns(config, features.columns)]
    features = features[columns]
    _write_parquet(features, out / "radiomics.parquet")
    diagnostics = pd.DataFrame.from_dict(diag_rows, orient="index").astype(str)
    diagnostics.index.name = "patient_id"
    _write_parquet(diagnostics, out / "diagnostics.parquet")

    summary: dict = {
        "stromalens_version": __version__,
        "manifest": str(Path(manifest).resolve()),
        "settings_hash": settings,
        "versions": _versions(),
        "patients": len(ids),
        "patients_ok": int((status["status"] == "ok").sum()),
        "patients_failed": status.index[status["status"] == "failed"].tolist(),
        "features": int(features.shape[1]),
        "seconds": round(elapsed, 1),
        "seconds_per_patient": _per_patient_seconds(status),
    }
    stability = None
    if pert_rows:
        perturbed = pd.DataFrame(pert_rows).set_index(["patient_id", "perturbation"])
        perturbed = perturbed[[c for c in columns if c in perturbed.columns]].astype(float)
        _write_parquet(perturbed, out / "perturbations.parquet")
        if perturbed.index.get_level_values(0).nunique() >= 2:
            from .stability import stability_table

            stability = stability_table(perturbed, kind=stab.icc, threshold=stab.threshold)
            _write_parquet(stability, out / "stability.parquet")
            summary["stable_features"] = int(stability["stable"].sum())
            summary["stability_patients"] = int(stability["n_patients"].iloc[0])
    check_settings = config.harmonisation_check
    if check is None:
        check = check_settings.enabled
    if check:
        from .sitecheck import site_predictability

        try:
            summary["site_check"] = site_predictability(
                features,
                frame.loc[features.index, "site"],
                covariates=frame.loc[features.index, list(check_settings.covariates)]
                if check_settings.covariates
                else None,
                perturbed=perturbed if pert_rows else None,
                threshold=stab.threshold,
                icc_kind=stab.icc,
                folds=check_settings.folds,
                seed=check_settings.seed,
            )
        except ValueError as exc:
            summary["site_check"] = {"skipped": str(exc)}
    _write_atomic(out / "config.yaml", yaml.safe_dump(config.model_dump(mode="json")))
    _write_atomic(out / "radiomics.json", json.dumps(summary, indent=2, default=str))
    event(
        log,
        "radiomics written",
        out=str(out),
        patients=summary["patients_ok"],
        failed=len(summary["patients_failed"]),
        features=summary["features"],
        seconds=summary["seconds"],
    )
    return summary


def _ordered_columns(config: RadiomicsConfig, columns) -> list[str]:
    order = {s.name: i for i, s in enumerate(config.sequences)}
    seen = list(dict.fromkeys(columns))
    return sorted(seen, key=lambda c: (order.get(c.split("__", 1)[0], 99), seen.index(c)))


def _per_patient_seconds(status: pd.DataFrame) -> dict:
    fresh = status[(status["status"] == "ok") & ~status["resumed"].astype(bool)]
    if fresh.empty:
        return {}
    out = {}
    for perturbed, group in fresh.groupby("perturbed"):
        key = "with_perturbations" if perturbed else "features_only"
        out[key] = round(float(group["seconds"].astype(float).median()), 2)
    return out


def _versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("pyradiomics", "SimpleITK", "numpy", "PyWavelets"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:  # pragma: no cover
            out[name] = None
    return out
