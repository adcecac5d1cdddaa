"""``stromalens demo``: the main job — the synthetic cohorts, then the full study on them.

1. the synthetic development cohort (``OUT/cohort``), its external WSI cohort of another
   cancer (``OUT/external_cohort``) and the synthetic CLIP's own corpus (``OUT/clip_corpus``:
   other patients, ids ``C…``, another seed — never an evaluated cohort), resumable per patient;
2. the synthetic CLIP, trained on that corpus into ``OUT/synthclip/`` (skipped when the
   checkpoint exists for the same corpus and settings); the train stage refuses a CLIP whose
   corpus overlaps an evaluated cohort (:func:`stromalens.wsi.synthclip.check_corpus_disjoint`);
3. ``stromalens run`` with ``configs/demo.yaml`` (paths pointed at the generated cohorts), the
   study folder being ``OUT`` itself: targets, WSI, radiomics, training, external application,
   evaluation and report, each stage skipped when already done for the same inputs;
4. the targets checked against the planted truth, and the end-of-run summary.

``demo.json`` records each step's seconds (the study stages' come from ``OUT/manifest.json``)
and how busy the machine was meanwhile (``machine``: :func:`machine_record`).
``--quick`` runs the same pipeline on 12 + 6 patients with tiny settings (:data:`QUICK`).
``--null`` generates the cohorts with every planted mechanism switched off
(:meth:`stromalens.config.MechanismsConfig.null`), the validation matrix's null cohort;
``--effect-scale K`` plants every mechanism at K × its default size
(``MechanismsConfig.effect_scale``; what "× K" means per mechanism:
:func:`stromalens.synthetic.mechanisms.planted`), recorded in ``synth.json`` and the run's
``validation.csv`` / ``validation.*`` metrics.
The targets use the shipped resources (curated ERS–CAF set, TIL10), not the generator's own
cell-type profiles.
"""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path

import typer
import yaml
from rich.console import Console

from .options import out_folder

console = Console()

#: Overrides of configs/demo.yaml for ``--quick`` (a smoke test of every stage, not a study).
QUICK: dict = {
    "notes": "Quick demo (stromalens demo --quick): 12 + 6 patients and tiny settings, a smoke "
    "test of every stage, not a study; numbers are not meaningful. Radiomics on the original "
    "image only, at 2 mm; no ComBat inside the folds (sites of one or two patients).",
    "radiomics": {
        "settings": {
            "preprocess": {"spacing_mm": [2.0, 2.0, 2.0]},
            "stability": {"perturbations": 2, "patients": None},
            "harmonisation_check": {"enabled": True, "folds": 2},
        }
    },
    "training": {
        "harmonise": False,
        "folds": 3,
        "inner_folds": 2,
        "repeats": 1,
        "settings": {
            "hidden": 16,
            "epochs_stage1": 2,
            "epochs_stage2": 3,
            "epochs_stage3": 2,
            "epochs_distill": 2,
            "epochs_baseline": 3,
            "max_tiles": 64,
        },
    },
    "evaluation": {"n_boot": 100, "repeats": 1, "max_overlays": 2},
}


def _merge(base: dict, overrides: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def demo_config_path() -> Path:
    path = Path(__file__).resolve().parents[3] / "configs" / "demo.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: run the demo from a checkout of stromalens")
    return path


def demo_config(
    dev_dir: Path,
    ext_dir: Path,
    quick: bool = False,
    weights: Path | None = None,
    corpus_note: str | None = None,
    repeats: int | None = None,
):
    """configs/demo.yaml with its cohort paths pointed at ``dev_dir`` and ``ext_dir``, the
    encoder's weights at ``weights``, ``corpus_note`` (what the CLIP was trained on) added
    to the notes the report shows and, with ``repeats``, the outer CV repeated that many
    times (``training.repeats``; the demo's own is 2, the quick demo's 1)."""
    from ..config import StudyConfig, validate_settings

    path = demo_config_path()
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    data["cohort"] |= {
        "manifest": str(dev_dir / "cohort.csv"),
        "expression": str(dev_dir / "rnaseq" / "tpm.tsv"),
    }
    (external,) = data["external"]
    external |= {
        "manifest": str(ext_dir / "cohort.csv"),
        "expression": str(ext_dir / "rnaseq" / "tpm.tsv"),
    }
    data["training"]["prompts"] = str(path.parents[1] / "configs" / "prompts")
    if weights is not None:
        data["wsi"]["weights"] = str(weights)
    if quick:
        data = _merge(data, QUICK)
        data["radiomics"]["settings"]["extraction"]["imageType"] = {"Original": {}}
    if corpus_note:
        data["notes"] = f"{data['notes']} {corpus_note}"
    if repeats is not None:
        data["training"]["repeats"] = int(repeats)
    return validate_settings(StudyConfig, data, source=str(path))


