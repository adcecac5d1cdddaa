"""Known answers for the table-level analyses: fidelity, calibration, site entropy,
leave-site-out, planted truth, gate strata, missing-modality and prompt tables, the schema."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from stromalens.evaluation.alignment import (
    embedding_table,
    knn_site_entropy,
    leave_site_out_table,
)
from stromalens.evaluation.distillation import distillation_table
from stromalens.evaluation.fidelity import calibration, fidelity, fidelity_macro, pearson_summary
from stromalens.evaluation.gates import gate_strata_table, strata
from stromalens.evaluation.robustness import missing_modality_table, prompt_perturbation_table
from stromalens.evaluation.schema import SCHEMA, clean, describe
from stromalens.evaluation.truth import truth_table

TARGETS = ("ers_caf", "lr", "heterogeneity")


def long_predictions(y: np.ndarray, pred: np.ndarray, model: str, folds: np.ndarray):
    """Rows of the contract's predictions table for (n, 3) truths and predictions."""
    n = len(y)
    return pd.concat(
        [
            pd.DataFrame(
                {
                    "patient_id": [f"P{i:03d}" for i in range(n)],
                    "fold": folds,
                    "model": model,
                    "target": t,
                    "y_true": y[:, j],
                    "y_pred": pred[:, j],
                }
            )
            for j, t in enumerate(TARGETS)
        ],
        ignore_index=True,
    )


@pytest.fixture
def predictions():
    rng = np.random.default_rng(1)
    y = rng.normal(size=(60, 3))
    folds = np.arange(60) % 3
    return pd.concat(
        [
            long_predictions(y, y, "perfect", folds),
            long_predictions(y, 2.0 + 0.5 * y, "shrunk", folds),  # y = 2·(ŷ − 2): slope 2
            long_predictions(y, y + rng.normal(size=y.shape), "noisy", folds),
        ],
        ignore_index=True,
    )


def test_pearson_summary_matches_the_fisher_interval():
    rng = np.random.default_rng(0)
    x = rng.normal(size=40)
    y = x + rng.normal(size=40)
    s = pearson_summary(y, x)
    # reference: r = scipy.stats.pearsonr(x, y); CI = tanh(atanh r ± 1.959964/√(n − 3))
    r = stats.pearsonr(x, y).statistic
    half = stats.norm.ppf(0.975) / np.sqrt(40 - 3)
    assert s["r"] == pytest.approx(r, abs=1e-12)
    assert s["r_ci_low"] == pytest.approx(np.tanh(np.arctanh(r) - half), abs=1e-12)
    assert s["r_ci_high"] == pytest.approx(np.tanh(np.arctanh(r) + half), abs=1e-12)
    assert np.isnan(pearson_summary(np.ones(10), x[:10])["r"])


def test_calibration_of_a_known_line():
    pred = np.linspace(-1, 1, 30)
    slope, intercept = calibration(3.0 - 0.5 * pred, pred)  # observed = 3 − 0.5·predicted
    assert (slope, intercept) == (pytest.approx(-0.5), pytest.approx(3.0))


def test_fidelity_table_known_answers(predictions):
    reliability = {
        t: {"ceiling": 0.9, "ceiling_ci_low": 0.8, "ceiling_ci_high": 0.95} for t in TARGETS
    }
    table = fidelity(predictions, reliability).set_index(["model", "target"])
    perfect = table.loc["perfect"]
    assert np.allclose(perfect["r"], 1.0) and np.allclose(perfect["rmse"], 0.0)
    assert np.allclose(perfect["calibration_slope"], 1.0)
    assert np.allclose(perfect["calibration_intercept"], 0.0, atol=1e-12)
    assert np.allclose(table.loc["shrunk", "calibration_slope"], 2.0)
    assert np.allclose(table.loc["shrunk", "r"], 1.0)
    assert (table["ceiling"] == 0.9).all() and (table["n"] == 60).all()
    noisy = predictions[(predictions["model"] == "noisy") & (predictions["target"] == "lr")]
    # reference: per-fold r by numpy, their SD (ddof=1)
    fold_r = [np.corrcoef(f["y_true"], f["y_pred"])[0, 1] for _, f in noisy.groupby("fold")]
    assert table.loc[("noisy", "lr"), "r_fold_mean"] == pytest.approx(np.mean(fold_r))
    assert table.loc[("noisy", "lr"), "r_fold_sd"] == pytest.approx(np.std(fold_r, ddof=1))
    err = noisy["y_pred"] - noisy["y_true"]
    assert table.loc[("noisy", "lr"), "mae"] == pytest.approx(err.abs().mean())
    macro = fidelity_macro(predictions).set_index("model")
    assert macro.loc["perfect", "macro_r"] == pytest.approx(1.0)
    assert macro.index[0] in ("perfect", "shrunk")  # sorted by macro-r
    assert macro.loc["noisy", "macro_r"] == pytest.approx(table.loc["noisy", "r"].mean())


