"""The five stages of the device check (benchmarks/device_check.py), each one function
``stage(ctx, res)`` that fills ``res`` as it measures (``ctx.save()`` writes what it has:
a stage cut off by its cap keeps its finished measurements).

Everything trains through the library's own loop, ``ltd.train.fit``, with the step of
``ltd.steps.build_step`` and the loaders of ``ltd.data`` (``DeviceLoader``) and
``ltd.teacher_labels`` (``TeacherLabels``): the loop users run, never a copy of it.
Random images stand in for data except in stage 4 (real CIFAR-10 from its JPEG archive).
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from benchmarks import clock
from ltd import data, flops, fp16_emulation, image_files, jobspec, loaders, runtime, throughput
from ltd.attacks import pgd_attack
from ltd.autoattack import run_autoattack
from ltd.compiled import AttackForward
from ltd.losses import tempered_softmax
from ltd.models import build_model
from ltd.steps import build_step
from ltd.teacher_labels import TeacherLabels
from ltd.train import fit

EPS, STEP_SIZE = 8 / 255, 2 / 255  # TRADES's training attack (its steps: Sizes.attack_steps)
AWP = {"gamma": 5e-3, "warmup_epochs": 0, "proxy_lr": 0.1}  # config.yaml's awp, perturbing from the first step
CLASSES = 10
LOGIT_SCALE = 10.0  # spread of the stand-in teacher logits (stages 1-3): a confident CIFAR teacher's
CORRECTNESS_METHODS = ("trades", "trades-ltd", "awp-ltd")
AUTOCAST = ("fp16", "bf16")


@dataclass(frozen=True)
class Sizes:
    """What each stage runs: the GPU's shapes, or --dry's (the same code on tiny shapes)."""

    big: str  # WRN-34-10: stages 1, 3, 5
    small: str  # PreAct ResNet-18: stages 2, 3, 4
    image_size: int
    batch: int
    attack_steps: int
    scale_steps: int  # stage 1: fp16 steps before the GradScaler's scale is read
    emu_n: int  # stage 2: images compared
    emu_steps: int  # stage 2: fp16 steps between the two comparisons
    timed_steps: int  # stage 3: steps of each epoch (one warm-up epoch, one timed)
    launch_batch: int  # stage 3: the tiny batch whose step time is all host (launch cost)
    teacher_steps: int  # stage 4
    teacher_images: int
    slice_steps: int  # stage 4: each student's steps
    slice_every: int  # stage 4: the stalled fraction is read every this many steps
    test_images: int  # stage 4: the teacher's clean accuracy
    aa_n: int  # stage 5
    aa_iters: int
    compile_backend: str


GPU = Sizes("wrn-34-10", "preact-resnet18", 32, 128, 10, 50, 256, 100, 20, 8, 400, 12800, 200, 50, 1000,
            500, 10, "inductor")
DRY = Sizes("wrn-10-1", "wrn-10-1", 16, 8, 2, 3, 16, 2, 2, 2, 4, 32, 4, 2, 16, 16, 2, "aot_eager")


def attack(sizes: Sizes) -> dict:
    return {"eps": EPS, "step_size": STEP_SIZE, "steps": sizes.attack_steps}


# ---- shared pieces: a model, a batch, one call of the loop ----

def fresh_model(arch: str, device: torch.device, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model(arch, CLASSES).to(device)


def random_split(n: int, size: int, device: torch.device, seed: int = 0) -> loaders.Split:
    g = torch.Generator().manual_seed(seed)
    x, y = torch.rand(n, 3, size, size, generator=g), torch.randint(0, CLASSES, (n,), generator=g)
    return loaders.Split(x, y, np.arange(n)).to(device)


def stand_in_labels(n: int, temperature: float, device: torch.device, seed: int = 0) -> torch.Tensor:
    """q_T of a stand-in teacher: softmax(z / T) of logits spread like a trained one's."""
    g = torch.Generator().manual_seed(seed + 1)
    return tempered_softmax(LOGIT_SCALE * torch.randn(n, CLASSES, generator=g), temperature).to(device)


def schedule(epochs: int) -> dict:
    """The paper's SGD (Appendix A) without LR steps, channels_last on, the stall alarm off
    (stages 2 and 4 measure stalls on purpose)."""
    return {"epochs": epochs, "lr": 0.1, "momentum": 0.9, "weight_decay": 5e-4, "nesterov": True,
            "lr_milestones": [], "lr_gamma": 0.1, "channels_last": True, "compile": False,
            "stalled_attacks": {"warn": None, "stop": None}}


