"""The cohort manifest: loading, path resolution, and one clear error listing every problem."""

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from stromalens.cohort import ManifestError, load_manifest

HEADER = (
    "patient_id,site,mri_t1,mri_t2,mri_ce,mri_mask,wsi,wsi_mpp,rna_sample,age,sex,location,"
    "volume_cc,os_time,os_event,pfs_time,pfs_event,treatment,response,fibrosis_grade,"
    "exclusion_grade,annotations"
)


@pytest.fixture
def files(tmp_path) -> Path:
    for name in ("t1.nii.gz", "t2.nii.gz", "ce.nii.gz", "mask.nii.gz", "s1.tiff", "a.geojson"):
        (tmp_path / "data").mkdir(exist_ok=True)
        (tmp_path / "data" / name).write_bytes(b"x")
    return tmp_path


def row(
    pid="P1",
    site="A",
    t1="data/t1.nii.gz",
    t2="data/t2.nii.gz",
    ce="data/ce.nii.gz",
    mask="data/mask.nii.gz",
    wsi="data/s1.tiff",
    mpp="",
    rna=None,
    age="60",
    sex="M",
    location="sacrum",
    volume="50",
    os_time="12.5",
    os_event="1",
    pfs_time="6",
    pfs_event="1",
    treatment="surgery",
    response="1",
    fib="2",
    exc="1",
    ann="data/a.geojson",
):
    rna = rna if rna is not None else f"R-{pid}"
    return ",".join(
        [
            pid,
            site,
            t1,
            t2,
            ce,
            mask,
            wsi,
            mpp,
            rna,
            age,
            sex,
            location,
            volume,
            os_time,
            os_event,
            pfs_time,
            pfs_event,
            treatment,
            response,
            fib,
            exc,
            ann,
        ]
    )


def write(folder: Path, *rows: str, name="cohort.csv") -> Path:
    path = folder / name
    path.write_text("\n".join([HEADER, *rows]) + "\n")
    return path


def test_valid_manifest_resolves_paths_relative_to_itself(files):
    path = write(files, row("P1"), row("P2", site="B"))
    cohort = load_manifest(path)
    assert cohort.patients == ["P1", "P2"]
    assert cohort.frame.loc["P1", "wsi"] == files / "data" / "s1.tiff"
    assert cohort.frame["os_event"].tolist() == [1, 1]
    assert cohort.frame["os_time"].dtype.kind == "f"
    assert not cohort.missing.any().any()


def test_empty_cells_are_missing_modalities_not_errors(files):
    path = write(
        files,
        row("P1", wsi="", ann=""),
        row("P2", ce="", rna=""),
        row("P3", t1="", t2="", ce="", mask=""),
    )
    cohort = load_manifest(path)
    assert cohort.frame.loc["P1", "wsi"] is None
    assert cohort.missing.loc["P1", "wsi"]
    assert cohort.missing.loc["P2", "mri_ce"] and not cohort.missing.loc["P2", "mri_t1"]
    assert cohort.missing.loc["P2", "rna_sample"]
    assert cohort.missing.loc["P3", ["mri_t1", "mri_t2", "mri_ce", "mri_mask"]].all()
    summary = cohort.summary()
    assert summary.loc["all", "WSI"] == 2
    assert summary.loc["all", "CE"] == 1
    assert summary.loc["all", "patients"] == 3


@pytest.mark.parametrize(
    ("bad_row", "column", "fragment"),
    [
        (row("P9", os_time="-1"), "os_time", "negative"),
        (row("P9", pfs_time="soon"), "pfs_time", "not a number"),
        (row("P9", os_event="2"), "os_event", "must be 0 or 1"),
        (row("P9", response="yes"), "response", "must be 0 or 1"),
        (row("P9", wsi="data/missing.tiff"), "wsi", "file not found"),
        (row("P9", site=""), "site", "empty site"),
        (row("P9", fib="5"), "fibrosis_grade", "grade 0–3"),
        (row("P9", mask=""), "mri_mask", "no tumour mask"),
        (row("P9", os_event=""), "os_event", "both given or both empty"),
        (row("P9", mpp="0"), "wsi_mpp", "positive"),
        (row("P9", age="-4"), "age", "negative"),
    ],
)
def test_each_kind_of_error_names_row_and_column(files, bad_row, column, fragment):
    path = write(files, row("P1"), bad_row)
    with pytest.raises(ManifestError) as info:
        load_manifest(path)
    problems = info.value.problems
    assert len(problems) == 1, problems
    assert problems[0].row == 2
    assert problems[0].column == column
    assert fragment in str(info.value)
    assert "row 2" in str(info.value) and f"column '{column}'" in str(info.value)


