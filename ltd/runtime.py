"""Device, threads and precision: the few facts about the machine a job needs."""

from __future__ import annotations

import contextlib
import os
import platform
import re
import shutil
import subprocess
import sys
import warnings
from typing import Iterator

import torch

from . import fp16_emulation, gpu_slots

# Autocast's dtypes (ltd.experiments.PRECISIONS names them for the config). fp16 trains with
# a GradScaler (``grad_scaler``), as torch.cuda.amp does it: the paper's "mixed precision"
# (PyTorch 1.11). bf16 has fp32's exponent range: nothing underflows, no scaler. The
# attacks' and AWP's proxy gradients are taken under autocast, unscaled, as a plain AMP
# training script takes them (in fp16 a tiny input gradient underflows to exactly zero:
# the stalled attacks ltd.train counts).
AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
# fp16-emulated: CUDA's fp16 autocast emulated in fp32 arithmetic rounded to fp16, on any
# device (ltd/fp16_emulation.py), with fp16's GradScaler. Never a GPU fp16 number.
EMULATED = fp16_emulation.PRECISION
# Precisions with fp16's range (underflow, overflow): a GradScaler, the stalled alarm's fp16 cause.
FP16_RANGE = ("fp16", EMULATED)


# Lock files of the GPUs jobs on this machine hold (see gpu_slots); relative to the
# workflow's working directory, shared by every run of the checkout. LTD_GPU_SLOTS moves
# it, e.g. to a local disk where results/ sits on a file system without flock.
DEFAULT_SLOTS_DIR = "results/.gpu_slots"
README_TORCH_SECTION = 'README.md, section "Installing torch for your CUDA version"'
# Set by a test cluster whose scheduler hands out fake GPUs (tests/test_slurm.py: Slurm
# GRES without devices): a job that holds some runs on the CPU instead of stopping.
FAKE_GPUS = "LTD_FAKE_GPUS"


class NoCudaError(RuntimeError):
    """A job that holds a GPU (or asked for device: cuda) but torch sees no CUDA device."""


def setup(device: str = "auto", threads: int | None = None, gpus: int = 0,
          slots_dir: str | os.PathLike | None = None, job: str = "", jobs_per_gpu: int = 1) -> torch.device:
    """The job's device. With gpus > 0 it first takes that many GPUs no other job holds
    (ltd.gpu_slots; a GPU has ``jobs_per_gpu`` slots) for the rest of the process: call
    it before anything touches CUDA.

    ``device: auto`` is the GPU when torch sees one, else the CPU, except for a job that
    holds GPUs (gpus > 0): finding no CUDA there raises ``NoCudaError`` at once, naming
    torch's CUDA build, the driver and the fix (``no_cuda_message``); so does ``cuda``.
    Unless $LTD_FAKE_GPUS=1: the GPUs held are a test cluster's fakes."""
    # A process this job started (e.g. a torch.distributed worker) already has the job's
    # GPUs in CUDA_VISIBLE_DEVICES; locking again would wait forever on its own parent.
    if gpus and device != "cpu" and not os.environ.get("LTD_GPU_SLOTS_HELD"):
        # First: CUDA reads CUDA_VISIBLE_DEVICES once, and torch.cuda.is_available() below starts it.
        base = slots_dir or os.environ.get("LTD_GPU_SLOTS", DEFAULT_SLOTS_DIR)
        ids = gpu_slots.hold(int(gpus), gpu_slots.host_slots_dir(base), job=job, per_gpu=jobs_per_gpu)
        if ids:
            os.environ["LTD_GPU_SLOTS_HELD"] = ",".join(ids)
            print(f"GPU slots: CUDA_VISIBLE_DEVICES={','.join(ids)}", file=sys.stderr, flush=True)
    if threads:
        torch.set_num_threads(threads)
    if device == "auto":
        # A job that holds a GPU never falls back to the CPU: a 120-epoch WRN-34-10 would
        # take months there and look like a hang.
        held = gpus and os.environ.get(FAKE_GPUS) != "1"
        device = "cuda" if torch.cuda.is_available() or held else "cpu"
    on_cuda = torch.device(device).type == "cuda"  # cuda or cuda:N (benchmarks' --device)
    if on_cuda and not torch.cuda.is_available():
        raise NoCudaError(no_cuda_message(gpus))
    if on_cuda:
        # Reported numbers are computed in full fp32 (see evaluate.py); training uses autocast.
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cudnn.benchmark = True
    return torch.device(device)


