"""``stromalens run study.yaml``: every stage of a study, skipping finished work."""

from __future__ import annotations

import signal
from pathlib import Path

import typer
from rich.console import Console

from .options import out_folder

console = Console()


def _interrupt(signum, frame):  # SIGTERM ends the run like Ctrl-C: the manifest says so
    raise KeyboardInterrupt(f"signal {signum}")


def _on_stage(name: str, what: str, record: dict) -> None:
    if what == "start":
        note = " (resuming)" if record.get("resumed") else ""
        console.rule(f"[bold]{name}[/]{note}")
    elif what == "skipped":
        console.print(
            f"[dim]{name}: skipped — done on {record.get('finished', '?')} with the same inputs "
            f"and settings[/]"
        )
    else:
        console.print(f"[green]{name}[/] done in {record['seconds']:.0f} s")


def run_and_summarise(config, out: Path, only=None, force=()) -> dict:
    """Run the study and print the summary; returns it."""
    from ..study import print_summary, run_study, summarise

    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        run_study(config, out, only=only, force=force, on_stage=_on_stage)
    finally:
        signal.signal(signal.SIGTERM, previous)
    summary = summarise(out)
    print_summary(summary, console)
    return summary


def run(
    config: Path = typer.Argument(..., help="Study YAML (see configs/study.yaml)."),
    out: Path = typer.Option(..., "--out", help="Study folder (created; reused to resume)."),
    only: list[str] = typer.Option(
        None, "--only", help="Run only this stage (repeatable); its inputs must be done."
    ),
    force: list[str] = typer.Option(
        None, "--force", help="Rerun this stage even if done (repeatable)."
    ),
) -> None:
    """Run targets, WSI, radiomics, training, external application, evaluation and the report;
    each stage is skipped when done for the same inputs and settings (manifest.json)."""
    run_and_summarise(config, out_folder(out), only=only or None, force=force or ())
