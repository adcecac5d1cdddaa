"""Do the intervals of a model comparison hold their 5% under the null? (issue 17)

A comparison of two trained models, r(A, y) − r(B, y) on out-of-fold predictions, can be
given an interval two ways in stromalens:

* the **patient bootstrap** of one CV's pooled predictions
  (:func:`stromalens.evaluation.stats.paired_difference`), which resamples the test patients
  but not the fits: what the validation matrix used for (a) and (g) until session 9;
* the **corrected resampled t** over the CV's folds
  (:func:`stromalens.evaluation.comparisons.fold_differences` +
  :func:`~stromalens.evaluation.comparisons.over_folds`; Nadeau & Bengio 2003), with one
  5-fold CV (J = 5) or three repeats of it (J = 15).

This script measures each one's false-positive rate on datasets where the two models are
equally good in expectation, and its power where A is better. Ridge regressions
(scikit-learn) stand in for the MIL models, so that hundreds of datasets fit in minutes. Each
dataset has n patients and 40 standard-normal features, with y = X[:, :20]·β + ε and
equal β. Model A fits features 0–9 plus 10 pure-noise features; model B fits features 10–19
plus 10 others. Under the null both see 10 informative features. Under the alternative
(``--effect``) B's informative features carry β·(1 − effect), so A is better. Each dataset's
folds are random (a plain shuffled 5-fold split per repeat), and the models are refitted on
each fold, as the study's CV does::

    python benchmarks/comparison_calibration.py [--datasets 400] [--patients 126] [--effect 0.3]

It prints, per method, the share of datasets whose 95% interval excludes 0, with a Wilson 95%
interval for that share. This measures calibration, not time.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import pandas as pd
from scipy import stats


def simulate(n: int, effect: float, rng: np.random.Generator):
    """One dataset: X (n × 40), y, and each model's feature columns."""
    x = rng.normal(size=(n, 40))
    beta = np.full(20, 0.25)
    beta[10:] *= 1.0 - effect  # B's informative features weaken under the alternative
    signal = x[:, :20] @ beta
    # noise so that the full signal explains about half of y's variance under the null
    y = signal + rng.normal(scale=np.sqrt(20 * 0.25**2), size=n)
    columns = {"A": list(range(0, 10)) + list(range(20, 30)),
               "B": list(range(10, 20)) + list(range(30, 40))}  # fmt: skip
    return x, y, columns


def cv_predictions(x, y, columns, repeats: int, folds: int, rng) -> pd.DataFrame:
    """Long out-of-fold predictions (the pipeline's layout) of both models, R repeats."""
    from sklearn.linear_model import Ridge

    n = len(y)
    ids = np.array([f"P{i:04d}" for i in range(n)])
    rows = []
    for repeat in range(repeats):
        fold = rng.permutation(np.arange(n) % folds)
        for k in range(folds):
            train, test = fold != k, fold == k
            for model, cols in columns.items():
                fit = Ridge(alpha=1.0).fit(x[train][:, cols], y[train])
                rows.append(pd.DataFrame({
                    "patient_id": ids[test], "fold": k, "repeat": repeat, "model": model,
                    "target": "ers_caf", "y_true": y[test],
                    "y_pred": fit.predict(x[test][:, cols]),
                }))  # fmt: skip
    return pd.concat(rows, ignore_index=True)


def patient_bootstrap(preds: pd.DataFrame, n_boot: int, seed: int) -> tuple[float, float]:
    """The 95% interval of r(A) − r(B) over repeat 0's pooled predictions, patients resampled
    (the interval the validation matrix's (a) and (g) rows had before)."""
    from stromalens.correlation import pearson
    from stromalens.evaluation.stats import paired_difference

    one = preds[preds["repeat"] == 0]
    wide = one.pivot(index="patient_id", columns="model", values="y_pred")
    y = one.drop_duplicates("patient_id").set_index("patient_id")["y_true"].loc[wide.index]
    out = paired_difference(
        lambda t, a, b: pearson(a, t) - pearson(b, t),
        y.to_numpy(), wide["A"].to_numpy(), wide["B"].to_numpy(), n_boot=n_boot, seed=seed,
    )  # fmt: skip
    return out["ci_low"], out["ci_high"]


def corrected(preds: pd.DataFrame, repeats: int) -> tuple[float, float]:
    """The corrected resampled t interval over the folds of the first ``repeats`` repeats."""
    from stromalens.evaluation.comparisons import fold_differences, over_folds

    out = over_folds(fold_differences(preds[preds["repeat"] < repeats], "A", "B"))
    return out["ci_low"], out["ci_high"]


def wilson(k: int, n: int) -> tuple[float, float]:
    """Wilson score 95% interval of a proportion k / n (Wilson 1927)."""
    z = stats.norm.ppf(0.975)
    p = k / n
    centre = (p + z**2 / (2 * n)) / (1 + z**2 / n)
    half = z * np.sqrt(p * (1 - p) / n + z**2 / (4 * n**2)) / (1 + z**2 / n)
    return centre - half, centre + half


def run(datasets: int, patients: int, effect: float, seed: int, n_boot: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    methods = {
        "patient bootstrap, one CV": lambda p, i: patient_bootstrap(p, n_boot, i),
        "corrected t, one 5-fold CV (J = 5)": lambda p, i: corrected(p, 1),
        "corrected t, 3 × 5-fold CV (J = 15)": lambda p, i: corrected(p, 3),
    }
    excluded = {m: 0 for m in methods}
    deltas = []
    for i in range(datasets):
        x, y, columns = simulate(patients, effect, rng)
        preds = cv_predictions(x, y, columns, repeats=3, folds=5, rng=rng)
        for name, interval in methods.items():
            low, high = interval(preds, i)
            excluded[name] += bool(low > 0 or high < 0)
        one = preds[preds["repeat"] == 0]
        r = {m: np.corrcoef(g["y_pred"], g["y_true"])[0, 1] for m, g in one.groupby("model")}
        deltas.append(r["A"] - r["B"])
    rows = []
    for name, k in excluded.items():
        low, high = wilson(k, datasets)
        rows.append({"method": name, "excludes 0": k / datasets, "95% CI low": low,
                     "95% CI high": high})  # fmt: skip
    table = pd.DataFrame(rows)
    table.attrs["delta_sd"] = float(np.std(deltas, ddof=1))
    table.attrs["delta_mean"] = float(np.mean(deltas))
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--datasets", type=int, default=400)
    parser.add_argument("--patients", type=int, default=126)
    parser.add_argument("--effect", type=float, nargs="*", default=[0.0, 0.3])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--n-boot", type=int, default=500)
    args = parser.parse_args()
    for effect in args.effect:
        t0 = time.perf_counter()
        table = run(args.datasets, args.patients, effect, args.seed, args.n_boot)
        kind = "null (A and B equally good)" if effect == 0 else f"A better (effect {effect})"
        print(f"\n{kind}: {args.datasets} datasets of {args.patients} patients; "
              f"one CV's pooled Δr: mean {table.attrs['delta_mean']:.3f}, "
              f"SD over datasets {table.attrs['delta_sd']:.3f}")  # fmt: skip
        print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
        print(f"({time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()
