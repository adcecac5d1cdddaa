"""The trained model as a self-contained bundle: what ``stromalens predict`` needs, and nothing
of the training cohort.

Layout (``TRAIN/model/``, :class:`~stromalens.rundir.TrainLayout`):

``bundle.json``            schema version, stromalens version, targets, the feature contract,
                           the trained models (study name → checkpoint stem), folds, tile
                           sampling (``max_tiles``, seed)
``prompts.json``           the curated prompt text of each target, in the order of the
                           embeddings; ``prompts.safetensors`` their (J, M, D) text embeddings
``fold<k>/``               ``preprocessor.json`` (the fold's fitted
                           :class:`~stromalens.training.FoldPreprocessor` state: radiomics
                           selection, ComBat, standardisation, components, target scaling) and
                           ``<stem>.safetensors`` + ``<stem>.json`` of each trained model

The *feature contract* is what a tile embedding must match for the models to read it: the
encoder id, the sha256 of its weights, the feature width, and the tiling (µm/px and tile side).
:meth:`FeatureContract.check` refuses features made otherwise, naming both sides.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from .. import __version__
from ..names import TARGETS
from ..rundir import TrainLayout

#: Version of the bundle's layout; a bundle of another version is refused.
BUNDLE_VERSION = 1
PREPROCESSOR = "preprocessor.json"


class BundleError(ValueError):
    """A bundle that cannot be used, or inputs that do not match it; the message says why."""


@dataclass(frozen=True)
class FeatureContract:
    """What tile features must be for a bundle's models (recorded from the training features).

    ``None`` fields were not recorded by the feature store and are not checked."""

    encoder: str | None
    weights_sha256: str | None
    feature_dim: int | None
    target_mpp: float | None
    tile_px: int | None

    @classmethod
    def of_store(cls, attrs: dict, feature_dim: int | None) -> FeatureContract:
        """The contract of one slide's feature store (its HDF5 attributes)."""

        def get(key, kind):
            value = attrs.get(key)
            return None if value in (None, "") else kind(value)

        return cls(
            encoder=get("encoder", str),
            weights_sha256=get("weights_sha256", str),
            feature_dim=feature_dim,
            target_mpp=get("target_mpp", float),
            tile_px=get("tile_px", int),
        )

    def differences(self, other: FeatureContract) -> list[str]:
        """``field: ours vs theirs`` for every recorded field that differs."""
        out = []
        for key, ours in asdict(self).items():
            theirs = getattr(other, key)
            if ours is None or theirs is None:
                continue
            same = np.isclose(ours, theirs) if isinstance(ours, float) else ours == theirs
            if not same:
                out.append(f"{key}: {ours} (model) vs {theirs} (features)")
        return out

    def check(self, other: FeatureContract, source: str) -> None:
        """Raise :class:`BundleError` naming both sides if ``other`` differs from this."""
        diff = self.differences(other)
        if diff:
            raise BundleError(
                f"{source}: these features were not made as the model's were — "
                + "; ".join(diff)
                + ". Embed the slides with the model's encoder and tiling "
                "(`stromalens wsi embed --encoder ...`)."
            )


@dataclass
class BundleFold:
    """One outer fold of a bundle: its fitted preprocessor and its trained models."""

    fold: int
    directory: Path
    prep: object  # FoldPreprocessor

    def has(self, name: str) -> bool:
        """Whether the fold holds the trained model of study name ``name``."""
        from ..models import output_info

        return (self.directory / f"{output_info(name).checkpoint}.safetensors").is_file()

    def load(self, name: str):
        """The trained model of study name ``name`` (eval mode)."""
        from ..models import output_info
        from .curriculum import load_checkpoint

        model, _, _ = load_checkpoint(self.directory / output_info(name).checkpoint)
        return model

    def checkpoint(self, name: str) -> Path:
        from ..models import output_info

        return self.directory / output_info(name).checkpoint


@dataclass
class Bundle:
    """A loaded bundle (:func:`load_bundle`)."""

    root: Path
    meta: dict
    contract: FeatureContract
    prompts: np.ndarray | None
    prompt_text: dict[str, list[str]]
    folds: list[BundleFold]

    @property
    def models(self) -> list[str]:
        return list(self.meta["models"])

    @property
    def max_tiles(self) -> int | None:
        return self.meta["max_tiles"]

    @property
    def seed(self) -> int:
        return int(self.meta["seed"])


