"""Tiling at a target µm/px and per-tile quality control.

Geometry
--------
A tile is ``tile_px`` pixels at ``target_mpp`` µm/px. The level it is read from follows TRIDENT's
rule (``get_best_level_and_custom_downsample``, with its patcher's tolerance of 0.1 on the
level-0 downsample, i.e. 10 % at level 0): with ε = ``mpp_tolerance`` (default 10 %),

* a level within tolerance, ``|level_mpp / target_mpp − 1| ≤ ε``, is read directly (the closest
  such level): ``tile_px`` level pixels, covering ``tile_px · level_mpp`` µm;
* otherwise the nearest finer level (the coarsest with ``level_mpp < target_mpp``) is read, a region
  of ``read_px = tile_px · target_mpp / level_mpp`` pixels resampled to ``tile_px`` (area
  interpolation), so the tile covers exactly ``tile_px · target_mpp`` µm;
* a slide whose finest level is coarser than the target beyond ε is an error naming its µm/px:
  upsampling would invent detail.

Within ε the tile is read directly, not resampled by a few per cent: every pixel stays as the
scanner recorded it (no interpolation blur, no upsampling), at the price of a field of view up to
ε larger or smaller. 20× scanners differ by that much (0.46–0.52 µm/px) and encoders trained at
"20×" saw all of them. TRIDENT chooses the level by the same rule, then resizes each tile to the
exact field of view; its magnification path (any 0.3–0.6 µm/px slide is "20×", read without
resizing) is more lenient than ours.

A 0.52 µm/px slide thus tiles at 0.5 µm/px from level 0 with 224-px tiles of 116.5 µm
(``level_mpp`` is stored with the features). Tiles are read in blocks of ``block_tiles²`` grid
cells (one ``read_region`` call each) and sliced, never one by one.

Tissue fraction comes from the thumbnail tissue mask (``thumbnail_mpp``, coarser when the slide
would need more than ``thumbnail_max_pixels``) through an integral image ``S``:
the mask sum over a rectangle is ``S[y1, x1] − S[y0, x1] − S[y1, x0] + S[y0, x0]``.

Quality control (every candidate tile's values are kept)
-------------------------------------------------------
* blur: variance of the Laplacian of the grey tile (Pech-Pacheco et al. 2000) in 4 × 4 cells,
  median over the cells holding tissue; low = out of focus;
* pen: fraction of strongly saturated pixels with a hue outside the H&E range (green, blue,
  cyan ink) or achromatic dark pixels (black ink);
* black / white: fractions of near-black and near-white (unstained glass) pixels.

References
----------
Pech-Pacheco JL et al. Diatom autofocusing in brightfield microscopy: a comparative study.
ICPR 2000. Lu MY et al. (CLAM) Nat Biomed Eng 5:555 (2021) for the 224-px/20× convention.
Zhang A et al. TRIDENT (2025), github.com/mahmoodlab/TRIDENT, ``wsi_objects/WSI.py``, for the
level rule.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import cv2
import numpy as np

from .reader import Slide
from .tissue import ink_pixels, tissue_mask

QC_FIELDS: tuple[str, ...] = ("tissue", "blur", "pen", "black", "white")


@dataclass(frozen=True)
class TilingSpec:
    """How a slide is cut into tiles and which tiles pass QC."""

    target_mpp: float = 0.5
    tile_px: int = 224
    stride_px: int = 224
    min_tissue: float = 0.5
    mpp_tolerance: float = 0.10
    block_tiles: int = 8
    thumbnail_mpp: float = 8.0
    thumbnail_max_pixels: int = 8_000_000
    min_blur: float = 50.0
    max_pen: float = 0.02
    max_black: float = 0.1
    max_white: float = 0.9

    def __post_init__(self) -> None:
        for name in ("target_mpp", "thumbnail_mpp"):
            value = getattr(self, name)
            if not (np.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be positive, got {value!r}")
        if self.tile_px < 8 or self.stride_px < 1:
            raise ValueError(f"tile_px={self.tile_px}, stride_px={self.stride_px} are too small")
        if not (np.isfinite(self.mpp_tolerance) and 0 <= self.mpp_tolerance < 1):
            raise ValueError(f"mpp_tolerance must lie in [0, 1), got {self.mpp_tolerance!r}")
        if not 0 <= self.min_tissue <= 1:
            raise ValueError(f"min_tissue must lie in [0, 1], got {self.min_tissue!r}")
        if self.thumbnail_max_pixels < 1:
            raise ValueError(f"thumbnail_max_pixels must be ≥ 1, got {self.thumbnail_max_pixels!r}")
        if self.block_tiles < 1:
            raise ValueError(f"block_tiles must be ≥ 1, got {self.block_tiles!r}")


@dataclass
class TilePlan:
    """Where the tiles of one slide lie, before any tile pixel is decoded.

    ``coords`` are level-0 top-left corners (n × 2, x then y) of the candidate tiles (tissue
    fraction ≥ ``min_tissue``); ``grid`` their (column, row) on the tiling grid.
    """

    spec: TilingSpec
    mpp: float
    level: int
    level_mpp: float
    read_px: int
    resample: bool
    step_level: float
    downsample: float
    tile_level0_px: float
    coords: np.ndarray
    grid: np.ndarray
    tissue: np.ndarray
    mask: np.ndarray
    mask_scale: float
    n_grid: int
    thumbnail: np.ndarray = field(repr=False, default=None)

    def __len__(self) -> int:
        return len(self.coords)

    def blocks(self) -> list[np.ndarray]:
        """Indices of the candidate tiles in each read block (row-major blocks)."""
        b = self.spec.block_tiles
        key = (self.grid[:, 1] // b) * 1_000_000 + self.grid[:, 0] // b
        order = np.argsort(key, kind="stable")
        _, starts = np.unique(key[order], return_index=True)
        return np.split(order, starts[1:])


def within_tolerance(level_mpp: float, target_mpp: float, tolerance: float) -> bool:
    """Whether a level is read directly at ``target_mpp``: ``|level_mpp / target_mpp − 1| ≤ ε``."""
    return abs(level_mpp / target_mpp - 1.0) <= tolerance


def choose_level(level_mpps: list[float], target_mpp: float, tolerance: float) -> int:
    """The level tiles at ``target_mpp`` are read from (TRIDENT's rule, see the module doc).

    The level closest to the target among those within ``tolerance`` (read directly); else the
    nearest finer level (read and resampled); a slide coarser than the target beyond the
    tolerance raises ``ValueError`` naming its µm/px.

    Example
    -------
    >>> choose_level([0.52, 2.08, 8.32], 0.5, 0.10)   # within 10 %: level 0, read directly
    0
    >>> choose_level([0.25, 1.0, 4.0], 0.5, 0.10)     # nearest finer: level 0, resampled
    0
    """
    if not (np.isfinite(tolerance) and tolerance >= 0):
        raise ValueError(f"mpp tolerance must be ≥ 0, got {tolerance!r}")
    near = [i for i, m in enumerate(level_mpps) if within_tolerance(m, target_mpp, tolerance)]
    if near:
        return min(near, key=lambda i: (abs(level_mpps[i] / target_mpp - 1.0), level_mpps[i]))
    finer = [i for i, m in enumerate(level_mpps) if m < target_mpp]
    if not finer:
        finest = min(level_mpps)
        raise ValueError(
            f"the slide's finest level is {finest:.3f} µm/px, coarser than the target "
            f"{target_mpp} µm/px by more than the tolerance ({tolerance:.0%}): the target is "
            "finer than the slide and upsampling would invent detail; lower target_mpp or "
            "raise mpp_tolerance"
        )
    return max(finer, key=lambda i: level_mpps[i])


#: The side of the largest region a thumbnail read asks of the slide (2048² RGB: 12 MB).
THUMBNAIL_CHUNK_PX = 2048


def _block_mean(slide: Slide, x: int, y: int, level: int, factor: int, ds: float) -> np.ndarray:
    """Mean RGB of the ``factor²`` level pixels from (x, y), read in pieces of at most
    ``THUMBNAIL_CHUNK_PX²`` (for a thumbnail pixel larger than one chunk)."""
    step, total = THUMBNAIL_CHUNK_PX, np.zeros(3)
    for dy in range(0, factor, step):
        for dx in range(0, factor, step):
            size = (min(step, factor - dx), min(step, factor - dy))
            origin = (int(round((x + dx) * ds)), int(round((y + dy) * ds)))
            total += slide.read_region(origin, level, size).reshape(-1, 3).sum(0, dtype=float)
    return np.round(total / factor**2).astype(np.uint8)


def read_thumbnail(
    slide: Slide, thumbnail_mpp: float = 8.0, max_pixels: int = 8_000_000
) -> tuple[np.ndarray, float]:
    """RGB thumbnail near ``thumbnail_mpp`` and its scale (level-0 px per thumbnail px).

    The thumbnail holds at most ``max_pixels`` pixels: a slide too large for that at
    ``thumbnail_mpp`` gets a coarser one, so the tissue mask and its temporaries (~20 bytes a
    thumbnail pixel) stay bounded however large the slide. It is read from the coarsest level at
    least as fine as needed (the smallest at least as large), in chunks of at most
    ``THUMBNAIL_CHUNK_PX²`` level pixels each area-averaged as it is read, so memory stays
    bounded by the thumbnail even for single-level slides. ``thumbnail_mpp=slide.mpp`` asks for
    the largest thumbnail within ``max_pixels`` (the overlays' use).
    """
    if max_pixels < 1:
        raise ValueError(f"max_pixels must be ≥ 1, got {max_pixels!r}")
    mpps = slide.level_mpps
    w0, h0 = slide.dimensions
    target = max(thumbnail_mpp, slide.mpp * float(np.sqrt(w0 * h0 / max_pixels)))
    ok = [i for i, m in enumerate(mpps) if m <= target * 1.01]
    level = max(ok, key=lambda i: mpps[i]) if ok else int(np.argmin(mpps))
    width, height = slide.level_dimensions[level]
    factor = max(1, int(round(target / mpps[level])))
    factor = max(factor, int(np.ceil(np.sqrt(width * height / max_pixels))))
    ds = slide.level_downsamples[level]
    out_w, out_h = width // factor, height // factor
    if out_w == 0 or out_h == 0:
        return np.full((1, max(1, out_w), 3), 255, np.uint8), ds * factor
    thumb = np.empty((out_h, out_w, 3), np.uint8)
    if factor > THUMBNAIL_CHUNK_PX:  # one thumbnail pixel spans several chunks
        for j in range(out_h):
            for i in range(out_w):
                thumb[j, i] = _block_mean(slide, i * factor, j * factor, level, factor, ds)
        return thumb, ds * factor
    # A multiple of factor: chunked area-averaging equals one whole resize.
    chunk = factor * (THUMBNAIL_CHUNK_PX // factor)
    for y in range(0, out_h * factor, chunk):
        rows = min(chunk, out_h * factor - y)
        for x in range(0, out_w * factor, chunk):
            cols = min(chunk, out_w * factor - x)
            block = slide.read_region((int(round(x * ds)), int(round(y * ds))), level, (cols, rows))
            if factor > 1:
                block = cv2.resize(
                    block, (cols // factor, rows // factor), interpolation=cv2.INTER_AREA
                )
            thumb[y // factor : (y + rows) // factor, x // factor : (x + cols) // factor] = block
    return thumb, ds * factor


def plan_tiles(slide: Slide, spec: TilingSpec | None = None) -> TilePlan:
    """Tissue mask, level choice and the candidate tile grid of ``slide``."""
    spec = spec or TilingSpec()
    try:
        level = choose_level(slide.level_mpps, spec.target_mpp, spec.mpp_tolerance)
    except ValueError as exc:
        raise ValueError(f"{getattr(slide, 'path', 'slide')}: {exc}") from exc
    level_mpp = slide.level_mpps[level]
    ds = slide.level_downsamples[level]
    if within_tolerance(level_mpp, spec.target_mpp, spec.mpp_tolerance):
        read_px, resample = spec.tile_px, False
    else:  # a finer level: read the target's field of view and shrink it to tile_px
        read_px, resample = int(round(spec.tile_px * spec.target_mpp / level_mpp)), True
    step_level = spec.stride_px * read_px / spec.tile_px
    tile0 = read_px * ds

    thumb, scale = read_thumbnail(slide, spec.thumbnail_mpp, spec.thumbnail_max_pixels)
    mask = tissue_mask(thumb, mpp=slide.mpp * scale)
    integral = cv2.integral(mask.astype(np.uint8))  # (h+1, w+1) int32

    width_l, height_l = slide.level_dimensions[level]
    n_cols = int(np.floor((width_l - read_px) / step_level)) + 1 if width_l >= read_px else 0
    n_rows = int(np.floor((height_l - read_px) / step_level)) + 1 if height_l >= read_px else 0
    cols, rows = np.meshgrid(np.arange(n_cols), np.arange(n_rows))
    cols, rows = cols.ravel(), rows.ravel()
    x0 = np.round(cols * step_level * ds).astype(np.int64)
    y0 = np.round(rows * step_level * ds).astype(np.int64)
    mh, mw = mask.shape
    mx0 = np.clip(np.floor(x0 / scale), 0, mw).astype(np.int64)
    my0 = np.clip(np.floor(y0 / scale), 0, mh).astype(np.int64)
    mx1 = np.clip(np.maximum(np.ceil((x0 + tile0) / scale), mx0 + 1), 0, mw).astype(np.int64)
    my1 = np.clip(np.maximum(np.ceil((y0 + tile0) / scale), my0 + 1), 0, mh).astype(np.int64)
    area = np.maximum((mx1 - mx0) * (my1 - my0), 1)
    inside = (
        integral[my1, mx1] - integral[my0, mx1] - integral[my1, mx0] + integral[my0, mx0]
    ).astype(float)
    fraction = inside / area
    keep = fraction >= spec.min_tissue if spec.min_tissue > 0 else np.ones_like(fraction, bool)
    return TilePlan(
        spec=spec,
        mpp=slide.mpp,
        level=level,
        level_mpp=level_mpp,
        read_px=read_px,
        resample=resample,
        step_level=step_level,
        downsample=ds,
        tile_level0_px=tile0,
        coords=np.stack([x0[keep], y0[keep]], axis=1).reshape(-1, 2),
        grid=np.stack([cols[keep], rows[keep]], axis=1).reshape(-1, 2),
        tissue=fraction[keep].astype(np.float32),
        mask=mask,
        mask_scale=scale,
        n_grid=int(n_cols * n_rows),
        thumbnail=thumb,
    )


def read_block(slide: Slide, plan: TilePlan, indices: np.ndarray) -> np.ndarray:
    """Decode the tiles ``indices`` of ``plan`` (one ``read_region``): (k, tile_px, tile_px, 3)."""
    grid = plan.grid[indices]
    c0, r0 = grid.min(axis=0)
    c1, r1 = grid.max(axis=0)
    step, px = plan.step_level, plan.read_px
    ox, oy = int(round(c0 * step)), int(round(r0 * step))
    width = int(round(c1 * step)) - ox + px
    height = int(round(r1 * step)) - oy + px
    origin = (int(round(c0 * step * plan.downsample)), int(round(r0 * step * plan.downsample)))
    block = slide.read_region(origin, plan.level, (width, height))
    size = plan.spec.tile_px
    tiles = np.empty((len(indices), size, size, 3), np.uint8)
    for k, (c, r) in enumerate(grid):
        x, y = int(round(c * step)) - ox, int(round(r * step)) - oy
        tile = block[y : y + px, x : x + px]
        if plan.resample:
            interp = cv2.INTER_AREA if px > size else cv2.INTER_LINEAR
            tile = cv2.resize(tile, (size, size), interpolation=interp)
        tiles[k] = tile
    return tiles


def tile_qc(tiles: np.ndarray) -> dict[str, np.ndarray]:
    """QC values of RGB tiles (n, h, w, 3) uint8: blur, pen, black and white (see module doc).

    Example
    -------
    >>> qc = tile_qc(np.full((2, 224, 224, 3), 255, np.uint8))
    >>> qc["white"].tolist()
    [1.0, 1.0]
    """
    tiles = np.asarray(tiles)
    if tiles.ndim != 4 or tiles.shape[-1] != 3:
        raise ValueError(f"tile_qc needs (n, h, w, 3) tiles, got shape {tiles.shape}")
    n, h, w = tiles.shape[:3]
    cell = max(8, min(h, w) // 4)
    out = {k: np.zeros(n, np.float32) for k in ("blur", "pen", "black", "white")}
    for i, tile in enumerate(tiles):
        grey = cv2.cvtColor(tile, cv2.COLOR_RGB2GRAY)
        hsv = cv2.cvtColor(tile, cv2.COLOR_RGB2HSV)
        sat, val = hsv[..., 1], hsv[..., 2]
        white = (sat < 20) & (val > 215)
        # Blur: Laplacian variance per cell, median over the cells that hold tissue, so a tile
        # half out of focus is caught and flat glass is not mistaken for blur.
        lap = cv2.Laplacian(grey, cv2.CV_32F)
        ch, cw = h // cell, w // cell
        lap_cells = lap[: ch * cell, : cw * cell].reshape(ch, cell, cw, cell)
        white_cells = white[: ch * cell, : cw * cell].reshape(ch, cell, cw, cell).mean(axis=(1, 3))
        variances = lap_cells.var(axis=(1, 3))
        tissue_cells = variances[white_cells < 0.5]
        out["blur"][i] = float(np.median(tissue_cells)) if tissue_cells.size else 0.0
        out["pen"][i] = np.mean(ink_pixels(hsv))
        out["black"][i] = np.mean(val < 40)
        out["white"][i] = np.mean(white)
    return out


def qc_pass(qc: dict[str, np.ndarray], spec: TilingSpec) -> np.ndarray:
    """Tiles that pass every QC rule of ``spec`` (tissue, blur, pen, black, white)."""
    return (
        (qc["tissue"] >= spec.min_tissue)
        & (qc["blur"] >= spec.min_blur)
        & (qc["pen"] <= spec.max_pen)
        & (qc["black"] <= spec.max_black)
        & (qc["white"] <= spec.max_white)
    )


def _spread_order(n: int) -> np.ndarray:
    """0..n-1 in van der Corput order: every prefix is spread evenly (0, n/2, n/4, 3n/4, …)."""
    bits = max(1, int(np.ceil(np.log2(max(n, 2)))))
    codes = np.arange(n)
    reversed_ = np.zeros(n, np.int64)
    for b in range(bits):
        reversed_ |= ((codes >> b) & 1) << (bits - 1 - b)
    return np.argsort(reversed_, kind="stable")


def sample_qc_tiles(
    slide: Slide, plan: TilePlan, n: int, max_reads: int | None = None, batch: int = 16
) -> tuple[np.ndarray, np.ndarray]:
    """Up to ``n`` tiles of ``plan`` that pass QC, spread evenly over the slide.

    ``max_reads`` (default ``4 n``) candidates evenly spaced in grid order are visited in van der
    Corput order — each prefix of the visit is itself evenly spread — and read ``batch`` at a
    time, one ``read_region`` per tile, until ``n`` have passed :func:`qc_pass`. At most
    ``max_reads`` tiles are decoded, so a slide with many pen, fold or glass tiles costs no more
    than four times a clean one, and a huge slide no more than a small one.

    Returns
    -------
    (indices, tiles) : the passing tiles' indices into ``plan`` (ascending) and their pixels
        (k, tile_px, tile_px, 3), k ≤ n.
    """
    if n < 1:
        raise ValueError(f"n must be ≥ 1, got {n!r}")
    max_reads = 4 * n if max_reads is None else max_reads
    if max_reads < n:
        raise ValueError(f"max_reads ({max_reads}) must be at least n ({n})")
    size = plan.spec.tile_px
    if len(plan) == 0:
        return np.zeros(0, np.int64), np.zeros((0, size, size, 3), np.uint8)
    picks = np.unique(np.round(np.linspace(0, len(plan) - 1, min(len(plan), max_reads))))
    visit = picks.astype(np.int64)[_spread_order(len(picks))]
    kept_idx, kept_tiles, found = [], [], 0
    for start in range(0, len(visit), batch):
        chosen = visit[start : start + batch]
        tiles = np.concatenate(
            [read_block(slide, plan, chosen[k : k + 1]) for k in range(len(chosen))]
        )
        qc = tile_qc(tiles)
        qc["tissue"] = plan.tissue[chosen]
        ok = qc_pass(qc, plan.spec)
        take = np.flatnonzero(ok)[: n - found]
        kept_idx.append(chosen[take])
        kept_tiles.append(tiles[take])
        found += len(take)
        if found >= n:
            break
    indices = np.concatenate(kept_idx)
    order = np.argsort(indices)
    return indices[order], np.concatenate(kept_tiles)[order]


def iter_blocks(
    slide: Slide, plan: TilePlan, shard: tuple[int, int] = (0, 1)
) -> Iterator[tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]]:
    """Yield ``(indices, tiles, qc)`` per block; ``shard=(i, k)`` takes every k-th block from i."""
    index, count = shard
    for b, indices in enumerate(plan.blocks()):
        if b % count != index:
            continue
        tiles = read_block(slide, plan, indices)
        qc = tile_qc(tiles)
        qc["tissue"] = plan.tissue[indices]
        yield indices, tiles, qc
