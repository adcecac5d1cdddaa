"""The per-slide feature store: one HDF5 file per slide, written atomically.

Layout (DESIGN.md; the ``coords``/``features`` names are CLAM's and TRIDENT's, so their readers
work on these files):

``coords``   (n, 2) int64, level-0 top-left corner of each kept tile (x, y)
``features`` (n, d) float32 image embeddings of the kept tiles (absent for ``wsi tile`` output)
``qc/*``     one row per candidate tile (tissue fraction ≥ the minimum), kept or not:
             ``coords`` (m, 2), ``tissue``, ``blur``, ``pen``, ``black``, ``white``, ``kept``
attributes   ``mpp``, ``target_mpp``, ``tile_px``, ``encoder``, ``weights_sha256``, ``stain``
             (JSON), ``stromalens_version``, ``slide``, ``level``, ``read_px``, ``n_tiles``,
             ``tiling`` (JSON), ``complete`` (set last)

A file is written under ``<name>.partial`` and renamed when complete, so a killed run leaves no
half file under the final name and a re-run redoes exactly the unfinished slides.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .tiling import QC_FIELDS


@dataclass
class SlideFeatures:
    """What one slide's HDF5 holds."""

    coords: np.ndarray
    features: np.ndarray | None
    qc: dict[str, np.ndarray]
    attrs: dict = field(default_factory=dict)


def feature_path(out_dir: Path | str, slide_id: str) -> Path:
    """``<out_dir>/<slide_id>.h5`` — the one place this name is built."""
    if not slide_id or "/" in slide_id or slide_id.startswith("."):
        raise ValueError(f"invalid slide id for a file name: {slide_id!r}")
    return Path(out_dir) / f"{slide_id}.h5"


def write_slide(path: Path | str, data: SlideFeatures) -> Path:
    """Write ``data`` to ``path`` atomically (temporary name, then rename)."""
    import h5py

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".partial")
    coords = np.asarray(data.coords, np.int64).reshape(-1, 2)
    with h5py.File(tmp, "w") as h5:
        h5.create_dataset("coords", data=coords)
        if data.features is not None:
            feats = np.asarray(data.features, np.float32)
            if len(feats) != len(coords):
                raise ValueError(f"{len(feats)} feature rows for {len(coords)} coords")
            if feats.ndim != 2:
                raise ValueError(f"features must be (n, d), got shape {feats.shape}")
            h5.create_dataset("features", data=feats)
        group = h5.create_group("qc")
        for key, values in data.qc.items():
            group.create_dataset(key, data=np.asarray(values))
        for key, value in data.attrs.items():
            h5.attrs[key] = json.dumps(value) if isinstance(value, dict | list) else value
        h5.attrs["n_tiles"] = len(coords)
        h5.attrs["complete"] = True
        h5.flush()
    os.replace(tmp, path)
    return path


def is_complete(path: Path | str, require_features: bool = False) -> bool:
    """A readable store whose ``complete`` attribute is set (and with features, if required)."""
    import h5py

    path = Path(path)
    if not path.is_file():
        return False
    try:
        with h5py.File(path, "r") as h5:
            ok = bool(h5.attrs.get("complete", False)) and "coords" in h5
            return ok and (not require_features or "features" in h5)
    except OSError:
        return False


def read_attrs(path: Path | str) -> tuple[dict, int | None]:
    """A store's attributes (JSON values decoded) and its feature width (None without
    features), without reading the datasets."""
    import h5py

    with h5py.File(path, "r") as h5:
        width = int(h5["features"].shape[1]) if "features" in h5 else None
        return _attrs(h5), width


def _attrs(h5) -> dict:
    attrs = {}
    for key, value in h5.attrs.items():
        if isinstance(value, str) and value[:1] in "[{":
            try:
                value = json.loads(value)
            except json.JSONDecodeError:
                pass
        attrs[key] = value.item() if isinstance(value, np.generic) else value
    return attrs


def read_slide(path: Path | str) -> SlideFeatures:
    """Read a store written by :func:`write_slide` (or CLAM/TRIDENT's ``coords``/``features``)."""
    import h5py

    with h5py.File(path, "r") as h5:
        coords = h5["coords"][:]
        features = h5["features"][:] if "features" in h5 else None
        qc = {k: h5["qc"][k][:] for k in h5["qc"]} if "qc" in h5 else {}
        attrs = _attrs(h5)
    return SlideFeatures(coords=coords, features=features, qc=qc, attrs=attrs)


def empty_qc() -> dict[str, np.ndarray]:
    """QC arrays of a slide without candidate tiles."""
    qc = {k: np.zeros(0, np.float32) for k in QC_FIELDS}
    qc["coords"] = np.zeros((0, 2), np.int64)
    qc["kept"] = np.zeros(0, bool)
    return qc
