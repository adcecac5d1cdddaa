"""The per-slide feature store: one HDF5 file per slide, written atomically.

Where (:func:`feature_dir`, the one place this path is built)::

    <out>/<encoder>/<tiling>/<slide_id>.h5      e.g. features/uni/0.5mpp_224px_0px_overlap/P01.h5

as TRIDENT separates its features (``<job>/20x_224px_0px_overlap/features_uni_v1/``).
``<encoder>`` is the encoder id (``tiles`` for ``wsi tile`` output, which has no encoder);
``<tiling>`` is :func:`tiling_name`: ``<target_mpp>mpp_<tile_px>px_<overlap>px_overlap`` with
the overlap ``tile_px − stride_px`` (``…_<gap>px_gap`` when the stride is longer than the tile),
the µm/px written in full (``0.5``, ``0.25``, ``0.2527``). A folder of ``.h5`` files is what every
reader (``features_dir``, ``--features``) takes.

Layout (DESIGN.md; the ``coords``/``features`` names are CLAM's and TRIDENT's):

``coords``   (n, 2) int64, level-0 top-left corner of each kept tile (x, y); its attributes are
             TRIDENT's and CLAM's (:func:`interop_attrs`), so their readers take these files
``features`` (n, d) float32 image embeddings of the kept tiles (absent for ``wsi tile`` output)
``qc/*``     one row per candidate tile (tissue fraction ≥ the minimum), kept or not:
             ``coords`` (m, 2), ``tissue``, ``blur``, ``pen``, ``black``, ``white``, ``kept``
attributes   ``mpp``, ``target_mpp``, ``tile_px``, ``encoder``, ``weights_sha256``, ``stain``
             (JSON), ``stromalens_version``, ``slide``, ``level``, ``read_px``, ``n_tiles``,
             ``tiling`` (JSON), the identity below, ``complete`` (set last)

Identity. A complete store is reused only if what it records equals what this run would write
(:func:`store_matches`): the slide (``slide_path`` absolute, ``slide_size``, ``slide_mtime_ns``
and ``slide_sha256_partial``, the sha256 of the first and last MiB and the size — cheap on a
10 GB slide, :func:`slide_identity`), ``encoder`` and ``weights_sha256``, ``tiling`` (the whole
:class:`~stromalens.wsi.tiling.TilingSpec` as JSON), ``stain_settings`` (JSON) and
``mpp_override``. Anything else is recomputed and the reason logged. For a multi-file slide
(``.mrxs``) the identity is that of the index file.

Provenance (:func:`provenance`, :data:`PROVENANCE_KEYS`): the ``stromalens_version`` that wrote
the store, the ``device`` it ran on and whether Macenko ran there (``stain_on_device``) are
recorded and never compared. A version is not a staleness criterion because almost every
release leaves the features unchanged, and comparing it would recompute a whole cohort (GPU-days
on a real one) on each upgrade and make stores unshareable between collaborators one patch
release apart; a release that does change the features must change what the identity records
(a tiling, stain or encoder field), so that the recompute is explicit and its reason named.
Devices agree up to float rounding, as the CPU and a GPU always do.

A file is written under ``<name>.partial`` and renamed when complete, so a killed run leaves no
half file under the final name and a re-run redoes exactly the unfinished slides.

Reading other tools' files. :func:`read_slide`, :func:`read_attrs` and :func:`is_complete` also
take TRIDENT, CLAM and STAMP feature files (``attrs['format']`` says which), mapping what they
record to stromalens's attribute names so that
:meth:`~stromalens.training.bundle.FeatureContract.of_store` works; what a format does not record
stays absent (and is not checked):

* TRIDENT — ``features`` + ``coords``; ``coords.attrs``: ``patch_size`` (px at
  ``target_magnification``), ``patch_size_level0``, ``level0_magnification``,
  ``target_magnification``, ``overlap``, ``name``, ``level0_width``/``level0_height``
  (``trident/IO.py`` ``coords_to_h5``). Mapped: ``tile_px`` = patch_size, ``target_mpp`` =
  10 / target_magnification (TRIDENT's own µm/px ↔ magnification rule), ``tile_level0_px``,
  ``stride_px``; the encoder is not in the file, only in TRIDENT's folder name
  ``features_<encoder>``, which gives ``encoder = "trident:<encoder>"``.
* CLAM — ``features`` + ``coords`` (``extract_features_fp.py`` writes no attributes); its
  patching writes ``coords.attrs`` ``patch_size`` (px at ``patch_level``), ``patch_level``,
  ``downsample``, ``level_dim``, ``downsampled_level_dim``, ``name``
  (``wsi_core/WholeSlideImage.py`` ``process_contour``). Mapped: ``level``, ``read_px``,
  ``tile_level0_px``; encoder, µm/px and the encoder's input size are unknown.
* STAMP — ``feats`` (float16) + ``coords`` in µm; root attributes ``extractor``, ``unit``
  (``"um"``), ``tile_size_um``, ``tile_size_px``, ``stamp_version``, ``feat_type``
  (``stamp/preprocessing/__init__.py``). Mapped: ``encoder = "stamp:<extractor>"``,
  ``tile_px``, ``target_mpp`` = tile_size_um / tile_size_px, ``coords_unit = "um"``.

Foreign encoder ids keep their tool's prefix: the same model name in two tools is not the same
features (stromalens Macenko-normalises tiles; TRIDENT and STAMP do not), so a bundle refuses to
mix them.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .tiling import QC_FIELDS

#: The ``<encoder>`` folder of stores written without an encoder (``wsi tile``).
NO_ENCODER_DIR = "tiles"
#: Bytes hashed at each end of a slide file for its identity.
PARTIAL_HASH_BYTES = 1 << 20
#: Attributes recorded for provenance only: :func:`store_matches` never compares them.
PROVENANCE_KEYS = ("stromalens_version", "device", "stain_on_device")


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


def tiling_name(spec) -> str:
    """The readable, deterministic folder name of a tiling: ``0.5mpp_224px_0px_overlap``.

    It changes whenever ``target_mpp``, ``tile_px`` or ``stride_px`` does; the other settings of
    the :class:`~stromalens.wsi.tiling.TilingSpec` (QC thresholds, tissue fraction) are checked
    through the store's identity instead.

    >>> from stromalens.wsi.tiling import TilingSpec
    >>> tiling_name(TilingSpec(target_mpp=0.25, tile_px=256, stride_px=192))
    '0.25mpp_256px_64px_overlap'
    """
    mpp = np.format_float_positional(float(spec.target_mpp), trim="-")
    overlap = int(spec.tile_px) - int(spec.stride_px)
    tail = f"{overlap}px_overlap" if overlap >= 0 else f"{-overlap}px_gap"
    return f"{mpp}mpp_{int(spec.tile_px)}px_{tail}"


def feature_dir(out: Path | str, encoder: str | None, spec) -> Path:
    """``<out>/<encoder>/<tiling>`` — the folder of one encoder's stores at one tiling; the one
    place this path is built (``encoder=None``: the ``tiles`` folder of ``wsi tile``)."""
    name = NO_ENCODER_DIR if encoder is None else re.sub(r"[^A-Za-z0-9._-]+", "_", str(encoder))
    if not name.strip("._"):
        raise ValueError(f"encoder id {encoder!r} gives no folder name")
    return Path(out) / name / tiling_name(spec)


def slide_identity(path: Path | str) -> dict:
    """What identifies a slide file: absolute path, size, modification time (ns) and a partial
    content hash, sha256(first MiB ‖ last MiB ‖ size) — two MiB read however large the slide.
    ``FileNotFoundError`` when it does not exist."""
    path = Path(path).resolve()
    stat = path.stat()
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        digest.update(handle.read(PARTIAL_HASH_BYTES))
        if stat.st_size > PARTIAL_HASH_BYTES:
            handle.seek(max(PARTIAL_HASH_BYTES, stat.st_size - PARTIAL_HASH_BYTES))
            digest.update(handle.read(PARTIAL_HASH_BYTES))
    digest.update(str(stat.st_size).encode())
    return {
        "slide_path": str(path),
        "slide_size": int(stat.st_size),
        "slide_mtime_ns": int(stat.st_mtime_ns),
        "slide_sha256_partial": digest.hexdigest(),
    }


def provenance(device, stain_on_device: bool) -> dict:
    """Who and what wrote a store (:data:`PROVENANCE_KEYS`): this stromalens version, the
    device the features were computed on, and whether Macenko ran there."""
    from .. import __version__

    return {
        "stromalens_version": __version__,
        "device": str(device),
        "stain_on_device": bool(stain_on_device),
    }


def store_matches(path: Path | str, expected: dict) -> str | None:
    """``None`` if the store at ``path`` records every attribute of ``expected`` with the same
    value, else why it is stale (``"weights_sha256 differs (random → 3f2a…)"``).

    Values compare as JSON (dicts key by key), so a tiling read back from the file equals the
    :class:`~stromalens.wsi.tiling.TilingSpec` it was written from. Provenance keys
    (:data:`PROVENANCE_KEYS`) in ``expected`` are ignored: they never make a store stale."""
    expected = {k: v for k, v in expected.items() if k not in PROVENANCE_KEYS}
    try:
        attrs, _ = read_attrs(path)
    except (OSError, KeyError) as exc:
        return f"unreadable store ({exc})"
    missing = [key for key in expected if key not in attrs]
    if missing:
        return f"no {', '.join(missing)} recorded (a store written before these were)"
    reasons = [
        _difference(key, attrs[key], want)
        for key, want in expected.items()
        if _canonical(attrs[key]) != _canonical(want)
    ]
    return "; ".join(reasons) or None


def _canonical(value):
    if isinstance(value, np.ndarray):
        value = value.tolist()
    return json.loads(json.dumps(value, sort_keys=True, default=str))


def _short(value) -> str:
    text = str(value)
    return text if len(text) <= 24 else text[:12] + "…"


def _difference(key: str, have, want) -> str:
    have, want = _canonical(have), _canonical(want)
    if isinstance(have, dict) and isinstance(want, dict):
        parts = [
            f"{k}: {_short(have.get(k))} → {_short(want.get(k))}"
            for k in sorted(set(have) | set(want))
            if have.get(k) != want.get(k)
        ]
        return f"{key} differs ({', '.join(parts)})"
    return f"{key} differs ({_short(have)} → {_short(want)})"


def interop_attrs(attrs: dict) -> dict:
    """TRIDENT's and CLAM's ``coords`` attributes of a store with root attributes ``attrs``
    (``{}`` when the tiling geometry is not recorded).

    ``patch_size`` is the tile side read at ``patch_level`` (CLAM reads ``patch_size`` px there);
    ``target_magnification`` is the magnification of that level, 10 / level µm/px, so that
    TRIDENT's ``patch_size · level0_magnification / target_magnification`` is
    ``patch_size_level0``, the tile side in level-0 pixels (what TITAN and TRIDENT's slide
    encoders read). When a tile is resampled (``read_px ≠ tile_px``) the nominal tiling is the
    root's ``target_mpp`` / ``tile_px``. ``overlap`` is in the same read-level pixels.
    """
    need = ("mpp", "level", "read_px", "tile_level0_px")
    if any(attrs.get(k) in (None, "") for k in need):
        return {}
    read_px = int(attrs["read_px"])
    tile0 = float(attrs["tile_level0_px"])
    downsample = tile0 / read_px
    level0_mag = 10.0 / float(attrs["mpp"])
    out = {
        "patch_size": read_px,
        "patch_level": int(attrs["level"]),
        "patch_size_level0": int(round(tile0)),
        "level0_magnification": level0_mag,
        "target_magnification": level0_mag / downsample,
        "downsample": np.array([downsample, downsample]),
    }
    tile_px, stride_px = attrs.get("tile_px"), attrs.get("stride_px")
    if tile_px and stride_px:
        out["overlap"] = int(round((int(tile_px) - int(stride_px)) * read_px / int(tile_px)))
    if attrs.get("slide_id"):
        out["name"] = str(attrs["slide_id"])
    dims = attrs.get("dimensions")
    if dims is not None and len(dims) == 2:
        out["level0_width"], out["level0_height"] = int(dims[0]), int(dims[1])
    level_dim = attrs.get("level_dim")
    if level_dim is not None and len(level_dim) == 2:
        out["level_dim"] = out["downsampled_level_dim"] = np.asarray(level_dim, np.int64)
    return out


def write_slide(path: Path | str, data: SlideFeatures) -> Path:
    """Write ``data`` to ``path`` atomically (temporary name, then rename)."""
    import h5py

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".partial")
    coords = np.asarray(data.coords, np.int64).reshape(-1, 2)
    with h5py.File(tmp, "w") as h5:
        dataset = h5.create_dataset("coords", data=coords)
        for key, value in interop_attrs(data.attrs).items():
            dataset.attrs[key] = value
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
    """A readable, finished store (and with features, if required): a stromalens store whose
    ``complete`` attribute is set, or a TRIDENT, CLAM or STAMP file with its ``coords``. Whether
    it is *current* is :func:`store_matches`'s question."""
    import h5py

    path = Path(path)
    if not path.is_file():
        return False
    try:
        with h5py.File(path, "r") as h5:
            if "coords" not in h5:
                return False
            if store_format(h5) == "stromalens" and not bool(h5.attrs.get("complete", False)):
                return False
            return not require_features or _features_key(h5) is not None
    except OSError:
        return False


