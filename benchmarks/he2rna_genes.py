"""Cost of HE2RNA's gene layer: one ``he2rna`` fit with a gene table of G genes (the targets
stage's panel: 208 genes on the synthetic cohort) against one without (tiles → targets),
side by side on the same data.

The data are the demo's shapes: 80 training patients, bags of 600 tiles of width 128, the
demo's settings (30 epochs, 256 tiles per bag per step, hidden 32)::

    python benchmarks/he2rna_genes.py [--genes 208] [--repeats 3]

Prints each fit's seconds (median of the repeats) and the ratio with / without genes. The
tiles are random: this measures time, not accuracy.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import pandas as pd


def study(n: int = 80, tiles: int = 600, d: int = 128, genes: int = 208, seed: int = 0):
    from stromalens.names import TARGETS
    from stromalens.training.data import StudyData

    rng = np.random.default_rng(seed)
    patients = [f"P{i:03d}" for i in range(n)]
    return StudyData(
        patients=patients,
        sites=np.array(["A", "B"] * (n // 2)),
        bags={p: rng.normal(size=(tiles, d)).astype(np.float32) for p in patients},
        radiomics=pd.DataFrame(index=patients),
        targets=pd.DataFrame(rng.normal(size=(n, 3)), index=patients, columns=list(TARGETS)),
        genes=pd.DataFrame(rng.normal(5, 1, size=(n, genes)), index=patients),
    )


def main() -> None:
    import torch

    from stromalens.training import TrainSettings, fit_model
    from stromalens.training.data import FoldPreprocessor

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--genes", type=int, default=208)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    data = study(genes=args.genes)
    settings = TrainSettings(hidden=32, epochs_baseline=30, max_tiles=256, batch_size=32)
    prep = FoldPreprocessor(harmonise=False).fit(data, data.patients)
    with_genes = prep.transform(data, data.patients)
    without = prep.transform(data, data.patients)
    without.genes = None
    seconds = {"genes": [], "none": []}
    for _ in range(args.repeats):
        for key, arrays in (("genes", with_genes), ("none", without)):  # alternated
            start = time.perf_counter()
            fit_model("he2rna", arrays, None, 128, 2, settings)
            seconds[key].append(time.perf_counter() - start)
    genes, none = (statistics.median(seconds[k]) for k in ("genes", "none"))
    print(
        f"fit seconds (median of {args.repeats}): {args.genes} genes {genes:.2f}, none {none:.2f}"
    )
    print(f"ratio with / without the gene layer: {genes / none:.2f}")


if __name__ == "__main__":
    main()
