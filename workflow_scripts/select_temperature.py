from ltd.jobs import temperature_search
from ltd.provenance import log_to

log_to(snakemake.log[0])
temperature_search.select_temperature(snakemake.params.spec, snakemake.input.tmax, list(snakemake.input.validations),
                                      snakemake.output[0])