def _atomic_json(path: Path, data) -> None:
    tmp = path.with_name(path.name + ".partial")
    tmp.write_text(json.dumps(data, indent=1), encoding="utf-8")
    os.replace(tmp, path)


def write_bundle(
    train: TrainLayout,
    models: list[str],
    contract: FeatureContract,
    prompts: np.ndarray | None,
    prompt_text: dict[str, list[str]],
    *,
    max_tiles: int | None,
    seed: int,
) -> Path:
    """Assemble ``TRAIN/model/`` from the CV's outer-fold checkpoints (``models``: study
    names). The bundle is rebuilt whole (into a temporary folder, then renamed)."""
    from ..models import output_info

    folds = sorted(
        int(p.name.removeprefix("fold"))
        for p in train.checkpoints.glob("fold*")
        if p.name.removeprefix("fold").isdigit()
    )
    if not folds:
        raise BundleError(f"{train.checkpoints}: no fold checkpoints to bundle")
    final = train.bundle
    tmp = final.with_name(final.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    kept = []
    for name in models:
        stem = output_info(name).checkpoint
        if all((train.checkpoint_dir(k) / f"{stem}.safetensors").is_file() for k in folds):
            kept.append(name)
    for k in folds:
        source, target = train.checkpoint_dir(k), tmp / f"fold{k}"
        target.mkdir()
        shutil.copy2(source / PREPROCESSOR, target / PREPROCESSOR)
        for name in kept:
            stem = output_info(name).checkpoint
            for suffix in (".safetensors", ".json"):
                shutil.copy2(source / f"{stem}{suffix}", target / f"{stem}{suffix}")
    if prompts is not None:
        import torch
        from safetensors.torch import save_file

        save_file({"embeddings": torch.from_numpy(np.ascontiguousarray(prompts))},
                  str(tmp / "prompts.safetensors"))  # fmt: skip
    _atomic_json(tmp / "prompts.json", {"targets": list(TARGETS), "curated": prompt_text})
    meta = {
        "bundle_version": BUNDLE_VERSION,
        "stromalens": __version__,
        "targets": list(TARGETS),
        "feature_contract": asdict(contract),
        "models": {name: output_info(name).checkpoint for name in kept},
        "folds": folds,
        "max_tiles": max_tiles,
        "seed": seed,
    }
    _atomic_json(tmp / "bundle.json", meta)
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    return final


def load_bundle(path: Path | str) -> Bundle:
    """Read a bundle: ``TRAIN/model/`` or the training run folder that holds it."""
    from .data import FoldPreprocessor

    root = Path(path)
    if (
        not (root / "bundle.json").is_file()
        and (TrainLayout(root).bundle / "bundle.json").is_file()
    ):
        root = TrainLayout(root).bundle
    meta_path = root / "bundle.json"
    if not meta_path.is_file():
        raise BundleError(
            f"{path}: not a model bundle (no bundle.json); give the folder `stromalens train` "
            "wrote, or its model/ subfolder"
        )
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    if meta.get("bundle_version") != BUNDLE_VERSION:
        raise BundleError(
            f"{meta_path}: bundle version {meta.get('bundle_version')!r}; this stromalens reads "
            f"version {BUNDLE_VERSION} (retrain, or use the version that wrote it)"
        )
    if tuple(meta["targets"]) != TARGETS:
        raise BundleError(f"{meta_path}: targets {meta['targets']} differ from {list(TARGETS)}")
    prompts = None
    if (root / "prompts.safetensors").is_file():
        from safetensors.numpy import load_file

        prompts = load_file(str(root / "prompts.safetensors"))["embeddings"]
    text = json.loads((root / "prompts.json").read_text(encoding="utf-8"))["curated"]
    folds = []
    for k in meta["folds"]:
        directory = root / f"fold{k}"
        state = json.loads((directory / PREPROCESSOR).read_text(encoding="utf-8"))
        folds.append(BundleFold(int(k), directory, FoldPreprocessor.from_state(state)))
    return Bundle(
        root=root,
        meta=meta,
        contract=FeatureContract(**meta["feature_contract"]),
        prompts=prompts,
        prompt_text=text,
        folds=folds,
    )
