"""A teacher's logits on the un-augmented training images, as params.spec says (ltd.jobspec.Logits)."""
from ltd import runtime
from ltd.jobs import temperature_search
from ltd.provenance import log_to

log_to(snakemake.log[0])
spec = snakemake.params.spec
device = runtime.setup(spec.machine.device, snakemake.threads, gpus=snakemake.resources.get("gpu", 0),
                       job=snakemake.log[0], jobs_per_gpu=spec.machine.jobs_per_gpu)
temperature_search.teacher_logits(spec, snakemake.input.model, snakemake.output[0], device)
