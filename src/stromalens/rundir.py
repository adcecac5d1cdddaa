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

#: The targets stage's gene table (patients × the genes its scores read, log2(TPM + 1)),
#: written beside ``targets.parquet``; training reads it for HE2RNA's gene layer.
GENE_TABLE = "genes.parquet"


def gene_table(targets_table: Path | str) -> Path:
    """The gene table written beside the targets table ``targets_table``."""
    return Path(targets_table).with_name(GENE_TABLE)


#: The targets stage's S_LR inputs (patients × the ligand/receptor genes' log2(TPM + 1) and
#: the receiving cell types' fractions, with the method and triplets), written beside
#: ``targets.parquet``; training refits S_LR's gene scaling on each fold's training patients.
LR_INPUTS = "lr_inputs.parquet"


def lr_inputs(targets_table: Path | str) -> Path:
    """The S_LR inputs table written beside the targets table ``targets_table``."""
    return Path(targets_table).with_name(LR_INPUTS)


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

    @property
    def prompt_perturbation(self) -> Path:
        """The folder of the retrained prompt sets (:meth:`prompt_set`)."""
        return self.root / "prompt_perturbation"

    def prompt_set(self, label: str) -> TrainLayout:
        """The CV of the CLIP-guided WSI model retrained with prompt set ``label`` (``SYN``,
        ``ANTI``, ``OOD``): ``prompt_perturbation/<label>/``, a run of its own (folds,
        predictions, selection, metrics, checkpoints)."""
        return TrainLayout(self.prompt_perturbation / check_name(label, "prompt set"))

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


# ---------------------------------------------------------------------------- reading a run
class RunDirError(FileNotFoundError):
    """A run directory that cannot be evaluated; the message names each missing piece."""


#: Files every training run has.
REQUIRED = (CONFIG, FOLDS, PREDICTIONS)
PREDICTION_COLUMNS = ("patient_id", "fold", "model", "target", "y_true", "y_pred")


def resolve_run_path(path, root: Path) -> Path | None:
    """A path from a run's ``config.yaml``: absolute as written (training writes absolute
    paths), a relative one relative to the run directory ``root``."""
    if not path:
        return None
    p = Path(path)
    return p if p.is_absolute() else Path(root) / p


def _read_json(path: Path) -> dict | None:
    import json

    if not path.is_file():
        return None
    data = json.loads(path.read_text(encoding="utf-8"))
    return data if isinstance(data, dict) else {"value": data}


def flatten(mapping: dict, prefix: str = "") -> dict[str, object]:
    """Nested dictionaries as one level of dotted keys (``{"a": {"b": 1}} → {"a.b": 1}``);
    an already flat mapping is returned unchanged."""
    flat: dict[str, object] = {}
    for key, value in mapping.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


def check_predictions(predictions, source: str) -> None:
    """Predictions must have the contract's columns and no NaN; names the offending rows."""
    import numpy as np

    missing = sorted(set(PREDICTION_COLUMNS) - set(predictions.columns))
    if missing:
        raise RunDirError(f"{source}: column(s) {missing} missing")
    bad = predictions[~np.isfinite(predictions["y_pred"].to_numpy(float))]
    if len(bad):
        where = ", ".join(
            f"{m}/{t}/{p}" for m, t, p in bad[["model", "target", "patient_id"]].head(5).to_numpy()
        )
        raise RunDirError(
            f"{source}: {len(bad)} prediction(s) are NaN or infinite (model/target/patient: "
            f"{where}{', …' if len(bad) > 5 else ''}); retrain or drop the model"
        )


