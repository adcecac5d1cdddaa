"""Procedural H&E whole-slide images with known composition.

A slide is rendered in optical density (OD) and converted to RGB by the Beer–Lambert law with
the site's stain vectors (Ruifrok & Johnston 2001):

    I_c = I₀ · exp(−(s_H·OD_H·h_c + s_E·OD_E·e_c + OD_pen·k_c)),   c ∈ {R, G, B}.

Composition follows the patient's biology:

* a compartment map (background glass, collagen-dense stroma, tumour nests, lymphocyte clusters)
  is drawn from smooth random fields whose area shares follow the cell fractions and whose
  spatial scale shrinks — more interleaving — as heterogeneity ``h`` rises;
* stroma carries spindle fibroblast nuclei at a density that rises with the CAF fraction and,
  directly, with ``a`` — ER-stressed CAFs are activated, proliferating myofibroblasts, so the
  stroma of an ERS–CAF-rich tumour is more cellular (``CAF_DENSITY``). With an
  :class:`EvidenceSpec` (mechanism (a) of :mod:`~stromalens.synthetic.mechanisms`) the ``a``
  term and a ``b`` term on stromal lymphocytes act only inside *hotspots*, a minority of the
  stroma, or — its null — spread evenly over all of it at the same mean;
* the same ``a`` term also changes what the activated CAFs look like (``CAF_ACTIVATION``, see
  below), so that a hotspot is visible in the tile's pixels and not only in its cell count;
* tumour nests hold vacuolated physaliphorous cells in pale myxoid matrix (or, for the external
  cohort's ``chondrosarcoma`` morphology, small cells in lacunae of chondroid matrix);
* lymphocytes form clusters, scatter in stroma, and infiltrate tumour nests — less so, gathering
  at the nest rim instead, as the crosstalk ``b`` rises (immune exclusion). With an
  :class:`EvidenceSpec` that slide-wide exclusion is held at its value for ``b`` = 0, and ``b``
  shows only as the evidence term's stromal lymphocytes — lymphocytes held in the stroma of
  the hotspots, a local exclusion — so that outside the hotspots neither ``a`` nor ``b``
  changes the slide (:class:`~stromalens.config.SparseEvidence`). The cell fractions the
  slide receives then carry no ``a`` either
  (:func:`~stromalens.synthetic.cohort._slide_biology`);
* some slides carry a tissue fold, an out-of-focus region or a pen mark, for QC to catch.

Every slide comes with the compartment label map it was rendered from, an artefact map, and the
position and type of every cell, so the true composition of any tile is known.

Why activated CAFs look different (issue 17)
--------------------------------------------
With density alone the hotspots were nearly invisible: in the stromal tiles of slides with
a > 0.5 a hot tile held 89 fibroblasts against a cold tile's 73 (+21%), while the same tiles
held 72 ± 45 lymphocytes whose nuclei carry as much haematoxylin as a spindle nucleus; within a
slide the fibroblast count explained 3% of the variance of the tile's haematoxylin density and
the lymphocytes 33%, so 12 optical-density statistics told hot from cold at AUC 0.5–0.6 where the
cell count did at 0.8. Pathology offers a second, morphological trace of the same biology:
activated, myofibroblastic CAFs (the α-SMA⁺ "myCAF" state; Öhlund et al. 2017, Kalluri 2016) are
plump, with enlarged, oval, darker nuclei instead of the thin wavy nuclei of quiescent
fibroblasts, and ER-stressed secretory CAFs expand their ER to deposit collagen, so desmoplastic
stroma is denser and more eosinophilic. The renderer ties this trait to the very activation that
raises the density: at a stromal point with activation

    α = gain · per_a · a      (inside a hotspot; 0 outside),      α = share · gain · per_a · a
                                                                  (diffuse null: everywhere),

a fibroblast nucleus is ``1 + c_w α`` times wider, ``1 + c_l α`` times longer and ``1 + c_h α``
times darker, and the matrix gains ``c_e α`` of eosin OD (``CAF_ACTIVATION``). α is the ``a`` term
that :func:`_evidence_probability` adds to the fibroblast probability, so no effect size
changes: K = 0 (``per_a`` = 0) gives α = 0 everywhere and the former rendering, sparse and
diffuse alike, and the diffuse null spreads the same mean α per unit stroma
(share · gain · per_a · a) evenly, as :mod:`~stromalens.synthetic.mechanisms` documents for the
density. A negative ``a`` makes hotspot CAFs thinner and paler (quiescent) — the density term's
sign too. Legacy rendering (``evidence`` None) has no trait.

References
----------
Öhlund D et al. Distinct populations of inflammatory fibroblasts and myofibroblasts in
pancreatic cancer. J Exp Med 2017;214:579–596. Kalluri R. The biology and function of
fibroblasts in cancer. Nat Rev Cancer 2016;16:582–598.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
from scipy import ndimage

from .biology import SiteEffects

#: Compartment codes of the label map.
COMPARTMENTS: dict[int, str] = {0: "background", 1: "stroma", 2: "tumour", 3: "immune"}
#: Bit flags of the artefact map.
ARTEFACTS: dict[int, str] = {1: "blur", 2: "pen", 4: "fold"}
CELL_KINDS: tuple[str, ...] = ("fibroblast", "lymphocyte", "tumour", "endothelial")

#: Share of the stromal grid points (20 level-0 px apart: 10 µm at 0.5 µm/px) that carry a
#: fibroblast nucleus: base + per_fraction · CAF fraction + per_a · a (clipped to [0.06, 0.95]).
CAF_DENSITY: dict[str, float] = {"base": 0.10, "per_fraction": 1.6, "per_a": 0.18}

#: Visible trait of activated CAFs per unit of activation α (the ``a`` term of the fibroblast
#: probability, see the module docstring): relative nucleus width, length and haematoxylin OD,
#: and eosin OD added to the matrix. At a typical hotspot (a = 1, gain 0.8, per_a 0.5: α = 0.4)
#: the nucleus is 2.6 → 3.1 px wide and 12% darker, the matrix 0.04 OD (10%) more eosinophilic.
CAF_ACTIVATION: dict[str, float] = {
    "nucleus_width": 0.5,
    "nucleus_length": 0.1,
    "nucleus_od": 0.3,
    "matrix_e": 0.1,
}
#: α is rendered on this grid (sprites are cached per level); the cells table keeps it exact.
ACTIVATION_STEP = 0.05
ACTIVATION_RANGE = (-1.5, 3.0)

#: Gaussian σ (µm) of the field whose top share makes the evidence hotspots of mechanism (a):
#: patches span one or two 112 µm tiles, so a tile is mostly in or mostly out (at the default
#: geometry 17% of stromal tiles are ≥ 50% hotspot and 59% < 10%). σ was 6 label px, meant as
#: 50 µm but 12 µm at 2 µm per label px, which left every stromal tile ~20% hotspot.
HOTSPOT_SIGMA_UM = 50.0

_PEN_OD = {"green": (0.95, 0.25, 0.75), "blue": (0.9, 0.6, 0.12), "black": (0.7, 0.7, 0.7)}


@dataclass(frozen=True)
class SlideGeometry:
    """Size and pyramid of a synthetic slide.

    ``width`` × ``height`` pixels at level 0 and ``mpp`` µm/px; pyramid levels at the given
    downsamples, tiled TIFF with ``tile`` px JPEG tiles; label and artefact maps stored at
    ``label_downsample``.
    """

    width: int = 3072
    height: int = 2560
    mpp: float = 0.5
    downsamples: tuple[int, ...] = (1, 4, 16)
    tile: int = 256
    label_downsample: int = 4
    jpeg_quality: int = 85

    def __post_init__(self) -> None:
        step = self.label_downsample * 16
        if self.width % step or self.height % step:
            raise ValueError(
                f"slide size {self.width}x{self.height} must be a multiple of {step} px"
            )


@dataclass(frozen=True)
class EvidenceSpec:
    """Where the slide shows ``a`` and ``b`` (mechanism (a)): hotspots or everywhere.

    Inside the hotspots (``share`` of the stroma) the fibroblast density rises by
    ``gain · per_a · a`` and the stromal-lymphocyte density by ``gain · per_b · b``; with
    ``sparse`` False the same mean gains, ``share · gain · per_…``, apply to all the stroma.
    ``gain`` is the stratum's slide reliability (mechanism (b)).
    """

    share: float = 0.2
    per_a: float = 0.5
    per_b: float = 0.3
    sparse: bool = True
    gain: float = 1.0


@dataclass
class RenderedSlide:
    rgb: np.ndarray  # (H, W, 3) uint8, level 0
    labels: np.ndarray  # (H/ds, W/ds) uint8 compartment codes
    artefacts: np.ndarray  # (H/ds, W/ds) uint8 bit flags
    cells: pd.DataFrame  # x, y (level-0 px), kind
    artefact_shapes: list[dict] = field(default_factory=list)
    exclusion_points: np.ndarray = field(default_factory=lambda: np.zeros((0, 2)))
    evidence: np.ndarray | None = None  # (H/ds, W/ds) uint8, 1 in the hotspots; None: legacy
    activation: np.ndarray | None = None  # (H/ds, W/ds) float32 CAF activation α; None: legacy


# --------------------------------------------------------------------------- sprites
def _disk(radius: float, soft: float = 0.8) -> np.ndarray:
    r = int(np.ceil(radius + 2 * soft))
    y, x = np.mgrid[-r : r + 1, -r : r + 1]
    d = np.hypot(x, y)
    return np.clip((radius - d) / soft + 0.5, 0.0, 1.0)


def _ellipse(a: float, b: float, angle: float, soft: float = 0.8) -> np.ndarray:
    r = int(np.ceil(max(a, b) + 2 * soft))
    y, x = np.mgrid[-r : r + 1, -r : r + 1].astype(float)
    c, s = np.cos(angle), np.sin(angle)
    u, v = (c * x + s * y) / a, (-s * x + c * y) / b
    d = (np.hypot(u, v) - 1.0) * min(a, b)
    return np.clip(0.5 - d / soft, 0.0, 1.0)


@dataclass(frozen=True)
class Sprite:
    """A cell stamp: OD contributions of H and E and its coverage alpha, centred."""

    h: np.ndarray
    e: np.ndarray
    alpha: np.ndarray


@lru_cache(maxsize=4)
def _sprites(morphology: str) -> dict[str, tuple[Sprite, ...]]:
    rng = np.random.default_rng(12345)
    lymph = tuple(
        Sprite(h=0.95 * m, e=0.05 * m, alpha=m) for m in (_disk(r) for r in (4.5, 5.0, 5.5))
    )
    spindle = _spindles(0.0)
    tumour = []
    for _ in range(12):
        if morphology == "chordoma":
            # physaliphorous cell: large, pale eosinophilic, bubbly (vacuolated) cytoplasm
            radius = rng.uniform(19.0, 25.0)
            body = _disk(radius, soft=1.5)
            r = body.shape[0] // 2
            holes = np.zeros_like(body)
            for _ in range(rng.integers(4, 9)):
                cy, cx = rng.uniform(-0.6, 0.6, 2) * radius
                hr = rng.uniform(3.0, 7.5)
                d = _disk(hr)
                hh = d.shape[0] // 2
                y0, x0 = int(r + cy) - hh, int(r + cx) - hh
                y1, x1 = y0 + d.shape[0], x0 + d.shape[1]
                if y0 >= 0 and x0 >= 0 and y1 <= body.shape[0] and x1 <= body.shape[1]:
                    holes[y0:y1, x0:x1] = np.maximum(holes[y0:y1, x0:x1], d)
            nucleus = np.zeros_like(body)
            d = _disk(rng.uniform(4.5, 6.0))
            hh = d.shape[0] // 2
            oy, ox = (rng.uniform(-0.35, 0.35, 2) * radius).astype(int)
            nucleus[r + oy - hh : r + oy + hh + 1, r + ox - hh : r + ox + hh + 1] = d
            cytoplasm = body * (1.0 - 0.85 * holes)
            tumour.append(
                Sprite(h=0.05 * cytoplasm + 0.8 * nucleus, e=0.24 * cytoplasm, alpha=body)
            )
        else:
            # chondrocyte-like cell in a clear lacuna of chondroid matrix
            lacuna = _disk(rng.uniform(9.0, 13.0), soft=1.2)
            r = lacuna.shape[0] // 2
            nucleus = np.zeros_like(lacuna)
            d = _disk(rng.uniform(3.5, 5.0))
            hh = d.shape[0] // 2
            nucleus[r - hh : r + hh + 1, r - hh : r + hh + 1] = d
            tumour.append(Sprite(h=0.9 * nucleus, e=0.08 * lacuna, alpha=lacuna))
    vessel = []
    for radius in (10.0, 14.0, 18.0):
        outer, inner = _disk(radius + 3.0), _disk(radius)
        pad = (outer.shape[0] - inner.shape[0]) // 2
        inner = np.pad(inner, pad)
        wall = np.clip(outer - inner, 0, 1)
        vessel.append(Sprite(h=0.35 * wall, e=0.5 * wall + 0.9 * inner * 0.6, alpha=outer))
    return {
        "lymphocyte": lymph,
        "fibroblast": spindle,
        "tumour": tuple(tumour),
        "endothelial": tuple(vessel),
    }


@lru_cache(maxsize=128)
def _spindles(alpha: float) -> tuple[Sprite, ...]:
    """Eight orientations of a fibroblast nucleus at activation ``alpha`` (``CAF_ACTIVATION``);
    ``alpha`` 0 is the quiescent 11 × 2.6 px spindle of h OD 0.75."""
    t = CAF_ACTIVATION
    length = 11.0 * max(0.5, 1.0 + t["nucleus_length"] * alpha)
    width = 2.6 * max(0.6, 1.0 + t["nucleus_width"] * alpha)
    od = 0.75 * max(0.5, 1.0 + t["nucleus_od"] * alpha)
    out = []
    for k in range(8):
        m = _ellipse(length, width, np.pi * k / 8)
        out.append(Sprite(h=od * m, e=0.0 * m, alpha=m))
    return tuple(out)


def _render_levels(alpha: np.ndarray) -> np.ndarray:
    """α on the rendering grid: ``ACTIVATION_STEP`` steps, clipped to ``ACTIVATION_RANGE``."""
    clipped = np.clip(alpha, *ACTIVATION_RANGE)
    return np.round(clipped / ACTIVATION_STEP) * ACTIVATION_STEP


def _stamp(shape, centres: np.ndarray, variants: np.ndarray, sprites, channels) -> list:
    """Sum sprite channels at integer centres into flat images of ``shape`` (one bincount each)."""
    height, width = shape
    idx_parts, val_parts = [], {c: [] for c in channels}
    for v, sprite in enumerate(sprites):
        pts = centres[variants == v]
        if len(pts) == 0:
            continue
        r = sprite.alpha.shape[0] // 2
        nz = np.nonzero(sprite.alpha > 1e-3)
        dy, dx = nz[0] - r, nz[1] - r
        ys = pts[:, 1, None] + dy[None, :]
        xs = pts[:, 0, None] + dx[None, :]
        ok = (ys >= 0) & (ys < height) & (xs >= 0) & (xs < width)
        idx_parts.append((ys * width + xs)[ok])
        for c in channels:
            vals = getattr(sprite, c)[nz]
            val_parts[c].append(np.broadcast_to(vals, ys.shape)[ok])
    if not idx_parts:
        return [np.zeros(shape, np.float32) for _ in channels]
    idx = np.concatenate(idx_parts)
    return [
        np.bincount(idx, np.concatenate(val_parts[c]), minlength=height * width)
        .reshape(shape)
        .astype(np.float32)
        for c in channels
    ]


# --------------------------------------------------------------------------- layout
def _smooth_field(shape, sigma, rng) -> np.ndarray:
    f = ndimage.gaussian_filter(rng.standard_normal(shape), sigma, mode="wrap")
    return (f - f.mean()) / (f.std() + 1e-12)


def _upsample(field_lowres: np.ndarray, shape) -> np.ndarray:
    return cv2.resize(
        field_lowres.astype(np.float32), (shape[1], shape[0]), interpolation=cv2.INTER_LINEAR
    )


def _top_share(score: np.ndarray, allowed: np.ndarray, share: float) -> np.ndarray:
    if share <= 0 or not allowed.any():
        return np.zeros_like(allowed)
    threshold = np.quantile(score[allowed], 1.0 - min(share, 1.0))
    return allowed & (score >= threshold)


def _immune_total(fractions: pd.Series) -> float:
    return float(sum(v for k, v in fractions.items() if k not in ("CAF", "Tumour", "Endothelial")))


def compartment_shares(fractions: pd.Series) -> dict[str, float]:
    """Area shares of stroma, tumour and immune clusters within the tissue."""
    immune = _immune_total(fractions)
    weights = {
        "stroma": float(fractions["CAF"] + fractions["Endothelial"]) + 0.12,
        "tumour": float(fractions["Tumour"]),
        "immune": 0.45 * immune,
    }
    total = sum(weights.values())
    return {k: v / total for k, v in weights.items()}


def _layout(geometry: SlideGeometry, shares, h: float, exclusion: float, rng):
    """Label map at label resolution: tissue outline, then immune, tumour and stroma."""
    ds = geometry.label_downsample
    shape = (geometry.height // ds, geometry.width // ds)
    coarse = (geometry.height // (ds * 16), geometry.width // (ds * 16))
    yy, xx = np.mgrid[0 : coarse[0], 0 : coarse[1]]
    cy, cx = (
        coarse[0] / 2 + rng.normal(0, coarse[0] * 0.04),
        coarse[1] / 2 + rng.normal(0, coarse[1] * 0.04),
    )
    ry, rx = coarse[0] * rng.uniform(0.36, 0.44), coarse[1] * rng.uniform(0.36, 0.44)
    envelope = 1.0 - ((yy - cy) / ry) ** 2 - ((xx - cx) / rx) ** 2
    outline = envelope + 0.35 * _smooth_field(coarse, 2.0, rng)
    tissue = _upsample(outline, shape) > 0.0
    tissue = ndimage.binary_fill_holes(tissue)

    scale = float(np.clip(3.2 * np.exp(-0.35 * h), 1.2, 6.0))  # coarse px; shrinks with h
    tumour_f = _upsample(_smooth_field(coarse, scale, rng), shape)
    immune_f = _upsample(_smooth_field(coarse, scale * 0.7, rng), shape)
    # Exclusion pushes lymphocyte clusters away from tumour nests.
    immune_score = immune_f - 1.5 * exclusion * tumour_f
    labels = np.zeros(shape, np.uint8)
    immune = _top_share(immune_score, tissue, shares["immune"])
    rest = tissue & ~immune
    tumour = _top_share(tumour_f, rest, shares["tumour"] / max(1e-6, 1 - shares["immune"]))
    labels[tissue] = 1
    labels[tumour] = 2
    labels[immune] = 3
    return labels


def _jittered_grid(geometry: SlideGeometry, spacing: float, rng) -> np.ndarray:
    ny, nx = int(geometry.height / spacing), int(geometry.width / spacing)
    gy, gx = np.mgrid[0:ny, 0:nx]
    pts = np.stack([gx.ravel(), gy.ravel()], axis=1).astype(float) * spacing + spacing / 2
    pts += rng.uniform(-0.4, 0.4, pts.shape) * spacing
    pts = np.clip(pts, 0, [geometry.width - 1, geometry.height - 1])
    return pts.astype(np.int64)


def _select(points, label_map, ds, keep_where, probability, rng) -> np.ndarray:
    lab = label_map[points[:, 1] // ds, points[:, 0] // ds]
    ok = keep_where(lab) & (rng.uniform(size=len(points)) < probability)
    return points[ok]


def hotspot_sigma_px(geometry: SlideGeometry) -> float:
    """σ of the hotspots' smoothing in label px: :data:`HOTSPOT_SIGMA_UM` / (downsample · mpp).

    Example
    -------
    >>> hotspot_sigma_px(SlideGeometry())  # 50 µm / (4 · 0.5 µm/px)
    25.0
    """
    return float(HOTSPOT_SIGMA_UM / (geometry.label_downsample * geometry.mpp))


def hotspot_map(labels: np.ndarray, share: float, rng, sigma_px: float) -> np.ndarray:
    """Evidence hotspots: the top ``share`` of a smooth random field (Gaussian σ of
    ``sigma_px`` label px, :func:`hotspot_sigma_px`) within the stroma (label 1), at label
    resolution; uint8, 1 inside."""
    stroma = labels == 1
    score = ndimage.gaussian_filter(rng.standard_normal(labels.shape), sigma_px, mode="wrap")
    return _top_share(score, stroma, share).astype(np.uint8)


def evidence_map(labels: np.ndarray, hot: np.ndarray, gain_hot: float, spec) -> np.ndarray:
    """The latent's term at each label px of the stroma: ``gain_hot`` in the hotspots and 0
    elsewhere (``spec.sparse``), or ``spec.share · gain_hot`` over all the stroma (the diffuse
    null: the same mean per unit stroma, spread evenly); 0 off the stroma. float32.

    Example
    -------
    >>> labels = np.ones((2, 2), np.uint8); hot = np.array([[1, 0], [0, 0]], np.uint8)
    >>> evidence_map(labels, hot, 0.8, EvidenceSpec(share=0.25)).astype(float).round(3).tolist()
    [[0.8, 0.0], [0.0, 0.0]]
    >>> diffuse = evidence_map(labels, hot, 0.8, EvidenceSpec(share=0.25, sparse=False))
    >>> round(float(diffuse.mean()), 3)
    0.2
    """
    stroma = labels == 1
    if spec.sparse:
        return np.where(stroma & (hot > 0), gain_hot, 0.0).astype(np.float32)
    return np.where(stroma, spec.share * gain_hot, 0.0).astype(np.float32)


def _at(points: np.ndarray, label_map: np.ndarray, ds: int) -> np.ndarray:
    return label_map[points[:, 1] // ds, points[:, 0] // ds]


def _evidence_probability(base, term: np.ndarray) -> np.ndarray:
    """Per-point selection probability: ``base`` plus the latent's term at the point."""
    return np.clip(base + term, 0.02, 0.95)


