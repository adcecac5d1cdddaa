"""Device and precision selection (CPU here: every accelerator path is refused clearly)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from stromalens.wsi.devices import autocast, resolve_device, resolve_precision, worker_device

NO_GPU = not torch.cuda.is_available()


def test_auto_is_the_cpu_without_an_accelerator_and_fp32_there():
    if not NO_GPU:
        pytest.skip("a GPU is present: auto picks it")
    device = resolve_device("auto")
    assert device.type == "cpu"
    assert resolve_precision("auto", device, recommended=torch.bfloat16) == torch.float32


@pytest.mark.skipif(not NO_GPU, reason="needs a machine without CUDA")
@pytest.mark.parametrize("spec", ["cuda", "cuda:3"])
def test_a_missing_device_is_one_error_naming_those_there(spec):
    with pytest.raises(ValueError, match="not available here; available: cpu"):
        resolve_device(spec)


def test_bad_names_are_refused():
    with pytest.raises(ValueError, match="not available"):
        resolve_device("tpu")
    with pytest.raises(ValueError, match="auto, fp32, bf16 or fp16"):
        resolve_precision("fp8", torch.device("cpu"))
    with pytest.raises(ValueError, match="fp16 needs a GPU"):
        resolve_precision("fp16", torch.device("cpu"))


def test_explicit_precisions_and_autocast():
    cpu = torch.device("cpu")
    assert resolve_precision("bf16", cpu) == torch.bfloat16
    assert resolve_precision("fp32", cpu) == torch.float32
    layer = torch.nn.Linear(8, 4)
    x = torch.randn(3, 8)
    with autocast(cpu, torch.float32):
        assert layer(x).dtype == torch.float32  # fp32: no autocast at all
    with autocast(cpu, torch.bfloat16):
        assert layer(x).dtype == torch.bfloat16


def test_workers_are_sharded_over_the_gpus_only_when_there_are_several():
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    shards = [worker_device("auto", k) for k in range(4)]
    if gpus > 1:
        assert shards == [f"cuda:{k % gpus}" for k in range(4)]
    else:
        assert shards == ["auto"] * 4
    assert worker_device("cpu", 3) == "cpu" and worker_device("cuda:1", 0) == "cuda:1"


def test_bf16_on_the_cpu_gives_features_close_to_fp32_and_its_own_store(
    tmp_path, synthetic_slides, random_synthclip
):
    """Precision is part of a store's identity: changing it recomputes the slide."""
    from stromalens.wsi.embed import EmbedSettings, embed_slide
    from stromalens.wsi.store import read_slide

    encoder, tiny_slide = random_synthclip, synthetic_slides[0]
    out = tmp_path / "s.h5"
    fp32 = EmbedSettings(stain="none", export=False, num_workers=0)
    assert embed_slide(tiny_slide, out, encoder, fp32)["status"] == "done"
    a = read_slide(out)
    bf16 = EmbedSettings(stain="none", export=False, num_workers=0, precision="bf16")
    second = embed_slide(tiny_slide, out, encoder, bf16)
    assert second["status"] == "done" and "precision" in second["recomputed"]
    b = read_slide(out)
    assert a.attrs["precision"] == "fp32" and b.attrs["precision"] == "bf16"
    cos = np.sum(a.features * b.features, 1) / (
        np.linalg.norm(a.features, axis=1) * np.linalg.norm(b.features, axis=1)
    )
    assert cos.min() > 0.98
    assert embed_slide(tiny_slide, out, encoder, bf16)["status"] == "skipped"


