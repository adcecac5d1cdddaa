"""Microenvironmental heterogeneity: Shannon entropy of deconvolved cell fractions.

    H = −Σ_k p_k log p_k   (natural log),   effective richness D = exp(H)

(Shannon 1948; exp(H) is the Hill number of order 1, Jost 2006, Oikos 113:363). The fractions
p are renormalised to sum 1 over the cell types counted.

The "other/uncharacterised" fraction (the mRNA the signature cannot explain, from constrained
least squares) is handled by ``other``:

* ``"exclude"`` (default): H describes the composition of the characterised cell types only —
  p_k = f_k / Σ_characterised f; the uncharacterised share does not count as diversity, so a
  sample whose signature explains little is not called heterogeneous for that reason.
* ``"include"``: "other" is one more category — a tumour with a large uncharacterised share
  counts as more diverse.

Marker scores (MCP-counter) are refused: they are log-scale means in units that differ between
populations, so renormalising them to sum 1 would not make them proportions.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from .deconvolution import KIND_ATTR

OTHER_COLUMNS = ("other", "Other", "uncharacterized", "uncharacterised")


def shannon_entropy(fractions: pd.DataFrame, *, other: str = "exclude") -> pd.Series:
    """H per sample (natural log). Zero fractions contribute 0 (lim p→0 of p log p)."""
    if other not in {"exclude", "include"}:
        raise ValueError(f"other must be 'exclude' or 'include', not {other!r}")
    if fractions.attrs.get(KIND_ATTR) == "scores":
        raise ValueError(
            "these are marker scores (MCP-counter), not fractions: an entropy needs "
            "proportions; compute H from a fraction method (quantiseq, nusvr or lsq)"
        )
    table = fractions.astype(float)
    if (table.to_numpy() < -1e-12).any():
        raise ValueError("fractions must be non-negative")
    if other == "exclude":
        table = table.drop(columns=[c for c in table.columns if c in OTHER_COLUMNS])
    p = table.clip(lower=0.0).to_numpy()
    totals = p.sum(axis=1, keepdims=True)
    if (totals <= 0).any():
        bad = table.index[(totals[:, 0] <= 0)][0]
        raise ValueError(f"sample '{bad}' has no positive fraction to compute an entropy from")
    p = p / totals
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0, p * np.log(p), 0.0)
    return pd.Series(-terms.sum(axis=1), index=table.index, name="heterogeneity")


def effective_richness(fractions: pd.DataFrame, *, other: str = "exclude") -> pd.Series:
    """exp(H): the number of equally abundant cell types with the same entropy."""
    return np.exp(shannon_entropy(fractions, other=other)).rename("effective_richness")
