"""The report's figures: one function per figure, each taking the run's tables (DataFrames in
the long formats of ``docs/run_directory.md``) and returning a matplotlib ``Figure``.

Figures are drawn on the Agg canvas without pyplot (no global state, nothing to close), with
axis labels, units and sample sizes, and colour-blind-safe colours: the Okabe–Ito palette for
categories, viridis/cividis for continuous values.
"""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FixedLocator, FormatStrFormatter, NullFormatter

from ..correlation import pearson as pearson_r
from ..names import LATENTS, PROMPT_SETS, TARGETS, target_label

#: Okabe & Ito (2008), "Color Universal Design": distinguishable under every common colour-vision
#: deficiency. Black is left out of the cycle (used for references).
OKABE_ITO: tuple[str, ...] = (
    "#0072B2",  # blue
    "#E69F00",  # orange
    "#009E73",  # bluish green
    "#CC79A7",  # reddish purple
    "#56B4E9",  # sky blue
    "#D55E00",  # vermillion
    "#F0E442",  # yellow
)
GREY = "#999999"


def colour(i: int) -> str:
    return OKABE_ITO[i % len(OKABE_ITO)]


def pearson(x, y) -> tuple[float, float, int]:
    """Pearson r (:func:`stromalens.correlation.pearson`, NaN where undefined), its two-sided p
    (t-test with n − 2 degrees of freedom, as ``scipy.stats.pearsonr``) and n, the number of
    pairs where both are finite."""
    from scipy.special import stdtr

    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    n = int((np.isfinite(x) & np.isfinite(y)).sum())
    r = pearson_r(x, y)
    if not np.isfinite(r):
        return r, float("nan"), n
    r = float(np.clip(r, -1.0, 1.0))
    if abs(r) == 1.0:
        return r, 0.0, n
    t = r * np.sqrt((n - 2) / (1 - r * r))
    return r, float(2 * stdtr(n - 2, -abs(t))), n


def format_p(p: float) -> str:
    if p is None or not np.isfinite(p):
        return "p = n/a"
    return "p < 0.001" if p < 0.001 else f"p = {p:.3f}"


def to_png(fig: Figure, dpi: int = 100) -> bytes:
    """The figure as PNG bytes (Agg canvas)."""
    FigureCanvasAgg(fig)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, facecolor="white")
    return buffer.getvalue()


def _new(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _order(values, preferred) -> list:
    present = list(dict.fromkeys(values))
    return [v for v in preferred if v in present] + [v for v in present if v not in preferred]


def _empty(ax, text: str = "no data") -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color=GREY)
    ax.set_xticks([])
    ax.set_yticks([])


# --------------------------------------------------------------------------------------------
# Fig. 1 — surrogate landscape
def surrogate_landscape(targets: pd.DataFrame, columns=TARGETS) -> Figure:
    """Distributions of the targets (diagonal), pairwise scatter with Pearson r and p (lower
    triangle), and the correlation heatmap of every numeric column of the targets table (the
    three targets and their alternative pipelines)."""
    columns = [c for c in columns if c in targets.columns]
    numeric = targets.select_dtypes("number")
    fig = _new(13, 5.6)
    left, right = fig.subfigures(1, 2, width_ratios=[1.25, 1])
    k = len(columns)
    axes = left.subplots(k, k, squeeze=False)
    left.suptitle(f"Surrogate targets (n = {len(targets)} patients)", fontsize=11)
    for i, row in enumerate(columns):
        for j, col in enumerate(columns):
            ax = axes[i][j]
            if i == j:
                values = targets[col].dropna()
                ax.hist(values, bins=15, color=colour(i), edgecolor="white")
                ax.set_ylabel("patients")
            elif i > j:
                r, p, n = pearson(targets[col], targets[row])
                ax.scatter(targets[col], targets[row], s=10, color=colour(j), alpha=0.75, lw=0)
                ax.set_title(f"r = {r:.2f}, {format_p(p)}, n = {n}", fontsize=8)
            else:
                ax.axis("off")
                continue
            if i == k - 1:
                ax.set_xlabel(f"{target_label(col)}\n(score)", fontsize=8)
            if j == 0 and i != j:
                ax.set_ylabel(f"{target_label(row)}\n(score)", fontsize=8)
            ax.tick_params(labelsize=7)
    ax = right.subplots()
    corr = numeric.corr()
    image = ax.imshow(corr.to_numpy(), cmap="cividis", vmin=-1, vmax=1)
    ax.set_xticks(range(len(corr)), corr.columns, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(len(corr)), corr.index, fontsize=8)
    for a in range(len(corr)):
        for b in range(len(corr)):
            value = corr.iat[a, b]
            ax.text(
                b,
                a,
                f"{value:.2f}",
                ha="center",
                va="center",
                fontsize=7,
                color="black" if value > 0.2 else "white",
            )
    ax.set_title(f"Pearson correlation (n = {len(numeric)})", fontsize=10)
    right.colorbar(image, ax=ax, label="Pearson r", shrink=0.8)
    return fig


