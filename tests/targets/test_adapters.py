"""Input adapters on real expression tables (NKI microarray, Hoek PBMC, GSE107572), a
log2(TPM+1) table, the package-level API with AnnData, and ``cohort validate --expression``."""

import json
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from stromalens.config import TargetsConfig
from stromalens.targets import adapters
from stromalens.targets.io import read_table
from stromalens.targets.run import run_targets

SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "data"
RNASEQ = SHARED / "rnaseq"
NKI = RNASEQ / "nki_genefu"
HOEK = RNASEQ / "hoek_pbmc" / "bulk_mat_hoek_pbmc_tpm.tsv.gz"
GSE = RNASEQ / "gse107572_finotello" / "expression_genes_x_samples.tsv.gz"
SCRIPT = Path(sys.executable).parent / "stromalens"


def _needs(path: Path):
    return pytest.mark.skipif(not path.exists(), reason=f"shared test data not found: {path}")


def _manifest(samples, path: Path) -> Path:
    pd.DataFrame(
        {"patient_id": [f"P{i}" for i in range(len(samples))], "site": "A", "rna_sample": samples}
    ).to_csv(path, index=False)
    return path


def _targets_json(out: Path) -> dict:
    return json.loads((out / "targets.json").read_text())


def _cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run([str(SCRIPT), *map(str, args)], capture_output=True, encoding="utf-8")


# ------------------------------------------------------------------------------ NKI (microarray)
@_needs(NKI)
def test_nki_probes_to_symbols_and_the_na_policy(tmp_path):
    expression = NKI / "expression_samples_x_probes.tsv.gz"
    table, _ = read_table(expression)
    manifest = _manifest(list(table.index), tmp_path / "m.csv")
    annotation = {
        "annotation": NKI / "probe_annotation.tsv.gz",
        "annotation_symbol": "HUGO.gene.symbol",
    }
    with pytest.raises(ValueError, match=r"361 in all, in 210 genes\); pass --na drop-genes"):
        run_targets(manifest, expression, TargetsConfig(), tmp_path / "o")
    with pytest.raises(ValueError, match="looks log ratios.*--scale log-ratio"):
        run_targets(manifest, expression, TargetsConfig(na="impute-mean"), tmp_path / "o")
    with pytest.raises(ValueError, match="duplicated gene ids"):
        settings = TargetsConfig(na="impute-mean", scale="log-ratio", **annotation)
        run_targets(manifest, expression, settings, tmp_path / "o")
    with pytest.raises(ValueError, match=r"ERS_CAF: \d of 33 genes found.*--gene-sets"):
        settings = TargetsConfig(
            na="impute-mean", scale="log-ratio", duplicates="mean", **annotation
        )
        run_targets(manifest, expression, settings, tmp_path / "o")
    settings = TargetsConfig(
        na="impute-mean", scale="log-ratio", duplicates="mean", min_coverage=0.1, **annotation
    )
    summary = run_targets(manifest, expression, settings, tmp_path / "o")
    assert set(summary["ceiling"]) == {"ers_caf"}
    assert set(summary["refused"]) == {"lr", "heterogeneity"}
    targets = pd.read_parquet(tmp_path / "o" / "targets.parquet")
    assert len(targets) == 150 and targets["ers_caf"].notna().all()
    meta = _targets_json(tmp_path / "o")
    record = meta["expression_adapters"]
    assert meta["platform"] == "microarray"
    assert record["orientation"]["orientation"] == "samples-x-genes"
    assert record["na"]["values_imputed"] == 361
    assert record["annotation"]["probes"] == 922
    assert record["annotation"]["probes_mapped"] == 922 - 72  # 72 probes have no HUGO symbol
    assert record["duplicates"]["genes_merged"] > 0
    assert record["scale"]["linear"] is False and "refused" in meta


@_needs(NKI)
def test_nki_drop_genes_and_an_annotation_without_the_symbol_column(tmp_path):
    table, _ = read_table(NKI / "expression_samples_x_probes.tsv.gz")
    dropped, record = adapters.apply_na(table, "drop-genes")
    assert record["genes_dropped"] == 210 and dropped.shape == (150, 922 - 210)
    assert not dropped.isna().any().any()
    with pytest.raises(ValueError, match="no column 'symbol'.*--annotation-symbol"):
        adapters.read_annotation(NKI / "probe_annotation.tsv.gz")


