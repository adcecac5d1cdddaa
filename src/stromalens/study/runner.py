"""The study runner: the stage graph, content hashing and ``STUDY/manifest.json``.

A stage's *digest* is the sha256 of (its name, the configuration blocks it reads, the content
hashes of its input files, the digests of the stages it depends on). ``manifest.json`` records
for every stage ``{status, digest, settings_digest, inputs_digest, inputs, upstream, outputs,
seconds, started, finished, summary}``. A stage is skipped when the manifest records it ``done``
with the same digest and its outputs exist; so an interrupted study resumes at the first stage
that did not finish, and changing one setting reruns that stage and the stages downstream of it
only. A stage that must rerun for new inputs or settings starts from empty output folders,
except what its ``keep`` names (per-item records keyed by every input, such as training
checkpoints); a stage that was interrupted with the same digest keeps them, so its own per-item
resumability (slides, patients, checkpoints) still saves work. A stage done whose summary lists
failed items (``retry``: a slide that could not be read, a patient whose radiomics failed) runs
again on the next run, resuming, so that a repaired file is picked up without redoing the items
that succeeded; when that changes its results, the stages reading it run again too (resuming:
their own per-item records decide what is redone). ``manifest.json`` is rewritten atomically after
every change, and a lock (``STUDY/.lock``, released by the operating system when the process
dies) keeps two runners out of one study folder.

Example
-------
>>> from stromalens.study import run_study                      # doctest: +SKIP
>>> result = run_study("configs/study.yaml", "runs/my_study")
>>> result.records["train"]["status"]
'done'
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import errno
import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from .. import __version__
from ..config import ConfigError, StudyConfig, absolute_paths, load_config
from ..executors import is_disk_full
from ..hashing import sha256_file
from ..logs import event, get_logger
from ..rundir import StudyLayout

log = get_logger("study.runner")


# ---------------------------------------------------------------------------- hashing
def _sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def digest_of(payload) -> str:
    """sha256 of a JSON-serialisable payload (keys sorted, paths as strings)."""
    return _sha256_text(json.dumps(payload, sort_keys=True, default=str))


def listing_digest(paths: Iterable[Path]) -> str:
    """sha256 of a file listing: each file's path and size (contents not read).

    Used for the many large files of a cohort (slides, MRI volumes): re-reading every slide's
    bytes on each run would cost more than the stage it guards. A file replaced by one of a
    different size, added or removed changes the digest."""
    lines = []
    for path in sorted({Path(p) for p in paths}, key=str):
        size = path.stat().st_size if path.exists() else -1
        lines.append(f"{path}\t{size}")
    return _sha256_text("\n".join(lines))


@dataclass(frozen=True)
class Input:
    """A hashed input of a stage: a file (content sha256), a listing (path + size) or a value
    (JSON: the rows of a table the stage reads, e.g. the slide table of a manifest, so that a
    stage depends on the columns it reads and not on the whole file)."""

    label: str
    path: Path | None = None
    listing: tuple[Path, ...] | None = None
    value: object = None

    def digest(self) -> str | None:
        if self.value is not None:
            return "value:" + digest_of(self.value)
        if self.listing is not None:
            return "listing:" + listing_digest(self.listing)
        if self.path is None:
            return None
        if not self.path.is_file():
            raise FileNotFoundError(f"{self.label}: file not found: {self.path}")
        return "sha256:" + sha256_file(self.path)


# ---------------------------------------------------------------------------- stages
@dataclass(frozen=True)
class Stage:
    """One node of the study graph.

    ``run(config, study)`` does the work and returns a JSON-serialisable summary (with a
    ``skipped`` list of ``{item, reason}`` for patients or slides it left out); ``settings``
    returns the configuration it reads; ``inputs`` the files it reads; ``outputs`` the paths
    (relative to the study folder) that must exist after it; ``clean`` the folders it owns,
    emptied before it reruns for new inputs or settings (except ``keep``)."""

    name: str
    run: Callable[[StudyConfig, Path], dict]
    settings: Callable[[StudyConfig], dict]
    inputs: Callable[[StudyConfig], list[Input]]
    outputs: Callable[[StudyConfig], list[str]]
    clean: Callable[[StudyConfig], list[str]]
    after: tuple[str, ...] = ()
    description: str = ""
    #: paths inside ``clean`` folders that survive a fresh start (per-item records keyed by
    #: every input, such as training checkpoints: reused when they match, replaced otherwise)
    keep: Callable[[StudyConfig], list[str]] | None = None


@dataclass
class StudyResult:
    """What :func:`run_study` did: the manifest's stage records and what ran or was skipped."""

    study: Path
    records: dict
    ran: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    seconds: float = 0.0


def _now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