class RunFiles:
    """A training run's files, for the evaluation, the report and the summary.

    Small files (configuration, manifests, metrics) are read at once; tables load on first use
    and are cached. A file that is absent reads as None and its run-relative name is added to
    ``missing``; :func:`open_run` (the evaluation's entry) refuses a run without the files it
    needs instead. Model names are the study's (``fusion`` …), as training writes them.

    Attributes: ``root``, ``layout`` (:class:`TrainLayout`), ``config`` (dict) and
    ``config_text``, ``manifest`` and ``study_manifest`` (dicts or None), ``train_metrics``,
    ``metrics`` (``evaluation/metrics.json``, flat), ``manifest_path`` and ``targets_path``
    (from ``config.yaml``), ``missing`` and ``notes``.
    """

    def __init__(self, root: Path | str, config: dict | None = None, **small) -> None:
        self.root = Path(root)
        self.layout = TrainLayout(self.root)
        self.config = config or {}
        self.config_text: str | None = small.pop("config_text", None)
        self.manifest: dict | None = small.pop("manifest", None)
        self.study_manifest: dict | None = small.pop("study_manifest", None)
        self.train_metrics: dict | None = small.pop("train_metrics", None)
        self.metrics: dict = small.pop("metrics", {})
        if small:
            raise TypeError(f"unknown RunFiles fields: {sorted(small)}")
        self.missing: set[str] = set()
        self.notes: list[str] = []
        self._cache: dict = {}
        cohort = self.config.get("cohort") or {}
        self.manifest_path = resolve_run_path(cohort.get("manifest"), self.root)
        self.targets_path = resolve_run_path(self.training.get("targets"), self.root)

    @classmethod
    def read(cls, root: Path | str) -> RunFiles:
        """Read the small files of the run at ``root`` (a directory)."""
        import yaml

        root = Path(root)
        if not root.is_dir():
            raise RunDirError(f"training run directory not found: {root}")
        layout = TrainLayout(root)
        text = layout.config.read_text(encoding="utf-8") if layout.config.is_file() else None
        study = root.parent / MANIFEST
        metrics = _read_json(layout.evaluation_metrics)
        run = cls(
            root,
            config=yaml.safe_load(text) or {} if text else {},
            config_text=text,
            manifest=_read_json(layout.manifest),
            study_manifest=_read_json(study) if study != layout.manifest else None,
            train_metrics=_read_json(layout.metrics),
            metrics=flatten(metrics or {}),
        )
        for name, value in ((CONFIG, text), (METRICS, run.train_metrics)):
            if value is None:
                run.missing.add(name)
        if metrics is None:
            run.missing.add(f"evaluation/{METRICS}")
        return run

    @property
    def training(self) -> dict:
        return self.config.get("training") or {}

    # -- tables -------------------------------------------------------------------------------
    def _load(self, key: str, path: Path | None, reader):
        if key not in self._cache:
            self._cache[key] = reader(path) if path is not None and path.exists() else None
        if self._cache[key] is None:
            self.missing.add(key)
        return self._cache[key]

    def _every_repeat(self):
        """``predictions.parquet`` as written (every repeat), read once for both views."""

        def read(path):
            import pandas as pd

            frame = pd.read_parquet(path)
            return frame.assign(patient_id=frame["patient_id"].astype(str))

        return self._load(PREDICTIONS, self.layout.predictions, read)

    @property
    def predictions(self):
        """Out-of-fold predictions (patient_id, fold, model, target, y_true, y_pred) or None:
        one row per patient, model and target, of repeat 0 of a repeated CV (the folds of
        ``folds.csv`` and of the bundle's fold models; the file holds every repeat)."""
        if "repeat 0" not in self._cache:
            frame = self._every_repeat()
            if frame is not None and "repeat" in frame.columns:
                frame = frame[frame["repeat"] == 0].reset_index(drop=True)
            self._cache["repeat 0"] = frame
        return self._cache["repeat 0"]

    @property
    def repeated_predictions(self):
        """Every repeat's out-of-fold predictions (column ``repeat``, 0 for a single CV) or
        None: what the comparisons over fits read (:mod:`stromalens.evaluation.comparisons`);
        :attr:`predictions` is repeat 0 alone."""
        frame = self._every_repeat()
        if frame is None or "repeat" in frame.columns:
            return frame
        return frame.assign(repeat=0)

    @property
    def folds(self):
        """patient_id → outer fold (Series) or None."""

        def read(path):
            import pandas as pd

            return pd.read_csv(path, dtype={"patient_id": str}).set_index("patient_id")["fold"]

        return self._load(FOLDS, self.layout.folds, read)

    @property
    def clinical(self):
        """The cohort manifest's frame (index patient_id as str) or None."""

        def read(path):
            from .cohort import load_manifest

            frame = load_manifest(path, check_files=False).frame
            frame.index = frame.index.astype(str)
            return frame

        return self._load(str(self.manifest_path or "cohort.manifest"), self.manifest_path, read)

    def slide_ids(self) -> dict[str, list[str]]:
        """Each patient's slide ids (:meth:`~stromalens.cohort.Cohort.slide_ids`); empty when
        the manifest is missing (callers then assume one slide named after the patient)."""

        def read(path):
            from .cohort import load_manifest

            return load_manifest(path, check_files=False).slide_ids()

        found = self._load("cohort.slides", self.manifest_path, read)
        return found or {}

    @property
    def targets(self):
        """The targets table (index patient_id as str) or None."""
        return self._load(str(self.targets_path or "training.targets"), self.targets_path,
                          _read_indexed)  # fmt: skip

    @property
    def reliability(self) -> dict | None:
        """The targets stage's ``reliability.json`` (noise ceilings) beside the targets."""
        path = self.targets_path.parent / "reliability.json" if self.targets_path else None
        return self._load(str(path or "reliability.json"), path, _read_json)

    @property
    def truth(self):
        """The synthetic cohort's planted latents ``truth.parquet`` beside the manifest."""
        path = self.manifest_path.parent / "truth.parquet" if self.manifest_path else None
        return self._load(str(path or "truth.parquet"), path, _read_indexed)

    @property
    def lso(self):
        """The leave-site-out predictions or None."""

        def read(path):
            import pandas as pd

            return pd.read_parquet(path)

        return self._load("leave_site_out/" + PREDICTIONS, self.layout.leave_site_out.predictions,
                          read)  # fmt: skip

    @property
    def prompt_sets(self):
        """The out-of-fold predictions of the CLIP-guided WSI model retrained with each
        perturbed prompt set (:meth:`TrainLayout.prompt_set`; repeat 0, the folds of
        ``folds.csv``), with a ``prompt_set`` column; None when training ran none. A set left
        by an earlier training (the option now off, or other folds) is not read: a note says
        so."""
        from .names import PROMPT_GROUPS

        def read(_):
            import pandas as pd

            if self.training.get("prompt_perturbation") is False:
                self.notes.append("prompt sets not retrained (training.prompt_perturbation off)")
                return None
            frames = []
            for label in PROMPT_GROUPS.values():
                run = self.layout.prompt_set(label)
                if not run.predictions.is_file():
                    continue
                folds = pd.read_csv(run.folds, dtype={"patient_id": str})
                if self.folds is None or not folds.set_index("patient_id")["fold"].equals(
                    self.folds
                ):  # a stale set: the paired comparison with CUR needs the same folds
                    self.notes.append(f"{run.root}: other folds than {FOLDS}, left out")
                    continue
                frame = pd.read_parquet(run.predictions)
                check_predictions(frame, str(run.predictions))
                if "repeat" in frame.columns:
                    frame = frame[frame["repeat"] == 0]
                frames.append(frame.assign(prompt_set=label))
            if not frames:
                return None
            frame = pd.concat(frames, ignore_index=True)
            return frame.assign(patient_id=frame["patient_id"].astype(str))

        return self._load("prompt_perturbation/*/" + PREDICTIONS,
                          self.layout.prompt_perturbation, read)  # fmt: skip

    def evaluation(self, name: str):
        """``TRAIN/evaluation/<name>`` (csv or parquet) or None."""
        return self._load(f"evaluation/{name}", self.layout.evaluation_file(name), _read_table)

    def overlays(self) -> dict[str, Path]:
        """``evaluation/attention/<patient_id>.png`` by patient."""
        folder = self.layout.overlays
        found = {p.stem: p for p in sorted(folder.glob("*.png"))} if folder.is_dir() else {}
        if not found:
            self.missing.add("evaluation/attention/*.png")
        return found

    def wide(self, model: str):
        """Out-of-fold predictions of ``model`` (study name) as patients × targets."""
        from .names import TARGETS

        preds = self.predictions
        part = preds[preds["model"] == model] if preds is not None else None
        if part is None or part.empty:
            raise RunDirError(f"{self.root}: no predictions of model {model!r}")
        return part.pivot(index="patient_id", columns="target", values="y_pred")[list(TARGETS)]

    # -- numbers ------------------------------------------------------------------------------
    def metric(self, key: str) -> float | None:
        """A number of ``evaluation/metrics.json`` by its key, or None."""
        value = self.metrics.get(key)
        if isinstance(value, bool) or not isinstance(value, int | float):
            return None
        return float(value)

    def demo_note(self) -> str | None:
        """The note that a lighter demo configuration was used, when ``config.yaml`` or the
        study's ``manifest.json`` says so (a truthy ``demo`` key, or a ``note``/``config`` value
        naming the demo), else None."""
        for source in (self.config, self.study_manifest or {}, self.manifest or {}):
            for key, value in flatten(source).items():
                leaf = key.rsplit(".", 1)[-1].lower()
                text = str(value)
                if leaf == "demo" and value not in (False, None, "", 0):
                    if isinstance(value, str):
                        return text
                    return "a lighter demo configuration was used (see Configuration)"
                if leaf in {"note", "notes", "description"} and "demo" in text.lower():
                    return text
                if leaf in {"config", "configuration", "settings_file"} and text.endswith(
                    "demo.yaml"
                ):
                    return f"a lighter demo configuration was used ({text})"
        return None