@pytest.mark.parametrize("stain", ["macenko", "none"])
def test_preprocessing_on_the_device_gives_the_workers_features(
    tmp_path, synthetic_slides, random_synthclip, stain
):
    """Macenko + transforms after the copy (``stain_on_device=True``, here on the CPU: the same
    code a GPU runs) equal the decode workers' path; the store records which ran, and the
    choice is not part of its identity."""
    from stromalens.wsi.embed import EmbedSettings, embed_slide
    from stromalens.wsi.store import read_slide

    common = {"stain": stain, "export": False, "batch_size": 16, "device": "cpu"}
    workers = EmbedSettings(num_workers=1, **common)
    device = EmbedSettings(num_workers=1, stain_on_device=True, **common)
    a = embed_slide(synthetic_slides[2], tmp_path / "a.h5", random_synthclip, workers)
    b = embed_slide(synthetic_slides[2], tmp_path / "b.h5", random_synthclip, device)
    fa, fb = read_slide(a["path"]), read_slide(b["path"])
    assert np.array_equal(fa.coords, fb.coords) and len(fa.coords) > 0
    assert np.allclose(fa.features, fb.features, atol=1e-5)
    assert fa.attrs["stain_on_device"] is False
    assert fb.attrs["stain_on_device"] is True and fb.attrs["device"] == "cpu"
    assert fb.attrs["precision"] == "fp32"
    assert (
        embed_slide(synthetic_slides[2], tmp_path / "a.h5", random_synthclip, device)["status"]
        == "skipped"
    )


def test_stain_on_device_defaults_to_the_accelerator_only():
    from stromalens.wsi.embed import EmbedSettings

    auto = EmbedSettings()
    assert auto.preprocess_on_device(torch.device("cpu")) is False
    assert auto.preprocess_on_device(torch.device("cuda:0")) is True
    assert EmbedSettings(stain_on_device=False).preprocess_on_device(torch.device("cuda")) is False
    with pytest.raises(TypeError, match="stain_on_device"):
        EmbedSettings(stain_on_device="yes")


# ------------------------------------------------------------------ sharding slides over GPUs
def _pretend_gpus(monkeypatch, n: int) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: n > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: n)


@pytest.mark.parametrize("gpus", [0, 1, 2, 3, 8])
def test_worker_device_shards_workers_round_robin_over_the_gpus(monkeypatch, gpus):
    _pretend_gpus(monkeypatch, gpus)
    shards = [worker_device("cuda", k) for k in range(10)]
    if gpus > 1:
        assert shards == [f"cuda:{k % gpus}" for k in range(10)]
        # every GPU gets ⌊10 / N⌋ or ⌈10 / N⌉ workers
        counts = [shards.count(f"cuda:{g}") for g in range(gpus)]
        assert max(counts) - min(counts) <= 1
    else:  # one GPU (or none): nothing to shard, the spec is resolved later as it is
        assert shards == ["cuda"] * 10
    assert [worker_device("auto", k) for k in range(3)] == (
        [f"cuda:{k % gpus}" for k in range(3)] if gpus > 1 else ["auto"] * 3
    )
    # an explicit device, or the CPU, is never overridden
    assert worker_device("cuda:1", 5) == "cuda:1" and worker_device("cpu", 5) == "cpu"


def _device_of_this_pool_worker(barrier) -> str:
    """In a pool worker: the device it would embed on with two GPUs present (patched here, in
    the worker process only), after waiting until the other worker holds an item too."""
    from stromalens.wsi import devices

    torch.cuda.is_available = lambda: True
    torch.cuda.device_count = lambda: 2
    barrier.wait(timeout=120)  # two items in flight at once: two distinct processes
    return devices.worker_device("cuda", devices.pool_worker_index())


def test_a_pool_of_two_workers_puts_each_on_its_own_gpu():
    import multiprocessing

    from stromalens.executors import run_items

    with multiprocessing.get_context("forkserver").Manager() as manager:
        barrier = manager.Barrier(2)
        results = run_items(
            _device_of_this_pool_worker,
            [("a", barrier), ("b", barrier)],
            workers=2,
            progress=False,
            mp_context="forkserver",
        )
    assert all(r.ok for r in results), [r.error for r in results]
    assert sorted(r.value for r in results) == ["cuda:0", "cuda:1"]


def test_the_main_process_is_worker_zero():
    from stromalens.wsi.devices import pool_worker_index

    assert pool_worker_index() == 0
