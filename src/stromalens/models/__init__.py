"""Models: one MIL interface, a registry, the CLIP-guided gated-fusion model and its baselines.

Importing this package imports torch (``import stromalens`` does not import it).

Every model maps a :class:`~stromalens.models.base.MILBatch` (padded tile bags with masks,
radiomics vectors, modality-availability flags, site codes) to a
:class:`~stromalens.models.base.MILOutput` (predictions for the three targets, attention
weights, the fused features that CORAL aligns, auxiliary losses). A new model is one class
decorated with :func:`register_model`.

Example
-------
>>> from stromalens.models import create_model, ModelSpec, list_models   # doctest: +SKIP
>>> model = create_model("gated_fusion", ModelSpec(tile_dim=128, rad_dim=40), prompts=text)
>>> out = model(batch)            # out.pred (B, 3), out.attention (B, 3, N)
"""

from . import baselines, clip_mil, fusion  # noqa: F401 - registers the models
from .base import MILBatch, MILModel, MILOutput, ModelSpec
from .losses import (
    FeatureBankCoral,
    MonotoneCalibrator,
    calibration_loss,
    coral_loss,
    distillation_loss,
    gene_loss,
    heteroscedastic_loss,
)
from .registry import (
    Output,
    create_model,
    list_models,
    list_outputs,
    model_info,
    output_info,
    register_model,
    study_name,
    text_guided,
)
from .text_tower import COOP_CONTEXT_INIT, TextTower

__all__ = [
    "COOP_CONTEXT_INIT",
    "calibration_loss",
    "MILBatch",
    "MILModel",
    "MILOutput",
    "ModelSpec",
    "MonotoneCalibrator",
    "FeatureBankCoral",
    "coral_loss",
    "create_model",
    "distillation_loss",
    "gene_loss",
    "heteroscedastic_loss",
    "list_models",
    "list_outputs",
    "Output",
    "output_info",
    "study_name",
    "text_guided",
    "model_info",
    "register_model",
    "TextTower",
]
