"""The planted mechanisms of the validation matrix, as the effective sizes the generator uses.

:class:`~stromalens.config.MechanismsConfig` holds each mechanism's switch and effect size;
:func:`planted` turns it into :class:`Planted`, the sizes the renderers read, with every
switched-off mechanism at its null. This module is the one home of the rule "off = effect 0",
and of the per-patient factors that follow from a patient's location and site.

=====  ==========================  ===============================================  ===========
 key    mechanism                   planted effect                                   null
=====  ==========================  ===============================================  ===========
 (a)    sparse tile evidence        fibroblast gain ``per_a·a`` in hotspots only     diffuse
 (b)    modality reliability        one modality degraded by ``contrast`` per site   c = 0
 (c)    site confounding            site effects × strength, site means of a         identical
 (d)    fibrosis annotation         region = hotspots + margin(grade)                all stroma
 (e)    outcomes                    survival scale, b × RT logit interaction         0, 0
 (f)    external morphology         external slides rendered from their own latents  independent
 (g)    text prior                  captions name fibroblast density                 never
=====  ==========================  ===============================================  ===========
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from ..config import MechanismsConfig

#: Which modality each location degrades under (b): +1 the slide, −1 the MRI, 0 half of each.
LOCATION_RELIABILITY: dict[str, float] = {"skull_base": 1.0, "mobile_spine": 0.0, "sacrum": -1.0}


@dataclass(frozen=True)
class Planted:
    """Effective sizes of the planted mechanisms (0 / diffuse / None when switched off)."""

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
    """The effective sizes of ``config`` (default: every mechanism at its default size).

    Example
    -------
    >>> planted(MechanismsConfig().null()).interaction
    0.0
    """
    m = config or MechanismsConfig()
    sparse = m.sparse_evidence
    return Planted(
        sparse_evidence=sparse.enabled,
        evidence_share=sparse.share,
        evidence_per_a=sparse.per_a,
        evidence_per_b=sparse.per_b,
        reliability_contrast=m.reliability.contrast if m.reliability.enabled else 0.0,
        site_strength=m.site.strength if m.site.enabled else 0.0,
        site_biology_shift=m.site.biology_shift if m.site.enabled else 0.0,
        annotation_margin_um=m.annotation.margin_um if m.annotation.enabled else None,
        survival_scale=m.outcomes.survival_scale if m.outcomes.enabled else 0.0,
        interaction=m.outcomes.interaction if m.outcomes.enabled else 0.0,
        external_visible=m.external.enabled,
        # the null keeps the other morphology: only the biology is taken away
        external_morphology=m.external.morphology,
        density_caption_rate=m.text_prior.density_caption_rate if m.text_prior.enabled else 0.0,
    )


def reliability_factors(location: str, contrast: float) -> tuple[float, float]:
    """(slide evidence gain, MRI visibility factor) of a tumour at ``location`` under (b).

    With ``r`` = :data:`LOCATION_RELIABILITY` [location] and ``c`` = ``contrast``:

        gain_WSI = 1 − c · (1 + r) / 2,     factor_MRI = 1 − c · (1 − r) / 2,

    so the skull base keeps the MRI whole and loses ``c`` of the slide's signal, the sacrum the
    reverse, and the mobile spine loses ``c/2`` of each.

    Example
    -------
    >>> reliability_factors("sacrum", 0.4)
    (1.0, 0.6)
    """
    if location not in LOCATION_RELIABILITY:
        raise ValueError(f"unknown location {location!r}; known: {sorted(LOCATION_RELIABILITY)}")
    r = LOCATION_RELIABILITY[location]
    return float(1.0 - contrast * (1.0 + r) / 2.0), float(1.0 - contrast * (1.0 - r) / 2.0)


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