# --------------------------------------------------------------------------------------------
# Fig. 2 — attention co-localisation
def attention_colocalisation(
    summary: pd.DataFrame,
    overlays: dict[str, np.ndarray] | None = None,
    captions: dict[str, str] | None = None,
    model: str | None = None,
) -> Figure:
    """Heat-map overlays of tile attention on the slides (top) and the co-localisation of
    attention with the pathologist's annotations: IoU and hit-rate of the top-k tiles per
    fibrosis-grade stratum, observed vs attention shuffled across tiles (bottom).

    ``summary``: ``attention_summary.csv`` (model, target, grade_stratum, metric, observed,
    shuffled, n, p); ``overlays``: RGB(A) arrays by patient."""
    overlays = overlays or {}
    captions = captions or {}
    models = _order(summary["model"], ["fusion", "wsi_clip", "clip_mil_coop"])
    model = model if model in models else models[0]
    part = summary[summary["model"] == model]
    shown = list(overlays)[:4]
    fig = _new(13, 7.2 if shown else 4.2)
    if shown:
        top, bottom = fig.subfigures(2, 1, height_ratios=[0.75, 1])
        axes = top.subplots(1, len(shown), squeeze=False)[0]
        for ax, pid in zip(axes, shown, strict=True):
            ax.imshow(overlays[pid])
            ax.set_title(captions.get(pid, pid), fontsize=9)
            ax.set_xticks([])
            ax.set_yticks([])
        top.suptitle("Attention overlays (brighter = higher attention)", fontsize=10)
    else:
        bottom = fig
    metrics = [m for m in ("iou", "hit_rate") if m in set(part["metric"])]
    axes = bottom.subplots(1, max(len(metrics), 1), squeeze=False)[0]
    names = {"iou": "IoU with annotation", "hit_rate": "hit-rate of the top-k tiles"}
    for ax, metric in zip(axes, metrics, strict=False):
        rows = part[part["metric"] == metric]
        rows = rows.assign(_t=rows["target"].map({t: i for i, t in enumerate(TARGETS)}))
        rows = rows.sort_values(["_t", "target", "grade_stratum"])
        x = np.arange(len(rows))
        ax.bar(x - 0.2, rows["observed"], 0.4, color=OKABE_ITO[0], label="observed")
        ax.bar(x + 0.2, rows["shuffled"], 0.4, color=GREY, label="shuffled attention")
        labels = [
            f"{t}\ngrade {g}\nn = {int(n)}"
            for t, g, n in zip(rows["target"], rows["grade_stratum"], rows["n"], strict=True)
        ]
        ax.set_xticks(x, labels, fontsize=7)
        for xi, obs, p in zip(x, rows["observed"], rows["p"], strict=True):
            ax.text(xi - 0.2, obs, format_p(p), ha="center", va="bottom", fontsize=6)
        ax.set_ylabel(f"{names[metric]} (0–1)")
        top = float(np.nanmax(rows[["observed", "shuffled"]].to_numpy(dtype=float)))
        ax.set_ylim(0, min(1.0, 1.3 * top) if top > 0 else 1.0)
        ax.set_title(f"{names[metric]} by fibrosis grade — {model}", fontsize=10)
        ax.legend(fontsize=8, frameon=False, loc="upper right")
    if not metrics:
        _empty(axes[0])
    return fig


