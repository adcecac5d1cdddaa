"""``stromalens targets``: the transcriptomic targets of a cohort."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

from .options import out_folder

console = Console()


def targets(
    manifest: Path = typer.Option(..., "--manifest", help="Cohort manifest."),
    expression: Path = typer.Option(
        ..., "--expression", help="Expression table in linear TPM (TSV/CSV/parquet/h5ad)."
    ),
    out: Path = typer.Option(..., "--out", help="Output directory."),
    orientation: str = typer.Option(
        "auto",
        "--orientation",
        help="auto (the axis with the manifest's rna_sample ids), genes-x-samples or "
        "samples-x-genes (text/parquet).",
    ),
    na: str = typer.Option(
        "error", "--na", help="Missing values: error, drop-genes or impute-mean (gene mean)."
    ),
    annotation: Path = typer.Option(
        None, "--annotation", help="Probe → symbol table (columns probe, symbol; TSV/CSV[.gz])."
    ),
    annotation_symbol: str = typer.Option(
        "symbol", "--annotation-symbol", help="The annotation's symbol column."
    ),
    scale: str = typer.Option(
        "auto",
        "--scale",
        help="auto (refuses log data), linear, log2 / log10 (of TPM+1; made linear) or "
        "log-ratio (microarray: ERS-CAF only).",
    ),
    negatives: str = typer.Option(
        "error", "--negatives", help="Negative linear values: error or clip (to 0)."
    ),
    normalize: str = typer.Option(
        "none", "--normalize", help="none, or tpm (rescale each sample to sum 1e6)."
    ),
    platform: str = typer.Option(
        None, "--platform", help="rnaseq or microarray (recorded; default inferred)."
    ),
    gene_sets: Path = typer.Option(
        None,
        "--gene-sets",
        help="GMT/YAML with the ERS_CAF set (default: the curated set shipped with stromalens).",
    ),
    signature: Path = typer.Option(
        None, "--signature", help="Signature matrix in CIBERSORT format (default: TIL10)."
    ),
    mrna_scaling: Path = typer.Option(
        None,
        "--mrna-scaling",
        help="TSV: cell type, mRNA per cell (default: TIL10's factors for TIL10).",
    ),
    duplicates: str = typer.Option(
        "error", "--duplicates", help="Duplicated genes: error, sum, mean or max."
    ),
    lr_weights: str = typer.Option("resources", "--lr-weights", help="resources or uniform."),
    quantiseq_tumor: bool = typer.Option(
        False, "--quantiseq-tumor", help="quanTIseq's tumor=TRUE (recommended for tumour RNA-seq)."
    ),
    lr_method: str = typer.Option(
        "monotone", "--lr-method", help="S_LR: monotone (default) or product (Eq. 6 as written)."
    ),
    nusvr_quantile_normalisation: bool = typer.Option(
        False, "--nusvr-qn", help="CIBERSORT's quantile normalisation before ν-SVR (QN=TRUE)."
    ),
    min_coverage: float = typer.Option(
        0.5, "--min-coverage", help="Fail if the ERS_CAF set's coverage is lower."
    ),
) -> None:
    """Compute ERS–CAF, LR-crosstalk and heterogeneity targets with their noise ceilings."""
    from ..config import TargetsConfig, validate_settings
    from ..targets.run import run_targets

    # every option but the three paths is a key of the study's `targets:` block
    options = {k: v for k, v in locals().items() if k in TargetsConfig.model_fields}
    settings = validate_settings(TargetsConfig, options, source="stromalens targets")
    _print_summary(run_targets(manifest, expression, settings, out_folder(out)), out)


def _print_summary(summary: dict, out: Path) -> None:
    console.print(f"targets of {summary['patients']} patients written to {out}", soft_wrap=True)
    for target, rel in summary["concordance"].items():
        console.print(
            f"  {target}: pipeline concordance r = {rel['r']:.2f} "
            f"[{rel['ci_low']:.2f}, {rel['ci_high']:.2f}], noise ceiling "
            f"{summary['ceiling'][target]:.2f}",
            soft_wrap=True,
        )
    for target, reason in summary["refused"].items():
        console.print(f"  {target}: {reason}", soft_wrap=True)
    if summary["skipped"]:
        console.print(
            f"  {len(summary['skipped'])} patient(s) without RNA-seq have no targets",
            soft_wrap=True,
        )
