"""One prepared check of a GPU machine: the CUDA tests, what a training step and an
AutoAttack evaluation cost (today's code against the faster options), and what a paper
run would take, in about 6 minutes on one H100.

    python3 benchmarks/gpu_check.py --out $OUT/gpu_check     # on a bare CUDA machine (make gpu-check)
    python3 benchmarks/gpu_check.py --dry --out /tmp/check   # every part on the CPU, tiny model (CI)

Needs torch, numpy, tqdm, pyyaml, tabulate, pytest and pyautoattack; not Snakemake and
no internet (docs/performance.md: how to carry pyautoattack as a wheel). The ``ltd``
package is imported from this checkout.

Parts, in the order they run. Each one prints its result as soon as it has it and writes
``<out>/<part>.json``; a part whose JSON says "ok" is skipped on a rerun unless
``--force`` (errors, time-outs, skips and --dry results are redone), so a machine that stops early
still returns the finished parts. A part that cannot have the seconds it needs within
``--time-limit`` is skipped and says so (rerun it with ``--parts``). ``<out>/summary.json``
and a table come last, with the issue's targets as measured ratios (never asserted).

1. ``tests``: ``pytest -m cuda tests/test_cuda.py`` in a subprocess: passed, failed, skipped.
2. ``train``: WRN-34-10 TRADES+LTD and AWP+LTD (AWP on) at batch 128, the config's precision
   (fp16 autocast with its loss scaler),
   channels_last, eager, driven as ``ltd.train.fit`` drives them, fed by the on-device
   loader (``ltd.data.DeviceLoader``, crop + flip, 50,000 CIFAR-shaped images) and
   counted by its running totals: **today** (the loader and totals of commit 66318eb,
   re-created here: crop/flip parameters drawn on the host and copied per batch, n
   copied per step) against **no_syncs** (today's library): images/s, host syncs per
   step (``torch.cuda.set_sync_debug_mode``; also counted on the ``meta`` device by
   ``ltd.host_syncs``), MFU against the card's dense bf16 peak; WRN-34-10's eval-mode
   forward and forward + input-gradient rates in fp32 and TF32, hence the per-epoch
   monitors (clean test pass, PGD-10) in fp32 (today) and TF32 (now); the projected
   hours of a 120-epoch CIFAR-10 run either way.
3. ``compile_attack`` (a child process with a time limit): the same loop with
   ``train.compile_attack`` (``ltd.compiled.AttackForward``, inductor) against eager:
   compile seconds, images/s, the first loss and x' against eager's; the ratio to
   ``train``'s today. If time is left: AWP+LTD the same way, and the frozen evaluated
   model compiled (evaluation.compile) forward + input-gradient rates.
4. ``autoattack``: AutoAttack standard (``ltd.autoattack.run_autoattack``) on
   ``ltd.known_answer``'s model and data (robust flags known: 85 % clean, 57 % robust)
   in fp32, pytorch_default (TF32 convolutions), tf32 and pytorch_default with the
   model in channels_last: flags equal to the known answer, seconds per attack;
   WRN-34-10's forward and forward + input-gradient rates in each, and the projected
   hours for 10,000 images (rates x ``ltd.budget.autoattack_plan`` x fractions attacked).
5. ``jobs_per_gpu``: k = 1, 2, 3 processes on the one GPU (under CUDA MPS for k > 1
   where ``nvidia-cuda-mps-control -d`` starts, else without), each timing the TRADES+LTD
   step over the same window: aggregate images/s, and each k's ratio to k = 1 (what
   ``budget.jobs_per_gpu_throughput`` takes).
6. ``natural``: the natural (teacher) step, and the on-device loader alone: images/s.
7. ``compile`` (not run unless named in ``--parts``; measured 2026-11-26: 0.95x eager):
   the TRADES+LTD step under ``torch.compile(model)``, in a child process.

Every part records its peak GPU memory (``torch.cuda.max_memory_allocated``, reset per
part and per measurement).
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
import xml.etree.ElementTree as ET
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))

from benchmarks.train_step import device_peak_tflops  # noqa: E402
from ltd import budget, data, flops, methods, runtime, steps  # noqa: E402
from ltd import config as ltd_config  # noqa: E402
from ltd import experiments as ex  # noqa: E402
from ltd.autoattack import run_autoattack  # noqa: E402
from ltd.compiled import AttackForward  # noqa: E402
from ltd.evaluate import evaluation_model, fp32_precision  # noqa: E402
from ltd.files import load_json, save_json  # noqa: E402
from ltd.host_syncs import HostSyncs  # noqa: E402
from ltd.known_answer import MeanIntensityNet, known_answer_data  # noqa: E402
from ltd.models import build_model  # noqa: E402
from ltd.steps import trades_adversarial  # noqa: E402
from ltd.train import _Totals, make_optimizer  # noqa: E402

PARTS = ("tests", "train", "compile_attack", "autoattack", "jobs_per_gpu", "natural", "compile")
DEFAULT_PARTS = PARTS[:-1]
CHILD_PARTS = ("compile_attack", "compile")  # run in a child process with a time limit
# Seconds a part needs on one H100 at least (measured or estimated): one that cannot have
# them within --time-limit is skipped, and says so, rather than cut off half-way.
NEEDS = {"tests": 90, "train": 45, "compile_attack": 70, "autoattack": 50, "jobs_per_gpu": 60, "natural": 6,
         "compile": 60}
DATASET = "cifar10"
CLASSES = 10
TARGETS = {"training step": 1.25, "AutoAttack": 1.3}  # the issue's, printed as measured ratios (never asserted)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="results/gpu_check", help="folder of the part JSONs and summary.json")
    p.add_argument("--dry", action="store_true", help="every part on the CPU with a tiny model (tests the script)")
    p.add_argument("--force", action="store_true", help="rerun parts whose JSON says ok")
    p.add_argument("--parts", nargs="+", default=list(DEFAULT_PARTS), choices=PARTS)
    p.add_argument("--time-limit", type=float, default=345.0,
                   help="seconds for the whole check (default 5 min 45 s)")
    p.add_argument("--compile-timeout", type=float, default=150.0, help="at most this for a compile part")
    p.add_argument("--tests-timeout", type=float, default=150.0)
    p.add_argument("--steps", type=int, default=None, help="timed training steps per variant (default 12; dry 2)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 3; dry 1)")
    p.add_argument("--aa-n", type=int, default=None, help="AutoAttack images (default 500; dry 12)")
    p.add_argument("--window", type=float, default=None, help="seconds each jobs_per_gpu worker is timed (6; dry 1)")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)  # a compile part's own process
    p.add_argument("--deadline", type=float, default=None, help=argparse.SUPPRESS)  # the child's, time.time()
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)  # a jobs_per_gpu worker's folder
    return p.parse_args(argv)


class Context:
    """What every part needs: device, sizes, the paper config's settings."""

    def __init__(self, args: argparse.Namespace):
        self.args, self.dry = args, args.dry
        self.start = time.time()
        self.out = Path(args.out)
        self.config = ltd_config.load(validate=False)  # config/config.yaml, the paper's settings
        self.sched = ex.schedule(self.config, "students", DATASET)
        self.teacher_sched = ex.schedule(self.config, "teachers", DATASET)
        self.evaluation = ex.evaluation(self.config, DATASET)
        self.cuda = torch.cuda.is_available() and not self.dry
        if self.dry:  # the script's own test: tiny model, tiny batch, a few images
            self.device = runtime.setup("cpu", threads=1)
            self.arch, self.image_size, self.batch, self.eval_batch = "wrn-10-1", 16, 8, 8
            self.steps, self.warmup = args.steps or 2, args.warmup or 1
            self.aa_n, self.square_queries, self.loader_images = args.aa_n or 12, 100, 64
            self.window, self.ks, self.backend = args.window or 1.0, (1, 2), "aot_eager"  # no C++ codegen on CI
        else:
            self.device = runtime.setup("cuda") if self.cuda else torch.device("cpu")  # TF32 off, as a job
            self.arch, self.image_size = "wrn-34-10", 32
            self.batch, self.eval_batch = int(self.sched["batch_size"]), int(self.evaluation["batch_size"])
            self.steps, self.warmup = args.steps or 12, args.warmup or 3
            # Square's queries on the known-answer model: they change no flag there (APGD finds
            # every break) and cost most of its seconds; the projection prices the standard 5,000
            self.aa_n, self.square_queries, self.loader_images = args.aa_n or 500, 1000, 50_000
            self.window, self.ks, self.backend = args.window or 6.0, (1, 2, 3), "inductor"
        # evaluation precisions and layouts AutoAttack is measured in (TF32 exists on CUDA only):
        # (precision, channels_last, run it on the known-answer model). tf32's flags: the tests part
        # (tests/test_cuda.py), its fractions attacked: fp32's (the flags are the same); --dry:
        # channels_last's flags are tests/test_evaluation.py's
        self.eval_variants = ([("fp32", False, True), ("pytorch_default", False, True), ("pytorch_default", True, True),
                               ("tf32", False, False)]
                              if self.device.type == "cuda" else [("fp32", False, True), ("fp32", True, False)])
        self.aa_batch = int(self.evaluation["batch_size"])  # AutoAttack's batch, as the evaluate rule
        self.precision = str(self.sched["precision"])  # fp16: what config.yaml trains in on a GPU (--dry: on the CPU)
        self.channels_last = bool(self.sched.get("channels_last", True))
        self.fwd_flops = flops.model_forward_flops(self.arch, self.image_size, CLASSES)  # counted, meta device
        self.peak_label, self.bf16_peak = device_peak_tflops(self.device, "bf16")
        self.fp32_peak = device_peak_tflops(self.device, "fp32")[1]
        # TF32 peak: the config's budget value, stated for an H100/H200 (same dense TF32 peak)
        self.tf32_peak = (float(self.config["budget"]["tf32_peak_tflops"])
                          if self.peak_label in ("H100 SXM", "H200") else None)
        self.train_images = budget.train_images(self.config, DATASET)
        self.test_images = budget.test_images(self.config, DATASET)
        self.attack = lambda method: ex.attack(self.config, DATASET, method) if methods.get(method).attack else None

    def elapsed(self) -> float:
        return time.time() - self.start

    def left(self) -> float:
        """Seconds left: of --time-limit, or of the deadline a child process was given."""
        if self.args.deadline is not None:
            return self.args.deadline - time.time()
        return self.args.time_limit - self.elapsed()

    def peak(self, precision: str) -> float | None:
        return {"fp32": self.fp32_peak, "pytorch_default": self.tf32_peak, "tf32": self.tf32_peak}[precision]


