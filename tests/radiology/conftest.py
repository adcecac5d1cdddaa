"""Fixtures of the radiology tests: the shared real data and a small MRI-only synthetic cohort."""

from __future__ import annotations

from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
RADIOLOGY = SHARED_DATA / "radiology"


def require(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"shared test data not found: {path}")
    return path


@pytest.fixture(scope="session")
def mri_cohort(tmp_path_factory) -> Path:
    """Six patients with MRI only (no slides, so it is quick); returns the manifest."""
    from stromalens.config import MissingRates, SynthConfig
    from stromalens.synthetic import generate_cohort

    config = SynthConfig(
        patients=6,
        seed=5,
        missing=MissingRates(wsi=1.0, mri_t1=0.0, mri_t2=0.3, mri_ce=0.0),
        workers=1,
    )
    return generate_cohort(tmp_path_factory.mktemp("mri_cohort"), config, progress=False)
