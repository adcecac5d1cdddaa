"""Every name a study file writes, checked against what is registered, before the first stage.

The schema (:mod:`stromalens.config`) already refuses unknown keys, training settings and grid
keys or values. What it cannot know are the registries: the models (``training.models``), the
slide encoders (``wsi.encoder``, ``training.encoder``) and the prompt banks of the targets
(``training.prompts``). Without this check a typo there fails only when its stage starts, after
the stages before it have run for minutes. Each problem names the key, the bad value and the
valid choices; :func:`name_problems` returns them all at once.
"""

from __future__ import annotations

from pathlib import Path

from ..config import StudyConfig
from ..names import TARGETS


def name_problems(config: StudyConfig) -> list[str]:
    """Every bad name of ``config`` as ``"key: 'value' ... choices: ..."`` lines (empty: none)."""
    return (
        _encoder_problems(config)
        + _model_problems(config)
        + _prompt_problems(config)
        + _text_problems(config)
    )


def _choices(names) -> str:
    return ", ".join(sorted(names))


def _encoder_problems(config: StudyConfig) -> list[str]:
    from ..wsi.encoders import list_encoders

    known = list_encoders()
    given = [("wsi.encoder", config.wsi.encoder)]
    if config.training is not None:
        given.append(("training.encoder", config.training.encoder))
    return [
        f"{key}: unknown encoder {name!r}; registered: {_choices(known)}"
        for key, name in given
        if name not in known
    ]


def _model_problems(config: StudyConfig) -> list[str]:
    if config.training is None or config.training.models is None:
        return []
    from ..models import list_models  # imports torch: only when models are named

    known = list_models()
    models = config.training.models
    problems = [
        f"training.models: unknown model {name!r}; registered: {_choices(known)}"
        for name in models
        if name not in known
    ]
    if "student" in models and "gated_fusion" not in models:
        problems.append("training.models: 'student' needs 'gated_fusion' (its teacher) too")
    return problems


def _text_problems(config: StudyConfig) -> list[str]:
    """Text-guided models need an encoder with a text tower (an image-only encoder such as UNI
    serves every other model)."""
    training = config.training
    if training is None:
        return []
    from ..wsi.encoders import encoder_info, list_encoders, list_infos

    if training.encoder not in list_encoders() or encoder_info(training.encoder).has_text:
        return []
    from ..models import list_models, text_guided
    from ..training.cv import default_models

    named = [m for m in (training.models or ()) if m in list_models()]
    needing = text_guided(named if training.models is not None else default_models())
    if not needing:
        return []
    with_text = [info.id for info in list_infos() if info.has_text]
    return [
        f"training.encoder: {training.encoder!r} has no text encoder, which the text-guided "
        f"model(s) {', '.join(needing)} need: use one of {_choices(with_text)}, or leave those "
        "models out of training.models"
    ]


def _prompt_problems(config: StudyConfig) -> list[str]:
    """The prompt banks load and hold one bank per target (a missing folder is reported by
    the file checks of :func:`~stromalens.study.stages.validate_study`)."""
    if config.training is None or not Path(config.training.prompts).is_dir():
        return []
    from ..wsi.prompts import load_banks

    folder = config.training.prompts
    try:
        banks = load_banks(folder)
    except (ValueError, FileNotFoundError) as exc:  # ConfigError is a ValueError
        return [f"training.prompts: {' '.join(str(exc).split())}"]
    missing = [t for t in TARGETS if t not in banks]
    if missing:
        return [
            f"training.prompts: no prompt bank for target(s) {', '.join(missing)} in {folder}; "
            f"banks found for: {_choices(banks) or 'none'} (one YAML per target: "
            f"{', '.join(TARGETS)})"
        ]
    return []
