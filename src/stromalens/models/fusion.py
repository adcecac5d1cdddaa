"""Gated multimodal fusion (the study's model), its fusion baselines, the MRI-only model and the
distilled student.

Gated fusion, for a patient with radiomics x_rad and slide representation [p^(1); …; p^(J)]::

    z_rad = E_rad(x_rad),     z_wsi = E_wsi([p^(1); …; p^(J)])           (0 where missing)
    g     = σ(W_g [z_rad; z_wsi; t̄] + b_g),   t̄ = [t̄^(1); …; t̄^(J)]   (text-conditioned gate)
    h     = g ⊙ [z_rad; z_wsi]
    ŷ_j   = w_jᵀ f(h) + c_j                                               (shared trunk f, J heads)

A missing modality (or one dropped by modality dropout, probability q in stage II) has its
latent set to 0, so the same network serves patients with a slide only, MRI only, or both.

Fusion baselines: late fusion (mean of a WSI-only and an MRI-only prediction, over the
modalities present), concat + MLP (h = [z_rad; z_wsi], no gate) and an MCAT-style co-attention
transformer (radiomics tokens attend over the tiles; Chen et al. 2021). The MRI-only model is
E_rad → f → heads; the student has the teacher's shapes with the WSI half of h set to 0, so it
starts from (reuses) the teacher's E_rad, trunk and heads before distillation.
"""

from __future__ import annotations

import torch
from torch import nn

from .base import (
    MILBatch,
    MILModel,
    MILOutput,
    MLPEncoder,
    ModelSpec,
    TrunkHeads,
    masked_softmax,
    zero_missing,
)
from .clip_mil import ClipGuidedPooling, check_prompts
from .losses import MonotoneCalibrator
from .registry import register_model


class TextGate(nn.Module):
    """g = σ(W_g [z_rad; z_wsi; t̄] + b_g); returns h = g ⊙ [z_rad; z_wsi] and g."""

    def __init__(self, hidden: int, text_dim: int) -> None:
        super().__init__()
        self.linear = nn.Linear(2 * hidden + text_dim, 2 * hidden)

    def forward(self, z_rad, z_wsi, t_bar):
        z = torch.cat([z_rad, z_wsi], dim=-1)  # (B, 2H)
        text = t_bar.flatten().expand(z.shape[0], -1)  # (B, J·D)
        g = torch.sigmoid(self.linear(torch.cat([z, text], dim=-1)))  # (B, 2H)
        return g * z, g


class PromptPooledFusion(MILModel):
    """Shared by the fusion models with a CLIP-guided slide branch: the prompt-attention
    pooling and the two encoders, built in one order (so a seed gives the same initial weights
    in every subclass), and the forward pass up to the two latents."""

    prompt_mode = "cur"

    def __init__(self, spec: ModelSpec, prompts: torch.Tensor | None = None) -> None:
        super().__init__(spec)
        prompts = check_prompts(prompts, spec)
        h = spec.hidden
        self.pool = ClipGuidedPooling(prompts, spec.tau, self.prompt_mode)
        self.e_wsi = MLPEncoder(spec.n_targets * spec.tile_dim, h, spec.dropout)
        self.e_rad = MLPEncoder(spec.rad_dim, h, spec.dropout)

    def encode(self, batch: MILBatch):
        """Prompt-pooled slide p (B, J, D), attention α (B, J, N), prompt similarity u (B, J),
        and the latents z_wsi, z_rad (B, H) before missing modalities are zeroed."""
        p, alpha, u = self.pool(batch.tiles, batch.mask)
        return p, alpha, u, self.e_wsi(p.flatten(1)), self.e_rad(batch.rad)


