# Expected values of stromalens.radiology.ComBat, from R's sva::ComBat.
#
#   python tests/radiology/reference/make_inputs.py      # writes combat_input.csv
#   Rscript tests/radiology/reference/combat.R           # writes combat_<case>.csv
#                                                         (combat_missing_*: from the NA input)
#
# Produced with R and Debian's r-bioc-sva (versions written to combat_versions.txt).
suppressMessages(library(sva))
here <- dirname(sub("--file=", "", grep("--file=", commandArgs(FALSE), value = TRUE)))
input <- read.csv(file.path(here, "combat_input.csv"), row.names = 1, stringsAsFactors = TRUE)
features <- grep("^f", colnames(input), value = TRUE)
dat <- t(as.matrix(input[, features]))          # sva wants features x samples
batch <- input$site
mod <- model.matrix(~ age + sex, data = input)  # sex: treatment contrast, reference level F

write_case <- function(name, result) {
  out <- t(result)
  write.csv(out, file.path(here, paste0("combat_", name, ".csv")), quote = FALSE)
}
# sva prints progress lines; they are not part of the result.
write_case("parametric", ComBat(dat = dat, batch = batch, mod = NULL, par.prior = TRUE))
write_case("parametric_covariates", ComBat(dat = dat, batch = batch, mod = mod, par.prior = TRUE))
write_case("nonparametric_covariates",
           ComBat(dat = dat, batch = batch, mod = mod, par.prior = FALSE))
write_case("mean_only", ComBat(dat = dat, batch = batch, mod = NULL, par.prior = TRUE,
                               mean.only = TRUE))
# Missing values (sva's NA branch: Beta.NA, rowVars(na.rm = TRUE)), from combat_input_missing.csv.
missing <- read.csv(file.path(here, "combat_input_missing.csv"), row.names = 1,
                    stringsAsFactors = TRUE)
dat_na <- t(as.matrix(missing[, features]))
mod_na <- model.matrix(~ age + sex, data = missing)
write_case("missing_parametric_covariates",
           ComBat(dat = dat_na, batch = missing$site, mod = mod_na, par.prior = TRUE))
write_case("missing_nonparametric",
           ComBat(dat = dat_na, batch = missing$site, mod = NULL, par.prior = FALSE))
writeLines(c(R.version.string, paste("sva", as.character(packageVersion("sva")))),
           file.path(here, "combat_versions.txt"))
