"""The cohort manifest: one row per patient (and one further row per extra slide), paths
relative to the manifest.

Columns (DESIGN.md): ``patient_id`` (unique), ``site``, ``mri_t1``, ``mri_t2``, ``mri_ce``,
their own masks ``mri_t1_mask``, ``mri_t2_mask``, ``mri_ce_mask`` (and ``<column>_mask`` for any
further image column, e.g. ``ct`` / ``ct_mask``), the shared ``mri_mask`` (the mask of every
sequence without one of its own), ``wsi``, ``wsi_mpp`` (optional µm/px override),
``rna_sample``, clinical columns (``age``, ``sex``, ``location``, ``volume_cc``, ``os_time``,
``os_event``, ``pfs_time``, ``pfs_event``, ``treatment``, ``response``), pathology
(``fibrosis_grade``, ``exclusion_grade``, ``annotations``). An empty cell — or an absent
column — means that modality is missing for that patient: recorded, not an error. Every
problem is collected and reported at once, by row and column, in one
:class:`ManifestError`.

Several slides per patient: a patient may repeat on further rows, one per extra slide. A further
row gives ``wsi`` (and optionally ``wsi_mpp``, ``annotations``, ``slide_id``); its patient-level
cells (site, clinical, MRI, RNA) are empty or equal to the patient's. :attr:`Cohort.slides` is
the slide table (``patient_id, slide_id, path, mpp, annotations``). A patient's first slide has
``slide_id`` = its patient id (so single-slide cohorts keep ``<patient_id>.h5`` stores); the k-th
(k ≥ 2) is ``<patient_id>.<k>`` unless the optional ``slide_id`` column names it.

Example
-------
>>> cohort = load_manifest("cohort.csv")            # doctest: +SKIP
>>> cohort.frame.loc["P0001", "wsi"]                # absolute Path, or None if missing
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

REQUIRED_COLUMNS: tuple[str, ...] = ("patient_id", "site")
#: A patient id that is safe as one file-name component on every system.
_SAFE_ID = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9_. -]*$")
PATH_COLUMNS: tuple[str, ...] = (
    "mri_t1",
    "mri_t2",
    "mri_ce",
    "mri_mask",
    "wsi",
    "annotations",
)
#: Columns that describe one slide: they may differ between a patient's rows.
SLIDE_COLUMNS: tuple[str, ...] = ("wsi", "wsi_mpp", "annotations", "slide_id")
MRI_SEQUENCES: tuple[str, ...] = ("mri_t1", "mri_t2", "mri_ce")
#: The mask shared by every sequence that has none of its own (older manifests have only it).
SHARED_MASK = "mri_mask"
#: The suffix of a sequence's own mask column: ``<image column>_mask``.
MASK_SUFFIX = "_mask"
#: Per-sequence mask columns of the MRI sequences (optional, like every modality column).
MASK_COLUMNS: tuple[str, ...] = tuple(c + MASK_SUFFIX for c in MRI_SEQUENCES)
MODALITY_COLUMNS: tuple[str, ...] = (*MRI_SEQUENCES, "mri_mask", "wsi", "rna_sample")
TIME_COLUMNS: tuple[str, ...] = ("os_time", "pfs_time")
EVENT_COLUMNS: dict[str, str] = {"os_event": "os_time", "pfs_event": "pfs_time"}
NUMERIC_COLUMNS: dict[str, tuple[float | None, float | None]] = {
    # column: (minimum, maximum), inclusive
    "age": (0.0, 130.0),
    "volume_cc": (0.0, None),
    "wsi_mpp": (0.0, None),
    "os_time": (0.0, None),
    "pfs_time": (0.0, None),
}
BINARY_COLUMNS: tuple[str, ...] = ("os_event", "pfs_event", "response")
GRADE_COLUMNS: tuple[str, ...] = ("fibrosis_grade", "exclusion_grade")
#: Short headers of :meth:`Cohort.summary`.
SUMMARY_NAMES: dict[str, str] = {
    "mri_t1": "T1",
    "mri_t2": "T2",
    "mri_ce": "CE",
    "mri_mask": "mask",
    "wsi": "WSI",
    "rna_sample": "RNA",
    "os_event": "OS events",
    "pfs_event": "PFS events",
}
#: Every column of the manifest format (DESIGN.md), in the order stromalens writes them.
KNOWN_COLUMNS: tuple[str, ...] = (
    "patient_id",
    "site",
    *PATH_COLUMNS[:5],
    "wsi_mpp",
    "rna_sample",
    "age",
    "sex",
    "location",
    "volume_cc",
    "os_time",
    "os_event",
    "pfs_time",
    "pfs_event",
    "treatment",
    "response",
    "fibrosis_grade",
    "exclusion_grade",
    "annotations",
    "slide_id",
)


@dataclass(frozen=True)
class SequenceColumns:
    """The manifest columns of one image series: its image, its own mask, and the sequence
    whose mask it borrows (by registration) when it has none (``mask_from``)."""

    name: str
    image: str
    mask: str
    mask_from: str | None = None


#: The sequences of a manifest without a radiomics configuration (T1, T2, CE).
DEFAULT_SEQUENCES: tuple[SequenceColumns, ...] = tuple(
    SequenceColumns(c.removeprefix("mri_"), c, c + MASK_SUFFIX) for c in MRI_SEQUENCES
)


@dataclass(frozen=True)
class SequenceFiles:
    """What one sequence of one patient reads. ``source``: ``own`` (its own mask column),
    ``registered`` (the mask of sequence ``reference``, moved by registration) or ``shared``
    (``mri_mask``)."""

    image: Path
    mask: Path
    source: str
    reference: str | None = None


@dataclass(frozen=True)
class Problem:
    """One thing wrong with the manifest: where (row is 1-based as in a spreadsheet, after the
    header; None for the whole file) and what."""

    row: int | None
    column: str | None
    message: str

    def __str__(self) -> str:
        where = []
        if self.row is not None:
            where.append(f"row {self.row}")
        if self.column is not None:
            where.append(f"column '{self.column}'")
        return f"{', '.join(where) or 'manifest'}: {self.message}"


class ManifestError(ValueError):
    """The manifest has problems; ``problems`` lists every one of them."""

    def __init__(self, path: Path, problems: list[Problem]):
        self.path = path
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"{path}: {len(problems)} problem(s) in the cohort manifest\n{lines}")


@dataclass
class Cohort:
    """A validated manifest.

    ``frame`` is indexed by ``patient_id``; path columns hold absolute :class:`Path` objects or
    ``None`` where the modality is missing. ``missing`` is a boolean frame (patients ×
    modalities), True where the modality is missing.
    """

    path: Path
    frame: pd.DataFrame
    missing: pd.DataFrame
    warnings: list[str] = field(default_factory=list)
    #: one row per slide: patient_id, slide_id, path, mpp (NaN = from the slide), annotations
    slides: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=SLIDE_TABLE))

    @property
    def patients(self) -> list[str]:
        return list(self.frame.index)

    def slide_ids(self) -> dict[str, list[str]]:
        """Each patient's slide ids, in manifest order (patients without a slide: absent)."""
        return {
            str(pid): list(group["slide_id"])
            for pid, group in self.slides.groupby("patient_id", sort=False)
        }

    @property
    def sites(self) -> list[str]:
        return sorted(self.frame["site"].unique())

    def summary(self) -> pd.DataFrame:
        """Per site: patients, how many have each modality, and OS/PFS events."""
        present = ~self.missing
        rows = {}
        for site, idx in self.frame.groupby("site").groups.items():
            row = {"patients": len(idx)}
            for col in present.columns:
                row[SUMMARY_NAMES[col]] = int(present.loc[idx, col].sum())
            for col in EVENT_COLUMNS:
                if col in self.frame:
                    row[SUMMARY_NAMES[col]] = int(
                        np.nansum(self.frame.loc[idx, col].astype("float"))
                    )
            rows[site] = row
        table = pd.DataFrame.from_dict(rows, orient="index")
        table.loc["all"] = table.sum(numeric_only=True)
        table.index.name = "site"
        return table.astype(int)


