"""Run independent per-item work (one slide, one patient) in parallel, isolated and visible.

Each item runs in a worker process; an item that raises is reported with its error and the
others go on. A progress bar shows the cohort's progress. (A Ray executor for clusters joins this
module with the whole-slide stage.)
"""

from __future__ import annotations

import os
import traceback
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from typing import Any


@dataclass
class ItemResult:
    """Outcome of one item: its key, its value or its error."""

    key: str
    value: Any = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


def default_workers() -> int:
    """Usable CPU cores (respects the process's CPU affinity)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - non-Linux
        return max(1, os.cpu_count() or 1)


def _call(fn: Callable, key: str, arg: Any) -> ItemResult:
    try:
        return ItemResult(key, fn(arg))
    except Exception as exc:  # noqa: BLE001 - isolate one bad item from the rest
        return ItemResult(key, error=f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}")


def run_items(
    fn: Callable[[Any], Any],
    items: Sequence[tuple[str, Any]] | Iterable[tuple[str, Any]],
    *,
    workers: int | None = None,
    description: str = "working",
    progress: bool = True,
) -> list[ItemResult]:
    """Apply ``fn`` to each ``(key, argument)`` item, in ``workers`` processes.

    ``fn`` must be picklable (a module-level function). Results come back in input order.
    ``workers=1`` runs in this process (easier to debug, no pickling).
    """
    items = list(items)
    workers = default_workers() if workers is None else max(1, workers)
    results: dict[str, ItemResult] = {}
    bar = _progress(progress)
    with bar:
        task = bar.add_task(description, total=len(items))
        if workers == 1 or len(items) <= 1:
            for key, arg in items:
                results[key] = _call(fn, key, arg)
                bar.advance(task)
        else:
            with ProcessPoolExecutor(max_workers=min(workers, len(items))) as pool:
                futures = [pool.submit(_call, fn, key, arg) for key, arg in items]
                for future in as_completed(futures):
                    result = future.result()
                    results[result.key] = result
                    bar.advance(task)
    return [results[key] for key, _ in items]


def _progress(enabled: bool):
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    return Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        disable=not enabled,
        transient=False,
    )
