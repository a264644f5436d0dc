from ltd import jobs

jobs.log_to(snakemake.log[0])
jobs.select_temperature(snakemake.config, snakemake.wildcards.group, snakemake.input.tmax,
                        list(snakemake.input.validations), snakemake.output[0])
