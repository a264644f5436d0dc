"""One process of a multi-process training job: ``python -m ltd.jobs.worker job.json``,
started by ``ltd.jobs.training.launch_train`` under torchrun. Nothing imports this module."""

from __future__ import annotations

import sys

import torch

from .. import distributed, runtime
from ..files import load_json
from ..jobspec import Training
from .training import exit_code, train_run


def main(argv: list[str]) -> int:
    job = load_json(argv[0])
    ctx = distributed.init(job["device"])
    if job.get("threads"):
        torch.set_num_threads(job["threads"])
    if ctx.device.type == "cuda":
        runtime.setup("cuda")  # the precision flags; the GPU itself is LOCAL_RANK's (init)
    try:
        return exit_code(lambda: train_run(Training.from_json(job["spec"]), out_dir=job["out_dir"],
                                           soft_label_file=job["soft_label_file"], teacher=job["teacher"],
                                           device=ctx.device))
    finally:
        distributed.destroy()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
