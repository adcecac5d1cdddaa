"""Bulk RNA-seq of the synthetic cohort from a cell-mixture model.

Each sample is a mixture of pure cell-type profiles,

    E[x_ig] ∝ Σ_c f_ic · m_c · r_cg(i),

where ``f_ic`` are the cell (number) fractions, ``m_c`` the mRNA content per cell of type c and
``r_cg(i)`` the expression profile of type c, modulated in patient i by the latent biology:

* an ER-stress / hypoxia programme is switched on in CAFs in proportion to ``a``
  (and, independently, in tumour cells by the nuisance latent ``u``),
* the ligands of the ERS–CAF → immune axes rise in CAFs, and their receptors in the receiving
  immune types, with ``b`` — with diminishing returns, log2 FC ∝ (1 − e^(−0.6 b))/0.6
  (:func:`saturating`), so that the product of scaled ligand and receptor expression an S_LR
  score takes stays about as symmetric as ``b`` (a log-linear response makes it right-skewed),
* the immune composition is a softmax whose temperature rises with ``h``, so the Shannon
  entropy of the immune types (what a deconvolution resolves) follows ``h``
  (:func:`simulate_fractions`); the crosstalk ``b`` recruits several minor receiving types
  (monocytes, Tregs, B, NK and dendritic cells), each modestly, and not the commonest one (M2
  macrophages), so crosstalk widens the infiltrate instead of letting one type dominate it.
  A recruitment of the dominant receiver would make the composition less even as ``b`` rises,
  and with it every crosstalk score that weights receivers by their fractions would move
  against the entropy — an anti-coupling the study's r(LR, H) = 0.27 does not show,
* the compartments' own logit noise is small (SD 0.15): a wider logistic-normal noise makes
  the immune share right-skewed, and a crosstalk score carries that share twice (in the
  receiving fractions and in the receptors' bulk expression), so LR came out right-skewed
  (skew 0.7–1.3) where the study's is roughly symmetric; the share still varies, between 17%
  and 32% (5th–95th centile), about 40% of its variance from ``a`` (CAFs crowd it out),
* the immune cells' profiles of the TIL10 genes resemble TIL10 with tissue-versus-blood
  departures (:func:`tissue_immune_profiles`), so a TIL10 deconvolution works about as well as
  on real tissue, without seeing the generator's profiles.

Counts are drawn from a gamma–Poisson (negative binomial) with gene lengths and library sizes,
so the table has the zeros, ties and over-dispersion of real data; TPM are computed from the
counts (Wagner, Kin & Lynch 2012, Theory Biosci 131:281).
"""

from __future__ import annotations

from functools import lru_cache
from importlib import resources

import numpy as np
import pandas as pd

#: Non-immune cell types, then the ten immune types of the quanTIseq TIL10 signature (same names).
CELL_TYPES: tuple[str, ...] = (
    "CAF",
    "Tumour",
    "Endothelial",
    "B.cells",
    "Macrophages.M1",
    "Macrophages.M2",
    "Monocytes",
    "Neutrophils",
    "NK.cells",
    "T.cells.CD4",
    "T.cells.CD8",
    "Tregs",
    "Dendritic.cells",
)
IMMUNE_TYPES: tuple[str, ...] = CELL_TYPES[3:]

