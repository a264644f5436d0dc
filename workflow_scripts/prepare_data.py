from ltd.jobs import preparation
from ltd.provenance import log_to

log_to(snakemake.log[0])
preparation.prepare_data(snakemake.params.spec, snakemake.output[0])
