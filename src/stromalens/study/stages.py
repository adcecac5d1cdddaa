"""The stages of a study, one function each: ``fn(config, study) -> summary``.

Order (the graph of :func:`default_stages`): ``targets`` → ``wsi`` → ``radiomics`` → ``train``
(nested CV, every baseline, distillation, leave-site-out) → ``external`` (targets and features
of each external cohort, then the frozen models' predictions) → ``evaluate`` (reads the
external predictions) → ``report``. Every summary carries ``skipped``: the patients or slides
the stage left out, each with the reason.

What each stage's digest covers (see :mod:`.runner`). A stage reads only its own columns of the
manifest, so its digest covers those rows (a *value* input), not the whole file: changing one
``os_time`` reruns train, evaluate and report, and no slide or MRI volume is touched.

============ ============================================ ==========================================
stage        settings                                     inputs
============ ============================================ ==========================================
targets      ``targets``                                  ``patient_id → rna_sample`` rows,
                                                          expression table, gene sets, signature,
                                                          mRNA scaling, annotation (sha256)
wsi          ``wsi`` (less executor, workers,             the slide table (slide id, path, size,
             batch size, allow_download), cohort name     mtime, µm/px override), encoder weights
radiomics    ``radiomics`` + the resolved settings        image/mask columns of the configured
             (less workers, executor)                     sequences (path, size, mtime) and, with
                                                          the site check, ``site`` and covariates;
                                                          radiomics YAML (sha256)
train        ``training``                                 manifest, prompt banks (sha256);
                                                          targets, wsi, radiomics digests
external     ``external``, ``targets``, ``wsi``           each external manifest and expression
                                                          (sha256), slides (listing); train digest
evaluate     ``evaluation``                               train and external digests
report       ``name``, ``notes``                          evaluate digest
============ ============================================ ==========================================

Per-item work survives a rerun for new inputs: the wsi stage never empties its store folder
(each slide's store records its slide file and settings and is redone only when they differ,
:func:`~stromalens.wsi.store.store_matches`), the radiomics stage keeps ``patients/`` (each
record carries its settings and input files' identity) and the train stage keeps its
``checkpoints/`` (each keyed by every input of its fit,
:func:`~stromalens.training.curriculum.fit_digest`). A slide or patient that failed is listed in
the summary's ``retry`` and run again on the next ``stromalens run``.

Every path is built by :class:`~stromalens.rundir.StudyLayout`; the folder of a cohort's slide
stores below it, ``<features>/<encoder>/<tiling>/``, by :func:`~stromalens.wsi.store.feature_dir`
(:func:`feature_store`).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pandas as pd

from ..config import (
    ConfigError,
    StudyConfig,
    TargetsConfig,
)
from ..logs import event, get_logger
from ..rundir import StudyLayout
from .runner import Input, Stage

log = get_logger("study.stages")

TRAIN = "train"
REPORT = "report"


# ---------------------------------------------------------------------------- helpers
def _dump(model) -> dict:
    return json.loads(model.model_dump_json()) if model is not None else {}


def _frame(manifest: Path, check_files: bool = False) -> pd.DataFrame:
    from ..cohort import load_manifest

    return load_manifest(manifest, check_files=check_files).frame


def _file(label: str, path: Path | None) -> list[Input]:
    return [Input(label, Path(path))] if path is not None else []


def radiomics_settings(config: StudyConfig):
    """The :class:`RadiomicsConfig` of the study (file, inline or built-in)."""
    from ..config import load_config
    from ..radiology.settings import RadiomicsConfig

    block = config.radiomics
    if block.config is not None:
        return load_config(block.config, RadiomicsConfig)
    if block.settings is not None:
        return RadiomicsConfig.model_validate(block.settings)
    return RadiomicsConfig()


def validate_study(config: StudyConfig) -> None:
    """What a study needs beyond the schema; each error names its key."""
    problems = []
    if config.cohort.expression is None:
        problems.append("cohort.expression: required (the targets stage reads it)")
    if config.training is None:
        problems.append("training: the block is required by `stromalens run`")
    else:
        for key in ("targets", "features", "radiomics"):
            if getattr(config.training, key) is not None:
                problems.append(
                    f"training.{key}: leave it out; `stromalens run` uses its own stages' output"
                )
        for key, wsi_key in (("encoder", "encoder"), ("encoder_weights", "weights")):
            # null counts as left out: the study file a run writes spells out every key
            value = getattr(config.training, key)
            given = key in config.training.model_fields_set and value is not None
            if given and value != getattr(config.wsi, wsi_key):
                problems.append(
                    f"training.{key}: must match wsi.{wsi_key} (leave it out to use wsi's)"
                )
    checks = [("cohort.manifest", config.cohort.manifest)]
    checks += [("cohort.expression", config.cohort.expression)]
    for block, targets in [("targets", config.targets)] + [
        (f"external.{i}.targets", c.targets) for i, c in enumerate(config.external)
    ]:
        if targets is not None:
            for key in ("gene_sets", "signature", "mrna_scaling", "annotation"):
                checks.append((f"{block}.{key}", getattr(targets, key)))
    for i, cohort in enumerate(config.external):
        checks += [(f"external.{i}.manifest", cohort.manifest)]
        checks += [(f"external.{i}.expression", cohort.expression)]
    checks += [("radiomics.config", config.radiomics.config)]
    if config.wsi.stain_reference is not None:
        checks.append(("wsi.stain_reference", config.wsi.stain_reference))
    if config.wsi.features is not None:
        checks.append(("wsi.features", config.wsi.features))
    if config.training is not None:
        checks.append(("training.prompts", config.training.prompts))
    for key, path in checks:
        if path is not None and not Path(path).exists():
            problems.append(f"{key}: not found: {path}")
    if config.radiomics.config is not None and Path(config.radiomics.config).is_file():
        try:
            radiomics_settings(config)
        except ConfigError as exc:
            problems.append(f"radiomics.config: {exc}")
    for block, targets in [("targets", config.targets)] + [
        (f"external.{i}.targets", c.targets) for i, c in enumerate(config.external)
    ]:
        if targets is not None and targets.quantiseq_tumor and targets.signature is not None:
            problems.append(
                f"{block}.quantiseq_tumor: quanTIseq's tumour-gene list is TIL10's; with your "
                "own signature leave it false"
            )
    problems += _manifest_problems(config)
    problems += _device_problems(config)
    if problems:
        raise ConfigError("invalid study configuration\n" + "\n".join(f"  {p}" for p in problems))


def _device_problems(config: StudyConfig) -> list[str]:
    """``wsi.device`` must exist on this machine and ``wsi.precision`` suit it."""
    from ..wsi.devices import resolve_device, resolve_precision

    try:
        resolve_precision(config.wsi.precision, resolve_device(config.wsi.device))
    except ValueError as exc:
        return [f"wsi.device / wsi.precision: {exc}"]
    return []


def _manifest_problems(config: StudyConfig) -> list[str]:
    """Each manifest read as its stages will read it, before any stage runs: the development
    cohort's against ``cohort.sites`` (when given), and every referenced file checked where
    ``check_files`` is on."""
    from ..cohort import ManifestError, load_manifest

    cohorts = [("cohort", config.cohort.manifest, config.cohort.sites, config.cohort.check_files)]
    cohorts += [
        (f"external.{i}", c.manifest, None, c.check_files) for i, c in enumerate(config.external)
    ]
    problems = []
    for key, manifest, sites, check_files in cohorts:
        if not Path(manifest).is_file():
            continue  # reported above
        try:
            load_manifest(manifest, sites=sites, check_files=check_files)
        except ManifestError as exc:
            problems.append(f"{key}.manifest: {exc}")
    return problems


# ---------------------------------------------------------------------------- targets
def run_targets_stage(config: StudyConfig, study: Path) -> dict:
    """The targets, or those of ``targets.adopt`` (a ``stromalens targets --out``) when its
    recorded inputs and settings equal the study's (:func:`~stromalens.targets.run.adopt_targets`);
    a folder that differs is logged and the targets are computed."""
    from ..targets.run import adopt_targets, run_targets

    layout = StudyLayout(study)
    args = (config.cohort.manifest, config.cohort.expression, config.targets)
    if config.targets.adopt is not None:
        summary, why = adopt_targets(config.targets.adopt, *args, layout.targets)
        if summary is not None:
            event(log, "targets adopted", source=str(config.targets.adopt))
            return summary
        event(log, "targets not adopted; computing them", logging.WARNING, reason=why)
    return run_targets(*args, layout.targets)


def _rna_samples(manifest: Path) -> list:
    """``[patient_id, rna_sample]`` of every patient (``None``: no RNA-seq): what the targets
    stage reads of the manifest."""
    samples = _frame(manifest)["rna_sample"]
    return [[str(p), None if pd.isna(s) else str(s)] for p, s in samples.items()]


def _targets_inputs(manifest, expression, targets: TargetsConfig) -> list[Input]:
    return (
        [Input("rna_samples", value=_rna_samples(manifest))]
        + _file("expression", expression)
        + _file("gene_sets", targets.gene_sets)
        + _file("signature", targets.signature)
        + _file("mrna_scaling", targets.mrna_scaling)
        + _file("annotation", targets.annotation)
    )


# ---------------------------------------------------------------------------- wsi
def _weights_input(config: StudyConfig) -> list[Input]:
    weights = config.wsi.weights
    if weights == "random":
        return []
    if weights is None:
        if config.wsi.encoder != "synthclip":
            return []
        from ..wsi.synthclip import default_checkpoint

        path = default_checkpoint()
        return [Input("encoder_weights", path)] if path.is_file() else []
    path = Path(weights)
    if path.is_file():
        return [Input("encoder_weights", path)]
    if path.is_dir():
        return [Input("encoder_weights", listing=tuple(p for p in path.rglob("*") if p.is_file()))]
    return []


def _tiling(config: StudyConfig):
    from ..wsi.tiling import TilingSpec

    w = config.wsi
    return TilingSpec(
        target_mpp=w.target_mpp, tile_px=w.tile_px, stride_px=w.tile_px, min_tissue=w.min_tissue
    )


def feature_store(root: Path, config: StudyConfig) -> Path:
    """The folder of the slide stores the study's encoder and tiling write under ``root`` (a
    cohort's ``features`` folder): ``root/<encoder>/<tiling>``."""
    from ..wsi.store import feature_dir

    return feature_dir(root, config.wsi.encoder, _tiling(config))


