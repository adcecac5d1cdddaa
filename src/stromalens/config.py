"""Configuration models of every stage, composed into one :class:`StudyConfig` (YAML).

Configuration is data: it is read with ``yaml.safe_load`` and validated by pydantic, never
executed. Unknown keys are errors, so a typo is reported instead of silently ignored. A relative
path written in a file is relative to that file's folder (:func:`load_config`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _PathIfExists:
    """Marks a ``str`` field that names a file or a keyword (``wsi.weights``: a path, 'random'
    or 'hub'): a relative value is taken as a path only when that file or folder exists."""


#: None, or a string that may be a path (see :class:`_PathIfExists`).
MaybePath = Annotated[str | None, _PathIfExists()]


class SlideConfig(_Strict):
    """Geometry of the synthetic slides (level 0 at ``mpp`` µm/px)."""

    width: int = Field(3072, ge=512, description="level-0 width in pixels")
    height: int = Field(2560, ge=512, description="level-0 height in pixels")
    mpp: float = Field(0.5, gt=0)
    jpeg_quality: int = Field(85, ge=30, le=100)


class MissingRates(_Strict):
    """Probability that a patient lacks each modality (real cohorts have gaps)."""

    wsi: float = Field(0.05, ge=0, le=1)
    mri_t1: float = Field(0.03, ge=0, le=1)
    mri_t2: float = Field(0.02, ge=0, le=1)
    mri_ce: float = Field(0.06, ge=0, le=1)


class SparseEvidence(_Strict):
    """(a) ERS–CAF and crosstalk seen in a minority of stromal tiles (``hotspots``).

    Inside the hotspots the fibroblast density rises by ``per_a · a`` and the stromal
    lymphocytes by ``per_b · b``; outside, neither latent changes the slide. Off (the null),
    the same mean signal is spread over all the stroma (``share · per_a · a`` everywhere), so
    attention has nothing to find that mean pooling misses. Default share 0.2: an assumption, a
    minority of CAFs as the ERS–CAF state is a CAF subpopulation in single-cell data.
    """

    enabled: bool = True
    share: float = Field(0.2, gt=0, le=1, description="share of the stroma in hotspots")
    per_a: float = Field(0.5, ge=0, description="fibroblast-density gain per unit a, hotspots")
    per_b: float = Field(0.3, ge=0, description="stromal-lymphocyte gain per unit b, hotspots")


class ModalityReliability(_Strict):
    """(b) Stratum-dependent reliability: each location degrades one modality by ``contrast``.

    Skull base (small, well-circumscribed tumours): the slide's correlation with the latents
    × (1 − c) (the whole slide is drawn from a mixed view of them), the MRI at full visibility.
    Sacrum (large, necrotic): the MRI visibility ρ × (1 − c), the slide whole. Mobile spine:
    both × (1 − c/2). Off (the null): c = 0 in every stratum.
    Default 0.4: an assumption (the direction follows imaging practice, not a measurement).
    """

    enabled: bool = True
    contrast: float = Field(0.4, ge=0, lt=1)


class SiteConfounding(_Strict):
    """(c) Site effects on the features and a site–biology association (referral patterns).

    ``strength`` scales every site's departure from the reference scanner and stain (1: the
    generator's site draws); ``biology_shift`` is the spread of the site means of ``a`` in SD
    (site k of the K ordered sites gets a mean shift of ``shift · (1 − 2k/(K−1))``). Off (the
    null): identical sites and no association. Default shift 0.3 SD: an assumption of a
    tertiary centre receiving more aggressive cases.
    """

    enabled: bool = True
    strength: float = Field(1.0, ge=0)
    biology_shift: float = Field(0.3, ge=0)


class FibrosisAnnotation(_Strict):
    """(d) The pathologist's fibrosis region drawn around the evidence hotspots, with a margin
    that tightens with grade: ``margin_um · (1 − grade/4)`` (200 µm at grade 0, 50 µm at 3).
    Off (the null): the region is all the collagen stroma, blind to the hotspots."""

    enabled: bool = True
    margin_um: float = Field(200.0, ge=0)


class OutcomeEffects(_Strict):
    """(e) Survival effects of the latents and a predictive treatment × crosstalk interaction.

    ``survival_scale`` multiplies the latents' log-hazard coefficients (1: the study's
    direction and the generator's sizes); ``interaction`` is the logit change of response per
    unit ``b`` under radiotherapy (negative b × RT: excluded tumours respond less to RT). Off
    (the null): both 0, the latents then carry no prognostic or predictive information.
    Default interaction 0.8 (odds ratio 2.2 per SD): an assumption of a moderate predictive
    marker.
    """

    enabled: bool = True
    survival_scale: float = Field(1.0, ge=0)
    interaction: float = Field(0.8, ge=0)


class ExternalMorphology(_Strict):
    """(f) The external cohort: another morphology whose slides carry the same biology. Off
    (the null): its slides are rendered from latents drawn independently of its RNA, so a
    zero-shot model can have no skill there."""

    enabled: bool = True
    morphology: Literal["chondrosarcoma", "chordoma"] = "chondrosarcoma"


class TextPrior(_Strict):
    """(g) What the synthetic CLIP's own corpus teaches about the evidence.

    The corpus is a separate synthetic cohort (``corpus_patients`` slides, seed
    ``seed + corpus_seed_offset``, ids ``C…``), never an evaluated cohort. A stromal tile's
    caption names its fibroblast density (the hotspots' visible trait) with probability
    ``density_caption_rate``. Off (the null): no caption names it, so no prompt can point the
    attention at the hotspots.
    """

    enabled: bool = True
    density_caption_rate: float = Field(0.4, ge=0, le=1)
    corpus_patients: int = Field(24, ge=2)
    corpus_seed_offset: int = Field(7_000_001, ge=1)


class MechanismsConfig(_Strict):
    """The planted mechanisms of the validation matrix (issue 17), each with a switch, an
    effect size and its null (``enabled: false`` = effect 0). :meth:`null` switches all off.

    ``effect_scale`` K multiplies every mechanism's effect size at once (1: the defaults; 0:
    no effect), to find the smallest size the method detects;
    :func:`stromalens.synthetic.mechanisms.planted` defines what "× K" means for each size
    (a gain, an SD, a log-hazard, a log of retained signal) and applies it.
    """

    sparse_evidence: SparseEvidence = SparseEvidence()
    reliability: ModalityReliability = ModalityReliability()
    site: SiteConfounding = SiteConfounding()
    annotation: FibrosisAnnotation = FibrosisAnnotation()
    outcomes: OutcomeEffects = OutcomeEffects()
    external: ExternalMorphology = ExternalMorphology()
    text_prior: TextPrior = TextPrior()
    effect_scale: float = Field(
        1.0, ge=0, allow_inf_nan=False, description="K: every effect size × K (see planted)"
    )

    def null(self) -> MechanismsConfig:
        """The same settings with every mechanism switched off (the null cohort); the
        effect scale is kept, so the null's slides carry the same diffuse evidence gain."""
        switches = (name for name in type(self).model_fields if name != "effect_scale")
        return self.model_copy(
            update={
                name: getattr(self, name).model_copy(update={"enabled": False}) for name in switches
            }
        )


