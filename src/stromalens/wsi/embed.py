"""Slide → tiles → QC → Macenko → frozen encoder → one HDF5 per slide, overlapped and resumable.

Per slide: the tissue mask and tile grid are planned from the thumbnail (:mod:`.tiling`); the
Macenko normaliser is fitted once on an evenly spread sample of tiles that passed QC; then worker
processes (a torch ``DataLoader`` over read blocks) decode each block, compute every tile's QC,
normalise the kept tiles and apply the encoder's transforms, while the main process runs the
encoder on fixed-size batches. Decoding, QC, normalisation and encoding therefore overlap.

The store (:mod:`.store`) is written atomically under ``<out>/<encoder>/<tiling>/``; on re-run a
complete store is skipped only if it records this slide file, encoder, weights, tiling and stain
settings (:func:`store_identity`), and is otherwise recomputed with the reason logged; a slide
that fails (unreadable, truncated, no µm/px) is reported and the others go on; a slide without
tiles is written with zero rows and reported loudly.

Example
-------
>>> enc = get_encoder("synthclip")                                  # doctest: +SKIP
>>> embed_slide("P0001.tiff", "features/P0001.h5", enc)
{'slide': 'P0001', 'status': 'done', 'n_tiles': 31, ...}
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .. import __version__
from ..executors import is_disk_full
from ..logs import event, get_logger
from .memory import bound_heap
from .reader import open_slide
from .stain import MacenkoNormalizer, StainReference, reference_from_image
from .store import (
    SlideFeatures,
    empty_qc,
    feature_dir,
    feature_path,
    is_complete,
    provenance,
    slide_identity,
    store_matches,
    write_slide,
)
from .tiling import (
    QC_FIELDS,
    TilePlan,
    TilingSpec,
    iter_blocks,
    plan_tiles,
    qc_pass,
    sample_qc_tiles,
)

log = get_logger("wsi.embed")


@dataclass
class EmbedSettings:
    """How slides are tiled, normalised and embedded."""

    tiling: TilingSpec = field(default_factory=TilingSpec)
    batch_size: int = 64
    num_workers: int = 1
    stain: str = "macenko"
    stain_reference: str | None = None
    stain_sample_tiles: int = 64
    overwrite: bool = False
    export: bool = True
    # where the encoder runs and in which precision (wsi/devices.py); the CPU default is fp32
    device: str = "auto"
    precision: str = "auto"
    # Macenko and the encoder's tile transforms on the encoder's device, on whole batches after
    # the host-to-device copy (uint8 crosses the bus: a quarter of the float32 bytes). None:
    # yes on an accelerator; no on the CPU, where the decode workers do it beside the encoder.
    # Not part of a store's identity: both paths agree within one grey level (test_stain.py).
    stain_on_device: bool | None = None

    def __post_init__(self) -> None:
        if self.stain not in ("macenko", "none"):
            raise ValueError(f"stain must be 'macenko' or 'none', got {self.stain!r}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be ≥ 1, got {self.batch_size!r}")
        if self.num_workers < 0:
            raise ValueError(f"num_workers must be ≥ 0, got {self.num_workers!r}")
        if self.stain_sample_tiles < 1:
            raise ValueError(f"stain_sample_tiles must be ≥ 1, got {self.stain_sample_tiles!r}")
        if self.stain_on_device is not None and not isinstance(self.stain_on_device, bool):
            raise TypeError(
                f"stain_on_device must be True, False or None (auto), got {self.stain_on_device!r}"
            )

    def preprocess_on_device(self, device) -> bool:
        """Whether Macenko and the tile transforms run on ``device`` (the ``None`` rule)."""
        if self.stain_on_device is None:
            return device.type != "cpu"
        return self.stain_on_device


def _stream_class():
    import torch

    class TileStream(torch.utils.data.IterableDataset):
        """Blocks of one slide: (indices, kept mask, qc, transformed kept tiles)."""

        def __init__(self, path, mpp, plan, normaliser, transform, spec):
            self.path, self.mpp, self.plan = path, mpp, plan
            self.normaliser, self.transform, self.spec = normaliser, transform, spec

        def __iter__(self):
            info = torch.utils.data.get_worker_info()
            shard = (info.id, info.num_workers) if info is not None else (0, 1)
            with open_slide(self.path, mpp=self.mpp) as slide:
                for indices, tiles, qc in iter_blocks(slide, self.plan, shard):
                    kept = qc_pass(qc, self.spec)
                    chosen = tiles[kept]  # (k, T, T, 3) uint8
                    if self.normaliser is not None and len(chosen):
                        chosen = self.normaliser.transform(chosen)
                    if self.transform is not None and len(chosen):
                        chosen = self.transform(chosen)  # (k, 3, S, S) float
                    else:
                        chosen = torch.as_tensor(np.ascontiguousarray(chosen))
                    yield indices, kept, qc, chosen

    return TileStream


def _worker_init(_):
    import os

    import torch

    from ..executors import die_with_parent

    die_with_parent()  # a decode worker ends with the process it feeds, kill -9 included
    torch.set_num_threads(1)
    bound_heap()  # inherited when forked; a spawned worker sets it itself
    # Decoding yields to the encoder: on a machine with as many encoder threads as cores, an
    # equal-priority decoder preempts one OpenMP thread and stalls every parallel op.
    os.nice(int(os.environ.get("STROMALENS_DECODE_NICE", "10")))


#: Pixels the Macenko fit sees at most (~100 MB of float64 temporaries); tiles are subsampled on
#: a regular grid beyond that, which leaves its percentiles unchanged to well under 1 %.
STAIN_FIT_PIXELS = 1_000_000


def _fit_stain(slide, plan: TilePlan, settings: EmbedSettings):
    """The slide's Macenko normaliser (Macenko et al. 2009), fitted on tiles that passed QC.

    Up to ``stain_sample_tiles`` tiles passing every QC rule (tissue, blur, pen, black, white),
    spread evenly over the slide, from at most four times as many reads
    (:func:`.tiling.sample_qc_tiles`): pen, fold, glass or out-of-focus tiles never set the
    stain matrix. The pixels are subsampled to at most :data:`STAIN_FIT_PIXELS`.
    """
    if settings.stain == "none" or len(plan) == 0:
        return None, {"method": "none"}
    reference = reference_from_image(settings.stain_reference) if settings.stain_reference else None
    _, sample = sample_qc_tiles(slide, plan, settings.stain_sample_tiles)
    if len(sample) == 0:
        reason = "no tile of the stain sample passed QC"
        event(log, "stain fit skipped; tiles left unnormalised", logging.WARNING, error=reason)
        return None, {"method": "none", "reason": reason}
    step = max(1, int(np.ceil(np.sqrt(sample[..., 0].size / STAIN_FIT_PIXELS))))
    try:
        normaliser = MacenkoNormalizer(reference).fit(sample[:, ::step, ::step])
    except ValueError as exc:
        event(log, "stain fit failed; tiles left unnormalised", logging.WARNING, error=str(exc))
        return None, {"method": "none", "reason": str(exc)}
    return normaliser, normaliser.params() | {"sample_tiles": int(len(sample))}


class _BatchEncoder:
    """Fixed-size encoder batches from the stream's per-block chunks, features kept by row.

    Chunks arrive as (k, 3, S, S) float tiles transformed in the decode workers or, with
    ``on_device``, as (k, T, T, 3) uint8 tiles that are copied to ``device`` first and there
    Macenko-normalised (``normaliser``, if any) and transformed, whole batches at a time.
    """

    def __init__(self, encoder, device, dtype, batch_size: int, on_device: bool, normaliser):
        self.encoder, self.device, self.dtype = encoder, device, dtype
        self.batch_size, self.on_device, self.normaliser = batch_size, on_device, normaliser
        self.pending, self.pending_idx = [], []
        self.parts, self.part_idx = [], []

    def add(self, chunk, ids: np.ndarray) -> None:
        """Queue one block's kept tiles (rows ``ids`` of the plan); encode full batches."""
        self.pending.append(chunk)
        self.pending_idx.append(ids)
        self.flush(force=False)

    def flush(self, force: bool) -> None:
        """Encode every full batch queued (with ``force``, the last partial one too)."""
        import torch

        total = sum(len(p) for p in self.pending)
        while total >= self.batch_size or (force and total):
            x = torch.cat(self.pending)
            ids = np.concatenate(self.pending_idx)
            take = min(self.batch_size, len(x))
            self._encode(x[:take], ids[:take])
            self.pending, self.pending_idx = [x[take:]], [ids[take:]]
            total -= take

    def _encode(self, chunk, ids: np.ndarray) -> None:
        import torch

        from .devices import autocast

        batch = chunk.to(self.device, non_blocking=True)
        with torch.inference_mode():
            if self.on_device:  # outside autocast: Macenko and the transforms stay in fp32
                if self.normaliser is not None:
                    batch = self.normaliser.transform(batch)  # (B, T, T, 3) uint8
                batch = self.encoder.transforms(batch)  # (B, 3, S, S) fp32
            with autocast(self.device, self.dtype):
                y = self.encoder.image_fn(batch).float()  # (B, D)
        self.parts.append(y.cpu().numpy())
        self.part_idx.append(ids)

    def features(self, order_idx: np.ndarray) -> np.ndarray:
        """(n, D) features of the kept rows ``order_idx`` (sorted), parts freed as copied."""
        # np.zeros maps pages lazily, and each batch's part is freed once copied in: the
        # features exist once (plus one batch), not three times (parts, their concatenation
        # and the result would be ~600 MB for a 100k² slide at D = 512).
        features = np.zeros((len(order_idx), self.encoder.embed_dim), np.float32)
        while self.parts:  # any order: each part carries its rows
            part, ids = self.parts.pop(), self.part_idx.pop()
            features[np.searchsorted(order_idx, ids)] = part
            del part
        return features


