"""The schema of ``evaluation/metrics.json``: one JSON object of flat, dot-separated keys.

Placeholders: ``<model>`` a study model name (``fusion``, ``fusion_no_coral``, ``wsi_clip``,
``mri``, ``mri_student`` and every baseline by its registered name), ``<target>`` one of
``ers_caf``, ``lr``, ``heterogeneity``, ``<site>`` a site label, ``<endpoint>`` ``os`` or
``pfs``, ``<cohort>`` an external cohort's name. Values are numbers (NaN written as null),
except ``meta.*``. Other tools may rely on every key of :data:`SCHEMA`.
"""

from __future__ import annotations

import math
import re

SCHEMA: dict[str, str] = {
    "cv.<model>.r.<target>": "Pearson r of pooled out-of-fold predictions and targets",
    "cv.<model>.r_ci_low.<target>": "lower end of its Fisher-z 95% CI",
    "cv.<model>.r_ci_high.<target>": "upper end of its Fisher-z 95% CI",
    "cv.<model>.r_fold_sd.<target>": "SD over outer folds of the per-fold r",
    "cv.<model>.rmse.<target>": "root mean squared error (target units)",
    "cv.<model>.mae.<target>": "mean absolute error (target units)",
    "cv.<model>.calibration_slope.<target>": "slope of observed on predicted (1 = calibrated)",
    "cv.<model>.calibration_intercept.<target>": "intercept of observed on predicted",
    "cv.<model>.macro_r": "mean over targets of the pooled r",
    "cv.<model>.macro_r_fold_sd": "SD over outer folds of the per-fold macro-r",
    "compare.<model_a>.<model_b>.macro_r_diff": "paired difference in macro-r, A − B, same "
    "patients (mean over CV repeats when the run has them)",
    "compare.<model_a>.<model_b>.<ci_low|ci_high>": "its paired bootstrap 95% CI (patients, "
    "and CV repeats when present)",
    "compare.<model_a>.<model_b>.p": "two-sided bootstrap p of the difference",
    "compare.<model_a>.<model_b>.<cv_ci_low|cv_ci_high>": "the corrected resampled t 95% CI "
    "of the per-fold difference over the CV's folds and repeats (Nadeau & Bengio 2003)",
    "compare.<model_a>.<model_b>.cv_p": "its two-sided p",
    "compare.<model_a>.<model_b>.within_noise": "1 (within noise) unless the bootstrap CI and "
    "the corrected CI over folds both exclude 0 on the same side",
    "ceiling.<target>": "noise ceiling of the target (targets stage, reliability.json)",
    "missing.<model>.<wsi|mri>.<percent>": "macro-r with that % of tiles / sequences removed",
    "gate.<stratifier>.<stratum>.share_wsi": "mean WSI share of the fused representation, "
    "‖h_wsi‖² / ‖h‖² (the MRI share is 1 minus it)",
    "gate.<stratifier>.p_kruskal": "Kruskal–Wallis p: the WSI share differs between strata",
    "lso.<site>.before": "leave-site-out macro-r on the held-out site, fusion without CORAL",
    "lso.<site>.after": "leave-site-out macro-r on the held-out site, fusion with CORAL",
    "site_entropy.before": "k-NN site-label entropy (k = min(10, n/4)) of the fused embedding "
    "of held-out patients (each fold model's own test patients, mean over folds), no CORAL "
    "([0, 1])",
    "site_entropy.after": "the same with CORAL",
    "site_entropy.<stage>_sd": "SD over the outer folds' models of the site entropy",
    "site_entropy.p_paired": "paired t-test over the fold models, after vs before CORAL",
    "lso_test.wilcoxon_p": "exact signed-rank p over held-out sites, after vs before CORAL",
    "prompt.<set>.r.<target>": "5-fold r of the WSI branch under prompt set NONE … OOD",
    "prompt.<set>.p_vs_cur.<target>": "paired-bootstrap p of r(set) − r(CUR), same patients",
    "attention.<model>.<target>.<metric>.<stratum>.observed": "mean IoU / hit-rate, top-K tiles",
    "attention.<model>.<target>.<metric>.<stratum>.shuffled": "its attention-shuffled baseline",
    "survival.<endpoint>.c_index.clinical": "Harrell's C, out-of-fold clinical-only Cox model",
    "survival.<endpoint>.c_index.clinical_ai": "Harrell's C, clinical + AI scores",
    "survival.<endpoint>.hr.<term>": "hazard ratio (T3 vs T1 tertile, or per SD)",
    "treatment.prognostic.<or|ci_low|ci_high|p>": "odds ratio of response per SD of the LR "
    "surrogate in the reference arm (the score's main effect; null when the fit is flagged)",
    "treatment.predictive.<arm>.<or|ci_low|ci_high|p>": "treatment × LR interaction: ratio of the "
    "per-SD odds ratios, arm vs reference (null when the fit is flagged)",
    "treatment.auc": "out-of-fold AUC of the interaction model (refitted per CV fold)",
    "treatment.auc_gain": "out-of-fold AUC with the score minus without it (same patients)",
    "treatment.auc_gain_ci_<low|high>": "paired bootstrap 95% CI of the AUC gain",
    "treatment.flagged_terms": "terms whose fit did not converge, separated or is unstable",
    "distillation.<metric>": "student vs teacher: retention, calibration, memory",
    "distillation.timing.<metric>": "seconds per patient of each, and their speed ratio "
    "(measured: differs between runs)",
    "truth.<model>.r.<target>": "r of predictions and the planted latent (synthetic cohorts)",
    "external.<cohort>.r.<target>": "zero-shot r of the proposed model on an external cohort",
    "external.<cohort>.<model>.r.<target>": "zero-shot r of any applied model",
    "external.<cohort>.c_index.<endpoint>.<clinical|clinical_ai>": "Harrell's C on the external "
    "cohort, out-of-fold Cox models without / with the frozen model's scores",
    "warnings.<analysis>.count": "warnings flagged for the analysis (rows of fit_warnings.csv)",
    # method validation (synthetic cohorts with planted mechanisms; evaluation/validation.py)
    "validation.effect_scale": "K: every planted size is K × its default (MechanismsConfig)",
    "validation.<mechanism>.planted": "planted effect size of the mechanism (0: its null)",
    "validation.<mechanism>.effect": "the recovered effect its analysis claims",
    "validation.<mechanism>.ci_low": "lower end of the effect's 95% CI",
    "validation.<mechanism>.ci_high": "upper end of the effect's 95% CI",
    "validation.<mechanism>.detected": "true when the CI excludes 0 (the mechanism recovered)",
    "meta.<key>": "what was evaluated: run directory, versions, seconds, notes (not numbers)",
}


