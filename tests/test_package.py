import subprocess
import sys
from pathlib import Path

import pytest

from stromalens.config import ConfigError, StudyConfig, SynthConfig, load_config


def test_import_does_not_load_heavy_dependencies():
    code = (
        "import sys, stromalens, stromalens.cohort, stromalens.config, stromalens.cli;"
        "heavy = [m for m in ('torch', 'openslide', 'radiomics', 'SimpleITK', 'tiffslide')"
        " if m in sys.modules];"
        "print(','.join(heavy))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, encoding="utf-8", check=True
    )
    assert out.stdout.strip() == ""


def test_console_script_prints_version():
    import stromalens

    script = Path(sys.executable).parent / "stromalens"
    out = subprocess.run(
        [str(script), "version"], capture_output=True, encoding="utf-8", check=True
    )
    assert out.stdout.strip() == stromalens.__version__


def test_pinned_torch_is_the_one_installed():
    """The environment was built from the project's pins (the builds that lie on disk)."""
    from importlib.metadata import version

    assert version("torch").split("+")[0] == "2.14.1"
    assert version("torchvision").split("+")[0] == "0.29.1"


def test_config_errors_name_the_key(tmp_path):
    path = tmp_path / "study.yaml"
    path.write_text("cohort:\n  manifest: cohort.csv\nsynth:\n  patients: -3\n  sede: 1\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert "synth.patients" in message
    assert "synth.sede" in message


def test_config_is_never_executed(tmp_path):
    """yaml.safe_load refuses python tags instead of running them."""
    path = tmp_path / "evil.yaml"
    path.write_text("cohort: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(path)


def test_valid_config_round_trips(tmp_path):
    path = tmp_path / "study.yaml"
    path.write_text("cohort:\n  manifest: cohort.csv\nsynth:\n  patients: 12\n")
    config = load_config(path)
    assert isinstance(config, StudyConfig)
    assert config.synth.patients == 12
    assert SynthConfig().patients == 126


def test_pyradiomics_was_built_by_the_set_up():
    from importlib.metadata import version

    import radiomics  # noqa: F401 - the import itself is the check

    assert version("pyradiomics") == "3.0.1"


def test_structured_log_file(tmp_path):
    import json

    script = Path(sys.executable).parent / "stromalens"
    log = tmp_path / "log.jsonl"
    out = tmp_path / "c"
    config = tmp_path / "s.yaml"
    config.write_text("slide: {width: 1024, height: 1024}\n")
    subprocess.run(
        [
            str(script),
            "--log-file",
            str(log),
            "synth",
            "--out",
            str(out),
            "--patients",
            "1",
            "--workers",
            "1",
            "--config",
            str(config),
        ],
        check=True,
        capture_output=True,
    )
    records = [json.loads(line) for line in log.read_text().splitlines()]
    written = [r for r in records if r["message"] == "synthetic cohort written"]
    assert written and written[0]["patients"] == 1 and written[0]["level"] == "INFO"


def test_resources_read_under_an_ascii_locale():
    """Shipped YAML/TSV resources hold non-ASCII text (α, –, ≥); they must load even where the
    locale's encoding is ASCII (Python's UTF-8 mode and locale coercion switched off)."""
    code = (
        "import locale; assert locale.getpreferredencoding(False).lower() in "
        "('ascii', 'ansi_x3.4-1968'), locale.getpreferredencoding(False);"
        "from stromalens.targets.pipeline import default_gene_sets_path;"
        "from stromalens.targets.genesets import as_gene_sets;"
        "from stromalens.targets.lr import curated_triplets;"
        "from stromalens.synthetic.expression import gene_universe;"
        "assert len(as_gene_sets(default_gene_sets_path())['ERS_CAF']) == 33;"
        "assert len(curated_triplets()) > 10 and len(gene_universe()) > 5000"
    )
    env = {"LC_ALL": "C", "LANG": "C", "PYTHONUTF8": "0", "PYTHONCOERCECLOCALE": "0", "PATH": ""}
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, env=env)
    assert run.returncode == 0, run.stderr.decode("utf-8", "replace")


def test_typer_exit_codes_reach_the_shell():
    """A command ending in typer.Exit(code) exits with that code (click returns it, not raises,
    outside standalone mode)."""
    import importlib

    import typer

    app_module = importlib.import_module("stromalens.cli.app")  # the module, not the Typer app

    @app_module.app.command("_exit_probe", hidden=True)
    def _probe(code: int = 3) -> None:
        raise typer.Exit(code)

    argv = sys.argv
    try:
        sys.argv = ["stromalens", "_exit_probe", "--code", "4"]
        with pytest.raises(SystemExit) as info:
            app_module.main()
    finally:
        sys.argv = argv
        app_module.app.registered_commands = [
            c for c in app_module.app.registered_commands if c.name != "_exit_probe"
        ]
    assert info.value.code == 4
