"""``stromalens radiomics``: PyRadiomics features, perturbation stability, site check."""

from __future__ import annotations

from pathlib import Path

import typer

from .options import out_folder


def radiomics(
    manifest: Path = typer.Option(..., "--manifest", help="Cohort manifest (CSV/TSV/parquet)."),
    out: Path = typer.Option(..., "--out", help="Output directory."),
    config: Path = typer.Option(
        None,
        "--config",
        help="Radiomics YAML (default: the built-in settings, equal to configs/radiomics.yaml).",
    ),
    workers: int = typer.Option(None, "--workers", help="Processes (default: all cores)."),
    no_progress: bool = typer.Option(False, "--no-progress", help="Hide the progress bar."),
    executor: str = typer.Option(
        "process", "--executor", help="process (local pool) or ray (needs the ray extra)."
    ),
) -> None:
    """Extract radiomics per patient (resumable), write radiomics.parquet and stability.parquet."""
    import json

    from ..config import load_config
    from ..radiology.runner import run_radiomics
    from ..radiology.settings import RadiomicsConfig

    out_folder(out)
    settings = load_config(config, RadiomicsConfig) if config else RadiomicsConfig()
    summary = run_radiomics(
        manifest, out, settings, workers=workers, progress=not no_progress, executor=executor
    )
    typer.echo(json.dumps({k: summary[k] for k in ("patients_ok", "patients_failed", "features")}))
    check = summary.get("site_check", {}).get("balanced_accuracy")
    if check:
        typer.echo(
            f"site balanced accuracy (out of fold): raw {check['raw']}, "
            f"ComBat {check['combat']}, chance {check['chance']}"
        )