#: Canonical markers of each cell type (highly and specifically expressed in it).
MARKERS: dict[str, tuple[str, ...]] = {
    "CAF": (
        "COL1A1",
        "COL1A2",
        "COL3A1",
        "DCN",
        "LUM",
        "PDGFRB",
        "PDGFRA",
        "FAP",
        "ACTA2",
        "POSTN",
        "THY1",
        "FN1",
        "SPARC",
        "MMP2",
        "TAGLN",
        "CTHRC1",
        "COL6A3",
    ),
    "Tumour": (
        "TBXT",
        "KRT8",
        "KRT18",
        "KRT19",
        "SOX9",
        "CD24",
        "ACAN",
        "COL2A1",
        "SOX5",
        "SOX6",
        "LGALS3",
        "S100B",
    ),
    "Endothelial": ("PECAM1", "VWF", "CDH5", "KDR", "CLDN5", "ESAM", "EMCN", "TEK", "PLVAP"),
    "B.cells": ("CD19", "MS4A1", "CD79A", "CD79B", "PAX5", "BANK1", "FCRL1", "CD22"),
    "Macrophages.M1": ("CD80", "CD86", "IL1B", "TNF", "CXCL9", "CXCL10", "IDO1"),
    "Macrophages.M2": ("CD163", "MRC1", "MS4A4A", "F13A1", "STAB1", "CD209", "FOLR2"),
    "Monocytes": ("CD14", "LYZ", "FCN1", "S100A8", "S100A9", "VCAN"),
    "Neutrophils": ("CSF3R", "FCGR3B", "CXCR2", "FPR1", "MNDA", "CMTM2"),
    "NK.cells": ("NCAM1", "KLRD1", "KLRF1", "NKG7", "GNLY", "PRF1", "SH2D1B"),
    "T.cells.CD4": ("CD4", "CD3E", "CD3D", "IL7R", "CCR7", "CD40LG"),
    "T.cells.CD8": ("CD8A", "CD8B", "CD3E", "CD3D", "GZMK", "GZMH", "CRTAM"),
    "Tregs": ("FOXP3", "IL2RA", "CTLA4", "IKZF2", "CD3E", "CD4"),
    "Dendritic.cells": ("CD1C", "CLEC10A", "FCER1A", "CLEC9A", "XCR1", "LAMP3"),
}
#: Pan-leukocyte genes expressed by every immune type.
LEUKOCYTE_GENES: tuple[str, ...] = ("PTPRC", "CORO1A", "LCP1")

#: ER-stress / unfolded-protein-response core, switched on in CAFs by a (and tumour cells by u).
UPR_GENES: tuple[str, ...] = (
    "HSPA5",
    "XBP1",
    "ATF6",
    "ERN1",
    "EIF2AK3",
    "ATF4",
    "DDIT3",
    "HERPUD1",
    "DNAJB9",
    "HSP90B1",
    "HYOU1",
    "CALR",
    "PDIA3",
    "PDIA4",
    "PDIA6",
    "SDF2L1",
    "CRELD2",
    "MANF",
    "ERO1A",
)
#: Hypoxia / early-response genes reported for chordoma ERS–CAFs; switched on in CAFs by a.
HYPOXIA_GENES: tuple[str, ...] = ("IER2", "VEGFA", "ADM", "BNIP3", "NDRG1", "GMFG")

#: ERS–CAF → immune axes: (ligand in CAFs, receptor, receiving immune types).
LR_AXES: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("CXCL12", "CXCR4", ("T.cells.CD4", "T.cells.CD8", "B.cells", "Tregs")),
    ("CCL2", "CCR2", ("Monocytes", "Macrophages.M2")),
    ("TGFB1", "TGFBR2", ("T.cells.CD8", "NK.cells", "Tregs")),
    ("CSF1", "CSF1R", ("Macrophages.M2", "Monocytes")),
    ("MIF", "CD74", ("B.cells", "Dendritic.cells", "Macrophages.M2")),
    ("SPP1", "CD44", ("T.cells.CD8", "Macrophages.M1")),
    ("IL6", "IL6R", ("Monocytes", "Neutrophils")),
    ("LGALS9", "HAVCR2", ("T.cells.CD8", "NK.cells")),
    ("CD274", "PDCD1", ("T.cells.CD8",)),
    ("NECTIN2", "TIGIT", ("Tregs", "T.cells.CD8")),
    ("C3", "C3AR1", ("Macrophages.M2",)),
)

