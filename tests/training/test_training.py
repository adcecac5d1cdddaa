"""Training: folds, leakage-free preprocessing, determinism, checkpoints and the CV run files."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from stromalens.training import (
    FoldPreprocessor,
    TrainSettings,
    assign_folds,
    fit_model,
    load_checkpoint,
    make_batch,
    predict,
    run_cv,
)
from stromalens.training.cv import parameter_grid
from stromalens.training.data import TARGETS

from .conftest import FAST, make_study


def test_folds_are_patient_level_stratified_and_deterministic():
    patients = [f"P{i}" for i in range(53)]
    sites = np.array(["A"] * 25 + ["B"] * 17 + ["C"] * 8 + ["D"] * 3)
    folds = assign_folds(patients, sites, k=5, seed=1)
    assert folds.index.tolist() == patients and set(folds) == set(range(5))
    sizes = folds.value_counts()
    assert sizes.max() - sizes.min() <= 1
    table = pd.crosstab(pd.Series(sites, index=patients), folds)
    assert (table.max(axis=1) - table.min(axis=1) <= 1).all()  # every site spread evenly
    pd.testing.assert_series_equal(folds, assign_folds(patients, sites, k=5, seed=1))
    with pytest.raises(ValueError, match="folds"):
        assign_folds(patients, sites, k=1)


def test_parameter_grid_is_the_cartesian_product():
    assert parameter_grid(None) == [{}]
    grid = parameter_grid({"tau": [0.1, 1.0], "hidden": [8]})
    assert grid == [{"hidden": 8, "tau": 0.1}, {"hidden": 8, "tau": 1.0}]
    with pytest.raises(ValueError, match="tau"):
        parameter_grid({"tau": []})


def test_settings_validation_names_the_value():
    with pytest.raises(ValueError, match="modality_dropout"):
        TrainSettings(modality_dropout=1.5)
    with pytest.raises(ValueError, match="nope"):
        TrainSettings().with_(nope=1)


def test_make_batch_pads_and_masks(study):
    prep = FoldPreprocessor().fit(study, study.patients)
    arrays = prep.transform(study, study.patients)
    batch = make_batch(arrays, np.arange(6))
    lengths = [0 if b is None else len(b) for b in arrays.bags[:6]]
    assert batch.tiles.shape == (6, max(lengths), 16)
    assert batch.mask.sum(1).tolist() == lengths
    assert not batch.has_wsi[4] and not batch.has_rad[5]  # the planted gaps
    assert float(batch.tiles[~batch.mask].abs().sum()) == 0


def _perturb_heldout(study, test_ids):
    """A copy of ``study`` whose held-out patients' inputs and targets are all changed."""
    other = make_study()
    rng = np.random.default_rng(99)
    other.radiomics.loc[test_ids] = rng.normal(size=(len(test_ids), 12)) * 50
    other.targets.loc[test_ids] = rng.normal(size=(len(test_ids), 3)) * 50
    for pid in test_ids:
        if pid in other.bags:
            other.bags[pid] = rng.normal(size=other.bags[pid].shape).astype(np.float32) * 5
    pert = other.perturbations.copy()
    held = pert.index.get_level_values(0).isin(test_ids)
    pert.loc[held] = rng.normal(size=(int(held.sum()), 12)) * 50
    other.perturbations = pert
    return other


@pytest.mark.parametrize("reduction", [None, "pls", "pca"])
def test_perturbing_the_heldout_fold_leaves_the_fitted_state_unchanged(study, reduction):
    folds = assign_folds(study.patients, study.sites, k=3)
    train_ids = folds.index[folds != 0].tolist()
    test_ids = folds.index[folds == 0].tolist()
    changed = _perturb_heldout(study, test_ids)

    kwargs = {"rad_components": 3, "rad_reduction": reduction} if reduction else {}
    a = FoldPreprocessor(**kwargs).fit(study, train_ids)
    b = FoldPreprocessor(**kwargs).fit(changed, train_ids)
    if reduction:
        assert a.rad_components_.shape[0] == len(a.features_)  # (F, k) projection
    assert a.state() == b.state()
    assert a.combat_ is not None and 0 < len(a.features_) < 12  # ICC dropped the unstable ones
    assert all(f"f{k}" not in " ".join(a.features_) for k in (8, 9, 10, 11))
    # a model trained on the training fold is the same too
    arrays_a, arrays_b = a.transform(study, train_ids), b.transform(changed, train_ids)
    fit_a = fit_model("gated_fusion", arrays_a, study.prompts, 16, 3, FAST, with_student=False)
    fit_b = fit_model("gated_fusion", arrays_b, changed.prompts, 16, 3, FAST, with_student=False)
    for key, value in fit_a["gated_fusion_coral"].state_dict().items():
        np.testing.assert_array_equal(
            value.numpy(), fit_b["gated_fusion_coral"].state_dict()[key].numpy()
        )
    # while the held-out fold's transformed inputs do differ
    assert not np.allclose(a.transform(study, test_ids).rad, b.transform(changed, test_ids).rad)


