"""How much of the site is left in the features: an out-of-fold site classifier.

In each of ``folds`` stratified folds, fitted on the training patients only: the ICC stability
filter (from the training patients' perturbations, when given), ComBat, a per-feature mean
imputation, a standardisation and a multinomial logistic regression predicting the site; the
held-out patients are harmonised with the fitted ComBat and classified. The balanced accuracy
(mean per-site recall; chance = 1 / number of sites) of the raw and the harmonised features are
compared.

Every patient with features takes part, with the features it has (per-feature availability):
ComBat uses, per feature, the patients that have it (``sva``'s missing-value rule, see
:mod:`.combat`), and a missing value is imputed with the training fold's mean only for the
classifier, after harmonisation. In a fold, a feature enters if it has at least two values at
each training site. A patient missing a whole sequence (or a cohort where no patient has every
sequence) is no longer dropped. Sites too small for the folds are left out (a stratified fold
needs one patient of each site, and ComBat two per site in every training fold).

Example
-------
>>> site_predictability(features, sites)["balanced_accuracy"]   # doctest: +SKIP
{'raw': 0.93, 'combat': 0.31, 'chance': 0.2}
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from .combat import ComBat
from .stability import select_stable


def site_predictability(
    features: pd.DataFrame,
    sites,
    *,
    covariates: pd.DataFrame | None = None,
    perturbed: pd.DataFrame | None = None,
    threshold: float = 0.75,
    icc_kind: str = "ICC(1,1)",
    folds: int = 5,
    seed: int = 0,
) -> dict:
    """Out-of-fold balanced accuracy of a site classifier, raw vs ComBat-harmonised.

    Patients with at least one feature and sites with at least ``folds`` of them are used,
    each feature where it is available (module notes). Raises ``ValueError`` if fewer than two
    such sites remain.
    """
    from sklearn.metrics import balanced_accuracy_score
    from sklearn.model_selection import StratifiedKFold

    sites = pd.Series(np.asarray(sites).astype(str), index=features.index)
    X = features.dropna(axis=1, how="all")
    X = X.loc[X.notna().any(axis=1)]
    X = X.loc[:, X.std() > 0]
    counts = sites.loc[X.index].value_counts()
    # a stratified fold needs one patient of each site, and ComBat two per site in training
    # (a site of n holds out up to ⌈n / folds⌉ at once)
    enough = (counts >= folds) & (counts - np.ceil(counts / folds) >= 2)
    keep_sites = counts.index[enough]
    X = X.loc[sites.loc[X.index].isin(keep_sites)]
    y = sites.loc[X.index]
    if y.nunique() < 2:
        raise ValueError(
            f"the site check needs at least two sites with ≥ {max(folds, 3)} patients with "
            f"features (≥ 2 per site in each training fold); have {counts.to_dict()}"
        )
    cov = covariates.loc[X.index] if covariates is not None else None
    predictions = {"raw": pd.Series(index=X.index, dtype=object)}
    predictions["combat"] = predictions["raw"].copy()
    n_features = []
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    for train_idx, test_idx in splitter.split(X, y):
        train, test = X.index[train_idx], X.index[test_idx]
        columns = _estimable(X.loc[train], y.loc[train])
        if perturbed is not None:
            stable = set(
                select_stable(perturbed, threshold=threshold, kind=icc_kind, patients=train)
            )
            columns = [c for c in columns if c in stable] or columns
        n_features.append(len(columns))
        combat = ComBat().fit(
            X.loc[train, columns], y.loc[train], None if cov is None else cov.loc[train]
        )
        harmonised_train = combat.transform(
            X.loc[train, columns], y.loc[train], None if cov is None else cov.loc[train]
        )
        harmonised_test = combat.transform(
            X.loc[test, columns], y.loc[test], None if cov is None else cov.loc[test]
        )
        for name, (tr, te) in {
            "raw": (X.loc[train, columns], X.loc[test, columns]),
            "combat": (harmonised_train, harmonised_test),
        }.items():
            model = _classifier().fit(tr.to_numpy(), y.loc[train].to_numpy())
            predictions[name].loc[test] = model.predict(te.to_numpy())
    return {
        "balanced_accuracy": {
            "raw": round(float(balanced_accuracy_score(y, predictions["raw"].astype(str))), 4),
            "combat": round(
                float(balanced_accuracy_score(y, predictions["combat"].astype(str))), 4
            ),
            "chance": round(1.0 / y.nunique(), 4),
        },
        "patients": int(len(X)),
        "missing_fraction": round(float(X.isna().to_numpy().mean()), 4),
        "sites": {str(k): int(v) for k, v in y.value_counts().sort_index().items()},
        "folds": folds,
        "features_per_fold": n_features,
    }


def _estimable(X: pd.DataFrame, sites: pd.Series) -> list[str]:
    """Features with at least two values at every site of ``X`` (ComBat can estimate them)."""
    counts = X.notna().groupby(sites.to_numpy()).sum()  # sites × features
    return list(X.columns[(counts >= 2).all(axis=0).to_numpy()])


def _classifier():
    """Mean imputation (training fold), standardisation and a multinomial logistic model."""
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(
        SimpleImputer(strategy="mean"),
        StandardScaler(),
        LogisticRegression(C=1.0, max_iter=5000),
    )
