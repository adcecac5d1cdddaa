"""Transcriptomic targets: ssGSEA/GSVA scores, deconvolution, LR crosstalk, heterogeneity."""

from .genesets import as_gene_sets, match_gene_sets, read_gmt
from .scores import gsva, ssgsea

__all__ = ["as_gene_sets", "gsva", "match_gene_sets", "read_gmt", "ssgsea"]
