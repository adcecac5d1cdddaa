"""The preflight: what a study will read, checked before it runs (``stromalens cohort validate``).

:func:`preflight` loads the manifest (:func:`~stromalens.cohort.load_manifest`: columns,
delimiter, ids, numbers, referenced files) and then runs :data:`CHECKS`, small functions each
returning :class:`Finding` s, so that one run reports everything:

- :func:`check_slides`: every slide opens and has a µm/px, from its metadata or ``wsi_mpp``
  (a folder given as ``wsi`` is an error too);
- :func:`check_path_columns`: a column outside the manifest format that names files (at least one
  of its cells is an existing file) must name existing files in every non-empty cell;
- :func:`check_expression`: the expression table is read as the targets stage reads it — its
  orientation and scale by the targets' input adapters (:mod:`stromalens.targets.adapters`) —
  and holds every ``rna_sample``.

Errors stop a study; warnings do not. The command prints the findings as a table and exits 1
when there is an error.

Example
-------
>>> cohort, findings = preflight("cohort.csv", expression="rnaseq/tpm.tsv")  # doctest: +SKIP
>>> [f for f in findings if f.level == "error"]
[]
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from .cohort import KNOWN_COLUMNS, Cohort, ManifestError, load_manifest

ERROR, WARNING = "error", "warning"


@dataclass(frozen=True)
class Finding:
    """One thing found: ``level`` (error or warning), the patient and column it concerns (None
    for the whole file) and what, with what to do."""

    level: str
    patient: str | None
    column: str | None
    message: str


@dataclass(frozen=True)
class Subject:
    """What the checks look at: the loaded cohort and the study's settings for it."""

    cohort: Cohort
    expression: Path | None = None
    orientation: str = "auto"
    scale: str = "auto"
    check_files: bool = True  # False: no file is opened or looked for (slides, extra columns)


def preflight(
    manifest: Path | str,
    *,
    sites: Iterable[str] | None = None,
    check_files: bool = True,
    expression: Path | str | None = None,
    orientation: str = "auto",
    scale: str = "auto",
    checks: Iterable[Callable[[Subject], list[Finding]]] | None = None,
    sequences=None,
) -> tuple[Cohort | None, list[Finding]]:
    """The cohort (None if the manifest does not load) and every finding about ``manifest``
    (and ``expression``): the manifest's own problems, or, when it loads, its warnings and
    those of every check (``checks``: :data:`CHECKS`). ``sequences``
    (:meth:`~stromalens.radiology.settings.RadiomicsConfig.sequence_columns`): the image and
    mask columns a radiomics configuration reads, each file checked."""
    try:
        cohort = load_manifest(manifest, sites=sites, check_files=check_files, sequences=sequences)
    except ManifestError as exc:
        return None, [Finding(ERROR, None, p.column, str(p)) for p in exc.problems]
    subject = Subject(
        cohort, Path(expression) if expression else None, orientation, scale, check_files
    )
    findings = [Finding(WARNING, None, None, w) for w in cohort.warnings]
    for check in CHECKS if checks is None else checks:
        findings += check(subject)
    return cohort, findings


def _rows(cohort: Cohort):
    """(patient id, row) of every manifest row (a patient may have several, one per slide)."""
    return cohort.frame.reset_index().iterrows()


def check_slides(subject: Subject) -> list[Finding]:
    """Each slide is a file that opens, with µm/px from its metadata or ``wsi_mpp``."""
    from .wsi.reader import open_slide

    findings = []
    for _, row in _rows(subject.cohort) if subject.check_files else ():
        path, pid = row.get("wsi"), row["patient_id"]
        if path is None or pd.isna(path):
            continue
        path = Path(path)
        if path.is_dir():
            findings.append(
                Finding(ERROR, pid, "wsi", f"{path} is a folder; give the slide file itself")
            )
            continue
        if not path.is_file():
            continue  # missing files are the manifest's problems (or not checked)
        mpp = row.get("wsi_mpp")
        mpp = None if mpp is None or pd.isna(mpp) else float(mpp)
        try:
            open_slide(path, mpp=mpp).close()
        except ValueError as exc:  # SlideError: unreadable, or no µm/px
            findings.append(Finding(ERROR, pid, "wsi", str(exc)))
    return findings


def check_path_columns(subject: Subject) -> list[Finding]:
    """A column outside the manifest format that names files names existing ones only."""
    cohort = subject.cohort
    base = cohort.path.parent
    findings = []
    extra = [c for c in cohort.frame.columns if c not in KNOWN_COLUMNS]
    for column in extra if subject.check_files else ():
        cells = [(pid, str(v).strip()) for pid, v in cohort.frame[column].items()]
        cells = [(pid, v) for pid, v in cells if v and v.lower() not in ("nan", "none")]
        exists = {v: (base / v).is_file() for _, v in cells}
        if not any(exists.values()):
            continue  # not a column of files
        for pid, value in cells:
            if not exists[value]:
                findings.append(
                    Finding(
                        ERROR,
                        pid,
                        column,
                        f"{base / value}: not found (other cells of '{column}' name files)",
                    )
                )
    return findings


def check_expression(subject: Subject) -> list[Finding]:
    """The expression table as the targets stage reads it: orientation, scale, sample ids."""
    if subject.expression is None:
        return []
    from .targets.adapters import orient, to_linear
    from .targets.io import read_table

    cohort, source = subject.cohort, str(subject.expression)
    wanted = {pid: s for pid, s in cohort.frame.get("rna_sample", pd.Series()).items() if s}
    try:
        table, is_h5ad = read_table(subject.expression)
        orientation = "samples-x-genes" if is_h5ad else subject.orientation
        samples, _ = orient(table, orientation, samples=wanted.values(), source=source)
    except ValueError as exc:
        return [Finding(ERROR, None, "rna_sample", str(exc))]
    findings = [
        Finding(ERROR, pid, "rna_sample", f"sample {sample!r} is not in {source}")
        for pid, sample in wanted.items()
        if sample not in samples.index
    ]
    present = samples.loc[samples.index.isin(list(wanted.values()))]
    if not present.empty:
        try:
            to_linear(present, subject.scale)
        except ValueError as exc:
            findings.append(Finding(ERROR, None, "expression", f"{source}: {exc}"))
    return findings


#: The checks :func:`preflight` runs on a cohort that loads, in order.
CHECKS: tuple[Callable[[Subject], list[Finding]], ...] = (
    check_slides,
    check_path_columns,
    check_expression,
)