def test_site_entropy_known_answers():
    # 50 points on a circle, sites cycling A–E: each point's 4 nearest are 4 different sites
    angle = np.linspace(0, 2 * np.pi, 50, endpoint=False)
    circle = np.column_stack([np.cos(angle), np.sin(angle)])
    sites = np.array(list("ABCDE"))[np.arange(50) % 5]
    assert knn_site_entropy(circle, sites, k=4) == pytest.approx(1.0)
    # five far-apart site clusters: every neighbourhood is one site
    rng = np.random.default_rng(0)
    centres = rng.normal(scale=100, size=(5, 8))
    codes = np.arange(100) % 5
    clustered = centres[codes] + rng.normal(size=(100, 8))
    assert knn_site_entropy(clustered, np.array(list("ABCDE"))[codes]) == pytest.approx(0.0)
    # removing each site's mean (what CORAL's first-moment term does) mixes the sites
    aligned = clustered - pd.DataFrame(clustered).groupby(codes).transform("mean").to_numpy()
    assert knn_site_entropy(aligned, codes) > 0.8 > knn_site_entropy(clustered, codes)
    with pytest.raises(ValueError, match="two sites"):
        knn_site_entropy(circle, np.zeros(50))


def test_leave_site_out_table_before_after():
    rng = np.random.default_rng(2)
    y = rng.normal(size=(40, 3))
    sites = np.array(list("AB"))[np.arange(40) % 2]
    before = long_predictions(y, y + 2 * rng.normal(size=y.shape), "fusion_no_coral", sites)
    after = long_predictions(y, y, "fusion", sites)
    table = leave_site_out_table(pd.concat([before, after])).set_index("site")
    assert list(table.index) == ["A", "B"] and (table["n"] == 20).all()
    assert np.allclose(table["macro_r_after"], 1.0)
    assert (table["macro_r_before"] < 0.9).all()


def test_embedding_table_has_both_stages():
    rng = np.random.default_rng(3)
    frame = pd.DataFrame(rng.normal(size=(30, 4)), columns=[f"e{i}" for i in range(4)])
    frame["patient_id"] = [f"P{i}" for i in range(30)]
    frame["site"] = np.arange(30) % 3
    both = pd.concat([frame.assign(stage="before"), frame.assign(stage="after")])
    table = embedding_table(both)
    assert set(table["stage"]) == {"before", "after"} and len(table) == 60
    assert table["method"].iloc[0] == "tsne" and np.isfinite(table[["x", "y"]]).all().all()


def test_truth_table_recovers_the_planted_latent():
    rng = np.random.default_rng(4)
    truth = pd.DataFrame(rng.normal(size=(30, 3)), columns=["a", "b", "h"])
    truth.index = [f"P{i:03d}" for i in range(30)]
    preds = long_predictions(truth.to_numpy(), 3 * truth.to_numpy() + 1, "fusion", np.zeros(30))
    table = truth_table(preds, truth)
    assert dict(zip(table["target"], table["latent"], strict=True)) == {
        "ers_caf": "a",
        "lr": "b",
        "heterogeneity": "h",
    }
    assert np.allclose(table["r"], 1.0)
    with pytest.raises(ValueError, match="latent"):
        truth_table(preds, truth.drop(columns="h"))


