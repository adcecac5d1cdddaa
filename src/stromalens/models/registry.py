"""Model registry (timm style): ``@register_model`` on a class, ``create_model(name, spec)``.

Each entry records the modalities the model reads (``"wsi"``, ``"mri"`` or both), whether it
needs prompt text embeddings, and a one-line description; a test builds every entry and runs a
forward and backward pass.
"""

from __future__ import annotations

from dataclasses import dataclass

_REGISTRY: dict[str, ModelInfo] = {}


@dataclass(frozen=True)
class ModelInfo:
    name: str
    cls: type
    modalities: tuple[str, ...]
    needs_prompts: bool
    description: str


def register_model(
    name: str,
    *,
    modalities: tuple[str, ...],
    needs_prompts: bool = False,
    description: str = "",
):
    """Class decorator adding a :class:`~stromalens.models.base.MILModel` subclass."""
    bad = set(modalities) - {"wsi", "mri"}
    if not modalities or bad:
        raise ValueError(f"modalities of {name!r} must be a subset of ('wsi', 'mri'): {modalities}")

    def wrap(cls):
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is registered twice")
        _REGISTRY[name] = ModelInfo(name, cls, tuple(modalities), needs_prompts, description)
        cls.model_name = name
        return cls

    return wrap


def list_models(modality: str | None = None) -> list[str]:
    """Registered names, sorted; ``modality`` keeps models reading exactly that one modality
    (``"wsi"``, ``"mri"``) or both (``"fusion"``)."""
    if modality not in (None, "wsi", "mri", "fusion"):
        raise ValueError(f"modality must be None, 'wsi', 'mri' or 'fusion', got {modality!r}")
    names = []
    for name, info in _REGISTRY.items():
        kind = "fusion" if len(info.modalities) == 2 else info.modalities[0]
        if modality is None or kind == modality:
            names.append(name)
    return sorted(names)


def model_info(name: str) -> ModelInfo:
    if name not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; registered: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]


def create_model(name: str, spec, prompts=None):
    """Build the registered model ``name`` from a :class:`ModelSpec` and, for text-guided
    models, the prompt embeddings ``prompts`` (J, M, D) — J targets, M prompts each."""
    info = model_info(name)
    if info.needs_prompts and prompts is None:
        raise ValueError(f"model {name!r} needs prompt embeddings (prompts=None given)")
    return info.cls(spec, prompts=prompts)
