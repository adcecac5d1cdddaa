"""The stages of a study, one function each: ``fn(config, study) -> summary``.

Order (the graph of :func:`default_stages`): ``targets`` → ``wsi`` → ``radiomics`` → ``train``
(nested CV, every baseline, distillation, leave-site-out) → ``external`` (targets and features
of each external cohort, then the frozen models' predictions) → ``evaluate`` (reads the
external predictions) → ``report``. Every summary carries ``skipped``: the patients or slides
the stage left out, each with the reason.

What each stage's digest covers (see :mod:`.runner`):

============ ============================================ ==========================================
stage        settings                                     inputs
============ ============================================ ==========================================
targets      ``targets``, cohort name/sites               manifest, expression table, gene sets,
                                                          signature, mRNA scaling (sha256)
wsi          ``wsi``                                      manifest (sha256), encoder weights
                                                          (sha256), slides (path + size listing)
radiomics    ``radiomics`` + the radiomics YAML           manifest, radiomics YAML (sha256), MRI
                                                          volumes and masks (path + size listing)
train        ``training``                                 manifest, prompt banks (sha256);
                                                          targets, wsi, radiomics digests
external     ``external``, ``targets``, ``wsi``           each external manifest and expression
                                                          (sha256), slides (listing); train digest
evaluate     ``evaluation``                               train and external digests
report       ``name``, ``notes``                          evaluate digest
============ ============================================ ==========================================

Every path is built by :class:`~stromalens.rundir.StudyLayout`; the folder of a cohort's slide
stores below it, ``<features>/<encoder>/<tiling>/``, by :func:`~stromalens.wsi.store.feature_dir`
(:func:`feature_store`).
"""

from __future__ import annotations

import json
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


def _paths(frame: pd.DataFrame, columns) -> list[Path]:
    out = []
    for column in columns:
        if column not in frame.columns:
            continue
        for value in frame[column].dropna():
            text = str(value).strip()
            if text:
                out.append(Path(text))
    return out


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
            given = key in config.training.model_fields_set
            if given and getattr(config.training, key) != getattr(config.wsi, wsi_key):
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
    from ..targets.run import run_targets

    layout = StudyLayout(study)
    return run_targets(config.cohort.manifest, config.cohort.expression, config.targets,
                       layout.targets)  # fmt: skip


def _targets_inputs(manifest, expression, targets: TargetsConfig) -> list[Input]:
    return (
        _file("manifest", manifest)
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
    jobs = jobs_from_manifest(manifest)
    frame = _frame(manifest)
    with_slide = {j.slide_id for j in jobs}
    skipped = [
        {"item": str(p), "reason": "no slide in the manifest"}
        for p in frame.index
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
    for r in results:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
        if r["status"] == "failed":
            skipped.append({"item": r["slide"], "reason": f"slide failed: {r.get('error', '')}"})
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
    }


def run_wsi(config: StudyConfig, study: Path) -> dict:
    return _embed(config.cohort.manifest, StudyLayout(study).features(config.cohort.name), config)


def _slides(manifest: Path) -> tuple[Path, ...]:
    from ..wsi.embed import jobs_from_manifest

    return tuple(j.path for j in jobs_from_manifest(manifest))


# ---------------------------------------------------------------------------- radiomics
def run_radiomics_stage(config: StudyConfig, study: Path) -> dict:
    from ..radiology.runner import run_radiomics

    block = config.radiomics
    summary = run_radiomics(
        config.cohort.manifest,
        StudyLayout(study).radiomics,
        radiomics_settings(config),
        workers=block.workers,
        executor=block.executor,
        progress=False,
    )
    status = pd.read_csv(StudyLayout(study).radiomics / "patients.csv", index_col=0, dtype=str)
    skipped = []
    for pid, row in status.fillna("").iterrows():
        if row.get("status") == "failed":
            skipped.append({"item": str(pid), "reason": f"failed: {row.get('error', '')}"})
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
        "skipped": skipped,
    }
    check = summary.get("site_check", {}).get("balanced_accuracy")
    if check:
        out["site_balanced_accuracy"] = check
    return out


def _radiomics_inputs(config: StudyConfig) -> list[Input]:
    manifest = config.cohort.manifest
    settings = radiomics_settings(config)
    from ..cohort import SHARED_MASK

    # the images, their own masks and the shared mask: every file the radiomics stage reads
    columns = {c for s in settings.sequences for c in (s.image, s.mask_column)} | {SHARED_MASK}
    return (
        _file("manifest", manifest)
        + _file("radiomics_config", config.radiomics.config)
        + [Input("images", listing=tuple(_paths(_frame(manifest), sorted(columns))))]
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


def run_train(config: StudyConfig, study: Path) -> dict:
    from ..training.run import train_study

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
        settings=lambda c: {"wsi": _dump(c.wsi), "cohort": c.cohort.name},
        inputs=lambda c: (
            _file("manifest", c.cohort.manifest)
            + _weights_input(c)
            + [Input("slides", listing=_slides(c.cohort.manifest))]
        ),
        outputs=lambda c: [_relative(_ROOT.features(c.cohort.name))],
        clean=lambda c: [_relative(_ROOT.features(c.cohort.name))],
        description="tiles, QC, Macenko and frozen-encoder embeddings of every slide",
    )


def _radiomics_stage() -> Stage:
    return Stage(
        "radiomics",
        run_radiomics_stage,
        settings=lambda c: {
            "radiomics": _dump(c.radiomics),
            "resolved": radiomics_settings(c).model_dump(mode="json"),
        },
        inputs=_radiomics_inputs,
        outputs=lambda c: [_relative(_ROOT.radiomics / "radiomics.parquet")],
        clean=lambda c: [_relative(_ROOT.radiomics)],
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
        clean=lambda c: ["external", _relative(_ROOT.train.root / "external")],
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
