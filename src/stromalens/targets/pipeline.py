"""The targets stage: from a cohort's bulk RNA-seq to the three surrogate targets.

Per patient (DESIGN.md, targets):

* ``ers_caf``   — ssGSEA of the ERS–CAF gene set on log2(TPM + 1), z-scored across the cohort
  (:class:`~stromalens.targets.scaling.TargetScaler`; refitted on each training fold in CV);
  cross-check ``ers_caf_gsva`` (GSVA, Gaussian kernel);
* ``lr``        — S_LR, the weighted product score of ERS–CAF → immune triplets with the
  receiving cell types' quanTIseq fractions (constrained least squares); cross-check
  ``lr_cellchat`` (CellChat bulk-mode score with the ν-SVR fractions);
* ``heterogeneity`` — Shannon entropy of the ν-SVR fractions; cross-check
  ``heterogeneity_lsq`` (entropy of the quanTIseq fractions, "other" excluded).

Each target's noise ceiling comes from the concordance of its two pipelines
(:mod:`~stromalens.targets.reliability`).
"""

from __future__ import annotations

import json
import platform
import warnings
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd

from .. import __version__
from .deconvolution import deconvolve
from .genesets import GeneSetsLike, as_gene_sets, match_gene_sets
from .heterogeneity import shannon_entropy
from .lr import LRCrosstalk
from .reliability import pipeline_concordance
from .scaling import TargetScaler
from .scores import GeneSetWarning, gsva, ssgsea

ALTERNATIVES = {
    "ers_caf": "ers_caf_gsva",
    "lr": "lr_cellchat",
    "heterogeneity": "heterogeneity_lsq",
}
ERS_CAF_SET = "ERS_CAF"


def default_gene_sets_path() -> Path:
    return Path(str(resources.files(__package__).joinpath("resources/ers_caf.yaml")))


@dataclass
class TargetsResult:
    targets: pd.DataFrame  # samples × (targets, alternatives, raw scores)
    fractions: pd.DataFrame  # samples × "<method>__<cell type>"
    reliability: dict
    metadata: dict = field(default_factory=dict)


def compute_targets(
    tpm: pd.DataFrame,
    *,
    gene_sets: GeneSetsLike | None = None,
    ers_caf_set: str = ERS_CAF_SET,
    signature=None,
    mrna_scaling=None,
    triplets: pd.DataFrame | None = None,
    lr_weights: str = "resources",
    other: str = "exclude",
    min_coverage: float = 0.5,
    n_boot: int = 2000,
    seed: int = 0,
    linear: bool = True,
    tumor: bool = False,
) -> TargetsResult:
    """Compute the targets of every sample of ``tpm`` (samples × genes, linear TPM).

    ``linear=False``: ``tpm`` holds log ratios (two-colour microarrays), which have no linear
    form; only the ERS–CAF targets (ssGSEA and GSVA on the values as given) are computed, and
    ``lr`` and ``heterogeneity`` (deconvolution needs linear values) are recorded as refused.
    ``tumor``: quanTIseq's ``tumor=TRUE``, dropping the genes tumour cells express highly from
    its fit (recommended by quanTIseq for tumour RNA-seq; off by default, as its R code).

    Raises ``ValueError`` when the ERS–CAF set's coverage in the data is below ``min_coverage``
    (the message says how many genes are missing, per set).
    """
    gene_sets = default_gene_sets_path() if gene_sets is None else gene_sets
    sets = as_gene_sets(gene_sets)
    if ers_caf_set not in sets:
        raise ValueError(
            f"the gene sets have no set named '{ers_caf_set}' (have: {', '.join(list(sets)[:10])})"
        )
    matched = match_gene_sets(sets, list(tpm.columns))
    coverage = matched.coverage
    low = coverage[coverage["coverage"] < min_coverage]
    if ers_caf_set in low.index:
        lines = "; ".join(
            f"{name}: {int(r.found)} of {int(r.genes)} genes found" for name, r in low.iterrows()
        )
        raise ValueError(
            f"gene-set coverage below {min_coverage:.0%} — {lines}; check the gene ids "
            "(symbols; --annotation maps probes), pass --gene-sets with a set measured on "
            "this panel, or lower --min-coverage"
        )
    log_expr = np.log2(tpm.clip(lower=0.0) + 1.0) if linear else tpm

    scores = ssgsea(log_expr, {ers_caf_set: sets[ers_caf_set]})[ers_caf_set]
    with warnings.catch_warnings():
        # GSVA drops constant genes and says so; that is expected here and recorded below.
        warnings.simplefilter("ignore", GeneSetWarning)
        scores_gsva = gsva(log_expr, {ers_caf_set: sets[ers_caf_set]})[ers_caf_set]
    if not linear:
        return _ers_caf_only(scores, scores_gsva, coverage, matched, min_coverage, n_boot, seed)

    # The input adapters have settled the scale: no second guess from the maximum here.
    fractions_svr = deconvolve(tpm, method="nusvr", signature=signature, antilog=False)
    fractions_lsq = deconvolve(  # quanTIseq: fixMixture, lsei, mRNA scaling, Tregs/CD4
        tpm,
        method="quantiseq",
        signature=signature,
        mrna_scaling=mrna_scaling,
        antilog=False,
        tumor=tumor,
    )
    lr = LRCrosstalk(triplets, weights=lr_weights).fit_transform(log_expr, fractions_lsq)
    lr_cc = LRCrosstalk(triplets, weights=lr_weights, method="cellchat").fit_transform(
        log_expr, fractions_svr
    )

    targets = pd.DataFrame(index=tpm.index)
    targets["ers_caf"] = TargetScaler().fit_transform(scores.rename("ers_caf"))
    targets["lr"] = lr
    targets["heterogeneity"] = shannon_entropy(fractions_svr, other=other)
    targets["ers_caf_gsva"] = scores_gsva
    targets["lr_cellchat"] = lr_cc
    targets["heterogeneity_lsq"] = shannon_entropy(fractions_lsq, other="exclude")
    targets["ers_caf_ssgsea_raw"] = scores
    targets["effective_richness"] = np.exp(targets["heterogeneity"])

    reliability = {
        target: pipeline_concordance(targets[target], targets[alt], n_boot=n_boot, seed=seed)
        | {"pipelines": [target, alt]}
        for target, alt in ALTERNATIVES.items()
    }
    fractions = pd.concat(
        [fractions_svr.add_prefix("nusvr__"), fractions_lsq.add_prefix("lsq__")], axis=1
    )
    metadata = {
        "methods": {
            "ers_caf": "ssGSEA (GSVA 1.46-identical, alpha=0.25, unnormalised) of the ERS_CAF "
            "set on log2(TPM+1), z-scored across the samples",
            "ers_caf_gsva": "GSVA (Gaussian kernel, mx.diff) of the same set",
            "lr": "weighted product score of ligand/receptor z-scores times the receiving cell "
            "type's quanTIseq fraction (constrained least squares, mRNA scaling, Tregs/CD4 "
            "correction)",
            "lr_cellchat": "CellChat bulk-mode (L'R')/(0.5+L'R') with the nu-SVR fractions",
            "heterogeneity": f"Shannon entropy of nu-SVR fractions (other: {other})",
            "heterogeneity_lsq": "Shannon entropy of quanTIseq fractions (other excluded)",
        },
        "parameters": {
            "alpha": 0.25,
            "kcdf": "gaussian",
            "lr_weights": lr_weights,
            "other": other,
            "min_coverage": min_coverage,
            "n_boot": n_boot,
            "seed": seed,
            "signature": "TIL10"
            if signature is None
            else str(signature)
            if isinstance(signature, str | Path)
            else "user matrix",
        },
        "gene_set_coverage": coverage.reset_index().to_dict(orient="records"),
        "gene_sets_dropped": matched.dropped,
        "z_scoring": {"ers_caf_mean": float(scores.mean()), "ers_caf_sd": float(scores.std())},
        "versions": _versions(),
    }
    return TargetsResult(
        targets=targets, fractions=fractions, reliability=reliability, metadata=metadata
    )


