"""AutoAttack a student's last or best weights (params.weights) as params.spec says
(ltd.jobspec.Evaluation); a state file beside the output lets a killed run resume."""
from pathlib import Path

from ltd import runtime
from ltd.jobs import evaluation
from ltd.provenance import log_to

log_to(snakemake.log[0])
spec = snakemake.params.spec
device = runtime.setup(spec.machine.device, snakemake.threads, gpus=snakemake.resources.get("gpu", 0),
                       job=snakemake.log[0], jobs_per_gpu=spec.machine.jobs_per_gpu)
out = Path(snakemake.output[0])
evaluation.evaluate_run(spec, snakemake.input.model, out, state_path=out.with_name(f"{out.stem}_state.json"),
                        device=device, metrics_path=snakemake.input.metrics, weights=snakemake.params.weights)
