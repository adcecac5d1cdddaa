"""Encoder registry: ``get_encoder(name, weights=...)`` → (model, transforms, precision).

Every entry builds its published architecture locally and loads the user's weights — a single
checkpoint file or a Hugging Face snapshot folder in the layout it is downloaded in — strictly,
with ``torch.load(weights_only=True)`` or safetensors; the file's sha256 is recorded in every
feature store written with it. Nothing is downloaded unless the caller passes
``allow_download=True`` with ``weights='hub'`` (CLI: ``--allow-download --weights hub``).
``weights="random"`` gives random weights (timing benchmarks, tests). Without ``weights``,
``$STROMALENS_WEIGHTS/<id>`` (a folder or ``<id>.safetensors``/``.bin``/``.pt``) is used.

Modules: :mod:`.base` (the :class:`Encoder` record, :class:`EncoderInfo` metadata, the
registry), :mod:`.weights` (finding, reading and strictly loading weights), :mod:`.clip`
(open_clip CLIPs), :mod:`.plip`, :mod:`.conch`, :mod:`.vit` (timm / transformers image-only
foundation models). ``list_infos()`` gives each entry's feature width, text tower, input size,
µm/px, normalisation, licence note, hub id and recommended precision.

Images enter as uint8 tiles ``(B, H, W, 3)`` (torch or numpy); ``transforms`` turns them into
normalised float ``(B, 3, S, S)`` at the model's input size S.

Example
-------
>>> enc = get_encoder("openclip-vit-b-32", weights="random")   # doctest: +SKIP
>>> model, transforms, precision = enc
>>> feats = enc.encode_images(tiles)                           # (B, 512)
"""

from __future__ import annotations

from ...hashing import sha256_file
from . import clip, conch, plip, vit  # noqa: F401  (each registers its entries)
from .base import (
    Encoder,
    EncoderInfo,
    encoder_info,
    get_encoder,
    list_encoders,
    list_infos,
    register_encoder,
)
from .clip import build_open_clip, default_synthclip_weights
from .weights import (
    WEIGHT_FILES,
    WEIGHTS_ENV,
    WeightsMismatchError,
    find_local_weights,
    load_state_dict,
    resolve_weights,
    weights_root,
)

__all__ = [
    "WEIGHTS_ENV",
    "WEIGHT_FILES",
    "Encoder",
    "EncoderInfo",
    "WeightsMismatchError",
    "build_open_clip",
    "default_synthclip_weights",
    "encoder_info",
    "find_local_weights",
    "get_encoder",
    "list_encoders",
    "list_infos",
    "load_state_dict",
    "register_encoder",
    "resolve_weights",
    "sha256_file",
    "weights_root",
]
