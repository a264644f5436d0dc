"""Train one teacher, substitute or student (the role comes from the rule); on a data set
with `processes` > 1 (ImageNet) as that many torch.distributed processes."""
import sys
from pathlib import Path

from ltd import runtime
from ltd.experiments import Run
from ltd.jobs import train
from ltd.provenance import log_to

log_to(snakemake.log[0])
device = runtime.setup(snakemake.config["device"], snakemake.threads, gpus=snakemake.resources.get("gpu", 0),
                       job=snakemake.log[0], jobs_per_gpu=snakemake.config.get("jobs_per_gpu", 1))
run = Run.parse(snakemake.params.role, snakemake.wildcards.name)
sys.exit(train.train_job(snakemake.config, run, out_dir=Path(snakemake.output.model).parent,
                         soft_labels=snakemake.input.get("soft_labels"), teacher=snakemake.input.get("teacher"),
                         device=device))
