from ltd.jobs import data
from ltd.provenance import log_to

log_to(snakemake.log[0])
data.prepare_data(snakemake.params.spec, snakemake.output[0])
