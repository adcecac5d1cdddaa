"""The method-validation analysis on hand-made evaluation outputs with known answers."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from stromalens.config import MechanismsConfig
from stromalens.evaluation import validation
from stromalens.evaluation.comparisons import fold_differences
from stromalens.evaluation.schema import describe
from stromalens.synthetic.mechanisms import planted


def _inputs(n=200, seed=0):
    """Outputs of an evaluated run with every effect planted at a known size."""
    rng = np.random.default_rng(seed)
    ids = [f"P{i:04d}" for i in range(n)]
    a = rng.normal(size=n)
    truth = pd.DataFrame({"a": a}, index=pd.Index(ids, name="patient_id"))
    # ABMIL reads a well (r ≈ 0.89), mean pooling poorly (r ≈ 0.45), wsi_clip no better
    abmil = a + 0.5 * rng.normal(size=n)
    mean = a + 2.0 * rng.normal(size=n)
    clip = a + 3.0 * rng.normal(size=n)
    preds = pd.concat(
        pd.DataFrame(
            {
                "patient_id": ids,
                "fold": np.arange(n) % 5,
                "repeat": 0,
                "model": m,
                "target": "ers_caf",
                "y_pred": v,
                "y_true": a,
            }
        )  # fmt: skip
        for m, v in (("abmil", abmil), ("wsi_clip", clip), ("mean_pool", mean))
    )
    gates = pd.DataFrame(
        {
            "model": "fusion",
            "stratifier": "location",
            "stratum": ["sacrum", "skull_base", "mobile_spine"],
            "n": [90, 70, 40],
            "share_wsi": [0.70, 0.50, 0.60],
            "share_wsi_sd": [0.10, 0.10, 0.10],
        }
    )
    attention = pd.DataFrame(
        {
            "model": "fusion",
            "target": "ers_caf",
            "iou": [0.30, 0.32, 0.28, 0.31],
            "iou_shuffled": [0.10, 0.10, 0.10, 0.10],
        }
    )
    cdiff = pd.DataFrame(
        {
            "endpoint": ["os"],
            "metric": ["harrell"],
            "diff": [0.05],
            "ci_low": [-0.01],
            "ci_high": [0.11],
            "p": [0.1],
        }  # fmt: skip
    )
    external = pd.DataFrame({"model": ["fusion"], "target": ["ers_caf"], "r": [0.5], "n": [60]})
    metrics = {
        "lso.A.before": 0.30, "lso.A.after": 0.40, "lso.B.before": 0.20, "lso.B.after": 0.32,
        "lso.C.before": 0.25, "lso.C.after": 0.33,
        "treatment.predictive.surgery.or": 2.2, "treatment.predictive.surgery.ci_low": 1.4,
        "treatment.predictive.surgery.ci_high": 3.5, "treatment.predictive.surgery.p": 0.001,
        "treatment.predictive.surgery+RT.or": 0.9, "treatment.predictive.surgery+RT.ci_low": 0.5,
        "treatment.predictive.surgery+RT.ci_high": 1.9, "treatment.predictive.surgery+RT.p": 0.7,
    }  # fmt: skip
    prompts = pd.DataFrame(
        {
            "prompt_set": ["NONE", "CUR", "NONE"],
            "target": ["ers_caf", "ers_caf", "lr"],
            "r": [0.30, 0.40, 0.2],
            "n": [200, 200, 200],
            "diff_vs_cur": [-0.10, np.nan, 0.3],
            "diff_ci_low": [-0.16, np.nan, 0.1],
            "diff_ci_high": [-0.03, np.nan, 0.5],
        }
    )
    tables = {
        "prompt_perturbation": prompts,
        "gate_strata": gates,
        "attention": attention,
        "survival_cindex_diff": cdiff,
        "external": external,
    }
    return metrics, tables, preds, truth


def test_each_effect_and_its_ci_match_the_hand_computed_answer():
    metrics, tables, preds, truth = _inputs()
    sizes = validation.planted_sizes(planted().as_dict())
    table = validation.validation_table(sizes, metrics, tables, preds, truth, n_boot=300)
    row = table.set_index("mechanism")
    # (a) per fold (5 folds of 40; 160 trained each fold's models), r differences computed
    # directly (numpy corrcoef), then Nadeau & Bengio's interval by hand:
    # d̄ ± t_{0.975, 4} · sqrt((1/5 + 40/160) · var(d, ddof=1))
    for name, model in (("sparse_evidence", "abmil"), ("sparse_evidence_text", "wsi_clip")):
        d = []
        for fold in range(5):
            part = preds[preds.fold == fold]
            ids = part.patient_id.unique()
            r = {m: np.corrcoef(part[part.model == m]["y_pred"], truth.loc[ids, "a"])[0, 1]
                 for m in (model, "mean_pool")}  # fmt: skip
            d.append(r[model] - r["mean_pool"])
        half = 2.7764451 * np.sqrt((1 / 5 + 40 / 160) * np.var(d, ddof=1))
        assert row.loc[name, "effect"] == pytest.approx(np.mean(d))
        assert row.loc[name, "ci_low"] == pytest.approx(np.mean(d) - half)
        assert row.loc[name, "ci_high"] == pytest.approx(np.mean(d) + half)
        assert row.loc[name, "n"] == 200
    assert row.loc["sparse_evidence", "detected"]
    text = row.loc["sparse_evidence_text"]
    assert not text["detected"] and text["planted"] == 0.5
    # (b) Welch t interval from the strata's summaries (n 90, 70; means 0.7, 0.5; SD 0.1):
    # scipy.stats.ttest_ind(x, y, equal_var=False).confidence_interval() on samples with
    # exactly those summaries = (0.1685085, 0.2314915); ν = 148.45 (Welch–Satterthwaite)
    assert row.loc["reliability", "effect"] == pytest.approx(0.2)
    assert row.loc["reliability", "ci_low"] == pytest.approx(0.1685085, abs=1e-6)
    assert row.loc["reliability", "ci_high"] == pytest.approx(0.2314915, abs=1e-6)
    # (c) t interval over three sites of gains 0.10, 0.12, 0.08:
    # scipy.stats.t.interval(0.95, 2, loc=0.10, scale=0.02/sqrt(3)) = (0.05032, 0.14968)
    assert row.loc["site", "effect"] == pytest.approx(0.10)
    assert row.loc["site", "ci_low"] == pytest.approx(0.05032, abs=1e-4)
    assert row.loc["site", "ci_high"] == pytest.approx(0.14968, abs=1e-4)
    # (d) mean excess IoU 0.2025 over four patients, detected
    assert row.loc["annotation", "effect"] == pytest.approx(0.2025)
    assert row.loc["annotation", "detected"]
    # (e) the survival table's own bootstrap CI spans 0: not detected (a finding, not an error)
    assert row.loc["outcomes", "effect"] == pytest.approx(0.05)
    assert not row.loc["outcomes", "detected"]
    # (f) Fisher z: numpy tanh(arctanh(0.5) ± 1.959964/sqrt(57)) = (0.28186, 0.66899)
    assert row.loc["external", "ci_low"] == pytest.approx(0.28186, abs=1e-4)
    assert row.loc["external", "ci_high"] == pytest.approx(0.66899, abs=1e-4)
    # (g) without the NONE model's predictions: the prompt table's paired bootstrap of
    # r(NONE) − r(CUR) = −0.10 [−0.16, −0.03], negated
    assert row.loc["text_prior", "effect"] == pytest.approx(0.10)
    assert row.loc["text_prior", "ci_low"] == pytest.approx(0.03)
    assert row.loc["text_prior", "ci_high"] == pytest.approx(0.16)
    assert row.loc["text_prior", "detected"]
    assert row.loc["sparse_evidence", "planted"] == 0.5
    assert row.loc["site", "planted"] == 0.3


def test_the_reliability_interval_counts_the_patients_behind_the_shares():
    # The strata's shares come from the patients with both modalities (n_share 40, 30 of the
    # strata's 90, 70): scipy.stats.ttest_ind(x, y, equal_var=False).confidence_interval() on
    # samples with n 40, 30, means 0.7, 0.5, SD 0.1 = (0.1517298, 0.2482702), ν = 62.62
    metrics, tables, preds, truth = _inputs()
    tables["gate_strata"] = tables["gate_strata"].assign(n_share=[40, 30, 20])
    sizes = validation.planted_sizes(planted().as_dict())
    row = validation.validation_table(sizes, metrics, tables, preds, truth, n_boot=50)
    reliability = row.set_index("mechanism").loc["reliability"]
    assert reliability["ci_low"] == pytest.approx(0.1517298, abs=1e-6)
    assert reliability["ci_high"] == pytest.approx(0.2482702, abs=1e-6)
    assert reliability["n"] == 70


def test_a_run_without_the_inputs_detects_nothing_and_null_sizes_are_zero():
    null = validation.planted_sizes(planted(MechanismsConfig().null()).as_dict())
    assert null.pop(validation.EFFECT_SCALE) == 1.0  # the null at the default scale
    assert set(null.values()) == {0.0}
    table = validation.validation_table(null, {}, {}, None, None)
    assert not table["detected"].any() and table["effect"].isna().all()
    assert list(table["mechanism"]) == [m for m, _ in validation.MECHANISMS]


def test_metrics_keys_are_in_the_schema_and_the_matrix_pairs_planted_with_null(tmp_path):
    metrics, tables, preds, truth = _inputs()
    on = validation.validation_table(
        validation.planted_sizes(planted().as_dict()), metrics, tables, preds, truth, n_boot=50
    )
    keys = validation.validation_metrics(on)
    assert len(keys) == 5 * len(validation.MECHANISMS) + 1  # and validation.effect_scale
    assert all(describe(k) for k in keys)
    null = validation.validation_table(
        validation.planted_sizes(planted(MechanismsConfig().null()).as_dict()), {}, {}, None, None
    )
    matrix = validation.combine(on, null)
    assert {"null_planted", "null_effect", "null_detected"} <= set(matrix.columns)
    assert (matrix["null_planted"] == 0).all() and not matrix["null_detected"].any()
    # the effect scale K travels with both halves and heads the Markdown table
    assert (matrix["effect_scale"] == 1.0).all() and (matrix["null_effect_scale"] == 1.0).all()
    assert validation.matrix_markdown(matrix).startswith("Effect scale K = 1.")
    assert "at effect scale" not in validation.recovery_sentence(matrix)  # K = 1: the defaults
    # read_planted: from synth.json beside the manifest; None for a cohort without one
    (tmp_path / "synth.json").write_text(json.dumps({"mechanisms": planted().as_dict()}))
    assert validation.read_planted(tmp_path / "cohort.csv")["reliability"] == 0.4
    assert validation.read_planted(tmp_path / "elsewhere" / "cohort.csv") is None


def test_the_interaction_row_takes_the_strongest_arm_with_a_bonferroni_interval():
    metrics, tables, preds, truth = _inputs()
    sizes = validation.planted_sizes(planted().as_dict())
    row = validation.validation_table(sizes, metrics, tables, preds, truth, n_boot=50)
    row = row.set_index("mechanism").loc["treatment_interaction"]
    # numpy/scipy: se = (log(3.5) - log(1.4)) / (2 * norm.ppf(0.975)) = 0.233752;
    # |z| = log(2.2) / se = 3.373 (surgery) beats log(0.9) / 0.309367 (surgery+RT);
    # log(2.2) ± norm.ppf(1 - 0.025 / 2) * se = 0.788457 ± 2.241403 * 0.233752
    assert row["effect"] == pytest.approx(0.788457, abs=1e-5)
    assert row["ci_low"] == pytest.approx(0.264525, abs=1e-5)
    assert row["ci_high"] == pytest.approx(1.312390, abs=1e-5)
    assert row["detected"] and row["planted"] == pytest.approx(0.8)
    # an interaction below 1 counts the same (|log OR|); a flagged arm (null) is not chosen
    metrics |= {"treatment.predictive.surgery.or": 1 / 2.2, "treatment.predictive.surgery.ci_low":
                1 / 3.5, "treatment.predictive.surgery.ci_high": 1 / 1.4}  # fmt: skip
    flipped = validation.validation_table(sizes, metrics, tables, preds, truth, n_boot=50)
    flipped = flipped.set_index("mechanism").loc["treatment_interaction"]
    assert flipped["ci_low"] == pytest.approx(0.264525, abs=1e-5)
    metrics |= {f"treatment.predictive.surgery.{k}": None for k in ("or", "ci_low", "ci_high")}
    weak = validation.validation_table(sizes, metrics, tables, preds, truth, n_boot=50)
    weak = weak.set_index("mechanism").loc["treatment_interaction"]
    assert weak["effect"] == pytest.approx(-np.log(0.9)) and not weak["detected"]


# --------------------------------------------------------------------------- reference arms
REFERENCE = Path(__file__).parent / "reference"


def _measured_cohort():
    """The R interaction reference's patients (interaction_data.csv) as an evaluated run: its
    lr is the measured target, the AI's LR a noisy copy, plus OS drawn from the lr."""
    data = pd.read_csv(REFERENCE / "interaction_data.csv", index_col="patient_id")
    rng = np.random.default_rng(4)
    n = len(data)
    targets = pd.DataFrame(
        {"ers_caf": rng.normal(size=n), "lr": data["lr"], "heterogeneity": rng.normal(size=n)},
        index=data.index,
    )
    hazard = np.exp(0.8 * (data["lr"] - data["lr"].mean()) / data["lr"].std())
    time = rng.exponential(60.0 / hazard)
    follow = rng.uniform(24, 120, n)
    clinical = data.drop(columns=["lr", "fold"]).assign(
        os_time=np.round(np.minimum(time, follow), 2) + 0.01, os_event=(time <= follow).astype(int)
    )
    return targets, clinical, data["fold"]