SLIDE_TABLE: tuple[str, ...] = ("patient_id", "slide_id", "path", "mpp", "annotations")


def _path_columns(columns, sequences) -> list[str]:
    """The path columns present: the fixed ones, the sequences' images and masks, and
    ``<c>_mask`` beside any column ``c`` (the image it contours)."""
    wanted = [*PATH_COLUMNS, *MASK_COLUMNS]
    for spec in sequences:
        wanted += [spec.image, spec.mask]
    wanted += [c for c in columns if c.endswith(MASK_SUFFIX) and c[: -len(MASK_SUFFIX)] in columns]
    wanted += [c[: -len(MASK_SUFFIX)] for c in columns if c.endswith(MASK_SUFFIX)]
    present = set(columns)
    return [c for c in dict.fromkeys(wanted) if c in present]


def _row_sequences(cells: dict, sequences) -> tuple[dict, list[tuple[str, str]]]:
    """The files each present sequence of one row reads, and (column, message) problems.

    ``cells`` maps a column to its value (None where empty or absent). A sequence's mask is its
    own column, else that of ``mask_from`` (moved by registration), else the shared
    ``mri_mask``; an image without any of these is a problem.
    """
    own = {s.name: cells.get(s.mask) for s in sequences}
    present = {s.name: s for s in sequences if cells.get(s.image) is not None}
    shared = cells.get(SHARED_MASK)
    files, problems, unmasked = {}, [], []
    for name, spec in present.items():
        if own[name] is not None:
            files[name] = SequenceFiles(cells[spec.image], own[name], "own")
        elif spec.mask_from in present and (own[spec.mask_from] or shared) is not None:
            mask = own[spec.mask_from] if own[spec.mask_from] is not None else shared
            files[name] = SequenceFiles(cells[spec.image], mask, "registered", spec.mask_from)
        elif shared is not None:
            files[name] = SequenceFiles(cells[spec.image], shared, "shared")
        else:
            unmasked.append(spec)
    if unmasked:  # one problem per row, naming every column that would do
        tried = [s.mask for s in unmasked] + [
            f"{s.mask_from}'s mask (mask_from)" for s in unmasked if s.mask_from
        ]
        names = ", ".join(f"{s.name} ({s.image})" for s in unmasked)
        problems.append(
            (
                SHARED_MASK,
                f"sequence(s) {names} have an image but no tumour mask: give "
                f"{', '.join(tried)} or {SHARED_MASK}",
            )
        )
    return files, problems


