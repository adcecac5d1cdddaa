"""Usage errors are click's short message and exit 2, never a traceback; ``--version`` works."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from stromalens import __version__

SCRIPT = Path(sys.executable).parent / "stromalens"


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(SCRIPT), *args], capture_output=True, encoding="utf-8")


@pytest.mark.parametrize(
    "args, shown",
    [
        (("synth", "--patiens", "3"), "No such option: --patiens"),
        (("wsi", "tile", "--manifest", "m.csv"), "No such option: --manifest"),
        (("train",), "Missing option '--config'"),
    ],
)
def test_a_usage_error_is_one_message_and_exit_2(args, shown):
    done = _run(*args)
    assert done.returncode == 2
    assert shown in done.stderr and "Traceback" not in done.stderr


def test_version():
    done = _run("--version")
    assert done.returncode == 0 and done.stdout.strip() == __version__
