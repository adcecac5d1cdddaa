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
    """One image series of a patient: its manifest columns and per-sequence options.

    The mask of a sequence, per patient, is the first of: its own column ``mask`` (default
    ``<image>_mask``, e.g. ``mri_t2_mask``, ``ct_mask``); the mask of sequence ``mask_from``,
    moved onto this image by registration (``preprocess.registration``); the shared
    ``mri_mask`` column (the single mask of older manifests, assumed to lie in every
    sequence's frame of reference). A sequence whose image column is absent or empty is missing
    for that patient.
    """

    name: str = Field(pattern=r"^[A-Za-z0-9_]+$", description="prefix of the feature columns")
    image: str = Field(description="manifest column holding the image path")
    mask: str | None = Field(
        None, description="manifest column of this sequence's own mask (default <image>_mask)"
    )
    mask_from: str | None = Field(
        None, description="sequence whose mask is registered onto this one when it has none"
    )
    series: str | None = Field(
        None, description="DICOM series in a folder: SeriesInstanceUID or description pattern"
    )
    roi: str | None = Field(None, description="structure of an RTSTRUCT / SEG mask (GTV_Mass)")
    label: tuple[int, ...] | None = Field(None, description="override preprocess.label")
    n4: bool | None = Field(None, description="override preprocess.n4.enabled (False for CT)")
    normalise: bool | None = Field(None, description="override preprocess.normalise.enabled")
    setting: dict = Field(
        default_factory=dict, description="PyRadiomics settings for this sequence only"
    )

    @property
    def mask_column(self) -> str:
        """The manifest column of this sequence's own mask."""
        return self.mask or f"{self.image}_mask"


class RegistrationSettings(_Strict):
    """Moving a mask onto a sequence that has none of its own (:mod:`.registration`).

    Measured on the 10 IBSI sarcoma patients (``benchmarks/radiomics_ibsi_sts.py``; CT and PET
    onto the MR, Dice with each modality's own mask): where the images share a frame of
    reference, ``method: none`` gives Dice 1.000 (CT) and 0.988–1.000 (PET); rigid Mattes-MI
    registration raised the metric but slid the tumour (PET median shift 13 mm, Dice median
    0.80, min 0.36; CT median 1.00, min 0.44). Hence the default ``none``: sequences of one
    session (and a PET/CT) share the scanner's frame, and moving the mask through physical space
    is exact there; set ``rigid`` (or ``affine``) for a sequence from another session, and
    ``max_shift_mm`` fails a registration that moves the tumour further than that from where
    the scanners' frames put it.
    """

    method: Literal["rigid", "affine", "none"] = Field(
        "none", description="none: the images share a frame of reference (resample only)"
    )
    bins: int = Field(50, ge=8, description="Mattes mutual-information histogram bins")
    sampling: float = Field(0.1, gt=0, le=1, description="fraction of voxels sampled")
    shrink: tuple[int, ...] = Field((4, 2, 1), min_length=1, description="pyramid factors")
    smooth_mm: tuple[float, ...] = Field((2.0, 1.0, 0.0), min_length=1)
    iterations: int = Field(100, ge=1, description="optimiser iterations per level")
    margin_mm: float = Field(
        30.0, ge=0, description="the metric is computed around the tumour plus this margin"
    )
    min_inside: float = Field(
        0.9, ge=0, le=1, description="least fraction of the moved mask inside the image"
    )
    max_shift_mm: float | None = Field(
        10.0, gt=0, description="most the optimiser may move the tumour (null: no limit)"
    )
    seed: int = Field(0, ge=0)

    @model_validator(mode="after")
    def _levels(self):
        if len(self.shrink) != len(self.smooth_mm):
            raise ValueError(
                f"shrink {list(self.shrink)} and smooth_mm {list(self.smooth_mm)} need one "
                "entry per pyramid level each"
            )
        return self


