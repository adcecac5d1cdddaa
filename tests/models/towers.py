"""Small open_clip CLIPs and the CoOp text towers built from them (random weights: open_clip's
real ``CLIP`` class and tokenizer, at sizes a test can afford)."""

from __future__ import annotations

import open_clip
import torch

from stromalens.models import TextTower

#: Three targets, three curated prompts each (the shape of the study's banks).
TEXTS = [
    [
        "collagen-rich stroma with many fibroblasts",
        "desmoplastic stroma with dense fibroblasts",
        "cancer-associated fibroblasts in fibrous stroma",
    ],
    [
        "lymphocytes next to fibroblasts",
        "immune cells in contact with stroma",
        "fibroblasts among infiltrating lymphocytes",
    ],
    [
        "tumour, stroma and immune cells mixed",
        "a heterogeneous tile of several compartments",
        "patches of tumour between fibrous stroma",
    ],
]


def tiny_clip(embed_dim: int = 16, quick_gelu: bool = False, layer_scale=None, seed: int = 0):
    """An open_clip ``CLIP`` with a 2-layer, width-32 text transformer (eval mode)."""
    torch.manual_seed(seed)
    text_cfg = {"context_length": 32, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2}
    if layer_scale is not None:
        text_cfg["ls_init_value"] = layer_scale
    vision_cfg = {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 16}
    clip = open_clip.CLIP(embed_dim, vision_cfg, text_cfg, quick_gelu=quick_gelu)
    if layer_scale is not None:  # LayerScale starts at a constant: make it matter
        with torch.no_grad():
            for block in clip.transformer.resblocks:
                block.ls_1.gamma.uniform_(0.5, 1.5)
                block.ls_2.gamma.uniform_(0.5, 1.5)
    return clip.eval()


def tokenizer(clip):
    return open_clip.get_tokenizer("ViT-B-32", context_length=clip.context_length)


def tiny_tower(embed_dim: int = 16, texts=TEXTS, **options) -> TextTower:
    clip = tiny_clip(embed_dim, **options)
    return TextTower.from_open_clip(clip, tokenizer(clip), texts)