def _train_synthclip(corpus_dir: Path, checkpoint: Path, settings) -> dict:
    """Train the synthetic CLIP on every slide of its own corpus (``corpus_dir``) unless
    ``checkpoint`` exists, trained on the same corpus slides with the same ``settings``."""
    from dataclasses import asdict

    from ..wsi.embed import jobs_from_manifest
    from ..wsi.synthclip import corpus_record, train_synthclip

    slides = [job.path for job in jobs_from_manifest(corpus_dir / "cohort.csv")]
    sidecar = checkpoint.with_suffix(".json")
    if checkpoint.is_file() and sidecar.is_file():
        meta = json.loads(sidecar.read_text(encoding="utf-8"))
        same = {k: meta["training"].get(k) for k in asdict(settings)} == asdict(settings)
        if same and meta.get("corpus") == corpus_record(slides):
            console.print(f"cached: {checkpoint}")
            return {"checkpoint": str(checkpoint), "cached": True}
    summary = train_synthclip(slides, checkpoint, settings)
    return {
        "checkpoint": str(checkpoint),
        "cached": False,
        "corpus_slides": len(slides),
        "train_seconds": summary["training"]["train_seconds"],
        "heldout_retrieval_top1": summary["heldout_retrieval"]["top1_class"],
    }


def _truth_check(cohort_dir: Path, targets_path: Path) -> dict:
    """r of each target with its planted latent (the synthetic cohort's truth)."""
    import pandas as pd

    from ..correlation import pearson
    from ..names import LATENTS

    truth = pd.read_parquet(cohort_dir / "truth.parquet")
    targets = pd.read_parquet(targets_path).join(truth, how="inner")
    return {
        f"r({target}, {latent})": round(pearson(targets[target], targets[latent]), 3)
        for target, latent in LATENTS.items()
    }


def demo(
    out: Path = typer.Option(Path("runs/demo"), "--out", help="Output directory."),
    patients: int = typer.Option(126, "--patients", help="Development-cohort size."),
    external_patients: int = typer.Option(60, "--external-patients"),
    seed: int = typer.Option(0, "--seed"),
    quick: bool = typer.Option(
        False, "--quick", help="12 + 6 patients and tiny settings: a smoke test (≤ 3 min)."
    ),
    null: bool = typer.Option(
        False, "--null", help="Every planted mechanism switched off (the null cohort)."
    ),
    effect_scale: float = typer.Option(
        1.0, "--effect-scale", min=0.0, help="K: every mechanism's effect size × K (0: none)."
    ),
    repeats: int = typer.Option(
        None,
        "--repeats",
        min=1,
        help="Repeat the outer CV R times with other fold splits (default: configs/demo.yaml's "
        "2, 1 with --quick).",
    ),
) -> None:
    """Generate the synthetic cohorts and run the full study on them (stromalens run)."""
    from ..study.runner import study_lock

    with study_lock(out_folder(out)):  # before the cohorts: a second demo into OUT stops here
        run_demo(out, patients, external_patients, seed, quick=quick, null=null,
                 scale=effect_scale, repeats=repeats)  # fmt: skip