def store_format(h5) -> str:
    """``stromalens``, ``stamp``, ``trident`` or ``clam``: who wrote an open HDF5 feature file."""
    if "complete" in h5.attrs or "stromalens_version" in h5.attrs:
        return "stromalens"
    if "feats" in h5 or "extractor" in h5.attrs or "stamp_version" in h5.attrs:
        return "stamp"
    coords = h5["coords"].attrs if "coords" in h5 else {}
    if "patch_size_level0" in coords or "level0_magnification" in coords:
        return "trident"
    return "clam"


def _features_key(h5) -> str | None:
    """The features dataset: ``features`` (stromalens, TRIDENT, CLAM) or ``feats`` (STAMP)."""
    for key in ("features", "feats"):
        if key in h5:
            return key
    return None


def read_attrs(path: Path | str) -> tuple[dict, int | None]:
    """A store's attributes (JSON values decoded; another tool's mapped to stromalens's names)
    and its feature width (None without features), without reading the datasets."""
    import h5py

    with h5py.File(path, "r") as h5:
        key = _features_key(h5)
        width = int(h5[key].shape[1]) if key is not None and h5[key].ndim == 2 else None
        return _store_attrs(h5, path), width


def _decode(raw) -> dict:
    attrs = {}
    for key, value in raw.items():
        if isinstance(value, bytes):
            value = value.decode("utf-8", "replace")
        if isinstance(value, str) and value[:1] in "[{":
            try:
                value = json.loads(value)
            except json.JSONDecodeError:
                pass
        if isinstance(value, str) and value == "None":  # TRIDENT's save_h5 writes None as 'None'
            value = None
        attrs[key] = value.item() if isinstance(value, np.generic) else value
    return attrs


