"""The effect scale K (``MechanismsConfig.effect_scale``) multiplies each mechanism's size as
:mod:`stromalens.synthetic.mechanisms` defines it, in the sizes and in the generated data, and
K = 0 is the null where the null is an effect of 0 (issue 17, item 1). Fast: small renders,
large tables, one 2-patient cohort without MRI."""

import json

import numpy as np
import pandas as pd
import pydantic
import pytest

from stromalens.config import MechanismsConfig, MissingRates, SlideConfig, SynthConfig
from stromalens.evaluation import validation
from stromalens.evaluation.schema import describe
from stromalens.synthetic import biology, mechanisms, slides

from ._render import small_slide

N = 4000


def _at(k: float) -> mechanisms.Planted:
    return mechanisms.planted(MechanismsConfig(effect_scale=k))


def test_each_size_is_scaled_as_documented():
    # hand-computed from the defaults (per_a 0.5, per_b 0.3, c 0.4, strength 1, shift 0.3,
    # margin 200 µm, survival 1, interaction 0.8, caption rate 0.4):
    # c_K = 1 − 0.6^K, p_K = 1 − 0.6^K; numpy: 1 - 0.6**0.5 = 0.2254033307585166
    for k, share in ((2.0, 0.64), (0.5, 0.2254033307585166), (1.0, 0.4)):
        p = _at(k)
        assert p.effect_scale == k
        assert (p.evidence_per_a, p.evidence_per_b) == pytest.approx((0.5 * k, 0.3 * k))
        assert p.evidence_share == 0.2  # the sparsity is not a size: kept
        assert p.reliability_contrast == pytest.approx(share)
        assert p.density_caption_rate == pytest.approx(share)
        assert (p.site_strength, p.site_biology_shift) == pytest.approx((k, 0.3 * k))
        assert p.annotation_margin_um == pytest.approx(200.0 / k)  # tightness × K
        assert (p.survival_scale, p.interaction) == pytest.approx((k, 0.8 * k))
    assert _at(1.0) == mechanisms.planted()  # K = 1 is the defaults, exactly


def test_scale_zero_is_the_null_of_every_size_with_a_zero_null():
    zero, null = _at(0.0), mechanisms.planted(MechanismsConfig().null())
    for field in (
        "reliability_contrast",
        "site_strength",
        "site_biology_shift",
        "annotation_margin_um",  # None: the null's region, all the stroma
        "survival_scale",
        "interaction",
        "density_caption_rate",
    ):
        assert getattr(zero, field) == getattr(null, field), field
    # (a): no evidence gain at all, so sparse and diffuse coincide (next test)
    assert zero.evidence_per_a == zero.evidence_per_b == 0.0


def _render(spec: slides.EvidenceSpec, a: float):
    return small_slide(spec, {"a": a, "b": 0.4, "h": 0.0})


def _spec(p: mechanisms.Planted, sparse: bool = True) -> slides.EvidenceSpec:
    return slides.EvidenceSpec(p.evidence_share, p.evidence_per_a, p.evidence_per_b, sparse)


def test_scale_zero_renders_the_planted_and_the_diffuse_null_slide_alike():
    zero = _at(0.0)
    sparse, diffuse = _render(_spec(zero, True), 1.2), _render(_spec(zero, False), 1.2)
    assert np.array_equal(sparse.rgb, diffuse.rgb)
    pd.testing.assert_frame_equal(sparse.cells, diffuse.cells)
    # at K = 1 the two differ (the planted hotspots)
    one = _at(1.0)
    assert not np.array_equal(
        _render(_spec(one, True), 1.2).rgb, _render(_spec(one, False), 1.2).rgb
    )


