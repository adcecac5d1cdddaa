"""Shared fixtures: small synthetic cohorts generated once per test session (per xdist worker)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Commands the tests start write UTF-8 whatever the machine's locale (CI may run in "C").
os.environ.setdefault("PYTHONUTF8", "1")

from stromalens.config import MissingRates, SlideConfig, SynthConfig

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"

#: Small slides keep the fixtures fast; everything else is the default generator.
SMALL_SLIDES = SlideConfig(width=2048, height=1536)


def synthetic_rna(n: int, seed: int):
    """``(patients, tpm)`` of ``n`` synthetic patients: the generator's latents and their RNA
    (TPM, samples × genes, sample ids = patient ids), as the cohort generator draws them."""
    from stromalens.synthetic import biology, expression

    patients = biology.simulate_patients(n, seed=seed)
    patients["rna_sample"] = list(patients.index)
    fractions = expression.simulate_fractions(patients, seed=seed)
    batch = {s: biology.make_site_effects(s, 0).rna_batch_sd for s in biology.SITES}
    _, tpm = expression.simulate_expression(patients, fractions, batch, seed=seed)
    return patients, tpm.T


def small_config(**overrides) -> SynthConfig:
    settings = {
        "patients": 10,
        "seed": 3,
        "slide": SMALL_SLIDES,
        # High rates so the fixture has missing modalities to check.
        "missing": MissingRates(wsi=0.2, mri_t1=0.1, mri_t2=0.1, mri_ce=0.3),
        "workers": 1,
    }
    return SynthConfig(**(settings | overrides))


@pytest.fixture(scope="session")
def small_cohort(tmp_path_factory) -> Path:
    """A 10-patient development cohort; returns its manifest path."""
    from stromalens.synthetic import generate_cohort

    return generate_cohort(tmp_path_factory.mktemp("cohort"), small_config(), progress=False)


@pytest.fixture(scope="session")
def external_cohort(tmp_path_factory) -> Path:
    """A 4-patient external (WSI-only) cohort; returns its manifest path."""
    from stromalens.synthetic import generate_cohort

    return generate_cohort(
        tmp_path_factory.mktemp("external"),
        small_config(patients=4, external=True, missing=MissingRates(wsi=0.0)),
        progress=False,
    )
