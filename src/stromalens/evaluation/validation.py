r"""Method validation (issue 17): each planted mechanism recovered by the analysis that claims it.

A synthetic cohort records what it planted in ``synth.json`` (``mechanisms``, written by
:mod:`stromalens.synthetic.mechanisms`) beside its manifest. For each mechanism this module
computes, from an evaluated run's outputs, the effect that the study's analysis claims, with a
95% CI, oriented so that a recovered mechanism is positive:

====  ============================  =================================================  ==========
 key   mechanism                     effect                                             CI
====  ============================  =================================================  ==========
 a     ``sparse_evidence``           r(abmil, a) − r(mean_pool, a), per fold             corrected
                                                                                        t, folds
 a     ``sparse_evidence_text``      r(wsi_clip, a) − r(mean_pool, a), per fold          corrected
                                                                                        t, folds
 b     ``reliability``               mean WSI share of the fused contribution, sacrum    corrected
                                    − skull base (fusion; :mod:`.gates`), per fold      t, folds
 c     ``site``                      leave-site-out macro-r, after − before harmonising  bootstrap,
                                    (fusion − fusion_no_coral), mean over sites          patients
 d     ``annotation``                IoU − chance IoU of the fusion's top tiles          t, patients
 e     ``outcomes``                  OS C-index, clinical + AI − clinical                bootstrap
 e     ``outcomes_oracle``           the same, measured targets in place of the AI       bootstrap
 e     ``treatment_interaction``     |log OR| of the treatment × LR term (response)      Wald,
                                                                                        Bonferroni
 e     ``treatment_interaction_      the same, measured lr in place of the predicted LR  Wald,
       oracle``                                                                         Bonferroni
 f     ``external``                  zero-shot external r (fusion, ERS–CAF)              Fisher z
 g     ``text_prior``                r(CUR) − r(NONE) of the WSI branch, ERS–CAF, per    corrected
                                    fold                                                t, folds
====  ============================  =================================================  ==========

(a) has two rows: attention pooling learned from the tiles alone (ABMIL, Ilse et al. 2018),
which is the claim "attention beats mean pooling", and the CLIP-guided model, whose attention
is set by the prompt text, so its gap also carries the text prior of (g).

(c)'s effect is the mean over held-out sites of the leave-site-out macro-r with CORAL minus
without, :math:`\bar\Delta = \frac1S \sum_s [\mathrm{macro}\,r_s(\text{after}) -
\mathrm{macro}\,r_s(\text{before})]`. Its interval is a percentile bootstrap that resamples
patients within each held-out site, both models' predictions of a patient kept together
(stratified paired bootstrap; Davison & Hinkley 1997, §3.8): it says whether harmonisation
helps on these sites. A t interval over the S = 3 sites (:math:`t_{0.975, 2} = 4.30`) would ask
whether it helps at a new site drawn from a population of sites, which three sites cannot
answer; it is the fallback when a run kept only the per-site metrics.

(e) has two rows: the prognostic claim (the C-index gain) and the predictive one, the treatment
× LR interaction of :mod:`~stromalens.evaluation.treatment` (``treatment.predictive.<arm>.*``).
No arm is singled out in advance (the planted interaction acts through radiotherapy, which is
the generator's rule, not the analysis's), so the row takes the arm whose interaction has the
largest Wald :math:`|z|` and widens its interval for the :math:`L` arms tested (Bonferroni):

.. math::

    \hat\delta = |\log \widehat{OR}|, \qquad
    \widehat{se} = \frac{\log OR_{hi} - \log OR_{lo}}{2 z_{0.975}}, \qquad
    \hat\delta \pm z_{1 - 0.025/L}\, \widehat{se},

so ``detected`` (the lower end above 0) is the Bonferroni-adjusted two-sided Wald test at 5%
over the arms, and the null stays null at that familywise rate. A flagged (separated or
non-converged) term carries no odds ratio and is not chosen.

(e)'s two **reference arms** (``outcomes_oracle``, ``treatment_interaction_oracle``) are not
claims of the method: they run the same analysis code — :func:`~stromalens.evaluation.survival.
survival_analysis` with its folds, out-of-fold Cox fits, seed and paired bootstrap;
:func:`~stromalens.evaluation.treatment.treatment_analysis` — with the run's measured RNA
targets (``targets.parquet``: ``ers_caf``, ``lr``, ``heterogeneity``, what the AI is trained to
predict) in place of the AI's out-of-fold scores, for the same patients
(:func:`reference_tables`). They say what the analysis detects with perfect predictions, so a
miss of (e) can be told apart: the analysis has no power at this N (the oracle misses too), or
the predictor loses what the targets carry (the oracle detects, the AI does not). The targets
are the measured surrogates, not the latents, so the oracle carries the targets' own noise.

The interaction test has little power at the study's size. For a logistic model with
information matrix :math:`\mathcal I = \mathrm E[p(1-p)\,x x^\top]` per patient, the Wald
statistic of a coefficient :math:`\delta` is approximately normal with mean
:math:`\delta / \mathrm{se}`, :math:`\mathrm{se} = \sqrt{[\mathcal I^{-1}]_{\delta\delta} / N}`,
so the power of the two-sided test at level :math:`\alpha / L` is

.. math::

    1 - \beta = \Phi\!\left(\frac{|\delta|}{\mathrm{se}} - z_{1-\alpha/(2L)}\right)
              + \Phi\!\left(-\frac{|\delta|}{\mathrm{se}} - z_{1-\alpha/(2L)}\right)

(Demidenko 2007, *Stat. Med.* 26:3385–3397; for an interaction, Demidenko 2008, *Stat. Med.*
27:36–46; :func:`wald_power`). Evaluated for the generator's response model
(``RESPONSE_COEFFICIENTS``, planted interaction 0.8 per unit of the crosstalk latent *b* under
radiotherapy, K = 1) and this analysis's design (LR per SD, the arms against the first in
sorted order, their products, the clinical terms), with :math:`\mathcal I` from a fit to
200 000 generated patients and the latent *b* itself as the score (a perfect predictor of *b*;
``tests/evaluation/reference/interaction_power.py``):

=====================================  ===========  ===========  ================  ==========
 term                                   δ (log OR)   se, N = 126  power, N = 126    N for 0.8
=====================================  ===========  ===========  ================  ==========
 surgery × LR vs RT (reference)          0.74         1.13         0.06              ≈ 2 800
 surgery+RT × LR vs RT                   −0.05        1.17         0.03 (no effect)  —
 surgery+RT × LR vs surgery (if the      −0.79        0.63         0.17              ≈ 750
 largest arm were the reference)
=====================================  ===========  ===========  ================  ==========

(L = 2 arms, Bonferroni). The reference arm, RT alone, holds 10% of the patients, so both
contrasts against it are imprecise. A score that correlates :math:`\rho` with *b* shrinks
:math:`\delta` about :math:`\rho`-fold (power 0.04 at :math:`\rho` = 0.7). A miss of
``treatment_interaction`` at N = 126 is therefore what the design predicts even for a perfect
predictor, and ``treatment_interaction_oracle`` shows it on the run itself.

(d)'s chance level is the stratified one of :mod:`~stromalens.evaluation.attention`
(``iou_stratified``: attention permuted among tiles of the same dominant compartment) when
every patient's slide has it — a synthetic cohort, whose slides carry compartment label maps —
and the row's claim says so; an attention that only prefers stroma then shows no effect. A
cohort without compartment labels (a real one) keeps the plain chance level (``iou_shuffled``,
permuted over the whole slide), which any stroma-preferring attention beats when the
annotation lies in stroma.

**The rows that compare trained models, (a), (b) and (g), are tested over the folds.** Each
fold of each CV repeat gives one difference d_j on its held-out patients (for (a), r(abmil, a)
− r(mean_pool, a); for (b), the fold model's mean sacral minus skull-base share; for (g),
r(wsi_clip) − r(clip_mil_none) on the measured ERS–CAF), and the row is their mean
:math:`\bar d` with Nadeau and Bengio's corrected resampled t interval
(:func:`~stromalens.evaluation.stats.corrected_resampled_t`):
:math:`\bar d \pm t_{0.975, J-1} \sqrt{(1/J + n_2/n_1)\,\hat\sigma^2_d}` over the J = k·R
fits (Nadeau & Bengio 2003, *Mach. Learn.* 52:239–281; Bouckaert & Frank 2004). A patient
bootstrap of one set of out-of-fold predictions resamples the patients but not the fits, so it
leaves out how much the comparison moves when the models are trained on other patients. That
was measured: with that bootstrap, ``validate-method`` at 126 + 60 patients and K = 1 gave (a)
0.071 [−0.022, 0.164] at seed 0 and 0.241 [0.134, 0.343] at seed 1, and the diffuse null fired
at seed 1 (0.160 [0.098, 0.223]) and at K = 2 (0.121 [0.038, 0.223]). The fold-to-fold spread
holds the fits' variability; the n₂/n₁ term corrects for the overlap of their training sets.
The price is width: with one 5-fold CV, J = 5, :math:`t_{0.975,4} = 2.78` and the variance
factor is 0.45 against 0.2 uncorrected; more repeats (``training.repeats``) narrow it.
Measured with ``benchmarks/comparison_calibration.py`` (1000 datasets of 126 patients, two
ridge regressions as stand-ins for two models that are equally good in expectation, each
refitted per fold): the patient bootstrap of one CV excluded 0 on 15.8% [13.7, 18.2] of them,
the corrected t on 5.0% [3.8, 6.5] with J = 5 and 7.1% [5.7, 8.9] with J = 15 (3 repeats).
With J = 15 the corrected t is still somewhat liberal. Where A was better (mean Δr 0.18), the
corrected t detected it on 14% (J = 5) and 28% (J = 15) of the datasets. ``validate-method``
repeats the CV 3 times (J = 15).
(b) falls back to Welch's interval over the strata, :math:`\bar s_1 - \bar s_2 \pm
t_{0.975,\nu}\,\sqrt{s_1^2/n_1 + s_2^2/n_2}` (Welch 1947, *Biometrika* 34:28–35), when the
per-patient shares are absent, and (g) to the prompt-perturbation table's paired bootstrap of
r(NONE) − r(CUR) (:mod:`.robustness`), negated, when the predictions lack the NONE model.

``detected`` is ``ci_low > 0``. On a null cohort (the mechanism switched off) the same analysis
should not detect it; :func:`combine` puts a planted and a null run side by side, with the
planted effect minus the null's: an analysis that fires on both halves measures something the
null cohort has too.

(a) was measured twice. Before the generator confined a and b to the hotspots, a slide showed a
on every stromal tile as well (its CAF fraction, hence the stroma's share and density, carried
a, and the slide-wide immune exclusion b), and at K = 1, 3 × 5-fold CV, seeds 0–2, the diffuse
null fired at seeds 1 and 2 (ABMIL − mean pooling 0.106 [0.053, 0.160] and 0.041 [0.010,
0.072]). With a confined to the evidence (seed 0), it still fired, 0.211 [0.036, 0.386], and
the cause was the baseline: a ridge regression on the same mean-pooled embedding read the
ERS–CAF target at out-of-fold r 0.58 on the study's folds while the mean_pool MLP reached
0.07, because a mean over hundreds of tiles has a tenth of a tile's scale
(:class:`~stromalens.models.baselines.MeanPool`, which now standardises it). Its CV rerun
alone, the rest of the run unchanged, put the null at −0.043 [−0.212, 0.126] (seed 0) and
0.056 [−0.071, 0.183] (seed 1), and the planted half at 0.047 [−0.122, 0.215] and −0.103
[−0.343, 0.136]: silent on the null, and not detected on the planted cohort — at the default
size ABMIL does not find hotspots that mean pooling misses (every slide model read a at
r ≤ 0.24 on the planted cohorts). The evidence is in the tile embeddings: on the seed-0
planted cohort a ridge fit on the hotspot tiles alone (chosen from the generator's evidence
maps) read a at patient-level out-of-fold r 0.46 against 0.09 on the other stromal tiles, and
in patients with a > 1 a logistic regression told hot from cold stromal tiles at AUC 0.85.
What fails is finding them from 126 bags.

(c) is the exception among the model comparisons: its splits are the S = 3 held-out sites, one
fit each, so a fold-level interval would have 2 degrees of freedom and would ask about a
population of sites (above). Its patient bootstrap leaves out the fits' variability; read one
run's (c) as a single draw.

Metric keys: ``validation.<mechanism>.{planted,effect,ci_low,ci_high,detected}``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from ..correlation import pearson
from ..names import PROPOSED
from ..rundir import metric_key, parse_metric_key
from .comparisons import SPLIT_COLUMNS, fold_differences, over_folds

#: (mechanism, the claim of its analysis), in the order of the table.
MECHANISMS: tuple[tuple[str, str], ...] = (
    ("sparse_evidence", "attention beats mean pooling on the latent a"),
    ("sparse_evidence_text", "text-guided attention beats mean pooling on the latent a"),
    ("reliability", "the gate leans on the slide in sacrum, on the MRI at the skull base"),
    ("site", "harmonisation raises leave-site-out r"),
    ("annotation", "top-attention tiles overlap the fibrosis annotation above chance"),
    ("outcomes", "the AI scores add to the clinical OS model"),
    (
        "outcomes_oracle",
        "reference arm: what the outcomes analysis detects with perfect "
        "predictions (the measured RNA targets in place of the AI scores)",
    ),
    ("treatment_interaction", "the LR score's association with response depends on the arm"),
    (
        "treatment_interaction_oracle",
        "reference arm: what the interaction test detects with "
        "perfect predictions (the measured lr target in place of the predicted LR)",
    ),
    ("external", "the frozen model predicts ERS–CAF on another morphology"),
    ("text_prior", "curated prompts beat no text"),
)
#: The reference arms (rows run with the measured targets in place of the AI's predictions)
#: and the mechanism row each one is the reference of.
REFERENCE_ARMS: dict[str, str] = {
    "outcomes_oracle": "outcomes",
    "treatment_interaction_oracle": "treatment_interaction",
}
#: The tables of :func:`reference_tables` (the evaluation writes ``<name>.csv``).
ORACLE_CINDEX_DIFF = "validation_oracle_cindex_diff"
ORACLE_TREATMENT = "validation_oracle_treatment"
#: The key of ``tables`` holding the probes' per-patient gate shares, with their fold (for (b)).
GATE_SHARES = "gate_shares"
#: The key of ``tables`` holding the leave-site-out predictions (for (c)'s bootstrap).
LEAVE_SITE_OUT = "leave_site_out_predictions"
COLUMNS = (
    "mechanism", "claim", "effect_scale", "planted", "effect", "ci_low", "ci_high", "detected", "n"
)  # fmt: skip
#: The key of :func:`planted_sizes` (and the column) holding the cohort's effect scale K.
EFFECT_SCALE = "effect_scale"
Z95 = float(stats.norm.ppf(0.975))


def planted_sizes(mechanisms: dict) -> dict[str, float]:
    """One planted size per mechanism from ``synth.json``'s ``mechanisms`` (0 = the null),
    each already at the cohort's effect scale K (:func:`stromalens.synthetic.mechanisms.planted`),
    and K itself under :data:`EFFECT_SCALE` (1 for a cohort written before K existed).
    (d)'s size is its margin (µm; smaller is tighter, so it is the default / K); (f) has no
    size of its own and reads K."""
    m = mechanisms
    k = float(m.get("effect_scale", 1.0))
    return {
        "sparse_evidence": m["evidence_per_a"] if m["sparse_evidence"] else 0.0,
        "sparse_evidence_text": m["evidence_per_a"] if m["sparse_evidence"] else 0.0,
        "reliability": m["reliability_contrast"],
        "site": m["site_biology_shift"] if m["site_strength"] else 0.0,
        "annotation": m["annotation_margin_um"] or 0.0,
        "outcomes": m["survival_scale"],
        "outcomes_oracle": m["survival_scale"],
        "treatment_interaction": m.get("interaction", np.nan),
        "treatment_interaction_oracle": m.get("interaction", np.nan),
        "external": k if m["external_visible"] else 0.0,
        "text_prior": m["density_caption_rate"],
        EFFECT_SCALE: k,
    }


# --------------------------------------------------------------------------- intervals
def _t_interval(values) -> tuple[float, float, float, int]:
    v = np.asarray(values, float)
    v = v[np.isfinite(v)]
    if len(v) < 2:
        return (float(v.mean()) if len(v) else np.nan), np.nan, np.nan, len(v)
    half = stats.t.ppf(0.975, len(v) - 1) * v.std(ddof=1) / np.sqrt(len(v))
    return float(v.mean()), float(v.mean() - half), float(v.mean() + half), len(v)


def fisher_interval(r: float, n: int) -> tuple[float, float]:
    """95% CI of a Pearson r by Fisher's z: tanh(atanh r ± 1.96/√(n − 3))."""
    if n <= 3 or not np.isfinite(r):
        return np.nan, np.nan
    z, half = np.arctanh(np.clip(r, -0.999999, 0.999999)), Z95 / np.sqrt(n - 3)
    return float(np.tanh(z - half)), float(np.tanh(z + half))


