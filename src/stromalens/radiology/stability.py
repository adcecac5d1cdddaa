"""Feature stability under image perturbations: intraclass correlation, vectorised over features.

Zwanenburg et al. (2019) perturb each patient's image and mask ``k`` times (rotation,
translation, noise, contour randomisation) and keep the features whose ICC across perturbations
is high; here ICC ≥ 0.75 by default. With ``n`` patients (targets) and ``k`` perturbations
(raters) and the two-way ANOVA mean squares of one feature,

    MSR = k Σ_i (x̄_i· − x̄)² / (n − 1)                 between patients
    MSC = n Σ_j (x̄_·j − x̄)² / (k − 1)                 between perturbations
    MSE = Σ_ij (x_ij − x̄_i· − x̄_·j + x̄)² / ((n − 1)(k − 1))
    MSW = Σ_ij (x_ij − x̄_i·)² / (n (k − 1))             within patients

the one-way random-effects, single-measurement ICC (Shrout & Fleiss 1979, ICC(1,1)) is

    ICC(1,1) = (MSR − MSW) / (MSR + (k − 1) MSW),

which suits perturbations (no perturbation index is shared across patients), and the two-way
random-effects absolute-agreement ICC (McGraw & Wong 1996, ICC(A,1) = Shrout–Fleiss ICC(2,1))

    ICC(A,1) = (MSR − MSE) / (MSR + (k − 1) MSE + k (MSC − MSE) / n),

for readers who re-segment every patient. Confidence intervals are the F-distribution intervals
of McGraw & Wong, as in ``pingouin.intraclass_corr`` (whose row labels are ``ICC(1,1)`` and
``ICC(A,1)`` since pingouin 0.6, ``ICC1`` and ``ICC2`` before).

References
----------
Zwanenburg A, Leger S, Agolli L, et al. Assessing robustness of radiomic features by image
perturbation. Sci Rep 2019;9:614.
Shrout PE, Fleiss JL. Intraclass correlations: uses in assessing rater reliability. Psychol Bull
1979;86:420–428.
McGraw KO, Wong SP. Forming inferences about some intraclass correlation coefficients. Psychol
Methods 1996;1:30–46.

Example
-------
>>> x = np.random.default_rng(0).normal(size=(20, 1, 3)) + 0.1 * rng.normal(size=(20, 5, 3))
... # doctest: +SKIP
>>> icc(x, "ICC(1,1)")["icc"]          # three features, each ≈ 0.99       # doctest: +SKIP
"""

from __future__ import annotations

import numpy as np
import pandas as pd

KINDS = ("ICC(1,1)", "ICC(A,1)", "ICC(C,1)")
#: Older spellings (pingouin < 0.6, Shrout–Fleiss numbering) accepted as aliases.
ALIASES = {
    "ICC1": "ICC(1,1)",
    "ICC2": "ICC(A,1)",
    "ICC3": "ICC(C,1)",
    "ICC(2,1)": "ICC(A,1)",
    "ICC(3,1)": "ICC(C,1)",
}


def _kind(kind: str) -> str:
    kind = ALIASES.get(kind, kind)
    if kind not in KINDS:
        raise ValueError(f"ICC kind {kind!r} is not one of {', '.join(KINDS)} (or {list(ALIASES)})")
    return kind


def icc(values: np.ndarray, kind: str = "ICC(1,1)", alpha: float = 0.05) -> dict[str, np.ndarray]:
    """ICC of every feature at once.

    Parameters
    ----------
    values : array (n patients, k perturbations or readers, F features)
    kind : "ICC(1,1)", "ICC(A,1)" or "ICC(C,1)"
    alpha : 1 − the confidence level of the interval

    Returns
    -------
    dict of arrays (F,): ``icc``, ``ci_low``, ``ci_high``, ``F``, ``df1``, ``df2``, ``pval``.
    Features with no variance at all get NaN.
    """
    from scipy import stats

    kind = _kind(kind)
    x = np.asarray(values, dtype=float)
    if x.ndim == 2:
        x = x[:, :, None]
    if x.ndim != 3:
        raise ValueError(f"values must be (patients, raters, features); got shape {x.shape}")
    n, k, _ = x.shape
    if n < 2 or k < 2:
        raise ValueError(f"ICC needs at least 2 patients and 2 raters; got n={n}, k={k}")
    if not np.isfinite(x).all():
        raise ValueError("values have missing or infinite entries")
    grand = x.mean(axis=(0, 1))  # (F,)
    row = x.mean(axis=1)  # (n, F)
    col = x.mean(axis=0)  # (k, F)
    ss_r = k * ((row - grand) ** 2).sum(axis=0)
    ss_c = n * ((col - grand) ** 2).sum(axis=0)
    ss_w = ((x - row[:, None, :]) ** 2).sum(axis=(0, 1))
    ss_e = ss_w - ss_c
    ms_r = ss_r / (n - 1)
    ms_c = ss_c / (k - 1)
    ms_w = ss_w / (n * (k - 1))
    ms_e = np.maximum(ss_e, 0.0) / ((n - 1) * (k - 1))
    q = 1 - alpha / 2
    with np.errstate(divide="ignore", invalid="ignore"):
        if kind == "ICC(1,1)":
            value = (ms_r - ms_w) / (ms_r + (k - 1) * ms_w)
            f_stat, df1, df2 = ms_r / ms_w, n - 1, n * (k - 1)
            f_low = f_stat / stats.f.ppf(q, df1, df2)
            f_high = f_stat * stats.f.ppf(q, df2, df1)
            low = (f_low - 1) / (f_low + k - 1)
            high = (f_high - 1) / (f_high + k - 1)
        elif kind == "ICC(C,1)":
            value = (ms_r - ms_e) / (ms_r + (k - 1) * ms_e)
            f_stat, df1, df2 = ms_r / ms_e, n - 1, (n - 1) * (k - 1)
            f_low = f_stat / stats.f.ppf(q, df1, df2)
            f_high = f_stat * stats.f.ppf(q, df2, df1)
            low = (f_low - 1) / (f_low + k - 1)
            high = (f_high - 1) / (f_high + k - 1)
        else:  # ICC(A,1)
            value = (ms_r - ms_e) / (ms_r + (k - 1) * ms_e + k * (ms_c - ms_e) / n)
            f_stat, df1, df2 = ms_r / ms_e, n - 1, (n - 1) * (k - 1)
            fc = ms_c / ms_e
            vn = df2 * (k * value * fc + n * (1 + (k - 1) * value) - k * value) ** 2
            vd = df1 * k**2 * value**2 * fc**2 + (n * (1 + (k - 1) * value) - k * value) ** 2
            v = vn / vd
            f_up = stats.f.ppf(q, n - 1, v)
            f_lo = stats.f.ppf(q, v, n - 1)
            low = n * (ms_r - f_up * ms_e) / (f_up * (k * ms_c + (k * n - k - n) * ms_e) + n * ms_r)
            high = n * (f_lo * ms_r - ms_e) / (k * ms_c + (k * n - k - n) * ms_e + n * f_lo * ms_r)
        pval = stats.f.sf(f_stat, df1, df2)
    return {
        "icc": value,
        "ci_low": low,
        "ci_high": high,
        "F": f_stat,
        "df1": np.full_like(value, df1, dtype=float),
        "df2": np.full_like(value, df2, dtype=float) if np.ndim(df2) == 0 else df2,
        "pval": pval,
    }


