"""``stromalens synth``: write the synthetic cohort."""

from __future__ import annotations

from pathlib import Path

import typer

from .options import out_folder


def synth(
    out: Path = typer.Option(..., "--out", help="Output directory."),
    patients: int = typer.Option(
        None, "--patients", help="Number of patients (default 126; 60 for --external)."
    ),
    seed: int = typer.Option(0, "--seed"),
    external: bool = typer.Option(
        False, "--external", help="Write the WSI-only external cohort (another cancer)."
    ),
    workers: int = typer.Option(None, "--workers", help="Processes (default: all cores)."),
    config: Path = typer.Option(
        None, "--config", help="YAML with SynthConfig settings; command-line options override it."
    ),
) -> None:
    """Generate a multi-site synthetic cohort with planted truth, in the manifest format."""
    from ..config import SynthConfig, load_config, validate_settings
    from ..synthetic import generate_cohort

    base = load_config(config, SynthConfig) if config else SynthConfig()
    updates = {"seed": seed, "external": external}
    if patients is not None:
        updates["patients"] = patients
    elif external and config is None:
        updates["patients"] = 60
    if workers is not None:
        updates["workers"] = workers
    settings = validate_settings(SynthConfig, base.model_dump() | updates, source="synth")
    manifest = generate_cohort(out_folder(out), settings)
    typer.echo(f"manifest: {manifest}")
