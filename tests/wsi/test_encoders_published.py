"""Every foundation encoder against its reference library, on random weights in the published
layout (key names and per-block shapes). The transformers are built one block deep (``_depth``)
so the default tier stays light; the full-depth key sets and parameter counts are checked on
``torch.device("meta")`` (no memory), and ``-m slow`` builds the full models."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from stromalens.wsi.encoders import (
    WEIGHTS_ENV,
    WeightsMismatchError,
    encoder_info,
    find_local_weights,
    get_encoder,
    list_infos,
)
from stromalens.wsi.encoders.vit import TIMM_MODELS, pool_cls_mean, timm_kwargs

#: Published depth and parameter count (millions) of each timm foundation model: model cards
#: (UNI 0.3B, UNI2-h 681M, Virchow2 632M, H-optimus-0 1.1B, Prov-GigaPath 1.1B).
PUBLISHED = {
    "uni": (24, 303),
    "uni2-h": (24, 681),
    "virchow2": (32, 631),
    "h-optimus-0": (40, 1134),
    "h-optimus-1": (40, 1134),
    "prov-gigapath": (40, 1134),
}
FOUNDATION = sorted(PUBLISHED)


def _tile(size=224, n=2, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 255, (n, size, size, 3), dtype=np.uint8)


def _torchvision_reference(tiles, info, resize=None, interpolation="bilinear"):
    """torchvision's Resize → CenterCrop → Normalize on the same uint8 tiles (tensors)."""
    from torchvision.transforms import v2

    mode = getattr(v2.InterpolationMode, interpolation.upper())
    pipeline = v2.Compose(
        [
            v2.ToDtype(torch.float32, scale=True),
            v2.Resize(resize or info.input_px, interpolation=mode, antialias=True),
            v2.CenterCrop(info.input_px),
            v2.Normalize(info.mean, info.std),
        ]
    )
    return pipeline(torch.as_tensor(tiles).permute(0, 3, 1, 2))


def _timm_snapshot(tmp_path, name, depth=1):
    """A timm snapshot folder (config.json + model.safetensors) of random weights."""
    import timm
    from safetensors.torch import save_file

    arch, json_kwargs, _ = TIMM_MODELS[name]
    _, kwargs = timm_kwargs(name, depth)
    model = timm.create_model(arch, pretrained=False, **kwargs)
    folder = tmp_path / name
    folder.mkdir()
    info = encoder_info(name)
    config = {
        "architecture": arch,
        "num_classes": 0,
        "model_args": dict(json_kwargs, depth=depth),
        "pretrained_cfg": {"input_size": [3, 224, 224], "mean": info.mean, "std": info.std},
    }
    (folder / "config.json").write_text(json.dumps(config))
    save_file(
        {k: v.contiguous() for k, v in model.state_dict().items()}, folder / "model.safetensors"
    )
    return folder, model


@pytest.mark.parametrize("name", FOUNDATION)
def test_timm_foundation_model_equals_timms_own_local_loader(tmp_path, name):
    """Reference: ``timm.create_model("local-dir:…", pretrained=True)`` — timm reading the same
    snapshot folder itself — pooled as the model card says."""
    import timm

    folder, _ = _timm_snapshot(tmp_path, name)
    info = encoder_info(name)
    ours = get_encoder(name, weights=folder, _depth=1)
    _, kwargs = timm_kwargs(name)
    callables = {k: v for k, v in kwargs.items() if callable(v)}  # not JSON: passed by hand
    reference = timm.create_model(f"local-dir:{folder}", pretrained=True, **callables).eval()
    tiles = _tile()
    resize = 256 if name == "prov-gigapath" else None
    interp = "bicubic" if name == "prov-gigapath" else "bilinear"
    x = _torchvision_reference(tiles, info, resize, interp)
    assert torch.allclose(ours.transforms(tiles), x, atol=1e-4)
    with torch.inference_mode():
        expected = reference(x)
        if name == "virchow2":  # model card: cat(class token, mean of output[:, 5:])
            expected = torch.cat([expected[:, 0], expected[:, 5:].mean(1)], dim=-1)
    got = ours.encode_images(tiles)
    assert got.shape == (2, info.embed_dim)
    assert torch.allclose(got, expected, atol=1e-4, rtol=1e-4)
    assert ours.weights_sha256 and ours.info is info