def test_gate_strata_means_and_groups():
    ids = [f"P{i:03d}" for i in range(12)]
    clinical = pd.DataFrame(
        {
            "location": ["sacrum"] * 6 + ["skull_base"] * 6,
            "volume_cc": np.arange(1, 13, dtype=float),
            "age": [30, 49.9, 50, 64.9, 65, 80] * 2,
        },
        index=ids,
    )
    groups = strata(clinical)
    assert list(groups["volume_tertile"]) == ["T1"] * 4 + ["T2"] * 4 + ["T3"] * 4
    assert list(groups["age_group"][:6]) == ["<50", "<50", "50-64", "50-64", "≥65", "≥65"]
    gates = pd.DataFrame(
        {
            "patient_id": ids,
            "share_wsi": [0.2] * 6 + [0.6] * 6,
            "share_mri": [0.8] * 6 + [0.4] * 6,
            "gate_wsi_mean": 0.5,
            "has_wsi": True,
            "has_mri": [True] * 11 + [False],  # the last is left out: only one modality
        }
    )
    rng = np.random.default_rng(5)
    y = rng.normal(size=(12, 3))
    preds = long_predictions(y, y, "fusion", np.zeros(12))
    table = gate_strata_table(gates, preds, clinical)
    loc = table[(table["stratifier"] == "location") & (table["model"] == "fusion")]
    loc = loc.set_index("stratum")
    assert loc.loc["sacrum", "share_wsi"] == pytest.approx(0.2)
    assert loc.loc["skull_base", "share_wsi"] == pytest.approx(0.6)
    assert (loc["share_wsi"] + loc["share_mri"]).to_numpy() == pytest.approx(1.0)
    assert loc.loc["skull_base", "n"] == 6
    assert loc.loc["sacrum", "macro_r"] == pytest.approx(1.0)


def test_missing_modality_and_prompt_tables():
    rng = np.random.default_rng(6)
    y = rng.normal(size=(30, 3))
    rows = []
    for level, noise in ((0.0, 0.0), (0.5, 1.0)):
        for rep in range(2 if level else 1):
            part = long_predictions(
                y, y + noise * rng.normal(size=y.shape), "fusion", np.arange(30) % 3
            )
            rows.append(part.assign(modality="wsi", level=level, repeat=rep))
    table = missing_modality_table(pd.concat(rows)).set_index("level")
    assert table.loc[0.0, "macro_r"] == pytest.approx(1.0) and table.loc[0.0, "macro_r_sd"] == 0
    assert table.loc[0.5, "macro_r"] < 0.9 and table.loc[0.5, "macro_r_sd"] > 0

    oof = pd.concat(
        [
            long_predictions(y, y, "wsi_clip", np.arange(30) % 3),
            long_predictions(y, -y, "clip_mil_none", np.arange(30) % 3),
        ]
    )
    perturbed = long_predictions(y, y + rng.normal(size=y.shape), "wsi_clip", np.arange(30) % 3)
    prompts = prompt_perturbation_table(oof, perturbed.assign(prompt_set="ANTI"))
    by = prompts.set_index(["prompt_set", "target"])["r"]
    assert by[("CUR", "lr")] == pytest.approx(1.0) and by[("NONE", "lr")] == pytest.approx(-1.0)
    assert 0 < by[("ANTI", "lr")] < 1 and "COOP" not in prompts["prompt_set"].values
    # over the 3 folds of 10: NONE − CUR is r(−y) − r(y) = −2 on every fold (SD 0, so the
    # interval is the point); ANTI − CUR per fold by numpy, Nadeau & Bengio by hand
    cv = prompts.set_index(["prompt_set", "target"])
    assert cv.loc[("NONE", "lr"), "cv_diff_vs_cur"] == pytest.approx(-2.0)
    assert cv.loc[("NONE", "lr"), "cv_ci_high"] == pytest.approx(-2.0)
    anti = perturbed[perturbed.target == "lr"]
    d = [np.corrcoef(f["y_pred"], f["y_true"])[0, 1] - 1.0 for _, f in anti.groupby("fold")]
    half = 4.3026527 * np.sqrt((1 / 3 + 10 / 20) * np.var(d, ddof=1))  # t_{0.975, 2}
    assert cv.loc[("ANTI", "lr"), "cv_diff_vs_cur"] == pytest.approx(np.mean(d))
    assert cv.loc[("ANTI", "lr"), "cv_ci_low"] == pytest.approx(np.mean(d) - half)
    assert np.isnan(cv.loc[("CUR", "lr"), "cv_diff_vs_cur"])


