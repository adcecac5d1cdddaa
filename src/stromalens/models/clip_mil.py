"""CLIP-guided multiple-instance learning: prompt-similarity attention over frozen tile embeddings.

For target j with curated prompt embeddings t_{j,1..M} (unit norm, frozen CLIP text tower) and a
slide's tile embeddings v_1..v_N (unit norm, frozen CLIP image tower):

prompt mixture (γ ≥ 0, Σ_m γ_m = 1, parameterised by a softmax of free logits ω)::

    γ^(j) = softmax(ω^(j)),      t̄^(j) = Σ_m γ_m^(j) t_m^(j) / ‖Σ_m γ_m^(j) t_m^(j)‖

log-sum-exp prompt-similarity score of tile t, attention and pooled representation::

    s_t^(j) = τ⁻¹ log Σ_m γ_m^(j) exp(v_tᵀ t_m^(j) / τ)
    α_t^(j) = exp(s_t^(j)) / Σ_{t'∈slide} exp(s_{t'}^(j))        (padding tiles masked out)
    p^(j)   = Σ_t α_t^(j) v_t

and the slide representation is [p^(ERS–CAF); p^(LR); p^(H)]. The issue's score is
τ⁻¹ log Σ_m exp(v_tᵀ t_m / τ); weighting the sum by γ_m changes it, for uniform γ, only by the
constant τ⁻¹ log(1/M), which the softmax over tiles ignores, and lets the attention learn which
prompts matter. The stage-I similarity is u^(j) = p^(j)ᵀ t̄^(j).

Variants (the prompt ablation of the study): CUR uses the curated prompts; NONE replaces the
text by learnable query vectors (same shapes, random initialisation, no text); COOP (Zhou et
al. 2022) learns n_ctx context token embeddings c^(j) per target, prepended to the tokens of
each curated prompt and passed through the frozen CLIP text tower
(:class:`~stromalens.models.text_tower.TextTower`), t_m^(j) = T([c^(j); w^(m)]) / ‖·‖.

The context is class-specific (one per target, shared by the target's M prompts; CoOp's
"CSC" variant): here a "class" is a target, and each target has its own attention and its own
regression head with no softmax across targets, so one shared context would be pulled three
ways at once by unrelated mechanisms (fibroblast activation, ligand–receptor crosstalk,
compartment heterogeneity); within a target it is shared, as CoOp's unified context is shared
by the class names. It starts from the embedded words of
:data:`~stromalens.models.text_tower.COOP_CONTEXT_INIT` (CoOp's word initialisation), so before
training t_m^(j) is the text embedding of "<those words> <prompt m>".

References
----------
Radford A et al. CLIP, ICML 2021. Zhou K et al. Learning to prompt for vision-language models
(CoOp), IJCV 2022. Ilse M et al. Attention-based deep multiple instance learning, ICML 2018.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from .base import MILBatch, MILModel, MILOutput, MLPEncoder, ModelSpec, TrunkHeads, masked_softmax
from .losses import MonotoneCalibrator
from .registry import register_model


def check_prompts(prompts, spec: ModelSpec) -> torch.Tensor:
    """Validate prompt embeddings (J, M, D) against ``spec`` and return them as float32."""
    prompts = torch.as_tensor(prompts, dtype=torch.float32)
    if prompts.ndim != 3:
        raise ValueError(f"prompts must be (J, M, D), got shape {tuple(prompts.shape)}")
    if prompts.shape[0] != spec.n_targets or prompts.shape[2] != spec.tile_dim:
        raise ValueError(
            f"prompts of shape {tuple(prompts.shape)} do not match n_targets={spec.n_targets}, "
            f"tile_dim={spec.tile_dim}"
        )
    return prompts


def require_text_tower(tower) -> None:
    """CoOp's one refusal when no text tower was given (image-only encoder, or no text)."""
    if tower is None:
        raise ValueError(
            "CoOp (clip_mil_coop) learns context tokens through the frozen text tower of the "
            "study's CLIP encoder and got no text tower: use an open_clip encoder with text "
            "(an image-only encoder cannot run CoOp) or leave clip_mil_coop out of "
            "training.models"
        )


def check_tower(tower, prompts: torch.Tensor):
    """The CoOp text tower, checked against the prompt embeddings (J, M, D)."""
    from .text_tower import TextTower

    require_text_tower(tower)
    if not isinstance(tower, TextTower):
        raise TypeError(f"text must be a TextTower, got {type(tower).__name__}")
    c = tower.config
    if (c["n_targets"], c["n_prompts"], c["embed_dim"]) != tuple(prompts.shape):
        raise ValueError(
            f"the text tower embeds {c['n_targets']} × {c['n_prompts']} prompts of width "
            f"{c['embed_dim']}; the prompt embeddings are {tuple(prompts.shape)}"
        )
    return tower


