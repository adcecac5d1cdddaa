"""Reading expression tables into samples × genes (AnnData orientation)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

ORIENTATIONS = ("genes-x-samples", "samples-x-genes")
DUPLICATE_POLICIES = ("error", "sum", "mean", "max")


def aggregate_duplicates(frame: pd.DataFrame, how: str, axis_name: str = "gene") -> pd.DataFrame:
    """Collapse duplicated column ids (genes) of a samples × genes table by ``how``."""
    if how not in DUPLICATE_POLICIES[1:]:
        raise ValueError(f"how must be one of {', '.join(DUPLICATE_POLICIES[1:])}, not {how!r}")
    return frame.T.groupby(level=0, sort=False).agg(how).T


def read_expression(
    path: Path | str,
    *,
    orientation: str = "genes-x-samples",
    duplicates: str = "error",
) -> pd.DataFrame:
    """Read TSV/CSV(.gz), parquet or .h5ad expression as samples × genes floats.

    ``orientation`` says how a text or parquet table is laid out (first column = row ids);
    .h5ad files are samples × genes by definition. Duplicated genes raise, or are aggregated with
    ``duplicates="sum"|"mean"|"max"``; duplicated samples always raise.
    """
    path = Path(path)
    if orientation not in ORIENTATIONS:
        raise ValueError(
            f"orientation must be one of {', '.join(ORIENTATIONS)}, not {orientation!r}"
        )
    if duplicates not in DUPLICATE_POLICIES:
        raise ValueError(f"duplicates must be one of {', '.join(DUPLICATE_POLICIES)}")
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
        frame = pd.DataFrame(x, index=list(adata.obs_names), columns=list(adata.var_names))
    else:
        if name.endswith((".parquet", ".pq")):
            table = pd.read_parquet(path)
            if isinstance(table.index, pd.RangeIndex):  # ids stored as the first column
                table = table.set_index(table.columns[0])
        else:
            sep = "," if ".csv" in name else "\t"
            # Read the header as data: pandas would silently rename duplicated column ids
            # ("S1", "S1.1"), hiding duplicated samples or genes.
            header = pd.read_csv(path, sep=sep, header=None, nrows=1, dtype=str).iloc[0]
            table = pd.read_csv(path, sep=sep, header=None, skiprows=1, index_col=0)
            table.columns = header.iloc[1:].to_numpy()
        frame = table.T if orientation == "genes-x-samples" else table
    frame.index = frame.index.astype(str).rename(None)
    frame.columns = frame.columns.astype(str).rename(None)
    if not frame.index.is_unique:
        dup = frame.index[frame.index.duplicated()].unique()[:5]
        raise ValueError(f"{path}: duplicated sample ids: {', '.join(dup)}")
    if not frame.columns.is_unique:
        if duplicates == "error":
            dup = frame.columns[frame.columns.duplicated()].unique()
            raise ValueError(
                f"{path}: {len(dup)} duplicated gene ids (e.g. "
                f"{', '.join(dup[:5])}); pass duplicates='sum', 'mean' or 'max' "
                "to aggregate them"
            )
        frame = aggregate_duplicates(frame, duplicates)
    numeric = frame.apply(pd.to_numeric, errors="coerce")
    if numeric.isna().to_numpy().any():
        bad = numeric.isna().stack()
        sample, gene = bad[bad].index[0]
        raise ValueError(
            f"{path}: missing or non-numeric value for sample '{sample}', gene "
            f"'{gene}' ({int(bad.sum())} in all)"
        )
    return numeric.astype(float)
