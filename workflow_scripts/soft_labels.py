from ltd.jobs import temperature_search
from ltd.provenance import log_to

log_to(snakemake.log[0])
temperature_search.write_soft_labels(snakemake.input[0], float(snakemake.wildcards.T), snakemake.output[0])
