"""The command line's conventions: usage errors are click's short message and exit 2, user and
operating-system errors one line naming the path and exit 1, never a traceback."""

from __future__ import annotations

import errno
import fcntl
import os
import subprocess
import sys
from pathlib import Path

import pytest
import typer

from stromalens import __version__
from stromalens.cli import app, main
from stromalens.cli.errors import os_error_line

SCRIPT = Path(sys.executable).parent / "stromalens"
REPO = Path(__file__).resolve().parents[1]

#: Commands that do their work with no argument at all (so no "missing argument" case).
RUN_WITHOUT_ARGUMENTS = {"demo", "version", "wsi train-clip", "wsi encoders"}


def _run(*args: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([str(SCRIPT), *args], capture_output=True, encoding="utf-8", **kwargs)


def _commands(command=None, path=()) -> list[tuple[tuple[str, ...], bool]]:
    """Every command and group of the app as (words, is_group), walking click's tree."""
    command = command or typer.main.get_command(app)
    found = [(path, True)] if path else []
    for name, sub in sorted(getattr(command, "commands", {}).items()):
        if getattr(sub, "commands", None) is not None:
            found += _commands(sub, (*path, name))
        else:
            found.append(((*path, name), False))
    return found


COMMANDS = _commands()
LEAVES = [words for words, group in COMMANDS if not group]


def _main(monkeypatch, capsys, *args: str) -> tuple[int, str]:
    """Run the entry point in this process: (exit code, stderr). Any exception other than
    SystemExit propagates and fails the test: it would be a traceback for the user."""
    monkeypatch.setattr(sys, "argv", ["stromalens", *args])
    code = 0
    try:
        main()
    except SystemExit as done:
        code = 0 if done.code is None else done.code
    return code, capsys.readouterr().err


def test_the_walk_finds_every_command():
    assert {"run", "cohort validate", "wsi tile", "wsi embed", "targets", "radiomics"} <= {
        " ".join(w) for w in LEAVES
    }


@pytest.mark.parametrize("words", [w for w, _ in COMMANDS], ids=" ".join)
def test_an_unknown_option_is_a_usage_error(words, monkeypatch, capsys):
    code, err = _main(monkeypatch, capsys, *words, "--no-such-option")
    assert code == 2, err
    assert "No such option: --no-such-option" in err and "Traceback" not in err


@pytest.mark.parametrize(
    "words", [w for w in LEAVES if " ".join(w) not in RUN_WITHOUT_ARGUMENTS], ids=" ".join
)
def test_a_missing_required_argument_is_a_usage_error(words, monkeypatch, capsys):
    code, err = _main(monkeypatch, capsys, *words)
    assert code == 2, err
    assert "Missing" in err and "Usage:" in err and "Traceback" not in err


@pytest.mark.parametrize(
    "args, shown",
    [
        (("synth", "--patiens", "3"), "No such option: --patiens"),
        (("wsi", "tile", "--out", "x"), "Missing option '--manifest'"),
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


# ---------------------------------------------------------------------------- the manifest
def test_the_manifest_is_an_option_and_the_old_positional_form_still_works(
    small_cohort, tmp_path, monkeypatch, capsys
):
    for form in (("--manifest", str(small_cohort)), (str(small_cohort),)):
        code, err = _main(monkeypatch, capsys, "cohort", "validate", *form, "--no-file-check")
        assert code == 0, err
        assert ("deprecated" in err) == (len(form) == 1)
    code, err = _main(monkeypatch, capsys, "wsi", "tile", "a.csv", "b.csv", "--out", "x")
    assert code == 2 and "unexpected extra arguments: b.csv" in err


# ---------------------------------------------------------------------------- OS errors
def _one_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.mark.parametrize(
    "command",
    [
        ("run", "{study}", "--out", "{out}"),
        ("wsi", "tile", "--manifest", "{manifest}", "--out", "{out}"),
        ("radiomics", "--manifest", "{manifest}", "--out", "{out}"),
        ("targets", "--manifest", "{manifest}", "--expression", "{tpm}", "--out", "{out}"),
        ("synth", "--out", "{out}"),
        ("demo", "--out", "{out}"),
    ],
    ids=lambda c: c[0] if c[0] != "wsi" else "wsi tile",
)
def test_out_that_is_a_file_is_one_line_before_any_work(
    command, small_cohort, tmp_path, monkeypatch, capsys
):
    out = tmp_path / "a_file"
    out.write_text("mine")
    study = tmp_path / "study.yaml"
    study.write_text(f"cohort: {{manifest: {small_cohort}}}\n")
    values = {
        "study": study,
        "out": out,
        "manifest": small_cohort,
        "tpm": small_cohort.parent / "rnaseq" / "tpm.tsv",
    }
    code, err = _main(monkeypatch, capsys, *(a.format(**values) for a in command))
    assert code == 1
    assert _one_line(err) == f"error: --out {out}: is a file; a folder is expected here"
    assert out.read_text() == "mine"


def test_a_folder_given_as_a_file_is_one_line(small_cohort, tmp_path, monkeypatch, capsys):
    folder = small_cohort.parent
    for args in (
        ("run", str(folder), "--out", str(tmp_path / "s")),
        ("train", "--config", str(folder), "--out", str(tmp_path / "t")),
        ("targets", "--manifest", str(small_cohort), "--expression", str(folder),
         "--out", str(tmp_path / "t")),
    ):  # fmt: skip
        code, err = _main(monkeypatch, capsys, *args)
        assert code == 1
        assert _one_line(err) == f"error: {folder}: is a folder; a file is expected here"


def test_a_missing_file_is_one_line(tmp_path, monkeypatch, capsys):
    code, err = _main(monkeypatch, capsys, "run", str(tmp_path / "nope.yaml"), "--out", "x")
    assert code == 1 and "not found" in _one_line(err) and "nope.yaml" in err


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their permissions")
def test_a_file_without_permission_is_one_line(tmp_path, monkeypatch, capsys):
    config = tmp_path / "study.yaml"
    config.write_text("cohort: {manifest: m.csv}\n")
    config.chmod(0)
    code, err = _main(monkeypatch, capsys, "run", str(config), "--out", str(tmp_path / "s"))
    assert code == 1 and _one_line(err) == f"error: {config}: permission denied"


@pytest.mark.parametrize(
    "exc, line",
    [
        (PermissionError(errno.EACCES, "Permission denied", "/data/x.csv"),
         "/data/x.csv: permission denied"),
        (OSError(errno.ENOSPC, "No space left on device", "/runs/s/targets/t.parquet"),
         "/runs/s/targets/t.parquet: no space left on the device; free some space or choose "
         "another --out, then run again (finished work is kept)"),
        (OSError(errno.ENOSPC, "No space left on device"),
         "no space left on the device; free some space or choose another --out"),
        (FileNotFoundError("slide not found: a.svs"), "slide not found: a.svs"),
        (OSError(errno.EROFS, "Read-only file system", "/ro/out"),
         "/ro/out: the file system is read-only"),
    ],
)  # fmt: skip
def test_os_errors_in_words(exc, line):
    assert os_error_line(exc) == line


def test_a_file_in_the_way_of_a_folder_is_named(tmp_path):
    blocker = tmp_path / "out"
    blocker.write_text("")
    exc = NotADirectoryError(errno.ENOTDIR, "Not a directory", str(blocker / "patients" / "x"))
    assert os_error_line(exc) == f"{blocker}: is a file; a folder is expected here"


# ---------------------------------------------------------------------------- weights, hub, lock
def test_refused_weights_are_one_line_without_torch_hint(tmp_path, monkeypatch, capsys):
    import torch

    evil = tmp_path / "evil.pt"
    torch.save({"w": torch.zeros(1), "run": os.system}, evil)  # a global torch refuses
    code, err = _main(
        monkeypatch, capsys, "wsi", "prompts", "--banks", str(REPO / "configs" / "prompts"),
        "--out", str(tmp_path / "p"), "--encoder", "synthclip", "--weights", str(evil),
    )  # fmt: skip
    line = _one_line(err)
    assert code == 1 and line.startswith(f"error: {evil}: refused")
    assert "weights_only=False" not in err


def test_allow_download_offline_is_one_line(tmp_path):
    # a process of its own: the hub client's loggers keep the streams of the first caller
    done = _run(
        "wsi", "prompts", "--banks", str(REPO / "configs" / "prompts"),
        "--out", str(tmp_path / "p"), "--encoder", "quiltnet-b-32", "--weights", "hub",
        "--allow-download",
        env={**os.environ, "HF_HUB_OFFLINE": "1"},  # no network, and no retries to wait for
        timeout=120,
    )  # fmt: skip
    line = [x for x in done.stderr.splitlines() if x.startswith("error:")]
    assert done.returncode == 1 and len(line) == 1 and "Traceback" not in done.stderr
    assert "could not fetch wisdomik/QuiltNet-B-32" in line[0]


def test_a_second_demo_into_one_folder_stops_before_generating(tmp_path):
    out = tmp_path / "demo"
    out.mkdir()
    with open(out / ".lock", "w") as held:  # what a running demo or run holds
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        done = _run("demo", "--quick", "--out", str(out), timeout=120)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert "another stromalens run or demo is using this folder" in done.stderr
    assert sorted(p.name for p in out.iterdir()) == [".lock"]  # no cohort was generated


def test_the_demo_records_how_busy_and_how_stolen_the_machine_was():
    from stromalens.cli.demo import cpu_ticks, machine_record

    # /proc/stat's first line: user nice system idle iowait irq softirq steal guest guest_nice
    before = cpu_ticks("cpu  100 0 50 800 10 0 0 40 0 0\ncpu0 1 2 3 4 5 6 7 8 0 0\n")
    after = cpu_ticks("cpu  700 0 150 1000 10 0 0 140 0 0\n")
    assert before == {"total": 1000, "idle": 810, "steal": 40}
    record = machine_record(before, after)  # 1000 ticks later: 200 idle, 100 stolen
    assert record["busy_share"] == 0.8 and record["steal_share"] == 0.1
    assert record["cpus"] >= 1
    assert cpu_ticks("intr 1 2 3\n") is None  # not a cpu line: no figures, no error
    assert machine_record(None, after)["busy_share"] is None