def run_demo(
    out: Path,
    patients: int,
    external_patients: int,
    seed: int,
    *,
    quick: bool,
    null: bool,
    scale: float = 1.0,
    repeats: int | None = None,
) -> dict:
    """The demo's steps (see the module docstring), every mechanism's size × ``scale``, the
    outer CV repeated ``repeats`` times (None: the configuration's); returns the
    ``demo.json`` record."""
    from ..config import MechanismsConfig
    from ..wsi.synthclip import CHECKPOINT_NAME
    from .run import run_and_summarise

    if quick:
        patients, external_patients = 12, 6
    mechanisms = MechanismsConfig(effect_scale=scale)
    mechanisms = mechanisms.null() if null else mechanisms
    started, ticks = time.perf_counter(), cpu_ticks()
    steps: list[dict] = []

    def step(name: str, fn) -> dict:
        console.rule(f"[bold]{name}")
        t0 = time.perf_counter()
        report = fn() or {}
        steps.append({"stage": name, "seconds": round(time.perf_counter() - t0, 1), **report})
        console.print(f"[green]{name}[/] done in {steps[-1]['seconds']:.0f} s")
        return report

    dev_dir, ext_dir, corpus_dir = out / "cohort", out / "external_cohort", out / "clip_corpus"
    cohorts = _cohort_configs(patients, external_patients, seed, mechanisms, quick)
    _generate_cohorts(step, {"development": dev_dir, "external": ext_dir, "corpus": corpus_dir},
                      cohorts)  # fmt: skip
    checkpoint = out / "synthclip" / CHECKPOINT_NAME
    clip = _clip_settings(mechanisms, quick)
    step("synthetic CLIP", lambda: _train_synthclip(corpus_dir, checkpoint, clip))
    corpus = cohorts["corpus"]
    note = (
        f"The synthetic CLIP was trained on its own corpus of {corpus.patients} slides "
        f"(patients C…, seed {corpus.seed}), none of them a patient of the evaluated cohorts; "
        "the targets use the shipped curated ERS–CAF set and the TIL10 signature. Planted "
        f"mechanisms: {_planted_words(null, scale)}."
    )
    config = demo_config(dev_dir, ext_dir, quick=quick, weights=checkpoint, corpus_note=note,
                         repeats=repeats)  # fmt: skip
    console.rule("[bold]stromalens run (configs/demo.yaml)")
    summary = run_and_summarise(config, out)
    truth = _truth_check(dev_dir, out / "targets" / "targets.parquet")
    shown = ", ".join(f"{k} = {v}" for k, v in truth.items())
    console.print(f"targets vs planted latents: {shown}")

    elapsed = time.perf_counter() - started
    stages = steps + [
        {
            "stage": f"run: {name}",
            "seconds": s["seconds"] if s["this_run"] == "ran" else None,
            "status": s["status"] if s["this_run"] == "ran" else "skipped (done before)",
        }
        for name, s in summary["stages"].items()
    ]
    record = {
        "seconds": round(elapsed, 1),
        "quick": quick,
        "null": null,
        "effect_scale": scale,
        "repeats": config.training.repeats,
        "clip_corpus": note,
        "patients": patients,
        "external_patients": external_patients,
        "stages": stages,
        "machine": machine_record(ticks, cpu_ticks()),
        "truth": truth,
        "headline": summary["headline"],
        "report": summary["report"],
    }
    (out / "demo.json").write_text(json.dumps(record, indent=2), encoding="utf-8")
    _print_timings(out, elapsed, stages, summary["report"], record["machine"])
    return record


def cpu_ticks(stat_text: str | None = None) -> dict | None:
    """The machine's cumulative CPU time from the first line of ``/proc/stat`` (Linux), in
    clock ticks: ``total`` (user … steal), ``idle`` (idle + iowait) and ``steal`` (time the
    hypervisor gave this virtual machine's CPUs to another guest); None where it cannot be
    read. ``stat_text`` replaces the file (tests)."""
    if stat_text is None:
        try:
            stat_text = Path("/proc/stat").read_text(encoding="ascii")
        except OSError:
            return None
    fields = stat_text.split("\n", 1)[0].split()
    if len(fields) < 9 or fields[0] != "cpu":
        return None
    # user nice system idle iowait irq softirq steal (guest time is inside user already)
    ticks = [int(v) for v in fields[1:9]]
    return {"total": sum(ticks), "idle": ticks[3] + ticks[4], "steal": ticks[7]}


