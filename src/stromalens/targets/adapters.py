"""Input adapters: from a real expression table to what the targets need, each step explicit.

The targets stage needs samples × genes, gene symbols, no missing values and, for
deconvolution (and so the ``lr`` and ``heterogeneity`` targets), **linear** TPM. Real tables
differ: genes × samples or the reverse, microarray probe ids, missing values, log2(TPM+1) or
two-colour log ratios, small negative TPM from an upstream correction. Each adapter below
handles one of these, only when asked (a :class:`~stromalens.config.TargetsConfig` key and a
``stromalens targets`` option), logs what it did (:func:`stromalens.logs.event`) and returns a
record that :func:`~stromalens.targets.run.run_targets` writes to ``targets.json`` under
``expression_adapters``. Anything that would otherwise reach a method silently on the wrong
scale is refused with one message naming the option to use.

Order (:func:`adapt_expression`): orientation → missing values → probe → symbol →
duplicated genes → scale → negatives → library size.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from ..logs import event, get_logger
from .io import ORIENTATIONS, apply_duplicates, check_unique_samples, text_separator

log = get_logger(__name__)

ORIENTATION_CHOICES = ("auto", *ORIENTATIONS)
NA_POLICIES = ("error", "drop-genes", "impute-mean")
SCALES = ("auto", "linear", "log2", "log10", "log-ratio")
NEGATIVE_POLICIES = ("error", "clip")
NORMALIZE = ("none", "tpm")
PLATFORMS = ("rnaseq", "microarray")
# Below this maximum, non-integer data are taken for log values (log2(TPM+1) of a full
# transcriptome reaches ~15-20; linear TPM reaches thousands).
LOG_MAX = 50.0
TPM_TOTAL = 1e6
TPM_MAX_SUM = 1.5e6  # above this a sample cannot be TPM (rounding and clipping stay far below)
# The targets that need linear expression (deconvolution), refused on log ratios.
LINEAR_TARGETS = ("lr", "heterogeneity")


def _option(key: str, value: str) -> str:
    return f"--{key.replace('_', '-')} {value} (targets: {key}: {value})"


# ------------------------------------------------------------------------------ orientation
def orient(
    table: pd.DataFrame, orientation: str, *, samples=None, source="expression"
) -> tuple[pd.DataFrame, dict]:
    """``table`` (as stored: first column = row ids) as samples × genes.

    ``orientation="auto"``: the axis holding more of ``samples`` (the manifest's
    ``rna_sample`` ids) is the samples'; without ``samples`` (or when none match) the shorter
    axis is (bulk tables hold far more genes than samples). A given orientation whose sample
    axis holds none of ``samples`` while the other axis does is refused with the hint to
    transpose.
    """
    if orientation not in ORIENTATION_CHOICES:
        raise ValueError(
            f"orientation must be one of {', '.join(ORIENTATION_CHOICES)}, not {orientation!r}"
        )
    wanted = set(map(str, samples)) if samples is not None else set()
    in_columns = len(wanted & set(table.columns))
    in_rows = len(wanted & set(table.index))
    record = {"given": orientation, "samples_in_columns": in_columns, "samples_in_rows": in_rows}
    if orientation == "auto":
        if in_columns or in_rows:
            chosen = "genes-x-samples" if in_columns >= in_rows else "samples-x-genes"
            record["detected_by"] = "manifest sample ids"
        else:
            chosen = "genes-x-samples" if table.shape[1] <= table.shape[0] else "samples-x-genes"
            record["detected_by"] = "shape (the shorter axis holds the samples)"
    else:
        chosen = orientation
        on_axis, other = (
            (in_columns, in_rows) if chosen == "genes-x-samples" else (in_rows, in_columns)
        )
        if wanted and on_axis == 0 and other > 0:
            flipped = ORIENTATIONS[1 - ORIENTATIONS.index(chosen)]
            axis, other_axis = (
                ("columns", "rows") if chosen == "genes-x-samples" else ("rows", "columns")
            )
            raise ValueError(
                f"{source}: none of the manifest's rna_sample ids are in the table's {axis}, "
                f"but {other} of {len(wanted)} are in its {other_axis}: the table is {flipped}; "
                f"pass {_option('orientation', flipped)} or orientation auto"
            )
    record["orientation"] = chosen
    event(log, "expression orientation", **record)
    return (table.T if chosen == "genes-x-samples" else table), record


# ------------------------------------------------------------------------------ missing values
def apply_na(frame: pd.DataFrame, na: str = "error", *, source="expression"):
    """Missing (or non-numeric) values of a samples × genes table.

    ``"error"`` (default) raises naming the first one and the options; ``"drop-genes"`` leaves
    out every gene with a missing value; ``"impute-mean"`` fills each with the gene's mean over
    the samples that have it (genes missing everywhere are dropped). Returns
    ``(frame, record)``.
    """
    if na not in NA_POLICIES:
        raise ValueError(f"na must be one of {', '.join(NA_POLICIES)}, not {na!r}")
    missing = frame.isna()
    n_missing = int(missing.to_numpy().sum())
    record = {"policy": na, "missing_values": n_missing}
    if n_missing == 0:
        return frame, record
    genes_hit = missing.any(axis=0)
    if na == "error":
        rows, cols = np.nonzero(missing.to_numpy())
        raise ValueError(
            f"{source}: missing or non-numeric value for sample '{frame.index[rows[0]]}', gene "
            f"'{frame.columns[cols[0]]}' ({n_missing} in all, in {int(genes_hit.sum())} genes); "
            f"pass {_option('na', 'drop-genes')} to leave those genes out or "
            f"{_option('na', 'impute-mean')} to fill each with the gene's mean"
        )
    if na == "drop-genes":
        frame = frame.loc[:, ~genes_hit]
        record["genes_dropped"] = int(genes_hit.sum())
    else:
        empty = missing.all(axis=0)
        frame = frame.loc[:, ~empty]
        frame = frame.fillna(frame.mean(axis=0))
        record["values_imputed"] = n_missing - int(missing.loc[:, empty].to_numpy().sum())
        record["genes_dropped"] = int(empty.sum())
    record["genes_left"] = int(frame.shape[1])
    event(log, "expression missing values", **record)
    return frame, record


# ------------------------------------------------------------------------------ probes → symbols
def read_annotation(path: Path | str, symbol_column: str = "symbol") -> pd.Series:
    """Probe → symbol from a TSV/CSV(.gz) annotation with a ``probe`` column (or, failing
    that, the first column) and ``symbol_column``; probes without a symbol are left out."""
    path = Path(path)
    if not path.exists():
        raise ValueError(f"annotation file not found: {path}")
    table = pd.read_csv(path, sep=text_separator(path), dtype=str)
    probe_column = "probe" if "probe" in table.columns else table.columns[0]
    if symbol_column not in table.columns:
        raise ValueError(
            f"{path}: no column '{symbol_column}' (columns: {', '.join(table.columns)}); name the "
            f"symbol column with --annotation-symbol COLUMN (targets: annotation_symbol)"
        )
    mapping = table.set_index(probe_column)[symbol_column]
    mapping = mapping[mapping.notna() & (mapping.str.strip() != "")]
    if not mapping.index.is_unique:
        dup = mapping.index[mapping.index.duplicated()].unique()[:5]
        raise ValueError(f"{path}: probes annotated more than once: {', '.join(dup)}")
    return mapping.str.strip()


def map_probes(frame: pd.DataFrame, mapping: pd.Series) -> tuple[pd.DataFrame, dict]:
    """Rename the probe columns of ``frame`` to their symbols; unannotated probes are dropped.
    Probes sharing a symbol become duplicated genes, aggregated afterwards by the
    ``duplicates`` policy."""
    known = [p for p in frame.columns if p in mapping.index]
    if not known:
        raise ValueError(
            "none of the expression's ids are probes of the annotation (e.g. "
            f"{', '.join(map(str, frame.columns[:3]))} vs {', '.join(mapping.index[:3])})"
        )
    mapped = frame[known].copy()
    mapped.columns = mapping.loc[known].to_numpy()
    record = {
        "probes": int(frame.shape[1]),
        "probes_mapped": len(known),
        "probes_unannotated": int(frame.shape[1] - len(known)),
        "symbols": int(mapped.columns.nunique()),
        "probes_sharing_a_symbol": int(mapped.columns.duplicated(keep=False).sum()),
    }
    event(log, "probes mapped to symbols", **record)
    return mapped, record


# ------------------------------------------------------------------------------ scale
def detect_scale(frame: pd.DataFrame) -> str:
    """``"linear"``, ``"log"`` (max < 50, non-integer, non-negative: log2/log10(TPM+1)) or
    ``"log-ratio"`` (max < 50, non-integer, with negative values down past −1)."""
    values = frame.to_numpy()
    top = float(np.nanmax(values))
    integer = bool(np.allclose(values, np.round(values)))
    if top >= LOG_MAX or integer:
        return "linear"
    return "log-ratio" if float(np.nanmin(values)) < -1.0 else "log"


def to_linear(frame: pd.DataFrame, scale: str = "auto") -> tuple[pd.DataFrame, dict]:
    """Expression on linear scale, or the log ratios as they are for ``scale="log-ratio"``.

    ``"log2"``: 2^x − 1 (x = log2(TPM + 1)); ``"log10"``: 10^x − 1; ``"linear"``: unchanged;
    ``"auto"``: unchanged if the data look linear, refused otherwise (the message names the
    ``scale`` values). Log ratios (two-colour microarrays) have no linear form: the record's
    ``linear`` is False and the targets that need linear values are not computed.
    """
    if scale not in SCALES:
        raise ValueError(f"scale must be one of {', '.join(SCALES)}, not {scale!r}")
    detected = detect_scale(frame)
    values = frame.to_numpy()
    record = {
        "given": scale,
        "detected": detected,
        "max": float(np.nanmax(values)),
        "min": float(np.nanmin(values)),
    }
    if scale == "auto":
        if detected != "linear":
            what = (
                "log ratios (negative values, microarray)"
                if detected == "log-ratio"
                else "log-transformed"
            )
            raise ValueError(
                f"the expression looks {what}: maximum {record['max']:.3g} < {LOG_MAX:g}, "
                "non-integer values; deconvolution (the lr and heterogeneity targets) needs "
                f"linear TPM. Say what the values are: {_option('scale', 'log2')} for "
                "log2(TPM+1), --scale log10 for log10(TPM+1), --scale log-ratio for two-colour "
                "log ratios (ERS-CAF only), or --scale linear if they are linear"
            )
        scale = "linear"
    elif scale == "linear" and detected != "linear":
        record["note"] = f"declared linear although it looks {detected} (maximum < {LOG_MAX:g})"
        event(log, "expression declared linear looks log", level=logging.WARNING, **record)
    if scale in ("log2", "log10") and record["max"] >= LOG_MAX:
        raise ValueError(
            f"scale {scale} given, but the expression reaches {record['max']:.3g}: these are "
            f"not {scale} values; pass {_option('scale', 'linear')} (or scale auto)"
        )
    if scale == "log2":
        frame = np.exp2(frame) - 1.0
    elif scale == "log10":
        frame = np.power(10.0, frame) - 1.0
    record["applied"] = {
        "linear": "none",
        "log2": "2^x - 1",
        "log10": "10^x - 1",
        "log-ratio": "none (no linear form)",
    }[scale]
    record["scale"] = scale
    record["linear"] = scale != "log-ratio"
    event(log, "expression scale", **record)
    return frame, record


# ------------------------------------------------------------------------------ negatives
def apply_negatives(frame: pd.DataFrame, negatives: str = "error") -> tuple[pd.DataFrame, dict]:
    """Negative values of linear expression: raise (``"error"``) or set them to 0 (``"clip"``,
    the count logged and recorded)."""
    if negatives not in NEGATIVE_POLICIES:
        raise ValueError(
            f"negatives must be one of {', '.join(NEGATIVE_POLICIES)}, not {negatives!r}"
        )
    below = frame.to_numpy() < 0
    count = int(below.sum())
    record = {"policy": negatives, "negative_values": count}
    if count == 0:
        return frame, record
    record["min"] = float(frame.to_numpy().min())
    if negatives == "error":
        rows, cols = np.nonzero(below)
        raise ValueError(
            f"the linear expression has {count} negative values (minimum {record['min']:.3g}, "
            f"e.g. sample '{frame.index[rows[0]]}', gene '{frame.columns[cols[0]]}'); TPM "
            f"cannot be negative: pass {_option('negatives', 'clip')} to set them to 0, or "
            "--scale log-ratio if these are microarray log ratios"
        )
    record["clipped"] = count
    event(log, "negative expression clipped to 0", **record)
    return frame.clip(lower=0.0), record


# ------------------------------------------------------------------------------ library size
def apply_normalize(frame: pd.DataFrame, normalize: str = "none") -> tuple[pd.DataFrame, dict]:
    """``"tpm"``: rescale each sample to sum 10⁶ over all its genes (tables not normalised to
    TPM, e.g. GSE107572); ``"none"``: unchanged, refused when a sample sums to more than
    1.5 × 10⁶ (TPM over any set of genes sums to at most 10⁶), a log line when the sums are
    well below 10⁶ (a gene panel). quanTIseq rescales its own input (fixMixture), but the
    log2(x + 1) that ssGSEA, GSVA and the LR z-scores see would carry each sample's library
    size: a table that is not TPM is a choice to make, not to guess."""
    if normalize not in NORMALIZE:
        raise ValueError(f"normalize must be one of {', '.join(NORMALIZE)}, not {normalize!r}")
    sums = frame.sum(axis=1)
    record = {
        "policy": normalize,
        "sample_sum_min": float(sums.min()),
        "sample_sum_max": float(sums.max()),
    }
    if normalize == "tpm":
        if (sums <= 0).any():
            raise ValueError(f"sample '{sums.index[sums <= 0][0]}' has no expression to rescale")
        frame = frame.div(sums, axis=0) * TPM_TOTAL
        event(log, "expression rescaled to sum 1e6 per sample", **record)
    elif record["sample_sum_max"] > TPM_MAX_SUM:
        raise ValueError(
            f"the expression is not TPM: sample '{sums.idxmax()}' sums to "
            f"{record['sample_sum_max']:.3g} (TPM sums to at most 1e6), so the scores would "
            f"carry library size; pass {_option('normalize', 'tpm')} to rescale each sample to "
            "1e6 over its genes"
        )
    elif record["sample_sum_min"] < TPM_TOTAL / 2:
        record["note"] = "per-sample sums below 1e6/2: a gene panel or a subset of genes"
        event(log, "expression sums below TPM", **record)
    return frame, record


# ------------------------------------------------------------------------------ all of them
def adapt_expression(table: pd.DataFrame, settings, *, samples=None, is_h5ad=False, source=None):
    """Run every adapter on ``table`` (as read by :func:`~stromalens.targets.io.read_table`)
    with ``settings`` (a :class:`~stromalens.config.TargetsConfig`). Returns
    ``(samples × genes frame, record)``; ``record["scale"]["linear"]`` says whether the frame
    is linear (False for log ratios)."""
    source = source or "expression"
    record = {}
    if is_h5ad:
        frame = table
        record["orientation"] = {"orientation": "samples-x-genes", "detected_by": ".h5ad"}
    else:
        frame, record["orientation"] = orient(
            table, settings.orientation, samples=samples, source=source
        )
    check_unique_samples(frame, source)
    frame, record["na"] = apply_na(frame, settings.na, source=source)
    if settings.annotation is not None:
        mapping = read_annotation(settings.annotation, settings.annotation_symbol)
        frame, record["annotation"] = map_probes(frame, mapping)
        record["annotation"]["file"] = str(settings.annotation)
    genes = frame.shape[1]
    frame = apply_duplicates(frame, settings.duplicates, source)
    record["duplicates"] = {
        "policy": settings.duplicates,
        "genes_merged": int(genes - frame.shape[1]),
    }
    frame, record["scale"] = to_linear(frame, settings.scale)
    if record["scale"]["linear"]:
        frame, record["negatives"] = apply_negatives(frame, settings.negatives)
        frame, record["normalize"] = apply_normalize(frame, settings.normalize)
    platform = settings.platform
    record["platform"] = {
        "platform": platform
        or (
            "microarray"
            if settings.annotation is not None or settings.scale == "log-ratio"
            else "rnaseq"
        ),
        "source": "given" if platform else "inferred (annotation or log ratios: microarray)",
    }
    record["shape"] = {"samples": int(frame.shape[0]), "genes": int(frame.shape[1])}
    event(log, "expression adapted", platform=record["platform"]["platform"], **record["shape"])
    return frame, record
