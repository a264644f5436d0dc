from ltd import jobs

jobs.log_to(snakemake.log[0])
jobs.resolve_auto(snakemake.input.evaluation, snakemake.input.selection, snakemake.output[0])