def nvidia_smi() -> dict:
    """What the NVIDIA driver says: {"driver": "535.104.05", "cuda": "12.2"} from
    ``nvidia-smi``'s header, or {"error": why it gave nothing}."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return {"error": "nvidia-smi is not on PATH: no NVIDIA driver is installed or loaded on this node"}
    try:
        out = subprocess.run([exe], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError) as e:
        return {"error": f"nvidia-smi did not run: {e}"}
    text = out.stdout + out.stderr
    driver = re.search(r"Driver Version:\s*([0-9.]+)", text)
    cuda = re.search(r"CUDA Version:\s*([0-9.]+)", text)
    if out.returncode != 0 or driver is None:
        first = next((line.strip() for line in text.splitlines() if line.strip()), "no output")
        return {"error": f"nvidia-smi failed (exit code {out.returncode}): {first}"}
    return {"driver": driver[1], "cuda": cuda[1] if cuda else None}


def _version(v: str | None) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", v or ""))


def no_cuda_message(gpus: int = 0) -> str:
    """Why torch sees no CUDA device, and what to do about it."""
    held = f"This job holds {gpus} GPU(s)" if gpus else "device: cuda was asked for"
    lines = [f"{held}, but torch sees no CUDA device (torch.cuda.is_available() is False); stopping "
             "rather than training on the CPU."]
    built = torch.version.cuda
    lines.append(f"  torch {torch.__version__}: " + (f"built for CUDA {built}" if built else
                                                     "a CPU-only build (torch.version.cuda is None)"))
    smi = nvidia_smi()
    if "error" in smi:
        lines.append(f"  driver: {smi['error']}")
        lines.append("  -> no torch build can use a GPU without a working driver: run on a GPU node, or load "
                     "the driver's module there")
    else:
        lines.append(f"  driver: {smi['driver']} (nvidia-smi), supports CUDA up to {smi['cuda'] or '?'}")
        if built and smi["cuda"] and _version(smi["cuda"])[:2] < _version(built)[:2]:
            lines.append(f"  -> the driver's CUDA {smi['cuda']} is older than the CUDA {built} this torch was "
                         "built for: install the torch build for CUDA " + smi["cuda"])
    cvd = os.environ.get(gpu_slots.CVD)
    if cvd is not None:
        lines.append(f"  CUDA_VISIBLE_DEVICES={cvd!r}")
    tag = "cu" + "".join(map(str, _version(smi.get("cuda"))[:2])) if smi.get("cuda") else "cu126"
    lines.append(f"Fix: install the torch build for your driver's CUDA version ({README_TORCH_SECTION}), e.g. "
                 f"pip install torch torchvision --index-url https://download.pytorch.org/whl/{tag} (or the "
                 "nearest lower cuXYZ that PyTorch publishes), then check with "
                 "python -c 'import torch; print(torch.cuda.is_available(), torch.version.cuda)'. "
                 "Or run on the CPU on purpose: the offline demo (--configfile config/demo.yaml) or device: cpu.")
    return "\n".join(lines)


# fp32 precisions on the GPU (evaluation.precision): TF32 on for (CUDA matmuls, cuDNN
# convolutions). "pytorch_default" is PyTorch's own default since 1.12 (convolutions in
# TF32, matmuls not), what pyautoattack and RobustBench ran under unless told otherwise.
TF32_MODES = {"fp32": (False, False), "pytorch_default": (False, True), "tf32": (True, True)}


def allow_tf32(device: torch.device, allowed: bool | str) -> None:
    """TF32 for fp32 matmuls and convolutions on the GPU (about 7x the fp32 rate on an
    H100, 10-bit mantissa): True or "tf32" for both, "pytorch_default" for convolutions
    only, False or "fp32" for neither. Evaluation results record which precision ran."""
    if isinstance(allowed, bool):
        allowed = "tf32" if allowed else "fp32"
    if allowed not in TF32_MODES:
        raise ValueError(f"unknown precision {allowed!r}; expected one of {list(TF32_MODES)}")
    if torch.device(device).type == "cuda":
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = TF32_MODES[allowed]


def tf32_mode(device: torch.device | str) -> str:
    """What fp32 matmuls and convolutions run in, named as ``evaluation.precision`` names
    it (TF32_MODES): "fp32", "pytorch_default" (TF32 cuDNN convolutions
    only) or "tf32" (both); "tf32_matmul" for TF32 matmuls alone (no setting asks for
    it). The CPU never uses TF32: "fp32" there, whatever was asked. Read from torch's
    flags at the time of the call."""
    if torch.device(device).type != "cuda":
        return "fp32"
    f = tf32_flags()
    matmul = (f["cuda.matmul.allow_tf32"] or f["float32_matmul_precision_not_highest"]
              or f.get("cuda.matmul.fp32_precision_tf32", False))
    conv = f["cudnn.allow_tf32"] or f.get("cudnn.conv.fp32_precision_tf32", False)
    return {(False, False): "fp32", (False, True): "pytorch_default", (True, True): "tf32",
            (True, False): "tf32_matmul"}[(matmul, conv)]


@contextlib.contextmanager
def in_tf32_mode(device: torch.device | str, mode: str) -> Iterator[str]:
    """Inside: fp32 matmuls and convolutions on a CUDA ``device`` in TF32 ``mode``
    ("fp32", "pytorch_default", "tf32"; allow_tf32), torch's flags as they
    were afterwards. Yields what runs (``tf32_mode``: "fp32" on the CPU)."""
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    allow_tf32(torch.device(device), mode)
    try:
        yield tf32_mode(device)
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def tf32_flags() -> dict[str, bool]:
    with warnings.catch_warnings():  # newer torch deprecates allow_tf32 for fp32_precision
        warnings.simplefilter("ignore")
        flags = {"cuda.matmul.allow_tf32": bool(torch.backends.cuda.matmul.allow_tf32),
                 "cudnn.allow_tf32": bool(torch.backends.cudnn.allow_tf32),
                 "float32_matmul_precision_not_highest": torch.get_float32_matmul_precision() != "highest"}
        for name, obj in (("cuda.matmul", torch.backends.cuda.matmul),
                          ("cudnn.conv", getattr(torch.backends.cudnn, "conv", None))):
            p = getattr(obj, "fp32_precision", None)
            if isinstance(p, str):
                flags[f"{name}.fp32_precision_tf32"] = p == "tf32"
    return flags


def autocast(device: torch.device, precision: str):
    """Autocast to ``precision`` ("bf16", "fp16"; "fp32": none) on the device's type, CPU
    included: the caller decides (the workflow's jobs ask ``effective_precision``).

    Without autocast's weight-cast cache, on every torch. The cache keeps the fp16/bf16
    copy of each fp32 weight made in the region and hands it to every later forward in
    it, so a training step (attack, AWP, loss: one region) would reuse stale copies:
    (1) on torch < 2.10 a copy made under no_grad (the TRADES attack's clean forward)
    has no autograd history, and the training forward reusing it gives conv and linear
    weights no gradient at all, BatchNorm alone training (pytorch/pytorch#112583, fixed
    by #165068); (2) on any torch a copy made before an in-place weight change (AWP's
    perturbation) hides the change. A fresh cast per use is a few MB of traffic per
    forward: docs/autocast_cache.md and benchmarks/autocast_cache.py measure it.

    ``fp16-emulated``: ltd.fp16_emulation's emulation of CUDA's fp16 autocast."""
    if precision == "fp32":
        return contextlib.nullcontext()
    if precision == EMULATED:
        return fp16_emulation.Fp16Emulation()
    return torch.autocast(torch.device(device).type, dtype=AMP_DTYPES[precision], cache_enabled=False)


def grad_scaler(device: torch.device, precision: str) -> torch.amp.GradScaler:
    """torch.amp's GradScaler for fp16 and fp16-emulated (its defaults: scale 2^16, halved
    on a step with non-finite gradients, which it skips, doubled after 2000 good steps); a
    disabled one, whose calls pass through, for bf16 and fp32."""
    return torch.amp.GradScaler(torch.device(device).type, enabled=precision in FP16_RANGE)


def scale_tensor(scaler: torch.amp.GradScaler) -> torch.Tensor | None:
    """The scaler's current loss scale as the device tensor it keeps (None while disabled
    or before its first ``scale``), read without a host synchronisation: a step the scaler
    skipped is one after which the scale fell. GradScaler has no public accessor that does
    not synchronise (``get_scale`` calls ``.item()``), hence the private attribute."""
    return scaler._scale if scaler.is_enabled() else None


def effective_precision(device: torch.device, precision: str, explicit: bool = False) -> str:
    """What a workflow job trains in. On a GPU: ``precision``. On the CPU: fp32 for the
    schedule's precision (the config's, a data set's or a role's: the CPU runs the paper
    config's fp16 in fp32, and the offline demo's numbers are fp32), but an ``explicit``
    one (a table entry's own ``precision``, in its run's name) as asked: CPU autocast does
    fp16 and bf16, so a table comparing precisions compares them on the CPU too (fp16
    convolutions are slow there: no fast kernel without AVX512-FP16/AMX). fp16-emulated
    runs as asked everywhere: it is asked for on purpose (on a GPU too, e.g. to compare it
    with real fp16 there)."""
    return precision if device.type == "cuda" or explicit or precision == EMULATED else "fp32"


def training_precision(device: torch.device, precision: str, schedule: dict, *, explicit: bool, name: str,
                       say: bool = True) -> tuple[str, dict]:
    """What training job ``name`` computes in on ``device`` (``effective_precision``) and
    the schedule it runs with it, said in the log (``say``: the main process) where they
    differ from the config's. fp16-emulated runs eager: its speed switches (no result
    depends on them) are off, as torch.compile's inductor cannot trace its casts."""
    effective = effective_precision(device, precision, explicit=explicit)
    if effective != precision and say:
        print(f"{name}: trains in {effective}, not the schedule's {precision}, on the {device.type} "
              "(a table entry's own precision would run as asked)", file=sys.stderr)
    if effective != EMULATED:
        return effective, schedule
    if say:
        print(f"{name}: trains in {fp16_emulation.LABEL}", file=sys.stderr)
        if schedule["compile"] or schedule["compile_attack"]:
            print(f"{name}: train.compile and train.compile_attack ignored: {EMULATED} runs eager", file=sys.stderr)
    return effective, {**schedule, "compile": False, "compile_attack": False}


def describe(device: torch.device) -> dict:
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    return {"device": device.type, "device_name": name, "torch": torch.__version__, "threads": torch.get_num_threads()}
