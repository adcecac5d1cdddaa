"""S_LR's gene scaling fitted per training fold (issue 16 item 4, issue 17 item 2).

The targets stage fits the ligand/receptor gene scaling of ``lr`` on the whole cohort; training
refits it on each fold's training patients from ``lr_inputs.parquet``. Checked here: the fold's
``lr`` against a numpy transcription of the monotone score, independence from held-out rows,
the folder without inputs, the state round trip, the digest, the prediction rows' truth and the
shuffled control."""

from __future__ import annotations

import json
import logging
import shutil

import numpy as np
import pandas as pd
import pytest

from stromalens.names import TARGETS
from stromalens.rundir import LR_INPUTS
from stromalens.targets.io import write_lr_inputs
from stromalens.targets.lr import curated_triplets
from stromalens.targets.pipeline import compute_targets, write_targets
from stromalens.training.cv import _fold_rows, _permuted, assign_folds
from stromalens.training.data import (
    FoldPreprocessor,
    StudyData,
    fit_fold_lr,
    fold_targets,
    load_study_data,
)

from ..conftest import synthetic_rna


@pytest.fixture(scope="module")
def cohort():
    """A 40-patient synthetic cohort through the real targets stage (TIL10, quanTIseq)."""
    patients, tpm = synthetic_rna(40, seed=3)
    return patients, tpm, compute_targets(tpm, n_boot=50)


def _study(patients, result, inputs=None) -> StudyData:
    ids = list(result.targets.index)
    return StudyData(
        patients=ids,
        sites=patients.loc[ids, "site"].to_numpy(),
        bags={},
        radiomics=pd.DataFrame(index=ids),
        targets=result.targets[list(TARGETS)],
        lr_inputs=result.lr_inputs if inputs is None else inputs,
    )


def _split(study):
    folds = assign_folds(study.patients, study.sites, k=4, seed=0)
    return folds.index[folds != 0].tolist(), folds.index[folds == 0].tolist()


def _monotone_by_hand(tpm, lsq, train) -> pd.Series:
    """The monotone S_LR written out in numpy: s = max(0, (x − min_train)/(max_train −
    min_train)) on x = log2(TPM + 1), S = Σ_t w_t s(l_t) s(r_t) p_{c_t} / Σ_t w_t over the
    curated triplets with w = n_resources (lr.py's module docstring, the method's definition)."""
    x = np.log2(tpm.clip(lower=0.0) + 1.0)
    lo, hi = x.loc[train].min(), x.loc[train].max()
    s = ((x - lo) / (hi - lo)).clip(lower=0.0)
    t = curated_triplets()
    t = t[t["ligand"].isin(x.columns) & t["receptor"].isin(x.columns)]
    total = np.zeros(len(x))
    for _, row in t.iterrows():
        total += row.n_resources * s[row.ligand] * s[row.receptor] * lsq[row.cell_type]
    return pd.Series(total / t["n_resources"].sum(), index=x.index)


def test_the_folds_lr_is_the_monotone_score_fitted_on_its_training_rows(cohort):
    patients, tpm, result = cohort
    study = _study(patients, result)
    train, test = _split(study)
    prep = FoldPreprocessor(harmonise=False).fit(study, train)
    lsq = result.fractions.filter(like="lsq__").rename(columns=lambda c: c[len("lsq__") :])
    expected = _monotone_by_hand(tpm, lsq, train)
    got = fold_targets(study, study.patients, prep.lr_)["lr"]
    np.testing.assert_allclose(got, expected.loc[study.patients], rtol=1e-12, atol=1e-15)
    # …which is not the whole-cohort column (fitted on the held-out patients as well)
    assert not np.allclose(got.loc[test], result.targets.loc[test, "lr"])
    # the fold's targets are z-scored from the fold's lr
    arrays = prep.transform(study, test)
    z = (got.loc[test] - got.loc[train].mean()) / got.loc[train].std(ddof=1)
    np.testing.assert_allclose(arrays.y[:, TARGETS.index("lr")], z, rtol=1e-5, atol=1e-6)


def _heldout_changed(result, patient):
    """The LR inputs with one patient's ligand and receptor expression raised far above the
    cohort's range."""
    inputs = result.lr_inputs.reindex(result.lr_inputs.log_expr.index)
    inputs.log_expr = inputs.log_expr.copy()
    inputs.log_expr.loc[patient] += 10.0
    return inputs


