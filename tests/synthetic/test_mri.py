"""Synthetic MRI: readable volumes on the site's anisotropic grid, tumour as planted."""

import numpy as np
import pytest

from stromalens.cohort import load_manifest
from stromalens.synthetic import biology, mri


def test_simpleitk_reads_every_volume_with_matching_geometry(small_cohort):
    import SimpleITK as sitk

    cohort = load_manifest(small_cohort)
    seen = 0
    for pid, row in cohort.frame.iterrows():
        if row["mri_mask"] is None:
            continue
        mask = sitk.ReadImage(str(row["mri_mask"]))
        spacing = biology.make_site_effects(row["site"], 0).mri_spacing
        assert mask.GetSpacing() == pytest.approx(spacing)
        m = sitk.GetArrayFromImage(mask)
        volume_cc = m.sum() * np.prod(spacing) / 1000.0
        assert volume_cc == pytest.approx(row["volume_cc"], rel=0.12), pid
        for seq in ("mri_t1", "mri_t2", "mri_ce"):
            if row[seq] is None:
                continue
            image = sitk.ReadImage(str(row[seq]))
            assert image.GetSize() == mask.GetSize()
            assert image.GetSpacing() == mask.GetSpacing()
            assert image.GetOrigin() == mask.GetOrigin()
            assert image.GetDirection() == mask.GetDirection()
            seen += 1
    assert seen >= 10


def _render(latents, site="A", volume=40.0, seed=(5,)):
    return mri.render_mri(latents, volume, biology.make_site_effects(site, 0), list(seed))


def _tumour_mean(images, mask, seq):
    import SimpleITK as sitk

    m = sitk.GetArrayFromImage(mask).astype(bool)
    return sitk.GetArrayFromImage(images[seq])[m].astype(float).mean()


def test_voxels_are_anisotropic_and_site_specific():
    images_a, _ = _render({"a": 0, "b": 0, "h": 0}, site="A")
    images_d, _ = _render({"a": 0, "b": 0, "h": 0}, site="D")
    sa, sd = images_a["t1"].GetSpacing(), images_d["t1"].GetSpacing()
    assert sa[2] > 2 * sa[0] and sd[2] > 2 * sd[0]
    assert sa != sd


def test_scanner_effects_change_intensities():
    import SimpleITK as sitk

    def muscle_level(site):
        images, _ = _render({"a": 0, "b": 0, "h": 0}, site=site)
        return np.median(sitk.GetArrayFromImage(images["t1"])[images["t1"].GetSize()[2] // 2])

    levels = [muscle_level(s) for s in biology.SITES]
    assert max(levels) / max(min(levels), 1) > 1.3


def test_latents_shape_the_tumour_signal():
    # More ERS–CAF activity → more fibrous septa → darker T2; more crosstalk → more enhancement.
    low_a = _render({"a": -2.0, "b": 0, "h": 0})
    high_a = _render({"a": 2.0, "b": 0, "h": 0})
    assert _tumour_mean(*high_a, "t2") < 0.9 * _tumour_mean(*low_a, "t2")
    low_b = _render({"a": 0, "b": -2.0, "h": 0})
    high_b = _render({"a": 0, "b": 2.0, "h": 0})
    assert _tumour_mean(*high_b, "ce") > 1.1 * _tumour_mean(*low_b, "ce")


def test_heterogeneity_raises_intratumoral_variability():
    import SimpleITK as sitk

    def cv(latent_h, seed):
        images, mask = _render({"a": 0, "b": 0, "h": latent_h}, volume=80.0, seed=(seed,))
        m = sitk.GetArrayFromImage(mask).astype(bool)
        v = sitk.GetArrayFromImage(images["t1"])[m].astype(float)
        return v.std() / v.mean()

    # Paired by seed (same imaging confounders ν), averaged over three patients' renders.
    high = np.mean([cv(3.5, seed) for seed in (5, 6, 7)])
    low = np.mean([cv(-3.5, seed) for seed in (5, 6, 7)])
    assert high > 1.2 * low


def test_mri_sees_the_latents_through_confounders():
    """ℓ_MRI = ρ ℓ + √(1 − ρ²) ν: unit variance, correlation ρ with ℓ (n = 20,000 draws;
    tolerance 4 SE of a correlation, ≈ 4 (1 − ρ²)/√n)."""
    rng = np.random.default_rng(0)
    latents = rng.standard_normal((20000, 3))
    nuisance = rng.standard_normal((20000, 3))
    visible = np.array(
        [
            list(mri.mri_visible_latents(dict(zip("abh", lat, strict=True)), nu).values())
            for lat, nu in zip(latents, nuisance, strict=True)
        ]
    )
    for j, name in enumerate("abh"):
        rho = mri.MRI_VISIBILITY[name]
        assert np.corrcoef(visible[:, j], latents[:, j])[0, 1] == pytest.approx(
            rho, abs=4 * (1 - rho**2) / np.sqrt(20000)
        )
        assert visible[:, j].std() == pytest.approx(1.0, abs=0.03)


def test_separable_resampling_matches_scipy():
    """The matrix form of blur + linear interpolation equals scipy.ndimage's 3-D operations."""
    from scipy import ndimage

    rng = np.random.default_rng(0)
    volume = rng.normal(size=(20, 24, 28))
    spacing = np.array([3.0, 0.8, 1.0])
    sigma = spacing / 2.355
    out_shape = [int(n // s) for n, s in zip(volume.shape, spacing, strict=True)]
    coords_1d = [(np.arange(n) + 0.5) * s - 0.5 for n, s in zip(out_shape, spacing, strict=True)]
    matrices = [
        mri._resampling_matrix(n, c, sg)
        for n, c, sg in zip(volume.shape, coords_1d, sigma, strict=True)
    ]
    ours = mri._apply_separable(volume, matrices)
    blurred = ndimage.gaussian_filter(volume, sigma, mode="nearest")
    grid = np.meshgrid(*coords_1d, indexing="ij")
    reference = ndimage.map_coordinates(blurred, grid, order=1, mode="nearest")
    assert np.allclose(ours, reference, atol=1e-10)
