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

The evaluation, prediction and report functions are imported lazily; a stage whose function is
not installed records ``not available`` (and its digest says so, so that it reruns once the
function exists).
"""

from __future__ import annotations

import importlib
import inspect
import json
from pathlib import Path

import pandas as pd

from ..config import (
    ConfigError,
    ExternalCohortConfig,
    StudyConfig,
    TargetsConfig,
)
from ..logs import event, get_logger
from .runner import Input, Stage

log = get_logger("study.stages")

TRAIN = "train"
REPORT = "report"


# ---------------------------------------------------------------------------- helpers
def _dump(model) -> dict:
    return json.loads(model.model_dump_json()) if model is not None else {}


def _optional(module: str, name: str):
    """``module.name`` if it is importable, else None (stages not written yet)."""
    try:
        mod = importlib.import_module(module)
    except ImportError:
        return None
    return getattr(mod, name, None)


def _available(module: str, name: str) -> str:
    return f"{module}.{name}" if _optional(module, name) is not None else "not available"


def _call(fn, *args, **kwargs):
    """Call ``fn`` with the keyword arguments it accepts (the others are dropped)."""
    params = inspect.signature(fn).parameters
    if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
        kwargs = {k: v for k, v in kwargs.items() if k in params}
    return fn(*args, **kwargs)


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
            for key in ("gene_sets", "signature", "mrna_scaling"):
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
    if problems:
        raise ConfigError("invalid study configuration\n" + "\n".join(f"  {p}" for p in problems))


# ---------------------------------------------------------------------------- targets
def _compute_targets(manifest: Path, expression: Path, settings: TargetsConfig, out: Path) -> dict:
    """Targets of one cohort (as ``stromalens targets``); returns its summary."""
    from ..cohort import load_manifest
    from ..hashing import sha256_file
    from ..targets.io import read_expression
    from ..targets.pipeline import compute_targets, write_targets

    expr = read_expression(
        expression, orientation=settings.orientation, duplicates=settings.duplicates
    )
    cohort = load_manifest(manifest, expression_samples=list(expr.index), check_files=False)
    samples = cohort.frame["rna_sample"].dropna()
    if samples.empty:
        raise ValueError(f"{manifest}: no patient has an rna_sample")
    scaling = None
    if settings.mrna_scaling is not None:
        scaling = pd.read_csv(settings.mrna_scaling, sep="\t", index_col=0).iloc[:, 0]
    result = compute_targets(
        expr.loc[samples.to_numpy()],
        gene_sets=settings.gene_sets,
        signature=settings.signature,
        mrna_scaling=scaling,
        lr_weights=settings.lr_weights,
        min_coverage=settings.min_coverage,
    )
    without_rna = sorted(str(p) for p in cohort.frame.index[cohort.frame["rna_sample"].isna()])
    write_targets(
        result,
        out,
        patient_of_sample=dict(zip(samples.to_numpy(), samples.index, strict=True)),
        extra_metadata={
            "inputs": {
                "manifest": str(manifest),
                "expression": str(expression),
                "expression_sha256": sha256_file(expression),
                "gene_sets": str(settings.gene_sets or "stromalens ERS_CAF (shipped)"),
                "signature": str(settings.signature or "TIL10 (shipped)"),
            },
            "patients": len(samples),
            "patients_without_rna": without_rna,
        },
    )
    return {
        "patients": int(len(samples)),
        "ceiling": {t: round(r["ceiling"], 3) for t, r in result.reliability.items()},
        "skipped": [{"item": p, "reason": "no rna_sample (no RNA-seq)"} for p in without_rna],
    }


def run_targets(config: StudyConfig, study: Path) -> dict:
    return _compute_targets(
        config.cohort.manifest, config.cohort.expression, config.targets, study / "targets"
    )


def _targets_inputs(manifest, expression, targets: TargetsConfig) -> list[Input]:
    return (
        _file("manifest", manifest)
        + _file("expression", expression)
        + _file("gene_sets", targets.gene_sets)
        + _file("signature", targets.signature)
        + _file("mrna_scaling", targets.mrna_scaling)
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


def _embed(manifest: Path, out: Path, config: StudyConfig) -> dict:
    """Tile, QC, normalise and embed a cohort's slides; summary with skipped slides."""
    from ..wsi.embed import EmbedSettings, embed_cohort, jobs_from_manifest
    from ..wsi.tiling import TilingSpec

    w = config.wsi
    settings = EmbedSettings(
        tiling=TilingSpec(
            target_mpp=w.target_mpp, tile_px=w.tile_px, stride_px=w.tile_px, min_tissue=w.min_tissue
        ),
        batch_size=w.batch_size,
        stain=w.stain,
        stain_reference=str(w.stain_reference) if w.stain_reference else None,
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
        "skipped": skipped,
    }


