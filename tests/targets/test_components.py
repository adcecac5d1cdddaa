"""Heterogeneity, LR crosstalk, noise ceiling and target scaling against known answers."""

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from stromalens.targets.heterogeneity import effective_richness, shannon_entropy
from stromalens.targets.lr import LRCrosstalk, curated_triplets
from stromalens.targets.reliability import pipeline_concordance
from stromalens.targets.scaling import GeneScaler, TargetScaler


# --------------------------------------------------------------------------- heterogeneity
def test_entropy_known_values_match_scipy():
    fractions = pd.DataFrame(
        {
            "A": [0.25, 1.0, 0.5, 0.2],
            "B": [0.25, 0.0, 0.5, 0.3],
            "C": [0.25, 0.0, 0.0, 0.1],
            "D": [0.25, 0.0, 0.0, 0.4],
        }
    )
    h = shannon_entropy(fractions)
    reference = [stats.entropy(row) for row in fractions.to_numpy()]  # scipy.stats.entropy
    assert h.tolist() == pytest.approx(reference, abs=1e-12)
    assert h.iloc[0] == pytest.approx(np.log(4))
    assert effective_richness(fractions).iloc[0] == pytest.approx(4.0)
    assert effective_richness(fractions).iloc[2] == pytest.approx(2.0)


def test_other_fraction_handling():
    """'exclude' renormalises the characterised types; 'include' counts 'other' as a type."""
    fractions = pd.DataFrame({"A": [0.3], "B": [0.3], "other": [0.4]})
    assert shannon_entropy(fractions, other="exclude").iloc[0] == pytest.approx(np.log(2))
    assert shannon_entropy(fractions, other="include").iloc[0] == pytest.approx(
        stats.entropy([0.3, 0.3, 0.4])
    )
    # Excluding "other" makes H independent of how much the signature explains.
    scaled = pd.DataFrame({"A": [0.1], "B": [0.1], "other": [0.8]})
    assert shannon_entropy(scaled).iloc[0] == pytest.approx(shannon_entropy(fractions).iloc[0])
    with pytest.raises(ValueError, match="other must be"):
        shannon_entropy(fractions, other="drop")
    with pytest.raises(ValueError, match="no positive fraction"):
        shannon_entropy(pd.DataFrame({"A": [0.0], "other": [1.0]}))


# --------------------------------------------------------------------------- LR crosstalk
def _lr_data(n=12, seed=0):
    rng = np.random.default_rng(seed)
    triplets = pd.DataFrame(
        {
            "ligand": ["L1", "L2"],
            "receptor": ["R1", "R2"],
            "cell_type": ["T", "M"],
            "n_resources": [3, 1],
        }
    )
    expr = pd.DataFrame(
        rng.normal(5, 1, (n, 4)),
        columns=["L1", "R1", "L2", "R2"],
        index=[f"s{i}" for i in range(n)],
    )
    fractions = pd.DataFrame(rng.dirichlet([1, 1, 1], n), columns=["T", "M", "X"], index=expr.index)
    return triplets, expr, fractions


def test_product_score_by_hand():
    triplets, expr, fractions = _lr_data()
    score = LRCrosstalk(triplets).fit_transform(expr, fractions)
    z = (expr - expr.mean()) / expr.std(ddof=1)
    by_hand = (3 * z["L1"] * z["R1"] * fractions["T"] + 1 * z["L2"] * z["R2"] * fractions["M"]) / 4
    assert np.allclose(score, by_hand)
    uniform = LRCrosstalk(triplets, weights="uniform").fit_transform(expr, fractions)
    assert np.allclose(
        uniform, (z["L1"] * z["R1"] * fractions["T"] + z["L2"] * z["R2"] * fractions["M"]) / 2
    )


def test_cellchat_score_by_hand():
    triplets, expr, fractions = _lr_data()
    score = LRCrosstalk(triplets, method="cellchat").fit_transform(expr, fractions)
    scaled = expr / expr.max()
    p1 = scaled["L1"] * scaled["R1"]
    p2 = scaled["L2"] * scaled["R2"]
    by_hand = (3 * p1 / (0.5 + p1) * fractions["T"] + p2 / (0.5 + p2) * fractions["M"]) / 4
    assert np.allclose(score, by_hand)


def test_scaling_is_fitted_on_training_samples_only():
    triplets, expr, fractions = _lr_data(n=20)
    train, test = expr.index[:14], expr.index[14:]
    model = LRCrosstalk(triplets).fit(expr.loc[train])
    mean_before = model.scaler_.mean_.copy()
    perturbed = expr.copy()
    perturbed.loc[test] += 100.0  # wild held-out data
    model.transform(perturbed.loc[test], fractions)
    pd.testing.assert_series_equal(model.scaler_.mean_, mean_before)
    refit = LRCrosstalk(triplets).fit(perturbed.loc[train])
    pd.testing.assert_series_equal(refit.scaler_.mean_, mean_before)  # independent of held-out


def test_monotone_score_by_hand():
    triplets, expr, fractions = _lr_data()
    score = LRCrosstalk(triplets, method="monotone").fit_transform(expr, fractions)
    s = (expr - expr.min()) / (expr.max() - expr.min())
    by_hand = (3 * s["L1"] * s["R1"] * fractions["T"] + 1 * s["L2"] * s["R2"] * fractions["M"]) / 4
    assert np.allclose(score, by_hand)


