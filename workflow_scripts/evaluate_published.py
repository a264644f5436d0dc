"""Evaluate a published checkpoint (config `published:`) as a student is evaluated, as
params.spec says (ltd.jobspec.Published); a state file beside the output lets a killed run
resume."""
from pathlib import Path

from ltd import runtime
from ltd.jobs import published
from ltd.provenance import log_to

log_to(snakemake.log[0])
spec = snakemake.params.spec
machine = spec.evaluation.machine
device = runtime.setup(machine.device, snakemake.threads, gpus=snakemake.resources.get("gpu", 0),
                       job=snakemake.log[0], jobs_per_gpu=machine.jobs_per_gpu)
out = Path(snakemake.output.json)
published.evaluate_published(spec, snakemake.input.model, out, snakemake.output.md,
                             state_path=out.with_name("autoattack_state.json"), device=device)