def test_na_impute_mean_fills_with_the_gene_mean():
    frame = pd.DataFrame({"A": [1.0, np.nan, 3.0], "B": [np.nan] * 3, "C": [1.0, 2.0, 3.0]})
    filled, record = adapters.apply_na(frame, "impute-mean")
    assert filled["A"].tolist() == [1.0, 2.0, 3.0] and "B" not in filled
    assert record["values_imputed"] == 1 and record["genes_dropped"] == 1


# ------------------------------------------------------------------------------ Hoek (negatives)
@_needs(HOEK)
def test_hoek_negative_tpm_refused_or_clipped(tmp_path):
    table, _ = read_table(HOEK)
    manifest = _manifest(list(table.columns), tmp_path / "m.csv")
    with pytest.raises(
        ValueError, match=r"22169 negative values \(minimum -3.82.*--negatives clip"
    ):
        run_targets(manifest, HOEK, TargetsConfig(), tmp_path / "o")
    summary = run_targets(manifest, HOEK, TargetsConfig(negatives="clip"), tmp_path / "o")
    assert set(summary["ceiling"]) == {"ers_caf", "lr", "heterogeneity"}
    meta = _targets_json(tmp_path / "o")
    assert meta["expression_adapters"]["negatives"]["clipped"] == 22169
    assert meta["expression_adapters"]["orientation"]["orientation"] == "genes-x-samples"
    assert meta["platform"] == "rnaseq"


# ------------------------------------------------------------------------------ GSE107572
@_needs(GSE)
def test_gse107572_not_tpm_refused_or_rescaled(tmp_path):
    table, _ = read_table(GSE)
    manifest = _manifest(list(table.columns), tmp_path / "m.csv")
    with pytest.raises(ValueError, match="is not TPM.*--normalize tpm"):
        run_targets(manifest, GSE, TargetsConfig(), tmp_path / "o")
    summary = run_targets(manifest, GSE, TargetsConfig(normalize="tpm"), tmp_path / "o")
    assert summary["patients"] == 9
    targets = pd.read_parquet(tmp_path / "o" / "targets.parquet")
    assert targets[["ers_caf", "lr", "heterogeneity"]].notna().all().all()
    record = _targets_json(tmp_path / "o")["expression_adapters"]["normalize"]
    assert record["policy"] == "tpm" and record["sample_sum_max"] > 1e8


# ------------------------------------------------------------------------------ log2(TPM+1)
@pytest.fixture
def log2_cohort(small_cohort, tmp_path):
    folder = small_cohort.parent / "rnaseq"
    tpm = pd.read_csv(folder / "tpm.tsv", sep="\t", index_col=0)
    log2 = tmp_path / "log2tpm.tsv.gz"
    np.log2(tpm + 1.0).to_csv(log2, sep="\t")
    base = {"signature": folder / "signature.tsv", "mrna_scaling": folder / "mrna_content.tsv"}
    return small_cohort, folder / "tpm.tsv", log2, base


def test_log2_tpm_refused_under_auto_and_converted_under_log2(log2_cohort, tmp_path):
    manifest, linear, log2, base = log2_cohort
    with pytest.raises(ValueError, match="looks log-transformed.*--scale log2"):
        run_targets(manifest, log2, TargetsConfig(**base), tmp_path / "a")
    run_targets(manifest, linear, TargetsConfig(**base), tmp_path / "lin")
    run_targets(manifest, log2, TargetsConfig(scale="log2", **base), tmp_path / "log")
    # ν-SVR stops at libsvm's tolerance (eps = 1e-3): inputs equal to ~1e-15 after the round
    # trip through log2 can end at another iterate, so its fractions and what is computed from
    # them (H, the CellChat-style LR cross-checks, richness) agree to ~1e-2; the rest to 1e-9.
    nusvr = {"heterogeneity", "heterogeneity_split_a", "lr_cellchat", "effective_richness"}
    nusvr.add("lr_independent")  # weighted by the ν-SVR fractions of signature half B
    for name in ("targets", "fractions"):
        expected = pd.read_parquet(tmp_path / "lin" / f"{name}.parquet")
        got = pd.read_parquet(tmp_path / "log" / f"{name}.parquet")
        loose = [c for c in expected if c in nusvr or c.startswith("nusvr__")]
        strict = [c for c in expected if c not in loose]
        pd.testing.assert_frame_equal(got[strict], expected[strict], atol=1e-9, rtol=0)
        pd.testing.assert_frame_equal(got[loose], expected[loose], atol=1e-2, rtol=1e-2)
    record = _targets_json(tmp_path / "log")["expression_adapters"]["scale"]
    assert record["applied"] == "2^x - 1" and record["linear"] is True


