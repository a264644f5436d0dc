"""budget.md, the page `snakemake budget` writes: ltd.budget's estimate per table, the
rate each architecture is priced at, the jobs two tables share and (optionally) every
job's cost. Torch-free, as the budget is.
"""

from __future__ import annotations

from .budget import (
    EVAL_PRECISION_KEYS,
    estimate,
    job_cost,
    job_tables,
    jobs_per_gpu_throughput,
    with_evaluation_precision,
)


def jobs_frame(config: dict):
    """One row per unique job: its counted cost and the tables that use it."""
    import pandas as pd

    rows = []
    order = {k: i for i, k in enumerate(("teacher", "logits", "substitute", "student", "validation", "evaluation"))}
    for job, tables in sorted(job_tables(config).items(), key=lambda jt: order[jt[0].kind]):  # stable
        c = job_cost(config, job)
        rows.append({
            "job": job.kind, "run": job.name.split(":", 1)[1], "tables": ", ".join(tables), "arch": c.arch,
            "dataset": c.dataset, "fwd GFLOP/img": round(c.forward_gflop, 3),
            "fwd-eq/img": round(c.forward_equivalents, 2), "images": c.images, "epochs": c.epochs,
            "PFLOP": c.flop / 1e15, "GPU-h": c.gpu_hours, "GPUs": c.processes, "priced by": c.basis,
            "notes": "; ".join(c.notes),
        })
    return pd.DataFrame(rows)


def shared_jobs(config: dict) -> dict[str, list[str]]:
    """Jobs needed by more than one table: name -> tables."""
    return {job.name: tables for job, tables in job_tables(config).items() if len(tables) > 1}


def precision_lines(config: dict, small: bool = False) -> list[str]:
    """What the AutoAttack evaluations would cost in each evaluation.precision, and the
    jobs-per-GPU assumption."""
    f = ".4f" if small else ".1f"
    hours = {p: estimate(with_evaluation_precision(config, p))["eval GPU-h"].iloc[-1] for p in EVAL_PRECISION_KEYS}
    configured = config["evaluation"]["precision"]
    k, throughput = int(config["jobs_per_gpu"]), jobs_per_gpu_throughput(config)
    per_gpu = (f"{k} jobs per GPU at {throughput:g}x the aggregate rate of one (measured)" if throughput != 1.0 else
               f"{k} job(s) per GPU, priced at one job's rate" + (" (not measured for this k)" if k > 1 else ""))
    return [f"`eval GPU-h` in total by evaluation.precision (configured: {configured}): "
            + ", ".join(f"{p} {h:{f}}" for p, h in hours.items()) + f". GPU-hours assume {per_gpu}."]


def rates_frame(config: dict):
    """One row per architecture, data set and step the jobs run: the rate each is priced
    at (microseconds per image and forward-equivalent) and what priced it: a GPU's
    measurement or the model (FLOP- or launch-bound), with its numbers."""
    import pandas as pd

    rows = {}
    for job in job_tables(config):
        c = job_cost(config, job)
        rows.setdefault((c.arch, c.dataset, c.step), {
            "arch": c.arch, "dataset": c.dataset, "step": c.step, "us/img/fwd-eq": 1e6 * c.seconds_per_fe,
            "priced by": c.basis, "from": c.rate})
    return pd.DataFrame(list(rows.values()))


def render(config: dict, jobs: bool = True) -> str:
    """budget.md: the per-table estimate, the shared jobs and (``jobs``) every job's cost."""
    s = config["budget"]
    table = estimate(config)
    shared = shared_jobs(config)
    small = table["total GPU-h"].iloc[-1] < 10  # the demo: show its minutes, not 0.0
    fmt = {"floatfmt": ".4f" if small else ".1f", "index": False}
    lines = [
        f"# Compute budget: run `{config['run']}`",
        "",
        f"Estimated for one {s['gpu']}, each architecture at its own throughput (ltd/throughput.py; the "
        "rates under `Throughput`): measured by a GPU where `budget.calibration` "
        f"({s['calibration']}) has its rows, else a model: counted FLOPs (ltd/flops.py) at {s['peak_tflops']:g} "
        f"TFLOP/s and MFU {s['mfu']['train']:g} (bf16/fp16 training), {s['fp32_peak_tflops']:g} at "
        f"{s['mfu']['eval_fp32']:g} (fp32), {s['tf32_peak_tflops']:g} at {s['mfu']['eval_tf32']:g} (TF32), capped by "
        "a launch-bound floor (a step's counted kernel launches x the host's cost per launch). `train GPU-h`: "
        "teachers, substitutes, students (with their per-epoch test pass and PGD monitor); `eval GPU-h`: AutoAttack "
        "evaluations, validations of `auto` candidates, teacher-logit passes. GPU-hours are per GPU (a training job on `processes` GPUs takes that many "
        "times fewer hours of wall time). A table's row counts every job it needs; `shared` of them are "
        "needed by another table too; `total` counts each job once.",
        "",
        table.to_markdown(**fmt),
        "",
        *precision_lines(config, small),
        "",
        "## Throughput",
        "",
        rates_frame(config).to_markdown(index=False, floatfmt=".1f"),
        "",
        "## Shared jobs",
        "",
    ]
    lines += [f"- {name}: {', '.join(t)}" for name, t in shared.items()] or ["none"]
    if jobs:
        lines += ["", "## Jobs", "", jobs_frame(config).to_markdown(index=False, floatfmt=".4f" if small else ".2f")]
    lines.append("")
    return "\n".join(lines)
