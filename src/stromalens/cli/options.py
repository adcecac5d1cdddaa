"""Argument conventions shared by the commands.

The cohort manifest is always the option ``--manifest M.csv`` (``targets``, ``radiomics``,
``predict``, ``init``, ``cohort validate``, ``wsi tile``, ``wsi embed``, ``wsi train-clip``).
``cohort validate`` and the ``wsi`` commands took it as their first positional argument before;
that form still works, with a deprecation note on stderr (:func:`manifest_from`).

An output folder given as ``--out`` that is an existing file is refused before any work
(:func:`out_folder`), not after the work when the first file is written.
"""

from __future__ import annotations

from pathlib import Path

import typer

#: ``context_settings`` of a command that still takes the manifest as its first argument
#: (deprecated): the argument reaches ``ctx.args`` instead of being declared, so that neither
#: ``--help`` nor the usage line shows it. Unknown options are still usage errors.
LEGACY_MANIFEST = {"allow_extra_args": True}


def manifest_option(help: str = "Cohort manifest (CSV, TSV or parquet).") -> Path | None:
    """The ``--manifest`` option; :func:`manifest_from` makes it required."""
    return typer.Option(None, "--manifest", help=help, show_default=False)


def manifest_from(ctx: typer.Context, option: Path | None) -> Path:
    """The manifest given as ``--manifest`` or, deprecated, as the first argument (a command
    declared with ``context_settings=LEGACY_MANIFEST``).

    Neither, two different ones, or further arguments are usage errors (exit 2 with the usage)."""
    if len(ctx.args) > 1:
        ctx.fail(f"unexpected extra arguments: {' '.join(ctx.args[1:])}")
    positional = Path(ctx.args[0]) if ctx.args else None
    if option is not None and positional is not None and option != positional:
        ctx.fail(f"two manifests given: --manifest {option} and {positional}; give one")
    if option is None and positional is None:
        ctx.fail("Missing option '--manifest'.")
    if option is None:
        typer.echo(
            f"note: the manifest as first argument is deprecated; write --manifest {positional}",
            err=True,
        )
    return option if option is not None else positional


def out_folder(path: Path, option: str = "--out") -> Path:
    """``path`` as an output folder: it may not exist yet, but it may not be a file."""
    if path.exists() and not path.is_dir():
        raise ValueError(f"{option} {path}: is a file; a folder is expected here")
    return path
