r"""Treatment response (analysis 9): logistic regression of ``response`` on the LR surrogate.

.. math::

    \operatorname{logit} P(\text{response} = 1 \mid x) = \beta_0 + \beta_{LR}\,
    \frac{LR - \overline{LR}}{s_{LR}} + \gamma^\top z

with clinical covariates :math:`z` — age per 10 years, log volume, sex and location one-hot
(first level alphabetically the reference; the same terms as
:func:`stromalens.evaluation.survival.clinical_design`) and, when it varies, ``treatment``
one-hot (``treatment_<level>``, reference its first level). Fitted by maximum likelihood
(``statsmodels`` ``Logit``, Newton–Raphson); odds ratios :math:`e^{\hat\beta}` with Wald
intervals :math:`\exp(\hat\beta \pm z_{1-\alpha/2}\,\widehat{\mathrm{se}})` and Wald p-values,
as R's ``glm(family = binomial)`` with ``confint.default`` (McCullagh & Nelder 1989,
*Generalized Linear Models*, ch. 4).

Discrimination: the AUC of the fitted probabilities (Mann–Whitney; Hanley & McNeil 1982,
*Radiology* 143:29–36; ``sklearn.metrics.roc_auc_score``), with a percentile bootstrap interval
over patients (:func:`stromalens.evaluation.stats.bootstrap_ci`). It is the apparent
(in-sample) AUC of the model; the bootstrap resamples patients, not the model fit, so it is
optimistic by the fitting's share.

Patients without a response or a covariate are left out (logged, logger
``stromalens.evaluation.treatment``).

Example
-------
>>> table = treatment_analysis(scores, clinical, n_boot=1000)      # doctest: +SKIP
>>> table.set_index("term").loc["lr_per_sd", ["estimate", "ci_low", "ci_high", "auc"]]
"""

from __future__ import annotations

import logging
import warnings

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score

from ..logs import event, get_logger
from .stats import bootstrap_ci
from .survival import CLINICAL_COLUMNS, clinical_design

log = get_logger("evaluation.treatment")

COLUMNS: tuple[str, ...] = (
    "term",
    "estimate",
    "ci_low",
    "ci_high",
    "p",
    "auc",
    "auc_ci_low",
    "auc_ci_high",
    "n",
)


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


def response_design(frame: pd.DataFrame) -> pd.DataFrame:
    """``lr_per_sd`` (sample SD), the clinical terms and, when it varies, ``treatment_<level>``
    dummies (reference: the first level in sorted order); constant columns are left out."""
    lr = frame["lr"].astype(float)
    sd = lr.std(ddof=1)
    if not sd > 0:
        raise ValueError("lr predictions are constant: no per-SD effect")
    X = pd.DataFrame({"lr_per_sd": (lr - lr.mean()) / sd}, index=frame.index)
    X = X.join(clinical_design(frame))
    if "treatment" in frame.columns:
        values = frame["treatment"].astype(str)
        for level in sorted(values.unique())[1:]:
            X[f"treatment_{level}"] = (values == level).astype(float)
    constant = [c for c in X.columns if X[c].nunique() < 2]
    if constant:
        # e.g. a single location in a small cohort: no contrast to estimate.
        event(log, "treatment: constant covariate(s) left out", logging.INFO, columns=constant)
    return X.drop(columns=constant)


def fit_logistic(X: pd.DataFrame, y):
    """statsmodels ``Logit`` of ``y`` on ``X`` plus an intercept (``const``), Newton–Raphson to
    a tight tolerance. Convergence and separation warnings are logged, not raised: the fit is
    returned and the log names the problem. Reference: R ``glm(y ~ ., family = binomial)``
    (``tests/evaluation/reference/logistic_reference.R``)."""
    import statsmodels.api as sm
    from statsmodels.tools.sm_exceptions import ConvergenceWarning, PerfectSeparationWarning

    design = sm.add_constant(X.astype(float), has_constant="add")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        warnings.simplefilter("always", PerfectSeparationWarning)
        result = sm.Logit(np.asarray(y, float), design).fit(
            method="newton", maxiter=100, tol=1e-12, disp=False
        )
    for w in caught:
        if issubclass(w.category, ConvergenceWarning | PerfectSeparationWarning):
            event(log, "treatment: logistic fit problem", logging.WARNING, detail=str(w.message))
        else:  # not ours to swallow
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return result


def _auc(y: np.ndarray, p: np.ndarray) -> float:
    # A resample with one class has no AUC; the bootstrap skips NaN replicates.
    if y.min() == y.max():
        return float("nan")
    return float(roc_auc_score(y, p))


def treatment_analysis(
    scores: pd.DataFrame,
    clinical: pd.DataFrame,
    n_boot: int = 2000,
    seed: int = 0,
    alpha: float = 0.05,
) -> pd.DataFrame:
    """The ``treatment`` table: one row per model term (``lr_per_sd`` first, then the clinical
    and treatment terms; no intercept) with the odds ratio ``estimate``, its Wald interval and
    p-value, and — the same on every row — the model's AUC with its bootstrap interval and the
    number of patients ``n``. Method and references: the module docstring.

    ``scores``: index patient_id, column ``lr`` (out-of-fold predictions); ``clinical``: index
    patient_id, ``response`` (0/1), ``age``, ``sex``, ``location``, ``volume_cc`` and optionally
    ``treatment``.

    Raises
    ------
    ValueError
        Missing columns (named), non-finite predictions (patients named), a response that is not
        0/1 or takes one value, scored patients without clinical data.
    """
    frame = _response_frame(scores, clinical)
    X = response_design(frame)
    y = frame["response"].to_numpy(float)
    result = fit_logistic(X, y)
    terms = list(X.columns)
    beta = result.params[terms]
    ci = result.conf_int(alpha=alpha).loc[terms]
    fitted = np.asarray(result.predict(), float)
    auc = _auc(y, fitted)
    auc_low, auc_high = bootstrap_ci(_auc, y, fitted, n_boot=n_boot, seed=seed, alpha=alpha)
    event(log, "treatment: logistic model", n=len(frame), responders=int(y.sum()), auc=auc)
    # Under (quasi-)separation |β| and its SE grow without bound (logged by fit_logistic);
    # exp then overflows to inf, which is the honest value of an unbounded odds ratio.
    with np.errstate(over="ignore"):
        odds = np.exp(np.column_stack([beta.to_numpy(), ci[0].to_numpy(), ci[1].to_numpy()]))
    return pd.DataFrame(
        {
            "term": terms,
            "estimate": odds[:, 0],
            "ci_low": odds[:, 1],
            "ci_high": odds[:, 2],
            "p": result.pvalues[terms].to_numpy(),
            "auc": auc,
            "auc_ci_low": auc_low,
            "auc_ci_high": auc_high,
            "n": len(frame),
        },
        columns=list(COLUMNS),
    )
