"""How closely the synthetic cohort's targets reproduce the study's Fig. 1 (issue 16 item 5).

Generates the RNA of a development cohort exactly as ``stromalens synth`` / the demo does
(:func:`stromalens.synthetic.cohort.generate_cohort`'s RNA path, default mechanisms, TPM rounded
as written to ``rnaseq/tpm.tsv``), computes the targets as the study's targets stage does
(:func:`stromalens.targets.pipeline.compute_targets` with the shipped resources: the curated
ERS–CAF set and TIL10) and prints, per seed,

* r(ERS–CAF, LR), r(ERS–CAF, H), r(LR, H) with 95% Fisher-z intervals, beside the study's
  0.48 / 0.20 / 0.27,
* the sample skewness of LR (and of the other targets),
* the recovery of each planted latent: r(ers_caf, a), r(lr, b), r(heterogeneity, h),
* with several seeds, each figure's mean over them::

    python benchmarks/synthetic_target_correlations.py [--patients 126] [--seeds 0 1 2]

This measures agreement, not time.
"""

from __future__ import annotations

import argparse

import numpy as np
from scipy import stats

TARGETS = ("ers_caf", "lr", "heterogeneity")
LATENT = {"ers_caf": "a", "lr": "b", "heterogeneity": "h"}


def cohort_rna(patients: int, seed: int):
    """Latents and TPM (samples × genes) of the development cohort the demo generates."""
    from stromalens.config import SynthConfig
    from stromalens.synthetic import biology, expression, mechanisms

    config = SynthConfig(patients=patients, seed=seed)
    planted = mechanisms.planted(config.mechanisms)
    people = biology.simulate_patients(
        patients,
        seed,
        site_shifts=mechanisms.site_mean_shifts(biology.SITES, planted.site_biology_shift),
        survival_scale=planted.survival_scale,
        interaction=planted.interaction,
    )
    people["rna_sample"] = list(people.index)
    batch = {
        s: biology.make_site_effects(s, seed, planted.site_strength).rna_batch_sd
        for s in biology.SITES
    }
    fractions = expression.simulate_fractions(people, seed)
    _, tpm = expression.simulate_expression(people, fractions, batch, seed)
    return people, tpm.T


def fisher_ci(r: float, n: int) -> tuple[float, float]:
    """95% interval of Pearson's r by Fisher's z: tanh(atanh r ± 1.96/√(n − 3))."""
    half = stats.norm.ppf(0.975) / np.sqrt(n - 3)
    return float(np.tanh(np.arctanh(r) - half)), float(np.tanh(np.arctanh(r) + half))


def measure(patients: int, seed: int) -> dict:
    from stromalens.targets.pipeline import compute_targets

    people, tpm = cohort_rna(patients, seed)
    targets = compute_targets(tpm, n_boot=50).targets.join(people[["a", "b", "h"]])
    n = len(targets)
    out = {"seed": seed, "n": n}
    from stromalens.synthetic.biology import STUDY_TARGET_CORRELATION

    for i, j in ((0, 1), (0, 2), (1, 2)):
        x, y, study = TARGETS[i], TARGETS[j], float(STUDY_TARGET_CORRELATION[i, j])
        r = float(np.corrcoef(targets[x], targets[y])[0, 1])
        out[f"r({x},{y})"] = (r, *fisher_ci(r, n), study)
    for target, latent in LATENT.items():
        out[f"skew({target})"] = float(stats.skew(targets[target]))
        out[f"r({target},{latent})"] = float(np.corrcoef(targets[target], targets[latent])[0, 1])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--patients", type=int, default=126)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args()
    results = []
    for seed in args.seeds:
        result = measure(args.patients, seed)
        results.append(result)
        parts = [f"seed {seed} (n={result['n']})"]
        for key, value in result.items():
            if isinstance(value, tuple):
                r, low, high, study = value
                inside = "ok" if low <= study <= high else "OUT"
                parts.append(f"{key} {r:+.2f} [{low:+.2f}, {high:+.2f}] study {study} {inside}")
            elif key.startswith(("skew", "r(")):
                parts.append(f"{key} {value:+.2f}")
        print("\n  ".join(parts), flush=True)
    if len(results) > 1:
        print(f"mean over seeds {' '.join(map(str, args.seeds))}")
        for key in results[0]:
            if key.startswith(("skew", "r(")):
                values = [r[key][0] if isinstance(r[key], tuple) else r[key] for r in results]
                print(f"  {key} {np.mean(values):+.2f}")


if __name__ == "__main__":
    main()
