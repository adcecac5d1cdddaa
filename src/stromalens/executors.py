"""Run independent per-item work (one slide, one patient) in parallel, isolated and visible.

Each item runs in a worker process; an item that raises is reported with its error and the
others go on. A progress bar shows the cohort's progress. ``executor="process"`` (default) uses a
local process pool; ``executor="ray"`` sends items to a Ray cluster (``pip install
'stromalens[ray]'``): the running cluster named by ``RAY_ADDRESS`` if set, else a local one.
On Ray, items go to a pool of long-lived actors, each asking for the resources given
(``ray_options``, e.g. ``{"num_gpus": 1}``: Ray then gives each actor its own GPU through
``CUDA_VISIBLE_DEVICES``); an actor runs its items one after another in one process, so what a
worker loads once (an encoder in a module-level cache) serves all of them.
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
    ray_options: dict | None = None,
) -> list[ItemResult]:
    """Apply ``fn`` to each ``(key, argument)`` item, in ``workers`` processes.

    ``fn`` must be picklable (a module-level function). Results come back in input order.
    ``workers=1`` runs in this process (easier to debug, no pickling) unless ``executor="ray"``.
    ``executor="ray"`` runs each item as a Ray task (at most ``workers`` at once).
    ``mp_context`` ("fork", "forkserver", "spawn") chooses how pool workers start; use
    "forkserver" or "spawn" once this process has run torch (a forked OpenMP runtime can hang).
    ``ray_options`` are the resources each Ray actor asks for (default ``{"num_cpus": 1}``);
    the pool holds at most as many actors as the cluster can place.
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
            for result in _run_ray(fn, items, workers, ray_options):
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


class RayWorker:
    """The body of one Ray actor: runs items one after another in its own process."""

    def run(self, fn: Callable, key: str, arg: Any) -> ItemResult:
        return _call(fn, key, arg)


#: Ray's resource names of the ``ray.remote`` options a pool may ask for.
_RAY_RESOURCES = {"num_cpus": "CPU", "num_gpus": "GPU"}


def ray_pool_size(workers: int, n_items: int, options: dict, cluster: dict) -> int:
    """How many actors asking ``options`` to start: ``workers``, at most one per item and at
    most as many as the ``cluster`` resources (``ray.cluster_resources()``) can hold at once.
    ``ValueError`` when not even one fits (e.g. ``num_gpus=1`` on a cluster without GPUs)."""
    size = min(workers, n_items)
    for option, resource in _RAY_RESOURCES.items():
        want = float(options.get(option, 0) or 0)
        if want <= 0:
            continue
        have = float(cluster.get(resource, 0))
        fits = int(have / want + 1e-9)
        if fits < 1:
            raise ValueError(
                f"each Ray worker asks for {option}={want:g} but the cluster has {have:g} "
                f"{resource}; start Ray with {resource}s (ray start --{option.replace('_', '-')}) "
                "or choose a device that needs none (--device cpu)"
            )
        size = min(size, fits)
    return max(1, size)


def _run_ray(fn: Callable, items: list[tuple[str, Any]], workers: int, options: dict | None):
    """Yield :class:`ItemResult` as Ray actors finish items (one item per actor at a time)."""
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
    options = {"num_cpus": 1, **(options or {})}
    actor = ray.remote(**options)(RayWorker)
    idle, running = [], {}
    try:
        size = ray_pool_size(workers, len(items), options, ray.cluster_resources())
        idle = [actor.remote() for _ in range(size)]
        queue = list(items)
        while queue or running:
            while queue and idle:
                worker, (key, arg) = idle.pop(), queue.pop(0)
                running[worker.run.remote(fn, key, arg)] = (key, worker)
            done, _ = ray.wait(list(running), num_returns=1)
            for ref in done:
                key, worker = running.pop(ref)
                try:
                    result = ray.get(ref)
                    idle.append(worker)
                except Exception as exc:  # noqa: BLE001 - a lost actor fails one item only
                    result = ItemResult(key, error=f"{type(exc).__name__}: {exc}")
                    ray.kill(worker)
                    idle.append(actor.remote())  # a fresh actor takes its place
                yield result
    finally:
        for worker in idle + [w for _, w in running.values()]:
            ray.kill(worker)  # actors are ours: never left holding a GPU of a shared cluster
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
