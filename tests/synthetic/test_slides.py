"""Synthetic whole-slide images: readable by OpenSlide and tiffslide, composition known."""

import json
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from stromalens.cohort import load_manifest
from stromalens.synthetic import biology, expression, slides


def _slides(manifest: Path) -> list[Path]:
    cohort = load_manifest(manifest)
    paths = [p for p in cohort.frame["wsi"] if p is not None]
    assert paths, "the fixture should have slides"
    return paths


def test_openslide_reads_every_slide_with_its_mpp(small_cohort, external_cohort):
    import openslide

    for path in _slides(small_cohort) + _slides(external_cohort):
        with openslide.OpenSlide(str(path)) as slide:
            assert slide.level_count >= 3
            assert float(slide.properties[openslide.PROPERTY_NAME_MPP_X]) == pytest.approx(0.5)
            assert float(slide.properties[openslide.PROPERTY_NAME_MPP_Y]) == pytest.approx(0.5)
            assert slide.level_dimensions[0] == (2048, 1536)
            assert slide.level_downsamples[1] == pytest.approx(4.0)
            assert slide.level_downsamples[2] == pytest.approx(16.0)
            region = np.asarray(slide.read_region((0, 0), 2, slide.level_dimensions[2]))
            assert region.shape[2] == 4 and region[..., 3].min() == 255


def test_tiffslide_agrees_with_openslide(small_cohort):
    import openslide
    import tiffslide

    for path in _slides(small_cohort)[:3]:
        with openslide.OpenSlide(str(path)) as a, tiffslide.TiffSlide(path) as b:
            assert b.level_dimensions == a.level_dimensions
            assert b.properties[tiffslide.PROPERTY_NAME_MPP_X] == pytest.approx(0.5)
            ra = np.asarray(a.read_region((512, 512), 0, (256, 256)))[..., :3]
            rb = np.asarray(b.read_region((512, 512), 0, (256, 256)))[..., :3]
            # Same JPEG tiles; decoders may differ by rounding only.
            assert np.abs(ra.astype(int) - rb.astype(int)).mean() < 1.0


def test_label_map_matches_the_pixels(small_cohort):
    """Tissue where the label map says tissue; glass elsewhere; tumour paler than stroma."""
    import openslide

    folder = small_cohort.parent
    meta = json.loads((folder / "synth.json").read_text())
    ds = meta["label_downsample"]
    for path in _slides(small_cohort)[:3]:
        labels = cv2.imread(
            str(path.with_suffix("").with_suffix(".labels.png")), cv2.IMREAD_UNCHANGED
        )
        with openslide.OpenSlide(str(path)) as slide:
            level = slide.get_best_level_for_downsample(ds)
            assert slide.level_downsamples[level] == ds
            rgb = np.asarray(slide.read_region((0, 0), level, slide.level_dimensions[level]))
        rgb = rgb[..., :3].astype(float)
        assert labels.shape == rgb.shape[:2]
        darkness = 255 - rgb.mean(axis=2)
        assert darkness[labels == 0].mean() < 20
        assert darkness[labels > 0].mean() > darkness[labels == 0].mean() + 20
        if (labels == 1).sum() > 1000 and (labels == 2).sum() > 1000:
            # Eosin-dense collagen absorbs more green than pale myxoid tumour matrix.
            green = 255 - rgb[..., 1]
            assert green[labels == 1].mean() > green[labels == 2].mean()


def test_cells_and_annotations(small_cohort):
    folder = small_cohort.parent
    cohort = load_manifest(small_cohort)
    for pid, row in cohort.frame.iterrows():
        if row["wsi"] is None:
            assert row["annotations"] is None
            continue
        cells = pd.read_parquet(folder / "wsi" / f"{pid}.cells.parquet")
        assert set(cells["kind"].unique()) <= set(slides.CELL_KINDS)
        assert cells["x"].between(0, 2047).all() and cells["y"].between(0, 1535).all()
        geo = json.loads(row["annotations"].read_text())
        assert geo["type"] == "FeatureCollection"
        names = {f["properties"]["classification"]["name"] for f in geo["features"]}
        assert "Fibrosis" in names
        for feature in geo["features"]:
            assert feature["properties"]["objectType"] == "annotation"
            coords = np.array(
                [pt for poly in feature["geometry"]["coordinates"] for ring in poly for pt in ring]
                if feature["geometry"]["type"] == "MultiPolygon"
                else feature["geometry"]["coordinates"]
            )
            assert coords[:, 0].max() <= 2048 and coords[:, 1].max() <= 1536
            assert coords.min() >= 0


