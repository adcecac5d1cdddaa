"""The preflight (``stromalens cohort validate``): slides, files of every column, the manifest's
columns and delimiter, the expression's orientation, scale and samples, before a study runs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from stromalens.preflight import ERROR, WARNING, preflight

SCRIPT = Path(sys.executable).parent / "stromalens"


def _manifest(small_cohort: Path, folder: Path, edit=None, name="cohort.csv", **to_csv) -> Path:
    """A copy of the small cohort's manifest in ``folder`` with absolute paths, edited."""
    frame = pd.read_csv(small_cohort, dtype=str, keep_default_na=False)
    for col in ("mri_t1", "mri_t2", "mri_ce", "mri_mask", "wsi", "annotations"):
        frame[col] = [str(small_cohort.parent / v) if v else "" for v in frame[col]]
    if edit is not None:
        frame = edit(frame)
    path = folder / name
    frame.to_csv(path, index=False, **to_csv)
    return path


def _errors(findings):
    return [f for f in findings if f.level == ERROR]


def test_the_synthetic_cohort_passes(small_cohort):
    cohort, findings = preflight(small_cohort, expression=small_cohort.parent / "rnaseq/tpm.tsv")
    assert cohort is not None and _errors(findings) == []


def _with_slide(frame: pd.DataFrame, path: Path, mpp: str = "") -> pd.DataFrame:
    frame.loc[0, "wsi"], frame.loc[0, "wsi_mpp"] = str(path), mpp
    return frame


def test_a_slide_without_mpp_is_an_error_unless_wsi_mpp_gives_it(small_cohort, tmp_path):
    import tifffile

    slide = tmp_path / "plain.tiff"  # a tiled TIFF with no resolution tags
    tifffile.imwrite(slide, np.full((512, 512, 3), 200, np.uint8), tile=(256, 256))
    manifest = _manifest(small_cohort, tmp_path, lambda f: _with_slide(f, slide))
    (finding,) = _errors(preflight(manifest)[1])
    assert finding.patient == "P0001" and finding.column == "wsi"
    assert "carries no µm/px" in finding.message and "wsi_mpp" in finding.message
    manifest = _manifest(small_cohort, tmp_path, lambda f: _with_slide(f, slide, "0.5"))
    assert _errors(preflight(manifest)[1]) == []


def test_an_unreadable_slide_and_a_folder_as_wsi_are_errors(small_cohort, tmp_path):
    broken = tmp_path / "broken.svs"
    # not a TIFF header: a corrupt TIFF would leave tiffslide's file open (a ResourceWarning)
    broken.write_bytes(b"not a slide at all")
    folder = tmp_path / "a_folder.svs"
    folder.mkdir()

    def edit(frame):
        frame.loc[0, "wsi"], frame.loc[1, "wsi"] = str(broken), str(folder)
        return frame

    findings = preflight(_manifest(small_cohort, tmp_path, edit))[1]
    found = {f.patient: f.message for f in _errors(findings)}
    assert found["P0001"].startswith(f"cannot read slide {broken}")
    assert found["P0002"] == f"{folder} is a folder; give the slide file itself"


def test_files_of_an_extra_column_must_exist(small_cohort, tmp_path):
    mask = tmp_path / "ct_mask.nii.gz"
    mask.write_bytes(b"")

    def edit(frame):
        frame["ct_mask"] = ""
        frame.loc[0, "ct_mask"], frame.loc[1, "ct_mask"] = mask.name, "missing.nii.gz"
        frame["note"] = "free text"  # not a column of files
        return frame

    (finding,) = _errors(preflight(_manifest(small_cohort, tmp_path, edit))[1])
    assert (finding.patient, finding.column) == ("P0002", "ct_mask")
    assert finding.message.startswith(f"{tmp_path / 'missing.nii.gz'}: not found")


def test_a_duplicated_column_is_named_not_renamed(small_cohort, tmp_path):
    def edit(frame):
        frame.insert(3, "os_time", frame["os_time"], allow_duplicates=True)
        return frame

    cohort, findings = preflight(_manifest(small_cohort, tmp_path, edit))
    assert cohort is None
    (finding,) = findings
    assert finding.column == "os_time"
    assert "column appears 2 times (columns 4, 15); keep one" in finding.message


def test_a_semicolon_file_gets_a_delimiter_hint(small_cohort, tmp_path):
    cohort, findings = preflight(_manifest(small_cohort, tmp_path, sep=";"))
    assert cohort is None
    hint = [f.message for f in findings if "delimited" in f.message]
    assert hint and "looks ';'-delimited, but cohort.csv is read as ','-delimited" in hint[0]


def test_expression_orientation_scale_and_samples(small_cohort, tmp_path):
    tpm = pd.read_csv(small_cohort.parent / "rnaseq" / "tpm.tsv", sep="\t", index_col=0)
    log2 = tmp_path / "log2.tsv"
    np.log2(tpm + 1).to_csv(log2, sep="\t")
    (finding,) = _errors(preflight(small_cohort, expression=log2)[1])
    assert "looks log-transformed" in finding.message and "--scale log2" in finding.message
    assert _errors(preflight(small_cohort, expression=log2, scale="log2")[1]) == []

    transposed = tmp_path / "samples_x_genes.csv"
    tpm.T.to_csv(transposed)
    assert _errors(preflight(small_cohort, expression=transposed)[1]) == []  # auto finds it
    (finding,) = _errors(
        preflight(small_cohort, expression=transposed, orientation="genes-x-samples")[1]
    )
    assert "the table is samples-x-genes" in finding.message

    partial = tmp_path / "partial.tsv"
    tpm.drop(columns=tpm.columns[0]).to_csv(partial, sep="\t")
    (finding,) = _errors(preflight(small_cohort, expression=partial)[1])
    assert finding.column == "rna_sample" and f"sample {tpm.columns[0]!r} is not in" in (
        finding.message
    )


@pytest.mark.parametrize("bad", [False, True])
def test_cohort_validate_prints_a_table_and_exits_1_on_errors(small_cohort, tmp_path, bad):
    def edit(frame):
        if bad:
            frame.loc[0, "wsi"] = str(tmp_path)
        return frame

    manifest = _manifest(small_cohort, tmp_path, edit)
    done = subprocess.run(
        [str(SCRIPT), "cohort", "validate", "--manifest", str(manifest)],
        capture_output=True,
        encoding="utf-8",
        env={**os.environ, "COLUMNS": "200"},
    )
    assert "Traceback" not in done.stderr
    if bad:
        assert done.returncode == 1
        assert "preflight findings" in done.stdout
        assert "1 problem(s) found by the preflight" in done.stderr
        assert f"patient P0001: {tmp_path} is a folder" in done.stderr
    else:
        assert done.returncode == 0 and "10 patients, valid" in done.stdout
        assert WARNING not in done.stdout  # the synthetic cohort has nothing to warn about
