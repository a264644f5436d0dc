"""The benchmarks' clock: ``now(device)`` reads wall time once the device's queued work has
run (CUDA kernels run asynchronously, so a plain perf_counter would time their launch).
Hand-written because the benchmarks time single steps inside their own loops, which
torch.utils.benchmark.Timer (it times a statement it runs itself) does not fit."""

from __future__ import annotations

import time

import torch


def now(device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()
