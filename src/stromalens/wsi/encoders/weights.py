"""Local weights: find the file, read it safely, load it strictly, record its sha256.

A weights argument is a single checkpoint file, or a Hugging Face snapshot folder in the layout it
is downloaded in (``config.json`` or ``open_clip_config.json`` beside ``model.safetensors`` /
``pytorch_model.bin`` / ``open_clip_*``). Checkpoints are read with safetensors or
``torch.load(weights_only=True)`` (no code in a checkpoint is ever executed) and loaded
*strictly*: a missing, unexpected or mis-shaped key is a :class:`WeightsMismatchError` naming the
keys — a half-loaded encoder gives wrong features without any error, which is worse than none.
Nothing is downloaded unless the caller passes ``allow_download=True`` with ``weights='hub'``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from ...hashing import sha256_file

#: Weight file names searched, in this order, inside a local snapshot folder.
WEIGHT_FILES = (
    "open_clip_model.safetensors",
    "open_clip_pytorch_model.bin",
    "model.safetensors",
    "pytorch_model.bin",
    "pytorch_model.pth",
)
#: Environment variable naming a folder of per-encoder weights (``$STROMALENS_WEIGHTS/<id>``).
WEIGHTS_ENV = "STROMALENS_WEIGHTS"
#: How many keys an error message names before it says "… and N more".
_SHOWN_KEYS = 8


class WeightsMismatchError(ValueError):
    """A checkpoint whose keys or shapes differ from the architecture it is loaded into."""


def resolve_weights(path: Path | str) -> Path:
    """A weight file: ``path`` itself or the first of :data:`WEIGHT_FILES` inside a folder."""
    path = Path(path).expanduser()
    if path.is_dir():
        for name in WEIGHT_FILES:
            if (path / name).is_file():
                return path / name
        raise FileNotFoundError(f"no weight file ({', '.join(WEIGHT_FILES)}) in {path}")
    if not path.is_file():
        raise FileNotFoundError(f"weights not found: {path}")
    return path


def read_config(path: Path | str, name: str) -> dict | None:
    """The JSON file ``name`` of a snapshot folder (``None`` for a single file or if absent)."""
    path = Path(path).expanduser()
    file = path / name if path.is_dir() else None
    if file is None or not file.is_file():
        return None
    return json.loads(file.read_text(encoding="utf-8"))


def load_state_dict(path: Path | str) -> tuple[dict, str]:
    """State dict from a local file or snapshot folder, and the file's sha256.

    safetensors files load with ``safetensors.torch.load_file``; anything else with
    ``torch.load(weights_only=True)``. A ``{"state_dict": …}`` or ``{"model": …}`` wrapper and a
    ``module.`` prefix (DataParallel) are removed.
    """
    import torch

    file = resolve_weights(path)
    if file.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(file))
    else:
        import pickle

        try:
            state = torch.load(file, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError:
            # torch's own message advises weights_only=False, i.e. running the file's code
            raise ValueError(
                f"{file}: refused: it holds Python objects besides tensors, which are never "
                "loaded (torch.load(weights_only=True)); save the state dict alone "
                "(torch.save(model.state_dict(), path)) or as safetensors"
            ) from None
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and key in state and isinstance(state[key], dict):
            state = state[key]
    if not isinstance(state, dict):
        raise ValueError(f"{file} does not hold a state dict")
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module.") :]: v for k, v in state.items()}
    return state, sha256_file(file)


def _named(keys: list[str]) -> str:
    shown = ", ".join(keys[:_SHOWN_KEYS])
    more = len(keys) - _SHOWN_KEYS
    return shown + (f" … and {more} more" if more > 0 else "")


def check_keys(expected: dict, state: dict, source: str) -> None:
    """Raise :class:`WeightsMismatchError` unless ``state`` has exactly ``expected``'s keys and
    shapes (``expected`` maps key → tensor or shape)."""
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    shapes = [
        f"{k} {tuple(state[k].shape)} ≠ {tuple(getattr(v, 'shape', v))}"
        for k, v in expected.items()
        if k in state and tuple(state[k].shape) != tuple(getattr(v, "shape", v))
    ]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing key(s): {_named(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected key(s): {_named(unexpected)}")
    if shapes:
        problems.append(f"{len(shapes)} shape mismatch(es): {_named(shapes)}")
    if problems:
        raise WeightsMismatchError(
            f"{source} does not fit the architecture: "
            + "; ".join(problems)
            + " (is it the checkpoint of this encoder?)"
        )


def load_strict(model, state: dict, source: str) -> None:
    """Load ``state`` into ``model`` only if keys and shapes match exactly (:func:`check_keys`)."""
    check_keys(model.state_dict(), state, source)
    model.load_state_dict(state, strict=True)


def weights_spec(weights, name: str, allow_download: bool, hub: str | None):
    """Normalise ``weights``: 'random', a local path, or 'hub' (only with ``allow_download``)."""
    if weights is None:
        raise ValueError(
            f"encoder {name!r} needs weights: a local file or snapshot folder (or a folder "
            f"${WEIGHTS_ENV}/{name}), or 'random' for timing and tests"
            + (f" (or 'hub' with --allow-download to fetch {hub})" if hub else "")
        )
    if weights == "hub":
        if not hub:
            raise ValueError(f"encoder {name!r} has no hub source")
        if not allow_download:
            raise ValueError(
                f"encoder {name!r}: downloading {hub} needs an explicit allow_download=True "
                "(--allow-download)"
            )
    return weights


def weights_root(weights_dir: Path | str | None = None) -> Path | None:
    """The folder of per-encoder weights: ``weights_dir``, else ``$STROMALENS_WEIGHTS``."""
    root = weights_dir or os.environ.get(WEIGHTS_ENV)
    return Path(root).expanduser() if root else None


def find_local_weights(name: str, weights_dir: Path | str | None = None) -> Path | None:
    """``<root>/<name>`` (a snapshot folder with a weight file, or ``<name>.safetensors`` /
    ``.bin`` / ``.pt`` / ``.pth``) under :func:`weights_root`; ``None`` if there is none."""
    root = weights_root(weights_dir)
    if root is None:
        return None
    folder = root / name
    if folder.is_dir():
        try:
            resolve_weights(folder)
            return folder
        except FileNotFoundError:
            return None
    for suffix in (".safetensors", ".bin", ".pt", ".pth"):
        if (root / f"{name}{suffix}").is_file():
            return root / f"{name}{suffix}"
    return None


def load_transformers_strict(cls, folder, config, name: str):
    """``cls.from_pretrained(folder)`` (transformers maps its published key names itself),
    refused with :class:`WeightsMismatchError` naming any missing, unexpected or mis-shaped
    key — transformers would otherwise initialise missing weights at random with a warning."""
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise ValueError(f"{name} weights must be its snapshot folder (config.json + weights), "
                         f"got {str(folder)!r}")  # fmt: skip
    model, report = cls.from_pretrained(
        folder, config=config, local_files_only=True, output_loading_info=True
    )
    problems = {
        "missing": sorted(report.get("missing_keys", [])),
        "unexpected": sorted(report.get("unexpected_keys", [])),
        "mis-shaped": sorted(str(k) for k in report.get("mismatched_keys", [])),
    }
    if any(problems.values()):
        raise WeightsMismatchError(
            f"{folder} does not fit {name}: "
            + "; ".join(f"{len(v)} {k} key(s): {_named(v)}" for k, v in problems.items() if v)
        )
    return model, sha256_file(resolve_weights(folder))
