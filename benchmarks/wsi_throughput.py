"""Whole-slide embedding throughput and peak memory, measured side by side in one run.

1. Throughput ratio = end-to-end tiles/s (slide → tiles → QC → Macenko → transforms → encoder →
   HDF5, decode workers overlapping the encoder) ÷ the encoder's own tiles/s on pre-loaded,
   pre-transformed tensors already on the device, with the same batch size, device and
   precision. Measured by default for open_clip ViT-B/16 and a UNI-size ViT-L/16 (the ``uni``
   entry), random weights (timing only). Runs alternate (end-to-end, encoder-only, …) and the
   medians are reported, so machine load affects both sides alike.
2. Peak host memory (PSS of the process and its decode workers, sampled every 50 ms) while
   embedding two slides of different size: it must not grow with the slide.

On a GPU: ``--device cuda --precision bf16 --workers 8`` (see ``benchmarks/wsi_gpu.sh``).

Usage: ``python benchmarks/wsi_throughput.py [--size 4096] [--repeats 2] [--device cpu]
[--precision fp32] [--encoders openclip-vit-b-16 uni] [--out results.json]``
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def make_slide(path: Path, size: int, seed: int = 0) -> Path:
    """A square pyramidal synthetic slide of ``size`` px: a rendered slide tiled to size."""
    from stromalens.config import SlideConfig, SynthConfig
    from stromalens.synthetic import generate_cohort
    from stromalens.synthetic.slides import SlideGeometry, write_pyramidal_tiff
    from stromalens.wsi.reader import open_slide

    base = path.parent / "base"
    if not (base / "wsi").is_dir():
        generate_cohort(
            base,
            SynthConfig(
                patients=1,
                seed=seed,
                slide=SlideConfig(width=2048, height=1536),
                workers=1,
                missing={"wsi": 0.0},
            ),
            progress=False,
        )
    with open_slide(sorted((base / "wsi").glob("*.tiff"))[0]) as slide:
        rgb = slide.read_level(0)
    reps = (size // rgb.shape[0] + 1, size // rgb.shape[1] + 1, 1)
    big = np.tile(rgb, reps)[:size, :size]
    write_pyramidal_tiff(path, np.ascontiguousarray(big), SlideGeometry(width=size, height=size))
    return path


def _synchronise(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def encoder_only(encoder, n_tiles: int, batch: int, device: str, precision: str) -> float:
    """tiles/s of the encoder alone on pre-transformed tensors already on ``device``, in the
    precision and autocast context :func:`~stromalens.wsi.embed.embed_slide` uses."""
    import torch

    from stromalens.wsi.devices import autocast, resolve_device, resolve_precision

    dev = resolve_device(device)
    dtype = resolve_precision(precision, dev, encoder.precision)
    encoder.model.to(dev)
    rng = np.random.default_rng(0)
    tiles = rng.integers(0, 255, (batch, 224, 224, 3), dtype=np.uint8)
    x = encoder.transforms(tiles).to(dev)  # (B, 3, S, S) float32; autocast casts inside
    with torch.inference_mode(), autocast(dev, dtype):
        for _ in range(3 if dev.type == "cuda" else 1):
            encoder.image_fn(x)  # warm-up (cuDNN/cuBLAS autotuning on a GPU)
        _synchronise(dev)
        done, start = 0, time.perf_counter()
        while done < n_tiles:
            encoder.image_fn(x)
            done += batch
        _synchronise(dev)
    return done / (time.perf_counter() - start)


def end_to_end(
    encoder, slide: Path, out_dir: Path, batch: int, workers: int, device: str, precision: str
) -> tuple[float, int]:
    from stromalens.wsi.embed import EmbedSettings, embed_slide

    out = out_dir / f"{slide.stem}-{time.monotonic_ns()}.h5"
    settings = EmbedSettings(
        batch_size=batch,
        num_workers=workers,
        export=False,
        overwrite=True,
        device=device,
        precision=precision,
    )
    start = time.perf_counter()
    summary = embed_slide(slide, out, encoder, settings)
    seconds = time.perf_counter() - start
    out.unlink()
    return summary["n_tiles"] / seconds, summary["n_tiles"]


def throughput(name, weights, slide, out_dir, batch, workers, repeats, device, precision) -> dict:
    from stromalens.wsi.encoders import get_encoder

    encoder = get_encoder(name, weights=weights)
    enc_rates, e2e_rates, n = [], [], 0
    # warm-up; the slide was just written (page cache)
    encoder_only(encoder, batch, batch, device, precision)
    for _ in range(repeats):
        rate, n = end_to_end(encoder, slide, out_dir, batch, workers, device, precision)
        e2e_rates.append(rate)
        enc_rates.append(encoder_only(encoder, max(n, batch), batch, device, precision))
    enc, e2e = statistics.median(enc_rates), statistics.median(e2e_rates)
    return {
        "encoder": name,
        "device": device,
        "precision": precision,
        "batch_size": batch,
        "decode_workers": workers,
        "tiles": n,
        "encoder_only_tiles_per_s": round(enc, 2),
        "end_to_end_tiles_per_s": round(e2e, 2),
        "ratio": round(e2e / enc, 3),
        "runs": {
            "encoder_only": [round(r, 2) for r in enc_rates],
            "end_to_end": [round(r, 2) for r in e2e_rates],
        },
    }


_MEMORY_CHILD = """
import sys, json, threading, time, psutil
from stromalens.wsi.embed import EmbedSettings, embed_slide
from stromalens.wsi.encoders import get_encoder
slide, out, name, device, precision, workers = sys.argv[1:7]
me = psutil.Process(); peak = [0]; stop = [False]
def sample():
    while not stop[0]:
        try:
            procs = [me, *me.children(True)]
            rss = sum(p.memory_full_info().pss for p in procs)  # PSS: shared pages once
        except psutil.Error:
            continue
        peak[0] = max(peak[0], rss); time.sleep(0.05)
