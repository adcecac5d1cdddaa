"""Mechanism (b) degrades the whole slide of a stratum, not only its hotspots: the slide is
drawn from latents of correlation g with the patient's (and its fractions from those), and the
null (c = 0, or K = 0) leaves every slide the patient's own, bit for bit (issue 17, item 1 (b)).

Known answers: for z, z′ independent with the same correlation matrix Σ and unit variances,
z_slide = g·z + √(1 − g²)·z′ has covariance Σ and corr(z_slide_k, z_k) = g (a bivariate-normal
identity); two such views in a row have g₁·g₂. Tolerances are 4 SE of r, (1 − r²)/√N.
"""

import numpy as np
import pandas as pd
import pytest

from stromalens.config import (
    MechanismsConfig,
    MissingRates,
    ModalityReliability,
    SlideConfig,
    SynthConfig,
)
from stromalens.synthetic import biology, expression, mechanisms
from stromalens.synthetic.cohort import _slide_biology

N = 4000


def _tol(r: float) -> float:
    return 4 * (1 - r**2) / np.sqrt(N)


def _latents(seed: int = 0):
    rng = np.random.default_rng(seed)
    z = rng.multivariate_normal(np.zeros(3), biology.LATENT_CORRELATION, size=N)
    fresh = rng.multivariate_normal(np.zeros(3), biology.LATENT_CORRELATION, size=N)
    return z, fresh


def test_slide_view_has_correlation_g_and_keeps_the_distribution():
    z, fresh = _latents()
    means = np.zeros_like(z)
    means[:, 0] = np.where(np.arange(N) % 2, 0.3, -0.3)  # two sites' means of a under (c)
    view = mechanisms.slide_view(z + means, fresh, np.full(N, 0.6), means)
    for k in range(3):
        r = np.corrcoef(view[:, k] - means[:, k], z[:, k])[0, 1]
        assert abs(r - 0.6) < _tol(0.6)
    # same marginal (unit variance, site means kept) and the same correlation between latents
    np.testing.assert_allclose((view - means).std(0), 1.0, atol=4 / np.sqrt(2 * N))
    assert abs(view[means[:, 0] > 0, 0].mean() - view[means[:, 0] < 0, 0].mean() - 0.6) < 0.1
    sigma = np.corrcoef((view - means).T)
    np.testing.assert_allclose(sigma, biology.LATENT_CORRELATION, atol=4 / np.sqrt(N))


def test_slide_view_at_g_one_is_the_patient_and_views_compose():
    z, fresh = _latents(1)
    means = np.full_like(z, 0.3)
    # g = 1: bit for bit, whatever the means (μ + (z − μ) would not round-trip exactly)
    assert np.array_equal(mechanisms.slide_view(z, fresh, np.ones(N), means), z)
    other = _latents(2)[1]
    twice = mechanisms.slide_view(
        mechanisms.slide_view(z, fresh, np.full(N, 0.8), 0.0), other, np.full(N, 0.75), 0.0
    )
    r = np.corrcoef(twice[:, 0], z[:, 0])[0, 1]
    assert abs(r - 0.6) < _tol(0.6)  # 0.8 · 0.75, as K composes (1 − c)^K


def test_slide_view_refuses_bad_reliability_and_shapes():
    z = np.zeros((2, 3))
    with pytest.raises(ValueError, match=r"\[0, 1\].*1\.5"):
        mechanisms.slide_view(z, z, [1.0, 1.5])
    with pytest.raises(ValueError, match="must agree"):
        mechanisms.slide_view(z, np.zeros((3, 3)), [1.0, 1.0])


def _patients(config: MechanismsConfig, seed: int = 5):
    planted = mechanisms.planted(config)
    shifts = mechanisms.site_mean_shifts(biology.SITES, planted.site_biology_shift)
    patients = biology.simulate_patients(N, seed=seed, site_shifts=shifts)
    factors = [
        mechanisms.reliability_factors(loc, planted.reliability_contrast)
        for loc in patients["location"]
    ]
    patients["wsi_gain"] = [f[0] for f in factors]
    patients["mri_rho_scale"] = [f[1] for f in factors]
    fractions = expression.simulate_fractions(patients, seed)
    return patients, fractions, planted, shifts


