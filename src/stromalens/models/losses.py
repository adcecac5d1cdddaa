"""Losses of the three-stage curriculum and of the distillation.

Stage I — monotone calibrator of the prompt similarity u^(j) = p^(j)ᵀ t̄^(j) against the target
min–max scaled on the training fold (ỹ = (y − min) / (max − min + ε), ε = 1e-8)::

    g_j(u) = σ(a_j u + b_j),   a_j = softplus(â_j) ≥ 0,      L_I = Σ_j mean_i (g_j(u_ij) − ỹ_ij)²

Stage II — heteroscedastic multi-task regression (Kendall et al. 2018) with learned σ_j::

    L_II = Σ_j [ (1 / 2σ_j²) · MSE_j + log σ_j ]

Stage III — CORAL alignment of the fused features h over the sites d (the study's Eq. 24)::

    L_III = L_II + λ_coral · Σ_d ( ‖μ_d − μ‖² + ‖Σ_d − Σ‖_F² )      (+ weight decay)

with μ, Σ the mean and population (1/n) covariance of h, μ_d, Σ_d those of site d, computed over
the whole training fold at every step (:class:`FeatureBankCoral`): the current minibatch's rows
carry the gradient, every other patient enters with its latest (detached) features. A
minibatch of 32 holds ~6 patients per site, whose 128 × 128 covariance has rank ≤ 5, so a
per-batch CORAL aligns sampling noise; the bank aligns each site's full statistics, the
domain-balanced quantity Eq. 24 names (each site weighted once whatever its size).

Distillation — the MRI-only student S is trained on the teacher T's predictions (Eq. 26)::

    L_KD = mean_i ‖ŷ_S(x_i^rad) − ŷ_T(x_i)‖²  (+ β · mean_i ‖ŷ_S(x_i^rad) − y_i‖², β = 0 by default)

References
----------
Kendall A, Gal Y, Cipolla R. Multi-task learning using uncertainty to weigh losses. CVPR 2018.
Sun B, Saenko K. Deep CORAL: correlation alignment for deep domain adaptation. ECCV-W 2016.
Hinton G, Vinyals O, Dean J. Distilling the knowledge in a neural network. 2015.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _masked_mse(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-target MSE (J,) over the rows where the target is known (not NaN)."""
    known = ~torch.isnan(target)  # (B, J)
    diff = torch.where(known, pred - torch.nan_to_num(target), torch.zeros_like(pred))
    return (diff**2).sum(0) / known.sum(0).clamp_min(1)  # (J,)


def calibration_loss(calibrated: torch.Tensor, target01: torch.Tensor) -> torch.Tensor:
    """L_I = Σ_j mean_i (g_j(u_ij) − ỹ_ij)² (NaN targets ignored)."""
    return _masked_mse(calibrated, target01).sum()


def heteroscedastic_loss(
    pred: torch.Tensor, target: torch.Tensor, log_sigma: torch.Tensor
) -> torch.Tensor:
    """L_II = Σ_j [ exp(−2 log σ_j) / 2 · MSE_j + log σ_j ].

    pred (B, J), target (B, J) (NaN = unknown), log_sigma (J,) → scalar.
    """
    mse = _masked_mse(pred, target)  # (J,)
    return (0.5 * torch.exp(-2 * log_sigma) * mse + log_sigma).sum()


def gene_loss(pred: torch.Tensor, genes: torch.Tensor) -> torch.Tensor:
    """L_genes = mean_g MSE_g: HE2RNA's loss on the predicted (z-scored) log-expression of
    the G genes (Schmauch et al. 2020), over the patients whose expression is known.

    pred (B, G), genes (B, G) (NaN = unknown) → scalar.
    """
    return _masked_mse(pred, genes).mean()


def coral_loss(features: torch.Tensor, sites: torch.Tensor, min_count: int = 2) -> torch.Tensor:
    """Σ_d ( ‖μ_d − μ‖² + ‖Σ_d − Σ‖_F² ) over the sites with at least ``min_count`` rows.

    features (B, F), sites (B,) → scalar (0 when fewer than two sites are present).
    """
    if features.ndim != 2 or sites.shape[0] != features.shape[0]:
        raise ValueError(
            f"features (B, F) and sites (B,) expected, got {tuple(features.shape)} and "
            f"{tuple(sites.shape)}"
        )
    mu = features.mean(0)  # (F,)
    cov = torch.cov(features.T, correction=0)  # (F, F) population covariance
    total = features.new_zeros(())
    present = torch.unique(sites)
    if len(present) < 2:
        return total
    for d in present:
        x = features[sites == d]  # (n_d, F)
        if len(x) < min_count:
            continue
        total = (
            total
            + ((x.mean(0) - mu) ** 2).sum()
            + ((torch.cov(x.T, correction=0) - cov) ** 2).sum()
        )
    return total


