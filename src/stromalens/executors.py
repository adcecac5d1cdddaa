"""Run independent per-item work (one slide, one patient) in parallel, isolated and visible.

Each item runs in a worker process; an item that raises is reported with its error and the
others go on. A progress bar shows the cohort's progress. ``executor="process"`` (default) uses a
local process pool; ``executor="ray"`` sends items to a Ray cluster (``pip install
'stromalens[ray]'``): the running cluster named by ``RAY_ADDRESS`` if set, else a local one.
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
    executor: str = "process",
    mp_context: str | None = None,
) -> list[ItemResult]:
    """Apply ``fn`` to each ``(key, argument)`` item, in ``workers`` processes.

    ``fn`` must be picklable (a module-level function). Results come back in input order.
    ``workers=1`` runs in this process (easier to debug, no pickling) unless ``executor="ray"``.
    ``executor="ray"`` runs each item as a Ray task (at most ``workers`` at once).
    ``mp_context`` ("fork", "forkserver", "spawn") chooses how pool workers start; use
    "forkserver" or "spawn" once this process has run torch (a forked OpenMP runtime can hang).
    """
    items = list(items)
    if executor not in ("process", "local", "ray"):
        raise ValueError(f"executor must be 'process' or 'ray', got {executor!r}")
    workers = default_workers() if workers is None else max(1, workers)
    results: dict[str, ItemResult] = {}
    bar = progress_bar(progress)
    with bar:
        task = bar.add_task(description, total=len(items))
        if executor == "ray":
            for result in _run_ray(fn, items, workers):
                results[result.key] = result
                bar.advance(task)
        elif workers == 1 or len(items) <= 1:
            for key, arg in items:
                results[key] = _call(fn, key, arg)
                bar.advance(task)
        else:
            import multiprocessing

            context = multiprocessing.get_context(mp_context) if mp_context else None
            with ProcessPoolExecutor(
                max_workers=min(workers, len(items)), mp_context=context
            ) as pool:
                futures = [pool.submit(_call, fn, key, arg) for key, arg in items]
                for future in as_completed(futures):
                    result = future.result()
                    results[result.key] = result
                    bar.advance(task)
    return [results[key] for key, _ in items]


def _run_ray(fn: Callable, items: list[tuple[str, Any]], workers: int):
    """Yield :class:`ItemResult` as Ray tasks finish (``workers`` tasks in flight at most)."""
    try:
        import ray
    except ImportError:
        raise ImportError("executor='ray' needs Ray: pip install 'stromalens[ray]'") from None
    started_here = False
    if not ray.is_initialized():
        address = os.environ.get("RAY_ADDRESS")
        if address:
            ray.init(address=address, log_to_driver=False)
        else:
            ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False)
        started_here = True
    try:
        remote = ray.remote(num_cpus=1)(_call)
        queue = list(items)
        running: dict = {}
        while queue or running:
            while queue and len(running) < workers:
                key, arg = queue.pop(0)
                running[remote.remote(fn, key, arg)] = key
            done, _ = ray.wait(list(running), num_returns=1)
            for ref in done:
                key = running.pop(ref)
                try:
                    yield ray.get(ref)
                except Exception as exc:  # noqa: BLE001 - a lost worker fails one item only
                    yield ItemResult(key, error=f"{type(exc).__name__}: {exc}")
    finally:
        if started_here:
            ray.shutdown()


def progress_bar(enabled: bool):
    """A rich progress bar (description, bar, done/total, elapsed, remaining); a no-op when
    ``enabled`` is false."""
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