def _embed(manifest: Path, out: Path, config: StudyConfig) -> dict:
    """Tile, QC, normalise and embed a cohort's slides into :func:`feature_store` of ``out``;
    summary with skipped (and recomputed) slides."""
    from ..wsi.embed import EmbedSettings, embed_cohort, jobs_from_manifest

    w = config.wsi
    settings = EmbedSettings(
        tiling=_tiling(config),
        batch_size=w.batch_size,
        stain=w.stain,
        stain_reference=str(w.stain_reference) if w.stain_reference else None,
        device=w.device,
        precision=w.precision,
    )
    from ..cohort import load_manifest

    jobs = jobs_from_manifest(manifest)
    cohort = load_manifest(manifest, check_files=False)
    with_slide = set(cohort.slides["patient_id"])
    skipped = [
        {"item": str(p), "reason": "no slide in the manifest"}
        for p in cohort.frame.index
        if str(p) not in with_slide
    ]
    results = embed_cohort(
        jobs,
        out,
        w.encoder,
        w.weights,
        settings,
        executor=w.executor,
        workers=w.workers,
        allow_download=w.allow_download,
        progress=False,
    )
    counts: dict = {}
    retry = []
    for r in results:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
        if r["status"] == "failed":
            skipped.append({"item": r["slide"], "reason": f"slide failed: {r.get('error', '')}"})
            retry.append(r["slide"])
            _drop_store(feature_store(out, config), r["slide"])
        elif r["status"] == "empty":
            skipped.append({"item": r["slide"], "reason": "no tile passed tissue/QC"})
    if not any(r["status"] in ("done", "skipped") for r in results):
        raise ValueError(f"{manifest}: no slide could be embedded (see {out})")
    return {
        "slides": counts,
        "tiles": int(sum(r.get("n_tiles", 0) for r in results)),
        "features": str(feature_store(out, config)),
        "recomputed": {r["slide"]: r["recomputed"] for r in results if r.get("recomputed")},
        "skipped": skipped,
        "retry": retry,  # the next run tries these slides again (:func:`.runner.retry_items`)
    }


