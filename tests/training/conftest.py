"""A tiny feature-level study with planted signal (fast: no slides, no MRI to process)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from stromalens.training.curriculum import TrainSettings
from stromalens.training.data import TARGETS, StudyData

D = 16
#: Settings small enough for a test: every stage runs, for a few epochs.
FAST = TrainSettings(
    hidden=8,
    epochs_stage1=2,
    epochs_stage2=3,
    epochs_stage3=2,
    epochs_distill=2,
    epochs_baseline=3,
    batch_size=8,
    max_tiles=16,
)


def make_study(n: int = 36, n_sites: int = 3, seed: int = 0, missing: bool = True) -> StudyData:
    """Latents z (n, 3) drive: the share of tiles near each target's prompt direction, eight
    stable radiomics features (plus site shifts) and the targets; four radiomics features are
    unstable under perturbation (ICC ≈ 0)."""
    rng = np.random.default_rng(seed)
    patients = [f"P{i:03d}" for i in range(n)]
    sites = np.array([chr(65 + i % n_sites) for i in range(n)])
    z = rng.normal(size=(n, 3))
    prompts = rng.normal(size=(3, 2, D)).astype(np.float32)
    prompts /= np.linalg.norm(prompts, axis=-1, keepdims=True)
    background = rng.normal(size=D)
    bags = {}
    for i, pid in enumerate(patients):
        if missing and i % 9 == 4:
            continue  # no slide
        m = int(rng.integers(8, 25))
        share = 1 / (1 + np.exp(-z[i]))  # (3,)
        kind = rng.choice(4, size=m, p=np.append(share, 1.5) / (share.sum() + 1.5))
        centres = np.vstack([prompts[:, 0], background])  # (4, D)
        bags[pid] = (centres[kind] + 0.3 * rng.normal(size=(m, D))).astype(np.float32)
    site_shift = {s: rng.normal(scale=1.0, size=12) for s in set(sites)}
    w = rng.normal(size=(3, 8))
    stable = z @ w + 0.3 * rng.normal(size=(n, 8))
    unstable = rng.normal(size=(n, 4))
    rad = np.hstack([stable, unstable]) + np.array([site_shift[s] for s in sites])
    columns = [f"t1__f{k}" for k in range(12)]
    radiomics = pd.DataFrame(rad, index=patients, columns=columns)
    if missing:
        radiomics.iloc[5::11] = np.nan  # no MRI
    pert_rows = []
    for i, pid in enumerate(patients[:20]):
        for p in range(3):
            values = rad[i].copy()
            values[:8] += 0.05 * rng.normal(size=8)
            values[8:] = rng.normal(size=4) * 3
            pert_rows.append(((pid, f"p{p}"), values))
    perturbations = pd.DataFrame(
        [v for _, v in pert_rows],
        index=pd.MultiIndex.from_tuples(
            [k for k, _ in pert_rows], names=["patient_id", "perturbation"]
        ),
        columns=columns,
    )
    targets = pd.DataFrame(z + 0.2 * rng.normal(size=(n, 3)), index=patients, columns=list(TARGETS))
    return StudyData(
        patients=patients,
        sites=sites,
        bags=bags,
        radiomics=radiomics,
        targets=targets,
        prompts=prompts,
        perturbations=perturbations,
    )


@pytest.fixture
def study() -> StudyData:
    return make_study()
