"""Prompt perturbation by retraining, and the controls (leave-site-out, shuffled targets) under
the main CV's nested selection (issue 17, item 3)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from stromalens.rundir import TrainLayout
from stromalens.training import (
    assign_folds,
    curriculum,
    load_checkpoint,
    run_cv,
    run_leave_site_out,
)
from stromalens.training.prompt_sets import (
    PERTURBED_MODEL,
    load_prompt_sets,
    prompt_set_data,
    run_prompt_perturbation,
)

from .conftest import FAST, make_study

ROOT = Path(__file__).resolve().parents[2]
GRID = {"tau": [0.25, 1.0]}
CV = dict(folds=3, inner_folds=2, grid=GRID, workers=1)


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _sets(study, labels=("SYN", "OOD")) -> dict:
    """Perturbed prompt sets of the study's shape, one random direction set per label."""
    rng = np.random.default_rng(7)
    return {
        label: (rng.normal(size=study.prompts.shape).astype(np.float32), {"ers_caf": [label]})
        for label in labels
    }


@pytest.fixture(scope="module")
def perturbed(tmp_path_factory):
    study = make_study(n=18)
    root = tmp_path_factory.mktemp("prompt_sets")
    sets = _sets(study)
    summary = run_prompt_perturbation(study, root, sets, FAST, **CV)
    return study, root, sets, summary


def test_each_prompt_set_trains_the_wsi_model_with_its_own_text(perturbed):
    study, root, sets, summary = perturbed
    layout = TrainLayout(root)
    assert set(summary) == {"SYN", "OOD"}
    # the same assignment as the main CV of these patients (folds, seed)
    main_folds = assign_folds(study.patients, study.sites, CV["folds"], FAST.seed)
    for label, (emb, texts) in sets.items():
        run = layout.prompt_set(label)
        preds = pd.read_parquet(run.predictions)
        assert set(preds["model"]) == {"wsi_clip"}
        folds = pd.read_csv(run.folds, dtype={"patient_id": str}).set_index("patient_id")["fold"]
        pd.testing.assert_series_equal(folds, main_folds.rename("fold"), check_names=False)
        # the fitted model's (frozen) text embeddings are the set's, unit-normalised
        for k in range(CV["folds"]):
            model, meta, _ = load_checkpoint(run.checkpoint_dir(k) / f"{PERTURBED_MODEL}.stage2")
            text = model.pool.prompts.text.numpy()
            np.testing.assert_allclose(text, _unit(emb), rtol=1e-6, atol=1e-6)
            assert meta["config"]["inputs"]["prompt_text"] == texts
        # same nested selection as the main CV: the 2-point grid, every fold
        selection = pd.read_csv(run.selection)
        assert len(selection) == CV["folds"] * 2 and set(selection["model"]) == {"clip_mil"}
    syn = pd.read_parquet(layout.prompt_set("SYN").predictions)["y_pred"].to_numpy()
    ood = pd.read_parquet(layout.prompt_set("OOD").predictions)["y_pred"].to_numpy()
    assert not np.allclose(syn, ood)  # different text, different fit


def test_a_resumed_prompt_perturbation_refits_nothing(perturbed, monkeypatch):
    study, root, sets, _ = perturbed
    before = {
        label: pd.read_parquet(TrainLayout(root).prompt_set(label).predictions) for label in sets
    }

    def refit(*args, **kwargs):
        raise AssertionError("a checkpoint with a matching digest was refitted")

    monkeypatch.setattr(curriculum, "train_stage", refit)
    run_prompt_perturbation(study, root, sets, FAST, **CV)  # in-process: workers=1
    for label, frame in before.items():
        again = pd.read_parquet(TrainLayout(root).prompt_set(label).predictions)
        pd.testing.assert_frame_equal(frame, again)


def test_a_changed_prompt_set_refits_that_set(perturbed, monkeypatch, tmp_path):
    study, root, sets, _ = perturbed
    changed = {"SYN": (sets["SYN"][0][:, ::-1].copy(), sets["SYN"][1])}
    calls = []
    real = curriculum.train_stage
    monkeypatch.setattr(curriculum, "train_stage", lambda *a, **k: calls.append(1) or real(*a, **k))
    copy = tmp_path / "copy"
    shutil.copytree(root, copy)
    run_prompt_perturbation(study, copy, changed, FAST, **CV)
    assert calls  # the prompt embeddings are in the checkpoint digest


def test_prompt_sets_are_the_banks_groups():
    """load_prompt_sets gives each perturbed group's own embeddings: the bank rows of that
    group, as embed_bank wrote them (synthclip with random weights: no checkpoint needed)."""
    from stromalens.names import PROMPT_GROUPS, TARGETS
    from stromalens.wsi.encoders import get_encoder
    from stromalens.wsi.prompts import embed_bank, embedding_matrix, load_banks

    banks_dir = ROOT / "configs" / "prompts"
    sets = load_prompt_sets(banks_dir, "synthclip", "random", None)
    assert list(sets) == list(PROMPT_GROUPS.values())
    enc = get_encoder("synthclip", "random")
    banks = load_banks(banks_dir)
    for group, label in PROMPT_GROUPS.items():
        emb, texts = sets[label]
        for j, target in enumerate(TARGETS):
            table = embed_bank(banks[target], enc)
            rows = embedding_matrix(table[table["group"] == group])
            np.testing.assert_allclose(emb[j, : len(rows)], rows, rtol=1e-6)
            assert texts[target] == list(getattr(banks[target], group))
    assert not np.allclose(sets["SYN"][0], sets["ANTI"][0])


