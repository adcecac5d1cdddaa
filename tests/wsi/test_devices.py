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
