"""The study's names for the trained models.

Training writes registered model names (``gated_fusion_coral`` …); the evaluation, its
``metrics.json`` and the report use the names of the study (``fusion`` …). Models without an
entry keep their registered name.
"""

from __future__ import annotations

#: registered/output name → study name
STUDY_NAMES: dict[str, str] = {
    "gated_fusion_coral": "fusion",
    "gated_fusion": "fusion_no_coral",
    "clip_mil": "wsi_clip",
    "mri_only": "mri",
    "student": "mri_student",
}

#: The proposed model (gated fusion with CORAL) by its study name.
PROPOSED = "fusion"


def study_name(model: str) -> str:
    """The study's name of a registered model or training output."""
    return STUDY_NAMES.get(model, model)


def registered_name(name: str) -> str:
    """Inverse of :func:`study_name`."""
    for registered, study in STUDY_NAMES.items():
        if study == name:
            return registered
    return name
