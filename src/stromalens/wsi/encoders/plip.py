"""PLIP (Huang et al., Nat Med 2023): a Hugging Face ``CLIPModel`` (ViT-B/32) fine-tuned on
OpenPath; ``weights`` is its snapshot folder (``config.json`` + ``model.safetensors`` or
``pytorch_model.bin``, tokenizer files optional) and is loaded strictly."""

from __future__ import annotations

from pathlib import Path

from ..transforms import OPENAI_MEAN, OPENAI_STD, TileTransform
from .base import Encoder, EncoderInfo, register_encoder
from .weights import load_transformers_strict, read_config, weights_spec


def _plip_model(weights, depth):
    import transformers

    config = read_config(weights, "config.json") if weights not in ("random", "hub") else None
    if config is not None:
        clip_config = transformers.CLIPConfig.from_pretrained(str(Path(weights).expanduser()))
    else:  # the published ViT-B/32 CLIP configuration (transformers' defaults)
        clip_config = transformers.CLIPConfig()
    if depth is not None:
        clip_config.text_config.num_hidden_layers = depth
        clip_config.vision_config.num_hidden_layers = depth
    return transformers.CLIPModel(clip_config)


def _tokenizer(weights):
    """PLIP's tokenizer from its snapshot; ``None`` if the folder has no tokenizer files."""
    import transformers

    folder = Path(str(weights)).expanduser()
    if weights == "hub":
        return transformers.CLIPTokenizer.from_pretrained("vinid/plip")
    if folder.is_dir() and (folder / "vocab.json").is_file():
        return transformers.CLIPTokenizer.from_pretrained(folder, local_files_only=True)
    return None


@register_encoder(
    EncoderInfo(
        id="plip", embed_dim=512, has_text=True, input_px=224, mpp=0.5, mean=OPENAI_MEAN,
        std=OPENAI_STD, architecture="CLIP ViT-B/32 (transformers CLIPModel)",
        pooling="CLIP projection", licence="research use (see the model card)", hub="vinid/plip",
        precision="fp16", reference="huggingface.co/vinid/plip",
    )
)  # fmt: skip
def _plip(weights=None, allow_download=False, depth=None) -> Encoder:
    try:
        import transformers
    except ImportError:
        raise ImportError("the 'plip' encoder needs `pip install transformers`") from None
    import torch

    weights = weights_spec(weights, "plip", allow_download, "vinid/plip")
    if weights == "hub":
        model, sha = transformers.CLIPModel.from_pretrained("vinid/plip"), "hub:vinid/plip"
    else:
        model, sha = _plip_model(weights, depth), "random"
    if weights not in ("random", "hub"):
        model, sha = load_transformers_strict(transformers.CLIPModel, weights, model.config, "plip")
    model.eval()
    tokenizer = _tokenizer(weights)

    def projected(output):
        # transformers < 5 returns the projected embeddings, 5 a model output whose
        # pooler_output holds them.
        return output if isinstance(output, torch.Tensor) else output.pooler_output

    def text_fn(texts):
        if tokenizer is None:
            # Without tokenizer files: open_clip's tokenizer has the same byte-pair vocabulary
            # and special tokens as PLIP's (OpenAI CLIP's), zero-padded.
            import open_clip

            ids = open_clip.tokenize(texts)  # (B, 77)
            tokens = {"input_ids": ids, "attention_mask": (ids > 0).long()}
        else:
            tokens = tokenizer(texts, padding=True, truncation=True, return_tensors="pt")
        return projected(model.get_text_features(**tokens))

    return Encoder(
        name="plip",
        model=model,
        transforms=TileTransform(224, OPENAI_MEAN, OPENAI_STD, interpolation="bicubic"),
        precision=torch.float32,
        embed_dim=int(model.config.projection_dim),
        weights=str(weights),
        weights_sha256=sha,
        image_fn=lambda x: projected(model.get_image_features(pixel_values=x)),
        text_fn=text_fn,
    )
