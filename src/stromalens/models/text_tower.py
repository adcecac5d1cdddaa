"""The frozen CLIP text tower that CoOp's learned context tokens pass through.

CoOp (Zhou et al., IJCV 2022) replaces a prompt's hand-written words by M learned context
vectors in the token-embedding space and keeps the class name's tokens. For target j and its
curated prompt m (here the "class name" is the curated description), the token sequence is

    x^(j,m) = [SOT, c_1^(j), …, c_M^(j), w_1^(m), …, w_K^(m), EOT, pad …]     (L × W)

and its text embedding is open_clip's ``encode_text`` applied to that sequence instead of to
looked-up tokens:

    t^(j,m) = LN(Transformer(x^(j,m) + P))[eot] · W_proj

with P the positional embedding, the causal attention mask, pooling at the EOT token and the
projection W_proj, all frozen. Only c^(j) is learned. With c^(j) set to the token embeddings
of the words of :data:`COOP_CONTEXT_INIT` (CoOp's "a photo of a" initialisation, in histology
words), t^(j,m) is exactly ``encode_text("<init> <prompt m>")``.

The context passes through attention, so nothing downstream of the token embeddings can be
precomputed: the tower (transformer, final LayerNorm, projection) is kept, without the
vocabulary table, which only the fixed tokens (SOT, the prompts' words, EOT) need and which
are stored embedded. Sequences are cut after the longest prompt's EOT: with a causal mask a
token never attends to later ones, so the EOT outputs are unchanged. The tower's weights are
buffers and frozen parameters of the model, saved with its checkpoint; :attr:`TextTower.config`
rebuilds the empty tower before its state is loaded.

Reference code: KaiyangZhou/CoOp (MIT), ``trainers/coop.py`` (``PromptLearner``,
``TextEncoder``); open_clip ``CLIP.encode_text``.

Example
-------
>>> tower = TextTower.from_open_clip(clip, tokenizer, [["fibrous stroma"], ...])  # doctest: +SKIP
>>> t = tower(tower.context_init.expand(3, -1, -1))          # (J, M, E) = encode_text(...)
"""

from __future__ import annotations

import hashlib
from functools import partial

import torch
from torch import nn

#: CoOp's context initialisation: these words' token embeddings start every target's context
#: (CoOp: "a photo of a"); their number is the number of context tokens.
COOP_CONTEXT_INIT = "a histology image of"

_ACTIVATIONS = ("gelu", "quick_gelu")


def _refuse(why: str) -> ValueError:
    return ValueError(
        f"CoOp needs an open_clip CLIP text tower (token_embedding, positional_embedding, "
        f"transformer, ln_final, text_projection, causal mask, EOT pooling): {why}. Use an "
        "open_clip encoder (synthclip, openclip-*, quiltnet-b-32) or leave clip_mil_coop out "
        "of training.models"
    )


def tower_config(clip) -> dict:
    """The architecture of an open_clip ``CLIP``'s text transformer (JSON-able), or
    ``ValueError`` when it is not the standard layout that :class:`TextTower` rebuilds."""
    from open_clip.transformer import LayerScale, QuickGELU, ResidualAttentionBlock

    for name in ("token_embedding", "positional_embedding", "transformer", "ln_final"):
        if not hasattr(clip, name):
            raise _refuse(f"the model has no {name!r}")
    if getattr(clip, "text_pool_type", "argmax") != "argmax":
        raise _refuse(f"text pooling {clip.text_pool_type!r}, not at the EOT token")
    if getattr(clip, "attn_mask", None) is None:
        raise _refuse("the text transformer has no causal mask")
    blocks = clip.transformer.resblocks
    if not all(type(b) is ResidualAttentionBlock for b in blocks):
        raise _refuse(f"custom attention blocks ({type(blocks[0]).__name__})")
    act = blocks[0].mlp.gelu
    width = int(clip.transformer.width)
    return {
        "width": width,
        "layers": len(blocks),
        "heads": int(blocks[0].attn.num_heads),
        "mlp_width": int(blocks[0].mlp.c_fc.out_features),
        "activation": "quick_gelu" if isinstance(act, QuickGELU) else "gelu",
        "layer_scale": isinstance(blocks[0].ls_1, LayerScale),
        "eps": float(blocks[0].ln_1.eps),
        "final_eps": float(clip.ln_final.eps),
        "batch_first": bool(getattr(clip.transformer, "batch_first", True)),
    }