def test_duplicate_ids_and_unknown_sites(files):
    path = write(files, row("P1"), row("P1", rna="R-x"), row("P2", site="Z"))
    with pytest.raises(ManifestError) as info:
        load_manifest(path, sites=["A", "B"])
    text = str(info.value)
    assert "'P1' repeats row 1 with the same slide 'data/s1.tiff'" in text
    assert "row 3, column 'site': unknown site 'Z'" in text


def test_every_problem_is_reported_at_once(files):
    path = write(
        files,
        row("P1", os_time="-3", wsi="nope.tiff"),
        row("P1", os_event="x", wsi="nope.tiff"),  # a repeated row, not a further slide
        row("P3", pfs_time="abc", rna="R-P1"),
    )
    with pytest.raises(ManifestError) as info:
        load_manifest(path)
    columns = sorted(p.column for p in info.value.problems)
    # row 2 repeats row 1 and its slide: both slides are missing, and the row is a repeat
    assert columns == ["os_event", "os_time", "pfs_time", "rna_sample", "wsi", "wsi", "wsi"]


def test_missing_required_column(tmp_path):
    path = tmp_path / "m.csv"
    path.write_text("patient_id,wsi\nP1,\n")
    with pytest.raises(ManifestError, match="column 'site': required column is absent"):
        load_manifest(path)


def test_rna_samples_checked_against_expression(files):
    path = write(files, row("P1"), row("P2"))
    load_manifest(path, expression_samples=["R-P1", "R-P2", "R-P3"])
    with pytest.raises(ManifestError, match="sample 'R-P2' is not in the expression table"):
        load_manifest(path, expression_samples=["R-P1"])


def test_tsv_and_parquet_read_like_csv(files):
    csv = write(files, row("P1"), row("P2", wsi=""))
    frame = pd.read_csv(csv, dtype=str, keep_default_na=False)
    frame.to_csv(files / "cohort.tsv", sep="\t", index=False)
    parquet = frame.replace("", None)
    parquet["age"] = pd.to_numeric(parquet["age"])
    parquet.to_parquet(files / "cohort.parquet")
    reference = load_manifest(csv).frame
    for name in ("cohort.tsv", "cohort.parquet"):
        loaded = load_manifest(files / name).frame
        assert loaded.index.tolist() == reference.index.tolist()
        assert loaded.loc["P2", "wsi"] is None
        assert loaded["age"].tolist() == reference["age"].tolist()


def test_cli_validate_exits_non_zero_with_one_clear_message(files):
    script = Path(sys.executable).parent / "stromalens"
    good = write(files, row("P1"), row("P2", site="B"))
    out = subprocess.run(
        # the slides are placeholders: the preflight would try to open them
        [str(script), "cohort", "validate", str(good), "--no-file-check"],
        capture_output=True,
        encoding="utf-8",
    )
    assert out.returncode == 0, out.stderr
    assert "2 patients, valid" in out.stdout
    bad = write(files, row("P1"), row("P1", os_time="-2"), name="bad.csv")
    out = subprocess.run(
        [str(script), "cohort", "validate", str(bad)], capture_output=True, encoding="utf-8"
    )
    assert out.returncode == 1
    assert "Traceback" not in out.stderr
    assert "3 problem(s)" in out.stderr  # duplicate id, duplicate RNA sample, negative time
    assert "row 2, column 'os_time'" in out.stderr


@pytest.mark.parametrize("pid", ["../../ESCAPED", "/abs/path", ".hidden", "a\\b"])
def test_a_patient_id_that_cannot_name_a_file_is_refused(files, pid):
    """Ids name files in every stage; one with a separator or a leading dot would write outside
    the stage's folder."""
    with pytest.raises(ManifestError, match="cannot name a file"):
        load_manifest(write(files, row(pid)), check_files=False)


def test_ordinary_ids_with_dashes_dots_and_spaces_are_accepted(files):
    ids = ["TCGA-AB-1234", "P.01", "patient 7"]
    path = write(files, *(row(p, rna=f"R{i}") for i, p in enumerate(ids)))
    assert load_manifest(path, check_files=False).patients == ids


