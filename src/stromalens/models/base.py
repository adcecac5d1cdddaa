"""The MIL interface shared by every model: batch, output, specification, building blocks.

A batch holds B patients. Tile bags are padded to the longest bag N; ``mask`` marks real tiles.
A patient without a slide has an all-False mask row and ``has_wsi = False``; a patient without
MRI has a zero radiomics row and ``has_rad = False``. Attention is exactly 0 on padding and sums
to 1 over a slide's real tiles (all 0 when the slide is missing).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace

import torch
from torch import nn

from ..names import TARGETS  # noqa: F401 - the heads' order


@dataclass(frozen=True)
class ModelSpec:
    """Sizes and settings every registered model is built from (JSON-serialisable).

    Parameters
    ----------
    tile_dim : dimension D of the (frozen CLIP) tile embeddings
    rad_dim : number R of radiomics features (after selection)
    n_targets : J, the number of regression targets (3)
    hidden : width H of the encoders E_wsi, E_rad and of the trunk
    dropout : dropout probability inside the MLP encoders and the trunk
    tau : temperature τ of the log-sum-exp prompt-similarity attention
    n_sites : number of sites (CORAL groups); informational for the models
    n_genes : G, the genes of the training expression table (HE2RNA's gene layer); 0 when the
        study has no gene table
    """

    tile_dim: int
    rad_dim: int
    n_targets: int = 3
    hidden: int = 64
    dropout: float = 0.1
    tau: float = 0.1
    n_sites: int = 1
    n_genes: int = 0

    def __post_init__(self) -> None:
        for name in ("tile_dim", "rad_dim", "n_targets", "hidden"):
            if getattr(self, name) < 1:
                raise ValueError(f"ModelSpec.{name} must be ≥ 1, got {getattr(self, name)}")
        if self.n_genes < 0:
            raise ValueError(f"ModelSpec.n_genes must be ≥ 0, got {self.n_genes}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"ModelSpec.dropout must be in [0, 1), got {self.dropout}")
        if self.tau <= 0:
            raise ValueError(f"ModelSpec.tau must be > 0, got {self.tau}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> ModelSpec:
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown ModelSpec keys: {sorted(unknown)}")
        return cls(**data)


@dataclass
class MILBatch:
    """A padded batch of B patients.

    tiles   (B, N, D) float   tile embeddings, zero on padding
    mask    (B, N)    bool    True on real tiles
    rad     (B, R)    float   radiomics (standardised), zero where missing
    has_wsi (B,)      bool
    has_rad (B,)      bool
    site    (B,)      long    site codes (CORAL groups)
    genes   (B, G) float | None  z-scored log-expression of the gene table, NaN unknown
                              (training only: what HE2RNA's gene layer is fitted to)
    """

    tiles: torch.Tensor
    mask: torch.Tensor
    rad: torch.Tensor
    has_wsi: torch.Tensor
    has_rad: torch.Tensor
    site: torch.Tensor
    genes: torch.Tensor | None = None

    def __post_init__(self) -> None:
        b = self.tiles.shape[0]
        if self.tiles.ndim == 3 and self.tiles.shape[1] == 0:  # nobody has a slide: one pad
            self.tiles = self.tiles.new_zeros(b, 1, self.tiles.shape[2])
            self.mask = self.mask.new_zeros(b, 1)
        if self.tiles.ndim != 3:
            raise ValueError(f"tiles must be (B, N, D), got shape {tuple(self.tiles.shape)}")
        if tuple(self.mask.shape) != tuple(self.tiles.shape[:2]):
            raise ValueError(
                f"mask shape {tuple(self.mask.shape)} does not match tiles "
                f"{tuple(self.tiles.shape[:2])}"
            )
        for name in ("rad", "has_wsi", "has_rad", "site"):
            if getattr(self, name).shape[0] != b:
                raise ValueError(f"{name} has {getattr(self, name).shape[0]} rows for {b} patients")

    def __len__(self) -> int:
        return self.tiles.shape[0]

    def replace(self, **changes) -> MILBatch:
        return replace(self, **changes)

    def wsi_present(self) -> torch.Tensor:
        """(B,) bool: the slide is there and has at least one tile."""
        return self.has_wsi & self.mask.any(dim=1)


@dataclass
class MILOutput:
    """What a model returns.

    pred      (B, J)          predictions (in the scale the model was trained on)
    attention (B, J, N) | (B, N) | None   attention over tiles, 0 on padding
    fused     (B, F) | None   the fused representation (the features CORAL aligns)
    u         (B, J) | None   prompt similarity of the pooled slide representation (stage I)
    gate      (B, 2H) | None  gate values of the text-conditioned gate
    aux_loss  scalar          model-specific auxiliary loss (e.g. CLAM instance clustering)
    genes     (B, G) | None   predicted (z-scored) gene expression (HE2RNA's gene layer)
    """

    pred: torch.Tensor
    attention: torch.Tensor | None = None
    fused: torch.Tensor | None = None
    u: torch.Tensor | None = None
    gate: torch.Tensor | None = None
    aux_loss: torch.Tensor = field(default_factory=lambda: torch.zeros(()))
    genes: torch.Tensor | None = None


class MILModel(nn.Module):
    """Base class: ``forward(batch: MILBatch) -> MILOutput``.

    Subclasses are registered with :func:`~stromalens.models.registry.register_model`; they
    keep ``spec`` (a :class:`ModelSpec`) so a checkpoint can rebuild them.
    """

    model_name: str = "base"

    def __init__(self, spec: ModelSpec, prompts: torch.Tensor | None = None) -> None:
        super().__init__()
        self.spec = spec

    def forward(self, batch: MILBatch) -> MILOutput:  # pragma: no cover - abstract
        raise NotImplementedError

    def build_config(self) -> dict:
        """What, besides ``spec`` and the prompts, rebuilding the model's layers needs (saved
        in its checkpoint's JSON; e.g. CoOp's text tower architecture); empty by default."""
        return {}


# ---------------------------------------------------------------------------- building blocks
def masked_softmax(scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Softmax over the last axis restricted to ``mask``; exactly 0 on masked entries and all 0
    on a row without any unmasked entry (a missing slide).

    scores (..., N), mask (..., N) bool → (..., N)
    """
    filled = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
    weights = torch.softmax(filled, dim=-1) * mask  # (..., N); rows with no tile are uniform · 0
    return weights / weights.sum(dim=-1, keepdim=True).clamp_min(1e-12)


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``x`` (B, N, D) over real tiles ``mask`` (B, N) → (B, D); 0 for an empty bag."""
    m = mask.unsqueeze(-1).to(x.dtype)  # (B, N, 1)
    return (x * m).sum(1) / m.sum(1).clamp_min(1.0)


class MLPEncoder(nn.Module):
    """Two-layer MLP with dropout (E_wsi, E_rad and the trunk f):

    E(x) = Dropout(GELU(W₂ · Dropout(GELU(W₁ x + b₁)) + b₂)).

    No layer norm, although the study's encoders have one: a LayerNorm right after W₁ makes
    E invariant to the scale of W₁ (LN(c·u) = LN(u) for c > 0), so AdamW's weight decay no
    longer shrinks the function, only the parametrisation, and stops acting as the ridge-like
    penalty these ~100-patient fits rely on (van Laarhoven 2017, "L2 regularization versus
    batch and weight normalization"). Measured on the synthetic cohort (benchmarks/train_cv.py,
    one CV): without it, MRI-only macro-r 0.350 → 0.394, concat + MLP 0.457 → 0.547, ABMIL
    0.487 → 0.506 (its trunk is this encoder); ridge regression on the same 8 radiomics
    components reaches 0.44. ``tests/models/test_models.py`` checks that an MRI-only model
    recovers a linear signal nearly as well as scikit-learn's RidgeCV.
    """

    def __init__(self, d_in: int, d_out: int, dropout: float) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(d_in, d_out),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(d_out, d_out),
            nn.GELU(),
            nn.Dropout(dropout),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class TrunkHeads(nn.Module):
    """Shared trunk f followed by one linear head per target: ŷ_j = w_jᵀ f(h) + c_j."""

    def __init__(self, d_in: int, hidden: int, n_targets: int, dropout: float) -> None:
        super().__init__()
        self.trunk = MLPEncoder(d_in, hidden, dropout)
        self.heads = nn.ModuleList(nn.Linear(hidden, 1) for _ in range(n_targets))

    def forward(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f = self.trunk(h)  # (B, H)
        pred = torch.cat([head(f) for head in self.heads], dim=-1)  # (B, J)
        return pred, f


def zero_missing(z: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
    """Zero the latent rows of patients whose modality is missing (or dropped out)."""
    return z * present.unsqueeze(-1).to(z.dtype)
