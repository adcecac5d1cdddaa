"""A complete, contract-conformant training run directory (``docs/run_directory.md``) with small
synthetic tables: 30 patients at 3 sites, planted latents, every evaluation file, tiny attention
overlays. Numbers are plausible and consistent (metrics.json agrees with the tables), not the
output of real models."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from stromalens.rundir import metric_key

TARGETS = ("ers_caf", "lr", "heterogeneity")
LATENT = {"ers_caf": "a", "lr": "b", "heterogeneity": "h"}
#: registered name → (study name, signal quality of its predictions)
MODELS = {
    "gated_fusion_coral": ("fusion", 0.85),
    "gated_fusion": ("fusion_no_coral", 0.8),
    "clip_mil": ("wsi_clip", 0.75),
    "mri_only": ("mri", 0.5),
    "student": ("mri_student", 0.45),
    "mean_pool": ("mean_pool", 0.55),
    "abmil": ("abmil", 0.65),
    "late_fusion": ("late_fusion", 0.7),
}
SITES = ("A", "B", "C")


def _r(x, y) -> float:
    return float(np.corrcoef(x, y)[0, 1])


def _fisher_ci(r: float, n: int) -> tuple[float, float]:
    z, se = np.arctanh(r), 1 / np.sqrt(n - 3)
    return float(np.tanh(z - 1.96 * se)), float(np.tanh(z + 1.96 * se))


def make_train_dir(root: Path, n: int = 30, folds: int = 3, seed: int = 0) -> Path:
    """Write ``root/study/train`` (the run), ``root/study/cohort`` (manifest + truth) and
    ``root/study/targets``; returns the run directory."""
    rng = np.random.default_rng(seed)
    study = root / "study"
    train, cohort_dir, target_dir = study / "train", study / "cohort", study / "targets"
    for d in (train / "evaluation" / "attention", cohort_dir, target_dir):
        d.mkdir(parents=True, exist_ok=True)
    pids = [f"P{i:04d}" for i in range(1, n + 1)]
    sites = [SITES[i % 3] for i in range(n)]

    # cohort: planted truth, manifest, targets
    latent = pd.DataFrame(rng.normal(size=(n, 3)), index=pids, columns=["a", "b", "h"])
    latent.index.name = "patient_id"
    truth = latent.assign(site=sites)[["site", "a", "b", "h"]]
    truth.to_parquet(cohort_dir / "truth.parquet")
    manifest = pd.DataFrame(
        {
            "patient_id": pids,
            "site": sites,
            "wsi": [f"wsi/{p}.tiff" for p in pids],
            "age": rng.normal(55, 12, n).round(1),
            "sex": rng.choice(["F", "M"], n),
            "location": rng.choice(["skull_base", "mobile_spine", "sacrum"], n),
            "volume_cc": rng.lognormal(3, 0.5, n).round(2),
            "os_time": rng.exponential(60, n).round(2),
            "os_event": rng.integers(0, 2, n),
            "pfs_time": rng.exponential(30, n).round(2),
            "pfs_event": rng.integers(0, 2, n),
            "fibrosis_grade": rng.integers(0, 4, n),
        }
    )
    manifest.to_csv(cohort_dir / "cohort.csv", index=False)
    targets = pd.DataFrame(
        {
            "ers_caf": latent["a"] * 0.8 + 0.3 * rng.normal(size=n),
            "lr": 0.1 * latent["b"] + 0.05 * rng.normal(size=n),
            "heterogeneity": 1.6 + 0.3 * latent["h"] + 0.1 * rng.normal(size=n),
        },
        index=pd.Index(pids, name="patient_id"),
    )
    targets["ers_caf_gsva"] = targets["ers_caf"] * 0.9 + 0.3 * rng.normal(size=n)
    targets["lr_cellchat"] = targets["lr"] + 0.04 * rng.normal(size=n)
    targets["heterogeneity_lsq"] = targets["heterogeneity"] + 0.05 * rng.normal(size=n)
    targets.to_parquet(target_dir / "targets.parquet")

    # training run
    config = {
        "cohort": {"manifest": str(cohort_dir / "cohort.csv")},
        "training": {
            "targets": str(target_dir / "targets.parquet"),
            "folds": folds,
            "settings": {"epochs_stage2": 5},
        },
    }
    (train / "config.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
    (train / "manifest.json").write_text(
        json.dumps({"stromalens": "0.1.0", "seed": 0, "patients": n, "settings": {"hidden": 16}}),
        encoding="utf-8",
    )
    (study / "manifest.json").write_text(
        json.dumps({"demo": "lighter demo settings (3 folds, 5 epochs)", "stages": {}}),
        encoding="utf-8",
    )
    fold = np.arange(n) % folds
    pd.DataFrame({"patient_id": pids, "site": sites, "fold": fold}).to_csv(
        train / "folds.csv", index=False
    )
    rows = []
    for reg, (_, quality) in MODELS.items():
        for t in TARGETS:
            y = targets[t].to_numpy()
            pred = quality * (y - y.mean()) + np.sqrt(1 - quality**2) * y.std() * rng.normal(size=n)
            rows.append(
                pd.DataFrame(
                    {
                        "patient_id": pids,
                        "fold": fold,
                        "model": reg,
                        "target": t,
                        "y_true": y,
                        "y_pred": pred + y.mean(),
                    }
                )
            )
    predictions = pd.concat(rows, ignore_index=True)
    predictions.to_parquet(train / "predictions.parquet", index=False)
    train_metrics = {"models": {}, "folds": folds, "inner_folds": 2, "seconds": 12.5}
    (train / "metrics.json").write_text(json.dumps(train_metrics), encoding="utf-8")

    ev = train / "evaluation"
    metrics: dict[str, float] = {}
    ceiling = {
        t: _r(targets[t], targets[alt])
        for t, alt in zip(
            TARGETS, ("ers_caf_gsva", "lr_cellchat", "heterogeneity_lsq"), strict=True
        )
    }
    fid, macro, truth_rows = [], [], []
    for reg, (name, _) in MODELS.items():
        part = predictions[predictions["model"] == reg]
        rs, fold_macro = [], []
        for t in TARGETS:
            p = part[part["target"] == t]
            r = _r(p["y_true"], p["y_pred"])
            lo, hi = _fisher_ci(r, n)
            fold_r = [_r(q["y_true"], q["y_pred"]) for _, q in p.groupby("fold")]
            err = p["y_pred"] - p["y_true"]
            slope = float(np.polyfit(p["y_pred"], p["y_true"], 1)[0])
            clo, chi = _fisher_ci(ceiling[t], n)
            fid.append(
                {
                    "model": name,
                    "target": t,
                    "r": r,
                    "r_ci_low": lo,
                    "r_ci_high": hi,
                    "p": 1e-4,
                    "r_fold_mean": float(np.mean(fold_r)),
                    "r_fold_sd": float(np.std(fold_r, ddof=1)),
                    "rmse": float(np.sqrt((err**2).mean())),
                    "rmse_fold_sd": 0.02,
                    "mae": float(err.abs().mean()),
                    "calibration_slope": slope,
                    "calibration_intercept": 0.01,
                    "n": n,
                    "ceiling": ceiling[t],
                    "ceiling_ci_low": clo,
                    "ceiling_ci_high": chi,
                }
            )
            metrics[metric_key("cv", name, "r", t)] = round(r, 4)
            metrics[metric_key("cv", name, "rmse", t)] = round(float(np.sqrt((err**2).mean())), 4)
            metrics[metric_key("cv", name, "calibration_slope", t)] = round(slope, 4)
            rs.append(r)
            fold_macro.append(fold_r)
            truth_r = _r(truth[LATENT[t]].reindex(p["patient_id"]), p["y_pred"])
            truth_rows.append(
                {"model": name, "target": t, "latent": LATENT[t], "r": truth_r, "n": n}
            )
            metrics[metric_key("truth", name, "r", t)] = round(truth_r, 4)
        per_fold = np.mean(np.array(fold_macro), axis=0)
        macro.append(
            {
                "model": name,
                "macro_r": float(np.mean(rs)),
                "macro_r_fold_mean": float(per_fold.mean()),
                "macro_r_fold_sd": float(per_fold.std(ddof=1)),
            }
        )
        metrics[metric_key("cv", name, "macro_r")] = round(float(np.mean(rs)), 4)
    pd.DataFrame(fid).to_csv(ev / "fidelity.csv", index=False)
    pd.DataFrame(macro).to_csv(ev / "fidelity_macro.csv", index=False)
    pd.DataFrame(truth_rows).to_csv(ev / "truth.csv", index=False)
    fusion_macro = next(m for m in macro if m["model"] == "fusion")
    metrics[metric_key("cv", "fusion", "macro_r_fold_sd")] = round(
        fusion_macro["macro_r_fold_sd"], 4
    )

    levels = [0.0, 0.25, 0.5, 0.75, 1.0]
    pd.DataFrame(
        [
            {
                "model": m,
                "modality": mod,
                "level": lv,
                "macro_r": base - drop * lv,
                "macro_r_sd": 0.03 + 0.02 * lv,
            }
            for m, base in (("fusion", 0.7), ("late_fusion", 0.62))
            for mod, drop in (("wsi", 0.35), ("mri", 0.1))
            for lv in levels
        ]
    ).to_csv(ev / "missing_modalities.csv", index=False)
    strata = {
        "location": ["skull_base", "mobile_spine", "sacrum"],
        "volume_tertile": ["T1", "T2", "T3"],
        "age_group": ["<50", "50-65", ">65"],
    }
    pd.DataFrame(
        [
            {
                "stratifier": s,
                "stratum": v,
                "n": 10,
                "share_wsi": g,
                "share_wsi_sd": 0.08,
                "share_mri": 1 - g,
                "gate_wsi_mean": 0.6,
                "model": "fusion",
                "macro_r": 0.6 + 0.05 * k,
            }
            for s, values in strata.items()
            for k, v in enumerate(values)
            for g in [0.55 + 0.08 * k]
        ]
    ).to_csv(ev / "gate_strata.csv", index=False)
    align = []
    for k, site in enumerate(SITES):
        before, after = 0.45 + 0.05 * k, 0.55 + 0.04 * k
        align.append({"site": site, "n": n // 3, "macro_r_before": before, "macro_r_after": after})
        metrics[metric_key("lso", site, "before")] = before
        metrics[metric_key("lso", site, "after")] = after
    pd.DataFrame(align).to_csv(ev / "site_alignment.csv", index=False)
    metrics[metric_key("site_entropy", "before")] = 0.61
    metrics[metric_key("site_entropy", "after")] = 0.97
    shift = {s: np.array([2.0 * k, -1.0 * k]) for k, s in enumerate(SITES)}
    emb = []
    for stage, scale in (("before", 1.0), ("after", 0.1)):
        xy = rng.normal(size=(n, 2)) + scale * np.array([shift[s] for s in sites])
        emb.append(
            pd.DataFrame(
                {
                    "patient_id": pids,
                    "site": sites,
                    "stage": stage,
                    "x": xy[:, 0],
                    "y": xy[:, 1],
                    "method": "UMAP",
                }
            )
        )
    pd.concat(emb).to_parquet(ev / "embedding_2d.parquet", index=False)
    base = {"NONE": 0.45, "CUR": 0.7, "COOP": 0.72, "SYN": 0.66, "ANTI": 0.2, "OOD": 0.3}
    pd.DataFrame(
        [
            {"prompt_set": ps, "target": t, "r": r - 0.05 * k, "r_fold_sd": 0.06, "n": n,
             # the difference to CUR over the folds (NaN on CUR's own row)
             "cv_diff_vs_cur": np.nan if ps == "CUR" else r - base["CUR"],
             "cv_ci_low": np.nan if ps == "CUR" else r - base["CUR"] - 0.1,
             "cv_ci_high": np.nan if ps == "CUR" else r - base["CUR"] + 0.1}  # fmt: skip
            for ps, r in base.items()
            for k, t in enumerate(TARGETS)
        ]
    ).to_csv(ev / "prompt_perturbation.csv", index=False)

    tiles, att = [], []
    for pid in pids[:3]:
        gx, gy = np.meshgrid(np.arange(8), np.arange(6))
        hot = np.exp(-((gx - 5) ** 2 + (gy - 2) ** 2) / 6.0).ravel()
        for model, sharp in (("wsi_clip", 1.0), ("clip_mil_none", 0.2)):
            for t in TARGETS[:2]:
                w = sharp * hot + (1 - sharp) * rng.random(hot.size)
                tiles.append(
                    pd.DataFrame(
                        {
                            "patient_id": pid,
                            "model": model,
                            "target": t,
                            "x": gx.ravel() * 224,
                            "y": gy.ravel() * 224,
                            "tile_px": 224,
                            "attention": w / w.sum(),
                        }
                    )
                )
        img = np.zeros((48, 64, 3), dtype=np.uint8)
        img[..., 0] = 200
        img[..., 1] = (np.kron(hot.reshape(6, 8), np.ones((8, 8))) * 255).astype(np.uint8)
        img[..., 2] = 120
        Image.fromarray(img).save(ev / "attention" / f"{pid}.png")
        feature = {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [[[0, 0],
                   [224, 0], [224, 224], [0, 224], [0, 0]]]}, "properties": {"objectType":
                   "tile", "measurements": {"attention ers_caf": 1.0}}}  # fmt: skip
        (ev / "attention" / f"{pid}.geojson").write_text(
            json.dumps({"type": "FeatureCollection", "features": [feature]}), encoding="utf-8"
        )
    pd.concat(tiles).to_parquet(ev / "attention_tiles.parquet", index=False)
    for i, pid in enumerate(pids):
        grade = int(manifest.loc[i, "fibrosis_grade"])
        for t in TARGETS:
            att.append(
                {
                    "patient_id": pid,
                    "model": "wsi_clip",
                    "target": t,
                    "grade": grade,
                    "grade_stratum": "0-1" if grade < 2 else "2-3",
                    "k": 8,
                    "iou": 0.3 + 0.1 * rng.random(),
                    "iou_shuffled": 0.1 * rng.random(),
                    "hit_rate": 0.6 + 0.2 * rng.random(),
                    "hit_rate_shuffled": 0.2 * rng.random(),
                }
            )
    att = pd.DataFrame(att)
    att.to_csv(ev / "attention.csv", index=False)
    summary = []
    for (t, g), part in att.groupby(["target", "grade_stratum"]):
        for metric in ("iou", "hit_rate"):
            summary.append(
                {
                    "model": "wsi_clip",
                    "target": t,
                    "grade_stratum": g,
                    "metric": metric,
                    "observed": part[metric].mean(),
                    "shuffled": part[f"{metric}_shuffled"].mean(),
                    "n": len(part),
                    "p": 0.002,
                }
            )
    pd.DataFrame(summary).to_csv(ev / "attention_summary.csv", index=False)

    hr, cidx, diff, auc, dc = [], [], [], [], []
    for endpoint, c0, c1 in (("os", 0.66, 0.71), ("pfs", 0.62, 0.68)):
        for term, h in (("age", 1.02), ("volume_cc", 1.1), ("ers_caf_pred", 1.8), ("lr_pred", 0.7)):
            hr.append(
                {
                    "endpoint": endpoint,
                    "term": term,
                    "hr": h,
                    "ci_low": h * 0.7,
                    "ci_high": h * 1.4,
                    "p": 0.03,
                    "n": n,
                    "events": 14,
                }
            )
        for model, c in (("clinical", c0), ("clinical_ai", c1)):
            for metric, v in (("harrell", c), ("uno_60", c - 0.01)):
                cidx.append(
                    {
                        "endpoint": endpoint,
                        "model": model,
                        "metric": metric,
                        "value": v,
                        "ci_low": v - 0.06,
                        "ci_high": v + 0.06,
                    }
                )
            metrics[metric_key("survival", endpoint, "c_index", model)] = c
            for time in (12, 24, 36, 60):
                auc.append(
                    {
                        "endpoint": endpoint,
                        "model": model,
                        "time": time,
                        "auc": c + 0.02 - time / 1000,
                    }
                )
        diff.append(
            {
                "endpoint": endpoint,
                "metric": "harrell",
                "diff": c1 - c0,
                "ci_low": c1 - c0 - 0.04,
                "ci_high": c1 - c0 + 0.04,
                "p": 0.04,
            }
        )
        for th in np.linspace(0.05, 0.6, 12):
            for model, nb in (
                ("clinical", 0.3 - 0.4 * th),
                ("clinical_ai", 0.33 - 0.38 * th),
                ("all", 0.35 - 0.7 * th),
                ("none", 0.0),
            ):
                dc.append(
                    {
                        "endpoint": endpoint,
                        "horizon": 36,
                        "model": model,
                        "threshold": th,
                        "net_benefit": nb,
                    }
                )
    pd.DataFrame(hr).to_csv(ev / "survival_hr.csv", index=False)
    pd.DataFrame(cidx).to_csv(ev / "survival_cindex.csv", index=False)
    pd.DataFrame(diff).to_csv(ev / "survival_cindex_diff.csv", index=False)
    pd.DataFrame(auc).to_csv(ev / "survival_auc.csv", index=False)
    pd.DataFrame(dc).to_csv(ev / "decision_curve.csv", index=False)
    pd.DataFrame(
        [
            {
                "term": "ers_caf_pred",
                "estimate": 0.8,
                "ci_low": 0.2,
                "ci_high": 1.4,
                "p": 0.01,
                "auc": 0.68,
                "auc_ci_low": 0.55,
                "auc_ci_high": 0.8,
                "n": n,
            }
        ]
    ).to_csv(ev / "treatment.csv", index=False)
    pd.DataFrame(
        {
            "metric": ["retention", "calibration_slope", "speed_ratio", "memory_ratio"],
            "value": [0.91, 0.97, 38.0, 12.5],
        }
    ).to_csv(ev / "distillation.csv", index=False)
    ext = []
    for t, r in zip(TARGETS, (0.58, 0.41, 0.63), strict=True):
        for model, dr in (("fusion", 0.0), ("wsi_clip", -0.04)):
            lo, hi = _fisher_ci(r + dr, 20)
            ext.append(
                {
                    "cohort": "EXT",
                    "model": model,
                    "target": t,
                    "n": 20,
                    "r": r + dr,
                    "r_ci_low": lo,
                    "r_ci_high": hi,
                    "r_boot_low": lo + 0.03,
                    "r_boot_high": hi - 0.03,
                    "p": 0.004,
                    "p_perm": 0.003,
                    "q_fdr": 0.01,
                }
            )
        metrics[metric_key("external", "EXT", "r", t)] = r
    pd.DataFrame(ext).to_csv(ev / "external.csv", index=False)
    # the fit warnings as the evaluation writes them (stromalens.evaluation.fit_warnings)
    pd.DataFrame(
        [
            {
                "analysis": "survival",
                "table": "survival_hr.csv",
                "source": "stromalens.evaluation.survival",
                "message": "pfs hazard ratios: Cox fit did not converge cleanly",
            },
            {
                "analysis": "survival",
                "table": "survival_cindex.csv",
                "source": "stromalens.evaluation.survival",
                "message": "fold 1 clinical_ai: Cox fit did not converge cleanly",
            },
            {
                "analysis": "treatment",
                "table": "treatment.csv",
                "source": "check",
                "message": "ers_caf_pred: estimate = 1e-16 [0, inf] — estimate or CI not finite",
            },
        ]
    ).to_csv(ev / "fit_warnings.csv", index=False)
    for analysis, count in (("survival", 2), ("treatment", 1), ("fidelity", 0)):
        metrics[metric_key("warnings", analysis, "count")] = count
    (ev / "metrics.json").write_text(json.dumps(metrics, indent=2), encoding="utf-8")
    return train


@pytest.fixture(scope="session")
def train_dir(tmp_path_factory) -> Path:
    return make_train_dir(tmp_path_factory.mktemp("report_run"))


@pytest.fixture(scope="session")
def report_html(train_dir) -> Path:
    """The report of the complete run, written once per session."""
    from stromalens.report import write_report

    return write_report(train_dir)
