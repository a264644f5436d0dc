from ltd import jobs

jobs.log_to(snakemake.log[0])
jobs.soft_labels(snakemake.input[0], float(snakemake.wildcards.T), snakemake.output[0])
