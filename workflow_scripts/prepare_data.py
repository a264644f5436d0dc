from ltd import jobs

jobs.log_to(snakemake.log[0])
jobs.prepare_data(snakemake.config, snakemake.output[0])
