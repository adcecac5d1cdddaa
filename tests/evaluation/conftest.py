"""A small but real training run with planted answers, for the evaluation tests.

Latents z = (a, b, h) per patient drive everything, as in the synthetic cohort but without
images to process: the share of each slide's tiles that lie near a target's curated prompt
(tiles of the ERS–CAF kind sit inside the annotated fibrosis region), twelve radiomics features
over three sequences, the targets (z + noise), overall survival (log-HR 0.8 per unit of h),
response (logit 1.2·b) and the pathology grades. The stage outputs are written in the
contract's layout, and ``stromalens.training.run.train_study`` trains a few models on them
(3 folds, tiny epochs), with leave-site-out runs.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
GRID = 8  # tiles per slide side
TILE = 224
MODELS = ["gated_fusion", "clip_mil", "clip_mil_none", "mri_only"]


def _geojson(fibrosis_cols: int, points: np.ndarray) -> dict:
    w = fibrosis_cols * TILE
    polygon = [[[0, 0], [w, 0], [w, GRID * TILE], [0, GRID * TILE], [0, 0]]]
    return {
        "type": "FeatureCollection",
        "features": [
            {
                "type": "Feature",
                "geometry": {"type": "MultiPolygon", "coordinates": [polygon]},
                "properties": {"objectType": "annotation", "classification": {"name": "Fibrosis"}},
            },
            {
                "type": "Feature",
                "geometry": {"type": "MultiPoint", "coordinates": points.tolist()},
                "properties": {
                    "objectType": "annotation",
                    "classification": {"name": "Immune exclusion"},
                },
            },
        ],
    }


def build_tiny_study(root: Path, n: int = 36, seed: int = 0) -> Path:
    """Write the stage outputs of a tiny cohort under ``root``; returns the study YAML path."""
    from stromalens.training.data import prompt_embeddings
    from stromalens.wsi.store import SlideFeatures, write_slide

    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    patients = [f"P{i:03d}" for i in range(n)]
    sites = np.array(["ABCD"[i % 4] for i in range(n)])
    z = rng.normal(size=(n, 3))
    prompts = prompt_embeddings(
        ROOT / "configs" / "prompts", "synthclip", "random", cache_dir=root / "prompt_cache"
    )  # (3, M, D)
    d = prompts.shape[2]
    centres = np.vstack([prompts[:, 0], rng.normal(size=(1, d))])
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)

    features = root / "features"
    (root / "annotations").mkdir(exist_ok=True)
    cols, rows_ = np.meshgrid(np.arange(GRID), np.arange(GRID))
    grid = np.stack([cols.ravel(), rows_.ravel()], 1)  # (GRID², 2) tile (col, row)
    fibrosis_cols = 3
    for i, pid in enumerate(patients):
        if i % 12 == 7:
            continue  # no slide
        share = 1 / (1 + np.exp(-z[i]))
        probs = np.append(share, 1.5) / (share.sum() + 1.5)
        kind = rng.choice(4, size=len(grid), p=probs)
        # ERS–CAF tiles (kind 0) are the fibrotic ones: they fill the fibrosis columns first
        in_fib = grid[:, 0] < fibrosis_cols
        order = np.concatenate([np.flatnonzero(in_fib), rng.permutation(np.flatnonzero(~in_fib))])
        ranked = np.concatenate([kind[kind == 0], rng.permutation(kind[kind != 0])])
        kind = np.empty_like(ranked)
        kind[order] = ranked
        feats = centres[kind] + 0.3 * rng.normal(size=(len(grid), d))
        write_slide(
            features / f"{pid}.h5",
            SlideFeatures(
                coords=grid * TILE,
                features=feats.astype(np.float32),
                qc={},
                attrs={"tile_level0_px": float(TILE), "slide_id": pid, "encoder": "synthclip"},
            ),
        )
        points = np.column_stack(
            [rng.uniform(0, fibrosis_cols * TILE, 5), rng.uniform(0, GRID * TILE, 5)]
        )
        (root / "annotations" / f"{pid}.geojson").write_text(
            json.dumps(_geojson(fibrosis_cols, points)), encoding="utf-8"
        )

    w = rng.normal(size=(3, 12))
    rad = z @ w + 0.3 * rng.normal(size=(n, 12))
    rad += np.array([rng.normal(scale=0.5, size=12) for _ in range(4)])[np.arange(n) % 4]
    columns = [f"{seq}__f{k}" for seq in ("t1", "t2", "ce") for k in range(4)]
    radiomics = pd.DataFrame(rad, index=pd.Index(patients, name="patient_id"), columns=columns)
    radiomics.iloc[5::13] = np.nan  # no MRI
    (root / "radiomics").mkdir(exist_ok=True)
    radiomics.to_parquet(root / "radiomics" / "radiomics.parquet")
    pert = []
    for i, pid in enumerate(patients):
        for p in range(2):
            pert.append(((pid, f"p{p}"), rad[i] + 0.05 * rng.normal(size=12)))
    pd.DataFrame(
        [v for _, v in pert],
        index=pd.MultiIndex.from_tuples([k for k, _ in pert], names=["patient_id", "perturbation"]),
        columns=columns,
    ).to_parquet(root / "radiomics" / "perturbations.parquet")

    targets_dir = root / "targets"
    targets_dir.mkdir(exist_ok=True)
    targets = pd.DataFrame(
        z + 0.3 * rng.normal(size=(n, 3)),
        index=pd.Index(patients, name="patient_id"),
        columns=["ers_caf", "lr", "heterogeneity"],
    )
    targets.to_parquet(targets_dir / "targets.parquet")
    (targets_dir / "reliability.json").write_text(
        json.dumps(
            {
                t: {"ceiling": 0.95, "ceiling_ci_low": 0.9, "ceiling_ci_high": 0.98}
                for t in targets.columns
            }
        ),
        encoding="utf-8",
    )

    age = rng.normal(58, 10, n).round(1)
    os_time = rng.exponential(60 * np.exp(-0.8 * z[:, 2] - 0.02 * (age - 58)))
    censor = rng.uniform(12, 120, n)
    pfs_time = rng.exponential(30 * np.exp(-0.6 * z[:, 0]))
    pfs_censor = rng.uniform(6, 90, n)
    manifest = pd.DataFrame(
        {
            "patient_id": patients,
            "site": sites,
            "age": age,
            "sex": rng.choice(["F", "M"], n),
            "location": rng.choice(["skull_base", "sacrum", "mobile_spine"], n),
            "volume_cc": np.exp(rng.normal(3, 0.5, n)).round(2),
            "os_time": np.minimum(os_time, censor).round(2),
            "os_event": (os_time <= censor).astype(int),
            "pfs_time": np.minimum(pfs_time, pfs_censor).round(2),
            "pfs_event": (pfs_time <= pfs_censor).astype(int),
            "treatment": rng.choice(["surgery", "surgery+RT"], n),
            "response": (rng.random(n) < 1 / (1 + np.exp(-1.2 * z[:, 1]))).astype(int),
            "fibrosis_grade": np.clip(np.round(1.5 + z[:, 0]), 0, 3).astype(int),
            "exclusion_grade": np.clip(np.round(1.5 + z[:, 1]), 0, 3).astype(int),
            "annotations": [
                f"annotations/{p}.geojson"
                if (root / "annotations" / f"{p}.geojson").exists()
                else ""
                for p in patients
            ],
        }
    )
    manifest.to_csv(root / "cohort.csv", index=False)
    pd.DataFrame(
        {"site": sites, "a": z[:, 0], "b": z[:, 1], "h": z[:, 2]},
        index=pd.Index(patients, name="patient_id"),
    ).to_parquet(root / "truth.parquet")

    study = {
        "cohort": {"manifest": str(root / "cohort.csv"), "check_files": False},
        "training": {
            "targets": str(targets_dir / "targets.parquet"),
            "features": str(features),
            "radiomics": str(root / "radiomics"),
            "prompts": str(ROOT / "configs" / "prompts"),
            "encoder": "synthclip",
            "encoder_weights": "random",
            "prompt_cache": str(root / "prompt_cache"),
            "models": MODELS,
            "folds": 3,
            "inner_folds": 2,
            "grid": {},
            "leave_site_out": True,
            "workers": 1,
            "settings": {
                "hidden": 8,
                "epochs_stage1": 2,
                "epochs_stage2": 8,
                "epochs_stage3": 3,
                "epochs_distill": 4,
                "epochs_baseline": 8,
            },
        },
    }
    path = root / "study.yaml"
    path.write_text(yaml.safe_dump(study), encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    """A trained run directory (3 folds, four models, leave-site-out)."""
    from stromalens.config import StudyConfig, load_config
    from stromalens.training.run import train_study

    root = tmp_path_factory.mktemp("tiny_study")
    config = build_tiny_study(root)
    train = root / "train"
    train_study(load_config(config, StudyConfig), train)
    return train
