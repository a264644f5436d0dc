"""One prepared check of a GPU machine: the CUDA tests, what a training step and an
AutoAttack evaluation cost, and what a paper run would take, in about 6 minutes on one H100.

    python3 benchmarks/gpu_check.py --out $OUT/gpu_check     # on a bare CUDA machine (make gpu-check)
    python3 benchmarks/gpu_check.py --dry --out /tmp/check   # every part on the CPU, tiny model (CI)

Needs torch, numpy, tqdm, pyyaml, tabulate, pytest and pyautoattack; not Snakemake and
no internet (docs/performance.md: how to carry pyautoattack as a wheel). The ``ltd``
package is imported from this checkout.

Parts, in the order they run. Each one prints its result as soon as it has it and writes
``<out>/<part>.json``; a part whose JSON says "ok" is skipped on a rerun unless
``--force`` (errors, time-outs, skips and --dry results are redone), so a machine that stops early
still returns the finished parts. ``<out>/summary.json`` and a table come last.

1. ``tests``: ``pytest -m cuda tests/test_cuda.py`` in a subprocess: passed, failed, skipped.
2. ``train``: WRN-34-10 TRADES+LTD and AWP+LTD (AWP on) training steps at batch 128,
   bf16 autocast, channels_last, eager, driven as ``ltd.train.fit`` drives them:
   images/s, counted FLOP/s (declared forward-equivalents, ltd.methods, x counted
   forward FLOPs, ltd.flops), MFU against the card's dense bf16 peak
   (benchmarks/train_step.py's table), and the projected hours of a 120-epoch CIFAR-10
   run (50,000 images x 120 epochs + the per-epoch clean test pass, fp32, measured here).
3. ``natural``: the natural (teacher) step, and the on-device loader alone
   (``ltd.data.DeviceLoader``, crop + flip, CIFAR-shaped data): images/s.
4. ``autoattack``: AutoAttack standard (``ltd.autoattack.run_autoattack``) on a few
   hundred CIFAR-shaped images of ``ltd.known_answer`` (a small model whose robust
   flags are known: robust accuracy 57 %, not 0), in fp32 and in TF32: seconds per image
   per attack. Projected hours for 10,000 images of WRN-34-10 = WRN-34-10's forward and
   forward + input-gradient rates at batch 500 (measured, fp32 and TF32) x each attack's
   forward-equivalents per image (``ltd.budget.autoattack_plan``) x the fraction of
   images it attacks (measured on the small model, whose data have the paper's 85 %
   clean / 57 % robust).
5. ``compile``: the TRADES+LTD step under ``torch.compile``, in a child process with a
   time limit: compile time (the first step) apart from images/s, and its first loss
   against the eager step's.

Every part records its peak GPU memory (``torch.cuda.max_memory_allocated``, reset per
part and per measurement).
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import statistics
import subprocess
import sys
import time
import traceback
import xml.etree.ElementTree as ET
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))

from benchmarks.train_step import device_peak_tflops  # noqa: E402
from ltd import budget, data, flops, methods, runtime  # noqa: E402
from ltd import config as ltd_config  # noqa: E402
from ltd import experiments as ex  # noqa: E402
from ltd.autoattack import run_autoattack  # noqa: E402
from ltd.evaluate import numeric_precision  # noqa: E402
from ltd.files import load_json, save_json  # noqa: E402
from ltd.known_answer import MeanIntensityNet, known_answer_data  # noqa: E402
from ltd.models import build_model  # noqa: E402
from ltd.train import make_optimizer  # noqa: E402

PARTS = ("tests", "train", "natural", "autoattack", "compile")
DATASET = "cifar10"
CLASSES = 10


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="results/gpu_check", help="folder of the part JSONs and summary.json")
    p.add_argument("--dry", action="store_true", help="every part on the CPU with a tiny model (tests the script)")
    p.add_argument("--force", action="store_true", help="rerun parts whose JSON says ok")
    p.add_argument("--parts", nargs="+", default=list(PARTS), choices=PARTS)
    p.add_argument("--time-limit", type=float, default=345.0,
                   help="seconds for the whole check; the compile part gets what is left (default 5 min 45 s)")
    p.add_argument("--compile-timeout", type=float, default=200.0, help="at most this for the compile part")
    p.add_argument("--tests-timeout", type=float, default=240.0)
    p.add_argument("--steps", type=int, default=None, help="timed training steps (default 10; dry 2)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 3; dry 1)")
    p.add_argument("--aa-n", type=int, default=None, help="AutoAttack images (default 500; dry 12)")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)  # the compile part's own process
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
            self.aa_n, self.square_queries, self.loader_images = args.aa_n or 12, 100, 512
        else:
            self.device = runtime.setup("cuda") if self.cuda else torch.device("cpu")  # TF32 off, as a job
            self.arch, self.image_size = "wrn-34-10", 32
            self.batch, self.eval_batch = int(self.sched["batch_size"]), int(self.evaluation["batch_size"])
            self.steps, self.warmup = args.steps or 10, args.warmup or 3
            self.aa_n, self.square_queries, self.loader_images = args.aa_n or 500, None, 50_000
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

    def elapsed(self) -> float:
        return time.time() - self.start


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
    return {"seconds": total, "per_call_seconds": per_call, "median_seconds": statistics.median(per_call)}


def synthetic_batch(ctx: Context, n: int, seed: int = 0):
    """CIFAR-shaped images with pixel values k/255, labels, stand-in soft labels."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (n, 3, ctx.image_size, ctx.image_size), generator=g).float().div_(255)
    y = torch.randint(0, CLASSES, (n,), generator=g)
    q = F.softmax(3 * torch.randn(n, CLASSES, generator=g), dim=1)
    return x, y, q


