from ltd import jobs

jobs.log_to(snakemake.log[0])
jobs.find_tmax(snakemake.config, snakemake.wildcards.dataset, list(snakemake.input), snakemake.output[0])
