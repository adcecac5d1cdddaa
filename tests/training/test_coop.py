"""CoOp in training (issue 17): the text tower stays frozen through stages I and II, travels in
the checkpoint and the bundle, and keys the checkpoint cache."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from stromalens.rundir import TrainLayout
from stromalens.training import TrainSettings, fit_model, load_checkpoint, predict, run_cv
from stromalens.training.bundle import FeatureContract, load_bundle, write_bundle
from stromalens.training.data import FoldPreprocessor

from ..models.towers import TEXTS, tiny_tower
from .conftest import make_study

FAST = TrainSettings(
    hidden=8,
    epochs_stage1=2,
    epochs_stage2=3,
    batch_size=8,
    max_tiles=16,
)
COOP = "clip_mil_coop"


def _study(seed: int = 0):
    study = make_study(n=18)
    study.text = tiny_tower(16, texts=[row[:2] for row in TEXTS], seed=seed)  # M = 2 prompts
    return study


def _fit(study, checkpoint_dir=None):
    prep = FoldPreprocessor(harmonise=False).fit(study, study.patients)
    arrays = prep.transform(study, study.patients)
    fitted = fit_model(COOP, arrays, study.prompts, 16, 3, FAST, checkpoint_dir, text=study.text)
    return fitted[COOP], arrays


def test_the_tower_stays_frozen_and_the_context_learns(tmp_path):
    study = _study()
    model, arrays = _fit(study, tmp_path)
    given = study.text.state_dict()
    for key, value in model.pool.prompts.tower.state_dict().items():
        assert torch.equal(value, given[key]), f"{key} changed in training"
    context = model.pool.prompts.context.detach()
    assert not torch.allclose(context, study.text.context_init.expand_as(context))
    # the checkpoint rebuilds the tower and predicts the same
    loaded, meta, _ = load_checkpoint(tmp_path / f"{COOP}.stage2")
    assert meta["build"]["text_tower"]["n_ctx"] == study.text.n_ctx
    np.testing.assert_array_equal(predict(loaded, arrays), predict(model, arrays))


def test_another_text_tower_refits_the_same_one_reloads(tmp_path, monkeypatch):
    from stromalens.training import curriculum

    calls = []
    real = curriculum.train_stage
    monkeypatch.setattr(
        curriculum,
        "train_stage",
        lambda m, a, s, *x, **k: calls.append(s) or real(m, a, s, *x, **k),
    )
    study = _study()
    _fit(study, tmp_path)
    assert calls == ["I", "II"]
    _fit(study, tmp_path)
    assert calls == ["I", "II"]  # same tower: reloaded
    _fit(_study(seed=1), tmp_path)  # other tower weights: refitted
    assert calls == ["I", "II", "I", "II"]


def test_coop_travels_in_the_bundle(tmp_path):
    study = _study()
    train = TrainLayout(tmp_path / "train")
    run_cv(study, train.root, FAST, models=[COOP], folds=2, harmonise=False)
    write_bundle(
        train,
        [COOP],
        FeatureContract(None, None, 16, None, None),
        study.prompts,
        {},
        max_tiles=None,
        seed=FAST.seed,
    )
    bundle = load_bundle(train.root)
    assert bundle.models == [COOP]
    rows = pd.read_parquet(train.predictions)
    for fold in bundle.folds:
        test = rows[(rows["fold"] == fold.fold) & (rows["target"] == "ers_caf")]["patient_id"]
        model = fold.load(COOP)
        pred = fold.prep.inverse_targets(predict(model, fold.prep.transform(study, list(test))))
        expected = rows[rows["fold"] == fold.fold].pivot(
            index="patient_id", columns="target", values="y_pred"
        )
        got = pd.DataFrame(pred, index=list(test), columns=study.targets.columns)
        pd.testing.assert_frame_equal(
            got.loc[expected.index, expected.columns], expected, check_names=False
        )


def test_a_cv_of_coop_without_a_text_tower_refuses(tmp_path):
    with pytest.raises(ValueError, match="CoOp"):
        run_cv(make_study(n=18), tmp_path / "cv", FAST, models=[COOP], folds=2)
    assert not (tmp_path / "cv").exists()  # refused before anything is written
