"""ssGSEA and GSVA against Bioconductor GSVA 1.46 (reference values in reference/, made by
reference/make_gsva_reference.R from inputs rebuilt here by reference/prepare_inputs.py)."""

import logging
import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from stromalens.targets import gsva, rmath, ssgsea
from stromalens.targets.scores import GeneSetWarning

REFERENCE = Path(__file__).parent / "reference"
sys.path.insert(0, str(REFERENCE))
import prepare_inputs  # noqa: E402

needs_shared = pytest.mark.skipif(
    not (prepare_inputs.SHARED / "rnaseq").exists(),
    reason="../shared/data (real expression data) is not available",
)


def expected(name: str) -> pd.DataFrame:
    """R writes sets × samples; we compare samples × sets."""
    return pd.read_csv(REFERENCE / f"{name}.csv", index_col=0).T


def compare(ours: pd.DataFrame, name: str):
    ref = expected(name)
    assert sorted(ours.columns) == sorted(ref.columns)
    assert sorted(ours.index) == sorted(ref.index)
    ref = ref.loc[ours.index, ours.columns]
    return np.abs(ours.to_numpy() - ref.to_numpy()), ref.to_numpy()


@pytest.fixture(scope="module")
def nki():
    expr = prepare_inputs.nki_log_ratios()
    return expr, prepare_inputs.sets_for(expr.columns)


@pytest.fixture(scope="module")
def hoek():
    expr = prepare_inputs.hoek_counts()
    return expr, prepare_inputs.sets_for(expr.columns)


@needs_shared
@pytest.mark.parametrize(
    ("name", "kwargs"),
    [
        # R: gsva(x, sets, method="ssgsea", ssgsea.norm=FALSE)
        ("ssgsea_raw_nki", {}),
        # R: gsva(x, sets, method="ssgsea", ssgsea.norm=TRUE)
        ("ssgsea_norm_nki", {"normalize": True}),
        # R: gsva(x, sets, method="ssgsea", tau=1, ssgsea.norm=FALSE)
        ("ssgsea_tau1_nki", {"alpha": 1.0}),
    ],
)
def test_ssgsea_matches_gsva_on_real_data_with_ties(nki, name, kwargs):
    expr, sets = nki
    # ~97% of each sample's values are tied (log ratios rounded to 0.1), a constant gene is kept.
    assert expr.iloc[0].duplicated().mean() > 0.5
    diff, ref = compare(ssgsea(expr, sets, **kwargs), name)
    assert (diff / np.abs(ref)).max() < 1e-8


@needs_shared
def test_ssgsea_matches_gsva_on_counts(hoek):
    expr, sets = hoek
    diff, ref = compare(ssgsea(expr, sets), "ssgsea_raw_hoek")  # R: method="ssgsea", norm=FALSE
    assert (diff / np.abs(ref)).max() < 1e-8


@needs_shared
@pytest.mark.parametrize(
    ("name", "kwargs"),
    [
        ("gsva_gaussian_mxdiff_nki", {"kcdf": "gaussian"}),  # R: kcdf="Gaussian", mx.diff=TRUE
        ("gsva_gaussian_max_nki", {"kcdf": "gaussian", "mx_diff": False}),  # mx.diff=FALSE
        ("gsva_none_mxdiff_nki", {"kcdf": "none"}),  # R: kcdf="none"
    ],
)
def test_gsva_matches_on_real_data_with_ties(nki, name, kwargs):
    expr, sets = nki
    with pytest.warns(GeneSetWarning, match="constant expression"):
        ours = gsva(expr, sets, **kwargs)
    diff, _ = compare(ours, name)
    assert diff.max() < 1e-4
    assert diff.max() < 1e-10  # in fact identical to rounding: the Φ lookup table is GSVA's


@pytest.fixture(scope="module")
def synthetic():
    expr = prepare_inputs.synthetic_counts()
    return expr, prepare_inputs.sets_for(expr.columns)