class SynthConfig(_Strict):
    """Settings of the synthetic cohort generator (``stromalens synth``)."""

    patients: int = Field(126, ge=1, description="number of patients")
    seed: int = Field(0, ge=0)
    external: bool = Field(False, description="write the WSI-only external cohort instead")
    slide: SlideConfig = SlideConfig()
    missing: MissingRates = MissingRates()
    mechanisms: MechanismsConfig = MechanismsConfig()
    id_prefix: str | None = Field(
        None, pattern=r"^[A-Z]{1,3}$", description="patient-id prefix; null: P, or X if external"
    )
    workers: int | None = Field(None, ge=1, description="processes; default: all cores")


_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"


class CohortConfig(_Strict):
    """Where a study's cohort lives."""

    manifest: Path
    expression: Path | None = Field(None, description="expression table in linear TPM")
    name: str = Field("development", pattern=_NAME, description="folder name of its features")
    sites: tuple[str, ...] | None = Field(None, description="allowed site labels, if restricted")
    check_files: bool = True


class TargetsConfig(_Strict):
    """How the transcriptomic targets are computed (``stromalens targets``)."""

    orientation: Literal["auto", "genes-x-samples", "samples-x-genes"] = Field(
        "auto", description="auto: the axis holding the manifest's rna_sample ids"
    )
    na: Literal["error", "drop-genes", "impute-mean"] = "error"
    annotation: Path | None = Field(None, description="probe → symbol table (probe, symbol)")
    annotation_symbol: str = Field("symbol", description="the annotation's symbol column")
    scale: Literal["auto", "linear", "log2", "log10", "log-ratio"] = Field(
        "auto", description="log2/log10: of TPM+1, made linear; log-ratio: ERS-CAF only"
    )
    negatives: Literal["error", "clip"] = "error"
    normalize: Literal["none", "tpm"] = Field("none", description="tpm: rescale to sum 1e6")
    platform: Literal["rnaseq", "microarray"] | None = Field(
        None, description="null: microarray with an annotation or log ratios, else rnaseq"
    )
    gene_sets: Path | None = Field(None, description="GMT/YAML with ERS_CAF; null: shipped set")
    signature: Path | None = Field(None, description="CIBERSORT-format matrix; null: TIL10")
    mrna_scaling: Path | None = Field(None, description="TSV cell type → mRNA per cell")
    duplicates: Literal["error", "sum", "mean", "max"] = "error"
    lr_weights: Literal["resources", "uniform"] = "resources"
    quantiseq_tumor: bool = Field(
        False, description="quanTIseq's tumor=TRUE: drop tumour-expressed genes from its fit"
    )
    lr_method: Literal["monotone", "product"] = Field(
        "monotone", description="S_LR: monotone (scaled expression ≥ 0) or Eq. 6's z-product"
    )
    nusvr_quantile_normalisation: bool = Field(
        False, description="CIBERSORT's QN=TRUE before ν-SVR (its default for microarrays)"
    )
    min_coverage: float = Field(0.5, ge=0, le=1)
    adopt: Path | None = Field(
        None,
        description="(study) the --out of `stromalens targets` to reuse when its recorded "
        "inputs and settings equal the study's",
    )