def training_step(ctx: Context, method: str, *, compile_backend: str | None = None) -> dict:
    """Time ``method``'s step (ltd.methods.build_step with the paper config's attack and
    AWP settings, AWP on) driven exactly as ltd.train.fit drives it: the step under
    autocast, zero_grad, backward, optimiser step, ``after_update``."""
    device = ctx.device
    reset_memory(device)
    m = methods.get(method)
    attack = ex.attack(ctx.config, DATASET, method) if m.attack else None
    step = methods.build_step(method, beta=float(ctx.config["beta"]), attack=attack,
                              awp=ctx.config["awp"] if m.awp else None)
    step.begin_epoch(int(ctx.sched["epochs"]) - 1)  # the last epoch: AWP on (after its warm-up)
    torch.manual_seed(0)
    model = build_model(ctx.arch, CLASSES)
    memory_format = torch.channels_last if ctx.channels_last else torch.contiguous_format
    model.to(device, memory_format=memory_format)
    opt, _ = make_optimizer(model, ctx.sched)
    net = model if compile_backend is None else torch.compile(model, backend=compile_backend)
    x, y, q = (t.to(device) for t in synthetic_batch(ctx, ctx.batch))
    x = x.contiguous(memory_format=memory_format)
    losses = []
    scaler = runtime.grad_scaler(device, ctx.precision)  # fp16's loss scaler, as the loop's

    def one_step():  # ltd/train.py fit, per batch (one process)
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
    images_per_s = ctx.batch * ctx.steps / run["seconds"]
    fe = methods.forward_equivalents(method, int(attack["steps"]) if attack else 0, awp_on=True)
    flop_per_s = fe * ctx.fwd_flops * images_per_s
    result = {
        "method": method, "arch": ctx.arch, "batch_size": ctx.batch, "image_size": ctx.image_size,
        "precision": ctx.precision, "channels_last": ctx.channels_last, "compile": compile_backend,
        "attack": attack, "awp_on": bool(getattr(step, "active", False)),
        "first_step_seconds": first, "warmup_step_seconds": warm, "steps": ctx.steps,
        "step_seconds": run["per_call_seconds"], "median_step_seconds": run["median_seconds"],
        "images_per_s": images_per_s, "forward_equivalents": fe, "forward_gflop_per_image": ctx.fwd_flops / 1e9,
        "tflop_per_s": flop_per_s / 1e12, "peak_tflops_bf16": ctx.bf16_peak,
        "mfu": flop_per_s / (ctx.bf16_peak * 1e12) if ctx.bf16_peak else None,
        "first_loss": losses[0].item(), "losses_finite": bool(torch.stack(losses).isfinite().all()),
        "peak_memory_gib": peak_memory_gib(device),
    }
    return result


