"""The distillation's timings: measured on a fixed batch with a warm-up and the median of
repeats (``time_inference``), and kept under ``distillation.timing.*`` so that checks of
determinism can leave them out (``schema.is_timing``)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from stromalens.evaluation.distillation import (
    TIMING_BATCH,
    TIMING_METRICS,
    distillation_metrics,
    time_inference,
)
from stromalens.evaluation.schema import describe, is_timing


def _arrays(n: int = 12, r: int = 6, seed: int = 0):
    from stromalens.training.data import FoldArrays

    rng = np.random.default_rng(seed)
    return FoldArrays(
        patients=[f"P{i}" for i in range(n)],
        bags=[None] * n,
        rad=rng.normal(size=(n, r)).astype(np.float32),
        has_rad=np.ones(n, bool),
        site=np.zeros(n, int),
        y=np.zeros((n, 3)),
        y01=np.zeros((n, 3)),
        tile_dim=8,
    )


def test_time_inference_times_a_real_model_on_a_fixed_batch():
    import torch

    from stromalens.models import ModelSpec, create_model

    model = create_model("mri_only", ModelSpec(tile_dim=8, rad_dim=6, hidden=8))
    sizes = []
    model.register_forward_pre_hook(lambda m, args: sizes.append(args[0].rad.shape[0]))
    threads = torch.get_num_threads()
    seconds = time_inference(model, _arrays(n=12), repeats=3)
    assert np.isfinite(seconds) and seconds > 0
    # 12 held-out patients are repeated to the fixed batch in every pass
    assert set(sizes) == {TIMING_BATCH}
    assert len(sizes) >= 2 + 3  # the warm-up, then ≥ 1 pass per repeat
    assert torch.get_num_threads() == threads  # the thread count is restored
    assert not model.training


def test_time_inference_refuses_an_empty_fold():
    with pytest.raises(ValueError, match="no patients"):
        time_inference(object(), _arrays(n=0))


def test_timings_are_keyed_as_timings():
    table = pd.DataFrame(
        {
            "metric": ["retention", "memory_ratio", *TIMING_METRICS],
            "value": [0.9, 0.05, 0.02, 0.005, 4.0],
        }
    )
    metrics = distillation_metrics(table)
    assert set(metrics) == {
        "distillation.retention",
        "distillation.memory_ratio",
        "distillation.timing.teacher_seconds_per_patient",
        "distillation.timing.student_seconds_per_patient",
        "distillation.timing.speed_ratio",
    }
    assert [k for k in metrics if is_timing(k)] == [
        "distillation.timing.teacher_seconds_per_patient",
        "distillation.timing.student_seconds_per_patient",
        "distillation.timing.speed_ratio",
    ]
    assert all(describe(k) for k in metrics)  # every key is in the schema
    assert is_timing("meta.seconds") and not is_timing("cv.fusion.r.lr")