class WsiConfig(_Strict):
    """Tiling, stain normalisation and the frozen encoder (``stromalens wsi embed``)."""

    encoder: str = "synthclip"
    weights: MaybePath = Field(None, description="local file/dir, 'random'; null: default")
    allow_download: bool = False
    target_mpp: float = Field(0.5, gt=0)
    tile_px: int = Field(224, ge=16)
    min_tissue: float = Field(0.5, ge=0, le=1)
    stain: Literal["macenko", "none"] = "macenko"
    stain_reference: Path | None = None
    batch_size: int = Field(64, ge=1)
    device: str = Field(
        "auto",
        pattern=r"^(auto|cpu|cuda|cuda:\d+|mps)$",
        description="where the encoder runs (auto: a GPU when present)",
    )
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto", description="auto: the encoder's own on a GPU, fp32 on the CPU"
    )
    executor: Literal["local", "process", "ray"] = "process"
    workers: int | None = Field(None, ge=1, description="slides in parallel; default: all cores")
    # `stromalens run` only (issue 18): reuse what `stromalens wsi embed --out PATH` made
    features: Path | None = Field(
        None,
        description="adopt the slide stores of a `stromalens wsi embed --out PATH` folder: a "
        "store recording the same slide file and settings is linked, not embedded again",
    )


class RadiomicsStageConfig(_Strict):
    """The radiomics stage: a radiomics YAML (``configs/radiomics.yaml``) or inline settings."""

    config: Path | None = Field(None, description="radiomics YAML; null: built-in settings")
    settings: dict | None = Field(None, description="inline radiomics settings (same keys)")
    adopt: Path | None = Field(
        None,
        description="the --out of `stromalens radiomics` whose patient records are reused "
        "where settings and input files match",
    )
    executor: Literal["process", "ray"] = "process"
    workers: int | None = Field(None, ge=1, description="patients in parallel")

    @model_validator(mode="after")
    def _one_source(self):
        if self.config is not None and self.settings is not None:
            raise ValueError("give either 'config' (a file) or 'settings' (inline), not both")
        if self.settings is not None:
            from .radiology.settings import RadiomicsConfig

            try:
                RadiomicsConfig.model_validate(self.settings)
            except ValidationError as exc:
                raise ValueError("settings." + _first_error(exc)) from None
        return self


class ExternalCohortConfig(_Strict):
    """A cohort the frozen models are applied to (zero-shot; WSI, targets if it has RNA-seq)."""

    name: str = Field(pattern=_NAME, description="folder name under STUDY/external/")
    manifest: Path
    expression: Path | None = Field(None, description="TPM table: its targets are computed")
    targets: TargetsConfig | None = Field(None, description="override the study's targets block")
    check_files: bool = True


