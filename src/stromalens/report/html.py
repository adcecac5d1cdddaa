"""Assemble the report: one self-contained HTML file (figures embedded as base64 PNG) rendered
with Jinja2 from ``templates/report.html.j2``.

Every section is a list of blocks (figure, table, metrics, note, flag, preformatted text). A
block whose input file is absent becomes the note "not run: <file> missing"; a figure that fails
to draw becomes "figure failed: <error>", so one bad table never costs the whole report.

Two rules keep the page honest and readable:

* the warnings of the evaluation's fits (``evaluation/fit_warnings.csv``,
  :mod:`stromalens.evaluation.fit_warnings`) are shown as a flag beside the figure and the table
  they concern, and counted in a banner under the title;
* a table longer than :data:`LONG_TABLE` rows is collapsed (``<details>``) and written in full as
  CSV beside the report (``tables/<name>.csv``), linked from its caption.
"""

from __future__ import annotations

import base64
import datetime as _dt
import json
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ..evaluation.schema import WARNINGS_TABLE
from ..names import PROMPT_SETS, PROPOSED, TARGETS, target_label
from ..rundir import RunDirError, RunFiles, flatten, metric_key, metric_parts
from . import figures

log = logging.getLogger(__name__)

#: Tables with more rows than this are collapsed in the page and written in full as CSV.
LONG_TABLE = 20
#: Folder of those CSV files, beside the report's HTML file.
TABLES_DIR = "tables"
#: Messages listed in one flag; the rest are counted (all are in fit_warnings.csv).
FLAG_LINES = 6

#: Models of the study's own design, listed first in the tables (the rest: baselines).
STUDY_MODELS: tuple[str, ...] = ("fusion", "fusion_no_coral", "wsi_clip", "mri", "mri_student")


@dataclass
class Metric:
    """One number of ``evaluation/metrics.json`` (``key`` set) or derived from them."""

    label: str
    value: float | None
    digits: int = 2
    key: str | None = None
    sign: bool = False

    @property
    def text(self) -> str:
        if self.value is None or not math.isfinite(self.value):
            return "n/a"
        return f"{self.value:+.{self.digits}f}" if self.sign else f"{self.value:.{self.digits}f}"


@dataclass
class Card:
    """A headline item: a title, a main metric and smaller ones beside it."""

    title: str
    main: Metric
    detail: list[Metric] = field(default_factory=list)
    note: str = ""


@dataclass
class Block:
    """One item of a section. ``kind``: figure | table | note | flag | pre | metrics. A table
    keeps its source ``frame`` (full precision) for its CSV file; ``csv`` is the link to that
    file once written, and ``collapsed`` says the page folds it."""

    kind: str
    title: str = ""
    caption: str = ""
    image: str = ""  # data: URI
    alt: str = ""
    columns: list[str] = field(default_factory=list)
    rows: list[list[str]] = field(default_factory=list)
    text: str = ""
    items: list[Metric] = field(default_factory=list)
    lines: list[str] = field(default_factory=list)
    frame: pd.DataFrame | None = None
    csv: str = ""
    collapsed: bool = False


@dataclass
class Section:
    id: str
    title: str
    intro: str
    blocks: list[Block]
    collapsible: bool = False


# ------------------------------------------------------------------------------------------
# helpers
def _fmt(value, digits: int = 3) -> str:
    if value is None:
        return ""
    if isinstance(value, bool | np.bool_):
        return str(bool(value))
    if isinstance(value, int | np.integer):
        return str(int(value))
    if isinstance(value, float | np.floating):
        if not math.isfinite(value):
            return "n/a"
        if value != 0 and abs(value) < 10 ** (-digits):
            return f"{value:.1e}"
        return f"{value:.{digits}f}"
    return str(value)