def train(ctx, model, method: str, loader, precision: str, epochs: int, compile_attack: bool = False) -> list[dict]:
    """``epochs`` epochs of ``method`` through ``ltd.train.fit`` (checkpoints in the work
    folder, one per call: nothing resumes another call's run); its per-epoch history."""
    step = build_step(method, beta=6.0, attack=attack(ctx.sizes), awp=AWP)
    if compile_attack:
        step.compiled_attack = AttackForward(ctx.sizes.compile_backend)
    ckpt = ctx.work / f"run{next(ctx.runs)}.pt"
    try:
        return fit(model, step, loader, schedule(epochs), ckpt_path=ckpt, device=ctx.device, precision=precision,
                   desc=f"{method} {precision}")
    finally:
        ckpt.unlink(missing_ok=True)


def peak_tflops(ctx, precision: str) -> float:
    """The budget's dense peak of ``precision`` (config.yaml's budget: Hopper's)."""
    b = ctx.config["budget"]
    return {"fp32": b["fp32_peak_tflops"], "tf32": b["tf32_peak_tflops"]}.get(precision, b["peak_tflops"])


def mfu(ctx, arch: str, img_per_s: float, fe: float, precision: str) -> float:
    fwd = flops.model_forward_flops(arch, ctx.sizes.image_size)
    return img_per_s * fe * fwd / (peak_tflops(ctx, precision) * 1e12)


def calibration_row(ctx, arch: str, precision: str, step: str, batch: int, img_per_s: float,
                    fe: float | None, source: str) -> dict:
    row = {"arch": arch, "image_size": ctx.sizes.image_size, "precision": precision, "step": step,
           "batch_size": batch, "img_per_s": round(img_per_s, 2)}
    if fe is not None:
        row["forward_equivalents"] = round(fe, 2)
    return {**row, "device": ctx.device_name, "date": ctx.date, "source": source}


# ---- stage 1: correctness on CUDA ----

def gradient_check(model: torch.nn.Module) -> dict:
    """The gradients the loop's last optimiser step used (after the scaler's unscale):
    every weight's must exist, be finite and not all zero."""
    missing, nonfinite, zero = [], [], []
    for name, p in model.named_parameters():
        if p.grad is None:
            missing.append(name)
        elif not torch.isfinite(p.grad).all():
            nonfinite.append(name)
        elif not p.grad.any():
            zero.append(name)
    n = sum(1 for _ in model.parameters())
    return {"parameters": n, "missing": missing, "nonfinite": nonfinite, "zero": zero,
            "ok": not (missing or nonfinite or zero)}


def step_loss(ctx, model, init: dict, method: str, precision: str, batch) -> float:
    """The step's loss on ``batch`` from weights ``init`` under ``precision`` (the same
    random start: the same seed), through the step object the loop calls."""
    model.load_state_dict(init)
    model.train()
    step = build_step(method, beta=6.0, attack=attack(ctx.sizes), awp=AWP)
    torch.manual_seed(1)
    with runtime.in_tf32_mode(ctx.device, "fp32"), runtime.autocast(ctx.device, precision):
        loss, _, _ = step(model, *batch)
    step.after_update(model)  # AWP: its weight perturbation off again
    return loss.item()


