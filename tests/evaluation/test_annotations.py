"""Annotations: GeoJSON reading and rasterising onto the tile grid, against oracles."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from stromalens.evaluation.annotations import (
    TileRaster,
    load_patient_annotations,
    rasterise_polygons,
    read_annotations,
    resolve_path,
)

from ._annotation_shapes import TILE, geojson, rect


# --------------------------------------------------------------------------- rasterisation
def test_rasterise_square_counts_cell_centres():
    # Square 0..4 px, 1-px cells: centres 0.5..3.5 inside → 16 cells.
    mask = rasterise_polygons([[rect(0, 0, 4, 4)]], (0, 0), 1.0, (6, 6))
    assert mask.sum() == 16
    assert mask[:4, :4].all() and not mask[4:, :].any() and not mask[:, 4:].any()


def test_rasterise_polygon_with_hole_and_island():
    outer, hole = rect(0, 0, 10, 10), rect(2, 2, 8, 8)[::-1]  # hole wound the other way
    island = rect(4, 4, 6, 6)  # a second polygon inside the hole
    mask = rasterise_polygons([[outer, hole]], (0, 0), 1.0, (12, 12))
    assert mask.sum() == 100 - 36
    assert not mask[2:8, 2:8].any()
    both = rasterise_polygons([[outer, hole], [island]], (0, 0), 1.0, (12, 12))
    assert both.sum() == 100 - 36 + 4 and both[4:6, 4:6].all()


def test_rasterise_adjacent_polygons_share_no_cell():
    # Edges on cell centres: half-open, so the two halves partition the 8×4 block.
    left = rasterise_polygons([[rect(0, 0, 4.5, 4)]], (0, 0), 1.0, (4, 8))
    right = rasterise_polygons([[rect(4.5, 0, 8, 4)]], (0, 0), 1.0, (4, 8))
    assert not (left & right).any() and (left | right).all()


def test_rasterise_matches_point_in_polygon_oracle():
    from matplotlib.path import Path as MplPath

    rng = np.random.default_rng(1)
    angles = np.sort(rng.uniform(0, 2 * np.pi, 40))
    radius = rng.uniform(20, 45, 40)
    star = np.stack([50 + radius * np.cos(angles), 50 + radius * np.sin(angles)], axis=1)
    inner = np.stack([50 + 8 * np.cos(angles), 50 + 8 * np.sin(angles)], axis=1)
    origin, cell, shape = (3.0, -2.0), 1.7, (64, 64)
    mask = rasterise_polygons([[star, inner]], origin, cell, shape)
    rr, cc = np.mgrid[0 : shape[0], 0 : shape[1]]
    centres = np.stack(
        [origin[0] + (cc.ravel() + 0.5) * cell, origin[1] + (rr.ravel() + 0.5) * cell], 1
    )
    expected = MplPath(star).contains_points(centres) & ~MplPath(inner).contains_points(centres)
    assert np.array_equal(mask.ravel(), expected)
    assert 0 < mask.sum() < mask.size


def test_read_annotations_geojson(tmp_path):
    doc = geojson([[rect(0, 0, 64, 64), rect(16, 16, 32, 32)]], np.array([[5.0, 6.0], [70, 80]]))
    doc["features"].append(
        {
            "type": "Feature",
            "geometry": {"type": "Polygon", "coordinates": [rect(0, 0, 1, 1).tolist()]},
            "properties": {"classification": {"name": "Tumor"}},
        }
    )
    path = tmp_path / "a.geojson"
    path.write_text(json.dumps(doc))
    ann = read_annotations(path)
    assert len(ann.polygons) == 1 and len(ann.polygons[0]) == 2  # exterior + hole, Tumor ignored
    assert np.array_equal(ann.points, [[5, 6], [70, 80]])
    bad = tmp_path / "bad.geojson"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="cannot read annotations"):
        read_annotations(bad)


def test_synthetic_annotations_are_level0_pixels():
    # The generator traces the label map (downsample 4) and scales to level-0 px.
    from stromalens.synthetic.annotations import annotation_features

    labels = np.zeros((60, 60), np.uint8)
    labels[10:40, 10:40] = 1  # stroma block, label px 10..39 → level-0 px 40..156
    doc = annotation_features(labels, 4, np.array([[50.0, 60.0]]))
    assert doc["features"][0]["geometry"]["type"] == "MultiPolygon"
    ring = np.asarray(doc["features"][0]["geometry"]["coordinates"][0][0])
    assert ring.min() == 40 and ring.max() == 156
    assert doc["features"][1]["geometry"]["coordinates"] == [[50.0, 60.0]]


def test_tile_raster_atoms_partition_cells():
    x = np.array([0, 16, 64.0])
    r = TileRaster.build(x, np.zeros(3), TILE, subdivisions=4)
    assert r.atom_cells.sum() == (r.atom_of_cell >= 0).sum()
    # Tiles 0 and 1 overlap (atoms: 0 only, both, 1 only), tile 2 stands alone.
    assert len(r.atom_cells) == 4
    assert np.array_equal(np.asarray(r.membership.sum(axis=0)).ravel(), [2, 2, 1])


# --------------------------------------------------------------------------- manifest look-up
def test_resolve_path(tmp_path):
    assert resolve_path(None, tmp_path) is None
    assert resolve_path("  ", tmp_path) is None
    assert resolve_path(np.nan, tmp_path) is None
    assert resolve_path("ann/a.geojson", tmp_path) == tmp_path / "ann" / "a.geojson"
    assert resolve_path("ann/a.geojson", None) == Path("ann/a.geojson")
    assert resolve_path(tmp_path / "b.geojson", "/elsewhere") == tmp_path / "b.geojson"


def test_load_patient_annotations_reasons_and_cache(tmp_path):
    (tmp_path / "good.geojson").write_text(json.dumps(geojson([[rect(0, 0, TILE, TILE)]])))
    (tmp_path / "broken.geojson").write_text("{")
    frame = pd.DataFrame(
        {"annotations": ["good.geojson", "good.geojson", None, "absent.geojson", "broken.geojson"]},
        index=["A", "B", "C", "D", "E"],
    )
    cache: dict = {}
    a, reason_a = load_patient_annotations(frame, "A", tmp_path, cache)
    b, _ = load_patient_annotations(frame, "B", tmp_path, cache)
    assert reason_a == "" and len(a.polygons) == 1
    assert b is a  # one file, read once
    reasons = {pid: load_patient_annotations(frame, pid, tmp_path, cache)[1] for pid in "CDEZ"}
    assert reasons["C"] == "no annotations"
    assert reasons["D"].startswith("annotations not found")
    assert reasons["E"].startswith("cannot read annotations")
    assert reasons["Z"] == "patient not in the manifest"
    no_column = frame.drop(columns="annotations")
    assert load_patient_annotations(no_column, "A", tmp_path, {}) == (
        None,
        "manifest has no 'annotations' column",
    )
