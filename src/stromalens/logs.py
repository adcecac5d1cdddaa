"""Structured logging: human-readable on the console, one JSON object per line in a file.

Log calls carry their context as fields, ``log.info("slide written", extra={"fields": {...}})``
or through :func:`event`, so a run's log file can be filtered and aggregated by patient, slide or
stage.

Python warnings (``RuntimeWarning``, a library's ``UserWarning``) are routed into the same
handlers as one line each by :func:`capture_warnings`, which :func:`configure_logging` installs:
the console shows no raw warning with its source line, and the log file keeps every one. Only
an explicit call installs it (the CLI entry does); importing the package changes nothing.
"""

from __future__ import annotations

import json
import logging
import time
import warnings
from pathlib import Path

_ROOT = "stromalens"


class JsonLinesFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, message, and the record's fields."""

    def format(self, record: logging.LogRecord) -> str:
        payload = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        payload.update(getattr(record, "fields", {}) or {})
        if record.exc_info:
            payload["exception"] = self.formatException(record.exc_info)
        return json.dumps(payload, default=str)


class KeyValueFormatter(logging.Formatter):
    """``message key=value key=value`` for the console."""

    def format(self, record: logging.LogRecord) -> str:
        fields = getattr(record, "fields", {}) or {}
        tail = " ".join(f"{k}={v}" for k, v in fields.items())
        return f"{record.getMessage()} {tail}".rstrip()


def get_logger(name: str) -> logging.Logger:
    """A logger under the ``stromalens`` hierarchy."""
    return logging.getLogger(name if name.startswith(_ROOT) else f"{_ROOT}.{name}")


def event(logger: logging.Logger, message: str, level: int = logging.INFO, **fields) -> None:
    """Log ``message`` with structured ``fields``."""
    logger.log(level, message, extra={"fields": fields})


def _log_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """A ``warnings.showwarning`` replacement: the warning as one WARNING record of the
    ``stromalens.warnings`` logger, with its category and ``file:line`` as fields."""
    event(
        get_logger("warnings"),
        f"{category.__name__}: {str(message).strip()}",
        logging.WARNING,
        source=f"{Path(filename).name}:{lineno}",
    )


_SHOWWARNING = warnings.showwarning


def capture_warnings(enable: bool = True) -> None:
    """Send Python warnings to the ``stromalens.warnings`` logger (``enable``) or back to
    stderr as Python prints them. Warning filters are untouched: what Python would not show
    is not logged either, and a filter ``error`` still raises (as in the tests)."""
    warnings.showwarning = _log_warning if enable else _SHOWWARNING


def configure_logging(
    level: str | int = "INFO", json_file: Path | None = None, *, warnings_to_log: bool = True
) -> None:
    """Console handler (rich if available) and, optionally, a JSON-lines file handler;
    with ``warnings_to_log`` Python warnings go to these handlers too
    (:func:`capture_warnings`)."""
    root = logging.getLogger(_ROOT)
    root.setLevel(level)
    for handler in list(root.handlers):
        root.removeHandler(handler)
    try:
        from rich.logging import RichHandler

        console: logging.Handler = RichHandler(show_path=False, markup=False)
    except ImportError:  # pragma: no cover - rich is a dependency
        console = logging.StreamHandler()
    console.setFormatter(KeyValueFormatter())
    root.addHandler(console)
    if json_file is not None:
        Path(json_file).parent.mkdir(parents=True, exist_ok=True)
        file_handler = logging.FileHandler(json_file)
        file_handler.setFormatter(JsonLinesFormatter())
        root.addHandler(file_handler)
    root.propagate = False
    capture_warnings(warnings_to_log)