# --------------------------------------------------------------------------------------------
# Tables 1–2 — fidelity (figure companion)
def fidelity(fidelity_table: pd.DataFrame, proposed: str = "fusion") -> Figure:
    """Pearson r (95% CI) between out-of-fold predictions and targets for every model, one
    panel per target, against the noise ceiling (agreement of the alternative target
    pipelines; shaded: its 95% CI)."""
    targets = _order(fidelity_table["target"], TARGETS)
    macro = fidelity_table.groupby("model")["r"].mean().sort_values()
    models = list(macro.index)
    fig = _new(13, 0.3 * len(models) + 1.6)
    axes = fig.subplots(1, len(targets), sharey=True, squeeze=False)[0]
    y = {m: i for i, m in enumerate(models)}
    for ax, target in zip(axes, targets, strict=True):
        rows = fidelity_table[fidelity_table["target"] == target]
        for _, row in rows.iterrows():
            c = OKABE_ITO[5] if row["model"] == proposed else OKABE_ITO[0]
            yi = y[row["model"]]
            ax.errorbar(
                row["r"],
                yi,
                xerr=[[row["r"] - row["r_ci_low"]], [row["r_ci_high"] - row["r"]]],
                fmt="o",
                color=c,
                ms=4,
                capsize=2,
                lw=1,
            )
        ceiling = rows["ceiling"].dropna()
        if len(ceiling):
            ax.axvline(ceiling.iloc[0], color="black", ls="--", lw=1, label="noise ceiling")
            if {"ceiling_ci_low", "ceiling_ci_high"} <= set(rows.columns):
                ax.axvspan(
                    rows["ceiling_ci_low"].iloc[0],
                    rows["ceiling_ci_high"].iloc[0],
                    color=GREY,
                    alpha=0.25,
                    lw=0,
                )
        n = int(rows["n"].max()) if "n" in rows and len(rows) else 0
        ax.set_title(f"{target_label(target)} (n = {n})", fontsize=10)
        ax.set_xlabel("Pearson r, out-of-fold (95% CI)")
        ax.axvline(0, color=GREY, lw=0.8)
        ax.set_xlim(min(-0.1, float(rows["r_ci_low"].min()) - 0.05), 1.0)
        ax.legend(fontsize=7, frameon=False, loc="lower left")
    axes[0].set_yticks(range(len(models)), models, fontsize=8)
    return fig