def test_scale_detection_and_conversions():
    linear = pd.DataFrame({"A": [0.0, 120.5], "B": [3.0, 40.0]})
    assert adapters.detect_scale(linear) == "linear"
    assert adapters.detect_scale(np.log2(linear + 1)) == "log"
    assert adapters.detect_scale(pd.DataFrame({"A": [-2.0, 1.5], "B": [0.3, 0.1]})) == "log-ratio"
    back, _ = adapters.to_linear(np.log10(linear + 1), "log10")
    np.testing.assert_allclose(back.to_numpy(), linear.to_numpy(), atol=1e-9)
    with pytest.raises(ValueError, match="not log2 values; pass --scale linear"):
        adapters.to_linear(linear, "log2")


def test_cli_refusal_is_exit_1_without_traceback(log2_cohort, tmp_path):
    manifest, _, log2, _ = log2_cohort
    run = _cli("targets", "--manifest", manifest, "--expression", log2, "--out", tmp_path / "o")
    assert run.returncode == 1, run.stderr
    assert "--scale log2" in run.stderr and "Traceback" not in run.stderr
    assert "UserWarning" not in run.stderr


# ------------------------------------------------------------------------------ orientation
def test_orientation_detected_or_a_hint_to_transpose(small_cohort, tmp_path):
    folder = small_cohort.parent / "rnaseq"
    tpm = pd.read_csv(folder / "tpm.tsv", sep="\t", index_col=0)  # genes × samples
    flipped = tmp_path / "samples_x_genes.tsv"
    tpm.T.to_csv(flipped, sep="\t")
    base = {"signature": folder / "signature.tsv", "mrna_scaling": folder / "mrna_content.tsv"}
    with pytest.raises(ValueError, match="in its rows: the table is samples-x-genes; pass --orien"):
        run_targets(small_cohort, flipped, TargetsConfig(orientation="genes-x-samples", **base),
                    tmp_path / "o")  # fmt: skip
    run_targets(small_cohort, flipped, TargetsConfig(**base), tmp_path / "o")
    record = _targets_json(tmp_path / "o")["expression_adapters"]["orientation"]
    assert record["orientation"] == "samples-x-genes"
    assert record["detected_by"] == "manifest sample ids"


# ------------------------------------------------------------------------------ the API
def test_the_api_is_exported_and_import_stays_light():
    import stromalens.targets as targets
    from stromalens.targets import api

    assert targets.ssgsea is api.ssgsea and targets.gsva is api.gsva
    assert targets.deconvolve is api.deconvolve
    code = (
        "import sys, stromalens.targets; "
        "print(sorted(m for m in ('numpy', 'pandas', 'scipy', 'sklearn') if m in sys.modules))"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, encoding="utf-8")
    assert run.stdout.strip() == "[]", run.stderr


def test_anndata_in_scores_and_fractions_out_in_obsm(small_cohort):
    anndata = pytest.importorskip("anndata")
    from stromalens.targets import deconvolve, gsva, ssgsea
    from stromalens.targets.deconvolution import read_signature
    from stromalens.targets.scores import GeneSetWarning

    folder = small_cohort.parent / "rnaseq"
    tpm = pd.read_csv(folder / "tpm.tsv", sep="\t", index_col=0).T
    signature = read_signature(folder / "signature.tsv")
    sets = {"S1": list(tpm.columns[:20]), "S2": list(tpm.columns[20:50])}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # anndata's own deprecation chatter
        adata = anndata.AnnData(
            tpm.to_numpy(), obs=pd.DataFrame(index=tpm.index), var=pd.DataFrame(index=tpm.columns)
        )
    log_expr = np.log2(tpm + 1)
    scores = ssgsea(adata, sets)
    pd.testing.assert_frame_equal(adata.obsm["score_ssgsea"], scores)
    pd.testing.assert_frame_equal(scores, ssgsea(log_expr, sets).set_axis(scores.index))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", GeneSetWarning)  # GSVA drops the cohort's constant genes
        gsva(adata, sets)
    assert list(adata.obsm["score_gsva"].columns) == ["S1", "S2"]
    fractions = deconvolve(adata, method="lsq", signature=signature)
    pd.testing.assert_frame_equal(adata.obsm["fractions_lsq"], fractions)
    assert list(adata.obsm["fractions_lsq"].index) == list(adata.obs_names)
    deconvolve(adata, signature=signature)
    assert "fractions_nusvr" in adata.obsm
    assert "score_ssgsea" not in getattr(tpm, "obsm", {})  # a DataFrame is left as it is