#: The key part that marks a timing (measured seconds, or a ratio of them): such values differ
#: between identical runs, so determinism checks leave them out, as they leave out ``meta.*``.
TIMING = "timing"


def is_timing(key: str) -> bool:
    """Whether the ``metrics.json`` key is a timing or run provenance (``meta.*``), i.e. may
    differ between two identical runs: one of its parts is :data:`TIMING`, or it is ``meta.``."""
    from ..rundir import parse_metric_key

    parts = parse_metric_key(key)
    return parts[0] == "meta" or TIMING in parts


#: The tables ``stromalens evaluate`` writes into ``TRAIN/evaluation/`` (docs/run_directory.md),
#: besides ``metrics.json`` and the overlays in ``attention/``.
TABLES: tuple[str, ...] = (
    "fidelity.csv",
    "fidelity_macro.csv",
    "comparisons.csv",
    "missing_modalities.csv",
    "gate_strata.csv",
    "gate_shares.csv",
    "site_alignment.csv",
    "embedding_2d.parquet",
    "prompt_perturbation.csv",
    "attention_tiles.parquet",
    "attention.csv",
    "attention_summary.csv",
    "survival_hr.csv",
    "survival_cindex.csv",
    "survival_cindex_diff.csv",
    "survival_auc.csv",
    "decision_curve.csv",
    "treatment.csv",
    "distillation.csv",
    "external.csv",
    "truth.csv",
)
#: every analysis's fit warnings (analysis, table, source, message); written, maybe empty, by
#: every evaluation (:mod:`stromalens.evaluation.fit_warnings`)
WARNINGS_TABLE = "fit_warnings.csv"
#: written only when an external cohort has outcomes
OPTIONAL_TABLES: tuple[str, ...] = ("external_survival.csv",)
#: written only for a synthetic cohort that records its planted mechanisms
OPTIONAL_TABLES += ("validation.csv",)
#: and its reference arms, (e) with the measured targets in place of the AI's (validation.py)
OPTIONAL_TABLES += ("validation_oracle_cindex_diff.csv", "validation_oracle_treatment.csv")


def _pattern(key: str) -> re.Pattern:
    # each <placeholder> stands for one dot-free piece; the rest of the key is literal
    parts = [re.sub(r"<[^>]+>", r"[^.]+", re.escape(part)) for part in key.split(".")]
    return re.compile(r"^" + r"\.".join(parts) + r"$")


_PATTERNS = [_pattern(k) for k in SCHEMA]


def describe(key: str) -> str | None:
    """The schema description of a concrete key, or None if the key is not in the schema."""
    for pattern, text in zip(_PATTERNS, SCHEMA.values(), strict=True):
        if pattern.match(key):
            return text
    return None


def clean(metrics: dict) -> dict:
    """JSON-ready: numbers as float (NaN/inf → None), keys sorted within their section."""
    out = {}
    for key in sorted(metrics):
        value = metrics[key]
        if isinstance(value, bool | str | list | dict) or value is None:
            out[key] = value
            continue
        value = float(value)
        out[key] = None if not math.isfinite(value) else round(value, 6)
    return out
