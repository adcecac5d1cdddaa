# Reference ν-SVR deconvolution (the CIBERSORT algorithm of Newman et al. 2015, written here from
# the paper's description, with e1071's libsvm as CIBERSORT uses) on real PBMC data with TIL10.
#
#   python tests/targets/reference/prepare_inputs.py /tmp/gsva_inputs
#   Rscript tests/targets/reference/make_nusvr_reference.R /tmp/gsva_inputs tests/targets/reference
suppressMessages(library(e1071))
args <- commandArgs(trailingOnly = TRUE)
inputs <- args[1]
out <- args[2]
X <- as.matrix(read.csv(file.path(inputs, "til10_signature_aligned.csv"), row.names = 1,
                        check.names = FALSE))
Y <- as.matrix(read.csv(file.path(inputs, "hoek_til10_genes_x_samples.csv"), row.names = 1,
                        check.names = FALSE))
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
write.csv(weights, file.path(out, "nusvr_hoek_til10.csv"))