def read_manifest(study: Path | str) -> dict:
    """``STUDY/manifest.json`` (an empty skeleton when there is none yet)."""
    path = StudyLayout(study).manifest
    if not path.is_file():
        return {"stages": {}}
    return json.loads(path.read_text(encoding="utf-8"))


def _write_manifest(study: Path, manifest: dict) -> None:
    path = StudyLayout(study).manifest
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(json.dumps(manifest, indent=2, default=str), encoding="utf-8")
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)  # a half-written copy (a full disk) is not left behind


def _overwrite_manifest(study: Path, manifest: dict) -> bool:
    """Last resort on a full disk, where no temporary copy fits: rewrite ``manifest.json`` in
    place, only if the new text fits in the blocks the file already holds (so the write cannot
    stop half-way for want of space). Returns whether it was written."""
    path = StudyLayout(study).manifest
    data = json.dumps(manifest, separators=(",", ":"), default=str).encode("utf-8")
    if not path.is_file() or len(data) > path.stat().st_blocks * 512:
        return False
    with open(path, "r+b") as handle:
        handle.write(data)
        handle.truncate()
    return True


def _remove_stale_manifest_copies(study: Path) -> None:
    """The temporary copies of ``manifest.json`` that a run killed while writing it left."""
    path = StudyLayout(study).manifest
    for stale in path.parent.glob(f".{path.name}.*.tmp"):
        stale.unlink(missing_ok=True)


#: The names under which stromalens writes a file before renaming it into place (the atomic
#: writes of the stages: ``store.h5.partial``, ``overlay.partial.png``, ``.partial-P1.json``,
#: ``partial-targets.parquet``, ``report.html.tmp``). A file so named in a stage's folder is
#: never a finished output.
TEMPORARY_NAMES = ("*.partial", "*.partial.*", ".partial-*", "partial-*", "*.tmp")


def remove_temporaries(study: Path, folders: Iterable[str]) -> list[Path]:
    """Delete the temporaries (:data:`TEMPORARY_NAMES`) under the stage ``folders`` of
    ``study``: after a stage stops, nothing writes them any more, and on a full disk they hold
    the space that the manifest needs. Returns what was removed."""
    removed = []
    for rel in folders:
        folder = study / rel
        if not folder.is_dir():
            continue
        for pattern in TEMPORARY_NAMES:
            for path in folder.rglob(pattern):
                if path.is_file() and not path.is_symlink():
                    path.unlink(missing_ok=True)
                    removed.append(path)
    return removed


#: Study folders this process holds the lock of, with how many holders nest there.
_HELD: dict[Path, int] = {}


@contextlib.contextmanager
def study_lock(study: Path | str):
    """An exclusive lock on the study folder (created if needed); the OS releases it if the
    process dies. Re-entrant within a process: ``stromalens demo`` takes it before generating
    its cohorts and keeps it through the ``run_study`` that takes it again."""
    import fcntl

    study = Path(study)
    study.mkdir(parents=True, exist_ok=True)
    key = study.resolve()
    if key in _HELD:
        _HELD[key] += 1
        try:
            yield
        finally:
            _HELD[key] -= 1
        return
    handle = open(StudyLayout(study).lock, "w")  # noqa: SIM115 - held for the whole run
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ValueError(
                f"{study}: another stromalens run or demo is using this folder; wait for it to "
                "finish or choose another --out"
            ) from None
        _HELD[key] = 1
        try:
            yield
        finally:
            del _HELD[key]
    finally:
        handle.close()


def stage_digests(config: StudyConfig, stages: list[Stage]) -> dict[str, dict]:
    """Every stage's digest and its parts, in graph order (inputs hashed here)."""
    out: dict[str, dict] = {}
    for stage in stages:
        settings = stage.settings(config)
        inputs = {i.label: i.digest() for i in stage.inputs(config)}
        upstream = {name: out[name]["digest"] for name in stage.after}
        settings_digest = digest_of(settings)
        inputs_digest = digest_of(inputs)
        out[stage.name] = {
            "digest": digest_of(
                {
                    "stage": stage.name,
                    "settings": settings_digest,
                    "inputs": inputs_digest,
                    "upstream": upstream,
                }
            ),
            "settings_digest": settings_digest,
            "inputs_digest": inputs_digest,
            "inputs": inputs,
            "upstream": upstream,
        }
    return out


def _check_order(stages: list[Stage]) -> None:
    seen: set[str] = set()
    for stage in stages:
        missing = [a for a in stage.after if a not in seen]
        if missing:
            raise ValueError(f"stage {stage.name!r} runs before {missing}")
        seen.add(stage.name)


def _outputs_exist(study: Path, outputs: list[str]) -> bool:
    return all((study / rel).exists() for rel in outputs)


