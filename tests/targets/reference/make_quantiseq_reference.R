# Reference quanTIseq fractions on GSE107572 from quanTIseq's own deconvolution module
# (icbi-lab/quanTIseq, quantiseq/deconvolution/{quanTIseq_decon.R,DOCKER_codes.R}; BSD-3), run
# unmodified as its Docker image runs it, with limSolve 2.0.3 and preprocessCore 1.60.2.
#
# That module reads its files from /opt/quantiseq/deconvolution/ (copy the repository's
# quantiseq/deconvolution/ folder there, plus HGNC_genenames_20170418.txt from quantiseqr's
# inst/extdata/). Then:
#
#   python tests/targets/reference/prepare_inputs.py /tmp/q         # writes gse107572_mix.txt
#   Rscript tests/targets/reference/make_quantiseq_reference.R /tmp/q tests/targets/reference
#
# Writes quantiseq_gse107572_<variant>.csv (samples x cell types) for the RNA-seq default, the
# tumor=TRUE gene removal and the arrays=TRUE (quantile normalisation, no gene removal) paths,
# and what quanTIseq's HGNC re-annotation (mapGenes) does to the table: the genes it drops or
# renames (quantiseq_gse107572_dropped_genes.csv) and the rows it adds under approved symbols
# (quantiseq_gse107572_added_values.csv), so that the Python side is given the same table.
suppressMessages(library(preprocessCore))
suppressMessages(library(limSolve))
args <- commandArgs(trailingOnly = TRUE)
inputs <- args[1]
out <- args[2]
decon <- "/opt/quantiseq/deconvolution"
mix <- file.path(inputs, "gse107572_mix.txt")

run <- function(variant, arrays, tumor) {
  tmp <- file.path(tempdir(), paste0(variant, "/"))
  dir.create(tmp, showWarnings = FALSE)
  status <- system2("Rscript", c(file.path(decon, "quanTIseq_decon.R"), mix, tmp, "expr",
                                 arrays, "TIL10", tumor, "TRUE", "lsei", variant, "FALSE",
                                 "unassigned"))
  stopifnot(status == 0)
  res <- read.table(file.path(tmp, paste0(variant, "_cell_fractions.txt")), header = TRUE,
                    sep = "\t", check.names = FALSE)
  write.csv(res, file.path(out, paste0("quantiseq_gse107572_", variant, ".csv")),
            row.names = FALSE)
}
run("rnaseq", "FALSE", "FALSE")
run("tumor", "FALSE", "TRUE")
run("arrays", "TRUE", "FALSE")

source(file.path(decon, "DOCKER_codes.R"))
raw <- read.table(mix, header = TRUE, sep = "\t", row.names = 1)
mapped <- mapGenes(raw)
# mapGenes keeps approved symbols, renames previous symbols/synonyms, drops the rest.
genes <- rownames(raw)
kept <- rownames(mapped)
changed <- data.frame(gene = setdiff(genes, kept), stringsAsFactors = FALSE)
added <- setdiff(kept, genes)
write.csv(changed, file.path(out, "quantiseq_gse107572_dropped_genes.csv"), row.names = FALSE)
write.csv(mapped[added, , drop = FALSE], file.path(out, "quantiseq_gse107572_added_values.csv"))
writeLines(capture.output(sessionInfo()), file.path(out, "sessionInfo_quantiseq.txt"))
