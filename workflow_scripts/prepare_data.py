from ltd.jobs import data
from ltd.provenance import log_to

log_to(snakemake.log[0])
data.prepare_data(snakemake.config, snakemake.wildcards.dataset, snakemake.output[0])
