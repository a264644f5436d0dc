from ltd.jobs import temperature_search
from ltd.provenance import log_to

log_to(snakemake.log[0])
temperature_search.find_tmax(snakemake.params.spec, list(snakemake.input), snakemake.output[0])
