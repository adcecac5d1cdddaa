"""The generated cohort as a whole: manifest, truth, RNA-seq, determinism, resumption, CLI."""

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from stromalens.cohort import load_manifest
from stromalens.config import SlideConfig, SynthConfig
from stromalens.synthetic import generate_cohort

from ..conftest import small_config


def test_manifest_validates_and_records_missing_modalities(small_cohort):
    folder = small_cohort.parent
    counts = pd.read_csv(folder / "rnaseq" / "counts.tsv", sep="\t", index_col=0)
    cohort = load_manifest(small_cohort, sites=list("ABCDE"), expression_samples=counts.columns)
    assert len(cohort.patients) == 10
    # The fixture's high missing rates give gaps; each gap is an empty cell, not an error.
    assert cohort.missing[["wsi", "mri_ce"]].any().any()
    for _pid, row in cohort.frame.iterrows():
        has_mri = any(row[c] is not None for c in ("mri_t1", "mri_t2", "mri_ce"))
        assert (row["mri_mask"] is not None) == has_mri
    assert not cohort.missing["rna_sample"].any()


def test_truth_holds_the_planted_latents_and_fractions(small_cohort):
    folder = small_cohort.parent
    truth = pd.read_parquet(folder / "truth.parquet")
    cohort = load_manifest(small_cohort)
    assert list(truth.index) == cohort.patients
    for col in ("a", "b", "h", "entropy", "fraction__CAF", "fraction__T.cells.CD8"):
        assert col in truth and truth[col].notna().all()
    fractions = truth.filter(like="fraction__")
    assert np.allclose(fractions.sum(axis=1), 1.0)
    meta = json.loads((folder / "synth.json").read_text())
    assert meta["survival"]["os_coefficients"]["a"] > 0
    assert meta["expression"]["orientation"] == "genes-x-samples"


def test_external_cohort_is_wsi_only_with_its_own_site(external_cohort):
    cohort = load_manifest(external_cohort)
    assert cohort.sites == ["X"]
    assert cohort.missing[["mri_t1", "mri_t2", "mri_ce", "mri_mask"]].all().all()
    assert not cohort.missing["wsi"].any()
    assert cohort.frame["os_time"].notna().all()
    meta = json.loads((external_cohort.parent / "synth.json").read_text())
    assert meta["morphology"] == "chondrosarcoma"


def _tiny(**overrides) -> SynthConfig:
    return small_config(patients=3, slide=SlideConfig(width=1024, height=1024), **overrides)


def _snapshot(folder: Path) -> dict:
    import openslide

    manifest = pd.read_csv(folder / "cohort.csv")
    snap = {
        "manifest": manifest,
        "truth": pd.read_parquet(folder / "truth.parquet"),
        "counts": pd.read_csv(folder / "rnaseq" / "counts.tsv", sep="\t", index_col=0),
    }
    for wsi in manifest["wsi"].dropna():
        with openslide.OpenSlide(str(folder / wsi)) as slide:
            snap[wsi] = np.asarray(slide.read_region((0, 0), 0, slide.dimensions))
    return snap


def test_same_seed_same_cohort_other_seed_other_cohort(tmp_path):
    one = _snapshot(generate_cohort(tmp_path / "one", _tiny(), progress=False).parent)
    two = _snapshot(generate_cohort(tmp_path / "two", _tiny(workers=2), progress=False).parent)
    assert one.keys() == two.keys()
    for key in one:
        if isinstance(one[key], pd.DataFrame):
            pd.testing.assert_frame_equal(one[key], two[key])
        else:
            assert np.array_equal(one[key], two[key]), key
    other = _snapshot(generate_cohort(tmp_path / "other", _tiny(seed=99), progress=False).parent)
    assert not np.allclose(one["truth"]["a"], other["truth"]["a"])


def test_interrupted_generation_resumes(tmp_path):
    out = tmp_path / "cohort"
    generate_cohort(out, _tiny(), progress=False)
    before = _snapshot(out)
    wsi = before["manifest"]["wsi"].dropna().iloc[0]
    pid = Path(wsi).stem
    # Simulate a crash while writing that patient: no completion record, no slide.
    (out / ".progress" / f"{pid}.json").unlink()
    (out / wsi).unlink()
    generate_cohort(out, _tiny(), progress=False)
    meta = json.loads((out / "synth.json").read_text())
    assert meta["resumed_patients"] == 2
    after = _snapshot(out)
    assert np.array_equal(before[wsi], after[wsi])
    # Other settings invalidate the records: everything is regenerated.
    generate_cohort(out, _tiny(seed=5), progress=False)
    assert json.loads((out / "synth.json").read_text())["resumed_patients"] == 0


def test_cli_synth_then_validate(tmp_path):
    script = Path(sys.executable).parent / "stromalens"
    config = tmp_path / "synth.yaml"
    config.write_text(yaml.safe_dump({"slide": {"width": 1024, "height": 1024}}))
    out = tmp_path / "cli"
    run = subprocess.run(
        [
            str(script),
            "synth",
            "--out",
            str(out),
            "--patients",
            "2",
            "--config",
            str(config),
            "--workers",
            "1",
        ],
        capture_output=True,
        encoding="utf-8",
    )
    assert run.returncode == 0, run.stderr
    assert (out / "cohort.csv").exists()
    check = subprocess.run(
        [
            str(script),
            "cohort",
            "validate",
            str(out / "cohort.csv"),
            "--sites",
            "A,B,C,D,E",
            "--expression",
            str(out / "rnaseq" / "counts.tsv"),
        ],
        capture_output=True,
        encoding="utf-8",
    )
    assert check.returncode == 0, check.stderr
    assert "2 patients, valid" in check.stdout
    bad = subprocess.run(
        [str(script), "synth", "--out", str(out), "--patients", "0"],
        capture_output=True,
        encoding="utf-8",
    )
    assert bad.returncode == 1 and "Traceback" not in bad.stderr
    assert "patients" in bad.stderr


@pytest.mark.slow
def test_default_cohort_size_and_time(tmp_path):
    """The default 126-patient cohort; prints the generation time and size on disk."""
    started = time.perf_counter()
    manifest = generate_cohort(tmp_path / "default", SynthConfig(), progress=False)
    seconds = time.perf_counter() - started
    size = sum(p.stat().st_size for p in manifest.parent.rglob("*") if p.is_file())
    print(f"default cohort: {seconds:.0f} s, {size / 1e6:.0f} MB")
    cohort = load_manifest(manifest)
    assert len(cohort.patients) == 126
    assert cohort.summary().loc["all", "WSI"] > 100


def test_deterministic_across_processes():
    """Same seed, separate interpreters (different string-hash seeds): same expression."""
    code = (
        "import hashlib; from stromalens.synthetic import biology, expression as ex;"
        "p = biology.simulate_patients(20, seed=1); p['rna_sample'] = list(p.index);"
        "f = ex.simulate_fractions(p, 1);"
        "c, _ = ex.simulate_expression(p, f, {s: 0.1 for s in 'ABCDE'}, 1);"
        "print(hashlib.sha256(c.to_numpy().tobytes()).hexdigest())"
    )
    digests = {
        subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            encoding="utf-8",
            check=True,
            env={"PYTHONHASHSEED": str(seed), "PATH": ""},
        ).stdout
        for seed in (1, 2)
    }
    assert len(digests) == 1
