"""``stromalens report TRAIN``: the self-contained HTML report of a training run."""

from __future__ import annotations

from pathlib import Path

import typer


def report(
    train_dir: Path = typer.Argument(..., help="Training run directory (stromalens train --out)."),
    out: Path = typer.Option(
        None, "--out", help="HTML file to write; default TRAIN/report/index.html."
    ),
) -> None:
    """Write one self-contained HTML report (figures and tables) from the run's files."""
    from ..report import write_report

    path = write_report(train_dir, out)
    typer.echo(str(path))
