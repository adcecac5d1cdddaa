"""Faithful training (issue 17): weight decay on weights only, checkpoint digests covering every
input of a fit, one nested grid for every model, repeated CV."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from stromalens.models import ModelSpec, create_model
from stromalens.training.curriculum import decay_groups, make_optimiser

from ..models.towers import TEXTS, tiny_tower
from .conftest import FAST, make_study


# ---------------------------------------------------------------------------- weight decay
@pytest.mark.parametrize("name", ["gated_fusion", "transmil", "clip_mil_coop"])
def test_weight_decay_acts_on_weight_matrices_only(name):
    """One AdamW step with every gradient zero: Adam's update is then 0, so only the decoupled
    decay moves a parameter, θ ← θ (1 − lr·λ). log σ (set away from 0, where decay would show),
    biases, LayerNorm parameters and prompt vectors stay bit for bit; the Linear weights shrink
    by exactly that factor."""
    spec = ModelSpec(tile_dim=16, rad_dim=8, hidden=8)
    prompts = torch.randn(3, 2, 16)
    text = tiny_tower(16, texts=[row[:2] for row in TEXTS])  # CoOp's frozen text tower
    model = create_model(name, spec, prompts=prompts, text=text)
    log_sigma = torch.nn.Parameter(torch.full((3,), 0.7))
    settings = FAST.with_(lr=0.01, weight_decay=1.0)
    optimiser = make_optimiser(model, settings, log_sigma)
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    for p in [*model.parameters(), log_sigma]:
        p.grad = torch.zeros_like(p)
    optimiser.step()
    torch.testing.assert_close(log_sigma.detach(), torch.full((3,), 0.7), rtol=0, atol=0)
    decay, _ = decay_groups(model)
    decayed = {id(p) for p in decay}
    assert decayed, "every model has Linear weights"
    for key, p in model.named_parameters():
        if id(p) in decayed:
            torch.testing.assert_close(p.detach(), before[key] * (1 - 0.01 * 1.0))
            assert p.ndim == 2
        else:
            torch.testing.assert_close(p.detach(), before[key], rtol=0, atol=0)
    names = {k for k, p in model.named_parameters() if id(p) in decayed}
    assert not any(k.endswith("bias") or "norm" in k or "prompts" in k for k in names)


# ---------------------------------------------------------------------------- checkpoint digests
def _fits(monkeypatch, study, out, settings=FAST, **options) -> int:
    """The number of stages trained (not reloaded) by a CV of two models into ``out``."""
    from stromalens.training import curriculum, run_cv

    calls = []
    real = curriculum.train_stage

    def counting(model, arrays, stage, *args, **kwargs):
        calls.append((model.model_name, stage))
        return real(model, arrays, stage, *args, **kwargs)

    monkeypatch.setattr(curriculum, "train_stage", counting)
    run_cv(study, out, settings, models=["clip_mil", "mri_only"], folds=2, **options)
    return len(calls)


def _study(what: str = ""):
    """The tiny study, with one input changed by ``what``."""
    study = make_study(n=18)
    study.meta = {"inputs": {"encoder": "synthclip", "weights_sha256": "a" * 64}}
    if what == "target":
        study.targets.iloc[3, 1] += 0.5
    elif what == "feature":
        pid = next(iter(study.bags))
        study.bags[pid][0, 0] += 0.5
    elif what == "prompt":
        study.prompts[0, 0, 0] += 0.1
    elif what == "encoder":
        study.meta["inputs"] = {"encoder": "another_clip", "weights_sha256": "0" * 64}
    return study


@pytest.mark.parametrize(
    ("what", "refits"),
    [("target", 3), ("feature", 3), ("prompt", 4), ("encoder", 6), ("icc", 6), ("setting", 6)],
)
def test_a_changed_input_invalidates_the_checkpoints_and_nothing_changed_reuses_them(
    monkeypatch, tmp_path, what, refits
):
    """A rerun into the same folder reloads every stage when nothing changed, and refits when
    a target value, a tile feature, the prompt embeddings, the encoder's record, the ICC
    threshold or a training setting changed. One CV is 2 folds × (clip_mil: stages I and II;
    mri_only: one stage) = 6 trained stages; a prompt change refits clip_mil only (4); a
    changed patient is a training patient of one of the two folds, which alone refits (3)."""
    assert _fits(monkeypatch, _study(), tmp_path) == 6
    assert _fits(monkeypatch, _study(), tmp_path) == 0  # nothing changed: all reloaded
    options = {"icc_threshold": 0.5} if what == "icc" else {}
    settings = FAST.with_(dropout=0.2) if what == "setting" else FAST
    assert _fits(monkeypatch, _study(what), tmp_path, settings, **options) == refits


# ---------------------------------------------------------------------------- one nested grid
def test_each_model_is_selected_over_the_grid_keys_it_reads():
    from stromalens.training.cv import model_grid

    grid = {"tau": [0.25, 1.0], "lambda_coral": [0.0, 0.1, 0.3], "weight_decay": [0.1, 1.0]}
    assert len(model_grid("gated_fusion", grid)) == 2 * 3 * 2  # τ × λ_coral × decay
    assert len(model_grid("clip_mil", grid)) == 2 * 2  # no CORAL stage
    assert len(model_grid("mean_pool", grid)) == 2  # no prompts, no CORAL
    assert model_grid("mri_only", grid) == [{"weight_decay": 0.1}, {"weight_decay": 1.0}]
    assert model_grid("mri_only", {"tau": [0.25, 1.0]}) == [{}]
    with pytest.raises(ValueError, match="rad_components"):
        model_grid("mri_only", {"rad_components": [2, 4]})


def test_config_grid_refuses_preprocessing_keys_and_empty_lists():
    from stromalens.config import TrainingConfig

    with pytest.raises(ValueError, match="rad_components.*training.settings"):
        TrainingConfig(grid={"rad_components": [2, 4]})
    with pytest.raises(ValueError, match="tau"):
        TrainingConfig(grid={"tau": []})
    with pytest.raises(ValueError, match="lambda_coral=-1"):
        TrainingConfig(grid={"lambda_coral": [-1]})


def test_every_model_gets_the_nested_selection_and_is_refitted_at_its_best_point(tmp_path):
    """λ_coral and weight decay in the grid: gated fusion is selected over both (4 points),
    mean pooling over weight decay alone (2); each outer fit uses its model's best inner
    score, and a model that reads no grid key (none here) would get the base settings."""
    import pandas as pd

    from stromalens.training import run_cv

    study = make_study(n=24)
    grid = {"lambda_coral": [0.0, 0.3], "weight_decay": [0.1, 1.0]}
    metrics = run_cv(
        study, tmp_path, FAST, models=["gated_fusion", "mean_pool"], folds=2, inner_folds=2,
        grid=grid, checkpoints=False,
    )  # fmt: skip
    selection = pd.read_csv(tmp_path / "selection.csv")
    assert selection.groupby("model").size().to_dict() == {"gated_fusion": 8, "mean_pool": 4}
    assert selection.loc[selection["model"] == "mean_pool", "lambda_coral"].isna().all()
    for (fold, model), part in selection.groupby(["fold", "model"]):
        best = part.iloc[int(np.argmax(part["score"].to_numpy()))]
        chosen = metrics["selected"][str(fold)][model]
        assert chosen["weight_decay"] == best["weight_decay"]
        if model == "gated_fusion":
            assert chosen["lambda_coral"] == best["lambda_coral"]
        else:
            assert chosen["lambda_coral"] == FAST.lambda_coral  # not a key mean pooling reads


# ---------------------------------------------------------------------------- repeated CV
def test_repeated_cv_reassigns_the_folds_and_labels_every_row(tmp_path):
    """Two repeats: every patient once per repeat, model and target; the repeats' folds
    differ; repeat 0 is bit for bit the single CV; the evaluation's reader (RunFiles) sees
    repeat 0 alone, one row per patient, model and target."""
    import pandas as pd

    from stromalens.rundir import RunFiles
    from stromalens.training import run_cv

    study = make_study(n=18)
    options = dict(models=["mean_pool", "mri_only"], folds=3, checkpoints=False)
    metrics = run_cv(study, tmp_path / "twice", FAST, repeats=2, **options)
    run_cv(study, tmp_path / "once", FAST, **options)
    both = pd.read_parquet(tmp_path / "twice" / "predictions.parquet")
    counts = both.groupby(["repeat", "model", "target", "patient_id"]).size()
    assert (counts == 1).all() and len(counts) == 2 * 2 * 3 * 18
    folds = pd.read_csv(tmp_path / "twice" / "folds.csv")
    assert list(folds.columns) == ["patient_id", "site", "fold", "fold_repeat1"]
    assert (folds["fold"] != folds["fold_repeat1"]).any()
    repeat1 = both[both["repeat"] == 1].merge(folds, on="patient_id")
    assert (repeat1["fold_x"] == repeat1["fold_repeat1"]).all()  # rows carry their own folds
    once = pd.read_parquet(tmp_path / "once" / "predictions.parquet")
    pd.testing.assert_frame_equal(both[both["repeat"] == 0].reset_index(drop=True), once)
    per_repeat = metrics["repeats"]["models"]["mri"]["macro_r"]
    assert metrics["repeats"]["n"] == 2 and len(per_repeat) == 2
    assert per_repeat[0] == metrics["models"]["mri"]["macro_r"]
    assert metrics["repeats"]["models"]["mri"]["macro_r_mean"] == pytest.approx(
        np.mean(per_repeat), abs=1e-4
    )
    read = RunFiles(tmp_path / "twice").predictions
    assert len(read) == len(once) and set(read["repeat"]) == {0}
    # the comparisons over fits read every repeat: 2 repeats × 3 folds = 6 splits
    from stromalens.evaluation.comparisons import fold_differences

    every = RunFiles(tmp_path / "twice").repeated_predictions
    assert len(every) == len(both) and set(every["repeat"]) == {0, 1}
    assert len(fold_differences(every, "mean_pool", "mri")) == 6
    with pytest.raises(ValueError, match="repeats"):
        run_cv(study, tmp_path / "bad", FAST, repeats=0, **options)