def test_the_oracle_interaction_is_the_r_glm_fit_of_the_measured_lr():
    targets, clinical, folds = _measured_cohort()
    arms = validation.reference_tables(
        targets.index, targets, clinical, folds, survival=False, n_boot=50
    )
    assert list(arms) == [validation.ORACLE_TREATMENT]
    sizes = validation.planted_sizes(planted().as_dict())
    row = validation.validation_table(sizes, {}, arms, None, None).set_index("mechanism")
    oracle = row.loc["treatment_interaction_oracle"]
    # Known answer: R glm of tests/evaluation/reference/interaction_reference.R
    # (`Rscript interaction_reference.R`, R 4.2.2: glm(response ~ lr_per_sd * treatment +
    # clinical, binomial), interaction_expected.csv) on the measured lr: the one interaction
    # term lr_per_sd:treatment_surgery+RT has coef −1.15959653775356, se 0.548762569312956.
    # One arm (L = 1): |coef| ± qnorm(0.975) · se = 1.159597 ± 1.959964 · 0.548763.
    coef, se = 1.15959653775356, 0.548762569312956
    assert oracle["effect"] == pytest.approx(coef, rel=1e-6)
    assert oracle["ci_low"] == pytest.approx(coef - 1.959964 * se, rel=1e-5)
    assert oracle["ci_high"] == pytest.approx(coef + 1.959964 * se, rel=1e-5)
    assert oracle["detected"] and oracle["planted"] == pytest.approx(0.8)
    # the AI rows are untouched (no treatment metrics given: NaN, not detected)
    assert np.isnan(row.loc["treatment_interaction", "effect"])
    assert np.isnan(row.loc["outcomes_oracle", "effect"])  # not asked for


