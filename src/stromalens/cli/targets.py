"""``stromalens targets``: the transcriptomic targets of a cohort."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

console = Console()


def targets(
    manifest: Path = typer.Option(..., "--manifest", help="Cohort manifest."),
    expression: Path = typer.Option(
        ..., "--expression", help="Expression table in linear TPM (TSV/CSV/parquet/h5ad)."
    ),
    out: Path = typer.Option(..., "--out", help="Output directory."),
    orientation: str = typer.Option(
        "genes-x-samples",
        "--orientation",
        help="genes-x-samples or samples-x-genes (text/parquet).",
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
    min_coverage: float = typer.Option(
        0.5, "--min-coverage", help="Fail if the ERS_CAF set's coverage is lower."
    ),
) -> None:
    """Compute ERS–CAF, LR-crosstalk and heterogeneity targets with their noise ceilings."""
    import pandas as pd

    from ..cohort import load_manifest
    from ..hashing import sha256_file
    from ..targets.io import read_expression
    from ..targets.pipeline import compute_targets, write_targets

    expr = read_expression(expression, orientation=orientation, duplicates=duplicates)
    cohort = load_manifest(manifest, expression_samples=list(expr.index))
    samples = cohort.frame["rna_sample"].dropna()
    if samples.empty:
        raise ValueError(f"{manifest}: no patient has an rna_sample")
    scaling = None
    if mrna_scaling is not None:
        scaling = pd.read_csv(mrna_scaling, sep="\t", index_col=0).iloc[:, 0]
    result = compute_targets(
        expr.loc[samples.to_numpy()],
        gene_sets=gene_sets,
        signature=signature,
        mrna_scaling=scaling,
        lr_weights=lr_weights,
        min_coverage=min_coverage,
    )
    patient_of_sample = dict(zip(samples.to_numpy(), samples.index, strict=True))
    without_rna = sorted(cohort.frame.index[cohort.frame["rna_sample"].isna()])
    write_targets(
        result,
        out,
        patient_of_sample=patient_of_sample,
        extra_metadata={
            "inputs": {
                "manifest": str(manifest),
                "expression": str(expression),
                "expression_sha256": sha256_file(expression),
                "gene_sets": str(gene_sets) if gene_sets else "stromalens ERS_CAF (shipped)",
                "gene_sets_sha256": sha256_file(gene_sets) if gene_sets else None,
                "signature": str(signature) if signature else "TIL10 (shipped)",
            },
            "patients": len(samples),
            "patients_without_rna": without_rna,
        },
    )
    console.print(f"targets of {len(samples)} patients written to {out}", soft_wrap=True)
    for target, rel in result.reliability.items():
        console.print(
            f"  {target}: pipeline concordance r = {rel['r']:.2f} "
            f"[{rel['ci_low']:.2f}, {rel['ci_high']:.2f}], noise ceiling "
            f"{rel['ceiling']:.2f}",
            soft_wrap=True,
        )
    if without_rna:
        console.print(
            f"  {len(without_rna)} patient(s) without RNA-seq have no targets", soft_wrap=True
        )
