"""``stromalens init --manifest M.csv``: write a commented study file for a cohort."""

from __future__ import annotations

from pathlib import Path

import typer


def init(
    manifest: Path = typer.Option(..., "--manifest", help="Cohort manifest (CSV/TSV/parquet)."),
    out: Path = typer.Option(Path("study.yaml"), "--out", help="The study file to write."),
    expression: Path = typer.Option(
        None, "--expression", help="Expression table (TPM) of the rna_sample ids."
    ),
    force: bool = typer.Option(False, "--force", help="Replace an existing --out file."),
) -> None:
    """Write a study file for the manifest: its sites, the models its modalities allow, the
    shipped prompt banks and radiomics settings; then `stromalens run` it."""
    from ..study.init import write_study_file

    written = write_study_file(manifest, out, expression=expression, force=force)
    typer.echo(f"wrote {written}; next: stromalens run {written} --out STUDY_FOLDER")
