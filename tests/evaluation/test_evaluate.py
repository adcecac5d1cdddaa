"""``stromalens evaluate`` and ``stromalens predict`` on a small real training run
(``tiny_run``, tests/evaluation/conftest.py): every section is filled, the probes keep their
invariants, and bad input gets a clear error naming what is missing."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from stromalens.evaluation import evaluate_run, predict_cohort
from stromalens.evaluation.evaluate import ANALYSES
from stromalens.evaluation.schema import TABLES, describe
from stromalens.rundir import RunDirError, open_run

SCRIPT = Path(sys.executable).parent / "stromalens"


@pytest.fixture(scope="module")
def evaluated(tiny_run, tmp_path_factory):
    """The tiny run, applied zero-shot to its own cohort as an 'external' one, evaluated."""
    run = open_run(tiny_run)
    train = run.training
    predict_cohort(
        tiny_run,
        run.manifest_path,
        tiny_run / "external" / "mirror",
        features_dir=train["features"],
        targets=train["targets"],
        name="mirror",
    )
    metrics = evaluate_run(tiny_run, n_boot=200, survival_boot=50, repeats=2, max_overlays=2)
    return tiny_run, metrics


def test_every_section_is_filled(evaluated):
    train, metrics = evaluated
    out = train / "evaluation"
    for name in TABLES:
        path = out / name
        assert path.is_file(), name
        table = pd.read_csv(path) if name.endswith(".csv") else pd.read_parquet(path)
        assert len(table), name
    for model in ("fusion", "fusion_no_coral", "wsi_clip", "mri", "mri_student"):
        assert metrics[f"cv.{model}.macro_r"] is not None
        for target in ("ers_caf", "lr", "heterogeneity"):
            for stat in ("r", "rmse", "calibration_slope"):
                assert f"cv.{model}.{stat}.{target}" in metrics
    for key in ("site_entropy.before", "site_entropy.after"):
        assert 0 <= metrics[key] <= 1
    assert {k for k in metrics if k.startswith("lso.")} >= {
        f"lso.{s}.{w}" for s in "ABCD" for w in ("before", "after")
    }
    for endpoint in ("os", "pfs"):
        for model in ("clinical", "clinical_ai"):
            assert 0 < metrics[f"survival.{endpoint}.c_index.{model}"] < 1
    assert metrics["truth.fusion.r.heterogeneity"] is not None
    assert metrics["external.mirror.r.ers_caf"] is not None
    # the mirror cohort has outcomes: C-index without / with the frozen model's scores, or —
    # 36 patients, ten Cox terms — a note that the Cox models could not be fitted
    key = "external.mirror.c_index.os.clinical_ai"
    assert (key in metrics and 0 < metrics[key] < 1) or any(
        "mirror: Cox models did not converge" in note for note in metrics["meta.notes"]
    )
    undocumented = [k for k in metrics if describe(k) is None]
    assert not undocumented, undocumented
    # (the tiny study has no slide images, so no overlays: those are tested in test_attention)


def test_every_registered_analysis_ran(evaluated):
    # the tiny run has every input (leave-site-out, tiles, outcomes, truth, an external cohort)
    _, metrics = evaluated
    # ... but no planted mechanisms (no synth.json): the validation analysis is left out
    expected = [a.name for a in ANALYSES if a.name != "validation"]
    assert list(metrics["meta.analysis_seconds"]) == expected


def test_an_unknown_analysis_to_skip_is_named(tiny_run):
    with pytest.raises(ValueError, match="survivl.*known"):
        evaluate_run(tiny_run, skip=("survivl",))


def test_probes_keep_their_invariants(evaluated):
    train, _ = evaluated
    missing = pd.read_csv(train / "evaluation" / "missing_modalities.csv")
    by = missing.set_index(["model", "modality", "level"])["macro_r"]
    # the MRI-only model ignores the slide; the WSI model ignores the MRI
    assert np.allclose(by.loc[("mri", "wsi")], by.loc[("mri", "wsi", 0.0)])
    assert np.allclose(by.loc[("wsi_clip", "mri")], by.loc[("wsi_clip", "mri", 0.0)])
    # with nothing removed the probe reproduces the out-of-fold predictions of training
    fid = pd.read_csv(train / "evaluation" / "fidelity_macro.csv").set_index("model")
    assert by.loc[("fusion", "wsi", 0.0)] == pytest.approx(fid.loc["fusion", "macro_r"], abs=1e-5)
    assert by.loc[("fusion", "mri", 0.0)] == pytest.approx(fid.loc["fusion", "macro_r"], abs=1e-5)
    prompts = pd.read_csv(train / "evaluation" / "prompt_perturbation.csv")
    assert {"NONE", "CUR", "SYN", "ANTI", "OOD"} <= set(prompts["prompt_set"])
    gates = pd.read_csv(train / "evaluation" / "gate_strata.csv")
    assert gates["share_wsi"].between(0, 1).all()
    assert (gates["share_wsi"] + gates["share_mri"]).to_numpy() == pytest.approx(1.0)
    assert set(gates["stratifier"]) == {"location", "volume_tertile", "age_group"}
    # the 2-D map is the first fold model's embedding of its own held-out patients only
    folds = open_run(train).folds
    emb = pd.read_parquet(train / "evaluation" / "embedding_2d.parquet")
    assert set(emb["patient_id"]) <= set(folds.index[folds == folds.min()])
    treatment = pd.read_csv(train / "evaluation" / "treatment.csv")
    assert {"prognostic", "predictive"} <= set(treatment["role"])
    assert 0 <= treatment["auc_oof"].iloc[0] <= 1
    dist = pd.read_csv(train / "evaluation" / "distillation.csv").set_index("metric")["value"]
    assert dist["teacher_peak_mb"] > dist["student_peak_mb"] > 0
    external = pd.read_csv(train / "evaluation" / "external.csv")
    assert external["q_fdr"].between(0, 1).all() and external["p_perm"].between(0, 1).all()


def test_zero_shot_predictions_are_the_mean_of_the_fold_models(evaluated):
    train, _ = evaluated
    preds = pd.read_parquet(train / "external" / "mirror" / "predictions.parquet")
    info = json.loads((train / "external" / "mirror" / "predict.json").read_text("utf-8"))
    assert info["folds_averaged"] == 3 and "fusion" in info["models"]
    assert "mri" not in info["models"]  # no MRI in a zero-shot cohort: slide models only
    assert not preds["y_pred"].isna().any()
    assert preds["patient_id"].nunique() == info["patients_with_slide"] < info["patients"]
    assert not set(preds["patient_id"]) & set(info["skipped_no_slide"])


def test_a_run_missing_files_is_named(tiny_run, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(tiny_run, broken, ignore=shutil.ignore_patterns("checkpoints", "evaluation"))
    (broken / "folds.csv").unlink()
    with pytest.raises(RunDirError, match="folds.csv"):
        open_run(broken)
    result = subprocess.run(
        [str(SCRIPT), "evaluate", str(broken)], capture_output=True, encoding="utf-8"
    )
    assert result.returncode == 1 and "folds.csv" in result.stderr
    assert "Traceback" not in result.stderr


def test_nan_predictions_are_named(tiny_run, tmp_path):
    broken = tmp_path / "nan"
    shutil.copytree(tiny_run, broken, ignore=shutil.ignore_patterns("checkpoints", "evaluation"))
    preds = pd.read_parquet(broken / "predictions.parquet")
    preds.loc[3, "y_pred"] = np.nan
    preds.to_parquet(broken / "predictions.parquet")
    with pytest.raises(RunDirError, match=f"{preds.loc[3, 'patient_id']}"):
        open_run(broken)


def test_a_cohort_without_events_is_an_error(tiny_run, tmp_path):
    broken = tmp_path / "noevents"
    shutil.copytree(tiny_run, broken, ignore=shutil.ignore_patterns("evaluation"))
    run = open_run(broken)
    clinical = pd.read_csv(run.manifest_path)
    clinical["os_event"] = 0
    manifest = tmp_path / "cohort_noevents.csv"
    clinical.to_csv(manifest, index=False)
    config = (broken / "config.yaml").read_text("utf-8")
    (broken / "config.yaml").write_text(config.replace(str(run.manifest_path), str(manifest)))
    with pytest.raises(ValueError, match="os"):
        evaluate_run(broken, skip=("probes", "attention", "treatment", "external"))


def test_the_prompt_table_reads_the_wsi_model_retrained_per_prompt_set(evaluated):
    """SYN/ANTI/OOD are the out-of-fold predictions of training's retrained runs
    (TRAIN/prompt_perturbation/<SET>/), on the main CV's folds, not a text swap at inference;
    each r is the pooled Pearson r of those predictions with its Fisher-z CI."""
    from scipy import stats

    from stromalens.rundir import TrainLayout

    train, _ = evaluated
    table = pd.read_csv(train / "evaluation" / "prompt_perturbation.csv")
    table = table.set_index(["prompt_set", "target"])
    main = pd.read_csv(train / "folds.csv", dtype={"patient_id": str}).set_index("patient_id")
    for label in ("SYN", "ANTI", "OOD"):
        run = TrainLayout(train).prompt_set(label)
        folds = pd.read_csv(run.folds, dtype={"patient_id": str}).set_index("patient_id")
        pd.testing.assert_series_equal(folds["fold"], main["fold"])
        preds = pd.read_parquet(run.predictions)
        assert set(preds["model"]) == {"wsi_clip"}
        for target, part in preds.groupby("target"):
            # scipy.stats.pearsonr(y_pred, y_true): r and its Fisher-z 95% interval
            res = stats.pearsonr(part["y_pred"], part["y_true"])
            ci = res.confidence_interval(0.95)
            row = table.loc[(label, target)]
            assert row["r"] == pytest.approx(res.statistic, abs=1e-9)
            assert (row["r_ci_low"], row["r_ci_high"]) == pytest.approx((ci.low, ci.high))
            assert np.isfinite(row["diff_vs_cur"])  # paired with CUR on the same patients