def _hot_fibroblasts(k: float, a: float) -> int:
    out = _render(_spec(_at(k)), a)
    ds = 1536 // out.labels.shape[1]
    fib = out.cells[out.cells["kind"] == "fibroblast"]
    return int(out.evidence[fib["y"] // ds, fib["x"] // ds].sum())


def test_scale_multiplies_the_hotspot_gain_in_a_rendered_slide():
    # the same seed draws the same uniforms, so the fibroblasts a adds inside the hotspots
    # count the grid points whose uniform falls in [base, base + K·per_a·a): ∝ K
    base = _hot_fibroblasts(1.0, 0.0)
    assert _hot_fibroblasts(2.0, 0.0) == base  # a = 0: K changes nothing
    gain1, gain2 = _hot_fibroblasts(1.0, 0.6) - base, _hot_fibroblasts(2.0, 0.6) - base
    assert gain1 > 10
    # Binomial counts of one coupled draw (38 and 70 at this seed): 2 × within 3 SE of the
    # larger count, which an unscaled gain (gain2 = gain1) misses
    assert abs(gain2 - 2 * gain1) < 3 * np.sqrt(gain2) < gain1


def test_scale_doubles_the_planted_interaction_and_the_site_shift():
    import statsmodels.formula.api as smf

    two = _at(2.0)
    df = biology.simulate_patients(N, seed=8, interaction=two.interaction)
    data = df.assign(rt=df["treatment"].isin(["RT", "surgery+RT"]).astype(float))
    # statsmodels Logit, the same MLE as R's glm(response ~ b*rt + a + treatment, binomial)
    fit = smf.logit("response ~ b * rt + a + C(treatment)", data).fit(disp=0)
    assert abs(fit.params["b:rt"] - -1.6) < 4 * fit.bse["b:rt"]
    shifts = mechanisms.site_mean_shifts(biology.SITES, two.site_biology_shift)
    assert shifts["A"] == pytest.approx(0.6) and shifts["E"] == pytest.approx(-0.6)


def test_scale_composes_the_degraded_modality_on_the_log_scale():
    for k in (0.5, 1.0, 2.0, 4.0):
        c = _at(k).reliability_contrast
        assert mechanisms.reliability_factors("sacrum", c)[1] == pytest.approx(0.6**k)
        assert mechanisms.reliability_factors("skull_base", c)[0] == pytest.approx(0.6**k)
        assert c < 1  # stays a valid contrast for any K
    assert mechanisms.reliability_factors("sacrum", _at(0.0).reliability_contrast) == (1.0, 1.0)


def test_scale_multiplies_the_log_hazard_of_the_latents():
    one, two = (biology.scaled_coefficients(_at(k).survival_scale)[0] for k in (1.0, 2.0))
    zero = biology.scaled_coefficients(_at(0.0).survival_scale)[0]
    for name in "abh":
        assert two[name] == pytest.approx(2 * one[name]) and zero[name] == 0.0
    assert two["log_volume"] == one["log_volume"]  # clinical terms are not a mechanism


def test_the_demo_trains_its_clip_at_the_scaled_caption_rate():
    from stromalens.cli.demo import _clip_settings

    assert _clip_settings(MechanismsConfig(effect_scale=2), quick=True).density_caption_rate == (
        pytest.approx(0.64)
    )
    assert _clip_settings(MechanismsConfig(effect_scale=0), quick=True).density_caption_rate == 0


def test_bad_scales_are_refused_with_the_value_named():
    for bad in (-0.5, float("nan"), float("inf")):
        with pytest.raises(pydantic.ValidationError, match="effect_scale"):
            MechanismsConfig(effect_scale=bad)
    with pytest.raises(ValueError, match="-1"):
        mechanisms.scale_share(0.4, -1)


def test_a_cohort_at_scale_k_records_it_and_its_validation_table_reads_it(tmp_path):
    from stromalens.synthetic import generate_cohort

    config = SynthConfig(
        patients=2,
        seed=1,
        slide=SlideConfig(width=512, height=512),
        missing=MissingRates(wsi=0.0, mri_t1=1.0, mri_t2=1.0, mri_ce=1.0),
        mechanisms=MechanismsConfig(effect_scale=2.0),
        workers=1,
    )
    manifest = generate_cohort(tmp_path, config, progress=False)
    meta = json.loads((tmp_path / "synth.json").read_text())
    assert meta["mechanisms"] == _at(2.0).as_dict() and meta["mechanisms"]["effect_scale"] == 2
    truth = pd.read_parquet(tmp_path / "truth.parquet")
    for location, gain in truth.groupby("location")["wsi_gain"].first().items():
        r = mechanisms.LOCATION_RELIABILITY[location]
        assert gain == pytest.approx(1 - 0.64 * (1 + r) / 2)  # c_2 = 0.64
    sizes = validation.read_planted(manifest)
    assert sizes["treatment_interaction"] == pytest.approx(1.6) and sizes["external"] == 2.0
    table = validation.validation_table(sizes, {}, {}, None, None)
    assert (table[validation.EFFECT_SCALE] == 2.0).all()
    keys = validation.validation_metrics(table)
    assert keys["validation.effect_scale"] == 2.0 and describe("validation.effect_scale")
    assert "effect scale K = 2" in validation.recovery_sentence(table)


def test_validate_method_passes_the_scale_to_both_halves(tmp_path):
    from stromalens.cli.validate import _demo_command

    for null in (False, True):
        command = _demo_command(tmp_path, null, 12, 6, 0, True, 0.5)
        assert command[command.index("--effect-scale") + 1] == "0.5"
        assert "--repeats" not in command  # the quick demo's own, 1
        again = _demo_command(tmp_path, null, 12, 6, 0, False, 1.0, repeats=2)
        assert again[again.index("--repeats") + 1] == "2"
        # without --repeats each half repeats as configs/study.yaml does, 3 (the demo: 2)
        full = _demo_command(tmp_path, null, 126, 60, 0, False, 1.0)
        assert full[full.index("--repeats") + 1] == "3"


def test_survival_times_stay_positive_at_a_large_scale():
    # at K = 2 the external cohort of the demo (60 patients, seed 0 + 1_000_003) drew an OS
    # time that rounded to 0.00 months, which the survival analyses refuse
    for k in (1.0, 2.0, 4.0):
        df = biology.simulate_patients(N, seed=1_000_003, survival_scale=_at(k).survival_scale)
        assert (df["os_time"] > 0).all() and (df["pfs_time"] > 0).all()
        assert df["os_time"].min() >= 0.01
