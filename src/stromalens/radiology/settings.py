"""Settings of the radiomics stage (``configs/radiomics.yaml``), validated by pydantic.

The ``extraction`` block is PyRadiomics' own parameter file (``imageType``, ``featureClass``,
``setting``); it is checked here for the choices this project relies on (known image types and
feature classes, positive LoG sigmas, exactly one of ``binWidth``/``binCount``) and then by
PyRadiomics' schema when the extractor is built.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

IMAGE_TYPES = (
    "Original",
    "LoG",
    "Wavelet",
    "Square",
    "SquareRoot",
    "Logarithm",
    "Exponential",
    "Gradient",
    "LBP2D",
    "LBP3D",
)
FEATURE_CLASSES = ("firstorder", "shape", "shape2D", "glcm", "glrlm", "glszm", "gldm", "ngtdm")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SequenceSpec(_Strict):
    """One image series of a patient: its manifest columns and per-sequence options."""

    name: str = Field(pattern=r"^[A-Za-z0-9_]+$", description="prefix of the feature columns")
    image: str = Field(description="manifest column holding the image path")
    mask: str = Field("mri_mask", description="manifest column holding the mask path")
    n4: bool | None = Field(None, description="override preprocess.n4.enabled (False for CT)")
    normalise: bool | None = Field(None, description="override preprocess.normalise.enabled")
    setting: dict = Field(
        default_factory=dict, description="PyRadiomics settings for this sequence only"
    )


class N4Settings(_Strict):
    enabled: bool = True
    fit_spacing_mm: float = Field(
        4.0, gt=0, description="the bias field is fitted on a copy shrunk to about this spacing"
    )
    iterations: tuple[int, ...] = Field((50, 50, 30), min_length=1)
    convergence: float = Field(1e-3, gt=0)


class NormaliseSettings(_Strict):
    enabled: bool = True
    region: Literal["roi", "body"] = "roi"


class PreprocessSettings(_Strict):
    spacing_mm: tuple[float, float, float] | None = Field((1.0, 1.0, 1.0))
    interpolator: Literal["bspline", "linear"] = "bspline"
    label: int = Field(1, ge=1, description="mask label of the tumour")
    mask_mismatch: Literal["error", "resample"] = "error"
    geometry_tolerance: float = Field(1e-3, gt=0)
    crop_margin_mm: float = Field(30.0, ge=0, description="context kept around the tumour")
    n4: N4Settings = N4Settings()
    normalise: NormaliseSettings = NormaliseSettings()


class ExtractionSettings(_Strict):
    """PyRadiomics' parameter file (same keys and meaning)."""

    imageType: dict[str, dict] = Field(default_factory=lambda: {"Original": {}})  # noqa: N815
    featureClass: dict[str, list[str] | None] = Field(  # noqa: N815
        default_factory=lambda: {c: [] for c in ("firstorder", "shape", "glcm")}
    )
    setting: dict = Field(default_factory=lambda: {"binCount": 32})

    @field_validator("imageType")
    @classmethod
    def _image_types(cls, value):
        if not value:
            raise ValueError("enable at least one image type")
        for name, options in value.items():
            if name not in IMAGE_TYPES:
                raise ValueError(f"unknown image type '{name}' (known: {', '.join(IMAGE_TYPES)})")
            if name == "LoG":
                sigma = (options or {}).get("sigma")
                if not sigma or any(float(s) <= 0 for s in sigma):
                    raise ValueError(f"LoG needs a list of positive sigmas; got {sigma!r}")
        return value

    @field_validator("featureClass")
    @classmethod
    def _classes(cls, value):
        if not value:
            raise ValueError("enable at least one feature class")
        for name in value:
            if name not in FEATURE_CLASSES:
                raise ValueError(
                    f"unknown feature class '{name}' (known: {', '.join(FEATURE_CLASSES)})"
                )
        return value

    @field_validator("setting")
    @classmethod
    def _binning(cls, value):
        has_width, has_count = "binWidth" in value, "binCount" in value
        if has_width == has_count:
            raise ValueError("give exactly one of setting.binWidth and setting.binCount")
        key = "binWidth" if has_width else "binCount"
        if not float(value[key]) > 0:
            raise ValueError(f"setting.{key} must be positive; got {value[key]!r}")
        if value.get("normalize"):
            raise ValueError(
                "setting.normalize: the stage normalises itself (preprocess.normalise); "
                "PyRadiomics' normalisation would be applied twice"
            )
        return value

    def pyradiomics_params(self, overrides: dict | None = None) -> dict:
        """The parameter dictionary PyRadiomics reads (``RadiomicsFeatureExtractor(params)``)."""
        setting = dict(self.setting) | dict(overrides or {})
        if (
            "binWidth" in (overrides or {})
            and "binCount" in setting
            and "binCount" not in (overrides or {})
        ):
            setting.pop("binCount")
        if (
            "binCount" in (overrides or {})
            and "binWidth" in setting
            and "binWidth" not in (overrides or {})
        ):
            setting.pop("binWidth")
        return {
            "imageType": {k: dict(v or {}) for k, v in self.imageType.items()},
            "featureClass": {k: (list(v) if v else None) for k, v in self.featureClass.items()},
            "setting": setting,
        }


class StabilitySettings(_Strict):
    """Perturbation ICC (Zwanenburg et al. 2019)."""

    enabled: bool = True
    perturbations: int = Field(5, ge=2, description="perturbed copies per patient")
    patients: int | None = Field(
        30, ge=2, description="patients perturbed (a random subset; null = all)"
    )
    rotation_deg: float = Field(10.0, ge=0, description="max rotation about the slice axis")
    translation_mm: float = Field(0.5, ge=0, description="max translation per axis")
    noise_sd: float = Field(0.05, ge=0, description="added noise, in z-normalised units")
    mask: Literal["contour", "erode_dilate", "none"] = "contour"
    contour_mm: float = Field(1.0, ge=0, description="sd of the contour randomisation")
    icc: Literal["ICC(1,1)", "ICC(A,1)", "ICC(C,1)"] = "ICC(1,1)"
    threshold: float = Field(0.75, ge=0, le=1)
    seed: int = Field(0, ge=0)


class HarmonisationCheckSettings(_Strict):
    """The out-of-fold site-classifier check written to radiomics.json."""

    enabled: bool = True
    folds: int = Field(5, ge=2)
    covariates: tuple[str, ...] = Field((), description="manifest columns ComBat protects")
    seed: int = Field(0, ge=0)


class RadiomicsConfig(_Strict):
    """Everything ``stromalens radiomics`` needs besides the manifest."""

    sequences: tuple[SequenceSpec, ...] = Field(
        default_factory=lambda: (
            SequenceSpec(name="t1", image="mri_t1"),
            SequenceSpec(name="t2", image="mri_t2"),
            SequenceSpec(name="ce", image="mri_ce"),
        ),
        min_length=1,
    )
    preprocess: PreprocessSettings = PreprocessSettings()
    extraction: ExtractionSettings = ExtractionSettings()
    stability: StabilitySettings = StabilitySettings()
    harmonisation_check: HarmonisationCheckSettings = HarmonisationCheckSettings()
    workers: int | None = Field(None, ge=1, description="processes; default: all cores")

    @model_validator(mode="after")
    def _unique_names(self):
        names = [s.name for s in self.sequences]
        duplicated = sorted({n for n in names if names.count(n) > 1})
        if duplicated:
            raise ValueError(f"sequence names must be unique; repeated: {duplicated}")
        return self
