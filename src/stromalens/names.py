"""The study's names, defined once: the three targets, their labels, the synthetic cohort's
planted latents, and the proposed model. Model names (registered, study and checkpoint names)
are metadata of the model registry (:mod:`stromalens.models.registry`).

This module imports nothing heavy; every stage, the evaluation and the report import from it.
"""

from __future__ import annotations

#: The regression targets, in the order of every (P, J) array and of the models' heads.
TARGETS: tuple[str, ...] = ("ers_caf", "lr", "heterogeneity")

#: How the report and figures name each target.
TARGET_LABELS: dict[str, str] = {
    "ers_caf": "ERS–CAF activity",
    "lr": "CAF→immune L–R crosstalk",
    "heterogeneity": "heterogeneity (Shannon entropy)",
}

#: target → the latent the synthetic generator plants for it (columns of ``truth.parquet``):
#: ERS–CAF activity ``a``, CAF→immune crosstalk ``b``, heterogeneity ``h``.
LATENTS: dict[str, str] = {"ers_caf": "a", "lr": "b", "heterogeneity": "h"}

#: The proposed model (gated fusion with CORAL) by its study name.
PROPOSED = "fusion"

#: Prompt sets of the prompt-perturbation analysis, in the order the report shows them.
PROMPT_SETS: tuple[str, ...] = ("NONE", "CUR", "COOP", "SYN", "ANTI", "OOD")

#: The prompt sets the CLIP-guided WSI model is retrained with, by the prompt-bank group whose
#: text embeddings replace the curated ones (NONE, CUR and COOP are models of the main CV).
PROMPT_GROUPS: dict[str, str] = {"synonym": "SYN", "antonym": "ANTI", "ood": "OOD"}


def target_label(target: str) -> str:
    """The label of ``target`` (the name itself for an unknown target)."""
    return TARGET_LABELS.get(target, target)