def _drop_store(folder: Path, slide_id: str) -> None:
    """Remove the study's store of a slide that failed this time: it was made from an earlier
    file or settings (the slide was redone because its identity changed), and training must not
    read it. Only the study's own file (or link) is removed, never an adopted store's target."""
    from ..wsi.store import feature_path

    path = feature_path(folder, slide_id)
    if path.is_symlink() or path.is_file():
        event(log, "stale store of a failed slide removed", slide=slide_id)
        path.unlink()


def run_wsi(config: StudyConfig, study: Path) -> dict:
    out = StudyLayout(study).features(config.cohort.name)
    linked = _adopt(config, feature_store(out, config)) if config.wsi.features else []
    summary = _embed(config.cohort.manifest, out, config)
    folder = feature_store(out, config)
    # a linked store that did not match was embedded again, replacing the link
    summary["adopted"] = [s for s in linked if _store_of(folder, s).is_symlink()]
    return summary


def _store_of(folder: Path, slide_id: str) -> Path:
    from ..wsi.store import feature_path

    return feature_path(folder, slide_id)


def adopted_folder(config: StudyConfig) -> Path:
    """The folder of slide stores ``wsi.features`` names: the ``--out`` of ``stromalens wsi
    embed`` (its ``<encoder>/<tiling>`` folder for the study's encoder and tiling is taken) or
    that store folder itself."""
    given = Path(config.wsi.features)
    folder = given if any(given.glob("*.h5")) else feature_store(given, config)
    if not folder.is_dir():
        raise ValueError(
            f"wsi.features: {given} holds no slide stores for encoder {config.wsi.encoder!r} at "
            f"this tiling (looked in {folder}); give the --out of `stromalens wsi embed`"
        )
    return folder


