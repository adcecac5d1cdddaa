"""The planted mechanisms of the validation matrix, as the effective sizes the generator uses.

:class:`~stromalens.config.MechanismsConfig` holds each mechanism's switch and effect size;
:func:`planted` turns it into :class:`Planted`, the sizes the renderers read, with every
switched-off mechanism at its null. This module is the one home of the rule "off = effect 0",
and of the per-patient factors that follow from a patient's location and site.

=====  ==========================  ===============================================  ===========
 key    mechanism                   planted effect                                   null
=====  ==========================  ===============================================  ===========
 (a)    sparse tile evidence        fibroblast gain ``per_a·a`` in hotspots only     diffuse
 (b)    modality reliability        one modality keeps ``1 − c`` of its correlation  c = 0
                                    with the latents, per location: the slide drawn
                                    from ``g·z + √(1 − g²)·z′``, the MRI's ρ × ``f``
 (c)    site confounding            site effects × strength, site means of a         identical
 (d)    fibrosis annotation         region = hotspots + margin(grade)                all stroma
 (e)    outcomes                    survival scale, b × RT logit interaction         0, 0
 (f)    external morphology         external slides rendered from their own latents  independent
 (g)    text prior                  captions name fibroblast density                 never
=====  ==========================  ===============================================  ===========

The effect scale K (``MechanismsConfig.effect_scale``) multiplies every effect size at once, so
that a run at K reads "each mechanism at K × its default size". What "× K" means follows each
size's own scale, chosen so that K = 0 is the mechanism's null effect and K = 1 the defaults:

=====  ===========================================  ============================================
 key    size × K                                     K = 0
=====  ===========================================  ============================================
 (a)    hotspot gains ``per_a``, ``per_b`` (density   no slide evidence anywhere: sparse and
        gain per SD of the latent) × K                diffuse render identically
 (b)    log of the degraded modality's retained      c = 0 (the null)
        signal × K: ``c_K = 1 − (1 − c)^K``
 (c)    site departures ``strength`` × K, site       identical sites, no association (the null)
        shift of ``a`` (SD) × K
 (d)    the annotation's tightness 1/margin × K:     the region is all the stroma (the null; the
        ``margin_K = margin / K``                    limit margin → ∞ is all the tissue)
 (e)    log-hazard coefficients and the b × RT       both 0 (the null)
        logit (log odds ratio) × K
 (f)    none of its own: the external slides         the external slides carry no biology, as in
        carry (a)'s evidence gains × K               the null
 (g)    the caption hazard −log(1 − p) × K:          no caption names density (the null)
        ``p_K = 1 − (1 − p)^K``
=====  ===========================================  ============================================

What (b) degrades. The slide is rendered from *slide latents* (:func:`slide_view`) and from
cell fractions drawn from them whose composition noise is mixed with the RNA's in the same way
(:func:`slide_composition`; the Shannon entropy target is mostly that noise, r(H, h) ≈ 0.2),
so everything the slide shows of the biology — the evidence of (a), which is the only
place ``a`` and ``b`` appear on a slide (its fractions are drawn at α·a = 0 and its slide-wide
immune exclusion at b = 0), the stroma's area share and base fibroblast density (the
composition noise) and the layout's scale (h) — keeps correlation ``g`` with the patient's
latents; the MRI renders its phenotypes from ρ·f·ℓ + √(1 − ρ²f²)·ν
(:func:`~stromalens.synthetic.mri.mri_visible_latents`), so its correlation with each latent
is ``f`` times the base ρ. Scaling only the evidence gains would leave the composition noise
and the layout, which do not pass through them, untouched.
Mixing composes as K does: two views of correlation g₁ and g₂ in a row have g₁·g₂.

(b) and (g) are shares bounded by 1, so they scale on the log scale on which K composes
(``(1 − c)^K``: K independent degradations of (1 − c) each) and stay below 1 for any K; the
other sizes are unbounded and scale linearly. Under K ≠ 0 the null cohort keeps K's (a) gains
(spread diffusely) so that planted and null differ only in the switches.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd

from ..config import MechanismsConfig

#: Which modality each location degrades under (b): +1 the slide, −1 the MRI, 0 half of each.
LOCATION_RELIABILITY: dict[str, float] = {"skull_base": 1.0, "mobile_spine": 0.0, "sacrum": -1.0}


@dataclass(frozen=True)
class Planted:
    """Effective sizes of the planted mechanisms (0 / diffuse / None when switched off)."""

    effect_scale: float
    sparse_evidence: bool
    evidence_share: float
    evidence_per_a: float
    evidence_per_b: float
    reliability_contrast: float
    site_strength: float
    site_biology_shift: float
    annotation_margin_um: float | None
    survival_scale: float
    interaction: float
    external_visible: bool
    external_morphology: str
    density_caption_rate: float

    def as_dict(self) -> dict:
        return asdict(self)


def planted(config: MechanismsConfig | None = None) -> Planted:
    """The effective sizes of ``config`` (default: every mechanism at its default size), each
    at ``config.effect_scale`` K times its size (see the module docstring for what "× K" means
    per mechanism).

    Example
    -------
    >>> planted(MechanismsConfig().null()).interaction
    0.0
    >>> planted(MechanismsConfig(effect_scale=2)).interaction
    1.6
    """
    m = config or MechanismsConfig()
    k = m.effect_scale
    sparse = m.sparse_evidence
    return Planted(
        effect_scale=k,
        sparse_evidence=sparse.enabled,
        evidence_share=sparse.share,
        evidence_per_a=k * sparse.per_a,
        evidence_per_b=k * sparse.per_b,
        reliability_contrast=scale_share(m.reliability.contrast, k)
        if m.reliability.enabled
        else 0.0,
        site_strength=k * m.site.strength if m.site.enabled else 0.0,
        site_biology_shift=k * m.site.biology_shift if m.site.enabled else 0.0,
        annotation_margin_um=_scaled_margin(m.annotation.margin_um, k)
        if m.annotation.enabled
        else None,
        survival_scale=k * m.outcomes.survival_scale if m.outcomes.enabled else 0.0,
        interaction=k * m.outcomes.interaction if m.outcomes.enabled else 0.0,
        external_visible=m.external.enabled,
        # the null keeps the other morphology: only the biology is taken away
        external_morphology=m.external.morphology,
        density_caption_rate=scale_share(m.text_prior.density_caption_rate, k)
        if m.text_prior.enabled
        else 0.0,
    )


def scale_share(share: float, k: float) -> float:
    """A share in [0, 1) scaled by ``k`` on its log-complement: ``1 − (1 − share)^k``.

    ``−log(1 − share)`` (a hazard; for (b) the log of the signal lost) is multiplied by ``k``,
    so ``k`` = 0 gives 0, ``k`` = 1 the share itself, and the result stays below 1 for any
    ``k``; a share of 1 stays 1 for ``k`` > 0.

    Example
    -------
    >>> round(scale_share(0.4, 2), 6)
    0.64
    """
    if k < 0 or not np.isfinite(k):
        raise ValueError(f"effect scale must be a finite number ≥ 0, got {k}")
    if not 0 <= share <= 1:
        raise ValueError(f"a share must lie in [0, 1], got {share}")
    return float(1.0 - (1.0 - share) ** k) if k > 0 else 0.0


def _scaled_margin(margin_um: float, k: float) -> float | None:
    # tightness 1/margin × k; k = 0 is the null's region (all stroma), marked by None
    return float(margin_um / k) if k > 0 else None


def reliability_factors(location: str, contrast: float) -> tuple[float, float]:
    """(slide reliability g, MRI visibility factor f) of a tumour at ``location`` under (b).

    With ``r`` = :data:`LOCATION_RELIABILITY` [location] and ``c`` = ``contrast``:

        g_WSI = 1 − c · (1 + r) / 2,     f_MRI = 1 − c · (1 − r) / 2,

    so the skull base keeps the MRI whole and loses ``c`` of the slide's correlation with the
    latents (g: :func:`slide_view`), the sacrum loses ``c`` of the MRI's (f × ρ:
    :func:`~stromalens.synthetic.mri.mri_visible_latents`), and the mobile spine ``c/2`` of each.

    Example
    -------
    >>> reliability_factors("sacrum", 0.4)
    (1.0, 0.6)
    """
    if location not in LOCATION_RELIABILITY:
        raise ValueError(f"unknown location {location!r}; known: {sorted(LOCATION_RELIABILITY)}")
    r = LOCATION_RELIABILITY[location]
    return float(1.0 - contrast * (1.0 + r) / 2.0), float(1.0 - contrast * (1.0 - r) / 2.0)


def slide_view(latents: np.ndarray, fresh: np.ndarray, gain, means=0.0) -> np.ndarray:
    """The latents a slide is rendered from under (b): correlation ``gain`` with the patient's.

    With z the patient's latents (rows), μ their mean (the site's, under (c)), z′ an
    independent draw of the same correlation (``fresh``) and g = ``gain`` per patient,

        z_slide = μ + g · (z − μ) + √(1 − g²) · z′,

    so z_slide has the distribution of z and corr(z_slide, z) = g within a site (a slide that
    samples the tumour less faithfully, e.g. after decalcification). g = 1 returns z exactly
    (the null's slides are the patients' own, bit for bit).

    Example
    -------
    >>> z, fresh = np.array([[1.0, -0.5, 0.2]]), np.array([[0.0, 2.0, -1.0]])
    >>> slide_view(z, fresh, [1.0])
    array([[ 1. , -0.5,  0.2]])
    >>> slide_view(z, fresh, [0.6]).round(2)
    array([[ 0.6 ,  1.3 , -0.68]])
    """
    z = np.asarray(latents, float)
    g = np.asarray(gain, float).reshape(-1, 1)
    if z.shape != np.shape(fresh) or z.ndim != 2 or len(g) != len(z):
        raise ValueError(
            f"latents {z.shape}, fresh {np.shape(fresh)} and gain ({len(g)},) must agree"
        )
    if np.any((g < 0) | (g > 1)):
        raise ValueError(f"slide reliability must lie in [0, 1], got {g.ravel().tolist()}")
    mixed = means + g * (z - means) + np.sqrt(1.0 - g**2) * np.asarray(fresh, float)
    return np.where(g == 1.0, z, mixed)


def view_weights(gain) -> np.ndarray:
    """Weights (w₀, w₁, w₂) per patient, (n, 3), of three independent noise draws such that
    w₀ = g, w₀ + w₁ + w₂ = 1 and w₀² + w₁² + w₂² = 1:

        w₁,₂ = ((1 − g) ± √((1 − g)(1 + 3g))) / 2,

    so Σ wᵢ·xᵢ of three draws xᵢ = m + εᵢ (εᵢ iid) has the mean m, the variance of one draw
    and correlation g with x₀. g = 1 gives (1, 0, 0), g = 0 gives (0, 1, 0).

    Example
    -------
    >>> view_weights([1.0, 0.0])
    array([[1., 0., 0.],
           [0., 1., 0.]])
    """
    g = np.asarray(gain, float).reshape(-1)
    root = np.sqrt((1.0 - g) * (1.0 + 3.0 * g))
    return np.column_stack([g, (1.0 - g + root) / 2.0, (1.0 - g - root) / 2.0])


def slide_composition(draws, gain, immune) -> pd.DataFrame:
    """The slide's cell fractions under (b): the composition noise mixed as :func:`slide_view`
    mixes the latents.

    ``draws`` are three fraction tables (patients × cell types) drawn from the slide latents
    with independent noise, the first with the RNA's own (its seed); ``immune`` names the
    immune columns. The generator's fractions are two-level logistic-normal
    (:func:`~stromalens.synthetic.expression.simulate_fractions`): compartments
    q = softmax(κ + α·a + δ) and immune types π = softmax(T·(μ + β·b + ε)), T set by h. The
    centred log-ratio (clr) of each level is linear in its noise, so with the weights w of
    :func:`view_weights` (g = ``gain``)

        clr(q_slide) = Σᵢ wᵢ · clr(qᵢ),     clr(π_slide) = Σᵢ wᵢ · clr(πᵢ)

    is that level at the noise Σ wᵢ δᵢ: the same distribution, correlation g with the RNA's
    noise. A row with g = 1 is the first draw, bit for bit.
    """
    weights = view_weights(gain)[:, :, None]  # (n, 3, 1)
    first = draws[0]
    cells = list(first.columns)
    immune = [c for c in cells if c in set(immune)]
    compartments = [c for c in cells if c not in set(immune)]

    def levels(f):
        q = np.column_stack([f[compartments].to_numpy(), f[immune].sum(axis=1)])
        return q, f[immune].to_numpy() / q[:, -1:]

    def mixed(parts):
        clr = np.log(np.stack(parts, axis=1))  # (n, 3, k)
        clr = (weights * (clr - clr.mean(axis=2, keepdims=True))).sum(axis=1)
        e = np.exp(clr - clr.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)

    q_parts, pi_parts = zip(*(levels(f) for f in draws), strict=True)
    q, pi = mixed(q_parts), mixed(pi_parts)
    out = pd.DataFrame(
        np.column_stack([q[:, :-1], q[:, -1:] * pi]),
        index=first.index,
        columns=compartments + immune,
    )[cells]
    keep = np.asarray(gain, float).reshape(-1) == 1.0
    out[keep] = first[keep]
    return out


def site_mean_shifts(sites, shift: float) -> dict[str, float]:
    """Mean shift of ``a`` at each site under (c): ``shift · (1 − 2k/(K−1))`` for the k-th of
    K sites in the given order (the first site receives the most aggressive cases); 0 for one
    site.

    Example
    -------
    >>> site_mean_shifts(("A", "B", "C"), 0.3)
    {'A': 0.3, 'B': 0.0, 'C': -0.3}
    """
    sites = tuple(sites)
    if len(sites) < 2:
        return {s: 0.0 for s in sites}
    steps = np.linspace(1.0, -1.0, len(sites))
    return {s: float(shift * k) for s, k in zip(sites, steps, strict=True)}


def annotation_margin_px(margin_um: float, grade: int, mpp: float) -> float:
    """Margin (level-0 px) of the fibrosis region around the hotspots under (d):
    ``margin_um · (1 − grade/4)`` at ``mpp`` µm/px — the higher the grade, the tighter."""
    if not 0 <= int(grade) <= 3:
        raise ValueError(f"fibrosis grade must be 0–3, got {grade}")
    return float(margin_um * (1.0 - int(grade) / 4.0) / mpp)