# ---- measuring ------------------------------------------------------------------------

def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_gib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


def timed(fn, n: int, device: torch.device) -> dict:
    """``n`` calls of ``fn`` back to back, without a host synchronisation in between (as
    the training loop runs): total wall seconds, and per-call seconds from CUDA events
    (the CPU: wall clock per call)."""
    sync(device)
    t0 = time.perf_counter()
    if device.type == "cuda":
        events = [torch.cuda.Event(enable_timing=True) for _ in range(n + 1)]
        events[0].record()
        for i in range(n):
            fn()
            events[i + 1].record()
        sync(device)
        per_call = [events[i].elapsed_time(events[i + 1]) / 1000 for i in range(n)]
    else:
        per_call = []
        for _ in range(n):
            t = time.perf_counter()
            fn()
            per_call.append(time.perf_counter() - t)
    total = time.perf_counter() - t0
    return {"seconds": total, "per_call_seconds": per_call,
            "median_seconds": statistics.median(per_call) if per_call else None}


def cuda_syncs(fn) -> int | None:
    """Host synchronisations ``fn`` makes, as ``torch.cuda.set_sync_debug_mode`` reports them (CUDA only)."""
    if not torch.cuda.is_available() or not torch.cuda.is_initialized():
        return None
    previous = torch.cuda.get_sync_debug_mode()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode(1)  # warn
        try:
            fn()
        finally:
            torch.cuda.set_sync_debug_mode(previous)
    return sum("synchroniz" in str(w.message) for w in caught)