def _ers_caf_only(scores, scores_gsva, coverage, matched, min_coverage, n_boot, seed):
    """The ERS–CAF targets of log-ratio data; ``lr`` and ``heterogeneity`` refused."""
    targets = pd.DataFrame(index=scores.index)
    targets["ers_caf"] = TargetScaler().fit_transform(scores.rename("ers_caf"))
    targets["ers_caf_gsva"] = scores_gsva
    targets["ers_caf_ssgsea_raw"] = scores
    reliability = {
        "ers_caf": pipeline_concordance(
            targets["ers_caf"], targets["ers_caf_gsva"], n_boot=n_boot, seed=seed
        )
        | {"pipelines": ["ers_caf", "ers_caf_gsva"]}
    }
    refusal = "not computed: deconvolution needs linear expression and log ratios have none"
    metadata = {
        "methods": {
            "ers_caf": "ssGSEA (GSVA 1.46-identical, alpha=0.25, unnormalised) of the ERS_CAF "
            "set on the log ratios as given (within-sample ranks), z-scored across the samples",
            "ers_caf_gsva": "GSVA (Gaussian kernel, mx.diff) of the same set on the log ratios",
        },
        "refused": {"lr": refusal, "heterogeneity": refusal},
        "parameters": {
            "alpha": 0.25,
            "kcdf": "gaussian",
            "min_coverage": min_coverage,
            "n_boot": n_boot,
            "seed": seed,
        },
        "gene_set_coverage": coverage.reset_index().to_dict(orient="records"),
        "gene_sets_dropped": matched.dropped,
        "z_scoring": {"ers_caf_mean": float(scores.mean()), "ers_caf_sd": float(scores.std())},
        "versions": _versions(),
    }
    fractions = pd.DataFrame(index=scores.index)
    return TargetsResult(
        targets=targets, fractions=fractions, reliability=reliability, metadata=metadata
    )


def _versions() -> dict:
    import scipy
    import sklearn

    return {
        "stromalens": __version__,
        "numpy": np.__version__,
        "pandas": pd.__version__,
        "scipy": scipy.__version__,
        "scikit-learn": sklearn.__version__,
        "python": platform.python_version(),
    }


def write_targets(
    result: TargetsResult,
    out: Path,
    *,
    patient_of_sample: dict | None = None,
    extra_metadata: dict | None = None,
) -> None:
    """Write ``targets.parquet``, ``fractions.parquet`` (index ``patient_id``),
    ``reliability.json`` and ``targets.json``, each atomically."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for name, table in (("targets", result.targets), ("fractions", result.fractions)):
        table = table.copy()
        if patient_of_sample is not None:
            table.index = [patient_of_sample[s] for s in table.index]
        table.index.name = "patient_id"
        tmp = out / f"partial-{name}.parquet"
        table.to_parquet(tmp)
        tmp.replace(out / f"{name}.parquet")
    for name, payload in (
        ("reliability", result.reliability),
        ("targets", result.metadata | (extra_metadata or {})),
    ):
        tmp = out / f"partial-{name}.json"
        tmp.write_text(json.dumps(payload, indent=2, default=str), encoding="utf-8")
        tmp.replace(out / f"{name}.json")
