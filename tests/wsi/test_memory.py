"""Peak memory bounded by the block and the thumbnail cap, not by the slide (issue 4)."""

from __future__ import annotations

import ctypes
import subprocess
import sys
import tracemalloc

import cv2
import numpy as np
import pytest

from stromalens.wsi.reader import open_slide
from stromalens.wsi.tiling import TilingSpec, plan_tiles, read_thumbnail

from .conftest import write_plain_tiff


def _has_mallinfo2() -> bool:
    try:
        ctypes.CDLL("libc.so.6").mallinfo2  # noqa: B018
    except (OSError, AttributeError):
        return False
    return True


_HEAP_CHILD = """
import ctypes, json, sys
import numpy as np
from stromalens.wsi.memory import bound_heap

class MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd",
        "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]

libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = MallInfo2
bounded = bound_heap() if sys.argv[1] == "bounded" else False
big = np.ones(20 * 2**20, np.uint8)
del big                       # glibc now raises its mmap threshold to 20 MiB, unless bounded
before = libc.mallinfo2().arena
block = np.ones(10 * 2**20, np.uint8)
print(json.dumps({"bounded": bounded, "heap_growth": libc.mallinfo2().arena - before}))
"""


def _heap_growth(mode: str) -> dict:
    import json

    out = subprocess.run(
        [sys.executable, "-c", _HEAP_CHILD, mode], capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout)


@pytest.mark.skipif(not _has_mallinfo2(), reason="needs glibc ≥ 2.33 (mallinfo2)")
def test_bound_heap_keeps_block_sized_arrays_off_the_heap():
    # glibc's default: after a 20 MiB array is freed, a 10 MiB one is carved out of the heap
    # (where freed blocks of varying size fragment it: the decode worker grew ~100 → ~450 MiB).
    default = _heap_growth("default")
    assert default["heap_growth"] >= 8 * 2**20
    bounded = _heap_growth("bounded")
    assert bounded["bounded"] is True
    assert bounded["heap_growth"] < 2**20  # mapped on its own, returned to the system on free


def test_embed_slide_bounds_the_heap(synthetic_slides, tmp_path, monkeypatch):
    import stromalens.wsi.embed as embed

    calls = []
    monkeypatch.setattr(embed, "bound_heap", lambda: calls.append(1) or True)
    settings = embed.EmbedSettings(num_workers=0, export=False, stain="none")
    embed.embed_slide(synthetic_slides[0], tmp_path / "a.h5", None, settings)
    assert calls


def _single_level(path, width, height):
    rgb = np.full((height, width, 3), 240, np.uint8)
    rgb[height // 4 : 3 * height // 4, width // 4 : 3 * width // 4] = (180, 90, 160)
    return write_plain_tiff(path, rgb, resolution=True)  # 0.5 µm/px, one level


def test_thumbnail_chunks_equal_one_whole_resize(tmp_path):
    path = _single_level(tmp_path / "s.tiff", 3072, 1536)
    with open_slide(path) as slide:
        whole = slide.read_level(0)
        for mpp, factor in ((0.5, 1), (1.5, 3), (8.0, 16)):
            thumb, scale = read_thumbnail(slide, mpp)
            h, w = 1536 // factor, 3072 // factor
            expected = cv2.resize(
                whole[: h * factor, : w * factor], (w, h), interpolation=cv2.INTER_AREA
            )
            assert scale == factor
            np.testing.assert_array_equal(thumb, expected)


def test_planning_memory_bounded_by_the_thumbnail_cap(tmp_path):
    spec = TilingSpec(thumbnail_max_pixels=96 * 96)
    peaks, masks = [], []
    for side in (2048, 6144):
        path = _single_level(tmp_path / f"s{side}.tiff", side, side)
        with open_slide(path) as slide:
            tracemalloc.start()
            try:
                plan = plan_tiles(slide, spec)
                peaks.append(tracemalloc.get_traced_memory()[1])
            finally:
                tracemalloc.stop()
        masks.append(plan.mask.size)
        assert 0.2 < plan.tissue.mean() <= 1.0 and len(plan) > 0
    assert max(masks) <= 96 * 96
    # 9× the area: thumbnail, mask, integral image and read chunks all stay the same size
    # (reading in full-width strips, the old thumbnail peaked 3× higher on the larger slide).
    assert peaks[1] < 1.25 * peaks[0], [p / 2**20 for p in peaks]
