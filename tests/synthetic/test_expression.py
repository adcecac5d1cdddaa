"""The cell-mixture RNA-seq: fractions, programmes following the latents, realistic counts."""

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from stromalens.synthetic import biology, expression


@pytest.fixture(scope="module")
def data():
    patients = biology.simulate_patients(400, seed=21)
    patients["rna_sample"] = [f"S{i}" for i in range(len(patients))]
    fractions = expression.simulate_fractions(patients, seed=21)
    batch = {s: biology.make_site_effects(s, 0).rna_batch_sd for s in biology.SITES}
    counts, tpm = expression.simulate_expression(patients, fractions, batch, seed=21)
    return patients, fractions, counts, tpm


def test_fractions_are_compositions_and_h_sets_the_immune_evenness(data):
    """h sets the evenness of the immune composition (the cell types a deconvolution resolves),
    not the immune share; a enlarges the CAF compartment (scipy.stats.pearsonr as reference)."""
    patients, fractions, _, _ = data
    assert np.allclose(fractions.sum(axis=1), 1.0)
    assert (fractions.to_numpy() > 0).all()
    assert len(expression.IMMUNE_TYPES) >= 8
    immune = fractions[list(expression.IMMUNE_TYPES)]
    within = expression.shannon_entropy(immune.div(immune.sum(axis=1), axis=0))
    assert stats.pearsonr(within, patients["h"])[0] > 0.8
    # The immune share follows a (CAFs crowd it out), not h: nothing of h is left once a is.
    share = immune.sum(axis=1)
    residual = share - np.polyval(np.polyfit(patients["a"], share, 1), patients["a"])
    assert abs(stats.pearsonr(residual, patients["h"])[0]) < 0.15
    assert stats.pearsonr(fractions["CAF"], patients["a"])[0] > 0.4


def test_fraction_log_ratios_recover_the_noise_and_the_crosstalk_loadings():
    """Known answers of the logistic-normal model (Aitchison 1986, ch. 6): the additive
    log-ratio log(q_immune/q_Tumour) = κ_immune − κ_Tumour + δ − δ' has SD 0.15·√2, and
    exp(0.45 h) · log(π_c/π_M2) = μ_c − μ_M2 + β_c b + noise, so its least-squares slope on b
    (numpy.polyfit as reference) is β_c: b recruits the minor receiving types, not M2."""
    patients = biology.simulate_patients(4000, seed=3)
    fractions = expression.simulate_fractions(patients, seed=3)
    immune = fractions[list(expression.IMMUNE_TYPES)]
    share = np.log(immune.sum(axis=1) / fractions["Tumour"])
    logits = expression._COMPARTMENT_LOGITS
    assert share.mean() == pytest.approx(logits["immune"] - logits["Tumour"], abs=0.02)
    assert share.std() == pytest.approx(expression._COMPARTMENT_NOISE_SD * np.sqrt(2), rel=0.05)
    assert expression._COMPARTMENT_NOISE_SD == 0.15
    temperature = np.exp(expression._TEMPERATURE_SLOPE * patients["h"])
    loadings = expression._IMMUNE_B_LOADING
    assert loadings.get("Macrophages.M2", 0.0) == 0.0  # the commonest type is not recruited
    assert sum(v > 0 for v in loadings.values()) >= 4
    for cell_type in expression.IMMUNE_TYPES:
        ratio = np.log(immune[cell_type] / immune["Macrophages.M2"]) * temperature
        slope, intercept = np.polyfit(patients["b"], ratio, 1)
        assert slope == pytest.approx(loadings.get(cell_type, 0.0), abs=0.03), cell_type