def wald_power(effect: float, se: float, tests: int = 1, alpha: float = 0.05) -> float:
    r"""Power of the two-sided Wald test of ``effect`` with standard error ``se`` at level
    :math:`\alpha / L` (Bonferroni over ``tests`` = L):

    .. math::

        1 - \beta = \Phi(|\delta| / se - z) + \Phi(-|\delta| / se - z),
        \qquad z = z_{1-\alpha/(2L)}

    (Demidenko 2007, *Stat. Med.* 26:3385–3397).

    Example
    -------
    >>> round(wald_power(0.74, 1.13, tests=2), 3)
    0.058
    """
    if not se > 0:
        raise ValueError(f"se must be > 0, got {se!r}")
    if int(tests) < 1:
        raise ValueError(f"tests must be ≥ 1, got {tests!r}")
    z = stats.norm.ppf(1 - alpha / (2 * int(tests)))
    shift = abs(float(effect)) / float(se)
    return float(stats.norm.cdf(shift - z) + stats.norm.cdf(-shift - z))


# --------------------------------------------------------------------------- reference arms
def reference_tables(
    patients,
    targets: pd.DataFrame,
    clinical: pd.DataFrame,
    folds: pd.Series,
    *,
    survival: bool = True,
    treatment: bool = True,
    n_boot: int = 1000,
    survival_boot: int = 200,
    seed: int = 0,
) -> dict[str, pd.DataFrame]:
    """(e)'s analyses with the measured targets in place of the AI scores (module docstring).

    Parameters
    ----------
    patients
        The patients the AI's analyses used (those with the proposed model's out-of-fold
        predictions): the reference arm uses the same ones.
    targets
        The run's targets table (index patient_id; ``ers_caf``, ``lr``, ``heterogeneity``).
    clinical, folds
        As for :func:`~stromalens.evaluation.survival.survival_analysis`.
    survival, treatment
        Which arm to compute (an evaluation that skipped the AI's analysis skips its arm).
    n_boot, survival_boot, seed
        The resamples and seed of the treatment and survival analyses, as for the AI's own.

    Returns
    -------
    dict
        :data:`ORACLE_CINDEX_DIFF`: the OS rows of ``survival_cindex_diff`` (Harrell's C only:
        no horizons, so no Uno C, AUC(t) or decision curve); :data:`ORACLE_TREATMENT`: the
        ``treatment`` table.
    """
    from ..names import TARGETS

    patients = pd.Index(patients).astype(str)
    missing = [t for t in TARGETS if t not in targets.columns]
    if missing:
        raise ValueError(f"the targets table lacks column(s) {missing}: no reference arm")
    absent = patients.difference(targets.index.astype(str))
    if len(absent):
        raise ValueError(
            f"{len(absent)} evaluated patient(s) have no measured targets: {list(absent[:10])}"
        )
    measured = targets.set_axis(targets.index.astype(str)).loc[patients, list(TARGETS)]
    out = {}
    if survival:
        from .survival import survival_analysis

        tables = survival_analysis(measured, clinical, folds, endpoints=("os",), horizons=(),
                                   n_boot=survival_boot, seed=seed)  # fmt: skip
        out[ORACLE_CINDEX_DIFF] = tables["survival_cindex_diff"]
    if treatment:
        from .treatment import treatment_analysis

        out[ORACLE_TREATMENT] = treatment_analysis(
            measured[["lr"]], clinical, folds, n_boot=n_boot, seed=seed
        )
    return out


