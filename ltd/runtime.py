"""Device, threads and precision: the few facts about the machine a job needs."""

from __future__ import annotations

import contextlib
import platform

import torch

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def setup(device: str = "auto", threads: int | None = None) -> torch.device:
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