def sequence_files(cohort: Cohort, sequences=DEFAULT_SEQUENCES) -> dict[str, dict]:
    """Per patient, the files of each present sequence: ``{patient: {name: SequenceFiles}}``.

    ``cohort`` must have been loaded with the same ``sequences`` (whose problems it reported).
    """
    frame = cohort.frame
    out = {}
    for pid in frame.index:
        cells = {c: frame.at[pid, c] for c in frame.columns if isinstance(frame.at[pid, c], Path)}
        out[pid], _ = _row_sequences(cells, sequences)
    return out


def read_table(path: Path) -> pd.DataFrame:
    """Read a CSV, TSV or parquet manifest with every cell as a string (empty = missing)."""
    suffixes = "".join(path.suffixes).lower()
    if suffixes.endswith(".parquet") or suffixes.endswith(".pq"):
        frame = pd.read_parquet(path)
        frame = frame.astype(object).where(frame.notna(), "")
        return frame.map(lambda v: "" if v is None else str(v))
    sep = _separator(path)
    # The header is read as data: pandas would rename a repeated column ("os_time.1") and
    # the repetition would go unseen.
    frame = pd.read_csv(path, sep=sep, dtype=str, header=None, keep_default_na=False, na_values=[])
    header = [str(c) for c in frame.iloc[0]] if len(frame) else []
    frame = frame.iloc[1:].reset_index(drop=True)
    frame.columns = header
    return frame


def _separator(path: Path) -> str:
    """The separator stromalens reads ``path`` with: tab for .tsv/.txt, else a comma."""
    return "\t" if "".join(path.suffixes).lower().endswith((".tsv", ".tsv.gz", ".txt")) else ","


def _delimiter_hint(path: Path, columns) -> str | None:
    """Why the required columns may be absent: a header that splits into them at another
    delimiter (a ';'-separated export of a spreadsheet read as comma-separated, say)."""
    if len(columns) > 2:
        return None
    header = "".join(str(c) for c in columns)
    for delimiter, name in ((";", "';'"), ("\t", "tab"), (",", "','"), ("|", "'|'")):
        if delimiter == _separator(path):
            continue
        parts = [part.strip() for part in header.split(delimiter)]
        if all(col in parts for col in REQUIRED_COLUMNS):
            read_as = "tab" if _separator(path) == "\t" else "','"
            fix = {"\t": "rename it .tsv", ",": "rename it .csv"}.get(
                delimiter, "save it comma-separated (.csv) or tab-separated (.tsv)"
            )
            return (
                f"the header splits at {name} into {', '.join(parts[:3])}, …: the file looks "
                f"{name}-delimited, but {path.name} is read as {read_as}-delimited; {fix}"
            )
    return None


