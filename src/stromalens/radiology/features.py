"""PyRadiomics feature extraction (the reference implementation; nothing is re-implemented).

Feature names are PyRadiomics' own, ``<image type>_<class>_<feature>`` (e.g.
``original_glcm_Contrast``, ``log-sigma-1-0-mm-3D_firstorder_Mean``,
``wavelet-LLH_ngtdm_Busyness``);
the cohort table prefixes them with the sequence, ``<sequence>__<name>``. PyRadiomics'
provenance entries (``diagnostics_*``) are returned apart from the features.

Example
-------
>>> extractor = make_extractor(ExtractionSettings().pyradiomics_params())   # doctest: +SKIP
>>> features, diagnostics = extract(extractor, image, mask)                # doctest: +SKIP
"""

from __future__ import annotations

import logging
import warnings

import numpy as np


def make_extractor(params: dict):
    """A ``RadiomicsFeatureExtractor`` for ``params`` (validated by PyRadiomics' schema).

    Raises ``ValueError`` naming the problem when PyRadiomics rejects the parameters.
    """
    import radiomics
    from radiomics import featureextractor

    # PyRadiomics logs every setting at INFO and advice (bin count, GLCM symmetry) at WARNING,
    # per patient and perturbation; keep it quiet (errors still show). Its own handler's level
    # (setVerbosity) does not stop the records reaching a root handler that something in a
    # worker process configured, so the logger's level is set too.
    radiomics.setVerbosity(logging.ERROR)
    logging.getLogger("radiomics").setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            # pykwalify (PyRadiomics' schema validator) loads PyRadiomics' schema extension
            # with importlib's deprecated load_module(); nothing to fix on our side.
            warnings.filterwarnings(
                "ignore",
                message=r"the load_module\(\) method is deprecated",
                category=DeprecationWarning,
            )
            return featureextractor.RadiomicsFeatureExtractor(params)
    except Exception as exc:  # pykwalify SchemaError and friends
        raise ValueError(f"PyRadiomics rejected the parameters: {exc}") from None


def extract(extractor, image, mask, label: int = 1) -> tuple[dict[str, float], dict[str, str]]:
    """Run ``extractor`` on SimpleITK ``image`` and ``mask``; (features, diagnostics)."""
    result = extractor.execute(image, mask, label=label)
    features: dict[str, float] = {}
    diagnostics: dict[str, str] = {}
    for key, value in result.items():
        if key.startswith("diagnostics_"):
            diagnostics[key] = str(value)
        else:
            features[key] = float(np.asarray(value))
    return features, diagnostics


def extract_features(image, mask, params: dict, label: int = 1):
    """One-shot :func:`make_extractor` + :func:`extract`."""
    return extract(make_extractor(params), image, mask, label)
