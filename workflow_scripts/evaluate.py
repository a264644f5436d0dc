"""AutoAttack a student; a state file beside the output lets a killed run resume."""
from pathlib import Path

from ltd import jobs, runtime
from ltd.experiments import Run

jobs.log_to(snakemake.log[0])
device = runtime.setup(snakemake.config["device"], snakemake.threads, gpus=snakemake.resources.get("gpu", 0),
                       job=snakemake.log[0])
out = Path(snakemake.output[0])
jobs.evaluate_run(snakemake.config, Run.parse("students", snakemake.wildcards.name), snakemake.input.model, out,
                  state_path=out.with_name("autoattack_state.json"), device=device)