# --------------------------------------------------------------------------- rendering
def render_slide(
    fractions: pd.Series,
    latents: dict[str, float],
    site: SiteEffects,
    geometry: SlideGeometry,
    seed_sequence,
    *,
    morphology: str = "chordoma",
    artefact_probability: dict[str, float] | None = None,
    evidence: EvidenceSpec | None = None,
) -> RenderedSlide:
    """Render one slide for a patient with true cell ``fractions`` and latents ``a, b, h``.

    ``evidence`` None keeps the former rendering (the ``a`` term of ``CAF_DENSITY`` over all
    the stroma, no hotspots); an :class:`EvidenceSpec` plants mechanism (a).
    """
    rng = np.random.default_rng(seed_sequence)
    probs = {"fold": 0.3, "blur": 0.4, "pen": 0.25} | (artefact_probability or {})
    ds = geometry.label_downsample
    height, width = geometry.height, geometry.width
    shape = (height, width)
    immune_total = _immune_total(fractions)
    # Under mechanism (a) the crosstalk shows only as the evidence term's stromal lymphocytes,
    # so the slide-wide exclusion stays at its value for b = 0 (docstring).
    b_wide = latents["b"] if evidence is None else 0.0
    exclusion = float(1.0 / (1.0 + np.exp(-1.8 * b_wide)))

    labels = _layout(geometry, compartment_shares(fractions), latents["h"], exclusion, rng)
    full = np.repeat(np.repeat(labels, ds, axis=0), ds, axis=1)
    tissue = full > 0

    # Matrix textures, computed at quarter resolution and upsampled (cheap, and fibre bundles
    # of ~2 µm width are what collagen looks like at 20×).
    quarter = (height // 4, width // 4)
    fibres = np.zeros(quarter, np.float32)
    wsum = np.zeros(quarter, np.float32)
    for angle in (0.0, 60.0, 120.0):
        wfield = _upsample(_smooth_field((quarter[0] // 32, quarter[1] // 32), 1.5, rng), quarter)
        streak = ndimage.gaussian_filter(rng.standard_normal(quarter, np.float32), (0.5, 3.0))
        rot = cv2.getRotationMatrix2D((quarter[1] / 2, quarter[0] / 2), angle, 1.0)
        streak = cv2.warpAffine(
            streak, rot, (quarter[1], quarter[0]), borderMode=cv2.BORDER_REFLECT
        )
        w = np.exp(2.0 * wfield)
        fibres += w * streak / (streak.std() + 1e-6)
        wsum += w
    fibres = _upsample(fibres / wsum, shape)
    bubbles = ndimage.gaussian_filter(rng.standard_normal(quarter, np.float32), 1.0)
    bubbles = _upsample(bubbles / (bubbles.std() + 1e-6), shape)

    # Base optical density of each compartment: a lookup by label plus texture terms.
    if morphology == "chordoma":
        matrix_h, matrix_e = (0.13, 0.05), (0.05, 0.02)  # pale bluish myxoid matrix
    else:
        matrix_h, matrix_e = (0.26, 0.04), (0.10, 0.02)  # chondroid matrix
    #            background stroma  tumour        immune
    base_h = np.array([0.0, 0.035, matrix_h[0], 0.08], np.float32)[full]
    base_e = np.array([0.0, 0.42, matrix_e[0], 0.22], np.float32)[full]
    fibre_gain = np.array([0.0, 0.13, 0.0, 0.06], np.float32)[full]
    bubble_h = np.array([0.0, 0.0, matrix_h[1], 0.0], np.float32)[full]
    bubble_e = np.array([0.0, 0.0, matrix_e[1], 0.0], np.float32)[full]
    od_e = base_e + fibre_gain * fibres + bubble_e * bubbles
    od_h = base_h + bubble_h * bubbles
    del base_h, base_e, fibre_gain, bubble_h, bubble_e, fibres, bubbles

    # Cells.
    sprites = _sprites(morphology)
    stromal = _stromal_cells(geometry, labels, fractions, latents, immune_total, evidence, rng)
    fibroblasts, hot = stromal.fibroblasts, stromal.hot
    if stromal.activation_map is not None:  # the activated CAFs' denser, eosinophilic matrix
        matrix = np.repeat(np.repeat(stromal.activation_map, ds, axis=0), ds, axis=1)
        od_e += CAF_ACTIVATION["matrix_e"] * matrix
        del matrix
    infiltrating = _select(
        _jittered_grid(geometry, 26.0, rng),
        labels,
        ds,
        lambda lab: lab == 2,
        float(np.clip(1.6 * immune_total * (1.0 - exclusion), 0, 0.8)),
        rng,
    )
    # Rim lymphocytes: stroma within ~60 µm of a tumour nest, denser with exclusion.
    distance = ndimage.distance_transform_edt(labels != 2) * ds  # level-0 px
    rim_map = (labels == 1) & (distance < 120)
    rim_labels = np.where(rim_map, 9, 0).astype(np.uint8)
    rim_lymph = _select(
        _jittered_grid(geometry, 14.0, rng),
        rim_labels,
        ds,
        lambda lab: lab == 9,
        float(np.clip(0.9 * exclusion * (0.2 + 3.0 * immune_total), 0, 0.8)),
        rng,
    )
    tumour_cells = _select(
        _jittered_grid(geometry, 38.0 if morphology == "chordoma" else 34.0, rng),
        labels,
        ds,
        lambda lab: lab == 2,
        0.85,
        rng,
    )
    vessels = _select(
        _jittered_grid(geometry, 110.0, rng),
        labels,
        ds,
        lambda lab: lab == 1,
        float(np.clip(4.0 * fractions["Endothelial"], 0, 0.6)),
        rng,
    )
    lymphocytes = np.concatenate(
        [stromal.cluster_lymph, stromal.stromal_lymph, infiltrating, rim_lymph]
    )

    def variants(points, kind):
        return rng.integers(0, len(sprites[kind]), len(points))

    # Tumour cells replace matrix where they sit (vacuoles look clear, not myxoid).
    t_alpha, t_h, t_e = _stamp(
        shape,
        tumour_cells,
        variants(tumour_cells, "tumour"),
        sprites["tumour"],
        ("alpha", "h", "e"),
    )
    cover = np.minimum(t_alpha, 1.0)
    od_h = od_h * (1.0 - cover) + t_h
    od_e = od_e * (1.0 - cover) + t_e
    s_h, s_e = _stamp_fibroblasts(
        shape, fibroblasts, variants(fibroblasts, "fibroblast"), stromal.activation
    )
    od_h += s_h
    od_e += s_e
    for kind, pts in (
        ("lymphocyte", lymphocytes),
        ("endothelial", vessels),
    ):
        s_h, s_e = _stamp(shape, pts, variants(pts, kind), sprites[kind], ("h", "e"))
        od_h += s_h
        od_e += s_e
    od_h += tissue * _upsample(rng.normal(0, 0.015, quarter), shape)

    # Artefacts.
    artefacts = np.zeros_like(labels)
    shapes: list[dict] = []
    od_pen = None
    if rng.uniform() < probs["fold"]:
        thickness = int(rng.uniform(40, 90))
        # A straight fold through a random tissue point, at a random angle.
        ty, tx = np.nonzero(labels > 0)
        k = rng.integers(len(ty)) if len(ty) else 0
        cy, cx = (ty[k] * ds, tx[k] * ds) if len(ty) else (height // 2, width // 2)
        angle = rng.uniform(0, np.pi)
        reach = width + height
        p0 = (int(cx - reach * np.cos(angle)), int(cy - reach * np.sin(angle)))
        p1 = (int(cx + reach * np.cos(angle)), int(cy + reach * np.sin(angle)))
        band = np.zeros(shape, np.uint8)
        cv2.line(band, p0, p1, 1, thickness)
        band = band.astype(bool) & tissue
        od_h[band] *= 2.2
        od_e[band] *= 2.2
        small = cv2.resize(
            band.astype(np.uint8),
            (labels.shape[1], labels.shape[0]),
            interpolation=cv2.INTER_NEAREST,
        ).astype(bool)
        artefacts[small] |= 4
        shapes.append({"kind": "fold", "line": [p0, p1], "width_px": thickness})
    if rng.uniform() < probs["pen"]:
        colour = str(rng.choice(list(_PEN_OD)))
        n = 5
        xs = np.linspace(rng.uniform(0.05, 0.3), rng.uniform(0.7, 0.95), n) * width
        ys = (rng.uniform(0.1, 0.9) + np.cumsum(rng.normal(0, 0.05, n))) * height
        pts = np.stack([xs, np.clip(ys, 0, height - 1)], 1).astype(np.int32)
        thickness = int(rng.uniform(20, 40))
        pen = np.zeros(shape, np.uint8)
        cv2.polylines(pen, [pts], False, 1, thickness)
        od_pen = pen.astype(np.float32) * 0.9
        small = cv2.resize(
            pen, (labels.shape[1], labels.shape[0]), interpolation=cv2.INTER_NEAREST
        ).astype(bool)
        artefacts[small] |= 2
        shapes.append(
            {"kind": "pen", "colour": colour, "polyline": pts.tolist(), "width_px": thickness}
        )
    else:
        colour = "green"

    s_h, s_e = site.stain_intensity
    thickness_factor = rng.uniform(0.9, 1.1)
    stain_h = np.asarray(site.stain_h, np.float32) * s_h * thickness_factor
    stain_e = np.asarray(site.stain_e, np.float32) * s_e * thickness_factor
    pen_vec = np.asarray(_PEN_OD[colour], np.float32)
    rgb = np.empty((height, width, 3), np.uint8)
    np.clip(od_h, 0, None, out=od_h)
    np.clip(od_e, 0, None, out=od_e)
    for c in range(3):
        od = od_h * stain_h[c] + od_e * stain_e[c]
        if od_pen is not None:
            od += od_pen * pen_vec[c]
        rgb[..., c] = np.clip(site.brightness * np.exp(-od), 0, 255).astype(np.uint8)

    if rng.uniform() < probs["blur"]:
        bw, bh = int(rng.uniform(500, 900)), int(rng.uniform(500, 900))
        ty, tx = np.nonzero(labels > 0)
        k = rng.integers(len(ty)) if len(ty) else 0
        cy, cx = (ty[k] * ds, tx[k] * ds) if len(ty) else (height // 2, width // 2)
        x0 = int(np.clip(cx - bw // 2, 0, width - bw))
        y0 = int(np.clip(cy - bh // 2, 0, height - bh))
        rgb[y0 : y0 + bh, x0 : x0 + bw] = cv2.GaussianBlur(
            rgb[y0 : y0 + bh, x0 : x0 + bw], (0, 0), 4.0
        )
        artefacts[y0 // ds : (y0 + bh) // ds, x0 // ds : (x0 + bw) // ds] |= 1
        shapes.append({"kind": "blur", "rect": [x0, y0, bw, bh], "sigma_px": 4.0})

    cells = pd.DataFrame(
        {
            "x": np.concatenate(
                [fibroblasts[:, 0], lymphocytes[:, 0], tumour_cells[:, 0], vessels[:, 0]]
            ).astype(np.int32),
            "y": np.concatenate(
                [fibroblasts[:, 1], lymphocytes[:, 1], tumour_cells[:, 1], vessels[:, 1]]
            ).astype(np.int32),
            "kind": pd.Categorical(
                ["fibroblast"] * len(fibroblasts)
                + ["lymphocyte"] * len(lymphocytes)
                + ["tumour"] * len(tumour_cells)
                + ["endothelial"] * len(vessels),
                categories=list(CELL_KINDS),
            ),
            # each fibroblast's activation α (module docstring); 0 for the other cells
            "activation": np.concatenate(
                [stromal.activation, np.zeros(len(lymphocytes) + len(tumour_cells) + len(vessels))]
            ).astype(np.float32),
        }
    )
    # Immune-exclusion points: lymphocytes gathered at the rim of tumour nests.
    n_points = int(round(40 * exclusion))
    take = rng.permutation(len(rim_lymph))[:n_points]
    return RenderedSlide(
        rgb=rgb,
        labels=labels,
        artefacts=artefacts,
        cells=cells,
        artefact_shapes=shapes,
        exclusion_points=rim_lymph[take],
        evidence=hot,
        activation=stromal.activation_map,
    )


@dataclass
class StromalCells:
    """The stroma's cells and maps (:func:`_stromal_cells`)."""

    fibroblasts: np.ndarray  # (n, 2) level-0 px
    activation: np.ndarray  # (n,) each fibroblast's activation α
    stromal_lymph: np.ndarray
    cluster_lymph: np.ndarray
    hot: np.ndarray | None  # label-res hotspot map; None: legacy
    activation_map: np.ndarray | None  # label-res α; None: legacy


def _stromal_cells(geometry, labels, fractions, latents, immune_total, evidence, rng):
    """Fibroblasts with their activation, stromal and cluster lymphocytes, and the maps."""
    ds = geometry.label_downsample
    caf_base = CAF_DENSITY["base"] + CAF_DENSITY["per_fraction"] * fractions["CAF"]
    lymph_base = float(np.clip(0.05 + 1.2 * immune_total, 0, 0.8))
    if evidence is None:
        caf_density = float(np.clip(caf_base + CAF_DENSITY["per_a"] * latents["a"], 0.06, 0.95))
        grid = _jittered_grid(geometry, 20.0, rng)
        fibroblasts = _select(grid, labels, ds, lambda lab: lab == 1, caf_density, rng)
        hot = alpha_map = None
        alpha = np.zeros(len(fibroblasts))
    else:
        hot = hotspot_map(labels, evidence.share, rng, hotspot_sigma_px(geometry))
        grid = _jittered_grid(geometry, 20.0, rng)  # after the map: the former draw order
        # the a term of the fibroblast probability is also the CAFs' activation α (docstring)
        alpha_map = evidence_map(
            labels, hot, evidence.gain * evidence.per_a * latents["a"], evidence
        )
        p = _evidence_probability(caf_base, _at(grid, alpha_map, ds))
        fibroblasts = _select(grid, labels, ds, lambda lab: lab == 1, p, rng)
        alpha = _at(fibroblasts, alpha_map, ds).astype(np.float64)
    cluster_lymph = _select(
        _jittered_grid(geometry, 12.5, rng), labels, ds, lambda lab: lab == 3, 0.85, rng
    )
    grid = _jittered_grid(geometry, 28.0, rng)
    if evidence is not None:
        gain_b = evidence.gain * evidence.per_b * latents["b"]
        lymph_p = _evidence_probability(
            lymph_base, _at(grid, evidence_map(labels, hot, gain_b, evidence), ds)
        )
    else:
        lymph_p = lymph_base
    stromal_lymph = _select(grid, labels, ds, lambda lab: lab == 1, lymph_p, rng)
    return StromalCells(fibroblasts, alpha, stromal_lymph, cluster_lymph, hot, alpha_map)


def _stamp_fibroblasts(shape, points, angles, alpha) -> tuple[np.ndarray, np.ndarray]:
    """H and E OD of the fibroblast nuclei, each drawn at its activation level."""
    levels = _render_levels(alpha)
    od_h, od_e = np.zeros(shape, np.float32), np.zeros(shape, np.float32)
    for level in np.unique(levels):
        pick = levels == level
        s_h, s_e = _stamp(shape, points[pick], angles[pick], _spindles(float(level)), ("h", "e"))
        od_h += s_h
        od_e += s_e
    return od_h, od_e


# --------------------------------------------------------------------------- writing
def write_pyramidal_tiff(
    path: Path,
    rgb: np.ndarray,
    geometry: SlideGeometry,
    description: str = "stromalens synthetic H&E",
) -> None:
    """Write a tiled, JPEG-compressed pyramidal TIFF that OpenSlide and tiffslide both read.

    One full-resolution page then one reduced-resolution page per pyramid level (OpenSlide's
    generic-TIFF layout); µm/px is stored in the resolution tags (pixels per centimetre).
    Written to a temporary name and renamed, so an interrupted run never leaves a half slide.
    """
    import tifffile

    path = Path(path)
    tmp = path.with_name(path.name + ".partial")
    with tifffile.TiffWriter(tmp, bigtiff=rgb.nbytes > 3_500_000_000) as writer:
        for level, downsample in enumerate(geometry.downsamples):
            image = (
                rgb
                if downsample == 1
                else cv2.resize(
                    rgb,
                    (rgb.shape[1] // downsample, rgb.shape[0] // downsample),
                    interpolation=cv2.INTER_AREA,
                )
            )
            pixels_per_cm = 1e4 / (geometry.mpp * downsample)
            writer.write(
                image,
                tile=(geometry.tile, geometry.tile),
                compression="jpeg",
                compressionargs={"level": geometry.jpeg_quality},
                photometric="rgb",
                resolution=(pixels_per_cm, pixels_per_cm),
                resolutionunit="CENTIMETER",
                subfiletype=0 if level == 0 else 1,
                description=description if level == 0 else None,
                metadata=None,
            )
    tmp.replace(path)
