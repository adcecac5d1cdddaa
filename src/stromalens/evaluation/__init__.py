"""Evaluation of a training run: fidelity, robustness, site alignment, interpretability,
survival and treatment models, zero-shot external application (``stromalens evaluate``).

The run-directory contract (what is read and written) is in ``docs/run_directory.md``.
"""


def evaluate_run(*args, **kwargs):
    """See :func:`stromalens.evaluation.evaluate.evaluate_run` (imported lazily: torch)."""
    from .evaluate import evaluate_run as run

    return run(*args, **kwargs)


def predict_cohort(*args, **kwargs):
    """See :func:`stromalens.evaluation.external.predict_cohort` (imported lazily: torch)."""
    from .external import predict_cohort as run

    return run(*args, **kwargs)


__all__ = ["evaluate_run", "predict_cohort"]