def synthetic_batch(ctx: Context, n: int, seed: int = 0):
    """CIFAR-shaped images with pixel values k/255, labels, stand-in soft labels."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (n, 3, ctx.image_size, ctx.image_size), generator=g).float().div_(255)
    y = torch.randint(0, CLASSES, (n,), generator=g)
    q = F.softmax(3 * torch.randn(n, CLASSES, generator=g), dim=1)
    return x, y, q


# ---- today's per-step host copies, re-created (commit 66318eb) -------------------------

class PerBatchDrawLoader(data.DeviceLoader):
    """The on-device loader as it was: each batch drew its crop/flip parameters on the
    host and ``_apply_crop_flip`` copied them to the device (three copies per batch, each
    a wait for the device). The same batches as ``DeviceLoader`` (tests/test_host_syncs.py)."""

    def epoch(self, epoch: int):
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        order = torch.randperm(len(self.split), generator=g).to(self.split.x.device)
        for start, stop in self.bounds:
            lo, hi = data._shard(start, stop, self.rank, self.world_size)
            idx = order[lo:hi]
            params = data._crop_flip_params(stop - start, self.padding, g)
            x = data._apply_crop_flip(self.split.x[idx], self.padding,
                                      *(p if p is None else p[lo - start:hi - start] for p in params))
            yield x, self.split.y[idx], None if self.q is None else self.q[idx]


class HostTensorTotals(_Totals):
    """The running totals as they were: n copied from the host to the device every step."""

    def add(self, loss, logits, y, stats) -> None:
        n = len(y)
        if self.sums is None:
            self.keys = [k for k in stats if k != "loss"]
            self.sums = torch.zeros(3 + len(self.keys), dtype=torch.float64, device=self.device)
        self.sums += torch.stack([loss.detach().double() * n, (logits.argmax(1) == y).sum().double(),
                                  torch.tensor(float(n), dtype=torch.float64, device=self.device),
                                  *(stats[k].double() * n for k in self.keys)])


# ---- training steps -------------------------------------------------------------------

def build(ctx: Context, method: str, device: torch.device, arch: str, compiled=None, seed: int = 0):
    """(model, step, optimiser) for ``method`` with the paper config's attack and AWP
    settings, AWP on (the last epoch's), from weights drawn with ``seed``."""
    m = methods.get(method)
    step = steps.build_step(method, beta=float(ctx.config["beta"]), attack=ctx.attack(method),
                              awp=ctx.config["awp"] if m.awp else None)
    step.begin_epoch(int(ctx.sched["epochs"]) - 1)
    step.compiled_attack = compiled
    torch.manual_seed(seed)
    model = build_model(arch, CLASSES)
    channels_last = ctx.channels_last and device.type == "cuda"  # as ltd.train.fit: on the GPU
    model.to(device, memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    opt, _ = make_optimizer(model, ctx.sched)
    return model, step, opt


def loop_runner(ctx: Context, method: str, *, today: bool, compiled=None, device=None, arch=None, batch=None,
                images=None, precision=None):
    """One training step per call as ltd.train.fit runs it per batch, fed by the on-device
    loader (epochs cycled) and counted by the running totals; ``today``: the loader and
    totals of commit 66318eb. Returns (step function, losses, step)."""
    device, arch = device or ctx.device, arch or ctx.arch
    batch, images, precision = batch or ctx.batch, images or ctx.loader_images, precision or ctx.precision
    model, step, opt = build(ctx, method, device, arch, compiled)
    x, y, q = synthetic_batch(ctx, images, seed=2)
    split = data.Split(x.to(device), y.to(device), None)
    padding = int(ex.dataset_cfg(ctx.config, DATASET).get("crop_padding", 4))
    loader = (PerBatchDrawLoader if today else data.DeviceLoader)(split, batch, q=q.to(device),
                                                                  crop_padding=padding, seed=0)
    totals = (HostTensorTotals if today else _Totals)(device)
    channels_last = ctx.channels_last and device.type == "cuda"

    def batches():
        epoch = 0
        while True:
            yield from loader.epoch(epoch)
            epoch += 1

    stream, losses = batches(), []
    scaler = runtime.grad_scaler(device, precision)  # fp16's loss scaler, as the loop's (else a pass-through)

    def one_step():  # ltd/train.py fit, per batch (one process)
        xb, yb, qb = next(stream)
        if channels_last:
            xb = xb.contiguous(memory_format=torch.channels_last)
        with runtime.autocast(device, precision):
            loss, logits, stats = step(model, xb, yb, qb)
        totals.add(loss, logits, yb, stats)
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        step.after_update(model)
        losses.append(loss.detach())

    one_step.model = model
    return one_step, losses, step


def meta_syncs(ctx: Context, method: str, today: bool, steps: int = 3) -> list[int]:
    """Host syncs per step of ``loop_runner`` on the ``meta`` device (ltd.host_syncs): the
    same count on any machine (the first step includes the epoch's one copy)."""
    run, _, _ = loop_runner(ctx, method, today=today, device=torch.device("meta"), arch="wrn-10-1", batch=8,
                            images=8 * steps, precision="fp32")
    counts = []
    for _ in range(steps):
        with HostSyncs() as s:
            run()
        counts.append(s.count)
    return counts


def time_variants(ctx: Context, runners: dict, rounds: int = 2) -> dict:
    """Wall seconds of ``ctx.steps`` steps of each runner, in ``rounds`` interleaved blocks
    (a, b, b, a, ...), with no sync inside a block (as the loop runs), so a host sync's
    stall is in the time."""
    block = max(1, ctx.steps // rounds)
    seconds = {name: 0.0 for name in runners}
    names = list(runners)
    for r in range(rounds):
        for name in (names if r % 2 == 0 else names[::-1]):
            seconds[name] += timed(lambda: [runners[name]() for _ in range(block)], 1, ctx.device)["seconds"]
    return {name: {"steps": block * rounds, "seconds": s, "images_per_s": ctx.batch * block * rounds / s}
            for name, s in seconds.items()}


def step_numbers(ctx: Context, method: str, images_per_s: float) -> dict:
    fe = methods.forward_equivalents(method, int(ctx.attack(method)["steps"]) if ctx.attack(method) else 0,
                                     awp_on=True)
    flop_per_s = fe * ctx.fwd_flops * images_per_s
    return {"images_per_s": images_per_s, "forward_equivalents": fe, "tflop_per_s": flop_per_s / 1e12,
            "mfu": flop_per_s / (ctx.bf16_peak * 1e12) if ctx.bf16_peak else None}


def training_step(ctx: Context, method: str, *, compile_backend: str | None = None) -> dict:
    """Time ``method``'s step on one fixed batch (ltd.steps.build_step with the paper
    config's attack and AWP settings, AWP on) driven as ltd.train.fit drives it: the step
    under autocast, zero_grad, backward, optimiser step, ``after_update``."""
    device = ctx.device
    reset_memory(device)
    model, step, opt = build(ctx, method, device, ctx.arch)
    net = model if compile_backend is None else torch.compile(model, backend=compile_backend)
    x, y, q = (t.to(device) for t in synthetic_batch(ctx, ctx.batch))
    if ctx.channels_last and device.type == "cuda":
        x = x.contiguous(memory_format=torch.channels_last)
    losses = []
    scaler = runtime.grad_scaler(device, ctx.precision)  # fp16's loss scaler, as the loop's

    def one_step():
        with runtime.autocast(device, ctx.precision):
            loss, logits, stats = step(net, x, y, q)
        (logits.argmax(1) == y).sum()  # the loop's running accuracy, on the device
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        step.after_update(model)
        losses.append(loss.detach())

    torch.manual_seed(1)  # the attack's random start: the same first step eager and compiled
    first = timed(one_step, 1, device)["seconds"]  # cuDNN autotuning; with compile: compiling
    warm = timed(one_step, max(ctx.warmup - 1, 0), device)["per_call_seconds"] if ctx.warmup > 1 else []
    run = timed(one_step, ctx.steps, device)
    result = {
        "method": method, "arch": ctx.arch, "batch_size": ctx.batch, "image_size": ctx.image_size,
        "precision": ctx.precision, "channels_last": ctx.channels_last, "compile": compile_backend,
        "attack": ctx.attack(method), "awp_on": bool(getattr(step, "active", False)),
        "first_step_seconds": first, "warmup_step_seconds": warm, "steps": ctx.steps,
        "step_seconds": run["per_call_seconds"], "median_step_seconds": run["median_seconds"],
        **step_numbers(ctx, method, ctx.batch * ctx.steps / run["seconds"]),
        "forward_gflop_per_image": ctx.fwd_flops / 1e9, "peak_tflops_bf16": ctx.bf16_peak,
        "first_loss": losses[0].item(), "losses_finite": bool(torch.stack(losses).isfinite().all()),
        "peak_memory_gib": peak_memory_gib(device),
    }
    return result


def eval_rates(ctx: Context, precision: str = "fp32", channels_last: bool = False, compile_backend=None,
               repeats: int = 3) -> dict:
    """The model (ctx.arch) as evaluated (``ltd.evaluate.evaluation_model``: eval mode,
    frozen weights; optionally channels_last and compiled) in ``precision``, at the
    evaluation batch size: forwards/s without autograd (clean passes, Square) and forward
    + input-gradient passes/s (PGD, APGD, FAB)."""
    device = ctx.device
    reset_memory(device)
    with fp32_precision(device, precision) as ran:
        torch.manual_seed(0)
        model = evaluation_model(build_model(ctx.arch, CLASSES).to(device), channels_last=channels_last,
                                 compile=compile_backend is not None, backend=compile_backend or "inductor")
        x, y, _ = (t.to(device) for t in synthetic_batch(ctx, ctx.eval_batch))

        def forward():
            with torch.no_grad():
                model(x)

        def forward_input_grad():
            xg = x.clone().requires_grad_(True)
            torch.autograd.grad(F.cross_entropy(model(xg), y), xg)

        out = {"precision": ran, "channels_last": channels_last, "compiled": compile_backend,
               "batch_size": ctx.eval_batch}
        for name, fn, fe in (("forward", forward, 1.0), ("forward_input_gradient", forward_input_grad, 2.0)):
            t0 = time.time()
            fn()  # warm-up (cuDNN autotuning; compiling)
            first = time.time() - t0
            r = timed(fn, repeats, device)
            ips = ctx.eval_batch * repeats / r["seconds"]
            peak = ctx.peak(ran) if ran in ("fp32", "pytorch_default", "tf32") else None
            out[name] = {"images_per_s": ips, "forward_equivalents_per_s": fe * ips,
                         "tflop_per_s": fe * ips * ctx.fwd_flops / 1e12, "first_call_seconds": first,
                         "mfu": fe * ips * ctx.fwd_flops / (peak * 1e12) if peak else None, "peak_tflops": peak}
        out["peak_memory_gib"] = peak_memory_gib(device)
        return out


def run_hours(ctx: Context, images_per_s: float, sched: dict, test_fwd_per_s: float, monitor_fe_per_s: float | None,
              awp_off_images_per_s: float | None = None) -> dict:
    """Hours of a run of ``sched['epochs']`` epochs over the training set at
    ``images_per_s`` (an AWP run: at ``awp_off_images_per_s`` before AWP switches on), plus
    each epoch's clean test pass (``test_fwd_per_s`` forwards/s) and, for a student, the
    PGD monitor (evaluation.monitor, at ``monitor_fe_per_s``)."""
    epochs = int(sched["epochs"])
    on = budget.awp_epochs(sched, ctx.config["awp"]) if awp_off_images_per_s else epochs
    train_s = ctx.train_images * (on / images_per_s + (epochs - on) / (awp_off_images_per_s or images_per_s))
    test_s = epochs * ctx.test_images / test_fwd_per_s
    out = {"epochs": epochs, "train_images": ctx.train_images, "test_images": ctx.test_images,
           "hours_training": train_s / 3600, "hours_test_pass": test_s / 3600,
           "projected_hours": (train_s + test_s) / 3600}
    monitor = ctx.evaluation.get("monitor") or {}
    if monitor_fe_per_s and monitor.get("n_examples"):
        fe = monitor["n_examples"] * (2 * monitor["pgd_steps"] + 1)
        out["hours_monitor_pgd"] = epochs * fe / monitor_fe_per_s / 3600
        out["projected_hours_with_monitor"] = out["projected_hours"] + out["hours_monitor_pgd"]
    return out


# ---- the parts ------------------------------------------------------------------------

def part_tests(ctx: Context) -> dict:
    xml = ctx.out / "tests.xml"
    log = ctx.out / "tests.log"
    limit = min(ctx.args.tests_timeout, max(30.0, ctx.left() - sum(NEEDS[p] for p in _later(ctx, "tests"))))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])}
    cmd = [sys.executable, "-m", "pytest", "-m", "cuda", "tests/test_cuda.py", "-q", "-rfEs", "-p", "no:cacheprovider",
           f"--junitxml={xml}"]
    t0 = time.time()
    try:
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=limit)
        rc, output = proc.returncode, proc.stdout + proc.stderr
    except subprocess.TimeoutExpired as e:
        rc, output = None, f"timed out after {limit:.0f} s\n" + (e.stdout or b"").decode(errors="replace")
    log.write_text(output)
    counts = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
    failed = []
    if xml.exists():
        for suite in ET.parse(xml).getroot().iter("testsuite"):
            for k in counts:
                counts[k] += int(suite.get(k, 0))
        for case in ET.parse(xml).getroot().iter("testcase"):
            if case.find("failure") is not None or case.find("error") is not None:
                failed.append(f"{case.get('classname')}::{case.get('name')}")
    passed = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
    summary = next((line.strip(" =") for line in reversed(output.splitlines()) if line.strip()), "")
    return {"command": " ".join(cmd), "returncode": rc, "seconds": time.time() - t0, "passed": passed,
            "failed": counts["failures"] + counts["errors"], "skipped": counts["skipped"], "failed_tests": failed,
            "pytest_summary": summary, "log": str(log), "peak_memory_gib": None,
            "ok": rc == 0 or (rc == 5 and passed == 0 and not failed)}