def test_crosstalk_evens_out_the_immune_composition():
    """At fixed h, a higher b gives a more even immune composition: the entropy of the
    noise-free softmax(μ + β b) rises with b (scipy.stats.entropy as reference)."""
    mu = np.array([expression._IMMUNE_LOGITS[c] for c in expression.IMMUNE_TYPES])
    beta = np.array([expression._IMMUNE_B_LOADING.get(c, 0.0) for c in expression.IMMUNE_TYPES])
    entropy = [stats.entropy(np.exp(mu + beta * b)) for b in np.linspace(-2.5, 2.5, 11)]
    assert (np.diff(entropy) > 0).all()


def test_tissue_immune_profiles_resemble_but_are_not_til10():
    """The generator's TIL10-gene profiles depart from TIL10 by the documented log2 SDs
    (per gene and type, and a shared per-gene shift) and stay immune-specific."""
    from stromalens.targets.deconvolution import til10_signature

    til10 = til10_signature()
    profiles = expression.reference_profiles(seed=0)
    immune = list(expression.IMMUNE_TYPES)
    expressed = (til10[immune] > 1.0).all(axis=1)
    generated = profiles.loc[til10.index[expressed], immune]
    log_ratio = np.log2(generated / til10.loc[expressed, immune])
    # Between-type departures, the shared shift removed (TPM rescaling is one constant per type).
    centred = log_ratio.sub(log_ratio.mean(axis=1), axis=0)
    sd = expression.TISSUE_PROFILE_SD * np.sqrt(1 - 1 / len(immune))
    assert centred.to_numpy().std() == pytest.approx(sd, rel=0.1)
    assert not np.allclose(generated, til10.loc[expressed, immune])
    # Still immune genes: stromal and tumour cells express them far less.
    median_immune = profiles.loc[til10.index, immune].median(axis=1)
    median_other = profiles.loc[til10.index, ["CAF", "Tumour", "Endothelial"]].median(axis=1)
    assert (median_other < median_immune).mean() > 0.9


def test_saturating_response_known_values():
    # g(x) = (1 − e^(−λx))/λ: g(0) = 0, g'(0) = 1; λ = 0 is the identity.
    x = np.array([-1.0, 0.0, 1.0])
    assert expression.saturating(x, 0.0).tolist() == x.tolist()
    assert expression.saturating(x, 0.6) == pytest.approx(-np.expm1(-0.6 * x) / 0.6)
    assert (np.diff(expression.saturating(np.linspace(-3, 3, 7), 0.6)) > 0).all()


def test_shannon_entropy_known_values():
    uniform = pd.DataFrame([[0.25] * 4, [1.0, 0.0, 0.0, 0.0]])
    # H(uniform over 4) = log 4 (scipy.stats.entropy gives the same); H(point mass) = 0.
    assert expression.shannon_entropy(uniform).tolist() == pytest.approx(
        [stats.entropy([0.25] * 4), 0.0]
    )


def test_counts_are_realistic(data):
    _, _, counts, tpm = data
    values = counts.to_numpy()
    assert values.dtype.kind == "i" and (values >= 0).all()
    assert 0.01 < (values == 0).mean() < 0.5  # zeros, but not mostly zeros
    per_gene_ties = np.mean([len(np.unique(v)) < len(v) for v in values[:500]])
    assert per_gene_ties > 0.1  # ties among samples, as in real counts
    assert np.allclose(tpm.sum(axis=0), 1e6, rtol=1e-4)
    # Over-dispersion: variance exceeds the Poisson variance for well-expressed genes.
    mean = values.mean(axis=1)
    var = values.var(axis=1)
    expressed = mean > 100
    assert np.median(var[expressed] / mean[expressed]) > 5


def test_real_gene_symbols_and_orientation(data):
    _, _, counts, _ = data
    for gene in (
        "HSPA5",
        "XBP1",
        "COL1A1",
        "FAP",
        "CXCL12",
        "CXCR4",
        "CCL2",
        "CCR2",
        "PTPRC",
        "CD8A",
        "FOXP3",
        "TBXT",
    ):
        assert gene in counts.index
    assert counts.index.is_unique
    assert counts.columns.tolist()[:2] == ["S0", "S1"]  # genes × samples


