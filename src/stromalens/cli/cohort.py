"""``stromalens cohort ...``: inspect and validate cohort manifests."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(help="Inspect and validate cohort manifests.", no_args_is_help=True)
console = Console()


@app.command("validate")
def validate(
    manifest: Path = typer.Argument(..., help="Cohort manifest (CSV, TSV or parquet)."),
    sites: str = typer.Option(None, "--sites", help="Comma-separated allowed site labels."),
    expression: Path = typer.Option(
        None,
        "--expression",
        help="Expression table (TSV/CSV, optionally .gz) whose sample ids "
        "the manifest's rna_sample must match.",
    ),
    orientation: str = typer.Option(
        "auto",
        "--orientation",
        help="auto (the axis with more rna_sample ids), genes-x-samples or samples-x-genes.",
    ),
    no_file_check: bool = typer.Option(
        False, "--no-file-check", help="Do not check that referenced files exist."
    ),
    radiomics_config: Path = typer.Option(
        None,
        "--radiomics-config",
        help="Radiomics YAML: check every image and mask its sequences will read "
        "(default: T1, T2, CE with their _mask columns or mri_mask).",
    ),
) -> None:
    """Validate MANIFEST and print a summary per site; exit non-zero if it is invalid."""
    from ..cohort import load_manifest

    sequences = None
    if radiomics_config is not None:
        from ..config import load_config
        from ..radiology.settings import RadiomicsConfig

        sequences = load_config(radiomics_config, RadiomicsConfig).sequence_columns()
    samples = None
    if expression is not None:
        samples = _expression_samples(manifest, expression, orientation)
    cohort = load_manifest(
        manifest,
        sites=[s.strip() for s in sites.split(",")] if sites else None,
        check_files=not no_file_check,
        expression_samples=samples,
        sequences=sequences,
    )
    summary = cohort.summary()
    table = Table(title="patients and modalities per site")
    table.add_column("site")
    for col in summary.columns:
        table.add_column(col, justify="right")
    for site, row in summary.iterrows():
        table.add_row(str(site), *(str(v) for v in row))
    console.print(table)
    console.print(f"{manifest}: {len(cohort.patients)} patients, valid", soft_wrap=True)
    for warning in cohort.warnings:
        console.print(f"[yellow]warning:[/] {warning}", soft_wrap=True)


def _expression_samples(manifest: Path, expression: Path, orientation: str) -> list[str]:
    """The sample ids of ``expression``: its columns (genes × samples), its rows, or (auto) the
    axis holding more of the manifest's ``rna_sample`` ids."""
    from ..cohort import read_table
    from ..targets.adapters import ORIENTATION_CHOICES
    from ..targets.io import table_ids

    if orientation not in ORIENTATION_CHOICES:
        raise ValueError(
            f"orientation must be one of {', '.join(ORIENTATION_CHOICES)}, not {orientation!r}"
        )
    if not expression.exists():
        raise ValueError(f"expression file not found: {expression}")
    rows, columns = table_ids(expression)
    if orientation == "auto":
        raw = read_table(manifest) if manifest.exists() else None
        wanted = set(raw["rna_sample"]) if raw is not None and "rna_sample" in raw else set()
        in_rows, in_columns = len(wanted & set(rows)), len(wanted & set(columns))
        orientation = "samples-x-genes" if in_rows > in_columns else "genes-x-samples"
    return rows if orientation == "samples-x-genes" else columns