def _clean(study: Path, folders: list[str], ours: bool, keep: list[str] = ()) -> None:
    """Remove a stage's folders before it starts afresh. ``ours``: the manifest records an
    earlier run of the stage, so what lies there was written by stromalens; otherwise an
    existing path is the user's and is never deleted (the run stops, naming it). Paths in
    ``keep`` (relative to the study) and the folders above them stay."""
    root = study.resolve()
    kept = {(study / rel).resolve() for rel in keep}
    for rel in folders:
        path = (study / rel).resolve()
        if root not in path.parents:
            raise ValueError(f"refusing to clean {path}: outside the study folder {root}")
        if not ours and path.exists():
            raise FileExistsError(
                f"{path} exists but no earlier `stromalens run` in {root} wrote it; "
                "move it away or choose another --out (nothing was deleted)"
            )
        _remove(path, kept)


def _remove(path: Path, kept: set[Path]) -> None:
    """Remove ``path``, except the paths in ``kept`` and the folders holding them."""
    if path in kept:
        return
    if path.is_dir() and not path.is_symlink():
        if any(path in k.parents for k in kept):
            for child in path.iterdir():
                _remove(child, kept)
        else:
            shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def check_study(config: StudyConfig, validate: Callable[[StudyConfig], None]) -> None:
    """Everything a study file says, checked before the first stage: every name against its
    registry (:func:`~.checks.name_problems`) and ``validate`` (the stages' own checks:
    files, manifests, devices). One :class:`ConfigError` lists every problem of both."""
    from .checks import name_problems

    problems = name_problems(config)
    try:
        validate(config)
    except ConfigError as exc:
        lines = str(exc).splitlines()
        problems += [line.removeprefix("  ") for line in lines[1:]] or [lines[0]]
    if problems:
        raise ConfigError("invalid study configuration\n" + "\n".join(f"  {p}" for p in problems))


def run_study(
    config: StudyConfig | Path | str,
    study: Path | str,
    *,
    stages: list[Stage] | None = None,
    only: Iterable[str] | None = None,
    force: Iterable[str] = (),
    on_stage: Callable[[str, str, dict], None] | None = None,
) -> StudyResult:
    """Run every stage of the study in order, skipping the ones already done for the same
    inputs and settings.

    ``only`` restricts the run to some stages (their upstream must be done); ``force`` reruns
    stages even when done. ``on_stage(name, event, record)`` is called with ``event`` in
    ``"start" | "done" | "skipped"`` (the CLI prints from it)."""
    from .stages import default_stages, validate_study

    config_path = None if isinstance(config, StudyConfig) else Path(config)
    if config_path is not None:
        config = load_config(config_path, StudyConfig)
    if stages is None:
        check_study(config, validate_study)
        stages = default_stages(config)
    _check_order(stages)
    names = [s.name for s in stages]
    for name in list(only or []) + list(force):
        if name not in names:
            raise ConfigError(f"unknown stage {name!r}; stages: {', '.join(names)}")
    study = Path(study)
    started = time.perf_counter()
    result = StudyResult(study=study, records={})
    with study_lock(study):
        _remove_stale_manifest_copies(study)
        manifest = read_manifest(study)
        manifest.update(
            {
                "stromalens": __version__,
                "config": str(config_path.resolve()) if config_path else None,
                "study": str(study.resolve()),
                "order": names,
            }
        )
        records = manifest.setdefault("stages", {})
        StudyLayout(study).config.write_text(_config_yaml(config), encoding="utf-8")
        digests = stage_digests(config, stages)
        selected = set(only) if only else set(names)
        needed = _upstream(stages, selected)
        changed: set[str] = set()  # stages rerun at the same digest whose results changed
        for stage in stages:
            parts = digests[stage.name]
            previous = records.get(stage.name, {})
            outputs = stage.outputs(config)
            done = (
                previous.get("status") == "done"
                and previous.get("digest") == parts["digest"]
                and _outputs_exist(study, outputs)
            )
            why = _rerun_reason(stage, previous, changed) if done else None
            if stage.name not in selected:
                if stage.name in needed and not done:
                    raise ValueError(
                        f"stage {stage.name!r} is not done for these settings; run it first"
                    )
                continue
            if done and why is None and stage.name not in force:
                event(log, "stage skipped", stage=stage.name, reason="done, same digest")
                result.skipped.append(stage.name)
                if on_stage:
                    on_stage(stage.name, "skipped", previous)
                continue
            if done and why is not None and stage.name not in force:
                event(log, "stage rerun", stage=stage.name, reason=why)
            resuming = previous.get("digest") == parts["digest"] and stage.name not in force
            _run_stage(stage, config, study, manifest, parts, resuming, bool(previous),
                       on_stage)  # fmt: skip
            result.ran.append(stage.name)
            if why is not None and (
                set(stage.after) & changed
                or retry_items(records[stage.name]) != retry_items(previous)
            ):
                changed.add(stage.name)
        result.seconds = round(time.perf_counter() - started, 1)
        manifest["last_run"] = {
            "finished": _now(),
            "seconds": result.seconds,
            "ran": result.ran,
            "skipped": result.skipped,
        }
        _write_manifest(study, manifest)
    result.records = records
    return result