def correctness(ctx, res: dict) -> None:
    s, dev = ctx.sizes, ctx.device
    split = random_split(s.batch, s.image_size, dev)
    q = stand_in_labels(s.batch, 1.0, dev)
    one_batch = loaders.DeviceLoader(split, s.batch, q=q, crop_padding=4)
    model = fresh_model(s.big, dev)
    init = copy.deepcopy(model.state_dict())
    res["arch"], res["batch"] = s.big, s.batch
    res["gradients"] = {}
    for method in CORRECTNESS_METHODS:
        for precision in AUTOCAST:
            model.load_state_dict(init)
            history = train(ctx, model, method, one_batch, precision, epochs=1)
            check = gradient_check(model)
            check["skipped_steps"] = history[-1].get("train_skipped_steps", 0)
            res["gradients"][f"{method} {precision}"] = check
            ctx.save()
    batch = (split.x, split.y, q)
    res["loss"] = {}
    for method in CORRECTNESS_METHODS:
        losses = {p: step_loss(ctx, model, init, method, p, batch) for p in ("fp32", *AUTOCAST)}
        losses.update({f"{p}_vs_fp32": abs(losses[p] - losses["fp32"]) / abs(losses["fp32"]) for p in AUTOCAST})
        res["loss"][method] = losses
        ctx.save()
    model.load_state_dict(init)
    many = loaders.DeviceLoader(random_split(s.batch * s.scale_steps, s.image_size, dev, seed=2), s.batch,
                                q=stand_in_labels(s.batch * s.scale_steps, 1.0, dev), crop_padding=4)
    record = train(ctx, model, "trades-ltd", many, "fp16", epochs=1)[-1]
    res["grad_scaler"] = {"steps": len(many), "scale": record["loss_scale"],
                          "skipped_steps": record["train_skipped_steps"], "initial_scale": 2.0 ** 16}
    bad = [k for k, v in res["gradients"].items() if not v["ok"]]
    worst = max(v[f"{p}_vs_fp32"] for v in res["loss"].values() for p in AUTOCAST)
    res["summary"] = [f"every weight got a finite non-zero gradient in {len(res['gradients']) - len(bad)} of "
                      f"{len(res['gradients'])} (method, precision) steps" + (f"; NOT in {bad}" if bad else ""),
                      f"loss vs fp32, largest relative difference: {worst:.2e}",
                      f"GradScaler scale after {len(many)} fp16 steps: {record['loss_scale']:g} "
                      f"({record['train_skipped_steps']} skipped)"]


# ---- stage 2: the CPU emulation of fp16 against real fp16 ----

def emulation_gaps(result: dict) -> dict:
    """Emulated minus real fp16, in percentage points."""
    emu, real = result[fp16_emulation.PRECISION], result["fp16"]
    return {k: 100 * (emu[k] - real[k]) for k in ("zero_grad", "stalled")}


def emulation(ctx, res: dict) -> None:
    s, dev = ctx.sizes, ctx.device
    model = fresh_model(s.small, dev)
    x = random_split(s.emu_n, s.image_size, dev, seed=3).x
    kw = {"eps": EPS, "step_size": STEP_SIZE, "steps": s.attack_steps}
    res["arch"], res["n"], res["temperature"] = s.small, s.emu_n, 20.0
    res["init"] = fp16_emulation.compare(model, x, **kw)
    res["init_gap_points"] = emulation_gaps(res["init"])
    ctx.save()
    n = s.batch * s.emu_steps
    loader = loaders.DeviceLoader(random_split(n, s.image_size, dev, seed=4), s.batch,
                                  q=stand_in_labels(n, 20.0, dev), crop_padding=4)
    record = train(ctx, model, "trades-ltd", loader, "fp16", epochs=1)[-1]
    res["trained_steps"], res["trained_stalled"] = len(loader), record["train_stalled"]
    res["trained"] = fp16_emulation.compare(model, x, **kw)
    res["trained_gap_points"] = emulation_gaps(res["trained"])
    worst = max(abs(v) for g in (res["init_gap_points"], res["trained_gap_points"]) for v in g.values())
    res["within_2_points"] = worst <= 2.0
    res["summary"] = [f"emulated - real fp16 (points): at init {_gaps(res['init_gap_points'])}; after "
                      f"{len(loader)} fp16 steps at T = 20 {_gaps(res['trained_gap_points'])}: "
                      + ("within" if worst <= 2.0 else "NOT within") + " the issue's 2 points"]


def _gaps(g: dict) -> str:
    return ", ".join(f"{k} {v:+.2f}" for k, v in g.items())


# ---- stage 3: throughput per architecture ----

def timed(ctx, arch: str, precision: str, batch: int, compile_attack: bool = False) -> dict:
    """The TRADES+LTD step through fit: one warm-up epoch, one timed, ``timed_steps`` each."""
    s = ctx.sizes
    n = batch * s.timed_steps
    loader = loaders.DeviceLoader(random_split(n, s.image_size, ctx.device, seed=5), batch,
                                  q=stand_in_labels(n, 1.0, ctx.device), crop_padding=4)
    if ctx.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(ctx.device)
    history = train(ctx, fresh_model(arch, ctx.device), "trades-ltd", loader, precision, epochs=2,
                    compile_attack=compile_attack)
    seconds = history[1]["seconds"]
    out = {"arch": arch, "precision": precision, "batch": batch, "compile_attack": compile_attack,
           "steps": len(loader), "step_seconds": seconds / len(loader), "img_per_s": n / seconds,
           "warmup_epoch_seconds": history[0]["seconds"]}
    if ctx.device.type == "cuda":
        out["peak_memory_gib"] = torch.cuda.max_memory_allocated(ctx.device) / 2**30
    return out


