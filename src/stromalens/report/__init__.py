"""The study report: one self-contained HTML file built from a training run's files
(``stromalens report TRAIN``); the inputs are listed in ``docs/run_directory.md``.

``report`` reads run files and never runs models. matplotlib and Jinja2 load when a report is
written, not on import.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["write_report"]


def write_report(train_dir: Path | str, out: Path | str | None = None) -> Path:
    """Write the report of the training run ``train_dir``; returns the HTML file's path.

    Parameters
    ----------
    train_dir
        The training run directory (``stromalens train --out TRAIN``), usually evaluated by
        ``stromalens evaluate`` first. Missing inputs become "not run: <file> missing" notes.
    out
        Where to write; default ``TRAIN/report/index.html``.

    Examples
    --------
    >>> write_report("runs/demo/train")  # doctest: +SKIP
    PosixPath('runs/demo/train/report/index.html')
    """
    from ..rundir import RunFiles
    from .html import write

    train_dir = Path(train_dir)
    run = RunFiles.read(train_dir)
    return write(run, Path(out) if out is not None else train_dir / "report" / "index.html")
