"""Evaluation of a training run: fidelity, robustness, site alignment, interpretability,
survival and treatment models, zero-shot external application (``stromalens evaluate``).

The run-directory contract (what is read and written) is in ``docs/run_directory.md``.
"""

from .naming import PROPOSED, STUDY_NAMES, registered_name, study_name

__all__ = ["PROPOSED", "STUDY_NAMES", "registered_name", "study_name"]
