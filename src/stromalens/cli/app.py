"""Root Typer app: registers the command groups and turns user errors into one clear line."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import typer
from rich.console import Console
from rich.text import Text

from .. import __version__
from ..logs import configure_logging
from . import cohort, demo, radiomics, run, synth, targets, train, wsi
from . import evaluate as evaluate_cli
from . import init as init_cli
from . import report as report_cli
from .errors import os_error_line

app = typer.Typer(
    name="stromalens",
    help="Decode the tumour microenvironment from routine images.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.command("init")(init_cli.init)
app.add_typer(cohort.app, name="cohort")
app.command("synth")(synth.synth)
app.command("targets")(targets.targets)
app.command("radiomics")(radiomics.radiomics)
app.command("demo")(demo.demo)
app.command("train")(train.train)
app.command("run")(run.run)
app.add_typer(wsi.app, name="wsi")
app.command("report")(report_cli.report)
app.command("evaluate")(evaluate_cli.evaluate)
app.command("predict")(evaluate_cli.predict)
app.command("validate-method")(importlib.import_module(".validate", __package__).validate_method)

error_console = Console(stderr=True)


def _print_version(value: bool) -> None:
    if value:
        typer.echo(__version__)
        raise typer.Exit()


@app.callback()
def _root(
    log_level: str = typer.Option("INFO", "--log-level", help="DEBUG, INFO, WARNING or ERROR."),
    log_file: Path = typer.Option(
        None, "--log-file", help="Also write structured logs here, one JSON object per line."
    ),
    _version: bool = typer.Option(
        False,
        "--version",
        help="Print the version and exit.",
        is_eager=True,
        callback=_print_version,
    ),
) -> None:
    configure_logging(log_level.upper(), json_file=log_file)


@app.command("version")
def version() -> None:
    """Print the installed version."""
    typer.echo(__version__)


def main() -> None:
    """Entry point: user errors (bad input, bad configuration, an operating-system error such as a
    missing file or a full disk) exit 1 with one line (:mod:`.errors`); usage errors exit 2 with
    click's message and the usage."""
    from ..cohort import ManifestError
    from ..config import ConfigError

    try:
        # Without standalone mode, click returns (not raises) the code of a `typer.Exit`.
        code = app(standalone_mode=False)
    except OSError as exc:
        _fail(os_error_line(exc))
    except (ManifestError, ConfigError, ValueError, ImportError) as exc:
        _fail(str(exc))
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        error_console.print("aborted")
        sys.exit(130)
    except SystemExit:
        raise
    except Exception as exc:  # usage errors (an unknown option, a missing argument)
        if isinstance(exc, _usage_errors()):
            exc.show()
            sys.exit(exc.exit_code)
        raise
    if isinstance(code, int) and code != 0:
        sys.exit(code)


def _fail(message: str) -> None:
    # Text, not markup: a path or a value with brackets is printed as it is
    error_console.print(Text.assemble(("error:", "bold red"), " ", message), soft_wrap=True)
    sys.exit(1)


def _usage_errors() -> tuple[type, ...]:
    """click's usage-error classes: click's own and the copy Typer vendors (``typer._click``,
    whose exceptions are not click's), whichever are installed."""
    found = []
    for module in ("click.exceptions", "typer._click.exceptions"):
        try:
            found.append(importlib.import_module(module).ClickException)
        except (ImportError, AttributeError):
            continue
    return tuple(found)
