"""``stromalens init``: a commented study file written for one cohort manifest.

The manifest is read and validated as ``stromalens run`` reads it (:func:`~stromalens.cohort.
load_manifest`); what it holds decides the file: the sites found become ``cohort.sites`` (a row
with another label is then refused), the modalities present choose the models (slides and MRI:
every model; slides only: the WSI models; MRI only: the MRI models), a single site turns off
what needs two (ComBat, leave-site-out), and a small cohort gets fewer folds. Every other key
keeps the default of :class:`~stromalens.config.StudyConfig`, written out with a comment so the
file shows what can be changed. The prompt banks and the radiomics settings are the ones shipped
with the package (``builtin:``); paths are relative to the study file, as
:func:`~stromalens.config.load_config` reads them.

The file written is loaded back and validated before this returns, so what ``init`` writes
``stromalens run`` accepts (up to the files the user still has to give, such as the expression
table when ``--expression`` was not given).

Example
-------
>>> from stromalens.study.init import write_study_file                # doctest: +SKIP
>>> write_study_file("cohort/cohort.csv", "study.yaml", expression="cohort/rnaseq/tpm.tsv")
"""

from __future__ import annotations

import errno
import json
import os
from dataclasses import dataclass
from pathlib import Path

from ..cohort import MRI_SEQUENCES, SUMMARY_NAMES, Cohort, load_manifest
from ..config import BUILTIN, ConfigError, StudyConfig, load_config

#: Folds of the outer and inner CV at most (the study's), and patients wanted per fold.
MAX_FOLDS = 5
MAX_INNER_FOLDS = 3
PATIENTS_PER_FOLD = 4
#: Patients every site needs for ComBat: a training fold must hold two of each site to
#: estimate the site's variance (site-stratified folds keep about (k-1)/k of each site).
MIN_SITE_FOR_COMBAT = 3


@dataclass(frozen=True)
class CohortFacts:
    """What a manifest holds, as far as the study file depends on it."""

    patients: int
    sites: tuple[str, ...]
    site_sizes: dict[str, int]
    slides: int
    sequences: dict[str, int]  # MRI sequence column → patients with that image
    rna: int
    summary: str  # the per-site table, as text

    @property
    def has_wsi(self) -> bool:
        return self.slides > 0

    @property
    def has_mri(self) -> bool:
        return any(self.sequences.values())


def describe_cohort(cohort: Cohort) -> CohortFacts:
    """The facts of a loaded manifest (:class:`CohortFacts`)."""
    present = ~cohort.missing
    return CohortFacts(
        patients=len(cohort.frame),
        sites=tuple(str(s) for s in cohort.sites),
        site_sizes={str(k): int(v) for k, v in cohort.frame["site"].value_counts().items()},
        slides=len(cohort.slides),
        sequences={seq: int(present[seq].sum()) for seq in MRI_SEQUENCES},
        rna=int(present["rna_sample"].sum()),
        summary=cohort.summary().to_string(),
    )


def choose_models(facts: CohortFacts) -> tuple[str, ...] | None:
    """The registered models that the cohort's modalities can train; None: every model."""
    if facts.has_wsi and facts.has_mri:
        return None
    from ..models import list_models  # imports torch: only when a subset is chosen

    if facts.has_wsi:
        return tuple(list_models("wsi"))
    # MRI only: the distilled student needs the fusion model (its teacher), which needs slides
    return tuple(m for m in list_models("mri") if m != "student")


