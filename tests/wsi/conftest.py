"""Fixtures of the whole-slide tests: small synthetic slides and deliberately broken ones."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

HISTOLOGY = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "histology"
REAL_SLIDE = HISTOLOGY / "cmu-1-small-region.svs"
REAL_TARGET = HISTOLOGY / "he_target_tile.png"

needs_real_data = pytest.mark.skipif(
    not REAL_SLIDE.is_file(), reason=f"real H&E data not found at {HISTOLOGY}"
)


@pytest.fixture(scope="session")
def synthetic_slides(small_cohort) -> list[Path]:
    """The WSIs of the shared 10-patient synthetic cohort."""
    return sorted((small_cohort.parent / "wsi").glob("*.tiff"))


def write_plain_tiff(path: Path, rgb: np.ndarray, resolution: bool = False) -> Path:
    """A tiled JPEG TIFF; without resolution tags unless asked (no µm/px)."""
    import tifffile

    kwargs = {"resolution": (2e4, 2e4), "resolutionunit": "CENTIMETER"} if resolution else {}
    tifffile.imwrite(
        path, rgb, tile=(256, 256), compression="jpeg", photometric="rgb", metadata=None, **kwargs
    )
    return path


@pytest.fixture(scope="session")
def broken_slides(tmp_path_factory, synthetic_slides) -> dict[str, Path]:
    """A slide without µm/px, a truncated slide and an empty (all-glass) slide."""
    import cv2

    from stromalens.synthetic.slides import SlideGeometry, write_pyramidal_tiff

    root = tmp_path_factory.mktemp("broken")
    source = synthetic_slides[0]
    rgb = cv2.cvtColor(cv2.imread(str(source)), cv2.COLOR_BGR2RGB)
    no_mpp = write_plain_tiff(root / "no_mpp.tiff", rgb)
    truncated = root / "truncated.tiff"
    data = source.read_bytes()
    truncated.write_bytes(data[: len(data) // 3])
    empty = root / "empty.tiff"
    geometry = SlideGeometry(width=1024, height=1024)
    glass = np.full((1024, 1024, 3), 242, np.uint8)
    write_pyramidal_tiff(empty, glass, geometry)
    copy = root / "good.tiff"
    shutil.copy(source, copy)
    return {"no_mpp": no_mpp, "truncated": truncated, "empty": empty, "good": copy}


@pytest.fixture(scope="session")
def random_synthclip():
    """The synthetic CLIP architecture with random weights (fast, offline)."""
    from stromalens.wsi.encoders import get_encoder

    return get_encoder("synthclip", weights="random")