def _is_empty(value) -> bool:
    return value is None or (isinstance(value, str) and value.strip() == "")


def load_manifest(
    path: Path | str,
    *,
    sites: Iterable[str] | None = None,
    check_files: bool = True,
    expression_samples: Iterable[str] | None = None,
    sequences: Iterable[SequenceColumns] | None = None,
) -> Cohort:
    """Load and validate a cohort manifest.

    Parameters
    ----------
    path : the manifest (``.csv``, ``.tsv`` or ``.parquet``).
    sites : the allowed site labels; every row's site must be one of them. By default any
        non-empty label is accepted.
    check_files : check that every referenced file exists.
    expression_samples : sample ids of the expression table; every non-empty ``rna_sample``
        must be among them.
    sequences : the image series to check (default: T1, T2, CE with their ``_mask`` columns);
        every present image needs a mask (its own, a ``mask_from`` sequence's, or
        ``mri_mask``), and with ``check_files`` every one of these files must exist. The
        radiomics stage passes those of its configuration
        (``RadiomicsConfig.sequence_columns()``).

    Raises
    ------
    ManifestError
        listing every problem found, by row and column.
    """
    path = Path(path)
    if not path.exists():
        raise ManifestError(path, [Problem(None, None, "file not found")])
    try:
        raw = read_table(path)
    except Exception as exc:  # noqa: BLE001 - any parser failure is one clear problem
        raise ManifestError(path, [Problem(None, None, f"cannot be read: {exc}")]) from None
    raw.columns = [str(c).strip() for c in raw.columns]
    problems: list[Problem] = []
    warnings: list[str] = []

    missing_cols = [c for c in REQUIRED_COLUMNS if c not in raw.columns]
    for col in missing_cols:
        problems.append(Problem(None, col, "required column is absent"))
    hint = _delimiter_hint(path, raw.columns) if missing_cols else None
    if hint:
        problems.append(Problem(None, None, hint))
    duplicated_cols = raw.columns[raw.columns.duplicated()].unique()
    for col in duplicated_cols:
        at = [str(i + 1) for i, c in enumerate(raw.columns) if c == col]
        problems.append(
            Problem(
                None, col, f"column appears {len(at)} times (columns {', '.join(at)}); keep one"
            )
        )
    if missing_cols or len(duplicated_cols):
        raise ManifestError(path, problems)
    sequences = tuple(sequences) if sequences is not None else DEFAULT_SEQUENCES
    path_columns = _path_columns(raw.columns, sequences)
    unknown = [c for c in raw.columns if c not in KNOWN_COLUMNS and c not in path_columns]
    if unknown:
        warnings.append(f"extra columns kept as they are: {', '.join(unknown)}")
    if raw.empty:
        raise ManifestError(path, [Problem(None, None, "no patients (the manifest is empty)")])

    raw = raw.map(lambda v: v.strip() if isinstance(v, str) else v)
    row_number = {i: i + 1 for i in range(len(raw))}  # 1-based data row

    # Identity.
    ids = raw["patient_id"]
    for i, pid in ids.items():
        if _is_empty(pid):
            problems.append(Problem(row_number[i], "patient_id", "empty patient id"))
        elif not _SAFE_ID.match(str(pid)):
            # ids name files in every stage (features/<id>.h5, radiomics records): a separator
            # or a leading dot would write outside the stage's folder
            problems.append(
                Problem(
                    row_number[i],
                    "patient_id",
                    f"{pid!r} cannot name a file: use letters, digits, spaces and . _ - "
                    "(not first: . or a space)",
                )
            )
    further = _merge_further_rows(raw, row_number, problems)
    allowed_sites = set(sites) if sites is not None else None
    for i, site in raw["site"].items():
        if i in further:
            continue
        if _is_empty(site):
            problems.append(Problem(row_number[i], "site", "empty site"))
        elif allowed_sites is not None and site not in allowed_sites:
            problems.append(
                Problem(
                    row_number[i],
                    "site",
                    f"unknown site '{site}' (known: {', '.join(sorted(allowed_sites))})",
                )
            )

    # Numbers, times, events and grades.
    numbers: dict[str, pd.Series] = {}
    for col, (low, high) in NUMERIC_COLUMNS.items():
        if col not in raw:
            continue
        values = pd.to_numeric(raw[col].mask(raw[col] == ""), errors="coerce")
        for i, (text, value) in enumerate(zip(raw[col], values, strict=True)):
            if _is_empty(text):
                continue
            if np.isnan(value):
                problems.append(Problem(row_number[i], col, f"'{text}' is not a number"))
            elif not np.isfinite(value):
                problems.append(Problem(row_number[i], col, f"'{text}' is not a finite number"))
            elif low is not None and value < low:
                what = "a time" if col in TIME_COLUMNS else "it"
                problems.append(
                    Problem(
                        row_number[i],
                        col,
                        f"{value:g} is negative; {what} must be ≥ {low:g}"
                        if low == 0
                        else f"{value:g} is below {low:g}",
                    )
                )
            elif high is not None and value > high:
                problems.append(Problem(row_number[i], col, f"{value:g} is above {high:g}"))
            elif col == "wsi_mpp" and value == 0:
                problems.append(Problem(row_number[i], col, "µm/px must be positive"))
        numbers[col] = values
    for col in BINARY_COLUMNS:
        if col not in raw:
            continue
        for i, text in enumerate(raw[col]):
            if not _is_empty(text) and text not in {"0", "1", "0.0", "1.0"}:
                problems.append(Problem(row_number[i], col, f"'{text}' must be 0 or 1"))
    for event_col, time_col in EVENT_COLUMNS.items():
        if event_col in raw and time_col not in raw:
            problems.append(Problem(None, time_col, f"'{event_col}' is given without '{time_col}'"))
        elif event_col in raw:
            for i, (event, time) in enumerate(zip(raw[event_col], raw[time_col], strict=True)):
                if _is_empty(event) != _is_empty(time):
                    problems.append(
                        Problem(
                            row_number[i],
                            event_col if _is_empty(event) else time_col,
                            f"'{time_col}' and '{event_col}' must be both given or both empty",
                        )
                    )
    for col in GRADE_COLUMNS:
        if col not in raw:
            continue
        for i, text in enumerate(raw[col]):
            if not _is_empty(text) and text not in {"0", "1", "2", "3"}:
                problems.append(Problem(row_number[i], col, f"'{text}' must be a grade 0–3"))

    # Files.
    base = path.parent
    resolved = {}
    for col in path_columns:
        paths = []
        for i, text in enumerate(raw[col]):
            if _is_empty(text):
                paths.append(None)
                continue
            p = Path(text).expanduser()
            p = p if p.is_absolute() else (base / p)
            if check_files and not p.exists():
                problems.append(Problem(row_number[i], col, f"file not found: {text}"))
            paths.append(p)
        resolved[col] = paths
    absent = sorted({s.image for s in sequences if s.image not in raw})
    if absent and sequences is not DEFAULT_SEQUENCES:
        warnings.append(
            f"image columns {', '.join(absent)} are absent: those sequences are missing for "
            "every patient"
        )
    for i in range(len(raw)):
        _, found = _row_sequences(
            {c: (None if _is_empty(raw[c].iloc[i]) else raw[c].iloc[i]) for c in path_columns},
            sequences,
        )
        problems.extend(Problem(row_number[i], col, message) for col, message in found)

    # RNA samples.
    if "rna_sample" in raw:
        samples = raw["rna_sample"]
        dup = samples[samples.duplicated(keep=False) & (samples != "")]
        for sample, group in dup.groupby(dup):
            rows = ", ".join(str(row_number[i]) for i in group.index)
            problems.append(
                Problem(
                    None, "rna_sample", f"'{sample}' is used by more than one patient (rows {rows})"
                )
            )
        if expression_samples is not None:
            available = set(expression_samples)
            for i, sample in samples.items():
                if not _is_empty(sample) and sample not in available:
                    problems.append(
                        Problem(
                            row_number[i],
                            "rna_sample",
                            f"sample '{sample}' is not in the expression table",
                        )
                    )

    if problems:
        raise ManifestError(path, problems)

    frame = raw.copy()
    for col, values in numbers.items():
        frame[col] = values
    for col in BINARY_COLUMNS + GRADE_COLUMNS:
        if col in frame:
            frame[col] = pd.to_numeric(frame[col].mask(frame[col] == "")).astype("Int64")
    for col, paths in resolved.items():
        frame[col] = paths
    for col in ("rna_sample", "sex", "location", "treatment"):
        if col in frame:
            frame[col] = frame[col].mask(frame[col] == "", None)
    slides = _slide_table(frame, further, row_number, path)
    frame = frame.drop(index=sorted(further)).set_index("patient_id")
    first = slides.drop_duplicates("patient_id").set_index("patient_id")["path"]
    if "wsi" in frame:
        frame["wsi"] = [first.get(pid) for pid in frame.index]
    missing = pd.DataFrame(
        {col: (frame[col].isna() if col in frame else True) for col in MODALITY_COLUMNS},
        index=frame.index,
    )
    return Cohort(path=path, frame=frame, missing=missing, warnings=warnings, slides=slides)