def eval_rates(ctx: Context, tf32: bool, repeats: int = 3) -> dict:
    """The model (ctx.arch) in eval mode with frozen weights (as ltd.jobs.load_model), fp32
    or TF32, at the evaluation batch size: forwards/s without autograd (clean passes,
    Square) and forward + input-gradient passes/s (PGD, APGD, FAB)."""
    device = ctx.device
    reset_memory(device)
    runtime.allow_tf32(device, tf32)
    try:
        torch.manual_seed(0)
        model = build_model(ctx.arch, CLASSES).to(device).eval().requires_grad_(False)
        x, y, _ = (t.to(device) for t in synthetic_batch(ctx, ctx.eval_batch))

        def forward():
            with torch.no_grad():
                model(x)

        def forward_input_grad():
            xg = x.clone().requires_grad_(True)
            torch.autograd.grad(F.cross_entropy(model(xg), y), xg)

        out = {"precision": numeric_precision(device), "batch_size": ctx.eval_batch}
        for name, fn, fe in (("forward", forward, 1.0), ("forward_input_gradient", forward_input_grad, 2.0)):
            fn()  # warm-up (cuDNN autotuning)
            r = timed(fn, repeats, device)
            ips = ctx.eval_batch * repeats / r["seconds"]
            peak = ctx.tf32_peak if tf32 else ctx.fp32_peak
            out[name] = {"images_per_s": ips, "forward_equivalents_per_s": fe * ips,
                         "tflop_per_s": fe * ips * ctx.fwd_flops / 1e12,
                         "mfu": fe * ips * ctx.fwd_flops / (peak * 1e12) if peak else None, "peak_tflops": peak}
        out["peak_memory_gib"] = peak_memory_gib(device)
        return out
    finally:
        runtime.allow_tf32(device, False)


def run_hours(ctx: Context, images_per_s: float, sched: dict, test_fwd_per_s: float, monitor_fe_per_s: float | None,
              awp_off_images_per_s: float | None = None) -> dict:
    """Hours of a run of ``sched['epochs']`` epochs over the training set at
    ``images_per_s`` (an AWP run: at ``awp_off_images_per_s`` before AWP switches on), plus
    each epoch's clean test pass (fp32, ``test_fwd_per_s`` forwards/s) and, for a
    student, the PGD monitor (evaluation.monitor, at ``monitor_fe_per_s``)."""
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
    limit = min(ctx.args.tests_timeout, max(30.0, ctx.args.time_limit - ctx.elapsed()))
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
    rates = eval_rates(ctx, tf32=False)  # the per-epoch test pass and monitor run in fp32
    test_fwd = rates["forward"]["forward_equivalents_per_s"]
    monitor_fe = rates["forward_input_gradient"]["forward_equivalents_per_s"]
    out = {"eval_fp32": rates}
    for method in ("trades-ltd", "awp-ltd"):
        r = training_step(ctx, method)
        report(f"  {method}: {r['images_per_s']:.1f} images/s, {r['tflop_per_s']:.1f} TFLOP/s counted, MFU "
               f"{_pct(r['mfu'])}, peak memory {_gib(r['peak_memory_gib'])}")
        out[method] = r
    trades = out["trades-ltd"]["images_per_s"]
    out["trades-ltd"]["run"] = run_hours(ctx, trades, ctx.sched, test_fwd, monitor_fe)
    out["awp-ltd"]["run"] = run_hours(ctx, out["awp-ltd"]["images_per_s"], ctx.sched, test_fwd, monitor_fe,
                                      awp_off_images_per_s=trades)
    out["peak_memory_gib"] = max(_mem(out[m]) for m in ("trades-ltd", "awp-ltd", "eval_fp32"))
    return out


