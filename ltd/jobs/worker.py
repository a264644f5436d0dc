"""One process of a multi-process training job: ``python -m ltd.jobs.worker job.json``,
started by ``ltd.jobs.train.launch_train`` under torchrun. Nothing imports this module."""

from __future__ import annotations

import sys

import torch

from .. import distributed, runtime
from ..files import load_json
from ..jobspec import Training
from ..train import Preempted, StalledAttacks
from .train import PREEMPTED_EXIT, train_run


def main(argv: list[str]) -> int:
    job = load_json(argv[0])
    ctx = distributed.init(job["device"])
    if job.get("threads"):
        torch.set_num_threads(job["threads"])
    if ctx.device.type == "cuda":
        runtime.setup("cuda")  # the precision flags; the GPU itself is LOCAL_RANK's (init)
    try:
        train_run(Training.from_json(job["spec"]), out_dir=job["out_dir"], soft_label_file=job["soft_label_file"],
                  teacher=job["teacher"], device=ctx.device)
    except Preempted as e:
        print(e, file=sys.stderr)
        return PREEMPTED_EXIT
    except StalledAttacks as e:  # every process stops after the same epoch
        print(e, file=sys.stderr)
        return 1
    finally:
        distributed.destroy()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
