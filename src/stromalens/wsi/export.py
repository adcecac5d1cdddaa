"""QuPath-readable GeoJSON (tissue contours and tiles) and a thumbnail with the QC overlay."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from .tiling import QC_FIELDS, TilePlan
from .tissue import tissue_contours

_KEPT = [40, 120, 255]
_REJECTED = [220, 40, 40]


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".partial")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_geojson(path, plan: TilePlan, mask: np.ndarray, kept: np.ndarray, qc: dict) -> Path:
    """GeoJSON FeatureCollection: tissue annotations and one detection per candidate tile.

    QuPath imports it with *File › Import objects*; tiles carry their QC values as measurements
    and are classified ``Tile kept`` or ``Tile rejected``.
    """
    path = Path(path)
    features = []
    for ring in tissue_contours(mask, plan.mask_scale):
        features.append(
            {
                "type": "Feature",
                "geometry": {"type": "Polygon", "coordinates": [ring]},
                "properties": {
                    "objectType": "annotation",
                    "classification": {"name": "Tissue", "color": [0, 160, 0]},
                },
            }
        )
    size = float(plan.tile_level0_px)
    for i, (x, y) in enumerate(plan.coords.tolist()):
        ring = [[x, y], [x + size, y], [x + size, y + size], [x, y + size], [x, y]]
        name = "Tile kept" if kept[i] else "Tile rejected"
        features.append(
            {
                "type": "Feature",
                "geometry": {"type": "Polygon", "coordinates": [ring]},
                "properties": {
                    "objectType": "detection",
                    "classification": {"name": name, "color": _KEPT if kept[i] else _REJECTED},
                    "measurements": {k: float(qc[k][i]) for k in QC_FIELDS},
                },
            }
        )
    _atomic_write_text(path, json.dumps({"type": "FeatureCollection", "features": features}))
    return path


def write_qc_thumbnail(path, thumbnail, plan: TilePlan, mask, kept) -> Path:
    """PNG thumbnail: tissue contour green, kept tiles blue, rejected tiles red."""
    import cv2

    path = Path(path)
    image = np.ascontiguousarray(thumbnail.copy())
    contours, _ = cv2.findContours(
        mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE
    )
    cv2.drawContours(image, contours, -1, (0, 160, 0), 1)
    size = plan.tile_level0_px / plan.mask_scale
    for i, (x, y) in enumerate(plan.coords / plan.mask_scale):
        colour = _KEPT if kept[i] else _REJECTED
        p0 = (int(round(x)), int(round(y)))
        p1 = (int(round(x + size)) - 1, int(round(y + size)) - 1)
        cv2.rectangle(image, p0, p1, tuple(int(c) for c in colour), 1)
    tmp = path.with_name(path.stem + ".partial.png")
    cv2.imwrite(str(tmp), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    os.replace(tmp, path)
    return path
