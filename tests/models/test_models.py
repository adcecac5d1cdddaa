"""Invariants of every registered model: attention, permutation invariance, gradients, gaps."""

from __future__ import annotations

import pytest
import torch

from stromalens.models import (
    MILBatch,
    ModelSpec,
    MonotoneCalibrator,
    coral_loss,
    create_model,
    distillation_loss,
    heteroscedastic_loss,
    list_models,
    model_info,
)
from stromalens.models.base import masked_softmax
from stromalens.models.clip_mil import prompt_attention

from .towers import tiny_tower

D, R, J = 16, 10, 3
LENGTHS = (7, 3, 0, 5)  # patient 3 has no slide
HAS_RAD = (True, False, True, True)  # patient 2 has no MRI


def make_batch(lengths=LENGTHS, has_rad=HAS_RAD, seed=0) -> MILBatch:
    g = torch.Generator().manual_seed(seed)
    b, n = len(lengths), max(lengths)
    tiles = torch.randn(b, n, D, generator=g)
    mask = torch.arange(n).unsqueeze(0) < torch.tensor(lengths).unsqueeze(1)
    tiles = tiles * mask.unsqueeze(-1)
    has_rad = torch.tensor(has_rad)
    rad = torch.randn(b, R, generator=g) * has_rad.unsqueeze(-1)
    return MILBatch(
        tiles=tiles,
        mask=mask,
        rad=rad,
        has_wsi=mask.any(1),
        has_rad=has_rad,
        site=torch.tensor([0, 1, 0, 1]),
    )


TOWER = tiny_tower(D)  # CoOp's frozen text tower (3 targets × 3 prompts, width D)


def build(name: str, seed: int = 0):
    torch.manual_seed(seed)
    spec = ModelSpec(tile_dim=D, rad_dim=R, n_targets=J, hidden=8, dropout=0.1, tau=0.5)
    prompts = torch.randn(J, 3, D, generator=torch.Generator().manual_seed(1))
    return create_model(name, spec, prompts=prompts, text=TOWER)


ALL = list_models()


def _has_attention(name: str) -> bool:
    with torch.no_grad():
        return build(name).eval()(make_batch()).attention is not None


WITH_ATTENTION = [name for name in ALL if _has_attention(name)]


def test_registry_lists_the_study_models():
    expected = {
        "gated_fusion", "clip_mil", "clip_mil_none", "clip_mil_coop", "mean_pool", "abmil",
        "clam_sb", "dsmil", "transmil", "he2rna", "late_fusion", "concat_mlp", "mcat",
        "mri_only", "student",
    }  # fmt: skip
    assert expected <= set(ALL)
    assert "mri_only" in list_models("mri") and "gated_fusion" in list_models("fusion")
    assert "abmil" in list_models("wsi")


def test_unknown_model_and_missing_prompts_are_value_errors():
    spec = ModelSpec(tile_dim=D, rad_dim=R)
    with pytest.raises(ValueError, match="nope"):
        create_model("nope", spec)
    with pytest.raises(ValueError, match="prompt"):
        create_model("gated_fusion", spec, prompts=None)
    with pytest.raises(ValueError, match="prompts of shape"):
        create_model("gated_fusion", spec, prompts=torch.zeros(2, 3, D))
    with pytest.raises(ValueError, match="tau"):
        ModelSpec(tile_dim=D, rad_dim=R, tau=0)


def test_masked_softmax_sums_to_one_and_is_zero_on_padding():
    batch = make_batch()
    w = masked_softmax(torch.randn(4, max(LENGTHS)) * 50, batch.mask)
    assert torch.all(w[~batch.mask] == 0)
    sums = w.sum(-1)
    torch.testing.assert_close(sums[batch.mask.any(1)], torch.ones(3))
    assert sums[2] == 0  # the patient without a slide


def test_the_attention_models_are_checked():
    assert {"gated_fusion", "clip_mil", "abmil", "clam_sb", "dsmil", "mcat"} <= set(WITH_ATTENTION)


@pytest.mark.parametrize("name", WITH_ATTENTION)
def test_attention_sums_to_one_and_is_zero_on_padding(name):
    model = build(name).eval()
    out = model(make_batch())
    att = out.attention if out.attention.ndim == 3 else out.attention.unsqueeze(1)  # (B, J, N)
    mask = make_batch().mask.unsqueeze(1).expand_as(att)
    assert torch.all(att[~mask] == 0)
    present = make_batch().mask.any(1)
    torch.testing.assert_close(att[present].sum(-1), torch.ones_like(att[present].sum(-1)))
    assert torch.all(att[~present] == 0)