def part_train(ctx: Context) -> dict:
    """today (per-step host copies) against no_syncs, and the monitors in fp32 against TF32."""
    out = {"rates": {p: eval_rates(ctx, p) for p in (("fp32", "tf32") if ctx.device.type == "cuda" else ("fp32",))}}
    for method in ("trades-ltd", "awp-ltd"):
        reset_memory(ctx.device)
        runners, losses = {}, {}
        for variant in ("today", "no_syncs"):
            runners[variant], losses[variant], step = loop_runner(ctx, method, today=variant == "today")
            for _ in range(ctx.warmup):  # cuDNN autotuning
                runners[variant]()
        syncs = {v: {"cuda_per_step": cuda_syncs(runners[v]), "meta_per_step": meta_syncs(ctx, method, v == "today")}
                 for v in runners}
        times = time_variants(ctx, runners)
        r = {"method": method, "arch": ctx.arch, "batch_size": ctx.batch, "precision": ctx.precision,
             "channels_last": ctx.channels_last, "attack": ctx.attack(method), "awp_on": bool(getattr(step, "active",
                                                                                                  False)),
             "loader_images": ctx.loader_images,
             "losses_finite": all(bool(torch.stack(v).isfinite().all()) for v in losses.values()),
             "peak_memory_gib": peak_memory_gib(ctx.device)}
        for v in runners:
            r[v] = {**times[v], **step_numbers(ctx, method, times[v]["images_per_s"]), "syncs": syncs[v]}
        r["no_syncs_over_today"] = r["no_syncs"]["images_per_s"] / r["today"]["images_per_s"]
        out[method] = r
        report(f"  {method}: today {r['today']['images_per_s']:.1f} images/s ({syncs['today']['cuda_per_step']} "
               f"CUDA syncs/step; {syncs['today']['meta_per_step']} counted on meta), no_syncs "
               f"{r['no_syncs']['images_per_s']:.1f} images/s ({syncs['no_syncs']['cuda_per_step']}; "
               f"{syncs['no_syncs']['meta_per_step']}): {r['no_syncs_over_today']:.3f}x, MFU "
               f"{_pct(r['no_syncs']['mfu'])}, peak memory {_gib(r['peak_memory_gib'])}")
    # a 120-epoch run: today (monitors fp32) and now (monitors TF32 where CUDA has it)
    fp32 = out["rates"]["fp32"]
    mon = out["rates"].get("tf32", fp32)
    for method, awp_off in (("trades-ltd", None), ("awp-ltd", "trades-ltd")):
        for variant, rates in (("today", fp32), ("no_syncs", mon)):
            out[method][variant]["run"] = run_hours(
                ctx, out[method][variant]["images_per_s"], ctx.sched, rates["forward"]["forward_equivalents_per_s"],
                rates["forward_input_gradient"]["forward_equivalents_per_s"],
                awp_off_images_per_s=out[awp_off][variant]["images_per_s"] if awp_off else None)
    t, n = out["trades-ltd"]["today"]["run"], out["trades-ltd"]["no_syncs"]["run"]
    out["monitor"] = {"precision_today": "fp32", "precision_now": mon["precision"],
                      "hours_today": t["hours_test_pass"] + t.get("hours_monitor_pgd", 0.0),
                      "hours_now": n["hours_test_pass"] + n.get("hours_monitor_pgd", 0.0)}
    report(f"  monitors (test pass + PGD-10) per 120-epoch student: {out['monitor']['hours_today']:.3f} h in fp32, "
           f"{out['monitor']['hours_now']:.3f} h in {mon['precision']}")
    out["peak_memory_gib"] = max(_mem(out[m]) for m in ("trades-ltd", "awp-ltd"))
    return out


