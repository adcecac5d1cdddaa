"""Read a training run's files for the report (``docs/run_directory.md``).

The report reads only: ``TRAIN/evaluation/*``, ``TRAIN/metrics.json``, ``TRAIN/config.yaml``,
``TRAIN/manifest.json``, ``TRAIN/predictions.parquet``, the targets table and the cohort manifest
named in ``TRAIN/config.yaml`` (``training.targets``, ``cohort.manifest``), the cohort's
``truth.parquet`` beside the manifest (synthetic cohorts) and, when the run lies inside a study
directory, ``STUDY/manifest.json``. Every file is optional here: a missing one is recorded and its
section of the report says so.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import yaml

from ..evaluation.rundir import resolve_path
from ..evaluation.schema import TABLES

#: The evaluation's files (``TRAIN/evaluation/``), by the analysis that reads them.
EVALUATION_FILES: tuple[str, ...] = ("metrics.json", *TABLES)


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


def _read_json(path: Path) -> dict | None:
    if not path.is_file():
        return None
    data = json.loads(path.read_text(encoding="utf-8"))
    return data if isinstance(data, dict) else {"value": data}


def _read_table(path: Path) -> pd.DataFrame:
    if path.suffix == ".parquet":
        return pd.read_parquet(path)
    return pd.read_csv(path)


@dataclass
class RunFiles:
    """A training run's files as read by the report; tables load on first use.

    ``missing`` collects the run-relative names of the files asked for and not found, e.g.
    ``"evaluation/fidelity.csv"``.
    """

    train_dir: Path
    config_text: str | None = None
    config: dict = field(default_factory=dict)
    manifest: dict | None = None
    study_manifest: dict | None = None
    metrics: dict[str, object] = field(default_factory=dict)
    train_metrics: dict | None = None
    targets_path: Path | None = None
    manifest_path: Path | None = None
    missing: set[str] = field(default_factory=set)
    _cache: dict[str, pd.DataFrame | None] = field(default_factory=dict, repr=False)

    # -- tables -------------------------------------------------------------------------------
    def evaluation(self, name: str) -> pd.DataFrame | None:
        """``TRAIN/evaluation/<name>`` or None (recorded as missing)."""
        return self._table(f"evaluation/{name}", self.train_dir / "evaluation" / name)

    def predictions(self) -> pd.DataFrame | None:
        return self._table("predictions.parquet", self.train_dir / "predictions.parquet")

    def targets(self) -> pd.DataFrame | None:
        """The targets table named by ``training.targets`` (index ``patient_id``)."""
        if self.targets_path is None:
            self.missing.add("training.targets in config.yaml")
            return None
        frame = self._table(str(self.targets_path), self.targets_path)
        if frame is not None and "patient_id" in frame.columns:
            frame = frame.set_index("patient_id")
        return frame

    def cohort(self) -> pd.DataFrame | None:
        """The cohort manifest named by ``cohort.manifest``."""
        path = self.manifest_path
        if path is None:
            self.missing.add("cohort.manifest in config.yaml")
            return None
        key = str(path)
        if key not in self._cache:
            if not path.is_file():
                self._cache[key] = None
            else:
                sep = "\t" if path.suffix in {".tsv", ".txt"} else ","
                self._cache[key] = (
                    pd.read_parquet(path)
                    if path.suffix == ".parquet"
                    else pd.read_csv(path, sep=sep, dtype={"patient_id": str})
                )
        if self._cache[key] is None:
            self.missing.add(key)
        return self._cache[key]

    def truth(self) -> pd.DataFrame | None:
        """The planted latents ``truth.parquet`` beside the cohort manifest (synthetic cohorts);
        index ``patient_id``, columns ``a``, ``b``, ``h``."""
        if self.manifest_path is None:
            self.missing.add("truth.parquet")
            return None
        path = self.manifest_path.parent / "truth.parquet"
        frame = self._table(str(path), path)
        if frame is not None and "patient_id" in frame.columns:
            frame = frame.set_index("patient_id")
        return frame

    def overlays(self) -> dict[str, Path]:
        """``evaluation/attention/<patient_id>.png`` by patient."""
        folder = self.train_dir / "evaluation" / "attention"
        if not folder.is_dir():
            self.missing.add("evaluation/attention/")
            return {}
        found = {p.stem: p for p in sorted(folder.glob("*.png"))}
        if not found:
            self.missing.add("evaluation/attention/*.png")
        return found

    def _table(self, key: str, path: Path) -> pd.DataFrame | None:
        if key not in self._cache:
            self._cache[key] = _read_table(path) if path.is_file() else None
        if self._cache[key] is None:
            self.missing.add(key)
        return self._cache[key]

    # -- numbers ------------------------------------------------------------------------------
    def metric(self, key: str) -> float | None:
        """A number of ``evaluation/metrics.json`` by its dotted key, or None."""
        value = self.metrics.get(key)
        if isinstance(value, bool) or not isinstance(value, int | float):
            return None
        return float(value)

    def demo_note(self) -> str | None:
        """The note that a lighter demo configuration was used, when ``config.yaml`` or the
        study's ``manifest.json`` says so (a truthy ``demo`` key, or a ``note``/``config`` value
        naming the demo), else None."""
        for source in (self.config, self.study_manifest or {}, self.manifest or {}):
            flat = flatten(source)
            for key, value in flat.items():
                leaf = key.rsplit(".", 1)[-1].lower()
                text = str(value)
                if leaf == "demo" and value not in (False, None, "", 0):
                    return (
                        text
                        if isinstance(value, str)
                        else "a lighter demo configuration was used (see Configuration)"
                    )
                if leaf in {"note", "notes", "description"} and "demo" in text.lower():
                    return text
                if leaf in {"config", "configuration", "settings_file"} and text.endswith(
                    "demo.yaml"
                ):
                    return f"a lighter demo configuration was used ({text})"
        return None


def load_run(train_dir: Path | str) -> RunFiles:
    """Read the small files of a run (configuration, manifests, metrics); tables load lazily.

    Raises
    ------
    FileNotFoundError
        ``train_dir`` is not a directory.
    """
    train_dir = Path(train_dir)
    if not train_dir.is_dir():
        raise FileNotFoundError(f"training run directory not found: {train_dir}")
    run = RunFiles(train_dir=train_dir)
    config_path = train_dir / "config.yaml"
    if config_path.is_file():
        run.config_text = config_path.read_text(encoding="utf-8")
        run.config = yaml.safe_load(run.config_text) or {}
    else:
        run.missing.add("config.yaml")
    run.manifest = _read_json(train_dir / "manifest.json")
    study_manifest = train_dir.parent / "manifest.json"
    run.study_manifest = _read_json(study_manifest) if study_manifest != train_dir else None
    metrics = _read_json(train_dir / "evaluation" / "metrics.json")
    if metrics is None:
        run.missing.add("evaluation/metrics.json")
    run.metrics = flatten(metrics or {})
    run.train_metrics = _read_json(train_dir / "metrics.json")
    if run.train_metrics is None:
        run.missing.add("metrics.json")
    training = run.config.get("training") or {}
    cohort = run.config.get("cohort") or {}
    run.targets_path = resolve_path(training.get("targets"), train_dir)
    run.manifest_path = resolve_path(cohort.get("manifest"), train_dir)
    return run