def part_natural(ctx: Context) -> dict:
    r = training_step(ctx, "natural")
    rates = eval_rates(ctx, tf32=False)
    r["run"] = run_hours(ctx, r["images_per_s"], ctx.teacher_sched, rates["forward"]["forward_equivalents_per_s"],
                         None)
    report(f"  natural step: {r['images_per_s']:.1f} images/s, MFU {_pct(r['mfu'])}")
    # The on-device loader alone: one epoch of crop + flip over CIFAR-shaped data on the device
    reset_memory(ctx.device)
    x, y, q = synthetic_batch(ctx, ctx.loader_images, seed=2)
    split = data.Split(x.to(ctx.device), y.to(ctx.device), None)
    padding = int(ex.dataset_cfg(ctx.config, DATASET).get("crop_padding", 4))
    loader = data.DeviceLoader(split, ctx.batch, soft_labels=q.to(ctx.device), crop_padding=padding, seed=0)
    next(iter(loader.epoch(0)))  # warm-up

    def epoch():
        for _ in loader.epoch(1):
            pass

    t = timed(epoch, 1, ctx.device)["seconds"]
    loader_ips = ctx.loader_images / t
    share = None  # of a training step's time, were the loader's work not overlapped with it
    if (ctx.out / "train.json").exists():
        trades = (load_json(ctx.out / "train.json").get("result") or {}).get("trades-ltd")
        share = trades["images_per_s"] / loader_ips if trades else None
    report(f"  DeviceLoader (crop {padding} + flip, batch {ctx.batch}): {loader_ips:,.0f} images/s")
    return {"natural": r, "eval_fp32": rates,
            "loader": {"images": ctx.loader_images, "batch_size": ctx.batch, "crop_padding": padding,
                       "seconds_per_epoch": t, "images_per_s": loader_ips,
                       "share_of_trades_step_time": share, "peak_memory_gib": peak_memory_gib(ctx.device)},
            "peak_memory_gib": max(_mem(r), _mem(rates), peak_memory_gib(ctx.device) or 0)}


def part_autoattack(ctx: Context) -> dict:
    eps = float(ctx.evaluation["eps"])
    ev = {"autoattack": {"version": "standard"}}
    plan = budget.autoattack_plan(ev, CLASSES)  # (attack, forward-equivalents per attacked image, which)
    out = {"eps": eps, "n": ctx.aa_n, "plan": [list(p) for p in plan], "runs": {}}
    # TF32 is a CUDA mode: on the CPU (--dry) only fp32 exists
    for tf32 in ((False, True) if ctx.device.type == "cuda" else (False,)):
        reset_memory(ctx.device)
        runtime.allow_tf32(ctx.device, tf32)
        try:
            model = MeanIntensityNet().to(ctx.device)
            x, y, clean, robust = known_answer_data(model, ctx.aa_n, eps, image_size=ctx.image_size)
            record, flags = run_autoattack(model, x.to(ctx.device), y.to(ctx.device), eps=eps, version="standard",
                                           square_queries=ctx.square_queries, batch_size=ctx.aa_batch,
                                           device=ctx.device, progress=False)
            aa_memory = peak_memory_gib(ctx.device)
        finally:
            runtime.allow_tf32(ctx.device, False)
        precision = record["precision"]
        attacked = record["attacked"]
        per_attack = {a: {"attacked": attacked[a], "seconds": record["seconds_per_attack"][a],
                          "seconds_per_image": record["seconds_per_attack"][a] / attacked[a] if attacked[a] else None,
                          "fraction_attacked": attacked[a] / ctx.aa_n,
                          "robust_after": record["robust_accuracy_after"][a]} for a in record["attacks"]}
        known = torch.equal(flags[record["attacks"][-1]], robust) and record["clean_accuracy"] == clean.sum().item() / len(y)
        rates = eval_rates(ctx, tf32=tf32)
        projection = project_autoattack(ctx, plan, per_attack, rates)
        out["runs"][precision] = {
            "known_answer_model": {"clean_accuracy": record["clean_accuracy"],
                                   "robust_accuracy": record["robust_accuracy"],
                                   "expected_robust_accuracy": robust.sum().item() / len(y),
                                   "flags_equal_the_known_answer": known, "seconds": record["seconds"],
                                   "square_queries": record["square_queries"], "per_attack": per_attack,
                                   "peak_memory_gib": aa_memory},
            "model_rates": {"arch": ctx.arch, **rates}, "projection": projection}
        report(f"  {precision}: known-answer model robust {record['robust_accuracy']:.3f} (expected "
               f"{robust.sum().item() / len(y):.3f}, flags equal: {known}), {record['seconds']:.1f} s for "
               f"{ctx.aa_n} images; {ctx.arch} projected {projection['projected_hours']:.2f} h for 10,000 images "
               f"({projection['projected_hours_with_small_model_time']:.2f} h counting the small model's time as "
               "overhead)")
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
            "projected": "forward-equivalents per attacked image from ltd.budget.autoattack_plan; "
                         "with_small_model_time adds the small model's whole measured time per batch as overhead",
            "per_attack": attacks, "projected_hours": seconds / 3600,
            "projected_hours_with_small_model_time": (seconds + overhead) / 3600}


