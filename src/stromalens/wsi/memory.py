"""Keep a slide run's heap bounded: glibc's sliding mmap threshold, switched off.

glibc serves an allocation larger than ``M_MMAP_THRESHOLD`` (128 KiB at start) with its own
``mmap`` and returns it to the system on ``free``. But after such a block is freed, glibc raises
the threshold to that block's size (up to 32 MiB), so from then on the pipeline's per-block
arrays (a decoded read block is ~10–20 MiB, its QC and normalisation temporaries as much again,
all of slightly different sizes at the slide's edges) are carved out of the ``brk`` heap instead.
Freed, they leave holes that the next, differently sized, block does not fit, and the heap grows
with every block until fragmentation reaches a steady state several times the working set:
measured, a decode worker's private memory rose from ~100 MiB to ~450 MiB over ~1,200 tiles
(``benchmarks/wsi_memory.py``).

Setting the threshold explicitly (``mallopt(M_MMAP_THRESHOLD, 128 KiB)``) disables that
adjustment, so every large array is mapped and unmapped on its own and peak memory follows the
block and batch size, not the number of blocks read. The setting is per process and inherited
by forked workers; elsewhere than glibc it is a no-op.

Example
-------
>>> bound_heap()     # doctest: +SKIP
True
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_BYTES = 128 * 1024


def _libc():
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt  # noqa: B018 - absent on musl: raises AttributeError
    except (OSError, AttributeError):
        return None
    return libc


def bound_heap(threshold: int = MMAP_THRESHOLD_BYTES) -> bool:
    """Fix glibc's mmap threshold at ``threshold`` bytes in this process.

    Returns ``True`` when glibc accepted the setting, ``False`` where there is no glibc.
    """
    libc = _libc()
    return bool(libc is not None and libc.mallopt(M_MMAP_THRESHOLD, int(threshold)) == 1)
