"""CoOp's token path (issue 17): learned context tokens through the frozen CLIP text tower.

The reference is open_clip itself: with the context set to the token embeddings of the
initialisation words, the tower's output must be ``CLIP.encode_text`` of the full prompt
(reference call: ``clip.encode_text(open_clip.get_tokenizer("ViT-B-32",
context_length=L)(["a histology image of <prompt>"]))``)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from stromalens.models import COOP_CONTEXT_INIT, ModelSpec, TextTower, create_model

from .towers import TEXTS, tiny_clip, tiny_tower, tokenizer

J, M = len(TEXTS), len(TEXTS[0])


def _encode_text(clip, texts) -> torch.Tensor:
    """open_clip's text embedding (J, M, E) of "<init words> <prompt>" for every prompt."""
    full = [f"{COOP_CONTEXT_INIT} {t}" for row in texts for t in row]
    with torch.no_grad():
        return clip.encode_text(tokenizer(clip)(full)).view(len(texts), len(texts[0]), -1)


def _synthclip():
    import open_clip

    from stromalens.wsi.synthclip import SYNTHCLIP_CONFIG as config

    torch.manual_seed(3)
    return open_clip.CLIP(config["embed_dim"], config["vision_cfg"], config["text_cfg"]).eval()


@pytest.mark.parametrize(
    "make",
    [
        _synthclip,  # the study's synthetic CLIP architecture
        lambda: tiny_clip(quick_gelu=True, layer_scale=1.0),  # QuickGELU + LayerScale blocks
    ],
    ids=["synthclip", "quickgelu-layerscale"],
)
def test_context_set_to_the_words_gives_open_clips_encode_text(make):
    clip = make()
    tower = TextTower.from_open_clip(clip, tokenizer(clip), TEXTS)
    with torch.no_grad():
        ours = tower(tower.context_init.expand(J, -1, -1))  # (J, M, E)
    torch.testing.assert_close(ours, _encode_text(clip, TEXTS), rtol=1e-5, atol=1e-5)
    # the tower rebuilt from its saved architecture and state (as load_checkpoint does)
    again = TextTower(tower.config)
    again.load_state_dict(tower.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(again(tower.context_init.expand(J, -1, -1)), ours)


def test_the_trained_synthclip_checkpoint_too():
    """The same identity with the cached, trained synthetic CLIP and the study's prompt banks,
    through the training stage's builder (which checks it against the encoder's text_fn)."""
    from stromalens.training.data import coop_text_tower, curated_texts
    from stromalens.wsi.encoders import default_synthclip_weights, get_encoder

    if not default_synthclip_weights().is_file():
        pytest.skip("no trained synthetic CLIP cached (`stromalens wsi train-clip`)")
    from pathlib import Path

    banks = Path(__file__).resolve().parents[2] / "configs" / "prompts"
    tower = coop_text_tower(banks, "synthclip")
    enc = get_encoder("synthclip")
    texts = curated_texts(banks)
    with torch.no_grad():
        ours = tower(tower.context_init.expand(len(texts), -1, -1))
    torch.testing.assert_close(ours, _encode_text(enc.model, texts), rtol=1e-5, atol=1e-5)


def test_the_coop_model_starts_from_the_embedded_words():
    clip = tiny_clip()
    tower = TextTower.from_open_clip(clip, tokenizer(clip), TEXTS)
    spec = ModelSpec(tile_dim=16, rad_dim=4)
    model = create_model("clip_mil_coop", spec, prompts=torch.randn(J, M, 16), text=tower)
    with torch.no_grad():
        t = model.pool.prompts.embeddings()
    torch.testing.assert_close(t, F.normalize(_encode_text(clip, TEXTS), dim=-1))
    assert model.pool.prompts.context.shape == (J, tower.n_ctx, 32)  # class-specific context


def test_gradients_reach_the_context_only():
    tower = tiny_tower()
    frozen = {k: v.clone() for k, v in tower.state_dict().items()}
    spec = ModelSpec(tile_dim=16, rad_dim=4)
    model = create_model("clip_mil_coop", spec, prompts=torch.randn(J, M, 16), text=tower)
    tiles = torch.randn(2, 5, 16)
    from stromalens.models import MILBatch

    batch = MILBatch(
        tiles=tiles,
        mask=torch.ones(2, 5, dtype=torch.bool),
        rad=torch.zeros(2, 4),
        has_wsi=torch.ones(2, dtype=torch.bool),
        has_rad=torch.zeros(2, dtype=torch.bool),
        site=torch.zeros(2, dtype=torch.long),
    )
    out = model(batch)
    (out.pred.sum() + out.u.sum()).backward()
    context = model.pool.prompts.context
    assert context.grad is not None and context.grad.abs().sum() > 0
    inside = list(model.pool.prompts.tower.parameters())
    assert inside and all(not p.requires_grad and p.grad is None for p in inside)
    # the model holds its own copy of the tower; the given one is untouched
    for key, value in tower.state_dict().items():
        assert torch.equal(value, frozen[key]), key


def test_coop_without_a_text_tower_is_one_clear_refusal():
    spec = ModelSpec(tile_dim=16, rad_dim=4)
    with pytest.raises(ValueError, match="CoOp .*no text tower.*image-only"):
        create_model("clip_mil_coop", spec, prompts=torch.randn(J, M, 16))
    with pytest.raises(ValueError, match="3 × 3 prompts of width 16"):
        create_model("clip_mil_coop", spec, prompts=torch.randn(J, 2, 16), text=tiny_tower())


def test_an_image_only_encoder_is_refused_by_the_training_builder(tmp_path):
    from pathlib import Path

    from stromalens.training.data import coop_text_tower

    banks = Path(__file__).resolve().parents[2] / "configs" / "prompts"
    with pytest.raises(ValueError, match="'timm-vit-s-16' is image-only"):
        coop_text_tower(banks, "timm-vit-s-16", "random")


def test_a_prompt_longer_than_the_context_is_refused():
    clip = tiny_clip()
    long = [["stroma " * 40] * 2] * 3
    with pytest.raises(ValueError, match="longer than the text tower's 32 tokens"):
        TextTower.from_open_clip(clip, tokenizer(clip), long)