class TrainSettings(BaseModel):
    """Hyper-parameters of the curriculum (``training.settings``; the nested grid overrides
    some of them), validated when the study file is loaded.

    Immutable: :meth:`with_` returns a validated copy with some values changed.

    >>> TrainSettings().with_(tau=1.0).tau
    1.0
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    hidden: int = 64
    dropout: float = 0.1
    tau: float = 0.5
    lr: float = 3e-3
    lr_prompts: float = 5e-2
    batch_size: int = Field(32, ge=1)
    epochs_stage1: int = Field(20, ge=0)
    epochs_stage2: int = Field(60, ge=0)
    epochs_stage3: int = Field(20, ge=0)
    epochs_distill: int = Field(40, ge=0)
    epochs_baseline: int = Field(60, ge=0)
    # Modality dropout q = 0.5: each branch must predict on its own half the time, or the
    # fusion leans on the branch that is easier to fit on the training fold
    # (benchmarks/train_cv.py compares fused with single-modality models).
    modality_dropout: float = Field(0.5, ge=0, lt=1)
    lambda_coral: float = Field(0.1, ge=0)
    weight_decay: float = Field(1.0, ge=0)
    max_tiles: int | None = 512
    # Radiomics enter the models as k components fitted on the training fold (FoldPreprocessor):
    # principal components ("pca") or partial least squares against the targets ("pls");
    # rad_components None: the standardised features themselves. PCA by default: PLS
    # components are chosen on the training targets, so in-sample they look more predictive
    # than they are out of sample and a fusion model learns to over-trust the MRI branch.
    rad_components: int | None = Field(8, ge=1)
    rad_reduction: Literal["pca", "pls"] = "pca"
    seed: int = 0

    def with_(self, **changes) -> TrainSettings:
        """A copy with ``changes`` applied, validated; an unknown key is a ``ValueError``."""
        unknown = set(changes) - set(type(self).model_fields)
        if unknown:
            raise ValueError(f"unknown training setting(s): {sorted(unknown)}")
        return type(self).model_validate({**self.to_dict(), **changes})

    def to_dict(self) -> dict:
        """Every setting by name (JSON-ready: numbers, strings and None)."""
        return self.model_dump()


class TrainingConfig(_Strict):
    """Models, curriculum and validation (``stromalens train``). See ``configs/study.yaml`` for
    every key with a comment."""

    targets: Path | None = Field(
        None, description="targets.parquet of the targets stage (`stromalens run` fills it)"
    )
    features: Path | None = Field(None, description="directory of per-slide HDF5 feature stores")
    radiomics: Path | None = Field(None, description="radiomics run directory")
    prompts: Path = Field(Path("configs/prompts"), description="directory of prompt banks")
    encoder: str = "synthclip"
    encoder_weights: MaybePath = None
    prompt_cache: Path | None = None
    models: tuple[str, ...] | None = Field(None, description="registered models; default: all")
    folds: int = Field(5, ge=2)
    inner_folds: int = Field(3, ge=2)
    repeats: int = Field(
        1,
        ge=1,
        description="outer CVs with different fold assignments (seeds seed … seed+repeats−1); "
        "predictions carry a `repeat` column (configs/study.yaml: 3)",
    )
    grid: dict[str, list] = Field(
        default_factory=dict,
        description="nested-selection grid {setting: [values]}: every model is selected over "
        "the cartesian product of the keys its fit reads (training.cv.model_grid), on the same "
        "inner folds; a model reading no key with two values is fitted at the base settings",
    )
    harmonise: bool = True
    icc_threshold: float | None = Field(0.75, ge=0, le=1)
    max_tiles: int | None = Field(2048, ge=1, description="tiles kept per slide when loading")
    leave_site_out: bool = True
    permuted_control: bool = Field(False, description="also run CV on shuffled targets")
    prompt_perturbation: bool = Field(
        True,
        description="also cross-validate the CLIP-guided WSI model (clip_mil) once per "
        "perturbed prompt set (SYN, ANTI, OOD of the banks), retrained with that set's text, "
        "on the same folds, seed and grid (training.prompt_sets); needs clip_mil in the models",
    )
    workers: int = Field(1, ge=1, description="fits (a model on a fold) run in parallel processes")
    settings: TrainSettings = Field(
        default_factory=TrainSettings, description="curriculum hyper-parameters (TrainSettings)"
    )

    @field_validator("grid")
    @classmethod
    def _grid_of_settings(cls, value: dict[str, list]) -> dict[str, list]:
        known = TrainSettings.model_fields
        for key, values in value.items():
            if key not in known:
                raise ValueError(
                    f"grid key {key!r} is not a training setting; settings: " + ", ".join(known)
                )
            if key in ("rad_components", "rad_reduction"):
                # the inner folds' preprocessing is fitted once, before the grid is searched
                raise ValueError(
                    f"grid key {key!r} is a preprocessing setting: set it in training.settings"
                )
            if not isinstance(values, list) or not values:
                raise ValueError(f"grid values of {key!r} must be a non-empty list, got {values!r}")
            for item in values:
                try:
                    TrainSettings.model_validate({key: item})
                except ValidationError as exc:
                    msg = exc.errors()[0]["msg"].removeprefix("Value error, ")
                    raise ValueError(f"grid value {key}={item!r}: {msg}") from None
        return value


class EvaluationConfig(_Strict):
    """Options of ``stromalens evaluate`` (``stromalens.evaluation.evaluate_run``)."""

    n_boot: int = Field(1000, ge=100, description="bootstrap resamples of every CI")
    repeats: int = Field(3, ge=1, description="repeats of the random missing-modality probes")
    k_fraction: float = Field(0.1, gt=0, le=1, description="top-K share of attended tiles")
    max_overlays: int = Field(6, ge=0, description="attention heat-map PNGs written")
    seed: int = Field(0, ge=0)


class StudyConfig(_Strict):
    """The whole study: one block per stage (``configs/study.yaml``).

    Paths: :func:`load_config` makes every relative path written in the study file (a field of
    type ``Path``, e.g. ``cohort.manifest``, ``targets.signature``, ``radiomics.config``,
    ``external[*].manifest``, ``training.prompts``) relative to the folder of that file, not
    to the working directory; ``wsi.weights`` and ``training.encoder_weights`` too when they
    name a file or folder that exists there (else they stay as written: 'random', 'hub', …).
    Absolute paths stay as they are, and so do defaults the file does not set (e.g.
    ``training.prompts``: ``configs/prompts`` of the working directory). Paths inside the
    cohort manifest are relative to the manifest (:mod:`stromalens.cohort`).
    """

    name: str = Field("study", description="shown in the report and the summary")
    notes: str = Field("", description="free text stated in the report (e.g. lighter settings)")
    cohort: CohortConfig
    synth: SynthConfig = SynthConfig()
    targets: TargetsConfig = TargetsConfig()
    wsi: WsiConfig = WsiConfig()
    radiomics: RadiomicsStageConfig = RadiomicsStageConfig()
    training: TrainingConfig | None = None
    external: tuple[ExternalCohortConfig, ...] = ()
    evaluation: EvaluationConfig = EvaluationConfig()

    @field_validator("external")
    @classmethod
    def _unique_external(cls, value):
        names = [c.name for c in value]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"external cohort names must be unique; repeated: {repeated}")
        return value

    @field_validator("cohort", mode="before")
    @classmethod
    def _cohort_mapping(cls, value):
        if value is None:
            raise ValueError("the 'cohort' block is required")
        return value


def _first_error(exc: ValidationError) -> str:
    err = exc.errors()[0]
    where = ".".join(str(p) for p in err["loc"]) or "<root>"
    return f"{where}: {err['msg'].removeprefix('Value error, ')}"


class ConfigError(ValueError):
    """A configuration file that cannot be used; the message names the key."""


def load_config(path: Path | str, model: type[BaseModel] = StudyConfig) -> BaseModel:
    """Read a YAML file (safely) and validate it into ``model``.

    Every relative path the file writes is joined to the file's folder (see
    :class:`StudyConfig`); absolute paths and the defaults of keys it leaves out are kept
    (``configs/study.yaml``'s ``cohort.manifest: ../runs/demo/cohort/cohort.csv`` is
    ``<checkout>/runs/demo/cohort/cohort.csv`` from any working directory). ``path`` may be a
    ``builtin:`` file of the package (``builtin:radiomics/demo.yaml``)."""
    path = builtin_path(path) or Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except FileNotFoundError:
        raise ConfigError(f"configuration file not found: {path}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    return validate_settings(model, data, source=str(path), base=path.absolute().parent.resolve())


def validate_settings(
    model: type[BaseModel], data: dict, source: str = "settings", base: Path | None = None
) -> BaseModel:
    """Validate ``data`` into ``model``; errors become one :class:`ConfigError` naming each key.

    ``base``: the folder that the relative paths given in ``data`` are relative to (a file's
    folder, as :func:`load_config` passes); None keeps them as given. ``builtin:`` paths are
    resolved either way (:func:`builtin_path`)."""
    try:
        config = model.model_validate(data)
    except ValidationError as exc:
        lines = [
            f"  {'.'.join(str(p) for p in err['loc']) or '<root>'}: "
            f"{err['msg'].removeprefix('Value error, ')}"
            for err in exc.errors()
        ]
        raise ConfigError(f"{source}: invalid configuration\n" + "\n".join(lines)) from None
    try:
        return relative_to(config, base)
    except ConfigError as exc:  # a builtin: path that names nothing shipped
        raise ConfigError(f"{source}: invalid configuration\n  {exc}") from None


# ---------------------------------------------------------------------------- paths
#: The prefix of a path that names a file shipped inside the package (:func:`builtin_path`).
BUILTIN = "builtin:"


def resources_root() -> Path:
    """The folder of the files shipped with the package (``stromalens/resources``)."""
    from importlib.resources import files

    return Path(str(files("stromalens").joinpath("resources")))


def builtin_path(value: Path | str) -> Path | None:
    """The file or folder that a ``builtin:`` path names inside the package, or None when
    ``value`` is an ordinary path.

    ``builtin:prompts`` is the folder of the shipped prompt banks, ``builtin:radiomics/
    default.yaml`` the study's radiomics settings (``stromalens/resources/README.md`` lists
    them). A study file that names them runs from anywhere, an installed package included.

    >>> builtin_path("builtin:prompts").name
    'prompts'
    >>> builtin_path("configs/prompts") is None
    True
    """
    text = str(value)
    if not text.startswith(BUILTIN):
        return None
    name = text.removeprefix(BUILTIN).strip("/")
    root = resources_root()
    path = Path(os.path.normpath(root / name))
    if not name or root not in path.parents or not path.exists():
        shipped = sorted(
            str(p.relative_to(root)) for p in root.rglob("*") if p.suffix in (".yaml", ".yml")
        )
        raise ConfigError(
            f"{text}: no such file in the package; shipped: "
            + ", ".join(f"{BUILTIN}{n}" for n in ["prompts", *shipped])
        )
    return path


def relative_to(config: BaseModel, base: Path | str | None, *, defaults: bool = False) -> BaseModel:
    """``config`` with its relative paths joined to ``base``, at every depth.

    A path is a value of a ``Path`` field (also inside nested models and tuples of them) or of a
    :data:`MaybePath` field when ``base / value`` exists. Only the fields the configuration was
    given (pydantic's ``model_fields_set``) are changed, unless ``defaults``: then every field,
    so that a configuration written for another process to load holds no relative path
    (:func:`absolute_paths`). Absolute paths are kept; ``builtin:`` paths become the package's
    file (:func:`builtin_path`), also when ``base`` is None (nothing else is joined then)."""
    base = None if base is None else Path(base)
    fields = type(config).model_fields
    updates = {}
    for name in fields if defaults else config.model_fields_set:
        value = getattr(config, name)
        maybe = any(isinstance(m, _PathIfExists) for m in fields[name].metadata)
        try:
            joined = _joined(value, base, maybe, defaults)
        except ConfigError as exc:  # name the key: "radiomics.config: builtin:x: ..."
            message = str(exc)
            raise ConfigError(
                f"{name}: {message}" if message.startswith(BUILTIN) else f"{name}.{message}"
            ) from None
        if joined is not value:
            updates[name] = joined
    return config.model_copy(update=updates) if updates else config


def absolute_paths(config: BaseModel) -> BaseModel:
    """``config`` with every relative path, given or default, made absolute against the working
    directory: what a process started elsewhere reads the same way."""
    return relative_to(config, Path.cwd(), defaults=True)


def _joined(value, base: Path | None, maybe_path: bool, defaults: bool):
    if isinstance(value, Path):
        builtin = builtin_path(value)
        if builtin is not None:
            return builtin
        if value.is_absolute() or base is None:
            return value
        return Path(os.path.normpath(base / value))
    if isinstance(value, BaseModel):
        return relative_to(value, base, defaults=defaults)
    if isinstance(value, tuple):
        items = tuple(_joined(v, base, maybe_path, defaults) for v in value)
        return items if any(a is not b for a, b in zip(items, value, strict=True)) else value
    if maybe_path and isinstance(value, str) and base is not None and not Path(value).is_absolute():
        if (base / value).exists():
            return os.path.normpath(base / value)
    return value
