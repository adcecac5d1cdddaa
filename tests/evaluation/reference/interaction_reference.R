# Reference treatment x score interaction model for tests/evaluation/test_treatment.py (R glm).
#
# From interaction_data.csv (simulate_interaction(240, seed=21) of _planted_cohort.py, LR
# rounded to 6 decimals), builds the design of stromalens.evaluation.treatment: LR per sample
# SD, treatment one-hot (reference: first level sorted, "surgery"), their product, age per 10
# years, log volume, sex/location one-hot; fits glm(family = binomial) on every patient and
# writes interaction_expected.csv: term, coef, se, or, ci_low, ci_high (Wald, confint.default),
# p (Wald z). Then the out-of-fold discrimination: per fold, the model (and the model without
# the score) refitted on the other folds, LR scaled by their mean and SD, predicting the
# held-out fold; rows "auc_oof" and "auc_base_oof" hold the Mann-Whitney AUC of the pooled
# held-out probabilities, W / (n1 * n0) from wilcox.test.
#
# Run from this folder:  Rscript interaction_reference.R      (the tests never run R)
d <- read.csv("interaction_data.csv", stringsAsFactors = FALSE)
design <- function(d, centre, scale, score = TRUE) {
  X <- data.frame(row.names = seq_len(nrow(d)))
  s <- (d$lr - centre) / scale
  rt <- as.numeric(d$treatment == "surgery+RT")
  if (score) X$lr_per_sd <- s
  X$`treatment_surgery+RT` <- rt
  if (score) X$`lr_per_sd:treatment_surgery+RT` <- s * rt
  X$age_per_10y <- d$age / 10
  X$log_volume_cc <- log(d$volume_cc)
  X$sex_M <- as.numeric(d$sex == "M")
  X$location_sacrum <- as.numeric(d$location == "sacrum")
  X$location_skull_base <- as.numeric(d$location == "skull_base")
  X
}
fit_glm <- function(X, y) {
  X$response <- y
  glm(response ~ ., data = X, family = binomial, control = glm.control(epsilon = 1e-14))
}
fit <- fit_glm(design(d, mean(d$lr), sd(d$lr)), d$response)
s <- summary(fit)$coefficients
ci <- confint.default(fit)
keep <- rownames(s) != "(Intercept)"
out <- data.frame(
  term = gsub("`", "", rownames(s)[keep]),
  coef = s[keep, "Estimate"],
  se = s[keep, "Std. Error"],
  or = exp(s[keep, "Estimate"]),
  ci_low = exp(ci[keep, 1]),
  ci_high = exp(ci[keep, 2]),
  p = s[keep, "Pr(>|z|)"]
)
auc <- function(p, y) {
  w <- wilcox.test(p[y == 1], p[y == 0], exact = FALSE)$statistic
  unname(w / (sum(y == 1) * sum(y == 0)))
}
oof <- function(score) {
  p <- rep(NA_real_, nrow(d))
  for (k in sort(unique(d$fold))) {
    tr <- d$fold != k
    X <- design(d, mean(d$lr[tr]), sd(d$lr[tr]), score)
    f <- fit_glm(X[tr, ], d$response[tr])
    p[!tr] <- predict(f, newdata = X[!tr, ], type = "response")
  }
  p
}
for (row in list(c("auc_oof", TRUE), c("auc_base_oof", FALSE))) {
  a <- auc(oof(as.logical(row[2])), d$response)
  out <- rbind(out, data.frame(term = row[1], coef = a, se = NA, or = NA, ci_low = NA,
                               ci_high = NA, p = NA))
}
write.csv(out, "interaction_expected.csv", row.names = FALSE)
cat(R.version.string, "\n")
