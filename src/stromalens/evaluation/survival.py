r"""Survival analysis of the AI scores (analysis 8): Cox hazard ratios with clinical covariates,
out-of-fold discrimination of clinical vs clinical + AI models, time-dependent AUC and decision
curves.

Inputs
------
``scores``
    index ``patient_id``; columns ``ers_caf``, ``lr``, ``heterogeneity``: the proposed model's
    out-of-fold predictions (so no patient's score was fitted on that patient).
``clinical``
    index ``patient_id``; manifest columns ``age``, ``sex``, ``location``, ``volume_cc`` and, per
    endpoint ``e`` in (``os``, ``pfs``), ``e_time`` (months) and ``e_event`` (0/1).
``folds``
    ``patient_id → fold``, the training run's CV folds (``folds.csv``).

Models
------
Cox proportional hazards, :math:`h(t\mid x) = h_0(t)\exp(x^\top\beta)`, fitted by
``lifelines.CoxPHFitter`` (partial likelihood with Efron's tie correction, Breslow baseline;
Cox 1972, *J. R. Stat. Soc. B* 34:187–220; Efron 1977, *JASA* 72:557–565). Covariates:

* clinical: ``age_per_10y``, ``log_volume_cc`` (natural log; tumour volume is right-skewed),
  ``sex_<level>`` and ``location_<level>`` one-hot with the alphabetically first level as the
  dropped reference (``F``; ``mobile_spine`` in the study's manifests);
* AI: ``ers_caf_T2_vs_T1``, ``ers_caf_T3_vs_T1``, ``lr_T2_vs_T1``, ``lr_T3_vs_T1`` (tertiles of
  the out-of-fold prediction, right-closed cuts at the 1/3 and 2/3 sample quantiles, linear
  interpolation — R's ``quantile`` type 7) and ``heterogeneity_per_sd``
  (:math:`(H - \bar H)/s_H`, sample SD).

The hazard-ratio table (``survival_hr``) is one unpenalised Cox fit of every term on all
patients, with Wald intervals :math:`\exp(\hat\beta \pm z_{0.975}\,\widehat{\mathrm{se}})` and
Wald p-values, as in R's ``summary(coxph(...))``. Where the information matrix is singular
(collinear terms in a small cohort, where R's ``coxph`` would drop a coefficient as NA), the
fit is redone with the ridge penalty ``SINGULAR_PENALIZER``, logged, and the table's
``penalizer`` column says so: those HRs are shrunk towards 1.

Discrimination is out-of-fold: for each CV fold the clinical and the clinical + AI models are
fitted on the other folds (tertile cut-points and the H scaling too) and predict the held-out
fold's linear predictor :math:`x^\top\hat\beta` and risk :math:`1-\hat S(h\mid x)` at each
horizon h. These fits carry a small ridge penalty (``PREDICT_PENALIZER``, lifelines'
:math:`\lambda\,\tfrac12\lVert\beta\rVert^2` on standardised covariates) so that a training fold
with a rare category or few events still gives finite predictions; the hazard-ratio table is
not penalised. On the pooled out-of-fold predictions:

* Harrell's C (Harrell et al. 1982, *JAMA* 247:2543–2546; ``lifelines.utils.concordance_index``)
  and Uno's IPCW C truncated at each horizon τ (Uno et al. 2011, *Stat. Med.* 30:1105–1117;
  ``sksurv.metrics.concordance_index_ipcw`` with the censoring distribution estimated on the
  same patients);
* percentile-bootstrap 95% intervals over patients, and for the difference clinical + AI −
  clinical the paired bootstrap interval and the two-sided bootstrap p
  :math:`\min\{1, 2\min(1+\#\{d^*\le 0\}, 1+\#\{d^*\ge 0\})/(B+1)\}`. The bootstrap resamples
  the out-of-fold predictions; it does not refit the models, so it ignores the variability of
  model fitting;
* cumulative/dynamic AUC(t) at the horizons (Heagerty, Lumley & Pepe 2000, *Biometrics*
  56:337–344; Uno et al. 2007, *JASA* 102:1187–1196; ``sksurv.metrics.cumulative_dynamic_auc``);
* decision curves at the first horizon, net benefit
  :math:`\mathrm{NB}(p_t) = \mathrm{TP}/n - \mathrm{FP}/n \cdot p_t/(1-p_t)` of treating
  patients whose risk :math:`1-\hat S(h)` is at least :math:`p_t`, with true/false positives
  from Kaplan–Meier estimates among the test-positive (Vickers & Elkin 2006, *Med. Decis.
  Making* 26:565–574; Vickers et al. 2008, *BMC Med. Inform. Decis. Mak.* 8:53;
  ``dcurves.dca``), plus treat-all and treat-none.

Patients with a missing clinical covariate or endpoint are left out of that endpoint's analysis;
each exclusion is logged (logger ``stromalens.evaluation.survival``) with the patients named.

Example
-------
>>> tables = survival_analysis(scores, clinical, folds, n_boot=500)   # doctest: +SKIP
>>> survival_metrics(tables)["survival.os.c_index.clinical_ai"]    # doctest: +SKIP
0.71
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence

import numpy as np
import pandas as pd
from lifelines import CoxPHFitter
from lifelines.exceptions import ConvergenceError, ConvergenceWarning
from lifelines.utils import concordance_index
from scipy.linalg import LinAlgWarning
from sksurv.metrics import concordance_index_ipcw, cumulative_dynamic_auc
from sksurv.util import Surv

from ..logs import event, get_logger
from ..names import TARGETS
from ..rundir import metric_key

log = get_logger("evaluation.survival")

CLINICAL_COLUMNS: tuple[str, ...] = ("age", "sex", "location", "volume_cc")
CATEGORICAL_COLUMNS: tuple[str, ...] = ("sex", "location")
ENDPOINTS: tuple[str, ...] = ("os", "pfs")
MODELS: tuple[str, ...] = ("clinical", "clinical_ai")
#: Ridge penalty of the out-of-fold predictive Cox fits (lifelines' ``penalizer``, on
#: standardised covariates). Not applied to the hazard-ratio table.
PREDICT_PENALIZER = 0.01
#: Ridge penalty of a Cox refit when the unpenalised information matrix is singular.
SINGULAR_PENALIZER = 0.1
#: The evaluation tables that the hazard-ratio fit and the out-of-fold fits feed (named in their
#: fit warnings, which the report flags beside them).
HR_TABLE, CINDEX_TABLE = "survival_hr.csv", "survival_cindex.csv"
#: Risk thresholds of the decision curves.
DEFAULT_THRESHOLDS = tuple(np.round(np.arange(0.01, 1.0, 0.01), 2))

TABLE_COLUMNS: dict[str, tuple[str, ...]] = {
    "survival_hr": (
        "endpoint",
        "term",
        "hr",
        "ci_low",
        "ci_high",
        "p",
        "n",
        "events",
        "penalizer",
    ),
    "survival_cindex": ("endpoint", "model", "metric", "value", "ci_low", "ci_high"),
    "survival_cindex_diff": ("endpoint", "metric", "diff", "ci_low", "ci_high", "p"),
    "survival_auc": ("endpoint", "model", "time", "auc"),
    "decision_curve": ("endpoint", "horizon", "model", "threshold", "net_benefit"),
}


# --------------------------------------------------------------------------------------------
# Inputs


def _check_inputs(scores, clinical, folds, endpoints) -> None:
    for name, frame in (("scores", scores), ("clinical", clinical)):
        if not isinstance(frame, pd.DataFrame):
            raise TypeError(f"{name} must be a DataFrame indexed by patient_id")
    if not isinstance(folds, pd.Series):
        raise TypeError("folds must be a Series patient_id → fold")
    unknown = [e for e in endpoints if e not in ENDPOINTS]
    if unknown:
        raise ValueError(f"unknown endpoint(s) {unknown}; choose from {list(ENDPOINTS)}")
    missing = [t for t in TARGETS if t not in scores.columns]
    if missing:
        raise ValueError(f"scores lack column(s) {missing}")
    needed = [*CLINICAL_COLUMNS] + [f"{e}_{k}" for e in endpoints for k in ("time", "event")]
    missing = [c for c in needed if c not in clinical.columns]
    if missing:
        raise ValueError(f"clinical data lack column(s) {missing}")
    bad = scores[list(TARGETS)].apply(pd.to_numeric, errors="coerce")
    bad = bad[~np.isfinite(bad.to_numpy(dtype=float)).all(axis=1)]
    if len(bad):
        detail = "; ".join(
            f"{pid}: {', '.join(t for t in TARGETS if not np.isfinite(row[t]))}"
            for pid, row in bad.head(10).iterrows()
        )
        more = f" (and {len(bad) - 10} more)" if len(bad) > 10 else ""
        raise ValueError(f"non-finite predictions for {len(bad)} patient(s): {detail}{more}")
    for name, index in (("clinical data", clinical.index), ("folds", folds.index)):
        absent = scores.index.difference(index)
        if len(absent):
            raise ValueError(
                f"{len(absent)} patient(s) with scores have no {name}: {list(absent[:10])}"
            )


def _endpoint_frame(scores, clinical, folds, endpoint: str) -> pd.DataFrame:
    """The patients of one endpoint: scores, clinical covariates, time, event, fold; patients
    with a missing value are dropped and logged."""
    time_col, event_col = f"{endpoint}_time", f"{endpoint}_event"
    frame = (
        scores[list(TARGETS)]
        .astype(float)
        .join(clinical.loc[scores.index, [*CLINICAL_COLUMNS, time_col, event_col]])
    )
    frame = frame.rename(columns={time_col: "time", event_col: "event"})
    frame["fold"] = folds.loc[frame.index]
    incomplete = frame.isna().any(axis=1)
    if incomplete.any():
        dropped = frame.index[incomplete]
        columns = sorted(set(frame.columns[frame.loc[dropped].isna().any(axis=0)]))
        event(
            log,
            f"{endpoint}: {len(dropped)} patient(s) left out for missing clinical values",
            logging.WARNING,
            endpoint=endpoint,
            columns=columns,
            patients=list(dropped),
        )
        frame = frame.loc[~incomplete].copy()
    frame["time"] = frame["time"].astype(float)
    frame["event"] = frame["event"].astype(float)
    if not frame["event"].isin([0.0, 1.0]).all():
        raise ValueError(f"{endpoint}_event must be 0/1, got {sorted(frame['event'].unique())}")
    if (frame["time"] <= 0).any():
        raise ValueError(
            f"{endpoint}_time must be > 0; patients {list(frame.index[frame['time'] <= 0][:10])}"
        )
    if (frame["volume_cc"] <= 0).any():
        raise ValueError(
            "volume_cc must be > 0 (its log is a covariate); patients "
            f"{list(frame.index[frame['volume_cc'] <= 0][:10])}"
        )
    events = int(frame["event"].sum())
    if events == 0:
        raise ValueError(f"endpoint {endpoint!r} has no events among {len(frame)} patients")
    return frame


# --------------------------------------------------------------------------------------------
# Covariates


def clinical_design(frame: pd.DataFrame, levels: dict[str, list[str]] | None = None):
    """The clinical covariates of :mod:`this module <stromalens.evaluation.survival>`: age per
    10 years, log volume, and one-hot sex and location without their first (reference) level.

    ``levels`` (column → sorted levels) fixes the dummies; by default the levels in ``frame``.
    """
    if levels is None:
        levels = {c: sorted(frame[c].astype(str).unique()) for c in CATEGORICAL_COLUMNS}
    out = pd.DataFrame(index=frame.index)
    out["age_per_10y"] = frame["age"].astype(float) / 10.0
    out["log_volume_cc"] = np.log(frame["volume_cc"].astype(float))
    for column in CATEGORICAL_COLUMNS:
        values = frame[column].astype(str)
        for level in levels[column][1:]:
            out[f"{column}_{level}"] = (values == level).astype(float)
    return out


class AITerms:
    """Tertile dummies of ERS–CAF and LR and standardised heterogeneity, with cut-points and
    scaling learned by :meth:`fit` (on a training fold) and applied by :meth:`transform`."""

    def fit(self, scores: pd.DataFrame) -> AITerms:
        self.cuts_ = {
            t: np.quantile(scores[t].to_numpy(float), [1 / 3, 2 / 3]) for t in ("ers_caf", "lr")
        }
        h = scores["heterogeneity"].to_numpy(float)
        self.h_mean_, self.h_sd_ = float(h.mean()), float(h.std(ddof=1))
        if not self.h_sd_ > 0:
            raise ValueError("heterogeneity predictions are constant: no per-SD effect")
        return self

    def transform(self, scores: pd.DataFrame) -> pd.DataFrame:
        if not hasattr(self, "cuts_"):
            raise RuntimeError("AITerms.transform before fit")
        out = pd.DataFrame(index=scores.index)
        for target, (q1, q2) in self.cuts_.items():
            x = scores[target].to_numpy(float)
            # Right-closed: T1 = x ≤ q1, T2 = q1 < x ≤ q2, T3 = x > q2 (R's cut()).
            out[f"{target}_T2_vs_T1"] = ((x > q1) & (x <= q2)).astype(float)
            out[f"{target}_T3_vs_T1"] = (x > q2).astype(float)
        out["heterogeneity_per_sd"] = (scores["heterogeneity"] - self.h_mean_) / self.h_sd_
        return out


# --------------------------------------------------------------------------------------------
# Cox fits


def fit_cox(
    X: pd.DataFrame, time, event_, penalizer: float = 0.0, label: str = "cox", table: str = ""
) -> CoxPHFitter:
    """``lifelines.CoxPHFitter`` (Efron ties) of ``time, event_`` on the columns of ``X``.

    lifelines' ``ConvergenceWarning`` (near-separation, e.g. a tertile without events) and scipy's
    ``LinAlgWarning`` (an ill-conditioned Newton step, the same trouble) are caught
    and logged with ``label`` instead of propagating: the fit is still returned, and the log says
    which model to distrust. A singular information matrix (lifelines' ``ConvergenceError``:
    collinear columns) is refitted with the ridge penalty ``SINGULAR_PENALIZER`` and logged;
    ``cph.penalizer`` tells which fit was returned. Each such log record names ``table``, the
    evaluation table the fit feeds, so the report can flag it there
    (:mod:`~stromalens.evaluation.fit_warnings`). Reference: R ``coxph(Surv(time, event) ~ .,
    ties = "efron")`` (``tests/evaluation/reference/cox_reference.R``).
    """
    data = X.astype(float).assign(_time=np.asarray(time, float), _event=np.asarray(event_, float))
    try:
        return _fit_cox(data, penalizer, label, table)
    except ConvergenceError as error:
        if penalizer >= SINGULAR_PENALIZER:
            raise
        event(
            log,
            f"{label}: singular Cox information matrix; refitted with ridge penalty "
            f"{SINGULAR_PENALIZER} (hazard ratios shrunk towards 1)",
            logging.WARNING,
            detail=str(error).splitlines()[0][:200],
            table=table,
        )
        return _fit_cox(data, SINGULAR_PENALIZER, label, table)


def _fit_cox(data: pd.DataFrame, penalizer: float, label: str, table: str) -> CoxPHFitter:
    cph = CoxPHFitter(penalizer=penalizer)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        # An ill-conditioned Newton step (scipy's LinAlgWarning) is the same near-separation
        # seen from the Hessian's side.
        warnings.simplefilter("always", LinAlgWarning)
        # lifelines stops Newton–Raphson at a decrement of 1e-7, which leaves coefficients ~1e-4
        # (relative) from the maximum; 1e-12 costs two more steps and matches R's coxph to 1e-8.
        cph.fit(data, duration_col="_time", event_col="_event", fit_options={"precision": 1e-12})
    for w in caught:
        if issubclass(w.category, ConvergenceWarning | LinAlgWarning):
            event(
                log,
                f"{label}: Cox fit did not converge cleanly",
                logging.WARNING,
                detail=str(w.message).strip().splitlines()[0],
                table=table,
            )
        else:  # anything else is not ours to swallow
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return cph


def _hazard_ratios(frame: pd.DataFrame, endpoint: str) -> pd.DataFrame:
    X = clinical_design(frame).join(AITerms().fit(frame).transform(frame))
    X = _drop_constant(X, f"{endpoint} hazard ratios")
    cph = fit_cox(
        X, frame["time"], frame["event"], label=f"{endpoint} hazard ratios", table=HR_TABLE
    )
    s = cph.summary
    return pd.DataFrame(
        {
            "endpoint": endpoint,
            "term": s.index.astype(str),
            "hr": s["exp(coef)"].to_numpy(),
            "ci_low": s["exp(coef) lower 95%"].to_numpy(),
            "ci_high": s["exp(coef) upper 95%"].to_numpy(),
            "p": s["p"].to_numpy(),
            "n": len(frame),
            "events": int(frame["event"].sum()),
            "penalizer": float(cph.penalizer),
        }
    )


def _drop_constant(X: pd.DataFrame, label: str) -> pd.DataFrame:
    """Columns without variation (a category absent from a training fold) carry no information
    and make the Cox information matrix singular: drop them, and say so."""
    constant = [c for c in X.columns if X[c].nunique() < 2]
    if constant:
        event(log, f"{label}: constant covariate(s) left out", logging.INFO, columns=constant)
    return X.drop(columns=constant)


def out_of_fold_predictions(
    frame: pd.DataFrame, horizons: Sequence[float], penalizer: float = PREDICT_PENALIZER
) -> dict[str, pd.DataFrame]:
    """Held-out linear predictor ``lp`` and risks ``risk_<h>`` = 1 − S(h) of the clinical and the
    clinical + AI Cox models, each fold predicted by the models fitted on the other folds.

    ``frame`` has the scores, clinical covariates, ``time``, ``event`` and ``fold`` columns;
    returns ``{model: DataFrame(index patient_id; lp, risk_<h>...)}``.
    """
    levels = {c: sorted(frame[c].astype(str).unique()) for c in CATEGORICAL_COLUMNS}
    out = {m: [] for m in MODELS}
    folds = sorted(frame["fold"].unique())
    if len(folds) < 2:
        raise ValueError(f"out-of-fold discrimination needs ≥ 2 folds, got {folds}")
    for fold in folds:
        train, test = frame[frame["fold"] != fold], frame[frame["fold"] == fold]
        if train["event"].sum() == 0:
            raise ValueError(f"the training folds of fold {fold} have no events")
        ai = AITerms().fit(train)
        for model in MODELS:
            X_train = clinical_design(train, levels)
            X_test = clinical_design(test, levels)
            if model == "clinical_ai":
                X_train = X_train.join(ai.transform(train))
                X_test = X_test.join(ai.transform(test))
            X_train = _drop_constant(X_train, f"fold {fold} {model}")
            X_test = X_test[X_train.columns]
            cph = fit_cox(
                X_train, train["time"], train["event"], penalizer, f"fold {fold} {model}",
                table=CINDEX_TABLE,
            )  # fmt: skip
            # Centre-free linear predictor x'β: lifelines' predict_log_partial_hazard subtracts
            # the training means, a per-fold shift that would distort the pooled C-index.
            lp = X_test.to_numpy(float) @ cph.params_.to_numpy()
            pred = pd.DataFrame({"lp": lp}, index=test.index)
            if len(horizons):
                surv = cph.predict_survival_function(X_test, times=list(horizons))
                for h, row in zip(horizons, surv.to_numpy(), strict=True):
                    pred[f"risk_{h:g}"] = 1.0 - row
            out[model].append(pred)
    return {m: pd.concat(parts).loc[frame.index] for m, parts in out.items()}


# --------------------------------------------------------------------------------------------
# Discrimination


def _metric_names(horizons) -> list[str]:
    return ["harrell", *[f"uno_{h:g}" for h in horizons]]


def _concordances(time, event_, risk, horizons) -> np.ndarray:
    """Harrell's C and Uno's C at each horizon of risk scores (higher = worse)."""
    values = np.full(1 + len(horizons), np.nan)
    if event_.sum() == 0:
        return values
    # lifelines expects a score that is high for long survival.
    try:
        values[0] = concordance_index(time, -risk, event_)
    except ZeroDivisionError:
        # no comparable pair (a small bootstrap resample whose events all tie or come last):
        # Harrell's C is undefined for this replicate
        return values
    y = Surv.from_arrays(event_.astype(bool), time)
    for j, tau in enumerate(horizons, start=1):
        if not np.any(event_.astype(bool) & (time < tau)):
            continue  # no event before τ: Uno's C is undefined
        try:
            values[j] = concordance_index_ipcw(y, y, risk, tau=tau)[0]
        except ValueError:
            # The censoring KM reaches 0 before an event (possible in a bootstrap resample):
            # the IPCW weights are undefined, so this replicate has no value.
            pass
    return values


def _discrimination(frame, preds, endpoint, horizons, n_boot, seed, alpha):
    time = frame["time"].to_numpy(float)
    ev = frame["event"].to_numpy(float)
    lps = {m: preds[m]["lp"].to_numpy(float) for m in MODELS}
    names = _metric_names(horizons)
    point = {m: _concordances(time, ev, lps[m], horizons) for m in MODELS}
    rng = np.random.default_rng(seed)
    n = len(frame)
    boot = {m: np.full((n_boot, len(names)), np.nan) for m in MODELS}
    for b in range(n_boot):
        i = rng.integers(0, n, n)  # one resample shared by both models: a paired bootstrap
        for m in MODELS:
            boot[m][b] = _concordances(time[i], ev[i], lps[m][i], horizons)
    q = [alpha / 2, 1 - alpha / 2]
    rows, diffs = [], []
    for m in MODELS:
        for j, name in enumerate(names):
            low, high = _quantiles(boot[m][:, j], q)
            rows.append((endpoint, m, name, point[m][j], low, high))
    for j, name in enumerate(names):
        d = boot["clinical_ai"][:, j] - boot["clinical"][:, j]
        d = d[np.isfinite(d)]
        low, high = _quantiles(d, q)
        if d.size:
            tail = min(np.sum(d <= 0) + 1, np.sum(d >= 0) + 1)
            p = float(min(1.0, 2.0 * tail / (d.size + 1)))
        else:
            p = float("nan")
        diffs.append((endpoint, name, point["clinical_ai"][j] - point["clinical"][j], low, high, p))
    return (
        pd.DataFrame(rows, columns=TABLE_COLUMNS["survival_cindex"]),
        pd.DataFrame(diffs, columns=TABLE_COLUMNS["survival_cindex_diff"]),
    )


def _quantiles(values: np.ndarray, q) -> tuple[float, float]:
    values = values[np.isfinite(values)]
    if values.size == 0:
        return float("nan"), float("nan")
    low, high = np.quantile(values, q)
    return float(low), float(high)


def _time_auc(frame, preds, endpoint, horizons) -> pd.DataFrame:
    time = frame["time"].to_numpy(float)
    ev = frame["event"].to_numpy(bool)
    y = Surv.from_arrays(ev, time)
    # AUC(t) needs cases (events by t) and controls (alive after t): t in [first event, last
    # follow-up).
    usable = [h for h in horizons if np.any(ev & (time <= h)) and np.any(time > h)]
    skipped = [h for h in horizons if h not in usable]
    if skipped:
        event(log, f"{endpoint}: no AUC(t) outside follow-up", logging.WARNING, horizons=skipped)
    rows = []
    for m in MODELS:
        if not usable:
            break
        auc, _ = cumulative_dynamic_auc(y, y, preds[m]["lp"].to_numpy(float), usable)
        rows.extend((endpoint, m, float(h), float(a)) for h, a in zip(usable, auc, strict=True))
    return pd.DataFrame(rows, columns=TABLE_COLUMNS["survival_auc"])


def _decision_curve(frame, preds, endpoint, horizon, thresholds) -> pd.DataFrame:
    from dcurves import dca

    data = pd.DataFrame(
        {
            "time": frame["time"].to_numpy(float),
            "event": frame["event"].to_numpy(int),
            **{m: preds[m][f"risk_{horizon:g}"].to_numpy(float) for m in MODELS},
        }
    )
    with warnings.catch_warnings():
        # dcurves 1.1 fills float columns of an all-NaN frame row by row through .loc, which
        # pandas announces as a FutureWarning about dtype setting; the values are unaffected.
        warnings.simplefilter("ignore", FutureWarning)
        curves = dca(
            data=data,
            outcome="event",
            modelnames=list(MODELS),
            thresholds=list(thresholds),
            time=horizon,
            time_to_outcome_col="time",
        )
    curves = curves.replace({"model": {"all": "treat_all", "none": "treat_none"}})
    return pd.DataFrame(
        {
            "endpoint": endpoint,
            "horizon": float(horizon),
            "model": curves["model"].to_numpy(),
            "threshold": curves["threshold"].to_numpy(float),
            "net_benefit": curves["net_benefit"].to_numpy(float),
        }
    )


# --------------------------------------------------------------------------------------------
# Driver


def survival_analysis(
    scores: pd.DataFrame,
    clinical: pd.DataFrame,
    folds: pd.Series,
    endpoints: Sequence[str] = ENDPOINTS,
    horizons: Sequence[float] = (12, 24, 36),
    n_boot: int = 500,
    seed: int = 0,
    alpha: float = 0.05,
    thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
) -> dict[str, pd.DataFrame]:
    """Hazard ratios, out-of-fold discrimination, AUC(t) and decision curves of each endpoint.

    Returns the tables ``survival_hr``, ``survival_cindex``, ``survival_cindex_diff``,
    ``survival_auc`` and ``decision_curve`` with the columns of ``docs/run_directory.md``
    (``TABLE_COLUMNS``). Methods and references: the module docstring. ``n_boot`` resamples give
    the C-index intervals (each costs one Harrell and ``len(horizons)`` Uno C-indices per model);
    decision curves are drawn at ``horizons[0]``.

    Raises
    ------
    ValueError
        Missing columns (named), non-finite predictions (patients and targets named), scored
        patients without clinical data or fold, an endpoint without events, times ≤ 0.
    """
    endpoints = tuple(endpoints)
    horizons = tuple(float(h) for h in horizons)
    if n_boot < 1:
        raise ValueError(f"n_boot must be ≥ 1, got {n_boot}")
    _check_inputs(scores, clinical, folds, endpoints)
    tables = {name: [] for name in TABLE_COLUMNS}
    for endpoint in endpoints:
        frame = _endpoint_frame(scores, clinical, folds, endpoint)
        event(log, f"{endpoint}: survival models", n=len(frame), events=int(frame["event"].sum()))
        tables["survival_hr"].append(_hazard_ratios(frame, endpoint))
        preds = out_of_fold_predictions(frame, horizons)
        cindex, diff = _discrimination(frame, preds, endpoint, horizons, n_boot, seed, alpha)
        tables["survival_cindex"].append(cindex)
        tables["survival_cindex_diff"].append(diff)
        tables["survival_auc"].append(_time_auc(frame, preds, endpoint, horizons))
        if horizons:
            tables["decision_curve"].append(
                _decision_curve(frame, preds, endpoint, horizons[0], thresholds)
            )
    return {
        name: (
            pd.concat(parts, ignore_index=True)
            if parts
            else pd.DataFrame(columns=list(TABLE_COLUMNS[name]))
        )[list(TABLE_COLUMNS[name])]
        for name, parts in tables.items()
    }


#: Hazard ratios of ``survival_hr`` that ``metrics.json`` carries (the AI terms of the study).
HEADLINE_TERMS: tuple[str, ...] = ("ers_caf_T3_vs_T1", "lr_T3_vs_T1", "heterogeneity_per_sd")


def survival_metrics(tables: dict[str, pd.DataFrame]) -> dict[str, float]:
    """The ``metrics.json`` numbers of :func:`survival_analysis`'s tables (flat keys, schema in
    :mod:`stromalens.evaluation.schema`):

    * ``survival.<endpoint>.c_index.clinical`` and ``….clinical_ai`` — Harrell's C of the
      out-of-fold linear predictors (``survival_cindex``, metric ``harrell``);
    * ``survival.<endpoint>.hr.<term>`` for the terms of ``HEADLINE_TERMS`` (``survival_hr``).
    """
    out: dict[str, float] = {}
    cindex = tables["survival_cindex"]
    for row in cindex[cindex["metric"] == "harrell"].itertuples(index=False):
        out[metric_key("survival", row.endpoint, "c_index", row.model)] = float(row.value)
    hr = tables["survival_hr"]
    for row in hr[hr["term"].isin(HEADLINE_TERMS)].itertuples(index=False):
        out[metric_key("survival", row.endpoint, "hr", row.term)] = float(row.hr)
    return out