@pytest.mark.parametrize("value", ["inf", "-inf", "Infinity"])
def test_an_infinite_time_is_refused_at_validation(files, value):
    """Found before any stage runs, not by the survival models at the end."""
    with pytest.raises(ManifestError, match="os_time.*not a finite number"):
        load_manifest(write(files, row("P1", os_time=value)), check_files=False)


def _sequences_manifest(folder: Path, text: str) -> Path:
    for name in ("t1.nii.gz", "t1_mask.nii.gz", "ct.nii.gz", "ct_mask.nii.gz", "shared.nii.gz"):
        (folder / name).write_bytes(b"x")
    path = folder / "seq.csv"
    path.write_text(text)
    return path


def test_per_sequence_masks_and_absent_sequence_columns(tmp_path):
    """No mri_t2/mri_ce columns: those sequences are missing, not an error; a sequence's own
    mask column wins over the shared mri_mask; <column>_mask pairs are checked files too."""
    from stromalens.cohort import sequence_files

    path = _sequences_manifest(
        tmp_path,
        "patient_id,site,mri_t1,mri_t1_mask,mri_mask,ct,ct_mask\n"
        "P1,A,t1.nii.gz,t1_mask.nii.gz,shared.nii.gz,ct.nii.gz,ct_mask.nii.gz\n"
        "P2,A,t1.nii.gz,,shared.nii.gz,,\n",
    )
    cohort = load_manifest(path)
    assert not any("ct" in w for w in cohort.warnings)  # ct / ct_mask are known as a pair
    assert cohort.frame.loc["P1", "ct_mask"] == tmp_path / "ct_mask.nii.gz"
    files = sequence_files(cohort)
    assert set(files["P1"]) == {"t1"} and files["P1"]["t1"].source == "own"
    assert files["P1"]["t1"].mask == tmp_path / "t1_mask.nii.gz"
    assert files["P2"]["t1"].source == "shared"
    assert files["P2"]["t1"].mask == tmp_path / "shared.nii.gz"
    (tmp_path / "ct_mask.nii.gz").unlink()
    with pytest.raises(ManifestError, match="row 1, column 'ct_mask': file not found"):
        load_manifest(path)


def test_a_sequence_without_any_mask_fails_validation(tmp_path):
    path = _sequences_manifest(
        tmp_path, "patient_id,site,mri_t1,mri_t1_mask\nP1,A,t1.nii.gz,\nP2,A,,\n"
    )
    with pytest.raises(ManifestError) as info:
        load_manifest(path)
    assert [str(p) for p in info.value.problems] == [
        "row 1, column 'mri_mask': sequence(s) t1 (mri_t1) have an image but no tumour mask: "
        "give mri_t1_mask or mri_mask"
    ]


def test_validate_checks_every_file_the_radiomics_configuration_reads(tmp_path):
    """`cohort validate --radiomics-config` checks the configured sequences' images and masks
    (a CT whose mask is missing fails; with mask_from it borrows the MR's mask instead)."""
    script = Path(sys.executable).parent / "stromalens"
    path = _sequences_manifest(
        tmp_path,
        "patient_id,site,mri_t1,mri_t1_mask,ct,ct_mask\n"
        "P1,A,t1.nii.gz,t1_mask.nii.gz,ct.nii.gz,gone.nii.gz\n"
        "P2,A,t1.nii.gz,t1_mask.nii.gz,ct.nii.gz,\n",
    )
    config = tmp_path / "r.yaml"
    config.write_text(
        "sequences:\n  - {name: t1, image: mri_t1}\n  - {name: ct, image: ct, n4: false}\n"
    )
    command = [str(script), "cohort", "validate", str(path), "--radiomics-config", str(config)]
    out = subprocess.run(command, capture_output=True, encoding="utf-8")
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert "row 1, column 'ct_mask': file not found: gone.nii.gz" in out.stderr
    assert "row 2, column 'mri_mask': sequence(s) ct (ct) have an image but no" in out.stderr
    config.write_text(
        "sequences:\n  - {name: t1, image: mri_t1}\n"
        "  - {name: ct, image: ct, mask_from: t1, n4: false}\n"
    )
    (tmp_path / "gone.nii.gz").write_bytes(b"x")
    out = subprocess.run(command, capture_output=True, encoding="utf-8")
    assert out.returncode == 0, out.stderr
