"""Prompt banks (YAML, one per target) and their text embeddings, cached per encoder.

A bank holds curated prompts and the variant groups the prompt-perturbation test needs:
``synonym`` and ``antonym`` (paired with the curated prompts, same order) and ``ood``
(out-of-domain phrases). Text embeddings are a DataFrame indexed by a running id with the
columns ``target``, ``group``, ``pair`` (index of the curated prompt it varies, −1 for ``ood``),
``text`` and the embedding ``e0 … e{d-1}`` — similarity is a separate step
(:func:`prompt_similarity`), as in LazySlide.

Cosine similarity of a tile embedding x and a prompt embedding t:

    s(x, t) = xᵀ t / (‖x‖ ‖t‖).

Example
-------
>>> bank = load_bank("configs/prompts/ers_caf.yaml")                 # doctest: +SKIP
>>> table = embed_bank(bank, get_encoder("synthclip"), cache_dir="runs/prompts")
>>> sim = prompt_similarity(features, table[table.group == "curated"])  # (n_tiles, 3)
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

GROUPS: tuple[str, ...] = ("curated", "synonym", "antonym", "ood")


class PromptBank(BaseModel):
    """A validated prompt bank."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    target: str = Field(min_length=1)
    description: str = ""
    curated: tuple[str, ...] = Field(min_length=1)
    synonym: tuple[str, ...] = ()
    antonym: tuple[str, ...] = ()
    ood: tuple[str, ...] = ()

    @model_validator(mode="after")
    def _paired(self):
        for group in ("synonym", "antonym"):
            values = getattr(self, group)
            if values and len(values) != len(self.curated):
                raise ValueError(
                    f"bank {self.target!r}: {len(values)} {group} prompts for "
                    f"{len(self.curated)} curated ones (they are paired, same order)"
                )
        for group in GROUPS:
            for text in getattr(self, group):
                if not text.strip():
                    raise ValueError(f"bank {self.target!r}: empty prompt in {group!r}")
        return self

    def rows(self) -> pd.DataFrame:
        """One row per prompt: target, group, pair, text."""
        records = []
        for group in GROUPS:
            for i, text in enumerate(getattr(self, group)):
                records.append(
                    {
                        "target": self.target,
                        "group": group,
                        "pair": -1 if group == "ood" else i,
                        "text": text,
                    }
                )
        return pd.DataFrame.from_records(records)

    def digest(self) -> str:
        return hashlib.sha256(self.model_dump_json().encode()).hexdigest()[:12]


def load_bank(path: Path | str) -> PromptBank:
    """Read and validate one prompt bank YAML (``yaml.safe_load``)."""
    from ..config import validate_settings

    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except FileNotFoundError:
        raise FileNotFoundError(f"prompt bank not found: {path}") from None
    return validate_settings(PromptBank, data, source=str(path))


def load_banks(directory: Path | str) -> dict[str, PromptBank]:
    """Every ``*.yaml`` bank in ``directory``, keyed by target; duplicate targets are errors."""
    directory = Path(directory)
    files = sorted(directory.glob("*.yaml"))
    if not files:
        raise FileNotFoundError(f"no prompt banks (*.yaml) in {directory}")
    banks: dict[str, PromptBank] = {}
    for file in files:
        bank = load_bank(file)
        if bank.target in banks:
            raise ValueError(f"target {bank.target!r} defined twice (second in {file})")
        banks[bank.target] = bank
    return banks


def embed_bank(bank: PromptBank, encoder, cache_dir: Path | str | None = None) -> pd.DataFrame:
    """Text embeddings of every prompt of ``bank``; cached per (encoder, weights, bank)."""
    cache = None
    if cache_dir is not None:
        key = f"{encoder.name}-{encoder.weights_sha256[:12]}"
        cache = Path(cache_dir) / key / f"{bank.target}-{bank.digest()}.parquet"
        if cache.is_file():
            return pd.read_parquet(cache)
    rows = bank.rows()
    emb = encoder.encode_texts(rows["text"].tolist()).numpy()  # (K, D)
    table = pd.concat(
        [rows, pd.DataFrame(emb, columns=[f"e{k}" for k in range(emb.shape[1])])], axis=1
    )
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_name(cache.name + ".partial")
        table.to_parquet(tmp)
        os.replace(tmp, cache)
        meta = cache.parent / "encoder.json"
        if not meta.exists():
            meta.write_text(
                json.dumps(
                    {
                        "encoder": encoder.name,
                        "weights": encoder.weights,
                        "weights_sha256": encoder.weights_sha256,
                    },
                    indent=2,
                )
            )
    return table


def embedding_matrix(table: pd.DataFrame) -> np.ndarray:
    """The (K, D) embedding block of a prompt table."""
    cols = [c for c in table.columns if c.startswith("e") and c[1:].isdigit()]
    return table[cols].to_numpy(np.float32)


def prompt_similarity(features: np.ndarray, prompts) -> np.ndarray:
    """Cosine similarity (n, K) of tile features (n, D) and prompts (table or (K, D) array)."""
    text = embedding_matrix(prompts) if isinstance(prompts, pd.DataFrame) else np.asarray(prompts)
    feats = np.asarray(features, np.float32)
    if feats.ndim != 2 or text.ndim != 2 or feats.shape[1] != text.shape[1]:
        raise ValueError(
            f"feature dimension {feats.shape} does not match prompt dimension {text.shape}"
        )
    feats = feats / np.maximum(np.linalg.norm(feats, axis=1, keepdims=True), 1e-12)
    text = text / np.maximum(np.linalg.norm(text, axis=1, keepdims=True), 1e-12)
    return feats @ text.T
