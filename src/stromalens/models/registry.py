"""Model registry (timm style): ``@register_model`` on a class, ``create_model(name, spec)``.

Each entry records the modalities the model reads (``"wsi"``, ``"mri"`` or both), whether it
needs prompt text embeddings, a one-line description, and the trained models its fit produces
(:class:`Output`: the name the study gives each one in every run file, and its checkpoint's file
stem), as timm keeps tags in its registry. A fit of most models produces one output named after
the model; the gated-fusion curriculum produces three (``fusion``, ``fusion_no_coral`` and the
distilled ``mri_student``). A test builds every entry and runs a forward and backward pass.
"""

from __future__ import annotations

from dataclasses import dataclass

_REGISTRY: dict[str, ModelInfo] = {}
_OUTPUTS: dict[str, Output] = {}  # study name → output


@dataclass(frozen=True)
class Output:
    """A trained model that the fit of a registered model produces.

    key          what the fit returns it as (``fit_model``'s dict), e.g. ``gated_fusion_coral``
    study_name   its name in ``predictions.parquet``, ``metrics.json`` and the report (``fusion``)
    checkpoint   the file stem of its weights under ``checkpoints/fold<k>/`` and in the bundle
    model        the registered model it is an instance of (the student is its own model)
    """

    key: str
    study_name: str
    checkpoint: str
    model: str


@dataclass(frozen=True)
class ModelInfo:
    name: str
    cls: type
    modalities: tuple[str, ...]
    needs_prompts: bool
    description: str
    outputs: tuple[Output, ...] = ()
    needs_text: bool = False


def register_model(
    name: str,
    *,
    modalities: tuple[str, ...],
    needs_prompts: bool = False,
    needs_text: bool = False,
    description: str = "",
    outputs: tuple[tuple[str, str, str] | tuple[str, str, str, str], ...] | None = None,
    study_name: str | None = None,
    checkpoint: str | None = None,
):
    """Class decorator adding a :class:`~stromalens.models.base.MILModel` subclass.

    ``outputs`` lists ``(key, study_name, checkpoint[, model])`` of every trained model a fit
    produces; by default the one output ``(name, study_name or name, checkpoint or name)``.
    ``needs_text``: the model runs the frozen CLIP text tower (CoOp), given to
    :func:`create_model` as ``text``."""
    bad = set(modalities) - {"wsi", "mri"}
    if not modalities or bad:
        raise ValueError(f"modalities of {name!r} must be a subset of ('wsi', 'mri'): {modalities}")

    given = outputs or ((name, study_name or name, checkpoint or name),)
    made = tuple(Output(*o) if len(o) == 4 else Output(*o, model=name) for o in given)

    def wrap(cls):
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is registered twice")
        for out in made:
            known = _OUTPUTS.get(out.study_name)
            if known is not None and known != out:
                raise ValueError(f"study name {out.study_name!r} is given to two outputs")
            _OUTPUTS[out.study_name] = out
        _REGISTRY[name] = ModelInfo(
            name, cls, tuple(modalities), needs_prompts, description, made, needs_text
        )
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


def text_guided(models) -> list[str]:
    """The registered models among ``models`` (default: all) that need prompt embeddings or
    the text tower itself, i.e. a slide encoder with a text tower."""
    names = list_models() if models is None else list(models)
    return [n for n in names if model_info(n).needs_prompts or model_info(n).needs_text]


def create_model(name: str, spec, prompts=None, text=None):
    """Build the registered model ``name`` from a :class:`ModelSpec` and, for text-guided
    models, the prompt embeddings ``prompts`` (J, M, D) — J targets, M prompts each; a model
    that runs the frozen text tower (CoOp) also gets it, ``text``
    (:class:`~stromalens.models.text_tower.TextTower`); the others ignore ``text``."""
    info = model_info(name)
    if info.needs_prompts and prompts is None:
        raise ValueError(f"model {name!r} needs prompt embeddings (prompts=None given)")
    if info.needs_text:
        return info.cls(spec, prompts=prompts, text=text)
    return info.cls(spec, prompts=prompts)


def study_name(key: str) -> str:
    """The study's name of a fit output (``gated_fusion_coral`` → ``fusion``)."""
    for out in _OUTPUTS.values():
        if out.key == key:
            return out.study_name
    raise ValueError(f"no registered model produces an output {key!r}")


def output_info(name: str) -> Output:
    """The :class:`Output` a study name (as in the run files) refers to."""
    if name not in _OUTPUTS:
        raise ValueError(f"unknown trained model {name!r}; known: {', '.join(sorted(_OUTPUTS))}")
    return _OUTPUTS[name]


def list_outputs() -> list[str]:
    """Study names of every trained model a registered model's fit can produce, sorted."""
    return sorted(_OUTPUTS)