def retry_items(record: dict) -> list[str]:
    """The items (slides, patients) a stage recorded as failed in a way a rerun may mend (its
    summary's ``retry`` list): a repaired file is picked up by the next run."""
    return list((record.get("summary") or {}).get("retry", []))


def _rerun_reason(stage: Stage, previous: dict, changed: set[str]) -> str | None:
    """Why a stage done at the same digest runs again (``None``: it does not): it left failed
    items to retry, or a stage it reads reran and its results changed (a retried slide now
    embedded). It then resumes: its folders are kept and only the unfinished items redone."""
    failed = retry_items(previous)
    if failed:
        return f"{len(failed)} failed item(s) retried: {', '.join(map(str, failed[:5]))}"
    upstream = sorted(set(stage.after) & changed)
    if upstream:
        return f"results of {', '.join(upstream)} changed"
    return None


def _upstream(stages: list[Stage], selected: set[str]) -> set[str]:
    """The stages upstream of a selected one (they must be done already)."""
    needed: set[str] = set()
    for stage in reversed(stages):
        if stage.name in selected or stage.name in needed:
            needed.update(stage.after)
    return needed


def _run_stage(stage, config, study: Path, manifest: dict, parts: dict, resumed: bool,
               recorded: bool, on_stage) -> None:  # fmt: skip
    """Run one stage: clean its folder unless it resumes (only what an earlier run of it wrote,
    ``recorded``), record it as running, run it, check its outputs, record it done (or failed /
    interrupted, and re-raise)."""
    if not resumed:
        keep = stage.keep(config) if stage.keep is not None else []
        _clean(study, stage.clean(config), ours=recorded, keep=keep)
    outputs = stage.outputs(config)
    record = {
        "status": "running",
        **parts,
        "description": stage.description,
        "outputs": outputs,
        "resumed": resumed,
        "started": _now(),
    }
    manifest["stages"][stage.name] = record
    _write_manifest(study, manifest)
    if on_stage:
        on_stage(stage.name, "start", record)
    event(log, "stage started", stage=stage.name, digest=parts["digest"][:12])
    t0 = time.perf_counter()
    try:
        summary = stage.run(config, study) or {}
    except BaseException as exc:
        record.update(seconds=round(time.perf_counter() - t0, 1), finished=_now())
        stopped = _stopped(stage, config, study, manifest, record, exc)
        if stopped is exc:
            raise
        raise stopped from exc
    missing = [rel for rel in outputs if not (study / rel).exists()]
    if missing:
        record.update(status="failed", error=f"outputs missing: {missing}")
        _write_manifest(study, manifest)
        raise RuntimeError(f"stage {stage.name!r} did not write {missing}")
    record.update(
        status="done", seconds=round(time.perf_counter() - t0, 1), finished=_now(), summary=summary
    )
    _write_manifest(study, manifest)
    event(log, "stage done", stage=stage.name, seconds=record["seconds"])
    if on_stage:
        on_stage(stage.name, "done", record)


def _stopped(stage, config, study: Path, manifest: dict, record: dict, exc: BaseException):
    """Record a stage that stopped (``failed``, or ``interrupted`` by Ctrl-C / SIGTERM) after
    removing its temporaries; returns the exception to raise.

    On a full disk the record may not fit either: then the manifest keeps ``running``, which
    the next run treats the same way (it resumes the stage). A disk-full error that names no
    path (a library's bare ``OSError``) is raised again naming the stage's folder."""
    folders = stage.clean(config)
    removed = remove_temporaries(study, folders)
    record.update(
        status="interrupted" if isinstance(exc, KeyboardInterrupt) else "failed",
        error=f"{type(exc).__name__}: {exc}".strip(),
        temporaries_removed=len(removed),
    )
    try:
        _write_manifest(study, manifest)
    except OSError as write_error:
        if not (is_disk_full(write_error) and _overwrite_manifest(study, manifest)):
            event(log, "stage record not written", stage=stage.name, error=str(write_error))
    if is_disk_full(exc) and exc.filename is None:
        where = study / folders[0] if folders else study
        return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(where))
    return exc


def _config_yaml(config: StudyConfig) -> str:
    import yaml

    # absolute: a relative path in a loaded file would be the file's folder's (load_config)
    return yaml.safe_dump(json.loads(absolute_paths(config).model_dump_json()), sort_keys=False)
