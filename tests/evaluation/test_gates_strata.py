"""The gate-strata table carries the count behind each share's mean and SD (``n_share``), so a
standard error of the WSI share (the (b) row of the validation matrix) uses the patients that
have a share, not the whole stratum (patients missing a modality have none)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from stromalens.evaluation.gates import gate_strata_table


def _inputs():
    rng = np.random.default_rng(3)
    ids = [f"P{i:03d}" for i in range(30)]
    location = ["sacrum"] * 14 + ["skull_base"] * 16
    gates = pd.DataFrame(
        {
            "patient_id": ids,
            "share_wsi": np.r_[rng.uniform(0.4, 0.9, 14), rng.uniform(0.1, 0.6, 16)],
            "gate_wsi_mean": 0.5,
            # 3 sacral and 4 skull-base patients lack a modality: no share counts for them
            "has_wsi": [False] * 2 + [True] * 12 + [True] * 12 + [False] * 4,
            "has_mri": [True] * 13 + [False] + [True] * 16,
        }
    )
    gates["share_mri"] = 1 - gates["share_wsi"]
    clinical = pd.DataFrame(
        {"location": location, "volume_cc": np.arange(30.0), "age": 60.0}, index=ids
    )
    y = rng.normal(size=(30, 3))
    preds = pd.concat(
        [
            pd.DataFrame(
                {
                    "patient_id": ids,
                    "fold": 0,
                    "model": "fusion",
                    "target": t,
                    "y_true": y[:, j],
                    "y_pred": y[:, j],
                }
            )
            for j, t in enumerate(("ers_caf", "lr", "heterogeneity"))
        ]
    )
    return gates, clinical, preds


def test_n_share_counts_the_patients_with_a_share_and_gives_the_welch_interval():
    gates, clinical, preds = _inputs()
    table = gate_strata_table(gates, preds, clinical)
    rows = table[(table["stratifier"] == "location") & (table["model"] == "fusion")]
    rows = rows.set_index("stratum")
    assert rows.loc["sacrum", "n"] == 14 and rows.loc["sacrum", "n_share"] == 11
    assert rows.loc["skull_base", "n"] == 16 and rows.loc["skull_base", "n_share"] == 12
    both = gates[gates["has_wsi"] & gates["has_mri"]]
    sacrum = both["share_wsi"][both["patient_id"].isin(clinical.index[:14])]
    skull = both["share_wsi"][~both["patient_id"].isin(clinical.index[:14])]
    # reference: scipy.stats.ttest_ind(sacrum, skull, equal_var=False).confidence_interval()
    ref = stats.ttest_ind(sacrum, skull, equal_var=False).confidence_interval(0.95)
    s, k = rows.loc["sacrum"], rows.loc["skull_base"]
    v1, v2 = s["share_wsi_sd"] ** 2 / s["n_share"], k["share_wsi_sd"] ** 2 / k["n_share"]
    df = (v1 + v2) ** 2 / (v1**2 / (s["n_share"] - 1) + v2**2 / (k["n_share"] - 1))
    half = stats.t.ppf(0.975, df) * np.sqrt(v1 + v2)
    effect = s["share_wsi"] - k["share_wsi"]
    assert (effect - half, effect + half) == pytest.approx((ref.low, ref.high), rel=1e-10)
    # with the stratum sizes instead, the interval is too narrow (the bug of using n)
    w1, w2 = s["share_wsi_sd"] ** 2 / s["n"], k["share_wsi_sd"] ** 2 / k["n"]
    assert np.sqrt(w1 + w2) < 0.9 * np.sqrt(v1 + v2)