def run_wsi(config: StudyConfig, study: Path) -> dict:
    return _embed(config.cohort.manifest, study / "features" / config.cohort.name, config)


def _slides(manifest: Path) -> tuple[Path, ...]:
    from ..wsi.embed import jobs_from_manifest

    return tuple(j.path for j in jobs_from_manifest(manifest))


# ---------------------------------------------------------------------------- radiomics
def run_radiomics_stage(config: StudyConfig, study: Path) -> dict:
    from ..radiology.runner import run_radiomics

    block = config.radiomics
    summary = run_radiomics(
        config.cohort.manifest,
        study / "radiomics",
        radiomics_settings(config),
        workers=block.workers,
        executor=block.executor,
        progress=False,
    )
    status = pd.read_csv(study / "radiomics" / "patients.csv", index_col=0, dtype=str)
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
    columns = {c for s in settings.sequences for c in (s.image, s.mask)}
    return (
        _file("manifest", manifest)
        + _file("radiomics_config", config.radiomics.config)
        + [Input("images", listing=tuple(_paths(_frame(manifest), sorted(columns))))]
    )


# ---------------------------------------------------------------------------- train
def resolved_training_config(config: StudyConfig, study: Path) -> StudyConfig:
    """The study configuration with the training block pointing at this study's outputs
    (absolute paths), as ``stromalens train`` reads it."""
    study = study.resolve()
    training = config.training.model_copy(
        update={
            "targets": study / "targets" / "targets.parquet",
            "features": study / "features" / config.cohort.name,
            "radiomics": study / "radiomics",
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
    import yaml

    from ..cli.train import run_training

    resolved = resolved_training_config(config, study)
    path = study / "train.yaml"
    path.write_text(
        yaml.safe_dump(json.loads(resolved.model_dump_json()), sort_keys=False), encoding="utf-8"
    )
    metrics = run_training(path, study / TRAIN)
    run = json.loads((study / TRAIN / "manifest.json").read_text(encoding="utf-8"))
    targets = pd.read_parquet(study / "targets" / "targets.parquet")
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
def external_dir(study: Path, cohort: ExternalCohortConfig) -> Path:
    return study / "external" / cohort.name


def run_external(config: StudyConfig, study: Path) -> dict:
    """For each external cohort: its targets (if it has RNA-seq), its WSI features, then the
    frozen models' predictions into ``TRAIN/external/<name>``."""
    predict = _optional("stromalens.evaluation", "predict_cohort")
    out: dict = {"cohorts": {}, "skipped": []}
    for cohort in config.external:
        root = external_dir(study, cohort)
        report: dict = {}
        targets_path = None
        if cohort.expression is not None:
            report["targets"] = _compute_targets(
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
        if predict is None:
            report["predict"] = "not available (stromalens.evaluation.predict_cohort)"
        else:
            result = predict(
                study / TRAIN,
                cohort.manifest,
                study / TRAIN / "external" / cohort.name,
                features_dir=features,
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
    evaluate = _optional("stromalens.evaluation", "evaluate_run")
    if evaluate is None:
        return {"status": "not available (stromalens.evaluation.evaluate_run)"}
    options = json.loads(config.evaluation.model_dump_json())
    metrics = _call(evaluate, study / TRAIN, **options)
    metrics = metrics or {}
    return {
        "metrics": len(metrics),
        "seconds": metrics.get("meta.seconds"),
        "notes": _jsonable(metrics.get("meta.notes", [])),
    }


def run_report(config: StudyConfig, study: Path) -> dict:
    write_report = _optional("stromalens.report", "write_report")
    if write_report is None:
        return {"status": "not available (stromalens.report.write_report)"}
    path = write_report(study / TRAIN, study / REPORT / "index.html")
    return {"report": str(path)}


def _evaluate_outputs(config: StudyConfig) -> list[str]:
    if _optional("stromalens.evaluation", "evaluate_run") is None:
        return []
    return [f"{TRAIN}/evaluation/metrics.json"]


def _report_outputs(config: StudyConfig) -> list[str]:
    if _optional("stromalens.report", "write_report") is None:
        return []
    return [f"{REPORT}/index.html"]


# ---------------------------------------------------------------------------- the graph
def default_stages(config: StudyConfig | None = None) -> list[Stage]:
    """The study's stages in order."""
    return [
        Stage(
            "targets",
            run_targets,
            settings=lambda c: {"targets": _dump(c.targets)},
            inputs=lambda c: _targets_inputs(c.cohort.manifest, c.cohort.expression, c.targets),
            outputs=lambda c: ["targets/targets.parquet", "targets/reliability.json"],
            clean=lambda c: ["targets"],
            description="transcriptomic targets and noise ceilings of the development cohort",
        ),
        Stage(
            "wsi",
            run_wsi,
            settings=lambda c: {"wsi": _dump(c.wsi), "cohort": c.cohort.name},
            inputs=lambda c: (
                _file("manifest", c.cohort.manifest)
                + _weights_input(c)
                + [Input("slides", listing=_slides(c.cohort.manifest))]
            ),
            outputs=lambda c: [f"features/{c.cohort.name}"],
            clean=lambda c: [f"features/{c.cohort.name}"],
            description="tiles, QC, Macenko and frozen-encoder embeddings of every slide",
        ),
        Stage(
            "radiomics",
            run_radiomics_stage,
            settings=lambda c: {
                "radiomics": _dump(c.radiomics),
                "resolved": radiomics_settings(c).model_dump(mode="json"),
            },
            inputs=_radiomics_inputs,
            outputs=lambda c: ["radiomics/radiomics.parquet"],
            clean=lambda c: ["radiomics"],
            description="MRI preprocessing, PyRadiomics features, perturbation stability",
        ),
        Stage(
            TRAIN,
            run_train,
            settings=lambda c: {"training": _dump(c.training), "cohort": c.cohort.name},
            inputs=lambda c: (
                _file("manifest", c.cohort.manifest)
                + [
                    Input(
                        "prompts",
                        listing=tuple(
                            sorted(p for p in c.training.prompts.rglob("*") if p.is_file())
                        ),
                    )
                ]
            ),
            outputs=lambda c: [f"{TRAIN}/metrics.json", f"{TRAIN}/predictions.parquet"],
            clean=lambda c: [TRAIN, "train.yaml"],
            after=("targets", "wsi", "radiomics"),
            description="every model under nested site-stratified CV, distillation, leave-site-out",
        ),
        Stage(
            "external",
            run_external,
            settings=lambda c: {
                "external": [_dump(e) for e in c.external],
                "targets": _dump(c.targets),
                "wsi": _dump(c.wsi),
                "predict": _available("stromalens.evaluation", "predict_cohort"),
            },
            inputs=_external_inputs,
            outputs=lambda c: [f"external/{e.name}/features" for e in c.external],
            clean=lambda c: ["external", f"{TRAIN}/external"],
            after=(TRAIN,),
            description="zero-shot application to the external cohorts",
        ),
        Stage(
            "evaluate",
            run_evaluate,
            settings=lambda c: {
                "evaluation": _dump(c.evaluation),
                "implementation": _available("stromalens.evaluation", "evaluate_run"),
            },
            inputs=lambda c: [],
            outputs=_evaluate_outputs,
            clean=lambda c: [f"{TRAIN}/evaluation"],
            after=(TRAIN, "external"),
            description="every analysis of the study (stromalens evaluate)",
        ),
        Stage(
            REPORT,
            run_report,
            settings=lambda c: {
                "name": c.name,
                "notes": c.notes,
                "implementation": _available("stromalens.report", "write_report"),
            },
            inputs=lambda c: [],
            outputs=_report_outputs,
            clean=lambda c: [REPORT],
            after=("evaluate",),
            description="the self-contained HTML report",
        ),
    ]


def log_skipped(stage: str, summary: dict) -> None:
    for item in summary.get("skipped", []):
        event(log, "item skipped", stage=stage, item=item["item"], reason=item["reason"])