# --------------------------------------------------------------------------------------------
# Fig. 3 — survival
def survival(
    hr: pd.DataFrame,
    cindex: pd.DataFrame,
    auc: pd.DataFrame | None = None,
    decision: pd.DataFrame | None = None,
) -> Figure:
    """Per endpoint (rows: OS, PFS): forest plot of Cox hazard ratios (95% CI, log scale);
    C-index (Harrell's and Uno's) of the clinical vs the clinical + AI model; time-dependent
    AUC; decision curves (net benefit against threshold probability)."""
    endpoints = _order(hr["endpoint"], ["os", "pfs"])
    cols = 2 + (auc is not None) + (decision is not None)
    fig = _new(15, 3.4 * len(endpoints))
    grid = fig.subplots(len(endpoints), cols, squeeze=False)
    model_colour = {"clinical": OKABE_ITO[1], "clinical_ai": OKABE_ITO[0]}
    label = {"clinical": "clinical", "clinical_ai": "clinical + AI"}
    for axes, endpoint in zip(grid, endpoints, strict=True):
        name = endpoint.upper()
        rows = hr[hr["endpoint"] == endpoint].reset_index(drop=True)
        ax = axes[0]
        yy = np.arange(len(rows))[::-1]
        ok = (rows["hr"] > 0) & (rows["ci_low"] > 0) & (rows["ci_high"] > 0)
        ax.errorbar(
            rows.loc[ok, "hr"],
            yy[ok.to_numpy()],
            xerr=[
                rows.loc[ok, "hr"] - rows.loc[ok, "ci_low"],
                rows.loc[ok, "ci_high"] - rows.loc[ok, "hr"],
            ],
            fmt="s",
            color=OKABE_ITO[0],
            ms=4,
            capsize=2,
            lw=1,
        )
        ax.axvline(1, color="black", lw=0.8, ls="--")
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(FixedLocator([0.1, 0.2, 0.5, 1, 2, 5, 10]))
        ax.xaxis.set_major_formatter(FormatStrFormatter("%g"))
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_yticks(yy, rows["term"], fontsize=8)
        for yi, (_, r) in zip(yy, rows.iterrows(), strict=True):
            ax.annotate(
                f"{r['hr']:.2f} ({r['ci_low']:.2f}–{r['ci_high']:.2f}) {format_p(r['p'])}",
                (1.02, yi),
                xycoords=("axes fraction", "data"),
                fontsize=7,
                va="center",
            )
        n = int(rows["n"].max()) if len(rows) else 0
        events = int(rows["events"].max()) if len(rows) else 0
        ax.set_title(f"{name}: Cox HR (n = {n}, events = {events})", fontsize=10)
        ax.set_xlabel("hazard ratio (95% CI, log scale)")

        ax = axes[1]
        part = cindex[cindex["endpoint"] == endpoint]
        metrics = _order(part["metric"], ["harrell"])
        x = np.arange(len(metrics))
        for k, model in enumerate(["clinical", "clinical_ai"]):
            sub = part[part["model"] == model].set_index("metric").reindex(metrics)
            ax.bar(
                x + (k - 0.5) * 0.38,
                sub["value"],
                0.38,
                color=model_colour[model],
                yerr=[sub["value"] - sub["ci_low"], sub["ci_high"] - sub["value"]],
                capsize=2,
                label=label[model],
            )
        ax.axhline(0.5, color=GREY, lw=0.8, ls=":")
        ax.set_xticks(
            x,
            [m.replace("uno_", "Uno\n") + (" mo" if "uno" in m else "") for m in metrics],
            fontsize=8,
        )
        ax.set_ylim(0.4, 1.0)
        ax.set_ylabel("C-index (95% CI)")
        ax.set_title(f"{name}: concordance", fontsize=10)
        ax.legend(fontsize=7, frameon=False, loc="upper left")

        col = 2
        if auc is not None:
            ax = axes[col]
            col += 1
            part = auc[auc["endpoint"] == endpoint]
            for model in _order(part["model"], ["clinical", "clinical_ai"]):
                sub = part[part["model"] == model].sort_values("time")
                ax.plot(
                    sub["time"],
                    sub["auc"],
                    marker="o",
                    ms=3,
                    label=label.get(model, model),
                    color=model_colour.get(model, GREY),
                )
            ax.axhline(0.5, color=GREY, lw=0.8, ls=":")
            ax.set_ylim(0.4, 1.0)
            ax.set_xlabel("time (months)")
            ax.set_ylabel("time-dependent AUC")
            ax.set_title(f"{name}: cumulative/dynamic AUC(t)", fontsize=10)
            ax.legend(fontsize=7, frameon=False)
        if decision is not None:
            ax = axes[col]
            part = decision[decision["endpoint"] == endpoint]
            horizons = sorted(part["horizon"].unique())
            styles = ["-", "--", ":", "-."]
            extra = {"all": "black", "none": GREY, "treat_all": "black", "treat_none": GREY}
            for h, horizon in enumerate(horizons):
                for model in _order(part["model"], ["clinical", "clinical_ai"]):
                    sub = part[(part["model"] == model) & (part["horizon"] == horizon)]
                    sub = sub.sort_values("threshold")
                    ax.plot(
                        sub["threshold"],
                        sub["net_benefit"],
                        ls=styles[h % 4],
                        lw=1.2,
                        color=model_colour.get(model, extra.get(model, OKABE_ITO[3])),
                        label=f"{label.get(model, model)}, {horizon:g} mo",
                    )
            values = part["net_benefit"].to_numpy(dtype=float)
            top = float(np.nanmax(values)) if len(values) else 0.1
            ax.set_ylim(-0.05, max(top * 1.1, 0.05))
            ax.set_xlabel("threshold probability")
            ax.set_ylabel("net benefit")
            ax.set_title(f"{name}: decision curves", fontsize=10)
            ax.legend(fontsize=6, frameon=False)
    return fig


