"""Clean stops: no worker outlives a parent killed with SIGKILL; a full disk fails the stage with
one line, leaves no temporary file and a study that the next run finishes.

Each run starts in a session of its own (``start_new_session=True``), so every process it makes
(pool workers, multiprocessing's forkserver and resource tracker) shares its process group;
after the parent is killed, the group must empty within :data:`GRACE` seconds (a deadline to
wait for, not a measured time).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from stromalens.executors import ItemResult, _call, die_with_parent

SCRIPT = Path(sys.executable).parent / "stromalens"
SRC = Path(__file__).resolve().parents[1] / "src"

#: Seconds the group may take to empty after the parent is killed (a deadline, not a timing).
GRACE = 15.0
#: Seconds a command may take to start its workers.
START = 120.0


def _group(pgid: int) -> list[tuple[int, int, str]]:
    """The live processes of process group ``pgid`` as (pid, ppid, command); zombies (dead,
    waiting for their parent to reap them) are not alive."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue  # exited meanwhile
        fields = stat.rsplit(")", 1)[1].split()  # state, ppid, pgrp, ...
        if int(fields[2]) == pgid and fields[0] != "Z":
            found.append((int(entry.name), int(fields[1]), cmd.strip()))
    return found


def _wait_for(condition, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.2)
    return condition()


def _start(command: list[str], log: Path, **kwargs) -> subprocess.Popen:
    """``command`` in a session (and process group) of its own, its output into ``log``."""
    with open(log, "wb") as output:
        return subprocess.Popen(
            command, start_new_session=True, stdout=output, stderr=subprocess.STDOUT, **kwargs
        )


def _kill_parent_and_check_group(proc: subprocess.Popen, others: int, log: Path) -> None:
    """Once ``proc``'s group holds ``others`` processes besides ``proc``, SIGKILL ``proc``;
    then the group must empty."""
    try:
        started = _wait_for(
            lambda: proc.poll() is not None or len(_group(proc.pid)) > others,
            START,
        )
        assert started and proc.poll() is None, f"no workers started: {log.read_text()}"
        before = _group(proc.pid)
        proc.kill()
        proc.wait()
        emptied = _wait_for(lambda: not _group(proc.pid), GRACE)
        assert emptied, f"left after kill -9 of {proc.pid}: {_group(proc.pid)} (was {before})"
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # whatever a failed test left
        except ProcessLookupError:
            pass


SLEEPER = """
import sys, time
from stromalens.executors import run_items

def nap(seconds):
    time.sleep(seconds)

if __name__ == "__main__":
    run_items(nap, [("a", 120), ("b", 120)], workers=2, progress=False,
              mp_context=sys.argv[1])
"""


#: Processes besides the parent once two workers run: forkserver adds the server and the
#: resource tracker (the workers are the server's children), spawn the tracker.
OTHERS = {"fork": 2, "forkserver": 4, "spawn": 3}


@pytest.mark.parametrize("context", sorted(OTHERS))
def test_pool_workers_end_when_the_parent_is_killed(context, tmp_path):
    script = tmp_path / "sleeper.py"
    script.write_text(textwrap.dedent(SLEEPER))
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]),
    }
    log = tmp_path / "log"
    proc = _start([sys.executable, str(script), context], log, env=env)
    _kill_parent_and_check_group(proc, others=OTHERS[context], log=log)


def test_a_killed_radiomics_command_leaves_no_process(small_cohort, tmp_path):
    """The real command, with its default settings (N4, filters: seconds per patient, so the
    workers are busy when the parent dies)."""
    log = tmp_path / "log"
    proc = _start(
        [str(SCRIPT), "radiomics", "--manifest", str(small_cohort), "--out", str(tmp_path / "r"),
         "--workers", "2", "--no-progress"],
        log,
    )  # fmt: skip
    _kill_parent_and_check_group(proc, others=2, log=log)  # two forked workers