def _ci(value, low, high, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    if low is None or high is None or pd.isna(low) or pd.isna(high):
        return _fmt(float(value), digits)
    return f"{value:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"


def _table(frame: pd.DataFrame, title: str, caption: str = "", digits: int = 3) -> Block:
    return Block(
        kind="table",
        title=title,
        caption=caption,
        columns=[str(c) for c in frame.columns],
        rows=[[_fmt(v, digits) for v in row] for row in frame.itertuples(index=False)],
        frame=frame,
    )


def _wide(frame: pd.DataFrame, index: str, title: str, cell, order=()) -> Block:
    """One row per ``index`` value, one column per target; ``cell(row)`` formats a cell."""
    targets = [t for t in TARGETS if t in set(frame["target"])]
    targets += [t for t in dict.fromkeys(frame["target"]) if t not in targets]
    keys = [k for k in order if k in set(frame[index])]
    keys += [k for k in dict.fromkeys(frame[index]) if k not in keys]
    cells = {(r[index], r["target"]): cell(r) for _, r in frame.iterrows()}
    return Block(
        kind="table",
        title=title,
        columns=[index] + targets,
        rows=[[str(k)] + [cells.get((k, t), "") for t in targets] for k in keys],
    )


def _note(text: str) -> Block:
    return Block(kind="note", text=text)


def _missing(names: list[str]) -> Block:
    return _note("; ".join(f"not run: {name} missing" for name in names))


def _fit_warnings(run: RunFiles) -> pd.DataFrame | None:
    """``evaluation/fit_warnings.csv`` (empty cells as ""), or None for a run evaluated
    without it (the footer then lists it among the inputs not found)."""
    table = run.evaluation(WARNINGS_TABLE)
    return None if table is None else table.fillna("")


def _flags(run: RunFiles, analysis: str, tables: tuple[str, ...] | None = None) -> list[Block]:
    """A flag listing the fit warnings of ``analysis`` — those about ``tables`` and those about
    the analysis as a whole — or nothing when there are none; ``tables=None``: all of them."""
    found = _fit_warnings(run)
    if found is None or found.empty:
        return []
    rows = found[found["analysis"] == analysis]
    if tables is not None:
        rows = rows[rows["table"].isin(tables) | (rows["table"] == "")]
    if rows.empty:
        return []
    lines = [f"{r.message} [{r.source}]" for r in rows.head(FLAG_LINES).itertuples()]
    if len(rows) > FLAG_LINES:
        lines.append(f"… and {len(rows) - FLAG_LINES} more")
    what = ", ".join(tables) if tables else f"the {analysis} analysis"
    return [
        Block(
            kind="flag",
            title=f"{len(rows)} fit warning(s) for {what}",
            text=f"Read these numbers with care (all in evaluation/{WARNINGS_TABLE}):",
            lines=lines,
        )
    ]


def warning_summary(run: RunFiles) -> str:
    """The banner under the title: how many fit warnings each analysis raised, or ""."""
    found = _fit_warnings(run)
    if found is None or found.empty:
        return ""
    counts = found.groupby("analysis", sort=False).size()
    parts = ", ".join(f"{name} {n}" for name, n in counts.items())
    return (
        f"{len(found)} fit warning(s) were raised ({parts}); each is flagged beside its "
        "table and figure below."
    )


def _png(fig) -> str:
    data = figures.to_png(fig)
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def _figure(title: str, caption: str, draw: Callable[[], object], alt: str = "") -> Block:
    try:
        fig = draw()
        image = _png(fig)
    except Exception as exc:  # one bad table must not cost the whole report
        log.warning("report figure %r failed: %s", title, exc)
        return _note(f"figure failed: {title}: {type(exc).__name__}: {exc}")
    return Block(kind="figure", title=title, caption=caption, image=image, alt=alt or title)


def _load(run: RunFiles, name: str) -> tuple[pd.DataFrame | None, str]:
    """A table by the name the sections use, and its label for 'not run' notes."""
    if name == "targets":
        return run.targets, str(run.targets_path or "training.targets (config.yaml)")
    if name == "truth":
        where = run.manifest_path.parent / "truth.parquet" if run.manifest_path else None
        return run.truth, str(where or "truth.parquet")
    if name == "predictions.parquet":
        return run.predictions, "predictions.parquet"
    return run.evaluation(name), f"evaluation/{name}"


def _need(run: RunFiles, *names: str) -> tuple[list[pd.DataFrame | None], list[str]]:
    frames, missing = [], []
    for name in names:
        frame, label = _load(run, name)
        frames.append(frame)
        if frame is None:
            missing.append(label)
    return frames, missing


def _model_order(models, macro: pd.Series | None = None) -> list[str]:
    models = list(dict.fromkeys(models))
    study = [m for m in STUDY_MODELS if m in models]
    rest = [m for m in models if m not in study]
    if macro is not None:
        rest.sort(key=lambda m: -float(macro.get(m, -np.inf)))
    return study + rest


# ------------------------------------------------------------------------------------------
# headline
def headline(run: RunFiles) -> list[Card]:
    """The first screen: macro-r of the proposed model with its fold SD, per-target r beside the
    noise ceiling, the survival C-index gain and the external r."""
    cards: list[Card] = []
    p = PROPOSED
    key = metric_key("cv", p, "macro_r")
    sd = run.metric(metric_key("cv", p, "macro_r_fold_sd"))
    sd_key = metric_key("cv", p, "macro_r_fold_sd") if sd is not None else None
    if sd is None:
        macro = run.evaluation("fidelity_macro.csv")
        if macro is not None and p in set(macro["model"]):
            sd = float(macro.set_index("model").loc[p, "macro_r_fold_sd"])
    detail = [Metric("fold SD ±", sd, 2, sd_key)] if sd is not None else []
    cards.append(
        Card(f"{p}: out-of-fold macro-r", Metric("macro-r", run.metric(key), 2, key), detail)
    )
    fidelity = run.evaluation("fidelity.csv")
    for target in TARGETS:
        key = metric_key("cv", p, "r", target)
        ceiling = run.metric(metric_key("ceiling", target))
        ckey = metric_key("ceiling", target) if ceiling is not None else None
        if ceiling is None and fidelity is not None:
            rows = fidelity[(fidelity["target"] == target) & fidelity["ceiling"].notna()]
            if len(rows):
                ceiling = float(rows["ceiling"].iloc[0])
        items = [Metric("noise ceiling", ceiling, 2, ckey)] if ceiling is not None else []
        cards.append(
            Card(
                f"r, {target_label(target)}",
                Metric("r", run.metric(key), 2, key),
                items,
            )
        )
    for endpoint in ("os", "pfs"):
        k0 = metric_key("survival", endpoint, "c_index", "clinical")
        k1 = metric_key("survival", endpoint, "c_index", "clinical_ai")
        c0, c1 = run.metric(k0), run.metric(k1)
        if c0 is None and c1 is None:
            continue
        gain = c1 - c0 if c0 is not None and c1 is not None else None
        cards.append(
            Card(
                f"{endpoint.upper()} C-index gain (clinical + AI vs clinical)",
                Metric("ΔC", gain, 3, None, sign=True),
                [Metric("clinical", c0, 3, k0), Metric("clinical + AI", c1, 3, k1)],
            )
        )
    external: dict[str, list[Metric]] = {}
    for parts, _ in metric_parts(run.metrics, "external", length=4):
        if parts[2] == "r":
            key = metric_key(*parts)
            external.setdefault(parts[1], []).append(Metric(parts[3], run.metric(key), 2, key))
    for cohort, items in external.items():
        items.sort(key=lambda m: TARGETS.index(m.label) if m.label in TARGETS else 99)
        values = [m.value for m in items if m.value is not None]
        mean = float(np.mean(values)) if values else None
        cards.append(
            Card(
                f"external {cohort}: zero-shot r",
                Metric("mean r", mean, 2),
                items,
                note="mean over targets",
            )
        )
    return cards


def overview(run: RunFiles) -> str:
    cohort = run.clinical
    parts = []
    if cohort is not None:
        sites = cohort["site"].nunique() if "site" in cohort else 0
        parts.append(f"{len(cohort)} patients at {sites} sites")
    if run.train_metrics and "folds" in run.train_metrics:
        parts.append(f"{run.train_metrics['folds']}-fold site-stratified cross-validation")
    if run.manifest and "seed" in run.manifest:
        parts.append(f"seed {run.manifest['seed']}")
    return "; ".join(parts)


# ------------------------------------------------------------------------------------------
# sections
def section_configuration(run: RunFiles) -> Section:
    blocks: list[Block] = []
    note = run.demo_note()
    if note:
        blocks.append(_note(f"Demo configuration: {note}"))
    if run.config_text is not None:
        blocks.append(Block(kind="pre", title="config.yaml", text=run.config_text))
    else:
        blocks.append(_missing(["config.yaml"]))
    if run.manifest:
        flat = flatten(run.manifest)
        frame = pd.DataFrame({"setting": list(flat), "value": [str(v) for v in flat.values()]})
        blocks.append(_table(frame, "manifest.json (versions, seed, settings, sizes)"))
    if run.train_metrics:
        keep = {k: v for k, v in run.train_metrics.items() if k != "models"}
        flat = flatten(keep)
        frame = pd.DataFrame({"key": list(flat), "value": [str(v) for v in flat.values()]})
        if len(frame):
            blocks.append(_table(frame, "Training run (metrics.json, without per-model scores)"))
    meta = {k: v for k, v in run.metrics.items() if k.startswith("meta.")}
    if meta:
        frame = pd.DataFrame({"key": list(meta), "value": [str(v) for v in meta.values()]})
        blocks.append(_table(frame, "Evaluation (evaluation/metrics.json, meta.*)"))
    if run.study_manifest:
        blocks.append(
            Block(
                kind="pre",
                title="study manifest.json",
                text=json.dumps(run.study_manifest, indent=2, default=str),
            )
        )
    return Section(
        "configuration",
        "Configuration",
        "The settings of this run, as written by the training stage.",
        blocks,
        collapsible=True,
    )


def section_landscape(run: RunFiles) -> Section:
    (targets,), missing = _need(run, "targets")
    blocks = (
        [_missing(missing)]
        if missing
        else [
            _figure(
                "Fig. 1. Surrogate landscape",
                "Distributions of the RNA-derived targets, pairwise scatter with Pearson r and "
                "two-sided p, and the correlation of every score in the targets table "
                "(targets and their alternative pipelines).",
                lambda: figures.surrogate_landscape(targets),
            )
        ]
    )
    return Section(
        "fig1", "Fig. 1 — Surrogate landscape", "What the models learn to predict.", blocks
    )


def section_attention(run: RunFiles) -> Section:
    (summary, table), missing = _need(run, "attention_summary.csv", "attention.csv")
    overlays = run.overlays()
    blocks: list[Block] = []
    if summary is None:
        blocks.append(_missing(missing))
    else:
        from matplotlib.image import imread

        images = {pid: imread(path) for pid, path in list(overlays.items())[:4]}
        captions = {}
        if table is not None:
            grades = table.drop_duplicates("patient_id").set_index("patient_id")["grade"]
            captions = {
                pid: f"{pid}, fibrosis grade {int(grades[pid])}"
                for pid in images
                if pid in grades.index and pd.notna(grades[pid])
            }
        blocks += _flags(run, "attention")
        blocks.append(
            _figure(
                "Fig. 2. Attention co-localisation",
                "Top: attention overlays (evaluation/attention/*.png). Bottom: IoU and hit-rate "
                "of the top-k attended tiles with the pathologist's annotation by fibrosis-grade "
                "stratum, observed vs attention shuffled across tiles (p: permutation).",
                lambda: figures.attention_colocalisation(summary, images, captions),
            )
        )
        from ..evaluation.attention import SUMMARY_COLUMNS

        # the contract's columns (the evaluation appends extras after them)
        cols = [c for c in SUMMARY_COLUMNS[:8] if c in summary]
        blocks.append(_table(summary[cols], "Attention co-localisation summary"))
        if not overlays:
            blocks.append(_missing(["evaluation/attention/*.png"]))
        blocks += _geojson_links(run)
        if table is None:
            blocks.append(_missing(["evaluation/attention.csv"]))
    return Section(
        "fig2",
        "Fig. 2 — Attention co-localisation",
        "Does the model look where pathologists see fibrosis?",
        blocks,
    )


def _geojson_links(run: RunFiles) -> list[Block]:
    """Links to the slides' attention as QuPath GeoJSON (``evaluation/attention/*.geojson``,
    :func:`stromalens.evaluation.overlays.save_attention_geojson`); nothing when none."""
    folder = run.layout.overlays
    files = sorted(folder.glob("*.geojson")) if folder.is_dir() else []
    if not files:
        return []
    return [
        Block(
            kind="links",
            title="Attention as QuPath GeoJSON",
            text="Each slide's tiles with their attention per target as measurements; in "
            "QuPath: File → Import objects from file, on the slide itself (level-0 pixels).",
            rows=[[path.stem, str(path.resolve())] for path in files],
        )
    ]


def relink(sections: list[Section], out_dir: Path | None) -> None:
    """Links of ``links`` blocks relative to the report's folder ``out_dir`` (so that the
    report and the run move together), or ``file:`` URIs when it is not known."""
    import os

    for section in sections:
        for block in section.blocks:
            if block.kind != "links":
                continue
            for row in block.rows:
                path = Path(row[1])
                row[1] = (
                    Path(os.path.relpath(path, Path(out_dir).resolve())).as_posix()
                    if out_dir is not None
                    else path.as_uri()
                )


def fidelity_tables(fidelity: pd.DataFrame, macro: pd.DataFrame | None) -> tuple[Block, Block]:
    """Table 1 (r [95% CI] per target, macro-r ± fold SD, noise-ceiling row) and Table 2 (RMSE ±
    fold SD and calibration slope per target)."""
    macro_r = macro.set_index("model")["macro_r"] if macro is not None else None
    models = _model_order(fidelity["model"], macro_r)
    targets = [t for t in TARGETS if t in set(fidelity["target"])]
    by = fidelity.set_index(["model", "target"])
    rows1, rows2 = [], []
    for m in models:
        row1, row2 = [m], [m]
        for t in targets:
            if (m, t) in by.index:
                r = by.loc[(m, t)]
                row1.append(_ci(r["r"], r.get("r_ci_low"), r.get("r_ci_high")))
                row2.append(f"{r['rmse']:.3f} ± {r.get('rmse_fold_sd', float('nan')):.3f}")
                row2.append(_fmt(r.get("calibration_slope"), 2))
            else:
                row1.append("")
                row2 += ["", ""]
        if macro is not None and m in set(macro["model"]):
            mm = macro.set_index("model").loc[m]
            row1.append(f"{mm['macro_r']:.2f} ± {mm['macro_r_fold_sd']:.2f}")
        else:
            row1.append("")
        rows1.append(row1)
        rows2.append(row2)
    ceiling = ["noise ceiling"]
    for t in targets:
        c = fidelity[(fidelity["target"] == t) & fidelity["ceiling"].notna()]
        ceiling.append(
            _ci(c["ceiling"].iloc[0], c["ceiling_ci_low"].iloc[0], c["ceiling_ci_high"].iloc[0])
            if len(c)
            else "n/a"
        )
    rows1.append(ceiling + [""])
    n = int(fidelity["n"].max()) if "n" in fidelity else 0
    t1 = Block(
        kind="table",
        title="Table 1. Fidelity: Pearson r [95% CI] of out-of-fold predictions",
        caption=f"n = {n} patients. Macro-r: mean r over targets ± SD over folds. "
        "Noise ceiling: agreement of the alternative target pipelines [95% CI].",
        columns=["model"] + [f"r, {t}" for t in targets] + ["macro-r ± fold SD"],
        rows=rows1,
    )
    cols2 = ["model"]
    for t in targets:
        cols2 += [f"RMSE {t} ± fold SD", f"calibration slope {t}"]
    t2 = Block(
        kind="table",
        title="Table 2. Error and calibration of every model",
        caption="RMSE in target units (± SD over folds); calibration slope of y_true on y_pred "
        "(1 = calibrated).",
        columns=cols2,
        rows=rows2,
    )
    return t1, t2


def section_fidelity(run: RunFiles) -> Section:
    (fidelity, macro), missing = _need(run, "fidelity.csv", "fidelity_macro.csv")
    blocks: list[Block] = []
    if fidelity is None:
        blocks.append(_missing(missing))
    else:
        t1, t2 = fidelity_tables(fidelity, macro)
        blocks += _flags(run, "fidelity")
        blocks += [
            t1,
            t2,
            _figure(
                "Fidelity of every model against the noise ceiling",
                "Pearson r (95% CI) per target; dashed: noise ceiling, shaded: its 95% CI; "
                f"the proposed model ({PROPOSED}) in vermillion.",
                lambda: figures.fidelity(fidelity, PROPOSED),
            ),
        ]
        if macro is None:
            blocks.append(_missing(["evaluation/fidelity_macro.csv"]))
        comparisons, _ = _load(run, "comparisons.csv")
        if comparisons is not None:
            blocks.append(
                _table(
                    comparisons,
                    "Headline comparisons (paired)",
                    "Δ macro-r of model A minus model B on the same patients, paired bootstrap "
                    "95% CI over patients (and CV repeats when the run has them); cv_*: the "
                    "mean per-fold difference with Nadeau and Bengio's corrected resampled t "
                    "interval over the CV's fits; 'within noise' unless both intervals "
                    "exclude 0 on the same side.",
                )
            )
    return Section(
        "tables12",
        "Tables 1–2 — Fidelity",
        "How well each model predicts the "
        "RNA-derived targets from images, against the noise ceiling.",
        blocks,
    )


def section_survival(run: RunFiles) -> Section:
    (hr, cindex, auc, dc, diff, treatment), missing = _need(
        run,
        "survival_hr.csv",
        "survival_cindex.csv",
        "survival_auc.csv",
        "decision_curve.csv",
        "survival_cindex_diff.csv",
        "treatment.csv",
    )
    blocks: list[Block] = []
    if hr is None or cindex is None:
        blocks.append(_missing([m for m in missing if "hr" in m or m.endswith("cindex.csv")]))
    else:
        blocks += _flags(run, "survival")
        blocks.append(
            _figure(
                "Fig. 3. Survival",
                "Per endpoint: Cox hazard ratios (95% CI); Harrell's and Uno's C-index of the "
                "clinical model and of clinical + AI (95% CI); time-dependent AUC; decision "
                "curves (net benefit).",
                lambda: figures.survival(hr, cindex, auc, dc),
            )
        )
        blocks += _flags(run, "survival", ("survival_hr.csv",))
        blocks.append(_table(hr, "Cox hazard ratios"))
        if diff is not None:
            blocks.append(_table(diff, "C-index difference (clinical + AI − clinical)"))
    if treatment is not None:
        blocks += _flags(run, "treatment")
        blocks.append(_table(treatment, "Treatment response model"))
    rest = [m for m in missing if m.endswith(("auc.csv", "curve.csv", "diff.csv", "ent.csv"))]
    if rest and hr is not None and cindex is not None:
        blocks.append(_missing(rest))
    return Section(
        "fig3",
        "Fig. 3 — Prognosis",
        "Do the image-derived scores add to clinical "
        "variables for overall and progression-free survival?",
        blocks,
    )


def section_prompts(run: RunFiles) -> Section:
    (pert, tiles), missing = _need(run, "prompt_perturbation.csv", "attention_tiles.parquet")
    blocks: list[Block] = []
    if pert is None:
        blocks.append(_missing(missing))
    else:
        blocks += _flags(run, "probes", ("prompt_perturbation.csv", "attention_tiles.parquet"))
        blocks.append(
            _figure(
                "Fig. 4. Prompt perturbation and attention with and without text",
                "Left: r per prompt set (± fold SD); SYN, ANTI and OOD retrain the WSI model "
                "with that prompt set on the same folds. Right: tile attention of the same "
                "slides with the text prompts and without text (viridis: attention weight).",
                lambda: figures.prompt_perturbation(pert, tiles),
            )
        )
        blocks.append(
            _wide(
                pert,
                "prompt_set",
                "Prompt perturbation: Pearson r ± fold SD",
                lambda r: f"{r['r']:.2f} ± {r['r_fold_sd']:.2f}",
                PROMPT_SETS,
            )
        )
        if "cv_diff_vs_cur" in pert:  # a table evaluated before the fold test lacks it
            blocks.append(
                _wide(
                    pert[pert["prompt_set"] != "CUR"],
                    "prompt_set",
                    "Difference to CUR, mean over folds [corrected resampled t 95% CI]",
                    lambda r: _ci(r["cv_diff_vs_cur"], r["cv_ci_low"], r["cv_ci_high"], 2),
                    PROMPT_SETS,
                )
            )
        if tiles is None:
            blocks.append(_missing(["evaluation/attention_tiles.parquet"]))
    return Section("fig4", "Fig. 4 — Text prompts", "How much the text guidance matters.", blocks)


def section_gating(run: RunFiles) -> Section:
    (gates, missing_mod), missing = _need(run, "gate_strata.csv", "missing_modalities.csv")
    blocks: list[Block] = []
    if gates is None and missing_mod is None:
        blocks.append(_missing(missing))
    else:
        blocks += _flags(run, "probes", ("gate_strata.csv", "missing_modalities.csv"))
        if gates is not None:
            blocks.append(
                _figure(
                    "Fig. 5. Gate shares and missing modalities",
                    "Top: each branch's mean share of the fused representation, "
                    "‖h_wsi‖² / ‖h‖² and ‖h_rad‖² / ‖h‖² with h = g ⊙ [z_rad; z_wsi], by "
                    "stratum (± SD; the shares sum to 1). "
                    "Bottom: macro-r as slides or MRI are removed from a growing fraction of "
                    "patients (± SD over repeats).",
                    lambda: figures.gating(gates, missing_mod, PROPOSED),
                )
            )
            blocks.append(_table(gates, "Gate shares by stratum"))
        if missing:
            blocks.append(_missing(missing))
    return Section(
        "fig5",
        "Fig. 5 — Gating and missing modalities",
        "What the fused model relies on, and how it degrades when a modality is missing.",
        blocks,
    )


def section_sites(run: RunFiles) -> Section:
    (emb, align), missing = _need(run, "embedding_2d.parquet", "site_alignment.csv")
    blocks: list[Block] = []
    items = [
        Metric(
            f"site entropy {stage}",
            run.metric(metric_key("site_entropy", stage)),
            3,
            metric_key("site_entropy", stage),
        )
        for stage in ("before", "after")
        if run.metric(metric_key("site_entropy", stage)) is not None
    ]
    lso = sorted({parts[1] for parts, _ in metric_parts(run.metrics, "lso", length=3)})
    for site in lso:
        for stage in ("before", "after"):
            key = metric_key("lso", site, stage)
            if run.metric(key) is not None:
                items.append(
                    Metric(f"leave-site-out macro-r, site {site}, {stage}", run.metric(key), 2, key)
                )
    if items:
        blocks.append(Block(kind="metrics", title="Site alignment (metrics.json)", items=items))
    blocks += _flags(run, "alignment")
    if emb is None:
        blocks.append(_missing(missing))
    else:
        blocks.append(
            _figure(
                "Fig. 6. Sites before and after CORAL",
                "Patient embeddings coloured by site before and after CORAL alignment; right: "
                "leave-site-out macro-r of each held-out site without and with CORAL.",
                lambda: figures.site_alignment(emb, align),
            )
        )
        if align is not None:
            blocks.append(_table(align, "Leave-site-out macro-r"))
        else:
            blocks.append(_missing(["evaluation/site_alignment.csv"]))
    return Section(
        "fig6",
        "Fig. 6 — Sites",
        "Is the representation free of the acquisition "
        "site, and does the model transfer to an unseen site?",
        blocks,
    )


def predictions_without_targets(run: RunFiles) -> dict[str, tuple[pd.DataFrame, dict]]:
    """``{cohort: (predictions, predict.json)}`` of the external cohorts that
    ``stromalens predict`` applied the model to without targets (``TRAIN/external/*/``)."""
    from ..rundir import PREDICT_INFO, PREDICTIONS

    found = {}
    for directory in run.layout.external_dirs():
        info = json.loads((directory / PREDICT_INFO).read_text(encoding="utf-8"))
        if info.get("targets") or not (directory / PREDICTIONS).is_file():
            continue
        found[str(info.get("cohort") or directory.name)] = (
            pd.read_parquet(directory / PREDICTIONS),
            info,
        )
    return found


def prediction_summary(predictions: pd.DataFrame, cohort: str) -> pd.DataFrame:
    """cohort, model, target, n, mean, SD, median, quartiles of zero-shot predictions."""
    rows = []
    for (model, target), part in predictions.groupby(["model", "target"], sort=False):
        y = part["y_pred"].to_numpy(float)
        q1, median, q3 = np.quantile(y, [0.25, 0.5, 0.75])
        rows.append(
            {"cohort": cohort, "model": model, "target": target, "n": len(y),
             "mean": y.mean(), "sd": y.std(ddof=1) if len(y) > 1 else np.nan,
             "median": median, "q1": q1, "q3": q3}
        )  # fmt: skip
    return pd.DataFrame(rows)


def _untargeted_blocks(run: RunFiles, cohorts: dict[str, tuple[pd.DataFrame, dict]]) -> list:
    """What is known of cohorts predicted without targets: the figure, the table and a note
    saying what is missing."""
    notes = []
    for cohort, (preds, info) in cohorts.items():
        left = info.get("skipped_no_slide") or []
        notes.append(
            f"external cohort {cohort}: {preds['patient_id'].nunique()} patients predicted, "
            "no targets given to `stromalens predict` (predict.json: targets null), so no "
            "concordance r"
            + (f"; {len(left)} patient(s) without a slide not predicted" if left else "")
        )
    preds = {c: p for c, (p, _) in cohorts.items()}
    models = {m for p in preds.values() for m in p["model"]}
    model = PROPOSED if PROPOSED in models else sorted(models)[0]
    try:
        reference = run.wide(model)
    except RunDirError:  # the development predictions are context only
        reference = None
    table = pd.concat([prediction_summary(p, c) for c, p in preds.items()], ignore_index=True)
    return [
        _note("; ".join(notes)),
        _figure(
            "Fig. 7b. Predictions of cohorts without targets",
            f"Distribution of {model}'s zero-shot predictions per target (violin, median) "
            "beside its out-of-fold predictions on the development cohort (grey).",
            lambda: figures.external_predictions(preds, reference, model),
        ),
        _table(table, "Zero-shot predictions of cohorts without targets", digits=3),
    ]


def section_external(run: RunFiles) -> Section:
    (external,), missing = _need(run, "external.csv")
    untargeted = predictions_without_targets(run)
    blocks: list[Block] = []
    if external is not None and len(external):
        blocks += _flags(run, "external")
        blocks.append(
            _figure(
                "Fig. 7. Zero-shot external concordance",
                "Pearson r with the external cohort's RNA-derived targets (thin: 95% CI; thick: "
                "bootstrap CI); beside each point the p-value of the permutation control "
                "(predictions shuffled across patients).",
                lambda: figures.external_concordance(external),
            )
        )
    elif not untargeted:
        blocks.append(_missing(missing) if missing else _note("no external cohort has targets"))
    if untargeted:
        blocks += _untargeted_blocks(run, untargeted)
    return Section(
        "fig7",
        "Fig. 7 — External cohorts",
        "Zero-shot application to cohorts the model never saw.",
        blocks,
    )


def section_deployability(run: RunFiles) -> Section:
    (external, distil), missing = _need(run, "external.csv", "distillation.csv")
    blocks: list[Block] = []
    if external is not None:
        blocks += _flags(run, "external", ("external.csv",))
        frame = external.copy()
        frame["r [95% CI]"] = [
            _ci(r, lo, hi)
            for r, lo, hi in zip(frame["r"], frame["r_ci_low"], frame["r_ci_high"], strict=True)
        ]
        cols = ["cohort", "model", "target", "n", "r [95% CI]"] + [
            c for c in ("p", "p_perm", "q_fdr") if c in frame
        ]
        blocks.append(_table(frame[cols], "Table 3a. External generalisation"))
    if distil is not None:
        blocks += _flags(run, "distillation")
        blocks.append(
            _table(
                distil,
                "Table 3b. Deployability of the MRI-only student",
                "Retention: student r / teacher r; speed: teacher / student seconds per "
                "patient (median of repeats on a fixed 256-patient batch, after a warm-up; a "
                "timing, so it varies between runs); memory: student / teacher peak MB.",
            )
        )
    if missing:
        blocks.append(_missing(missing))
    return Section(
        "table3",
        "Table 3 — Generalisation and deployability",
        "External r and what the distilled MRI student keeps at what cost.",
        blocks,
    )


def section_truth(run: RunFiles) -> Section:
    (truth, preds), missing = _need(run, "truth", "predictions.parquet")
    table = run.evaluation("truth.csv")
    blocks: list[Block] = []
    if truth is None or preds is None:
        text = "; ".join(f"not run: {m} missing" for m in missing)
        if truth is None:
            text += " (only synthetic cohorts have a planted truth)"
        blocks.append(_note(text))
    else:
        mine = preds[preds["model"] == PROPOSED]
        label = PROPOSED
        if mine.empty:
            label = str(preds["model"].iloc[0])
            mine = preds[preds["model"] == label]
        blocks.append(
            _figure(
                "Predictions against the planted truth",
                "Out-of-fold predictions against the latent planted by the generator "
                "(a: ERS–CAF, b: crosstalk, h: heterogeneity).",
                lambda: figures.planted_truth(mine, truth, label),
            )
        )
    if table is not None:
        blocks += _flags(run, "truth")
        blocks.append(
            _wide(
                table,
                "model",
                "Pearson r of every model's predictions with the planted latent",
                lambda r: f"{r['r']:.2f} ({r['latent']}, n = {int(r['n'])})",
                _model_order(table["model"]),
            )
        )
    elif truth is not None:
        blocks.append(_missing(["evaluation/truth.csv"]))
    return Section(
        "truth",
        "Synthetic cohort — planted truth",
        "On a synthetic cohort the biology behind the targets is known: do predictions recover it?",
        blocks,
    )


# ------------------------------------------------------------------- method validation
VALIDATION_TABLE = "validation.csv"


def _validation_rows(table: pd.DataFrame, prefix: str = "") -> list[str]:
    """Cells 'effect [CI]' and 'yes/no' of one run's columns (``prefix`` "null_" or "")."""
    cells = []
    for _, r in table.iterrows():
        detected = r[f"{prefix}detected"]
        known = isinstance(detected, bool | np.bool_)
        cells.append((_ci(r[f"{prefix}effect"], r[f"{prefix}ci_low"], r[f"{prefix}ci_high"], 3),
                      ("yes" if detected else "no") if known else "n/a"))  # fmt: skip
    return cells


def validation_blocks(table: pd.DataFrame, matrix: pd.DataFrame | None) -> list[Block]:
    """The run's validation table, or the matrix of its ``validate-method`` folder when there
    is one (planted beside null), and the sentence of what was recovered."""
    from ..evaluation.validation import recovery_sentence

    shown = matrix if matrix is not None else table
    columns = ["mechanism", "claim", "planted", "recovered effect [95% CI]", "detected"]
    cells = _validation_rows(shown)
    specific = matrix is not None and "planted_minus_null" in matrix
    if matrix is not None:
        columns += ["null planted", "null effect [95% CI]", "null detected"]
        nulls = _validation_rows(matrix, "null_")
    if specific:
        columns.append("planted − null [95% CI]")
    rows = []
    for i, (_, r) in enumerate(shown.iterrows()):
        row = [str(r["mechanism"]), str(r["claim"]), _fmt(r["planted"], 2), *cells[i]]
        if matrix is not None:
            row += [_fmt(r["null_planted"], 2), *nulls[i]]
        if specific:
            row.append(_ci(r["planted_minus_null"], r["pmn_ci_low"], r["pmn_ci_high"], 3))
        rows.append(row)
    title = "Validation matrix (planted and null cohorts)" if matrix is not None else (
        "Planted mechanisms and what their analyses recover")  # fmt: skip
    caption = (
        "Effects oriented so that a recovered mechanism is positive; detected = the 95% CI "
        "excludes 0. The model comparisons (sparse_evidence, reliability, text_prior) are "
        "means over the cross-validation's folds with Nadeau and Bengio's corrected "
        "resampled t interval, which holds the variability between fits."
    )
    block = Block(kind="table", title=title, caption=caption, columns=columns, rows=rows,
                  frame=shown)  # fmt: skip
    return [block, _note(recovery_sentence(shown))]


def section_validation(run: RunFiles) -> Section | None:
    """Method validation (issue 17), on a synthetic cohort with planted mechanisms only: a
    run without ``validation.csv`` (a real cohort) has no such section (None)."""
    from ..rundir import ValidationLayout

    if not run.layout.evaluation_file(VALIDATION_TABLE).is_file():
        return None
    layout = ValidationLayout.around(run.root.parent)
    matrix = pd.read_csv(layout.matrix_csv) if layout is not None else None
    blocks = _flags(run, "validation")
    blocks += validation_blocks(run.evaluation(VALIDATION_TABLE), matrix)
    return Section(
        "validation",
        "Method validation",
        "Each mechanism the study claims was planted by the generator with a known size; does "
        "the analysis that claims it detect it, and stay silent on the null cohort?",
        blocks,
    )


#: The section builders in page order; one returning None has nothing to show for this run.
SECTIONS: tuple[Callable[[RunFiles], Section | None], ...] = (
    section_configuration,
    section_landscape,
    section_attention,
    section_fidelity,
    section_survival,
    section_prompts,
    section_gating,
    section_sites,
    section_external,
    section_deployability,
    section_truth,
    section_validation,
)


def _slug(title: str) -> str:
    words = "".join(c.lower() if c.isalnum() else " " for c in title).split()
    return "-".join(words[:8]) or "table"


def fold_long_tables(sections: list[Section], out_dir: Path | None) -> list[Path]:
    """Collapse every table of more than :data:`LONG_TABLE` rows and, with ``out_dir`` (the
    report's folder), write it in full to ``out_dir/tables/<slug of its title>.csv`` (its
    source frame at full precision, else the cells as shown) and link it. Returns the files."""
    written: list[Path] = []
    used: set[str] = set()
    for section in sections:
        for block in section.blocks:
            if block.kind != "table" or len(block.rows) <= LONG_TABLE:
                continue
            block.collapsed = True
            if out_dir is None:
                continue
            name = _slug(block.title)
            while name in used:
                name += "-1"
            used.add(name)
            path = Path(out_dir) / TABLES_DIR / f"{name}.csv"
            path.parent.mkdir(parents=True, exist_ok=True)
            frame = block.frame
            if frame is None:
                frame = pd.DataFrame(block.rows, columns=block.columns)
            frame.to_csv(path, index=False)
            block.csv = f"{TABLES_DIR}/{path.name}"
            written.append(path)
    return written


def render(run: RunFiles, out_dir: Path | None = None) -> str:
    """The report of ``run`` as one HTML string; long tables are written as CSV under
    ``out_dir`` (the report's folder) when given (:func:`fold_long_tables`)."""
    from jinja2 import Environment, PackageLoader, StrictUndefined

    env = Environment(
        loader=PackageLoader("stromalens.report", "templates"),
        autoescape=True,
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    from .. import __version__

    sections = [section for build in SECTIONS if (section := build(run)) is not None]
    fold_long_tables(sections, out_dir)
    relink(sections, out_dir)
    return env.get_template("report.html.j2").render(
        title=f"stromalens report — {run.config.get('name') or run.root.resolve().name}",
        train_dir=str(run.root),
        generated=_dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        version=__version__,
        overview=overview(run),
        demo_note=run.demo_note(),
        notes=run.config.get("notes") or "",
        warnings=warning_summary(run),
        cards=headline(run),
        sections=sections,
        missing=sorted(run.missing),
    )


def write(run: RunFiles, out: Path) -> Path:
    """Render and write atomically (temporary name, then rename)."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(render(run, out.parent), encoding="utf-8")
    tmp.replace(out)
    return out