def _adopt(config: StudyConfig, dest: Path) -> list[str]:
    """Link into ``dest`` each complete store of :func:`adopted_folder` for a slide of the
    cohort that ``dest`` does not hold yet; returns the slide ids linked.

    A link, not a copy: nothing is duplicated and the user's files are never written to (a
    store found stale is replaced by the study's own file, the link removed, the original
    kept). Whether a linked store is used is decided as for any store of the study
    (:func:`~stromalens.wsi.store.store_matches`: same slide file, encoder, weights, tiling,
    stain settings, µm/px override); one that differs is embedded again."""
    from ..wsi.embed import jobs_from_manifest
    from ..wsi.store import is_complete

    source = adopted_folder(config)
    dest.mkdir(parents=True, exist_ok=True)
    linked = []
    for job in jobs_from_manifest(config.cohort.manifest):
        target, found = _store_of(dest, job.slide_id), _store_of(source, job.slide_id)
        if target.exists() or target.is_symlink() or not found.is_file():
            continue
        if is_complete(found, require_features=True):
            target.symlink_to(found.resolve())
            linked.append(job.slide_id)
    event(log, "slide stores adopted", source=str(source), linked=len(linked))
    return linked


def _adopt_records(source: Path, dest: Path) -> list[str]:
    """Link into ``dest/patients/`` each patient record of ``source`` (the ``--out`` of
    ``stromalens radiomics``) that ``dest`` does not hold yet; returns their patient ids.

    Whether a linked record is used is decided as for any record of the study: the same
    settings hash and the same input files (:func:`~stromalens.radiology.runner.input_identity`)
    and no failed sequence; one that differs is recomputed, and the new record replaces the
    link (atomic rename), never the user's file."""
    records = Path(source) / "patients"
    if not records.is_dir():
        raise ValueError(
            f"radiomics.adopt: {source} has no patients/ folder; give the --out of "
            "`stromalens radiomics`"
        )
    target = Path(dest) / "patients"
    target.mkdir(parents=True, exist_ok=True)
    linked = []
    for record in sorted(records.glob("*.json")):
        mine = target / record.name
        if not (mine.exists() or mine.is_symlink()):
            mine.symlink_to(record.resolve())
            linked.append(record.stem)
    event(log, "radiomics records adopted", source=str(source), linked=len(linked))
    return linked