def test_held_out_expression_changes_nothing_fitted_on_the_training_rows(cohort):
    patients, _, result = cohort
    study = _study(patients, result)
    train, test = _split(study)
    changed = _study(patients, result, _heldout_changed(result, test[0]))
    a = FoldPreprocessor(harmonise=False).fit(study, train)
    b = FoldPreprocessor(harmonise=False).fit(changed, train)
    for name in ("mean_", "sd_", "min_", "max_"):
        pd.testing.assert_series_equal(getattr(a.lr_.scaler_, name), getattr(b.lr_.scaler_, name))
    pd.testing.assert_frame_equal(
        fold_targets(study, train, a.lr_), fold_targets(changed, train, b.lr_)
    )
    pd.testing.assert_series_equal(a.target_scaler_.mean_, b.target_scaler_.mean_)
    pd.testing.assert_series_equal(a.target_scaler_.scale_, b.target_scaler_.scale_)
    # the training arrays (and so every checkpoint digest of this fold) are unchanged
    assert a.transform(study, train).digest() == b.transform(changed, train).digest()
    # only the changed held-out patient's own score moves
    lr_a, lr_b = fold_targets(study, test, a.lr_)["lr"], fold_targets(changed, test, b.lr_)["lr"]
    assert lr_b[test[0]] > lr_a[test[0]]
    pd.testing.assert_series_equal(lr_a.drop(test[0]), lr_b.drop(test[0]))
    # the whole-cohort scaling, by contrast, moves every training patient's lr: the leak
    whole = changed.lr_inputs.score(changed.lr_inputs.fit(study.patients), train)
    assert not np.allclose(whole, result.targets.loc[train, "lr"])


def test_a_training_patients_expression_changes_the_fit_digest(cohort):
    patients, _, result = cohort
    study = _study(patients, result)
    train, _ = _split(study)
    changed = _study(patients, result, _heldout_changed(result, train[0]))
    a = FoldPreprocessor(harmonise=False).fit(study, train).transform(study, train)
    b = FoldPreprocessor(harmonise=False).fit(changed, train).transform(changed, train)
    assert a.digest() != b.digest()


def test_prediction_rows_hold_the_folds_lr_as_truth(cohort):
    patients, _, result = cohort
    study = _study(patients, result)
    train, test = _split(study)
    pred = np.zeros((len(test), len(TARGETS)))
    rows = _fold_rows(0, test, study, "m", pred, train=train)
    lr = rows[rows["target"] == "lr"].set_index("patient_id")["y_true"]
    expected = fold_targets(study, test, fit_fold_lr(study, train))["lr"]
    np.testing.assert_array_equal(lr.loc[test].to_numpy(), expected.to_numpy())
    ers = rows[rows["target"] == "ers_caf"].set_index("patient_id")["y_true"]
    np.testing.assert_array_equal(ers.loc[test], result.targets.loc[test, "ers_caf"])


def test_a_state_round_trip_keeps_the_folds_lr(cohort):
    patients, _, result = cohort
    study = _study(patients, result)
    train, test = _split(study)
    fitted = FoldPreprocessor(harmonise=False).fit(study, train)
    loaded = FoldPreprocessor.from_state(json.loads(json.dumps(fitted.state())))
    a, b = fitted.transform(study, study.patients), loaded.transform(study, study.patients)
    np.testing.assert_array_equal(a.y, b.y)
    np.testing.assert_array_equal(a.y01, b.y01)
    pd.testing.assert_series_equal(loaded.lr_.scaler_.min_, fitted.lr_.scaler_.min_)
    # a state written before lr_ existed transforms with the table's column
    old = fitted.state()
    del old["state"]["lr_"]
    legacy = FoldPreprocessor.from_state(json.loads(json.dumps(old)))
    y = legacy.transform(study, test).y[:, TARGETS.index("lr")]
    table = result.targets.loc[test, "lr"]
    mean, sd = fitted.target_scaler_.mean_["lr"], fitted.target_scaler_.scale_["lr"]
    np.testing.assert_allclose(y, (table - mean) / sd, rtol=1e-5, atol=1e-6)


def test_the_shuffled_control_moves_the_inputs_with_the_targets(cohort):
    patients, _, result = cohort
    study = _study(patients, result)
    shuffled = _permuted(study, seed=0)
    order = np.random.default_rng(12345).permutation(len(study.patients))
    donors = [study.patients[k] for k in order]
    np.testing.assert_array_equal(shuffled.targets.to_numpy(), study.targets.loc[donors])
    np.testing.assert_array_equal(
        shuffled.lr_inputs.log_expr.to_numpy(), study.lr_inputs.log_expr.loc[donors]
    )
    # fitted on every patient, the shuffled inputs give the shuffled whole-cohort column
    lr = fold_targets(shuffled, shuffled.patients, fit_fold_lr(shuffled, shuffled.patients))
    np.testing.assert_allclose(lr["lr"], result.targets.loc[donors, "lr"], rtol=1e-12)


def _targets_folder(tmp_path, patients, result):
    folder = tmp_path / "targets"
    write_targets(result, folder)
    manifest = tmp_path / "manifest.csv"
    patients[["site"]].rename_axis("patient_id").to_csv(manifest)
    return folder, manifest


