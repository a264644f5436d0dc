from ltd import runtime
from ltd.experiments import Run
from ltd.jobs import temperature
from ltd.provenance import log_to

log_to(snakemake.log[0])
device = runtime.setup(snakemake.config["device"], snakemake.threads, gpus=snakemake.resources.get("gpu", 0),
                       job=snakemake.log[0], jobs_per_gpu=snakemake.config.get("jobs_per_gpu", 1))
temperature.validate_run(snakemake.config, Run.parse("students", snakemake.wildcards.name), snakemake.input.model,
                  snakemake.input.teacher, snakemake.output[0], device)
