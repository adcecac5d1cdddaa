"""Tissue detection at thumbnail resolution.

The mask is Otsu's threshold on HSV saturation (glass is grey-white, stained tissue is coloured),
joined with a darkness test for pale but dense regions, then cleaned by morphology: closing
(bridging gaps between fibres), hole filling (pale lumina and myxoid matrix inside the tissue),
and removal of components smaller than ``min_area_um2``.

Otsu (1979) chooses the threshold t maximising the between-class variance

    σ_b²(t) = ω₀(t) ω₁(t) (μ₀(t) − μ₁(t))²,

with ω the class probabilities and μ the class means of the saturation histogram.

References
----------
Otsu N. A threshold selection method from gray-level histograms. IEEE Trans SMC 9:62–66 (1979).

Example
-------
>>> mask = tissue_mask(thumbnail_rgb, mpp=8.0)     # doctest: +SKIP
"""

from __future__ import annotations

import cv2
import numpy as np
from scipy import ndimage


def otsu_threshold(values: np.ndarray) -> float:
    """Otsu's threshold of uint8 ``values`` (maximal between-class variance)."""
    values = np.asarray(values)
    if values.size == 0:
        raise ValueError("otsu_threshold needs at least one value")
    hist = np.bincount(values.astype(np.uint8).ravel(), minlength=256).astype(float)
    p = hist / hist.sum()
    omega = np.cumsum(p)
    mu = np.cumsum(p * np.arange(256))
    mu_t = mu[-1]
    with np.errstate(divide="ignore", invalid="ignore"):
        sigma_b = (mu_t * omega - mu) ** 2 / (omega * (1.0 - omega))
    sigma_b = np.nan_to_num(sigma_b, nan=-1.0, posinf=-1.0)
    return float(np.argmax(sigma_b))


def tissue_mask(
    rgb: np.ndarray,
    mpp: float,
    *,
    min_saturation: float = 12.0,
    max_saturation_threshold: float = 25.0,
    closing_um: float = 24.0,
    min_area_um2: float = 20_000.0,
    fill_holes: bool = True,
) -> np.ndarray:
    """Boolean tissue mask of a thumbnail.

    Parameters
    ----------
    rgb : (h, w, 3) uint8 thumbnail.
    mpp : µm per thumbnail pixel (sets the morphology scales).
    min_saturation, max_saturation_threshold : the Otsu threshold on saturation (0–255) is
        clipped to this range, so a slide that is all tissue or all glass still gets a sane cut.
        The cap is 25, not higher: on a slide dominated by strongly stained stroma Otsu cuts
        above the pale myxoid matrix of chordoma (saturation ~25–40), which was then missed
        (IoU with the label map 0.73 on one synthetic slide at a cap of 40; ≥ 0.93 on 40
        synthetic slides of both morphologies at 25).
    closing_um : diameter of the closing element.
    min_area_um2 : components smaller than this are dropped (dust, debris).

    Returns
    -------
    (h, w) bool
    """
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"tissue_mask needs an (h, w, 3) uint8 image, got {rgb.shape} {rgb.dtype}")
    if not (np.isfinite(mpp) and mpp > 0):
        raise ValueError(f"mpp must be positive, got {mpp!r}")
    hsv = cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV)
    sat = cv2.GaussianBlur(hsv[..., 1], (0, 0), 1.0)
    value = hsv[..., 2]
    threshold = float(np.clip(otsu_threshold(sat), min_saturation, max_saturation_threshold))
    # Dense but pale tissue: darker than the glass by a clear margin.
    glass = float(np.percentile(value, 95))
    mask = (sat > threshold) | (value < glass - 40)
    mask &= value > 25  # pure black (scanner padding, slide edge) is not tissue
    radius = max(1, int(round(closing_um / mpp / 2)))
    disk = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
    mask = cv2.morphologyEx(mask.astype(np.uint8), cv2.MORPH_CLOSE, disk).astype(bool)
    if fill_holes:
        mask = ndimage.binary_fill_holes(mask)
    labelled, n = ndimage.label(mask)
    if n:
        areas = np.bincount(labelled.ravel())[1:] * mpp * mpp
        keep = np.concatenate([[False], areas >= min_area_um2])
        mask = keep[labelled]
    return mask


def tissue_contours(mask: np.ndarray, scale: float) -> list[list[list[float]]]:
    """Outer contours (and holes) of ``mask`` as polygons in level-0 pixels.

    ``scale`` is level-0 pixels per mask pixel. Each polygon is a closed ring ``[[x, y], ...]``.
    """
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
    rings = []
    for contour in contours:
        if len(contour) < 3:
            continue
        pts = (contour[:, 0, :].astype(float) * scale).tolist()
        pts.append(pts[0])
        rings.append(pts)
    return rings