# --------------------------------------------------------------------------------------------
# Fig. 4 — prompts
def prompt_perturbation(
    perturbation: pd.DataFrame, tiles: pd.DataFrame | None = None, target: str | None = None
) -> Figure:
    """Left: Pearson r of the CLIP-guided model with each prompt set (NONE: no text; CUR:
    curated; COOP: learned context; SYN: synonyms; ANTI: antonyms; OOD: out-of-domain), error
    bars the SD over folds. Right: tile attention of the same slides with text prompts and
    without (``clip_mil_none``), one row per patient."""
    sets = _order(perturbation["prompt_set"], PROMPT_SETS)
    targets = _order(perturbation["target"], TARGETS)
    pairs, patients = [], []
    if tiles is not None and len(tiles):
        target = target if target in set(tiles["target"]) else _order(tiles["target"], TARGETS)[0]
        tiles = tiles[tiles["target"] == target]
        models = list(dict.fromkeys(tiles["model"]))
        without = next((m for m in models if m.endswith("_none")), None)
        with_text = _order([m for m in models if m != without], ["wsi_clip", "fusion"])
        pairs = [m for m in (with_text[:1] + [without]) if m is not None]
        counts = tiles.groupby("patient_id").size().sort_values(ascending=False)
        patients = list(counts.index[:2])
    fig = _new(14, 4.6 if len(patients) < 2 else 6.4)
    left, right = fig.subfigures(1, 2, width_ratios=[1.1, 1]) if pairs else (fig, None)
    ax = left.subplots()
    width = 0.8 / max(len(targets), 1)
    x = np.arange(len(sets))
    n = int(perturbation["n"].max()) if "n" in perturbation and len(perturbation) else 0
    for k, t in enumerate(targets):
        sub = perturbation[perturbation["target"] == t].set_index("prompt_set").reindex(sets)
        ax.bar(
            x + (k - (len(targets) - 1) / 2) * width,
            sub["r"],
            width,
            yerr=sub["r_fold_sd"],
            capsize=2,
            color=colour(k),
            label=target_label(t),
        )
    ax.axhline(0, color="black", lw=0.8)
    ax.set_xticks(x, sets)
    ax.set_xlabel("prompt set")
    ax.set_ylabel("Pearson r, out-of-fold (± fold SD)")
    ax.set_title(f"Prompt perturbation (n = {n} patients)", fontsize=10)
    ax.legend(fontsize=8, frameon=False)
    if right is not None:
        axes = right.subplots(len(patients), len(pairs), squeeze=False)
        vmax = float(tiles["attention"].max())
        image = None
        for i, pid in enumerate(patients):
            for j, model in enumerate(pairs):
                a = axes[i][j]
                sub = tiles[(tiles["patient_id"] == pid) & (tiles["model"] == model)]
                if sub.empty:
                    _empty(a, "no tiles")
                    continue
                image = a.imshow(
                    attention_grid(sub),
                    cmap="viridis",
                    vmin=0,
                    vmax=vmax,
                    extent=_grid_extent(sub),
                    interpolation="nearest",
                )
                a.set_facecolor("#eeeeee")
                a.tick_params(labelsize=6)
                kind = "without text" if model.endswith("_none") else "with text"
                a.set_title(f"{pid}: {kind} ({model}), {len(sub)} tiles", fontsize=8)
                a.set_xlabel("x (level-0 px)", fontsize=7)
                a.set_ylabel("y (level-0 px)", fontsize=7)
        if image is not None:
            right.colorbar(image, ax=axes, label="attention weight", shrink=0.8)
        right.suptitle(f"Attention maps, {target_label(target)}", fontsize=10)
    return fig


def attention_grid(tiles: pd.DataFrame) -> np.ndarray:
    """Tile attention as an image, one pixel per tile (NaN where no tile), rows = y.

    ``tiles``: x, y (level-0 px of the tile's corner), tile_px, attention."""
    step = float(tiles["tile_px"].iloc[0]) if "tile_px" in tiles else 1.0
    ix = np.round((tiles["x"] - tiles["x"].min()) / step).astype(int).to_numpy()
    iy = np.round((tiles["y"] - tiles["y"].min()) / step).astype(int).to_numpy()
    grid = np.full((iy.max() + 1, ix.max() + 1), np.nan)
    grid[iy, ix] = tiles["attention"].to_numpy(dtype=float)
    return grid


