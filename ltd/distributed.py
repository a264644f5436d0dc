"""Several training processes on one node (ImageNet, Table III): torchrun, gloo or nccl.

Design (the loop's side is in train.fit):

* No DistributedDataParallel. A TRADES/AWP step calls the model several times (an
  eval-mode attack taking input gradients, clean and adversarial forwards, AWP's proxy)
  before its single backward; DDP's reducer expects one forward per backward and
  rewrites ``state_dict`` keys. Instead fit all-reduces the parameter gradients once,
  after ``loss.backward()`` and before ``opt.step()`` (:func:`average_gradients`): exact
  (the gradient of the global batch's mean loss), indifferent to how the step uses the
  model, and its cost (one flat all-reduce per step, not overlapped with backward) is
  small beside a step that runs a multi-step attack.
* BatchNorm stays per process (each normalises its own slice of the global batch, as
  torchvision's ImageNet reference and DataParallel training do); ``SyncBatchNorm``
  runs on CUDA only (torch 2.14 raises ``ValueError`` for CPU inputs), so it cannot be
  the default of a code path the CPU demo must exercise. The running statistics are
  averaged over processes after every step (:func:`average_buffers`), so every process
  holds the same model at all times: rank 0's checkpoint is everyone's state, and
  resuming is exact.
* The global RNG stream is the same in every process (same seed, same checkpoint), so
  a resume restores every rank from rank 0's state. Consequence: the TRADES attack's
  0.001 * N(0, 1) start is the same noise pattern for example j of every rank's slice.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from typing import Iterable, Sequence

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Context:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init(device: str = "auto") -> Context:
    """This process's place in a torchrun job (a lone process: rank 0 of 1). Starts the
    process group when there are several: nccl on CUDA (one GPU per process, GPU
    LOCAL_RANK of those visible), gloo on the CPU."""
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    local = int(os.environ.get("LOCAL_RANK", 0))
    cuda = torch.cuda.is_available() if device == "auto" else device == "cuda"
    if cuda:
        torch.cuda.set_device(local)
        dev = torch.device("cuda", local)
    else:
        dev = torch.device("cpu")
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo", device_id=dev if cuda else None)
    return Context(rank, world, local, dev)


def active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def is_main() -> bool:
    return rank() == 0


def barrier() -> None:
    if active():
        dist.barrier()


def destroy() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(values: Sequence[float], device: torch.device) -> list[float]:
    """Sums of a few numbers over all processes (float64: exact for counts)."""
    t = torch.tensor(list(values), dtype=torch.float64, device=device)
    if active():
        dist.all_reduce(t)
    return t.tolist()


def average_tensors(tensors: Sequence[torch.Tensor], n_local: int, n_global: int) -> None:
    """In place: ``t <- sum over ranks (n_r * t_r) / n_global``, the example-weighted mean.

    For a mean-over-examples loss this turns each rank's gradient into the gradient of
    the whole global batch's mean, also when slices differ in size (a short last batch).
    AWP must pass its proxy gradients through this too, else each rank perturbs its
    weights differently and the ranks drift apart.
    """
    if not active() or not tensors:
        return
    flat = torch.cat([t.detach().reshape(-1).float() for t in tensors]).mul_(n_local)
    dist.all_reduce(flat)
    flat.div_(n_global)
    i = 0
    for t in tensors:
        t.copy_(flat[i : i + t.numel()].view_as(t))
        i += t.numel()


def average_gradients(model: torch.nn.Module, n_local: int, n_global: int) -> None:
    # Only parameters that have a gradient: a parameter the step never used keeps
    # grad None (and is skipped by SGD) exactly as in a single process.
    average_tensors([p.grad for p in model.parameters() if p.grad is not None], n_local, n_global)


def average_buffers(model: torch.nn.Module) -> None:
    """BN running statistics -> their mean over ranks (integer counters are equal anyway)."""
    average_tensors([b for b in model.buffers() if b.is_floating_point()], 1, world_size())


def broadcast_state(model: torch.nn.Module) -> None:
    """Every rank starts from rank 0's parameters and buffers, whatever its own init did."""
    if active():
        for t in model.state_dict().values():
            dist.broadcast(t, 0)


def _stream(f):
    try:
        f.fileno()  # a real file (jobs.log_to's log): the children write to it directly
        return f
    except (AttributeError, OSError, ValueError):
        return None


def launch(nprocs: int, module_or_script: str, args: Iterable[str] = (), env: dict | None = None) -> None:
    """Run ``module_or_script args`` in ``nprocs`` processes under torchrun (one node).

    A name ending in .py is a script, anything else a module (``python -m``). The
    processes inherit this one's stdout/stderr (the job's log). SIGTERM to this process
    (Slurm preemption) is passed on to torchrun, which passes it to the workers: they
    checkpoint and exit. Raises ``CalledProcessError`` with torchrun's exit code.
    """
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nprocs}"]
    cmd += ([] if module_or_script.endswith(".py") else ["--module"]) + [module_or_script, *map(str, args)]
    full_env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"), **(env or {})}
    proc = subprocess.Popen(cmd, env=full_env, stdout=_stream(sys.stdout), stderr=_stream(sys.stderr))
    previous = signal.getsignal(signal.SIGTERM)
    forward = lambda signum, frame: proc.send_signal(signum)  # noqa: E731
    try:
        signal.signal(signal.SIGTERM, forward)
    except ValueError:  # not the main thread: Slurm signals the children itself anyway
        previous = None
    try:
        rc = proc.wait()
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    if rc != 0:
        raise subprocess.CalledProcessError(rc, cmd)
