"""``stromalens evaluate TRAIN``: every analysis of the study on one training run.

Reads the run directory (``docs/run_directory.md``), writes ``TRAIN/evaluation/``: one table per
analysis and ``metrics.json`` (schema: :mod:`stromalens.evaluation.schema`).

Each analysis is an :class:`Analysis` record: ``run(context)`` returns its tables keyed by file
name, ``metrics(tables, context)`` its ``metrics.json`` entries. :data:`ANALYSES` lists them in
the order of the study's Results, and one driver, :func:`evaluate_run`, loops over it: it leaves
out the analyses named in ``skip`` and those whose inputs the run lacks, times each, writes its
tables and gathers its metrics (the shape of decoupler's methods run by one driver). By the
name that ``skip`` takes, with the module that computes it:

``fidelity``       1. fidelity per model and target, 2. the noise ceiling beside each r
                   (``fidelity``), and the headline paired comparisons: the proposed model
                   against each baseline and against no CORAL (``comparisons``)
``probes``         3. missing modalities (``robustness``), 4. each branch's share of the
                   fused representation by strata (``gates``), 6. prompt perturbation
                   (``robustness``), and each tile's attention, which ``attention`` reads
                   (``probes``)
``alignment``      5. site alignment: leave-site-out, k-NN site entropy, 2-D embedding
                   (``alignment``)
``attention``      7. attention co-localisation with the pathologist's annotations
                   (``attention``, ``overlays``)
``survival``       8. survival: Cox HRs, Harrell/Uno C, AUC(t), decision curves (``survival``)
``treatment``      9. treatment response: treatment × score interaction, prognostic vs
                   predictive, out-of-fold AUC (``treatment``)
``distillation``  10. distillation (``distillation``)
``external``      11. zero-shot external cohorts, ``stromalens predict`` outputs (``external``)
``truth``         12. known truth, synthetic cohorts (``truth``)
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from scipy import stats

from ..logs import event, get_logger
from ..names import PROPOSED
from ..rundir import metric_key, open_run
from .fit_warnings import warnings_table
from .schema import WARNINGS_TABLE

if TYPE_CHECKING:
    from ..rundir import RunFiles

log = get_logger("evaluation")

#: The probes' per-tile attention, which the attention analysis reads back from the output folder.
TILES = "attention_tiles.parquet"
#: Risk thresholds of the decision curves (in-run and external). Every 5% rather than the
#: survival module's every 1%: each threshold refits, as each C-index resample does.
THRESHOLDS = np.round(np.arange(0.05, 0.951, 0.05), 2)

Tables = dict[str, pd.DataFrame]


@dataclass
class Context:
    """What the analyses read, and what earlier ones leave for later ones.

    Attributes
    ----------
    run : RunFiles
        The opened training run (:func:`stromalens.rundir.open_run`).
    out : Path
        The output folder.
    skip : frozenset of str
        The analyses asked to be skipped (the probes time inference only for distillation).
    external : list of Path or None
        ``stromalens predict`` output folders; None for those under ``run.root/external/``.
    n_boot, survival_boot, repeats, k_fraction, max_overlays, seed
        The options of :func:`evaluate_run`.
    probes : dict or None
        :func:`~stromalens.evaluation.probes.run_probes`' output (``missing``, ``gates``,
        ``attention``, ``embeddings``, ``prompts``, ``cost``) once the probes ran.
    notes : list of str
        Notes for ``meta.notes``; the run's own first, analyses append theirs.
    gathered : dict
        The metrics of the analyses run so far (the validation analysis reads them).
    """

    run: RunFiles
    out: Path
    skip: frozenset[str]
    external: list[Path] | None
    n_boot: int
    survival_boot: int
    repeats: int
    k_fraction: float
    max_overlays: int
    seed: int
    probes: dict | None = None
    notes: list[str] = field(default_factory=list)
    gathered: dict = field(default_factory=dict)

    @cached_property
    def scores(self) -> pd.DataFrame | None:
        """The proposed model's out-of-fold predictions (patients × targets); None without."""
        if not (self.run.predictions["model"] == PROPOSED).any():
            return None
        return self.run.wide(PROPOSED)


def _always(context: Context) -> bool:
    return True


