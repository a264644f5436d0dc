"""Distinct GPUs for jobs that run side by side on one machine.

Snakemake only *counts* `--resources gpu=N` locally; it never says which GPU a job
gets, so four concurrent `gpu=1` jobs would all land on GPU 0. Here a job takes GPU
ids from a fixed list, one lock file per slot held with flock(2). The kernel drops a
flock when its holder exits or is killed (even by SIGKILL), so a dead job never leaves
a stale slot behind and nothing needs cleaning up.

A GPU has ``per_gpu`` slots (config ``jobs_per_gpu``, default 1): up to that many jobs
share it, and a job on n GPUs holds one slot on each of n distinct GPUs. Snakemake then
counts slots, not GPUs: with k jobs per GPU on N GPUs run ``--resources gpu=<k x N>``.
Slot 0 of GPU g is ``gpu<g>.lock``, slot j > 0 ``gpu<g>.slot<j>.lock``; jobs take every
GPU's first slot before any GPU's second, so they spread over the GPUs.

Call this before CUDA is initialised in the process: CUDA reads CUDA_VISIBLE_DEVICES
once, when it starts, and ignores later changes. The workflow scripts therefore call
`ltd.runtime.setup(..., gpus=...)` first thing (before any torch.cuda call); it takes
the GPUs for the life of the process via `hold()`.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import fcntl
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

CVD = "CUDA_VISIBLE_DEVICES"
POLL_S = 0.1
_UNSET = object()
_job_cvd: object = _UNSET  # CUDA_VISIBLE_DEVICES before our first change (what the job started with)
_held_for_process: list = []  # hold()'s context managers: keeps their lock fds open until exit


def _parse(ids: str) -> list[str]:
    return [g.strip() for g in ids.split(",") if g.strip()]


def _count_cuda_devices() -> int:
    # In a child process: torch.cuda.device_count() here would initialise CUDA in *this*
    # process before CUDA_VISIBLE_DEVICES is narrowed, and CUDA would keep every GPU.
    try:
        out = subprocess.run([sys.executable, "-c", "import torch; print(torch.cuda.device_count())"],
                             capture_output=True, text=True, timeout=300, check=True)
        return int(out.stdout.split()[-1])
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        return 0


def available_gpus() -> list[str]:
    """GPU ids this machine offers the workflow: $LTD_GPUS (e.g. "0,1,2,3"), else
    CUDA_VISIBLE_DEVICES as the job started with it, else every GPU torch sees, else []."""
    if os.environ.get("LTD_GPUS") is not None:
        return _parse(os.environ["LTD_GPUS"])
    cvd = os.environ.get(CVD) if _job_cvd is _UNSET else _job_cvd
    if cvd is not None:
        return _parse(cvd)  # "" means no GPU, as for CUDA
    return [str(i) for i in range(_count_cuda_devices())]


def _check_cuda_not_initialised() -> None:
    torch = sys.modules.get("torch")  # never import torch just to ask
    if torch is not None and torch.cuda.is_initialized():
        raise RuntimeError("GPU slots must be taken before CUDA is initialised: call "
                           "ltd.runtime.setup() before any torch.cuda call in this process")


def slot_path(slots_dir: Path, gpu: str, slot: int) -> Path:
    return slots_dir / (f"gpu{gpu}.lock" if slot == 0 else f"gpu{gpu}.slot{slot}.lock")


def _try_take(n: int, gpus: list[str], slots_dir: Path, per_gpu: int = 1) -> list[tuple[str, int]]:
    """A free slot on each of n distinct GPUs, locked, or none: all-or-nothing, because
    two multi-GPU jobs each holding part of what they need while waiting for the rest
    would deadlock. Returned in the order of ``gpus``."""
    held = []
    for slot in range(per_gpu):  # every GPU's first slot before any GPU's second
        for gpu in gpus:
            if any(g == gpu for g, _ in held):
                continue
            # Opened, never truncated before locking: the file holds its owner's details.
            fd = os.open(slot_path(slots_dir, gpu, slot), os.O_RDWR | os.O_CREAT, 0o666)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            held.append((gpu, fd))
            if len(held) == n:
                return sorted(held, key=lambda h: gpus.index(h[0]))
    for _, fd in held:
        os.close(fd)  # closing the descriptor releases its lock
    return []


@contextlib.contextmanager
def acquire(n: int, slots_dir: str | Path, gpus: list[str] | None = None, timeout: float | None = None,
            job: str = "", per_gpu: int = 1) -> Iterator[list[str]]:
    """Take n GPUs that no other running job holds (a free slot on each: fewer than
    ``per_gpu`` other jobs hold it); yields their ids.

    CUDA_VISIBLE_DEVICES is set to them inside (so subprocesses such as torchrun inherit
    it) and restored afterwards. Waits while fewer than n are free (TimeoutError after
    `timeout` seconds, if given). n == 0 or no GPU at all: yields [] and does nothing.
    """
    global _job_cvd
    gpus = available_gpus() if gpus is None else [str(g) for g in gpus]
    if n <= 0 or not gpus:
        yield []
        return
    if n > len(gpus):
        raise ValueError(f"the job asks for {n} GPUs but only {len(gpus)} are available ({','.join(gpus)})")
    _check_cuda_not_initialised()
    slots_dir = Path(slots_dir)
    slots_dir.mkdir(parents=True, exist_ok=True)
    deadline = None if timeout is None else time.monotonic() + timeout
    warned = False
    if per_gpu < 1:
        raise ValueError(f"jobs_per_gpu must be at least 1, got {per_gpu}")
    share = f" ({per_gpu} jobs per GPU)" if per_gpu > 1 else ""
    while not (held := _try_take(n, gpus, slots_dir, per_gpu)):
        if deadline is not None and time.monotonic() >= deadline:
            raise TimeoutError(f"no {n} of GPUs {','.join(gpus)} became free{share} within {timeout:g} s "
                               f"(holders: {slots_dir}/gpu*.lock)")
        if not warned:
            print(f"ltd.gpu_slots: waiting for {n} free GPU(s) of {','.join(gpus)}{share}; "
                  f"the holders are named in {slots_dir}/gpu*.lock", file=sys.stderr, flush=True)
            warned = True
        time.sleep(POLL_S)
    ids = [gpu for gpu, _ in held]
    owner = (f"pid={os.getpid()} host={socket.gethostname()} job={job or ' '.join(sys.argv)} "
             f"since={_dt.datetime.now().isoformat(timespec='seconds')}\n").encode()
    for _, fd in held:  # for humans only; the lock itself is the flock
        os.ftruncate(fd, 0)
        os.pwrite(fd, owner, 0)
    outermost, previous = _job_cvd is _UNSET, os.environ.get(CVD)
    if outermost:
        _job_cvd = previous
    os.environ[CVD] = ",".join(ids)
    try:
        yield ids
    finally:
        if previous is None:
            os.environ.pop(CVD, None)
        else:
            os.environ[CVD] = previous
        if outermost:
            _job_cvd = _UNSET
        for _, fd in held:
            os.close(fd)


def hold(n: int, slots_dir: str | Path, gpus: list[str] | None = None, timeout: float | None = None,
         job: str = "", per_gpu: int = 1) -> list[str]:
    """acquire() for the rest of the process; the OS releases the locks when it exits."""
    cm = acquire(n, slots_dir, gpus, timeout, job, per_gpu)
    ids = cm.__enter__()
    _held_for_process.append(cm)  # a dropped generator would run its finally and unlock
    return ids


def host_slots_dir(base: str | Path) -> Path:
    """Where one machine's lock files go. A lock stands for a physical GPU, so each host
    gets its own folder (results/ may be on a shared file system), and so does each
    batch-scheduler job: the scheduler already gave it its own GPUs, renumbered from 0,
    which must not queue behind another job's "GPU 0" on the same node."""
    name = socket.gethostname()
    if os.environ.get("SLURM_JOB_ID"):
        name += f"-slurm{os.environ['SLURM_JOB_ID']}"
    return Path(base) / name
