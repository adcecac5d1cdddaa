"""The end-of-run summary: where the report is, the headline numbers, what each stage left out.

Built from files only (``STUDY/manifest.json``, the training and evaluation ``metrics.json``), so
``summarise(study)`` gives the same answer after a resumed run as after an uninterrupted one.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..names import PROPOSED
from ..rundir import StudyLayout, metric_parts, parse_metric_key
from .runner import read_manifest

#: Models shown in the headline (study names, as the run files carry them).
HEADLINE_MODELS = (PROPOSED, "fusion_no_coral", "wsi_clip", "mri", "mri_student")


def _read(path: Path) -> dict | None:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def headline(study: Path) -> dict:
    """Headline numbers: the evaluation's when it has run, else the training's macro-r."""
    study = Path(study)
    layout = StudyLayout(study)
    evaluation = _read(layout.train.evaluation_metrics)
    if evaluation is not None:
        shown = evaluation_headline(evaluation)
        if shown:
            return {"source": "evaluation/metrics.json", **shown}
    training = _read(layout.train.metrics)
    if training is None:
        return {}
    models = training.get("models", {})
    shown = {m: models[m]["macro_r"] for m in HEADLINE_MODELS if m in models}
    baselines = {m: v["macro_r"] for m, v in models.items() if m not in HEADLINE_MODELS}
    if baselines:
        best = max(baselines, key=baselines.get)
        shown[f"best baseline ({best})"] = baselines[best]
    return {"source": "training (out-of-fold macro-r)", **shown}


def evaluation_headline(metrics: dict) -> dict:
    """The evaluation's headline keys (schema: ``stromalens.evaluation.schema``) that exist."""
    macro = {
        parts[1]: v
        for parts, v in metric_parts(metrics, "cv", length=3)
        if parts[2] == "macro_r" and isinstance(v, (int, float))
    }
    shown: dict = {}
    for model in HEADLINE_MODELS:
        if model in macro:
            shown[f"macro-r {model}"] = macro[model]
    baselines = {m: v for m, v in macro.items() if f"macro-r {m}" not in shown}
    if baselines:
        best = max(baselines, key=baselines.get)
        shown[f"macro-r best baseline ({best})"] = baselines[best]

    def wanted(parts: tuple[str, ...]) -> bool:
        section = parts[0]
        if parts[-1].endswith("_fold_sd"):
            return False
        if section == "external":  # external.<cohort>.r.<target>: the proposed model's r
            return len(parts) == 4
        if section == "survival":
            return "c_index" in parts
        return section in ("ceiling", "site_entropy") or parts == ("treatment", "auc")

    for key, value in metrics.items():
        if wanted(parse_metric_key(key)) and isinstance(value, (int, float)):
            shown[key] = value
    if "distillation.retention" in metrics:
        shown["distillation.retention"] = metrics["distillation.retention"]
    return shown


def summarise(study: Path | str) -> dict:
    """Report path, headline numbers, per-stage status/seconds and skipped items."""
    study = Path(study)
    manifest = read_manifest(study)
    stages = {}
    last = manifest.get("last_run", {})
    for name in manifest.get("order", manifest["stages"]):
        record = manifest["stages"].get(name, {})
        summary = record.get("summary", {}) or {}
        skipped = summary.get("skipped", [])
        reasons: dict[str, list[str]] = {}
        for item in skipped:
            reasons.setdefault(item["reason"], []).append(item["item"])
        stages[name] = {
            "status": record.get("status", "not run"),
            "this_run": "skipped" if name in last.get("skipped", []) else "ran",
            "seconds": record.get("seconds"),
            "skipped": reasons,
            "note": summary.get("status"),
        }
    report = None
    if StudyLayout(study).report.is_file():
        report = str(StudyLayout(study).report)
    return {"study": str(study), "report": report, "headline": headline(study), "stages": stages}


def print_summary(summary: dict, console=None) -> None:
    """Print :func:`summarise`'s result for people."""
    from rich.console import Console

    console = console or Console()
    console.rule("[bold]study summary")
    console.print(f"study folder: {summary['study']}", soft_wrap=True)
    if summary["report"]:
        console.print(f"[bold green]report:[/] {summary['report']}", soft_wrap=True)
    else:
        console.print("[yellow]report: not written[/] (see the report stage below)")
    head = summary["headline"]
    if head:
        console.print(f"[bold]headline[/] ({head.get('source', '')})")
        for key, value in head.items():
            if key != "source":
                shown = f"{value:+.3f}" if isinstance(value, float) else str(value)
                console.print(f"  {key:32s} {shown}")
    console.print("[bold]stages[/]")
    for name, stage in summary["stages"].items():
        seconds = stage["seconds"]
        timing = f"{seconds:7.1f} s" if isinstance(seconds, (int, float)) else " " * 9
        note = f"  ({stage['note']})" if stage["note"] else ""
        if stage["this_run"] == "skipped":
            note += "  (skipped: done before, same inputs and settings)"
        console.print(f"  {name:10s} {stage['status']:8s} {timing}{note}")
        for reason, items in stage["skipped"].items():
            listed = ", ".join(items[:8]) + (f", … ({len(items)} in all)" if len(items) > 8 else "")
            console.print(f"      left out {len(items)}: {reason} — {listed}", soft_wrap=True)
