"""Deconvolution against its references: quanTIseq's own R module and MCP-counter's R package on
GSE107572, fixMixture and quanTIseq's corrections against known answers, exact recovery of
mixtures of TIL10's own profiles, and the GSE107572 flow-cytometry recovery as a floor."""

import logging
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from stromalens.correlation import pearson
from stromalens.targets.deconvolution import (
    constrained_lsq,
    deconvolve,
    fix_mixture,
    mcp_counter,
    mcpcounter_markers,
    quantile_normalise,
    til10_mrna_scaling,
    til10_removed_genes,
    til10_signature,
    til10_tumor_genes,
    tregs_correction,
)
from stromalens.targets.heterogeneity import shannon_entropy

REFERENCE = Path(__file__).parent / "reference"
SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "data"
GSE107572 = SHARED / "rnaseq" / "gse107572_finotello"
needs_gse107572 = pytest.mark.skipif(
    not GSE107572.exists(), reason="no ../shared/data/rnaseq/gse107572_finotello"
)


def _prepare():
    sys.path.insert(0, str(REFERENCE))
    import prepare_inputs

    return prepare_inputs


@needs_gse107572
@pytest.mark.parametrize(
    ("variant", "options"),
    [("rnaseq", {}), ("tumor", {"tumor": True}), ("arrays", {"arrays": True})],
)
def test_quantiseq_matches_its_reference_code_on_gse107572(variant, options):
    """Reference: quanTIseq's deconvolution module run unmodified (make_quantiseq_reference.R):
    ``Rscript quanTIseq_decon.R mix.txt out/ expr <arrays> TIL10 <tumor> TRUE lsei <variant>
    FALSE unassigned`` (limSolve 2.0.3, preprocessCore 1.60.2). Its HGNC re-annotation is
    replayed on the input (prepare_inputs.gse107572_hgnc_mapped); limSolve's lsei stops ~1e-7
    from the exact optimum that constrained_lsq finds."""
    mixture = _prepare().gse107572_hgnc_mapped()
    ours = deconvolve(mixture, method="quantiseq", **options)
    ref = pd.read_csv(REFERENCE / f"quantiseq_gse107572_{variant}.csv", index_col=0)
    assert ref.shape == ours.shape
    ref.index, ref.columns = ours.index, ours.columns  # R mangles sample names; same order
    assert np.abs(ours - ref).to_numpy().max() < 1e-6
    assert np.allclose(ours.sum(axis=1), 1.0)


@needs_gse107572
def test_mcpcounter_matches_mcpcounter_estimate_on_gse107572():
    """Reference: ``MCPcounter.estimate(log2(x + 1), featuresType = "HUGO_symbols")``
    (make_mcpcounter_reference.R, ebecht/MCPcounter 1.2.0)."""
    expr = _prepare().gse107572_expression()
    ours = deconvolve(expr, method="mcpcounter")
    ref = pd.read_csv(REFERENCE / "mcpcounter_gse107572_log2tpm1.csv", index_col=0)
    ref = ref.loc[ours.index, ours.columns]
    assert np.abs(ours - ref).to_numpy().max() < 1e-10
    assert ours.attrs["stromalens_kind"] == "scores"


def test_fix_mixture_renormalises_over_all_genes_then_anti_logs_and_quantile_normalises():
    expr = pd.DataFrame({"A": [1.0, 10.0], "B": [3.0, 30.0], "C": [4.0, 60.0]}, index=["s", "t"])
    fixed = fix_mixture(expr * 100)  # max ≥ 50: linear, only rescaled
    assert fixed.loc["s"].tolist() == pytest.approx([125000.0, 375000.0, 500000.0])
    assert fixed.loc["t"].tolist() == pytest.approx([1e5, 3e5, 6e5])
    # A gene subset is rescaled over that subset (quanTIseq's rule), not kept on the old scale.
    assert fix_mixture(expr[["A", "B"]] * 100).loc["s"].tolist() == pytest.approx([2.5e5, 7.5e5])
    # max < 50: log2 values, 2^x (not 2^x − 1), as fixMixture and CIBERSORT.R.
    logged = np.log2(expr * 100)
    pd.testing.assert_frame_equal(fix_mixture(logged), fixed)
    pd.testing.assert_frame_equal(fix_mixture(expr, antilog=False), fix_mixture(expr * 100))


def test_quantile_normalise_matches_preprocesscore():
    """``preprocessCore::normalize.quantiles(matrix(c(1,2,2,4,7, 3,1,5,5,0, 2,2,2,9,1), 5))``
    (preprocessCore 1.60.2): a pair of ties takes the mean of its two references, a triple the
    reference at its middle rank."""
    x = pd.DataFrame([[1, 2, 2, 4, 7], [3, 1, 5, 5, 0], [2, 2, 2, 9, 1]], dtype=float)
    expected = np.array(
        [
            [2 / 3, 2.0, 2.0, 11 / 3, 7.0],
            [7 / 3, 5 / 3, 16 / 3, 16 / 3, 2 / 3],
            [7 / 3, 7 / 3, 7 / 3, 7.0, 2 / 3],
        ]
    )
    assert np.abs(quantile_normalise(x).to_numpy() - expected).max() < 1e-14