def throughput_stage(ctx, res: dict) -> None:
    s = ctx.sizes
    fe = flops.forward_equivalents("trades-ltd", attack(s))
    res["forward_equivalents"], res["runs"], res["rows"] = fe, [], []
    eager = [(a, p, False) for a in (s.big, s.small) for p in ("bf16", "fp16")]
    compiled = [(a, p, True) for p in ("bf16", "fp16") for a in (s.big, s.small)]
    for i, (arch, precision, comp) in enumerate(eager + compiled):
        if i == len(eager):
            res["launch"] = launch_cost(ctx)
            ctx.save()
        if comp:  # each compiled run compiles afresh (its own cost; dynamo's cache never overflows to eager)
            torch.compiler.reset()
        run = timed(ctx, arch, precision, s.batch, comp)
        run["mfu"] = mfu(ctx, arch, run["img_per_s"], fe, precision)
        res["runs"].append(run)
        if not comp:  # the budget prices the config's default, compile_attack off
            res["rows"].append(calibration_row(ctx, arch, precision, "trades-ltd", s.batch, run["img_per_s"], fe,
                                               f"benchmarks/device_check.py stage 3 (ltd.train.fit, channels_last, "
                                               f"eager); MFU {run['mfu']:.3f}"))
        ctx.save()
    res["summary"] = [f"{r['arch']} {r['precision']}{' compiled attack' if r['compile_attack'] else ''}: "
                      f"{r['img_per_s']:.0f} img/s, MFU {r['mfu']:.3f}" for r in res["runs"]]
    if "launch" in res:
        res["summary"].append(f"host cost per launch: {1e6 * res['launch']['seconds_per_launch']:.1f} us "
                              "(the budget assumes 15 us)")


def launch_cost(ctx) -> dict:
    """Seconds per kernel launch: a step at a tiny batch is all host time, so its seconds
    over its counted launches (ltd.throughput.launches) is the host's cost of one."""
    s = ctx.sizes
    run = timed(ctx, s.small, "bf16", s.launch_batch)
    n = throughput.launches(s.small, "trades", s.attack_steps)
    return {"arch": s.small, "batch": s.launch_batch, "step_seconds": run["step_seconds"], "launches": n,
            "seconds_per_launch": run["step_seconds"] / n}


# ---- stage 4: a real-CIFAR slice ----

