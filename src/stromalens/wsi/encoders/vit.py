"""Image-only pathology foundation encoders built with timm or transformers.

Each entry builds the published architecture (timm's ``create_model`` with the keyword arguments
of the model card; transformers' ``Dinov2Model`` for Phikon-v2), loads the user's local weights
strictly and reads the tile vector as the model card does:

==================  =====================================================  =====  ============
id                  architecture (timm)                                    D      pooling
==================  =====================================================  =====  ============
``uni``             ViT-L/16, layer scale                                  1024   class token
``uni2-h``          ViT-H/14 (1536 wide, 24 blocks, SwiGLU), 8 registers   1536   class token
``virchow2``        ViT-H/14 (SwiGLU), 4 registers                         2560   [cls ⊕ mean]
``h-optimus-0/1``   ViT-g/14 DINOv2, 4 registers                           1536   class token
``prov-gigapath``   ViT-g (patch 16, 40 blocks, SwiGLU)                    1536   class token
``phikon-v2``       ViT-L/16 DINOv2 (transformers ``Dinov2Model``)         1024   class token
==================  =====================================================  =====  ============

Virchow2's vector is ``[x_cls ; (1/P) Σ_p x_p]`` over the P patch tokens, the 4 register tokens
excluded (Zimmermann et al. 2024, the paige-ai/Virchow2 model card).

References: Chen RJ et al. Nat Med 2024 (UNI); Zimmermann E et al. arXiv:2408.00738 (Virchow2);
Saillard C et al. 2024 (H-optimus-0, github.com/bioptimus/releases); Xu H et al. Nature 2024
(Prov-GigaPath); Filiot A et al. arXiv:2409.09173 (Phikon-v2). The keyword arguments agree with
TRIDENT's loaders (read for the facts, not copied).
"""

from __future__ import annotations

import inspect

from ..transforms import HOPTIMUS_MEAN, HOPTIMUS_STD, IMAGENET_MEAN, IMAGENET_STD, TileTransform
from .base import Encoder, EncoderInfo, register_encoder
from .weights import (
    WeightsMismatchError,
    load_state_dict,
    load_strict,
    load_transformers_strict,
    read_config,
    weights_spec,
)

_NC_ND = "CC-BY-NC-ND 4.0, gated: non-commercial academic use"


def _swiglu() -> dict:
    import timm
    import torch

    return {"mlp_layer": timm.layers.SwiGLUPacked, "act_layer": torch.nn.SiLU}


#: timm architecture and published keyword arguments of each entry (callables added lazily).
TIMM_MODELS: dict[str, tuple[str, dict, bool]] = {
    # id: (timm architecture, JSON-able kwargs, SwiGLU + SiLU MLP)
    "uni": (
        "vit_large_patch16_224",
        {"img_size": 224, "patch_size": 16, "init_values": 1e-5, "num_classes": 0,
         "dynamic_img_size": True},
        False,
    ),
    "uni2-h": (
        "vit_giant_patch14_224",
        {"img_size": 224, "patch_size": 14, "depth": 24, "num_heads": 24, "init_values": 1e-5,
         "embed_dim": 1536, "mlp_ratio": 2.66667 * 2, "num_classes": 0, "no_embed_class": True,
         "reg_tokens": 8, "dynamic_img_size": True},
        True,
    ),
    "virchow2": (
        "vit_huge_patch14_224",
        {"img_size": 224, "init_values": 1e-5, "num_classes": 0, "reg_tokens": 4,
         "mlp_ratio": 5.3375, "global_pool": "", "dynamic_img_size": True},
        True,
    ),
    "h-optimus-0": (
        "vit_giant_patch14_reg4_dinov2",
        {"img_size": 224, "num_classes": 0, "global_pool": "token", "init_values": 1e-5,
         "dynamic_img_size": False},
        False,
    ),
    "h-optimus-1": (
        "vit_giant_patch14_reg4_dinov2",
        {"img_size": 224, "num_classes": 0, "global_pool": "token", "init_values": 1e-5,
         "dynamic_img_size": False},
        False,
    ),
    "prov-gigapath": (
        "vit_giant_patch14_dinov2",
        {"img_size": 224, "in_chans": 3, "patch_size": 16, "embed_dim": 1536, "depth": 40,
         "num_heads": 24, "init_values": 1e-5, "mlp_ratio": 5.33334, "num_classes": 0},
        False,  # SwiGLU + SiLU come with timm's vit_giant_patch14_dinov2 itself
    ),
    "timm-vit-s-16": ("vit_small_patch16_224", {"num_classes": 0}, False),
    "timm-resnet50": ("resnet50", {"num_classes": 0}, False),
}  # fmt: skip