def store_identity(
    slide_path, encoder, settings: EmbedSettings, mpp: float | None, precision: str = "fp32"
) -> dict:
    """The attributes a store must record to be reused for this slide and these settings
    (:func:`~stromalens.wsi.store.store_matches`): the slide file's identity, the encoder id and
    weights sha256, the encoder's compute precision, the whole tiling, the stain settings and
    the µm/px override. Decoding, device and export settings (batch size, workers, GPU index,
    GeoJSON) do not change the features and are left out.
    """
    return {
        **slide_identity(slide_path),
        "encoder": encoder.name if encoder is not None else "none",
        "weights_sha256": encoder.weights_sha256 if encoder is not None else "",
        "precision": precision if encoder is not None else "",
        "tiling": asdict(settings.tiling),
        "stain_settings": _stain_settings(settings),
        "mpp_override": float(mpp) if mpp is not None else "",
    }


def _stain_settings(settings: EmbedSettings) -> dict:
    """Every ``stain*`` setting, with the reference image's sha256 (``none``: nothing else)."""
    if settings.stain == "none":
        return {"stain": "none"}
    # where the transform runs changes no feature beyond float rounding: not an identity
    out = {
        k: v
        for k, v in asdict(settings).items()
        if k.startswith("stain") and k != "stain_on_device"
    }
    reference = settings.stain_reference
    if reference and Path(reference).is_file():
        from ..hashing import sha256_file

        out["stain_reference_sha256"] = sha256_file(reference)
    return out


