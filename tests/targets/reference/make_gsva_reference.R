# Reference values of ssGSEA and GSVA from Bioconductor GSVA 1.46 (Debian r-bioc-gsva 1.46.0).
#
#   python tests/targets/reference/prepare_inputs.py /tmp/gsva_inputs
#   Rscript tests/targets/reference/make_gsva_reference.R /tmp/gsva_inputs tests/targets/reference
#
# Writes <method>_<dataset>.csv (sets x samples) for every variant the tests check.
suppressMessages(library(GSVA))
args <- commandArgs(trailingOnly = TRUE)
inputs <- args[1]
out <- args[2]

read_gmt <- function(path) {
  lines <- readLines(path)
  sets <- lapply(strsplit(lines, "\t"), function(f) f[-(1:2)])
  names(sets) <- vapply(strsplit(lines, "\t"), `[`, "", 1)
  sets
}
save <- function(es, name) {
  write.csv(es, file.path(out, paste0(name, ".csv")), quote = TRUE)
}

nki <- as.matrix(read.csv(file.path(inputs, "nki_genes_x_samples.csv"), row.names = 1,
                          check.names = FALSE))
nki_sets <- read_gmt(file.path(inputs, "nki_sets.gmt"))
save(gsva(nki, nki_sets, method = "ssgsea", ssgsea.norm = FALSE, verbose = FALSE),
     "ssgsea_raw_nki")
save(gsva(nki, nki_sets, method = "ssgsea", ssgsea.norm = TRUE, verbose = FALSE),
     "ssgsea_norm_nki")
save(gsva(nki, nki_sets, method = "ssgsea", tau = 1, ssgsea.norm = FALSE, verbose = FALSE),
     "ssgsea_tau1_nki")
save(gsva(nki, nki_sets, method = "gsva", kcdf = "Gaussian", mx.diff = TRUE, verbose = FALSE),
     "gsva_gaussian_mxdiff_nki")
save(gsva(nki, nki_sets, method = "gsva", kcdf = "Gaussian", mx.diff = FALSE, verbose = FALSE),
     "gsva_gaussian_max_nki")
save(gsva(nki, nki_sets, method = "gsva", kcdf = "none", mx.diff = TRUE, verbose = FALSE),
     "gsva_none_mxdiff_nki")

hoek <- as.matrix(read.csv(file.path(inputs, "hoek_genes_x_samples.csv"), row.names = 1,
                           check.names = FALSE))
hoek_sets <- read_gmt(file.path(inputs, "hoek_sets.gmt"))
save(gsva(hoek, hoek_sets, method = "gsva", kcdf = "Poisson", mx.diff = TRUE, verbose = FALSE),
     "gsva_poisson_mxdiff_hoek")
save(gsva(hoek, hoek_sets, method = "gsva", kcdf = "Poisson", mx.diff = FALSE, verbose = FALSE),
     "gsva_poisson_max_hoek")
save(gsva(hoek, hoek_sets, method = "ssgsea", ssgsea.norm = FALSE, verbose = FALSE),
     "ssgsea_raw_hoek")
synth <- as.matrix(read.csv(file.path(inputs, "synthetic_genes_x_samples.csv"), row.names = 1,
                            check.names = FALSE))
synth_sets <- read_gmt(file.path(inputs, "synthetic_sets.gmt"))
save(gsva(synth, synth_sets, method = "gsva", kcdf = "Poisson", mx.diff = TRUE, verbose = FALSE),
     "gsva_poisson_mxdiff_synthetic")
save(gsva(log2(synth + 1), synth_sets, method = "gsva", kcdf = "Gaussian", verbose = FALSE),
     "gsva_gaussian_mxdiff_synthetic")
writeLines(capture.output(sessionInfo()), file.path(out, "sessionInfo.txt"))