@pytest.mark.parametrize("name", FOUNDATION)
def test_full_depth_architecture_has_the_published_size(name):
    """On the meta device (no memory): the published depth and parameter count, and the
    one-block model has the same per-block keys and shapes."""
    import timm

    arch, kwargs = timm_kwargs(name)
    with torch.device("meta"):
        full = timm.create_model(arch, pretrained=False, **kwargs)
        small = timm.create_model(arch, pretrained=False, **timm_kwargs(name, 1)[1])
    depth, millions = PUBLISHED[name]
    assert len(full.blocks) == depth
    assert abs(sum(p.numel() for p in full.parameters()) / 1e6 - millions) / millions < 0.01
    full_shapes = {k: tuple(v.shape) for k, v in full.state_dict().items()}
    for key, value in small.state_dict().items():
        assert full_shapes[key] == tuple(value.shape), key


def test_virchow2_pooling_skips_the_register_tokens():
    tokens = torch.arange(2 * 7 * 3, dtype=torch.float32).view(2, 7, 3)  # cls, 4 reg, 2 patches
    pooled = pool_cls_mean(tokens, prefix=5)
    assert torch.equal(pooled[:, :3], tokens[:, 0])
    assert torch.equal(pooled[:, 3:], tokens[:, 5:].mean(1))
    model = get_encoder("virchow2", weights="random", _depth=1).model
    assert model.num_prefix_tokens == 5  # class token + 4 registers


@pytest.mark.parametrize("defect", ["missing", "unexpected", "architecture"])
def test_a_checkpoint_that_does_not_fit_is_refused_naming_the_keys(tmp_path, defect):
    from safetensors.torch import load_file, save_file

    folder, _ = _timm_snapshot(tmp_path, "uni")
    state = load_file(folder / "model.safetensors")
    if defect == "missing":
        del state["blocks.0.ls1.gamma"]
        match = r"1 missing key\(s\): blocks\.0\.ls1\.gamma"
    elif defect == "unexpected":
        state["head.extra.weight"] = torch.zeros(3)
        match = r"1 unexpected key\(s\): head\.extra\.weight"
    else:
        config = json.loads((folder / "config.json").read_text())
        (folder / "config.json").write_text(json.dumps(dict(config, architecture="resnet50")))
        match = "describes 'resnet50'"
    save_file(state, folder / "model.safetensors")
    with pytest.raises(WeightsMismatchError, match=match):
        get_encoder("uni", weights=folder, _depth=1)


def test_phikon_v2_equals_transformers_from_pretrained(tmp_path):
    """Reference: ``Dinov2Model.from_pretrained(folder).last_hidden_state[:, 0]`` (model card)."""
    from transformers import Dinov2Model

    random = get_encoder("phikon-v2", weights="random", _depth=1)
    folder = tmp_path / "phikon-v2"
    random.model.save_pretrained(folder)
    ours = get_encoder("phikon-v2", weights=folder)
    reference = Dinov2Model.from_pretrained(folder).eval()
    tiles = _tile()
    with torch.inference_mode():
        expected = reference(pixel_values=ours.transforms(tiles)).last_hidden_state[:, 0]
    got = ours.encode_images(tiles)
    assert got.shape == (2, 1024)
    assert torch.allclose(got, expected, atol=1e-5)
    with torch.device("meta"):
        from transformers import Dinov2Config

        from stromalens.wsi.encoders.vit import PHIKON_V2_CONFIG

        full = Dinov2Model(Dinov2Config(**PHIKON_V2_CONFIG))
    assert abs(sum(p.numel() for p in full.parameters()) / 1e6 - 303) < 3  # ViT-L: 0.3B


