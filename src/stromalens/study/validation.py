"""The validation matrix (issue 17): the study run on a planted and on a null cohort.

``stromalens validate-method --out DIR`` runs the demo twice with the same seed and sizes: once
with every mechanism planted at its default size, or K × it with ``--effect-scale K``
(``DIR/planted``), and once with every mechanism switched off (``DIR/null``,
:meth:`stromalens.config.MechanismsConfig.null`). Each half is a study folder whose
evaluation writes ``validation.csv``
(:mod:`stromalens.evaluation.validation`); the two tables side by side
(:func:`~stromalens.evaluation.validation.combine`) are the matrix, written as
``DIR/validation_matrix.csv`` and ``.md`` (:class:`stromalens.rundir.ValidationLayout`).

A mechanism is validated when its analysis detects it on the planted cohort (95% CI excluding
the null) and not on the null cohort. Each half resumes like any study: an interrupted command
run again redoes only what did not finish.

Example
-------
>>> matrix = validate_method("runs/vm", run_half)                    # doctest: +SKIP
>>> matrix.set_index("mechanism").loc["site", ["detected", "null_detected"]]
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pandas as pd

from ..evaluation.validation import COLUMNS, EFFECT_SCALE, combine, matrix_markdown
from ..logs import event, get_logger
from ..rundir import StudyLayout, ValidationLayout
from .runner import study_lock

log = get_logger("study.validation")

#: The validation table each half's evaluation writes.
TABLE = "validation.csv"


def read_half(study: Path | str) -> pd.DataFrame:
    """The validation table of one evaluated half (``STUDY/train/evaluation/validation.csv``)."""
    path = StudyLayout(study).train.evaluation_file(TABLE)
    if not path.is_file():
        raise ValueError(
            f"{path}: no validation table; run the study on a synthetic cohort with planted "
            "mechanisms to the end (stromalens validate-method resumes it)"
        )
    table = pd.read_csv(path)
    if EFFECT_SCALE not in table:  # a table written before the effect scale existed: K = 1
        table.insert(table.columns.get_loc("planted"), EFFECT_SCALE, 1.0)
    missing = set(COLUMNS) - set(table.columns)
    if missing:
        raise ValueError(f"{path}: columns {sorted(missing)} missing; rerun its evaluation")
    return table


def _check_null(null: pd.DataFrame, folder: Path) -> None:
    planted = null.loc[null["planted"].fillna(0) != 0, "mechanism"]
    if len(planted):
        raise ValueError(
            f"{folder}: the null half plants {', '.join(planted)}; it must be a cohort "
            "generated with every mechanism off (stromalens demo --null)"
        )


def _write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)  # atomic: a reader never sees half a matrix


def write_matrix(out: Path | str) -> pd.DataFrame:
    """Combine the two evaluated halves under ``out`` into the matrix; write its CSV and
    Markdown (:class:`~stromalens.rundir.ValidationLayout`) and return it."""
    layout = ValidationLayout(out)
    planted, null = read_half(layout.half(False)), read_half(layout.half(True))
    _check_null(null, layout.half(True))
    matrix = combine(planted, null)
    _write_text(layout.matrix_csv, matrix.to_csv(index=False))
    _write_text(layout.matrix_md, "# Method validation matrix\n\n" + matrix_markdown(matrix))
    event(log, "validation matrix written", file=str(layout.matrix_csv))
    return matrix


def validate_method(out: Path | str, run_half: Callable[[Path, bool], object]) -> pd.DataFrame:
    """Run both halves and write the matrix.

    Parameters
    ----------
    out
        The validation folder (created; reused to resume).
    run_half
        ``run_half(folder, null)`` runs the demo into ``folder`` (which takes that study's
        lock), the null cohort when ``null`` is true, with the same seed and sizes for both
        calls. The CLI runs ``stromalens demo`` in a process of its own per half (the library
        may not import the CLI, and a second cohort generated in a process that has run torch
        can hang its forked workers).

    Returns
    -------
    pandas.DataFrame
        The matrix (:func:`stromalens.evaluation.validation.combine`).
    """
    layout = ValidationLayout(out)
    with study_lock(layout.root):  # a second validate-method into DIR stops here
        for null in (False, True):
            folder = layout.half(null)
            event(log, f"validate-method: the {folder.name} half", folder=str(folder))
            run_half(folder, null)
        return write_matrix(layout.root)
