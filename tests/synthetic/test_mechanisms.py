"""Each planted mechanism's switch changes what it should in the generated data, and its null
leaves it out (issue 17, item 1). Small renders and large tables only: each test is fast."""

import json

import numpy as np
import pandas as pd
import pytest

from stromalens.config import MechanismsConfig
from stromalens.synthetic import annotations, biology, expression, mechanisms, mri, slides
from stromalens.synthetic.cohort import _slide_biology

from ._render import small_slide

N = 4000


def test_null_switches_every_mechanism_off():
    null = mechanisms.planted(MechanismsConfig().null())
    assert not null.sparse_evidence and not null.external_visible
    assert null.annotation_margin_um is None
    for size in ("reliability_contrast", "site_strength", "site_biology_shift"):
        assert getattr(null, size) == 0.0
    assert null.survival_scale == null.interaction == null.density_caption_rate == 0.0
    on = mechanisms.planted()
    assert on.sparse_evidence and on.interaction == 0.8 and on.site_biology_shift == 0.3


# --------------------------------------------------------------------- (a) sparse evidence
def _fibroblast_density(latent_a: float, sparse: bool, seed=(4, 5, 6)):
    """Fibroblasts per label px inside and outside the hotspots of one small slide."""
    patients = biology.simulate_patients(1, seed=0)
    patients[["a", "b", "h"]] = 0.0
    fractions = expression.simulate_fractions(patients, seed=0).iloc[0]
    spec = slides.EvidenceSpec(share=0.2, per_a=0.5, per_b=0.3, sparse=sparse)
    geometry = slides.SlideGeometry(width=1536, height=1024)
    out = slides.render_slide(
        fractions,
        {"a": latent_a, "b": 0.0, "h": 0.0},
        biology.make_site_effects("A", 0),
        geometry,
        list(seed),
        artefact_probability={"fold": 0, "blur": 0, "pen": 0},
        evidence=spec,
    )
    ds = geometry.label_downsample
    fib = out.cells[out.cells["kind"] == "fibroblast"]
    hot_at = out.evidence[fib["y"] // ds, fib["x"] // ds].astype(bool)
    stroma = out.labels == 1
    hot = out.evidence.astype(bool)
    assert not (hot & ~stroma).any()  # hotspots lie in stroma
    assert abs(hot.sum() / stroma.sum() - 0.2) < 0.02  # the planted share
    return hot_at.sum() / hot.sum(), (~hot_at).sum() / (stroma & ~hot).sum()


def test_sparse_evidence_shows_a_only_in_hotspots():
    inside_hi, outside_hi = _fibroblast_density(1.5, sparse=True)
    inside_lo, outside_lo = _fibroblast_density(-1.5, sparse=True)
    # inside: gain 0.5·a on the share of occupied grid points; outside: unchanged by a
    assert inside_hi - inside_lo > 2.0 * (outside_hi - outside_lo) + 1e-3
    assert abs(outside_hi - outside_lo) < 0.15 * outside_lo


def test_diffuse_null_spreads_the_same_mean_evenly():
    inside_hi, outside_hi = _fibroblast_density(1.5, sparse=False)
    inside_lo, outside_lo = _fibroblast_density(-1.5, sparse=False)
    assert abs(inside_hi - outside_hi) < 0.15 * outside_hi  # no hotspot contrast
    assert outside_hi > outside_lo  # a still raises the density, evenly


def test_outside_the_hotspots_neither_a_nor_b_changes_the_slide():
    spec = slides.EvidenceSpec(share=0.2, per_a=0.5, per_b=0.3, sparse=True)
    low = small_slide(spec, {"a": -2.0, "b": -2.0, "h": 0.0})
    high = small_slide(spec, {"a": 2.0, "b": 2.0, "h": 0.0})
    assert np.array_equal(low.evidence, high.evidence) and np.array_equal(low.labels, high.labels)

    def cells_outside(r):
        c = r.cells
        inside = r.evidence[c["y"] // 4, c["x"] // 4].astype(bool)
        return c.loc[~inside, ["x", "y", "kind"]].reset_index(drop=True)

    # the same cells outside the hotspots, cell for cell (no slide-wide exclusion, no CAF excess)
    pd.testing.assert_frame_equal(cells_outside(low), cells_outside(high))
    assert len(low.exclusion_points) == len(high.exclusion_points)
    # and inside them, more fibroblasts and stromal lymphocytes with a and b
    for kind in ("fibroblast", "lymphocyte"):
        counts = [
            (r.cells["kind"] == kind)[
                r.evidence[r.cells["y"] // 4, r.cells["x"] // 4].astype(bool)
            ].sum()
            for r in (low, high)
        ]
        assert counts[1] > 1.3 * counts[0], (kind, counts)


def test_without_evidence_gains_sparse_and_diffuse_render_the_same_slide():
    # K = 0: per_a = per_b = 0, so the latents leave no trace anywhere, sparse or diffuse
    renders = [
        small_slide(
            slides.EvidenceSpec(share=0.2, per_a=0.0, per_b=0.0, sparse=sparse),
            {"a": a, "b": a, "h": 0.0},
        ).rgb
        for a, sparse in ((-2.0, True), (2.0, True), (2.0, False))
    ]
    assert all(np.array_equal(renders[0], r) for r in renders[1:])


def test_the_slides_fractions_do_not_follow_a_but_the_rnas_do():
    patients = biology.simulate_patients(N, seed=3)
    planted = mechanisms.planted(MechanismsConfig().null())
    _, slide_f = _slide_biology(patients, 3, planted, external=False)
    rna_f = expression.simulate_fractions(patients, 3)
    assert abs(np.corrcoef(slide_f["CAF"], patients["a"])[0, 1]) < 4 / np.sqrt(N)
    assert np.corrcoef(rna_f["CAF"], patients["a"])[0, 1] > 0.3
    # the same tumours: at a = 0 the two compositions coincide, and the immune side always does
    immune = list(expression.IMMUNE_TYPES)
    at_zero = patients.assign(a=0.0)
    pd.testing.assert_frame_equal(
        _slide_biology(at_zero, 3, planted, external=False)[1],
        expression.simulate_fractions(at_zero, 3),
    )
    np.testing.assert_allclose(
        (slide_f[immune].T / slide_f[immune].sum(axis=1)).T,
        (rna_f[immune].T / rna_f[immune].sum(axis=1)).T,
    )


# ------------------------------------------------------------- (b) modality reliability
def test_reliability_factors_degrade_one_modality_per_location():
    assert mechanisms.reliability_factors("skull_base", 0.4) == (pytest.approx(0.6), 1.0)
    assert mechanisms.reliability_factors("sacrum", 0.4) == (1.0, pytest.approx(0.6))
    assert mechanisms.reliability_factors("mobile_spine", 0.4) == (
        pytest.approx(0.8),
        pytest.approx(0.8),
    )
    assert mechanisms.reliability_factors("sacrum", 0.0) == (1.0, 1.0)
    with pytest.raises(ValueError, match="unknown location"):
        mechanisms.reliability_factors("thorax", 0.4)


def test_mri_visibility_follows_the_stratum_scale():
    rng = np.random.default_rng(0)
    lat = rng.standard_normal((N, 3))
    nu = rng.standard_normal((N, 3))
    for scale in (1.0, 0.6):
        seen = np.array(
            [
                list(mri.mri_visible_latents(dict(zip("abh", x, strict=True)), n, scale).values())
                for x, n in zip(lat, nu, strict=True)
            ]
        )
        r = np.corrcoef(lat[:, 0], seen[:, 0])[0, 1]
        # E r = ρ·scale (both unit variance); 4 SE of r at N = 4000
        assert abs(r - scale * mri.MRI_VISIBILITY["a"]) < 4 * (1 - r**2) / np.sqrt(N)
    with pytest.raises(ValueError, match="rho_scale"):
        mri.mri_visible_latents({"a": 0, "b": 0, "h": 0}, np.zeros(3), 1.5)


# ---------------------------------------------------------------- (c) site confounding
def test_site_strength_zero_makes_every_site_the_reference():
    effects = [biology.make_site_effects(s, 0, strength=0.0) for s in biology.SITES]
    for field in ("mri_scale", "mri_offset", "stain_h", "stain_e", "stain_intensity"):
        assert len({getattr(e, field) for e in effects}) == 1, field
    assert all(e.rna_batch_sd == 0 for e in effects)
    full = [biology.make_site_effects(s, 0) for s in biology.SITES]
    assert len({e.stain_h for e in full}) == len(full)


def test_referral_shift_moves_site_means_of_a_and_null_does_not():
    shifts = mechanisms.site_mean_shifts(biology.SITES, 0.3)
    assert shifts["A"] == pytest.approx(0.3) and shifts["E"] == pytest.approx(-0.3)
    planted = biology.simulate_patients(N, seed=2, site_shifts=shifts)
    null = biology.simulate_patients(N, seed=2)
    gap = planted.groupby("site")["a"].mean() - null.groupby("site")["a"].mean()
    for site, shift in shifts.items():
        assert gap[site] == pytest.approx(shift, abs=1e-9)  # same draws, shifted means
    # under the null the site means of a differ by sampling error only (4 SE)
    means = null.groupby("site")["a"].agg(["mean", "count"])
    assert (means["mean"].abs() < 4 / np.sqrt(means["count"])).all()


# --------------------------------------------------------------- (d) fibrosis annotation
def test_fibrosis_region_hugs_the_hotspots_and_tightens_with_grade():
    labels = np.ones((200, 300), np.uint8)
    hot = np.zeros_like(labels)
    hot[90:110, 140:160] = 1
    areas = []
    for grade in range(4):
        margin = mechanisms.annotation_margin_px(200.0, grade, mpp=0.5)
        region = annotations.fibrosis_region(labels, hot, margin, downsample=4)
        assert region[hot > 0].all()
        areas.append(int(region.sum()))
    assert areas == sorted(areas, reverse=True) and areas[-1] < areas[0] / 3
    doc = annotations.annotation_features(labels, 4, np.zeros((0, 2)), region)
    (feature,) = doc["features"]
    xs = np.concatenate(
        [np.asarray(r)[:, 0] for p in feature["geometry"]["coordinates"] for r in p]
    )
    assert xs.min() > 140 * 4 - 150 and xs.max() < 160 * 4 + 150  # around the hotspot only
    with pytest.raises(ValueError, match="grade"):
        mechanisms.annotation_margin_px(200.0, 4, 0.5)


# ----------------------------------------------------------------------- (e) outcomes
def _rt_interaction(df: pd.DataFrame) -> float:
    """The b × RT coefficient of a logistic response model (statsmodels Logit, the same MLE as
    R's glm(response ~ b + b:rt + a + treatment, family = binomial))."""
    import statsmodels.formula.api as smf

    data = df.assign(rt=df["treatment"].isin(["RT", "surgery+RT"]).astype(float))
    # rt's main effect is a sum of treatment dummies: left out, the design has full rank.
    fit = smf.logit("response ~ b + b:rt + a + C(treatment)", data).fit(disp=0)
    return float(fit.params["b:rt"]), float(fit.bse["b:rt"])


def test_treatment_interaction_is_planted_and_null_is_zero():
    est, se = _rt_interaction(biology.simulate_patients(N, seed=8, interaction=0.8))
    assert abs(est - -0.8) < 4 * se
    est, se = _rt_interaction(biology.simulate_patients(N, seed=8, interaction=0.0))
    assert abs(est) < 4 * se


def test_survival_scale_zero_removes_the_latents_from_the_hazard():
    from lifelines import CoxPHFitter

    patients = biology.simulate_patients(N, seed=9, survival_scale=0.0)
    x = biology.survival_covariates(patients)
    fit = CoxPHFitter().fit(x.assign(t=patients["os_time"], e=patients["os_event"]), "t", "e")
    for name in "abh":
        assert abs(fit.params_[name]) < 4 * fit.standard_errors_[name], name
    assert fit.params_["log_volume"] > 4 * fit.standard_errors_["log_volume"]  # clinical kept


# ----------------------------------------------------------------- (f) external null
def test_external_null_renders_slides_from_independent_latents():
    patients = biology.simulate_patients(N, seed=3, sites=("X",), site_shares=(1.0,))
    fractions = expression.simulate_fractions(patients, 3)
    visible = mechanisms.planted()
    same, same_f = _slide_biology(patients, 3, visible, external=True)
    assert same is patients
    pd.testing.assert_frame_equal(same_f, expression.simulate_fractions(patients, 3, with_a=False))
    null = mechanisms.planted(MechanismsConfig().null())
    decoy, decoy_f = _slide_biology(patients, 3, null, external=True)
    assert list(decoy.index) == list(patients.index)
    r = np.corrcoef(decoy["a"], patients["a"])[0, 1]
    assert abs(r) < 4 / np.sqrt(N)
    assert abs(np.corrcoef(decoy_f["CAF"], fractions["CAF"])[0, 1]) < 4 / np.sqrt(N)
    # the development cohort is never decoupled, whatever the switch
    assert _slide_biology(patients, 3, null, external=False)[0] is patients


# ------------------------------------------------------------------ the written cohort
def test_cohort_records_the_planted_mechanisms_and_hotspot_maps(small_cohort):
    folder = small_cohort.parent
    meta = json.loads((folder / "synth.json").read_text())
    assert meta["mechanisms"] == mechanisms.planted().as_dict()
    truth = pd.read_parquet(folder / "truth.parquet")
    for col in ("location", "treatment", "wsi_gain", "mri_rho_scale"):
        assert col in truth
    assert any((folder / "wsi").glob("*.evidence.png"))
