"""Each branch's share of the gated fusion's representation: shares sum to 1, a hand-computed
example, and the real model's forward pass with its gate forced open on one branch."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from stromalens.evaluation.gates import contribution_shares
from stromalens.evaluation.probes import gate_rows
from stromalens.models import MILBatch, ModelSpec, create_model

D, R, J, H = 16, 10, 3, 8


def _batch(b: int = 5, n: int = 6) -> MILBatch:
    g = torch.Generator().manual_seed(0)
    lengths = torch.tensor([6, 4, 0, 5, 3][:b])  # patient 2 has no slide
    mask = torch.arange(n).unsqueeze(0) < lengths.unsqueeze(1)
    tiles = torch.randn(b, n, D, generator=g) * mask.unsqueeze(-1)
    has_rad = torch.tensor([True, True, True, False, True][:b])  # patient 3 has no MRI
    return MILBatch(
        tiles=tiles,
        mask=mask,
        rad=torch.randn(b, R, generator=g) * has_rad.unsqueeze(-1),
        has_wsi=mask.any(1),
        has_rad=has_rad,
        site=torch.zeros(b, dtype=torch.long),
    )


def _fusion(seed: int = 0):
    torch.manual_seed(seed)
    spec = ModelSpec(tile_dim=D, rad_dim=R, n_targets=J, hidden=H, dropout=0.0, tau=0.5)
    prompts = torch.randn(J, 3, D, generator=torch.Generator().manual_seed(1))
    return create_model("gated_fusion", spec, prompts=prompts).eval()


def test_shares_by_hand():
    # H = 2. Patient 1: h_rad = (3, 0), h_wsi = (0, 4): ‖h_rad‖² = 9, ‖h_wsi‖² = 16 of 25.
    # Patient 2: only the slide contributes. Patient 3: nothing (h = 0), so no share.
    h = np.array([[3.0, 0.0, 0.0, 4.0], [0.0, 0.0, 1.0, -2.0], [0.0, 0.0, 0.0, 0.0]])
    share_mri, share_wsi = contribution_shares(h)
    np.testing.assert_allclose(share_wsi[:2], [16 / 25, 1.0])
    np.testing.assert_allclose(share_mri[:2], [9 / 25, 0.0])
    assert np.isnan(share_wsi[2]) and np.isnan(share_mri[2])
    with pytest.raises(ValueError, match=r"fused must be \(B, 2H\).*\(2, 3\)"):
        contribution_shares(np.ones((2, 3)))


def test_shares_of_the_model_sum_to_one_and_follow_the_missing_modality():
    model, batch = _fusion(), _batch()
    with torch.no_grad():
        out = model(batch)
    rows = gate_rows(out, batch, [f"P{i}" for i in range(len(batch))], fold=0)
    share_wsi = np.array([r["share_wsi"] for r in rows])
    share_mri = np.array([r["share_mri"] for r in rows])
    np.testing.assert_allclose(share_wsi + share_mri, 1.0, rtol=1e-12)
    # the model zeroes a missing branch's latent, so it contributes nothing
    assert share_wsi[2] == 0.0 and rows[2]["has_wsi"] is False
    assert share_mri[3] == 0.0 and rows[3]["has_mri"] is False
    # the share is that of h = g ⊙ [z_rad; z_wsi], not the mean gate value of a half
    h = out.fused.numpy()
    expected = (h[:, H:] ** 2).sum(1) / (h**2).sum(1)
    np.testing.assert_allclose(share_wsi, expected, rtol=1e-6)
    gate_wsi = np.array([r["gate_wsi_mean"] for r in rows])
    np.testing.assert_allclose(gate_wsi, out.gate.numpy()[:, H:].mean(1), rtol=1e-6)


def test_a_gate_forced_open_on_one_branch_gives_it_the_whole_share():
    model, batch = _fusion(), _batch()
    with torch.no_grad():
        # g = σ(W_g[·] + b_g) with W_g = 0 and b_g = ∓50: g = 0 on the MRI half, 1 on the WSI
        model.gate.linear.weight.zero_()
        model.gate.linear.bias.copy_(torch.cat([torch.full((H,), -50.0), torch.full((H,), 50.0)]))
        out = model(batch)
    rows = gate_rows(out, batch, [f"P{i}" for i in range(len(batch))], fold=0)
    both = [r for r in rows if r["has_wsi"]]
    assert [r["share_wsi"] for r in both] == pytest.approx([1.0] * len(both), abs=1e-12)
    # a patient without a slide: only the (nearly shut, σ(−50) > 0) MRI half passes anything
    assert rows[2]["share_wsi"] == 0.0
    with torch.no_grad():
        model.gate.linear.bias.neg_()  # the other way round
        out = model(batch)
    rows = gate_rows(out, batch, [f"P{i}" for i in range(len(batch))], fold=0)
    with_mri = [r["share_mri"] for r in rows if r["has_mri"]]
    assert with_mri == pytest.approx([1.0] * len(with_mri), abs=1e-12)