class N4Settings(_Strict):
    enabled: bool = True
    fit_spacing_mm: float = Field(
        4.0, gt=0, description="the bias field is fitted on a copy shrunk to about this spacing"
    )
    iterations: tuple[int, ...] = Field((50, 50, 30), min_length=1)
    convergence: float = Field(1e-3, gt=0)


class NormaliseSettings(_Strict):
    """z-normalisation of each MRI sequence (``preprocess.z_normalise``).

    ``region: body`` (the default) takes μ and σ over the Otsu body mask. ``roi`` forces every
    tumour to mean 0 and SD 1, which flattens first-order features across patients. Measured
    on the 9 real IBSI soft-tissue-sarcoma T1 MRs (``benchmarks/radiomics_ibsi_sts.py``,
    perturbation ICC(1,1), 5 perturbations per patient): of the 18 first-order features,
    ``body`` keeps 18 stable (ICC ≥ 0.75; median ICC 0.987), ``roi`` 15 (median 0.972), with
    Variance and RootMeanSquared below ICC 0.5 (nearly the same for every tumour). With a fixed
    ``binCount`` the texture features do not depend on this choice (they are invariant to an
    affine change of intensities).
    """

    enabled: bool = True
    region: Literal["roi", "body"] = "body"


class PreprocessSettings(_Strict):
    spacing_mm: tuple[float, float, float] | None = Field((1.0, 1.0, 1.0))
    interpolator: Literal["bspline", "linear"] = "bspline"
    label: tuple[int, ...] | None = Field(
        None,
        description="mask label(s) of the tumour; null: the mask's only label (several = error)",
    )
    mask_mismatch: Literal["error", "resample"] = "error"
    geometry_tolerance: float = Field(1e-3, gt=0)
    crop_margin_mm: float = Field(30.0, ge=0, description="context kept around the tumour")
    n4: N4Settings = N4Settings()
    normalise: NormaliseSettings = NormaliseSettings()
    registration: RegistrationSettings = RegistrationSettings()

    @field_validator("label", mode="before")
    @classmethod
    def _one_or_more(cls, value):
        return (value,) if isinstance(value, int) else value

    @field_validator("label")
    @classmethod
    def _positive(cls, value):
        if value is not None and (not value or min(value) < 1):
            raise ValueError(f"labels must be positive integers; got {list(value)}")
        return value


class ExtractionSettings(_Strict):
    """PyRadiomics' parameter file (same keys and meaning)."""

    # The defaults are those of configs/radiomics.yaml (a test holds them equal), so
    # `stromalens radiomics` without --config computes what the shipped file documents.
    imageType: dict[str, dict] = Field(  # noqa: N815
        default_factory=lambda: {"Original": {}, "LoG": {"sigma": [1.0, 2.0, 3.0]}, "Wavelet": {}}
    )
    featureClass: dict[str, list[str] | None] = Field(  # noqa: N815
        default_factory=lambda: {
            c: [] for c in ("firstorder", "shape", "glcm", "glrlm", "glszm", "ngtdm")
        }
    )
    setting: dict = Field(default_factory=lambda: {"binCount": 32, "label": 1, "padDistance": 5})

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

    def sequence_columns(self) -> tuple:
        """The manifest columns of the configured sequences (what ``load_manifest`` checks)."""
        from ..cohort import SequenceColumns

        return tuple(
            SequenceColumns(s.name, s.image, s.mask_column, s.mask_from) for s in self.sequences
        )

    @model_validator(mode="after")
    def _unique_names(self):
        names = [s.name for s in self.sequences]
        duplicated = sorted({n for n in names if names.count(n) > 1})
        if duplicated:
            raise ValueError(f"sequence names must be unique; repeated: {duplicated}")
        for spec in self.sequences:
            if spec.mask_from is not None and (
                spec.mask_from not in names or spec.mask_from == spec.name
            ):
                raise ValueError(
                    f"sequence {spec.name}: mask_from {spec.mask_from!r} must name another "
                    f"configured sequence ({', '.join(n for n in names if n != spec.name)})"
                )
        return self
