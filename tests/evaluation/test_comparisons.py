"""Paired comparisons of the headline models: Δ macro-r against scipy's paired bootstrap, the
"within noise" verdict, CV repeats, and the pairs that are compared."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from stromalens.evaluation.comparisons import (
    WITHIN_NOISE,
    comparison_metrics,
    headline_pairs,
    macro_difference,
    paired_comparisons,
    prediction_cube,
)
from stromalens.names import TARGETS


def _predictions(noise: dict[str, float], n: int = 80, seed: int = 0, repeats: int = 0):
    """Long predictions: y ~ N(0, 1) per target, each model ŷ = y + noise·ε (more noise, lower
    r); with ``repeats`` a ``repeat`` column and fresh noise per repeat."""
    rng = np.random.default_rng(seed)
    ids = [f"P{i:03d}" for i in range(n)]
    y = rng.normal(size=(n, len(TARGETS)))
    rows = []
    for r in range(max(repeats, 1)):
        for model, sd in noise.items():
            pred = y + sd * rng.normal(size=y.shape)
            for j, target in enumerate(TARGETS):
                frame = pd.DataFrame(
                    {
                        "patient_id": ids,
                        "fold": np.arange(n) % 5,
                        "model": model,
                        "target": target,
                        "y_true": y[:, j],
                        "y_pred": pred[:, j],
                    }
                )
                rows.append(frame.assign(repeat=r) if repeats else frame)
    return pd.concat(rows, ignore_index=True)


def test_difference_and_interval_match_scipy_paired_bootstrap():
    preds = _predictions({"fusion": 0.8, "late_fusion": 1.0})
    table = paired_comparisons(preds, n_boot=300, seed=4)
    row = table.set_index("model_b").loc["late_fusion"]
    y, cube, _ = prediction_cube(preds, ["fusion", "late_fusion"])

    def delta(y, a, b):  # macro-r(A) − macro-r(B), over the three targets
        return np.mean([sps.pearsonr(a[:, j], y[:, j]).statistic for j in range(3)]) - np.mean(
            [sps.pearsonr(b[:, j], y[:, j]).statistic for j in range(3)]
        )

    a, b = cube["fusion"][:, :, 0], cube["late_fusion"][:, :, 0]
    # Reference: scipy.stats.bootstrap over the patients' row numbers (scipy resamples 1-D
    # samples; the rows index y, ŷ_A and ŷ_B together, which is the paired bootstrap),
    # statistic Δ macro-r, method="percentile", n_resamples=300, rng=default_rng(4).
    ref = sps.bootstrap(
        (np.arange(len(y)),),
        lambda i: delta(y[i], a[i], b[i]),
        paired=True,
        vectorized=False,
        method="percentile",
        n_resamples=300,
        rng=np.random.default_rng(4),
    ).confidence_interval
    assert row["estimate"] == pytest.approx(delta(y, a, b), rel=1e-10)
    assert row["ci_low"] == pytest.approx(ref.low, rel=1e-10)
    assert row["ci_high"] == pytest.approx(ref.high, rel=1e-10)
    assert row["n"] == 80 and row["repeats"] == 1


def test_verdict_says_within_noise_where_the_interval_spans_zero():
    # the same noise level: no true difference. A much noisier baseline: a clear one.
    preds = _predictions({"fusion": 0.8, "late_fusion": 0.8, "mri": 3.0}, n=120, seed=2)
    table = paired_comparisons(preds, n_boot=400).set_index("model_b")
    late, mri = table.loc["late_fusion"], table.loc["mri"]
    assert late["ci_low"] < 0 < late["ci_high"] and late["verdict"] == WITHIN_NOISE
    assert mri["ci_low"] > 0 and mri["verdict"] == "fusion better" and mri["p"] < 0.01
    metrics = comparison_metrics(table.reset_index())
    assert metrics["compare.fusion.late_fusion.within_noise"] == 1.0
    assert metrics["compare.fusion.mri.within_noise"] == 0.0
    assert metrics["compare.fusion.mri.macro_r_diff"] == pytest.approx(mri["estimate"])


def test_repeats_average_the_difference_and_identical_repeats_change_nothing():
    once = _predictions({"fusion": 0.8, "late_fusion": 1.0}, seed=5)
    # three identical repeats: same estimate and, by construction of the draws, same interval
    thrice = pd.concat([once.assign(repeat=r) for r in range(3)], ignore_index=True)
    a = paired_comparisons(once, n_boot=200, seed=1).iloc[0]
    b = paired_comparisons(thrice, n_boot=200, seed=1).iloc[0]
    assert b["repeats"] == 3
    for column in ("estimate", "ci_low", "ci_high", "p"):
        assert b[column] == pytest.approx(a[column], rel=1e-12), column
    # genuinely different repeats: Δ is the mean of the per-repeat Δ
    varied = _predictions({"fusion": 0.8, "late_fusion": 1.0}, seed=5, repeats=3)
    y, cube, _ = prediction_cube(varied, ["fusion", "late_fusion"])
    per_repeat = [
        macro_difference(y, cube["fusion"][:, :, [r]], cube["late_fusion"][:, :, [r]])
        for r in range(3)
    ]
    row = paired_comparisons(varied, n_boot=100).iloc[0]
    assert row["estimate"] == pytest.approx(np.mean(per_repeat), rel=1e-12)
    assert row["ci_low"] < row["estimate"] < row["ci_high"]


def test_pairs_and_patients():
    assert headline_pairs(["mri", "fusion", "fusion_no_coral", "abmil"]) == [
        ("coral", "fusion", "fusion_no_coral"),
        ("baseline", "fusion", "abmil"),
        ("baseline", "fusion", "mri"),
    ]
    assert headline_pairs(["mri", "abmil"]) == []
    preds = _predictions({"fusion": 0.8, "mri": 1.0})
    # a patient the baseline did not predict leaves the pair: the comparison stays paired
    preds = preds[~((preds["model"] == "mri") & (preds["patient_id"] == "P000"))]
    assert paired_comparisons(preds, n_boot=20).iloc[0]["n"] == 79
    tiny = _predictions({"fusion": 0.8, "mri": 1.0}, n=3)
    with pytest.raises(ValueError, match=r"fusion vs mri: only 3 patient\(s\)"):
        paired_comparisons(tiny, n_boot=20)


def test_the_comparison_over_folds_is_the_corrected_t_of_the_per_fold_macro_r_differences():
    preds = _predictions({"fusion": 0.8, "late_fusion": 1.0}, n=100)
    row = paired_comparisons(preds, n_boot=100).set_index("model_b").loc["late_fusion"]

    def macro(part, model):  # scipy.stats.pearsonr per target, then the mean
        m = part[part.model == model]
        return np.mean([sps.pearsonr(g["y_pred"], g["y_true"]).statistic
                        for _, g in m.groupby("target")])  # fmt: skip

    d = [macro(f, "fusion") - macro(f, "late_fusion") for _, f in preds.groupby("fold")]
    # Nadeau & Bengio by hand: J = 5 folds of 20, trained on 80; t_{0.975, 4} = 2.7764451
    half = 2.7764451 * np.sqrt((1 / 5 + 20 / 80) * np.var(d, ddof=1))
    assert row["cv_estimate"] == pytest.approx(np.mean(d))
    assert row["cv_ci_low"] == pytest.approx(np.mean(d) - half)
    assert row["cv_ci_high"] == pytest.approx(np.mean(d) + half)
    assert row["splits"] == 5


def test_a_difference_that_the_folds_do_not_carry_is_within_noise():
    # fusion equals late fusion on folds 0–1 and is worse on 2–4: the pooled patient bootstrap
    # sees a clear loss (Δ −0.052 [−0.066, −0.039]), the folds disagree (corrected interval
    # [−0.143, 0.045]), so no model is declared better
    preds = _predictions({"fusion": 0.2, "late_fusion": 0.2}, n=200)
    bad = (preds["model"] == "fusion") & (preds["fold"] >= 2)
    rng = np.random.default_rng(9)
    preds.loc[bad, "y_pred"] = preds.loc[bad, "y_true"] + 0.5 * rng.normal(size=bad.sum())
    row = paired_comparisons(preds, n_boot=300).set_index("model_b").loc["late_fusion"]
    assert row["ci_high"] < 0
    assert row["cv_ci_low"] < 0 < row["cv_ci_high"]
    assert row["verdict"] == WITHIN_NOISE