def test_the_oracle_c_index_gain_is_the_survival_analysis_of_the_measured_targets():
    from stromalens.evaluation.survival import survival_analysis

    targets, clinical, folds = _measured_cohort()
    patients = targets.index[:200]  # the AI scored these; the arm uses the same patients
    arms = validation.reference_tables(
        patients, targets, clinical, folds, treatment=False, survival_boot=40, seed=3
    )
    diff = arms[validation.ORACLE_CINDEX_DIFF]
    assert list(diff["metric"]) == ["harrell"] and list(diff["endpoint"]) == ["os"]
    # the same analysis code, folds, seed and bootstrap as the AI's own survival analysis
    # (horizons change nothing in Harrell's C: the resamples are drawn before them)
    own = survival_analysis(targets.loc[patients], clinical, folds, endpoints=("os",),
                            n_boot=40, seed=3)["survival_cindex_diff"]  # fmt: skip
    harrell = own[own["metric"] == "harrell"].iloc[0]
    sizes = validation.planted_sizes(planted().as_dict())
    row = validation.validation_table(sizes, {}, arms, None, None).set_index("mechanism")
    oracle = row.loc["outcomes_oracle"]
    assert oracle[["effect", "ci_low", "ci_high"]].tolist() == pytest.approx(
        harrell[["diff", "ci_low", "ci_high"]].tolist()
    )
    assert oracle["detected"]  # OS drawn from lr with log-HR 0.8 per SD: the gain is real
    assert oracle["planted"] == 1.0


