"""Per-patient radiomics extraction time and the speed-up from running patients in parallel.

    python benchmarks/radiomics_parallel.py --manifest runs/demo/cohort/cohort.csv \
        [--patients 8] [--config configs/radiomics_demo.yaml] [--workers 2]

Runs the same patients twice (fresh output directories, stability off, no site check): once in
one process, once in ``--workers`` processes, and prints both wall times, the median per-patient
time and the ratio, all measured in this one run.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import pandas as pd

from stromalens.config import load_config
from stromalens.executors import default_workers
from stromalens.radiology.runner import run_radiomics
from stromalens.radiology.settings import RadiomicsConfig


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--manifest", type=Path, required=True)
    parser.add_argument("--patients", type=int, default=8)
    parser.add_argument("--config", type=Path, default=Path("configs/radiomics_demo.yaml"))
    parser.add_argument("--workers", type=int, default=default_workers())
    args = parser.parse_args()

    config = load_config(args.config, RadiomicsConfig)
    config = config.model_copy(
        update={"stability": config.stability.model_copy(update={"enabled": False})}
    )
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        frame = pd.read_csv(args.manifest, dtype=str, keep_default_na=False)
        base = args.manifest.resolve().parent
        for col in ("mri_t1", "mri_t2", "mri_ce", "mri_mask"):
            frame[col] = [str(base / v) if v else "" for v in frame[col]]
        subset = tmp / "subset.csv"
        frame.head(args.patients).to_csv(subset, index=False)
        timings = {}
        for workers in (1, args.workers):
            started = time.perf_counter()
            run_radiomics(
                subset, tmp / f"w{workers}", config, workers=workers, progress=False, check=False
            )
            timings[workers] = time.perf_counter() - started
            status = pd.read_csv(tmp / f"w{workers}" / "patients.csv")
            print(
                f"workers={workers}: {timings[workers]:.1f} s for {len(status)} patients "
                f"({timings[workers] / len(status):.1f} s/patient wall; median per-patient "
                f"compute {status['seconds'].median():.1f} s)"
            )
    print(f"speed-up with {args.workers} workers: {timings[1] / timings[args.workers]:.2f}×")


if __name__ == "__main__":
    main()