@pytest.mark.parametrize("name", ALL)
def test_output_is_invariant_to_tile_permutation(name):
    model = build(name).eval()
    batch = make_batch()
    g = torch.Generator().manual_seed(5)
    perm = torch.randperm(batch.tiles.shape[1], generator=g)
    permuted = batch.replace(tiles=batch.tiles[:, perm], mask=batch.mask[:, perm])
    with torch.no_grad():
        a, b = model(batch), model(permuted)
    torch.testing.assert_close(a.pred, b.pred, rtol=1e-4, atol=1e-5)
    if a.attention is not None:
        torch.testing.assert_close(a.attention[..., perm], b.attention, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("name", ALL)
def test_forward_and_backward(name):
    model = build(name).train()
    out = model(make_batch())
    assert out.pred.shape == (4, J)
    loss = out.pred.pow(2).sum() + out.aux_loss
    if out.fused is not None:
        loss = loss + coral_loss(out.fused, make_batch().site)
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad and p.grad is not None]
    assert grads, f"{name}: no parameter received a gradient"
    assert all(torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("name", ALL)
def test_missing_modalities(name):
    model = build(name).eval()
    info = model_info(name)
    no_mri = make_batch(has_rad=(False,) * 4)
    full = make_batch()
    no_wsi = full.replace(
        tiles=torch.zeros_like(full.tiles),
        mask=torch.zeros_like(full.mask),
        has_wsi=torch.zeros_like(full.has_wsi),
    )
    only_one_tile = make_batch(lengths=(1, 1, 1, 1))
    with torch.no_grad():
        for batch in (no_mri, no_wsi, only_one_tile):
            assert torch.isfinite(model(batch).pred).all()
        if info.modalities == ("mri",):
            # an MRI-only model ignores the slides entirely
            torch.testing.assert_close(model(full).pred, model(no_wsi).pred)


def test_gated_fusion_modalities_enter_only_when_present():
    model = build("gated_fusion").eval()
    batch = make_batch()
    with torch.no_grad():
        out = model(batch)
        # changing the radiomics of the patient without MRI changes nothing
        rad = batch.rad.clone()
        rad[1] = 100.0
        torch.testing.assert_close(out.pred, model(batch.replace(rad=rad)).pred)
    assert out.gate.shape == (4, 16) and torch.all((out.gate > 0) & (out.gate < 1))
    assert out.u.shape == (4, J)


def test_prompt_attention_follows_the_similar_tiles():
    prompt = torch.nn.functional.normalize(torch.randn(1, 1, D), dim=-1)  # (J=1, M=1, D)
    tiles = torch.nn.functional.normalize(torch.randn(1, 5, D), dim=-1)
    tiles[0, 3] = prompt[0, 0]  # one tile equals the prompt
    alpha = prompt_attention(
        tiles, torch.ones(1, 5, dtype=torch.bool), prompt, torch.ones(1, 1), 2.0
    )
    assert alpha[0, 0].argmax() == 3
    # lower τ sharpens the attention
    sharp = prompt_attention(
        tiles, torch.ones(1, 5, dtype=torch.bool), prompt, torch.ones(1, 1), 1.0
    )
    assert sharp[0, 0, 3] > alpha[0, 0, 3]


def test_prompt_mixture_weights_are_a_simplex():
    model = build("gated_fusion")
    with torch.no_grad():
        model.pool.prompts.logits.normal_()
    gamma = model.pool.prompts.gamma
    assert torch.all(gamma >= 0)
    torch.testing.assert_close(gamma.sum(-1), torch.ones(J))
    torch.testing.assert_close(model.pool.prompts.mixture().norm(dim=-1), torch.ones(J))


def test_heteroscedastic_loss_by_hand():
    pred = torch.tensor([[1.0, 0.0], [3.0, 2.0]])
    target = torch.tensor([[0.0, 0.0], [1.0, float("nan")]])
    log_sigma = torch.tensor([0.0, torch.log(torch.tensor(2.0))])
    # MSE_1 = (1 + 4) / 2 = 2.5, MSE_2 = 0 (the NaN target is ignored)
    expected = 0.5 * 2.5 + 0.0 + (0.5 / 4) * 0.0 + float(torch.log(torch.tensor(2.0)))
    torch.testing.assert_close(
        heteroscedastic_loss(pred, target, log_sigma), torch.tensor(expected)
    )


def test_coral_loss_is_zero_for_identical_sites_and_grows_with_shift():
    x = torch.randn(20, 4, generator=torch.Generator().manual_seed(0))
    same = torch.cat([x, x])
    sites = torch.cat([torch.zeros(20), torch.ones(20)]).long()
    assert coral_loss(same, sites) < 1e-6
    shifted = torch.cat([x, x + 3.0])
    # ‖μ_d − μ‖² = 4 · 1.5² per site, covariances equal to the pooled one up to the shift term
    assert coral_loss(shifted, sites) > 2 * 4 * 1.5**2 - 1e-4
    assert coral_loss(x, torch.zeros(20).long()) == 0
    with pytest.raises(ValueError, match="features"):
        coral_loss(x, torch.zeros(3).long())


def _fit_on_one_thread_and_predict(name: str, train, test, tile_dim: int):
    """``name`` fitted at the default settings on one torch thread (the same weights on any
    machine), then its predictions on ``test``."""
    from stromalens.training import TrainSettings, fit_model, predict

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model = fit_model(name, train, None, tile_dim, 1, TrainSettings())[name]
    finally:
        torch.set_num_threads(threads)
    return predict(model, test)


def _mean_r(pred, truth) -> float:
    """Mean over the three targets of Pearson's r between predictions and the truth."""
    import numpy as np

    return float(np.mean([np.corrcoef(pred[:, j], truth[:, j])[0, 1] for j in range(3)]))


def _coral_numpy(x, sites):
    """The closed form, Σ_d ‖μ_d − μ‖² + ‖Σ_d − Σ‖_F², with numpy's population covariance
    (``np.cov(x.T, bias=True)``) over all rows of x."""
    import numpy as np

    mu, cov = x.mean(0), np.cov(x.T, bias=True)
    return sum(
        ((x[sites == d].mean(0) - mu) ** 2).sum()
        + ((np.cov(x[sites == d].T, bias=True) - cov) ** 2).sum()
        for d in np.unique(sites)
    )


def test_coral_over_the_feature_bank_is_the_full_data_coral_with_the_batch_gradient():
    """The bank holds every patient: its loss equals the closed-form CORAL of the full data
    (numpy), and the gradient reaches exactly the batch rows, with the values the full-data
    CORAL's gradient has there. Rows seen later in the epoch replace their bank entries."""
    from stromalens.models import FeatureBankCoral

    g = torch.Generator().manual_seed(3)
    full = torch.randn(30, 5, generator=g, dtype=torch.float64)
    full[:10] += 1.0  # site 0 shifted
    sites = torch.arange(30) % 3
    bank = FeatureBankCoral(full, sites)
    index = torch.tensor([2, 7, 11, 19, 25])
    batch = full[index].clone().requires_grad_(True)
    loss = bank.loss(batch, index)
    expected = _coral_numpy(full.numpy(), sites.numpy())
    assert loss.item() == pytest.approx(expected, rel=1e-10)
    loss.backward()
    reference = full.clone().requires_grad_(True)
    coral_loss(reference, sites).backward()
    torch.testing.assert_close(batch.grad, reference.grad[index])
    # a later batch with moved features: the bank now holds them (detached)
    moved = full[index] + 0.5
    bank.loss(moved, index)
    torch.testing.assert_close(bank.bank[index], moved)
    assert not bank.bank.requires_grad
    with pytest.raises(ValueError, match="sites"):
        FeatureBankCoral(full, sites[:3])


def test_monotone_calibrator_keeps_a_non_negative():
    cal = MonotoneCalibrator(2)
    with torch.no_grad():
        cal.a_raw.fill_(-50.0)
    assert torch.all(cal.a >= 0)
    u = torch.linspace(-1, 1, 11).unsqueeze(-1).expand(-1, 2)
    with torch.no_grad():
        cal.a_raw.copy_(torch.tensor([0.3, 2.0]))
    g = cal(u)
    assert torch.all(g[1:] >= g[:-1])  # non-decreasing in u
    y = torch.sigmoid(4 * u - 1)
    cal.initialise(u, y)
    torch.testing.assert_close(cal.a, torch.tensor([4.0, 4.0]), rtol=0.15, atol=0.2)


def test_distillation_loss_matches_teacher_only():
    s, t = torch.zeros(3, 2, requires_grad=True), torch.ones(3, 2)
    loss = distillation_loss(s, t)
    torch.testing.assert_close(loss, torch.tensor(2.0))
    loss.backward()
    assert s.grad is not None


def test_student_reuses_the_teacher():
    teacher, student = build("gated_fusion"), build("student", seed=9)
    student.load_from_teacher(teacher)
    torch.testing.assert_close(student.e_rad.net[0].weight, teacher.e_rad.net[0].weight)
    with pytest.raises(TypeError):
        student.load_from_teacher(build("mri_only"))


def test_mri_only_recovers_a_linear_signal_nearly_as_well_as_ridge():
    """Known answer: y = Bᵀx + noise on 8 standardised components (the radiomics' shape after
    the fold's PCA), 100 training patients. The MRI-only model (E_rad → trunk → heads, stage-II
    loss, the default settings) must come within 0.06 of scikit-learn's RidgeCV in mean r
    with the noise-free signal on 400 new patients. Reference, this seed: RidgeCV r ≈ 0.980;
    the model 0.941. With a LayerNorm after the encoders' first layer it reached 0.871: weight
    decay then no longer regularises the function (see MLPEncoder)."""
    import numpy as np
    from sklearn.linear_model import RidgeCV

    from stromalens.training.data import FoldArrays

    rng = np.random.default_rng(0)
    beta = (rng.normal(size=(8, 3)) / np.sqrt(8)).astype(np.float32)

    def arrays(n):
        x = rng.normal(size=(n, 8)).astype(np.float32)
        y = (x @ beta + 0.5 * rng.normal(size=(n, 3))).astype(np.float32)
        y01 = (y - y.min(0)) / (y.max(0) - y.min(0))
        return FoldArrays(
            patients=[f"p{i}" for i in range(n)],
            bags=[None] * n,
            rad=x,
            has_rad=np.ones(n, bool),
            site=np.zeros(n, int),
            y=y,
            y01=y01,
            tile_dim=D,
        ), x @ beta

    train, _ = arrays(100)
    test, signal = arrays(400)
    pred = _fit_on_one_thread_and_predict("mri_only", train, test, D)
    ridge = RidgeCV().fit(train.rad, train.y).predict(test.rad)
    r_model, r_ridge = _mean_r(pred, signal), _mean_r(ridge, signal)
    assert r_ridge > 0.95
    assert r_model > r_ridge - 0.06, (r_model, r_ridge)


def test_mean_pool_reads_a_small_direction_of_the_pooled_embedding_nearly_as_well_as_ridge():
    """Known answer: each patient's 64 tiles are v_t = 0.1·(0.2·Aᵀs + Uᵀ(n + e_t) + 0.05·ε_t),
    the three patient signals s (the targets' noise-free part) on directions A of the
    embedding, a patient nuisance n and tile variation e_t of SD 1 on two other directions U
    (the tissue mix) and isotropic tile noise ε_t, all at the small overall scale of a pooled
    embedding (SD per dimension about 0.1, as on the synthetic CLIP's: ``MeanPool``'s
    docstring); y = s + 0.3·noise, 100 training patients. The model (default settings) must
    come within 0.1 of scikit-learn's RidgeCV on the pooled embedding in mean r with s on
    300 new patients. Reference, this seed: RidgeCV r ≈ 0.998, the model 0.958; without the
    standardisation of the pooled embedding the model reached 0.497 (and 0.974 with the
    embedding at scale 1: what it lacked was the scale)."""
    import numpy as np
    from sklearn.linear_model import RidgeCV

    from stromalens.training.data import FoldArrays

    rng = np.random.default_rng(0)
    dim, tiles, scale = 32, 64, 0.1
    loading = rng.normal(size=(3, dim)) / np.sqrt(3)
    mix = rng.normal(size=(2, dim))

    def arrays(n):
        s = rng.normal(size=(n, 3))
        centre = 0.2 * s @ loading + rng.normal(size=(n, 2)) @ mix
        bags = [
            (
                scale
                * (c + rng.normal(size=(tiles, 2)) @ mix + 0.05 * rng.normal(size=(tiles, dim)))
            ).astype(np.float32)
            for c in centre
        ]
        y = (s + 0.3 * rng.normal(size=(n, 3))).astype(np.float32)
        y01 = (y - y.min(0)) / (y.max(0) - y.min(0))
        return FoldArrays(
            patients=[f"p{i}" for i in range(n)],
            bags=bags,
            rad=np.zeros((n, 1), np.float32),  # no MRI: the model reads the tiles only
            has_rad=np.zeros(n, bool),
            site=np.zeros(n, int),
            y=y,
            y01=y01,
            tile_dim=dim,
        ), s

    train, _ = arrays(100)
    test, signal = arrays(300)
    pred = _fit_on_one_thread_and_predict("mean_pool", train, test, dim)
    pooled = [np.stack([b.mean(0) for b in a.bags]) for a in (train, test)]
    ridge = RidgeCV(alphas=np.logspace(-4, 4, 17)).fit(pooled[0], train.y).predict(pooled[1])
    r_model, r_ridge = _mean_r(pred, signal), _mean_r(ridge, signal)
    assert r_ridge > 0.8, r_ridge
    assert r_model > r_ridge - 0.1, (r_model, r_ridge)