#: Further CAF → immune axes of the planted crosstalk (b), beyond LR_AXES. The latent programme
#: is wider than any scored pair table: a scorer recovers b from whichever axes it measures.
EXTRA_LR_AXES: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("CXCL1", "CXCR2", ("Neutrophils",)),
    ("CXCL8", "CXCR1", ("Neutrophils",)),
    ("IL33", "IL1RL1", ("Tregs", "Macrophages.M2")),
    ("CCL19", "CCR7", ("T.cells.CD4", "Dendritic.cells")),
    ("CXCL13", "CXCR5", ("B.cells",)),
    ("TNFSF13B", "TNFRSF13C", ("B.cells",)),
    ("GAS6", "MERTK", ("Macrophages.M2",)),
    ("THBS1", "CD47", ("T.cells.CD8", "T.cells.CD4")),
    ("TGFB3", "TGFBR1", ("T.cells.CD8", "NK.cells", "Tregs")),
    ("IL15", "IL2RB", ("NK.cells", "T.cells.CD8")),
    ("HGF", "MET", ("Dendritic.cells", "Neutrophils")),
    ("CCL11", "CCR3", ("Macrophages.M2",)),
    ("SEMA3A", "NRP1", ("Tregs",)),
)

#: mRNA content per cell, relative units (tumour cells and CAFs are large, neutrophils small).
MRNA_CONTENT: dict[str, float] = {
    "CAF": 1.6,
    "Tumour": 2.0,
    "Endothelial": 1.0,
    "B.cells": 0.65,
    "Macrophages.M1": 1.4,
    "Macrophages.M2": 1.2,
    "Monocytes": 1.3,
    "Neutrophils": 0.3,
    "NK.cells": 1.2,
    "T.cells.CD4": 0.65,
    "T.cells.CD8": 0.7,
    "Tregs": 0.7,
    "Dendritic.cells": 1.4,
}

# The fraction model (simulate_fractions): compartment logits, then the immune composition.
_COMPARTMENT_LOGITS: dict[str, float] = {
    "CAF": 1.3,
    "Tumour": 2.2,
    "Endothelial": 0.1,
    "immune": 1.5,  # an immune share of about a quarter at a = b = 0
}
_COMPARTMENT_A_LOADING: dict[str, float] = {"CAF": 0.55, "Endothelial": 0.15}
#: Small, so that the immune share (right-skewed as a logistic-normal) does not make the LR
#: target right-skewed; a then explains about 40% of the share's variance (module docstring).
_COMPARTMENT_NOISE_SD = 0.15
#: Baseline logits of the immune types within the immune compartment (M2 and CD4 T cells
#: common, dendritic cells rare), their loadings on the crosstalk b and their noise. ERS–CAFs
#: recruit several minor receiving types — monocytes (CCL2, CSF1), Tregs (CXCL12, TGF-β),
#: B cells (CXCL12, CXCL13), NK cells (IL15) and dendritic cells (CCL19) — and not the
#: commonest, M2, so b evens the infiltrate out rather than concentrating it (docstring).
_IMMUNE_LOGITS: dict[str, float] = {
    "B.cells": -1.0,
    "Macrophages.M1": -0.8,
    "Macrophages.M2": 0.4,
    "Monocytes": -0.4,
    "Neutrophils": -1.6,
    "NK.cells": -1.4,
    "T.cells.CD4": 0.2,
    "T.cells.CD8": -0.2,
    "Tregs": -1.2,
    "Dendritic.cells": -2.0,
}
_IMMUNE_B_LOADING: dict[str, float] = {
    "Tregs": 0.25,
    "Monocytes": 0.2,
    "B.cells": 0.2,
    "NK.cells": 0.2,
    "Dendritic.cells": 0.2,
}
_IMMUNE_NOISE_SD = 0.3
#: The immune composition's inverse temperature is exp(−slope · h): h evens it out.
_TEMPERATURE_SLOPE = 0.45

#: log2 SD by which the generator's immune profiles of the TIL10 genes depart from TIL10, per
#: gene and cell type, and of a gene-wise departure shared by the types (tissue_immune_profiles).
TISSUE_PROFILE_SD = 0.8
TISSUE_GENE_SHIFT_SD = 0.5

#: Baseline log2 expression (before TPM scaling) of an axis's ligand or receptor outside and
#: inside the cell types that make it (CAFs; the receiving immune types).
LR_GENE_LOG2 = (1.0, 6.0)

