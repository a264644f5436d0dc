"""Export a student for RobustBench (rules/published.smk)."""
from ltd.experiments import Run
from ltd.jobs import published
from ltd.provenance import log_to

log_to(snakemake.log[0])
published.export(snakemake.config, Run.parse("students", snakemake.wildcards.name), snakemake.input[0],
                 snakemake.output[0])
