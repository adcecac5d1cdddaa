"""Each tile's dominant tissue compartment, from a synthetic slide's compartment label map.

A synthetic cohort (``stromalens.synthetic.cohort``) writes beside every slide ``<id>.tiff`` a
label map ``<id>.labels.png`` (one compartment code per pixel: 0 background, 1 stroma, 2 tumour,
3 immune; the codes are ``synth.json``'s ``compartments``) at 1/``label_downsample`` of level 0
(``synth.json``). The attention co-localisation's stratified baseline
(:mod:`stromalens.evaluation.attention`) permutes attention among tiles of the same dominant
compartment. A real cohort has no label maps: :meth:`CompartmentMaps.find` returns None and the
co-localisation keeps its plain baseline.

Dominant compartment of a tile with level-0 corner (x, y) and side ``tile_px``: the most
frequent code of the label pixels ``[⌊y/d⌋, ⌊(y + tile_px)/d⌋) × [⌊x/d⌋, ⌊(x + tile_px)/d⌋)``
(d the downsample; the same footprint as the synthetic CLIP's tile compositions,
``stromalens.wsi.synthclip``), ties to the lower code; −1 for a tile outside the map.

Example
-------
>>> maps = CompartmentMaps.find(cohort_dir)                             # doctest: +SKIP
>>> codes = maps.tile_compartments(manifest_frame, "P0001", x, y, 224)  # doctest: +SKIP
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd

from .annotations import resolve_path

#: The label map beside a slide ``<id>.<ext>``: ``<id>`` + this suffix.
LABELS_SUFFIX = ".labels.png"
#: The generator's settings file beside the manifest, which records the maps' downsample.
SYNTH_JSON = "synth.json"


def label_map_path(slide: Path | str) -> Path:
    """The label map beside ``slide``: ``wsi/P0001.tiff`` → ``wsi/P0001.labels.png``."""
    slide = Path(slide)
    return slide.with_name(slide.with_suffix("").name + LABELS_SUFFIX)


def read_label_map(path: Path | str) -> np.ndarray:
    """A label map as a 2-D integer array; :class:`ValueError` naming a file that is not one."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            labels = np.asarray(image)
    except (OSError, SyntaxError) as exc:  # PIL's errors for unreadable or truncated files
        raise ValueError(f"{path}: not a readable label map ({exc})") from exc
    if labels.ndim != 2 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"{path}: a label map is one integer channel, got {labels.shape}")
    return labels


def dominant_compartments(labels: np.ndarray, downsample: int, x, y, tile_px) -> np.ndarray:
    """``(N,)`` most frequent code in each tile's footprint (module docstring), −1 outside.

    Example
    -------
    >>> labels = np.array([[1, 1, 2, 2], [1, 1, 2, 2]], np.uint8)
    >>> dominant_compartments(labels, 2, [0, 4], [0, 0], 4)
    array([1, 2])
    """
    x, y = np.asarray(x, float), np.asarray(y, float)
    side = np.broadcast_to(np.asarray(tile_px, float), x.shape)
    codes = np.full(len(x), -1, np.int64)
    for i, (xi, yi, si) in enumerate(zip(x, y, side, strict=True)):
        r0, r1 = int(yi // downsample), int((yi + si) // downsample)
        c0, c1 = int(xi // downsample), int((xi + si) // downsample)
        block = labels[max(r0, 0) : max(r1, 0), max(c0, 0) : max(c1, 0)]
        if block.size:
            codes[i] = int(np.argmax(np.bincount(block.ravel())))  # argmax: ties to lower code
    return codes


@lru_cache(maxsize=2)
def _cached_label_map(path: Path) -> np.ndarray:
    # one patient's slide is colocalised once per model × target, one after another
    labels = read_label_map(path)
    labels.flags.writeable = False
    return labels


@dataclass(frozen=True)
class CompartmentMaps:
    """The label maps of a synthetic cohort: its manifest folder and the maps' downsample."""

    manifest_dir: Path
    downsample: int

    @classmethod
    def find(cls, manifest_dir: Path | str | None) -> CompartmentMaps | None:
        """The cohort's maps when its ``synth.json`` records ``label_downsample``, else None
        (a real cohort)."""
        if manifest_dir is None:
            return None
        meta = Path(manifest_dir) / SYNTH_JSON
        if not meta.is_file():
            return None
        downsample = json.loads(meta.read_text(encoding="utf-8")).get("label_downsample")
        if not isinstance(downsample, int) or downsample < 1:
            return None
        return cls(Path(manifest_dir), downsample)

    def tile_compartments(self, frame: pd.DataFrame, pid: str, x, y, tile_px):
        """Dominant compartment of each tile of the patient's slide (the manifest's ``wsi``,
        the first slide, where the annotations are drawn), or None without a label map."""
        if pid not in frame.index or "wsi" not in frame.columns:
            return None
        slide = resolve_path(frame.at[pid, "wsi"], self.manifest_dir)
        if slide is None or not label_map_path(slide).is_file():
            return None
        labels = _cached_label_map(label_map_path(slide))
        return dominant_compartments(labels, self.downsample, x, y, tile_px)
