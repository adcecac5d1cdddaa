"""``stromalens demo``: the main job on the embedded synthetic cohort.

Runs every stage that exists so far, in order, each timed and recorded in ``demo.json``:
the synthetic development cohort and its external cohort, validation of both manifests, and the
transcriptomic targets of both cohorts (checked against the planted truth). Later stages join
here as they land.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import typer
from rich.console import Console

console = Console()


class _Stages:
    """Run named stages in order, timing each and keeping what they report."""

    def __init__(self) -> None:
        self.records: list[dict] = []

    def run(self, name: str, fn: Callable[[], dict | None]) -> dict:
        console.rule(f"[bold]{name}")
        started = time.perf_counter()
        report = fn() or {}
        seconds = round(time.perf_counter() - started, 1)
        self.records.append({"stage": name, "seconds": seconds, **report})
        console.print(f"[green]{name}[/] done in {seconds:.0f} s")
        return report


def _synthetic_targets(cohort_dir: Path, out: Path) -> dict:
    """Targets of a synthetic cohort (its own signature), and their r with the planted latents."""
    import numpy as np
    import pandas as pd

    from ..cohort import load_manifest
    from ..targets.io import read_expression
    from ..targets.pipeline import compute_targets, write_targets

    cohort = load_manifest(cohort_dir / "cohort.csv")
    tpm = read_expression(cohort_dir / "rnaseq" / "tpm.tsv")
    samples = cohort.frame["rna_sample"].dropna()
    scaling = pd.read_csv(cohort_dir / "rnaseq" / "mrna_content.tsv", sep="\t", index_col=0).iloc[
        :, 0
    ]
    result = compute_targets(
        tpm.loc[samples.to_numpy()],
        signature=cohort_dir / "rnaseq" / "signature.tsv",
        mrna_scaling=scaling,
    )
    write_targets(
        result,
        out,
        patient_of_sample=dict(zip(samples, samples.index, strict=True)),
        extra_metadata={"inputs": {"cohort": str(cohort_dir)}},
    )
    truth = pd.read_parquet(cohort_dir / "truth.parquet")
    targets = pd.read_parquet(out / "targets.parquet").join(truth)
    r = {
        f"r({target}, {latent})": round(
            float(np.corrcoef(targets[target], targets[latent])[0, 1]), 3
        )
        for target, latent in (("ers_caf", "a"), ("lr", "b"), ("heterogeneity", "h"))
    }
    ceilings = {f"ceiling({k})": round(v["ceiling"], 3) for k, v in result.reliability.items()}
    for key, value in (r | ceilings).items():
        console.print(f"  {key} = {value}")
    return r | ceilings


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
    stages = _Stages()
    dev_dir, ext_dir = out / "cohort", out / "external"
    stages.run(
        "synthetic development cohort",
        lambda: {
            "manifest": str(generate_cohort(dev_dir, SynthConfig(patients=patients, seed=seed)))
        },
    )
    stages.run(
        "synthetic external cohort",
        lambda: {
            "manifest": str(
                generate_cohort(
                    ext_dir, SynthConfig(patients=external_patients, seed=seed, external=True)
                )
            )
        },
    )

    def validate() -> dict:
        report = {}
        for name, folder in (("development", dev_dir), ("external", ext_dir)):
            cohort = load_manifest(folder / "cohort.csv")
            console.print(f"[bold]{name} cohort[/]")
            console.print(cohort.summary().to_string())
            report[f"{name}_patients"] = len(cohort.patients)
        return report

    stages.run("manifest validation", validate)
    stages.run("targets (development)", lambda: _synthetic_targets(dev_dir, out / "targets"))
    stages.run("targets (external)", lambda: _synthetic_targets(ext_dir, out / "external_targets"))

    elapsed = time.perf_counter() - started
    (out / "demo.json").write_text(
        json.dumps({"seconds": round(elapsed, 1), "stages": stages.records}, indent=2)
    )
    console.rule()
    console.print(f"[green]demo finished[/] in {elapsed:.0f} s — outputs under {out}")
    for record in stages.records:
        console.print(f"  {record['stage']}: {record['seconds']:.0f} s")
