"""Prompt perturbation by retraining: the CLIP-guided WSI model cross-validated once per
perturbed prompt set (the study's analysis 6).

The study asks whether the meaning of the text guides the model. Swapping other text into a
model trained on the curated prompts answers another question (how a fitted γ and head react
to text they never saw), so here the WSI branch is *retrained* with each prompt set, as the
study does. For each perturbed prompt-bank group (:data:`~stromalens.names.PROMPT_GROUPS`:
synonyms SYN, antonyms ANTI, out-of-domain phrases OOD) the study data's curated text
embeddings t^(j)_m are replaced by that group's, and the CLIP-guided MIL (``clip_mil``, study
name ``wsi_clip``) runs the main CV's protocol unchanged: the same outer folds (the assignment
is a function of the patients, their sites, K and the seed), the same training seed, the same
nested grid and inner folds, the same fold preprocessing. The three other prompt sets are
models of the main CV: NONE (``clip_mil_none``: learnable queries, no text), CUR (``wsi_clip``)
and COOP (``clip_mil_coop``).

Each set is a run of its own under ``TRAIN/prompt_perturbation/<label>/``
(:meth:`~stromalens.rundir.TrainLayout.prompt_set`) with its checkpoints; a checkpoint's digest
covers the prompt embeddings and texts (:func:`~stromalens.training.curriculum.fit_digest`),
so a resumed study refits nothing and a changed bank refits that set only.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from ..logs import event, get_logger
from ..names import PROMPT_GROUPS
from ..rundir import TrainLayout
from .curriculum import TrainSettings
from .data import StudyData

log = get_logger("training.prompt_sets")

#: The registered model retrained with each prompt set (study name ``wsi_clip``).
PERTURBED_MODEL = "clip_mil"


def load_prompt_sets(banks_dir, encoder: str, weights, cache_dir) -> dict[str, tuple]:
    """label → ((J, M, D) text embeddings, {target: texts}) of each perturbed group of the
    banks in ``banks_dir`` (:func:`~stromalens.training.data.prompt_embeddings` with the
    group); a group some bank lacks is left out (and logged)."""
    from ..wsi.prompts import load_banks
    from .data import prompt_embeddings

    banks = load_banks(banks_dir)
    out = {}
    for group, label in PROMPT_GROUPS.items():
        texts = {t: list(getattr(bank, group)) for t, bank in banks.items()}
        if not all(texts.values()):
            event(log, "prompt set skipped", prompt_set=label, reason=f"a bank has no {group}")
            continue
        emb = prompt_embeddings(banks_dir, encoder, weights, cache_dir, group=group)
        out[label] = (emb, texts)
    return out


def prompt_set_data(data: StudyData, prompts: np.ndarray, texts: dict, label: str) -> StudyData:
    """``data`` guided by the prompt set ``label``: its text embeddings ``prompts`` (J, M, D)
    in place of the curated ones, and its texts in the provenance every checkpoint records."""
    new, cur = np.shape(prompts), np.shape(data.prompts)
    # the number of prompts M may differ (γ is sized by the set); targets and width may not
    if len(new) != 3 or (new[0], new[2]) != (cur[0], cur[2]):
        raise ValueError(
            f"prompt set {label}: embeddings of shape {np.shape(prompts)} do not match the "
            f"curated ones {np.shape(data.prompts)} (targets × prompts × width)"
        )
    inputs = {**data.meta.get("inputs", {}), "prompt_text": texts, "prompt_set": label}
    return dataclasses.replace(data, prompts=prompts, meta={**data.meta, "inputs": inputs})


def run_prompt_perturbation(
    data: StudyData,
    root: Path | str,
    prompt_sets: dict[str, tuple],
    settings: TrainSettings,
    **cv,
) -> dict:
    """Cross-validate :data:`PERTURBED_MODEL` once per prompt set of ``prompt_sets``
    (:func:`load_prompt_sets`) into ``TrainLayout(root).prompt_set(label)``; ``cv`` are the
    main CV's options of :func:`~stromalens.training.cv.run_cv` (folds, inner_folds, grid,
    harmonise, icc_threshold, workers, progress). One repeat: the evaluation compares the
    sets on the folds of ``folds.csv`` (repeat 0). Returns label → macro-r and seconds."""
    from ..models import study_name
    from .cv import run_cv

    layout = TrainLayout(root)
    summary = {}
    for label, (prompts, texts) in prompt_sets.items():
        metrics = run_cv(
            prompt_set_data(data, prompts, texts, label),
            layout.prompt_set(label).root,
            settings,
            models=[PERTURBED_MODEL],
            repeats=1,
            description=f"prompt set {label} fits",
            **cv,
        )
        summary[label] = {
            "macro_r": metrics["models"][study_name(PERTURBED_MODEL)]["macro_r"],
            "seconds": metrics["seconds"],
        }
        event(log, "prompt set trained", prompt_set=label, **summary[label])
    return summary