class FeatureBankCoral:
    """CORAL over every training patient at every step, from a bank of their fused features.

    ``features`` (P, F), the fused features of the fold's P training patients (e.g. from an
    eval-mode pass before stage III), and their ``sites`` (P,) start the bank. ``loss(batch,
    index)`` puts the batch's features (B, F), with their gradient, in rows ``index`` of the
    bank, returns :func:`coral_loss` over all P rows and then stores the batch's rows
    (detached). So the gradient reaches only the batch, while the statistics are those of the
    whole fold: with the bank current, the value and the batch rows' gradient are those of
    the closed-form CORAL on the full data (tests/models). Patients seen earlier in an epoch
    enter with the features of the weights they were seen with (as in memory-bank methods,
    Wu et al., CVPR 2018); each is refreshed once per epoch.

    >>> bank = FeatureBankCoral(torch.zeros(4, 2), torch.tensor([0, 0, 1, 1]))
    >>> float(bank.loss(torch.ones(2, 2), torch.tensor([0, 1])))  # site 0 moved to (1, 1)
    1.5
    """

    def __init__(self, features: torch.Tensor, sites: torch.Tensor, min_count: int = 2) -> None:
        if features.ndim != 2 or sites.shape != features.shape[:1]:
            raise ValueError(
                f"features (P, F) and sites (P,) expected, got {tuple(features.shape)} and "
                f"{tuple(sites.shape)}"
            )
        self.bank = features.detach().clone()  # (P, F)
        self.sites = sites.clone()
        self.min_count = min_count

    def loss(self, features: torch.Tensor, index) -> torch.Tensor:
        index = torch.as_tensor(index, dtype=torch.long)
        full = self.bank.index_put((index,), features)  # out of place: grad flows to `features`
        value = coral_loss(full, self.sites, self.min_count)
        self.bank[index] = features.detach()
        return value


def distillation_loss(
    student: torch.Tensor,
    teacher: torch.Tensor,
    target: torch.Tensor | None = None,
    beta: float = 0.0,
) -> torch.Tensor:
    """L_KD = mean ‖ŷ_S − ŷ_T‖² (+ β · mean ‖ŷ_S − y‖², NaN labels ignored). (B, J) → scalar."""
    loss = _masked_mse(student, teacher.detach()).sum()
    if beta and target is not None:
        loss = loss + beta * _masked_mse(student, target).sum()
    return loss


class MonotoneCalibrator(nn.Module):
    """g_j(u) = σ(a_j u + b_j) with a_j = softplus(â_j) ≥ 0, so g_j is non-decreasing in u."""

    def __init__(self, n_targets: int) -> None:
        super().__init__()
        self.a_raw = nn.Parameter(torch.zeros(n_targets))  # â (J,)
        self.b = nn.Parameter(torch.zeros(n_targets))  # b (J,)

    @property
    def a(self) -> torch.Tensor:
        return F.softplus(self.a_raw)  # (J,) ≥ 0

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.a * u + self.b)  # (B, J)

    @torch.no_grad()
    def initialise(self, u: torch.Tensor, target01: torch.Tensor) -> None:
        """Start from the least-squares line of logit(ỹ) on u (slope floored at a small positive
        value, keeping a ≥ 0), so stage I begins near a sensible calibration."""
        y = torch.logit(target01.clamp(0.02, 0.98))
        for j in range(u.shape[1]):
            known = ~torch.isnan(y[:, j])
            x, t = u[known, j], y[known, j]
            if len(x) < 2 or x.std() < 1e-8:
                continue
            slope = ((x - x.mean()) * (t - t.mean())).sum() / ((x - x.mean()) ** 2).sum()
            slope = slope.clamp_min(0.1)
            self.a_raw[j] = slope + torch.log(-torch.expm1(-slope))  # softplus⁻¹
            self.b[j] = t.mean() - slope * x.mean()
