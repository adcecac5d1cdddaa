"""The independent second pipelines share no gene set, signature gene or pair with the primary
ones (checked by content, not by name), and reliability.json reports both concordances."""

import numpy as np
import pandas as pd
import pytest

from stromalens.targets.deconvolution import til10_removed_genes, til10_signature
from stromalens.targets.genesets import as_gene_sets, read_gmt
from stromalens.targets.independent import (
    independent_gene_set,
    independent_triplets,
    spearman_brown,
    split_signature,
)
from stromalens.targets.lr import curated_triplets
from stromalens.targets.pipeline import PIPELINES, default_gene_sets_path
from stromalens.targets.reliability import BOUNDS, noise_ceiling

from ..conftest import SHARED_DATA


def _primary_genes():
    return as_gene_sets(default_gene_sets_path())["ERS_CAF"]


def test_independent_ers_caf_set_shares_no_gene_with_the_primary():
    genes, dropped = independent_gene_set(_primary_genes())
    assert set(genes).isdisjoint(_primary_genes()) and dropped == []
    assert len(genes) >= 100
    # A user's set that overlaps it: the shared genes leave the independent set, and are named.
    user = [*_primary_genes(), "PARN", "COL3A1"]
    genes, dropped = independent_gene_set(user)
    assert set(genes).isdisjoint(user) and dropped == ["PARN", "COL3A1"]


def test_independent_set_is_hallmark_upr_and_fibroblast_markers_by_content():
    path = SHARED_DATA / "genesets" / "h.all.v7.0.symbols.gmt"
    if not path.exists():
        pytest.skip(f"{path} not present")
    upr = set(read_gmt(path)["HALLMARK_UNFOLDED_PROTEIN_RESPONSE"])
    genes, _ = independent_gene_set(_primary_genes())
    # Every Hallmark UPR gene is in one of the two sets, except CCL2 (an LR ligand).
    assert upr - set(genes) - set(_primary_genes()) == {"CCL2"}
    assert {"COL3A1", "GREM1", "PAMR1", "TAGLN"} <= set(genes)  # MCP-counter fibroblasts


def test_independent_triplets_share_no_pair_and_no_gene():
    primary = curated_triplets()
    table, dropped = independent_triplets(None)
    assert dropped == [] and len(table) >= 10
    genes = lambda t: set(t["ligand"]) | set(t["receptor"])  # noqa: E731
    assert genes(table).isdisjoint(genes(primary))
    pairs = lambda t: set(zip(t["ligand"], t["receptor"], strict=True))  # noqa: E731
    assert pairs(table).isdisjoint(pairs(primary))
    # Every receiving type is a TIL10 cell type; every pair is listed by a LIANA resource.
    assert set(table["cell_type"]) <= set(til10_signature().columns)
    assert (table["n_resources"] >= 1).all()
    # A user's table using CXCL1: the CXCL1-CXCR2 triplet leaves, and is named.
    user = pd.DataFrame({"ligand": ["CXCL1"], "receptor": ["ACKR1"], "cell_type": ["B.cells"]})
    table, dropped = independent_triplets(user)
    assert dropped == ["CXCL1-CXCR2"] and "CXCL1" not in set(table["ligand"])


def test_independent_pairs_are_in_lianas_omni_resource():
    path = SHARED_DATA / "lr" / "omni_resource.csv"
    if not path.exists():
        pytest.skip(f"{path} not present")
    omni = pd.read_csv(path)
    omni = omni[~omni["resource"].isin(["consensus", "mouseconsensus"])]
    table, _ = independent_triplets(None)
    for row in table.drop_duplicates(["ligand", "receptor"]).itertuples():
        listed = omni[
            (omni["source_genesymbol"] == row.ligand) & (omni["target_genesymbol"] == row.receptor)
        ]["resource"].nunique()
        assert listed == row.n_resources, (row.ligand, row.receptor)


def test_split_signature_halves_share_no_gene_and_keep_every_cell_type():
    signature = til10_signature().drop(index=til10_removed_genes(), errors="ignore")
    half_a, half_b = split_signature(signature)
    assert set(half_a.index).isdisjoint(half_b.index)
    assert set(half_a.index) | set(half_b.index) == set(signature.index)
    assert abs(len(half_a) - len(half_b)) <= len(signature.columns)
    for half in (half_a, half_b):
        owners = np.log2(half + 1).idxmax(axis=1).value_counts()
        assert set(owners.index) == set(signature.columns)
        # By content too: no row of one half equals a row of the other.
    rows_a = {tuple(r) for r in half_a.to_numpy().round(6)}
    assert rows_a.isdisjoint({tuple(r) for r in half_b.to_numpy().round(6)})


def test_noise_ceiling_reports_both_concordances_labelled():
    rng = np.random.default_rng(1)
    latent = rng.normal(size=300)
    shared_error = rng.normal(0, 0.7, 300)
    targets = pd.DataFrame(
        {
            "t": latent + shared_error + rng.normal(0, 0.2, 300),
            "t_same_inputs": latent + shared_error + rng.normal(0, 0.2, 300),
            "t_a": latent + shared_error + rng.normal(0, 0.2, 300),
            "t_b": latent + rng.normal(0, 0.7, 300) + rng.normal(0, 0.2, 300),
        }
    )
    record = noise_ceiling(targets, ("t", "t_same_inputs"), ("t_a", "t_b"), split_half=True)
    assert record["shared_inputs"]["bounds"] == BOUNDS["shared_inputs"]
    assert record["independent"]["bounds"] == BOUNDS["independent"]
    assert record["ceiling_from"] == "independent"
    assert record["r"] == record["independent"]["r"]
    # Shared errors inflate the concordance: known answer cov/var = 1.49 / 1.53 ≈ 0.97 versus
    # the independent 1 / sqrt(1.53 · 1.53) ≈ 0.65.
    assert record["shared_inputs"]["r"] == pytest.approx(0.97, abs=0.02)
    assert record["independent"]["r"] == pytest.approx(0.65, abs=0.07)
    r = record["independent"]["r"]
    assert record["independent"]["r_spearman_brown"] == pytest.approx(2 * r / (1 + r))
    assert spearman_brown(0.5) == pytest.approx(2 / 3)
    fallback = noise_ceiling(targets, ("t", "t_same_inputs"), None)
    assert fallback["ceiling_from"] == "shared_inputs" and "independent" not in fallback


def test_pipelines_table_pairs_each_target_with_two_second_pipelines():
    assert set(PIPELINES) == {"ers_caf", "lr", "heterogeneity"}
    for target, (shared, independent) in PIPELINES.items():
        assert shared[0] == target and len(set(shared) | set(independent)) >= 3
