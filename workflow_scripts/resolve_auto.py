from ltd.jobs import temperature
from ltd.provenance import log_to

log_to(snakemake.log[0])
temperature.resolve_auto(snakemake.input.evaluation, snakemake.input.selection, snakemake.output[0])
