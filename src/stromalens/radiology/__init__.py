"""MRI radiomics: read, preprocess, extract (PyRadiomics), stability-filter, harmonise (ComBat).

``import stromalens.radiology`` stays light: PyRadiomics and SimpleITK are imported inside the
functions that use them.

Stages (one module each): :mod:`.io` (read NIfTI/NRRD/DICOM, check mask geometry),
:mod:`.preprocess` (N4, 1 mm resampling, z-normalisation, perturbations), :mod:`.features`
(PyRadiomics driven by a validated parameter file), :mod:`.stability` (perturbation ICC),
:mod:`.combat` (ComBat estimator), :mod:`.runner` (the cohort run behind
``stromalens radiomics``).
"""

from .combat import ComBat
from .stability import icc, select_stable

__all__ = ["ComBat", "icc", "select_stable"]
