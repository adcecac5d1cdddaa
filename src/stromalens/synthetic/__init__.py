"""A multi-site synthetic cohort generated from planted latent biology.

The generator is a data source for the CLI, the demo and the tests; no pipeline stage imports it.
Evaluation reads the planted truth from ``truth.parquet``.
"""

from .cohort import generate_cohort

__all__ = ["generate_cohort"]