def _oracle_interaction(table):
    """(e) predictive with the measured lr: the treatment table's metrics, as for the AI."""
    if table is None:
        return None
    from .treatment import treatment_metrics

    return _interaction(treatment_metrics(table))


# --------------------------------------------------------------------------- effects
def _model_gap(predictions, truth, model_a: str, model_b: str = "mean_pool"):
    """r(model_a, y) − r(model_b, y) of the out-of-fold ERS–CAF predictions over the CV's
    folds and repeats (corrected resampled t); y = ``truth`` (the latent a) or the measured
    target when ``truth`` is None."""
    if predictions is None:
        return None
    out = over_folds(fold_differences(predictions, model_a, model_b, ["ers_caf"], truth))
    if out is None:
        return None
    part = predictions[predictions["model"].isin([model_a, model_b])]
    return out["estimate"], out["ci_low"], out["ci_high"], int(part["patient_id"].nunique())


def _attention_gap(predictions, truth, attention: str = "abmil"):
    """(a): r(attention model, a) − r(mean_pool, a)."""
    if truth is None or "a" not in truth:
        return None
    return _model_gap(predictions, truth["a"], attention)


def gate_fold_differences(shares: pd.DataFrame, location: pd.Series) -> pd.DataFrame:
    """(b) per fold: mean WSI share of the fused contribution in sacral minus skull-base
    held-out patients with both modalities (``shares``: the probes' per-patient rows with
    ``fold``; ``location`` indexed by patient_id). Columns
    :data:`~stromalens.evaluation.comparisons.SPLIT_COLUMNS`;
    a fold without both locations gives NaN."""
    rows = []
    total = shares["patient_id"].nunique()
    for fold, in_fold in shares.groupby("fold", sort=True):
        both = in_fold[in_fold["has_wsi"].astype(bool) & in_fold["has_mri"].astype(bool)]
        where = location.reindex(both["patient_id"].astype(str)).to_numpy()
        share = both["share_wsi"].to_numpy(float)
        sacrum, skull = share[where == "sacrum"], share[where == "skull_base"]
        sacrum, skull = sacrum[np.isfinite(sacrum)], skull[np.isfinite(skull)]
        difference = sacrum.mean() - skull.mean() if len(sacrum) and len(skull) else np.nan
        n_fold = in_fold["patient_id"].nunique()
        rows.append({"repeat": 0, "fold": fold, "n_test": n_fold, "n_train": total - n_fold,
                     "difference": float(difference)})  # fmt: skip
    return pd.DataFrame(rows, columns=list(SPLIT_COLUMNS))