def test_a_prompt_set_of_another_width_is_refused():
    study = make_study(n=12)
    bad = np.zeros((3, 2, 5), np.float32)
    with pytest.raises(ValueError, match="prompt set SYN.*do not match"):
        prompt_set_data(study, bad, {}, "SYN")


def test_leave_site_out_selects_on_the_grid_within_the_training_sites(tmp_path):
    study = make_study(n=18)
    metrics = run_leave_site_out(study, tmp_path, FAST, grid=GRID, inner_folds=2)
    selection = pd.read_csv(tmp_path / "selection.csv")
    sites = sorted(set(study.sites))
    assert len(selection) == len(sites) * 2  # held-out sites × grid points
    assert sorted(selection["fold"].unique()) == sites
    assert set(selection["tau"]) == {0.25, 1.0}
    for site in sites:
        chosen = selection[selection["fold"] == site]
        best = chosen.loc[chosen["score"].idxmax(), "tau"]
        assert metrics["selected"][site]["gated_fusion"]["tau"] == best


def test_a_resumed_leave_site_out_refits_nothing(tmp_path, monkeypatch):
    """Leave-site-out keeps its fits (selection included) under checkpoints/site<k>/, named by
    the held-out site's sorted position rather than the manifest's label."""
    study = make_study(n=18)
    run_leave_site_out(study, tmp_path, FAST, grid=GRID, inner_folds=2)
    before = pd.read_parquet(tmp_path / "predictions.parquet")
    folders = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert folders == [f"site{k}" for k in range(len(set(study.sites)))]
    assert (tmp_path / "checkpoints" / "site0" / "select").is_dir()

    def refit(*args, **kwargs):
        raise AssertionError("a checkpoint with a matching digest was refitted")

    monkeypatch.setattr(curriculum, "train_stage", refit)
    run_leave_site_out(study, tmp_path, FAST, grid=GRID, inner_folds=2)
    pd.testing.assert_frame_equal(before, pd.read_parquet(tmp_path / "predictions.parquet"))


def test_the_permuted_control_selects_on_the_shuffled_targets(tmp_path):
    study = make_study(n=18)
    options = dict(models=["mean_pool"], folds=3, inner_folds=2, checkpoints=False)
    run_cv(study, tmp_path / "perm", FAST, grid={"weight_decay": [0.1, 1.0]},
           permute_targets=True, **options)  # fmt: skip
    run_cv(study, tmp_path / "main", FAST, grid={"weight_decay": [0.1, 1.0]}, **options)
    perm = pd.read_csv(tmp_path / "perm" / "selection.csv")
    main = pd.read_csv(tmp_path / "main" / "selection.csv")
    assert len(perm) == 3 * 2 and list(perm.columns) == list(main.columns)
    # the inner scores are of other targets: the selection saw the shuffled ones
    assert not np.allclose(perm["score"], main["score"])


def test_train_study_gives_every_control_the_grid_and_retrains_the_prompt_sets(tmp_path):
    """``train_study`` end to end on the evaluation's tiny stage outputs with a 2-point grid:
    leave-site-out, the shuffled-target control and each prompt set write their nested
    selection, and the prompt sets' wsi_clip runs on the main CV's folds."""
    import yaml

    from stromalens.config import StudyConfig, load_config
    from stromalens.training.run import train_study
    from tests.evaluation.conftest import build_tiny_study

    path = build_tiny_study(tmp_path / "study", n=24)
    study = yaml.safe_load(path.read_text(encoding="utf-8"))
    study["training"].update(
        models=["clip_mil", "mri_only"],
        grid={"weight_decay": [0.1, 1.0]},
        permuted_control=True,
        prompt_perturbation=True,
    )
    path.write_text(yaml.safe_dump(study), encoding="utf-8")
    layout = TrainLayout(tmp_path / "train")
    train_study(load_config(path, StudyConfig), layout.root)
    folds = 3
    sites = 4
    main = pd.read_csv(layout.selection)
    assert len(main) == folds * 2 * 2  # folds × points × models
    lso = pd.read_csv(layout.leave_site_out.selection)
    assert len(lso) == sites * 2 and set(lso["model"]) == {"gated_fusion"}
    assert len(pd.read_csv(layout.permuted.selection)) == folds * 2 * 2
    for label in ("SYN", "ANTI", "OOD"):
        run = layout.prompt_set(label)
        assert len(pd.read_csv(run.selection)) == folds * 2
        pd.testing.assert_frame_equal(pd.read_csv(run.folds), pd.read_csv(layout.folds))
