"""Training a study: the entry point ``stromalens train`` and the study's ``train`` stage call.

:func:`train_study` takes a validated :class:`~stromalens.config.StudyConfig` whose training
block points at the stages' outputs, runs the site-stratified nested CV of every model (with
distillation), leave-site-out, the optional shuffled-target control (both on the main CV's
nested grid) and the prompt perturbation (the CLIP-guided WSI model retrained per prompt set,
:mod:`.prompt_sets`), and writes the run directory (:class:`~stromalens.rundir.TrainLayout`)
with the self-contained model bundle.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import yaml

from ..logs import event, get_logger
from ..names import TARGETS
from ..rundir import TrainLayout

log = get_logger("training.run")


def _feature_contract(features_dir: Path | None, patients, slides: dict | None = None):
    """The feature contract of the first training slide's store (every store of a cohort is
    embedded with the same settings; ``read_bags`` refuses mixed feature widths)."""
    from ..wsi.store import feature_path, read_attrs
    from .bundle import FeatureContract

    ids = [s for pid in patients for s in (slides or {}).get(str(pid), [str(pid)])]
    for sid in ids if features_dir is not None else ():
        path = feature_path(features_dir, sid)
        if path.is_file():
            attrs, width = read_attrs(path)
            return FeatureContract.of_store(attrs, width)
    return FeatureContract(None, None, None, None, None)


def _prompts(cfg, train: TrainLayout, models):
    """The (J, M, D) prompt embeddings, or None when the encoder has no text tower (image-only
    encoders such as UNI serve every model that needs no text; text-guided ones are refused)."""
    from ..models import text_guided
    from ..wsi.encoders import encoder_info
    from .data import prompt_embeddings

    if not encoder_info(cfg.encoder).has_text:
        needing = text_guided(models)
        if needing:
            raise ValueError(
                f"training.encoder {cfg.encoder!r} has no text encoder; the text-guided model(s) "
                f"{', '.join(needing)} need one: choose a CLIP encoder or leave them out"
            )
        return None
    return prompt_embeddings(
        cfg.prompts, cfg.encoder, cfg.encoder_weights, cfg.prompt_cache or train.prompts_cache
    )


def _slide_ids(manifest) -> dict[str, list[str]]:
    from ..cohort import load_manifest

    return load_manifest(manifest, check_files=False).slide_ids()


def _prompt_text(banks_dir: Path) -> dict[str, list[str]]:
    from ..wsi.prompts import load_banks

    banks = load_banks(banks_dir)
    return {t: list(banks[t].curated) for t in TARGETS if t in banks}


def _prompt_perturbation(cfg, train: TrainLayout, data, models, settings, cv: dict) -> None:
    """Retrain the CLIP-guided WSI model with each perturbed prompt set
    (:mod:`.prompt_sets`) when ``training.prompt_perturbation`` asks and it can run: the model
    is trained and the encoder has text (``data.prompts`` is set)."""
    from .prompt_sets import PERTURBED_MODEL, load_prompt_sets, run_prompt_perturbation

    if not cfg.prompt_perturbation:
        return
    if PERTURBED_MODEL not in models or data.prompts is None:
        event(log, "prompt perturbation skipped", reason=f"no {PERTURBED_MODEL} or no text")
        return
    sets = load_prompt_sets(
        cfg.prompts, cfg.encoder, cfg.encoder_weights, cfg.prompt_cache or train.prompts_cache
    )
    run_prompt_perturbation(data, train.root, sets, settings, grid=cfg.grid, **cv)


def _write_run_files(train: TrainLayout, study, settings, data) -> None:
    import torch

    from .. import __version__

    train.root.mkdir(parents=True, exist_ok=True)
    train.config.write_text(
        yaml.safe_dump(json.loads(study.model_dump_json()), sort_keys=False), encoding="utf-8"
    )
    manifest = {
        "stromalens": __version__,
        "torch": torch.__version__,
        "seed": settings.seed,
        "settings": settings.to_dict(),
        "patients": len(data.patients),
        "slides": len(data.bags),
        "radiomics_features": int(data.radiomics.shape[1]),
    }
    train.manifest.write_text(json.dumps(manifest, indent=2), encoding="utf-8")


def train_study(study, out: Path | str, *, workers: int | None = None, progress: bool = False):
    """Train every model of ``study`` (a :class:`~stromalens.config.StudyConfig` whose
    ``training.targets`` is set) into the run directory ``out``; returns the CV's metrics
    (``models`` → study name → macro-r …) with ``total_seconds``."""
    from ..models import model_info
    from .bundle import write_bundle
    from .cv import default_models, run_cv, run_leave_site_out
    from .data import coop_text_tower, load_study_data

    cfg = study.training
    if cfg is None or cfg.targets is None:
        raise ValueError(
            "training.targets is not set: train on a study folder (`stromalens train --study "
            "DIR`) or set training.targets, .features and .radiomics"
        )
    train = TrainLayout(out)
    settings = cfg.settings
    started = time.perf_counter()
    models = cfg.models if cfg.models is not None else default_models()
    prompts = _prompts(cfg, train, models)
    # CoOp runs the encoder's frozen text tower; built (or refused) before anything else
    coop = any(model_info(m).needs_text for m in models)
    text = coop_text_tower(cfg.prompts, cfg.encoder, cfg.encoder_weights) if coop else None
    data = load_study_data(
        study.cohort.manifest,
        cfg.targets,
        cfg.features,
        cfg.radiomics,
        prompts=prompts,
        max_tiles=cfg.max_tiles,
        seed=settings.seed,
        text=text,
    )
    contract = _feature_contract(cfg.features, data.patients, _slide_ids(study.cohort.manifest))
    prompt_text = _prompt_text(cfg.prompts)
    # what produced the arrays, recorded in every checkpoint's digest (fit_digest): a rerun
    # into this folder after changing one of them refits instead of reloading old weights
    data.meta["inputs"] = {
        "encoder": cfg.encoder,
        "encoder_weights": None if cfg.encoder_weights is None else str(cfg.encoder_weights),
        "features": {"encoder": contract.encoder, "weights_sha256": contract.weights_sha256},
        "prompt_text": prompt_text,
        "max_tiles_loaded": cfg.max_tiles,
        "lr_inputs": data.meta.get("lr_inputs"),  # S_LR refitted per fold from which file
    }
    _write_run_files(train, study, settings, data)
    common = dict(harmonise=cfg.harmonise, icc_threshold=cfg.icc_threshold, progress=progress)
    n_workers = workers or cfg.workers
    cv = dict(folds=cfg.folds, inner_folds=cfg.inner_folds, workers=n_workers, **common)
    metrics = run_cv(data, train.root, settings, models=cfg.models, grid=cfg.grid,
                     repeats=cfg.repeats, **cv)  # fmt: skip
    # the controls select on the same nested grid as the main CV: equal tuning budgets
    if cfg.leave_site_out and len(set(data.sites)) > 1:
        run_leave_site_out(data, train.leave_site_out.root, settings, workers=n_workers,
                           grid=cfg.grid, inner_folds=cfg.inner_folds, **common)  # fmt: skip
    if cfg.permuted_control:
        run_cv(data, train.permuted.root, settings, models=cfg.models, grid=cfg.grid,
               permute_targets=True, checkpoints=False, **cv)  # fmt: skip
    _prompt_perturbation(cfg, train, data, models, settings, cv)
    write_bundle(
        train,
        sorted(metrics["models"]),
        contract,
        prompts,
        prompt_text,
        max_tiles=cfg.max_tiles,
        seed=settings.seed,
    )
    metrics["total_seconds"] = round(time.perf_counter() - started, 1)
    event(log, "training written", out=str(train.root), seconds=metrics["total_seconds"])
    return metrics
