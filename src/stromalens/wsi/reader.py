"""Whole-slide reading: OpenSlide first, tiffslide as a fallback, µm/px never guessed.

A :class:`Slide` wraps whichever backend opened the file and answers in numpy: ``read_region``
returns an ``(h, w, 3)`` uint8 RGB array (transparent pixels composited on white), so the rest of
the stage never sees a backend object.

The physical pixel size comes from the slide (``openslide.mpp-x``, ``tiffslide.mpp-x``, or the TIFF
resolution tags) unless the caller overrides it (a manifest's ``wsi_mpp`` column or the CLI). A
slide without a pixel size and without an override raises :class:`ValueError`; tiling at a wrong
scale would silently change every downstream feature.

Example
-------
>>> slide = open_slide("P0001.tiff")                  # doctest: +SKIP
>>> slide.mpp, slide.dimensions
(0.5, (2048, 1536))
>>> block = slide.read_region((0, 0), 0, (1024, 1024))  # (1024, 1024, 3) uint8
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

_INCH_UM = 25_400.0
_CM_UM = 10_000.0


class SlideError(ValueError):
    """A slide that cannot be read (missing, truncated, unsupported or without µm/px)."""


def _mpp_from_properties(props) -> float | None:
    for key in ("openslide.mpp-x", "tiffslide.mpp-x", "aperio.MPP"):
        value = props.get(key)
        if value not in (None, ""):
            try:
                mpp = float(value)
            except ValueError:
                continue
            if np.isfinite(mpp) and mpp > 0:
                return mpp
    res, unit = props.get("tiff.XResolution"), str(props.get("tiff.ResolutionUnit", "")).lower()
    if res not in (None, "") and unit in ("centimeter", "inch"):
        try:
            per_unit = float(res)
        except ValueError:
            return None
        if per_unit > 0:
            return (_CM_UM if unit == "centimeter" else _INCH_UM) / per_unit
    return None


@dataclass
class Slide:
    """An open whole-slide image.

    Attributes
    ----------
    path : Path
    backend : str
        ``"openslide"`` or ``"tiffslide"``.
    mpp : float
        µm per level-0 pixel (from the file or the override).
    mpp_source : str
        ``"metadata"`` or ``"override"``.
    """

    path: Path
    backend: str
    mpp: float
    mpp_source: str
    _handle: object

    @property
    def dimensions(self) -> tuple[int, int]:
        """Level-0 ``(width, height)``."""
        return tuple(int(v) for v in self._handle.dimensions)

    @property
    def level_dimensions(self) -> list[tuple[int, int]]:
        return [tuple(int(v) for v in d) for d in self._handle.level_dimensions]

    @property
    def level_downsamples(self) -> list[float]:
        return [float(d) for d in self._handle.level_downsamples]

    @property
    def level_mpps(self) -> list[float]:
        """µm/px of each pyramid level."""
        return [self.mpp * d for d in self.level_downsamples]

    def read_region(self, location: tuple[int, int], level: int, size: tuple[int, int]):
        """RGB (h, w, 3) uint8 of ``size=(w, h)`` at ``level``, top-left at level-0 ``location``.

        Regions outside the slide come back white. Transparent pixels are composited on white.
        """
        if not 0 <= level < len(self.level_dimensions):
            raise ValueError(f"level {level} outside 0..{len(self.level_dimensions) - 1}")
        w, h = int(size[0]), int(size[1])
        if w <= 0 or h <= 0:
            raise ValueError(f"region size must be positive, got {size}")
        try:
            region = self._handle.read_region((int(location[0]), int(location[1])), level, (w, h))
        except Exception as exc:  # noqa: BLE001 - truncated/corrupt data surfaces here, per backend
            raise SlideError(
                f"cannot decode {self.path} at level {level}, {location}: "
                f"{type(exc).__name__}: {exc}"
            ) from exc
        rgba = np.asarray(region)
        if rgba.ndim == 3 and rgba.shape[2] == 4 and rgba[..., 3].min() < 255:
            # Compositing needs uint16 temporaries (~20 bytes a pixel): only where it matters.
            alpha = rgba[..., 3:4].astype(np.uint16)
            rgb = (rgba[..., :3] * alpha + 255 * (255 - alpha)) // 255
            return rgb.astype(np.uint8)
        return np.ascontiguousarray(rgba[..., :3]).astype(np.uint8, copy=False)

    def read_level(self, level: int, max_pixels: int = 64_000_000) -> np.ndarray:
        """The whole of one small pyramid level as RGB.

        A level larger than ``max_pixels`` (default 64 M, ~190 MB of RGB) raises ``ValueError``:
        a thumbnail of any slide is :func:`stromalens.wsi.tiling.read_thumbnail`, which reads in
        bounded chunks.
        """
        w, h = self.level_dimensions[level]
        if w * h > max_pixels:
            raise ValueError(
                f"level {level} of {self.path} is {w}×{h} px, more than {max_pixels:,}; "
                "read a thumbnail (stromalens.wsi.tiling.read_thumbnail) or regions instead"
            )
        return self.read_region((0, 0), level, (w, h))

    def close(self) -> None:
        close = getattr(self._handle, "close", None)
        if close is not None:
            close()

    def __enter__(self) -> Slide:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def open_slide(path: Path | str, mpp: float | None = None, backend: str | None = None) -> Slide:
    """Open a whole-slide image with OpenSlide, falling back to tiffslide.

    Parameters
    ----------
    path : path of any format OpenSlide reads (SVS, NDPI, MRXS, SCN, generic tiled TIFF …).
    mpp : µm/px override for level 0; required when the file does not carry it.
    backend : force ``"openslide"`` or ``"tiffslide"``.

    Raises
    ------
    SlideError
        The file is missing, unreadable (truncated, corrupt, unsupported), or carries no µm/px
        and ``mpp`` is not given.
    """
    path = Path(path)
    if not path.is_file():
        raise SlideError(f"slide not found: {path}")
    if mpp is not None and not (np.isfinite(mpp) and mpp > 0):
        raise ValueError(f"mpp override must be a positive number, got {mpp!r}")
    if backend not in (None, "openslide", "tiffslide"):
        raise ValueError(f"backend must be 'openslide' or 'tiffslide', got {backend!r}")
    errors = []
    handle, name = None, None
    for candidate in (backend,) if backend else ("openslide", "tiffslide"):
        try:
            if candidate == "openslide":
                import openslide

                handle = openslide.OpenSlide(str(path))
            else:
                import tiffslide

                handle = tiffslide.TiffSlide(path)
            name = candidate
            break
        except Exception as exc:  # noqa: BLE001 - each backend fails in its own way
            errors.append(f"{candidate}: {type(exc).__name__}: {exc}")
    if handle is None:
        raise SlideError(f"cannot read slide {path}: " + "; ".join(errors))
    if mpp is not None:
        value, source = float(mpp), "override"
    else:
        value, source = _mpp_from_properties(handle.properties), "metadata"
        if value is None:
            handle.close()
            raise SlideError(
                f"slide {path} carries no µm/px in its metadata; give it explicitly "
                "(manifest column 'wsi_mpp' or --mpp)"
            )
    return Slide(path=path, backend=name, mpp=value, mpp_source=source, _handle=handle)