def test_the_degraded_stratum_loses_c_of_the_slides_biology_and_the_reliable_keeps_it():
    patients, fractions, planted, shifts = _patients(MechanismsConfig())
    view, view_f = _slide_biology(patients, 5, planted, False, shifts)
    # the slide's composition is drawn at α·a = 0 (mechanism (a)); compare it with the RNA's
    rna_free = expression.simulate_fractions(patients, 5, with_a=False)
    mu = patients["site"].map(shifts).to_numpy()
    for location, g in (("skull_base", 0.6), ("mobile_spine", 0.8), ("sacrum", 1.0)):
        at = (patients["location"] == location).to_numpy()
        n = at.sum()
        for k in "abh":
            dev = (patients[k] - (mu if k == "a" else 0.0))[at]
            seen = (view[k] - (mu if k == "a" else 0.0))[at]
            r = np.corrcoef(dev, seen)[0, 1]
            assert abs(r - g) < 4 * (1 - g**2) / np.sqrt(n) + 1e-12, (location, k, r)
        # the log-ratio of the slide's CAF fraction to the tumour's (its stroma share and
        # density) is the RNA's composition noise, × g; it does not follow a
        lr_rna = np.log(rna_free["CAF"] / rna_free["Tumour"])[at]
        lr_slide = np.log(view_f["CAF"] / view_f["Tumour"])[at]
        r_lr = np.corrcoef(lr_rna, lr_slide)[0, 1]
        assert abs(r_lr - g) < 4 * (1 - g**2) / np.sqrt(n) + 1e-12, (location, r_lr)
        assert abs(np.corrcoef(view_f["CAF"][at], patients["a"][at])[0, 1]) < 4 / np.sqrt(n)
        # while the RNA's CAF fraction does follow a
        assert np.corrcoef(fractions["CAF"][at], patients["a"][at])[0, 1] > 0.3
    # the reliable stratum is rendered from its own latents and composition noise, bit for bit
    sacrum = (patients["location"] == "sacrum").to_numpy()
    assert np.array_equal(view.loc[sacrum, ["a", "b", "h"]], patients.loc[sacrum, ["a", "b", "h"]])
    assert np.array_equal(view_f[sacrum], rna_free[sacrum])


@pytest.mark.parametrize(
    "config",
    [
        MechanismsConfig().null(),
        MechanismsConfig(reliability=ModalityReliability(enabled=False)),
        MechanismsConfig(effect_scale=0.0),
    ],
    ids=["null", "reliability-off", "K=0"],
)
def test_the_null_renders_every_slide_from_the_patients_own_biology(config):
    patients, fractions, planted, shifts = _patients(config)
    assert (patients["wsi_gain"] == 1.0).all() and (patients["mri_rho_scale"] == 1.0).all()
    view, view_f = _slide_biology(patients, 5, planted, False, shifts)
    assert view is patients
    pd.testing.assert_frame_equal(view_f, expression.simulate_fractions(patients, 5, with_a=False))


def _tiny_cohort(folder, reliability: bool):
    from stromalens.synthetic import generate_cohort

    config = SynthConfig(
        patients=8,
        seed=2,
        slide=SlideConfig(width=512, height=512),
        missing=MissingRates(wsi=0.0, mri_t1=1.0, mri_t2=1.0, mri_ce=1.0),
        mechanisms=MechanismsConfig(reliability=ModalityReliability(enabled=reliability)),
        workers=1,
    )
    generate_cohort(folder, config, progress=False)
    return pd.read_parquet(folder / "truth.parquet")


def test_a_written_cohort_degrades_only_the_unreliable_strata_slides(tmp_path):
    truth = _tiny_cohort(tmp_path / "planted", True)
    _tiny_cohort(tmp_path / "off", False)
    locations = truth["location"]
    assert {"sacrum", "skull_base"} <= set(locations)  # seed 2 draws both
    for pid, location in locations.items():
        planted = pd.read_parquet(tmp_path / "planted" / "wsi" / f"{pid}.cells.parquet")
        off = pd.read_parquet(tmp_path / "off" / "wsi" / f"{pid}.cells.parquet")
        if location == "sacrum":  # g = 1: the same slide as without (b)
            pd.testing.assert_frame_equal(planted, off)
        else:  # g < 1: drawn from other latents
            assert not planted.equals(off), pid


def _clr(x: np.ndarray) -> np.ndarray:
    logs = np.log(x)
    return logs - logs.mean(axis=1, keepdims=True)


def test_view_weights_keep_the_mean_and_variance_and_correlate_g():
    w = mechanisms.view_weights(np.linspace(0, 1, 11))
    np.testing.assert_allclose(w.sum(1), 1.0, atol=1e-12)
    np.testing.assert_allclose((w**2).sum(1), 1.0, atol=1e-12)
    np.testing.assert_allclose(w[:, 0], np.linspace(0, 1, 11))


def test_slide_composition_mixes_the_noise_of_each_level_with_correlation_g():
    patients = biology.simulate_patients(N, seed=1)
    patients[["a", "b", "h"]] = 0.0  # no latent signal: what varies is the composition noise
    draws = [expression.simulate_fractions(patients, s) for s in (1, 2, 3)]
    gain = np.full(N, 0.6)
    gain[:10] = 1.0
    mixed = mechanisms.slide_composition(draws, gain, expression.IMMUNE_TYPES)
    assert list(mixed.columns) == list(draws[0].columns)
    np.testing.assert_allclose(mixed.sum(axis=1), 1.0, rtol=1e-12)
    assert np.array_equal(mixed.iloc[:10], draws[0].iloc[:10])  # g = 1: the first draw
    immune = list(expression.IMMUNE_TYPES)
    compartments = [c for c in mixed.columns if c not in immune]

    def levels(f):
        q = np.column_stack([f[compartments], f[immune].sum(axis=1)])
        return _clr(q), _clr(f[immune].to_numpy())

    for own, slide in zip(levels(draws[0].iloc[10:]), levels(mixed.iloc[10:]), strict=True):
        for k in range(own.shape[1]):
            r = np.corrcoef(own[:, k], slide[:, k])[0, 1]
            assert abs(r - 0.6) < _tol(0.6), (k, r)
            # the same distribution: the clr's SD of one draw (4 SE of an SD)
            assert abs(slide[:, k].std() / own[:, k].std() - 1) < 4 / np.sqrt(2 * N)