def test_training_is_deterministic_for_a_seed_and_checkpoints_resume(study, tmp_path):
    prep = FoldPreprocessor().fit(study, study.patients)
    arrays = prep.transform(study, study.patients)
    first = fit_model("gated_fusion", arrays, study.prompts, 16, 3, FAST, tmp_path / "ck")
    second = fit_model("gated_fusion", arrays, study.prompts, 16, 3, FAST)
    assert set(first) == {"gated_fusion", "gated_fusion_coral", "student"}
    for name in first:
        np.testing.assert_array_equal(predict(first[name], arrays), predict(second[name], arrays))
    files = sorted(p.name for p in (tmp_path / "ck").iterdir())
    for stage in ("stage1", "stage2", "stage3", "stage3_coral"):
        assert (
            f"gated_fusion.{stage}.safetensors" in files and f"gated_fusion.{stage}.json" in files
        )
    assert "student.safetensors" in files
    meta = json.loads((tmp_path / "ck" / "gated_fusion.stage2.json").read_text())
    assert meta["config"]["settings"]["epochs_stage2"] == 3 and meta["model"] == "gated_fusion"
    model, _, log_sigma = load_checkpoint(tmp_path / "ck" / "gated_fusion.stage3_coral")
    np.testing.assert_allclose(predict(model, arrays), predict(first["gated_fusion_coral"], arrays))
    assert log_sigma is not None and log_sigma.shape == (3,)
    # a rerun loads every stage instead of training it: same predictions
    again = fit_model("gated_fusion", arrays, study.prompts, 16, 3, FAST, tmp_path / "ck")
    np.testing.assert_array_equal(
        predict(again["student"], arrays), predict(first["student"], arrays)
    )
    # a different setting is a different configuration: that stage is retrained
    other = fit_model("mri_only", arrays, None, 16, 3, FAST.with_(seed=1), tmp_path / "ck")
    assert "mri_only" in other


def test_a_checkpoint_of_other_layers_is_an_error_on_load_and_retrained_on_resume(study, tmp_path):
    """A checkpoint whose layers no longer match the model (written by an earlier version:
    e.g. with the encoders' former LayerNorm) names itself in a ValueError when loaded, and a
    resumed fit with the same settings retrains it instead of failing."""
    from safetensors.torch import load_file, save_file

    arrays = FoldPreprocessor().fit(study, study.patients).transform(study, study.patients)
    fit_model("mri_only", arrays, None, 16, 3, FAST, tmp_path / "ck")
    weights = tmp_path / "ck" / "mri_only.safetensors"
    state = load_file(str(weights))
    state["e_rad.net.1.weight"] = state["e_rad.net.0.bias"].clone()  # the old LayerNorm's slot
    save_file(state, str(weights))
    with pytest.raises(ValueError, match="mri_only.safetensors.*does not match"):
        load_checkpoint(tmp_path / "ck" / "mri_only")
    again = fit_model("mri_only", arrays, None, 16, 3, FAST, tmp_path / "ck")["mri_only"]
    reloaded, _, _ = load_checkpoint(tmp_path / "ck" / "mri_only")  # rewritten, loads again
    np.testing.assert_allclose(predict(reloaded, arrays), predict(again, arrays))


def test_cv_writes_out_of_fold_predictions_for_every_model(tmp_path):
    study = make_study(n=24)
    models = ["gated_fusion", "mean_pool", "mri_only"]
    metrics = run_cv(
        study,
        tmp_path,
        FAST.with_(epochs_stage2=2, epochs_baseline=2),
        models=models,
        folds=3,
        inner_folds=2,
        grid={"tau": [0.25, 1.0]},
    )
    predictions = pd.read_parquet(tmp_path / "predictions.parquet")
    assert list(predictions.columns) == [
        "patient_id",
        "fold",
        "model",
        "target",
        "y_true",
        "y_pred",
        "repeat",
    ]
    # the run files carry the study's names (model registry): gated_fusion's fit gives three
    expected = {"fusion", "fusion_no_coral", "mri_student", "mean_pool", "mri"}
    assert set(predictions["model"]) == expected
    counts = predictions.groupby(["model", "target", "patient_id"]).size()
    assert (counts == 1).all() and len(counts) == len(expected) * 3 * 24  # every patient once
    folds = pd.read_csv(tmp_path / "folds.csv")
    merged = predictions.merge(folds, on="patient_id", suffixes=("", "_csv"))
    assert (merged["fold"] == merged["fold_csv"]).all()
    truth = study.targets.stack().rename("t").reset_index()
    truth.columns = ["patient_id", "target", "t"]
    check = predictions.merge(truth, on=["patient_id", "target"])
    np.testing.assert_allclose(check["y_true"], check["t"])
    assert set(metrics["models"]) == expected
    assert set(metrics["models"]["fusion"]["targets"]) == set(TARGETS)
    assert (tmp_path / "metrics.json").is_file() and (tmp_path / "selection.csv").is_file()
    assert (tmp_path / "checkpoints" / "fold0" / "preprocessor.json").is_file()
    assert len(pd.read_csv(tmp_path / "selection.csv")) == 3 * 2  # folds × grid points


