"""Training: bags and batches, the three-stage curriculum with distillation, and leakage-free
cross-validation (site-stratified K-fold with nested selection; leave-site-out).

Importing this package does not import torch; the functions that train import it.
"""

from .curriculum import TrainSettings, fit_model, load_checkpoint, predict, save_checkpoint
from .cv import assign_folds, compute_metrics, run_cv, run_leave_site_out
from .data import FoldPreprocessor, StudyData, load_study_data, make_batch, prompt_embeddings

__all__ = [
    "FoldPreprocessor",
    "StudyData",
    "TrainSettings",
    "assign_folds",
    "compute_metrics",
    "fit_model",
    "load_checkpoint",
    "load_study_data",
    "make_batch",
    "predict",
    "prompt_embeddings",
    "run_cv",
    "run_leave_site_out",
    "save_checkpoint",
]
