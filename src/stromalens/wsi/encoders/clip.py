"""CLIP encoders with a text tower: open_clip models (synthclip, OpenAI CLIP, QuiltNet) and PLIP.

A local open_clip snapshot folder is built from its own ``open_clip_config.json`` (open_clip's
``create_model("local-dir:…", load_weights=False)``), so a config with ``"quick_gelu": true``
(OpenAI-derived weights) runs with QuickGELU, ``x·σ(1.702x)``, as it was trained — plain GELU
would give other features without any error. A single checkpoint file is built as the entry's
published architecture (``ViT-B-16-quickgelu`` for ``openai-clip-vit-b-16``). The image
embedding is the projected, not L2-normalised, CLIP image feature.

References: Radford A et al. ICML 2021 (CLIP); Ilharco G et al. OpenCLIP 2021; Ikezogwo W et al.
NeurIPS 2023 (Quilt-1M, QuiltNet); Huang Z et al. Nat Med 2023 (PLIP).
"""

from __future__ import annotations

import json
from pathlib import Path

from ..transforms import OPENAI_MEAN, OPENAI_STD, TileTransform
from .base import Encoder, EncoderInfo, register_encoder
from .weights import load_state_dict, load_strict, read_config, resolve_weights, weights_spec


def _open_clip_model(arch, weights, hub):
    """(model, tokenizer name, context length or None, preprocess config) for ``arch``."""
    import open_clip

    if isinstance(arch, dict):  # synthclip's own small configuration
        model = open_clip.CLIP(**{k: arch[k] for k in ("embed_dim", "vision_cfg", "text_cfg")})
        size = arch["vision_cfg"]["image_size"]
        return model, "ViT-B-32", arch["text_cfg"].get("context_length", 77), {"size": size}
    if weights == "hub":
        model = open_clip.create_model(f"hf-hub:{hub}")
        return model, f"hf-hub:{hub}", None, dict(model.visual.preprocess_cfg)
    config = read_config(weights, "open_clip_config.json") if weights != "random" else None
    if config is not None:
        source = f"local-dir:{Path(weights).expanduser()}"
        model = open_clip.create_model(source, load_weights=False)
        preprocess = dict(config.get("preprocess_cfg", {}))
        return model, source, None, preprocess
    return open_clip.create_model(arch, pretrained=None), arch, None, {}


def build_open_clip(
    name: str,
    arch: str | dict,
    weights,
    *,
    allow_download: bool = False,
    hub: str | None = None,
    mean=OPENAI_MEAN,
    std=OPENAI_STD,
    interpolation: str = "bicubic",
) -> Encoder:
    """An open_clip encoder: architecture ``arch`` (a registered name or a config dict), or the
    ``open_clip_config.json`` of a snapshot folder ``weights``; weights loaded strictly."""
    import open_clip
    import torch

    weights = weights_spec(weights, name, allow_download, hub)
    model, tokenizer_name, context, preprocess = _open_clip_model(arch, weights, hub)
    sha = "random" if weights != "hub" else f"hub:{hub}"
    if weights not in ("random", "hub"):
        state, sha = load_state_dict(weights)
        load_strict(model, state, str(weights))
        weights = str(resolve_weights(weights))
    model.eval()
    tokenizer = open_clip.get_tokenizer(tokenizer_name, context_length=context)
    size = preprocess.get("size") or model.visual.image_size
    size = size[0] if isinstance(size, tuple | list) else size
    transform = TileTransform(
        size, preprocess.get("mean", mean), preprocess.get("std", std), interpolation=interpolation
    )
    with torch.inference_mode():
        dim = int(model.encode_image(torch.zeros(1, 3, size, size)).shape[-1])
    return Encoder(
        name=name,
        model=model,
        transforms=transform,
        precision=torch.float32,
        embed_dim=dim,
        weights=str(weights),
        weights_sha256=sha,
        image_fn=model.encode_image,  # (B, D)
        text_fn=lambda texts: model.encode_text(tokenizer(texts)),  # (N, D)
        config={"arch": arch if isinstance(arch, str) else dict(arch)},
    )


def default_synthclip_weights() -> Path:
    """Where ``stromalens wsi train-clip`` caches the synthetic CLIP (``$STROMALENS_CACHE``)."""
    from ..synthclip import default_checkpoint

    return default_checkpoint()


def _clip_info(id, dim, arch, licence, hub, mpp=0.5, reference="", px=224):  # fmt: skip
    return EncoderInfo(id=id, embed_dim=dim, has_text=True, input_px=px, mpp=mpp,
                       mean=OPENAI_MEAN, std=OPENAI_STD, architecture=arch,
                       pooling="CLIP projection", licence=licence, hub=hub, precision="fp16",
                       reference=reference)  # fmt: skip


@register_encoder(
    EncoderInfo(
        id="synthclip", embed_dim=128, has_text=True, input_px=224, mpp=0.5, mean=OPENAI_MEAN,
        std=OPENAI_STD, architecture="small open_clip CLIP trained on synthetic tiles",
        pooling="CLIP projection", licence="stromalens (trained locally)", hub=None,
    )
)  # fmt: skip
def _synthclip(weights=None, allow_download=False) -> Encoder:
    from ..synthclip import SYNTHCLIP_CONFIG

    config = SYNTHCLIP_CONFIG
    if weights is None:
        weights = default_synthclip_weights()
        if not Path(weights).is_file():
            raise FileNotFoundError(
                f"no synthetic CLIP at {weights}; run `stromalens wsi train-clip` first"
            )
    if weights != "random":
        sidecar = resolve_weights(weights).with_suffix(".json")
        if sidecar.is_file():
            config = json.loads(sidecar.read_text(encoding="utf-8"))["model"]
    # trained with bilinear resizing (synthclip.py), so embedded with it
    return build_open_clip("synthclip", config, weights, interpolation="bilinear")


#: open_clip entries: id → (architecture for a single checkpoint file, metadata).
OPEN_CLIP_ENTRIES = {
    "openclip-vit-b-32": ("ViT-B-32", _clip_info(
        "openclip-vit-b-32", 512, "open_clip ViT-B/32", "per checkpoint", None)),
    "openclip-vit-b-16": ("ViT-B-16", _clip_info(
        "openclip-vit-b-16", 512, "open_clip ViT-B/16", "per checkpoint", None)),
    "openclip-vit-l-14": ("ViT-L-14", _clip_info(
        "openclip-vit-l-14", 768, "open_clip ViT-L/14", "per checkpoint", None)),
    "openai-clip-vit-b-16": ("ViT-B-16-quickgelu", _clip_info(
        "openai-clip-vit-b-16", 512, "OpenAI CLIP ViT-B/16, QuickGELU", "MIT",
        "timm/vit_base_patch16_clip_224.openai", reference="github.com/openai/CLIP")),
    "quiltnet-b-32": ("ViT-B-32", _clip_info(
        "quiltnet-b-32", 512, "open_clip ViT-B/32 fine-tuned on Quilt-1M", "MIT",
        "wisdomik/QuiltNet-B-32", reference="huggingface.co/wisdomik/QuiltNet-B-32")),
}  # fmt: skip


def _open_clip_entry(name: str, arch: str, info: EncoderInfo) -> None:
    @register_encoder(info)
    def _build(weights=None, allow_download=False) -> Encoder:
        return build_open_clip(name, arch, weights, allow_download=allow_download, hub=info.hub)


for _name, (_arch, _info) in OPEN_CLIP_ENTRIES.items():
    _open_clip_entry(_name, _arch, _info)