def _render(latents, site="A", artefacts=None, morphology="chordoma", seed=(1, 2, 3)):
    patients = biology.simulate_patients(1, seed=0)
    for k, v in latents.items():
        patients[k] = v
    fractions = expression.simulate_fractions(patients, seed=0).iloc[0]
    geometry = slides.SlideGeometry(width=1536, height=1024)
    return slides.render_slide(
        fractions,
        {k: float(patients[k].iloc[0]) for k in "abh"},
        biology.make_site_effects(site, 0),
        geometry,
        list(seed),
        morphology=morphology,
        artefact_probability=artefacts or {"fold": 0, "blur": 0, "pen": 0},
    )


def test_site_changes_the_stain_not_the_tissue():
    a = _render({"a": 0.0, "b": 0.0, "h": 0.0}, site="A")
    again = _render({"a": 0.0, "b": 0.0, "h": 0.0}, site="A")
    b = _render({"a": 0.0, "b": 0.0, "h": 0.0}, site="B")
    assert np.array_equal(a.rgb, again.rgb)  # deterministic
    assert np.array_equal(a.labels, b.labels)  # same tissue
    tissue = np.repeat(np.repeat(a.labels > 0, 4, 0), 4, 1)
    colour_a = a.rgb[tissue].mean(axis=0)
    colour_b = b.rgb[tissue].mean(axis=0)
    assert np.abs(colour_a - colour_b).max() > 5  # a visible stain difference


def test_fibroblasts_follow_ers_caf_and_exclusion_follows_crosstalk():
    low = _render({"a": -2.0, "b": -2.0, "h": 0.0})
    high = _render({"a": 2.0, "b": 2.0, "h": 0.0})

    def density(r, kind, code):
        return (r.cells["kind"] == kind).sum() / max(1, (r.labels == code).sum())

    assert density(high, "fibroblast", 1) > 1.5 * density(low, "fibroblast", 1)
    assert len(high.exclusion_points) > len(low.exclusion_points)


def test_heterogeneity_interleaves_compartments():
    def boundary_fraction(r):
        lab = r.labels
        edges = (lab[1:, :] != lab[:-1, :]).sum() + (lab[:, 1:] != lab[:, :-1]).sum()
        return edges / (lab > 0).sum()

    low = np.mean(
        [boundary_fraction(_render({"a": 0, "b": 0, "h": -2.0}, seed=(s,))) for s in range(3)]
    )
    high = np.mean(
        [boundary_fraction(_render({"a": 0, "b": 0, "h": 2.0}, seed=(s,))) for s in range(3)]
    )
    assert high > 1.3 * low


def test_artefacts_are_rendered_where_recorded():
    r = _render({"a": 0, "b": 0, "h": 0}, artefacts={"fold": 1, "blur": 1, "pen": 1})
    kinds = {s["kind"] for s in r.artefact_shapes}
    assert kinds == {"fold", "blur", "pen"}
    blur = next(s for s in r.artefact_shapes if s["kind"] == "blur")
    x, y, w, h = blur["rect"]
    gray = cv2.cvtColor(r.rgb, cv2.COLOR_RGB2GRAY).astype(np.float64)
    lap = cv2.Laplacian(gray, cv2.CV_64F)
    sharp = cv2.Laplacian(
        cv2.cvtColor(_render({"a": 0, "b": 0, "h": 0}).rgb, cv2.COLOR_RGB2GRAY).astype(np.float64),
        cv2.CV_64F,
    )
    assert lap[y : y + h, x : x + w].var() < 0.5 * sharp[y : y + h, x : x + w].var()
    assert (r.artefacts & 1).any() and (r.artefacts & 2).any() and (r.artefacts & 4).any()
    # Pen ink is saturated and not H&E-coloured: its hue differs from the tissue's.
    pen = np.repeat(np.repeat((r.artefacts & 2) > 0, 4, 0), 4, 1)
    hsv = cv2.cvtColor(r.rgb, cv2.COLOR_RGB2HSV)
    tissue_only = np.repeat(np.repeat((r.labels > 0) & (r.artefacts == 0), 4, 0), 4, 1)
    assert abs(float(np.median(hsv[..., 0][pen])) - float(np.median(hsv[..., 0][tissue_only]))) > 20


def test_external_morphology_differs():
    chordoma = _render({"a": 0, "b": 0, "h": 0})
    other = _render({"a": 0, "b": 0, "h": 0}, morphology="chondrosarcoma")
    tumour = np.repeat(np.repeat(chordoma.labels == 2, 4, 0), 4, 1)
    assert np.abs(chordoma.rgb[tumour].mean(0) - other.rgb[tumour].mean(0)).max() > 5


def test_geometry_must_fit_the_pyramid():
    with pytest.raises(ValueError, match="multiple of 64"):
        slides.SlideGeometry(width=1000, height=1024)
