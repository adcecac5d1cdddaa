"""``stromalens wsi``: tile, embed, prompts, train-clip, encoders."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from .options import LEGACY_MANIFEST, manifest_from, manifest_option, out_folder

app = typer.Typer(help="Whole-slide images: tiles, QC, stain normalisation, CLIP features.")
console = Console()

_SLIDE_SUFFIXES = {".svs", ".tif", ".tiff", ".ndpi", ".mrxs", ".scn", ".vms", ".bif", ".svslide"}


def _jobs(source: Path, mpp: float | None):
    from ..wsi.embed import SlideJob, jobs_from_manifest

    if source.suffix.lower() in _SLIDE_SUFFIXES:
        if not source.is_file():
            raise FileNotFoundError(f"slide not found: {source}")
        return [SlideJob(source.stem, source, mpp)]
    jobs = jobs_from_manifest(source)
    if mpp is not None:
        jobs = [SlideJob(j.slide_id, j.path, j.mpp or mpp) for j in jobs]
    return jobs


def _settings(
    target_mpp,
    tile_px,
    min_tissue,
    batch_size,
    num_workers,
    stain,
    reference,
    overwrite,
    device="auto",
    precision="auto",
):
    from ..wsi.embed import EmbedSettings
    from ..wsi.tiling import TilingSpec

    return EmbedSettings(
        tiling=TilingSpec(
            target_mpp=target_mpp, tile_px=tile_px, stride_px=tile_px, min_tissue=min_tissue
        ),
        batch_size=batch_size,
        num_workers=num_workers,
        stain=stain,
        stain_reference=str(reference) if reference else None,
        overwrite=overwrite,
        device=device,
        precision=precision,
    )


def _report(results: list[dict], out: Path, encoder: str | None, settings) -> None:
    from ..wsi.store import feature_dir

    table = Table(title="slides")
    for col in ("slide", "status", "tiles", "seconds", "error"):
        table.add_column(col)
    failed = 0
    for r in results:
        status = r["status"]
        style = {"failed": "red", "empty": "yellow"}.get(status, "")
        failed += status == "failed"
        table.add_row(
            r["slide"],
            f"[{style}]{status}[/]" if style else status,
            str(r.get("n_tiles", "")),
            str(r.get("seconds", "")),
            (r.get("error") or "")[:80],
        )
    console.print(table)
    console.print(f"stores in {feature_dir(out, encoder, settings.tiling)} (--features takes it)")
    recomputed = [r["slide"] for r in results if r.get("recomputed")]
    if recomputed:
        console.print(f"recomputed {len(recomputed)} stale store(s): {recomputed} (see the log)")
    empty = [r["slide"] for r in results if r["status"] == "empty"]
    if empty:
        console.print(f"[bold yellow]warning:[/] {len(empty)} slide(s) yielded zero tiles: {empty}")
    if failed:
        # One clear line and exit 1 (the root app turns ValueError into that).
        names = [r["slide"] for r in results if r["status"] == "failed"]
        raise ValueError(f"{failed} slide(s) failed (the others are done): {', '.join(names)}")


_MANIFEST = manifest_option("Cohort manifest (CSV/TSV/parquet), or a single slide file.")
_MPP = typer.Option(None, "--mpp", help="µm/px override for slides without it in metadata.")
_EXECUTOR = typer.Option("local", "--executor", help="local, process or ray.")


@app.command("tile", context_settings=LEGACY_MANIFEST)
def tile(
    ctx: typer.Context,
    manifest: Path | None = _MANIFEST,
    out: Path = typer.Option(..., "--out", help="Output directory (one HDF5 per slide)."),
    mpp: float | None = _MPP,
    target_mpp: float = typer.Option(0.5, "--target-mpp"),
    tile_px: int | None = typer.Option(
        None, "--tile-px", help="Tile size in px (default: --encoder's input size, else 224)."
    ),
    encoder: str | None = typer.Option(
        None, "--encoder", help="Size the tiles for this encoder (e.g. conch: 448); no features."
    ),
    min_tissue: float = typer.Option(0.5, "--min-tissue"),
    executor: str = _EXECUTOR,
    workers: int | None = typer.Option(None, "--workers"),
    overwrite: bool = typer.Option(False, "--overwrite"),
) -> None:
    """Tissue mask, tiles and QC (no encoder): HDF5 with coords + QC, GeoJSON, QC thumbnail,
    under OUT/tiles/<tiling>/."""
    from ..wsi.embed import embed_cohort
    from ..wsi.encoders import encoder_info
    from ..wsi.tiling import TilingSpec

    source = manifest_from(ctx, manifest)
    # the tiles `wsi embed --encoder` would cut (its input size), or the default tiling's
    tile_px = tile_px or (encoder_info(encoder).input_px if encoder else TilingSpec().tile_px)
    settings = _settings(target_mpp, tile_px, min_tissue, 64, 0, "none", None, overwrite)
    results = embed_cohort(
        _jobs(source, mpp),
        out_folder(out),
        None,
        settings=settings,
        executor=executor,
        workers=workers,
    )
    _report(results, out, None, settings)


@app.command("embed", context_settings=LEGACY_MANIFEST)
def embed(
    ctx: typer.Context,
    manifest: Path | None = _MANIFEST,
    out: Path = typer.Option(..., "--out", help="Output directory (one HDF5 per slide)."),
    encoder: str = typer.Option("synthclip", "--encoder", help="Registered encoder name."),
    weights: str | None = typer.Option(
        None, "--weights", help="Local weight file or snapshot directory; 'random' for timing."
    ),
    allow_download: bool = typer.Option(
        False, "--allow-download", help="Allow fetching weights from a hub (--weights hub)."
    ),
    mpp: float | None = _MPP,
    target_mpp: float = typer.Option(0.5, "--target-mpp"),
    tile_px: int | None = typer.Option(
        None, "--tile-px", help="Tile size in px (default: the encoder's input size, e.g. 448)."
    ),
    min_tissue: float = typer.Option(0.5, "--min-tissue"),
    batch_size: int = typer.Option(64, "--batch-size"),
    num_workers: int = typer.Option(1, "--num-workers", help="Decode processes per slide."),
    stain: str = typer.Option("macenko", "--stain", help="macenko or none."),
    stain_reference: Path | None = typer.Option(
        None, "--stain-reference", help="Reference H&E image (default: the bundled one)."
    ),
    device: str = typer.Option(
        "auto", "--device", help="auto, cpu, cuda, cuda:N or mps (auto: a GPU when present)."
    ),
    precision: str = typer.Option(
        "auto", "--precision", help="auto, fp32, bf16 or fp16 (auto: fp32 on the CPU)."
    ),
    executor: str = _EXECUTOR,
    workers: int | None = typer.Option(None, "--workers", help="Slides in parallel."),
    overwrite: bool = typer.Option(False, "--overwrite"),
) -> None:
    """Tile, QC, Macenko-normalise and embed every slide into OUT/<encoder>/<tiling>/; a slide
    whose store records the same slide file, encoder, weights, tiling and stain settings is
    skipped, any other is recomputed."""
    from ..wsi.devices import resolve_device, resolve_precision
    from ..wsi.embed import embed_cohort
    from ..wsi.encoders import encoder_info

    source = manifest_from(ctx, manifest)
    resolve_precision(precision, resolve_device(device))  # a bad choice fails before any slide
    # tiles at the encoder's own input size (CONCH: 448 px), never 224-px tiles upsampled
    tile_px = tile_px or encoder_info(encoder).input_px
    settings = _settings(
        target_mpp,
        tile_px,
        min_tissue,
        batch_size,
        num_workers,
        stain,
        stain_reference,
        overwrite,
        device,
        precision,
    )
    results = embed_cohort(
        _jobs(source, mpp),
        out_folder(out),
        encoder,
        weights,
        settings,
        executor=executor,
        workers=workers,
        allow_download=allow_download,
    )
    _report(results, out, encoder, settings)


@app.command("prompts")
def prompts(
    banks: str = typer.Option(
        "builtin:prompts", "--banks", help="Directory of banks (builtin:prompts: the shipped)."
    ),
    out: Path = typer.Option(..., "--out", help="Cache directory for text embeddings."),
    encoder: str = typer.Option("synthclip", "--encoder"),
    weights: str | None = typer.Option(None, "--weights"),
    allow_download: bool = typer.Option(False, "--allow-download"),
) -> None:
    """Embed every prompt bank with the encoder's text tower (cached per encoder)."""
    from ..config import builtin_path
    from ..wsi.encoders import get_encoder
    from ..wsi.prompts import embed_bank, load_banks

    out_folder(out)
    folder = builtin_path(banks) or Path(banks)
    enc = get_encoder(encoder, weights, allow_download=allow_download)
    for target, bank in load_banks(folder).items():
        table = embed_bank(bank, enc, cache_dir=out)
        counts = table.groupby("group").size().to_dict()
        console.print(f"{target}: {len(table)} prompts {counts}")


