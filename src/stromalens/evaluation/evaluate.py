"""``stromalens evaluate TRAIN``: every analysis of the study on one training run.

Reads the run directory (``docs/run_directory.md``), writes ``TRAIN/evaluation/``: one table per
analysis and ``metrics.json`` (schema: :mod:`stromalens.evaluation.schema`). The analyses, in
the order of the study's Results:

 1. fidelity per model and target (+ 2. the noise ceiling beside each r)   ``fidelity``
 3. missing modalities                                                  ``probes``/``robustness``
 4. gate weights by strata                                               ``gates``
 5. site alignment (leave-site-out, k-NN site entropy, 2-D embedding)    ``alignment``
 6. prompt perturbation                                                  ``robustness``
 7. attention co-localisation with the pathologist's annotations         ``attention``
 8. survival (Cox HRs, Harrell/Uno C, AUC(t), decision curves)           ``survival``
 9. treatment response                                                   ``treatment``
10. distillation                                                         ``distillation``
11. zero-shot external cohorts (``stromalens predict`` outputs)          ``external``
12. known truth (synthetic cohorts)                                      ``truth``
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from ..logs import event, get_logger
from ..training.data import TARGETS
from .naming import PROPOSED

log = get_logger("evaluation")

ANALYSES = (
    "fidelity",
    "probes",
    "alignment",
    "attention",
    "survival",
    "treatment",
    "distillation",
    "external",
    "truth",
)


def _fidelity_metrics(table: pd.DataFrame, macro: pd.DataFrame) -> dict:
    m = {}
    for row in table.itertuples(index=False):
        for col in (
            "r",
            "r_ci_low",
            "r_ci_high",
            "r_fold_sd",
            "rmse",
            "mae",
            "calibration_slope",
            "calibration_intercept",
        ):
            m[f"cv.{row.model}.{col}.{row.target}"] = getattr(row, col)
    for row in macro.itertuples(index=False):
        m[f"cv.{row.model}.macro_r"] = row.macro_r
        m[f"cv.{row.model}.macro_r_fold_sd"] = row.macro_r_fold_sd
    for target in TARGETS:
        part = table[table["target"] == target]
        if len(part) and np.isfinite(part["ceiling"].iloc[0]):
            m[f"ceiling.{target}"] = part["ceiling"].iloc[0]
    return m


def _external_survival(dirs, n_boot: int, seed: int, notes: list) -> pd.DataFrame:
    """C-index of clinical-only vs clinical + AI Cox models on each external cohort that has
    outcomes. The image model stays frozen (its zero-shot predictions are the AI scores); only
    the two Cox models are fitted, out of fold over 5 folds of the external cohort (3 folds
    below 80 patients)."""
    from lifelines.exceptions import ConvergenceError

    from ..cohort import load_manifest
    from ..training.cv import assign_folds
    from .survival import survival_analysis

    frames = []
    for directory in dirs:
        info = json.loads((directory / "predict.json").read_text(encoding="utf-8"))
        clinical = load_manifest(info["manifest"], check_files=False).frame
        clinical.index = clinical.index.astype(str)
        preds = pd.read_parquet(directory / "predictions.parquet")
        preds = preds[preds["model"] == PROPOSED]
        if preds.empty:
            continue
        scores = preds.pivot(index="patient_id", columns="target", values="y_pred")[list(TARGETS)]
        endpoints = [
            e
            for e in ("os", "pfs")
            if {f"{e}_time", f"{e}_event"} <= set(clinical.columns)
            and clinical.loc[scores.index, f"{e}_event"].fillna(0).sum() >= 5
        ]
        if not endpoints:
            notes.append(f"external cohort {info['cohort']}: no outcomes with events, no C-index")
            continue
        k = 5 if len(scores) >= 80 else 3  # small cohorts: larger training folds for the Cox
        folds = assign_folds(scores.index, clinical.loc[scores.index, "site"], k, seed)
        try:
            tables = survival_analysis(
                scores,
                clinical.loc[scores.index],
                folds,
                endpoints=endpoints,
                n_boot=n_boot,
                seed=seed,
                thresholds=np.round(np.arange(0.05, 0.951, 0.05), 2),
            )
        except ConvergenceError as exc:
            notes.append(f"external cohort {info['cohort']}: Cox models did not converge ({exc})")
            continue
        frames.append(tables["survival_cindex"].assign(cohort=info["cohort"]))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def evaluate_run(
    train_dir: Path | str,
    out: Path | str | None = None,
    *,
    external: list[Path | str] | None = None,
    skip: tuple[str, ...] = (),
    n_boot: int = 1000,
    survival_boot: int = 200,
    repeats: int = 3,
    k_fraction: float = 0.1,
    max_overlays: int = 6,
    seed: int = 0,
) -> dict:
    """Run every analysis not in ``skip`` on the training run ``train_dir``; write the tables
    and ``metrics.json`` into ``out`` (default ``train_dir/evaluation``) and return the
    metrics. ``external`` lists ``stromalens predict`` output directories (default: those under
    ``train_dir/external/``)."""
    from .rundir import open_run
    from .schema import clean

    unknown = set(skip) - set(ANALYSES)
    if unknown:
        raise ValueError(f"unknown analyses to skip {sorted(unknown)}; known: {ANALYSES}")
    started = time.perf_counter()
    run = open_run(train_dir)
    out = Path(out) if out is not None else run.root / "evaluation"
    out.mkdir(parents=True, exist_ok=True)
    metrics: dict = {}
    seconds: dict = {}
    notes = list(run.notes)
    preds = run.predictions

    def timed(name):
        seconds[name] = round(time.perf_counter() - timed.t0, 1)
        timed.t0 = time.perf_counter()

    timed.t0 = time.perf_counter()

    # 1–2. fidelity and noise ceiling --------------------------------------------------------
    from .fidelity import fidelity, fidelity_macro

    table = fidelity(preds, run.reliability)
    macro = fidelity_macro(preds)
    table.to_csv(out / "fidelity.csv", index=False)
    macro.to_csv(out / "fidelity_macro.csv", index=False)
    metrics.update(_fidelity_metrics(table, macro))
    timed("fidelity")

    # 3–6 (model probes) ---------------------------------------------------------------------
    probes = None
    if "probes" not in skip:
        from .probes import run_probes
        from .robustness import missing_modality_table, prompt_perturbation_table

        probes = run_probes(run, repeats=repeats, seed=seed, cost="distillation" not in skip)
        missing = missing_modality_table(probes["missing"])
        missing.to_csv(out / "missing_modalities.csv", index=False)
        for row in missing.itertuples(index=False):
            metrics[f"missing.{row.model}.{row.modality}.{round(100 * row.level)}"] = row.macro_r
        prompts = prompt_perturbation_table(preds, probes["prompts"], n_boot, seed)
        prompts.to_csv(out / "prompt_perturbation.csv", index=False)
        for row in prompts.itertuples(index=False):
            metrics[f"prompt.{row.prompt_set}.r.{row.target}"] = row.r
            if row.prompt_set != "CUR":
                metrics[f"prompt.{row.prompt_set}.p_vs_cur.{row.target}"] = row.p_vs_cur
        if not probes["gates"].empty:
            from .gates import gate_strata_table

            gates = gate_strata_table(probes["gates"], preds, run.clinical)
            gates.to_csv(out / "gate_strata.csv", index=False)
            for row in gates[gates["model"] == PROPOSED].itertuples(index=False):
                metrics[f"gate.{row.stratifier}.{row.stratum}.wsi"] = row.gate_wsi
                metrics[f"gate.{row.stratifier}.p_kruskal"] = row.p_kruskal
        if not probes["attention"].empty:
            probes["attention"].to_parquet(out / "attention_tiles.parquet", index=False)
        timed("probes")

    # 5. site alignment -----------------------------------------------------------------------
    if "alignment" not in skip:
        from .alignment import embedding_table, knn_site_entropy, leave_site_out_table

        if run.lso is not None:
            lso = leave_site_out_table(run.lso)
            lso.to_csv(out / "site_alignment.csv", index=False)
            for row in lso.itertuples(index=False):
                metrics[f"lso.{row.site}.before"] = row.macro_r_before
                metrics[f"lso.{row.site}.after"] = row.macro_r_after
            paired = lso[["macro_r_before", "macro_r_after"]].dropna()
            if len(paired) >= 2 and (paired["macro_r_after"] != paired["macro_r_before"]).any():
                # after − before over the held-out sites (exact signed-rank test)
                metrics["lso_test.wilcoxon_p"] = stats.wilcoxon(
                    paired["macro_r_after"], paired["macro_r_before"], method="exact"
                ).pvalue
        if probes is not None and not probes["embeddings"].empty:
            emb = probes["embeddings"]
            entropies: dict[str, list[float]] = {}
            cols = [c for c in emb.columns if c.startswith("e") and c[1:].isdigit()]
            for stage in ("before", "after"):
                values = [
                    knn_site_entropy(part[cols].to_numpy(), part["site"], k=10)
                    for _, part in emb[emb["stage"] == stage].groupby("fold")
                ]
                metrics[f"site_entropy.{stage}"] = float(np.mean(values))
                metrics[f"site_entropy.{stage}_sd"] = float(np.std(values, ddof=1))
                entropies[stage] = values
            if len(entropies.get("before", [])) >= 2 and len(entropies.get("after", [])) >= 2:
                # the same fold models before/after CORAL: paired t-test over folds
                metrics["site_entropy.p_paired"] = stats.ttest_rel(
                    entropies["after"], entropies["before"]
                ).pvalue
            first = emb[emb["fold"] == emb["fold"].min()]
            embedding_table(first, seed).to_parquet(out / "embedding_2d.parquet", index=False)
        timed("alignment")

    # 7. attention co-localisation --------------------------------------------------------------
    tiles_path = out / "attention_tiles.parquet"
    if "attention" not in skip and tiles_path.is_file():
        from .attention import colocalisation, save_overlays, write_colocalisation

        tiles = pd.read_parquet(tiles_path)
        result = colocalisation(
            tiles, run.clinical, run.manifest_path.parent, k_fraction=k_fraction, seed=seed
        )
        write_colocalisation(result, out)
        summary = result.summary
        for reason, count in result.skipped.groupby("reason").size().items():
            notes.append(f"attention co-localisation: {count} slide maps skipped ({reason})")
        for row in summary.itertuples(index=False):
            key = f"attention.{row.model}.{row.target}.{row.metric}.{row.grade_stratum}"
            metrics[f"{key}.observed"] = row.observed
            metrics[f"{key}.shuffled"] = row.shuffled
        save_overlays(
            tiles[tiles["model"] == PROPOSED],
            run.clinical,
            run.manifest_path.parent,
            out / "attention",
            max_patients=max_overlays,
        )
        timed("attention")

    # 8–9. survival and treatment ---------------------------------------------------------------
    scores = run.wide(PROPOSED) if (preds["model"] == PROPOSED).any() else None
    if "survival" not in skip and scores is not None:
        from .survival import survival_analysis, survival_metrics

        # Uno's C and the decision curves refit per resample and per threshold: fewer of both
        tables = survival_analysis(
            scores,
            run.clinical,
            run.folds,
            n_boot=survival_boot,
            seed=seed,
            thresholds=np.round(np.arange(0.05, 0.951, 0.05), 2),
        )
        for name, frame in tables.items():
            frame.to_csv(out / f"{name}.csv", index=False)
        metrics.update(survival_metrics(tables))
        timed("survival")
    if "treatment" not in skip and scores is not None:
        from .treatment import treatment_analysis

        treat = treatment_analysis(scores, run.clinical, n_boot=n_boot, seed=seed)
        treat.to_csv(out / "treatment.csv", index=False)
        lr_row = treat[treat["term"].astype(str).str.startswith("lr")]
        if len(lr_row):
            metrics["treatment.or_per_sd"] = lr_row["estimate"].iloc[0]
            metrics["treatment.auc"] = lr_row["auc"].iloc[0]
        timed("treatment")

    # 10. distillation --------------------------------------------------------------------------
    if "distillation" not in skip:
        from .distillation import distillation_table

        dist = distillation_table(preds, probes["cost"] if probes is not None else {})
        dist.to_csv(out / "distillation.csv", index=False)
        for row in dist.itertuples(index=False):
            metrics[f"distillation.{row.metric}"] = row.value
        timed("distillation")

    # 11. external cohorts ------------------------------------------------------------------------
    if "external" not in skip:
        from .external import external_table, find_external

        dirs = [Path(d) for d in external] if external is not None else find_external(run.root)
        cohorts = {}
        for directory in dirs:
            info = json.loads((directory / "predict.json").read_text(encoding="utf-8"))
            if not info.get("targets"):
                notes.append(f"external cohort {info['cohort']}: no targets, no concordance")
                continue
            ext_targets = pd.read_parquet(info["targets"])
            ext_targets.index = ext_targets.index.astype(str)
            cohorts[info["cohort"]] = (
                pd.read_parquet(directory / "predictions.parquet"),
                ext_targets,
            )
        if cohorts:
            gains = _external_survival(dirs, survival_boot, seed, notes)
            if not gains.empty:
                gains.to_csv(out / "external_survival.csv", index=False)
                for row in gains[gains["metric"] == "harrell"].itertuples(index=False):
                    key = f"external.{row.cohort}.c_index.{row.endpoint}.{row.model}"
                    metrics[key] = row.value
            ext = external_table(cohorts, n_boot=n_boot, n_perm=n_boot, seed=seed)
            ext.to_csv(out / "external.csv", index=False)
            for row in ext.itertuples(index=False):
                metrics[f"external.{row.cohort}.{row.model}.r.{row.target}"] = row.r
                if row.model == PROPOSED:
                    metrics[f"external.{row.cohort}.r.{row.target}"] = row.r
        timed("external")

    # 12. known truth -----------------------------------------------------------------------------
    if "truth" not in skip and run.truth is not None:
        from .truth import truth_table

        truth = truth_table(preds, run.truth)
        truth.to_csv(out / "truth.csv", index=False)
        for row in truth.itertuples(index=False):
            metrics[f"truth.{row.model}.r.{row.target}"] = row.r
        timed("truth")

    from .. import __version__

    metrics = clean(metrics)
    metrics["meta.run"] = str(run.root)
    metrics["meta.stromalens"] = __version__
    metrics["meta.seconds"] = round(time.perf_counter() - started, 1)
    metrics["meta.analysis_seconds"] = seconds
    metrics["meta.notes"] = notes
    metrics["meta.skipped"] = sorted(skip)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1), encoding="utf-8")
    event(log, "evaluation written", out=str(out), seconds=metrics["meta.seconds"])
    return metrics