def _slides(manifest: Path) -> tuple[Path, ...]:
    from ..wsi.embed import jobs_from_manifest

    return tuple(j.path for j in jobs_from_manifest(manifest))


def _stat(path: Path) -> list:
    """``[size, mtime_ns]`` of a file (``[-1, -1]`` when absent): a cheap identity for a digest;
    the per-item records check the content."""
    try:
        stat = Path(path).stat()
    except OSError:
        return [-1, -1]
    return [int(stat.st_size), int(stat.st_mtime_ns)]


def _slide_rows(manifest: Path) -> list:
    """The slide table as the wsi stage reads it: ``[slide_id, path, µm/px override, size,
    mtime_ns]`` per slide. Nothing else of the manifest (patients' clinical data, MRI, RNA)."""
    from ..wsi.embed import jobs_from_manifest

    return [[j.slide_id, str(j.path), j.mpp, *_stat(j.path)] for j in jobs_from_manifest(manifest)]


#: WSI settings that change how fast slides are embedded, not their features (an adopted
#: store is used only if it records the same slide and settings as the study's own would).
WSI_EXECUTION = {"executor", "workers", "batch_size", "allow_download", "features"}


def _wsi_settings(config: StudyConfig) -> dict:
    return {k: v for k, v in _dump(config.wsi).items() if k not in WSI_EXECUTION}


# ---------------------------------------------------------------------------- radiomics
def run_radiomics_stage(config: StudyConfig, study: Path) -> dict:
    from ..radiology.runner import run_radiomics

    block = config.radiomics
    adopted = _adopt_records(block.adopt, StudyLayout(study).radiomics) if block.adopt else []
    summary = run_radiomics(
        config.cohort.manifest,
        StudyLayout(study).radiomics,
        radiomics_settings(config),
        workers=block.workers,
        executor=block.executor,
        progress=False,
    )
    status = pd.read_csv(StudyLayout(study).radiomics / "patients.csv", index_col=0, dtype=str)
    skipped, retry = [], []
    for pid, row in status.fillna("").iterrows():
        if row.get("status") == "failed":
            skipped.append({"item": str(pid), "reason": f"failed: {row.get('error', '')}"})
            retry.append(str(pid))
        elif row.get("failed_sequences"):  # the patient kept its other sequences
            skipped.append({"item": str(pid), "reason": f"failed: {row['failed_sequences']}"})
            retry.append(str(pid))
        elif row.get("missing_sequences"):
            skipped.append(
                {
                    "item": str(pid),
                    "reason": f"no {row['missing_sequences']} image: those features are empty",
                }
            )
    out = {
        "patients_ok": summary["patients_ok"],
        "features": summary["features"],
        "stable_features": summary.get("stable_features"),
        "patients_resumed": int(status["resumed"].eq("True").sum()) if "resumed" in status else 0,
        "skipped": skipped,
        "retry": retry,  # the next run tries these patients again
    }
    if block.adopt:
        resumed = set(status.index[status["resumed"].eq("True")]) if "resumed" in status else set()
        out["adopted"] = sorted(p for p in adopted if p in resumed)
    check = summary.get("site_check", {}).get("balanced_accuracy")
    if check:
        out["site_balanced_accuracy"] = check
    return out


def _radiomics_rows(config: StudyConfig) -> list:
    """What the radiomics stage reads of the manifest: per patient, each image and mask column
    of the configured sequences as ``[column, path, size, mtime_ns]`` and, when the site check
    runs, the ``site`` and covariate cells."""
    settings = radiomics_settings(config)
    from ..cohort import SHARED_MASK

    # the images, their own masks and the shared mask: every file the radiomics stage reads
    columns = sorted(
        {c for s in settings.sequences for c in (s.image, s.mask_column)} | {SHARED_MASK}
    )
    check = settings.harmonisation_check
    cells = ["site", *check.covariates] if check.enabled else []
    frame = _frame(config.cohort.manifest)
    rows = []
    for pid, row in frame.iterrows():
        files = [[c, str(row[c]), *_stat(row[c])] for c in columns if c in row and _given(row[c])]
        values = [[c, str(row[c])] for c in cells if c in row]
        rows.append([str(pid), files, values])
    return rows