def _gate_migration(gates, shares=None, clinical=None):
    """(b): by the corrected resampled t over the folds when the per-patient shares
    (``gate_shares``) and the locations are at hand, else Welch's interval on the strata."""
    if shares is not None and clinical is not None and "location" in clinical:
        location = clinical["location"].astype("string")
        location.index = location.index.astype(str)
        out = over_folds(gate_fold_differences(shares, location))
        if out is not None:
            return out["estimate"], out["ci_low"], out["ci_high"], shares["patient_id"].nunique()
    if gates is None:
        return None
    part = gates[(gates["model"] == PROPOSED) & (gates["stratifier"] == "location")]
    rows = part.drop_duplicates("stratum").set_index("stratum")
    if not {"sacrum", "skull_base"} <= set(rows.index):
        return None
    s, k = rows.loc["sacrum"], rows.loc["skull_base"]
    # the branch's share of the fused contribution, not the raw gate value (gates.py)
    effect = float(s["share_wsi"] - k["share_wsi"])
    # n_share: the patients with both modalities, whose shares the mean and SD are over (a
    # table written before n_share existed falls back to the stratum's n)
    n1, n2 = (float(r.get("n_share", r["n"])) for r in (s, k))
    v1, v2 = s["share_wsi_sd"] ** 2 / n1, k["share_wsi_sd"] ** 2 / n2
    df = (v1 + v2) ** 2 / (v1**2 / (n1 - 1) + v2**2 / (n2 - 1))  # Welch–Satterthwaite
    half = float(stats.t.ppf(0.975, df) * np.sqrt(v1 + v2))
    return effect, effect - half, effect + half, int(n1 + n2)


