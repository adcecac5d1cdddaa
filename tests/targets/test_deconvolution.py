"""Deconvolution: exact recovery of known mixtures, an exact constrained-LS reference, real PBMC
data, and the signature / CIBERSORTx readers."""

import itertools
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from stromalens.targets.deconvolution import (
    constrained_lsq,
    deconvolve,
    read_cibersortx,
    read_signature,
    til10_mrna_scaling,
    til10_signature,
)

SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "data"


def _signature(rng, genes=120, types=5) -> pd.DataFrame:
    sig = np.exp(rng.normal(2.0, 1.0, (genes, types)))
    for k in range(types):  # markers
        sig[k * 10 : (k + 1) * 10, k] *= 30
    return pd.DataFrame(
        sig, index=[f"g{i}" for i in range(genes)], columns=[f"type{k}" for k in range(types)]
    )


def test_lsq_recovers_noiseless_mixtures_exactly():
    rng = np.random.default_rng(0)
    sig = _signature(rng)
    truth = rng.dirichlet(np.ones(5), size=8) * 0.8  # 20% of the mRNA from uncharacterised cells
    sig = sig * 1000  # TPM-like scale
    expr = pd.DataFrame(
        truth @ sig.T.to_numpy(), index=[f"s{i}" for i in range(8)], columns=sig.index
    )
    # y = S f exactly with Σf = 0.8 < 1: the sum constraint is inactive and NNLS is exact.
    fractions = deconvolve(expr, method="lsq", signature=sig)
    assert np.abs(fractions.iloc[:, :5].to_numpy() - truth).max() < 1e-8
    assert np.allclose(fractions["other"], 0.2)


def test_nusvr_recovers_noiseless_mixtures():
    rng = np.random.default_rng(1)
    sig = _signature(rng)
    truth = rng.dirichlet(np.ones(5), size=10)
    expr = pd.DataFrame(
        truth @ sig.T.to_numpy() * 100, index=[f"s{i}" for i in range(10)], columns=sig.index
    )
    fractions = deconvolve(expr, method="nusvr", signature=sig)
    assert np.allclose(fractions.sum(axis=1), 1.0)
    assert np.abs(fractions.to_numpy() - truth).max() < 0.02


def _reference_constrained_lsq(y, s):
    """Exact reference: enumerate active sets of {f_k ≥ 0} and {Σf ≤ 1}, solve each equality-
    constrained least-squares problem through its KKT system, keep the best feasible point."""
    k = s.shape[1]
    best, best_value = None, np.inf
    for n_zero in range(k + 1):
        for zeros in itertools.combinations(range(k), n_zero):
            free = [j for j in range(k) if j not in zeros]
            for sum_active in (False, True):
                f = np.zeros(k)
                if free:
                    a = s[:, free]
                    if sum_active:
                        kkt = np.block(
                            [
                                [a.T @ a, np.ones((len(free), 1))],
                                [np.ones((1, len(free))), np.zeros((1, 1))],
                            ]
                        )
                        rhs = np.concatenate([a.T @ y, [1.0]])
                        f[free] = np.linalg.lstsq(kkt, rhs, rcond=None)[0][:-1]
                    else:
                        f[free] = np.linalg.lstsq(a, y, rcond=None)[0]
                if (f >= -1e-12).all() and f.sum() <= 1 + 1e-12:
                    value = np.sum((s @ f - y) ** 2)
                    if value < best_value:
                        best, best_value = f, value
    return best


@pytest.mark.parametrize("seed", range(6))
def test_constrained_lsq_matches_exhaustive_active_sets(seed):
    rng = np.random.default_rng(seed)
    s = np.exp(rng.normal(size=(30, 4)))
    # Half the cases push the unconstrained solution above Σf = 1.
    y = s @ rng.dirichlet(np.ones(4)) * (1.6 if seed % 2 else 0.7) + rng.normal(0, 0.05, 30)
    ours = constrained_lsq(y, s)
    ref = _reference_constrained_lsq(y, s)
    assert np.sum((s @ ours - y) ** 2) <= np.sum((s @ ref - y) ** 2) + 1e-9
    assert np.abs(ours - ref).max() < 1e-5
    assert ours.min() >= 0 and ours.sum() <= 1 + 1e-9


def test_mrna_scaling_turns_mrna_shares_into_cell_fractions():
    rng = np.random.default_rng(2)
    sig = _signature(rng, types=3)
    cells = np.array([0.5, 0.3, 0.2])
    mrna = np.array([2.0, 1.0, 0.5])
    shares = cells * mrna / (cells * mrna).sum()  # what the bulk sees
    expr = pd.DataFrame([shares @ sig.T.to_numpy()], index=["s"], columns=sig.index)
    out = deconvolve(
        expr, method="lsq", signature=sig, mrna_scaling=dict(zip(sig.columns, mrna, strict=True))
    )
    assert out.iloc[0, :3].to_numpy() == pytest.approx(cells, abs=1e-6)


