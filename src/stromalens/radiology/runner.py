"""The cohort run behind ``stromalens radiomics``: every patient, then the cohort tables.

Per patient (in a worker process, resumable, isolated): for each configured sequence present in
the manifest, read the image and its mask — its own, the ``mask_from`` sequence's moved by
registration (:mod:`.registration`), or the shared ``mri_mask`` (:func:`..cohort.sequence_files`
decides) — reduce the mask to the tumour label(s), check it, preprocess (:mod:`.preprocess`),
extract the PyRadiomics features (:mod:`.features`), and, for the stability subset of patients,
extract them again from ``stability.perturbations`` perturbed copies. The record is written
atomically to ``patients/<id>.json`` with a hash of the settings and the identity of its input
files (:func:`input_identity`), so a rerun skips finished patients whose files did not change.
A sequence that fails is recorded (``failed_sequences``) and left out, and the
patient keeps its other sequences; a patient all of whose sequences fail is reported in
``patients.csv`` and left out, the others go on. A missing sequence is a missing block of
features (recorded in ``patients.csv``), not an error.

Outputs in ``out``::

    radiomics.parquet      patients × "<sequence>__<feature>" (NaN where a sequence is missing)
    diagnostics.parquet    patients × "<sequence>__diagnostics_*" (PyRadiomics provenance)
    perturbations.parquet  (patient_id, perturbation) × features of the perturbed copies
    stability.parquet      feature × ICC, CI, stable (ICC ≥ threshold) on all perturbed patients
    patients.csv           status per patient: ok / failed (error), missing and failed
                           sequences, each sequence's mask source, registration QC
                           (<seq>_registration_metric_before/_after/_inside/_shift_mm), seconds
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
    payload["layout"] = 3  # 3: per-sequence masks, failed sequences (older records are redone)
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".partial-{os.getpid()}-{path.name}")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


def _write_parquet(frame: pd.DataFrame, path: Path) -> None:
    tmp = path.with_name(f".partial-{path.name}")
    frame.to_parquet(tmp)
    tmp.replace(path)


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


def _read_mask(pid: str, spec, files: dict, image, pre):
    """The sequence's own or shared mask as a {0, 1} mask on ``image``'s grid."""
    from . import io, preprocess

    where = f"patient {pid}, sequence {spec.name}"
    labels = spec.label if spec.label is not None else pre.label
    mask = preprocess.select_labels(
        io.read_mask(files["mask"], image, roi=spec.roi), labels, where=where
    )
    return io.check_mask(
        image,
        mask,
        label=1,
        patient=pid,
        sequence=spec.name,
        on_mismatch=pre.mask_mismatch,
        tolerance=pre.geometry_tolerance,
    )


def _registered_mask(pid: str, spec, files: dict, image, config, read) -> tuple[object, dict]:
    """The mask of sequence ``files["reference"]`` moved onto ``image`` by registration."""
    from . import registration

    reg = config.preprocess.registration
    fixed, fixed_mask = read(files["reference"])
    result = registration.register(fixed, image, reg, fixed_mask=fixed_mask)
    mask, inside = registration.move_mask(fixed_mask, image, result.transform)
    shift = registration.centroid_shift(fixed_mask, result.transform, result.start)
    qc = result.qc() | {
        "inside": round(inside, 4),
        "shift_mm": round(shift, 2),
        "reference": files["reference"],
    }
    if reg.max_shift_mm is not None and shift > reg.max_shift_mm:
        raise registration.RegistrationError(
            f"patient {pid}, sequence {spec.name}: the registration moved the tumour "
            f"{shift:.1f} mm from where the scanners' frames put it (registration.max_shift_mm "
            f"{reg.max_shift_mm:g}); if the images share a frame of reference, use "
            "registration.method: none"
        )
    if inside < reg.min_inside:
        raise registration.RegistrationError(
            f"patient {pid}, sequence {spec.name}: only {inside:.0%} of the "
            f"{files['reference']} mask lies inside this image after registration "
            f"(registration.min_inside {reg.min_inside:g})"
        )
    return mask, qc


def _sequence_features(spec, image, mask, config, rng, n_perturb, shape_from=None):
    """Features, diagnostics, normalisation stats and perturbed features of one sequence.

    ``shape_from``: the shape features of an identical mask already extracted (a shared mask),
    copied instead of recomputed (shape describes the mask, not the image).
    """
    from . import features as feat
    from . import preprocess

    pre = config.preprocess
    use_n4 = pre.n4.enabled if spec.n4 is None else spec.n4
    use_norm = pre.normalise.enabled if spec.normalise is None else spec.normalise
    prepared = preprocess.prepare(image, mask, pre, n4=use_n4, normalise=use_norm)
    params = config.extraction.pyradiomics_params(spec.setting)
    if shape_from is not None and "shape" in params["featureClass"]:
        params = params | {
            "featureClass": {k: v for k, v in params["featureClass"].items() if k != "shape"}
        }
    extractor = feat.make_extractor(params)
    img, msk = preprocess.resample_pair(prepared, pre.spacing_mm, pre.interpolator)
    values, diagnostics = feat.extract(extractor, img, msk, label=1)
    perturbed = []
    for _ in range(n_perturb):
        p_img, p_msk = preprocess.perturb(prepared, pre, config.stability, rng)
        perturbed.append(feat.extract(extractor, p_img, p_msk, label=1)[0])
    if shape_from is not None:
        values |= shape_from["values"]
        for row, shape in zip(perturbed, shape_from["perturbed"], strict=True):
            row |= shape
    return values, diagnostics, prepared.stats, perturbed


def _shape_only(values: dict) -> dict:
    return {k: v for k, v in values.items() if "_shape_" in k}


def _one_sequence(spec, files, record, config, read, rng, n_perturb, shapes):
    """Mask (own, shared or registered; QC into ``record``) and features of one sequence.

    ``shapes`` caches the shape features of a shared mask per mask file and grid: the same
    mask on the same grid has the same shape features, extracted once.
    """
    from . import io

    if files["source"] == "registered":
        image = io.read_image(files["image"], series=spec.series)
        mask, qc = _registered_mask(record["patient_id"], spec, files, image, config, read)
        record["qc"][spec.name] = qc
    else:
        image, mask = read(spec.name)
    key = f"{files['mask']}|{io.geometry(image)}"
    shared = shapes.get(key) if files["source"] == "shared" else None
    values, diagnostics, stats, p_values = _sequence_features(
        spec, image, mask, config, rng, n_perturb, shared
    )
    if files["source"] == "shared" and shared is None:
        shapes[key] = {
            "values": _shape_only(values),
            "perturbed": [_shape_only(v) for v in p_values],
        }
    return values, diagnostics, stats, p_values


def process_patient(job: dict) -> dict:
    """Features (and perturbed features) of one patient; runs in a worker process.

    A sequence that fails (unreadable, bad mask, failed registration) is recorded in
    ``failed`` and left out; the patient fails only if every present sequence does.
    """
    record_path = Path(job["record"])
    if record_path.exists():
        record = json.loads(record_path.read_text(encoding="utf-8"))
        same_files = record.get("inputs") == job.get("inputs")
        # a record with a failed sequence is redone: the next run retries what failed
        if record.get("settings") == job["settings"] and same_files and not record.get("failed"):
            return record | {"resumed": True}
    import SimpleITK as sitk

    from . import io

    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)  # one process per core already
    config = RadiomicsConfig.model_validate(job["config"])
    specs = {s.name: s for s in config.sequences}
    pid = job["patient_id"]
    started = time.perf_counter()
    record: dict = {"patient_id": pid, "settings": job["settings"], "inputs": job.get("inputs")}
    record |= {"features": {}}
    record |= {"diagnostics": {}, "perturbations": [], "missing": [], "failed": {}}
    record |= {"seconds": {}, "qc": {}, "mask_source": {}}
    rng = np.random.default_rng(_seed_of(pid, config.stability.seed))
    n_perturb = config.stability.perturbations if job["perturb"] else 0
    perturbed: list[dict] = [{} for _ in range(n_perturb)]
    cache: dict = {}

    def read(name):  # image and own/shared mask of a sequence, read once per patient
        if name not in cache:
            files = job["sequences"][name]
            image = io.read_image(files["image"], series=specs[name].series)
            cache[name] = (image, _read_mask(pid, specs[name], files, image, config.preprocess))
        return cache[name]

    shapes: dict[str, dict] = {}  # mask file and grid -> its shape features, extracted once
    for spec in config.sequences:
        files = job["sequences"].get(spec.name)
        if files is None:
            record["missing"].append(spec.name)
            continue
        t0 = time.perf_counter()
        prefix = f"{spec.name}__"
        try:
            values, diagnostics, stats, p_values = _one_sequence(
                spec, files, record, config, read, rng, n_perturb, shapes
            )
        except (ValueError, RuntimeError, OSError) as exc:
            record["failed"][spec.name] = message = str(exc).splitlines()[0]
            event(log, "radiomics: sequence failed", patient=pid, sequence=spec.name, error=message)
            continue
        record["mask_source"][spec.name] = files["source"]
        record["features"].update({prefix + k: v for k, v in values.items()})
        record["diagnostics"].update({prefix + k: v for k, v in diagnostics.items()})
        record["diagnostics"][prefix + "stromalens_normalisation"] = json.dumps(stats)
        for row, values_i in zip(perturbed, p_values, strict=True):
            row.update({prefix + k: v for k, v in values_i.items()})
        record["seconds"][spec.name] = round(time.perf_counter() - t0, 3)
    if record["failed"] and not record["features"]:
        raise ValueError("; ".join(f"{k}: {v}" for k, v in record["failed"].items()))
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
    from ..cohort import load_manifest, sequence_files

    config = config or RadiomicsConfig()
    out = Path(out)
    (out / "patients").mkdir(parents=True, exist_ok=True)
    cohort = load_manifest(manifest, check_files=False, sequences=config.sequence_columns())
    for warning in cohort.warnings:
        event(log, "radiomics: manifest", warning=warning)
    frame = cohort.frame
    images = [s.image for s in config.sequences]
    if not set(images) & set(frame.columns):
        raise ValueError(
            f"{manifest}: the manifest has none of the configured image columns {images} "
            f"(it has {list(frame.columns)})"
        )
    files = sequence_files(cohort, config.sequence_columns())
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
        sequences = {
            name: {"image": f.image, "mask": f.mask, "source": f.source, "reference": f.reference}
            for name, f in files[pid].items()
        }
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
                "failed_sequences": "; ".join(f"{k}: {v}" for k, v in record["failed"].items()),
                "mask_source": ",".join(f"{k}:{v}" for k, v in record["mask_source"].items()),
                "perturbed": bool(record["perturbations"]),
                "seconds": record["seconds"].get("total"),
                "resumed": bool(record.get("resumed", False)),
            }
            | _qc_columns(record["qc"])
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


def _qc_columns(qc: dict) -> dict:
    """Registration QC as flat patients.csv columns ``<sequence>_registration_<key>``."""
    return {
        f"{name}_registration_{key}": value
        for name, values in qc.items()
        for key, value in values.items()
    }


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
