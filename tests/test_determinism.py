"""The same inputs and seed give the same results whatever the machine's load (issue 17).

The quick demo runs twice in fresh processes, the second while other processes keep every core
busy. Nothing in stromalens is bounded by wall time (the synthetic CLIP trains a fixed number of
steps, every fit a fixed number of epochs), so every metric that is not a timing or run
provenance (:func:`stromalens.evaluation.schema.is_timing`) must be identical, bit for bit.
"""

from __future__ import annotations

import json
import math
import multiprocessing as mp
import os
import subprocess
import sys
from pathlib import Path

import pytest

from stromalens.evaluation.schema import is_timing


def _burn(stop) -> None:  # pragma: no cover - runs in a child process
    x = 0.0
    while not stop.is_set():
        for i in range(100_000):
            x += math.sqrt(i)


def _quick_demo(out: Path) -> dict:
    script = Path(sys.executable).parent / "stromalens"
    done = subprocess.run(
        [str(script), "demo", "--quick", "--out", str(out)],
        capture_output=True,
        encoding="utf-8",
        env=os.environ,
        timeout=1800,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    metrics = json.loads((out / "train" / "evaluation" / "metrics.json").read_text())
    return dict(_flat(metrics))


def _flat(tree: dict, prefix: str = ""):
    for key, value in tree.items():
        name = f"{prefix}.{key}" if prefix else key
        if isinstance(value, dict):
            yield from _flat(value, name)
        else:
            yield name, value


@pytest.mark.slow  # two quick demos: several minutes on 2 cores
def test_the_quick_demo_gives_identical_metrics_under_cpu_load(tmp_path):
    quiet = _quick_demo(tmp_path / "quiet")
    ctx = mp.get_context("spawn")
    stop = ctx.Event()
    burners = [ctx.Process(target=_burn, args=(stop,)) for _ in range(os.cpu_count() or 2)]
    for p in burners:
        p.start()
    try:
        loaded = _quick_demo(tmp_path / "loaded")
    finally:
        stop.set()
        for p in burners:
            p.join(timeout=10)
    keys = sorted(k for k in quiet.keys() | loaded.keys() if not is_timing(k))
    assert keys, "no metric compared"
    # json.dumps: NaN (a metric that cannot be computed) equals NaN, and 1 differs from 1.0
    differ = [k for k in keys if json.dumps(quiet.get(k)) != json.dumps(loaded.get(k))]
    assert not differ, {k: (quiet.get(k), loaded.get(k)) for k in differ[:10]}