def _grid_extent(tiles: pd.DataFrame) -> tuple[float, float, float, float]:
    step = float(tiles["tile_px"].iloc[0]) if "tile_px" in tiles else 1.0
    x0, y0 = float(tiles["x"].min()), float(tiles["y"].min())
    return (x0, float(tiles["x"].max()) + step, float(tiles["y"].max()) + step, y0)


# --------------------------------------------------------------------------------------------
# Fig. 5 — gating and missing modalities
def gating(
    gates: pd.DataFrame, missing: pd.DataFrame | None = None, model: str = "fusion"
) -> Figure:
    """Top: mean share of the slide (WSI) and MRI branches in the fused model's representation,
    ‖h_wsi‖² / ‖h‖² and 1 minus it (:mod:`stromalens.evaluation.gates`), by stratum (error
    bars: SD over patients; the two shares stack to 1). Bottom: macro-r as a growing fraction
    of patients lose their slide or their MRI (bands: SD over repeats)."""
    if "model" in gates and model in set(gates["model"]):
        gates = gates[gates["model"] == model]
    stratifiers = _order(gates["stratifier"], ["location", "volume_tertile", "age_group"])
    fig = _new(13, 7.5 if missing is not None else 3.8)
    top, bottom = fig.subfigures(2, 1) if missing is not None else (fig, None)
    axes = top.subplots(1, len(stratifiers), sharey=True, squeeze=False)[0]
    for ax, stratifier in zip(axes, stratifiers, strict=True):
        rows = gates[gates["stratifier"] == stratifier]
        x = np.arange(len(rows))
        ax.bar(
            x,
            rows["share_wsi"],
            0.6,
            color=OKABE_ITO[0],
            label="WSI",
            yerr=rows.get("share_wsi_sd"),
            capsize=2,
        )
        ax.bar(x, rows["share_mri"], 0.6, bottom=rows["share_wsi"], color=OKABE_ITO[1], label="MRI")
        ax.set_xticks(
            x,
            [f"{s}\nn = {int(n)}" for s, n in zip(rows["stratum"], rows["n"], strict=True)],
            fontsize=7,
        )
        ax.set_ylim(0, 1.0)
        ax.set_title(f"share by {stratifier.replace('_', ' ')}", fontsize=10)
    axes[0].set_ylabel("share of fused ‖h‖² (± SD)")
    top.legend(
        *axes[0].get_legend_handles_labels(), loc="outside right center", fontsize=8, frameon=False
    )
    top.suptitle(f"Each branch's share of the fused representation of {model}", fontsize=10)
    if bottom is not None:
        modalities = _order(missing["modality"], ["wsi", "mri"])
        axes = bottom.subplots(1, len(modalities), sharey=True, squeeze=False)[0]
        models = _order(missing["model"], ["fusion", "fusion_no_coral", "late_fusion"])
        for ax, modality in zip(axes, modalities, strict=True):
            for k, m in enumerate(models):
                sub = missing[(missing["modality"] == modality) & (missing["model"] == m)]
                sub = sub.sort_values("level")
                if sub.empty:
                    continue
                pct = 100 * sub["level"]
                ax.plot(pct, sub["macro_r"], marker="o", ms=3, color=colour(k), label=m)
                if "macro_r_sd" in sub:
                    ax.fill_between(
                        pct,
                        sub["macro_r"] - sub["macro_r_sd"],
                        sub["macro_r"] + sub["macro_r_sd"],
                        color=colour(k),
                        alpha=0.2,
                        lw=0,
                    )
            ax.set_xlabel(f"patients without {modality.upper()} (%)")
            ax.set_title(f"{modality.upper()} removed", fontsize=10)
            ax.legend(fontsize=7, frameon=False)
        axes[0].set_ylabel("macro-r (± SD)")
    return fig