def _given(value) -> bool:
    return value is not None and not (isinstance(value, float) and pd.isna(value))


def _radiomics_inputs(config: StudyConfig) -> list[Input]:
    return _file("radiomics_config", config.radiomics.config) + [
        Input("images", value=_radiomics_rows(config))
    ]


#: What the radiomics stage writes beside ``patients/`` (the per-patient records, kept).
RADIOMICS_TABLES = (
    "radiomics.parquet",
    "diagnostics.parquet",
    "perturbations.parquet",
    "stability.parquet",
    "patients.csv",
    "radiomics.json",
    "config.yaml",
)


# ---------------------------------------------------------------------------- train
def training_config(config: StudyConfig, study: Path) -> StudyConfig:
    """The study configuration with the training block pointing at the outputs of the study
    folder ``study`` (absolute paths), as the train stage and ``stromalens train --study`` read
    it."""
    layout = StudyLayout(Path(study).resolve())
    if not layout.targets_table.is_file():
        raise FileNotFoundError(
            f"{layout.targets_table} not found: the study folder must be the output of "
            "`stromalens run` or `stromalens demo`"
        )
    training = config.training.model_copy(
        update={
            "targets": layout.targets_table,
            "features": feature_store(layout.features(config.cohort.name), config),
            "radiomics": layout.radiomics,
            "encoder": config.wsi.encoder,
            "encoder_weights": config.wsi.weights,
            "prompts": config.training.prompts.resolve(),
        }
    )
    return _absolute(config).model_copy(update={"training": training})


def _absolute(config: StudyConfig) -> StudyConfig:
    """Every relative path of the configuration made absolute (the working directory's)."""

    def fix(value):
        if isinstance(value, dict):
            return {k: fix(v) for k, v in value.items()}
        if isinstance(value, list):
            return [fix(v) for v in value]
        return value

    data = json.loads(config.model_dump_json())
    for key in ("manifest", "expression"):
        if data["cohort"].get(key):
            data["cohort"][key] = str(Path(data["cohort"][key]).resolve())
    for block in [data["targets"]] + [c.get("targets") or {} for c in data["external"]]:
        for key in ("gene_sets", "signature", "mrna_scaling"):
            if block.get(key):
                block[key] = str(Path(block[key]).resolve())
    for cohort in data["external"]:
        for key in ("manifest", "expression"):
            if cohort.get(key):
                cohort[key] = str(Path(cohort[key]).resolve())
    if data["radiomics"].get("config"):
        data["radiomics"]["config"] = str(Path(data["radiomics"]["config"]).resolve())
    return StudyConfig.model_validate(fix(data))


def _check_clip_corpus(config: StudyConfig) -> None:
    """Refuse a synthetic CLIP whose training slides are slides of a cohort the study evaluates
    (issue 17: the encoder's corpus must be other patients); weights without a record pass."""
    weights = config.wsi.weights
    if config.wsi.encoder != "synthclip" or weights == "random":
        return
    from ..wsi.synthclip import check_corpus_disjoint, default_checkpoint

    path = Path(weights) if weights else default_checkpoint()
    if path.is_file():
        manifests = [config.cohort.manifest, *(e.manifest for e in config.external)]
        check_corpus_disjoint(path, [s for m in manifests for s in _slides(m)])


def run_train(config: StudyConfig, study: Path) -> dict:
    from ..training.run import train_study

    _check_clip_corpus(config)
    layout = StudyLayout(study)
    # train/config.yaml (written by train_study) is this resolved configuration: `stromalens
    # train --config STUDY/train/config.yaml` trains again on the same stage outputs
    metrics = train_study(training_config(config, study), layout.train.root)
    run = json.loads(layout.train.manifest.read_text(encoding="utf-8"))
    targets = pd.read_parquet(layout.targets_table)
    cohort = _frame(config.cohort.manifest)
    have = set(targets.index.astype(str))
    skipped = [
        {"item": str(p), "reason": "no targets (no RNA-seq): not trained on"}
        for p in cohort.index
        if str(p) not in have
    ]
    ranking = sorted(metrics["models"].items(), key=lambda kv: -kv[1]["macro_r"])
    return {
        "patients": run.get("patients"),
        "slides": run.get("slides"),
        "radiomics_features": run.get("radiomics_features"),
        "models": len(ranking),
        "macro_r": {name: values["macro_r"] for name, values in ranking},
        "cv_seconds": metrics.get("seconds"),
        "skipped": skipped,
    }