def part_compile_attack(ctx: Context) -> dict:
    """The loop with the attack compiled (train.compile_attack) against eager, both without syncs."""
    out = {"backend": ctx.backend}
    today = (load_json(ctx.out / "train.json").get("result") or {}) if (ctx.out / "train.json").exists() else {}
    for method in ("trades-ltd", "awp-ltd"):
        if method != "trades-ltd" and (ctx.dry or ctx.left() < 45):  # --dry: tests/test_compiled.py has AWP's
            out[method] = {"status": "skipped: --dry" if ctx.dry else f"skipped: {ctx.left():.0f} s left"}
            continue
        reset_memory(ctx.device)
        compiled = AttackForward(backend=ctx.backend)
        runners, losses = {}, {}
        for variant, c in (("eager", None), ("compiled_attack", compiled)):
            runners[variant], losses[variant], _ = loop_runner(ctx, method, today=False, compiled=c)
        # x' of the same batch from the same weights (both models drawn with the same seed);
        # the compiled attack compiles here (its graphs with and without autograd)
        x, _, _ = (t.to(ctx.device) for t in synthetic_batch(ctx, ctx.batch, seed=3))
        xs, compile_seconds = {}, {}
        for variant, c in (("eager", None), ("compiled_attack", compiled)):
            model = runners[variant].model

            def attack(model=model, c=c, variant=variant):
                torch.manual_seed(1)
                with runtime.autocast(ctx.device, ctx.precision):
                    xs[variant] = trades_adversarial(model, x, ctx.attack(method), compiled=c)

            compile_seconds[variant] = timed(attack, 1, ctx.device)["seconds"]
        first = {}
        for variant in runners:  # the same seed: the same random start
            torch.manual_seed(1)
            first[variant] = timed(runners[variant], 1, ctx.device)["seconds"]
            for _ in range(ctx.warmup):
                runners[variant]()
        times = time_variants(ctx, runners)
        e, c = losses["eager"][0].item(), losses["compiled_attack"][0].item()
        r = {"method": method, "first_step_seconds": first, "first_attack_seconds": compile_seconds,
             "compile_seconds": compile_seconds["compiled_attack"],
             "first_loss": {"eager": e, "compiled_attack": c}, "first_loss_relative_difference": abs(c - e) / abs(e),
             "x_adv_fraction_of_pixels_differing": (xs["eager"] - xs["compiled_attack"]).abs().gt(1e-6)
             .float().mean().item(),
             "peak_memory_gib": peak_memory_gib(ctx.device)}
        for v in runners:
            r[v] = {**times[v], **step_numbers(ctx, method, times[v]["images_per_s"])}
        r["compiled_attack_over_eager"] = r["compiled_attack"]["images_per_s"] / r["eager"]["images_per_s"]
        if (today.get(method) or {}).get("today"):
            r["compiled_attack_over_today"] = r["compiled_attack"]["images_per_s"] / today[method]["today"]["images_per_s"]
        out[method] = r
        report(f"  {method}: compiled attack ({ctx.backend}) {r['compiled_attack']['images_per_s']:.1f} images/s, eager "
               f"{r['eager']['images_per_s']:.1f}: {r['compiled_attack_over_eager']:.3f}x"
               + (f", {r['compiled_attack_over_today']:.3f}x today's" if "compiled_attack_over_today" in r else "")
               + f"; compile {r['compile_seconds']:.1f} s, first loss within {r['first_loss_relative_difference']:.1e}, "
               f"x' differs in {100 * r['x_adv_fraction_of_pixels_differing']:.3f} % of pixels")
    if ctx.left() > 60 and not ctx.dry:  # the evaluated model compiled (evaluation.compile; --dry: tested apart)
        out["eval_compiled"] = eval_rates(ctx, "pytorch_default" if ctx.device.type == "cuda" else "fp32",
                                          channels_last=ctx.device.type == "cuda", compile_backend=ctx.backend)
        report(f"  evaluated model compiled: forward + input gradient "
               f"{out['eval_compiled']['forward_input_gradient']['images_per_s']:.1f} images/s "
               f"({out['eval_compiled']['precision']}, compile "
               f"{out['eval_compiled']['forward_input_gradient']['first_call_seconds']:.1f} s)")
    out["peak_memory_gib"] = max(_mem(v) for v in out.values() if isinstance(v, dict))
    return out


def part_autoattack(ctx: Context) -> dict:
    eps = float(ctx.evaluation["eps"])
    ev = {"autoattack": {"version": "standard"}}
    plan = budget.autoattack_plan(ev, CLASSES)  # (attack, forward-equivalents per attacked image, which)
    out = {"eps": eps, "n": ctx.aa_n, "plan": [list(p) for p in plan], "runs": {}}
    x, y, clean, robust = known_answer_data(MeanIntensityNet(), ctx.aa_n, eps, image_size=ctx.image_size)
    for precision, channels_last, run_known in ctx.eval_variants:
        reset_memory(ctx.device)
        with fp32_precision(ctx.device, precision) as ran:
            name = ran + ("+channels_last" if channels_last else "")
            known_answer = {"flags_equal_the_known_answer": None, "ran": False}
            if run_known:
                model = evaluation_model(MeanIntensityNet().to(ctx.device), channels_last=channels_last)
                record, flags = run_autoattack(model, x.to(ctx.device), y.to(ctx.device), eps=eps, version="standard",
                                               square_queries=ctx.square_queries, batch_size=ctx.aa_batch,
                                               device=ctx.device, progress=False)
                attacked = record["attacked"]
                per_attack = {a: {"attacked": attacked[a], "seconds": record["seconds_per_attack"][a],
                                  "seconds_per_image": record["seconds_per_attack"][a] / attacked[a]
                                  if attacked[a] else None,
                                  "fraction_attacked": attacked[a] / ctx.aa_n,
                                  "robust_after": record["robust_accuracy_after"][a]} for a in record["attacks"]}
                known = (torch.equal(flags[record["attacks"][-1]].cpu(), robust)
                         and record["clean_accuracy"] == clean.sum().item() / len(y))
                known_answer = {"ran": True, "clean_accuracy": record["clean_accuracy"],
                                "robust_accuracy": record["robust_accuracy"],
                                "expected_robust_accuracy": robust.sum().item() / len(y),
                                "flags_equal_the_known_answer": known, "seconds": record["seconds"],
                                "square_queries": record["square_queries"], "per_attack": per_attack,
                                "peak_memory_gib": peak_memory_gib(ctx.device)}
            else:  # the flags: tests/test_cuda.py / test_evaluation.py; the fractions attacked: fp32's
                per_attack = out["runs"]["fp32"]["known_answer_model"]["per_attack"]
        rates = eval_rates(ctx, precision, channels_last=channels_last)
        projection = project_autoattack(ctx, plan, per_attack, rates)
        out["runs"][name] = {"precision": ran, "channels_last": channels_last, "known_answer_model": known_answer,
                             "model_rates": {"arch": ctx.arch, **rates}, "projection": projection}
        report(f"  {name}: "
               + (f"known-answer model robust {known_answer['robust_accuracy']:.3f} (expected "
                  f"{known_answer['expected_robust_accuracy']:.3f}, flags equal: {known_answer['flags_equal_the_known_answer']}), "
                  f"{known_answer['seconds']:.1f} s for {ctx.aa_n} images; " if run_known else
                  "known-answer flags: the tests part; ")
               + f"{ctx.arch} projected {projection['projected_hours']:.2f} h for 10,000 images "
               f"({projection['projected_hours_with_small_model_time']:.2f} h counting the small model's time as "
               "overhead)")
    base = out["runs"]["fp32"]["projection"]["projected_hours"]
    out["speedup_over_fp32"] = {name: base / r["projection"]["projected_hours"] for name, r in out["runs"].items()}
    out["peak_memory_gib"] = max(max(_mem(r["known_answer_model"]), _mem(r["model_rates"]))
                                 for r in out["runs"].values())
    return out


def project_autoattack(ctx: Context, plan, per_attack: dict, rates: dict, images: int = 10_000) -> dict:
    """Hours of AutoAttack standard on ``images`` images of ctx.arch: measured rates x
    declared forward-equivalents x measured fractions attacked."""
    fwd = rates["forward"]["forward_equivalents_per_s"]
    grad = rates["forward_input_gradient"]["forward_equivalents_per_s"]
    seconds = images / fwd  # the clean pass
    attacks, overhead = {}, 0.0
    for name, fe, _ in plan:
        frac = per_attack[name]["fraction_attacked"]
        rate = fwd if name == "square" else grad  # Square only queries; the others take input gradients
        s = images * frac * fe / rate
        # the small model's measured time per batch (all overhead, nearly no compute) x batches here
        batches = math.ceil(images * frac / ctx.aa_batch)
        overhead += (per_attack[name]["seconds"] or 0.0) * batches
        attacks[name] = {"forward_equivalents_per_attacked_image": fe, "fraction_attacked": frac,
                         "rate_forward_equivalents_per_s": rate, "hours": s / 3600}
        seconds += s
    return {"images": images, "measured": f"{ctx.arch} forward and forward+input-gradient rates (batch "
                                          f"{ctx.eval_batch}); fractions attacked on the known-answer model",
            "projected": "forward-equivalents per attacked image from ltd.budget.autoattack_plan (Square at its "
                         "standard 5,000 queries); with_small_model_time adds the small model's whole measured time "
                         "per batch as overhead",
            "per_attack": attacks, "projected_hours": seconds / 3600,
            "projected_hours_with_small_model_time": (seconds + overhead) / 3600}


