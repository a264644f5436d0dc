"""Train one teacher, substitute or student as params.spec says (ltd.jobspec.Training); on
a data set with `processes` > 1 (ImageNet) as that many torch.distributed processes."""
import sys
from pathlib import Path

from ltd import runtime
from ltd.jobs import training
from ltd.provenance import log_to

log_to(snakemake.log[0])
spec = snakemake.params.spec
device = runtime.setup(spec.machine.device, snakemake.threads, gpus=snakemake.resources.get("gpu", 0),
                       job=snakemake.log[0], jobs_per_gpu=spec.machine.jobs_per_gpu)
sys.exit(training.train_job(spec, out_dir=Path(snakemake.output.model).parent,
                            soft_label_file=snakemake.input.get("soft_label_file"), teacher=snakemake.input.get("teacher"),
                            device=device))
