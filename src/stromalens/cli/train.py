"""``stromalens train``: the model curriculum under leakage-free cross-validation."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

from .options import out_folder

console = Console()


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
    from ..config import StudyConfig, load_config
    from ..study.stages import training_config
    from ..training.run import train_study

    out_folder(out)
    study_config = load_config(config, StudyConfig)
    if study_config.training is None:
        raise ValueError(f"{config}: no 'training' block")
    if study is not None:
        study_config = training_config(study_config, study)
    metrics = train_study(study_config, out, workers=workers, progress=not no_progress)
    console.print(f"[bold]macro-r (out-of-fold)[/] — {metrics['total_seconds']:.0f} s")
    for name, values in sorted(metrics["models"].items(), key=lambda kv: -kv[1]["macro_r"]):
        console.print(f"  {name:20s} {values['macro_r']:+.3f}")
    console.print(f"run files and the model bundle under {out}")
