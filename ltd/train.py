"""The one training loop, for teachers, substitutes and students alike.

What differs between roles is the step (ltd/steps.py, chosen by ltd/methods.py). The
loop owns the optimiser (SGD, Nesterov, piecewise-constant LR as in the paper's
Appendix A), mixed precision (bf16, or fp16 with torch.amp's GradScaler), a progress
bar, TensorBoard event files, a NaN guard, the stalled-attack alarm, and a checkpoint
written atomically at the end of every epoch with optimiser, scheduler, loss-scaler and
RNG state, from which it resumes.

No host synchronisation per step (the airbench habit): the running totals (loss,
correct predictions, the step's own statistics) stay on the device and the host reads
them every ``SYNC_EVERY`` steps and at the end of the epoch, for the progress bar and
the NaN guard. A non-finite loss is therefore caught up to ``SYNC_EVERY`` steps late;
the checkpoint on disk is always one whose totals were checked. (Under fp16 the
GradScaler itself reads its inf check on the host once per step, as torch.amp does.)

fp16: a step whose gradients are not finite is skipped by the GradScaler (its weights
stay; the scale halves), as AMP is designed to, and the run goes on; such a step's
loss, often inf itself, is left out of the epoch's means and counted
(``train_skipped_steps``). The NaN guard stops a run where AMP could not recover: a
non-finite loss whose update was *not* skipped (bf16 and fp32 have no scaler: every
non-finite loss), or a non-finite loss at every step since the last sync point (the
forward itself overflows: no loss scale helps).

Stalled attacks: steps with a training attack report the mean fraction of pixels their
attack moved from its random start (``train_moved``) and the fraction of examples whose
attack stalled, moving fewer than ``ltd.attacks.STALLED_BELOW`` (half) of its pixels
(``train_stalled``: fp16 underflow is usually partial, a few pixels keep a representable
gradient and move while the rest stay). An epoch where at least ``stalled_attacks.warn``
of them stalled warns loudly in the job's log (the run has become natural training: in
fp16, the input gradient underflowed to zero); ``stalled_attacks.stop`` stops it with
``StalledAttacks`` after the epoch's checkpoint.

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

from . import checkpoint, distributed, runtime, schema
from .attacks import STALLED_BELOW
from .board import Board
from .steps import Step

# Steps between two reads of the device's running totals (bar, NaN guard, TensorBoard's
# running values; under torch.distributed also the SIGTERM vote). A read stalls the GPU's
# queue: rarely.
SYNC_EVERY = 25


class NonFiniteLoss(RuntimeError):
    pass


class StalledAttacks(RuntimeError):
    """``train.stalled_attacks.stop`` of an epoch's training attacks stalled (moved fewer
    than ``ltd.attacks.STALLED_BELOW`` of their pixels)."""


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
    board_dir: str | Path | None = None,
    best: tuple[str, str | Path] | None = None,
) -> list[dict]:
    """Train for ``sched['epochs']`` epochs, resuming from ``ckpt_path`` if it holds a
    checkpoint of the same ``fingerprint`` (a hash of everything that defines the run;
    a stale checkpoint from other settings is ignored, never silently continued).

    ``loader``: ``len(loader)`` batches per epoch, ``loader.epoch(e)`` yields (x, y, q),
    deterministic in (seed, e) — under torch.distributed this process's slice of each
    global batch, whose bounds are ``loader.bounds``. ``precision``: "fp32", or "bf16" /
    "fp16" for autocast (fp16 with a GradScaler; the caller decides what the device runs:
    ``runtime.effective_precision``). ``evaluate`` runs in every process (it may shard and
    all-reduce). ``board_dir``: TensorBoard event files (rank 0), per epoch and the running
    values at each sync point, on the axis of optimiser steps. ``best``: (a key of
    ``evaluate``'s record, a path): the weights of the epoch where that value was highest
    are kept there (the first such epoch). Returns the per-epoch history (also appended as
    JSON lines to ``log_path``). Raises ``Preempted`` after SIGTERM, ``NonFiniteLoss`` on a
    NaN/inf loss AMP would not recover from, ``StalledAttacks`` (``sched['stalled_attacks']``).
    """
    sched = {**schema.train_defaults(), **sched}  # the schema's defaults under a schedule written by hand
    loop = _Loop(model, step, loader, sched, ckpt_path=Path(ckpt_path), device=device, precision=precision,
                 fingerprint=fingerprint, desc=desc, best=best)
    loop.resume()
    # TensorBoard: a resumed run rewrites the steps after its checkpoint; events an earlier
    # attempt logged from there on are purged (all of them for a fresh start).
    board = Board(board_dir, purge_step=loop.start * loop.steps_per_epoch + loop.skip + 1,
                  enabled=loop.main and board_dir is not None)
    with board, _sigterm_flag() as term:
        for epoch in range(loop.start, sched["epochs"]):
            summed, means, seconds = loop.train_epoch(epoch, term, board)
            record = loop.epoch_record(epoch, summed, means, seconds, evaluate)
            loop.keep_best(record)  # before the checkpoint that counts this epoch
            loop.save(epoch + 1)
            loop.publish(record, log_path, board)
            _stalled_alarm(record, loop.alarm, desc, loop.ckpt_path, loop.main, board)
            # SIGTERM in the epoch's last step or its evaluation: the epoch's checkpoint is written.
            if epoch + 1 < sched["epochs"] and distributed.all_reduce_sum([float(term["set"])], device)[0]:
                raise loop.preempted(f"after epoch {epoch + 1}")
    return loop.history


class _Loop:
    """What ``fit`` carries from step to step: the model (and ``net``, what the step
    calls: compiled or not), optimiser, scheduler, loss scaler, history and the point to
    resume from. Its methods are fit's named steps: resume, one epoch, its record, the
    best weights, the checkpoint, the log."""

    def __init__(self, model, step, loader, sched, *, ckpt_path: Path, device, precision, fingerprint, desc, best):
        self.model, self.step, self.loader, self.sched = model, step, loader, sched
        self.ckpt_path, self.device, self.precision = ckpt_path, device, precision
        self.fingerprint, self.desc = fingerprint, desc
        self.world, self.main = distributed.world_size(), distributed.is_main()
        self.net, self.channels_last = _speed_switches(model, step, sched, device, desc)
        self.opt, self.lr_sched = make_optimizer(model, sched)
        self.scaler = runtime.grad_scaler(device, precision)
        self.alarm = sched["stalled_attacks"]
        self.history: list[dict] = []
        self.start, self.skip, self.partial = 0, 0, None
        self.steps_per_epoch = len(loader)
        self.best_key, self.best_path = best if best else (None, None)
        self.best_value = None

    def resume(self) -> None:
        """From the checkpoint, if it holds one of the same fingerprint (every process
        loads rank 0's); then one starting point for all processes."""
        state = self._readable_checkpoint()
        if state is not None and state.get("fingerprint") == self.fingerprint:
            self.model.load_state_dict(state["model"])
            self.opt.load_state_dict(state["optimizer"])
            self.lr_sched.load_state_dict(state["scheduler"])
            if state.get("scaler") and self.scaler.is_enabled():  # fp16: the loss scale it had reached
                self.scaler.load_state_dict(state["scaler"])
            _set_rng_state(state["rng"])
            self.history = json.loads(state["history"])
            self.start, self.skip, self.partial = state["epoch"], state.get("step", 0), state.get("totals")
            where = f", step {self.skip} of epoch {self.start + 1}" if self.skip else ""
            if self.main:
                print(f"{self.desc}: resuming after epoch {self.start}{where} from {self.ckpt_path}",
                      file=sys.stderr)
        elif state is not None and self.main:
            print(f"{self.desc}: ignoring {self.ckpt_path} (written for other settings)", file=sys.stderr)
        distributed.broadcast_state(self.model)  # one starting point, whatever each rank's init drew
        if self.best_key is not None:
            self.best_value = max((r[self.best_key] for r in self.history if self.best_key in r), default=None)
            if self.best_value is not None and not Path(self.best_path).exists():
                self.best_value = None  # its file is gone: the next epoch's weights are kept instead

    def _readable_checkpoint(self) -> dict | None:
        """The checkpoint's contents; None where there is none, or where it cannot be read
        (truncated by a disk fault or a copy cut short): rank 0 then moves it aside
        (checkpoint.pt.corrupt: nothing is deleted) and says so, and the run starts again
        from its first epoch, where a retry would otherwise fail the same way each time.
        Every process reads the same bytes, so all of them start again alike."""
        try:
            return checkpoint.load(self.ckpt_path, map_location=self.device)
        except FileNotFoundError:  # none (or rank 0 has just moved an unreadable one aside)
            return None
        except checkpoint.UnreadableFile as e:
            if self.main:
                aside = checkpoint.set_aside(self.ckpt_path)
                print(f"{self.desc}: WARNING: {e}. Moved it to {aside}; training starts again from epoch 1.",
                      file=sys.stderr, flush=True)
            return None

    def save(self, epoch_done: int, step_done: int = 0, totals: dict | None = None) -> None:
        if self.main:
            checkpoint.save({
                "model": self.model.state_dict(),
                "optimizer": self.opt.state_dict(),
                "scheduler": self.lr_sched.state_dict(),
                "scaler": self.scaler.state_dict(),  # {} unless fp16
                "rng": _rng_state(),
                "epoch": epoch_done,  # finished epochs
                "step": step_done,  # finished steps of the next epoch (preemption only)
                "totals": totals,
                "fingerprint": self.fingerprint,
                "history": json.dumps(self.history),
            }, self.ckpt_path)

    def preempted(self, where: str) -> Preempted:
        distributed.barrier()  # rank 0's checkpoint is complete before any process exits
        return Preempted(self.ckpt_path, where)

    def train_epoch(self, epoch: int, term: dict, board: Board) -> tuple[dict, dict, float]:
        """One epoch's steps (the rest of it, when resumed mid-epoch): the totals summed
        over processes, their per-example means, and its seconds. Raises ``Preempted`` (checkpoint written) after a
        SIGTERM, at the next step agreed on."""
        self.model.train()
        self.step.begin_epoch(epoch)  # e.g. AWP switches on after its warm-up epochs
        totals = Totals(self.device, self.partial)  # a resumed epoch adds the totals it had before
        seconds_before = (self.partial or {}).get("seconds", 0.0)
        t0 = time.time()
        tty = sys.stderr.isatty()
        bar = tqdm(_epoch_from(self.loader, epoch, self.skip), total=self.steps_per_epoch, initial=self.skip,
                   desc=f"{self.desc} epoch {epoch + 1}/{self.sched['epochs']}", leave=tty,
                   mininterval=0.5 if tty else 30, file=sys.stderr, disable=not self.main)
        checked, seen = self.skip, dict(self.partial or {})  # steps whose totals were read and found finite
        for i, (x, y, q) in enumerate(bar, start=self.skip):
            self.one_step(i, x, y, q, totals)
            # One process sees SIGTERM at the very next step. Several stop after the same
            # step, agreed at a sync point (torchrun and Slurm signal the processes at
            # slightly different moments).
            stop = self.world == 1 and term["set"]
            if stop or (i + 1) % SYNC_EVERY == 0 or i + 1 == self.steps_per_epoch:
                summed, votes = totals.read(self.world, term["set"])
                _check_finite(summed, seen, self.world, self.desc, epoch, checked, i, self.ckpt_path)
                checked, seen, stop = i + 1, summed, stop or votes > 0
                running = totals.means(summed)
                bar.set_postfix(loss=f"{running['loss']:.4f}", acc=f"{running['accuracy']:.3f}", refresh=False,
                                **({"stalled": f"{running['stalled']:.2f}"} if "stalled" in running else {}))
                board.scalars("running", running, epoch * self.steps_per_epoch + i + 1)
            if stop and i + 1 < self.steps_per_epoch:
                bar.close()
                self.save(epoch, i + 1, {**summed, "seconds": seconds_before + time.time() - t0})
                raise self.preempted(f"at epoch {epoch + 1}, step {i + 1}")
        bar.close()
        summed, _ = totals.read(self.world, False)
        _check_finite(summed, seen, self.world, self.desc, epoch, checked, self.steps_per_epoch - 1, self.ckpt_path)
        self.skip, self.partial = 0, None
        return summed, totals.means(summed), seconds_before + time.time() - t0

    def one_step(self, i: int, x, y, q, totals: "Totals") -> None:
        """Step ``i``: the method's loss under autocast, backward (scaled in fp16), the
        global batch's mean gradient, the optimiser step (the scaler skips a non-finite
        one), the method's after-update hook; its numbers added to ``totals``."""
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with runtime.autocast(self.device, self.precision):
            loss, logits, stats = self.step(self.net, x, y, q)
        self.opt.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()  # fp16: the scaled loss; otherwise the loss itself
        if self.world > 1:
            a, b = self.loader.bounds[i]  # the global batch: gradients are its example-weighted mean
            distributed.average_gradients(self.model, len(y), b - a)
            distributed.average_buffers(self.model)  # BN running stats: identical everywhere
        before = runtime.scale_tensor(self.scaler)
        before = None if before is None else before.clone()  # update() changes it in place
        self.scaler.step(self.opt)  # fp16: skipped if a gradient is inf/nan (then the scale halves)
        self.scaler.update()
        self.step.after_update(self.model)  # e.g. AWP removes its weight perturbation
        skipped = None if before is None else runtime.scale_tensor(self.scaler) < before
        totals.add(loss, logits, y, stats, skipped)

    def epoch_record(self, epoch: int, summed: dict, means: dict, seconds: float, evaluate) -> dict:
        """The epoch's history record (its learning rate, then the scheduler steps),
        with ``evaluate``'s numbers."""
        lr = self.opt.param_groups[0]["lr"]
        self.lr_sched.step()
        record = {
            "epoch": epoch + 1,
            "lr": lr,
            "precision": self.precision,  # what this epoch ran in (a resumed run may change device)
            **{f"train_{k}": v for k, v in means.items()},
            "seconds": seconds,
        }
        if self.scaler.is_enabled():
            record["train_skipped_steps"] = int(summed["skipped"])
            record["loss_scale"] = self.scaler.get_scale()  # once an epoch: a host read, like the totals'
        if evaluate is not None:
            record.update(evaluate(self.model))
        self.history.append(record)
        return record

    def keep_best(self, record: dict) -> None:
        """The weights of the epoch with the highest ``best`` value so far (the first such)."""
        key = self.best_key
        if key is not None and self.main and key in record and (self.best_value is None
                                                                or record[key] > self.best_value):
            self.best_value = record[key]
            checkpoint.save(self.model.state_dict(), self.best_path)

    def publish(self, record: dict, log_path, board: Board) -> None:
        """The record in history.jsonl, the job's log and TensorBoard (rank 0)."""
        if not self.main:
            return
        if log_path is not None:
            with open(log_path, "a") as f:
                f.write(json.dumps(record) + "\n")
        print(f"{self.desc}: " + ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                           for k, v in record.items()), file=sys.stderr)
        board.scalars("epoch", {k: v for k, v in record.items() if k != "epoch"}, record["epoch"] * self.steps_per_epoch)
        board.flush()


def _speed_switches(model, step, sched: dict, device, desc: str):
    """(what the step calls, channels_last): GPU speed switches (schedule keys, not part of
    a run's identity). channels_last suits cuDNN's convolutions under bf16 and fp16;
    torch.compile is opt-in (measure first)."""
    model.to(device)
    channels_last = device.type == "cuda" and sched["channels_last"]
    if channels_last:
        model.to(memory_format=torch.channels_last)
    net = model
    if sched["compile"]:
        if step.supports_compile:
            net = torch.compile(model)
        else:
            print(f"{desc}: train.compile ignored: {type(step).__name__} copies the model", file=sys.stderr)
    return net, channels_last


def _stalled_alarm(record: dict, alarm: dict, desc: str, ckpt_path: Path, main: bool, board: Board) -> None:
    """Warn loudly (and with ``alarm['stop']`` stop) when an epoch's training attacks stalled."""
    stalled = record.get("train_stalled")
    if stalled is None:
        return  # no training attack (teachers, substitutes)
    warn, stop = alarm.get("warn"), alarm.get("stop")
    stopping = stop is not None and stalled >= stop
    if not stopping and (warn is None or stalled < warn):
        return
    moved = record.get("train_moved")
    what = (f"{100 * stalled:.1f} % of epoch {record['epoch']}'s training attacks stalled, moving fewer than "
            f"{100 * STALLED_BELOW:.0f} % of their pixels from the random start"
            + ("" if moved is None else f"; an attack moved {100 * moved:.1f} % of the pixels on average")
            + f" (input gradient exactly zero at every attack step on most pixels; robust accuracy on x' in "
            f"training {100 * record.get('train_adv_accuracy', float('nan')):.1f} %): this run is training "
            f"naturally, not adversarially")
    why = ("in fp16 a small input gradient underflows to zero (students of nearly uniform soft labels, high T, "
           "have small logits); bf16 has fp32's range" if record.get("precision") in runtime.FP16_RANGE else
           "the model's outputs do not depend on its input near x (saturated or constant outputs)")
    if record.get("precision") == runtime.EMULATED:
        why += " (here fp16 EMULATED: CUDA's fp16 rounding in fp32 arithmetic, ltd/fp16_emulation.py)"
    bar = "!" * 100
    if main:
        print(f"\n{bar}\nWARNING {desc}: {what}.\nLikely cause: {why}.\n{bar}", file=sys.stderr, flush=True)
        board.text("alarm/stalled_attacks", f"epoch {record['epoch']}: {what}", record["epoch"])
    if stopping:
        raise StalledAttacks(f"{desc}: {what}; stopped by train.stalled_attacks.stop = {stop}. The checkpoint of "
                             f"epoch {record['epoch']} is kept in {ckpt_path}: to train on, set stop: null; to "
                             "let the attack move, train in bf16 or fp32 (precision:)")


class Totals:
    """An epoch's running sums on the device: loss x n, correct predictions, n, and each
    of the step's statistics x n (float64), over the steps whose loss is finite; and
    three step counts: skipped by the GradScaler, non-finite loss but not skipped, non-finite
    loss. ``read`` is the only host synchronisation."""

    COUNTS = ("skipped", "nonfinite_applied", "nonfinite")

    def __init__(self, device: torch.device, restored: dict | None = None):
        self.device, self.restored = device, restored or {}
        self.keys: list[str] = []
        self.sums: torch.Tensor | None = None
        self._no = torch.zeros((), dtype=torch.bool, device=device)

    def add(self, loss: torch.Tensor, logits: torch.Tensor, y: torch.Tensor, stats: dict,
            skipped: torch.Tensor | None = None) -> None:
        """``skipped``: whether the GradScaler skipped this step's update (None: no scaler)."""
        n = len(y)
        if self.sums is None:
            self.keys = [k for k in stats if k != "loss"]
            self.sums = torch.zeros(3 + len(self.keys) + len(self.COUNTS), dtype=torch.float64, device=self.device)
        finite = torch.isfinite(loss.detach())
        skipped = self._no if skipped is None else skipped
        sums = torch.stack([loss.detach().double() * n, (logits.argmax(1) == y).sum().double(),
                            # full, not tensor: a fill kernel, no copy of host data (no sync)
                            torch.full((), float(n), dtype=torch.float64, device=self.device),
                            *(stats[k].double() * n for k in self.keys)])
        counts = torch.stack([skipped, ~finite & ~skipped, ~finite]).double()
        self.sums += torch.cat([torch.where(finite, sums, 0.0), counts])

    def read(self, world: int, stop: bool) -> tuple[dict, float]:
        """The totals summed over processes (plus what a resumed epoch had before), and
        how many processes got SIGTERM."""
        names = ["loss", "correct", "n", *self.keys, *self.COUNTS]
        local = ([] if self.sums is None else self.sums.tolist()) or [0.0] * len(names)
        values = local + [float(stop)]
        if world > 1:
            values = distributed.all_reduce_sum(values, self.device)
        summed = {k: v + self.restored.get(k, 0.0) for k, v in zip(names, values)}
        return summed, values[-1]

    def means(self, summed: dict) -> dict:
        """Per-example means of what ``read`` gave: loss, accuracy and the step's statistics."""
        n = max(summed["n"], 1)
        return {"loss": summed["loss"] / n, "accuracy": summed["correct"] / n, **{k: summed[k] / n for k in self.keys}}


def _check_finite(summed: dict, before: dict, world: int, desc: str, epoch: int, checked: int, i: int,
                  ckpt_path: Path) -> None:
    """The NaN guard over steps ``checked + 1`` to ``i + 1`` (``before``: the totals read at
    the last sync point; counts are summed over the ``world`` processes): a non-finite loss
    the update went ahead with, or one at every step (see the module's docstring)."""
    new_bad = summed["nonfinite"] - before.get("nonfinite", 0.0)
    every_step = new_bad >= (i + 1 - checked) * world > 0
    if summed["nonfinite_applied"] > 0 or every_step or not all(math.isfinite(v) for v in summed.values()):
        skipped = summed["skipped"] - before.get("skipped", 0.0)
        amp = f" (the loss scaler skipped {skipped:.0f} of them)" if skipped else ""
        raise NonFiniteLoss(
            f"{desc}: loss is nan or inf at epoch {epoch + 1}, within steps {checked + 1}-{i + 1}: "
            f"{new_bad:.0f} non-finite{amp}; the last good checkpoint is kept in {ckpt_path}")