#: Programme strengths (log2 fold change per unit latent).
UPR_LOG2FC_PER_A = 0.9
HYPOXIA_LOG2FC_PER_A = 0.8
UPR_LOG2FC_PER_U = 0.45
LR_LOG2FC_PER_B = 1.3
LR_SATURATION = 0.6
#: ER-stressed CAFs secrete more of the axes' ligands (log2 fold change per unit a).
LR_LIGAND_LOG2FC_PER_A = 0.5
#: Share of programme genes that do not respond (drawn per seed), and the spread of the others'
#: responses (a gene's fold change is the programme's times Uniform(1 − s, 1 + s)).
SILENT_SHARE = 0.2
RESPONSE_SPREAD = 0.6


@lru_cache(maxsize=1)
def gene_universe() -> tuple[str, ...]:
    """The real gene symbols of the synthetic transcriptome (see the resource's header)."""
    text = (
        resources.files(__package__)
        .joinpath("resources/gene_universe.txt")
        .read_text(encoding="utf-8")
    )
    return tuple(line for line in text.splitlines() if line and not line.startswith("#"))


@lru_cache(maxsize=1)
def er_stress_programme() -> tuple[str, ...]:
    """The genes of the latent ER-stress programme: UPR_GENES and the resource's Hallmark genes."""
    text = (
        resources.files(__package__)
        .joinpath("resources/er_stress_programme.txt")
        .read_text(encoding="utf-8")
    )
    extra = [line for line in text.splitlines() if line and not line.startswith("#")]
    return UPR_GENES + tuple(g for g in extra if g not in UPR_GENES)


def all_lr_axes() -> tuple[tuple[str, str, tuple[str, ...]], ...]:
    return LR_AXES + EXTRA_LR_AXES


def gene_responses(genes: tuple[str, ...], seed: int, stream: int) -> np.ndarray:
    """Per-gene response of a latent programme: 0 for a silent share, else around 1."""
    rng = np.random.default_rng([seed, 8, stream])
    response = rng.uniform(1 - RESPONSE_SPREAD, 1 + RESPONSE_SPREAD, len(genes))
    return np.where(rng.uniform(size=len(genes)) < SILENT_SHARE, 0.0, response)


def simulate_fractions(patients: pd.DataFrame, seed: int, *, with_a: bool = True) -> pd.DataFrame:
    """True cell-number fractions (patients × CELL_TYPES), rows summing to 1.

    Two logistic-normal levels (Aitchison & Shen 1980, Biometrika 67:261): the compartments
    k ∈ {CAF, Tumour, Endothelial, immune},

        q_i = softmax(κ_k + α_k a_i + δ_ik),     δ ~ N(0, 0.15²),

    and, within the immune compartment, the immune types c at temperature exp(0.45 h_i),

        π_i = softmax((μ_c + β_c b_i + ε_ic) · exp(−0.45 h_i)),     ε ~ N(0, 0.3²),

    so f_ic = q_i,immune · π_ic. The heterogeneity latent h sets the *evenness* of the immune
    composition — the entropy of the cell types a deconvolution resolves (TIL10's ten) — and
    not the immune share; ERS–CAF activity a enlarges the CAF compartment, and the crosstalk b
    recruits the minor receiving types (β_c > 0 for monocytes, Tregs, B, NK and dendritic
    cells; 0 for the commonest, M2), so b makes the composition more even, never one type
    dominant. In additive log-ratios (Aitchison 1986, The Statistical Analysis of
    Compositional Data, ch. 6), log(q_immune/q_Tumour) = κ_immune − κ_Tumour + δ − δ' has SD
    0.15·√2, and exp(0.45 h_i) · log(π_ic/π_iM2) = μ_c − μ_M2 + β_c b_i + ε_ic − ε_iM2 is
    linear in b with slope β_c.

    ``with_a`` False gives the same tumours' composition at α_k a_i = 0, with the same noise
    draws: what the slides show outside the evidence of mechanism (a), whose hotspots render
    a's excess of CAFs themselves (:func:`~stromalens.synthetic.cohort._slide_biology`).

    Example
    -------
    >>> patients = pd.DataFrame({"a": [0.0], "b": [0.0], "h": [0.0]})
    >>> round(float(simulate_fractions(patients, seed=0).sum(axis=1).iloc[0]), 12)
    1.0
    """
    rng = np.random.default_rng([seed, 2])
    n = len(patients)
    a, b, h = (patients[k].to_numpy()[:, None] for k in "abh")
    compartments = tuple(_COMPARTMENT_LOGITS)
    loading = np.array([_COMPARTMENT_A_LOADING.get(k, 0.0) for k in compartments])
    logits = np.array([_COMPARTMENT_LOGITS[k] for k in compartments]) + a * loading * with_a
    shares = _softmax(logits + rng.normal(0.0, _COMPARTMENT_NOISE_SD, (n, len(compartments))))
    immune = np.array([_IMMUNE_LOGITS[c] for c in IMMUNE_TYPES]) + b * np.array(
        [_IMMUNE_B_LOADING.get(c, 0.0) for c in IMMUNE_TYPES]
    )
    immune = immune + rng.normal(0.0, _IMMUNE_NOISE_SD, (n, len(IMMUNE_TYPES)))
    within = _softmax(immune * np.exp(-_TEMPERATURE_SLOPE * h))
    fractions = np.column_stack([shares[:, :3], shares[:, 3:] * within])
    return pd.DataFrame(fractions, index=patients.index, columns=list(CELL_TYPES))


