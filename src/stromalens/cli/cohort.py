"""``stromalens cohort ...``: inspect and validate cohort manifests (the preflight)."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from .options import LEGACY_MANIFEST, manifest_from, manifest_option

app = typer.Typer(help="Inspect and validate cohort manifests.", no_args_is_help=True)
console = Console()


@app.command("validate", context_settings=LEGACY_MANIFEST)
def validate(
    ctx: typer.Context,
    manifest: Path | None = manifest_option(),
    sites: str = typer.Option(None, "--sites", help="Comma-separated allowed site labels."),
    expression: Path = typer.Option(
        None,
        "--expression",
        help="Expression table (TSV/CSV, optionally .gz; parquet; h5ad), read as the targets "
        "stage reads it: orientation, scale and every rna_sample are checked.",
    ),
    orientation: str = typer.Option(
        "auto",
        "--orientation",
        help="auto (the axis with more rna_sample ids), genes-x-samples or samples-x-genes.",
    ),
    scale: str = typer.Option(
        "auto", "--scale", help="The expression's scale as the study states it (targets: scale)."
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
    """The preflight: check MANIFEST and what a study will read from it (slides open with
    µm/px, files of every column exist, the expression's orientation, scale and samples); print
    a summary per site and every finding; exit 1 if there is an error."""
    from ..preflight import ERROR, preflight

    manifest = manifest_from(ctx, manifest)
    sequences = None
    if radiomics_config is not None:
        from ..config import load_config
        from ..radiology.settings import RadiomicsConfig

        sequences = load_config(radiomics_config, RadiomicsConfig).sequence_columns()
    cohort, findings = preflight(
        manifest,
        sites=[s.strip() for s in sites.split(",")] if sites else None,
        check_files=not no_file_check,
        expression=expression,
        orientation=orientation,
        scale=scale,
        sequences=sequences,
    )
    if cohort is not None:
        _print_summary(cohort)
    if findings:
        _print_findings(findings)
    errors = [f for f in findings if f.level == ERROR]
    if errors:
        lines = "\n".join(f"  - {_where(f)}{f.message}" for f in errors)
        raise ValueError(f"{manifest}: {len(errors)} problem(s) found by the preflight\n{lines}")
    n = len(cohort.patients)
    console.print(f"{manifest}: {n} patients, valid", soft_wrap=True)


def _where(finding) -> str:
    return f"patient {finding.patient}: " if finding.patient else ""


def _print_summary(cohort) -> None:
    summary = cohort.summary()
    table = Table(title="patients and modalities per site")
    table.add_column("site")
    for col in summary.columns:
        table.add_column(col, justify="right")
    for site, row in summary.iterrows():
        table.add_row(str(site), *(str(v) for v in row))
    console.print(table)


def _print_findings(findings) -> None:
    table = Table(title="preflight findings")
    for col in ("level", "patient", "column", "message"):
        table.add_column(col, overflow="fold")
    for f in findings:
        style = "red" if f.level == "error" else "yellow"
        table.add_row(f"[{style}]{f.level}[/]", f.patient or "", f.column or "", f.message)
    console.print(table)
