"""The run-directory contract: every path of a study folder and of a training run, and every
``metrics.json`` key, is built and parsed here (``docs/run_directory.md``), in the spirit of
LazySlide's ``Key`` class. Stages, the evaluation, the report and the summary import these
names instead of spelling paths and keys themselves.

Metric keys are flat and dot-separated (``cv.fusion.r.ers_caf``). A part may itself contain a
dot (a site ``St.Olav`` or a cohort ``tcga.luad``): :func:`metric_key` escapes ``%`` and ``.``
inside a part as ``%25`` and ``%2E`` (URL percent-encoding), so :func:`parse_metric_key` always
recovers the parts and a dotted name can never shift the others.

>>> metric_key("external", "tcga.luad", "r", "lr")
'external.tcga%2Eluad.r.lr'
>>> parse_metric_key("external.tcga%2Eluad.r.lr")
('external', 'tcga.luad', 'r', 'lr')
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

# ---------------------------------------------------------------------------- metric keys
_ESCAPES = (("%", "%25"), (".", "%2E"))


def _escape(part) -> str:
    text = str(part)
    if not text:
        raise ValueError("a metric key part cannot be empty")
    for raw, escaped in _ESCAPES:
        text = text.replace(raw, escaped)
    return text


def _unescape(part: str) -> str:
    for raw, escaped in reversed(_ESCAPES):
        part = part.replace(escaped, raw)
    return part


def metric_key(*parts) -> str:
    """The ``metrics.json`` key of ``parts`` (each escaped, joined by dots)."""
    if not parts:
        raise ValueError("a metric key needs at least one part")
    return ".".join(_escape(p) for p in parts)


def parse_metric_key(key: str) -> tuple[str, ...]:
    """The parts of a key built by :func:`metric_key`."""
    return tuple(_unescape(p) for p in key.split("."))


def metric_parts(metrics, *prefix: str, length: int | None = None):
    """``(parts, value)`` of every key of ``metrics`` that starts with the parts ``prefix``
    (and has ``length`` parts, when given), in the mapping's order."""
    n = len(prefix)
    for key, value in metrics.items():
        parts = parse_metric_key(key)
        if parts[:n] == prefix and (length is None or len(parts) == length):
            yield parts, value


# ---------------------------------------------------------------------------- file names
CONFIG = "config.yaml"
MANIFEST = "manifest.json"
FOLDS = "folds.csv"
PREDICTIONS = "predictions.parquet"
METRICS = "metrics.json"
SELECTION = "selection.csv"
PREDICT_INFO = "predict.json"


@dataclass(frozen=True)
class TrainLayout:
    """The files of one training run directory (``stromalens train --out TRAIN``)."""

    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    @property
    def config(self) -> Path:
        return self.root / CONFIG

    @property
    def manifest(self) -> Path:
        return self.root / MANIFEST

    @property
    def folds(self) -> Path:
        return self.root / FOLDS

    @property
    def predictions(self) -> Path:
        return self.root / PREDICTIONS

    @property
    def metrics(self) -> Path:
        return self.root / METRICS

    @property
    def selection(self) -> Path:
        return self.root / SELECTION

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    def checkpoint_dir(self, fold) -> Path:
        return self.checkpoints / f"fold{fold}"

    @property
    def bundle(self) -> Path:
        """The self-contained model bundle (:mod:`stromalens.training.bundle`)."""
        return self.root / "model"

    @property
    def prompts_cache(self) -> Path:
        return self.root / "prompts"

    @property
    def leave_site_out(self) -> TrainLayout:
        return TrainLayout(self.root / "leave_site_out")

    @property
    def permuted(self) -> TrainLayout:
        return TrainLayout(self.root / "permuted")

    def external(self, cohort: str) -> Path:
        """``stromalens predict``'s output for an external cohort."""
        return self.root / "external" / check_name(cohort, "external cohort")

    def external_dirs(self) -> list[Path]:
        """Every directory under ``external/`` that ``stromalens predict`` completed."""
        return sorted(p.parent for p in (self.root / "external").glob(f"*/{PREDICT_INFO}"))

    @property
    def evaluation(self) -> Path:
        return self.root / "evaluation"

    def evaluation_file(self, name: str) -> Path:
        return self.evaluation / name

    @property
    def evaluation_metrics(self) -> Path:
        return self.evaluation / METRICS

    @property
    def overlays(self) -> Path:
        return self.evaluation / "attention"


@dataclass(frozen=True)
class StudyLayout:
    """The folders of a study (``stromalens run study.yaml --out STUDY``)."""

    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    @property
    def config(self) -> Path:
        return self.root / "study.yaml"

    @property
    def manifest(self) -> Path:
        return self.root / MANIFEST

    @property
    def lock(self) -> Path:
        return self.root / ".lock"

    @property
    def targets(self) -> Path:
        return self.root / "targets"

    @property
    def targets_table(self) -> Path:
        return self.targets / "targets.parquet"

    def features(self, cohort: str) -> Path:
        return self.root / "features" / check_name(cohort, "cohort")

    @property
    def radiomics(self) -> Path:
        return self.root / "radiomics"

    @property
    def train_config(self) -> Path:
        return self.root / "train.yaml"

    @property
    def train(self) -> TrainLayout:
        return TrainLayout(self.root / "train")

    def external(self, cohort: str) -> Path:
        """The external cohort's own stage outputs (``targets/``, ``features/``)."""
        return self.root / "external" / check_name(cohort, "external cohort")

    @property
    def report(self) -> Path:
        return self.root / "report" / "index.html"


def check_name(name: str, what: str) -> str:
    """``name`` if it is safe as one path component (no separator, not ``.``/``..``)."""
    text = str(name)
    if not text or text in {".", ".."} or "/" in text or "\\" in text or "\0" in text:
        raise ValueError(f"{what} name {name!r} cannot be used as a folder name")
    return text
