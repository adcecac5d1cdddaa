"""CONCH (Lu et al., Nat Med 2024): a CoCa model built here from timm and open_clip parts.

CONCH's checkpoint (``pytorch_model.bin`` of MahmoodLab/CONCH, gated) holds a CoCa whose image
tower is a timm ViT-B/16 at 448 px (``visual.trunk``) followed by two attentional poolers
(one query for the contrastive embedding, 256 for captioning), a text transformer with an
appended class token (``text``) and a multimodal decoder (``text_decoder``). The image
embedding is

    z = LN(AttnPool_1(ViT(x))) · W_contrast        (512-d, not L2-normalised)

and the text embedding is the class token after the final LayerNorm, projected to 512. The
parts are timm's ``VisionTransformer`` and open_clip's ``AttentionalPooler``,
``TextTransformer`` and ``MultimodalTransformer``, whose parameter names and shapes are the
checkpoint's, so it loads strictly; the CONCH package itself (CC-BY-NC-ND) is neither needed
nor copied. Text needs CONCH's tokenizer file, which the user brings beside the weights
(``conch_byte_level_bpe_uncased.json`` or ``tokenizer.json``).
"""

from __future__ import annotations

from pathlib import Path

from ..transforms import OPENAI_MEAN, OPENAI_STD, TileTransform
from .base import Encoder, EncoderInfo, register_encoder
from .weights import load_state_dict, load_strict, resolve_weights, weights_spec

#: CONCH's published configuration (conch_ViT-B-16.json of the CONCH repository).
CONCH_CONFIG = {
    "embed_dim": 512,
    "embed_dim_caption": 768,
    "image_size": 448,
    "patch_size": 16,
    "vision_width": 768,
    "vision_layers": 12,
    "vision_heads": 12,
    "attn_pooler_heads": 8,
    "n_queries_caption": 256,
    "context_length": 128,  # the last position holds the class token
    "vocab_size": 32007,
    "text_width": 768,
    "text_heads": 12,
    "text_layers": 12,
}
TOKENIZER_FILES = ("conch_byte_level_bpe_uncased.json", "tokenizer.json")


def _conch_module(cfg: dict, depth: int | None):
    import torch
    from open_clip.transformer import AttentionalPooler, MultimodalTransformer, TextTransformer
    from timm.models.vision_transformer import VisionTransformer
    from torch import nn

    class Visual(nn.Module):
        def __init__(self):
            super().__init__()
            width, dim = cfg["vision_width"], cfg["embed_dim"]
            self.trunk = VisionTransformer(
                img_size=cfg["image_size"], patch_size=cfg["patch_size"], embed_dim=width,
                depth=depth or cfg["vision_layers"], num_heads=cfg["vision_heads"],
                num_classes=0, dynamic_img_size=True,
            )  # fmt: skip
            self.attn_pool_contrast = AttentionalPooler(dim, width, cfg["attn_pooler_heads"], 1)
            self.ln_contrast = nn.LayerNorm(dim)
            self.proj_contrast = nn.Parameter(width**-0.5 * torch.randn(dim, dim))
            caption = cfg["embed_dim_caption"]
            self.attn_pool_caption = AttentionalPooler(
                caption, width, cfg["attn_pooler_heads"], cfg["n_queries_caption"]
            )
            self.ln_caption = nn.LayerNorm(caption)

        def forward(self, x):  # (B, 3, S, S) → (B, 512)
            tokens = self.trunk.forward_features(x)  # (B, 1 + N, W), final norm applied
            pooled = self.ln_contrast(self.attn_pool_contrast(tokens)[:, 0])  # (B, 512)
            return pooled @ self.proj_contrast

    class Conch(nn.Module):
        def __init__(self):
            super().__init__()
            self.visual = Visual()
            layers = depth or cfg["text_layers"]
            common = dict(width=cfg["text_width"], heads=cfg["text_heads"], layers=layers)
            # context_length − 1 tokens + the appended class token = context_length positions
            self.text = TextTransformer(
                context_length=cfg["context_length"] - 1, vocab_size=cfg["vocab_size"],
                output_dim=cfg["embed_dim"], embed_cls=True, pad_id=0, **common,
            )  # fmt: skip
            self.text_decoder = MultimodalTransformer(
                context_length=cfg["context_length"], output_dim=cfg["vocab_size"], **common
            )
            self.logit_scale = nn.Parameter(torch.ones([]))

        def encode_image(self, x):
            return self.visual(x)

        def encode_text(self, ids):  # (N, context_length) with a trailing placeholder
            out = self.text(ids[:, :-1])
            return out[0] if isinstance(out, tuple) else out

    return Conch()


def _tokenize_fn(weights):
    """CONCH's tokenisation: 127 tokens (start, text, end, padding) + a placeholder for the
    class token; ``None`` if no tokenizer file lies beside the weights."""
    if weights == "random":
        return None
    folder = Path(weights).expanduser()
    folder = folder if folder.is_dir() else folder.parent
    file = next((folder / n for n in TOKENIZER_FILES if (folder / n).is_file()), None)
    if file is None:
        return None
    import torch.nn.functional as F
    from transformers import PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast(
        tokenizer_file=str(file),
        bos_token="<start_of_text>",
        eos_token="<end_of_text>",
        pad_token="<pad>",
    )

    def tokenize(texts):
        length = CONCH_CONFIG["context_length"] - 1
        ids = tok(texts, max_length=length, padding="max_length", truncation=True,
                  return_tensors="pt", return_token_type_ids=False)["input_ids"]  # fmt: skip
        return F.pad(ids, (0, 1), value=tok.pad_token_id)  # (N, 128)

    return tokenize


@register_encoder(
    EncoderInfo(
        id="conch", embed_dim=512, has_text=True, input_px=448, mpp=0.5, mean=OPENAI_MEAN,
        std=OPENAI_STD, architecture="CoCa: ViT-B/16 at 448 px + attentional pooler; text tower",
        pooling="attentional pooler (1 query) → LayerNorm → projection",
        licence="CC-BY-NC-ND 4.0, gated: non-commercial academic use", hub="MahmoodLab/CONCH",
        precision="fp32", reference="huggingface.co/MahmoodLab/CONCH",
    )
)  # fmt: skip
def _conch(weights=None, allow_download=False, depth=None) -> Encoder:
    import torch

    weights = weights_spec(weights, "conch", allow_download, None)
    model, sha = _conch_module(CONCH_CONFIG, depth), "random"
    if weights != "random":
        state, sha = load_state_dict(weights)
        load_strict(model, state, str(weights))
        weights = str(resolve_weights(weights))
    model.eval()
    tokenize = _tokenize_fn(weights)

    def text_fn(texts):
        if tokenize is None:
            raise ValueError(
                "CONCH's text tower needs its tokenizer file beside the weights: "
                f"{' or '.join(TOKENIZER_FILES)} (from the CONCH repository)"
            )
        return model.encode_text(tokenize(texts))  # (N, 512)

    return Encoder(
        name="conch",
        model=model,
        # CONCH's eval transform: resize to 448 (bicubic), centre crop, OpenAI normalisation
        transforms=TileTransform(448, OPENAI_MEAN, OPENAI_STD, interpolation="bicubic"),
        precision=torch.float32,
        embed_dim=CONCH_CONFIG["embed_dim"],
        weights=str(weights),
        weights_sha256=sha,
        image_fn=model.encode_image,
        text_fn=text_fn,
        config=dict(CONCH_CONFIG),
    )