class PromptMixture(nn.Module):
    """Prompt embeddings per target and their mixture weights γ = softmax(ω).

    mode ``"cur"`` (frozen curated text), ``"none"`` (learnable queries, no text) or ``"coop"``
    (learned context tokens per target through the frozen text tower ``tower``).
    """

    def __init__(self, prompts: torch.Tensor, mode: str = "cur", tower=None) -> None:
        super().__init__()
        if mode not in ("cur", "none", "coop"):
            raise ValueError(f"prompt mode must be 'cur', 'none' or 'coop', got {mode!r}")
        self.mode = mode
        j, m, d = prompts.shape
        self.register_buffer("text", F.normalize(prompts, dim=-1))  # (J, M, D)
        self.logits = nn.Parameter(torch.zeros(j, m))  # ω (J, M); γ uniform at start
        if mode == "none":
            self.queries = nn.Parameter(torch.randn(j, m, d) / d**0.5)  # (J, M, D)
        if mode == "coop":
            # a copy: loading or moving one model never touches another's tower
            self.tower = copy.deepcopy(check_tower(tower, prompts))
            init = self.tower.context_init  # (n_ctx, W)
            self.context = nn.Parameter(init.expand(j, -1, -1).clone())  # (J, n_ctx, W)

    @property
    def gamma(self) -> torch.Tensor:
        """(J, M) mixture weights, ≥ 0 and summing to 1 per target."""
        return torch.softmax(self.logits, dim=-1)

    def embeddings(self) -> torch.Tensor:
        """(J, M, D) unit-norm prompt embeddings used by the attention."""
        if self.mode == "none":
            return F.normalize(self.queries, dim=-1)
        if self.mode == "coop":
            return F.normalize(self.tower(self.context), dim=-1)  # (J, M, D)
        return self.text

    def mixture(self, t: torch.Tensor | None = None) -> torch.Tensor:
        """(J, D) the unit-norm mixture text embedding t̄^(j) (of ``t``, :meth:`embeddings`
        unless given: CoOp's pass through the tower is then not repeated)."""
        t = self.embeddings() if t is None else t  # (J, M, D)
        return F.normalize((self.gamma.unsqueeze(-1) * t).sum(1), dim=-1)


def prompt_attention(
    v: torch.Tensor, mask: torch.Tensor, prompts: torch.Tensor, gamma: torch.Tensor, tau: float
) -> torch.Tensor:
    """α^(j)_t = softmax_t( τ⁻¹ log Σ_m γ_m exp(v_tᵀ t_m / τ) ), masked.

    v (B, N, D) unit norm, mask (B, N), prompts (J, M, D) unit norm, gamma (J, M) → (B, J, N).
    """
    sim = torch.einsum("bnd,jmd->bjnm", v, prompts)  # (B, J, N, M)
    log_gamma = torch.log(gamma.clamp_min(1e-12))[None, :, None, :]  # (1, J, 1, M)
    scores = torch.logsumexp(sim / tau + log_gamma, dim=-1) / tau  # (B, J, N)
    return masked_softmax(scores, mask.unsqueeze(1))  # (B, J, N)


class ClipGuidedPooling(nn.Module):
    """The CLIP-guided MIL pooling: returns p (B, J, D), α (B, J, N) and u (B, J)."""

    def __init__(self, prompts: torch.Tensor, tau: float, mode: str = "cur", tower=None) -> None:
        super().__init__()
        self.prompts = PromptMixture(prompts, mode, tower)
        self.tau = tau

    def forward(self, tiles: torch.Tensor, mask: torch.Tensor):
        v = F.normalize(tiles, dim=-1) * mask.unsqueeze(-1)  # (B, N, D), 0 on padding
        t = self.prompts.embeddings()  # (J, M, D)
        alpha = prompt_attention(v, mask, t, self.prompts.gamma, self.tau)
        p = torch.einsum("bjn,bnd->bjd", alpha, v)  # (B, J, D)
        t_bar = self.prompts.mixture(t)  # (J, D)
        u = (p * t_bar.unsqueeze(0)).sum(-1)  # (B, J)  u^(j) = p^(j)ᵀ t̄^(j)
        return p, alpha, u


class ClipMIL(MILModel):
    """WSI-only CLIP-guided MIL: [p^(1); …; p^(J)] → E_wsi → trunk f → J linear heads."""

    prompt_mode = "cur"

    def __init__(self, spec: ModelSpec, prompts: torch.Tensor | None = None, text=None) -> None:
        super().__init__(spec)
        prompts = check_prompts(prompts, spec)
        self.pool = ClipGuidedPooling(prompts, spec.tau, self.prompt_mode, text)
        self.calibrator = MonotoneCalibrator(spec.n_targets)  # stage I
        self.e_wsi = MLPEncoder(spec.n_targets * spec.tile_dim, spec.hidden, spec.dropout)
        self.head = TrunkHeads(spec.hidden, spec.hidden, spec.n_targets, spec.dropout)

    def forward(self, batch: MILBatch) -> MILOutput:
        p, alpha, u = self.pool(batch.tiles, batch.mask)  # (B, J, D), (B, J, N), (B, J)
        z = self.e_wsi(p.flatten(1))  # (B, H)
        pred, f = self.head(z)
        return MILOutput(pred=pred, attention=alpha, fused=f, u=u)


@register_model(
    "clip_mil",
    modalities=("wsi",),
    needs_prompts=True,
    description="CLIP-guided MIL, curated prompts (CUR), WSI only",
    study_name="wsi_clip",
    checkpoint="clip_mil.stage2",  # stage I's checkpoint is clip_mil.stage1
)
class ClipMILCur(ClipMIL):
    prompt_mode = "cur"


@register_model(
    "clip_mil_none",
    modalities=("wsi",),
    needs_prompts=True,
    description="CLIP-guided MIL without text (NONE): learnable queries replace the prompts",
    checkpoint="clip_mil_none.stage2",
)
class ClipMILNone(ClipMIL):
    prompt_mode = "none"


@register_model(
    "clip_mil_coop",
    modalities=("wsi",),
    needs_prompts=True,
    needs_text=True,
    description="CLIP-guided MIL, CoOp context tokens through the frozen text tower (COOP)",
    checkpoint="clip_mil_coop.stage2",
)
class ClipMILCoop(ClipMIL):
    prompt_mode = "coop"

    def build_config(self) -> dict:
        """The text tower's architecture, saved with the checkpoint to rebuild it."""
        return {"text_tower": self.pool.prompts.tower.config}