def perturbation_array(perturbed: pd.DataFrame, patients=None) -> tuple[np.ndarray, list, list]:
    """Reshape the long perturbation table to (patients, perturbations, features).

    ``perturbed`` has a MultiIndex ``(patient_id, perturbation)`` and one column per feature
    (the runner's ``perturbations.parquet``). Only patients with every perturbation are used,
    and only features finite for all of them.
    """
    table = _complete_patients(perturbed, patients)
    table = table.dropna(axis=1, how="any")
    ids = list(dict.fromkeys(table.index.get_level_values(0)))
    k = len(table) // max(len(ids), 1)
    array = table.to_numpy(dtype=float).reshape(len(ids), k, table.shape[1])
    return array, ids, list(table.columns)


def _complete_patients(perturbed: pd.DataFrame, patients=None) -> pd.DataFrame:
    if not isinstance(perturbed.index, pd.MultiIndex) or perturbed.index.nlevels != 2:
        raise ValueError("perturbations must be indexed by (patient_id, perturbation)")
    if patients is not None:
        perturbed = perturbed[perturbed.index.get_level_values(0).isin(set(patients))]
    counts = perturbed.groupby(level=0).size()
    if counts.empty:
        raise ValueError("no perturbed patients to compute the ICC from")
    complete = counts.index[counts == counts.max()]
    return perturbed.loc[perturbed.index.get_level_values(0).isin(set(complete))].sort_index()


def stability_table(
    perturbed: pd.DataFrame,
    *,
    kind: str = "ICC(1,1)",
    threshold: float = 0.75,
    alpha: float = 0.05,
    patients=None,
) -> pd.DataFrame:
    """ICC and its CI per feature (``stability.parquet``), with ``stable = icc ≥ threshold``.

    ``patients`` restricts the computation (e.g. to a training fold). Features missing for some
    patients (a sequence that a patient lacks) get their ICC from the patients that have them:
    features are grouped by which patients have them and each group is computed at once.
    """
    if not 0 <= threshold <= 1:
        raise ValueError(f"threshold {threshold} is not in [0, 1]")
    kind = _kind(kind)
    table = _complete_patients(perturbed, patients)
    ids = list(dict.fromkeys(table.index.get_level_values(0)))
    k = len(table) // len(ids)
    finite = np.isfinite(table.to_numpy(dtype=float)).reshape(len(ids), k, -1).all(axis=1)
    groups: dict[bytes, list[int]] = {}
    for j in range(table.shape[1]):
        groups.setdefault(finite[:, j].tobytes(), []).append(j)
    parts = []
    for key, cols in groups.items():
        rows = np.frombuffer(key, dtype=bool)
        if rows.sum() < 2:
            continue
        values = table.iloc[:, cols].to_numpy(dtype=float).reshape(len(ids), k, len(cols))
        result = icc(values[rows], kind, alpha)
        part = pd.DataFrame(
            {key_: result[key_] for key_ in ("icc", "ci_low", "ci_high", "F", "pval")},
            index=table.columns[cols],
        )
        part["n_patients"] = int(rows.sum())
        parts.append(part)
    if not parts:
        raise ValueError("fewer than 2 patients have complete perturbations")
    out = pd.concat(parts).reindex([c for c in table.columns if any(c in p.index for p in parts)])
    out.index.name = "feature"
    out.insert(5, "kind", kind)
    out["n_perturbations"] = k
    out["stable"] = (out["icc"] >= threshold).fillna(False).astype(bool)
    return out


def select_stable(
    perturbed: pd.DataFrame,
    *,
    threshold: float = 0.75,
    kind: str = "ICC(1,1)",
    patients=None,
) -> list[str]:
    """The features with ICC ≥ ``threshold``, computed on ``patients`` only (a training fold's
    patients, so that the filter is fitted inside the fold)."""
    table = stability_table(perturbed, kind=kind, threshold=threshold, patients=patients)
    return table.index[table["stable"]].tolist()