@needs_shared  # the gene sets are the Hallmark collection from ../shared/data
@pytest.mark.slow  # 80 million Poisson CDFs: ~35 s here
def test_gsva_poisson_matches_on_synthetic_counts(synthetic):
    """126 samples of counts from the synthetic mixture model; R: kcdf="Poisson"."""
    expr, sets = synthetic
    diff, _ = compare(gsva(expr, sets, kcdf="poisson"), "gsva_poisson_mxdiff_synthetic")
    assert diff.max() < 1e-10


@needs_shared
def test_gsva_gaussian_matches_on_synthetic_log_counts(synthetic):
    expr, sets = synthetic  # R: gsva(log2(x + 1), sets, kcdf="Gaussian")
    diff, _ = compare(gsva(np.log2(expr + 1), sets), "gsva_gaussian_mxdiff_synthetic")
    assert diff.max() < 1e-10


needs_rmath = pytest.mark.skipif(
    rmath.library_path() is None,
    reason="libRmath (Debian r-mathlib; `make install` adds it) is absent: SciPy's Poisson CDF "
    "stands in and near-tied genes may be ordered differently from R (checked to 5e-4 below)",
)


@needs_shared
@needs_rmath
@pytest.mark.parametrize(
    ("name", "mx_diff"), [("gsva_poisson_mxdiff_hoek", True), ("gsva_poisson_max_hoek", False)]
)
def test_gsva_poisson_on_real_counts(hoek, name, mx_diff):
    """Real PBMC counts, 8 samples; R: kcdf="Poisson", mx.diff=TRUE/FALSE. With so few samples
    many genes' log-odds tie mathematically and GSVA orders them by the last bits of R's ppois;
    with R's own ppois (libRmath) near ties are recomputed exactly and every score matches to
    rounding (5e-16 measured; 3.1e-4 with SciPy's CDF alone)."""
    assert Path(rmath.library_path()).name.startswith("libRmath.so")
    expr, sets = hoek
    diff, _ = compare(gsva(expr, sets, kcdf="poisson", mx_diff=mx_diff), name)
    assert diff.max() < 1e-4
    assert diff.max() < 1e-12


@needs_shared
def test_gsva_poisson_on_real_counts_without_rmath(hoek, monkeypatch, caplog):
    """The fallback when libRmath is missing: SciPy's CDF alone, one log line saying so; a few
    near-tied genes swap places (3.1e-4 measured), every other score is unchanged."""
    monkeypatch.setattr(rmath, "_load", lambda: None)
    rmath.warn_fallback.cache_clear()
    caplog.set_level(logging.WARNING, logger=rmath.log.name)
    rmath.log.addHandler(caplog.handler)  # configure_logging() may stop propagation
    try:
        expr, sets = hoek
        diff, _ = compare(gsva(expr, sets, kcdf="poisson"), "gsva_poisson_mxdiff_hoek")
        gsva(expr, sets, kcdf="poisson")
    finally:
        rmath.log.removeHandler(caplog.handler)
        rmath.warn_fallback.cache_clear()
    assert diff.max() < 5e-4
    assert np.median(diff) < 1e-12  # almost every score is identical
    messages = [r.getMessage() for r in caplog.records if r.name == rmath.log.name]
    assert len(set(messages)) == 1 and "r-mathlib" in messages[0]


@pytest.mark.skipif(rmath.library_path() is None, reason="libRmath (r-mathlib) is absent")
def test_ppois_is_r_bit_for_bit():
    """R 4.2.2:
    sprintf("%a", ppois(c(0, 5, 12, 30, 100, 1000), c(5.5, 5.5, 12.5, 100.5, 1000.5, 1000.5)))
    SciPy differs from every one of these in the last bits."""
    want = [
        float.fromhex(h)
        for h in (
            "0x1.0bd4a5aca7728p-8",
            "0x1.0ece6e19be63ap-1",
            "0x1.09b71eb10a38ep-1",
            "0x1.42dcdea7f3b12p-53",
            "0x1.89b02246f4aacp-972",
            "0x1.01138e4b91204p-1",
        )
    ]
    x = np.array([0.0, 5, 12, 30, 100, 1000])
    lam = np.array([5.5, 5.5, 12.5, 100.5, 1000.5, 1000.5])
    got = rmath.ppois(x, lam)
    assert got.tolist() == want
    assert got == pytest.approx(stats.poisson.cdf(x, lam), rel=1e-13)
    # broadcasting and repeated pairs (one ctypes call per distinct pair)
    grid = rmath.ppois(x[:, None], lam[None, :])
    assert grid.shape == (6, 6) and np.diag(grid).tolist() == want


