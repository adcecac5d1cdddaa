"""Pearson's correlation coefficient, with one rule for the cases where it is undefined.

Training (nested selection, CV metrics), the evaluation and the report all use
:func:`pearson`, so one r means the same number everywhere.

    r = Σ (x_i − x̄)(y_i − ȳ) / √(Σ (x_i − x̄)² · Σ (y_i − ȳ)²)

over the pairs where both values are finite. **Edge-case rule:** r is NaN when fewer than 3
finite pairs remain or when either side is constant (SD below 1e-12): r is undefined there, and
reporting 0 would pass a degenerate model off as an uninformative one. Callers that rank by r
(the nested selection) treat NaN as worst.

>>> pearson([1, 2, 3, 4], [2, 4, 6, 9])  # scipy.stats.pearsonr([1, 2, 3, 4], [2, 4, 6, 9])
0.994376712684369
>>> pearson([1, 2, 3], [5, 5, 5])
nan
"""

from __future__ import annotations

import numpy as np

MIN_PAIRS = 3
MIN_SD = 1e-12


def pearson(x, y) -> float:
    """Pearson's r of ``x`` and ``y`` over their finite pairs; NaN where undefined (above)."""
    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    if x.shape != y.shape:
        raise ValueError(f"pearson: x and y differ in shape, {x.shape} vs {y.shape}")
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
    if len(x) < MIN_PAIRS or np.std(x) < MIN_SD or np.std(y) < MIN_SD:
        return float("nan")
    return float(np.corrcoef(x, y)[0, 1])
