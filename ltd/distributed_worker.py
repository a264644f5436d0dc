"""One process of a multi-process training job: ``python -m ltd.distributed_worker job.json``.

``launch_train`` writes job.json (everything ``jobs.train_run`` needs) and starts
``nprocs`` of these under torchrun; the workflow's train job calls it when the rule
holds more than one GPU (or, on the CPU, runs several gloo processes).
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from . import checkpoint, distributed

PREEMPTED_EXIT = 143  # 128 + SIGTERM: what a shell reports for a process ended by SIGTERM


def launch_train(nprocs: int, config: dict, role: str, run_name: str, out_dir: str | Path,
                 soft_labels: str | Path | None = None, device: str = "auto", threads: int | None = None) -> None:
    out_dir = Path(out_dir)
    job = out_dir / "job.json"
    checkpoint.save_json({"config": config, "role": role, "run": run_name, "out_dir": str(out_dir),
                          "soft_labels": None if soft_labels is None else str(soft_labels),
                          "device": device, "threads": threads}, job)
    distributed.launch(nprocs, "ltd.distributed_worker", [str(job)])


def main(argv: list[str]) -> int:
    from . import jobs, runtime
    from .experiments import Run
    from .train import Preempted

    job = checkpoint.load_json(argv[0])
    ctx = distributed.init(job["device"])
    if job.get("threads"):
        torch.set_num_threads(job["threads"])
    if ctx.device.type == "cuda":
        runtime.setup("cuda")  # the precision flags; the GPU itself is LOCAL_RANK's (init)
    try:
        jobs.train_run(job["config"], Run.parse(job["role"], job["run"]), out_dir=job["out_dir"],
                       soft_labels=job["soft_labels"], device=ctx.device)
    except Preempted as e:
        print(e, file=sys.stderr)
        return PREEMPTED_EXIT
    finally:
        distributed.destroy()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
