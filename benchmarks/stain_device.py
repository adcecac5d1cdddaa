"""Macenko transform time per 256 tiles: float64 numpy against the batched float32 torch kernel.

Both apply the same fitted normaliser (:class:`stromalens.wsi.stain.MacenkoNormalizer`) to the
same 256 uint8 tiles of 224 px (real H&E from ``shared/data/histology`` when present, else a
synthetic slide), runs alternating (numpy, torch, numpy, …) and medians reported, so machine
load affects both sides alike. Measured:

* ``numpy_s`` — :meth:`~MacenkoNormalizer.transform_numpy` (float64), one thread;
* ``torch_cpu_1thread_s`` — :meth:`~MacenkoNormalizer.transform` on CPU tensors with one
  thread, what each decode worker runs on the CPU path;
* with ``--device cuda``: ``torch_device_s``, the transform where ``stain_on_device`` puts it —
  the uint8 host-to-device copy included, synchronised — next to the copy alone.

Prints one JSON line per measurement and the ratios ``numpy_s / torch_*``.

Usage: ``python benchmarks/stain_device.py [--repeats 5] [--device cpu|cuda] [--tiles 256]``
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np

HISTOLOGY = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "histology"


def load_tiles(n: int, side: int = 224) -> tuple[np.ndarray, str]:
    """``n`` real H&E tiles (the CMU-1 region's tiles, repeated to ``n``), else synthetic."""
    from stromalens.wsi.reader import open_slide

    source = HISTOLOGY / "cmu-1-small-region.svs"
    if not source.is_file():
        import tempfile

        from stromalens.config import SlideConfig, SynthConfig
        from stromalens.synthetic import generate_cohort

        root = Path(tempfile.mkdtemp(prefix="stain-bench-"))
        config = SynthConfig(
            patients=1, seed=0, slide=SlideConfig(width=2048, height=1536), workers=1
        )
        generate_cohort(root, config, progress=False)
        source = sorted((root / "wsi").glob("*.tiff"))[0]
    with open_slide(source) as slide:
        width, height = slide.dimensions
        tiles = [
            slide.read_region((x, y), 0, (side, side))
            for x in range(0, width - side + 1, side)
            for y in range(0, height - side + 1, side)
        ]
    reps = -(-n // len(tiles))
    return np.ascontiguousarray(np.stack(tiles * reps)[:n]), source.name


def _time(fn, *args) -> float:
    start = time.perf_counter()
    fn(*args)
    return time.perf_counter() - start


def measure(tiles: np.ndarray, repeats: int, device: str) -> dict:
    import torch

    from stromalens.wsi.stain import MacenkoNormalizer

    norm = MacenkoNormalizer().fit(tiles[::8])
    host = torch.from_numpy(tiles)
    runs: dict[str, list[float]] = {"numpy_s": [], "torch_cpu_1thread_s": []}
    threads = torch.get_num_threads()
    gpu = torch.device(device) if device != "cpu" else None
    if gpu is not None:
        runs |= {"torch_device_s": [], "copy_only_s": []}
        pinned = host.pin_memory()

        def on_device():
            norm.transform(pinned.to(gpu, non_blocking=True))
            torch.cuda.synchronize(gpu)

        def copy_only():
            pinned.to(gpu, non_blocking=True)
            torch.cuda.synchronize(gpu)

        on_device()  # warm-up: CUDA context, kernels
    norm.transform(host)
    for _ in range(repeats):
        runs["numpy_s"].append(_time(norm.transform_numpy, tiles))
        torch.set_num_threads(1)
        runs["torch_cpu_1thread_s"].append(_time(norm.transform, host))
        torch.set_num_threads(threads)
        if gpu is not None:
            runs["torch_device_s"].append(_time(on_device))
            runs["copy_only_s"].append(_time(copy_only))
    medians = {k: statistics.median(v) for k, v in runs.items()}
    ratios = {f"numpy_over_{k[:-2]}": medians["numpy_s"] / v for k, v in medians.items()}
    ratios.pop("numpy_over_numpy")
    return {
        "tiles": len(tiles),
        "tile_px": int(tiles.shape[1]),
        "device": device,
        **{k: round(v, 4) for k, v in medians.items()},
        **{k: round(v, 2) for k, v in ratios.items()},
        "runs": {k: [round(x, 4) for x in v] for k, v in runs.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiles", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu", help="cpu, or cuda / cuda:N to add the GPU")
    args = parser.parse_args()
    tiles, source = load_tiles(args.tiles)
    result = measure(tiles, args.repeats, args.device)
    print(json.dumps({"source": source, **result}))


if __name__ == "__main__":
    main()