def _read_table(path: Path):
    import pandas as pd

    return pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path)


def _read_indexed(path: Path):
    """A parquet table indexed by patient_id (as str; a ``patient_id`` column becomes it)."""
    import pandas as pd

    frame = pd.read_parquet(path)
    if "patient_id" in frame.columns:
        frame = frame.set_index("patient_id")
    frame.index = frame.index.astype(str)
    return frame


def open_run(train_dir: Path | str) -> RunFiles:
    """Read a training run for the evaluation and check that it can be evaluated: its required
    files, the manifest and targets its configuration names, and finite predictions."""
    root = Path(train_dir)
    if not root.is_dir():
        raise RunDirError(f"run directory not found: {root}")
    missing = [name for name in REQUIRED if not (root / name).is_file()]
    if missing:
        raise RunDirError(
            f"{root} is not a complete training run: missing {', '.join(missing)} "
            "(run `stromalens train` first)"
        )
    run = RunFiles.read(root)
    problems = []
    if run.manifest_path is None or not run.manifest_path.is_file():
        problems.append(f"the cohort manifest ({run.manifest_path})")
    if run.targets_path is None or not run.targets_path.is_file():
        problems.append(f"the targets table ({run.targets_path})")
    if problems:
        raise RunDirError(f"{root}/{CONFIG} points at missing files: {'; '.join(problems)}")
    check_predictions(run.predictions, str(run.layout.predictions))
    if run.reliability is None:
        run.notes.append(
            f"no noise ceilings: {run.targets_path.parent / 'reliability.json'} missing"
        )
    if run.lso is not None:
        check_predictions(run.lso, str(run.layout.leave_site_out.predictions))
    else:
        run.notes.append(f"no leave-site-out run: {run.layout.leave_site_out.predictions} missing")
    return run


@dataclass(frozen=True)
class ValidationLayout:
    """The folders of ``stromalens validate-method --out DIR``: two demo study folders, the
    planted cohort's (``DIR/planted``) and the null cohort's (``DIR/null``), and the matrix."""

    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    def half(self, null: bool) -> Path:
        return self.root / ("null" if null else "planted")

    @property
    def matrix_csv(self) -> Path:
        return self.root / "validation_matrix.csv"

    @property
    def matrix_md(self) -> Path:
        return self.root / "validation_matrix.md"

    @classmethod
    def around(cls, study: Path | str) -> ValidationLayout | None:
        """The layout whose half ``study`` is, when its matrix exists; else None."""
        study = Path(study)
        layout = cls(study.parent)
        if study.name in ("planted", "null") and layout.matrix_csv.is_file():
            return layout
        return None