@register_model(
    "gated_fusion",
    modalities=("wsi", "mri"),
    needs_prompts=True,
    description="CLIP-guided MIL + radiomics MLP, text-conditioned sigmoid gate (the study model)",
    # the curriculum's three trained models: stage III with and without CORAL, and the student
    outputs=(
        ("gated_fusion_coral", "fusion", "gated_fusion.stage3_coral"),
        ("gated_fusion", "fusion_no_coral", "gated_fusion.stage3"),
        ("student", "mri_student", "student", "student"),
    ),
)
class GatedFusion(PromptPooledFusion):
    def __init__(self, spec: ModelSpec, prompts: torch.Tensor | None = None) -> None:
        super().__init__(spec, prompts)
        h = spec.hidden
        self.calibrator = MonotoneCalibrator(spec.n_targets)  # no random state
        self.gate = TextGate(h, spec.n_targets * spec.tile_dim)
        self.head = TrunkHeads(2 * h, h, spec.n_targets, spec.dropout)

    def forward(self, batch: MILBatch) -> MILOutput:
        _, alpha, u, z_wsi, z_rad = self.encode(batch)  # α (B, J, N), u (B, J), z (B, H)
        z_wsi = zero_missing(z_wsi, batch.wsi_present())
        z_rad = zero_missing(z_rad, batch.has_rad)
        fused, g = self.gate(z_rad, z_wsi, self.pool.prompts.mixture())  # (B, 2H)
        pred, _ = self.head(fused)  # (B, J)
        return MILOutput(pred=pred, attention=alpha, fused=fused, u=u, gate=g)


@register_model(
    "concat_mlp",
    modalities=("wsi", "mri"),
    needs_prompts=True,
    description="concat + MLP fusion: [z_rad; z_wsi] → trunk, no gate",
)
class ConcatMLP(PromptPooledFusion):
    def __init__(self, spec: ModelSpec, prompts: torch.Tensor | None = None) -> None:
        super().__init__(spec, prompts)
        self.head = TrunkHeads(2 * spec.hidden, spec.hidden, spec.n_targets, spec.dropout)

    def forward(self, batch: MILBatch) -> MILOutput:
        _, alpha, u, z_wsi, z_rad = self.encode(batch)
        z_wsi = zero_missing(z_wsi, batch.wsi_present())  # (B, H)
        z_rad = zero_missing(z_rad, batch.has_rad)  # (B, H)
        fused = torch.cat([z_rad, z_wsi], dim=-1)  # (B, 2H)
        pred, _ = self.head(fused)
        return MILOutput(pred=pred, attention=alpha, fused=fused, u=u)


@register_model(
    "late_fusion",
    modalities=("wsi", "mri"),
    needs_prompts=True,
    description="late fusion: mean of WSI-only and MRI-only predictions over present modalities",
)
class LateFusion(PromptPooledFusion):
    def __init__(self, spec: ModelSpec, prompts: torch.Tensor | None = None) -> None:
        super().__init__(spec, prompts)
        h = spec.hidden
        self.head_wsi = TrunkHeads(h, h, spec.n_targets, spec.dropout)
        self.head_rad = TrunkHeads(h, h, spec.n_targets, spec.dropout)

    def forward(self, batch: MILBatch) -> MILOutput:
        _, alpha, u, z_wsi, z_rad = self.encode(batch)
        pred_wsi, f_wsi = self.head_wsi(z_wsi)  # (B, J), (B, H)
        pred_rad, f_rad = self.head_rad(z_rad)  # (B, J), (B, H)
        w_wsi = batch.wsi_present().to(pred_wsi.dtype).unsqueeze(-1)  # (B, 1)
        w_rad = batch.has_rad.to(pred_rad.dtype).unsqueeze(-1)  # (B, 1)
        pred = (w_wsi * pred_wsi + w_rad * pred_rad) / (w_wsi + w_rad).clamp_min(1.0)
        fused = torch.cat([w_rad * f_rad, w_wsi * f_wsi], dim=-1)
        return MILOutput(pred=pred, attention=alpha, fused=fused, u=u)


