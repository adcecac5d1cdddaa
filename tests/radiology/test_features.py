"""Feature extraction equals PyRadiomics, checked against PyRadiomics' own baseline values."""

import ast
import warnings

import numpy as np
import pandas as pd
import pytest

from stromalens.radiology.features import extract, extract_features, make_extractor
from stromalens.radiology.settings import ExtractionSettings

from .conftest import RADIOLOGY, require

CLASSES = ["firstorder", "shape", "glcm", "glrlm", "glszm", "gldm", "ngtdm"]
# Mesh-based shape features changed after the baseline's PyRadiomics (2.0.1b1; marching cubes
# was reworked in 2.2/3.0): on brain1 they differ by < 0.1 %. Everything else agrees to 1e-9.
MESH_FEATURES = {
    "original_shape_Sphericity",
    "original_shape_SurfaceVolumeRatio",
    "original_shape_MeshVolume",
    "original_shape_SurfaceArea",
}


@pytest.fixture(scope="module")
def cases():
    import SimpleITK as sitk

    folder = require(RADIOLOGY / "pyradiomics")
    return {
        case: (
            sitk.ReadImage(str(folder / f"{case}_image.nrrd")),
            sitk.ReadImage(str(folder / f"{case}_label.nrrd")),
        )
        for case in ("brain1", "breast1")
    }


@pytest.mark.parametrize("feature_class", CLASSES)
@pytest.mark.parametrize("case", ["brain1", "breast1"])
def test_matches_pyradiomics_baseline(cases, case, feature_class):
    baseline = pd.read_csv(
        RADIOLOGY / "pyradiomics" / "baseline" / f"baseline_{feature_class}.csv", index_col=0
    )
    setting = ast.literal_eval(baseline.loc["diagnostics_Configuration_Settings", case])
    types = baseline.loc["diagnostics_Configuration_EnabledImageTypes", case]
    image_types = ast.literal_eval(types)
    params = {"imageType": image_types, "featureClass": {feature_class: []}, "setting": setting}
    image, mask = cases[case]
    features, diagnostics = extract_features(image, mask, params, label=setting["label"])
    assert all(k.startswith("diagnostics_") for k in diagnostics)
    expected = {k: float(v) for k, v in baseline[case].items() if k.startswith("original_")}
    assert expected.keys() <= features.keys()
    for name, value in expected.items():
        rtol = 1e-3 if name in MESH_FEATURES else 1e-9
        assert features[name] == pytest.approx(value, rel=rtol, abs=1e-12), name


def test_wrapper_equals_direct_pyradiomics_call(cases):
    """Our settings → PyRadiomics parameters → exactly PyRadiomics' output."""
    from radiomics import featureextractor

    settings = ExtractionSettings(
        imageType={"Original": {}, "LoG": {"sigma": [2.0]}, "Wavelet": {}},
        featureClass={"firstorder": [], "glcm": ["Contrast", "Idm"], "ngtdm": []},
        setting={"binWidth": 25, "label": 1},
    )
    params = settings.pyradiomics_params()
    image, mask = cases["breast1"]
    ours, _ = extract(make_extractor(params), image, mask)
    with warnings.catch_warnings():
        # pykwalify's deprecated load_module() (see stromalens.radiology.features)
        warnings.filterwarnings("ignore", "the load_module", DeprecationWarning)
        direct = featureextractor.RadiomicsFeatureExtractor(params).execute(image, mask)
    direct = {k: float(np.asarray(v)) for k, v in direct.items() if not k.startswith("diag")}
    assert ours == direct
    assert any(k.startswith("wavelet-LLH_") for k in ours)
    assert any(k.startswith("log-sigma-2-0-mm-3D_") for k in ours)


@pytest.mark.parametrize(
    ("block", "message"),
    [
        ({"imageType": {"Gabor": {}}}, "unknown image type 'Gabor'"),
        ({"imageType": {"LoG": {"sigma": [0.0]}}}, "positive sigmas"),
        ({"featureClass": {"glcmm": []}}, "unknown feature class 'glcmm'"),
        ({"setting": {"binWidth": 1, "binCount": 8}}, "exactly one of"),
        ({"setting": {"binCount": 0}}, "binCount must be positive"),
        ({"setting": {"binCount": 16, "normalize": True}}, "applied twice"),
    ],
)
def test_parameter_file_is_validated(block, message):
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match=message):
        ExtractionSettings(**block)


def test_pyradiomics_schema_errors_are_value_errors():
    params = ExtractionSettings().pyradiomics_params()
    params["setting"]["binCount"] = "many"
    with pytest.raises(ValueError, match="PyRadiomics rejected"):
        make_extractor(params)
