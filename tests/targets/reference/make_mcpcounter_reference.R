# Reference MCP-counter scores on GSE107572 from ebecht/MCPcounter (MCPcounter.estimate, HUGO
# symbols), with the marker table shipped in stromalens (resources/MCPcounter_genes.txt, the
# package's own Signatures/genes.txt), on log2(x + 1) of the table as distributed.
#
#   python tests/targets/reference/prepare_inputs.py /tmp/q          # writes gse107572_mix.txt
#   Rscript tests/targets/reference/make_mcpcounter_reference.R /tmp/q tests/targets/reference
suppressMessages(library(MCPcounter))
args <- commandArgs(trailingOnly = TRUE)
inputs <- args[1]
out <- args[2]
genes <- read.table("src/stromalens/targets/resources/MCPcounter_genes.txt", sep = "\t",
                    stringsAsFactors = FALSE, header = TRUE, colClasses = "character",
                    check.names = FALSE)
x <- as.matrix(read.table(file.path(inputs, "gse107572_mix.txt"), header = TRUE, sep = "\t",
                          row.names = 1, check.names = FALSE))
est <- MCPcounter.estimate(log2(x + 1), featuresType = "HUGO_symbols", genes = genes)
write.csv(t(est), file.path(out, "mcpcounter_gse107572_log2tpm1.csv"))
writeLines(capture.output(sessionInfo()), file.path(out, "sessionInfo_mcpcounter.txt"))
