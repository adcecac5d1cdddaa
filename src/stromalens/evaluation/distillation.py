"""Distillation (analysis 10): how much of the fusion teacher the MRI-only student keeps, and
what it costs to run each.

retention = macro-r(student) / macro-r(teacher), both out-of-fold; calibration slope of each
(observed on predicted, mean over targets); speed ratio = teacher seconds per patient / student
seconds per patient (:func:`time_inference`); memory ratio = student peak MB / teacher peak MB
(``probes.inference_cost``).

Timings are measured, not computed, so they differ between runs; their ``metrics.json`` keys
carry the part :data:`~stromalens.evaluation.schema.TIMING` (``distillation.timing.speed_ratio``)
so that a check of determinism can leave them out (:func:`~stromalens.evaluation.schema.is_timing`).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from .fidelity import calibration, finite_mean, macro_r

#: Patients per timed forward pass: the held-out patients repeated to this fixed batch, so
#: that every run times the same amount of work (a fold of 25 patients through an MLP takes
#: microseconds, which timer and scheduler noise swamp).
TIMING_BATCH = 256
#: Untimed passes first (allocator and kernel warm-up), then this many timed repeats, each of
#: enough passes to last at least 0.2 s (``timeit.Timer.autorange``); the median is kept.
TIMING_WARMUP = 2
TIMING_REPEATS = 7
#: The rows of the distillation table that are timings (metrics key part ``timing``).
TIMING_METRICS: tuple[str, ...] = (
    "teacher_seconds_per_patient",
    "student_seconds_per_patient",
    "speed_ratio",
)


def time_inference(
    model,
    arrays,
    batch: int = TIMING_BATCH,
    warmup: int = TIMING_WARMUP,
    repeats: int = TIMING_REPEATS,
) -> float:
    r"""Median seconds per patient of ``model``'s forward pass (eval mode, no gradients, one
    torch thread) on a fixed batch of ``batch`` patients (``arrays``' rows repeated).

    .. math:: t = \operatorname{median}_{r=1..R} \frac{T_r}{L\,B}

    with :math:`T_r` the wall time of repeat r, each of L passes (chosen by
    ``timeit.Timer.autorange`` to last ≥ 0.2 s) over B patients. The batch is built once, so
    only the model is timed; one thread, so a busy machine's scheduling changes it least.
    Reference: the ``timeit`` module's advice (the minimum or the median of repeats, never one
    run).
    """
    import timeit

    import torch

    from ..training.data import make_batch

    if len(arrays) == 0:
        raise ValueError("no patients to time the model on")
    inputs = make_batch(arrays, np.resize(np.arange(len(arrays)), batch))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    model.eval()
    try:
        with torch.no_grad():
            for _ in range(warmup):
                model(inputs)
            timer = timeit.Timer(lambda: model(inputs))
            loops, _ = timer.autorange()
            times = timer.repeat(repeat=repeats, number=loops)
    finally:
        torch.set_num_threads(threads)
    return float(np.median(times)) / (loops * batch)


def distillation_table(predictions: pd.DataFrame, cost: dict) -> pd.DataFrame:
    """metric, value: the teacher's and the student's macro-r and calibration, the retention,
    and the costs of ``cost`` (``probes.inference_cost``) with their speed and memory ratios."""
    teacher = predictions[predictions["model"] == "fusion"]
    student = predictions[predictions["model"] == "mri_student"]
    if teacher.empty or student.empty:
        return pd.DataFrame(columns=["metric", "value"])

    def slope(frame):
        return finite_mean(
            [
                calibration(p["y_true"].to_numpy(float), p["y_pred"].to_numpy(float))[0]
                for _, p in frame.groupby("target")
            ]
        )

    r_t, r_s = macro_r(teacher), macro_r(student)
    values = {
        "teacher_macro_r": r_t,
        "student_macro_r": r_s,
        "retention": r_s / r_t if r_t else np.nan,
        "teacher_calibration_slope": slope(teacher),
        "student_calibration_slope": slope(student),
    }
    values.update(cost)
    if cost.get("student_seconds_per_patient"):
        values["speed_ratio"] = (
            cost["teacher_seconds_per_patient"] / cost["student_seconds_per_patient"]
        )
    if cost.get("teacher_peak_mb"):
        values["memory_ratio"] = cost["student_peak_mb"] / cost["teacher_peak_mb"]
    return pd.DataFrame({"metric": list(values), "value": list(values.values())})


def distillation_metrics(table: pd.DataFrame) -> dict[str, float]:
    """``distillation.<metric>``, and ``distillation.timing.<metric>`` for the timings
    (:data:`TIMING_METRICS`)."""
    from ..rundir import metric_key
    from .schema import TIMING

    return {
        metric_key("distillation", *((TIMING,) if row.metric in TIMING_METRICS else ()),
                   row.metric): row.value
        for row in table.itertuples(index=False)
    }  # fmt: skip