# -- jobs per GPU: k worker processes on one device, started together --

def _mps(ctx: Context, folder: Path):
    """(environment for clients, None) when a CUDA MPS daemon started, else (None, why not)."""
    if not ctx.cuda:
        return None, "no CUDA (--dry)"
    exe = shutil.which("nvidia-cuda-mps-control")
    if exe is None:
        return None, "nvidia-cuda-mps-control is not on PATH"
    env = {**os.environ, "CUDA_MPS_PIPE_DIRECTORY": str(folder / "pipe"), "CUDA_MPS_LOG_DIRECTORY": str(folder / "log")}
    for d in ("pipe", "log"):
        (folder / d).mkdir(parents=True, exist_ok=True)
    try:
        r = subprocess.run([exe, "-d"], env=env, capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError) as e:
        return None, f"nvidia-cuda-mps-control -d failed: {e}"
    if r.returncode != 0:
        return None, f"nvidia-cuda-mps-control -d exited {r.returncode}: {(r.stdout + r.stderr).strip()[:200]}"
    return env, None


def _stop_mps(env: dict) -> None:
    try:
        subprocess.run([shutil.which("nvidia-cuda-mps-control") or "nvidia-cuda-mps-control"], input="quit\n",
                       env=env, capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        pass


def _run_workers(ctx: Context, k: int, folder: Path, env: dict | None) -> dict:
    """k workers, each warmed up, then timed over the same ``ctx.window`` seconds."""
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--out", str(ctx.out), "--steps", str(ctx.steps),
           "--warmup", str(ctx.warmup), "--window", str(ctx.window)] + (["--dry"] if ctx.dry else [])
    logs = [open(folder / f"w{i}.log", "w") for i in range(k)]  # a file, not a pipe nobody reads
    procs = [subprocess.Popen(cmd + ["--worker", str(folder / f"w{i}")], cwd=ROOT, env=env or os.environ,
                              stdout=log, stderr=subprocess.STDOUT) for i, log in enumerate(logs)]
    deadline = time.time() + max(30.0, min(120.0, ctx.left() - 10))
    try:
        while not all((folder / f"w{i}.ready").exists() for i in range(k)):
            if time.time() > deadline or any(p.poll() not in (None, 0) for p in procs):
                raise RuntimeError(f"{k} worker(s) did not get ready: " + " | ".join(
                    (folder / f"w{i}.log").read_text()[-400:] for i in range(k)))
            time.sleep(0.1)
        (folder / "go").write_text(str(time.time() + 0.2))  # all start the window together
        for p in procs:
            p.wait(timeout=ctx.window + 60)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
        for log in logs:
            log.close()
    workers = [load_json(folder / f"w{i}.json") for i in range(k)]
    return {"k": k, "mps": env is not None, "in_process": False, "workers": workers,
            "aggregate_images_per_s": sum(w["images_per_s"] for w in workers),
            "peak_memory_gib": max((w["peak_memory_gib"] or 0.0) for w in workers)}


def _warm_runner(ctx: Context):
    """The TRADES+LTD loop (ltd.train.fit's per-batch code, as in ``train``), warmed up."""
    reset_memory(ctx.device)
    run, _, _ = loop_runner(ctx, "trades-ltd", today=False)
    for _ in range(ctx.warmup):
        run()
    sync(ctx.device)
    reset_memory(ctx.device)
    return run


def _window(ctx: Context, run, go: Path | None = None) -> dict:
    """As many steps of ``run`` as fit in ``ctx.window`` seconds, from the time written to
    ``go`` once it appears (the start every worker shares), or from now."""
    if go is not None:
        while not go.exists():
            time.sleep(0.01)
        time.sleep(max(0.0, float(go.read_text() or 0) - time.time()))
    t0, steps = time.time(), 0
    while time.time() - t0 < ctx.window:
        run()
        steps += 1
        if steps % 2 == 0:
            sync(ctx.device)  # stay within a step or two of the clock: the window is shared
    sync(ctx.device)
    seconds = time.time() - t0
    return {"steps": steps, "seconds": seconds, "images_per_s": steps * ctx.batch / seconds,
            "peak_memory_gib": peak_memory_gib(ctx.device)}


def worker(ctx: Context) -> None:
    """A jobs_per_gpu worker process: ready once warmed up, then timed over the shared window."""
    path = Path(ctx.args.worker)
    run = _warm_runner(ctx)
    path.with_suffix(".ready").touch()
    save_json(_window(ctx, run, path.parent / "go"), path.with_suffix(".json"))


def part_jobs_per_gpu(ctx: Context) -> dict:
    folder = ctx.out / "jobs_per_gpu"
    # the daemon's pipes (FIFOs) outside <out>: <out> is copied back as plain files
    env, why_not = _mps(ctx, Path(tempfile.mkdtemp(prefix="ltd-mps-"))) if len(ctx.ks) > 1 else (None, "k = 1 only")
    out = {"window_seconds": ctx.window, "method": "trades-ltd", "mps": why_not or "started", "runs": {}}
    try:
        for k in ctx.ks:
            use_mps = env is not None and k > 1
            if k == 1:  # alone on the GPU: in this process (no MPS), sparing a process start
                w = _window(ctx, _warm_runner(ctx))
                out["runs"]["1"] = {"k": 1, "mps": False, "in_process": True, "workers": [w],
                                    "aggregate_images_per_s": w["images_per_s"], "peak_memory_gib": w["peak_memory_gib"]}
                report(f"  k = 1: {w['images_per_s']:.1f} images/s")
                continue
            try:
                r = _run_workers(ctx, k, folder / f"k{k}", env if use_mps else None)
            except Exception as e:  # MPS refused a client, say: without it, then
                if not use_mps:
                    raise
                out[f"k{k}_mps_error"] = f"{type(e).__name__}: {e}"
                r = _run_workers(ctx, k, folder / f"k{k}", None)
            out["runs"][str(k)] = r
            report(f"  k = {k}{' (MPS)' if r['mps'] else ''}: {r['aggregate_images_per_s']:.1f} images/s in all, "
                   f"peak memory {_gib(r['peak_memory_gib'])} per process")
    finally:
        if env is not None:
            _stop_mps(env)
    one = out["runs"]["1"]["aggregate_images_per_s"]
    out["throughput"] = [out["runs"][str(k)]["aggregate_images_per_s"] / one for k in ctx.ks]  # budget.jobs_per_gpu_throughput
    out["peak_memory_gib"] = max(_mem(r) for r in out["runs"].values())
    return out


def part_natural(ctx: Context) -> dict:
    r = training_step(ctx, "natural")
    rates = eval_rates(ctx, "fp32")
    r["run"] = run_hours(ctx, r["images_per_s"], ctx.teacher_sched, rates["forward"]["forward_equivalents_per_s"],
                         None)
    report(f"  natural step: {r['images_per_s']:.1f} images/s, MFU {_pct(r['mfu'])}")
    # The on-device loader alone: one epoch of crop + flip over CIFAR-shaped data on the device
    reset_memory(ctx.device)
    x, y, q = synthetic_batch(ctx, ctx.loader_images, seed=2)
    split = data.Split(x.to(ctx.device), y.to(ctx.device), None)
    padding = int(ex.dataset_cfg(ctx.config, DATASET).get("crop_padding", 4))
    loader = data.DeviceLoader(split, ctx.batch, q=q.to(ctx.device), crop_padding=padding, seed=0)
    next(iter(loader.epoch(0)))  # warm-up

    def epoch():
        for _ in loader.epoch(1):
            pass

    t = timed(epoch, 1, ctx.device)["seconds"]
    loader_ips = ctx.loader_images / t
    share = None  # of a training step's time, were the loader's work not overlapped with it
    if (ctx.out / "train.json").exists():
        trades = (load_json(ctx.out / "train.json").get("result") or {}).get("trades-ltd")
        share = trades["no_syncs"]["images_per_s"] / loader_ips if trades else None
    report(f"  DeviceLoader (crop {padding} + flip, batch {ctx.batch}): {loader_ips:,.0f} images/s")
    return {"natural": r, "eval_fp32": rates,
            "loader": {"images": ctx.loader_images, "batch_size": ctx.batch, "crop_padding": padding,
                       "seconds_per_epoch": t, "images_per_s": loader_ips,
                       "share_of_trades_step_time": share, "peak_memory_gib": peak_memory_gib(ctx.device)},
            "peak_memory_gib": max(_mem(r), _mem(rates), peak_memory_gib(ctx.device) or 0)}