# ------------------------------------------------------------------------------ cohort validate
def test_cohort_validate_reads_gz_in_both_orientations(small_cohort, tmp_path):
    tpm = pd.read_csv(small_cohort.parent / "rnaseq" / "tpm.tsv", sep="\t", index_col=0)
    genes_x_samples = tmp_path / "e.tsv.gz"
    samples_x_genes = tmp_path / "e.csv.gz"
    tpm.to_csv(genes_x_samples, sep="\t")
    tpm.T.to_csv(samples_x_genes)
    for path, orientation in (
        (genes_x_samples, "auto"),
        (genes_x_samples, "genes-x-samples"),
        (samples_x_genes, "auto"),
        (samples_x_genes, "samples-x-genes"),
    ):
        run = _cli("cohort", "validate", small_cohort, "--no-file-check",
                   "--expression", path, "--orientation", orientation)  # fmt: skip
        assert run.returncode == 0, (path, orientation, run.stdout, run.stderr)
        assert "valid" in run.stdout
    run = _cli("cohort", "validate", small_cohort, "--no-file-check",
               "--expression", samples_x_genes, "--orientation", "genes-x-samples")  # fmt: skip
    assert run.returncode == 1 and "none of the manifest's rna_sample ids" in run.stderr
    assert "Traceback" not in run.stderr


def test_declared_linear_is_kept_and_logged(caplog):
    log2 = np.log2(pd.DataFrame({"A": [0.0, 120.5], "B": [3.0, 40.0]}) + 1)
    with caplog.at_level("WARNING", logger="stromalens"):
        same, record = adapters.to_linear(log2, "linear")
    pd.testing.assert_frame_equal(same, log2)
    assert "declared linear" in record["note"] and "looks log" in caplog.text


def test_separator_from_the_suffix_before_compression_and_auto_orientation(tmp_path):
    from stromalens.targets.io import read_expression, text_separator

    assert text_separator("x.csv.gz") == "," and text_separator("x.tsv.gz") == "\t"
    assert text_separator("x.txt") == "\t" and text_separator("X.CSV") == ","
    table = pd.DataFrame(np.arange(12.0).reshape(6, 2), columns=["S1", "S2"])
    table.index = [f"G{i}" for i in range(6)]
    table.T.to_csv(tmp_path / "e.csv.gz")  # samples × genes
    got = read_expression(tmp_path / "e.csv.gz", orientation="auto")
    pd.testing.assert_frame_equal(got, table.T)
    got = read_expression(tmp_path / "e.csv.gz", orientation="auto", samples=["G1", "G2"])
    assert list(got.index) == list(table.index)  # the manifest's ids decide over the shape


def test_lr_method_and_nusvr_qn_reach_the_pipeline(log2_cohort, tmp_path):
    """The study keys `targets.lr_method` and `targets.nusvr_quantile_normalisation` change
    what they name: S_LR's default column and the ν-SVR fractions (CIBERSORT's QN=TRUE)."""
    manifest, linear, _, base = log2_cohort
    run_targets(manifest, linear, TargetsConfig(**base), tmp_path / "a")
    run_targets(
        manifest,
        linear,
        TargetsConfig(lr_method="product", nusvr_quantile_normalisation=True, **base),
        tmp_path / "b",
    )
    a = pd.read_parquet(tmp_path / "a" / "targets.parquet")
    b = pd.read_parquet(tmp_path / "b" / "targets.parquet")
    pd.testing.assert_series_equal(a["lr"], a["lr_monotone"], check_names=False)
    pd.testing.assert_series_equal(b["lr"], b["lr_eq6"], check_names=False)
    fa = pd.read_parquet(tmp_path / "a" / "fractions.parquet").filter(like="nusvr__")
    fb = pd.read_parquet(tmp_path / "b" / "fractions.parquet").filter(like="nusvr__")
    assert not np.allclose(fa.to_numpy(), fb.to_numpy())
