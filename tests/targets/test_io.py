"""Reading expression tables: orientation, formats, duplicates, bad values."""

import numpy as np
import pandas as pd
import pytest

from stromalens.targets.io import read_expression


@pytest.fixture
def table():
    rng = np.random.default_rng(0)
    return pd.DataFrame(
        rng.uniform(0, 100, (4, 3)), index=["G1", "G2", "G3", "G4"], columns=["S1", "S2", "S3"]
    )  # genes × samples


def test_orientations_and_formats(tmp_path, table):
    table.to_csv(tmp_path / "e.tsv", sep="\t")
    table.to_csv(tmp_path / "e.csv")
    table.T.to_parquet(tmp_path / "e.parquet")
    expected = table.T
    pd.testing.assert_frame_equal(read_expression(tmp_path / "e.tsv"), expected)
    pd.testing.assert_frame_equal(read_expression(tmp_path / "e.csv"), expected)
    pd.testing.assert_frame_equal(
        read_expression(tmp_path / "e.parquet", orientation="samples-x-genes"), expected
    )
    with pytest.raises(ValueError, match="orientation must be"):
        read_expression(tmp_path / "e.tsv", orientation="rows")


def test_duplicated_genes_raise_or_aggregate(tmp_path, table):
    dup = table.rename(index={"G2": "G1"})
    dup.to_csv(tmp_path / "d.tsv", sep="\t")
    with pytest.raises(ValueError, match="1 duplicated gene ids \\(e.g. G1\\)"):
        read_expression(tmp_path / "d.tsv")
    summed = read_expression(tmp_path / "d.tsv", duplicates="sum")
    assert summed["G1"].tolist() == pytest.approx((table.loc["G1"] + table.loc["G2"]).tolist())
    assert read_expression(tmp_path / "d.tsv", duplicates="max")["G1"].tolist() == pytest.approx(
        table.loc[["G1", "G2"]].max().tolist()
    )
    table.rename(columns={"S2": "S1"}).to_csv(tmp_path / "s.tsv", sep="\t")
    with pytest.raises(ValueError, match="duplicated sample ids: S1"):
        read_expression(tmp_path / "s.tsv")


def test_missing_values_are_named(tmp_path, table):
    bad = table.astype(object)
    bad.loc["G3", "S2"] = "n/a"
    bad.to_csv(tmp_path / "b.tsv", sep="\t")
    with pytest.raises(ValueError, match="sample 'S2', gene 'G3'"):
        read_expression(tmp_path / "b.tsv")
    with pytest.raises(ValueError, match="not found"):
        read_expression(tmp_path / "nope.tsv")
