"""R's Poisson CDF, bit for bit, from the standalone Rmath library (Debian ``r-mathlib``).

GSVA's Poisson kernel sums R's ``ppois`` values; on small cohorts many genes' kernel log-odds tie
mathematically, and GSVA orders them by the last bits of those sums. SciPy's ``poisson.cdf``
(Cephes ``pdtr``) agrees with R's ``ppois`` (Rmath ``pgamma``) to ~1e-15 relative but not bit
for bit, so reproducing GSVA's gene order needs R's own function. It is called through ctypes
from ``libRmath.so`` (``apt-get install r-mathlib``; the path can be forced with the
``STROMALENS_LIBRMATH`` environment variable).

``libR.so`` also exports ``Rf_ppois``, but outside a running R session its constants
(``R_NegInf``, ``R_NaN``) are still zero and it returns 0 for every argument, so only the
standalone library is used. Without it, :func:`ppois` falls back to SciPy and logs once that
Poisson-kernel GSVA may order near-tied genes differently from R.

Example
-------
>>> ppois(np.array([5.0]), np.array([5.5]))                       # doctest: +SKIP
array([0.52891869])
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os

import numpy as np
from scipy import stats

from stromalens.logs import get_logger

log = get_logger(__name__)

_ENV = "STROMALENS_LIBRMATH"


@functools.cache
def _load():
    """(ctypes ppois, library path) from libRmath, or None; looked up once, in
    ``$STROMALENS_LIBRMATH`` then under the linker's name ``Rmath``."""
    candidates = [os.environ.get(_ENV), ctypes.util.find_library("Rmath"), "libRmath.so"]
    for path in filter(None, candidates):
        try:
            fn = ctypes.CDLL(path).ppois
        except (OSError, AttributeError):
            continue
        fn.restype = ctypes.c_double
        fn.argtypes = [ctypes.c_double, ctypes.c_double, ctypes.c_int, ctypes.c_int]
        return fn, path
    return None


def library_path() -> str | None:
    """The libRmath that :func:`ppois` calls, or None when SciPy stands in for it."""
    found = _load()
    return None if found is None else found[1]


@functools.cache
def warn_fallback() -> None:
    """Log (once per process) that R's ppois is unavailable and what that changes."""
    log.warning(
        "libRmath (Debian package r-mathlib) not found: the Poisson CDF comes from SciPy, so "
        "GSVA with kcdf='poisson' can order near-tied genes differently from R (scores may "
        "differ by ~1e-4 on small cohorts). Install r-mathlib or set %s to its path.",
        _ENV,
    )


def ppois(x: np.ndarray, lam: np.ndarray) -> np.ndarray:
    """P(X ≤ x) for X ~ Poisson(λ), elementwise: R's ``ppois(x, lambda)`` exactly when libRmath
    is available, SciPy's ``poisson.cdf`` otherwise (equal to ~1e-15 relative).

    One ctypes call per distinct (x, λ) pair (~1 µs each): meant for thousands of values, not
    millions. Non-integer ``x`` is floored (R: ``floor(x + 1e-7)``).
    """
    x, lam = np.broadcast_arrays(np.asarray(x, np.float64), np.asarray(lam, np.float64))
    found = _load()
    if found is None:
        warn_fallback()
        return stats.poisson.cdf(x, lam)
    fn = found[0]
    pairs, inverse = np.unique(
        np.stack([x.ravel(), lam.ravel()], axis=1), axis=0, return_inverse=True
    )
    values = np.fromiter((fn(a, b, 1, 0) for a, b in pairs.tolist()), np.float64, len(pairs))
    return values[inverse.ravel()].reshape(x.shape)
