"""Runs the CV's model fits as independent tasks on a pool of worker processes.

A CV is many small fits: per outer fold, one per model, plus grid points × inner folds for the
nested selection. Handing each worker a whole outer fold leaves cores idle (5 folds on 2
workers: the last fold runs alone, a third of the run on one core). Here each fit is a
:class:`FitTask`; workers take them one at a time, the costliest first (longest-processing-time
ordering), and a fold's gated-fusion fit is queued as soon as its nested selection is scored.

Every task re-seeds its own fit (``fit_model`` seeds torch and numpy from the settings), and a
worker runs one task at a time with ``threads`` torch threads, so a task's result depends
neither on which worker ran it nor on the order: the pool only changes the wall time. Each
worker receives the study data once (the pool initialiser) and keeps every fold preprocessor it
has fitted, keyed by its training patients, so the tasks of one fold share one fit.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from ..logs import event, get_logger
from .curriculum import TrainSettings, fit_model, predict
from .data import FoldPreprocessor, StudyData

log = get_logger("training.schedule")

#: Relative fit cost of a model (1 when not listed), used only to start the costliest fits
#: first; from benchmarks/train_cv.py's per-fit seconds on the synthetic cohort (TransMIL's
#: full attention over 512 tiles takes ~9× an ABMIL fit, the gated-fusion curriculum ~2×).
RELATIVE_COST = {"transmil": 9.0, "gated_fusion": 2.0, "mcat": 2.0, "clam_sb": 1.2}


@dataclass(frozen=True)
class FitTask:
    """Fit ``model`` on ``train_ids`` (the fold's preprocessor fitted on them) and predict
    ``test_ids``. ``key`` names the task uniquely, e.g. ``("fit", fold, model)`` or
    ``("select", fold, point, inner_fold)``."""

    key: tuple
    model: str
    train_ids: tuple[str, ...]
    test_ids: tuple[str, ...]
    settings: TrainSettings
    checkpoint_dir: Path | None = None
    with_student: bool = True
    with_plain: bool = True
    priority: float = field(default=0.0, compare=False)

    @property
    def cost(self) -> float:
        return RELATIVE_COST.get(self.model, 1.0) * len(self.train_ids)


@dataclass
class TaskResult:
    """A task's predictions on its test patients per output model (``gated_fusion`` gives
    three), z-scored with the task's training-fold scaler and in target units, and the
    z-scored truth (what the nested selection scores)."""

    key: tuple
    test_ids: list[str]
    predictions_z: dict  # output model → (P, J)
    predictions: dict  # output model → (P, J), target units
    y_z: object  # (P, J)
    seconds: float


# ------------------------------------------------------------------------------- worker side
_WORKER: dict = {}


def _init_worker(
    data: StudyData,
    harmonise: bool,
    icc_threshold,
    threads: int | None,
    parent_pid: int | None = None,
) -> None:
    if parent_pid is not None:  # a pool worker: it ends when the training process dies
        from ..executors import die_with_parent

        die_with_parent(parent_pid)
    if threads is not None:
        import torch

        torch.set_num_threads(threads)
    _WORKER.clear()
    _WORKER.update(data=data, harmonise=harmonise, icc=icc_threshold, preps={})


def _fold_preprocessor(train_ids: tuple[str, ...], settings: TrainSettings):
    """The preprocessor fitted on ``train_ids`` and its transformed training arrays (cached)."""
    key = (train_ids, settings.rad_components, settings.rad_reduction)
    if key not in _WORKER["preps"]:
        data = _WORKER["data"]
        prep = FoldPreprocessor.for_settings(_WORKER["harmonise"], _WORKER["icc"], settings)
        prep.fit(data, list(train_ids))
        _WORKER["preps"][key] = (prep, prep.transform(data, list(train_ids)))
    return _WORKER["preps"][key]


def _write_preprocessor(prep, checkpoint_dir: Path) -> None:
    """The fold state the bundle reads, rewritten whenever it differs from what is on disk: a
    rerun after the inputs changed refits the checkpoints, and the state must follow them."""
    path = checkpoint_dir / "preprocessor.json"
    text = json.dumps(prep.state(), indent=1, default=str)
    if path.is_file() and path.read_text(encoding="utf-8") == text:
        return
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    tmp = checkpoint_dir / f"preprocessor.json.{os.getpid()}.partial"
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)  # atomic: tasks of one fold may race to write the same content


def _fit_inputs(data: StudyData, prep: FoldPreprocessor) -> dict:
    """The provenance of a fold's arrays for the checkpoint digest: the study's own record
    (``data.meta["inputs"]``: encoder, weights, prompt texts) and the preprocessing settings."""
    return {
        **data.meta.get("inputs", {}),
        "harmonise": prep.harmonise,
        "icc_threshold": prep.icc_threshold,
        "min_present": prep.min_present,
        "rad_components": prep.rad_components,
        "rad_reduction": prep.rad_reduction,
    }


def execute(task: FitTask) -> TaskResult:
    """Run one task in this process (the worker's data must be set by :func:`_init_worker`)."""
    started = time.perf_counter()
    data = _WORKER["data"]
    prep, train = _fold_preprocessor(task.train_ids, task.settings)
    test = prep.transform(data, list(task.test_ids))
    fitted = fit_model(
        task.model,
        train,
        data.prompts,
        data.tile_dim,
        len(prep.sites_),
        task.settings,
        task.checkpoint_dir,
        with_student=task.with_student,
        with_plain=task.with_plain,
        inputs=_fit_inputs(data, prep),
        text=data.text,
    )
    if task.checkpoint_dir is not None:
        _write_preprocessor(prep, task.checkpoint_dir)
    pred_z = {name: predict(model, test) for name, model in fitted.items()}
    return TaskResult(
        key=task.key,
        test_ids=list(task.test_ids),
        predictions_z=pred_z,
        predictions={name: prep.inverse_targets(z) for name, z in pred_z.items()},
        y_z=test.y,
        seconds=round(time.perf_counter() - started, 2),
    )


# ------------------------------------------------------------------------------- the pool
def run_tasks(
    tasks: Iterable[FitTask],
    data: StudyData,
    workers: int,
    harmonise: bool = True,
    icc_threshold: float | None = 0.75,
    on_result: Callable[[TaskResult], list[FitTask]] | None = None,
    progress: bool = False,
    description: str = "model fits",
    planned: int = 0,
) -> dict[tuple, TaskResult]:
    """Run ``tasks`` (and those ``on_result`` returns as results arrive) and return every
    result by key. ``workers`` ≤ 1 runs them here, in order, with torch's own thread count;
    otherwise in ``workers`` spawned processes with one torch thread each. The queue is ordered
    by (priority, cost), highest first; at most ``workers`` tasks are in flight, so a task
    queued later with a higher priority starts at the next free slot. ``progress`` shows a bar
    over the tasks; ``planned`` tasks that ``on_result`` will add are in its total from the
    start, so the total grows only if more than those arrive."""
    from ..executors import progress_bar

    queue = list(tasks)
    results: dict[tuple, TaskResult] = {}
    first = len(queue)
    total, added = first + planned, 0
    bar = progress_bar(progress)
    bar_task = bar.add_task(description, total=total)

    def take() -> FitTask:
        best = max(range(len(queue)), key=lambda i: (queue[i].priority, queue[i].cost))
        return queue.pop(best)

    def finish(result: TaskResult) -> None:
        nonlocal total, added
        results[result.key] = result
        more = on_result(result) if on_result is not None else []
        queue.extend(more)
        added += len(more)
        total = first + max(planned, added)
        bar.update(bar_task, total=total, advance=1)
        event(
            log,
            "task done",
            logging.DEBUG if progress else logging.INFO,  # the bar already shows it
            task=list(map(str, result.key)),
            seconds=result.seconds,
            done=len(results),
            of=total,
        )

    if workers <= 1:
        saved = dict(_WORKER)
        _init_worker(data, harmonise, icc_threshold, None)
        try:
            with bar:
                while queue:
                    finish(execute(take()))
        finally:
            _WORKER.clear()
            _WORKER.update(saved)
        return results

    import multiprocessing as mp
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    with (
        ProcessPoolExecutor(
            workers,
            mp_context=mp.get_context("spawn"),
            initializer=_init_worker,
            initargs=(data, harmonise, icc_threshold, 1, os.getpid()),
        ) as pool,
        bar,
    ):
        running = set()
        while queue or running:
            while queue and len(running) < workers:
                running.add(pool.submit(execute, take()))
            done, running = wait(running, return_when=FIRST_COMPLETED)
            for future in done:
                finish(future.result())
    return results
