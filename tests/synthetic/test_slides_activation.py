"""The activated-CAF trait of mechanism (a) (issue 17): hotspot fibroblasts are plumper and
darker and their matrix more eosinophilic, by the same activation α = gain · per_a · a that
raises their density; the diffuse null spreads the same mean α over all the stroma, and K = 0
(per_a = 0) renders no trait at all."""

import numpy as np
import pytest

from stromalens.synthetic import slides

from ._render import small_slide

GAIN, PER_A, A = 0.8, 0.5, 1.5  # α in a hotspot = 0.8 · 0.5 · 1.5 = 0.6


def _render(evidence, a=A, seed=(4, 5, 6)):
    return small_slide(evidence, {"a": a, "b": 0.0, "h": 0.0}, seed)


def _spec(**kw):
    return slides.EvidenceSpec(share=0.2, per_a=PER_A, per_b=0.3, gain=GAIN, **kw)


@pytest.fixture(scope="module")
def sparse():
    return _render(_spec())


@pytest.fixture(scope="module")
def diffuse():
    return _render(_spec(sparse=False))


def _inside(rendered, kind="fibroblast"):
    cells = rendered.cells[rendered.cells["kind"] == kind]
    ds = slides.SlideGeometry().label_downsample
    hot = rendered.evidence[cells["y"] // ds, cells["x"] // ds].astype(bool)
    return cells, hot


def test_hotspot_fibroblasts_carry_the_density_term_as_their_activation(sparse):
    cells, hot = _inside(sparse)
    assert hot.sum() > 50 and (~hot).sum() > 50
    # known answer: α = gain · per_a · a = 0.6 inside, 0 outside
    assert cells["activation"][hot].to_numpy() == pytest.approx(GAIN * PER_A * A)
    assert np.all(cells["activation"][~hot].to_numpy() == 0)
    others = sparse.cells[sparse.cells["kind"] != "fibroblast"]
    assert np.all(others["activation"].to_numpy() == 0)


def test_diffuse_null_spreads_the_same_mean_activation(sparse, diffuse):
    stroma = sparse.labels == 1
    share = sparse.evidence[stroma].mean()  # the hotspots' realised share of the stroma (≈ 0.2)
    assert share == pytest.approx(0.2, abs=0.01)
    x = GAIN * PER_A * A
    assert sparse.activation[stroma].mean() == pytest.approx(share * x, rel=1e-6)
    # the null: share · x everywhere in the stroma, nothing off it
    assert np.allclose(diffuse.activation[stroma], 0.2 * x)
    assert np.all(diffuse.activation[~stroma] == 0)
    assert diffuse.activation[stroma].mean() == pytest.approx(
        sparse.activation[stroma].mean(), rel=0.05
    )


def test_effect_scale_zero_renders_sparse_and_diffuse_identically():
    zero = {"share": 0.2, "per_a": 0.0, "per_b": 0.0, "gain": GAIN}
    a = _render(slides.EvidenceSpec(**zero))
    b = _render(slides.EvidenceSpec(**zero, sparse=False))
    assert np.array_equal(a.rgb, b.rgb)
    assert not a.activation.any() and not a.cells["activation"].any()


@pytest.mark.parametrize("alpha", [-0.5, 0.6, 2.0])
def test_activated_nucleus_is_wider_longer_and_darker_by_the_documented_factors(alpha):
    t = slides.CAF_ACTIVATION
    quiet, active = slides._spindles(0.0)[0], slides._spindles(alpha)[0]
    # ellipse area π·l·w: the area ratio is (1 + c_l α)(1 + c_w α) (soft edges: within 5%)
    expected = (1 + t["nucleus_length"] * alpha) * (1 + t["nucleus_width"] * alpha)
    assert active.alpha.sum() / quiet.alpha.sum() == pytest.approx(expected, rel=0.05)
    assert active.h.max() / quiet.h.max() == pytest.approx(1 + t["nucleus_od"] * alpha)
    assert quiet.h.max() == pytest.approx(0.75)  # the former spindle at α = 0


def _stroma_od(rendered, inside: bool) -> float:
    ds = slides.SlideGeometry().label_downsample
    where = (rendered.labels == 1) & (rendered.evidence.astype(bool) == inside)
    full = np.repeat(np.repeat(where, ds, 0), ds, 1)
    return float(-np.log((rendered.rgb[full].astype(float) + 1) / 256).mean())


def _contrast(rendered) -> float:
    return _stroma_od(rendered, True) - _stroma_od(rendered, False)


def test_hotspots_are_visible_in_the_pixels_and_the_null_shows_none(sparse, diffuse):
    # One small slide's hotspots differ from the rest of its stroma by layout alone (fewer rim
    # lymphocytes, by chance): a = 0 (no term, no trait) with the same seed and so the same
    # hotspot map measures that baseline.
    baseline = _contrast(_render(_spec(), a=0.0))
    planted, null = _contrast(sparse) - baseline, _contrast(diffuse) - baseline
    # measured (this seed): planted 0.129 OD, null 0.001
    assert planted > 0.05
    assert abs(null) < 0.2 * planted
