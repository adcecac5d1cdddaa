"""Transcriptomic targets: ssGSEA/GSVA scores, deconvolution, LR crosstalk, heterogeneity.

The package's names load lazily, so ``import stromalens.targets`` does not import numpy,
pandas or scikit-learn until one of them is used.
"""

from importlib import import_module

_EXPORTS = {
    "as_gene_sets": ".genesets",
    "match_gene_sets": ".genesets",
    "read_gmt": ".genesets",
    "ssgsea": ".api",
    "gsva": ".api",
    "deconvolve": ".api",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(import_module(_EXPORTS[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS))
