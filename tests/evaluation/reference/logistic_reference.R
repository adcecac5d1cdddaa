# Reference logistic model for tests/evaluation/test_treatment.py (R stats::glm).
#
# Rebuilds the design of stromalens.evaluation.treatment from logistic_data.csv (LR per sample
# SD, age per 10 years, log volume, sex/location/treatment one-hot with the first level in
# sorted order as reference), fits glm(family = binomial) and writes logistic_expected.csv:
# term, coef, se, or, ci_low, ci_high (Wald, confint.default), p (Wald z), and the row "auc":
# the Mann-Whitney AUC of the fitted probabilities, W / (n1 * n0) from wilcox.test.
#
# Run from this folder:  Rscript logistic_reference.R      (the tests never run R)
d <- read.csv("logistic_data.csv", stringsAsFactors = FALSE)
X <- data.frame(
  lr_per_sd = as.numeric(scale(d$lr)),
  age_per_10y = d$age / 10,
  log_volume_cc = log(d$volume_cc),
  sex_M = as.numeric(d$sex == "M"),
  location_sacrum = as.numeric(d$location == "sacrum"),
  location_skull_base = as.numeric(d$location == "skull_base"),
  treatment_surgery = as.numeric(d$treatment == "surgery"),
  `treatment_surgery+RT` = as.numeric(d$treatment == "surgery+RT"),
  check.names = FALSE
)
X$response <- d$response
fit <- glm(response ~ ., data = X, family = binomial, control = glm.control(epsilon = 1e-14))
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
p <- fitted(fit)
y <- d$response
w <- wilcox.test(p[y == 1], p[y == 0], exact = FALSE)$statistic
auc <- unname(w / (sum(y == 1) * sum(y == 0)))
out <- rbind(out, data.frame(term = "auc", coef = auc, se = NA, or = NA, ci_low = NA,
                             ci_high = NA, p = NA))
write.csv(out, "logistic_expected.csv", row.names = FALSE)
cat(R.version.string, "\n")
