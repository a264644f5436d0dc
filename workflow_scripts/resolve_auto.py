from ltd.jobs import temperature_search
from ltd.provenance import log_to

log_to(snakemake.log[0])
temperature_search.resolve_auto(snakemake.input.evaluation, snakemake.input.selection, snakemake.output[0])
