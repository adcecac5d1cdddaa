"""Planted statistics of the latent biology and the clinical outcomes."""

import numpy as np
import pandas as pd
import pytest

from stromalens.synthetic import biology

N = 4000  # large enough that sampling error is small; the tables take well under a second


@pytest.fixture(scope="module")
def patients() -> pd.DataFrame:
    return biology.simulate_patients(N, seed=11)


def test_latent_correlations_match_the_study_within_sampling_error(patients):
    r = np.corrcoef(patients[["a", "b", "h"]].to_numpy().T)
    target = biology.LATENT_CORRELATION
    for i, j in [(0, 1), (0, 2), (1, 2)]:
        # Fisher z: SE = 1/sqrt(n-3); allow 4 SE.
        z_diff = abs(np.arctanh(r[i, j]) - np.arctanh(target[i, j]))
        assert z_diff < 4 / np.sqrt(N - 3), (i, j, r[i, j])
    assert abs(np.corrcoef(patients["u"], patients["a"])[0, 1]) < 4 / np.sqrt(N)


def test_latent_correlations_are_the_study_targets_corrected_for_attenuation():
    """The study's Fig. 1 target correlations, and latents at least as correlated (measuring
    a latent through a target attenuates r) in a positive-definite matrix."""
    study = biology.STUDY_TARGET_CORRELATION
    assert study[0, 1] == pytest.approx(0.48)
    assert study[0, 2] == pytest.approx(0.20)
    assert study[1, 2] == pytest.approx(0.27)
    latent = biology.LATENT_CORRELATION
    assert (latent >= study).all() and np.allclose(latent, latent.T)
    assert np.linalg.eigvalsh(latent).min() > 0.05


@pytest.mark.parametrize(
    ("event", "coefficients"),
    [
        ("os_event", biology.OS_COEFFICIENTS),
        ("progression_event", biology.PROGRESSION_COEFFICIENTS),
    ],
)
def test_cox_fit_on_true_covariates_recovers_the_planted_coefficients(
    patients, event, coefficients
):
    """lifelines' Cox fit (checked against R survival::coxph in lifelines' own suite) recovers
    every planted log-hazard ratio within 4 standard errors. For progression, death before
    progression censors (cause-specific hazard); its time is the PFS time."""
    from lifelines import CoxPHFitter

    x = biology.survival_covariates(patients)
    time_col = "os_time" if event == "os_event" else "pfs_time"
    x["time"] = patients[time_col]
    x["event"] = patients[event]
    fit = CoxPHFitter().fit(x, "time", "event")
    for name, beta in coefficients.items():
        estimate, se = fit.params_[name], fit.standard_errors_[name]
        assert abs(estimate - beta) < 4 * se, (name, estimate, beta, se)
    # Direction of the study's findings: a, b harmful; h protective.
    assert fit.params_["a"] > 0 and fit.params_["b"] > 0 and fit.params_["h"] < 0


def test_outcomes_are_well_formed(patients):
    assert (patients[["os_time", "pfs_time"]] >= 0).all().all()
    assert set(patients["os_event"].unique()) <= {0, 1}
    assert (patients["pfs_time"] <= patients["os_time"] + 1e-9).all()
    # An OS event without a PFS event is impossible (death ends progression-free survival).
    assert not ((patients["os_event"] == 1) & (patients["pfs_event"] == 0)).any()
    assert 0.15 < patients["os_event"].mean() < 0.6  # censoring is present but not total


def test_response_depends_on_crosstalk(patients):
    from scipy.stats import pointbiserialr

    r, p = pointbiserialr(patients["response"], patients["b"])
    assert r < -0.1 and p < 1e-6


def test_sites_have_unequal_sizes_and_own_effects():
    sites = biology.allocate_sites(126)
    counts = pd.Series(sites).value_counts().sort_index()
    assert counts.to_dict() == {"A": 39, "B": 31, "C": 24, "D": 19, "E": 13}
    effects = [biology.make_site_effects(s, seed=0) for s in biology.SITES]
    assert len({e.mri_spacing for e in effects}) == 5
    assert len({e.stain_h for e in effects}) == 5
    for e in effects:
        assert e.mri_spacing[2] > e.mri_spacing[0]  # anisotropic: thick slices
        assert np.linalg.norm(e.stain_h) == pytest.approx(1.0)
    # Fixed per seed, independent of which other sites exist.
    assert biology.make_site_effects("C", 0) == biology.make_site_effects("C", 0)


def test_deterministic_for_a_seed():
    a = biology.simulate_patients(50, seed=4)
    b = biology.simulate_patients(50, seed=4)
    c = biology.simulate_patients(50, seed=5)
    pd.testing.assert_frame_equal(a, b)
    assert not np.allclose(a["a"], c["a"])


def test_rejects_an_empty_cohort():
    with pytest.raises(ValueError, match="n_patients"):
        biology.simulate_patients(0, seed=0)