@dataclass(frozen=True)
class Analysis:
    """One registered analysis.

    Attributes
    ----------
    name : str
        What ``skip`` takes and ``meta.analysis_seconds`` reports.
    run : callable
        ``run(context) -> {file name: table}``, the tables it writes into the output folder
        (``.csv`` or ``.parquet``).
    metrics : callable
        ``metrics(tables, context) -> dict``, its ``metrics.json`` entries from its own tables.
    needs : callable
        ``needs(context) -> bool``: whether the run has the analysis's inputs; without them the
        analysis is left out, silently.
    skippable : bool
        False for an analysis that runs even when ``skip`` names it.
    """

    name: str
    run: Callable[[Context], Tables]
    metrics: Callable[[Tables, Context], dict]
    needs: Callable[[Context], bool] = _always
    skippable: bool = True


# ---------------------------------------------------------------- 1–2. fidelity, noise ceiling
def _fidelity(context: Context) -> Tables:
    from .comparisons import paired_comparisons
    from .fidelity import fidelity, fidelity_macro

    preds = context.run.predictions
    tables = {
        "fidelity.csv": fidelity(preds, context.run.reliability),
        "fidelity_macro.csv": fidelity_macro(preds),
    }
    # every CV repeat: the comparisons average over them and test over their folds
    comparisons = paired_comparisons(
        context.run.repeated_predictions, n_boot=context.n_boot, seed=context.seed
    )
    if len(comparisons):
        tables["comparisons.csv"] = comparisons
    return tables


def _fidelity_metrics(tables: Tables, context: Context) -> dict:
    from .comparisons import comparison_metrics
    from .fidelity import fidelity_metrics

    m = fidelity_metrics(tables["fidelity.csv"], tables["fidelity_macro.csv"])
    if "comparisons.csv" in tables:
        m.update(comparison_metrics(tables["comparisons.csv"]))
    return m


# ------------------------------------------------- 3, 4, 6. the model probes and their tables
def _probes(context: Context) -> Tables:
    from .probes import run_probes
    from .robustness import missing_modality_table, prompt_perturbation_table

    run = context.run
    probes = run_probes(
        run, repeats=context.repeats, seed=context.seed, cost="distillation" not in context.skip
    )
    context.probes = probes
    tables = {
        "missing_modalities.csv": missing_modality_table(probes["missing"]),
        # SYN/ANTI/OOD: the WSI model retrained with each prompt set (training.prompt_sets)
        "prompt_perturbation.csv": prompt_perturbation_table(
            run.predictions, run.prompt_sets, context.n_boot, context.seed
        ),
    }
    if not probes["gates"].empty:
        from .gates import gate_strata_table

        tables["gate_strata.csv"] = gate_strata_table(
            probes["gates"], run.predictions, run.clinical
        )
        # per patient, with the fold whose model gave it: (b)'s interval is over the folds
        tables["gate_shares.csv"] = probes["gates"]
    if not probes["attention"].empty:
        tables[TILES] = probes["attention"]
    return tables


def _probes_metrics(tables: Tables, context: Context) -> dict:
    m = {}
    for row in tables["missing_modalities.csv"].itertuples(index=False):
        m[metric_key("missing", row.model, row.modality, round(100 * row.level))] = row.macro_r
    for row in tables["prompt_perturbation.csv"].itertuples(index=False):
        m[metric_key("prompt", row.prompt_set, "r", row.target)] = row.r
        if row.prompt_set != "CUR":
            m[metric_key("prompt", row.prompt_set, "p_vs_cur", row.target)] = row.p_vs_cur
    gates = tables.get("gate_strata.csv")
    if gates is not None:
        for row in gates[gates["model"] == PROPOSED].itertuples(index=False):
            m[metric_key("gate", row.stratifier, row.stratum, "share_wsi")] = row.share_wsi
            m[metric_key("gate", row.stratifier, "p_kruskal")] = row.p_kruskal
    return m


# -------------------------------------------------------------------------- 5. site alignment
def _embeddings(context: Context) -> pd.DataFrame | None:
    """The probes' fused embeddings of held-out patients (a row per patient, stage and fold
    model: each fold's model embeds its own test patients); None without."""
    from .probes import held_out_rows

    if context.probes is None or context.probes["embeddings"].empty:
        return None
    return held_out_rows(context.probes["embeddings"], context.run.folds)