def test_reference_arms_name_missing_targets():
    targets, clinical, folds = _measured_cohort()
    with pytest.raises(ValueError, match="no measured targets.*P9999"):
        validation.reference_tables(["P9999"], targets, clinical, folds)
    with pytest.raises(ValueError, match="heterogeneity"):
        validation.reference_tables(
            targets.index, targets.drop(columns="heterogeneity"), clinical, folds
        )


def test_wald_power_matches_statsmodels_normal_power():
    from statsmodels.stats.power import NormalIndPower

    # statsmodels: NormalIndPower().power(effect_size=δ/se, nobs1=1, alpha=α/L, ratio=0)
    # (ratio = 0: the one-sample normal test of a mean δ with SD se), two-sided
    for effect, se, tests in ((0.74, 1.13, 2), (0.79, 0.625, 2), (1.0, 0.3, 1)):
        expected = NormalIndPower().power(effect / se, nobs1=1, alpha=0.05 / tests, ratio=0)
        assert validation.wald_power(effect, se, tests) == pytest.approx(expected, rel=1e-9)
    assert validation.wald_power(0.0, 1.0) == pytest.approx(0.05)
    with pytest.raises(ValueError, match="se must be"):
        validation.wald_power(1.0, 0.0)


def test_the_sentence_words_the_reference_arms_apart_from_the_claims():
    metrics, tables, preds, truth = _inputs()
    tables[validation.ORACLE_CINDEX_DIFF] = tables["survival_cindex_diff"].assign(
        diff=0.08, ci_low=0.02, ci_high=0.14
    )
    sizes = validation.planted_sizes(planted().as_dict())
    table = validation.validation_table(sizes, metrics, tables, preds, truth, n_boot=50)
    row = table.set_index("mechanism")
    assert row.loc["outcomes_oracle", "detected"] and not row.loc["outcomes", "detected"]
    assert row.loc["outcomes_oracle", "claim"].startswith("reference arm:")
    text = validation.recovery_sentence(table)
    recovered, rest = text.split("Not recovered: ", 1)
    assert "oracle" not in recovered and "oracle" not in rest.split(".")[0]
    assert "perfect predictions): detected outcomes_oracle; not detected " in text


