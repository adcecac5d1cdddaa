"""``stromalens demo``: the main job on the embedded synthetic cohort.

Runs every stage that exists so far: the synthetic development cohort and its external cohort,
then validation of both manifests. Later stages join here as they land.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import typer
from rich.console import Console

console = Console()


def demo(
    out: Path = typer.Option(Path("runs/demo"), "--out", help="Output directory."),
    patients: int = typer.Option(126, "--patients", help="Development-cohort size."),
    external_patients: int = typer.Option(60, "--external-patients"),
    seed: int = typer.Option(0, "--seed"),
    quick: bool = typer.Option(
        False, "--quick", help="A small cohort (12 + 6 patients) for smoke tests."
    ),
) -> None:
    """Generate the synthetic cohorts and run every available stage on them."""
    from ..cohort import load_manifest
    from ..config import SynthConfig
    from ..synthetic import generate_cohort

    if quick:
        patients, external_patients = 12, 6
    started = time.perf_counter()
    dev = generate_cohort(out / "cohort", SynthConfig(patients=patients, seed=seed))
    ext = generate_cohort(
        out / "external", SynthConfig(patients=external_patients, seed=seed, external=True)
    )
    summaries = {}
    for name, manifest in (("development", dev), ("external", ext)):
        cohort = load_manifest(manifest)
        summaries[name] = cohort.summary()
        console.print(f"[bold]{name} cohort[/] ({manifest})")
        console.print(summaries[name].to_string())
    elapsed = time.perf_counter() - started
    (out / "demo.json").write_text(
        json.dumps(
            {
                "development_manifest": str(dev),
                "external_manifest": str(ext),
                "seconds": round(elapsed, 1),
                "stages": ["synthetic cohort", "external cohort", "manifest validation"],
            },
            indent=2,
        )
    )
    console.print(f"[green]demo finished[/] in {elapsed:.0f} s — outputs under {out}")
