"""The prompt banks and radiomics settings ship inside the package and a study file names them
as ``builtin:…`` from any folder; ``configs/`` links to the package copies (one home)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml

from stromalens.config import ConfigError, StudyConfig, builtin_path, load_config, resources_root
from stromalens.names import TARGETS
from stromalens.radiology.settings import RadiomicsConfig

REPO = Path(__file__).resolve().parents[1]

#: Every shipped file a study may name, as the study file writes it.
SHIPPED = [f"prompts/{t}.yaml" for t in TARGETS] + ["radiomics/default.yaml", "radiomics/demo.yaml"]


def test_the_wheel_holds_the_banks_and_the_radiomics_settings(tmp_path):
    """Build the wheel as pip would install it (from a copy: the build writes beside the
    sources) and look inside."""
    source = tmp_path / "source"
    source.mkdir()
    shutil.copy(REPO / "pyproject.toml", source)
    shutil.copy(REPO / "README.md", source)
    shutil.copytree(REPO / "src", source / "src", ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
         "-q", "-w", str(tmp_path / "dist"), str(source)],
        check=True, capture_output=True,
    )  # fmt: skip
    (wheel,) = (tmp_path / "dist").glob("stromalens-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {f"stromalens/resources/{name}" for name in SHIPPED} <= names


@pytest.mark.parametrize(
    "link, target",
    [("prompts", "prompts"), ("radiomics.yaml", "radiomics/default.yaml"),
     ("radiomics_demo.yaml", "radiomics/demo.yaml")],
)  # fmt: skip
def test_configs_links_to_the_package_copies(link, target):
    path = REPO / "configs" / link
    assert path.is_symlink() and path.resolve() == (resources_root() / target).resolve()


def test_builtin_paths_resolve_to_the_package():
    for name in SHIPPED:
        assert builtin_path(f"builtin:{name}") == resources_root() / name
    assert builtin_path("builtin:prompts/") == resources_root() / "prompts"
    assert builtin_path("prompts/lr.yaml") is None  # an ordinary path
    settings = load_config("builtin:radiomics/demo.yaml", RadiomicsConfig)
    assert settings == load_config(REPO / "configs" / "radiomics_demo.yaml", RadiomicsConfig)


@pytest.mark.parametrize("name", ["builtin:prompts/nope.yaml", "builtin:../config.py", "builtin:"])
def test_a_builtin_that_is_not_shipped_names_the_key_and_the_choices(name, tmp_path):
    study = tmp_path / "study.yaml"
    study.write_text(
        yaml.safe_dump({"cohort": {"manifest": "m.csv"}, "radiomics": {"config": name}})
    )
    with pytest.raises(ConfigError) as info:
        load_config(study, StudyConfig)
    message = str(info.value)
    assert f"radiomics.config: {name}: no such file in the package" in message
    assert "builtin:radiomics/default.yaml" in message and "builtin:prompts" in message


def test_a_study_outside_the_repository_names_the_shipped_files(small_cohort, tmp_path):
    from stromalens.study.runner import check_study
    from stromalens.study.stages import validate_study

    assert REPO not in tmp_path.parents
    cohort = small_cohort.parent
    study = tmp_path / "elsewhere" / "study.yaml"
    study.parent.mkdir()
    study.write_text(
        yaml.safe_dump(
            {
                "cohort": {
                    "manifest": str(small_cohort),
                    "expression": str(cohort / "rnaseq" / "tpm.tsv"),
                },
                "radiomics": {"config": "builtin:radiomics/default.yaml"},
                "training": {"prompts": "builtin:prompts"},
            }
        )
    )
    config = load_config(study, StudyConfig)
    assert config.training.prompts == resources_root() / "prompts"
    assert config.radiomics.config == resources_root() / "radiomics" / "default.yaml"
    check_study(config, validate_study)  # raises on any problem
