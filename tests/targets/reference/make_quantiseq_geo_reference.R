# Reference quanTIseq fractions on GEO's own GSE107572 TPM table, from quanTIseq's deconvolution
# module (icbi-lab/quanTIseq 039eb16, quantiseq/deconvolution/; BSD-3) run unmodified, with
# limSolve 2.0.3 and preprocessCore 1.60.2, set up in /opt/quantiseq/deconvolution/ as described
# in make_quantiseq_reference.R.
#
# GSE107572_tpm_PBMC_RNAseq.txt (19,423 genes x 9 donors, TPM) is GEO's supplementary file; the
# quantiseqr vignette runs quanTIseq on it ("Use case 2"), and a copy sits in quantiseqr's git
# history (federicomarini/quantiseqr, commit cbebfc8, vignettes/). Then:
#
#   Rscript tests/targets/reference/make_quantiseq_geo_reference.R \
#       GSE107572_tpm_PBMC_RNAseq.txt tests/targets/reference
#
# Writes quantiseq_geo_tpm_<variant>.csv (samples x cell types) for the RNA-seq default and the
# arrays=TRUE path, and what quanTIseq's HGNC re-annotation (mapGenes) does to this table
# (quantiseq_geo_tpm_dropped_genes.csv, quantiseq_geo_tpm_added_values.csv), so that the Python
# side is given the same table.
suppressMessages(library(preprocessCore))
suppressMessages(library(limSolve))
args <- commandArgs(trailingOnly = TRUE)
mix <- normalizePath(args[1])
out <- args[2]
decon <- "/opt/quantiseq/deconvolution"

run <- function(variant, arrays) {
  tmp <- file.path(tempdir(), paste0(variant, "/"))
  dir.create(tmp, showWarnings = FALSE)
  status <- system2("Rscript", c(file.path(decon, "quanTIseq_decon.R"), mix, tmp, "expr",
                                 arrays, "TIL10", "FALSE", "TRUE", "lsei", variant, "FALSE",
                                 "unassigned"))
  stopifnot(status == 0)
  res <- read.table(file.path(tmp, paste0(variant, "_cell_fractions.txt")), header = TRUE,
                    sep = "\t", check.names = FALSE)
  write.csv(res, file.path(out, paste0("quantiseq_geo_tpm_", variant, ".csv")), row.names = FALSE)
}
run("rnaseq", "FALSE")
run("arrays", "TRUE")

source(file.path(decon, "DOCKER_codes.R"))
raw <- read.table(mix, header = TRUE, sep = "\t", row.names = 1)
mapped <- mapGenes(raw)
dropped <- data.frame(gene = setdiff(rownames(raw), rownames(mapped)), stringsAsFactors = FALSE)
added <- setdiff(rownames(mapped), rownames(raw))
write.csv(dropped, file.path(out, "quantiseq_geo_tpm_dropped_genes.csv"), row.names = FALSE)
write.csv(mapped[added, , drop = FALSE], file.path(out, "quantiseq_geo_tpm_added_values.csv"))