def _open_clip_snapshot(tmp_path, quick_gelu: bool, layers=1):
    """An open_clip snapshot (open_clip_config.json + open_clip_model.safetensors), ViT-B/16
    blocks, ``layers`` deep, random weights."""
    import open_clip
    from safetensors.torch import save_file

    cfg = {
        "embed_dim": 512,
        "quick_gelu": quick_gelu,
        "vision_cfg": {"image_size": 224, "layers": layers, "width": 768, "patch_size": 16},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 512, "heads": 8,
                     "layers": layers},
    }  # fmt: skip
    folder = tmp_path / f"clip-{quick_gelu}"
    folder.mkdir()
    preprocess = {"mean": [0.48145466, 0.4578275, 0.40821073],
                  "std": [0.26862954, 0.26130258, 0.27577711]}  # fmt: skip
    (folder / "open_clip_config.json").write_text(
        json.dumps({"model_cfg": cfg, "preprocess_cfg": preprocess})
    )
    model = open_clip.CLIP(**cfg)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, folder / "open_clip_model.safetensors")
    return folder, cfg, state


@pytest.mark.parametrize("name", ["openai-clip-vit-b-16", "quiltnet-b-32", "openclip-vit-b-16"])
def test_open_clip_snapshot_is_built_from_its_config_and_equals_open_clip(tmp_path, name):
    """Reference: ``open_clip.create_model("local-dir:…")`` (open_clip loading the folder)."""
    import open_clip

    folder, _, _ = _open_clip_snapshot(tmp_path, quick_gelu=True)
    ours = get_encoder(name, weights=folder)
    reference = open_clip.create_model(f"local-dir:{folder}").eval()
    tiles = _tile()
    with torch.inference_mode():
        expected = reference.encode_image(ours.transforms(tiles))
        text = reference.encode_text(open_clip.tokenize(["dense fibrous stroma"]))
    assert torch.allclose(ours.encode_images(tiles), expected, atol=1e-5)
    assert torch.allclose(ours.encode_texts(["dense fibrous stroma"]), text, atol=1e-5)


def test_quick_gelu_config_is_honoured(tmp_path):
    """The same weights under GELU give other features: the config decides, as in open_clip."""
    import open_clip

    folder, cfg, state = _open_clip_snapshot(tmp_path, quick_gelu=True)
    ours = get_encoder("openai-clip-vit-b-16", weights=folder)
    gelu = open_clip.CLIP(**dict(cfg, quick_gelu=False)).eval()
    gelu.load_state_dict(state)
    tiles = _tile()
    with torch.inference_mode():
        plain = gelu.encode_image(ours.transforms(tiles))
    assert not torch.allclose(ours.encode_images(tiles), plain, atol=1e-3)
    # a single checkpoint file of openai-clip-vit-b-16 is built with QuickGELU too
    single = get_encoder("openai-clip-vit-b-16", weights="random")
    act = single.model.visual.transformer.resblocks[0].mlp.gelu
    assert isinstance(act, open_clip.transformer.QuickGELU)


def test_plip_equals_transformers_clipmodel(tmp_path):
    """Reference: ``CLIPModel.from_pretrained(folder).get_image_features`` on the same tile."""
    from transformers import CLIPModel

    random = get_encoder("plip", weights="random", _depth=1)
    folder = tmp_path / "plip"
    random.model.save_pretrained(folder)
    ours = get_encoder("plip", weights=folder)
    reference = CLIPModel.from_pretrained(folder).eval()
    tiles = _tile()
    with torch.inference_mode():
        out = reference.get_image_features(pixel_values=ours.transforms(tiles))
        expected = out if isinstance(out, torch.Tensor) else out.pooler_output
    assert torch.allclose(ours.encode_images(tiles), expected, atol=1e-5)
    assert ours.embed_dim == 512 and random.model.config.vision_config.hidden_size == 768