def embed_slide(
    slide_path: Path | str,
    out_path: Path | str,
    encoder=None,
    settings: EmbedSettings | None = None,
    *,
    mpp: float | None = None,
    progress=None,
) -> dict:
    """Tile, QC, normalise and (if ``encoder`` is given) embed one slide into ``out_path``.

    Returns a summary dict: ``status`` is ``done``, ``skipped`` (a complete store recording
    this slide, encoder, weights, tiling and stain settings: :func:`store_identity`) or ``empty``
    (no tile passed; the store holds zero rows); a stale store is recomputed, its reason logged
    and returned as ``recomputed``. Errors propagate (the cohort driver isolates them).
    """
    from .devices import PRECISION_NAMES, resolve_device, resolve_precision

    settings = settings or EmbedSettings()
    slide_path, out_path = Path(slide_path), Path(out_path)
    slide_id = out_path.stem
    bound_heap()  # per-block arrays mapped and unmapped, not fragmenting the heap
    device = resolve_device(settings.device)
    dtype = resolve_precision(
        settings.precision, device, encoder.precision if encoder is not None else None
    )
    identity = store_identity(slide_path, encoder, settings, mpp, PRECISION_NAMES[dtype])
    stale = None
    if not settings.overwrite and is_complete(out_path, require_features=encoder is not None):
        stale = store_matches(out_path, identity)
        if stale is None:
            return {"slide": slide_id, "status": "skipped", "path": str(out_path)}
        event(log, "stale store recomputed", slide=slide_id, reason=stale)
    started = time.perf_counter()
    spec = settings.tiling
    with open_slide(slide_path, mpp=mpp) as slide:
        plan = plan_tiles(slide, spec)
        normaliser, stain_params = _fit_stain(slide, plan, settings)
        geometry = _slide_geometry(slide, plan)
    thumbnail, mask = plan.thumbnail, plan.mask
    plan.thumbnail = None  # not shipped to the workers

    n = len(plan)
    on_device = encoder is not None and settings.preprocess_on_device(device)
    batches = None
    if encoder is not None:
        encoder.model.to(device)
        batches = _BatchEncoder(encoder, device, dtype, settings.batch_size, on_device, normaliser)
    # the workers normalise and transform only where the device does not
    worker_norm = normaliser if encoder is not None and not on_device else None
    loader = _loader(slide_path, mpp, plan, settings, device, worker_norm, encoder, on_device)
    qc, kept_all = _consume(loader, n, batches, progress, slide_id)
    order_idx = np.flatnonzero(kept_all)
    features = batches.features(order_idx) if batches is not None else None
    qc_out = empty_qc() if n == 0 else dict(qc)
    if n:
        qc_out["coords"] = plan.coords
        qc_out["kept"] = kept_all
    attrs = {
        "slide": str(slide_path),
        "slide_id": slide_id,
        **geometry,
        "target_mpp": float(spec.target_mpp),
        "tile_px": int(spec.tile_px),
        "stride_px": int(spec.stride_px),
        "weights": encoder.weights if encoder is not None else "",
        "stain": stain_params,
        "n_candidates": int(n),
        **provenance(device, on_device),  # recorded, never compared (store.PROVENANCE_KEYS)
        **identity,  # encoder, weights_sha256, tiling, stain_settings, the slide file
    }
    write_slide(
        out_path,
        SlideFeatures(coords=plan.coords[order_idx], features=features, qc=qc_out, attrs=attrs),
    )
    if settings.export:
        from .export import write_geojson, write_qc_thumbnail

        write_geojson(out_path.with_suffix(".geojson"), plan, mask, kept_all, qc)
        write_qc_thumbnail(out_path.with_suffix(".qc.png"), thumbnail, plan, mask, kept_all)
    return _summary(slide_id, out_path, len(order_idx), plan, stale, started)


