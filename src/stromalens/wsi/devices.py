"""Where and in which precision the encoder runs: ``--device auto|cpu|cuda|cuda:N|mps`` and
``--precision auto|fp32|bf16|fp16``.

``auto`` picks the first available of CUDA, Apple MPS and the CPU. Precision ``auto`` is the
encoder's recommended precision on an accelerator and fp32 on the CPU, so CPU results never
change with the default. Lower precision runs under :func:`torch.autocast` (the weights stay in
fp32; matrix products run in bf16/fp16), as TRIDENT and timm's inference scripts do; fp16 is
refused on the CPU, where PyTorch's autocast has no fast fp16 path.

With several GPUs on one machine, :func:`worker_device` gives each worker process of a slide
pool its own GPU (worker k → ``cuda:k mod N``, k from :func:`pool_worker_index`), so slides
are sharded over the GPUs. On a Ray cluster, :func:`ray_actor_options` is what each slide actor
asks for (``num_gpus``); Ray then pins each actor to its GPU(s), which it sees as ``cuda:0``.

>>> resolve_device("cpu").type, resolve_precision("auto", resolve_device("cpu"))
('cpu', torch.float32)
"""

from __future__ import annotations

import contextlib

import torch

PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
#: The names of the precisions, by dtype (what a feature store records).
PRECISION_NAMES = {v: k for k, v in PRECISIONS.items()}


def _available() -> list[str]:
    found = ["cpu"]
    if torch.cuda.is_available():
        found += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        found.append("mps")
    return found


def resolve_device(spec: str | None = "auto") -> torch.device:
    """The :class:`torch.device` of ``spec``; a device that is not there is a ``ValueError``
    listing those that are."""
    text = (spec or "auto").strip().lower()
    available = _available()
    if text == "auto":
        first = next((d for d in available if d != "cpu"), "cpu")
        return torch.device("cuda:0" if first.startswith("cuda") else first)
    if text == "cuda":
        text = "cuda:0"
    if text not in available:
        raise ValueError(
            f"device {spec!r} is not available here; available: {', '.join(available)} (or 'auto')"
        )
    return torch.device(text)


def resolve_precision(spec: str | None, device: torch.device, recommended=None) -> torch.dtype:
    """The dtype encoders compute in on ``device``: ``spec`` (``fp32``, ``bf16``, ``fp16``), or
    for ``auto`` the encoder's ``recommended`` dtype on an accelerator and fp32 on the CPU."""
    text = (spec or "auto").strip().lower()
    if text == "auto":
        if device.type == "cpu" or recommended is None:
            return torch.float32
        return recommended
    if text not in PRECISIONS:
        raise ValueError(f"precision must be auto, fp32, bf16 or fp16, got {spec!r}")
    if text == "fp16" and device.type == "cpu":
        raise ValueError("precision fp16 needs a GPU; on the CPU use bf16 or fp32")
    return PRECISIONS[text]


def autocast(device: torch.device, dtype: torch.dtype):
    """A context running ``dtype`` matrix products on ``device``; nothing for fp32."""
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def worker_device(spec: str | None, worker_index: int) -> str:
    """The device of slide-pool worker ``worker_index`` (0-based): with ``cuda``/``auto`` and N
    GPUs, ``cuda:<index mod N>``; any other spec unchanged."""
    text = (spec or "auto").strip().lower()
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if text in ("auto", "cuda") and gpus > 1:
        return f"cuda:{worker_index % gpus}"
    return text


def pool_worker_index() -> int:
    """This process's 0-based index in its process pool (``multiprocessing`` numbers the
    workers it starts 1, 2, …); 0 in the main process and in a Ray actor."""
    import multiprocessing as mp

    return (mp.current_process()._identity or (1,))[0] - 1


def ray_actor_options(
    spec: str | None, gpus_per_worker: float = 1.0, cuda_available: bool | None = None
) -> dict:
    """The ``ray.remote`` resources of one slide actor for device ``spec``.

    ``cuda``/``cuda:N`` (an index is Ray's to choose on a cluster) and ``auto`` where this
    machine has CUDA ask for ``gpus_per_worker`` GPUs (a fraction below 1 shares a GPU between
    actors, e.g. 0.5 for two; above 1 it must be whole); the CPU and MPS ask for none.
    ``cuda_available`` defaults to :func:`torch.cuda.is_available`.

    >>> ray_actor_options("cuda", 0.5)
    {'num_cpus': 1, 'num_gpus': 0.5}
    """
    gpus = float(gpus_per_worker)
    if not (gpus > 0 and (gpus <= 1 or gpus.is_integer())):
        raise ValueError(
            "gpus_per_worker must be a fraction in (0, 1] or a whole number, "
            f"got {gpus_per_worker!r}"
        )
    text = (spec or "auto").strip().lower()
    if cuda_available is None:
        cuda_available = torch.cuda.is_available()
    wants_gpu = text.startswith("cuda") or (text == "auto" and cuda_available)
    return {"num_cpus": 1, "num_gpus": gpus if wants_gpu else 0}
