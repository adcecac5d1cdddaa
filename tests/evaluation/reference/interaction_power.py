"""Analytic power of the treatment × LR interaction test at the generator's planted size.

The numbers in the docstring of ``stromalens.evaluation.validation`` (the table of se and
power at N = 126). The expected per-patient information of the logistic model,
I = E[p(1 − p) x xᵀ], is evaluated on 200 000 patients of
``stromalens.synthetic.biology.simulate_patients`` (interaction 0.8, K = 1) with the design of
``stromalens.evaluation.treatment.response_design`` and the latent b itself (standardised) as
the score; p and δ are those of the maximum-likelihood fit to the same patients (a slightly
misspecified model: the latent a is not a term). se(δ̂) at N = sqrt([I⁻¹]_δδ / N); power by
``stromalens.evaluation.validation.wald_power`` (two-sided, Bonferroni over L = 2 arms);
N for a power of 0.8: (z_{1−α/(2L)} + z_{0.8})² [I⁻¹]_δδ / δ². Each term with the reference
arm of the analysis (RT, the first level in sorted order) and with surgery as the reference.

Run from the repository root (about a minute; the tests never run it):

    PYTHONPATH=src python tests/evaluation/reference/interaction_power.py
"""

import numpy as np
import statsmodels.api as sm
from scipy import stats

from stromalens.evaluation.treatment import levels_of, response_design
from stromalens.evaluation.validation import wald_power
from stromalens.synthetic.biology import simulate_patients

M, N, ARMS = 200_000, 126, 2
patients = simulate_patients(M, seed=11, interaction=0.8)
b = patients["b"].to_numpy()
frame = patients.assign(lr=(b - b.mean()) / b.std())
y = patients["response"].to_numpy(float)
z = stats.norm.ppf(1 - 0.05 / (2 * ARMS))
print("treatment shares", patients["treatment"].value_counts(normalize=True).round(3).to_dict())
for reference in ("RT", "surgery"):
    levels = levels_of(frame)
    levels["treatment"] = [reference, *(a for a in levels["treatment"] if a != reference)]
    X = response_design(frame, levels)
    design = sm.add_constant(X.loc[:, X.nunique() > 1].astype(float))
    fit = sm.Logit(y, design).fit(method="newton", disp=False)
    p = fit.predict(design).to_numpy()
    values = design.to_numpy()
    inverse = np.linalg.inv((values * (p * (1 - p))[:, None]).T @ values / M)
    for j, term in enumerate(design.columns):
        if ":" not in term:
            continue
        delta, se = float(fit.params[term]), float(np.sqrt(inverse[j, j] / N))
        n80 = (z + stats.norm.ppf(0.8)) ** 2 * inverse[j, j] / delta**2
        print(f"reference {reference}: {term} δ = {delta:.3f}, se(N = {N}) = {se:.3f}, "
              f"power = {wald_power(delta, se, ARMS):.3f}, N for 0.8 = {n80:.0f}")  # fmt: skip