def _summary(slide_id, out_path, n_tiles: int, plan: TilePlan, stale, started: float) -> dict:
    """What :func:`embed_slide` returns; a slide without tiles is logged loudly."""
    if n_tiles == 0:
        event(
            log,
            "SLIDE YIELDED ZERO TILES",
            logging.WARNING,
            slide=slide_id,
            candidates=len(plan),
            grid=plan.n_grid,
        )
    return {
        "slide": slide_id,
        "status": "done" if n_tiles else "empty",
        "path": str(out_path),
        "n_tiles": int(n_tiles),
        "n_candidates": int(len(plan)),
        "seconds": round(time.perf_counter() - started, 2),
        **({"recomputed": stale} if stale else {}),
    }


def _slide_geometry(slide, plan: TilePlan) -> dict:
    """The store attributes describing the slide and the level its tiles are read from."""
    return {
        "backend": slide.backend,
        "mpp": float(slide.mpp),
        "mpp_source": slide.mpp_source,
        "level": int(plan.level),
        "level_mpp": float(plan.level_mpp),
        "read_px": int(plan.read_px),
        "tile_level0_px": float(plan.tile_level0_px),
        "dimensions": list(slide.dimensions),
        "level_dim": list(slide.level_dimensions[plan.level]),
    }


def _loader(slide_path, mpp, plan, settings, device, normaliser, encoder, on_device):
    """The decode workers' ``DataLoader`` over the slide's blocks (None without tiles). They
    Macenko-normalise (``normaliser``) and transform the kept tiles unless ``on_device``, in
    which case they ship them as uint8 for the device to do both."""
    import torch

    if len(plan) == 0:
        return None
    transforms = encoder.transforms if encoder is not None and not on_device else None
    stream = _stream_class()(slide_path, mpp, plan, normaliser, transforms, settings.tiling)
    workers = min(settings.num_workers, len(plan.blocks()))
    return torch.utils.data.DataLoader(
        stream,
        batch_size=None,
        num_workers=workers,
        worker_init_fn=_worker_init if workers else None,
        prefetch_factor=2 if workers else None,
        pin_memory=device.type == "cuda",  # page-locked batches copy to the GPU async
    )


