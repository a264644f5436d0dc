"""Export a student for RobustBench (rules/published.smk); params.model: ltd.jobspec.Model."""
from ltd.jobs import published
from ltd.provenance import log_to

log_to(snakemake.log[0])
published.export(snakemake.params.model, snakemake.input[0], snakemake.output[0])
