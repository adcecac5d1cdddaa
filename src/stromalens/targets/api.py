"""The documented API: ``stromalens.targets.ssgsea``, ``gsva`` and ``deconvolve``.

Each takes a samples × genes DataFrame or an AnnData and returns a samples × sets (or cell
types) DataFrame. Given an AnnData it also stores the result in the scverse convention, as
decoupler does: ``adata.obsm["score_ssgsea"]``, ``adata.obsm["score_gsva"]`` and
``adata.obsm["fractions_<method>"]`` (DataFrames indexed by ``obs_names``).
"""

from __future__ import annotations

from . import deconvolution as _deconvolution
from . import scores as _scores


def obsm_key(kind: str, method: str) -> str:
    """The ``adata.obsm`` key of a result: ``score_<method>`` or ``fractions_<method>``."""
    return f"{kind}_{method}"


def _is_anndata(expr) -> bool:
    return all(hasattr(expr, a) for a in ("obs_names", "var_names", "X", "obsm"))


def _store(expr, key: str, result):
    if _is_anndata(expr):
        expr.obsm[key] = result.loc[list(map(str, expr.obs_names))]
    return result


def ssgsea(expr, gene_sets, **kwargs):
    """Single-sample GSEA (:func:`stromalens.targets.scores.ssgsea`, GSVA 1.46-identical);
    with an AnnData, also ``adata.obsm["score_ssgsea"]``.

    Example
    -------
    >>> scores = ssgsea(adata, {"ERS_CAF": ["XBP1", "ATF4", "COL1A1"]})  # doctest: +SKIP
    >>> adata.obsm["score_ssgsea"]                                         # doctest: +SKIP
    """
    return _store(expr, obsm_key("score", "ssgsea"), _scores.ssgsea(expr, gene_sets, **kwargs))


def gsva(expr, gene_sets, **kwargs):
    """GSVA (:func:`stromalens.targets.scores.gsva`, GSVA 1.46-identical); with an AnnData,
    also ``adata.obsm["score_gsva"]``."""
    return _store(expr, obsm_key("score", "gsva"), _scores.gsva(expr, gene_sets, **kwargs))


def deconvolve(expr, *, method: str = "nusvr", **kwargs):
    """Cell-type fractions (:func:`stromalens.targets.deconvolution.deconvolve`, linear TPM);
    with an AnnData, also ``adata.obsm["fractions_<method>"]`` — or ``score_mcpcounter`` for
    MCP-counter, whose marker scores are not fractions."""
    result = _deconvolution.deconvolve(expr, method=method, **kwargs)
    kind = "score" if method == "mcpcounter" else "fractions"
    return _store(expr, obsm_key(kind, method), result)
