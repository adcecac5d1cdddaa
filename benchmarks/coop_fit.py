"""Cost of CoOp's pass through the frozen text tower: one fit of ``clip_mil_coop`` against one
fit of ``clip_mil`` (CUR: cached text embeddings), side by side on the same data.

The data are the demo's shapes: 80 training patients, bags of 600 tiles of the synthetic CLIP's
width (128), the study's prompt banks (3 targets × 3 curated prompts), the demo's settings
(10 + 30 epochs, 256 tiles per bag per step, hidden 32). The text tower is the synthetic
CLIP's (trained weights when cached, else random: the cost does not depend on them)::

    python benchmarks/coop_fit.py [--repeats 3]

Prints each fit's seconds (median of the repeats) and the ratio CoOp / CUR. The tiles are
random: this measures time, not accuracy.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]


def study(n: int = 80, tiles: int = 600, seed: int = 0):
    from stromalens.names import TARGETS
    from stromalens.training.data import StudyData, prompt_embeddings

    weights = None
    from stromalens.wsi.encoders import default_synthclip_weights

    if not default_synthclip_weights().is_file():
        weights = "random"
    prompts = prompt_embeddings(ROOT / "configs" / "prompts", "synthclip", weights)
    rng = np.random.default_rng(seed)
    patients = [f"P{i:03d}" for i in range(n)]
    d = prompts.shape[2]
    bags = {p: rng.normal(size=(tiles, d)).astype(np.float32) for p in patients}
    targets = pd.DataFrame(rng.normal(size=(n, 3)), index=patients, columns=list(TARGETS))
    data = StudyData(
        patients=patients,
        sites=np.array(["A", "B"] * (n // 2)),
        bags=bags,
        radiomics=pd.DataFrame(index=patients),
        targets=targets,
        prompts=prompts,
    )
    return data, weights


def main() -> None:
    import torch

    from stromalens.training import TrainSettings, fit_model
    from stromalens.training.data import FoldPreprocessor, coop_text_tower

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    data, weights = study()
    data.text = coop_text_tower(ROOT / "configs" / "prompts", "synthclip", weights)
    settings = TrainSettings(
        hidden=32, epochs_stage1=10, epochs_stage2=30, max_tiles=256, batch_size=32
    )
    prep = FoldPreprocessor(harmonise=False).fit(data, data.patients)
    arrays = prep.transform(data, data.patients)
    seconds = {"clip_mil": [], "clip_mil_coop": []}
    for _ in range(args.repeats):
        for name in seconds:  # alternated, so load changes hit both alike
            start = time.perf_counter()
            fit_model(name, arrays, data.prompts, arrays.tile_dim, 2, settings, text=data.text)
            seconds[name].append(time.perf_counter() - start)
    cur, coop = (statistics.median(seconds[n]) for n in ("clip_mil", "clip_mil_coop"))
    print(f"text tower: {data.text.config}")
    print(f"fit seconds (median of {args.repeats}): CUR {cur:.2f}, CoOp {coop:.2f}")
    print(f"ratio CoOp / CUR: {coop / cur:.2f}")


if __name__ == "__main__":
    main()