def _merge_further_rows(raw: pd.DataFrame, row_number: dict, problems: list) -> set[int]:
    """Indices of the rows that repeat an earlier patient (one extra slide each), after moving
    their patient-level values onto the patient's first row and blanking them there; a value
    that contradicts the patient's, or a further row without a slide, is a problem."""
    ids = raw["patient_id"]
    repeated = ids[ids.duplicated(keep="first") & (ids != "")]
    patient_columns = [c for c in raw.columns if c not in ("patient_id", *SLIDE_COLUMNS)]
    for i, pid in repeated.items():
        head = int(ids[ids == pid].index[0])
        if "wsi" not in raw or _is_empty(raw.at[i, "wsi"]):
            problems.append(
                Problem(
                    row_number[i],
                    "patient_id",
                    f"'{pid}' repeats row {row_number[head]}: a further row of a patient must "
                    "list one more slide in 'wsi' (patient ids are otherwise unique)",
                )
            )
            continue
        earlier = raw.loc[: i - 1]
        same = earlier[(earlier["patient_id"] == pid) & (earlier["wsi"] == raw.at[i, "wsi"])]
        if len(same):
            problems.append(
                Problem(
                    row_number[i],
                    "wsi",
                    f"'{pid}' repeats row {row_number[int(same.index[0])]} with the same slide "
                    f"'{raw.at[i, 'wsi']}' (patient ids are unique; a further row lists "
                    "another slide)",
                )
            )
            continue
        for col in patient_columns:
            value = raw.at[i, col]
            if _is_empty(value):
                continue
            if _is_empty(raw.at[head, col]):
                raw.at[head, col] = value
            elif raw.at[head, col] != value:
                problems.append(
                    Problem(
                        row_number[i],
                        col,
                        f"'{value}' differs from patient '{pid}' "
                        f"('{raw.at[head, col]}' in row {row_number[head]}); a further slide row "
                        "leaves patient-level columns empty or equal",
                    )
                )
            raw.at[i, col] = ""
    return set(int(i) for i in repeated.index)


