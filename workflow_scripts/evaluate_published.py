"""Evaluate a published checkpoint (config `published:`) as a student is evaluated; a
state file beside the output lets a killed run resume."""
from pathlib import Path

from ltd import runtime
from ltd.jobs import published
from ltd.provenance import log_to

log_to(snakemake.log[0])
device = runtime.setup(snakemake.config["device"], snakemake.threads, gpus=snakemake.resources.get("gpu", 0),
                       job=snakemake.log[0], jobs_per_gpu=snakemake.config.get("jobs_per_gpu", 1))
out = Path(snakemake.output.json)
published.evaluate_published(snakemake.config, snakemake.wildcards.name, snakemake.input.model, out, snakemake.output.md,
                             state_path=out.with_name("autoattack_state.json"), device=device)