# ---------------------------------------------------------------------------- external
def run_external(config: StudyConfig, study: Path) -> dict:
    """For each external cohort: its targets (if it has RNA-seq), its WSI features, then the
    frozen models' predictions into ``TRAIN/external/<name>``."""
    from ..evaluation.external import predict_cohort
    from ..targets.run import run_targets

    layout = StudyLayout(study)
    out: dict = {"cohorts": {}, "skipped": []}
    for cohort in config.external:
        root = layout.external(cohort.name)
        report: dict = {}
        targets_path = None
        if cohort.expression is not None:
            report["targets"] = run_targets(
                cohort.manifest,
                cohort.expression,
                cohort.targets or config.targets,
                root / "targets",
            )
            targets_path = root / "targets" / "targets.parquet"
        features = root / "features"
        report["wsi"] = _embed(cohort.manifest, features, config)
        for item in report["wsi"]["skipped"]:
            out["skipped"].append({**item, "item": f"{cohort.name}/{item['item']}"})
        out.setdefault("retry", []).extend(f"{cohort.name}/{s}" for s in report["wsi"]["retry"])
        result = predict_cohort(
            layout.train.bundle,
            cohort.manifest,
            layout.train.external(cohort.name),
            features_dir=feature_store(features, config),
            targets=targets_path,
            name=cohort.name,
        )
        report["predict"] = _jsonable(result)
        out["cohorts"][cohort.name] = report
    return out


def _jsonable(value):
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, pd.DataFrame):
        return {"rows": int(len(value))}
    return str(value)


def _external_inputs(config: StudyConfig) -> list[Input]:
    inputs = []
    for cohort in config.external:
        inputs += _file(f"{cohort.name}.manifest", cohort.manifest)
        inputs += _file(f"{cohort.name}.expression", cohort.expression)
        t = cohort.targets or config.targets
        for key in ("gene_sets", "signature", "mrna_scaling"):
            inputs += _file(f"{cohort.name}.{key}", getattr(t, key))
        inputs.append(Input(f"{cohort.name}.slides", listing=_slides(cohort.manifest)))
    return inputs + _weights_input(config)


# ---------------------------------------------------------------------------- evaluate, report
def run_evaluate(config: StudyConfig, study: Path) -> dict:
    from ..evaluation import evaluate_run

    options = config.evaluation.model_dump()
    metrics = evaluate_run(StudyLayout(study).train.root, **options)
    return {
        "metrics": len(metrics),
        "seconds": metrics.get("meta.seconds"),
        "notes": _jsonable(metrics.get("meta.notes", [])),
    }


def run_report(config: StudyConfig, study: Path) -> dict:
    from ..report import write_report

    layout = StudyLayout(study)
    return {"report": str(write_report(layout.train.root, layout.report))}


# ---------------------------------------------------------------------------- the graph
def _relative(study_path: Path) -> str:
    """A stage output as the runner records it: relative to the study folder."""
    return str(study_path.relative_to(_ROOT.root))


_ROOT = StudyLayout(Path("."))  # the layout with relative paths, for the stages' outputs


def _targets_stage() -> Stage:
    return Stage(
        "targets",
        run_targets_stage,
        settings=lambda c: {"targets": _dump(c.targets)},
        inputs=lambda c: _targets_inputs(c.cohort.manifest, c.cohort.expression, c.targets),
        outputs=lambda c: [_relative(_ROOT.targets_table), "targets/reliability.json"],
        clean=lambda c: [_relative(_ROOT.targets)],
        description="transcriptomic targets and noise ceilings of the development cohort",
    )


def _wsi_stage() -> Stage:
    return Stage(
        "wsi",
        run_wsi,
        settings=lambda c: {"wsi": _wsi_settings(c), "cohort": c.cohort.name},
        inputs=lambda c: (
            [Input("slides", value=_slide_rows(c.cohort.manifest))] + _weights_input(c)
        ),
        outputs=lambda c: [_relative(_ROOT.features(c.cohort.name))],
        clean=lambda c: [],  # each store checks its own identity; nothing is emptied
        description="tiles, QC, Macenko and frozen-encoder embeddings of every slide",
    )


