"""Prepare the real-data inputs of the GSVA/ssGSEA reference comparison.

Run by hand to regenerate the R reference values (see make_gsva_reference.R), and imported by
the tests, which rebuild exactly the same inputs from ../shared/data and compare against the
committed expected values. Only scores are committed, never the (third-party) data.

    python tests/targets/reference/prepare_inputs.py OUTDIR
    Rscript tests/targets/reference/make_gsva_reference.R OUTDIR tests/targets/reference
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd

SHARED = Path(__file__).resolve().parents[4] / "shared" / "data"


def nki_log_ratios() -> pd.DataFrame:
    """NKI breast cohort (genefu): samples × genes, log ratios rounded to 0.1 (many ties), one
    constant gene added (GSVA drops it, ssGSEA keeps it)."""
    folder = SHARED / "rnaseq" / "nki_genefu"
    expr = pd.read_csv(folder / "expression_samples_x_probes.tsv.gz", sep="\t", index_col=0)
    annotation = pd.read_csv(folder / "probe_annotation.tsv.gz", sep="\t", index_col=0)
    symbols = annotation.loc[expr.columns, "HUGO.gene.symbol"]
    keep = symbols.notna().to_numpy() & expr.notna().all(axis=0).to_numpy()
    expr = expr.loc[:, keep]
    expr.columns = symbols[keep].to_numpy()
    expr = expr.loc[:, ~expr.columns.duplicated()]
    expr = expr.round(1)
    expr["CONSTANT_GENE"] = 0.0
    expr.index = expr.index.astype(str)
    return expr


def hoek_counts() -> pd.DataFrame:
    """Hoek 2015 PBMC (8 samples): samples × genes, TPM clipped at 0 and rounded to integers
    (zeros, ties): count-like data for the Poisson kernel."""
    tpm = pd.read_csv(
        SHARED / "rnaseq" / "hoek_pbmc" / "bulk_mat_hoek_pbmc_tpm.tsv.gz", sep="\t", index_col=0
    )
    tpm = tpm.loc[~tpm.index.duplicated()]
    counts = tpm.clip(lower=0).round(0).T  # a few values are slightly negative in the source
    # Genes expressed (≥ 5) in every sample, the usual filter before a count-based analysis.
    # (Among barely expressed genes, many share the same multiset of counts: their log-odds
    # tie mathematically and GSVA breaks those ties by the last bit of R's pgamma, which only
    # R's own ppois (libRmath, see stromalens.targets.rmath) reproduces.)
    counts = counts.loc[:, (counts >= 5).all(axis=0)]
    # Keep the genes of the hallmark sets plus every 10th other gene: small enough for R.
    sets = hallmark_sets()
    wanted = {g for genes in sets.values() for g in genes}
    other = set([g for g in counts.columns if g not in wanted][::10])
    return counts.loc[:, [g for g in counts.columns if g in wanted or g in other]]


def hallmark_sets() -> dict[str, list[str]]:
    from stromalens.targets.genesets import read_gmt

    return read_gmt(SHARED / "genesets" / "h.all.v7.0.symbols.gmt")


def sets_for(genes, min_found: int = 3) -> dict[str, list[str]]:
    """Hallmark sets with at least ``min_found`` genes in the data (identical in R and Python),
    restricted to those genes, plus a set holding the constant gene when present."""
    present = set(genes)
    out = {}
    for name, members in hallmark_sets().items():
        found = [g for g in members if g in present]
        if len(found) >= min_found:
            out[name] = found
    if "CONSTANT_GENE" in present:
        first = next(iter(out.values()))
        out["WITH_CONSTANT_GENE"] = first[:5] + ["CONSTANT_GENE"]
    return out


def write_gmt(sets: dict[str, list[str]], path: Path) -> None:
    path.write_text(
        "".join(f"{name}\tna\t" + "\t".join(genes) + "\n" for name, genes in sets.items())
    )


def main(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    nki = nki_log_ratios()
    nki.T.to_csv(out / "nki_genes_x_samples.csv")
    write_gmt(sets_for(nki.columns), out / "nki_sets.gmt")
    hoek = hoek_counts()
    hoek.T.to_csv(out / "hoek_genes_x_samples.csv")
    write_gmt(sets_for(hoek.columns), out / "hoek_sets.gmt")
    signature, mixture = til10_hoek_inputs()
    signature.to_csv(out / "til10_signature_aligned.csv")
    mixture.T.to_csv(out / "hoek_til10_genes_x_samples.csv")
    hoek_tpm().T.to_csv(out / "hoek_tpm_all_genes_x_samples.csv")
    gse107572_expression().T.rename_axis("Gene").to_csv(out / "gse107572_mix.txt", sep="\t")
    synth = synthetic_counts()
    synth.T.to_csv(out / "synthetic_genes_x_samples.csv")
    write_gmt(sets_for(synth.columns), out / "synthetic_sets.gmt")
    print(
        f"NKI {nki.shape}, Hoek {hoek.shape}; ties per NKI sample: "
        f"{np.mean([nki.iloc[i].duplicated().sum() for i in range(5)]):.0f} genes"
    )


def synthetic_counts() -> pd.DataFrame:
    """Counts of the synthetic cohort's cell-mixture model (126 samples; seed 0): samples × genes,
    genes with at least one count in every sample."""
    from stromalens.synthetic import biology, expression

    patients = biology.simulate_patients(126, seed=0)
    patients["rna_sample"] = [f"S{i:03d}" for i in range(len(patients))]
    fractions = expression.simulate_fractions(patients, seed=0)
    batch = {s: biology.make_site_effects(s, 0).rna_batch_sd for s in biology.SITES}
    counts, _ = expression.simulate_expression(patients, fractions, batch, seed=0)
    counts = counts.T
    return counts.loc[:, (counts >= 1).all(axis=0)].astype(float)


def hoek_tpm() -> pd.DataFrame:
    """Hoek 2015 PBMC TPM (samples × all genes), clipped at 0 (a few values are negative)."""
    tpm = pd.read_csv(
        SHARED / "rnaseq" / "hoek_pbmc" / "bulk_mat_hoek_pbmc_tpm.tsv.gz", sep="\t", index_col=0
    )
    return tpm.loc[~tpm.index.duplicated()].clip(lower=0).T


def til10_hoek_inputs() -> tuple[pd.DataFrame, pd.DataFrame]:
    """TIL10 (minus quanTIseq's removed genes) aligned with the Hoek PBMC TPM (samples × genes),
    for the ν-SVR (CIBERSORT algorithm) reference."""
    from stromalens.targets.deconvolution import til10_removed_genes, til10_signature

    tpm = pd.read_csv(
        SHARED / "rnaseq" / "hoek_pbmc" / "bulk_mat_hoek_pbmc_tpm.tsv.gz", sep="\t", index_col=0
    )
    tpm = tpm.loc[~tpm.index.duplicated()].clip(lower=0).T
    signature = til10_signature().drop(index=til10_removed_genes(), errors="ignore")
    genes = [g for g in signature.index if g in tpm.columns]
    return signature.loc[genes], tpm[genes]


GSE107572 = SHARED / "rnaseq" / "gse107572_finotello"


def gse107572_expression() -> pd.DataFrame:
    """GSE107572 (quanTIseq's 9 blood-derived immune-cell mixtures): samples × genes, as
    distributed (not TPM-normalised)."""
    table = pd.read_csv(GSE107572 / "expression_genes_x_samples.tsv.gz", sep="\t", index_col=0)
    return table.T


def gse107572_facs() -> pd.DataFrame:
    """Flow-cytometry fractions of the GSE107572 samples (samples × 8 cell types)."""
    return pd.read_csv(GSE107572 / "facs_fractions.tsv", sep="\t", index_col=0)


def gse107572_hgnc_mapped() -> pd.DataFrame:
    """GSE107572 re-annotated as quanTIseq's ``mapGenes`` (HGNC 2017-04-18) does it: the genes
    it drops removed, the rows it adds under approved symbols appended (recorded by
    make_quantiseq_reference.R)."""
    here = Path(__file__).parent
    expr = gse107572_expression().T
    dropped = pd.read_csv(here / "quantiseq_gse107572_dropped_genes.csv")["gene"]
    added = pd.read_csv(here / "quantiseq_gse107572_added_values.csv", index_col=0)
    added.columns = expr.columns
    return pd.concat([expr.drop(index=dropped), added]).T


if __name__ == "__main__":
    main(Path(sys.argv[1]))
