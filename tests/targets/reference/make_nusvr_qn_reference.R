# Reference ν-SVR deconvolution with CIBERSORT's quantile normalisation (QN = TRUE): the whole
# mixture quantile-normalised (preprocessCore::normalize.quantiles, as CIBERSORT.R) before the
# signature genes are taken, then the ν-SVR of make_nusvr_reference.R.
#
#   python tests/targets/reference/prepare_inputs.py /tmp/gsva_inputs
#   Rscript tests/targets/reference/make_nusvr_qn_reference.R /tmp/gsva_inputs tests/targets/reference
suppressMessages(library(e1071))
suppressMessages(library(preprocessCore))
args <- commandArgs(trailingOnly = TRUE)
inputs <- args[1]
out <- args[2]
X <- as.matrix(read.csv(file.path(inputs, "til10_signature_aligned.csv"), row.names = 1,
                        check.names = FALSE))
Y <- as.matrix(read.csv(file.path(inputs, "hoek_tpm_all_genes_x_samples.csv"), row.names = 1,
                        check.names = FALSE))
Y <- {
  q <- normalize.quantiles(Y)
  dimnames(q) <- dimnames(Y)
  q
}
Y <- Y[rownames(X), , drop = FALSE]
X <- (X - mean(X)) / sd(as.vector(X))
weights <- sapply(colnames(Y), function(sample) {
  y <- Y[, sample]
  y <- (y - mean(y)) / sd(y)
  best <- NULL
  best_rmse <- Inf
  for (nu in c(0.25, 0.5, 0.75)) {
    model <- svm(X, y, type = "nu-regression", kernel = "linear", nu = nu, scale = FALSE)
    w <- t(model$coefs) %*% model$SV
    w[w < 0] <- 0
    w <- w / sum(w)
    rmse <- sqrt(mean((X %*% t(w) - y)^2))
    if (rmse < best_rmse) {
      best <- w
      best_rmse <- rmse
    }
  }
  best
})
rownames(weights) <- colnames(X)
write.csv(weights, file.path(out, "nusvr_qn_hoek_til10.csv"))
