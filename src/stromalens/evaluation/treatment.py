r"""Treatment response (analysis 9): is the LR surrogate prognostic, predictive, or neither?

The study's treatment endpoint, ``response``, is binary (0/1), so the model is logistic, with a
treatment × score interaction:

.. math::

    \operatorname{logit} P(\text{response} = 1 \mid x) = \beta_0 + \beta_{LR}\,s
    + \sum_l \tau_l T_l + \sum_l \delta_l\, s\,T_l + \gamma^\top z,
    \qquad s = \frac{LR - \overline{LR}}{s_{LR}}

with :math:`s` the out-of-fold LR prediction per sample SD, :math:`T_l` the one-hot treatment
arms (``treatment_<level>``; reference the first level in sorted order) and clinical covariates
:math:`z` — age per 10 years, log volume, sex and location one-hot (the terms of
:func:`stromalens.evaluation.survival.clinical_design`). Terms of the table, by ``role``:

* ``prognostic`` — ``lr_per_sd``, :math:`e^{\beta_{LR}}`: the odds ratio of response per SD of
  the score in the reference arm (in every arm when no :math:`\delta_l` differs from 0);
* ``predictive`` — ``lr_per_sd:treatment_<level>``, :math:`e^{\delta_l}`: the ratio of the
  per-SD odds ratios in arm *l* and in the reference arm. :math:`\delta_l \ne 0` means the
  score's association with response depends on the treatment: the marker is predictive
  (Ballman 2015, *J Clin Oncol* 33:3968–3971; Polley et al. 2013, *JNCI* 105:1677–1683);
* ``treatment`` and ``clinical`` — the other terms.

Fitted by maximum likelihood (``statsmodels`` ``Logit``, Newton–Raphson); odds ratios with
Wald intervals :math:`\exp(\hat\beta \pm z_{1-\alpha/2}\,\widehat{\mathrm{se}})` and Wald
p-values, as R's ``glm(family = binomial)`` with ``confint.default`` (McCullagh & Nelder 1989,
*Generalized Linear Models*, ch. 4). A treatment taking one value leaves a prognostic-only
model. When the fit did not converge, the outcome is (quasi-)separated, or a coefficient's
standard error exceeds :data:`MAX_SE` (an interval wider than a factor ~10⁸) or its
:math:`|\hat\beta|` exceeds :data:`MAX_ABS_BETA`, the row's ``flag`` says so: such an odds
ratio (say 10⁶ with a CI to 10¹²) is an artefact of the fit, not a finding, and
``metrics.json`` carries null for it.

Discrimination is out of fold. For each CV fold of the training run the model is refitted on
the other folds (the SD scaling of the score too) and predicts the held-out fold; the AUC
(Mann–Whitney; Hanley & McNeil 1982, *Radiology* 143:29–36) of the pooled held-out
probabilities is ``auc_oof``; ``auc_gain`` is its difference from the same out-of-fold
procedure without the score (treatment and clinical terms only), with a paired percentile
bootstrap over patients (:func:`stromalens.evaluation.stats.paired_difference`). The bootstrap
resamples the out-of-fold predictions; it does not refit, so it ignores the variability of the
fitting itself.

Patients without a response or a covariate are left out (logged, logger
``stromalens.evaluation.treatment``).

Example
-------
>>> table = treatment_analysis(scores, clinical, folds, n_boot=1000)  # doctest: +SKIP
>>> table.set_index("term").loc["lr_per_sd:treatment_RT", ["estimate", "p"]]  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import warnings
from typing import NamedTuple

import numpy as np
import pandas as pd
from scipy.special import expit
from sklearn.metrics import roc_auc_score

from ..logs import event, get_logger
from .stats import bootstrap_ci, paired_difference
from .survival import CATEGORICAL_COLUMNS, CLINICAL_COLUMNS, clinical_design

log = get_logger("evaluation.treatment")

COLUMNS: tuple[str, ...] = (
    "term",
    "role",
    "estimate",
    "ci_low",
    "ci_high",
    "p",
    "flag",
    "auc_oof",
    "auc_oof_ci_low",
    "auc_oof_ci_high",
    "auc_gain",
    "auc_gain_ci_low",
    "auc_gain_ci_high",
    "auc_flag",
    "n",
)
#: The score's term; an interaction term is ``f"{SCORE_TERM}:treatment_<level>"``.
SCORE_TERM = "lr_per_sd"
#: A Wald SE above this (log-odds units) flags the term: its 95% CI spans a factor
#: e^(2·1.96·5) ≈ 3·10⁸, which only a separated or unidentified fit produces.
MAX_SE = 5.0
#: |β| above this (an odds ratio beyond e^10 ≈ 2·10⁴ per unit) flags the term.
MAX_ABS_BETA = 10.0


def _response_frame(scores: pd.DataFrame, clinical: pd.DataFrame) -> pd.DataFrame:
    if "lr" not in scores.columns:
        raise ValueError("scores lack column(s) ['lr']")
    missing = [c for c in ("response", *CLINICAL_COLUMNS) if c not in clinical.columns]
    if missing:
        raise ValueError(f"clinical data lack column(s) {missing}")
    lr = pd.to_numeric(scores["lr"], errors="coerce")
    bad = lr.index[~np.isfinite(lr.to_numpy(float))]
    if len(bad):
        raise ValueError(f"non-finite lr predictions for {len(bad)} patient(s): {list(bad[:10])}")
    absent = scores.index.difference(clinical.index)
    if len(absent):
        raise ValueError(
            f"{len(absent)} patient(s) with scores have no clinical data: {list(absent[:10])}"
        )
    columns = ["response", *CLINICAL_COLUMNS]
    if "treatment" in clinical.columns:
        columns.append("treatment")
    frame = clinical.loc[scores.index, columns].assign(lr=lr.astype(float))
    incomplete = frame.isna().any(axis=1)
    if incomplete.any():
        dropped = frame.index[incomplete]
        event(
            log,
            f"treatment: {len(dropped)} patient(s) left out for missing response or covariates",
            logging.WARNING,
            columns=sorted(set(frame.columns[frame.loc[dropped].isna().any(axis=0)])),
            patients=list(dropped),
        )
        frame = frame.loc[~incomplete].copy()
    frame["response"] = pd.to_numeric(frame["response"], errors="coerce")
    if not frame["response"].isin([0, 1]).all():
        raise ValueError(f"response must be 0/1, got {sorted(frame['response'].unique())}")
    counts = frame["response"].value_counts()
    if len(counts) < 2:
        raise ValueError(
            f"response takes one value ({counts.index[0]:g}) in all {len(frame)} patients"
        )
    if (frame["volume_cc"] <= 0).any():
        raise ValueError(
            "volume_cc must be > 0 (its log is a covariate); patients "
            f"{list(frame.index[frame['volume_cc'] <= 0][:10])}"
        )
    return frame


def levels_of(frame: pd.DataFrame) -> dict[str, list[str]]:
    """Sorted levels of the categorical columns (sex, location, treatment) over the cohort, so
    that every fold's design has the same reference levels."""
    columns = [*CATEGORICAL_COLUMNS, *(["treatment"] if "treatment" in frame else [])]
    return {c: sorted(frame[c].astype(str).unique()) for c in columns}