# --------------------------------------------------------------------------------------------
# Fig. 6 — sites
def site_alignment(embedding: pd.DataFrame, alignment: pd.DataFrame | None = None) -> Figure:
    """Patient embeddings of the fused model in 2-D, coloured by site, before and after CORAL
    alignment; leave-site-out macro-r of each held-out site without and with CORAL."""
    stages = _order(embedding["stage"], ["before", "after"])
    sites = sorted(embedding["site"].astype(str).unique())
    method = str(embedding["method"].iloc[0]) if "method" in embedding and len(embedding) else ""
    ncols = len(stages) + (alignment is not None)
    fig = _new(4.4 * ncols, 4.2)
    axes = fig.subplots(1, ncols, squeeze=False)[0]
    for ax, stage in zip(axes, stages, strict=False):
        part = embedding[embedding["stage"] == stage]
        for k, site in enumerate(sites):
            sub = part[part["site"].astype(str) == site]
            ax.scatter(
                sub["x"],
                sub["y"],
                s=14,
                color=colour(k),
                label=f"{site} (n = {len(sub)})",
                alpha=0.85,
                lw=0,
            )
        ax.set_title(f"{stage} CORAL", fontsize=10)
        ax.set_xlabel(f"{method} 1")
        ax.set_ylabel(f"{method} 2")
        ax.legend(fontsize=7, frameon=False, title="site", title_fontsize=7)
    if alignment is not None:
        ax = axes[-1]
        x = np.arange(len(alignment))
        ax.bar(x - 0.2, alignment["macro_r_before"], 0.4, color=GREY, label="without CORAL")
        ax.bar(x + 0.2, alignment["macro_r_after"], 0.4, color=OKABE_ITO[0], label="with CORAL")
        labels = [
            f"{s}\nn = {int(n)}" for s, n in zip(alignment["site"], alignment["n"], strict=True)
        ]
        ax.set_xticks(x, labels, fontsize=8)
        ax.axhline(0, color="black", lw=0.8)
        ax.set_xlabel("held-out site")
        ax.set_ylabel("macro-r on the held-out site")
        ax.set_title("Leave-site-out", fontsize=10)
        ax.legend(fontsize=7, frameon=False)
    return fig


# --------------------------------------------------------------------------------------------
# Fig. 7 — external cohorts
def external_concordance(external: pd.DataFrame) -> Figure:
    """Zero-shot concordance on each external cohort: Pearson r per target and model with its
    95% CI (thin: Fisher z; thick: bootstrap) and the permutation p-value of the shuffled-label
    control beside each point. With many models applied, the figure keeps the study's own
    (fusion, fusion without CORAL, the WSI model, MIL without text); the table lists all."""
    shown = ["fusion", "fusion_no_coral", "wsi_clip", "clip_mil_none"]
    if external["model"].isin(shown).any():
        external = external[external["model"].isin(shown)]
    cohorts = list(dict.fromkeys(external["cohort"]))
    fig = _new(6 * len(cohorts), 0.5 * external.groupby("cohort").size().max() + 1.8)
    axes = fig.subplots(1, len(cohorts), squeeze=False)[0]
    for ax, cohort in zip(axes, cohorts, strict=True):
        part = external[external["cohort"] == cohort]
        part = part.assign(_t=pd.Categorical(part["target"], _order(part["target"], TARGETS)))
        part = part.sort_values(["_t", "model"]).reset_index(drop=True)
        models = _order(part["model"], ["fusion", "wsi_clip"])
        yy = np.arange(len(part))[::-1]
        for yi, (_, row) in zip(yy, part.iterrows(), strict=True):
            c = colour(models.index(row["model"]))
            ax.plot([row["r_ci_low"], row["r_ci_high"]], [yi, yi], color=c, lw=1)
            if {"r_boot_low", "r_boot_high"} <= set(row.index):
                ax.plot([row["r_boot_low"], row["r_boot_high"]], [yi, yi], color=c, lw=3, alpha=0.6)
            ax.plot(row["r"], yi, "o", color=c, ms=5)
            p = row.get("p_perm", np.nan)
            ax.annotate(
                f"perm. {format_p(p)}",
                (1.02, yi),
                xycoords=("axes fraction", "data"),
                fontsize=7,
                va="center",
            )
        ax.set_yticks(
            yy,
            [
                f"{target_label(t).split(' (')[0]}, {m} (n = {int(n)})"
                for t, m, n in zip(part["target"], part["model"], part["n"], strict=True)
            ],
            fontsize=8,
        )
        ax.axvline(0, color="black", lw=0.8, ls="--", label="permutation null (r = 0)")
        ax.set_xlim(min(-0.3, float(part["r_ci_low"].min()) - 0.05), 1.0)
        ax.set_xlabel("Pearson r with the external targets (95% CI)")
        ax.set_title(f"External cohort {cohort}: zero-shot", fontsize=10)
        ax.legend(fontsize=7, frameon=False, loc="lower left")
    return fig