def _til10_mixtures(fractions: np.ndarray, corrupt: list[str] | None = None) -> pd.DataFrame:
    """Mixtures y = S f of TIL10's own profiles, plus one filler gene that brings every sample to
    1e6, so that fixMixture leaves them unchanged."""
    sig = til10_signature()
    y = pd.DataFrame(fractions @ sig.T.to_numpy(), columns=sig.index)
    if corrupt:
        y[corrupt] *= 50.0  # what a tumour expressing these genes adds
    assert (y.sum(axis=1) < 1e6).all()
    y["FILLER"] = 1e6 - y.sum(axis=1)
    y.index = [f"m{i}" for i in range(len(y))]
    return y


def _expected_cells(fractions: np.ndarray) -> np.ndarray:
    """quanTIseq's mRNA scaling of known mRNA shares f: c = (f/m)/Σ(f/m)·Σf."""
    m = til10_mrna_scaling().loc[til10_signature().columns].to_numpy()
    cells = fractions / m
    return cells / cells.sum(axis=1, keepdims=True) * fractions.sum(axis=1, keepdims=True)


def _known_shares(seed: int, n: int = 6) -> np.ndarray:
    rng = np.random.default_rng(seed)
    shares = rng.dirichlet(np.ones(10), size=n) * rng.uniform(0.3, 0.9, (n, 1))
    tregs = list(til10_signature().columns).index("Tregs")
    shares[:, tregs] = np.maximum(shares[:, tregs], 0.05)  # above 0.02: no Tregs correction
    return shares


def test_quantiseq_recovers_mixtures_of_til10_profiles_exactly():
    shares = _known_shares(0)
    out = deconvolve(_til10_mixtures(shares), method="quantiseq")
    cells = _expected_cells(shares)
    assert np.abs(out.iloc[:, :10].to_numpy() - cells).max() < 1e-9
    assert np.abs(out["other"].to_numpy() - (1 - shares.sum(axis=1))).max() < 1e-9
    # Linear-scale TPM given as log2 values: the same answer.
    logged = np.log2(_til10_mixtures(shares))
    assert np.abs(deconvolve(logged, method="quantiseq") - out).to_numpy().max() < 1e-8


def test_quantiseq_tumor_option_removes_the_tumour_expressed_genes():
    removed = set(til10_removed_genes())
    tumour_genes = [g for g in til10_tumor_genes() if g in til10_signature().index]
    tumour_genes = [g for g in tumour_genes if g not in removed]
    assert len(tumour_genes) == 15  # quanTIseq: "Removing 15 genes with high expression in tumors"
    shares = _known_shares(1)
    mixture = _til10_mixtures(shares, corrupt=tumour_genes)
    cells = _expected_cells(shares)
    kept = deconvolve(mixture, method="quantiseq", tumor=True)
    assert np.abs(kept.iloc[:, :10].to_numpy() - cells).max() < 1e-9
    fooled = deconvolve(mixture, method="quantiseq")
    assert np.abs(fooled.iloc[:, :10].to_numpy() - cells).max() > 0.01


def test_tregs_correction_known_answer():
    """quanTIseq_decon.R: only rows with Tregs < 0.02 change; Tregs ← (T1 + T2)/2, then CD4 loses
    (T2 + Tregs_new)/2, floored at 0."""
    full = pd.DataFrame(
        {"T.cells.CD4": [0.30, 0.30, 0.01], "Tregs": [0.05, 0.01, 0.0], "other": [0.65] * 3}
    )
    without = pd.DataFrame({"Tregs": [0.20, 0.09, 0.10], "other": [0.5] * 3})
    out = tregs_correction(full, without, cd4="T.cells.CD4", tregs="Tregs")
    assert out.loc[0].tolist() == pytest.approx([0.30, 0.05, 0.65])
    assert out.loc[1, "Tregs"] == pytest.approx(0.05)
    assert out.loc[1, "T.cells.CD4"] == pytest.approx(0.30 - (0.09 + 0.05) / 2)
    assert out.loc[2].tolist() == pytest.approx([0.0, 0.05, 0.65])