enc = get_encoder(name, weights="random")
base = me.memory_full_info().pss
t = threading.Thread(target=sample, daemon=True); t.start()
s = embed_slide(slide, out, enc, EmbedSettings(num_workers=int(workers), export=False,
                overwrite=True, device=device, precision=precision))
stop[0] = True; t.join()
print(json.dumps({"tiles": s["n_tiles"], "peak_mb": peak[0] / 2**20, "baseline_mb": base / 2**20}))
"""


def peak_memory(
    slide: Path, out_dir: Path, encoder: str, device: str, precision: str, workers: int
) -> dict:
    """Peak PSS (process + decode workers) while embedding ``slide``, in a fresh interpreter."""
    out = out_dir / f"mem-{slide.stem}.h5"
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            _MEMORY_CHILD,
            str(slide),
            str(out),
            encoder,
            device,
            precision,
            str(workers),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    return {k: round(v, 1) if isinstance(v, float) else v for k, v in result.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=4096, help="throughput slide side (px)")
    parser.add_argument("--memory-sizes", type=int, nargs=2, default=(4096, 12288))
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--workers", type=int, default=1, help="decode worker processes")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N, mps or auto")
    parser.add_argument("--precision", default="fp32", help="fp32, bf16, fp16 or auto")
    parser.add_argument(
        "--encoders", nargs="+", default=["openclip-vit-b-16", "uni"], help="registry ids"
    )
    parser.add_argument("--memory-encoder", default="synthclip")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    results: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        slide = make_slide(tmp / f"bench-{args.size}.tiff", args.size)
        for name in args.encoders:
            results[name] = throughput(
                name,
                "random",
                slide,
                tmp,
                args.batch,
                args.workers,
                args.repeats,
                args.device,
                args.precision,
            )
            print(json.dumps(results[name]), flush=True)
        if not args.skip_memory:
            results["peak_memory"] = {}
            for size in args.memory_sizes:
                path = slide if size == args.size else make_slide(tmp / f"mem-{size}.tiff", size)
                results["peak_memory"][f"{size}x{size}"] = peak_memory(
                    path, tmp, args.memory_encoder, args.device, args.precision, args.workers
                )
                print(size, json.dumps(results["peak_memory"][f"{size}x{size}"]), flush=True)
    print(json.dumps(results, indent=2))
    if args.out:
        args.out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