def _slide_table(frame: pd.DataFrame, further: set[int], row_number: dict, path: Path):
    """One row per slide (see :attr:`Cohort.slides`); slide ids are checked to be safe file
    names and unique."""
    rows, count = [], {}
    for i, row in frame.iterrows():
        wsi = row.get("wsi")
        if wsi is None:
            continue
        pid = str(row["patient_id"])
        count[pid] = count.get(pid, 0) + 1
        given = row.get("slide_id")
        default = pid if count[pid] == 1 else f"{pid}.{count[pid]}"
        mpp = row.get("wsi_mpp")
        rows.append(
            {
                "patient_id": pid,
                "slide_id": default if _is_empty(given) else str(given),
                "path": wsi,
                "mpp": float(mpp) if mpp is not None and pd.notna(mpp) else float("nan"),
                "annotations": row.get("annotations"),
                "_row": row_number[i],
            }
        )
    table = pd.DataFrame(rows, columns=[*SLIDE_TABLE, "_row"])
    problems = []
    for _, slide in table.iterrows():
        if not _SAFE_ID.match(slide["slide_id"]):
            problems.append(
                Problem(slide["_row"], "slide_id", f"{slide['slide_id']!r} cannot name a file")
            )
    for sid, group in table[table["slide_id"].duplicated(keep=False)].groupby("slide_id"):
        rows_text = ", ".join(str(r) for r in group["_row"])
        problems.append(Problem(None, "slide_id", f"'{sid}' is not unique (rows {rows_text})"))
    if problems:
        raise ManifestError(path, problems)
    return table.drop(columns="_row").reset_index(drop=True)
