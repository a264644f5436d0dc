from ltd import jobs, runtime
from ltd.experiments import Run

jobs.log_to(snakemake.log[0])
device = runtime.setup(snakemake.config["device"], snakemake.threads, gpus=snakemake.resources.get("gpu", 0),
                       job=snakemake.log[0])
jobs.teacher_logits(snakemake.config, Run.parse("teachers", snakemake.wildcards.name), snakemake.input.model,
                    snakemake.output[0], device)