def test_load_study_data_reads_the_inputs_and_checks_them(cohort, tmp_path):
    patients, _, result = cohort
    folder, manifest = _targets_folder(tmp_path, patients, result)
    data = load_study_data(manifest, folder / "targets.parquet")
    assert data.lr_inputs is not None and data.meta["lr_inputs"]["per_fold"]
    assert data.meta["lr_inputs"]["method"] == "monotone"
    record = data.meta["lr_inputs"]["sha256"]
    # a targets table from another run than its inputs is refused
    table = pd.read_parquet(folder / "targets.parquet")
    table["lr"] = table["lr"] * 1.01
    table.to_parquet(folder / "targets.parquet")
    with pytest.raises(ValueError, match="does not reproduce the lr column"):
        load_study_data(manifest, folder / "targets.parquet")
    # other inputs, another record (what the checkpoint digests carry, training/run.py): a
    # shift of every log expression leaves the min-max scaled score, hence the table, as it is
    write_targets(result, folder)
    shifted = result.lr_inputs.reindex(result.lr_inputs.log_expr.index)
    shifted.log_expr = shifted.log_expr + 0.5
    write_lr_inputs(shifted, folder / LR_INPUTS)
    other = load_study_data(manifest, folder / "targets.parquet").meta["lr_inputs"]["sha256"]
    assert other != record
    write_targets(result, folder)
    again = load_study_data(manifest, folder / "targets.parquet").meta["lr_inputs"]["sha256"]
    assert again == record


def test_a_folder_without_inputs_trains_on_the_tables_column(cohort, tmp_path, caplog):
    patients, _, result = cohort
    folder, manifest = _targets_folder(tmp_path, patients, result)
    bare = tmp_path / "bare"
    bare.mkdir()
    shutil.copy(folder / "targets.parquet", bare / "targets.parquet")
    with caplog.at_level(logging.WARNING, logger="stromalens"):
        data = load_study_data(manifest, bare / "targets.parquet")
    said = [r for r in caplog.records if "not refitted per fold" in r.getMessage()]
    assert len(said) == 1 and data.lr_inputs is None
    assert data.meta["lr_inputs"] == {"per_fold": False}
    train, test = _split(data)
    prep = FoldPreprocessor(harmonise=False).fit(data, train)
    assert prep.lr_ is None
    pd.testing.assert_frame_equal(
        fold_targets(data, test, prep.lr_), data.targets.loc[test, list(TARGETS)]
    )


def test_cross_validation_trains_and_scores_each_fold_on_its_own_lr(cohort, tmp_path):
    """End to end through ``run_cv``: the prediction rows' lr truth of every fold is the lr
    refitted on that fold's training patients (folds.csv), not the table's column."""
    from stromalens.training import TrainSettings, run_cv

    from .conftest import make_study

    patients, _, result = cohort
    study = make_study(n=36)
    ids = dict(zip(result.targets.index[:36], study.patients, strict=True))
    inputs = result.lr_inputs.relabel(ids).reindex(study.patients)
    study.targets["lr"] = result.targets["lr"].rename(index=ids).loc[study.patients]
    study.lr_inputs = inputs
    fast = TrainSettings(hidden=8, epochs_baseline=2, batch_size=8, max_tiles=8)
    run_cv(study, tmp_path, fast, models=["mri_only"], folds=3, harmonise=False, checkpoints=False)
    folds = pd.read_csv(tmp_path / "folds.csv", dtype={"patient_id": str}).set_index("patient_id")
    rows = pd.read_parquet(tmp_path / "predictions.parquet")
    rows = rows[rows["target"] == "lr"]
    for fold, part in rows.groupby("fold"):
        train = folds.index[folds["fold"] != fold].tolist()
        truth = part.set_index("patient_id")["y_true"]
        expected = fold_targets(study, truth.index, fit_fold_lr(study, train))["lr"]
        np.testing.assert_array_equal(truth.to_numpy(), expected.to_numpy())
        assert not np.allclose(truth, study.targets.loc[truth.index, "lr"])


def test_a_fold_whose_refitted_lr_is_constant_trains_on_the_tables_column(cohort, caplog):
    """Two training patients (an inner fold of a tiny cohort): min–max over them maps each gene
    to 0 or 1, and the score can come out equal for both (found with the numpy transcription);
    the fold then uses the table's column and says so instead of stopping the run."""
    import itertools

    patients, tpm, result = cohort
    study = _study(patients, result)
    pair = None
    for a, b in itertools.combinations(study.patients, 2):
        scored = study.lr_inputs.score(study.lr_inputs.fit([a, b]), [a, b])
        if scored.nunique() < 2:
            pair = [a, b]
            break
    assert pair is not None, "no degenerate pair in the cohort"
    with caplog.at_level(logging.WARNING, logger="stromalens"):
        assert fit_fold_lr(study, pair) is None
    assert any("constant" in r.getMessage() for r in caplog.records)
    pd.testing.assert_frame_equal(fold_targets(study, pair, None), study.targets.loc[pair])
    five = list(dict.fromkeys(pair + study.patients[:5]))[:5]
    assert FoldPreprocessor(harmonise=False).fit(study, five).lr_ is not None