def site_gain_bootstrap(lso: pd.DataFrame, n_boot: int = 1000, seed: int = 0):
    """Mean over held-out sites of macro-r(fusion) − macro-r(fusion_no_coral) on the
    leave-site-out predictions (``fold`` = the held-out site; macro-r = the mean over targets
    of the pooled Pearson r, as :func:`~stromalens.evaluation.fidelity.macro_r`), and its
    percentile bootstrap CI resampling patients within each site with both models'
    predictions kept together.

    Returns ``(effect, ci_low, ci_high, n_patients)`` or None without both models."""
    models = ("fusion", "fusion_no_coral")
    part = lso[lso["model"].isin(models)]
    if set(part["model"]) != set(models):
        return None
    pred = part.pivot_table(index=["fold", "patient_id"], columns=["model", "target"],
                            values="y_pred", dropna=False)  # fmt: skip
    true = part.pivot_table(index=["fold", "patient_id"], columns="target", values="y_true")
    targets = sorted(true.columns)
    # per site: y (patients × targets) and each model's predictions, aligned by patient
    sites = []
    for _, rows in true.groupby(level="fold"):
        p = pred.reindex(rows.index)
        sites.append((rows[targets].to_numpy(float),
                      [p[m].reindex(columns=targets).to_numpy(float) for m in models]))  # fmt: skip

    def macro(y, yhat):
        rs = []
        for j in range(y.shape[1]):
            ok = np.isfinite(y[:, j]) & np.isfinite(yhat[:, j])
            rs.append(pearson(yhat[ok, j], y[ok, j]) if ok.sum() > 2 else np.nan)
        return np.nanmean(rs) if np.isfinite(rs).any() else np.nan

    def gain(draws) -> float:
        per_site = [
            macro(y[i], after[i]) - macro(y[i], before[i])
            for (y, (after, before)), i in zip(sites, draws, strict=True)
        ]
        return float(np.nanmean(per_site))

    effect = gain([np.arange(len(y)) for y, _ in sites])
    rng = np.random.default_rng(seed)
    boots = [gain([rng.integers(0, len(y), len(y)) for y, _ in sites]) for _ in range(n_boot)]
    low, high = np.nanpercentile(boots, [2.5, 97.5])
    return effect, float(low), float(high), int(sum(len(y) for y, _ in sites))