def _consume(loader, n: int, batches, progress, slide_id: str):
    """Run the stream: every candidate's QC and kept flag, kept tiles fed to ``batches``."""
    qc = {k: np.zeros(n, np.float32) for k in QC_FIELDS}
    kept_all = np.zeros(n, bool)
    if loader is None:
        return qc, kept_all
    task = progress.add_task(slide_id, total=n) if progress is not None else None
    for indices, kept, block_qc, chosen in loader:
        indices = np.asarray(indices)
        kept = np.asarray(kept)
        for key in QC_FIELDS:
            qc[key][indices] = np.asarray(block_qc[key])
        kept_all[indices] = kept
        if batches is not None and len(chosen):
            batches.add(chosen, indices[kept])
        if task is not None:
            progress.advance(task, len(indices))
    if batches is not None:
        batches.flush(force=True)
    if task is not None:
        progress.remove_task(task)
    return qc, kept_all


# --------------------------------------------------------------------------- cohorts
@dataclass(frozen=True)
class SlideJob:
    """One slide of a cohort run."""

    slide_id: str
    path: Path
    mpp: float | None = None


def jobs_from_manifest(manifest: Path | str) -> list[SlideJob]:
    """Slides of a cohort manifest, one job per slide (:attr:`~stromalens.cohort.Cohort.slides`:
    a patient may have several; patients without a slide are left out)."""
    from ..cohort import load_manifest

    jobs = []
    for slide in load_manifest(manifest).slides.itertuples(index=False):
        mpp = float(slide.mpp) if np.isfinite(slide.mpp) else None
        jobs.append(SlideJob(str(slide.slide_id), Path(slide.path), mpp))
    return jobs


_ENCODER_CACHE: dict = {}


def _cached_encoder(name, weights, allow_download):
    from .encoders import get_encoder

    key = (name, str(weights), allow_download)
    if key not in _ENCODER_CACHE:
        _ENCODER_CACHE.clear()
        _ENCODER_CACHE[key] = get_encoder(name, weights, allow_download=allow_download)
    return _ENCODER_CACHE[key]


def _embed_item(arg: dict) -> dict:
    """One slide in a worker process (module level, so pools and Ray can pickle it)."""
    encoder = None
    if arg["encoder"]:
        import torch

        torch.set_num_threads(max(1, arg["threads"]))
        encoder = _cached_encoder(arg["encoder"], arg["weights"], arg["allow_download"])
    settings = arg["settings"]
    if encoder is not None:
        from dataclasses import replace

        from .devices import pool_worker_index, worker_device

        # pool worker k takes GPU k mod N; a Ray actor sees only its own GPU(s) (index 0)
        settings = replace(settings, device=worker_device(settings.device, pool_worker_index()))
    return embed_slide(arg["path"], arg["out"], encoder, settings, mpp=arg["mpp"])


