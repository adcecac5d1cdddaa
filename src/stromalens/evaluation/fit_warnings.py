r"""Warnings of the evaluation's fits, gathered per analysis so that the report can flag them
beside the table and the figure they concern (``evaluation/fit_warnings.csv``).

Two sources, one table:

* **what the fitting code said** while an analysis ran: every WARNING record of the
  ``stromalens`` loggers (lifelines' non-convergence and scipy's ill-conditioned steps as
  :func:`~stromalens.evaluation.survival.fit_cox` logs them, a singular Cox fit refitted with a
  ridge penalty, statsmodels' separation as the treatment model logs it, patients left out) and
  every Python warning raised (recorded by :func:`capture`, then logged). A record may name its
  table in its fields (``table=``); otherwise it concerns the analysis as a whole, or its only
  table;
* **what the numbers show** (:func:`table_flags`): a ratio estimate (hazard or odds ratio) that
  is not finite or lies outside :math:`[10^{-3}, 10^{3}]` — a log-coefficient
  :math:`|\hat\beta| > \ln 10^3 \approx 6.9`, which a routine covariate never reaches and a
  (quasi-)separated fit always does (its estimate runs to 0 or ∞ with p → 1; Albert &
  Anderson 1984, *Biometrika* 71:1–10) — or whose 95% CI is wider than
  :data:`CI_WIDTH_LIMIT`.

Warnings are not errors: the tables are still written; the flags say which numbers to
distrust. Python's warning filters are left as they are, so under ``-W error`` (the test suite)
a warning still raises.

Example
-------
>>> with capture("survival") as caught:          # doctest: +SKIP
...     tables = survival_analysis(...)
>>> rows = caught.rows(tables) + table_flags("survival", tables)   # doctest: +SKIP
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import pandas as pd

from ..logs import event, get_logger

log = get_logger("evaluation.fit_warnings")

#: The columns of ``fit_warnings.csv``: the analysis (``evaluate``'s name), the table it
#: concerns (empty: the analysis as a whole), where it came from (a logger, a warning category
#: or ``check``) and the message.
COLUMNS: tuple[str, ...] = ("analysis", "table", "source", "message")
#: A ratio estimate outside [1/RATIO_LIMIT, RATIO_LIMIT] is flagged (|log-coefficient| > 6.9).
RATIO_LIMIT = 1e3
#: A ratio whose 95% CI is wider than this (upper − lower) is flagged.
CI_WIDTH_LIMIT = 1e3
#: The tables with ratio estimates, and their (term, estimate, lower, upper) columns.
RATIO_TABLES: dict[str, tuple[str, str, str, str]] = {
    "survival_hr.csv": ("term", "hr", "ci_low", "ci_high"),
    "treatment.csv": ("term", "estimate", "ci_low", "ci_high"),
}


class _Collector(logging.Handler):
    """Keeps the WARNING-and-above records of the loggers it is attached to."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@dataclass
class Captured:
    """What :func:`capture` gathered while one analysis ran."""

    analysis: str
    records: list[logging.LogRecord] = field(default_factory=list)
    python: list[warnings.WarningMessage] = field(default_factory=list)

    def rows(self, tables: dict | None = None) -> list[dict]:
        """One ``fit_warnings.csv`` row per record and warning. A record's ``table`` field is
        kept when the analysis wrote that table; a warning of an analysis with one table
        concerns that table."""
        written = list(tables or {})
        only = written[0] if len(written) == 1 else ""
        rows = []
        for record in self.records:
            fields = getattr(record, "fields", {}) or {}
            table = fields.get("table", "")
            detail = fields.get("detail")
            message = record.getMessage() + (f" ({detail})" if detail else "")
            rows.append(
                {
                    "analysis": self.analysis,
                    "table": table if table in written else only,
                    "source": record.name,
                    "message": message,
                }
            )
        for w in self.python:
            source = f"{w.category.__name__} ({w.filename.rsplit('/', 1)[-1]}:{w.lineno})"
            rows.append(
                {"analysis": self.analysis, "table": only, "source": source,
                 "message": str(w.message).strip()}
            )  # fmt: skip
        return rows


@contextmanager
def capture(analysis: str) -> Iterator[Captured]:
    """Gather the WARNING records of the ``stromalens`` loggers and the Python warnings
    raised inside the block; the Python warnings are logged (they reach the run log as one
    line each) when the block ends.

    Only records that the loggers let through are seen: with ``--log-level ERROR`` the
    WARNING records are dropped before any handler, this one included."""
    root = logging.getLogger("stromalens")
    collector = _Collector()
    caught = Captured(analysis)
    root.addHandler(collector)
    try:
        with warnings.catch_warnings(record=True) as python:
            yield caught
    finally:
        root.removeHandler(collector)
    caught.records = collector.records
    caught.python = list(python)
    for w in caught.python:
        event(
            log,
            f"{analysis}: {w.category.__name__}: {str(w.message).strip()}",
            logging.WARNING,
            source=f"{w.filename.rsplit('/', 1)[-1]}:{w.lineno}",
        )


def _ratio_problem(estimate, low, high) -> str:
    """Why a ratio estimate with its CI is degenerate, or ``""``."""
    values = [math.nan if v is None or pd.isna(v) else float(v) for v in (estimate, low, high)]
    est, lo, hi = values
    if not all(math.isfinite(v) for v in values):
        return "estimate or CI not finite"
    if not 1 / RATIO_LIMIT <= est <= RATIO_LIMIT:
        size = abs(math.log(est)) if est > 0 else math.inf
        return f"|log ratio| = {size:.1f} > {math.log(RATIO_LIMIT):.1f}"
    if hi - lo > CI_WIDTH_LIMIT:
        return f"95% CI wider than {CI_WIDTH_LIMIT:g}"
    return ""


def ratio_flags(table: pd.DataFrame, columns: tuple[str, str, str, str]) -> list[tuple[str, str]]:
    """``(term, message)`` for each row of ``table`` whose ratio estimate is degenerate
    (module docstring); ``columns`` are the term, estimate, lower and upper columns."""
    term, est, low, high = columns
    out = []
    for row in table.itertuples(index=False):
        values = row._asdict()
        why = _ratio_problem(values[est], values[low], values[high])
        if why:
            where = f"{values['endpoint']} " if "endpoint" in values else ""
            out.append(
                (
                    str(values[term]),
                    f"{where}{values[term]}: {est} = {values[est]:.3g} "
                    f"[{values[low]:.3g}, {values[high]:.3g}] — {why}; a non-converged or "
                    "separated fit, not an effect size",
                )
            )
    return out


def table_flags(analysis: str, tables: dict[str, pd.DataFrame]) -> list[dict]:
    """The flags the numbers of ``tables`` call for (module docstring), each logged."""
    rows = []
    for name, table in tables.items():
        messages = []
        if name in RATIO_TABLES and len(table):
            messages += [m for _, m in ratio_flags(table, RATIO_TABLES[name])]
        for message in messages:
            event(log, f"{analysis}: {message}", logging.WARNING, table=name)
            rows.append({"analysis": analysis, "table": name, "source": "check",
                         "message": message})  # fmt: skip
    return rows


def warnings_table(rows: list[dict]) -> pd.DataFrame:
    """``fit_warnings.csv``: the rows in :data:`COLUMNS` order, exact repeats dropped (one
    warning raised in each of five folds is still five rows when the messages differ)."""
    return pd.DataFrame(rows, columns=list(COLUMNS)).drop_duplicates(ignore_index=True)
