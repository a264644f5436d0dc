"""The one training loop, for teachers, substitutes and students alike.

What differs between roles is the step (ltd/steps.py, chosen by ltd/methods.py). The
loop owns the optimiser (SGD, Nesterov, piecewise-constant LR as in the paper's
Appendix A), mixed precision, a progress bar, a NaN guard, and a checkpoint written
atomically at the end of every epoch with optimiser, scheduler and RNG state, from
which it resumes.

No host synchronisation per step (the airbench habit): the running totals (loss,
correct predictions, the step's own statistics) stay on the device and the host reads
them every ``SYNC_EVERY`` steps and at the end of the epoch, for the progress bar and
the NaN guard. A non-finite loss is therefore caught up to ``SYNC_EVERY`` steps late;
the checkpoint on disk is always one whose totals were checked.

Preemption: SIGTERM (Slurm, before preemption or the time limit) makes the loop write a
checkpoint after the optimiser step in progress — position within the epoch and the
epoch's partial totals included — and raise ``Preempted``; the rerun continues from
that step and ends with the weights an uninterrupted run would have.

Several processes (torchrun; see distributed.py): each gets its slice of every global
batch from its loader; gradients and BN statistics are averaged after each backward;
totals are summed over processes at the sync points; only rank 0 writes checkpoints,
logs and the bar.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import math
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from tqdm import tqdm

from . import checkpoint, distributed, runtime
from .steps import Step

# Steps between two reads of the device's running totals (bar, NaN guard; under
# torch.distributed also the SIGTERM vote). A read stalls the GPU's queue: rarely.
SYNC_EVERY = 25


class NonFiniteLoss(RuntimeError):
    pass


class Preempted(RuntimeError):
    """SIGTERM arrived; a checkpoint of the last finished step is at ``path``. Scripts
    exit with ``exit_code`` (128 + SIGTERM); rerunning the job continues the run."""

    exit_code = 143

    def __init__(self, path: Path, where: str):
        super().__init__(f"stopped by SIGTERM {where}; checkpoint written to {path}: rerun to continue")
        self.path = path


def make_optimizer(model: torch.nn.Module, sched: dict) -> tuple[torch.optim.Optimizer, Any]:
    opt = torch.optim.SGD(
        model.parameters(),
        lr=sched["lr"],
        momentum=sched["momentum"],
        weight_decay=sched["weight_decay"],
        nesterov=sched["nesterov"],
    )
    # Milestones count finished epochs: "/10 at the end of epoch 80" = from epoch 81 on.
    lr_sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=sched["lr_milestones"], gamma=sched["lr_gamma"])
    return opt, lr_sched


def _rng_state() -> dict:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    # The checkpoint is loaded onto the training device; RNG states must be CPU ByteTensors
    # (on a GPU, resuming failed with "RNG state must be a torch.ByteTensor").
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


@contextlib.contextmanager
def _sigterm_flag() -> Iterator[dict]:
    """{"set": bool}, set by SIGTERM while inside; the previous handler is restored on exit.
    The handler only sets the flag: the loop acts on it at a consistent point."""
    flag = {"set": False}
    if threading.current_thread() is not threading.main_thread():  # signal.signal would raise
        yield flag
        return

    def handler(signum, frame):
        flag["set"] = True

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield flag
    finally:
        signal.signal(signal.SIGTERM, previous)


def _epoch_from(loader, epoch: int, skip: int) -> Iterator:
    """Epoch ``epoch``'s batches after the first ``skip`` (a preempted epoch resumes after
    its finished steps). A loader whose ``epoch`` takes ``start`` skips them itself (e.g.
    without decoding images); otherwise they are drawn and dropped, not computed on:
    drawing advances the loader's augmentation generator exactly as the interrupted run
    did (the global RNG is restored from the checkpoint)."""
    if skip and "start" in inspect.signature(loader.epoch).parameters:
        return loader.epoch(epoch, start=skip)
    batches = loader.epoch(epoch)
    for _ in range(skip):
        next(batches)
    return batches


def fit(
    model: torch.nn.Module,
    step: Step,
    loader,
    sched: dict,
    *,
    ckpt_path: str | Path,
    device: torch.device,
    precision: str = "fp32",
    fingerprint: str = "",
    evaluate: Callable[[torch.nn.Module], dict] | None = None,
    log_path: str | Path | None = None,
    desc: str = "train",
) -> list[dict]:
    """Train for ``sched['epochs']`` epochs, resuming from ``ckpt_path`` if it holds a
    checkpoint of the same ``fingerprint`` (a hash of everything that defines the run;
    a stale checkpoint from other settings is ignored, never silently continued).

    ``loader``: ``len(loader)`` batches per epoch, ``loader.epoch(e)`` yields (x, y, q),
    deterministic in (seed, e) — under torch.distributed this process's slice of each
    global batch, whose bounds are ``loader.bounds``. ``precision``: "fp32", or "bf16"
    for autocast (the caller decides what the device runs: ``runtime.effective_precision``).
    ``evaluate`` runs in every process (it may shard and all-reduce). Returns the
    per-epoch history (also appended as JSON lines to ``log_path``). Raises ``Preempted``
    after SIGTERM, ``NonFiniteLoss`` on a NaN/inf loss.
    """
    world, main = distributed.world_size(), distributed.is_main()
    model.to(device)
    # GPU speed switches (schedule keys, not part of a run's identity): channels_last
    # suits cuDNN's convolutions under bf16; torch.compile is opt-in (measure first).
    channels_last = device.type == "cuda" and sched.get("channels_last", False)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    net = model
    if sched.get("compile"):
        if step.supports_compile:
            net = torch.compile(model)
        else:
            print(f"{desc}: train.compile ignored: {type(step).__name__} copies the model", file=sys.stderr)
    opt, lr_sched = make_optimizer(model, sched)
    history: list[dict] = []
    start, skip, partial = 0, 0, None
    ckpt_path = Path(ckpt_path)
    if ckpt_path.exists():  # every process resumes from the same (rank 0's) checkpoint
        state = checkpoint.load(ckpt_path, map_location=device)
        if state.get("fingerprint") == fingerprint:
            model.load_state_dict(state["model"])
            opt.load_state_dict(state["optimizer"])
            lr_sched.load_state_dict(state["scheduler"])
            _set_rng_state(state["rng"])
            history = json.loads(state["history"])
            start, skip, partial = state["epoch"], state.get("step", 0), state.get("totals")
            where = f", step {skip} of epoch {start + 1}" if skip else ""
            if main:
                print(f"{desc}: resuming after epoch {start}{where} from {ckpt_path}", file=sys.stderr)
        elif main:
            print(f"{desc}: ignoring {ckpt_path} (written for other settings)", file=sys.stderr)
    distributed.broadcast_state(model)  # one starting point, whatever each rank's init drew

    def save(epoch_done: int, step_done: int = 0, totals: dict | None = None) -> None:
        if main:
            checkpoint.save({
                "model": model.state_dict(),
                "optimizer": opt.state_dict(),
                "scheduler": lr_sched.state_dict(),
                "rng": _rng_state(),
                "epoch": epoch_done,  # finished epochs
                "step": step_done,  # finished steps of the next epoch (preemption only)
                "totals": totals,
                "fingerprint": fingerprint,
                "history": json.dumps(history),
            }, ckpt_path)

    def preempted(where: str) -> Preempted:
        distributed.barrier()  # rank 0's checkpoint is complete before any process exits
        return Preempted(ckpt_path, where)

    tty = sys.stderr.isatty()
    with _sigterm_flag() as term:
        for epoch in range(start, sched["epochs"]):
            model.train()
            step.begin_epoch(epoch)  # e.g. AWP switches on after its warm-up epochs
            totals = _Totals(device, partial)  # a resumed epoch adds the totals it had before
            seconds_before = (partial or {}).get("seconds", 0.0)
            t0 = time.time()
            batches = _epoch_from(loader, epoch, skip)
            bar = tqdm(batches, total=len(loader), initial=skip, desc=f"{desc} epoch {epoch + 1}/{sched['epochs']}",
                       leave=tty, mininterval=0.5 if tty else 30, file=sys.stderr, disable=not main)
            checked = skip  # steps whose totals were read and found finite
            for i, (x, y, q) in enumerate(bar, start=skip):
                if channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                with runtime.autocast(device, precision):
                    loss, logits, stats = step(net, x, y, q)
                totals.add(loss, logits, y, stats)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                if world > 1:
                    a, b = loader.bounds[i]  # the global batch: gradients are its example-weighted mean
                    distributed.average_gradients(model, len(y), b - a)
                    distributed.average_buffers(model)  # BN running stats: identical everywhere
                opt.step()
                step.after_update(model)  # e.g. AWP removes its weight perturbation
                # One process sees SIGTERM at the very next step. Several stop after the same
                # step, agreed at a sync point (torchrun and Slurm signal the processes at
                # slightly different moments).
                stop = world == 1 and term["set"]
                if stop or (i + 1) % SYNC_EVERY == 0 or i + 1 == len(loader):
                    summed, votes = totals.read(world, term["set"])
                    _check_finite(summed, desc, epoch, checked, i, ckpt_path)
                    checked, stop = i + 1, stop or votes > 0
                    bar.set_postfix(loss=f"{summed['loss'] / summed['n']:.4f}",
                                    acc=f"{summed['correct'] / summed['n']:.3f}", refresh=False)
                if stop and i + 1 < len(loader):
                    bar.close()
                    save(epoch, i + 1, {**summed, "seconds": seconds_before + time.time() - t0})
                    raise preempted(f"at epoch {epoch + 1}, step {i + 1}")
            bar.close()
            summed, _ = totals.read(world, False)
            _check_finite(summed, desc, epoch, checked, len(loader) - 1, ckpt_path)
            skip, partial = 0, None
            lr = opt.param_groups[0]["lr"]
            lr_sched.step()
            n = max(summed["n"], 1)
            record = {
                "epoch": epoch + 1,
                "lr": lr,
                "precision": precision,  # what this epoch ran in (a resumed run may change device)
                "train_loss": summed["loss"] / n,
                "train_accuracy": summed["correct"] / n,
                **{f"train_{k}": summed[k] / n for k in totals.keys},
                "seconds": seconds_before + time.time() - t0,
            }
            if evaluate is not None:
                record.update(evaluate(model))
            history.append(record)
            save(epoch + 1)
            if main:
                if log_path is not None:
                    with open(log_path, "a") as f:
                        f.write(json.dumps(record) + "\n")
                print(f"{desc}: " + ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                              for k, v in record.items()), file=sys.stderr)
            # SIGTERM in the epoch's last step or its evaluation: the epoch's checkpoint is written.
            if epoch + 1 < sched["epochs"] and distributed.all_reduce_sum([float(term["set"])], device)[0]:
                raise preempted(f"after epoch {epoch + 1}")
    return history


class _Totals:
    """An epoch's running sums on the device: loss x n, correct predictions, n, and each
    of the step's statistics x n (float64). ``read`` is the only host synchronisation."""

    def __init__(self, device: torch.device, restored: dict | None = None):
        self.device, self.restored = device, restored or {}
        self.keys: list[str] = []
        self.sums: torch.Tensor | None = None

    def add(self, loss: torch.Tensor, logits: torch.Tensor, y: torch.Tensor, stats: dict) -> None:
        n = len(y)
        if self.sums is None:
            self.keys = [k for k in stats if k != "loss"]
            self.sums = torch.zeros(3 + len(self.keys), dtype=torch.float64, device=self.device)
        self.sums += torch.stack([loss.detach().double() * n, (logits.argmax(1) == y).sum().double(),
                                  # full, not tensor: a fill kernel, no copy of host data (no sync)
                                  torch.full((), float(n), dtype=torch.float64, device=self.device),
                                  *(stats[k].double() * n for k in self.keys)])

    def read(self, world: int, stop: bool) -> tuple[dict, float]:
        """The totals summed over processes (plus what a resumed epoch had before), and
        how many processes got SIGTERM."""
        names = ["loss", "correct", "n", *self.keys]
        local = ([] if self.sums is None else self.sums.tolist()) or [0.0] * len(names)
        values = local + [float(stop)]
        if world > 1:
            values = distributed.all_reduce_sum(values, self.device)
        summed = {k: v + self.restored.get(k, 0.0) for k, v in zip(names, values)}
        return summed, values[-1]


def _check_finite(summed: dict, desc: str, epoch: int, checked: int, i: int, ckpt_path: Path) -> None:
    if not all(math.isfinite(v) for v in summed.values()):
        raise NonFiniteLoss(
            f"{desc}: loss is {summed['loss'] / max(summed['n'], 1)} at epoch {epoch + 1}, within steps "
            f"{checked + 1}-{i + 1}; the last good checkpoint is kept in {ckpt_path}")