def test_cv_results_do_not_depend_on_the_worker_pool(tmp_path):
    """The task pool only changes the wall time: every fit in this process (one torch thread)
    and the same fits spread over two spawned workers give identical predictions and the same
    nested selection (a fold's gated-fusion fit waits for its selection either way)."""
    import torch

    study = make_study(n=18)
    options = dict(
        models=["gated_fusion", "mean_pool"],
        folds=3,
        inner_folds=2,
        grid={"tau": [0.25, 1.0]},
        checkpoints=False,
    )
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        serial = run_cv(study, tmp_path / "serial", FAST, workers=1, **options)
    finally:
        torch.set_num_threads(threads)
    pooled = run_cv(study, tmp_path / "pool", FAST, workers=2, **options)
    pd.testing.assert_frame_equal(
        pd.read_parquet(tmp_path / "serial" / "predictions.parquet"),
        pd.read_parquet(tmp_path / "pool" / "predictions.parquet"),
    )
    pd.testing.assert_frame_equal(
        pd.read_csv(tmp_path / "serial" / "selection.csv"),
        pd.read_csv(tmp_path / "pool" / "selection.csv"),
    )
    assert serial["selected"] == pooled["selected"]
    assert len(pd.read_csv(tmp_path / "pool" / "selection.csv")) == 3 * 2


def test_unknown_models_are_value_errors(tmp_path, study):
    with pytest.raises(ValueError, match="nope"):
        run_cv(study, tmp_path, FAST, models=["nope"])
    with pytest.raises(ValueError, match="student"):
        run_cv(study, tmp_path, FAST, models=["student"])


def test_a_batch_without_any_slide_keeps_the_tile_dimension(study):
    """A prediction fold in which no patient has a slide (small cohorts): the fusion model
    still runs, from the radiomics alone."""
    import torch

    from stromalens.models import ModelSpec, create_model

    no_slide = [p for p in study.patients if p not in study.bags]
    assert no_slide
    prep = FoldPreprocessor().fit(study, study.patients)
    arrays = prep.transform(study, no_slide)
    batch = make_batch(arrays)
    assert batch.tiles.shape[2] == study.tile_dim and not batch.has_wsi.any()
    spec = ModelSpec(
        tile_dim=study.tile_dim,
        rad_dim=arrays.rad.shape[1],
        n_targets=3,
        hidden=8,
        dropout=0.0,
        tau=0.5,
        n_sites=3,
    )
    model = create_model("gated_fusion", spec, prompts=torch.as_tensor(study.prompts))
    assert predict(model, arrays).shape == (len(no_slide), 3)


def test_combat_leaves_out_a_site_with_one_training_patient(study):
    """ComBat needs ≥ 2 patients per site; a site with one training patient gets the pooled
    standardisation (as an unseen site would) instead of failing the fold."""
    site_of = study.site_of()
    lonely = site_of.index[site_of == "C"][:1].tolist()
    train = site_of.index[site_of != "C"].tolist() + lonely
    prep = FoldPreprocessor(harmonise=True, icc_threshold=None).fit(study, train)
    assert prep.combat_ is not None and "C" not in set(prep.combat_.gamma_star_.index)
    x, _ = prep.transform_radiomics(study, site_of.index[site_of == "C"].tolist())
    assert np.isfinite(x).all()


def _standardised_training_matrix(study, train_ids):
    """Z of the training patients who have radiomics (those the reduction is fitted on)."""
    plain = FoldPreprocessor(harmonise=False, icc_threshold=None).fit(study, train_ids)
    arrays = plain.transform(study, train_ids)
    return arrays.rad[arrays.has_rad].astype(np.float64), plain, arrays.has_rad