def external_predictions(
    predictions: dict[str, pd.DataFrame], reference: pd.DataFrame | None, model: str
) -> Figure:
    """Zero-shot predictions of cohorts that have no targets: per target, the distribution of
    ``model``'s predictions in each cohort (``predictions``: cohort → long ``predict`` output)
    beside its out-of-fold predictions on the development cohort (``reference``: patients ×
    targets; grey), so a shift in scale or spread is seen even without targets."""
    fig = _new(4.2 * len(TARGETS), 3.4)
    axes = fig.subplots(1, len(TARGETS), squeeze=False)[0]
    for ax, target in zip(axes, TARGETS, strict=True):
        groups, labels, colours = [], [], []
        if reference is not None and target in reference:
            groups.append(reference[target].dropna().to_numpy(float))
            labels.append(f"development\n(out-of-fold, n = {len(groups[-1])})")
            colours.append(GREY)
        for i, (cohort, frame) in enumerate(predictions.items()):
            part = frame[(frame["model"] == model) & (frame["target"] == target)]
            groups.append(part["y_pred"].to_numpy(float))
            labels.append(f"{cohort}\n(n = {len(part)})")
            colours.append(colour(i))
        if not any(len(g) for g in groups):
            _empty(ax)
            continue
        parts = ax.violinplot([g if len(g) else [np.nan] for g in groups], showmedians=True)
        for body, c in zip(parts["bodies"], colours, strict=True):
            body.set_facecolor(c)
            body.set_alpha(0.6)
        ax.set_xticks(np.arange(1, len(groups) + 1), labels, fontsize=7)
        ax.set_ylabel(f"predicted {target_label(target)}\n(target units)", fontsize=8)
        ax.set_title(target_label(target), fontsize=9)
    fig.suptitle(f"{model}: zero-shot predictions of cohorts without targets", fontsize=10)
    return fig


# --------------------------------------------------------------------------------------------
# Synthetic cohorts — planted truth
def planted_truth(predictions: pd.DataFrame, truth: pd.DataFrame, model_label: str) -> Figure:
    """Out-of-fold predictions of one model against the planted latent of each target
    (``truth.parquet``: a = ERS–CAF, b = crosstalk, h = heterogeneity), with Pearson r.

    ``predictions``: patient_id, target, y_pred (one model)."""
    targets = [t for t in _order(predictions["target"], TARGETS) if LATENTS.get(t) in truth]
    fig = _new(4.3 * max(len(targets), 1), 3.9)
    axes = fig.subplots(1, max(len(targets), 1), squeeze=False)[0]
    for k, (ax, target) in enumerate(zip(axes, targets, strict=False)):
        part = predictions[predictions["target"] == target]
        part = part.groupby("patient_id")["y_pred"].mean()
        latent = truth[LATENTS[target]].reindex(part.index)
        r, p, n = pearson(latent, part)
        ax.scatter(latent, part, s=12, color=colour(k), alpha=0.8, lw=0)
        ax.set_xlabel(f"planted latent {LATENTS[target]} (a.u.)")
        ax.set_ylabel(f"predicted {target} (score)")
        ax.set_title(f"{target_label(target)}\nr = {r:.2f}, {format_p(p)}, n = {n}", fontsize=9)
    if not targets:
        _empty(axes[0], "no target with a planted latent")
    fig.suptitle(f"{model_label}: out-of-fold predictions vs planted truth", fontsize=10)
    return fig