def test_distillation_ratios():
    rng = np.random.default_rng(7)
    y = rng.normal(size=(30, 3))
    preds = pd.concat(
        [
            long_predictions(y, y, "fusion", np.zeros(30)),
            long_predictions(y, y + 0.5 * rng.normal(size=y.shape), "mri_student", np.zeros(30)),
        ]
    )
    cost = {
        "teacher_seconds_per_patient": 0.02,
        "student_seconds_per_patient": 0.005,
        "teacher_peak_mb": 40.0,
        "student_peak_mb": 2.0,
    }
    table = distillation_table(preds, cost).set_index("metric")["value"]
    assert table["retention"] == pytest.approx(table["student_macro_r"] / 1.0)
    assert table["speed_ratio"] == pytest.approx(4.0) and table["memory_ratio"] == 0.05


def test_schema_describes_the_required_keys():
    for key in (
        "cv.fusion.r.ers_caf",
        "cv.mri_student.macro_r",
        "cv.transmil.rmse.lr",
        "cv.fusion_no_coral.calibration_slope.heterogeneity",
        "lso.A.before",
        "site_entropy.after",
        "survival.pfs.c_index.clinical_ai",
        "truth.wsi_clip.r.lr",
        "external.external.r.ers_caf",
    ):
        assert describe(key), key
    assert describe("cv.fusion.banana") is None
    assert len(SCHEMA) > 20
    assert clean({"a": np.nan, "b": np.float32(0.5), "c": "x"}) == {"a": None, "b": 0.5, "c": "x"}


def test_paired_r_difference_known_answers():
    from stromalens.evaluation.robustness import paired_r_difference

    rng = np.random.default_rng(8)
    y = rng.normal(size=80)
    good = y + 0.3 * rng.normal(size=80)
    bad = y + 3.0 * rng.normal(size=80)
    diff, low, high, p = paired_r_difference(y, good, bad, n_boot=2000)
    # reference: the difference of two numpy Pearson r on the same patients
    expected = np.corrcoef(y, good)[0, 1] - np.corrcoef(y, bad)[0, 1]
    assert diff == pytest.approx(expected, abs=1e-12)
    assert 0 < low < diff < high and p < 0.01
    same = paired_r_difference(y, good, good.copy(), n_boot=500)
    assert same[0] == pytest.approx(0.0, abs=1e-12) and same[3] == pytest.approx(1.0)


def test_gate_strata_kruskal_detects_a_planted_difference():
    ids = [f"P{i:03d}" for i in range(40)]
    rng = np.random.default_rng(9)
    clinical = pd.DataFrame(
        {
            "location": ["sacrum"] * 20 + ["skull_base"] * 20,
            "volume_cc": rng.uniform(1, 50, 40),
            "age": rng.uniform(30, 80, 40),
        },
        index=ids,
    )
    share_wsi = np.r_[rng.normal(0.2, 0.02, 20), rng.normal(0.5, 0.02, 20)]
    gates = pd.DataFrame(
        {"patient_id": ids, "share_wsi": share_wsi, "share_mri": 1 - share_wsi}
    ).assign(gate_wsi_mean=0.5, has_wsi=True, has_mri=True)
    y = rng.normal(size=(40, 3))
    table = gate_strata_table(gates, long_predictions(y, y, "fusion", np.zeros(40)), clinical)
    p = table.groupby("stratifier")["p_kruskal"].first()
    # reference: scipy.stats.kruskal on the two locations' WSI shares
    assert p["location"] == pytest.approx(stats.kruskal(share_wsi[:20], share_wsi[20:]).pvalue)
    assert p["location"] < 1e-6 and p["age_group"] > 1e-3