def response_design(
    frame: pd.DataFrame,
    levels: dict[str, list[str]] | None = None,
    scale: tuple[float, float] | None = None,
    score: bool = True,
) -> pd.DataFrame:
    """The model's terms, in this order: ``lr_per_sd``, ``treatment_<level>``,
    ``lr_per_sd:treatment_<level>``, then the clinical terms; constant columns are kept (the
    callers drop them over the rows they fit).

    ``scale`` = (mean, SD) of the LR prediction, by default its mean and sample SD over
    ``frame`` (a fold's training rows give theirs for the held-out rows); ``score=False``
    leaves out the score and its interactions (the clinical + treatment model)."""
    levels = levels if levels is not None else levels_of(frame)
    X = pd.DataFrame(index=frame.index)
    treatment = levels.get("treatment", [])[1:]
    values = frame["treatment"].astype(str) if treatment else None
    if score:
        lr = frame["lr"].astype(float)
        mean, sd = scale if scale is not None else (lr.mean(), lr.std(ddof=1))
        if not sd > 0:
            raise ValueError("lr predictions are constant: no per-SD effect")
        X[SCORE_TERM] = (lr - mean) / sd
    for level in treatment:
        X[f"treatment_{level}"] = (values == level).astype(float)
    if score:
        for level in treatment:
            X[f"{SCORE_TERM}:treatment_{level}"] = X[SCORE_TERM] * X[f"treatment_{level}"]
    return X.join(clinical_design(frame, {c: levels[c] for c in CATEGORICAL_COLUMNS}))


