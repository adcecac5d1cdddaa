"""``stromalens evaluate`` and ``stromalens predict``: analyses of a training run and its
zero-shot application to a new cohort."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

from .options import out_folder

console = Console()


def evaluate(
    run_dir: Path = typer.Argument(..., help="Training run directory (stromalens train --out)."),
    out: Path = typer.Option(None, "--out", help="Output directory [RUN_DIR/evaluation]."),
    external: list[Path] = typer.Option(
        None, "--external", help="A `stromalens predict` output directory (repeatable)."
    ),
    skip: list[str] = typer.Option(
        None, "--skip", help="Analyses to skip (repeatable): probes, attention, survival, …"
    ),
    n_boot: int = typer.Option(1000, "--n-boot", help="Bootstrap / permutation resamples."),
) -> None:
    """Every analysis of the study on a training run: metrics.json plus one table each."""
    from ..evaluation import evaluate_run
    from ..names import PROPOSED
    from ..rundir import metric_parts

    if out is not None:
        out_folder(out)
    metrics = evaluate_run(
        run_dir, out, external=external or None, skip=tuple(skip or ()), n_boot=n_boot
    )
    target = out or run_dir / "evaluation"
    console.print(f"[bold]evaluation[/] of {run_dir} — {metrics['meta.seconds']:.0f} s")
    macro = {p[1]: v for p, v in metric_parts(metrics, "cv", length=3) if p[2] == "macro_r"}
    for name, value in sorted(macro.items(), key=lambda kv: -(kv[1] or -9))[:8]:
        mark = " (proposed)" if name == PROPOSED else ""
        console.print(f"  macro-r {name:18s} {value:+.3f}{mark}")
    for note in metrics["meta.notes"]:
        console.print(f"  [yellow]note:[/] {note}")
    console.print(f"tables and metrics.json under {target}")


def predict(
    model: Path = typer.Option(
        ..., "--model", help="Model bundle: TRAIN/model/ (or the training run folder)."
    ),
    manifest: Path = typer.Option(..., "--manifest", help="The new cohort's manifest."),
    out: Path = typer.Option(..., "--out", help="Output directory."),
    features: Path = typer.Option(
        None,
        "--features",
        help="Folder of the cohort's slide stores (.h5): `stromalens wsi embed`'s "
        "OUT/<encoder>/<tiling>/, or TRIDENT, CLAM or STAMP feature files.",
    ),
    targets: Path = typer.Option(
        None, "--targets", help="The cohort's targets.parquet, for the concordance analysis."
    ),
    name: str = typer.Option(None, "--name", help="Cohort name [the manifest's folder]."),
) -> None:
    """Apply a frozen model bundle to a new cohort (zero-shot; WSI-only where MRI is absent).
    The bundle holds everything needed: the training cohort's files are not read."""
    from ..evaluation.external import predict_cohort

    preds = predict_cohort(
        model, manifest, out_folder(out), features_dir=features, targets=targets, name=name
    )
    console.print(
        f"predicted {preds['patient_id'].nunique()} patients × {preds['model'].nunique()} "
        f"models → {out / 'predictions.parquet'}"
    )
