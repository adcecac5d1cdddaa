"""A tiny study on the shared 10-patient synthetic cohort (random-weight encoder, tiny
settings): every stage of ``stromalens run`` in seconds, not a meaningful study."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]

#: Tiny radiomics: original image, two feature classes, no N4, 2 perturbations of each patient.
TINY_RADIOMICS = {
    "preprocess": {"n4": {"enabled": False}, "crop_margin_mm": 5},
    "extraction": {
        "imageType": {"Original": {}},
        "featureClass": {"firstorder": [], "glcm": []},
        "setting": {"binCount": 8},
    },
    "stability": {"perturbations": 2, "patients": None},
    "harmonisation_check": {"enabled": False},
    "workers": 1,
}

TINY_TRAINING = {
    "prompts": str(ROOT / "configs" / "prompts"),
    "folds": 2,
    "inner_folds": 2,
    "grid": {"tau": [0.25, 1.0]},
    "leave_site_out": False,
    "harmonise": False,  # 10 patients over 5 sites: a training fold may hold one of a site
    "workers": 1,
    "max_tiles": 64,
    "settings": {
        "hidden": 16,
        "epochs_stage1": 1,
        "epochs_stage2": 1,
        "epochs_stage3": 1,
        "epochs_distill": 1,
        "epochs_baseline": 1,
        "max_tiles": 16,
    },
}


def tiny_study(manifest: Path, **overrides) -> dict:
    """The study dict of a tiny study on the cohort of ``manifest``."""
    data = {
        "name": "tiny test study",
        "cohort": {
            "manifest": str(manifest),
            "expression": str(manifest.parent / "rnaseq" / "tpm.tsv"),
        },
        "targets": {
            "signature": str(manifest.parent / "rnaseq" / "signature.tsv"),
            "mrna_scaling": str(manifest.parent / "rnaseq" / "mrna_content.tsv"),
        },
        "wsi": {"weights": "random", "executor": "local", "batch_size": 32},
        "radiomics": {"settings": TINY_RADIOMICS, "workers": 1},
        "training": TINY_TRAINING,
        "evaluation": {"n_boot": 100, "repeats": 1, "max_overlays": 1},
    }
    for key, value in overrides.items():
        data[key] = value
    return data


def write_study(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


@pytest.fixture
def tiny(small_cohort) -> dict:
    return tiny_study(small_cohort)
