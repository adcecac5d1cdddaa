"""Pathologist-style annotations of a synthetic slide, as QuPath-compatible GeoJSON.

* a fibrosis region: the collagen-dense stroma of the slide, as polygons (with holes) — or, under
  mechanism (d), the evidence hotspots grown by a margin that tightens with grade
  (:func:`fibrosis_region`), as a pathologist outlines the most fibrotic, cellular areas;
* immune-exclusion points: lymphocytes gathered at the rim of tumour nests;
* grades 0–3 of fibrosis and immune exclusion, read from the latents a and b with noise, as a
  pathologist's semi-quantitative score would be.

QuPath reads a GeoJSON FeatureCollection whose features carry
``properties.objectType = "annotation"`` and ``properties.classification = {name, color}``.
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np

#: Latent cut points of grades 0|1|2|3 (applied to latent + N(0, 0.5²) noise).
GRADE_CUTS = (-0.75, 0.25, 1.0)
FIBROSIS_CLASS = {"name": "Fibrosis", "color": [230, 120, 40]}
EXCLUSION_CLASS = {"name": "Immune exclusion", "color": [40, 90, 230]}


def grade(latent: np.ndarray, rng: np.random.Generator, noise_sd: float = 0.5) -> np.ndarray:
    """Semi-quantitative grade 0–3 of a latent score observed with noise."""
    return np.digitize(
        np.asarray(latent) + rng.normal(0.0, noise_sd, np.shape(latent)), GRADE_CUTS
    ).astype(int)


def mask_to_polygons(mask: np.ndarray, downsample: int, min_area_px: float = 400.0) -> list:
    """GeoJSON polygon coordinates (level-0 px) of a binary mask, holes included.

    Uses OpenCV's two-level contour hierarchy (outer boundaries and their holes).
    """
    contours, hierarchy = cv2.findContours(
        mask.astype(np.uint8), cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE
    )
    polygons = []
    if hierarchy is None:
        return polygons
    hierarchy = hierarchy[0]

    def ring(contour):
        pts = (contour[:, 0, :].astype(float) * downsample).tolist()
        return pts + [pts[0]]

    for i, contour in enumerate(contours):
        if hierarchy[i][3] != -1 or len(contour) < 3 or cv2.contourArea(contour) < min_area_px:
            continue
        rings = [ring(contour)]
        child = hierarchy[i][2]
        while child != -1:
            if len(contours[child]) >= 3 and cv2.contourArea(contours[child]) >= min_area_px:
                rings.append(ring(contours[child]))
            child = hierarchy[child][0]
        polygons.append(rings)
    return polygons


def fibrosis_region(
    labels: np.ndarray, hotspots: np.ndarray, margin_px: float, downsample: int
) -> np.ndarray:
    """The hotspots grown by ``margin_px`` (level-0 px; a Euclidean distance), within tissue.

    Returns a uint8 mask at label resolution (1 inside the region).
    """
    distance = cv2.distanceTransform((hotspots == 0).astype(np.uint8), cv2.DIST_L2, 5)
    return ((distance * downsample <= margin_px) & (labels > 0)).astype(np.uint8)


def annotation_features(
    labels: np.ndarray,
    downsample: int,
    exclusion_points: np.ndarray,
    fibrosis: np.ndarray | None = None,
) -> dict:
    """FeatureCollection with the fibrosis region and the immune-exclusion points.

    ``fibrosis`` is the region's mask at label resolution (:func:`fibrosis_region`); None
    outlines all the collagen stroma (label 1).
    """
    region = (labels == 1) if fibrosis is None else (fibrosis > 0)
    stroma = cv2.morphologyEx(region.astype(np.uint8), cv2.MORPH_OPEN, np.ones((5, 5), np.uint8))
    features = []
    polygons = mask_to_polygons(stroma, downsample)
    if polygons:
        features.append(
            {
                "type": "Feature",
                "geometry": {"type": "MultiPolygon", "coordinates": polygons},
                "properties": {"objectType": "annotation", "classification": FIBROSIS_CLASS},
            }
        )
    if len(exclusion_points):
        features.append(
            {
                "type": "Feature",
                "geometry": {
                    "type": "MultiPoint",
                    "coordinates": np.asarray(exclusion_points, float).tolist(),
                },
                "properties": {"objectType": "annotation", "classification": EXCLUSION_CLASS},
            }
        )
    return {"type": "FeatureCollection", "features": features}


def write_json(obj, path: Path) -> None:
    """Write JSON atomically (temporary name, then rename)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".partial")
    tmp.write_text(json.dumps(obj), encoding="utf-8")
    tmp.replace(path)
