"""Kill `stromalens run` halfway, start it again: finished stages are skipped (same digests and
time stamps, logged "skipped"), the interrupted one resumes and the study completes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .conftest import tiny_study, write_study

SCRIPT = Path(sys.executable).parent / "stromalens"


def _start(config: Path, out: Path, *args: str) -> subprocess.Popen:
    # Output goes to a file: a pipe nobody reads while we poll would fill and block the run.
    log = open(out.parent / "first-run.log", "w", encoding="utf-8")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [str(SCRIPT), "run", str(config), "--out", str(out), *args],
        stdout=log,
        stderr=subprocess.STDOUT,
        encoding="utf-8",
        env=os.environ | {"PYTHONUTF8": "1", "COLUMNS": "200"},
        start_new_session=True,  # its own process group: the kill reaches its workers too
    )
    log.close()  # the child holds its own copy of the descriptor
    return proc


def _stages(out: Path) -> dict:
    try:
        return json.loads((out / "manifest.json").read_text(encoding="utf-8"))["stages"]
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


def _kill_after(proc: subprocess.Popen, out: Path, stage: str, sig, timeout: float) -> dict:
    """Wait until ``stage`` is done in manifest.json, then send ``sig`` to the process group."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _stages(out).get(stage, {}).get("status") == "done":
            break
        if proc.poll() is not None:
            log = (out.parent / "first-run.log").read_text(encoding="utf-8")
            pytest.fail(f"the run ended before {stage} was done:\n{log}")
        time.sleep(0.05)
    else:
        os.killpg(proc.pid, signal.SIGKILL)
        pytest.fail(f"{stage} not done within {timeout} s")
    if proc.poll() is None:
        os.killpg(proc.pid, sig)
    proc.wait(timeout=60)
    return _stages(out)


def test_a_killed_run_restarts_without_redoing_finished_stages(small_cohort, tmp_path):
    config = write_study(tmp_path / "study.yaml", tiny_study(small_cohort))
    out = tmp_path / "study"
    only = ("--only", "targets", "--only", "wsi")
    proc = _start(config, out, *only)
    killed = _kill_after(proc, out, "targets", signal.SIGKILL, timeout=120)
    assert killed["targets"]["status"] == "done"
    wsi_was = killed.get("wsi", {}).get("status")

    rerun = subprocess.run(
        [str(SCRIPT), "run", str(config), "--out", str(out), *only],
        capture_output=True,
        encoding="utf-8",
        env=os.environ | {"PYTHONUTF8": "1", "COLUMNS": "200"},
        timeout=300,
    )
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    after = _stages(out)
    assert after["targets"] == killed["targets"]  # same digest, same time stamps: not redone
    assert "targets: skipped" in rerun.stdout
    assert after["wsi"]["status"] == "done"
    if wsi_was == "running":  # killed inside the stage: same digest, so its slides were kept
        assert after["wsi"]["resumed"] is True
    assert len(list((out / "features" / "development").glob("*/*/*.h5"))) >= 1


@pytest.mark.slow
def test_the_whole_study_resumes_after_sigterm(external_cohort, tmp_path):
    # 16 patients, each with a slide: training cannot yet predict a fold in which no patient
    # has a slide (make_batch then builds 1-dimensional tiles), nor fit 2 × 2 nested folds of
    # fewer patients.
    from stromalens.config import MissingRates
    from stromalens.synthetic import generate_cohort

    from ..conftest import small_config

    manifest = generate_cohort(
        tmp_path / "cohort",
        small_config(patients=16, missing=MissingRates(wsi=0.0, mri_ce=0.2)),
        progress=False,
    )
    rnaseq = external_cohort.parent / "rnaseq"
    external = {
        "name": "ext",
        "manifest": str(external_cohort),
        "expression": str(rnaseq / "tpm.tsv"),
        "targets": {
            "signature": str(rnaseq / "signature.tsv"),
            "mrna_scaling": str(rnaseq / "mrna_content.tsv"),
        },
    }
    config = write_study(tmp_path / "study.yaml", tiny_study(manifest, external=[external]))
    out = tmp_path / "study"
    proc = _start(config, out)
    killed = _kill_after(proc, out, "radiomics", signal.SIGTERM, timeout=900)
    assert proc.returncode != 0
    rerun = subprocess.run(
        [str(SCRIPT), "run", str(config), "--out", str(out)],
        capture_output=True,
        encoding="utf-8",
        env=os.environ | {"PYTHONUTF8": "1", "COLUMNS": "200"},
        timeout=1800,
    )
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    after = _stages(out)
    for stage in ("targets", "wsi", "radiomics"):
        assert after[stage] == killed[stage]
        assert f"{stage}: skipped" in rerun.stdout
    assert all(record["status"] == "done" for record in after.values())
    assert list(after) == ["targets", "wsi", "radiomics", "train", "external", "evaluate", "report"]
    assert "study summary" in rerun.stdout
