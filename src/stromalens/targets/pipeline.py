"""The targets stage: from a cohort's bulk RNA-seq to the three surrogate targets.

Per patient (DESIGN.md, targets):

* ``ers_caf``   — ssGSEA of the ERS–CAF gene set on log2(TPM + 1), z-scored across the cohort
  (:class:`~stromalens.targets.scaling.TargetScaler`; refitted on each training fold in CV);
* ``lr``        — S_LR over ERS–CAF → immune triplets with the receiving cell types' quanTIseq
  fractions; by default the monotone variant (``lr_monotone``), with Eq. 6 as written beside it
  (``lr_eq6``; :mod:`~stromalens.targets.lr`). Its gene scaling is fitted on the whole cohort
  (``train``): the column reports, survival and treatment models read. Cross-validation must
  not use it for held-out patients (their own expression shaped the scaling), so the stage
  also writes ``lr_inputs.parquet`` (:class:`~stromalens.targets.lr.LRInputs`) from which
  training refits the scaling on each fold's training patients;
* ``heterogeneity`` — Shannon entropy of the ν-SVR fractions.

Each target has two second pipelines for its noise ceiling
(:mod:`~stromalens.targets.reliability`):

* shared inputs — ``ers_caf_gsva`` (GSVA of the same set), ``lr_cellchat`` (CellChat-style
  score of the same triplets), ``heterogeneity_lsq`` (entropy of quanTIseq on the same
  signature);
* independent inputs (:mod:`~stromalens.targets.independent`) — ``ers_caf_independent`` (GSVA
  of another gene set) against ``ers_caf``; ``lr_split_a`` against ``lr_independent`` (other
  triplets, uniform weights, CellChat-style, fractions from the other half of the signature);
  ``heterogeneity_split_a`` (ν-SVR, half A) against ``heterogeneity_split_b`` (quanTIseq,
  half B).
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
from .independent import (
    independent_gene_set,
    independent_triplets,
    resolve_signature,
    split_signature,
)
from .lr import DEFAULT_LR_METHOD, LRCrosstalk, LRInputs, curated_triplets
from .reliability import noise_ceiling
from .scaling import TargetScaler
from .scores import GeneSetWarning, gsva, ssgsea

#: target → (its shared-input second pipeline, its independent pair of pipelines).
PIPELINES = {
    "ers_caf": (("ers_caf", "ers_caf_gsva"), ("ers_caf", "ers_caf_independent")),
    "lr": (("lr", "lr_cellchat"), ("lr_split_a", "lr_independent")),
    "heterogeneity": (
        ("heterogeneity", "heterogeneity_lsq"),
        ("heterogeneity_split_a", "heterogeneity_split_b"),
    ),
}
ALTERNATIVES = {target: shared[1] for target, (shared, _) in PIPELINES.items()}
ERS_CAF_SET = "ERS_CAF"
INDEPENDENT_ERS_CAF = "ERS_CAF_INDEPENDENT"


def default_gene_sets_path() -> Path:
    return Path(str(resources.files(__package__).joinpath("resources/ers_caf.yaml")))


@dataclass
class TargetsResult:
    targets: pd.DataFrame  # samples × (targets, alternatives, raw scores)
    fractions: pd.DataFrame  # samples × "<method>__<cell type>"
    reliability: dict
    metadata: dict = field(default_factory=dict)
    lr_inputs: LRInputs | None = None  # what a CV fold refits ``lr`` from; None without ``lr``


def _check_coverage(sets, ers_caf_set, columns, min_coverage):
    if ers_caf_set not in sets:
        raise ValueError(
            f"the gene sets have no set named '{ers_caf_set}' (have: {', '.join(list(sets)[:10])})"
        )
    matched = match_gene_sets(sets, list(columns))
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
    return matched


def _ers_caf_scores(log_expr, genes, min_coverage) -> tuple[dict, dict]:
    """ssGSEA (primary), GSVA of the same set (shared inputs) and GSVA of the independent set
    (when enough of its genes are measured); and what the independent set was."""
    scores = {"ers_caf_ssgsea_raw": ssgsea(log_expr, {ERS_CAF_SET: genes})[ERS_CAF_SET]}
    independent, dropped = independent_gene_set(genes)
    found = [g for g in independent if g in log_expr.columns]
    info = {
        "set": INDEPENDENT_ERS_CAF,
        "genes": len(independent),
        "found": len(found),
        "dropped_shared_with_primary": dropped,
    }
    with warnings.catch_warnings():
        # GSVA drops constant genes and says so; that is expected here and recorded below.
        warnings.simplefilter("ignore", GeneSetWarning)
        scores["ers_caf_gsva"] = gsva(log_expr, {ERS_CAF_SET: genes})[ERS_CAF_SET]
        if independent and len(found) >= min_coverage * len(independent):
            scores["ers_caf_independent"] = gsva(log_expr, {INDEPENDENT_ERS_CAF: independent})[
                INDEPENDENT_ERS_CAF
            ]
        else:
            info["not_computed"] = (
                f"{len(found)} of {len(independent)} genes measured, below min_coverage"
            )
    return scores, info


def _fractions(tpm, signature, mrna_scaling, tumor, qn=False) -> tuple[dict, dict]:
    """ν-SVR and quanTIseq fractions on the full signature and on each of its two halves
    (``qn``: CIBERSORT's quantile normalisation before each ν-SVR fit)."""
    # The input adapters have settled the scale: no second guess from the maximum here.
    nusvr = {"method": "nusvr", "antilog": False, "quantile_normalisation": qn}
    out = {
        "nusvr": deconvolve(tpm, signature=signature, **nusvr),
        "lsq": deconvolve(  # quanTIseq: fixMixture, lsei, mRNA scaling, Tregs/CD4
            tpm,
            method="quantiseq",
            signature=signature,
            mrna_scaling=mrna_scaling,
            antilog=False,
            tumor=tumor,
        ),
    }
    # quanTIseq's tumour genes (TIL10 only; it refuses others) leave before the split.
    sig, scaling = resolve_signature(signature, mrna_scaling, tumor=tumor)
    half_a, half_b = split_signature(sig)
    for name, half in (("a", half_a), ("b", half_b)):
        out[f"nusvr_{name}"] = deconvolve(tpm, signature=half, **nusvr)
        out[f"lsq_{name}"] = deconvolve(
            tpm,
            method="quantiseq",
            signature=half,
            mrna_scaling=scaling,
            remove_genes=[],
            antilog=False,
        )
    info = {"split_signature_genes": {"a": len(half_a), "b": len(half_b)}}
    return out, info


def _lr_scores(log_expr, fractions, triplets, lr_weights, lr_method, train) -> tuple[dict, dict]:
    """Both S_LR variants, the shared-input and the independent second pipelines."""
    fit_on = log_expr.loc[train]
    scores, scaling, models = {}, {}, {}
    for method in ("product", "monotone"):
        model = LRCrosstalk(triplets, weights=lr_weights, method=method).fit(fit_on)
        scores[f"lr_{'eq6' if method == 'product' else method}"] = model.transform(
            log_expr, fractions["lsq"]
        )
        scaling[method] = model.scaler_.state()
        models[method] = model
    scores["lr"] = scores["lr_eq6" if lr_method == "product" else "lr_monotone"]
    inputs = _lr_inputs(models[lr_method], log_expr, fractions["lsq"], triplets, lr_weights, train)
    cellchat = LRCrosstalk(triplets, weights=lr_weights, method="cellchat").fit(fit_on)
    scores["lr_cellchat"] = cellchat.transform(log_expr, fractions["nusvr"])
    split_a = LRCrosstalk(triplets, weights=lr_weights, method=lr_method).fit(fit_on)
    scores["lr_split_a"] = split_a.transform(log_expr, fractions["lsq_a"])
    table, dropped = independent_triplets(triplets)
    info = {"triplets": len(table), "dropped_shared_with_primary": dropped}
    measured = set(table["ligand"]) & set(log_expr.columns)
    if len(table) and measured:
        other = LRCrosstalk(table, weights="uniform", method="cellchat").fit(fit_on)
        scores["lr_independent"] = other.transform(log_expr, fractions["nusvr_b"])
    else:
        info["not_computed"] = "no independent triplet left (shared genes dropped) or measured"
    return scores, {"independent": info, "gene_scaling": scaling, "inputs": inputs}


def _lr_inputs(model, log_expr, fractions, triplets, lr_weights, train) -> LRInputs:
    """The ``lr`` target's inputs: its measured genes, its receiving cell types' fractions."""
    cells = sorted(set(model.table_["cell_type"]))
    return LRInputs(
        log_expr=log_expr[list(model.scaler_.mean_.index)],
        fractions=fractions[cells],
        triplets=curated_triplets() if triplets is None else triplets,
        method=model.method,
        weights=lr_weights,
        fitted_on=list(train),
    )


def compute_targets(
    tpm: pd.DataFrame,
    *,
    gene_sets: GeneSetsLike | None = None,
    ers_caf_set: str = ERS_CAF_SET,
    signature=None,
    mrna_scaling=None,
    triplets: pd.DataFrame | None = None,
    lr_weights: str = "resources",
    lr_method: str = DEFAULT_LR_METHOD,
    other: str = "exclude",
    min_coverage: float = 0.5,
    n_boot: int = 2000,
    seed: int = 0,
    linear: bool = True,
    tumor: bool = False,
    train: list | None = None,
    nusvr_quantile_normalisation: bool = False,
) -> TargetsResult:
    """Compute the targets of every sample of ``tpm`` (samples × genes, linear TPM).

    ``linear=False``: ``tpm`` holds log ratios (two-colour microarrays), which have no linear
    form; only the ERS–CAF targets (ssGSEA and GSVA on the values as given) are computed, and
    ``lr`` and ``heterogeneity`` (deconvolution needs linear values) are recorded as refused.
    ``tumor``: quanTIseq's ``tumor=TRUE``, dropping the genes tumour cells express highly from
    its fit (recommended by quanTIseq for tumour RNA-seq; off by default, as its R code).
    ``lr_method``: ``"monotone"`` (default) or ``"product"`` (Eq. 6 as written); both are in the
    table. ``train``: the samples on which the fitted scalings (S_LR's gene scaling, the
    ERS–CAF z-scoring) are fitted; default all of them, so the ``lr`` column is the
    whole-cohort S_LR (for reports, survival and treatment); ``result.lr_inputs`` holds what
    a training fold needs to refit it on its own patients. ``nusvr_quantile_normalisation``:
    CIBERSORT's ``QN = TRUE`` before the ν-SVR fits.

    Raises ``ValueError`` when the ERS–CAF set's coverage in the data is below ``min_coverage``
    (the message says how many genes are missing, per set).
    """
    if lr_method not in ("product", "monotone"):
        raise ValueError(f"lr_method must be 'monotone' or 'product', not {lr_method!r}")
    sets = as_gene_sets(default_gene_sets_path() if gene_sets is None else gene_sets)
    matched = _check_coverage(sets, ers_caf_set, tpm.columns, min_coverage)
    train = list(tpm.index) if train is None else list(train)
    log_expr = np.log2(tpm.clip(lower=0.0) + 1.0) if linear else tpm
    ers, ers_info = _ers_caf_scores(log_expr, sets[ers_caf_set], min_coverage)
    scaler = TargetScaler().fit(ers["ers_caf_ssgsea_raw"].loc[train].rename("ers_caf"))
    ers["ers_caf"] = scaler.transform(ers["ers_caf_ssgsea_raw"].rename("ers_caf"))
    base = _metadata_base(matched, min_coverage, n_boot, seed, scaler, ers_info)
    if not linear:
        return _ers_caf_only(ers, base, n_boot, seed)

    fractions, split_info = _fractions(
        tpm, signature, mrna_scaling, tumor, nusvr_quantile_normalisation
    )
    lr, lr_info = _lr_scores(log_expr, fractions, triplets, lr_weights, lr_method, train)
    columns = ers | lr
    columns["heterogeneity"] = shannon_entropy(fractions["nusvr"], other=other)
    columns["heterogeneity_lsq"] = shannon_entropy(fractions["lsq"], other="exclude")
    columns["heterogeneity_split_a"] = shannon_entropy(fractions["nusvr_a"], other=other)
    columns["heterogeneity_split_b"] = shannon_entropy(fractions["lsq_b"], other="exclude")
    targets = pd.DataFrame(columns, index=tpm.index)
    targets["effective_richness"] = np.exp(targets["heterogeneity"])
    first = ["ers_caf", "lr", "heterogeneity"]
    targets = targets[first + [c for c in targets.columns if c not in first]]
    reliability = _reliability(targets, n_boot, seed)
    metadata = base | {
        "methods": _methods(other, lr_method),
        "independent_inputs": {
            "ers_caf": ers_info,
            "lr": lr_info["independent"],
            "heterogeneity": split_info,
        },
        "lr_gene_scaling": lr_info["gene_scaling"],
    }
    metadata["parameters"] |= {
        "lr_weights": lr_weights,
        "lr_method": lr_method,
        "other": other,
        "signature": _signature_name(signature),
    }
    table = pd.concat(
        [fractions["nusvr"].add_prefix("nusvr__"), fractions["lsq"].add_prefix("lsq__")], axis=1
    )
    return TargetsResult(
        targets=targets,
        fractions=table,
        reliability=reliability,
        metadata=metadata,
        lr_inputs=lr_info["inputs"],
    )


def _reliability(targets, n_boot, seed) -> dict:
    return {
        target: noise_ceiling(
            targets,
            shared,
            independent if independent[1] in targets else None,
            split_half=target != "ers_caf",
            n_boot=n_boot,
            seed=seed,
        )
        for target, (shared, independent) in PIPELINES.items()
        if target in targets
    }


def _signature_name(signature) -> str:
    if signature is None:
        return "TIL10"
    return str(signature) if isinstance(signature, str | Path) else "user matrix"


def _methods(other, lr_method) -> dict:
    lr_name = "monotone variant (min-max scaled, >= 0)" if lr_method == "monotone" else "Eq. 6"
    return {
        "ers_caf": "ssGSEA (GSVA 1.46-identical, alpha=0.25, unnormalised) of the ERS_CAF "
        "set on log2(TPM+1), z-scored across the training samples",
        "ers_caf_gsva": "GSVA (Gaussian kernel, mx.diff) of the same set",
        "ers_caf_independent": "GSVA of ERS_CAF_INDEPENDENT (Hallmark UPR and fibroblast "
        "markers, no gene of the primary set)",
        "lr": f"S_LR, {lr_name}: weighted ligand x receptor terms times the receiving cell "
        "type's quanTIseq fraction; gene scaling fitted on the training samples (the whole "
        "cohort by default); cross-validation refits it per training fold from "
        "lr_inputs.parquet",
        "lr_eq6": "S_LR, Eq. 6 as written: z(ligand) z(receptor) (not monotone)",
        "lr_monotone": "S_LR with min-max scaled expression (monotone in ligand and receptor)",
        "lr_cellchat": "CellChat bulk-mode (L'R')/(0.5+L'R') with the nu-SVR fractions",
        "lr_split_a": "the lr score with quanTIseq fractions on signature half A",
        "lr_independent": "CellChat-style score of the independent triplets (no shared gene), "
        "uniform weights, nu-SVR fractions on signature half B",
        "heterogeneity": f"Shannon entropy of nu-SVR fractions (other: {other})",
        "heterogeneity_lsq": "Shannon entropy of quanTIseq fractions (other excluded)",
        "heterogeneity_split_a": "Shannon entropy of nu-SVR fractions on signature half A",
        "heterogeneity_split_b": "Shannon entropy of quanTIseq fractions on signature half B",
    }


def _metadata_base(matched, min_coverage, n_boot, seed, scaler, ers_info) -> dict:
    return {
        "parameters": {
            "alpha": 0.25,
            "kcdf": "gaussian",
            "min_coverage": min_coverage,
            "n_boot": n_boot,
            "seed": seed,
        },
        "gene_set_coverage": matched.coverage.reset_index().to_dict(orient="records"),
        "gene_sets_dropped": matched.dropped,
        "z_scoring": {
            "ers_caf_mean": float(scaler.mean_["ers_caf"]),
            "ers_caf_sd": float(scaler.scale_["ers_caf"]),
        },
        "versions": _versions(),
    }


def _ers_caf_only(ers, base, n_boot, seed):
    """The ERS–CAF targets of log-ratio data; ``lr`` and ``heterogeneity`` refused."""
    targets = pd.DataFrame(ers)
    targets = targets[["ers_caf"] + [c for c in targets.columns if c != "ers_caf"]]
    refusal = "not computed: deconvolution needs linear expression and log ratios have none"
    metadata = base | {
        "methods": {
            "ers_caf": "ssGSEA (GSVA 1.46-identical, alpha=0.25, unnormalised) of the ERS_CAF "
            "set on the log ratios as given (within-sample ranks), z-scored across the samples",
            "ers_caf_gsva": "GSVA (Gaussian kernel, mx.diff) of the same set on the log ratios",
            "ers_caf_independent": "GSVA of ERS_CAF_INDEPENDENT on the log ratios",
        },
        "refused": {"lr": refusal, "heterogeneity": refusal},
    }
    return TargetsResult(
        targets=targets,
        fractions=pd.DataFrame(index=targets.index),
        reliability=_reliability(targets, n_boot, seed),
        metadata=metadata,
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
    ``reliability.json``, ``targets.json`` and, when ``lr`` was computed,
    ``lr_inputs.parquet`` (:data:`~stromalens.rundir.LR_INPUTS`), each atomically."""
    from ..rundir import LR_INPUTS
    from .io import write_lr_inputs

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
    if result.lr_inputs is not None:
        inputs = result.lr_inputs
        if patient_of_sample is not None:
            inputs = inputs.relabel(patient_of_sample)
        write_lr_inputs(inputs, out / LR_INPUTS)