def _drop_constant(X: pd.DataFrame, rows=None) -> pd.DataFrame:
    fit_rows = X if rows is None else X.loc[rows]
    constant = [c for c in X.columns if fit_rows[c].nunique() < 2]
    if constant:
        # e.g. a single location in a small cohort or fold: no contrast to estimate.
        event(log, "treatment: constant covariate(s) left out", logging.INFO, columns=constant)
    return X.drop(columns=constant)


class LogisticFit(NamedTuple):
    """A statsmodels ``Logit`` result (None when the information matrix was singular) and the
    problems of the fit, in words (empty when it converged without separation)."""

    result: object
    problems: tuple[str, ...]


def fit_logistic(X: pd.DataFrame, y) -> LogisticFit:
    """statsmodels ``Logit`` of ``y`` on ``X`` plus an intercept (``const``), Newton–Raphson to
    a tight tolerance. Non-convergence, separation and a singular information matrix are
    returned as ``problems`` and logged, not raised. Reference: R ``glm(y ~ ., family =
    binomial)`` (``tests/evaluation/reference/interaction_reference.R``)."""
    import statsmodels.api as sm
    from statsmodels.tools.sm_exceptions import ConvergenceWarning, PerfectSeparationWarning

    design = sm.add_constant(X.astype(float), has_constant="add")
    problems: list[str] = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        warnings.simplefilter("always", PerfectSeparationWarning)
        warnings.simplefilter("always", RuntimeWarning)  # overflow of exp under separation
        try:
            result = sm.Logit(np.asarray(y, float), design).fit(
                method="newton", maxiter=100, tol=1e-12, disp=False
            )
        except np.linalg.LinAlgError:
            result = None
            problems.append("singular information matrix")
    for w in caught:
        if issubclass(w.category, PerfectSeparationWarning):
            problems.append("separation")
        elif issubclass(w.category, ConvergenceWarning):
            problems.append("not converged")
        elif not issubclass(w.category, RuntimeWarning):  # not ours to swallow
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    if result is not None and not result.mle_retvals.get("converged", True):
        problems.append("not converged")
    problems = tuple(dict.fromkeys(problems))  # unique, in order
    if problems:
        event(log, "treatment: logistic fit problem", logging.WARNING, detail=list(problems))
    return LogisticFit(result, problems)


def term_flags(fit: LogisticFit, terms) -> list[str]:
    """Per term: the fit's problems plus ``unstable`` where the SE exceeds :data:`MAX_SE`, the
    estimate :data:`MAX_ABS_BETA`, or either is not finite; ``""`` for a sound estimate."""
    if fit.result is None:
        return ["; ".join(fit.problems)] * len(terms)
    beta, se = fit.result.params[terms], fit.result.bse[terms]
    flags = []
    for term in terms:
        b, s = float(beta[term]), float(se[term])
        unstable = not (np.isfinite(b) and np.isfinite(s) and s <= MAX_SE)
        unstable = unstable or abs(b) > MAX_ABS_BETA
        flags.append("; ".join([*fit.problems, *(["unstable"] if unstable else [])]))
    return flags


def _role(term: str) -> str:
    if term == SCORE_TERM:
        return "prognostic"
    if term.startswith(f"{SCORE_TERM}:"):
        return "predictive"
    return "treatment" if term.startswith("treatment_") else "clinical"


