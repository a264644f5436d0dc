"""The temperature-search criteria of an `auto` candidate on the validation split, as
params.spec says (ltd.jobspec.Validation)."""
from ltd import runtime
from ltd.jobs import temperature_search
from ltd.provenance import log_to

log_to(snakemake.log[0])
spec = snakemake.params.spec
device = runtime.setup(spec.machine.device, snakemake.threads, gpus=snakemake.resources.get("gpu", 0),
                       job=snakemake.log[0], jobs_per_gpu=spec.machine.jobs_per_gpu)
temperature_search.validate_run(spec, snakemake.input.model, snakemake.input.teacher, snakemake.output[0], device)