@register_model(
    "mcat",
    modalities=("wsi", "mri"),
    needs_prompts=False,
    description="MCAT-style co-attention: radiomics tokens attend over tiles, then transformers",
)
class MCAT(MILModel):
    """Co-attention fusion after MCAT (Chen et al., ICCV 2021), with radiomics in place of
    genomics: the radiomics vector is projected to K tokens r_k; each attends over the tiles,

        A = softmax_t( (W_q r_k)ᵀ (W_k v_t) / √H ),   c_k = Σ_t A_kt W_v v_t   (padding masked),

    the co-attended tokens c and the radiomics tokens r each pass a transformer layer and are
    mean-pooled; h = [r̄; c̄] → trunk → heads. Attention returned is A averaged over tokens."""

    n_tokens = 4

    def __init__(self, spec: ModelSpec, prompts: torch.Tensor | None = None) -> None:
        super().__init__(spec)
        h = spec.hidden
        self.rad_tokens = nn.Linear(spec.rad_dim, self.n_tokens * h)
        self.tile_proj = nn.Sequential(nn.Linear(spec.tile_dim, h), nn.GELU())
        self.q, self.k, self.v = nn.Linear(h, h), nn.Linear(h, h), nn.Linear(h, h)
        layer = dict(d_model=h, nhead=4, dim_feedforward=2 * h, dropout=spec.dropout)
        self.wsi_transformer = nn.TransformerEncoderLayer(**layer, batch_first=True)
        self.rad_transformer = nn.TransformerEncoderLayer(**layer, batch_first=True)
        self.head = TrunkHeads(2 * h, h, spec.n_targets, spec.dropout)

    def forward(self, batch: MILBatch) -> MILOutput:
        b, h = len(batch), self.spec.hidden
        r = self.rad_tokens(batch.rad).view(b, self.n_tokens, h)  # (B, K, H)
        x = self.tile_proj(batch.tiles)  # (B, N, H)
        scores = self.q(r) @ self.k(x).transpose(1, 2) / h**0.5  # (B, K, N)
        attn = masked_softmax(scores, batch.mask.unsqueeze(1))  # (B, K, N)
        co = attn @ self.v(x)  # (B, K, H)
        c_bar = zero_missing(self.wsi_transformer(co).mean(1), batch.wsi_present())  # (B, H)
        r_bar = zero_missing(self.rad_transformer(r).mean(1), batch.has_rad)  # (B, H)
        fused = torch.cat([r_bar, c_bar], dim=-1)  # (B, 2H)
        pred, _ = self.head(fused)
        return MILOutput(pred=pred, attention=attn.mean(1), fused=fused)


@register_model(
    "mri_only",
    modalities=("mri",),
    description="radiomics MLP: E_rad → trunk → heads",
    study_name="mri",
)
class MRIOnly(MILModel):
    def __init__(self, spec: ModelSpec, prompts: torch.Tensor | None = None) -> None:
        super().__init__(spec)
        self.e_rad = MLPEncoder(spec.rad_dim, spec.hidden, spec.dropout)
        self.head = TrunkHeads(spec.hidden, spec.hidden, spec.n_targets, spec.dropout)

    def forward(self, batch: MILBatch) -> MILOutput:
        z_rad = zero_missing(self.e_rad(batch.rad), batch.has_rad)  # (B, H)
        pred, f = self.head(z_rad)
        return MILOutput(pred=pred, fused=f)


@register_model(
    "student",
    modalities=("mri",),
    description="MRI-only student distilled from the gated-fusion teacher (reuses E_rad, trunk)",
    study_name="mri_student",
)
class Student(MILModel):
    """h = [z_rad; 0] through the teacher-shaped trunk, so the teacher's E_rad, trunk and heads
    load into it unchanged (:meth:`load_from_teacher`)."""

    def __init__(self, spec: ModelSpec, prompts: torch.Tensor | None = None) -> None:
        super().__init__(spec)
        self.e_rad = MLPEncoder(spec.rad_dim, spec.hidden, spec.dropout)
        self.head = TrunkHeads(2 * spec.hidden, spec.hidden, spec.n_targets, spec.dropout)

    def forward(self, batch: MILBatch) -> MILOutput:
        z_rad = zero_missing(self.e_rad(batch.rad), batch.has_rad)  # (B, H)
        fused = torch.cat([z_rad, torch.zeros_like(z_rad)], dim=-1)  # (B, 2H)
        pred, _ = self.head(fused)
        return MILOutput(pred=pred, fused=fused)

    def load_from_teacher(self, teacher: GatedFusion) -> Student:
        """Copy E_rad, the trunk and the heads of a gated-fusion teacher."""
        if not isinstance(teacher, GatedFusion):
            raise TypeError(f"the teacher must be a GatedFusion, got {type(teacher).__name__}")
        self.e_rad.load_state_dict(teacher.e_rad.state_dict())
        self.head.load_state_dict(teacher.head.state_dict())
        return self
