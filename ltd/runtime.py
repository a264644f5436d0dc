"""Device, threads and precision: the few facts about the machine a job needs."""

from __future__ import annotations

import contextlib
import os
import platform
import sys

import torch

from . import gpu_slots

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


# Lock files of the GPUs jobs on this machine hold (see gpu_slots); relative to the
# workflow's working directory, shared by every run of the checkout. LTD_GPU_SLOTS moves
# it, e.g. to a local disk where results/ sits on a file system without flock.
DEFAULT_SLOTS_DIR = "results/.gpu_slots"


def setup(device: str = "auto", threads: int | None = None, gpus: int = 0,
          slots_dir: str | os.PathLike | None = None, job: str = "") -> torch.device:
    """The job's device. With gpus > 0 it first takes that many GPUs no other job holds
    (ltd.gpu_slots) for the rest of the process: call it before anything touches CUDA."""
    # A process this job started (e.g. a torch.distributed worker) already has the job's
    # GPUs in CUDA_VISIBLE_DEVICES; locking again would wait forever on its own parent.
    if gpus and device != "cpu" and not os.environ.get("LTD_GPU_SLOTS_HELD"):
        # First: CUDA reads CUDA_VISIBLE_DEVICES once, and torch.cuda.is_available() below starts it.
        base = slots_dir or os.environ.get("LTD_GPU_SLOTS", DEFAULT_SLOTS_DIR)
        ids = gpu_slots.hold(int(gpus), gpu_slots.host_slots_dir(base), job=job)
        if ids:
            os.environ["LTD_GPU_SLOTS_HELD"] = ",".join(ids)
            print(f"GPU slots: CUDA_VISIBLE_DEVICES={','.join(ids)}", file=sys.stderr, flush=True)
    if threads:
        torch.set_num_threads(threads)
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device: cuda was asked for but torch sees no CUDA device")
    if device == "cuda":
        # Reported numbers are computed in full fp32 (see evaluate.py); training uses autocast.
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cudnn.benchmark = True
    return torch.device(device)


def allow_tf32(device: torch.device, allowed: bool) -> None:
    """TF32 for fp32 matmuls and convolutions on the GPU (about 7x the fp32 rate on an
    H100, 10-bit mantissa); evaluation results record which precision ran."""
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = allowed
        torch.backends.cudnn.allow_tf32 = allowed


def autocast(device: torch.device, precision: str):
    """bf16/fp16 autocast on GPU; the CPU always trains in fp32 (bf16 there is slow)."""
    if device.type != "cuda" or precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast("cuda", dtype=AMP_DTYPES[precision])


def effective_precision(device: torch.device, precision: str) -> str:
    return precision if device.type == "cuda" else "fp32"


def describe(device: torch.device) -> dict:
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    return {"device": device.type, "device_name": name, "torch": torch.__version__, "threads": torch.get_num_threads()}
