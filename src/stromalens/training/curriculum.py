"""The three-stage curriculum and the distillation, as one readable training loop.

Stage I (WSI branch, CLIP encoders frozen: only cached embeddings are seen). The pooled slide
representation's prompt similarity u^(j) = p^(j)ᵀ t̄^(j) is calibrated to the training-fold
min–max scaled target by the monotone calibrator g_j(u) = σ(a_j u + b_j), a_j = softplus(â_j):

    L_I = Σ_j mean_i (g_j(u_ij) − ỹ_ij)²                       trains γ (and a_j, b_j)

(E_wsi does not enter u, so it receives its first gradient in stage II.)

Stage II. Heteroscedastic multi-task regression of the z-scored targets, with modality dropout
(probability q, one branch's latent zeroed for a patient who has both) and γ fine-tuned:

    L_II = Σ_j [ (1/2σ_j²) · MSE_j + log σ_j ]

Stage III. Continues from stage II with CORAL over the sites of the fused features (Eq. 24;
over the whole training fold at every step, from a feature bank: models.FeatureBankCoral) and
weight decay (AdamW; here every gradient stage uses the same decoupled weight decay, because
with ~100 patients an unregularised stage II or baseline overfits its training fold; it acts on
the layers' weight matrices only, never on log σ_j, biases, norms or prompt vectors:
:func:`decay_groups`):

    L_III = L_II + λ_coral · Σ_d (‖μ_d − μ‖² + ‖Σ_d − Σ‖_F²)

The ablation "without CORAL" continues from the same stage-II weights for the same number of
epochs with λ_coral = 0, so that the two differ by CORAL alone.

Distillation (Eq. 26). The MRI-only student starts from the teacher's E_rad, trunk and heads and
is trained on the teacher's predictions for the training patients:

    L_KD = mean_i ‖ŷ_S(x_i^rad) − ŷ_T(x_i)‖²

Baselines are trained with the stage-II loss (modality dropout for fusion baselines; HE2RNA adds
its gene-layer loss L_genes = mean_g MSE_g on the fold's z-scored gene table). Each stage
writes ``<name>.safetensors`` + ``<name>.json`` (model name, spec, settings, stage, history); a
stage whose checkpoint exists with the same configuration is loaded instead of retrained.
Deterministic on CPU for a seed (``torch.manual_seed`` and a numpy Generator per stage).
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
import time
from pathlib import Path

import numpy as np

from ..config import TrainSettings
from ..logs import event, get_logger
from .data import FoldArrays, make_batch

log = get_logger("training.curriculum")


def model_spec(arrays: FoldArrays, tile_dim: int, settings: TrainSettings, n_sites: int):
    from ..models import ModelSpec

    return ModelSpec(
        tile_dim=tile_dim,
        rad_dim=arrays.rad.shape[1],
        n_targets=arrays.y.shape[1],
        hidden=settings.hidden,
        dropout=settings.dropout,
        tau=settings.tau,
        n_sites=n_sites,
        n_genes=0 if arrays.genes is None else arrays.genes.shape[1],
    )


# ---------------------------------------------------------------------------- checkpoints
def _digest(config: dict) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _with(path: Path, suffix: str) -> Path:
    """``path`` plus ``suffix`` (names hold dots, e.g. ``gated_fusion.stage1``)."""
    return path.with_name(path.name + suffix)


def save_checkpoint(
    path: Path | str, model, config: dict, log_sigma=None, history: dict | None = None
) -> Path:
    """``<path>.safetensors`` (weights; ``loss.log_sigma`` included) + ``<path>.json``, atomic.

    The JSON's ``digest`` is that of ``config`` (what determined the fit; a rerun with the
    same config reloads these weights); ``history`` (the losses) is recorded beside it and is
    not part of the digest."""
    import torch
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
    if log_sigma is not None:
        state["loss.log_sigma"] = log_sigma.detach().clone()
    tmp = path.with_name(path.name + ".safetensors.partial")
    save_file(state, str(tmp))
    os.replace(tmp, _with(path, ".safetensors"))
    meta = {
        "model": model.model_name,
        "spec": model.spec.to_dict(),
        "build": model.build_config(),
        "config": config | ({"history": history} if history is not None else {}),
        "digest": _digest(config),
        "torch": torch.__version__,
    }
    tmp = path.with_name(path.name + ".json.partial")
    tmp.write_text(json.dumps(meta, indent=2, default=str), encoding="utf-8")
    os.replace(tmp, _with(path, ".json"))
    return path


def load_checkpoint(path: Path | str):
    """Rebuild a model from ``<path>.json`` + ``<path>.safetensors``; returns (model, meta,
    log_sigma or None). Prompts come back from the saved buffers, CoOp's frozen text tower
    from its saved architecture (``build``) and weights."""
    from safetensors.torch import load_file

    from ..models import ModelSpec, TextTower, create_model, model_info

    path = Path(path)
    meta = json.loads(_with(path, ".json").read_text(encoding="utf-8"))
    state = load_file(str(_with(path, ".safetensors")))
    log_sigma = state.pop("loss.log_sigma", None)
    spec = ModelSpec.from_dict(meta["spec"])
    prompts = None
    if model_info(meta["model"]).needs_prompts:
        prompts = state["pool.prompts.text"]
    build = meta.get("build") or {}
    text = TextTower(build["text_tower"]) if "text_tower" in build else None
    model = create_model(meta["model"], spec, prompts=prompts, text=text)
    try:
        model.load_state_dict(state)
    except RuntimeError as error:  # the model's layers changed since the checkpoint was written
        raise ValueError(
            f"checkpoint {_with(path, '.safetensors')} does not match the current "
            f"{meta['model']!r} model (written by an earlier version?); retrain it. "
            f"{str(error).splitlines()[0]}"
        ) from error
    return model.eval(), meta, log_sigma


def _cached(path: Path | None, config: dict):
    if path is None or not _with(path, ".json").is_file():
        return None
    meta = json.loads(_with(path, ".json").read_text(encoding="utf-8"))
    if meta.get("digest") != _digest(config):
        return None
    try:
        return load_checkpoint(path)
    except ValueError as error:  # same settings, other layers: retrain rather than fail
        event(log, "stale checkpoint retrained", logging.WARNING, detail=str(error)[:300])
        return None


# ---------------------------------------------------------------------------- the loop
def decay_groups(model, log_sigma=None) -> tuple[list, list]:
    """The trainable parameters of ``model`` (its stage-I calibrator left out) split into
    (decayed, not decayed), with ``log_sigma`` among the latter.

    Decayed: the weight matrices of ``nn.Linear`` layers and of attention's input projection,
    the parameters whose size is a capacity that shrinking regularises. Not decayed:
    log σ_j (decay would pull every σ_j towards 1, i.e. towards equal task weights, which is
    not a prior of Kendall et al.'s loss but a bias of it); biases and LayerNorm gains and
    shifts (shrinking them changes the centring and the scale of a layer, not its capacity);
    the prompt mixture's logits, the learnable prompt context and query vectors and the
    class token (their norm means something in the CLIP embedding space or is a softmax's
    temperature-free logit).
    """
    from torch import nn

    calibrator = getattr(model, "calibrator", None)
    skip = set(map(id, calibrator.parameters())) if calibrator is not None else set()
    decayed = set()
    for module in model.modules():
        if isinstance(module, nn.Linear):
            decayed.add(id(module.weight))
        elif isinstance(module, nn.MultiheadAttention) and module.in_proj_weight is not None:
            decayed.add(id(module.in_proj_weight))
    params = [p for p in model.parameters() if id(p) not in skip and p.requires_grad]
    decay = [p for p in params if id(p) in decayed]
    rest = [p for p in params if id(p) not in decayed]
    if log_sigma is not None:
        rest.append(log_sigma)
    return decay, rest


def make_optimiser(model, settings: TrainSettings, log_sigma=None):
    """AdamW (decoupled weight decay, Loshchilov & Hutter, ICLR 2019) over
    :func:`decay_groups`: ``settings.weight_decay`` on the weight matrices, none on the rest.
    Every gradient stage decays, not only stage III: with ~100 patients an unregularised
    stage II or baseline overfits its training fold."""
    import torch

    decay, rest = decay_groups(model, log_sigma)
    groups = [
        {"params": decay, "weight_decay": settings.weight_decay},
        {"params": rest, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=settings.lr)


def _modality_dropout(batch, q: float, rng: np.random.Generator):
    """For each patient with both modalities, with probability q zero one of them (chosen at
    random): the slide's mask or the radiomics flag."""
    import torch

    both = (batch.wsi_present() & batch.has_rad).numpy()
    drop = both & (rng.random(len(batch)) < q)
    which = rng.random(len(batch)) < 0.5  # True: drop the slide
    drop_wsi = torch.from_numpy(drop & which)
    drop_rad = torch.from_numpy(drop & ~which)
    return batch.replace(
        mask=batch.mask & ~drop_wsi.unsqueeze(1),
        has_wsi=batch.has_wsi & ~drop_wsi,
        has_rad=batch.has_rad & ~drop_rad,
    )


def train_stage(
    model,
    arrays: FoldArrays,
    stage: str,
    settings: TrainSettings,
    log_sigma=None,
    teacher_pred: np.ndarray | None = None,
) -> dict:
    """Train ``model`` in place for one stage: ``"I"``, ``"II"``, ``"III"``, ``"III-0"`` (stage
    III with λ_coral = 0), ``"distill"`` or ``"baseline"``. Returns the loss history."""
    import torch

    from ..models import calibration_loss, distillation_loss, gene_loss, heteroscedastic_loss
    from ..models.registry import model_info

    epochs = {
        "I": settings.epochs_stage1,
        "II": settings.epochs_stage2,
        "III": settings.epochs_stage3,
        "III-0": settings.epochs_stage3,
        "distill": settings.epochs_distill,
        "baseline": settings.epochs_baseline,
    }
    if stage not in epochs:
        raise ValueError(f"unknown stage {stage!r}; one of {sorted(epochs)}")
    if stage == "distill" and teacher_pred is None:
        raise ValueError("the distillation stage needs the teacher's predictions")
    seed = settings.seed * 1000 + sorted(epochs).index(stage)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    fusion = len(model_info(model.model_name).modalities) == 2
    y = torch.from_numpy(arrays.y01 if stage == "I" else arrays.y)  # (P, J)
    teacher = torch.from_numpy(teacher_pred.astype(np.float32)) if stage == "distill" else None

    if stage == "I":
        # γ's logits and what else the prompts learn (CoOp's context), not the frozen tower
        prompt_params = [p for p in model.pool.prompts.parameters() if p.requires_grad]
        with torch.no_grad():
            model.eval()
            u = torch.cat([model(make_batch(arrays, idx)).u for idx in _chunks(len(arrays), 64)])
        model.calibrator.initialise(u, y)
        groups = [
            {"params": prompt_params, "lr": settings.lr_prompts},
            {"params": list(model.calibrator.parameters()), "lr": settings.lr_prompts},
        ]
        optimiser = torch.optim.Adam(groups)
    else:
        sigma = log_sigma if stage != "distill" else None
        optimiser = make_optimiser(model, settings, sigma)

    coral = _coral_bank(model, arrays) if stage == "III" and settings.lambda_coral > 0 else None
    history = []
    n = len(arrays)
    for _epoch in range(epochs[stage]):
        model.train()
        order = rng.permutation(n)
        total = 0.0
        for idx in _chunks(n, settings.batch_size, order):
            batch = make_batch(arrays, idx, settings.max_tiles, rng)
            if fusion and stage in ("II", "III", "III-0", "baseline") and settings.modality_dropout:
                batch = _modality_dropout(batch, settings.modality_dropout, rng)
            out = model(batch)
            if stage == "I":
                loss = calibration_loss(model.calibrator(out.u), y[idx])
            elif stage == "distill":
                loss = distillation_loss(out.pred, teacher[idx])
            else:
                loss = heteroscedastic_loss(out.pred, y[idx], log_sigma) + out.aux_loss
                if out.genes is not None and batch.genes is not None:  # HE2RNA's gene layer
                    loss = loss + gene_loss(out.genes, batch.genes)
                if coral is not None and out.fused is not None:
                    loss = loss + settings.lambda_coral * coral.loss(out.fused, idx)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            total += loss.item() * len(idx)
        history.append(total / n)
    model.eval()
    return {"stage": stage, "epochs": epochs[stage], "loss": [round(v, 5) for v in history]}


def _coral_bank(model, arrays: FoldArrays):
    """The CORAL feature bank of stage III: every training patient's fused features from an
    eval-mode pass (no dropout) of the stage-II weights, and their sites; ``None`` for a
    model without fused features."""
    import torch

    from ..models import FeatureBankCoral

    model.eval()
    with torch.no_grad():
        fused = [model(make_batch(arrays, idx)).fused for idx in _chunks(len(arrays), 64)]
    if any(f is None for f in fused):
        return None
    return FeatureBankCoral(torch.cat(fused), torch.from_numpy(arrays.site))


def _chunks(n: int, size: int, order=None):
    order = np.arange(n) if order is None else order
    for start in range(0, n, size):
        yield order[start : start + size]


def predict(model, arrays: FoldArrays, batch_size: int = 64) -> np.ndarray:
    """Predictions (P, J) of ``model`` (eval mode, every tile) on ``arrays``."""
    import torch

    model.eval()
    with torch.no_grad():
        return np.concatenate(
            [
                model(make_batch(arrays, idx)).pred.numpy()
                for idx in _chunks(len(arrays), batch_size)
            ]
        )


# ---------------------------------------------------------------------------- one model's fit
#: Settings every fit reads (the stage-II-style optimisation and the layers' sizes).
_COMMON = frozenset(
    {"hidden", "dropout", "lr", "batch_size", "weight_decay", "seed", "rad_components"}
    | {"rad_reduction"}
)


def settings_read(name: str) -> frozenset[str]:
    """The :class:`TrainSettings` the fit of registered model ``name`` reads, so that the
    nested selection multiplies only those (a setting a model ignores would refit the same
    model at another grid point).

    Every fit reads the sizes and the optimiser's settings; a model reading slides reads
    ``max_tiles``; a text-guided one ``tau`` (its prompt attention's temperature); a fusion
    model ``modality_dropout``; the curriculum (``gated_fusion``) its four stages' epochs,
    ``lr_prompts`` and ``lambda_coral``; the CLIP-guided MIL stages I and II; the others
    ``epochs_baseline``.

    >>> sorted(settings_read("gated_fusion") - settings_read("mean_pool"))[:3]
    ['epochs_distill', 'epochs_stage1', 'epochs_stage2']
    """
    from ..models import model_info

    info = model_info(name)
    used = set(_COMMON)
    if "wsi" in info.modalities:
        used.add("max_tiles")
    if info.needs_prompts:
        used.add("tau")
    if len(info.modalities) == 2:
        used.add("modality_dropout")
    if name in ("gated_fusion", "student"):
        used |= {"epochs_stage1", "epochs_stage2", "epochs_stage3", "epochs_distill"}
        used |= {"lr_prompts", "lambda_coral"}
    elif name.startswith("clip_mil"):
        used |= {"epochs_stage1", "epochs_stage2", "lr_prompts"}
    else:
        used.add("epochs_baseline")
    return frozenset(used)


def fit_digest(
    name: str, arrays: FoldArrays, prompts, settings, spec, inputs=None, text=None
) -> dict:
    """The configuration a checkpoint of this fit is keyed by (its sha256 is the checkpoint's
    ``digest``): the model, every setting, the spec, the sha256 of the training arrays (the
    targets, the tile features and the harmonised, filtered radiomics as the fold's
    preprocessor made them: :meth:`FoldArrays.digest`), the sha256 of the prompt embeddings
    (text-guided models), that of CoOp's text tower ``text`` (its weights and prompt tokens)
    and ``inputs``, the provenance of those arrays (encoder id, weights sha256, prompt texts,
    ComBat and the ICC threshold). The arrays' digest alone determines the fit; ``inputs``
    makes a changed upstream choice visible in the checkpoint's JSON."""
    prompt_digest = None
    if prompts is not None:
        values = np.ascontiguousarray(np.asarray(prompts, np.float32))
        prompt_digest = hashlib.sha256(repr(values.shape).encode() + values.tobytes()).hexdigest()
    return {
        "model": name,
        "settings": settings.to_dict(),
        "spec": spec.to_dict(),
        "patients": _digest({"ids": list(arrays.patients)}),
        "arrays": arrays.digest(),
        "prompts": prompt_digest,
        "text_tower": None if text is None else text.digest(),
        "inputs": dict(inputs or {}),
    }


def fit_model(
    name: str,
    arrays: FoldArrays,
    prompts,
    tile_dim: int,
    n_sites: int,
    settings: TrainSettings,
    checkpoint_dir: Path | str | None = None,
    with_student: bool = True,
    with_plain: bool = True,
    inputs: dict | None = None,
    text=None,
) -> dict:
    """Fit registered model ``name`` on a fold's training ``arrays``; returns ``{output name:
    model}``. ``gated_fusion`` runs the whole curriculum and returns ``gated_fusion`` (stage III,
    λ_coral = 0), ``gated_fusion_coral`` (stage III with CORAL) and ``student``
    (``with_plain=False`` / ``with_student=False`` skip the first or the last: the nested
    selection scores ``gated_fusion_coral`` alone); CLIP-guided MIL models run stages I and II;
    the others are trained with the stage-II loss.

    A stage's checkpoint under ``checkpoint_dir`` is reused only if its digest matches
    (:func:`fit_digest`): the model, settings and spec, the training arrays, the prompt
    embeddings and ``inputs`` (what produced the arrays: encoder, weights, prompt texts,
    preprocessing settings). ``text`` is the frozen text tower CoOp (``clip_mil_coop``) runs
    (:class:`~stromalens.models.TextTower`; other models ignore it)."""
    import torch

    from ..models import create_model, model_info

    info = model_info(name)
    ckdir = Path(checkpoint_dir) if checkpoint_dir is not None else None
    spec = model_spec(arrays, tile_dim, settings, n_sites)
    text = text if info.needs_text else None
    base_config = fit_digest(
        name, arrays, prompts if info.needs_prompts else None, settings, spec, inputs, text
    )
    started = time.perf_counter()

    def run(model, stage: str, ckname: str, log_sigma=None, teacher=None, parent=None):
        config = base_config | {"stage": stage, "parent": parent}
        path = ckdir / ckname if ckdir is not None else None
        cached = _cached(path, config)
        if cached is not None:
            loaded, _, sigma = cached
            if log_sigma is not None and sigma is not None:
                with torch.no_grad():
                    log_sigma.copy_(sigma)
            return loaded, config
        history = train_stage(model, arrays, stage, settings, log_sigma, teacher)
        if path is not None:
            save_checkpoint(path, model, config, log_sigma, history)
        return model, config

    torch.manual_seed(settings.seed)
    model = create_model(
        name, spec, prompts=torch.as_tensor(prompts) if info.needs_prompts else None, text=text
    )
    log_sigma = torch.nn.Parameter(torch.zeros(spec.n_targets))
    outputs = {}
    if name == "gated_fusion":
        model, c1 = run(model, "I", "gated_fusion.stage1")
        model, c2 = run(model, "II", "gated_fusion.stage2", log_sigma, parent=_digest(c1))
        if with_plain:
            sigma2 = log_sigma.detach().clone()
            plain = copy.deepcopy(model)
            plain, _ = run(plain, "III-0", "gated_fusion.stage3", log_sigma, parent=_digest(c2))
            outputs["gated_fusion"] = plain
            with torch.no_grad():
                log_sigma.copy_(sigma2)
        coral, _ = run(model, "III", "gated_fusion.stage3_coral", log_sigma, parent=_digest(c2))
        outputs["gated_fusion_coral"] = coral
        if with_student:
            teacher_pred = predict(coral, arrays)
            student = create_model("student", spec).load_from_teacher(coral)
            student, _ = run(student, "distill", "student", teacher=teacher_pred)
            outputs["student"] = student
    elif name.startswith("clip_mil"):
        model, c1 = run(model, "I", f"{name}.stage1")
        model, _ = run(model, "II", f"{name}.stage2", log_sigma, parent=_digest(c1))
        outputs = {name: model}
    elif name == "student":
        raise ValueError("'student' is trained by distillation inside the 'gated_fusion' fit")
    else:
        model, _ = run(model, "baseline", name, log_sigma)
        outputs = {name: model}
    event(log, "model fitted", model=name, seconds=round(time.perf_counter() - started, 2))
    return outputs