def _log(tpm):
    return np.log2(tpm + 1.0)


def test_programmes_follow_their_latents(data):
    patients, _, _, tpm = data
    log = _log(tpm)
    upr = log.loc[list(expression.UPR_GENES)].mean()
    caf_anchor = log.loc[["COL1A1", "COL1A2", "DCN", "LUM", "FAP"]].mean()
    ligands = log.loc[[lig for lig, _, _ in expression.LR_AXES]].mean()
    receptors = log.loc[[rec for _, rec, _ in expression.LR_AXES]].mean()
    assert stats.pearsonr(upr, patients["a"])[0] > 0.2
    assert stats.pearsonr(caf_anchor, patients["a"])[0] > 0.4
    assert stats.pearsonr(ligands, patients["b"])[0] > 0.5
    assert stats.pearsonr(receptors, patients["b"])[0] > 0.4
    # Tumour-intrinsic ER stress confounds the UPR genes: it is why CAF anchoring matters.
    assert stats.pearsonr(upr, patients["u"])[0] > 0.3


def test_site_batch_effect_present(data):
    patients, _, _, tpm = data
    log = _log(tpm)
    expressed = log.loc[log.mean(axis=1) > 3].iloc[:300]
    p_values = [
        stats.f_oneway(*[row[patients["site"].to_numpy() == s] for s in biology.SITES]).pvalue
        for _, row in expressed.iterrows()
    ]
    # Under no batch effect ~5% of genes would reach p < 0.05.
    assert np.mean(np.array(p_values) < 0.05) > 0.3


def test_reference_profiles_are_tpm_and_marker_specific():
    profiles = expression.reference_profiles(seed=0)
    assert np.allclose(profiles.sum(axis=0), 1e6)
    assert list(profiles.columns) == list(expression.CELL_TYPES)
    for cell_type, markers in expression.MARKERS.items():
        own = profiles.loc[list(markers), cell_type]
        assert (own > 10 * profiles.loc[list(markers)].median(axis=1)).mean() > 0.5, cell_type


def test_signature_matrix_is_a_discriminative_subset():
    signature = expression.signature_matrix(seed=0)
    assert 50 < len(signature) < 1000
    assert list(signature.columns) == list(expression.CELL_TYPES)
    # Every cell type has genes where it stands out (a usable signature).
    log = np.log2(signature + 1)
    top = log.idxmax(axis=1).value_counts()
    assert set(top.index) == set(expression.CELL_TYPES)


@pytest.fixture(scope="module")
def scored():
    """A small development cohort's targets, computed as the study's targets stage does: the
    shipped resources (curated ERS–CAF set, TIL10), not the generator's own definitions."""
    from stromalens.targets.pipeline import compute_targets

    patients = biology.simulate_patients(150, seed=5)
    patients["rna_sample"] = list(patients.index)
    fractions = expression.simulate_fractions(patients, seed=5)
    batch = {s: biology.make_site_effects(s, 5).rna_batch_sd for s in biology.SITES}
    _, tpm = expression.simulate_expression(patients, fractions, batch, seed=5)
    targets = compute_targets(tpm.T, n_boot=50).targets
    return targets.join(patients[["a", "b", "h"]])


def test_target_correlations_have_the_planted_signs(scored):
    """Fig. 1 of the study: all three targets correlate positively (numpy's corrcoef)."""
    r = scored[["ers_caf", "lr", "heterogeneity"]].corr()
    assert r.loc["ers_caf", "lr"] > 0.2
    assert r.loc["ers_caf", "heterogeneity"] > 0
    assert r.loc["lr", "heterogeneity"] > 0


def test_heterogeneity_rises_with_the_latent_h(scored):
    assert np.corrcoef(scored["heterogeneity"], scored["h"])[0, 1] > 0.5
    thirds = pd.qcut(scored["h"], 3, labels=False)
    means = scored.groupby(thirds)["heterogeneity"].mean()
    assert means.is_monotonic_increasing, means