def part_compile(ctx: Context) -> dict:
    """In a child process with a time limit: a compile can take minutes and cannot be interrupted in-process."""
    if not ctx.args.child:
        limit = min(ctx.args.compile_timeout, ctx.args.time_limit - ctx.elapsed() - 5)
        if limit < 30:
            return {"status": f"skipped: {max(limit, 0):.0f} s left of --time-limit {ctx.args.time_limit:.0f}"}
        (ctx.out / "compile.json").unlink(missing_ok=True)  # only the child's own answer counts
        reset_memory(ctx.device)  # hand this process's cached GPU memory back for the child
        cmd = [sys.executable, str(Path(__file__).resolve()), "--child", "--parts", "compile", "--out", str(ctx.out),
               "--force", "--steps", str(ctx.steps), "--warmup", str(ctx.warmup)] + (["--dry"] if ctx.dry else [])
        try:
            subprocess.run(cmd, cwd=ROOT, timeout=limit, check=False)
        except subprocess.TimeoutExpired:
            return {"status": f"timeout: the compiled step did not finish within {limit:.0f} s (compile included)",
                    "limit_seconds": limit}
        path = ctx.out / "compile.json"
        if not path.exists():
            return {"status": "error: the child process wrote no compile.json"}
        return {"from_child": load_json(path)}
    backend = "eager" if ctx.dry else "inductor"  # --dry: dynamo's tracing only (no C++/Triton codegen on CI)
    t0 = time.time()
    r = training_step(ctx, "trades-ltd", compile_backend=backend)
    r["compile_seconds"] = r["first_step_seconds"]  # the first step compiles (both modes: the attack's eval, train)
    r["wall_seconds"] = time.time() - t0
    eager = ctx.out / "train.json"
    if eager.exists():
        e = load_json(eager).get("result", {}).get("trades-ltd", {})
        if e.get("first_loss") is not None:
            r["eager_first_loss"] = e["first_loss"]
            r["first_loss_relative_difference"] = abs(r["first_loss"] - e["first_loss"]) / abs(e["first_loss"])
            r["speedup_over_eager"] = r["images_per_s"] / e["images_per_s"]
    report(f"  compiled ({backend}): compile {r['compile_seconds']:.1f} s, then {r['images_per_s']:.1f} images/s, MFU "
           f"{_pct(r['mfu'])}" + (f", {r['speedup_over_eager']:.2f}x eager" if "speedup_over_eager" in r else ""))
    return {"trades-ltd": r, "peak_memory_gib": r["peak_memory_gib"]}


# ---- plumbing -------------------------------------------------------------------------

def _pct(v):
    return "n/a" if v is None else f"{100 * v:.1f}%"


def _gib(v):
    return "n/a" if v is None else f"{v:.1f} GiB"


def _mem(d: dict) -> float:
    return d.get("peak_memory_gib") or 0.0


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