def _alignment(context: Context) -> Tables:
    from .alignment import embedding_table, leave_site_out_table

    tables = {}
    if context.run.lso is not None:
        tables["site_alignment.csv"] = leave_site_out_table(context.run.lso)
    emb = _embeddings(context)
    if emb is not None:
        first = emb[emb["fold"] == emb["fold"].min()]
        tables["embedding_2d.parquet"] = embedding_table(first, context.seed)
    return tables


def _leave_site_out_metrics(lso: pd.DataFrame) -> dict:
    m = {}
    for row in lso.itertuples(index=False):
        m[metric_key("lso", row.site, "before")] = row.macro_r_before
        m[metric_key("lso", row.site, "after")] = row.macro_r_after
    paired = lso[["macro_r_before", "macro_r_after"]].dropna()
    if len(paired) >= 2 and (paired["macro_r_after"] != paired["macro_r_before"]).any():
        # after − before over the held-out sites (exact signed-rank test)
        m[metric_key("lso_test", "wilcoxon_p")] = stats.wilcoxon(
            paired["macro_r_after"], paired["macro_r_before"], method="exact"
        ).pvalue
    return m


#: Neighbours of the k-NN site entropy (fewer in a small held-out fold: :func:`site_k`).
SITE_K = 10


def site_k(n: int) -> int:
    """k for ``n`` held-out patients: :data:`SITE_K`, but at most a quarter of them (at least
    1). A fold holds out ~n/K patients; with k close to n every neighbourhood is nearly the
    whole fold, and the entropy measures the fold's site mix, not the embedding."""
    return max(1, min(SITE_K, n // 4))


def _site_entropy_metrics(emb: pd.DataFrame) -> dict:
    """Site entropy of each fold model's embedding of its held-out patients (``emb`` as
    :func:`_embeddings` returns it; k by :func:`site_k`), mean and SD over folds,
    before/after CORAL."""
    from .alignment import knn_site_entropy

    m = {}
    entropies: dict[str, list[float]] = {}
    cols = [c for c in emb.columns if c.startswith("e") and c[1:].isdigit()]
    for stage in ("before", "after"):
        values = [
            knn_site_entropy(part[cols].to_numpy(), part["site"], k=site_k(len(part)))
            for _, part in emb[emb["stage"] == stage].groupby("fold")
        ]
        m[metric_key("site_entropy", stage)] = float(np.mean(values))
        m[metric_key("site_entropy", f"{stage}_sd")] = float(np.std(values, ddof=1))
        entropies[stage] = values
    if len(entropies["before"]) >= 2 and len(entropies["after"]) >= 2:
        # the same fold models before/after CORAL: paired t-test over folds
        m[metric_key("site_entropy", "p_paired")] = stats.ttest_rel(
            entropies["after"], entropies["before"]
        ).pvalue
    return m


def _alignment_metrics(tables: Tables, context: Context) -> dict:
    m = {}
    if "site_alignment.csv" in tables:
        m.update(_leave_site_out_metrics(tables["site_alignment.csv"]))
    emb = _embeddings(context)
    if emb is not None:
        m.update(_site_entropy_metrics(emb))
    return m


# ------------------------------------------------------------- 7. attention co-localisation
def _has_tiles(context: Context) -> bool:
    # read back from the folder, so that tiles written by an earlier evaluation count as well
    return (context.out / TILES).is_file()


def _attention(context: Context) -> Tables:
    from .attention import colocalisation
    from .overlays import save_attention_geojson, save_overlays

    run, slides = context.run, context.run.manifest_path.parent
    tiles = pd.read_parquet(context.out / TILES)
    result = colocalisation(
        tiles, run.clinical, slides, k_fraction=context.k_fraction, seed=context.seed
    )
    for reason, count in result.skipped.groupby("reason").size().items():
        context.notes.append(f"attention co-localisation: {count} slide maps skipped ({reason})")
    save_overlays(
        tiles[tiles["model"] == PROPOSED],
        run.clinical,
        slides,
        context.out / "attention",
        max_patients=context.max_overlays,
    )
    # every slide's tiles, for QuPath, beside the PNG overlays
    save_attention_geojson(tiles, context.out / "attention")  # the proposed model's
    tables = {"attention.csv": result.per_patient, "attention_summary.csv": result.summary}
    if len(result.skipped):
        tables["attention_skipped.csv"] = result.skipped
    return tables


def _attention_metrics(tables: Tables, context: Context) -> dict:
    m = {}
    for row in tables["attention_summary.csv"].itertuples(index=False):
        parts = ("attention", row.model, row.target, row.metric, row.grade_stratum)
        m[metric_key(*parts, "observed")] = row.observed
        m[metric_key(*parts, "shuffled")] = row.shuffled
    return m


# ------------------------------------------------------------------ 8–9. survival, treatment
def _has_scores(context: Context) -> bool:
    return context.scores is not None


def _survival(context: Context) -> Tables:
    from .survival import survival_analysis

    tables = survival_analysis(
        context.scores,
        context.run.clinical,
        context.run.folds,
        n_boot=context.survival_boot,
        seed=context.seed,
        thresholds=THRESHOLDS,
    )
    return {f"{name}.csv": frame for name, frame in tables.items()}


def _survival_metrics(tables: Tables, context: Context) -> dict:
    from .survival import survival_metrics

    return survival_metrics({name.removesuffix(".csv"): t for name, t in tables.items()})


def _treatment(context: Context) -> Tables:
    from .treatment import treatment_analysis

    table = treatment_analysis(
        context.scores,
        context.run.clinical,
        context.run.folds,
        n_boot=context.n_boot,
        seed=context.seed,
    )
    return {"treatment.csv": table}


def _treatment_metrics(tables: Tables, context: Context) -> dict:
    from .treatment import treatment_metrics

    return treatment_metrics(tables["treatment.csv"])


# ----------------------------------------------------------------------------- 10. distillation
def _distillation(context: Context) -> Tables:
    from .distillation import distillation_table

    cost = context.probes["cost"] if context.probes is not None else {}
    return {"distillation.csv": distillation_table(context.run.predictions, cost)}


def _distillation_metrics(tables: Tables, context: Context) -> dict:
    from .distillation import distillation_metrics

    return distillation_metrics(tables["distillation.csv"])


# ----------------------------------------------------------------------- 11. external cohorts
def _external(context: Context) -> Tables:
    from .external import external_survival, external_table, find_external, read_external_cohorts

    if context.external is not None:
        dirs = [Path(d) for d in context.external]
    else:
        dirs = find_external(context.run.root)
    cohorts = read_external_cohorts(dirs, context.notes)
    if not cohorts:
        return {}
    tables = {}
    gains = external_survival(
        dirs,
        n_boot=context.survival_boot,
        seed=context.seed,
        thresholds=THRESHOLDS,
        notes=context.notes,
    )
    if not gains.empty:
        tables["external_survival.csv"] = gains
    tables["external.csv"] = external_table(
        cohorts, n_boot=context.n_boot, n_perm=context.n_boot, seed=context.seed
    )
    return tables


def _external_metrics(tables: Tables, context: Context) -> dict:
    m = {}
    gains = tables.get("external_survival.csv")
    if gains is not None:
        for row in gains[gains["metric"] == "harrell"].itertuples(index=False):
            key = metric_key("external", row.cohort, "c_index", row.endpoint, row.model)
            m[key] = row.value
    for row in tables.get("external.csv", pd.DataFrame()).itertuples(index=False):
        m[metric_key("external", row.cohort, row.model, "r", row.target)] = row.r
        if row.model == PROPOSED:
            m[metric_key("external", row.cohort, "r", row.target)] = row.r
    return m


# --------------------------------------------------------------------------- 12. known truth
def _has_truth(context: Context) -> bool:
    return context.run.truth is not None


def _truth(context: Context) -> Tables:
    from .truth import truth_table

    return {"truth.csv": truth_table(context.run.predictions, context.run.truth)}


def _truth_metrics(tables: Tables, context: Context) -> dict:
    return {
        metric_key("truth", row.model, "r", row.target): row.r
        for row in tables["truth.csv"].itertuples(index=False)
    }


# ------------------------------------------------------- 13. method validation (issue 17)
def _has_planted(context: Context) -> bool:
    from .validation import read_planted

    return read_planted(context.run.manifest_path) is not None


def _validation(context: Context) -> Tables:
    from .validation import GATE_SHARES, LEAVE_SITE_OUT, read_planted, validation_table

    def table(name):  # what earlier analyses wrote into the output folder, or None
        path = context.out / name
        return pd.read_csv(path) if path.is_file() else None

    names = ("gate_strata", GATE_SHARES, "attention", "survival_cindex_diff", "external",
             "prompt_perturbation")  # fmt: skip
    written = {name: table(f"{name}.csv") for name in names}
    reference = _reference_arms(context, written)
    written.update(reference)
    written[LEAVE_SITE_OUT] = context.run.lso
    result = validation_table(
        read_planted(context.run.manifest_path),
        context.gathered,
        written,
        context.run.repeated_predictions,  # (a), (g): over every repeat's folds
        context.run.truth,
        clinical=context.run.clinical,
        n_boot=context.n_boot,
        seed=context.seed,
    )
    return {"validation.csv": result, **{f"{name}.csv": t for name, t in reference.items()}}


def _reference_arms(context: Context, written: Tables) -> Tables:
    """(e)'s analyses rerun with the measured targets in place of the AI scores, for the
    analyses that ran (:func:`~stromalens.evaluation.validation.reference_tables`)."""
    from .validation import reference_tables

    run = context.run
    if context.scores is None or run.targets is None:
        return {}
    return reference_tables(
        context.scores.index,
        run.targets,
        run.clinical,
        run.folds,
        survival=written.get("survival_cindex_diff") is not None,
        treatment=(context.out / "treatment.csv").is_file(),
        n_boot=context.n_boot,
        survival_boot=context.survival_boot,
        seed=context.seed,
    )


def _validation_metrics(tables: Tables, context: Context) -> dict:
    from .validation import validation_metrics

    return validation_metrics(tables["validation.csv"])


#: The registry, in the order of the study's Results; later analyses read what earlier ones
#: leave (the probes' output, the tiles file), so the order is also the order of dependence.
ANALYSES: tuple[Analysis, ...] = (
    # every other section is read against fidelity, and it takes a second: always run
    Analysis("fidelity", _fidelity, _fidelity_metrics, skippable=False),
    Analysis("probes", _probes, _probes_metrics),
    Analysis("alignment", _alignment, _alignment_metrics),
    Analysis("attention", _attention, _attention_metrics, needs=_has_tiles),
    Analysis("survival", _survival, _survival_metrics, needs=_has_scores),
    Analysis("treatment", _treatment, _treatment_metrics, needs=_has_scores),
    Analysis("distillation", _distillation, _distillation_metrics),
    Analysis("external", _external, _external_metrics),
    Analysis("truth", _truth, _truth_metrics, needs=_has_truth),
    # reads what the analyses above wrote and gathered: last
    Analysis("validation", _validation, _validation_metrics, needs=_has_planted),
)


# ------------------------------------------------------------------------------------ driver
def _write_table(table: pd.DataFrame, path: Path) -> None:
    if path.suffix == ".csv":
        table.to_csv(path, index=False)
    elif path.suffix == ".parquet":
        table.to_parquet(path, index=False)
    else:
        raise ValueError(f"table {path.name!r}: not a .csv or .parquet file name")


def _run_analysis(analysis: Analysis, context: Context) -> tuple[dict, list[dict]]:
    """Run one analysis, write its tables, and return its metrics and its warnings: what its
    fits logged or raised while it ran and what its tables' numbers show
    (:mod:`~stromalens.evaluation.fit_warnings`)."""
    from .fit_warnings import capture, table_flags

    with capture(analysis.name) as caught:
        tables = analysis.run(context)
    for name, table in tables.items():
        _write_table(table, context.out / name)
    flags = caught.rows(tables) + table_flags(analysis.name, tables)
    if flags:
        event(log, f"{analysis.name}: {len(flags)} warning(s) flagged in the report",
              logging.WARNING, analysis=analysis.name, file=WARNINGS_TABLE)  # fmt: skip
    return analysis.metrics(tables, context), flags


def _run_all(context: Context) -> tuple[dict, dict[str, float]]:
    """Every analysis the context does not skip and has the inputs of, in registry order, each
    announced in the log (``evaluation 4/9: attention``); their metrics (with
    ``warnings.<analysis>.count``) and seconds. Writes ``fit_warnings.csv``."""
    metrics: dict = {}
    seconds: dict[str, float] = {}
    flags: list[dict] = []
    chosen = [a for a in ANALYSES if not (a.skippable and a.name in context.skip)]
    for i, analysis in enumerate(chosen, start=1):
        # asked here, not up front: an analysis may need what an earlier one wrote (the tiles)
        if not analysis.needs(context):
            event(log, f"evaluation {i}/{len(chosen)}: {analysis.name} left out (no inputs)")
            continue
        event(log, f"evaluation {i}/{len(chosen)}: {analysis.name}", analysis=analysis.name)
        t0 = time.perf_counter()
        found, raised = _run_analysis(analysis, context)
        metrics.update(found)
        context.gathered = metrics  # read by the validation analysis
        flags += raised
        seconds[analysis.name] = round(time.perf_counter() - t0, 1)
    _write_table(warnings_table(flags), context.out / WARNINGS_TABLE)
    for name in seconds:
        count = sum(row["analysis"] == name for row in flags)
        metrics[metric_key("warnings", name, "count")] = count
    return metrics, seconds


def evaluate_run(
    train_dir: Path | str,
    out: Path | str | None = None,
    *,
    external: list[Path | str] | None = None,
    skip: tuple[str, ...] = (),
    n_boot: int = 1000,
    survival_boot: int = 200,
    repeats: int = 3,
    k_fraction: float = 0.1,
    max_overlays: int = 6,
    seed: int = 0,
) -> dict:
    """Run every analysis of :data:`ANALYSES` not in ``skip`` on the training run ``train_dir``.

    Parameters
    ----------
    train_dir
        The training run (``stromalens train --out``).
    out
        Where the tables and ``metrics.json`` go; default ``train_dir/evaluation``.
    external
        ``stromalens predict`` output directories; default those under ``train_dir/external/``.
    skip
        Names of analyses to leave out (``fidelity`` is accepted but always runs).
    n_boot, survival_boot
        Bootstrap / permutation resamples; ``survival_boot`` for the survival C-indices (each
        resample refits).
    repeats, k_fraction, max_overlays, seed
        Repeats of the random missing-modality probes, top-K share of attended tiles, attention
        heat maps written, random seed.

    Each analysis is announced in the log as it starts (``evaluation 3/9: alignment``); the
    warnings of its fits go to ``fit_warnings.csv`` (every analysis's, empty when none) and
    their number to ``warnings.<analysis>.count``.

    Returns
    -------
    dict
        The contents of ``metrics.json``: the analyses' metrics, then ``meta.*``.
    """
    from .. import __version__

    names = tuple(a.name for a in ANALYSES)
    unknown = set(skip) - set(names)
    if unknown:
        raise ValueError(f"unknown analyses to skip {sorted(unknown)}; known: {names}")
    started = time.perf_counter()
    run = open_run(train_dir)
    out = Path(out) if out is not None else run.root / "evaluation"
    out.mkdir(parents=True, exist_ok=True)
    context = Context(
        run=run,
        out=out,
        skip=frozenset(skip),
        external=external,
        n_boot=n_boot,
        survival_boot=survival_boot,
        repeats=repeats,
        k_fraction=k_fraction,
        max_overlays=max_overlays,
        seed=seed,
        notes=list(run.notes),
    )
    metrics, seconds = _run_all(context)
    meta = {
        "run": str(run.root),
        "stromalens": __version__,
        "seconds": round(time.perf_counter() - started, 1),
        "analysis_seconds": seconds,
        "notes": context.notes,
        "skipped": sorted(skip),
    }
    return _write_metrics(metrics, meta, out)


def _write_metrics(metrics: dict, meta: dict, out: Path) -> dict:
    """``out/metrics.json``: the analyses' metrics, JSON-ready and sorted, then ``meta.*``."""
    from .schema import clean

    metrics = clean(metrics) | {metric_key("meta", k): v for k, v in meta.items()}
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1), encoding="utf-8")
    event(log, "evaluation written", out=str(out), seconds=meta["seconds"])
    return metrics
