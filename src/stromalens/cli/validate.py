"""``stromalens validate-method``: the demo on a planted and on a null cohort, and the matrix
of what the method recovers (:mod:`stromalens.study.validation`)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import typer
from rich.console import Console

from .options import out_folder

console = Console()

#: Outer-CV repeats of each half unless ``--repeats`` says otherwise: configs/study.yaml's 3,
#: so that the matrix's model comparisons are tested over 15 fits. The demo itself repeats
#: twice, to come nearer its 15-minute budget; ``--quick`` keeps its one.
VALIDATION_REPEATS = 3


def _demo_command(
    folder: Path, null: bool, patients, external_patients, seed, quick, effect_scale=1.0,
    repeats=None,
) -> list:  # fmt: skip
    command = [sys.executable, "-m", "stromalens.cli", "demo", "--out", str(folder)]
    command += ["--patients", str(patients), "--external-patients", str(external_patients)]
    command += ["--seed", str(seed)] + (["--quick"] if quick else []) + (["--null"] if null else [])
    if repeats is None and not quick:
        repeats = VALIDATION_REPEATS
    command += ["--repeats", str(int(repeats))] if repeats is not None else []
    return command + ["--effect-scale", repr(float(effect_scale))]


def validate_method(
    out: Path = typer.Option(..., "--out", help="Validation folder (created; reused to resume)."),
    quick: bool = typer.Option(
        False, "--quick", help="12 + 6 patients and tiny settings per half: a smoke test."
    ),
    patients: int = typer.Option(126, "--patients", help="Development-cohort size."),
    external_patients: int = typer.Option(60, "--external-patients"),
    seed: int = typer.Option(0, "--seed"),
    effect_scale: float = typer.Option(
        1.0,
        "--effect-scale",
        min=0.0,
        help="K: every mechanism's effect size × K in both halves (the null keeps K's diffuse "
        "slide evidence).",
    ),
    repeats: int = typer.Option(
        None,
        "--repeats",
        min=1,
        help="Outer-CV repeats per half (default 3, the study configuration's; 1 with "
        "--quick): the model comparisons are tested over every repeat's folds.",
    ),
) -> None:
    """Run the demo with every mechanism planted (OUT/planted) and switched off (OUT/null),
    same seed and effect scale, and write OUT/validation_matrix.csv and .md."""
    from ..evaluation.validation import matrix_markdown
    from ..rundir import ValidationLayout
    from ..study.validation import validate_method as run

    def half(folder: Path, null: bool) -> None:
        # Each half in its own process: the second half's cohort generation forks worker
        # processes, which hang once this process has run torch (executors.run_items).
        command = _demo_command(
            folder, null, patients, external_patients, seed, quick, effect_scale, repeats
        )
        code = subprocess.run(command, check=False).returncode
        if code != 0:
            console.print(f"the {folder.name} half stopped (exit {code}); run again to resume")
            raise typer.Exit(code)

    matrix = run(out_folder(out), half)
    console.rule("[bold]method validation")
    console.print(matrix_markdown(matrix), markup=False, soft_wrap=True)
    console.print(f"written: {ValidationLayout(out).matrix_csv}", soft_wrap=True)