def _site_gain(metrics, lso=None, n_boot=1000, seed=0):
    if lso is not None:
        found = site_gain_bootstrap(lso, n_boot, seed)
        if found is not None:
            return found
    sites = {}
    for key, value in metrics.items():
        parts = key.split(".")
        if len(parts) == 3 and parts[0] == "lso" and parts[2] in ("before", "after"):
            sites.setdefault(parts[1], {})[parts[2]] = value
    gains = [v["after"] - v["before"] for v in sites.values() if len(v) == 2]
    return _t_interval(gains) if gains else None


#: (d)'s claim when its chance level permutes attention within compartments.
STRATIFIED_CLAIM = (
    "top-attention tiles overlap the fibrosis annotation above chance within their "
    "compartments (beyond choosing stroma)"
)


def stratified_available(part: pd.DataFrame) -> bool:
    """Whether (d) uses the stratified chance level: every patient's slide had compartments."""
    return "iou_stratified" in part and bool(part["iou_stratified"].notna().all())


def _colocalisation(attention):
    """(d): IoU minus its chance level, the stratified one where every slide has it."""
    if attention is None:
        return None
    part = attention[(attention["model"] == PROPOSED) & (attention["target"] == "ers_caf")]
    if not len(part):
        return None
    chance = "iou_stratified" if stratified_available(part) else "iou_shuffled"
    return _t_interval(part["iou"] - part[chance])


def _survival_gain(cindex_diff):
    if cindex_diff is None:
        return None
    row = cindex_diff[(cindex_diff["endpoint"] == "os") & (cindex_diff["metric"] == "harrell")]
    if not len(row):
        return None
    r = row.iloc[0]
    return float(r["diff"]), float(r["ci_low"]), float(r["ci_high"]), np.nan


def _finite(value) -> float:
    return float(value) if value is not None and np.isfinite(value) else np.nan


def _interaction(metrics):
    """(e) predictive: the arm's |log OR| of largest Wald |z|, Bonferroni over the arms."""
    arms: dict[str, dict] = {}
    for key, value in metrics.items():
        parts = parse_metric_key(key)
        if len(parts) == 4 and parts[:2] == ("treatment", "predictive"):
            arms.setdefault(parts[2], {})[parts[3]] = _finite(value)
    fits = []
    for arm in arms.values():
        odds, low, high = (arm.get(k, np.nan) for k in ("or", "ci_low", "ci_high"))
        if np.isfinite([odds, low, high]).all() and min(odds, low, high) > 0 and high > low:
            se = (np.log(high) - np.log(low)) / (2 * Z95)
            fits.append((abs(np.log(odds)) / se, abs(float(np.log(odds))), float(se)))
    if not fits:
        return None
    _, effect, se = max(fits)
    half = float(stats.norm.ppf(1 - 0.025 / len(arms))) * se
    return effect, effect - half, effect + half, np.nan


def _external_r(external):
    if external is None:
        return None
    row = external[(external["model"] == PROPOSED) & (external["target"] == "ers_caf")]
    if not len(row):
        return None
    r, n = float(row["r"].iloc[0]), int(row["n"].iloc[0])
    return (r, *fisher_interval(r, n), n)


