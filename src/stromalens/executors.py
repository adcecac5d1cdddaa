"""Run independent per-item work (one slide, one patient) in parallel, isolated and visible.

Each item runs in a worker process; an item that raises is reported with its error and the
others go on. A progress bar shows the cohort's progress. ``executor="process"`` (default) uses a
local process pool; ``executor="ray"`` sends items to a Ray cluster (``pip install
'stromalens[ray]'``): the running cluster named by ``RAY_ADDRESS`` if set, else a local one.
On Ray, items go to a pool of long-lived actors, each asking for the resources given
(``ray_options``, e.g. ``{"num_gpus": 1}``: Ray then gives each actor its own GPU through
``CUDA_VISIBLE_DEVICES``); an actor runs its items one after another in one process, so what a
worker loads once (an encoder in a module-level cache) serves all of them.

Clean stops: a pool worker ends when the process that started the pool dies, even by kill -9
(:func:`die_with_parent`, the pool's initializer), so no worker is left holding memory, and the
forkserver and resource tracker of multiprocessing, which live as long as some worker holds their
pipes, end after them. A full disk is not one item's fault: it stops the work (the error
propagates) instead of failing every remaining item one by one.
"""

from __future__ import annotations

import errno
import os
import signal
import threading
import time
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


#: Errors that no other item can escape either: the disk is full for all of them.
DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


def is_disk_full(exc: BaseException) -> bool:
    """``exc`` says the disk is full: its errno, or, for libraries that raise a bare
    ``OSError`` with the system's text in the message (pyarrow, HDF5), that text."""
    if not isinstance(exc, OSError):
        return False
    return exc.errno in DISK_FULL or any(os.strerror(code) in str(exc) for code in DISK_FULL)


def _call(fn: Callable, key: str, arg: Any) -> ItemResult:
    try:
        return ItemResult(key, fn(arg))
    except OSError as exc:
        if is_disk_full(exc):
            raise  # the stage fails with one message naming the path (cli.errors)
        return ItemResult(key, error=f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}")
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
                max_workers=min(workers, len(items)),
                mp_context=context,
                initializer=die_with_parent,
                initargs=(os.getpid(),),
            ) as pool:
                futures = [pool.submit(_call, fn, key, arg) for key, arg in items]
                try:
                    for future in as_completed(futures):
                        result = future.result()
                        results[result.key] = result
                        bar.advance(task)
                except BaseException:
                    # a full disk, Ctrl-C: the items not started yet are not started at all
                    pool.shutdown(wait=True, cancel_futures=True)
                    raise
    return [results[key] for key, _ in items]


# ---------------------------------------------------------------------------- clean stops
#: ``prctl`` option: the signal this process gets when its parent dies (linux/prctl.h).
PR_SET_PDEATHSIG = 1

#: Seconds between two looks at the parent where it cannot be waited on (no pidfd).
WATCH_INTERVAL = 0.5


def die_with_parent(parent_pid: int | None = None) -> None:
    """End this process with SIGTERM when ``parent_pid`` (default: the parent) dies.

    Call it first in a worker process (a pool's ``initializer``, a DataLoader's
    ``worker_init_fn``). Two mechanisms, because neither covers every case alone:

    * the kernel's death signal, ``prctl(PR_SET_PDEATHSIG, SIGTERM)`` (Linux): immediate, even
      while the worker runs C code holding the GIL, but it follows the *direct* parent only;
      a worker started through multiprocessing's forkserver is the forkserver's child, and the
      forkserver outlives the main process as long as a worker holds its pipe;
    * a watchdog thread waiting on ``parent_pid`` itself (a pidfd, which becomes readable the
      moment that process exits, zombie or not; elsewhere a poll every
      :data:`WATCH_INTERVAL` s). ``kill -0`` would not do: a killed parent stays a zombie,
      which ``kill -0`` still finds, until its own parent reaps it.

    SIGTERM is reset to its default action first: a forked worker inherits the handler of
    ``stromalens run``, which turns SIGTERM into ``KeyboardInterrupt``, and a worker must die of
    it, not catch it.

    Example
    -------
    >>> ProcessPoolExecutor(initializer=die_with_parent, initargs=(os.getpid(),))  # doctest: +SKIP
    """
    parent_pid = os.getppid() if parent_pid is None else parent_pid
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    _set_death_signal(signal.SIGTERM)
    threading.Thread(
        target=_watch_parent, args=(parent_pid,), name="stromalens-parent-watch", daemon=True
    ).start()


def _set_death_signal(signum: int) -> None:
    """``prctl(PR_SET_PDEATHSIG, signum)`` through libc; nothing where there is no prctl."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, int(signum), 0, 0, 0)
    except (OSError, AttributeError):  # pragma: no cover - not Linux: the watchdog remains
        pass


def _watch_parent(parent_pid: int) -> None:
    """Wait until ``parent_pid`` has exited, then send this process SIGTERM."""
    _wait_for_exit(parent_pid)
    os.kill(os.getpid(), signal.SIGTERM)


def _wait_for_exit(pid: int) -> None:
    import select

    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return  # gone already (exited and reaped)
    except (AttributeError, OSError):  # pragma: no cover - no pidfd (old kernel, not Linux)
        while _alive(pid):
            time.sleep(WATCH_INTERVAL)
        return
    select.select([pidfd], [], [])  # readable once the process has exited


def _alive(pid: int) -> bool:
    """``pid`` runs (a zombie, one that has exited but is not yet reaped, does not)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False
    except OSError:  # pragma: no cover - no /proc: ask the kernel (a zombie counts as alive)
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True


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
