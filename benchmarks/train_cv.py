"""Wall time of the full 5-fold CV of the complete curriculum (nested selection included) on
the synthetic cohort, with macro-r per model, r with the planted latents, and the
shuffled-target control — all measured in one run.

Needs a demo directory (``stromalens demo --out DIR``: the synthetic cohort and the study's
stage outputs — targets, ``features/development/<encoder>/<tiling>``, radiomics)::

    python benchmarks/train_cv.py --demo DIR [--workers 2] [--no-permuted] [--out RUN]

Goal (issue 6): the 5-fold CV of the complete curriculum finishes in ≤ 5 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--demo", type=Path, default=Path("runs/demo"))
    parser.add_argument("--config", type=Path, default=Path("configs/study.yaml"))
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--no-permuted", action="store_true")
    parser.add_argument(
        "--repeats",
        type=int,
        default=1,
        help="also rerun the CV with seeds 1..R-1 (new folds, new initialisations) and report "
        "each model's mean ± SD macro-r over the R runs",
    )
    args = parser.parse_args()

    from stromalens.config import StudyConfig, load_config
    from stromalens.study.stages import training_config
    from stromalens.training import (
        load_study_data,
        prompt_embeddings,
        run_cv,
    )

    # the training block pointed at the demo folder's stage outputs (its feature store of the
    # configured encoder and tiling, its targets and radiomics)
    cfg = training_config(load_config(args.config, StudyConfig), args.demo).training
    settings = cfg.settings
    out = args.out or Path(tempfile.mkdtemp(prefix="train_cv_"))
    t0 = time.perf_counter()
    prompts = prompt_embeddings(cfg.prompts, cfg.encoder, None, out / "prompts")
    data = load_study_data(
        args.demo / "cohort" / "cohort.csv",
        cfg.targets,
        cfg.features,
        cfg.radiomics,
        prompts=prompts,
        max_tiles=cfg.max_tiles,
    )
    load_s = time.perf_counter() - t0
    print(
        f"cohort: {len(data.patients)} patients, {len(data.bags)} slides, "
        f"{data.radiomics.shape[1]} radiomics features; loaded in {load_s:.1f} s"
    )
    print(f"cpu cores: {os.cpu_count()}, workers: {args.workers}, grid: {cfg.grid}")

    t0 = time.perf_counter()
    metrics = run_cv(
        data,
        out / "cv",
        settings,
        folds=5,
        inner_folds=cfg.inner_folds,
        grid=cfg.grid,
        workers=args.workers,
    )
    cv_s = time.perf_counter() - t0
    print(
        f"\n5-fold CV, complete curriculum + nested selection, all models: {cv_s:.1f} s "
        f"(goal ≤ 300 s)"
    )

    truth = pd.read_parquet(args.demo / "cohort" / "truth.parquet")
    truth.index = truth.index.astype(str)
    pred = pd.read_parquet(out / "cv" / "predictions.parquet")
    print(f"\n{'model':20s} macro-r   ers_caf     lr  heterog.   r(latent a,b,h)")
    latent = {"ers_caf": "a", "lr": "b", "heterogeneity": "h"}
    for name, m in sorted(metrics["models"].items(), key=lambda kv: -kv[1]["macro_r"]):
        rs = [m["targets"][t]["r"] for t in ("ers_caf", "lr", "heterogeneity")]
        lat = []
        for target, col in latent.items():
            p = pred[(pred.model == name) & (pred.target == target)].set_index("patient_id")
            lat.append(np.corrcoef(p["y_pred"], truth.loc[p.index, col])[0, 1])
        print(
            f"{name:20s} {m['macro_r']:+.3f}   "
            + "  ".join(f"{r:+.3f}" for r in rs)
            + "   "
            + " ".join(f"{r:+.2f}" for r in lat)
        )
    summary = {
        "cv_seconds": round(cv_s, 1),
        "macro_r": {k: v["macro_r"] for k, v in metrics["models"].items()},
        "fused_minus_best_single": fused_vs_single(pred, metrics["models"]),
    }

    if args.repeats > 1:
        summary["repeats"] = repeated_cv(data, out, settings, cfg, args, metrics)

    if not args.no_permuted:
        t0 = time.perf_counter()
        perm = run_cv(
            data,
            out / "permuted",
            settings,
            folds=5,
            grid=None,
            workers=args.workers,
            permute_targets=True,
            checkpoints=False,
        )
        print(f"\nshuffled targets ({time.perf_counter() - t0:.0f} s): macro-r per model")
        for name, m in sorted(perm["models"].items()):
            print(f"  {name:20s} {m['macro_r']:+.3f}")
        summary["permuted_macro_r"] = {k: v["macro_r"] for k, v in perm["models"].items()}
    (out / "benchmark.json").write_text(json.dumps(summary, indent=2))
    print(f"\nrun files under {out}")


def repeated_cv(data, out: Path, settings, cfg, args, first: dict) -> dict:
    """Macro-r per model over ``args.repeats`` CVs (seed 0 is ``first``): each seed draws new
    folds (and inner folds) and new initialisations, so the spread is the run-to-run noise of
    one CV on this cohort."""
    from stromalens.training import run_cv

    runs = [first]
    for seed in range(1, args.repeats):
        t0 = time.perf_counter()
        runs.append(
            run_cv(
                data,
                out / f"cv_seed{seed}",
                settings.with_(seed=seed),
                folds=5,
                inner_folds=cfg.inner_folds,
                grid=cfg.grid,
                workers=args.workers,
                checkpoints=False,
            )
        )
        print(f"repeat with seed {seed}: {time.perf_counter() - t0:.1f} s")
    table = pd.DataFrame(
        {i: {k: v["macro_r"] for k, v in run["models"].items()} for i, run in enumerate(runs)}
    )
    print(f"\nmacro-r over {len(runs)} CVs (seeds 0..{len(runs) - 1}): mean ± SD, then each seed")
    order = table.mean(axis=1).sort_values(ascending=False).index
    for name in order:
        row = table.loc[name]
        print(
            f"  {name:20s} {row.mean():+.3f} ± {row.std(ddof=1):.3f}   "
            + " ".join(f"{v:+.3f}" for v in row)
        )
    return {
        name: {"mean": round(float(table.loc[name].mean()), 4), "runs": table.loc[name].tolist()}
        for name in order
    }


def fused_vs_single(pred: pd.DataFrame, models: dict, n_boot: int = 2000) -> dict:
    """Each fused model's macro-r minus the best single-modality model's, with a paired
    percentile bootstrap 95% CI over patients (the same resampled patients for both models, so
    the interval is that of the difference, not of two separate estimates)."""
    from stromalens.correlation import pearson
    from stromalens.evaluation.stats import bootstrap_ci
    from stromalens.models import model_info, output_info

    def modalities(name: str) -> int:  # name: a study name, as in predictions.parquet
        return len(model_info(output_info(name).model).modalities)

    single = [m for m in models if modalities(m) == 1]
    best = max(single, key=lambda m: models[m]["macro_r"])
    wide = pred.pivot_table(index="patient_id", columns=["model", "target"], values="y_pred")
    truth = pred.pivot_table(index="patient_id", columns="target", values="y_true")
    targets = list(truth.columns)
    y = truth.to_numpy()

    def macro_r(t, p):  # the CV's own macro-r: Pearson's r per target on finite pairs, mean
        return float(np.mean([pearson(t[:, j], p[:, j]) for j in range(t.shape[1])]))

    print(f"\nfused minus the best single-modality model ({best}), paired bootstrap 95% CI:")
    out = {}
    for name in sorted(m for m in models if modalities(m) == 2):
        a = wide[name][targets].to_numpy()
        b = wide[best][targets].to_numpy()
        diff = macro_r(y, a) - macro_r(y, b)
        low, high = bootstrap_ci(
            lambda t, p, q: macro_r(t, p) - macro_r(t, q), y, a, b, n_boot=n_boot, seed=0
        )
        out[name] = {"vs": best, "diff": round(diff, 4), "ci": [round(low, 4), round(high, 4)]}
        print(f"  {name:20s} {diff:+.3f}  [{low:+.3f}, {high:+.3f}]")
    return out


if __name__ == "__main__":
    main()