def coefficient_table(X: pd.DataFrame, y: np.ndarray, alpha: float = 0.05) -> pd.DataFrame:
    """term, role, estimate (odds ratio), ci_low, ci_high (Wald), p (Wald) and flag of one fit
    of the interaction model on every patient; NaN estimates where the fit failed."""
    fit = fit_logistic(X, y)
    terms = list(X.columns)
    table = pd.DataFrame({"term": terms, "role": [_role(t) for t in terms]})
    table["flag"] = term_flags(fit, terms)
    if fit.result is None:
        return table.assign(estimate=np.nan, ci_low=np.nan, ci_high=np.nan, p=np.nan)
    beta = fit.result.params[terms].to_numpy()
    ci = fit.result.conf_int(alpha=alpha).loc[terms].to_numpy()
    # Under separation |β| and its SE grow without bound (flagged); exp then overflows to inf.
    with np.errstate(over="ignore"):
        odds = np.exp(np.column_stack([beta, ci]))
    return table.assign(
        estimate=odds[:, 0],
        ci_low=odds[:, 1],
        ci_high=odds[:, 2],
        p=fit.result.pvalues[terms].to_numpy(),
    )


def out_of_fold_probabilities(
    frame: pd.DataFrame, folds: pd.Series, score: bool = True
) -> tuple[np.ndarray, list]:
    """Held-out P(response = 1) of every patient of ``frame``, each from the model fitted on
    the other folds (score scaling from those folds too), and the folds whose fit had a
    problem. A fold whose training rows hold one response value gets NaN."""
    levels = levels_of(frame)
    fold_of = folds.loc[frame.index].to_numpy()
    y = frame["response"].to_numpy(float)
    prob = np.full(len(frame), np.nan)
    troubled = []
    for k in np.unique(fold_of):
        train = fold_of != k
        if len(np.unique(y[train])) < 2:
            troubled.append(k)
            continue
        lr = frame["lr"].to_numpy(float)[train]
        scale = (float(lr.mean()), float(lr.std(ddof=1)))
        X = response_design(frame, levels, scale if score else None, score=score)
        X = _drop_constant(X, frame.index[train])
        fit = fit_logistic(X.loc[train], y[train])
        if fit.result is None:
            troubled.append(k)
            continue
        troubled += [k] if fit.problems else []
        design = np.column_stack([np.ones((~train).sum()), X.loc[~train].to_numpy(float)])
        # expit, not the model's cdf: a separated fold's huge linear predictor must saturate
        # to 0/1 without an overflow warning
        prob[~train] = expit(design @ fit.result.params.to_numpy())
    return prob, troubled


def _auc(y: np.ndarray, p: np.ndarray) -> float:
    # A resample with one class, or a fold left unpredicted, has no AUC: NaN, skipped by the
    # bootstrap.
    ok = np.isfinite(p)
    y, p = y[ok], p[ok]
    if len(y) < 2 or y.min() == y.max():
        return float("nan")
    return float(roc_auc_score(y, p))


def _auc_gain(y: np.ndarray, full: np.ndarray, base: np.ndarray) -> float:
    return _auc(y, full) - _auc(y, base)


def discrimination(frame, folds, n_boot: int, seed: int, alpha: float) -> dict:
    """``auc_oof`` with its bootstrap interval and ``auc_gain`` (score vs no score, paired),
    both on the pooled out-of-fold probabilities; ``auc_flag`` names the folds whose fits had
    problems."""
    y = frame["response"].to_numpy(float)
    full, troubled = out_of_fold_probabilities(frame, folds, score=True)
    base, troubled_base = out_of_fold_probabilities(frame, folds, score=False)
    low, high = bootstrap_ci(_auc, y, full, n_boot=n_boot, seed=seed, alpha=alpha)
    gain = paired_difference(_auc_gain, y, full, base, n_boot=n_boot, seed=seed, alpha=alpha)
    troubled = sorted({int(k) for k in troubled + troubled_base})
    flag = f"fit problems in fold(s) {troubled}" if troubled else ""
    return {
        "auc_oof": _auc(y, full),
        "auc_oof_ci_low": low,
        "auc_oof_ci_high": high,
        "auc_gain": gain["estimate"],
        "auc_gain_ci_low": gain["ci_low"],
        "auc_gain_ci_high": gain["ci_high"],
        "auc_flag": flag,
    }