def test_conch_loads_its_layout_strictly_and_pools_as_published(tmp_path):
    """CONCH at one block: strict round trip of a single checkpoint file; the image vector
    recomputed from the published equation z = LN(AttnPool(ViT(x))) · W with torch's own
    ``nn.MultiheadAttention`` (sequence-first, as CoCa's pooler) on the same weights."""
    import timm
    from torch import nn

    random = get_encoder("conch", weights="random", _depth=1)
    file = tmp_path / "pytorch_model.bin"
    state = {k: v.contiguous() for k, v in random.model.state_dict().items()}
    torch.save(state, file)
    ours = get_encoder("conch", weights=file, _depth=1)
    tiles = _tile(448)
    x = _torchvision_reference(tiles, encoder_info("conch"), interpolation="bicubic")
    trunk = timm.create_model("vit_base_patch16_224", img_size=448, depth=1, num_classes=0)
    trunk.load_state_dict({k[13:]: v for k, v in state.items() if k.startswith("visual.trunk.")})
    attn = nn.MultiheadAttention(512, 8, kdim=768, vdim=768)
    prefix = "visual.attn_pool_contrast.attn."
    attn.load_state_dict({k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)})

    def ln(t, name):
        p = f"visual.{name}."
        return nn.functional.layer_norm(t, t.shape[-1:], state[p + "weight"], state[p + "bias"])

    with torch.inference_mode():
        tokens = ln(trunk.eval().forward_features(x), "attn_pool_contrast.ln_k")  # (B, N, 768)
        query = ln(state["visual.attn_pool_contrast.query"], "attn_pool_contrast.ln_q")
        q = query[:, None].expand(-1, len(x), -1)  # (1, B, 512)
        pooled = attn.eval()(q, tokens.transpose(0, 1), tokens.transpose(0, 1))[0][0]
        expected = ln(pooled, "ln_contrast") @ state["visual.proj_contrast"]
    assert torch.allclose(ours.encode_images(tiles), expected, atol=1e-4)
    assert ours.encode_images(tiles).shape == (2, 512) and ours.transforms.size == 448
    with pytest.raises(ValueError, match="tokenizer file"):
        ours.encode_texts(["tumour"])
    # full depth: the 641 tensors of CONCH's checkpoint (counted on CONCH's own CoCa class)
    from stromalens.wsi.encoders.conch import CONCH_CONFIG, _conch_module

    with torch.device("meta"):
        full = _conch_module(CONCH_CONFIG, None)
    assert len(full.state_dict()) == 641
    assert tuple(full.state_dict()["text.positional_embedding"].shape) == (128, 768)


def test_image_only_encoders_refuse_text_in_one_clear_line():
    encoder = get_encoder("uni", weights="random", _depth=1)
    with pytest.raises(ValueError, match="image-only") as err:
        encoder.encode_texts(["stroma"])
    assert "\n" not in str(err.value) and "conch" in str(err.value)


def test_metadata_records_are_complete():
    for info in list_infos():
        assert info.embed_dim > 0 and info.input_px in (224, 448) and info.mpp == 0.5
        assert info.licence and info.precision in ("fp32", "bf16", "fp16")
    widths = {i.id: i.embed_dim for i in list_infos()}
    assert widths["virchow2"] == 2560 and widths["uni"] == 1024 and widths["conch"] == 512
    assert encoder_info("conch").input_px == 448 and encoder_info("conch").has_text


def test_local_weights_are_found_under_the_weights_folder(tmp_path, monkeypatch):
    folder, _ = _timm_snapshot(tmp_path, "uni")
    monkeypatch.setenv(WEIGHTS_ENV, str(tmp_path))
    assert find_local_weights("uni") == folder
    assert find_local_weights("virchow2") is None
    assert get_encoder("uni", _depth=1).weights == str(folder)


@pytest.mark.slow
@pytest.mark.parametrize("name", FOUNDATION + ["phikon-v2", "conch"])
def test_full_size_models_run_forward(name):
    encoder = get_encoder(name, weights="random")
    size = encoder.info.input_px
    assert encoder.encode_images(_tile(size, n=1)).shape == (1, encoder.info.embed_dim)


def test_cli_lists_encoders_and_the_local_weights_found(tmp_path, monkeypatch):
    from rich.console import Console
    from typer.testing import CliRunner

    from stromalens.cli import app

    # a wide console whatever the terminal (or xdist worker) this runs under: paths in full
    monkeypatch.setattr("stromalens.cli.wsi.console", Console(width=300))

    folder, _ = _timm_snapshot(tmp_path, "uni")
    result = CliRunner().invoke(
        app, ["wsi", "encoders", "--weights-dir", str(tmp_path)], env={"COLUMNS": "300"}
    )
    assert result.exit_code == 0, result.output
    rows = {line.split("│")[1].strip(): line for line in result.output.splitlines() if "│" in line}
    assert "2560" in rows["virchow2"] and "448" in rows["conch"]
    assert str(folder) in rows["uni"] and rows["virchow2"].rstrip(" │").endswith("no")
