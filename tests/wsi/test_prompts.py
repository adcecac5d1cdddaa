from pathlib import Path

import numpy as np
import pytest

from stromalens.config import ConfigError
from stromalens.wsi.prompts import (
    GROUPS,
    PromptBank,
    embed_bank,
    load_bank,
    load_banks,
    prompt_similarity,
)

BANKS = Path(__file__).resolve().parents[2] / "configs" / "prompts"


def test_shipped_banks_cover_the_three_targets_and_every_group():
    banks = load_banks(BANKS)
    assert set(banks) == {"ers_caf", "lr", "heterogeneity"}
    for bank in banks.values():
        for group in GROUPS:
            assert len(getattr(bank, group)) >= 3, (bank.target, group)
        assert len(bank.synonym) == len(bank.curated) == len(bank.antonym)


def test_unpaired_variants_and_unknown_keys_are_rejected(tmp_path):
    with pytest.raises(ValueError, match="paired"):
        PromptBank(target="x", curated=("a", "b"), synonym=("c",))
    path = tmp_path / "bad.yaml"
    path.write_text("target: x\ncurated: [a]\nsynonyms: [b]\n")
    with pytest.raises(ConfigError, match="synonyms"):
        load_bank(path)


def test_embeddings_are_cached_per_encoder(tmp_path, random_synthclip):
    bank = load_bank(BANKS / "ers_caf.yaml")
    table = embed_bank(bank, random_synthclip, cache_dir=tmp_path)
    assert list(table.columns[:4]) == ["target", "group", "pair", "text"]
    assert len(table) == sum(len(getattr(bank, g)) for g in GROUPS)
    cached = list(tmp_path.rglob("*.parquet"))
    assert len(cached) == 1 and cached[0].parent.name.startswith("synthclip-random")
    again = embed_bank(bank, random_synthclip, cache_dir=tmp_path)
    assert np.allclose(again.filter(like="e1").to_numpy(), table.filter(like="e1").to_numpy())


def test_similarity_is_cosine(random_synthclip):
    bank = load_bank(BANKS / "lr.yaml")
    table = embed_bank(bank, random_synthclip)
    feats = np.random.default_rng(0).normal(size=(5, random_synthclip.embed_dim))
    sim = prompt_similarity(feats, table)
    assert sim.shape == (5, len(table))
    assert np.all(np.abs(sim) <= 1 + 1e-5)
    assert np.allclose(prompt_similarity(3.0 * feats, table), sim, atol=1e-5)
    with pytest.raises(ValueError, match="dimension"):
        prompt_similarity(feats[:, :10], table)