def _store_attrs(h5, path) -> dict:
    fmt = store_format(h5)
    root = _decode(h5.attrs)
    if fmt == "stromalens":
        return root
    coords = _decode(h5["coords"].attrs) if "coords" in h5 else {}
    mapped = {"format": fmt, "slide_id": str(coords.get("name") or Path(path).stem)}
    mapped.update(_MAPPERS[fmt](root, coords, Path(path)))
    return {**coords, **root, **{k: v for k, v in mapped.items() if v is not None}}


def _number(value, kind=float):
    try:
        out = kind(value)
    except (TypeError, ValueError):
        return None
    return out if np.isfinite(out) and out > 0 else None


def _trident(root: dict, coords: dict, path: Path) -> dict:
    patch = _number(coords.get("patch_size"), int)
    level0_mag = _number(coords.get("level0_magnification"))
    target_mag = _number(coords.get("target_magnification"))
    tile0 = _number(coords.get("patch_size_level0"))
    if tile0 is None and patch and level0_mag and target_mag:
        tile0 = patch * level0_mag / target_mag
    try:
        overlap = int(coords.get("overlap") or 0)
    except (TypeError, ValueError):  # TRIDENT's visualisation default is 'NA'
        overlap = 0
    folder = path.parent.name
    return {
        "encoder": f"trident:{folder[9:]}" if folder.startswith("features_") else None,
        "tile_px": patch,
        "stride_px": patch - overlap if patch else None,
        "target_mpp": 10.0 / target_mag if target_mag else None,
        "tile_level0_px": tile0,
    }


