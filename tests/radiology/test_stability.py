"""Vectorised ICC against pingouin.intraclass_corr; the stability table and selection."""

import numpy as np
import pandas as pd
import pytest

from stromalens.radiology.stability import icc, select_stable, stability_table

pg = pytest.importorskip("pingouin")


def _pingouin_row(x: np.ndarray, kind: str) -> pd.Series:
    n, k = x.shape
    long = pd.DataFrame(
        {"target": np.repeat(np.arange(n), k), "rater": np.tile(np.arange(k), n), "y": x.ravel()}
    )
    table = pg.intraclass_corr(long, targets="target", raters="rater", ratings="y")
    # pingouin ≥ 0.6 labels rows ICC(1,1)/ICC(A,1)/ICC(C,1); older versions ICC1/ICC2/ICC3.
    old = {"ICC(1,1)": "ICC1", "ICC(A,1)": "ICC2", "ICC(C,1)": "ICC3"}
    table = table.set_index("Type")
    return table.loc[kind] if kind in table.index else table.loc[old[kind]]


@pytest.mark.parametrize("kind", ["ICC(1,1)", "ICC(A,1)", "ICC(C,1)"])
def test_matches_pingouin(kind):
    rng = np.random.default_rng(7)
    n, k, f = 14, 5, 6
    x = (
        rng.normal(size=(n, 1, f)) * rng.uniform(0.1, 2.0, f)
        + 0.5 * rng.normal(size=(n, k, f))
        + 0.3 * rng.normal(size=(1, k, f))
    )
    result = icc(x, kind)
    for j in range(f):
        ref = _pingouin_row(x[:, :, j], kind)
        assert result["icc"][j] == pytest.approx(ref["ICC"], abs=1e-10)
        assert result["F"][j] == pytest.approx(ref["F"], rel=1e-10)
        assert result["pval"][j] == pytest.approx(ref["pval"], rel=1e-8, abs=1e-300)
        # pingouin rounds its CI to two decimals
        assert round(result["ci_low"][j], 2) == pytest.approx(ref["CI95"][0], abs=1e-9)
        assert round(result["ci_high"][j], 2) == pytest.approx(ref["CI95"][1], abs=1e-9)


def test_aliases_and_errors():
    x = np.random.default_rng(0).normal(size=(6, 3, 2))
    np.testing.assert_array_equal(icc(x, "ICC1")["icc"], icc(x, "ICC(1,1)")["icc"])
    np.testing.assert_array_equal(icc(x, "ICC(2,1)")["icc"], icc(x, "ICC(A,1)")["icc"])
    with pytest.raises(ValueError, match="ICC\\(9\\)"):
        icc(x, "ICC(9)")
    with pytest.raises(ValueError, match="k=1"):
        icc(x[:, :1], "ICC(1,1)")


def _perturbed(n=12, k=4, seed=0):
    rng = np.random.default_rng(seed)
    truth = rng.normal(size=(n, 1))
    stable = truth + 0.05 * rng.normal(size=(n, k))
    noisy = truth + 3.0 * rng.normal(size=(n, k))
    index = pd.MultiIndex.from_product(
        [[f"P{i:02d}" for i in range(n)], range(k)], names=["patient_id", "perturbation"]
    )
    return pd.DataFrame({"stable": stable.ravel(), "noisy": noisy.ravel()}, index=index)


def test_stability_table_and_selection():
    perturbed = _perturbed()
    table = stability_table(perturbed, threshold=0.75)
    assert table.loc["stable", "stable"] and not table.loc["noisy", "stable"]
    assert (table["ci_low"] <= table["icc"]).all() and (table["icc"] <= table["ci_high"]).all()
    assert table["n_patients"].iloc[0] == 12 and table["n_perturbations"].iloc[0] == 4
    assert select_stable(perturbed) == ["stable"]


def test_selection_uses_only_the_given_patients():
    """The filter fitted on a training fold does not see the other patients' values."""
    perturbed = _perturbed()
    train = [f"P{i:02d}" for i in range(8)]
    changed = perturbed.copy()
    test_rows = ~changed.index.get_level_values(0).isin(train)
    changed.loc[test_rows] = 1e6 * np.random.default_rng(1).normal(size=(test_rows.sum(), 2))
    pd.testing.assert_frame_equal(
        stability_table(perturbed, patients=train), stability_table(changed, patients=train)
    )