def test_eq6_is_not_monotone_and_the_variant_is():
    """Eq. 6: ligand and receptor both low (z = -1, -1) score as high as both high (+1, +1);
    the monotone variant scores both low as the lowest and never falls when either rises."""
    triplets = pd.DataFrame({"ligand": ["L"], "receptor": ["R"], "cell_type": ["T"]})
    expr = pd.DataFrame({"L": [4.0, 6.0, 5.0, 5.0], "R": [4.0, 6.0, 5.0, 5.0]})
    fractions = pd.DataFrame({"T": [0.5] * 4})
    eq6 = LRCrosstalk(triplets, weights="uniform").fit_transform(expr, fractions)
    assert eq6[0] == pytest.approx(eq6[1]) and eq6[0] > eq6[2]
    mono = LRCrosstalk(triplets, weights="uniform", method="monotone").fit_transform(
        expr, fractions
    )
    assert mono.tolist() == pytest.approx([0.0, 0.5, 0.125, 0.125])
    rng = np.random.default_rng(3)
    grid = pd.DataFrame(rng.uniform(3, 7, (50, 2)), columns=["L", "R"])
    model = LRCrosstalk(triplets, weights="uniform", method="monotone").fit(grid)
    base = model.transform(grid, pd.DataFrame({"T": [0.5] * 50}))
    higher = model.transform(grid.assign(L=grid["L"] + 0.3), pd.DataFrame({"T": [0.5] * 50}))
    assert (higher.to_numpy() >= base.to_numpy() - 1e-15).all()


def test_gene_scaler_known_answers_and_training_rows_only():
    x = pd.DataFrame({"g": [1.0, 2.0, 3.0, 5.0]})
    # numpy reference: (x - x.mean()) / x.std(ddof=1); min-max (x - 1) / 4, held-out clipped at 0
    z = GeneScaler("z").fit(x).transform(x)["g"]
    assert np.allclose(z, (x["g"] - 2.75) / np.std([1, 2, 3, 5], ddof=1))
    scaler = GeneScaler("minmax").fit(x.iloc[:3])
    held_out = pd.DataFrame({"g": [0.0, 4.0]})
    assert scaler.transform(held_out)["g"].tolist() == [0.0, 1.5]
    assert GeneScaler("max").fit(x).transform(x)["g"].tolist() == [0.2, 0.4, 0.6, 1.0]
    state = scaler.state()
    assert state["kind"] == "minmax" and state["min"] == {"g": 1.0} and state["max"] == {"g": 3.0}
    with pytest.raises(ValueError, match="kind must be one of"):
        GeneScaler("rank").fit(x)
    with pytest.raises(RuntimeError, match="not fitted"):
        GeneScaler().transform(x)
    with pytest.raises(ValueError, match="at least 2 training samples"):
        GeneScaler().fit(x.iloc[:1])


def test_lr_errors_and_curated_table():
    triplets, expr, fractions = _lr_data()
    with pytest.raises(RuntimeError, match="not fitted"):
        LRCrosstalk(triplets).transform(expr, fractions)
    with pytest.raises(ValueError, match="lack receiving cell types: T"):
        LRCrosstalk(triplets).fit(expr).transform(expr, fractions.drop(columns="T"))
    table = curated_triplets()
    pairs = set(zip(table["ligand"], table["receptor"], strict=True))
    assert {("CXCL12", "CXCR4"), ("CCL2", "CCR2")} <= pairs
    assert (table["n_resources"] >= 1).all() and table["resources"].notna().all()


# --------------------------------------------------------------------------- noise ceiling
def test_concordance_and_ceiling():
    rng = np.random.default_rng(0)
    latent = rng.normal(size=400)
    a = pd.Series(latent + rng.normal(0, 0.5, 400))
    b = pd.Series(latent + rng.normal(0, 0.5, 400))
    out = pipeline_concordance(a, b, n_boot=500)
    assert out["r"] == pytest.approx(np.corrcoef(a, b)[0, 1])  # numpy reference
    assert out["ci_low"] < out["r"] < out["ci_high"]
    assert out["ceiling"] == pytest.approx(np.sqrt(out["r"]))
    # Known answer: reliability of each pipeline = 1 / (1 + 0.25) = 0.8.
    assert out["r"] == pytest.approx(0.8, abs=0.05)
    same = pipeline_concordance(a, a, n_boot=100)
    assert same["r"] == pytest.approx(1.0) and same["ceiling"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="at least 4 samples"):
        pipeline_concordance(a[:3], b[:3])


# --------------------------------------------------------------------------- scaling
def test_target_scaler_uses_training_rows_only():
    targets = pd.DataFrame({"ers_caf": np.arange(10.0)})
    scaler = TargetScaler().fit(targets.iloc[:6])
    z = scaler.transform(targets)
    assert z.iloc[:6]["ers_caf"].mean() == pytest.approx(0.0)
    assert z.iloc[:6]["ers_caf"].std() == pytest.approx(1.0)
    before = scaler.mean_.copy()
    scaler.transform(targets * 100)
    pd.testing.assert_series_equal(scaler.mean_, before)
    with pytest.raises(ValueError, match="constant"):
        TargetScaler().fit(pd.DataFrame({"x": [1.0, 1.0]}))
    with pytest.raises(RuntimeError, match="not fitted"):
        TargetScaler().transform(targets)
