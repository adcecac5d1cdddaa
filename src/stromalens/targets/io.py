"""Reading expression tables into samples × genes (AnnData orientation); writing and reading
the ligand–receptor inputs a training fold recomputes S_LR from."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

ORIENTATIONS = ("genes-x-samples", "samples-x-genes")
DUPLICATE_POLICIES = ("error", "sum", "mean", "max")
_COMPRESSION = (".gz", ".bz2", ".xz", ".zip", ".zst")


def text_separator(path: Path | str) -> str:
    """``","`` for ``.csv`` (also ``.csv.gz``, ``.csv.bz2`` …), a tab otherwise (``.tsv``,
    ``.txt``, ``.tsv.gz`` …): the suffix before any compression suffix decides."""
    name = Path(path).name.lower()
    for suffix in _COMPRESSION:
        if name.endswith(suffix):
            name = name[: -len(suffix)]
            break
    return "," if name.endswith(".csv") else "\t"


def aggregate_duplicates(frame: pd.DataFrame, how: str, axis_name: str = "gene") -> pd.DataFrame:
    """Collapse duplicated column ids (genes) of a samples × genes table by ``how``."""
    if how not in DUPLICATE_POLICIES[1:]:
        raise ValueError(f"how must be one of {', '.join(DUPLICATE_POLICIES[1:])}, not {how!r}")
    return frame.T.groupby(level=0, sort=False).agg(how).T


def read_table(path: Path | str) -> tuple[pd.DataFrame, bool]:
    """The table of ``path`` as stored (first column = row ids), values numeric, missing or
    non-numeric cells NaN. Returns ``(table, is_h5ad)``; an .h5ad file is samples × genes."""
    path = Path(path)
    if not path.exists():
        raise ValueError(f"expression file not found: {path}")
    name = path.name.lower()
    if name.endswith(".h5ad"):
        try:
            import anndata
        except ImportError:
            raise ValueError(
                "reading .h5ad needs the 'anndata' package (pip install anndata)"
            ) from None
        adata = anndata.read_h5ad(path)
        x = adata.X.toarray() if hasattr(adata.X, "toarray") else adata.X
        return pd.DataFrame(x, index=list(adata.obs_names), columns=list(adata.var_names)), True
    if name.endswith((".parquet", ".pq")):
        table = pd.read_parquet(path)
        if isinstance(table.index, pd.RangeIndex):  # ids stored as the first column
            table = table.set_index(table.columns[0])
    else:
        sep = text_separator(path)
        # Read the header as data: pandas would silently rename duplicated column ids
        # ("S1", "S1.1"), hiding duplicated samples or genes.
        header = pd.read_csv(path, sep=sep, header=None, nrows=1, dtype=str).iloc[0]
        table = pd.read_csv(path, sep=sep, header=None, skiprows=1, index_col=0)
        table.columns = header.iloc[1:].to_numpy()
    table.index = table.index.astype(str).rename(None)
    table.columns = table.columns.astype(str).rename(None)
    return table.apply(pd.to_numeric, errors="coerce").astype(float), False


def table_ids(path: Path | str) -> tuple[list[str], list[str]]:
    """The row ids (first column) and column ids (header) of a text table, without reading its
    values: what ``cohort validate --expression`` needs to match sample ids."""
    sep = text_separator(path)
    header = pd.read_csv(path, sep=sep, header=None, nrows=1, dtype=str).iloc[0]
    rows = pd.read_csv(path, sep=sep, header=None, skiprows=1, usecols=[0], dtype=str).iloc[:, 0]
    return [str(r) for r in rows], [str(c) for c in header.iloc[1:]]


def check_unique_samples(frame: pd.DataFrame, source) -> None:
    if not frame.index.is_unique:
        dup = frame.index[frame.index.duplicated()].unique()[:5]
        raise ValueError(f"{source}: duplicated sample ids: {', '.join(dup)}")


def apply_duplicates(frame: pd.DataFrame, duplicates: str, source) -> pd.DataFrame:
    """Raise on duplicated gene ids (``"error"``) or aggregate them by ``duplicates``."""
    if duplicates not in DUPLICATE_POLICIES:
        raise ValueError(f"duplicates must be one of {', '.join(DUPLICATE_POLICIES)}")
    if frame.columns.is_unique:
        return frame
    if duplicates == "error":
        dup = frame.columns[frame.columns.duplicated()].unique()
        raise ValueError(
            f"{source}: {len(dup)} duplicated gene ids (e.g. "
            f"{', '.join(dup[:5])}); pass duplicates='sum', 'mean' or 'max' "
            "to aggregate them"
        )
    return aggregate_duplicates(frame, duplicates)


def read_expression(
    path: Path | str,
    *,
    orientation: str = "genes-x-samples",
    duplicates: str = "error",
    na: str = "error",
    samples=None,
) -> pd.DataFrame:
    """Read TSV/CSV(.gz), parquet or .h5ad expression as samples × genes floats.

    ``orientation`` says how a text or parquet table is laid out (first column = row ids), or
    ``"auto"`` (the axis holding ``samples``, else the shorter axis, is the samples'); .h5ad
    files are samples × genes by definition. Duplicated genes raise, or are aggregated with
    ``duplicates="sum"|"mean"|"max"``; duplicated samples always raise. Missing or non-numeric
    values raise, or are handled by ``na`` (:func:`~stromalens.targets.adapters.apply_na`).
    """
    from .adapters import ORIENTATION_CHOICES, apply_na, orient

    if orientation not in ORIENTATION_CHOICES:
        raise ValueError(
            f"orientation must be one of {', '.join(ORIENTATION_CHOICES)}, not {orientation!r}"
        )
    if duplicates not in DUPLICATE_POLICIES:
        raise ValueError(f"duplicates must be one of {', '.join(DUPLICATE_POLICIES)}")
    table, is_h5ad = read_table(path)
    if is_h5ad:
        frame = table
    else:
        frame, _ = orient(table, orientation, samples=samples, source=path)
    check_unique_samples(frame, path)
    frame, _ = apply_na(frame, na, source=path)
    return apply_duplicates(frame, duplicates, path)


# ---------------------------------------------------------------------------- S_LR's inputs
#: Column prefixes of the LR inputs table: a gene's log expression, a cell type's fraction.
LR_GENE_PREFIX, LR_FRACTION_PREFIX = "gene__", "fraction__"
#: The parquet schema metadata key holding the LR inputs' method, weights and triplet table.
_LR_META_KEY = b"stromalens.lr_inputs"


def write_lr_inputs(inputs, path: Path | str) -> None:
    """Write :class:`~stromalens.targets.lr.LRInputs` as one parquet file, atomically: index
    ``patient_id``; columns ``gene__<symbol>`` (log2(TPM + 1)) and ``fraction__<cell type>``;
    the method, weights, triplet table and ``fitted_on`` in the file's schema metadata."""
    import json

    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pd.concat(
        [
            inputs.log_expr.add_prefix(LR_GENE_PREFIX),
            inputs.fractions.add_prefix(LR_FRACTION_PREFIX),
        ],
        axis=1,
    )
    table.index = table.index.astype(str).rename("patient_id")
    spec = {
        "method": inputs.method,
        "weights": inputs.weights,
        "triplets": inputs.triplets.to_dict(orient="list"),
        "fitted_on": [str(i) for i in inputs.fitted_on],
    }
    arrow = pa.Table.from_pandas(table)
    meta = dict(arrow.schema.metadata or {}) | {_LR_META_KEY: json.dumps(spec).encode()}
    path = Path(path)
    tmp = path.with_name(f"partial-{path.name}")
    pq.write_table(arrow.replace_schema_metadata(meta), tmp)
    tmp.replace(path)


def read_lr_inputs(path: Path | str):
    """The :class:`~stromalens.targets.lr.LRInputs` written by :func:`write_lr_inputs`."""
    import json

    import pyarrow.parquet as pq

    from .lr import LRInputs

    arrow = pq.read_table(path)
    raw = (arrow.schema.metadata or {}).get(_LR_META_KEY)
    if raw is None:
        raise ValueError(
            f"{path} is not an LR inputs table (no {_LR_META_KEY.decode()} record); rerun "
            "`stromalens targets` to write it"
        )
    spec = json.loads(raw)
    table = arrow.to_pandas()
    table.index = table.index.astype(str)
    genes = [c for c in table.columns if c.startswith(LR_GENE_PREFIX)]
    cells = [c for c in table.columns if c.startswith(LR_FRACTION_PREFIX)]
    return LRInputs(
        log_expr=table[genes].rename(columns=lambda c: c[len(LR_GENE_PREFIX) :]).astype(float),
        fractions=table[cells].rename(columns=lambda c: c[len(LR_FRACTION_PREFIX) :]).astype(float),
        triplets=pd.DataFrame(spec["triplets"]),
        method=spec["method"],
        weights=spec["weights"],
        fitted_on=list(spec["fitted_on"]),
    )