def _lso_predictions(seed=3):
    rng = np.random.default_rng(seed)
    rows = []
    for site, n in (("A", 30), ("B", 25), ("C", 20)):
        for target in ("ers_caf", "lr", "heterogeneity"):
            y = rng.normal(size=n)
            for model, noise in (("fusion", 0.8), ("fusion_no_coral", 1.4)):
                rows.append(
                    pd.DataFrame(
                        {
                            "patient_id": [f"{site}{i}" for i in range(n)],
                            "model": model,
                            "target": target,
                            "fold": site,
                            "y_true": y,
                            "y_pred": y + noise * rng.normal(size=n),
                        }
                    )
                )
    return pd.concat(rows, ignore_index=True)


def test_the_site_gain_is_the_mean_over_sites_of_the_macro_r_gain_with_a_patient_bootstrap():
    from stromalens.evaluation.fidelity import macro_r

    lso = _lso_predictions()
    effect, low, high, n = validation.site_gain_bootstrap(lso, n_boot=200, seed=0)
    # the effect by another route: fidelity.macro_r per site and model, then the mean gain
    by_site = [
        macro_r(part[part.model == "fusion"]) - macro_r(part[part.model == "fusion_no_coral"])
        for _, part in lso.groupby("fold")
    ]
    assert effect == pytest.approx(np.mean(by_site), abs=1e-12)
    assert n == 75 and low < effect < high and low > 0  # fusion is the less noisy model
    # the same predictions under both names: every resample's gain is 0
    same = lso[lso.model == "fusion"]
    twin = pd.concat([same, same.assign(model="fusion_no_coral")])
    assert validation.site_gain_bootstrap(twin, n_boot=50) == (0.0, 0.0, 0.0, 75)
    assert validation.site_gain_bootstrap(same, n_boot=50) is None


def test_the_site_row_uses_the_leave_site_out_predictions_when_the_run_has_them():
    metrics, tables, preds, truth = _inputs()
    tables[validation.LEAVE_SITE_OUT] = _lso_predictions()
    sizes = validation.planted_sizes(planted().as_dict())
    row = validation.validation_table(sizes, metrics, tables, preds, truth, n_boot=100)
    site = row.set_index("mechanism").loc["site"]
    expected = validation.site_gain_bootstrap(_lso_predictions(), n_boot=100, seed=0)
    assert (site["effect"], site["ci_low"], site["ci_high"], site["n"]) == pytest.approx(expected)


