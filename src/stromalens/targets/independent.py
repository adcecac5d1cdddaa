"""The inputs of the independent second pipelines, which share no gene, signature row or pair.

A noise ceiling from two pipelines that share inputs (the same gene set scored by ssGSEA and by
GSVA, the same triplets, the same signature) is inflated: an error of the shared input is in
both scores, so it counts as agreement. The independent pipelines take other inputs:

* **ERS–CAF** — ``ERS_CAF_INDEPENDENT`` (``resources/ers_caf_independent.yaml``: Hallmark UPR
  and fibroblast markers), less any gene of the primary set (:func:`independent_gene_set`);
* **S_LR** — a second ERS–CAF → immune pair table whose genes the primary table does not use
  (``resources/ers_caf_lr_triplets_independent.csv``; :func:`independent_triplets`);
* **H** (and the receiving fractions of S_LR) — the signature's genes split into two halves with
  no gene in common, each cell type's genes dealt alternately by specificity
  (:func:`split_signature`): pipeline A deconvolves with half A, pipeline B with half B. Their
  concordance is a split-half reliability (of half-length measures, so conservative); the
  Spearman–Brown value r_SB = 2r / (1 + r) (Spearman 1910, Brown 1910, Br J Psychol 3) is given
  beside it for the full signature.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd

from .deconvolution import til10_mrna_scaling, til10_removed_genes, til10_signature
from .genesets import read_yaml_sets
from .lr import curated_triplets

INDEPENDENT_SET = "ERS_CAF_INDEPENDENT"


def independent_gene_set(primary: list[str]) -> tuple[list[str], list[str]]:
    """The independent ERS–CAF genes less those of ``primary``; returns (genes, dropped)."""
    path = resources.files(__package__).joinpath("resources/ers_caf_independent.yaml")
    genes = read_yaml_sets(Path(str(path)))[INDEPENDENT_SET]
    shared = set(primary)
    return [g for g in genes if g not in shared], [g for g in genes if g in shared]


def independent_triplets(primary: pd.DataFrame | None) -> tuple[pd.DataFrame, list[str]]:
    """The independent triplets less any whose ligand or receptor is a gene of ``primary``
    (default: the shipped table); returns (table, dropped "ligand-receptor" pairs)."""
    primary = curated_triplets() if primary is None else primary
    used = set(primary["ligand"]) | set(primary["receptor"])
    table = curated_triplets(independent=True)
    clash = table["ligand"].isin(used) | table["receptor"].isin(used)
    dropped = sorted(
        {f"{lig}-{rec}" for lig, rec in table.loc[clash, ["ligand", "receptor"]].values}
    )
    return table.loc[~clash].reset_index(drop=True), dropped


def resolve_signature(signature, mrna_scaling, *, tumor: bool = False):
    """The signature matrix to split and the mRNA scaling to use with it (TIL10 by default:
    its removed genes, and with ``tumor`` its tumour-expressed genes, left out first, as
    quanTIseq does; its scaling factors)."""
    from .deconvolution import read_signature, til10_tumor_genes

    if signature is None:
        sig = til10_signature()
        drop = set(til10_removed_genes()) | (set(til10_tumor_genes()) if tumor else set())
        sig = sig.drop(index=[g for g in sig.index if g in drop])
        return sig, til10_mrna_scaling() if mrna_scaling is None else mrna_scaling
    if isinstance(signature, str | Path):
        return read_signature(signature), mrna_scaling
    return signature.astype(float), mrna_scaling


def split_signature(signature: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Two halves of ``signature`` (genes × cell types) with no gene in common.

    Each gene belongs to the cell type where its log2(s + 1) is highest; within a cell type the
    genes are ranked by specificity (that maximum minus the gene's median over cell types) and
    dealt alternately to A and B, so each half keeps about half of every cell type's most
    specific genes.

    Example
    -------
    >>> half_a, half_b = split_signature(til10_signature())      # doctest: +SKIP
    >>> set(half_a.index) & set(half_b.index)                     # doctest: +SKIP
    set()
    """
    log = np.log2(signature.clip(lower=0.0) + 1.0)
    frame = pd.DataFrame(
        {"owner": log.idxmax(axis=1), "specificity": log.max(axis=1) - log.median(axis=1)}
    )
    # A stable sort keeps the order of ties from the signature's own gene order.
    frame = frame.sort_values(["owner", "specificity"], ascending=[True, False], kind="stable")
    rank = frame.groupby("owner").cumcount()
    half_a = frame.index[rank.to_numpy() % 2 == 0]
    half_b = frame.index[rank.to_numpy() % 2 == 1]
    return signature.loc[half_a], signature.loc[half_b]


def spearman_brown(r: float) -> float:
    """r_SB = 2r / (1 + r): the reliability of the full-length measure from a split-half r."""
    return float(2.0 * r / (1.0 + r)) if r > -1.0 else float("nan")