@pytest.mark.parametrize("seed", range(4))
def test_constrained_lsq_is_exact_at_tpm_scale(seed):
    sys.path.insert(0, str(Path(__file__).parent))
    from test_deconvolution import _reference_constrained_lsq

    rng = np.random.default_rng(seed)
    s = np.exp(rng.normal(5, 1, (40, 5)))
    y = s @ rng.dirichlet(np.ones(5)) * (1.5 if seed % 2 else 0.6) * rng.lognormal(0, 0.1, 40)
    ours, ref = constrained_lsq(y, s), _reference_constrained_lsq(y, s)
    assert np.abs(ours - ref).max() < 1e-10
    assert ours.min() >= 0 and ours.sum() <= 1 + 1e-12


def test_nusvr_quantile_normalisation_is_cibersorts_qn_before_subsetting():
    rng = np.random.default_rng(4)
    sig = til10_signature()
    genes = [*sig.index, *(f"x{i}" for i in range(300))]
    expr = pd.DataFrame(np.exp(rng.normal(3, 2, (4, len(genes)))), columns=genes)
    with_qn = deconvolve(expr, method="nusvr", quantile_normalisation=True)
    by_hand = deconvolve(quantile_normalise(expr), method="nusvr")
    pd.testing.assert_frame_equal(with_qn, by_hand)
    assert not np.allclose(with_qn, deconvolve(expr, method="nusvr"))


def test_mcpcounter_scores_by_hand_and_what_they_refuse(caplog):
    markers = pd.DataFrame(
        {"gene": ["A", "B", "C", "D", "E"], "population": ["P", "P", "Q", "R", "R"]}
    )
    expr = pd.DataFrame({"A": [3.0, 7.0], "B": [1.0, 15.0], "C": [0.0, 255.0]}, index=["s", "t"])
    with caplog.at_level(logging.WARNING, logger="stromalens.targets.deconvolution"):
        scores = mcp_counter(expr, markers=markers)
    assert "no marker in the data for R" in caplog.text
    # P: mean(log2(3 + 1), log2(1 + 1)) = 1.5 and mean(log2 8, log2 16) = 3.5; Q: log2(1), log2(256)
    assert scores.to_dict() == {"P": {"s": 1.5, "t": 3.5}, "Q": {"s": 0.0, "t": 8.0}}
    assert scores.attrs["markers_found"] == {"P": 2, "Q": 1, "R": 0}
    with pytest.raises(ValueError, match="not fractions"):
        shannon_entropy(scores)
    with pytest.raises(ValueError, match="none of the 5 MCP-counter marker genes"):
        mcp_counter(expr.rename(columns=str.lower), markers=markers)
    with pytest.raises(ValueError, match=r"P 1 of 2; Q 0 of 1; R 0 of 2 — 2 of 3 populations"):
        mcp_counter(expr.rename(columns={"C": "Z"}).drop(columns="B"), markers=markers)
    assert set(mcpcounter_markers()["population"]) >= {"T cells", "Fibroblasts", "B lineage"}


def test_a_small_panel_is_refused_with_what_is_missing_and_what_to_do():
    sig = til10_signature().drop(index=til10_removed_genes())
    panel = pd.DataFrame(
        np.full((3, 9 + 200), 100.0), columns=[*sig.index[:9], *(f"p{i}" for i in range(200))]
    )
    for method in ("quantiseq", "nusvr", "lsq"):
        with pytest.raises(ValueError, match=r"only 9 of the signature's 153 genes.*mcpcounter"):
            deconvolve(panel, method=method)


@needs_gse107572
@pytest.mark.parametrize(("method", "floor"), [("quantiseq", 0.65), ("nusvr", 0.58)])
def test_gse107572_flow_cytometry_recovery_floor(method, floor):
    """Regression floor on the ../shared/data table (measured: quanTIseq 0.67, ν-SVR 0.61 mean
    Pearson r over the 8 cell types; benchmarks/deconvolution_gse107572.py)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
    import deconvolution_gse107572 as bench

    expr, facs = bench.load(SHARED, None)
    estimate = deconvolve(expr, method=method)
    r = [pearson(estimate.loc[facs.index, col], facs[f]) for f, col in bench.TIL10_OF_FACS.items()]
    assert np.mean(r) >= floor


@pytest.mark.skipif(not (SHARED / "rnaseq" / "hoek_pbmc").exists(), reason="no ../shared/data")
def test_nusvr_with_quantile_normalisation_matches_r():
    """Reference: make_nusvr_qn_reference.R (preprocessCore::normalize.quantiles over all genes,
    then e1071's ν-SVR, as CIBERSORT.R with QN = TRUE). libsvm stops at its 1e-3 tolerance."""
    prepare = _prepare()
    ours = deconvolve(prepare.hoek_tpm(), method="nusvr", quantile_normalisation=True)
    ref = pd.read_csv(REFERENCE / "nusvr_qn_hoek_til10.csv", index_col=0).T
    ref = ref.loc[ours.index, ours.columns]
    assert np.abs(ours - ref).to_numpy().max() < 1e-3