def cifar_slice(ctx, res: dict) -> None:
    s, dev = ctx.sizes, ctx.device
    t0 = time.time()
    ds = {"source": "cifarfolder", "path": str(ctx.work / "cifar10-jpeg"), "archive": str(ctx.archive),
          "val_size": 0, "train_size": s.teacher_images, "test_size": s.test_images}
    image_files.unpack_archive(ds)
    split = data.load_split(jobspec.Data.of(ds), "train").to(dev)
    test = data.load_split(jobspec.Data.of(ds), "test").to(dev)
    res["data"] = {"archive": str(ctx.archive), "train_images": len(split), "seconds": time.time() - t0}
    teacher = fresh_model(s.small, dev, seed=10)
    loader = loaders.DeviceLoader(split, s.batch, crop_padding=4)
    train(ctx, teacher, "natural", loader, "bf16", epochs=max(1, math.ceil(s.teacher_steps / len(loader))))
    res["teacher"] = {"arch": s.small, "steps": s.teacher_steps, "precision": "bf16",
                      "test_accuracy": accuracy(teacher, test)}
    ctx.save()
    students = loaders.Split(split.x[: s.batch * s.slice_every], split.y[: s.batch * s.slice_every],
                             split.indices[: s.batch * s.slice_every])
    res["students"] = {}
    for temperature in (5.0, 20.0):
        for precision in AUTOCAST:
            labelled = TeacherLabels(loaders.DeviceLoader(students, s.batch, crop_padding=4), teacher, temperature,
                                     dev, precision)
            student = fresh_model(s.small, dev, seed=11)
            history = train(ctx, student, "trades-ltd", labelled, precision, epochs=s.slice_steps // s.slice_every)
            res["students"][f"T={temperature:g} {precision}"] = [
                {"step": r["epoch"] * s.slice_every, **{k: r[k] for k in ("train_stalled", "train_moved", "train_loss",
                                                                         "train_accuracy", "train_adv_accuracy")},
                 **({"loss_scale": r["loss_scale"]} if "loss_scale" in r else {})} for r in history]
            res["students"][f"T={temperature:g} {precision}"].append({"test_accuracy": accuracy(student, test)})
            ctx.save()
    res["summary"] = [f"teacher {res['teacher']['test_accuracy']:.3f} clean"] + [
        f"{k}: stalled " + " ".join(f"{r['train_stalled']:.2f}" for r in v if "train_stalled" in r)
        for k, v in res["students"].items()]


@torch.no_grad()
def accuracy(model: torch.nn.Module, split: loaders.Split) -> float:
    model.eval()
    correct = sum((model(split.x[i]).argmax(1) == split.y[i]).sum().item() for i in loaders.batches(split.x, 500))
    return correct / len(split)


# ---- stage 5: AutoAttack, fp32 against TF32 ----

def autoattack_stage(ctx, res: dict) -> None:
    s, dev = ctx.sizes, ctx.device
    model = fresh_model(s.big, dev).eval()
    split = random_split(s.aa_n, s.image_size, dev, seed=6)
    res["arch"], res["n"], res["rows"] = s.big, s.aa_n, []
    robust = {}
    for precision in ("fp32", "tf32"):
        with runtime.in_tf32_mode(dev, precision):
            pgd_attack(model, split.x, split.y, eps=EPS, step_size=STEP_SIZE, steps=1)  # warm-up (cuDNN's choice)
            rate = attack_rate(ctx, model, split)
            t0 = clock.now(dev)
            record, flags = run_autoattack(model, split.x, split.y, eps=EPS, version="custom", attacks=["apgd-ce"],
                                           batch_size=s.aa_n, device=dev, progress=False)
            seconds = clock.now(dev) - t0
        res[precision] = {"attack_img_per_s": rate, "mfu": mfu(ctx, s.big, rate, 2.0, precision),
                          "apgd_ce_seconds": seconds, "robust_accuracy": record.get("robust_accuracy"),
                          "clean_accuracy": record.get("clean_accuracy")}
        robust[precision] = flags["apgd-ce"]
        res["rows"].append(calibration_row(ctx, s.big, precision, throughput.ATTACK, s.aa_n, rate, None,
                                           f"benchmarks/device_check.py stage 5 (ltd.attacks.pgd_attack: forward + "
                                           f"input gradient, eval mode); MFU {res[precision]['mfu']:.3f}"))
        ctx.save()
    same = (robust["fp32"] == robust["tf32"]).float().mean().item()
    res["flags_equal_fp32_tf32"] = same
    res["summary"] = [f"forward + input gradient, batch {s.aa_n}: fp32 {res['fp32']['attack_img_per_s']:.0f} img/s, "
                      f"TF32 {res['tf32']['attack_img_per_s']:.0f} img/s; APGD-CE {res['fp32']['apgd_ce_seconds']:.1f} s"
                      f" vs {res['tf32']['apgd_ce_seconds']:.1f} s, robust flags equal on {100 * same:.1f} %"]


def attack_rate(ctx, model, split: loaders.Split) -> float:
    """Images per second of one attack iteration (eval-mode forward + input gradient)."""
    t0 = clock.now(ctx.device)
    pgd_attack(model, split.x, split.y, eps=EPS, step_size=STEP_SIZE, steps=ctx.sizes.aa_iters)
    return len(split) * ctx.sizes.aa_iters / (clock.now(ctx.device) - t0)


def archive_default(root: Path) -> list[Path]:
    """Where CIFAR-10's JPEG archive is looked for: carried (.carry/), the git-ignored data/,
    shared/ inside the checkout or beside it."""
    name = "cifar10-jpeg.tar.gz"
    return [root / ".carry" / name, root / "data" / name, root / "shared" / "data" / name,
            root.parent / "shared" / "data" / name]