def _text_gap(predictions, prompts):
    """(g): r(CUR) − r(NONE) of the WSI branch on the measured ERS–CAF (``wsi_clip`` and
    ``clip_mil_none``), over the CV's folds and repeats; the prompt-perturbation table's
    pooled paired bootstrap when the predictions lack the models."""
    found = _model_gap(predictions, None, "wsi_clip", "clip_mil_none")
    if found is not None or prompts is None:
        return found
    row = prompts[(prompts["prompt_set"] == "NONE") & (prompts["target"] == "ers_caf")]
    if not len(row):
        return None
    r = row.iloc[0]  # diff_vs_cur = r(NONE) − r(CUR), paired over the same patients
    return -float(r["diff_vs_cur"]), -float(r["diff_ci_high"]), -float(r["diff_ci_low"]), r["n"]


def validation_table(
    planted: dict[str, float],
    metrics: dict,
    tables: dict[str, pd.DataFrame | None],
    predictions: pd.DataFrame | None,
    truth: pd.DataFrame | None,
    *,
    clinical: pd.DataFrame | None = None,
    n_boot: int = 1000,
    seed: int = 0,
) -> pd.DataFrame:
    """One row per mechanism (:data:`COLUMNS`): planted size, recovered effect with its 95% CI,
    detected. ``tables`` holds the evaluation's ``gate_strata``, ``attention``,
    ``survival_cindex_diff``, ``external`` and ``prompt_perturbation`` tables and the reference
    arms' :data:`ORACLE_CINDEX_DIFF` and :data:`ORACLE_TREATMENT` (:func:`reference_tables`),
    None where the run lacks them; a mechanism whose inputs are missing gets NaN and
    ``detected`` False."""
    found = {
        "sparse_evidence": _attention_gap(predictions, truth),
        "sparse_evidence_text": _attention_gap(predictions, truth, "wsi_clip"),
        "reliability": _gate_migration(
            tables.get("gate_strata"), tables.get(GATE_SHARES), clinical
        ),
        "site": _site_gain(metrics, tables.get(LEAVE_SITE_OUT), n_boot, seed),
        "annotation": _colocalisation(tables.get("attention")),
        "outcomes": _survival_gain(tables.get("survival_cindex_diff")),
        "outcomes_oracle": _survival_gain(tables.get(ORACLE_CINDEX_DIFF)),
        "treatment_interaction": _interaction(metrics),
        "treatment_interaction_oracle": _oracle_interaction(tables.get(ORACLE_TREATMENT)),
        "external": _external_r(tables.get("external")),
        "text_prior": _text_gap(predictions, tables.get("prompt_perturbation")),
    }
    claims = dict(MECHANISMS)
    attention = tables.get("attention")
    if attention is not None and stratified_available(
        attention[(attention["model"] == PROPOSED) & (attention["target"] == "ers_caf")]
    ):
        claims["annotation"] = STRATIFIED_CLAIM
    rows = []
    for name, claim in claims.items():
        effect, low, high, n = found[name] or (np.nan, np.nan, np.nan, np.nan)
        detected = bool(np.isfinite(low) and low > 0)
        rows.append(
            {
                "mechanism": name,
                "claim": claim,
                EFFECT_SCALE: float(planted.get(EFFECT_SCALE, 1.0)),
                "planted": float(planted.get(name, np.nan)),
                "effect": effect,
                "ci_low": low,
                "ci_high": high,
                "detected": detected,
                "n": n,
            }
        )
    return pd.DataFrame(rows, columns=list(COLUMNS))


def validation_metrics(table: pd.DataFrame) -> dict:
    """``validation.<mechanism>.{planted,effect,ci_low,ci_high,detected}`` and
    ``validation.effect_scale`` (K, the same on every row)."""
    out = {metric_key("validation", EFFECT_SCALE): float(table[EFFECT_SCALE].iloc[0])}
    for row in table.itertuples(index=False):
        for field in ("planted", "effect", "ci_low", "ci_high", "detected"):
            out[metric_key("validation", row.mechanism, field)] = getattr(row, field)
    return out


def read_planted(manifest_path: Path | None) -> dict[str, float] | None:
    """The planted sizes of the synthetic cohort of ``manifest_path`` (``synth.json`` beside
    it), or None for a cohort that records no mechanisms (a real one)."""
    if manifest_path is None:
        return None
    meta = Path(manifest_path).parent / "synth.json"
    if not meta.is_file():
        return None
    mechanisms = json.loads(meta.read_text(encoding="utf-8")).get("mechanisms")
    return planted_sizes(mechanisms) if mechanisms else None


#: The matrix's columns of the planted run's effect minus the null run's (:func:`combine`).
SPECIFIC = ("planted_minus_null", "pmn_ci_low", "pmn_ci_high", "pmn_detected")