def embed_cohort(
    jobs: list[SlideJob],
    out_dir: Path | str,
    encoder_name: str | None = "synthclip",
    weights=None,
    settings: EmbedSettings | None = None,
    *,
    executor: str = "local",
    workers: int | None = None,
    allow_download: bool = False,
    progress: bool = True,
    gpus_per_worker: float = 1.0,
) -> list[dict]:
    """Embed (or, with ``encoder_name=None``, only tile) every slide of ``jobs`` into ``out_dir``.

    ``executor='local'`` runs slides one after another in this process (the encoder loaded
    once, decode workers feeding it); ``'process'`` and ``'ray'`` spread slides over worker
    processes (:func:`stromalens.executors.run_items`), each loading the encoder once. With
    ``'process'`` and several GPUs, worker k embeds on GPU k mod N; with ``'ray'`` each slide
    actor asks Ray for ``gpus_per_worker`` GPUs when the device is CUDA
    (:func:`~stromalens.wsi.devices.ray_actor_options`; 0 on the CPU) and embeds on the GPU
    Ray gives it. Failures are isolated: each slide's summary carries ``status='failed'`` and
    the error.

    The stores go to ``feature_dir(out_dir, encoder_name, settings.tiling)``
    (``<out_dir>/<encoder>/<tiling>/<slide_id>.h5``, with the run's ``run.json``).
    """
    from ..executors import default_workers, run_items

    settings = settings or EmbedSettings()
    if executor not in ("local", "process", "ray"):
        raise ValueError(f"executor must be 'local', 'process' or 'ray', got {executor!r}")
    out_dir = feature_dir(out_dir, encoder_name, settings.tiling)
    out_dir.mkdir(parents=True, exist_ok=True)
    results: list[dict] = []
    if executor == "local":
        encoder = _cached_encoder(encoder_name, weights, allow_download) if encoder_name else None
        bar = _progress(progress)
        with bar:
            task = bar.add_task("slides", total=len(jobs))
            for job in jobs:
                try:
                    summary = embed_slide(
                        job.path,
                        feature_path(out_dir, job.slide_id),
                        encoder,
                        settings,
                        mpp=job.mpp,
                        progress=bar if progress else None,
                    )
                except Exception as exc:  # noqa: BLE001 - one bad slide must not stop the cohort
                    if is_disk_full(exc):
                        raise  # not this slide's fault: the stage stops, its work is kept
                    summary = {
                        "slide": job.slide_id,
                        "status": "failed",
                        "error": f"{type(exc).__name__}: {exc}",
                    }
                    event(log, "slide failed", logging.ERROR, slide=job.slide_id, error=str(exc))
                results.append(summary)
                bar.advance(task)
    else:
        workers = workers or default_workers()
        threads = max(1, default_workers() // workers)
        inner = EmbedSettings(**{**asdict(settings), "tiling": settings.tiling, "num_workers": 0})
        ray_options = None
        if executor == "ray":
            from .devices import ray_actor_options

            ray_options = ray_actor_options(settings.device, gpus_per_worker)
            if ray_options["num_gpus"]:  # Ray picks the GPU; the actor sees it as cuda:0
                inner.device = "cuda"
        items = [
            (
                job.slide_id,
                {
                    "path": job.path,
                    "out": feature_path(out_dir, job.slide_id),
                    "mpp": job.mpp,
                    "encoder": encoder_name,
                    "weights": weights,
                    "allow_download": allow_download,
                    "settings": inner,
                    "threads": threads,
                },
            )
            for job in jobs
        ]
        for item in run_items(
            _embed_item,
            items,
            workers=workers,
            description="slides",
            progress=progress,
            executor=executor,
            mp_context="forkserver",
            ray_options=ray_options,
        ):
            if item.ok:
                results.append(item.value)
            else:
                first = item.error.splitlines()[0]
                event(log, "slide failed", logging.ERROR, slide=item.key, error=first)
                results.append({"slide": item.key, "status": "failed", "error": first})
    _write_run_summary(out_dir, results, encoder_name, weights, settings)
    return results


def _write_run_summary(out_dir: Path, results, encoder_name, weights, settings) -> None:
    payload = {
        "encoder": encoder_name,
        "weights": str(weights) if weights is not None else None,
        "settings": {**asdict(settings), "tiling": asdict(settings.tiling)},
        "slides": results,
        "stromalens_version": __version__,
    }
    tmp = out_dir / "run.json.partial"
    tmp.write_text(json.dumps(payload, indent=2, default=str))
    tmp.replace(out_dir / "run.json")


def _progress(enabled: bool):
    from ..executors import progress_bar as make

    return make(enabled)


__all__ = [
    "EmbedSettings",
    "SlideJob",
    "StainReference",
    "embed_cohort",
    "embed_slide",
    "jobs_from_manifest",
    "store_identity",
]