class TextTower(nn.Module):
    """Frozen text tower + the fixed tokens of J × M prompts: context (J, n_ctx, W) → (J, M, E).

    ``config``: the transformer's architecture (:func:`tower_config`) plus ``n_targets`` J,
    ``n_prompts`` M, ``n_ctx``, ``length`` L (tokens kept), ``embed_dim`` E and ``init``."""

    def __init__(self, config: dict) -> None:
        super().__init__()
        from open_clip.transformer import LayerNorm, QuickGELU, Transformer

        if config.get("activation") not in _ACTIVATIONS:
            raise ValueError(f"text tower activation must be one of {_ACTIVATIONS}: {config!r}")
        self.config = dict(config)
        j, m, n_ctx = config["n_targets"], config["n_prompts"], config["n_ctx"]
        length, w, e = config["length"], config["width"], config["embed_dim"]
        self.transformer = Transformer(
            w,
            config["layers"],
            config["heads"],
            mlp_ratio=config["mlp_width"] / w,
            ls_init_value=1.0 if config["layer_scale"] else None,  # the value is loaded
            act_layer=QuickGELU if config["activation"] == "quick_gelu" else nn.GELU,
            norm_layer=partial(LayerNorm, eps=config["eps"]),
            batch_first=config["batch_first"],
        )
        self.ln_final = LayerNorm(w, eps=config["final_eps"])
        self.register_buffer("prefix", torch.zeros(j, m, 1, w))  # SOT embedded
        self.register_buffer("suffix", torch.zeros(j, m, length - 1 - n_ctx, w))  # words, EOT
        self.register_buffer("eot", torch.zeros(j, m, dtype=torch.long))  # EOT position
        self.register_buffer("positional", torch.zeros(length, w))  # P[:L]
        self.register_buffer("projection", torch.zeros(w, e))
        self.register_buffer("projection_bias", torch.zeros(e))
        self.register_buffer("context_init", torch.zeros(n_ctx, w))  # the init words embedded
        # open_clip's causal mask (build_causal_mask): −inf above the diagonal
        mask = torch.full((length, length), float("-inf")).triu_(1)
        self.register_buffer("attn_mask", mask, persistent=False)
        self.requires_grad_(False)  # frozen: only the context outside it is learned

    @property
    def n_ctx(self) -> int:
        return int(self.config["n_ctx"])

    def forward(self, context: torch.Tensor) -> torch.Tensor:
        """Text embeddings (J, M, E) of the prompts with ``context`` (J, n_ctx, W) prepended."""
        j, m = self.eot.shape
        expected = (j, self.n_ctx, self.prefix.shape[-1])
        if tuple(context.shape) != expected:
            raise ValueError(f"context of shape {tuple(context.shape)}; expected {expected}")
        ctx = context.unsqueeze(1).expand(-1, m, -1, -1)  # (J, M, n_ctx, W)
        x = torch.cat([self.prefix, ctx, self.suffix], dim=2).flatten(0, 1)  # (J·M, L, W)
        x = x + self.positional
        x = self.transformer(x, attn_mask=self.attn_mask)  # (J·M, L, W)
        x = self.ln_final(x)
        x = x[torch.arange(len(x)), self.eot.flatten()]  # (J·M, W) at each prompt's EOT
        return (x @ self.projection + self.projection_bias).view(j, m, -1)  # (J, M, E)

    def digest(self) -> str:
        """sha256 of the tower's architecture and every weight and fixed token (a fit's key)."""
        h = hashlib.sha256(repr(sorted(self.config.items())).encode())
        for key, value in sorted(self.state_dict().items()):
            h.update(key.encode() + repr(tuple(value.shape)).encode())
            h.update(value.detach().contiguous().cpu().numpy().tobytes())
        return h.hexdigest()

    @classmethod
    @torch.no_grad()
    def from_open_clip(cls, clip, tokenizer, texts: list[list[str]], init: str = COOP_CONTEXT_INIT):
        """The tower of open_clip model ``clip`` for the prompts ``texts`` (J lists of M
        strings), tokenised by ``tokenizer`` (open_clip's, at the model's context length),
        with the context initialised to the embedded words of ``init``."""
        config = tower_config(clip)
        if len({len(row) for row in texts}) != 1 or not texts[0]:
            raise ValueError("CoOp prompts must be J non-empty lists of the same length M")
        context_length = int(clip.positional_embedding.shape[0])
        n_ctx = int(tokenizer([init])[0].argmax()) - 1  # tokens between SOT and EOT
        if n_ctx < 1:
            raise ValueError(f"the CoOp context initialisation {init!r} has no token")
        full = [f"{init} {t}" for row in texts for t in row]
        for text in full:
            if len(tokenizer.encode(text)) + 2 > context_length:
                raise ValueError(
                    f"prompt {text!r} is longer than the text tower's {context_length} tokens; "
                    "shorten the curated prompt"
                )
        tokens = tokenizer(full)  # (J·M, context_length)
        if not torch.equal(
            tokens[:, : 1 + n_ctx], tokenizer([init])[:, : 1 + n_ctx].expand(len(full), -1)
        ):
            raise ValueError(f"the context words {init!r} tokenise differently inside a prompt")
        eot = tokens.argmax(dim=-1)  # the EOT token has the largest id
        length = int(eot.max()) + 1
        embedded = clip.token_embedding(tokens[:, :length]).float()  # (J·M, L, W)
        proj = clip.text_projection
        if isinstance(proj, nn.Linear):
            weight, bias = proj.weight.T, proj.bias
        else:
            weight, bias = proj, None
        j, m = len(texts), len(texts[0])
        config |= {"n_targets": j, "n_prompts": m, "n_ctx": n_ctx, "length": length}
        config |= {"embed_dim": int(weight.shape[1]), "init": init}
        tower = cls(config)
        if not torch.equal(clip.attn_mask[:length, :length].float(), tower.attn_mask):
            raise _refuse("its attention mask is not open_clip's causal mask")
        tower.transformer.load_state_dict(clip.transformer.state_dict())
        tower.ln_final.load_state_dict(clip.ln_final.state_dict())
        w = config["width"]
        tower.prefix.copy_(embedded[:, :1].reshape(j, m, 1, w))
        tower.suffix.copy_(embedded[:, 1 + n_ctx :].reshape(j, m, -1, w))
        tower.eot.copy_(eot.view(j, m))
        tower.positional.copy_(clip.positional_embedding[:length])
        tower.projection.copy_(weight)
        if bias is not None:
            tower.projection_bias.copy_(bias)
        tower.context_init.copy_(embedded[0, 1 : 1 + n_ctx])
        return tower.eval()
