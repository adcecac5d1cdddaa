"""How much of the site is left in the features: an out-of-fold site classifier.

In each of ``folds`` stratified folds, fitted on the training patients only: the ICC stability
filter (from the training patients' perturbations, when given), ComBat, a standardisation and a
multinomial logistic regression predicting the site; the held-out patients are harmonised with
the fitted ComBat and classified. The balanced accuracy (mean per-site recall; chance = 1 / number
of sites) of the raw and the harmonised features are compared.

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

    Only patients with every feature (complete cases) and sites with at least ``folds`` of them
    are used. Raises ``ValueError`` if fewer than two such sites remain.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import balanced_accuracy_score
    from sklearn.model_selection import StratifiedKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    sites = pd.Series(np.asarray(sites).astype(str), index=features.index)
    X = features.dropna(axis=1, how="all")
    X = X.loc[X.notna().all(axis=1)]
    X = X.loc[:, X.std() > 0]
    counts = sites.loc[X.index].value_counts()
    keep_sites = counts.index[counts >= folds]
    X = X.loc[sites.loc[X.index].isin(keep_sites)]
    y = sites.loc[X.index]
    if y.nunique() < 2:
        raise ValueError(
            f"the site check needs at least two sites with ≥ {folds} complete patients; "
            f"have {counts.to_dict()}"
        )
    cov = covariates.loc[X.index] if covariates is not None else None
    predictions = {"raw": pd.Series(index=X.index, dtype=object)}
    predictions["combat"] = predictions["raw"].copy()
    n_features = []
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    for train_idx, test_idx in splitter.split(X, y):
        train, test = X.index[train_idx], X.index[test_idx]
        columns = list(X.columns)
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
            model = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=5000))
            model.fit(tr.to_numpy(), y.loc[train].to_numpy())
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
        "sites": {str(k): int(v) for k, v in y.value_counts().sort_index().items()},
        "folds": folds,
        "features_per_fold": n_features,
    }
