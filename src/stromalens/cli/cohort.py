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
        help="Expression table (genes × samples TSV/CSV) whose sample ids "
        "the manifest's rna_sample must match.",
    ),
    no_file_check: bool = typer.Option(
        False, "--no-file-check", help="Do not check that referenced files exist."
    ),
) -> None:
    """Validate MANIFEST and print a summary per site; exit non-zero if it is invalid."""
    from ..cohort import load_manifest

    samples = None
    if expression is not None:
        import pandas as pd

        sep = "\t" if expression.suffix.lower() in {".tsv", ".txt"} else ","
        samples = list(pd.read_csv(expression, sep=sep, nrows=0, index_col=0).columns)
    cohort = load_manifest(
        manifest,
        sites=[s.strip() for s in sites.split(",")] if sites else None,
        check_files=not no_file_check,
        expression_samples=samples,
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