def combine(planted: pd.DataFrame, null: pd.DataFrame) -> pd.DataFrame:
    r"""The validation matrix: a planted and a null run's tables side by side per mechanism,
    and the planted effect minus the null's (:data:`SPECIFIC`).

    An analysis can detect its mechanism on the planted cohort and also on the null one, when
    what it measures is not specific to the mechanism ((a)'s attention gap fires on the
    diffuse null too: module docstring). The difference says whether the planted cohort shows
    more than the null:
    :math:`\Delta = e_p - e_0 \pm z_{0.975}\sqrt{se_p^2 + se_0^2}`, each se read back from its
    row's 95% interval as (high − low) / (2·1.96). Treating the halves as independent is
    conservative when they share a seed (their noise is then positively correlated), and a
    Bonferroni-widened row's se is overstated, which is conservative too. ``pmn_detected`` is
    ``pmn_ci_low > 0``."""
    keep = ["mechanism", "claim", EFFECT_SCALE, "planted", "effect", "ci_low", "ci_high"]
    keep.append("detected")
    right = null[keep[:1] + keep[2:]].rename(
        columns=lambda c: c if c == "mechanism" else f"null_{c}"
    )
    matrix = planted[keep].merge(right, on="mechanism", how="left")
    se = (matrix["ci_high"] - matrix["ci_low"]) / (2 * Z95)
    null_se = (matrix["null_ci_high"] - matrix["null_ci_low"]) / (2 * Z95)
    difference = matrix["effect"] - matrix["null_effect"]
    half = Z95 * np.sqrt(se**2 + null_se**2)
    matrix["planted_minus_null"] = difference
    matrix["pmn_ci_low"], matrix["pmn_ci_high"] = difference - half, difference + half
    matrix["pmn_detected"] = (matrix["pmn_ci_low"] > 0).where(matrix["pmn_ci_low"].notna())
    return matrix


# --------------------------------------------------------------------------- wording
def _names(table: pd.DataFrame, mask) -> str:
    names = list(table.loc[mask, "mechanism"])
    return ", ".join(names) if names else "none"


def recovery_sentence(table: pd.DataFrame) -> str:
    """Which mechanisms were recovered and which not, for a validation table or a matrix
    (:func:`combine`: the null run's columns too), and where the sizes come from."""
    detected = table["detected"].astype(bool)
    # the reference arms are not claims of the method: worded apart
    claim = ~table["mechanism"].isin(list(REFERENCE_ARMS))
    parts = [
        f"Recovered (95% CI excluding the null): {_names(table, detected & claim)}.",
        f"Not recovered: {_names(table, ~detected & claim)}.",
    ]
    if "null_detected" in table:
        false = table["null_detected"].map(lambda v: _yes(v) == "yes")
        parts.append(f"Detected on the null cohort (false positives): {_names(table, false)}.")
    if "pmn_detected" in table:
        above = table["pmn_detected"].map(lambda v: _yes(v) == "yes") & claim
        parts.append(f"Planted above null (95% CI of the difference above 0): "
                     f"{_names(table, above)}.")  # fmt: skip
    if (~claim).any():
        parts.append(
            "Reference arms (the same analyses with the measured targets as perfect predictions): "
            f"detected {_names(table, detected & ~claim)}; "
            f"not detected {_names(table, ~detected & ~claim)}."
        )
    parts.append(f"The planted sizes are {_scale_words(table)}, not tuned until the method wins.")
    return " ".join(parts)


def _scale_words(table: pd.DataFrame) -> str:
    k = float(table[EFFECT_SCALE].iloc[0]) if EFFECT_SCALE in table and len(table) else 1.0
    if k == 1.0 or not np.isfinite(k):
        return "the generator's defaults (MechanismsConfig)"
    return f"the generator's defaults (MechanismsConfig) at effect scale K = {k:g}"


def _interval(effect, low, high) -> str:
    if not np.isfinite(effect):
        return "—"
    if not (np.isfinite(low) and np.isfinite(high)):
        return f"{effect:.3f} (no CI)"
    return f"{effect:.3f} [{low:.3f}, {high:.3f}]"


def _yes(value) -> str:
    # a CSV read back holds numpy bools, or NaN where the null run lacks the mechanism
    return ("yes" if value else "no") if isinstance(value, (bool, np.bool_)) else "—"


def _size(value) -> str:
    return f"{value:g}" if np.isfinite(value) else "—"


def matrix_markdown(matrix: pd.DataFrame) -> str:
    """The validation matrix (:func:`combine`) as a Markdown table and its sentence."""
    specific = "planted_minus_null" in matrix
    lines = [
        f"Effect scale K = {_size(float(matrix[EFFECT_SCALE].iloc[0]))}.\n",
        "| mechanism | planted | recovered effect [95% CI] | detected | null planted | "
        "null effect [95% CI] | null detected |"
        + (" planted − null [95% CI] |" if specific else ""),
        "|---|---|---|---|---|---|---|" + ("---|" if specific else ""),
    ]
    for r in matrix.itertuples(index=False):
        line = (
            f"| {r.mechanism} | {_size(r.planted)} | {_interval(r.effect, r.ci_low, r.ci_high)} "
            f"| {_yes(r.detected)} | {_size(r.null_planted)} | "
            f"{_interval(r.null_effect, r.null_ci_low, r.null_ci_high)} | {_yes(r.null_detected)} |"
        )
        if specific:
            line += f" {_interval(r.planted_minus_null, r.pmn_ci_low, r.pmn_ci_high)} |"
        lines.append(line)
    return "\n".join(lines) + "\n\n" + recovery_sentence(matrix) + "\n"