def machine_record(before: dict | None, after: dict | None) -> dict:
    """How the machine was while the demo ran, so that its seconds can be read: the cores, the
    share of all CPU time that was busy (this demo or anything else) and the share stolen by
    the hypervisor (a contended host: the same work then takes longer). None where
    ``/proc/stat`` was not readable."""
    import os

    record: dict = {"cpus": os.cpu_count(), "busy_share": None, "steal_share": None}
    if before is None or after is None or after["total"] <= before["total"]:
        return record
    total = after["total"] - before["total"]
    record["busy_share"] = round(1 - (after["idle"] - before["idle"]) / total, 3)
    record["steal_share"] = round((after["steal"] - before["steal"]) / total, 3)
    return record


def _planted_words(null: bool, scale: float) -> str:
    if null:
        return "none (the null cohort)" + ("" if scale == 1 else f", effect scale {scale:g}")
    if scale == 1:
        return "all at their default sizes"
    return f"all at {scale:g} × their default sizes (effect scale K = {scale:g})"


def _cohort_configs(patients, external_patients, seed, mechanisms, quick) -> dict:
    """SynthConfig of the development, external and CLIP-corpus cohorts. The corpus is
    WSI-only (no MRI rendered), ids ``C…``, seed ``seed + corpus_seed_offset``."""
    from ..config import MissingRates, SynthConfig

    text = mechanisms.text_prior
    no_mri = MissingRates(wsi=0.0, mri_t1=1.0, mri_t2=1.0, mri_ce=1.0)
    return {
        "development": SynthConfig(patients=patients, seed=seed, mechanisms=mechanisms),
        "external": SynthConfig(
            patients=external_patients, seed=seed, external=True, mechanisms=mechanisms
        ),
        "corpus": SynthConfig(
            patients=6 if quick else text.corpus_patients,
            seed=seed + text.corpus_seed_offset,
            id_prefix="C",
            missing=no_mri,
            mechanisms=mechanisms,
        ),
    }


def _clip_settings(mechanisms, quick: bool):
    from ..synthetic.mechanisms import planted
    from ..wsi.synthclip import ClipTrainSettings

    rate = planted(mechanisms).density_caption_rate
    # Two torch threads: the demo trains the CLIP alone, so both cores are free (measured on
    # 2 cores: 60 steps in 10.0 s against 17.0 s with one). The thread count is fixed, not
    # the machine's core count: it changes the weights' last bits, and it is a setting the
    # cache compares; under load two threads give the same weights, only later.
    return ClipTrainSettings(max_steps=300 if quick else 600, density_caption_rate=rate, threads=2)


def _generate_cohorts(step, folders: dict, configs: dict) -> None:
    """The synthetic cohorts (development, external, CLIP corpus), each a timed step."""
    from ..cohort import load_manifest
    from ..synthetic import generate_cohort

    for name, folder in folders.items():
        config = configs[name]
        step(
            f"synthetic {name} cohort",
            lambda folder=folder, config=config: {"manifest": str(generate_cohort(folder, config))},
        )
    for name in ("development", "external"):
        console.print(f"[bold]{name} cohort[/]")
        console.print(load_manifest(folders[name] / "cohort.csv").summary().to_string())


def _print_timings(out: Path, elapsed: float, stages: list[dict], report, machine) -> None:
    console.rule()
    console.print(f"[green]demo finished[/] in {elapsed:.0f} s — outputs under {out}")
    for record in stages:
        seconds = record["seconds"]
        shown = f"{seconds:.0f} s" if isinstance(seconds, (int, float)) else "skipped"
        console.print(f"  {record['stage']}: {shown}")
    if machine["busy_share"] is not None:
        console.print(
            f"  machine: {machine['cpus']} CPUs, {machine['busy_share']:.0%} of their time busy, "
            f"{machine['steal_share']:.1%} stolen by the hypervisor (demo.json: machine)"
        )
    if report:
        console.print(f"[bold green]report:[/] {report}", soft_wrap=True)