def timm_kwargs(name: str, depth: int | None = None) -> tuple[str, dict]:
    """The timm architecture and full keyword arguments of entry ``name`` (``depth``: tests)."""
    arch, kwargs, swiglu = TIMM_MODELS[name]
    kwargs = dict(kwargs, **(_swiglu() if swiglu else {}))
    if depth is not None:
        kwargs["depth"] = depth
    return arch, kwargs


def _check_timm_config(weights, arch: str, name: str) -> None:
    """A snapshot's ``config.json`` (timm layout) must name the architecture we build."""
    config = read_config(weights, "config.json")
    if config is not None and config.get("architecture", arch) != arch:
        raise WeightsMismatchError(
            f"{weights}/config.json describes {config['architecture']!r}, but {name!r} is "
            f"{arch!r}: these are not {name} weights"
        )


def pool_cls_mean(tokens, prefix: int):
    """Virchow's tile vector ``[x_cls ; mean_p x_p]`` of tokens (B, N, D), skipping the
    ``prefix`` class and register tokens in the mean: (B, 2D)."""
    import torch

    return torch.cat([tokens[:, 0], tokens[:, prefix:].mean(1)], dim=-1)


def build_timm(info: EncoderInfo, weights, allow_download=False, depth=None, *, transform=None):
    """A timm encoder of entry ``info.id`` with ``weights`` (path, 'random' or 'hub')."""
    import timm
    import torch

    weights = weights_spec(weights, info.id, allow_download, info.hub)
    arch, kwargs = timm_kwargs(info.id, depth)
    if weights == "hub":
        model, sha = timm.create_model(f"hf-hub:{info.hub}", pretrained=True, **kwargs), "hub"
    else:
        model, sha = timm.create_model(arch, pretrained=False, **kwargs), "random"
    if weights not in ("random", "hub"):
        _check_timm_config(weights, arch, info.id)
        state, sha = load_state_dict(weights)
        if info.hub is None or info.hub.startswith("timm/"):
            # timm's ImageNet checkpoints carry a classifier the feature extractor drops
            state = {k: v for k, v in state.items() if not k.startswith(("head.", "fc."))}
        load_strict(model, state, str(weights))
    model.eval()
    if kwargs.get("global_pool") == "":  # Virchow2: tokens out, pooled here
        prefix = int(model.num_prefix_tokens)

        def image_fn(x):
            return pool_cls_mean(model(x), prefix)  # (B, 2D)
    else:
        image_fn = model  # (B, D)
    return Encoder(
        name=info.id,
        model=model,
        transforms=transform or TileTransform(info.input_px, info.mean, info.std),
        precision=getattr(torch, _DTYPES[info.precision]),
        embed_dim=info.embed_dim,
        weights=str(weights),
        weights_sha256=sha if sha != "hub" else f"hub:{info.hub}",
        image_fn=image_fn,
        config={"arch": arch},
    )


_DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


def _info(id, dim, arch, pooling, licence, hub, precision, mean=IMAGENET_MEAN, std=IMAGENET_STD,
          reference=""):  # fmt: skip
    return EncoderInfo(id=id, embed_dim=dim, has_text=False, input_px=224, mpp=0.5, mean=mean,
                       std=std, architecture=arch, pooling=pooling, licence=licence, hub=hub,
                       precision=precision, reference=reference)  # fmt: skip


TIMM_INFOS = [
    _info("uni", 1024, "ViT-L/16 (timm vit_large_patch16_224)", "class token", _NC_ND,
          "MahmoodLab/UNI", "fp16", reference="huggingface.co/MahmoodLab/UNI"),
    _info("uni2-h", 1536, "ViT-H/14, 1536 wide, 24 blocks, SwiGLU, 8 registers", "class token",
          _NC_ND, "MahmoodLab/UNI2-h", "bf16", reference="huggingface.co/MahmoodLab/UNI2-h"),
    _info("virchow2", 2560, "ViT-H/14, SwiGLU, 4 registers", "class token ⊕ mean patch token",
          "CC-BY-NC-ND 4.0, gated", "paige-ai/Virchow2", "fp16",
          reference="huggingface.co/paige-ai/Virchow2"),
    _info("h-optimus-0", 1536, "ViT-g/14 DINOv2, 4 registers", "class token", "Apache-2.0",
          "bioptimus/H-optimus-0", "fp16", HOPTIMUS_MEAN, HOPTIMUS_STD,
          reference="huggingface.co/bioptimus/H-optimus-0"),
    _info("h-optimus-1", 1536, "ViT-g/14 DINOv2, 4 registers", "class token",
          "gated; non-commercial (see the model card)", "bioptimus/H-optimus-1", "fp16",
          HOPTIMUS_MEAN, HOPTIMUS_STD, reference="huggingface.co/bioptimus/H-optimus-1"),
    _info("prov-gigapath", 1536, "ViT-g, patch 16, 40 blocks, SwiGLU (tile encoder)",
          "class token", "Apache-2.0, gated", "prov-gigapath/prov-gigapath", "fp16",
          reference="huggingface.co/prov-gigapath/prov-gigapath"),
    _info("timm-vit-s-16", 384, "ViT-S/16 (timm vit_small_patch16_224)", "class token",
          "per checkpoint (timm ImageNet: Apache-2.0)", "timm/vit_small_patch16_224", "fp32"),
    _info("timm-resnet50", 2048, "ResNet-50 (timm resnet50)", "global average", "per checkpoint "
          "(timm ImageNet: Apache-2.0)", "timm/resnet50", "fp32"),
]  # fmt: skip
#: Prov-GigaPath's published preprocessing: resize to 256 (bicubic), centre-crop 224.
_TRANSFORMS = {
    "prov-gigapath": lambda i: TileTransform(
        224, i.mean, i.std, resize_px=256, interpolation="bicubic"
    ),  # fmt: skip
}


