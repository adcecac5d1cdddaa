"""The targets of one cohort from its files: what ``stromalens targets`` and the study's
``targets`` stage both run (read the expression table, match it to the manifest, compute, write
``targets.parquet``, ``fractions.parquet``, ``reliability.json`` and ``targets.json``)."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from ..rundir import GENE_TABLE, LR_INPUTS


def run_targets(manifest: Path, expression: Path, settings, out: Path) -> dict:
    """Targets of the cohort of ``manifest`` from ``expression`` with ``settings`` (a
    :class:`~stromalens.config.TargetsConfig`) into ``out``. Returns a summary: patients, the
    noise ceiling and the per-pipeline concordance of each target, and the patients left out
    (no ``rna_sample``) with the reason."""
    from ..cohort import load_manifest
    from ..hashing import sha256_file
    from .adapters import adapt_expression
    from .io import read_table
    from .pipeline import compute_targets, write_targets

    wanted = load_manifest(manifest, check_files=False).frame["rna_sample"].dropna()
    table, is_h5ad = read_table(expression)
    expr, adapters = adapt_expression(
        table, settings, samples=list(wanted), is_h5ad=is_h5ad, source=expression
    )
    cohort = load_manifest(manifest, expression_samples=list(expr.index), check_files=False)
    samples = cohort.frame["rna_sample"].dropna()
    if samples.empty:
        raise ValueError(f"{manifest}: no patient has an rna_sample")
    scaling = None
    if settings.mrna_scaling is not None:
        scaling = pd.read_csv(settings.mrna_scaling, sep="\t", index_col=0).iloc[:, 0]
    with warnings.catch_warnings():
        # The scale adapter has decided (and logged) the scale; deconvolution's own guess, a raw
        # UserWarning when the maximum is below 50, would only repeat it.
        warnings.filterwarnings("ignore", message="the expression's maximum is below 50")
        result = compute_targets(
            expr.loc[samples.to_numpy()],
            gene_sets=settings.gene_sets,
            signature=settings.signature,
            mrna_scaling=scaling,
            lr_weights=settings.lr_weights,
            min_coverage=settings.min_coverage,
            linear=adapters["scale"]["linear"],
            tumor=settings.quantiseq_tumor,
            lr_method=settings.lr_method,
            nusvr_quantile_normalisation=settings.nusvr_quantile_normalisation,
        )
    without_rna = sorted(str(p) for p in cohort.frame.index[cohort.frame["rna_sample"].isna()])
    patient_of_sample = dict(zip(samples.to_numpy(), samples.index, strict=True))
    if adapters["scale"]["linear"]:
        write_gene_table(expr.loc[samples.to_numpy()], settings, scaling, out, patient_of_sample)

    def digest(path):
        return sha256_file(path) if path is not None else None

    write_targets(
        result,
        out,
        patient_of_sample=patient_of_sample,
        extra_metadata={
            "inputs": {
                "manifest": str(manifest),
                "expression": str(expression),
                "expression_sha256": sha256_file(expression),
                "gene_sets": str(settings.gene_sets or "stromalens ERS_CAF (shipped)"),
                "gene_sets_sha256": digest(settings.gene_sets),
                "signature": str(settings.signature or "TIL10 (shipped)"),
                "signature_sha256": digest(settings.signature),
                "annotation": str(settings.annotation) if settings.annotation else None,
                "annotation_sha256": digest(settings.annotation),
            },
            "platform": adapters["platform"]["platform"],
            "expression_adapters": adapters,
            "patients": len(samples),
            "patients_without_rna": without_rna,
        },
    )
    summary = {
        "patients": int(len(samples)),
        "ceiling": {t: round(r["ceiling"], 3) for t, r in result.reliability.items()},
        "concordance": {
            t: {k: round(r[k], 3) for k in ("r", "ci_low", "ci_high")}
            for t, r in result.reliability.items()
        },
        "skipped": [{"item": p, "reason": "no rna_sample (no RNA-seq)"} for p in without_rna],
        "refused": result.metadata.get("refused", {}),
    }
    _write_json(
        Path(out) / IDENTITY,
        {"identity": targets_identity(manifest, expression, settings), "summary": summary},
    )
    return summary


#: What a targets folder records of its inputs and settings, so a study can adopt it.
IDENTITY = "identity.json"
#: The files of a targets folder a study copies when it adopts it.
TARGET_FILES = (
    "targets.parquet",
    "fractions.parquet",
    GENE_TABLE,
    LR_INPUTS,  # what training refits S_LR from on each fold
    "reliability.json",
    "targets.json",
    IDENTITY,
)


def targets_identity(manifest: Path, expression: Path, settings) -> dict:
    """Everything the targets depend on: the expression table's and every given resource
    file's sha256, the settings (``adopt`` aside) and the manifest's patient → rna_sample
    pairs (not the rest of the manifest: survival times do not change a target)."""
    from ..cohort import load_manifest
    from ..hashing import sha256_file

    files = {"expression": expression}
    files |= {k: getattr(settings, k) for k in ("gene_sets", "signature", "mrna_scaling")}
    files["annotation"] = settings.annotation
    samples = load_manifest(manifest, check_files=False).frame["rna_sample"]
    return {
        "sha256": {k: sha256_file(v) if v is not None else None for k, v in files.items()},
        "settings": settings.model_dump(mode="json", exclude={"adopt", *files}),
        "rna_samples": sorted([str(p), str(v)] for p, v in samples.dropna().items()),
    }


def adopt_targets(source: Path, manifest: Path, expression: Path, settings, out: Path):
    """Copy the targets of ``source`` (the ``--out`` of ``stromalens targets``) into ``out``
    when their recorded identity (:func:`targets_identity`) equals this study's; returns the
    summary recorded with them, or ``None`` (and why) when they do not match."""
    import json
    import shutil

    record = Path(source) / IDENTITY
    if not record.is_file():
        why = "made by an older stromalens, or not a targets folder"
        return None, f"{source} has no {IDENTITY} ({why})"
    found = json.loads(record.read_text(encoding="utf-8"))
    want = targets_identity(manifest, expression, settings)
    differ = sorted(k for k in want if found.get("identity", {}).get(k) != want[k])
    if differ:
        return None, f"{source}: recorded {', '.join(differ)} differ from this study's"
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for name in TARGET_FILES:
        if (Path(source) / name).is_file():
            shutil.copy2(Path(source) / name, out / name)
    return found["summary"] | {"adopted": str(source)}, ""


def _write_json(path: Path, data: dict) -> None:
    import json

    tmp = path.with_name(f"partial-{path.name}")
    tmp.write_text(json.dumps(data, indent=2), encoding="utf-8")
    tmp.replace(path)


def target_genes(settings, mrna_scaling, measured) -> list[str]:
    """The measured genes the targets are scored from, in the order first met: the ERS–CAF
    set, the ligands and receptors of the S_LR triplets, the deconvolution signature's genes."""
    from .genesets import as_gene_sets
    from .independent import resolve_signature
    from .lr import curated_triplets
    from .pipeline import ERS_CAF_SET, default_gene_sets_path

    sets = as_gene_sets(settings.gene_sets or default_gene_sets_path())
    triplets = curated_triplets()
    signature, _ = resolve_signature(
        settings.signature, mrna_scaling, tumor=settings.quantiseq_tumor
    )
    wanted = [*sets.get(ERS_CAF_SET, []), *triplets["ligand"], *triplets["receptor"]]
    wanted += list(signature.index)
    measured = set(measured)
    return [g for g in dict.fromkeys(map(str, wanted)) if g in measured]


def write_gene_table(tpm: pd.DataFrame, settings, mrna_scaling, out: Path, patient_of_sample):
    """``genes.parquet`` (:data:`~stromalens.rundir.GENE_TABLE`; index patient_id): log2(TPM + 1)
    of :func:`target_genes`, what HE2RNA's gene layer is trained on (linear expression only)."""
    genes = target_genes(settings, mrna_scaling, tpm.columns)
    table = np.log2(tpm[genes].clip(lower=0.0) + 1.0)
    table.index = [patient_of_sample[s] for s in table.index]
    table.index.name = "patient_id"
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / f"partial-{GENE_TABLE}"
    table.to_parquet(tmp)
    tmp.replace(out / GENE_TABLE)