@app.command("train-clip")
def train_clip(
    manifest: list[Path] = typer.Option(
        None, "--manifest", help="Synthetic cohort manifest(s); default: generate a small one."
    ),
    out: Path | None = typer.Option(None, "--out", help="Checkpoint path (.safetensors)."),
    steps: int = typer.Option(600, "--steps", help="Training steps (batches of 96 tiles)."),
    patients: int = typer.Option(16, "--patients", help="Size of the generated cohort."),
    seed: int = typer.Option(0, "--seed"),
    force: bool = typer.Option(False, "--force", help="Retrain even if a checkpoint exists."),
) -> None:
    """Train the small synthetic CLIP (cached; loaded by the 'synthclip' encoder)."""
    from ..wsi.synthclip import (
        ClipTrainSettings,
        default_cache_dir,
        default_checkpoint,
        train_synthclip,
    )

    out = out or default_checkpoint()
    if out.is_file() and not force:
        console.print(f"synthetic CLIP already trained: {out} (use --force to retrain)")
        return
    if not manifest:
        from ..config import SlideConfig, SynthConfig
        from ..synthetic import generate_cohort

        cohort_dir = default_cache_dir() / "synthclip" / f"cohort-{patients}-{seed}"
        manifest = [
            generate_cohort(
                cohort_dir,
                SynthConfig(
                    patients=patients,
                    seed=seed + 1000,
                    slide=SlideConfig(width=2048, height=1536),
                ),
            )
        ]
    slides = [job.path for m in manifest for job in _jobs(Path(m), None)]
    summary = train_synthclip(slides, out, ClipTrainSettings(max_steps=steps, seed=seed))
    console.print(json.dumps(summary["heldout_retrieval"], indent=2))
    console.print(f"trained in {summary['training']['train_seconds']} s → {out}")


@app.command("encoders")
def encoders(
    weights_dir: Path | None = typer.Option(
        None,
        "--weights-dir",
        help="Folder holding <id>/ snapshot folders or <id>.safetensors|.bin|.pt files "
        "(default: $STROMALENS_WEIGHTS).",
    ),
) -> None:
    """List the registered encoders: feature width, text tower, input size, µm/px, licence,
    and whether local weights were found under --weights-dir / $STROMALENS_WEIGHTS."""
    from ..wsi.encoders import WEIGHTS_ENV, find_local_weights, list_infos, weights_root

    table = Table(title="encoders")
    for col in ("id", "width", "text", "input px", "µm/px", "licence", "hub", "local weights"):
        table.add_column(col)
    for info in list_infos():
        found = find_local_weights(info.id, weights_dir)
        table.add_row(
            info.id,
            str(info.embed_dim),
            "yes" if info.has_text else "no",
            str(info.input_px),
            f"{info.mpp:g}",
            info.licence,
            info.hub or "",
            str(found) if found else "no",
        )
    console.print(table)
    root = weights_root(weights_dir)
    where = root if root else f"nowhere (set --weights-dir or ${WEIGHTS_ENV})"
    console.print(f"local weights searched in {where}")
