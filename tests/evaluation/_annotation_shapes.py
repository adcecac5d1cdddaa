"""Shapes shared by the annotation, co-localisation and overlay tests: tile grids and GeoJSON."""

from __future__ import annotations

import numpy as np

TILE = 32  # level-0 px per tile side in the hand-made grids


def rect(x0, y0, x1, y1) -> np.ndarray:
    return np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]], float)


def grid(cols: int, rows: int, tile: int = TILE) -> tuple[np.ndarray, np.ndarray]:
    """Top-left corners of a non-overlapping cols × rows tile grid, row-major."""
    yy, xx = np.mgrid[0:rows, 0:cols]
    return xx.ravel() * tile, yy.ravel() * tile


def geojson(polygons: list[list[np.ndarray]], points: np.ndarray | None = None) -> dict:
    """QuPath-style FeatureCollection, as ``stromalens.synthetic.annotations`` writes it."""
    features = [
        {
            "type": "Feature",
            "geometry": {
                "type": "MultiPolygon",
                "coordinates": [[r.tolist() for r in poly] for poly in polygons],
            },
            "properties": {"objectType": "annotation", "classification": {"name": "Fibrosis"}},
        }
    ]
    if points is not None:
        features.append(
            {
                "type": "Feature",
                "geometry": {"type": "MultiPoint", "coordinates": np.asarray(points).tolist()},
                "properties": {
                    "objectType": "annotation",
                    "classification": {"name": "Immune exclusion"},
                },
            }
        )
    return {"type": "FeatureCollection", "features": features}
