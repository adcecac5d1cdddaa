"""Peak memory of embedding one slide against slide size, with and without the bounded heap.

Each run embeds one synthetic pyramidal slide (``make_slide`` of ``wsi_throughput.py``: a
rendered slide tiled to size, JPEG-tiled, 0.5 µm/px) with the small synthetic CLIP (random
weights), one decode worker and the default batch, in a fresh interpreter, sampling every 50 ms:

* ``anon_mb``: the main process's anonymous memory (``RssAnon``) plus each decode worker's
  private dirty pages (``smaps_rollup``) — what the run really holds, counted once, and unlike
  PSS not changed by other processes mapping the same libraries;
* ``worker_private_mb``: the decode worker's private dirty pages alone;
* ``pss_mb``: PSS of the process and its workers (the metric of ``wsi_throughput.py``).

``heap`` is ``bounded`` (the pipeline as shipped: :func:`stromalens.wsi.memory.bound_heap`) or
``glibc-default`` (``bound_heap`` disabled: glibc's sliding mmap threshold, issue 4's "before").

Usage: ``python benchmarks/wsi_memory.py [--sizes 4096 12288 20480] [--out memory.json]``
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from wsi_throughput import make_slide  # noqa: E402

_CHILD = """
import json, sys, threading, time
import psutil
import stromalens.wsi.embed as embed
from stromalens.wsi.encoders import get_encoder

slide, out, heap = sys.argv[1], sys.argv[2], sys.argv[3]
if heap == "glibc-default":
    embed.bound_heap = lambda: False

def field(path, name):
    for line in open(path):
        if line.startswith(name):
            return int(line.split()[1]) * 1024
    return 0

me = psutil.Process()
peak = {"anon_mb": 0, "worker_private_mb": 0, "pss_mb": 0}
stop = [False]

def sample():
    while not stop[0]:
        try:
            kids = me.children(True)
            private = sum(field(f"/proc/{k.pid}/smaps_rollup", "Private_Dirty:") for k in kids)
            anon = field(f"/proc/{me.pid}/status", "RssAnon:") + private
            pss = me.memory_full_info().pss + sum(k.memory_full_info().pss for k in kids)
        except (psutil.Error, OSError):
            continue
        for key, value in (("anon_mb", anon), ("worker_private_mb", private), ("pss_mb", pss)):
            peak[key] = max(peak[key], value / 2**20)
        time.sleep(0.05)

enc = get_encoder("synthclip", weights="random")
thread = threading.Thread(target=sample, daemon=True)
thread.start()
start = time.perf_counter()
settings = embed.EmbedSettings(num_workers=1, export=False, overwrite=True)
summary = embed.embed_slide(slide, out, enc, settings)
seconds = time.perf_counter() - start
stop[0] = True
thread.join()
result = {"tiles": summary["n_tiles"], "seconds": round(seconds, 1)}
print(json.dumps({**result, **{k: round(v, 1) for k, v in peak.items()}}))
"""


def peak_memory(slide: Path, out_dir: Path, heap: str) -> dict:
    """Peak memory while embedding ``slide`` in a fresh interpreter (see module doc)."""
    out = out_dir / f"mem-{slide.stem}.h5"
    proc = subprocess.run(
        [sys.executable, "-c", _CHILD, str(slide), str(out), heap],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=(4096, 12288, 20480))
    parser.add_argument("--heaps", nargs="+", default=("glibc-default", "bounded"))
    parser.add_argument("--slides", type=Path, default=None, help="reuse slides in this folder")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        folder = args.slides or tmp
        folder.mkdir(parents=True, exist_ok=True)
        for size in args.sizes:
            path = folder / f"s{size}.tiff"
            if not path.is_file():
                make_slide(path, size)
            for heap in args.heaps:
                row = {"size": f"{size}x{size}", "heap": heap, **peak_memory(path, tmp, heap)}
                rows.append(row)
                print(json.dumps(row), flush=True)
    head = ("slide", "heap", "tiles", "anon MB", "worker MB", "PSS MB")
    print("\n{:>12} {:>14} {:>6} {:>8} {:>10} {:>7}".format(*head))
    for r in rows:
        print(
            f"{r['size']:>12} {r['heap']:>14} {r['tiles']:>6} {r['anon_mb']:>8.0f} "
            f"{r['worker_private_mb']:>10.0f} {r['pss_mb']:>7.0f}"
        )
    if args.out:
        args.out.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