def part_compile(ctx: Context) -> dict:
    """torch.compile(model) for the whole TRADES+LTD step (train.compile)."""
    r = training_step(ctx, "trades-ltd", compile_backend="eager" if ctx.dry else "inductor")
    r["compile_seconds"] = r["first_step_seconds"]
    report(f"  compiled model: compile {r['compile_seconds']:.1f} s, then {r['images_per_s']:.1f} images/s")
    return {"trades-ltd": r, "peak_memory_gib": r["peak_memory_gib"]}


def in_child(ctx: Context, name: str) -> dict:
    """A compile part in a child process with a time limit: a compile can take minutes and
    cannot be interrupted in-process. It gets what the later parts do not need."""
    limit = min(ctx.args.compile_timeout, ctx.left() - 5 - sum(NEEDS[p] for p in _later(ctx, name)))
    if limit < NEEDS[name] / (3 if ctx.dry else 1):
        return {"status": f"skipped: {max(limit, 0):.0f} s left for it of --time-limit {ctx.args.time_limit:.0f}"}
    (ctx.out / f"{name}.json").unlink(missing_ok=True)  # only the child's own answer counts
    reset_memory(ctx.device)  # hand this process's cached GPU memory back for the child
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", "--parts", name, "--out", str(ctx.out),
           "--force", "--steps", str(ctx.steps), "--warmup", str(ctx.warmup), "--deadline", str(time.time() + limit)]
    try:
        subprocess.run(cmd + (["--dry"] if ctx.dry else []), cwd=ROOT, timeout=limit + 10, check=False)
    except subprocess.TimeoutExpired:
        return {"status": f"timeout: did not finish within {limit:.0f} s (compile included)", "limit_seconds": limit}
    path = ctx.out / f"{name}.json"
    if not path.exists():
        return {"status": "error: the child process wrote no result"}
    return {"from_child": load_json(path)}


# ---- plumbing -------------------------------------------------------------------------

def _pct(v):
    return "n/a" if v is None else f"{100 * v:.1f}%"


def _gib(v):
    return "n/a" if v is None else f"{v:.1f} GiB"


def _mem(d: dict) -> float:
    return d.get("peak_memory_gib") or 0.0


def _later(ctx: Context, name: str) -> list[str]:
    return [p for p in PARTS[PARTS.index(name) + 1:] if p in ctx.args.parts]


def report(msg: str) -> None:
    print(msg, flush=True)


def environment(ctx: Context) -> dict:
    env = {"python": platform.python_version(), "torch": torch.__version__, "torch_cuda": torch.version.cuda,
           "device": str(ctx.device), "device_label": ctx.peak_label, "dry": ctx.dry, "host": platform.node(),
           "peak_tflops": {"bf16": ctx.bf16_peak, "fp32": ctx.fp32_peak, "tf32": ctx.tf32_peak}}
    if ctx.device.type == "cuda":
        env["device_name"] = torch.cuda.get_device_name(ctx.device)
        env["driver"] = runtime.nvidia_smi()
    try:
        import pyautoattack
        env["pyautoattack"] = pyautoattack.__version__
    except ImportError:
        env["pyautoattack"] = None
    try:
        env["commit"] = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                                       timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        env["commit"] = None
    return env


PART_FUNCTIONS = {"tests": part_tests, "train": part_train, "compile_attack": part_compile_attack,
                  "autoattack": part_autoattack, "jobs_per_gpu": part_jobs_per_gpu, "natural": part_natural,
                  "compile": part_compile}


def run_part(ctx: Context, name: str) -> dict:
    path = ctx.out / f"{name}.json"
    if path.exists() and not ctx.args.force:
        done = load_json(path)
        if done.get("status") == "ok" and done.get("dry") == ctx.dry:  # a --dry result never stands for a GPU's
            report(f"[{name}] done before ({path}); skipped (--force reruns it)")
            return done
    report(f"[{name}]{' (child process)' if ctx.args.child else ''} starting at {ctx.elapsed():.0f} s")
    t0 = time.time()
    needs = NEEDS[name] / (3 if ctx.dry else 1)
    if not ctx.cuda and not ctx.dry:
        status, result = "skipped: no CUDA (torch.cuda.is_available() is False; --dry runs the parts on the CPU)", {}
    elif not ctx.args.child and name not in CHILD_PARTS and ctx.left() < needs:
        status, result = f"skipped: {max(ctx.left(), 0):.0f} s left of --time-limit {ctx.args.time_limit:.0f}", {}
    else:
        try:
            if name in CHILD_PARTS and not ctx.args.child:
                result = in_child(ctx, name)
            else:
                result = PART_FUNCTIONS[name](ctx)
            status = result.pop("status", "ok")
            if "from_child" in result:
                child = result["from_child"]
                status, result = child["status"], child.get("result", {})
            if name == "tests" and not result["ok"]:
                status = f"failed: {result['failed']} failed" + ("" if result["returncode"] is not None else
                                                                 ", timed out")
        except Exception as e:  # a part's failure is its result; the next part still runs
            status, result = f"error: {type(e).__name__}: {e}", {"traceback": traceback.format_exc()}
    record = {"part": name, "status": status, "seconds": time.time() - t0, "result": result,
              "dry": ctx.dry, "device": str(ctx.device)}
    if not (name in CHILD_PARTS and not ctx.args.child and status == "ok"):  # the child wrote it
        save_json(record, path)
    report(f"[{name}] {status} in {record['seconds']:.0f} s -> {path}")
    if status.startswith("error"):
        report(result["traceback"])
    return record


def targets(records: dict) -> dict:
    """The issue's targets as measured ratios: the training step (compiled attack, no
    syncs) over today's, at the same numerics; AutoAttack's fastest variant whose flags
    equal the known answer over fp32's."""
    out = {}
    ca = ((records.get("compile_attack") or {}).get("result") or {}).get("trades-ltd") or {}
    tr = ((records.get("train") or {}).get("result") or {}).get("trades-ltd") or {}
    best, what = None, None
    if ca.get("compiled_attack_over_today"):
        best, what = ca["compiled_attack_over_today"], "compiled attack, no syncs / today (TRADES+LTD)"
    elif tr.get("no_syncs_over_today"):
        best, what = tr["no_syncs_over_today"], "no syncs / today (TRADES+LTD; compiled attack not measured)"
    if best is not None:
        out["training step"] = {"ratio": best, "what": what, "target": TARGETS["training step"],
                                "met": best >= TARGETS["training step"]}
    aa = (records.get("autoattack") or {}).get("result") or {}
    runs = aa.get("runs") or {}
    ok = {n: s for n, s in (aa.get("speedup_over_fp32") or {}).items()  # tf32's flags: the tests part
          if n != "fp32" and runs[n]["known_answer_model"]["flags_equal_the_known_answer"]}
    if ok:
        name = max(ok, key=ok.get)
        out["AutoAttack"] = {"ratio": ok[name], "what": f"{name} / fp32, flags equal to the known answer",
                             "all": aa["speedup_over_fp32"], "target": TARGETS["AutoAttack"],
                             "met": ok[name] >= TARGETS["AutoAttack"]}
    return out