def test_ppois_falls_back_to_scipy(monkeypatch):
    monkeypatch.setattr(rmath, "_load", lambda: None)
    monkeypatch.setattr(rmath, "warn_fallback", lambda: None)
    x, lam = np.array([0.0, 3.0, 7.0]), np.array([0.5, 3.5, 2.5])
    assert rmath.ppois(x, lam).tolist() == stats.poisson.cdf(x, lam).tolist()


@pytest.mark.skipif(rmath.library_path() is None, reason="libRmath (r-mathlib) is absent")
def test_poisson_near_ties_take_r_values():
    """Genes 0 and 1 hold the same counts in another order, so in samples 3 and 4 (both count 2)
    their log-odds tie mathematically; those entries are recomputed as GSVA does (R's ppois
    summed in sample order), bit for bit, where SciPy's CDF gives other last bits."""
    from stromalens.targets.scores import _gene_log_odds, _kernel_log_odds

    x = np.array([[0.0, 3, 7, 2, 2], [0.0, 7, 3, 2, 2], [40.0, 1, 9, 13, 5]])
    z = _gene_log_odds(x, "poisson")
    scipy_differs = []
    for g, j in [(0, 3), (1, 3), (0, 4), (1, 4)]:
        r_sum = scipy_sum = 0.0
        for xi in x[g]:  # sample order, as GSVA's C loop
            r_sum += rmath.ppois(x[g, j], xi + 0.5).item()
            scipy_sum += stats.poisson.cdf(x[g, j], xi + 0.5)
        assert z[g, j] == _kernel_log_odds(np.array(r_sum / 5))
        scipy_differs.append(scipy_sum != r_sum)
    assert any(scipy_differs)  # so the check above means something


def test_poisson_kernel_values():
    """F̂(y_j) = mean_i P(Pois(x_i + 0.5) ≤ y_j), checked by direct summation of the pmf."""
    from scipy import stats

    from stromalens.targets.scores import _gene_log_odds

    x = np.array([[0.0, 3.0, 7.0, 2.0, 2.0]])
    z = _gene_log_odds(x, "poisson")
    for j, y in enumerate(x[0]):
        f = np.mean([stats.poisson.pmf(np.arange(int(y) + 1), xi + 0.5).sum() for xi in x[0]])
        assert z[0, j] == pytest.approx(np.log(f / (1 - f)), rel=1e-12)


def test_gaussian_kernel_uses_gsva_lookup_table():
    """Φ is read from a 10,000-step table on [0, 10] by truncation (GSVA's precomputedCdf)."""
    from scipy import stats

    from stromalens.targets.scores import _gaussian_kernel_cdf, _gsva_normal_table

    table = _gsva_normal_table()
    v = np.array([-11.0, -0.00123, 0.0, 0.00099, 0.5, 10.0, 12.0])
    got = _gaussian_kernel_cdf(v, np.ones(1), table)
    want = [
        0.0,
        1 - stats.norm.cdf(0.001),
        0.5,
        0.5,
        stats.norm.cdf(0.5),
        stats.norm.cdf(10.0),
        1.0,
    ]
    assert got == pytest.approx(want, abs=1e-15)


# --------------------------------------------------------------------------- behaviour
def _toy(seed=0, n=20, genes=200):
    rng = np.random.default_rng(seed)
    expr = pd.DataFrame(
        rng.normal(size=(n, genes)),
        index=[f"s{i}" for i in range(n)],
        columns=[f"g{j}" for j in range(genes)],
    )
    sets = {"up": [f"g{j}" for j in range(10)], "rand": [f"g{j}" for j in range(50, 70)]}
    return expr, sets


