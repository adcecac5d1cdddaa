"""One small artefact-free slide of a fixed patient, for the tests of the planted slide evidence."""

from stromalens.synthetic import biology, expression, slides


def small_slide(evidence, latents: dict, seed=(4, 5, 6)) -> slides.RenderedSlide:
    """A 1536 × 1024 slide of the first patient of seed 0 with ``latents`` (a, b, h), no
    fold, blur or pen, rendered with ``evidence`` (an :class:`~stromalens.synthetic.slides.
    EvidenceSpec` or None)."""
    patients = biology.simulate_patients(1, seed=0)
    fractions = expression.simulate_fractions(patients, seed=0).iloc[0]
    return slides.render_slide(
        fractions,
        latents,
        biology.make_site_effects("A", 0),
        slides.SlideGeometry(width=1536, height=1024),
        list(seed),
        artefact_probability={"fold": 0, "blur": 0, "pen": 0},
        evidence=evidence,
    )
