"""Attention overlays: the choice of patients apart from the drawing, and the saved figures."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from stromalens.evaluation.annotations import Annotations
from stromalens.evaluation.attention import TILE_COLUMNS
from stromalens.evaluation.overlays import draw_overlay, save_overlays, select_overlays

from ._annotation_shapes import TILE, geojson, grid, rect


def test_overlays_on_a_synthetic_cohort(small_cohort, tmp_path, caplog):
    import matplotlib.image as mpimg

    from stromalens.cohort import load_manifest

    cohort = load_manifest(small_cohort)
    frame = cohort.frame
    rng = np.random.default_rng(0)
    xs, ys = np.meshgrid(np.arange(0, 1793, 256), np.arange(0, 1281, 256))
    rows = [
        (pid, model, "ers_caf", xi, yi, 256, rng.random())
        for pid in frame.index
        for model in ("fusion", "abmil")
        for xi, yi in zip(xs.ravel(), ys.ravel(), strict=True)
    ]
    tiles = pd.DataFrame(rows, columns=list(TILE_COLUMNS))
    with_slides = frame.index[frame["wsi"].notna() & frame["annotations"].notna()]
    without = frame.index[frame["wsi"].isna()]
    assert len(with_slides) >= 2 and len(without) >= 1
    out = tmp_path / "attention"
    paths = save_overlays(tiles, frame, cohort.path.parent, out, max_patients=2)
    assert len(paths) == 2 and all(p.parent == out for p in paths)
    assert {p.stem for p in paths} <= set(with_slides)
    grades = frame.loc[[p.stem for p in paths], "fibrosis_grade"]
    if frame.loc[with_slides, "fibrosis_grade"].nunique() > 1:
        assert grades.nunique() == 2  # chosen across grades
    image = mpimg.imread(paths[0])
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100
    with caplog.at_level("WARNING", logger="stromalens"):
        paths = save_overlays(
            tiles, frame, cohort.path.parent, out, patients=[without[0], with_slides[0]],
            model="abmil",
        )  # fmt: skip
    assert [p.stem for p in paths] == [with_slides[0]]
    record = [r for r in caplog.records if "overlays skipped" in r.getMessage()][-1]
    assert record.fields["patients"] == without[0] and record.fields["n"] == 1
    with pytest.raises(ValueError, match="model 'nope'"):
        save_overlays(tiles, frame, cohort.path.parent, out, model="nope")


# --------------------------------------------------------------------------- selection
def hand_made_cohort(tmp_path):
    """Six patients with annotations and (empty) slide files, one without a slide; grades
    0, 0, 1, 1, 3, missing; tiles of two models × two targets, one patient absent from the
    manifest."""
    x, y = grid(3, 3)
    doc = geojson([[rect(0, 0, TILE, TILE)]], np.array([[5.0, 5.0]]))
    (tmp_path / "ann.geojson").write_text(json.dumps(doc))
    (tmp_path / "slide.tif").write_bytes(b"")
    pids = ["P0", "P1", "P2", "P3", "P4", "P5", "P6"]
    frame = pd.DataFrame(
        {
            "annotations": "ann.geojson",
            "wsi": ["slide.tif"] * 6 + [None],
            "fibrosis_grade": pd.array([0, 0, 1, 1, 3, None, 2], dtype="Int64"),
        },
        index=pd.Index(pids, name="patient_id"),
    )
    rows = [
        (pid, model, target, xi, yi, TILE, float(xi + yi))
        for pid in [*pids, "P9"]
        for model in ("abmil", "fusion")
        for target in ("ers_caf", "lr")
        for xi, yi in zip(x, y, strict=True)
    ]
    return pd.DataFrame(rows, columns=list(TILE_COLUMNS)), frame


def test_select_overlays_spreads_over_grades_and_names_skips(tmp_path):
    tiles, frame = hand_made_cohort(tmp_path)
    choice = select_overlays(tiles, frame, tmp_path, max_patients=4)
    assert (choice.model, choice.target) == ("fusion", "ers_caf")
    # Round-robin over grades 0, 1, 3, missing: the first patient of each.
    assert [item.patient_id for item in choice.inputs] == ["P0", "P2", "P4", "P5"]
    assert choice.skipped == {"P6": "no slide", "P9": "patient not in the manifest"}
    first = choice.inputs[0]
    assert first.slide == tmp_path / "slide.tif" and first.mpp is None
    assert len(first.tiles) == 9 and set(first.tiles["model"]) == {"fusion"}
    assert len(first.annotations.polygons) == 1
    more = select_overlays(tiles, frame, tmp_path, max_patients=6)
    assert [item.patient_id for item in more.inputs] == ["P0", "P2", "P4", "P5", "P1", "P3"]
    assert not list(tmp_path.glob("*.png"))  # selecting draws nothing


def test_select_overlays_keeps_the_requested_order(tmp_path):
    tiles, frame = hand_made_cohort(tmp_path)
    choice = select_overlays(
        tiles, frame, tmp_path, patients=["P3", "nobody", "P1"], model="abmil", target="lr"
    )
    assert (choice.model, choice.target) == ("abmil", "lr")
    assert [item.patient_id for item in choice.inputs] == ["P3", "P1"]
    assert choice.skipped == {"nobody": "no attention tiles"}
    with pytest.raises(ValueError, match="target 'nope'"):
        select_overlays(tiles, frame, tmp_path, target="nope")


# --------------------------------------------------------------------------- drawing
def test_draw_overlay_renders_one_figure():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    x, y = grid(4, 4)
    ann = Annotations(
        [[rect(0, 0, 2 * TILE, 2 * TILE), rect(8, 8, 24, 24)]], np.array([[10.0, 40.0]])
    )
    fig = draw_overlay(
        np.zeros((64, 64, 3)), (4 * TILE, 4 * TILE), x, y, TILE, np.arange(16.0), ann,
        k=3, title="P0 · fusion", subdivisions=2,
    )  # fmt: skip
    try:
        ax = fig.axes[0]
        assert ax.get_title() == "P0 · fusion"
        squares = [p for p in ax.patches if isinstance(p, Rectangle)]
        assert sorted((p.get_x(), p.get_y()) for p in squares) == [(32, 96), (64, 96), (96, 96)]
        labels = [t.get_text() for t in ax.get_legend().get_texts()]
        assert labels == ["fibrosis", "top-3 tiles", "immune exclusion"]
        heat = ax.images[1].get_array()
        assert heat.max() == pytest.approx(1.0) and heat.min() == 0.0  # scaled to the maximum
    finally:
        plt.close(fig)


# --------------------------------------------------------------------------- QuPath GeoJSON
def _tiles_for_geojson(seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    xs, ys = np.meshgrid(np.arange(0, 4 * 224, 224), np.arange(448, 448 + 3 * 224, 224))
    rows = []
    for pid in ("P1", "P2"):
        for model in ("fusion", "wsi_clip"):
            for target in ("ers_caf", "lr", "heterogeneity"):
                w = rng.random(xs.size)
                for xi, yi, wi in zip(xs.ravel(), ys.ravel(), w / w.sum(), strict=True):
                    rows.append((pid, model, target, int(xi), int(yi), 224, float(wi)))
    return pd.DataFrame(rows, columns=list(TILE_COLUMNS))


def test_attention_geojson_is_valid_and_matches_the_tiles(tmp_path):
    """The file parses as a GeoJSON FeatureCollection (RFC 7946: each Polygon a list of closed
    linear rings of ≥ 4 positions) in QuPath's import layout (QuPath docs, "Exporting
    annotations — GeoJSON": pixel coordinates of the full-resolution image, origin top-left;
    ``properties.objectType``, ``properties.measurements`` as name → number), one tile per
    feature with the attention of every target."""
    from stromalens.evaluation.overlays import (
        GEOJSON_OBJECT_TYPE,
        measurement_name,
        save_attention_geojson,
    )

    tiles = _tiles_for_geojson()
    paths = save_attention_geojson(tiles, tmp_path / "attention")
    assert [p.name for p in paths] == ["P1.geojson", "P2.geojson"]
    assert not list((tmp_path / "attention").glob("*.tmp"))
    data = json.loads(paths[0].read_text(encoding="utf-8"))
    assert data["type"] == "FeatureCollection"
    mine = tiles[(tiles["patient_id"] == "P1") & (tiles["model"] == "fusion")]
    by_tile = mine.pivot_table(index=["x", "y"], columns="target", values="attention")
    assert len(data["features"]) == len(by_tile) == 12
    seen = set()
    for feature in data["features"]:
        assert feature["type"] == "Feature"
        geometry, props = feature["geometry"], feature["properties"]
        assert geometry["type"] == "Polygon"
        [ring] = geometry["coordinates"]
        assert len(ring) == 5 and ring[0] == ring[-1]  # closed
        (x0, y0), (x1, _), (_, y2) = ring[0], ring[1], ring[2]
        assert x1 - x0 == 224 and y2 - y0 == 224  # the tile side in level-0 px
        # shoelace area of the ring = the tile's area (counter-clockwise in image axes)
        xs, ys = np.array(ring).T
        assert 0.5 * abs(np.dot(xs[:-1], ys[1:]) - np.dot(xs[1:], ys[:-1])) == 224 * 224
        assert props["objectType"] == GEOJSON_OBJECT_TYPE == "tile"
        expected = by_tile.loc[(x0, y0)]
        assert props["measurements"] == {
            measurement_name(t): pytest.approx(expected[t], abs=1e-15)
            for t in ("ers_caf", "lr", "heterogeneity")
        }
        seen.add((x0, y0))
    assert seen == set(by_tile.index)  # every tile once, at its own coordinates
    total = sum(f["properties"]["measurements"]["attention lr"] for f in data["features"])
    assert total == pytest.approx(1.0)  # attention sums to 1 over the slide


def test_attention_geojson_refuses_unsafe_ids_and_unknown_models(tmp_path):
    from stromalens.evaluation.overlays import attention_geojson, save_attention_geojson

    tiles = _tiles_for_geojson()
    with pytest.raises(ValueError, match="model 'nope'"):
        save_attention_geojson(tiles, tmp_path, model="nope")
    with pytest.raises(ValueError, match="no attention tiles of patient 'P9'"):
        attention_geojson(tiles, "P9", "fusion")
    bad = tiles.assign(patient_id=tiles["patient_id"].replace({"P1": "../escape"}))
    with pytest.raises(ValueError, match="cannot be used as a folder name"):
        save_attention_geojson(bad, tmp_path / "attention")
    assert not (tmp_path / "escape.geojson").exists()