def test_a_worker_dies_of_sigterm_even_under_the_run_handler(tmp_path):
    """`stromalens run` turns SIGTERM into KeyboardInterrupt; a forked worker inherits that
    handler, and die_with_parent puts the default (death) back."""
    child = os.fork()
    if child == 0:  # pragma: no cover - the child: never return into pytest
        try:
            signal.signal(signal.SIGTERM, lambda *_: None)  # as a handler that does not exit
            die_with_parent()
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(10)
        finally:
            os._exit(3)  # reached only if SIGTERM did not end the process
    _, status = os.waitpid(child, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGTERM


def _fill(_):
    raise OSError(28, "No space left on device", "/study/radiomics/patients/P1.json")


def _broken(_):
    raise FileNotFoundError(2, "No such file or directory", "/data/P1.nii.gz")


def _fill_after_marking(folder):
    marker = folder / f"{os.getpid()}-{time.monotonic_ns()}"
    marker.write_text("started")
    raise OSError(28, "No space left on device", str(marker))


def test_a_full_disk_in_a_worker_stops_the_pool(tmp_path):
    from stromalens.executors import run_items

    items = [(str(i), tmp_path) for i in range(40)]
    with pytest.raises(OSError, match="No space left") as info:
        run_items(_fill_after_marking, items, workers=2, progress=False)
    assert Path(info.value.filename).parent == tmp_path  # the error keeps its path
    assert len(list(tmp_path.iterdir())) < len(items)  # the items not started never start


def test_a_full_disk_stops_the_items_other_errors_fail_one():
    with pytest.raises(OSError, match="No space left"):
        _call(_fill, "P1", None)
    result = _call(_broken, "P1", None)
    assert isinstance(result, ItemResult) and not result.ok and "P1.nii.gz" in result.error


def test_a_killed_wsi_embed_leaves_no_process(small_cohort, tmp_path):
    """The case the issue measured: slides over two forkserver workers, each loading the
    encoder (here random weights). (The DataLoader workers that decode one slide call the same
    die_with_parent; on these small slides they live too briefly to be caught and killed.)"""
    log = tmp_path / "log"
    proc = _start(
        [str(SCRIPT), "wsi", "embed", "--manifest", str(small_cohort), "--out", str(tmp_path / "f"),
         "--weights", "random", "--executor", "process", "--workers", "2", "--num-workers", "1"],
        log,
    )  # fmt: skip
    _kill_parent_and_check_group(proc, others=OTHERS["forkserver"], log=log)


# ---------------------------------------------------------------------------- a full disk
#: Free bytes left on the small disk: room for the study file and the manifest (a page each),
#: not for the targets stage's tables (~50 kB on the 10-patient cohort).
FREE = 24 * 1024


@pytest.fixture
def small_disk(tmp_path):
    """A 1 MiB tmpfs mounted for the test (root only), filled to :data:`FREE` bytes; yields
    (mount point, filler file)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(disk)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {mounted.stderr.decode().strip()}")
    try:
        stat = os.statvfs(disk)
        filler = disk / "filler"
        filler.write_bytes(b"\0" * (stat.f_bavail * stat.f_frsize - FREE))
        yield disk, filler
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def _temporaries(folder: Path) -> list[Path]:
    from stromalens.study.runner import TEMPORARY_NAMES

    return [p for pattern in (*TEMPORARY_NAMES, ".*.tmp") for p in folder.rglob(pattern)]


def test_a_full_disk_fails_the_stage_in_one_line_and_the_study_resumes(
    small_cohort, small_disk, tmp_path
):
    import json

    from tests.study.conftest import tiny_study, write_study

    disk, filler = small_disk
    config = write_study(tmp_path / "study.yaml", tiny_study(small_cohort))
    study = disk / "study"
    command = [str(SCRIPT), "--log-level", "WARNING", "run", str(config), "--out", str(study),
               "--only", "targets"]  # fmt: skip

    full = subprocess.run(command, capture_output=True, encoding="utf-8", timeout=600)
    errors = [line for line in full.stderr.splitlines() if line.startswith("error:")]
    assert full.returncode == 1 and "Traceback" not in full.stderr, full.stderr
    assert errors == [
        f"error: {study / 'targets'}: no space left on the device; free some space or choose "
        "another --out, then run again (finished work is kept)"
    ]
    assert _temporaries(study) == []
    record = json.loads((study / "manifest.json").read_text())["stages"]["targets"]
    assert record["status"] == "failed" and "No space left" in record["error"]

    filler.unlink()  # space freed: the same command finishes the study
    again = subprocess.run(command, capture_output=True, encoding="utf-8", timeout=600)
    assert again.returncode == 0, again.stderr
    record = json.loads((study / "manifest.json").read_text())["stages"]["targets"]
    assert record["status"] == "done" and record["resumed"]
    assert (study / "targets" / "targets.parquet").is_file() and _temporaries(study) == []


def test_a_stopped_stage_leaves_its_finished_files_and_no_temporary(tmp_path):
    from stromalens.config import StudyConfig
    from stromalens.study import Stage, read_manifest, run_study

    names = ["P1.h5.partial", "overlay.partial.png", ".partial-P2.json", "partial-t.parquet",
             "index.html.tmp"]  # fmt: skip

    def run(config, study):
        (study / "s" / "sub").mkdir(parents=True)
        (study / "s" / "P0.h5").write_text("finished")
        for name in names:
            (study / "s" / "sub" / name).write_text("half")
        raise KeyboardInterrupt("killed")

    stage = Stage("s", run, settings=lambda c: {}, inputs=lambda c: [],
                  outputs=lambda c: ["s/P0.h5"], clean=lambda c: ["s"])  # fmt: skip
    config = StudyConfig.model_validate({"cohort": {"manifest": "cohort.csv"}})
    with pytest.raises(KeyboardInterrupt):
        run_study(config, tmp_path, stages=[stage])
    assert _temporaries(tmp_path) == [] and (tmp_path / "s" / "P0.h5").is_file()
    record = read_manifest(tmp_path)["stages"]["s"]
    assert record["status"] == "interrupted" and record["temporaries_removed"] == len(names)
