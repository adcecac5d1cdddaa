"""``stromalens train``: the model curriculum under leakage-free cross-validation."""

from __future__ import annotations

import json
import time
from pathlib import Path

import typer
from rich.console import Console

console = Console()


def run_training(
    config_path: Path,
    out: Path,
    workers: int | None = None,
    study_dir: Path | None = None,
    progress: bool = False,
) -> dict:
    """Load the study configuration, the stages' outputs and run CV (+ leave-site-out and the
    shuffled-target control when configured). Returns the main run's metrics.

    ``study_dir``: a ``stromalens run`` / ``stromalens demo`` output folder whose targets,
    features and radiomics (and the wsi block's encoder) the training block then reads.
    ``progress``: a bar over the model fits of each CV."""
    import yaml

    from .. import __version__
    from ..config import StudyConfig, load_config
    from ..training import (
        load_study_data,
        prompt_embeddings,
        run_cv,
        run_leave_site_out,
    )

    study = load_config(config_path, StudyConfig)
    if study.training is None:
        raise ValueError(f"{config_path}: no 'training' block")
    if study_dir is not None:
        from ..study.stages import resolved_training_config

        if not (Path(study_dir) / "targets" / "targets.parquet").is_file():
            raise FileNotFoundError(
                f"{study_dir}/targets/targets.parquet not found: --study must be the output "
                "folder of `stromalens run` or `stromalens demo`"
            )
        study = resolved_training_config(study, Path(study_dir))
    cfg = study.training
    if cfg.targets is None:
        raise ValueError(
            f"{config_path}: training.targets is not set: give --study DIR (the output folder "
            "of `stromalens run` or `stromalens demo`) or set training.targets, .features and "
            ".radiomics"
        )
    settings = cfg.settings
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    prompts = prompt_embeddings(
        cfg.prompts, cfg.encoder, cfg.encoder_weights, cfg.prompt_cache or out / "prompts"
    )
    data = load_study_data(
        study.cohort.manifest,
        cfg.targets,
        cfg.features,
        cfg.radiomics,
        prompts=prompts,
        max_tiles=cfg.max_tiles,
        seed=settings.seed,
    )
    (out / "config.yaml").write_text(
        yaml.safe_dump(json.loads(study.model_dump_json()), sort_keys=False), encoding="utf-8"
    )
    import torch

    (out / "manifest.json").write_text(
        json.dumps(
            {
                "stromalens": __version__,
                "torch": torch.__version__,
                "seed": settings.seed,
                "settings": settings.to_dict(),
                "patients": len(data.patients),
                "slides": len(data.bags),
                "radiomics_features": int(data.radiomics.shape[1]),
            },
            indent=2,
        ),
        encoding="utf-8",
    )
    common = dict(harmonise=cfg.harmonise, icc_threshold=cfg.icc_threshold, progress=progress)
    n_workers = workers or cfg.workers
    metrics = run_cv(
        data,
        out,
        settings,
        models=cfg.models,
        folds=cfg.folds,
        inner_folds=cfg.inner_folds,
        grid=cfg.grid,
        workers=n_workers,
        **common,
    )
    if cfg.leave_site_out and len(set(data.sites)) > 1:
        run_leave_site_out(data, out / "leave_site_out", settings, workers=n_workers, **common)
    if cfg.permuted_control:
        run_cv(
            data,
            out / "permuted",
            settings,
            models=cfg.models,
            folds=cfg.folds,
            inner_folds=cfg.inner_folds,
            grid=None,
            workers=n_workers,
            permute_targets=True,
            checkpoints=False,
            **common,
        )
    metrics["total_seconds"] = round(time.perf_counter() - started, 1)
    return metrics


def train(
    config: Path = typer.Option(..., "--config", help="Study YAML with a 'training' block."),
    out: Path = typer.Option(..., "--out", help="Run directory."),
    workers: int = typer.Option(None, "--workers", help="Fits in parallel (overrides config)."),
    study: Path = typer.Option(
        None,
        "--study",
        help="A `stromalens run`/`demo` output folder: train on its targets, features, radiomics.",
    ),
    no_progress: bool = typer.Option(False, "--no-progress", help="Hide the progress bar."),
) -> None:
    """Train every model with the three-stage curriculum under site-stratified nested CV."""
    metrics = run_training(config, out, workers, study, progress=not no_progress)
    console.print(f"[bold]macro-r (out-of-fold)[/] — {metrics['total_seconds']:.0f} s")
    for name, values in sorted(metrics["models"].items(), key=lambda kv: -kv[1]["macro_r"]):
        console.print(f"  {name:20s} {values['macro_r']:+.3f}")
    console.print(f"run files under {out}")
