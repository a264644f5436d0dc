from ltd import jobs

jobs.log_to(snakemake.log[0])
jobs.prepare_data(snakemake.config, snakemake.wildcards.dataset, snakemake.output[0])