def test_pca_reduction_equals_scikit_learn_pca(study):
    """Reference: sklearn.decomposition.PCA(k).fit_transform(Z), each score divided by its SD;
    equal up to each component's sign."""
    from sklearn.decomposition import PCA

    z, _, has = _standardised_training_matrix(study, study.patients)
    reference = PCA(n_components=3, svd_solver="full").fit_transform(z)
    reference /= reference.std(axis=0, ddof=1)
    prep = FoldPreprocessor(
        harmonise=False, icc_threshold=None, rad_components=3, rad_reduction="pca"
    )
    ours = prep.fit(study, study.patients).transform(study, study.patients).rad
    assert ours.shape == (len(study.patients), 3)
    assert not ours[~has].any()  # patients without MRI stay at 0
    ours = ours[has]
    signs = np.sign(np.sum(ours * reference, axis=0))
    np.testing.assert_allclose(ours, reference * signs, atol=1e-5)


def test_pls_reduction_is_fitted_against_the_training_targets(study):
    """Reference: sklearn.cross_decomposition.PLSRegression(k, scale=False) fitted on the
    standardised features and the z-scored targets; PLS maximises covariance with the targets,
    so its first component carries at least as much of them as the first principal one."""
    from sklearn.cross_decomposition import PLSRegression

    z, plain, has = _standardised_training_matrix(study, study.patients)
    patients = np.asarray(study.patients)[has]
    y = plain.target_scaler_.transform(study.targets.loc[patients]).to_numpy()
    reference = PLSRegression(2, scale=False).fit(z, y).transform(z)
    reference /= reference.std(axis=0, ddof=1)
    pls = FoldPreprocessor(
        harmonise=False, icc_threshold=None, rad_components=2, rad_reduction="pls"
    )
    ours = pls.fit(study, study.patients).transform(study, study.patients).rad[has]
    np.testing.assert_allclose(ours, reference, atol=1e-5)
    pca = FoldPreprocessor(
        harmonise=False, icc_threshold=None, rad_components=2, rad_reduction="pca"
    ).fit(study, study.patients)

    def covariance_norm(axis):  # ‖Yᵀ Z w‖ for a unit axis w: what PLS's first axis maximises
        return np.linalg.norm(y.T @ z @ (axis / np.linalg.norm(axis)))

    first_pls, first_pc = pls.rad_components_[:, 0], pca.rad_components_[:, 0]
    assert covariance_norm(first_pls) >= covariance_norm(first_pc) - 1e-9
    with pytest.raises(ValueError, match="rad_reduction"):
        FoldPreprocessor(rad_components=2, rad_reduction="ica")
    with pytest.raises(ValueError, match="preprocessing settings"):
        parameter_grid({"rad_components": [2, 4]})


@pytest.mark.parametrize("reduction", [None, "pca"])
def test_a_preprocessor_rebuilt_from_its_json_state_transforms_to_the_same_bits(study, reduction):
    import json

    folds = assign_folds(study.patients, study.sites, k=3)
    train_ids = folds.index[folds != 0].tolist()
    kwargs = {"rad_components": 3, "rad_reduction": reduction} if reduction else {}
    fitted = FoldPreprocessor(**kwargs).fit(study, train_ids)
    assert fitted.combat_ is not None
    loaded = FoldPreprocessor.from_state(json.loads(json.dumps(fitted.state())))
    a, b = fitted.transform(study, study.patients), loaded.transform(study, study.patients)
    for field in ("rad", "has_rad", "site", "y", "y01"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
    z = np.random.default_rng(0).normal(size=(4, 3))
    np.testing.assert_array_equal(fitted.inverse_targets(z), loaded.inverse_targets(z))
    with pytest.raises(ValueError, match="not a FoldPreprocessor state"):
        FoldPreprocessor.from_state({"estimator": "ComBat", "version": 1, "state": {}})


def test_fold_state_is_rewritten_when_the_refit_changes_it(tmp_path):
    """A rerun into the same folder after the inputs changed refits the checkpoints; the fold
    state the bundle reads must follow (it was written once and never replaced)."""
    from stromalens.training.data import FoldPreprocessor
    from stromalens.training.schedule import _write_preprocessor

    path = tmp_path / "preprocessor.json"
    for seed in (0, 1):
        study = make_study(n=24, seed=seed)
        prep = FoldPreprocessor.for_settings(True, 0.75, FAST).fit(study, study.patients[:16])
        _write_preprocessor(prep, tmp_path)
        expected = json.loads(json.dumps(prep.state(), default=str))
        assert json.loads(path.read_text(encoding="utf-8")) == expected
    stamp = path.stat().st_mtime_ns
    _write_preprocessor(prep, tmp_path)  # unchanged state: the file is left as it is
    assert path.stat().st_mtime_ns == stamp