def choose_folds(facts: CohortFacts) -> tuple[int, int]:
    """Outer and inner folds: the study's five and three, fewer when a fold would hold under
    :data:`PATIENTS_PER_FOLD` patients (never fewer than two)."""
    outer = max(2, min(MAX_FOLDS, facts.patients // PATIENTS_PER_FOLD))
    training = facts.patients - facts.patients // outer  # patients of one training fold
    inner = max(2, min(MAX_INNER_FOLDS, training // PATIENTS_PER_FOLD))
    return outer, inner


def _refuse_unusable(facts: CohortFacts, manifest: Path) -> None:
    if facts.rna == 0:
        raise ValueError(
            f"{manifest}: no patient has an rna_sample; the study's targets are computed from "
            "RNA-seq, so fill the rna_sample column (the sample ids of the expression table)"
        )
    if not (facts.has_wsi or facts.has_mri):
        raise ValueError(
            f"{manifest}: no patient has a slide (wsi) or an MRI image (mri_t1, mri_t2, mri_ce); "
            "there is nothing to learn the targets from"
        )


def _yaml(value) -> str:
    """A value as YAML (JSON's flow style is YAML too): strings quoted, None as null."""
    return json.dumps(value)


#: The column at which the comments of the study file start.
COMMENT_AT = 38


def _key(indent: int, key: str, value, comment: str = "") -> str:
    """One ``key: value   # comment`` line, the comment aligned at :data:`COMMENT_AT`."""
    text = f"{' ' * indent}{key}: {value if isinstance(value, _Raw) else _yaml(value)}"
    return f"{text:<{COMMENT_AT - 1}} # {comment}" if comment else text


class _Raw(str):
    """A value written as it is (a flow mapping, say), not quoted."""


def _relative(path: Path, study_file: Path) -> str:
    """``path`` as the study file writes it: relative to the study file's folder."""
    return os.path.relpath(path.resolve(), study_file.resolve().parent)


def _header(facts: CohortFacts, manifest: Path) -> list[str]:
    modalities = [f"{facts.slides} slides" if facts.has_wsi else "no slides"]
    modalities += [f"{SUMMARY_NAMES[s]} {n}" for s, n in facts.sequences.items()]
    lines = [
        f"# A study of the cohort {manifest}, written by `stromalens init`.",
        "# Check the cohort: stromalens cohort validate --manifest MANIFEST [--expression TABLE]",
        "# Run the study:    stromalens run THIS_FILE --out STUDY_FOLDER",
        "# Paths are relative to this file's folder; `builtin:` names a file shipped with",
        "# stromalens (prompt banks, radiomics settings). Each key is the default unless its",
        "# comment says why this cohort got another value; configs/study.yaml of the repository",
        "# explains every block's trade-offs, and keys left out keep their defaults.",
        "#",
        f"# The manifest: {facts.patients} patients at {len(facts.sites)} site(s); "
        f"{', '.join(modalities)}; RNA {facts.rna}.",
    ]
    return lines + [f"#   {row}" for row in facts.summary.splitlines()] + [""]


def _cohort_block(facts: CohortFacts, manifest: str, expression: str | None) -> list[str]:
    return [
        _key(0, "name", "study", "shown in the report and the summary"),
        _key(0, "notes", "", "free text stated in the report"),
        "",
        "cohort:",
        _key(2, "manifest", manifest),
        _key(2, "expression", expression,
             "TPM table of the rna_sample ids" if expression else "REQUIRED: the TPM table"),
        _key(2, "name", "development", "features go to STUDY/features/<name>/"),
        _key(2, "sites", list(facts.sites), "the sites found; another label is an error"),
        _key(2, "check_files", True),
        "",
    ]  # fmt: skip


def _data_blocks(facts: CohortFacts) -> list[str]:
    no_work = "   # none in the manifest: the stage has no work"
    return [
        "targets:",
        _key(2, "orientation", "auto", "the axis of the table that holds rna_sample"),
        _key(2, "scale", "auto", "refuses log data; say log2 or log10 if it is"),
        _key(2, "signature", None, "null: TIL10 (quanTIseq)"),
        "",
        "wsi:" + ("" if facts.has_wsi else no_work),
        _key(2, "encoder", "synthclip", "`stromalens wsi encoders`: the others, and"),
        _key(2, "weights", None, "the weights found (weights are yours)"),
        _key(2, "allow_download", False, "never fetch weights unless you say so"),
        _key(2, "target_mpp", 0.5, "20x: the study's scale"),
        _key(2, "tile_px", 224),
        _key(2, "stain", "macenko"),
        _key(2, "device", "auto", "a GPU when there is one"),
        "",
        "radiomics:" + ("" if facts.has_mri else no_work),
        _key(2, "config", f"{BUILTIN}radiomics/default.yaml",
             f"the study's; {BUILTIN}radiomics/demo.yaml: lighter"),
        "",
    ]  # fmt: skip


def _training_block(facts: CohortFacts) -> list[str]:
    models = choose_models(facts)
    why = {
        (True, True): "null: every model (slides and MRI)",
        (True, False): "slides only: the models reading WSI",
        (False, True): "MRI only: the models reading MRI",
    }[(facts.has_wsi, facts.has_mri)]
    folds, inner = choose_folds(facts)
    small = f"{facts.patients} patients: fewer folds" if folds < MAX_FOLDS else ""
    harmonise = len(facts.sites) > 1 and min(facts.site_sizes.values()) >= MIN_SITE_FOR_COMBAT
    return [
        "training:",
        _key(2, "prompts", f"{BUILTIN}prompts", "the shipped banks, one per target"),
        _key(2, "models", list(models) if models is not None else None, why),
        _key(2, "folds", folds, small),
        _key(2, "inner_folds", inner, small),
        _key(2, "repeats", 1, "3: headline comparisons over 3 CVs"),
        _key(2, "grid", _Raw("{}"), "nested selection, e.g. {tau: [0.25, 1.0]}"),
        _key(2, "harmonise", harmonise, "" if harmonise else
             f"ComBat needs >= {MIN_SITE_FOR_COMBAT} patients in every site"),
        _key(2, "leave_site_out", len(facts.sites) > 1,
             "" if len(facts.sites) > 1 else "one site: none to leave out"),
        _key(2, "workers", 1, "fits in parallel processes"),
        "",
        _key(0, "external", _Raw("[]"), "cohorts the frozen models are applied"),
        "#   - {name: other, manifest: other/cohort.csv, expression: other/tpm.tsv}",
        "",
        "evaluation:",
        _key(2, "n_boot", 1000, "bootstrap resamples of every CI"),
        "",
    ]  # fmt: skip


def study_text(
    cohort: Cohort, study_file: Path | str, *, expression: Path | str | None = None
) -> str:
    """The commented study file for ``cohort``, as it would be written at ``study_file``."""
    study_file = Path(study_file)
    facts = describe_cohort(cohort)
    _refuse_unusable(facts, cohort.path)
    manifest = _relative(cohort.path, study_file)
    table = _relative(Path(expression), study_file) if expression is not None else None
    lines = _header(facts, cohort.path) + _cohort_block(facts, manifest, table)
    lines += _data_blocks(facts) + _training_block(facts)
    return "\n".join(lines)


def write_study_file(
    manifest: Path | str,
    out: Path | str = "study.yaml",
    *,
    expression: Path | str | None = None,
    force: bool = False,
) -> Path:
    """Write the study file of ``manifest`` to ``out`` and return its path.

    An existing ``out`` is replaced only with ``force``. The file is loaded back
    (:func:`~stromalens.config.load_config`) before this returns; a file that does not load is
    removed and the error raised (it would be a bug here, not the user's)."""
    out = Path(out)
    cohort = load_manifest(manifest)
    if expression is not None and not Path(expression).is_file():
        raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), str(expression))
    if out.is_dir():
        raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), str(out))
    if out.exists() and not force:
        raise ValueError(f"{out}: already exists; choose another --out or give --force")
    text = study_text(cohort, out, expression=expression)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".partial")
    tmp.write_text(text, encoding="utf-8")
    try:
        load_config(tmp, StudyConfig)
    except ConfigError:
        tmp.unlink()
        raise
    tmp.replace(out)
    return out