def test_ssgsea_closed_form_equals_the_random_walk_sum():
    """The closed form equals Σ_i (P_in(i) − P_out(i)) computed step by step (Barbie 2009)."""
    expr, sets = _toy()
    ours = ssgsea(expr, sets, alpha=0.25)
    x = expr.iloc[3].to_numpy()
    ranks = np.floor(pd.Series(x).rank(method="average").to_numpy())
    order = np.argsort(-ranks, kind="stable")
    member = np.isin(np.arange(len(x)), [int(g[1:]) for g in sets["rand"]])[order]
    w = ranks[order] ** 0.25
    p_in = np.cumsum(w * member) / (w * member).sum()
    p_out = np.cumsum(~member) / (~member).sum()
    assert ours.iloc[3]["rand"] == pytest.approx((p_in - p_out).sum(), rel=1e-12)


def test_scores_rise_with_the_set_expression():
    expr, sets = _toy()
    expr.iloc[:10, :10] += 3.0  # the first ten samples up-regulate the "up" set
    for scores in (ssgsea(expr, sets), gsva(expr, sets)):
        assert scores["up"].iloc[:10].min() > scores["up"].iloc[10:].max()


def test_ssgsea_is_independent_of_chunking_and_sample_order():
    expr, sets = _toy(n=30)
    full = ssgsea(expr, sets, chunk_size=1000)
    chunked = ssgsea(expr, sets, chunk_size=7)
    pd.testing.assert_frame_equal(full, chunked)
    shuffled = ssgsea(expr.iloc[::-1], sets)
    pd.testing.assert_frame_equal(full, shuffled.loc[full.index])


def test_small_sets_are_dropped_with_a_reason():
    expr, sets = _toy()
    sets["tiny"] = ["g1", "not_a_gene"]
    with pytest.warns(
        GeneSetWarning, match=r"tiny: 1 genes found in the data, fewer than min_size=5"
    ):
        out = ssgsea(expr, sets, min_size=5)
    assert "tiny" not in out.columns and "up" in out.columns


def test_inputs_are_checked():
    expr, sets = _toy()
    with pytest.raises(ValueError, match="duplicated gene ids: g1"):
        ssgsea(expr.rename(columns={"g2": "g1"}), sets)
    bad = expr.copy()
    bad.iloc[2, 5] = np.nan
    with pytest.raises(ValueError, match="missing \\(NaN\\) values, e.g. sample 's2', gene 'g5'"):
        gsva(bad, sets)
    with pytest.raises(ValueError, match="negative values"):
        gsva(expr, sets, kcdf="poisson")
    with pytest.raises(ValueError, match="no gene set has enough genes"):
        ssgsea(expr, {"x": ["nope"]})
    with pytest.raises(ValueError, match="kcdf must be"):
        gsva(expr, sets, kcdf="kde")


def test_gene_sets_in_every_accepted_form(tmp_path):
    expr, sets = _toy()
    reference = ssgsea(expr, sets)
    gmt = tmp_path / "s.gmt"
    gmt.write_text("".join(f"{k}\tdesc\t" + "\t".join(v) + "\n" for k, v in sets.items()))
    long = pd.DataFrame([(k, g) for k, v in sets.items() for g in v], columns=["source", "target"])
    for form in (gmt, str(gmt), long):
        pd.testing.assert_frame_equal(ssgsea(expr, form), reference)


def test_anndata_input_if_installed():
    anndata = pytest.importorskip("anndata")
    expr, sets = _toy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # anndata's own deprecation chatter
        adata = anndata.AnnData(
            expr.to_numpy(),
            obs=pd.DataFrame(index=expr.index),
            var=pd.DataFrame(index=expr.columns),
        )
    pd.testing.assert_frame_equal(ssgsea(adata, sets), ssgsea(expr, sets))