def test_fold_differences_cover_every_fold_of_every_repeat():
    # two repeats of 4 folds over 40 patients; patient P0000 has no mean_pool prediction
    rng = np.random.default_rng(1)
    ids = [f"P{i:04d}" for i in range(40)]
    rows = []
    for repeat in (0, 1):
        fold = rng.permutation(np.arange(40) % 4)
        for model in ("abmil", "mean_pool"):
            keep = [i for i in range(40) if not (model == "mean_pool" and i == 0)]
            rows.append(pd.DataFrame({"patient_id": [ids[i] for i in keep], "fold": fold[keep],
                                      "repeat": repeat, "model": model, "target": "ers_caf",
                                      "y_pred": rng.normal(size=len(keep)),
                                      "y_true": rng.normal(size=len(keep))}))  # fmt: skip
    splits = fold_differences(pd.concat(rows), "abmil", "mean_pool", ["ers_caf"])
    assert len(splits) == 8 and set(splits["repeat"]) == {0, 1}
    assert splits["n_test"].sum() == 2 * 39  # both models' patients only
    assert (splits["n_test"] + splits["n_train"]).eq(40).sum() == 6  # P0000's folds: 9 + 30


def test_the_text_prior_row_is_over_the_folds_of_cur_against_none():
    # r(wsi_clip) − r(clip_mil_none) on the measured target y_true, per fold
    metrics, tables, preds, truth = _inputs()
    rng = np.random.default_rng(5)
    base = preds[preds.model == "wsi_clip"]
    none = base.assign(model="clip_mil_none", y_pred=base["y_true"] + 4 * rng.normal(size=200))
    preds = pd.concat([preds, none])
    sizes = validation.planted_sizes(planted().as_dict())
    row = validation.validation_table(sizes, metrics, tables, preds, truth).set_index("mechanism")
    d = [np.corrcoef(base[base.fold == f]["y_pred"], base[base.fold == f]["y_true"])[0, 1]
         - np.corrcoef(none[none.fold == f]["y_pred"], none[none.fold == f]["y_true"])[0, 1]
         for f in range(5)]  # fmt: skip
    assert row.loc["text_prior", "effect"] == pytest.approx(np.mean(d))
    half = 2.7764451 * np.sqrt((1 / 5 + 40 / 160) * np.var(d, ddof=1))  # t_{0.975, 4}
    assert row.loc["text_prior", "ci_high"] == pytest.approx(np.mean(d) + half)


def test_the_reliability_row_is_over_the_folds_when_the_per_patient_shares_are_there():
    # 5 folds of 12 patients; per fold 4 sacral, 4 skull-base, 4 other; fold f's sacral shares
    # are 0.6 + 0.02 f, skull-base 0.5: d = 0.1 + 0.02 f = 0.10 … 0.18, d̄ = 0.14,
    # var(d) = 0.0010; by hand: 0.14 ± t_{0.975, 4} · sqrt((1/5 + 12/48) · 0.0010)
    metrics, tables, preds, truth = _inputs()
    ids = [f"Q{i:03d}" for i in range(60)]
    where = np.tile(["sacrum"] * 4 + ["skull_base"] * 4 + ["mobile_spine"] * 4, 5)
    fold = np.repeat(np.arange(5), 12)
    share = np.where(where == "sacrum", 0.6 + 0.02 * fold, 0.5)
    shares = pd.DataFrame({"fold": fold, "patient_id": ids, "share_wsi": share,
                           "has_wsi": True, "has_mri": True})  # fmt: skip
    shares.loc[0, "has_mri"] = False  # a patient without MRI has no share: left out
    shares.loc[0, "share_wsi"] = 5.0
    tables[validation.GATE_SHARES] = shares
    clinical = pd.DataFrame({"location": where}, index=pd.Index(ids, name="patient_id"))
    sizes = validation.planted_sizes(planted().as_dict())
    row = validation.validation_table(sizes, metrics, tables, preds, truth, clinical=clinical)
    reliability = row.set_index("mechanism").loc["reliability"]
    half = 2.7764451 * np.sqrt((1 / 5 + 12 / 48) * 0.0010)
    assert reliability["effect"] == pytest.approx(0.14)
    assert reliability["ci_low"] == pytest.approx(0.14 - half)
    assert reliability["ci_high"] == pytest.approx(0.14 + half)
    assert reliability["n"] == 60