def _clam(root: dict, coords: dict, path: Path) -> dict:
    patch = _number(coords.get("patch_size"), int)
    level = coords.get("patch_level")
    downsample = np.atleast_1d(np.asarray(coords.get("downsample", []), float))
    tile0 = None
    if patch and downsample.size:
        tile0 = patch * float(downsample[0])
    elif patch and level == 0:
        tile0 = float(patch)
    return {"level": level, "read_px": patch, "tile_level0_px": tile0}


def _stamp(root: dict, coords: dict, path: Path) -> dict:
    px = _number(root.get("tile_size_px"), int)
    um = _number(root.get("tile_size_um"))
    if um is None and root.get("unit") == "um":
        um = _number(root.get("tile_size"))
    extractor = root.get("extractor")
    return {
        "encoder": f"stamp:{extractor}" if extractor else None,
        "tile_px": px,
        "target_mpp": um / px if um and px else None,
        "tile_um": um,
        "coords_unit": "um" if um is not None else None,
    }


_MAPPERS = {"trident": _trident, "clam": _clam, "stamp": _stamp}


def read_slide(path: Path | str) -> SlideFeatures:
    """Read a store written by :func:`write_slide`, or a TRIDENT, CLAM or STAMP feature file
    (features from ``features`` or ``feats``, attributes mapped as the module says; STAMP's
    ``coords`` stay in µm, ``attrs['coords_unit'] == 'um'``)."""
    import h5py

    with h5py.File(path, "r") as h5:
        coords = h5["coords"][:]
        key = _features_key(h5)
        features = h5[key][:] if key is not None else None
        qc = {k: h5["qc"][k][:] for k in h5["qc"]} if "qc" in h5 else {}
        attrs = _store_attrs(h5, path)
    return SlideFeatures(coords=coords, features=features, qc=qc, attrs=attrs)


def empty_qc() -> dict[str, np.ndarray]:
    """QC arrays of a slide without candidate tiles."""
    qc = {k: np.zeros(0, np.float32) for k in QC_FIELDS}
    qc["coords"] = np.zeros((0, 2), np.int64)
    qc["kept"] = np.zeros(0, bool)
    return qc