def _softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax, shifted by the row maximum so exp never overflows."""
    weights = np.exp(logits - logits.max(axis=1, keepdims=True))
    return weights / weights.sum(axis=1, keepdims=True)


def shannon_entropy(fractions: pd.DataFrame) -> pd.Series:
    """H = −Σ_c p_c log p_c (natural log) of each row."""
    p = fractions.to_numpy()
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0, p * np.log(p), 0.0)
    return pd.Series(-terms.sum(axis=1), index=fractions.index, name="entropy")


def reference_profiles(seed: int) -> pd.DataFrame:
    """Pure cell-type expression profiles (genes × cell types), TPM scale (columns sum to 1e6).

    Baseline log2 expression per gene ~ 0.8·N(3, 1.8²) + 0.2·N(−5.5, 2²), cell-type deviations
    ~ N(0, 0.6²), markers
    +5 log2 in their own type and −2 elsewhere. The same profiles are written next to the cohort
    in CIBERSORT signature format, as a user's own single-cell reference would be.
    """
    rng = np.random.default_rng([seed, 3])
    genes = gene_universe()
    index = {g: i for i, g in enumerate(genes)}
    # Most genes are moderately expressed; a fifth are barely expressed (zeros in the counts).
    baseline = np.where(
        rng.uniform(size=len(genes)) < 0.8,
        rng.normal(3.0, 1.8, len(genes)),
        rng.normal(-5.5, 2.0, len(genes)),
    )
    log2 = baseline[:, None] + rng.normal(0.0, 0.6, (len(genes), len(CELL_TYPES)))
    # A sorted list, not a set: set order changes between processes (string hashing), and the
    # random draws below must come in the same order every time.
    marker_rows = sorted({g for markers in MARKERS.values() for g in markers})
    for g in marker_rows:
        log2[index[g], :] = rng.normal(0.5, 0.5, len(CELL_TYPES)) - 1.5
    for j, cell_type in enumerate(CELL_TYPES):
        for g in MARKERS[cell_type]:
            log2[index[g], j] = 7.5 + rng.normal(0.0, 0.5)
    for g in LEUKOCYTE_GENES:
        log2[index[g], 3:] = 8.0 + rng.normal(0.0, 0.3, len(IMMUNE_TYPES))
        log2[index[g], :3] = 0.0
    # Programme genes: modest baseline, to be modulated per patient.
    for g in er_stress_programme() + HYPOXIA_GENES:
        log2[index[g], :] = 4.0 + rng.normal(0.0, 0.3, len(CELL_TYPES))
    for ligand, receptor, receivers in all_lr_axes():
        log2[index[ligand], :] = LR_GENE_LOG2[0]
        log2[index[ligand], 0] = LR_GENE_LOG2[1]  # ligands are made by CAFs
        log2[index[receptor], :] = LR_GENE_LOG2[0]
        for r in receivers:
            log2[index[receptor], CELL_TYPES.index(r)] = LR_GENE_LOG2[1]
    tpm = pd.DataFrame(np.exp2(log2), index=pd.Index(genes, name="gene"), columns=CELL_TYPES)
    tpm *= 1e6 / tpm.sum(axis=0)
    tissue = tissue_immune_profiles(rng)
    tpm.loc[tissue.index] = tissue
    return tpm * (1e6 / tpm.sum(axis=0))


def tissue_immune_profiles(rng: np.random.Generator) -> pd.DataFrame:
    """The generator's profiles (TPM) of the TIL10 genes: tissue-resident immune cells that
    resemble, but are not, the sorted blood cells TIL10 was measured on.

        r_gc = T_gc · 2^(s_g + e_gc),   s_g ~ N(0, 0.5²),  e_gc ~ N(0, TISSUE_PROFILE_SD²)

    for the immune types c (T: quanTIseq's TIL10, Finotello et al. 2019, Genome Med 11:34);
    CAFs, tumour and endothelial cells express them at 2^N(−3, 1²) times their median over the
    immune types (quanTIseq chose genes that tumours barely express). So a TIL10
    deconvolution of the synthetic RNA fits a reference that departs from the truth as a
    sorted-cell reference departs from tissue (``TISSUE_PROFILE_SD``), never its own profiles.
    """
    from ..targets.deconvolution import til10_signature

    til10 = til10_signature()
    genes = [g for g in til10.index if g in set(gene_universe())]
    til10 = til10.loc[genes, list(IMMUNE_TYPES)].to_numpy()
    shift = rng.normal(0.0, TISSUE_GENE_SHIFT_SD, (len(genes), 1))
    immune = til10 * np.exp2(shift + rng.normal(0.0, TISSUE_PROFILE_SD, til10.shape))
    median = np.median(immune, axis=1, keepdims=True)
    others = median * np.exp2(
        rng.normal(-3.0, 1.0, (len(genes), len(CELL_TYPES) - len(IMMUNE_TYPES)))
    )
    return pd.DataFrame(np.hstack([others, immune]), index=genes, columns=list(CELL_TYPES))


def signature_matrix(
    seed: int,
    *,
    min_log2_spread: float = 2.0,
    min_tpm: float = 20.0,
    reference_noise_sd: float = 0.35,
):
    """A deconvolution signature (genes × cell types) as a user would derive one from their own
    sorted-cell or single-cell reference: the pure profiles *measured* once more, with log2 noise
    N(0, ``reference_noise_sd``²) per gene and cell type (an independent draw, so the signature
    is not the generator's profiles), then genes expressed ≥ ``min_tpm`` in some cell type and
    ≥ ``min_log2_spread`` log2 units above their median over cell types there."""
    profiles = reference_profiles(seed)
    rng = np.random.default_rng([seed, 9])
    measured = profiles * np.exp2(rng.normal(0.0, reference_noise_sd, profiles.shape))
    measured *= 1e6 / measured.sum(axis=0)
    log = np.log2(measured + 1.0)
    spread = log.max(axis=1) - log.median(axis=1)
    keep = (spread >= min_log2_spread) & (measured.max(axis=1) >= min_tpm)
    return measured.loc[keep]


def saturating(x: np.ndarray, rate: float) -> np.ndarray:
    """g(x) = (1 − e^(−λx))/λ: slope 1 at 0, diminishing returns above, g → x as λ → 0."""
    return x if rate == 0 else -np.expm1(-rate * x) / rate


def _programme_multipliers(
    patients: pd.DataFrame, genes: tuple[str, ...], seed: int = 0
) -> dict[int, np.ndarray]:
    """Per-patient, per-gene, per-cell-type fold changes (n × G × C) of the latent programmes.

    Only a handful of genes are touched, so this is built sparsely over those genes.
    """
    index = {g: i for i, g in enumerate(genes)}
    n = len(patients)
    a = patients["a"].to_numpy()
    b = patients["b"].to_numpy()
    u = patients["u"].to_numpy()
    caf = CELL_TYPES.index("CAF")
    tumour = CELL_TYPES.index("Tumour")
    touched: dict[int, np.ndarray] = {}

    def log2fc(gene: str) -> np.ndarray:
        return touched.setdefault(index[gene], np.zeros((n, len(CELL_TYPES))))

    programme = er_stress_programme()
    for g, k in zip(programme, gene_responses(programme, seed, 0), strict=True):
        log2fc(g)[:, caf] += k * UPR_LOG2FC_PER_A * a
        log2fc(g)[:, tumour] += k * UPR_LOG2FC_PER_U * u
    for g, k in zip(HYPOXIA_GENES, gene_responses(HYPOXIA_GENES, seed, 1), strict=True):
        log2fc(g)[:, caf] += k * HYPOXIA_LOG2FC_PER_A * a
    axes = all_lr_axes()
    # Axes respond with their own strength (none silent: each axis is part of the crosstalk).
    strength = np.random.default_rng([seed, 8, 2]).uniform(0.6, 1.4, len(axes))
    drive = saturating(b, LR_SATURATION)
    for (ligand, receptor, receivers), k in zip(axes, strength, strict=True):
        log2fc(ligand)[:, caf] += k * (LR_LOG2FC_PER_B * drive + LR_LIGAND_LOG2FC_PER_A * a)
        for r in receivers:
            log2fc(receptor)[:, CELL_TYPES.index(r)] += k * LR_LOG2FC_PER_B * drive
    return touched


def simulate_expression(
    patients: pd.DataFrame,
    fractions: pd.DataFrame,
    site_batch_sd: dict[str, float],
    seed: int,
    *,
    dispersion: float = 0.08,
    biological_sd: float = 0.25,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Counts and TPM, each genes × samples (columns are the patients' ``rna_sample`` ids).

    Parameters
    ----------
    patients : DataFrame with latents ``a, b, u``, ``site`` and ``rna_sample``.
    fractions : true cell fractions from :func:`simulate_fractions`.
    site_batch_sd : per-site SD of gene-wise log2 batch offsets.
    dispersion : negative-binomial dispersion φ (Var = μ + φ μ²).
    biological_sd : SD of patient-specific log2 noise per gene.
    """
    rng = np.random.default_rng([seed, 4])
    genes = gene_universe()
    profiles = reference_profiles(seed).to_numpy()  # (G, C)
    n = len(patients)
    weights = fractions[list(CELL_TYPES)].to_numpy() * np.array(
        [MRNA_CONTENT[c] for c in CELL_TYPES]
    )  # (n, C)
    mixture = weights @ profiles.T  # (n, G)
    for gene_index, log2fc in _programme_multipliers(patients, genes, seed).items():
        # exact re-mixing of the modulated genes: Σ_c w_ic r_cg 2^{fc_icg}
        mixture[:, gene_index] = (weights * profiles[gene_index] * np.exp2(log2fc)).sum(axis=1)
    mixture /= weights.sum(axis=1, keepdims=True)

    log_noise = rng.normal(0.0, biological_sd, mixture.shape)
    sites = patients["site"].to_numpy()
    for site in np.unique(sites):
        offsets = rng.normal(0.0, site_batch_sd.get(site, 0.1), len(genes))
        log_noise[sites == site] += offsets
    expected_tpm = mixture * np.exp2(log_noise)

    gene_length = np.exp(rng.normal(np.log(2500.0), 0.6, len(genes))).round()  # bp
    library = rng.uniform(15e6, 45e6, n)
    rate = expected_tpm * gene_length
    mu = rate / rate.sum(axis=1, keepdims=True) * library[:, None]
    # Gamma–Poisson: λ ~ Gamma(shape 1/φ, scale φ μ), counts ~ Poisson(λ).
    counts = rng.poisson(rng.gamma(1.0 / dispersion, dispersion * mu)).astype(np.int64)
    per_length = counts / gene_length
    tpm = per_length / per_length.sum(axis=1, keepdims=True) * 1e6

    samples = list(patients["rna_sample"])
    gene_index = pd.Index(genes, name="gene")
    counts_df = pd.DataFrame(counts.T, index=gene_index, columns=samples)
    tpm_df = pd.DataFrame(tpm.T.round(4), index=gene_index, columns=samples)
    return counts_df, tpm_df