def summarise(ctx: Context, records: dict) -> dict:
    rows, key = [], {}
    t = records.get("tests", {}).get("result") or {}
    if t:
        key["tests"] = {k: t.get(k) for k in ("passed", "failed", "skipped", "failed_tests")}
        rows.append(("tests", "pytest -m cuda", f"{t.get('passed')} passed, {t.get('failed')} failed, "
                                                f"{t.get('skipped')} skipped", ""))
    tr = records.get("train", {}).get("result") or {}
    for m in ("trades-ltd", "awp-ltd"):
        if m in tr:
            r = tr[m]
            key[m] = {v: {"images_per_s": r[v]["images_per_s"], "mfu": r[v]["mfu"],
                          "projected_hours": r[v]["run"]["projected_hours"],
                          "cuda_syncs_per_step": r[v]["syncs"]["cuda_per_step"],
                          "meta_syncs_per_step": r[v]["syncs"]["meta_per_step"]} for v in ("today", "no_syncs")}
            key[m]["peak_memory_gib"] = r["peak_memory_gib"]
            for v in ("today", "no_syncs"):
                rows.append((m, f"{v}: {ctx.arch} b{ctx.batch} {r['precision']} eager, loader",
                             f"{r[v]['images_per_s']:.1f} img/s, MFU {_pct(r[v]['mfu'])}, syncs/step "
                             f"{r[v]['syncs']['cuda_per_step']} (meta {r[v]['syncs']['meta_per_step'][-1]})",
                             f"{r[v]['run']['projected_hours']:.2f} h / {r[v]['run']['epochs']} ep"))
    if tr.get("monitor"):
        mo = tr["monitor"]
        key["monitor"] = mo
        rows.append(("monitors", f"test pass + PGD-10, fp32 vs {mo['precision_now']}",
                     f"{mo['hours_today']:.3f} h vs {mo['hours_now']:.3f} h", "per 120-epoch student"))
    ca = records.get("compile_attack", {})
    for m in ("trades-ltd", "awp-ltd"):
        r = (ca.get("result") or {}).get(m) or {}
        if "compiled_attack" in r:
            key[f"{m} compiled attack"] = {"images_per_s": r["compiled_attack"]["images_per_s"],
                                           "over_eager": r["compiled_attack_over_eager"],
                                           "over_today": r.get("compiled_attack_over_today"),
                                           "compile_seconds": r["compile_seconds"]}
            rows.append((m, f"compiled attack ({ca['result']['backend']})",
                         f"{r['compiled_attack']['images_per_s']:.1f} img/s, {r['compiled_attack_over_eager']:.2f}x eager",
                         f"compile {r['compile_seconds']:.0f} s"))
    if ca and not (ca.get("result") or {}).get("trades-ltd"):
        rows.append(("trades-ltd", "compiled attack", ca.get("status", ""), ""))
    aa = records.get("autoattack", {}).get("result") or {}
    for name, r in (aa.get("runs") or {}).items():
        p, k = r["projection"], r["known_answer_model"]
        fg = r["model_rates"]["forward_input_gradient"]
        key[f"autoattack {name}"] = {"projected_hours": p["projected_hours"],
                                     "projected_hours_with_small_model_time": p["projected_hours_with_small_model_time"],
                                     "known_answer_ok": k["flags_equal_the_known_answer"],
                                     "forward_input_gradient_mfu": fg["mfu"]}
        verdict = {True: "ok", False: "WRONG", None: "flags: tests part"}[k["flags_equal_the_known_answer"]]
        rows.append((f"AutoAttack {name}", f"known answer {verdict}",
                     f"{ctx.arch} fwd+grad MFU {_pct(fg['mfu'])}",
                     f"{p['projected_hours']:.2f}-{p['projected_hours_with_small_model_time']:.2f} h / 10k img"))
    jo = records.get("jobs_per_gpu", {}).get("result") or {}
    if jo.get("runs"):
        key["jobs_per_gpu"] = {"throughput": jo["throughput"], "mps": jo["mps"]}
        for k, r in jo["runs"].items():
            rows.append((f"{k} job(s) per GPU", "MPS" if r["mps"] else "no MPS",
                         f"{r['aggregate_images_per_s']:.1f} img/s in all", f"{jo['throughput'][int(k) - 1]:.2f}x k=1"))
    na = records.get("natural", {}).get("result") or {}
    if na:
        r = na["natural"]
        key["natural"] = {"images_per_s": r["images_per_s"], "mfu": r["mfu"],
                          "projected_hours": r["run"]["projected_hours"]}
        key["loader_images_per_s"] = na["loader"]["images_per_s"]
        rows.append(("natural", f"{ctx.arch} b{ctx.batch} {r['precision']} eager", f"{r['images_per_s']:.1f} img/s, "
                     f"MFU {_pct(r['mfu'])}", f"{r['run']['projected_hours']:.2f} h / {r['run']['epochs']} ep"))
        rows.append(("DeviceLoader", "crop+flip", f"{na['loader']['images_per_s']:,.0f} img/s", ""))
    co = records.get("compile", {}).get("result") or {}
    if co.get("trades-ltd"):
        r = co["trades-ltd"]
        rows.append(("trades-ltd", f"torch.compile(model) ({r['compile']})", f"{r['images_per_s']:.1f} img/s",
                     f"compile {r['compile_seconds']:.0f} s"))
    statuses = {name: rec.get("status") for name, rec in records.items()}
    env = environment(ctx)
    summary = {"environment": env, "status": statuses, "key": key, "targets": targets(records), "seconds": ctx.elapsed()}
    if "trades-ltd" in key:
        summary["measured_mfu"] = {
            "training_bf16_trades_ltd": key["trades-ltd"]["no_syncs"]["mfu"],
            "training_bf16_awp_ltd": key.get("awp-ltd", {}).get("no_syncs", {}).get("mfu"),
            **{f"evaluation_{n.split()[-1]}_forward_input_gradient": v["forward_input_gradient_mfu"]
               for n, v in key.items() if n.startswith("autoattack ")},
        }
    save_json(summary, ctx.out / "summary.json")
    try:
        from tabulate import tabulate
        table = tabulate(rows, headers=["part", "what", "measured", "projected"], tablefmt="github")
    except ImportError:
        table = "\n".join(" | ".join(r) for r in rows)
    report(f"\n{env.get('device_name', ctx.device)}, torch {torch.__version__}, "
           f"{'DRY RUN (CPU, tiny model): not a measurement of anything' if ctx.dry else ''}")
    report(table)
    for name, tg in summary["targets"].items():
        report(f"target {name}: {tg['ratio']:.2f}x ({tg['what']}); the issue asks >= {tg['target']}x")
    report("status: " + ", ".join(f"{k} {v}" for k, v in statuses.items()))
    report(f"summary: {ctx.out / 'summary.json'} ({ctx.elapsed():.0f} s in all)")
    return summary


def main(argv=None) -> dict:
    args = parse_args(argv)
    ctx = Context(args)
    ctx.out.mkdir(parents=True, exist_ok=True)
    if args.worker:
        worker(ctx)
        return {}
    if args.child:
        record = run_part(ctx, args.parts[0])
        return {"status": {args.parts[0]: record["status"]}}
    report(f"gpu_check: {ctx.arch} on {ctx.device} ({ctx.peak_label}), torch {torch.__version__}, out {ctx.out}"
           + (" [--dry]" if ctx.dry else ""))
    records = {}
    for name in PARTS:
        if name in args.parts:
            records[name] = run_part(ctx, name)
        elif (ctx.out / f"{name}.json").exists():  # the summary covers earlier runs' parts of the same kind
            earlier = load_json(ctx.out / f"{name}.json")
            if earlier.get("dry") == ctx.dry:
                records[name] = earlier
    return summarise(ctx, records)


if __name__ == "__main__":
    summary = main()
    sys.exit(0 if all(v == "ok" for v in summary.get("status", {}).values()) else 1)  # any part not ok: 1
