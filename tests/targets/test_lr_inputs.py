"""The targets stage's S_LR inputs (``lr_inputs.parquet``): what a training fold refits ``lr``
from (issue 16 item 4, issue 17 item 2)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from stromalens.rundir import LR_INPUTS, lr_inputs
from stromalens.targets.io import read_lr_inputs
from stromalens.targets.lr import LRCrosstalk, curated_triplets
from stromalens.targets.pipeline import compute_targets, write_targets
from stromalens.targets.run import TARGET_FILES

from ..conftest import synthetic_rna


@pytest.fixture(scope="module")
def tpm():
    return synthetic_rna(30, seed=11)[1]


@pytest.mark.parametrize(("method", "column"), [("monotone", "lr_monotone"), ("product", "lr_eq6")])
def test_the_inputs_reproduce_the_lr_column(tpm, tmp_path, method, column):
    result = compute_targets(tpm, n_boot=20, lr_method=method)
    ids = {s: f"patient-{s}" for s in tpm.index}
    write_targets(result, tmp_path, patient_of_sample=ids)
    assert lr_inputs(tmp_path / "targets.parquet") == tmp_path / LR_INPUTS
    inputs = read_lr_inputs(tmp_path / LR_INPUTS)
    assert inputs.method == method
    assert inputs.weights == "resources" and inputs.fitted_on == list(ids.values())
    pd.testing.assert_frame_equal(inputs.triplets, curated_triplets())
    # the genes are log2(TPM + 1) of the triplets' measured ligands and receptors
    genes = sorted(set(curated_triplets()[["ligand", "receptor"]].stack()) & set(tpm.columns))
    assert sorted(inputs.log_expr.columns) == genes
    expected = np.log2(tpm[genes] + 1.0).rename(index=ids)
    pd.testing.assert_frame_equal(inputs.log_expr[genes], expected, check_names=False)
    # refitted as the stage fitted it (every sample), the score is the table's column, exactly
    table = pd.read_parquet(tmp_path / "targets.parquet")
    score = inputs.score(inputs.fit(inputs.fitted_on))
    np.testing.assert_array_equal(score.to_numpy(), table.loc[score.index, column].to_numpy())
    np.testing.assert_array_equal(table["lr"].to_numpy(), table[column].to_numpy())


def test_inputs_fitted_on_a_subset_are_lrcrosstalk_fitted_on_it(tpm):
    train = list(tpm.index[:20])
    result = compute_targets(tpm, n_boot=20, train=train)
    inputs = result.lr_inputs
    assert inputs.fitted_on == train
    log_expr = np.log2(tpm + 1.0)
    lsq = result.fractions.filter(like="lsq__").rename(columns=lambda c: c[len("lsq__") :])
    by_hand = LRCrosstalk(method="monotone").fit(log_expr.loc[train]).transform(log_expr, lsq)
    np.testing.assert_array_equal(inputs.score(inputs.fit(train)), by_hand)
    np.testing.assert_array_equal(result.targets["lr"], by_hand)


def test_a_row_with_missing_inputs_scores_nan_not_zero(tpm):
    inputs = compute_targets(tpm, n_boot=20).lr_inputs
    gappy = inputs.reindex([*inputs.log_expr.index, "absent"])
    model = gappy.fit(list(inputs.log_expr.index))
    score = gappy.score(model)
    assert np.isnan(score["absent"]) and score.drop("absent").notna().all()
    with pytest.raises(ValueError, match="no ligand/receptor expression for 1 training rows"):
        inputs.fit([*inputs.log_expr.index, "nobody"])


def test_log_ratios_write_no_inputs_and_a_plain_table_is_refused(tpm, tmp_path):
    log_ratios = np.log2((tpm + 1.0) / (tpm.mean() + 1.0))
    result = compute_targets(log_ratios, n_boot=20, linear=False)
    assert result.lr_inputs is None
    write_targets(result, tmp_path)
    assert not (tmp_path / LR_INPUTS).exists()
    with pytest.raises(ValueError, match="not an LR inputs table"):
        read_lr_inputs(tmp_path / "targets.parquet")


def test_an_adopted_targets_folder_carries_its_inputs():
    assert LR_INPUTS in TARGET_FILES