@pytest.mark.skipif(not (SHARED / "rnaseq" / "hoek_pbmc").exists(), reason="no ../shared/data")
@pytest.mark.parametrize("method", ["nusvr", "lsq"])
def test_real_pbmc_with_til10_is_biologically_plausible(method):
    """Hoek 2015 PBMC: blood mononuclear cells are mostly T cells, NK, B cells and monocytes;
    PBMC preparation removes neutrophils, and blood holds no tissue macrophages."""
    tpm = pd.read_csv(
        SHARED / "rnaseq" / "hoek_pbmc" / "bulk_mat_hoek_pbmc_tpm.tsv.gz", sep="\t", index_col=0
    )
    tpm = tpm.loc[~tpm.index.duplicated()].clip(lower=0).T
    fractions = deconvolve(tpm, method=method)
    t_cells = fractions[["T.cells.CD4", "T.cells.CD8", "Tregs"]].sum(axis=1)
    lymph_mono = t_cells + fractions[["NK.cells", "B.cells", "Monocytes"]].sum(axis=1)
    assert (t_cells > 0.25).all()
    assert (lymph_mono > fractions["Neutrophils"] * 5).all()
    assert (fractions[["Macrophages.M1", "Macrophages.M2"]].sum(axis=1) < 0.2).all()
    # The two methods agree on the dominant populations.
    if method == "lsq":
        other = deconvolve(tpm, method="nusvr")
        assert np.corrcoef(other["T.cells.CD4"], fractions["T.cells.CD4"])[0, 1] > 0.5


def test_til10_resources():
    sig = til10_signature()
    assert sig.shape == (170, 10)
    assert set(til10_mrna_scaling().index) == set(sig.columns)


def test_signature_and_cibersortx_readers(tmp_path):
    sig = til10_signature().iloc[:30, :4]
    path = tmp_path / "lm.txt"
    sig.to_csv(path, sep="\t")
    pd.testing.assert_frame_equal(read_signature(path), sig)
    bad = tmp_path / "bad.txt"
    sig.assign(**{sig.columns[0]: -1.0}).to_csv(bad, sep="\t")
    with pytest.raises(ValueError, match="non-negative"):
        read_signature(bad)
    export = pd.DataFrame(
        {
            "Mixture": ["s1", "s2"],
            "B cells naive": [0.2, 0.1],
            "T cells CD8": [0.8, 0.9],
            "P-value": [0.0, 0.01],
            "Correlation": [0.9, 0.8],
            "RMSE": [0.5, 0.6],
        }
    )
    csx = tmp_path / "CIBERSORTx_Results.txt"
    export.to_csv(csx, sep="\t", index=False)
    fractions = read_cibersortx(csx)
    assert list(fractions.columns) == ["B cells naive", "T cells CD8"]
    assert fractions.loc["s2", "T cells CD8"] == 0.9


def test_deconvolution_input_errors():
    rng = np.random.default_rng(3)
    sig = _signature(rng)
    expr = pd.DataFrame(np.exp(rng.normal(3, 1, (3, 120))), columns=sig.index)
    with pytest.raises(ValueError, match="method must be"):
        deconvolve(expr, method="cibersortx", signature=sig)
    with pytest.raises(ValueError, match="negative values"):
        deconvolve(-expr, signature=sig, antilog=False)
    with pytest.raises(ValueError, match="negative values"):
        deconvolve(expr.assign(g0=-1.0) * 100, signature=sig)  # linear (max ≥ 50) with negatives
    with pytest.raises(ValueError, match="signature's 120 genes are in the expression"):
        deconvolve(expr.rename(columns=lambda g: g + "_x"), signature=sig)
    with pytest.raises(ValueError, match="method must be one of"):
        deconvolve(expr, method="svr", signature=sig)


def test_log2_input_is_anti_logged_as_the_references_do():
    """quanTIseq's fixMixture and CIBERSORT.R: ``if (max(Y) < 50) Y <- 2^Y``."""
    rng = np.random.default_rng(3)
    sig = _signature(rng)
    expr = pd.DataFrame(np.exp(rng.normal(5, 1.0, (3, 120))), columns=sig.index)
    assert expr.to_numpy().max() > 50 > np.log2(expr).to_numpy().max()
    for method in ("lsq", "nusvr", "quantiseq"):
        pd.testing.assert_frame_equal(
            deconvolve(np.log2(expr), method=method, signature=sig),
            deconvolve(expr, method=method, signature=sig),
            atol=1e-6,
        )
    with pytest.raises(ValueError, match="antilog must be"):
        deconvolve(expr, signature=sig, antilog="yes")


@pytest.mark.skipif(not (SHARED / "rnaseq" / "hoek_pbmc").exists(), reason="no ../shared/data")
def test_nusvr_matches_the_cibersort_algorithm_in_r():
    """Reference: reference/make_nusvr_reference.R (e1071::svm nu-regression, linear, ν grid).
    Both libsvm builds stop at the same tolerance (1e-3), not at the exact optimum, so weights
    agree to ~4e-4 (measured), not to rounding."""
    import sys

    sys.path.insert(0, str(Path(__file__).parent / "reference"))
    import prepare_inputs

    signature, mixture = prepare_inputs.til10_hoek_inputs()
    ours = deconvolve(mixture, method="nusvr", signature=signature, remove_genes=[])
    ref = pd.read_csv(
        Path(__file__).parent / "reference" / "nusvr_hoek_til10.csv", index_col=0
    ).T.loc[ours.index, ours.columns]
    assert np.abs(ours - ref).to_numpy().max() < 1e-3