def _check_folds(frame: pd.DataFrame, folds: pd.Series) -> None:
    if not isinstance(folds, pd.Series):
        raise TypeError(f"folds must be a pandas Series patient_id → fold, got {type(folds)}")
    absent = frame.index.difference(folds.index)
    if len(absent):
        raise ValueError(f"{len(absent)} patient(s) have no CV fold: {list(absent[:10])}")
    if folds.loc[frame.index].nunique() < 2:
        raise ValueError("out-of-fold discrimination needs at least 2 CV folds")


def treatment_analysis(
    scores: pd.DataFrame,
    clinical: pd.DataFrame,
    folds: pd.Series,
    n_boot: int = 2000,
    seed: int = 0,
    alpha: float = 0.05,
) -> pd.DataFrame:
    """The ``treatment`` table: one row per model term (``lr_per_sd`` first, then the treatment
    arms, the interactions and the clinical terms; no intercept) with its ``role``, the odds
    ratio ``estimate``, its Wald interval and p-value, and ``flag``; and — the same on every
    row — the out-of-fold AUC, the AUC gain of the score and the number of patients ``n``.
    Method and references: the module docstring.

    ``scores``: index patient_id, column ``lr`` (out-of-fold predictions); ``clinical``: index
    patient_id, ``response`` (0/1), ``age``, ``sex``, ``location``, ``volume_cc`` and optionally
    ``treatment``; ``folds``: patient_id → CV fold (``folds.csv`` of the training run).

    Raises
    ------
    ValueError
        Missing columns (named), non-finite predictions (patients named), a response that is not
        0/1 or takes one value, scored patients without clinical data or without a fold.
    """
    frame = _response_frame(scores, clinical)
    _check_folds(frame, folds)
    if "treatment" not in frame or frame["treatment"].nunique() < 2:
        event(log, "treatment: one arm, so no treatment × score interaction", logging.INFO)
    X = _drop_constant(response_design(frame))
    y = frame["response"].to_numpy(float)
    table = coefficient_table(X, y, alpha)
    auc = discrimination(frame, folds, n_boot, seed, alpha)
    event(log, "treatment: interaction model", n=len(frame), responders=int(y.sum()), **auc)
    return table.assign(**auc, n=len(frame))[list(COLUMNS)]


def _flagged(flag) -> bool:
    # a table read back from CSV holds NaN where the flag was ""
    return isinstance(flag, str) and flag != ""


def treatment_metrics(table: pd.DataFrame) -> dict[str, float]:
    """``metrics.json`` entries of the ``treatment`` table: ``treatment.prognostic.<or|ci_low|
    ci_high|p>``, ``treatment.predictive.<level>.<or|ci_low|ci_high|p>``, the out-of-fold
    ``treatment.auc`` and ``treatment.auc_gain[_ci_low|_ci_high]``, and
    ``treatment.flagged_terms``. A flagged term's numbers are NaN (null): a separated or
    non-converged fit's odds ratio is not a finding."""
    from ..rundir import metric_key

    m: dict[str, float] = {}
    for row in table.itertuples(index=False):
        if row.role == "prognostic":
            parts = ("treatment", "prognostic")
        elif row.role == "predictive":
            parts = ("treatment", "predictive", row.term.split(":treatment_", 1)[1])
        else:
            continue
        sound = not _flagged(row.flag)
        for name, value in (("or", row.estimate), ("ci_low", row.ci_low), ("ci_high", row.ci_high)):
            m[metric_key(*parts, name)] = value if sound else np.nan
        m[metric_key(*parts, "p")] = row.p if sound else np.nan
    if len(table):
        first = table.iloc[0]
        m[metric_key("treatment", "auc")] = first["auc_oof"]
        for name in ("auc_gain", "auc_gain_ci_low", "auc_gain_ci_high"):
            m[metric_key("treatment", name)] = first[name]
    m[metric_key("treatment", "flagged_terms")] = float(sum(map(_flagged, table["flag"])))
    return m