def _radiomics_stage() -> Stage:
    return Stage(
        "radiomics",
        run_radiomics_stage,
        settings=lambda c: {
            "radiomics": {
                k: v for k, v in _dump(c.radiomics).items() if k in ("config", "settings")
            },
            "resolved": radiomics_settings(c).model_dump(mode="json", exclude={"workers"}),
        },
        inputs=_radiomics_inputs,
        outputs=lambda c: [_relative(_ROOT.radiomics / "radiomics.parquet")],
        # patients/ stays: each record is reused only for the same settings and input files
        clean=lambda c: [_relative(_ROOT.radiomics / name) for name in RADIOMICS_TABLES],
        description="MRI preprocessing, PyRadiomics features, perturbation stability",
    )


def _prompt_listing(c: StudyConfig) -> list[Input]:
    files = tuple(sorted(p for p in c.training.prompts.rglob("*") if p.is_file()))
    return [Input("prompts", listing=files)]


def _train_stage() -> Stage:
    train = _ROOT.train
    return Stage(
        TRAIN,
        run_train,
        settings=lambda c: {"training": _dump(c.training), "cohort": c.cohort.name},
        inputs=lambda c: _file("manifest", c.cohort.manifest) + _prompt_listing(c),
        outputs=lambda c: [
            _relative(train.metrics),
            _relative(train.predictions),
            _relative(train.bundle / "bundle.json"),
        ],  # fmt: skip
        clean=lambda c: [_relative(train.root)],
        # keyed by every input of their fit (fit_digest) or of their text (prompt cache):
        # reused when they match, so new inputs refit only the fits they change
        keep=lambda c: [
            _relative(train.checkpoints),
            _relative(train.leave_site_out.checkpoints),
            _relative(train.prompts_cache),
        ],
        after=("targets", "wsi", "radiomics"),
        description="every model under nested site-stratified CV, distillation, leave-site-out",
    )


def _external_stage() -> Stage:
    return Stage(
        "external",
        run_external,
        settings=lambda c: {
            "external": [_dump(e) for e in c.external],
            "targets": _dump(c.targets),
            "wsi": _dump(c.wsi),
        },
        inputs=_external_inputs,
        outputs=lambda c: [_relative(_ROOT.external(e.name) / "features") for e in c.external],
        # the slide stores under external/<name>/features stay (each checks its identity)
        clean=lambda c: (
            [_relative(_ROOT.external(e.name) / "targets") for e in c.external]
            + [_relative(_ROOT.train.root / "external")]
        ),
        after=(TRAIN,),
        description="zero-shot application to the external cohorts",
    )


def _evaluate_stage() -> Stage:
    return Stage(
        "evaluate",
        run_evaluate,
        settings=lambda c: {"evaluation": _dump(c.evaluation)},
        inputs=lambda c: [],
        outputs=lambda c: [_relative(_ROOT.train.evaluation_metrics)],
        clean=lambda c: [_relative(_ROOT.train.evaluation)],
        after=(TRAIN, "external"),
        description="every analysis of the study (stromalens evaluate)",
    )


def _report_stage() -> Stage:
    return Stage(
        REPORT,
        run_report,
        settings=lambda c: {"name": c.name, "notes": c.notes},
        inputs=lambda c: [],
        outputs=lambda c: [_relative(_ROOT.report)],
        clean=lambda c: [_relative(_ROOT.report.parent)],
        after=("evaluate",),
        description="the self-contained HTML report",
    )


def default_stages(config: StudyConfig | None = None) -> list[Stage]:
    """The study's stages in order."""
    factories = (_targets_stage, _wsi_stage, _radiomics_stage, _train_stage, _external_stage,
                 _evaluate_stage, _report_stage)  # fmt: skip
    return [make() for make in factories]


def log_skipped(stage: str, summary: dict) -> None:
    for item in summary.get("skipped", []):
        event(log, "item skipped", stage=stage, item=item["item"], reason=item["reason"])
