"""Configuration models of every stage, composed into one :class:`StudyConfig` (YAML).

Configuration is data: it is read with ``yaml.safe_load`` and validated by pydantic, never
executed. Unknown keys are errors, so a typo is reported instead of silently ignored.
"""

from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


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


class SynthConfig(_Strict):
    """Settings of the synthetic cohort generator (``stromalens synth``)."""

    patients: int = Field(126, ge=1, description="number of patients")
    seed: int = Field(0, ge=0)
    external: bool = Field(False, description="write the WSI-only external cohort instead")
    slide: SlideConfig = SlideConfig()
    missing: MissingRates = MissingRates()
    workers: int | None = Field(None, ge=1, description="processes; default: all cores")


class CohortConfig(_Strict):
    """Where a study's cohort lives."""

    manifest: Path
    expression: Path | None = None
    sites: tuple[str, ...] | None = Field(None, description="allowed site labels, if restricted")
    check_files: bool = True


class TrainingConfig(_Strict):
    """Models, curriculum and validation (``stromalens train``); paths as given (relative to the
    working directory). See ``configs/study.yaml`` for every key with a comment."""

    targets: Path = Field(description="targets.parquet of the targets stage")
    features: Path | None = Field(None, description="directory of per-slide HDF5 feature stores")
    radiomics: Path | None = Field(None, description="radiomics run directory")
    prompts: Path = Field(Path("configs/prompts"), description="directory of prompt banks")
    encoder: str = "synthclip"
    encoder_weights: str | None = None
    prompt_cache: Path | None = None
    models: tuple[str, ...] | None = Field(None, description="registered models; default: all")
    folds: int = Field(5, ge=2)
    inner_folds: int = Field(3, ge=2)
    grid: dict[str, list] = Field(default_factory=dict, description="nested-selection grid")
    harmonise: bool = True
    icc_threshold: float | None = Field(0.75, ge=0, le=1)
    max_tiles: int | None = Field(2048, ge=1, description="tiles kept per slide when loading")
    leave_site_out: bool = True
    permuted_control: bool = Field(False, description="also run CV on shuffled targets")
    workers: int = Field(1, ge=1, description="folds trained in parallel processes")
    settings: dict = Field(default_factory=dict, description="TrainSettings overrides")


class StudyConfig(_Strict):
    """The whole study; later stages add their blocks here."""

    cohort: CohortConfig
    synth: SynthConfig = SynthConfig()
    training: TrainingConfig | None = None

    @field_validator("cohort", mode="before")
    @classmethod
    def _cohort_mapping(cls, value):
        if value is None:
            raise ValueError("the 'cohort' block is required")
        return value


class ConfigError(ValueError):
    """A configuration file that cannot be used; the message names the key."""


def load_config(path: Path | str, model: type[BaseModel] = StudyConfig) -> BaseModel:
    """Read a YAML file (safely) and validate it into ``model``."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except FileNotFoundError:
        raise ConfigError(f"configuration file not found: {path}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    return validate_settings(model, data, source=str(path))


def validate_settings(model: type[BaseModel], data: dict, source: str = "settings") -> BaseModel:
    """Validate ``data`` into ``model``; errors become one :class:`ConfigError` naming each key."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        lines = [
            f"  {'.'.join(str(p) for p in err['loc']) or '<root>'}: {err['msg']}"
            for err in exc.errors()
        ]
        raise ConfigError(f"{source}: invalid configuration\n" + "\n".join(lines)) from None
