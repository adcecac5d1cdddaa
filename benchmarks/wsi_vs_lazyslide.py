"""stromalens against LazySlide 0.13 on the same slide, encoder and settings, side by side.

Both pipelines embed one synthetic pyramidal slide end to end (open → tissue detection → tiling
at 0.5 µm/px, 224 px → decode → encoder → features) with the **same** encoder module: a timm
architecture (``vit_base_patch16_224`` by default) with random weights built once per process
from one seed, on the CPU, with the same batch size and the same number of torch threads. Each
side reports tiles per second over the whole call (tissue detection and tiling included), so
the two tissue detectors may keep different numbers of tiles without biasing the comparison.
Runs alternate (stromalens, LazySlide, …) and the medians are reported.

What differs by design, and is reported rather than hidden: stromalens also computes tile QC,
fits and applies Macenko stain normalisation, and writes an HDF5 store; it is timed with
``stain="macenko"`` (its default) and with ``stain="none"``.

LazySlide must live in its own environment (its dependencies pin other versions)::

    python3 -m venv /tmp/lsvenv
    /tmp/lsvenv/bin/pip install torch==2.14.1 torchvision==0.29.1 lazyslide==0.13.0 tiffslide timm

Usage: ``python benchmarks/wsi_vs_lazyslide.py --lazyslide-python /tmp/lsvenv/bin/python
[--size 3072] [--arch vit_base_patch16_224] [--repeats 3] [--out results.json]``
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

sys.path.insert(0, str(Path(__file__).resolve().parent))
from wsi_throughput import make_slide  # noqa: E402 - the benchmarks' shared slide maker

#: The LazySlide side, run in LazySlide's interpreter; prints one JSON line.
_LAZYSLIDE_CHILD = r"""
import json, sys, time
import torch, timm
import lazyslide as zs
from wsidata import open_wsi

slide, arch = sys.argv[1], sys.argv[2]
batch, threads, seed = (int(v) for v in sys.argv[3:6])
torch.set_num_threads(threads)
torch.manual_seed(seed)
model = timm.create_model(arch, pretrained=False, num_classes=0).eval()
# the per-tile transform LazySlide's own models return from get_transform() (torchvision v2)
from torchvision.transforms.v2 import Compose, Normalize, Resize, ToDtype, ToImage
transform = Compose([ToImage(), ToDtype(torch.float32, scale=True), Resize(224, antialias=True),
                     Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))])
start = time.perf_counter()
wsi = open_wsi(slide, reader="tiffslide", store=None)
zs.pp.find_tissues(wsi)
zs.pp.tile_tissues(wsi, 224, mpp=0.5)
zs.tl.feature_extraction(wsi, model=model, transform=transform, model_name=arch, device="cpu",
                         batch_size=batch, num_workers=0, pbar=False)
seconds = time.perf_counter() - start
n = int(len(wsi["tiles"]))
print(json.dumps({"tiles": n, "seconds": seconds, "tiles_per_s": n / seconds,
                  "lazyslide": zs.__version__}))
"""


def timm_encoder(arch: str, seed: int):
    """A stromalens :class:`~stromalens.wsi.encoders.Encoder` around the timm module LazySlide
    gets too (random weights from ``seed``, timm's own mean/std and input size)."""
    import timm
    import torch

    from stromalens.wsi.encoders import Encoder
    from stromalens.wsi.transforms import TileTransform

    torch.manual_seed(seed)
    model = timm.create_model(arch, pretrained=False, num_classes=0).eval()
    cfg = timm.data.resolve_data_config({}, model=model)
    return Encoder(
        name=f"timm:{arch}",
        model=model,
        transforms=TileTransform(cfg["input_size"][-1], cfg["mean"], cfg["std"]),
        precision=torch.float32,
        embed_dim=int(model.num_features),
        weights="random",
        weights_sha256="random",
        image_fn=model,
        config={"arch": arch},
    )


def stromalens_run(
    encoder, slide: Path, out_dir: Path, batch: int, stain: str, workers: int = 1
) -> dict:
    from stromalens.wsi.embed import EmbedSettings, embed_slide

    out = out_dir / f"sl-{time.monotonic_ns()}.h5"
    settings = EmbedSettings(
        batch_size=batch,
        num_workers=workers,
        stain=stain,
        export=False,
        overwrite=True,
        device="cpu",
    )
    start = time.perf_counter()
    summary = embed_slide(slide, out, encoder, settings)
    seconds = time.perf_counter() - start
    out.unlink()
    return {
        "tiles": summary["n_tiles"],
        "seconds": seconds,
        "tiles_per_s": summary["n_tiles"] / seconds,
    }


def lazyslide_run(python: str, slide: Path, arch: str, batch: int, threads: int, seed: int) -> dict:
    proc = subprocess.run(
        [python, "-c", _LAZYSLIDE_CHILD, str(slide), arch, str(batch), str(threads), str(seed)],
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"LazySlide run failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def summarise(runs: list[dict]) -> dict:
    return {
        "tiles": runs[-1]["tiles"],
        "tiles_per_s": round(statistics.median(r["tiles_per_s"] for r in runs), 2),
        "runs_tiles_per_s": [round(r["tiles_per_s"], 2) for r in runs],
    }


def main() -> None:
    import torch

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lazyslide-python", required=True, help="python of LazySlide's venv")
    parser.add_argument("--size", type=int, default=3072, help="slide side (px at 0.5 µm/px)")
    parser.add_argument("--arch", default="vit_base_patch16_224", help="timm architecture")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="stromalens decode workers (0: in-process, as LazySlide's default num_workers=0)",
    )
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    threads = torch.get_num_threads()
    encoder = timm_encoder(args.arch, args.seed)
    runs: dict[str, list[dict]] = {"stromalens": [], "stromalens_no_stain": [], "lazyslide": []}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        slide = make_slide(tmp / f"bench-{args.size}.tiff", args.size)
        for _ in range(args.repeats):
            runs["stromalens"].append(
                stromalens_run(encoder, slide, tmp, args.batch, "macenko", args.workers)
            )
            runs["lazyslide"].append(
                lazyslide_run(
                    args.lazyslide_python, slide, args.arch, args.batch, threads, args.seed
                )
            )
            runs["stromalens_no_stain"].append(
                stromalens_run(encoder, slide, tmp, args.batch, "none", args.workers)
            )
            print(json.dumps({k: v[-1] for k, v in runs.items()}), flush=True)
    results = {
        "slide_px": args.size,
        "arch": args.arch,
        "batch_size": args.batch,
        "torch_threads": threads,
        "stromalens_decode_workers": args.workers,
        "lazyslide_version": runs["lazyslide"][-1]["lazyslide"],
        **{name: summarise(r) for name, r in runs.items()},
    }
    results["ratio_stromalens_over_lazyslide"] = round(
        results["stromalens"]["tiles_per_s"] / results["lazyslide"]["tiles_per_s"], 3
    )
    results["ratio_no_stain_over_lazyslide"] = round(
        results["stromalens_no_stain"]["tiles_per_s"] / results["lazyslide"]["tiles_per_s"], 3
    )
    print(json.dumps(results, indent=2))
    if args.out:
        args.out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