def _timm_entry(info: EncoderInfo) -> None:
    @register_encoder(info)
    def _build(weights=None, allow_download=False, depth=None) -> Encoder:
        transform = _TRANSFORMS[info.id](info) if info.id in _TRANSFORMS else None
        return build_timm(info, weights, allow_download, depth, transform=transform)


for _i in TIMM_INFOS:
    _timm_entry(_i)


# --------------------------------------------------------------------------- Phikon-v2
#: Phikon-v2's published ``config.json`` (a transformers ``Dinov2Model``, ViT-L/16).
PHIKON_V2_CONFIG = {
    "hidden_size": 1024,
    "num_hidden_layers": 24,
    "num_attention_heads": 16,
    "mlp_ratio": 4,
    "patch_size": 16,
    "image_size": 224,
    "layerscale_value": 1e-5,
    "layer_norm_eps": 1e-6,
    "qkv_bias": True,
    "use_swiglu_ffn": False,
}


@register_encoder(
    EncoderInfo(
        id="phikon-v2", embed_dim=1024, has_text=False, input_px=224, mpp=0.5,
        mean=IMAGENET_MEAN, std=IMAGENET_STD,
        architecture="ViT-L/16 DINOv2 (transformers Dinov2Model)", pooling="class token",
        licence="Owkin non-commercial licence", hub="owkin/phikon-v2", precision="fp32",
        reference="huggingface.co/owkin/phikon-v2",
    )
)  # fmt: skip
def _phikon_v2(weights=None, allow_download=False, depth=None) -> Encoder:
    """Phikon-v2 (Filiot et al. 2024): ``last_hidden_state[:, 0]`` of a ``Dinov2Model``.

    ``weights`` is its snapshot folder (``config.json`` + ``model.safetensors``), loaded by
    transformers (which maps its published key names) and refused if any key does not fit.
    """
    import torch
    from transformers import Dinov2Config, Dinov2Model

    weights = weights_spec(weights, "phikon-v2", allow_download, "owkin/phikon-v2")
    config = read_config(weights, "config.json") if weights not in ("random", "hub") else None
    if config is not None and config.get("model_type", "dinov2") != "dinov2":
        raise WeightsMismatchError(
            f"{weights}/config.json is a {config['model_type']!r} model, not Phikon-v2's dinov2"
        )
    accepted = inspect.signature(Dinov2Config.__init__).parameters
    settings = dict(PHIKON_V2_CONFIG, **{k: v for k, v in (config or {}).items() if k in accepted})
    if depth is not None:
        settings["num_hidden_layers"] = depth
    if weights == "hub":
        model, sha = Dinov2Model.from_pretrained("owkin/phikon-v2"), "hub:owkin/phikon-v2"
    elif weights == "random":
        model, sha = Dinov2Model(Dinov2Config(**settings)), "random"
    else:
        config = Dinov2Config(**settings)
        model, sha = load_transformers_strict(Dinov2Model, weights, config, "phikon-v2")
    model.eval()
    return Encoder(
        name="phikon-v2",
        model=model,
        transforms=TileTransform(224, IMAGENET_MEAN, IMAGENET_STD),
        precision=torch.float32,
        embed_dim=int(model.config.hidden_size),
        weights=str(weights),
        weights_sha256=sha,
        image_fn=lambda x: model(pixel_values=x).last_hidden_state[:, 0],  # (B, D)
        config={"arch": "Dinov2Model", **settings},
    )
