"""``stromalens demo``: the main job on the embedded synthetic cohort.

Runs every stage that exists so far, in order, each timed and recorded in ``demo.json``:
the synthetic development cohort and its external cohort, validation of both manifests, the
transcriptomic targets of both cohorts (checked against the planted truth), the radiomics of the
development cohort (lighter demo settings, configs/radiomics_demo.yaml), and the whole-slide
stage (the synthetic CLIP, trained once and cached; tiles, QC, Macenko and embeddings of every
slide). Later stages join here as they land.
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


def _train_synthclip(cohort_dir: Path, train_seconds: float) -> dict:
    """Train the synthetic CLIP on the development slides unless a checkpoint is cached."""
    from ..wsi.embed import jobs_from_manifest
    from ..wsi.synthclip import TrainSettings, default_checkpoint, train_synthclip

    checkpoint = default_checkpoint()
    if checkpoint.is_file():
        return {"checkpoint": str(checkpoint), "cached": True}
    slides = [job.path for job in jobs_from_manifest(cohort_dir / "cohort.csv")[:24]]
    summary = train_synthclip(slides, checkpoint, TrainSettings(max_seconds=train_seconds))
    return {
        "checkpoint": str(checkpoint),
        "cached": False,
        "train_seconds": summary["training"]["train_seconds"],
        "heldout_retrieval_top1": summary["heldout_retrieval"]["top1_class"],
    }


def _embed(cohort_dir: Path, out: Path) -> dict:
    """Tile, QC, normalise and embed a cohort's slides with the synthetic CLIP (2 processes)."""
    from ..wsi.embed import EmbedSettings, embed_cohort, jobs_from_manifest
    from ..wsi.synthclip import default_checkpoint

    results = embed_cohort(
        jobs_from_manifest(cohort_dir / "cohort.csv"),
        out / "features" / cohort_dir.name,
        "synthclip",
        default_checkpoint(),
        EmbedSettings(),
        executor="process",
    )
    counts: dict = {}
    for r in results:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    return {"slides": counts, "tiles": int(sum(r.get("n_tiles", 0) for r in results))}


def _radiomics(cohort_dir: Path, out: Path) -> dict:
    """Radiomics of the development cohort with the demo's lighter settings (fewer filters and
    perturbations, stated in configs/radiomics_demo.yaml)."""
    from ..config import load_config
    from ..radiology.runner import run_radiomics
    from ..radiology.settings import RadiomicsConfig

    config = Path(__file__).resolve().parents[3] / "configs" / "radiomics_demo.yaml"
    if not config.exists():
        console.print(f"[yellow]radiomics skipped:[/] {config} not found (run from a checkout)")
        return {"skipped": "configs/radiomics_demo.yaml not found"}
    summary = run_radiomics(cohort_dir / "cohort.csv", out, load_config(config, RadiomicsConfig))
    report = {k: summary[k] for k in ("patients_ok", "patients_failed", "features")}
    check = summary.get("site_check", {}).get("balanced_accuracy")
    if check:
        report["site_balanced_accuracy"] = check
        console.print(
            f"  site predictable from features (balanced accuracy, out of fold): "
            f"raw {check['raw']}, after ComBat {check['combat']}"
        )
    return report


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
    stages.run("radiomics (development)", lambda: _radiomics(dev_dir, out / "radiomics"))
    stages.run(
        "wsi: synthetic CLIP",
        lambda: _train_synthclip(dev_dir, train_seconds=60.0 if quick else 120.0),
    )
    stages.run("wsi: tile + QC + Macenko + embed (development)", lambda: _embed(dev_dir, out))
    stages.run("wsi: tile + QC + Macenko + embed (external)", lambda: _embed(ext_dir, out))

    elapsed = time.perf_counter() - started
    (out / "demo.json").write_text(
        json.dumps({"seconds": round(elapsed, 1), "stages": stages.records}, indent=2)
    )
    console.rule()
    console.print(f"[green]demo finished[/] in {elapsed:.0f} s — outputs under {out}")
    for record in stages.records:
        console.print(f"  {record['stage']}: {record['seconds']:.0f} s")
