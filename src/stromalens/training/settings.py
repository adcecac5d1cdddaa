"""Hyper-parameters of the curriculum, :class:`TrainSettings` (``training.settings`` in the study
YAML), validated by pydantic when the study file is loaded.

This module imports neither torch nor the rest of :mod:`stromalens.training`'s heavy code, so
that :mod:`stromalens.config` can type the ``training.settings`` block with it.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class TrainSettings(BaseModel):
    """Hyper-parameters of the curriculum (the nested grid overrides some of them).

    Immutable: :meth:`with_` returns a validated copy with some values changed.

    >>> TrainSettings().with_(tau=1.0).tau
    1.0
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    hidden: int = 64
    dropout: float = 0.1
    tau: float = 0.5
    lr: float = 3e-3
    lr_prompts: float = 5e-2
    batch_size: int = Field(32, ge=1)
    epochs_stage1: int = Field(20, ge=0)
    epochs_stage2: int = Field(60, ge=0)
    epochs_stage3: int = Field(20, ge=0)
    epochs_distill: int = Field(40, ge=0)
    epochs_baseline: int = Field(60, ge=0)
    # q = 0.5, not 0.25: each branch must predict on its own half the time, or the fusion
    # leans on the branch that is easier to fit on the training fold (benchmarks/train_cv.py
    # on the synthetic cohort, q = 0.25 → 0.5: late fusion 0.425 → 0.448, concat 0.432 →
    # 0.439, gated fusion 0.387 → 0.411, gated fusion + CORAL 0.386 → 0.386; measured when
    # the encoders still had a LayerNorm, see MLPEncoder).
    modality_dropout: float = Field(0.5, ge=0, lt=1)
    lambda_coral: float = Field(0.1, ge=0)
    weight_decay: float = Field(1.0, ge=0)
    max_tiles: int | None = 512
    # Radiomics enter the models as k components fitted on the training fold (FoldPreprocessor):
    # principal components ("pca") or partial least squares against the targets ("pls");
    # rad_components None: the standardised features themselves. PCA by default: PLS
    # components are chosen on the training targets, so in-sample they look more predictive
    # than they are out of sample and a fusion model learns to over-trust the MRI branch.
    rad_components: int | None = Field(8, ge=1)
    rad_reduction: Literal["pca", "pls"] = "pca"
    seed: int = 0

    def with_(self, **changes) -> TrainSettings:
        """A copy with ``changes`` applied, validated; an unknown key is a ``ValueError``."""
        unknown = set(changes) - set(type(self).model_fields)
        if unknown:
            raise ValueError(f"unknown training setting(s): {sorted(unknown)}")
        return type(self).model_validate({**self.to_dict(), **changes})

    def to_dict(self) -> dict:
        """Every setting by name (JSON-ready: numbers, strings and None)."""
        return self.model_dump()