PART_FUNCTIONS = {"tests": part_tests, "train": part_train, "natural": part_natural, "autoattack": part_autoattack,
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
    if not ctx.cuda and not ctx.dry:
        status, result = "skipped: no CUDA (torch.cuda.is_available() is False; --dry runs the parts on the CPU)", {}
    else:
        try:
            result = PART_FUNCTIONS[name](ctx)
            status = result.pop("status", "ok")
            if name == "compile" and "from_child" in result:
                child = result["from_child"]
                status, result = child["status"], child.get("result", {})
            if name == "tests" and not result["ok"]:
                status = f"failed: {result['failed']} failed" + ("" if result["returncode"] is not None else
                                                                 ", timed out")
        except Exception as e:  # a part's failure is its result; the next part still runs
            status, result = f"error: {type(e).__name__}: {e}", {"traceback": traceback.format_exc()}
    record = {"part": name, "status": status, "seconds": time.time() - t0, "result": result,
              "dry": ctx.dry, "device": str(ctx.device)}
    if not (name == "compile" and not ctx.args.child and status == "ok"):  # the child wrote it
        save_json(record, path)
    report(f"[{name}] {status} in {record['seconds']:.0f} s -> {path}")
    if status.startswith("error"):
        report(result["traceback"])
    return record


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
            key[m] = {"images_per_s": r["images_per_s"], "mfu": r["mfu"], "projected_hours": r["run"]["projected_hours"],
                      "peak_memory_gib": r["peak_memory_gib"]}
            rows.append((m, f"{ctx.arch} b{ctx.batch} {r['precision']} eager", f"{r['images_per_s']:.1f} img/s, "
                         f"MFU {_pct(r['mfu'])}", f"{r['run']['projected_hours']:.2f} h / {r['run']['epochs']} ep"))
    co = records.get("compile", {})
    if (co.get("result") or {}).get("trades-ltd"):
        r = co["result"]["trades-ltd"]
        key["trades-ltd compiled"] = {"images_per_s": r["images_per_s"], "mfu": r["mfu"],
                                      "compile_seconds": r["compile_seconds"]}
        rows.append(("trades-ltd", f"compiled ({r['compile']})", f"{r['images_per_s']:.1f} img/s, MFU {_pct(r['mfu'])}",
                     f"compile {r['compile_seconds']:.0f} s"))
    elif co:
        rows.append(("trades-ltd", "compiled", co.get("status", ""), ""))
    na = records.get("natural", {}).get("result") or {}
    if na:
        r = na["natural"]
        key["natural"] = {"images_per_s": r["images_per_s"], "mfu": r["mfu"],
                          "projected_hours": r["run"]["projected_hours"]}
        key["loader_images_per_s"] = na["loader"]["images_per_s"]
        rows.append(("natural", f"{ctx.arch} b{ctx.batch} {r['precision']} eager", f"{r['images_per_s']:.1f} img/s, "
                     f"MFU {_pct(r['mfu'])}", f"{r['run']['projected_hours']:.2f} h / {r['run']['epochs']} ep"))
        rows.append(("DeviceLoader", "crop+flip", f"{na['loader']['images_per_s']:,.0f} img/s", ""))
    aa = records.get("autoattack", {}).get("result") or {}
    for precision, r in (aa.get("runs") or {}).items():
        p, k = r["projection"], r["known_answer_model"]
        fg = r["model_rates"]["forward_input_gradient"]
        key[f"autoattack {precision}"] = {"projected_hours": p["projected_hours"],
                                          "projected_hours_with_small_model_time": p["projected_hours_with_small_model_time"],
                                          "known_answer_ok": k["flags_equal_the_known_answer"],
                                          "forward_input_gradient_mfu": fg["mfu"]}
        rows.append((f"AutoAttack {precision}", f"known answer {'ok' if k['flags_equal_the_known_answer'] else 'WRONG'}",
                     f"{ctx.arch} fwd+grad MFU {_pct(fg['mfu'])}",
                     f"{p['projected_hours']:.2f}-{p['projected_hours_with_small_model_time']:.2f} h / 10k img"))
    statuses = {name: rec.get("status") for name, rec in records.items()}
    env = environment(ctx)
    summary = {"environment": env, "status": statuses, "key": key, "seconds": ctx.elapsed()}
    if "trades-ltd" in key:
        summary["measured_mfu"] = {
            "training_bf16_trades_ltd": key["trades-ltd"]["mfu"],
            "training_bf16_awp_ltd": key.get("awp-ltd", {}).get("mfu"),
            "evaluation_fp32_forward_input_gradient": (key.get("autoattack fp32") or {}).get("forward_input_gradient_mfu"),
            "evaluation_tf32_forward_input_gradient": (key.get("autoattack tf32") or {}).get("forward_input_gradient_mfu"),
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
    report("status: " + ", ".join(f"{k} {v}" for k, v in statuses.items()))
    report(f"summary: {ctx.out / 'summary.json'} ({ctx.elapsed():.0f} s in all)")
    return summary


def main(argv=None) -> dict:
    args = parse_args(argv)
    ctx = Context(args)
    ctx.out.mkdir(parents=True, exist_ok=True)
    if args.child:
        record = run_part(ctx, "compile")
        return {"status": {"compile": record["status"]}}
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
