# Reference Cox model for tests/evaluation/test_survival.py (R survival package).
#
# Rebuilds the design of stromalens.evaluation.survival from the raw columns of cox_data.csv
# (age per 10 years, log volume, sex and location with the alphabetically first level as
# reference, ERS-CAF and LR tertiles with right-closed cuts at the type-7 quantiles, H per
# sample SD), fits coxph with Efron ties (lifelines' method) and writes cox_expected.csv:
# term, coef, se, hr, ci_low, ci_high, p, and the row "concordance" (Harrell's C, concordance()).
#
# Run from this folder:  Rscript cox_reference.R      (the tests never run R)
library(survival)

d <- read.csv("cox_data.csv", stringsAsFactors = FALSE)
tertile <- function(x) {
  q <- quantile(x, c(1 / 3, 2 / 3), type = 7)
  cut(x, c(-Inf, q, Inf), labels = c("T1", "T2", "T3"), right = TRUE)
}
X <- data.frame(
  age_per_10y = d$age / 10,
  log_volume_cc = log(d$volume_cc),
  sex_M = as.numeric(d$sex == "M"),
  location_sacrum = as.numeric(d$location == "sacrum"),
  location_skull_base = as.numeric(d$location == "skull_base")
)
e <- tertile(d$ers_caf)
l <- tertile(d$lr)
X$ers_caf_T2_vs_T1 <- as.numeric(e == "T2")
X$ers_caf_T3_vs_T1 <- as.numeric(e == "T3")
X$lr_T2_vs_T1 <- as.numeric(l == "T2")
X$lr_T3_vs_T1 <- as.numeric(l == "T3")
X$heterogeneity_per_sd <- as.numeric(scale(d$heterogeneity))

fit <- coxph(Surv(d$os_time, d$os_event) ~ ., data = X, ties = "efron")
s <- summary(fit)
out <- data.frame(
  term = rownames(s$coefficients),
  coef = s$coefficients[, "coef"],
  se = s$coefficients[, "se(coef)"],
  hr = s$conf.int[, "exp(coef)"],
  ci_low = s$conf.int[, "lower .95"],
  ci_high = s$conf.int[, "upper .95"],
  p = s$coefficients[, "Pr(>|z|)"]
)
out <- rbind(out, data.frame(term = "concordance", coef = concordance(fit)$concordance,
                             se = NA, hr = NA, ci_low = NA, ci_high = NA, p = NA))
write.csv(out, "cox_expected.csv", row.names = FALSE)
cat(R.version.string, "survival", as.character(packageVersion("survival")), "\n")
