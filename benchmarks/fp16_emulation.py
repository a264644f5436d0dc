"""fp16-emulated on the CPU: its cost against fp32 and real CPU fp16, and why it differs from the latter.

    .venv/bin/python benchmarks/fp16_emulation.py                       # both parts, about 10 min on 2 cores
    .venv/bin/python benchmarks/fp16_emulation.py --part step --arch wrn-10-2
    .venv/bin/python benchmarks/fp16_emulation.py --part probe     # or --part kernels

``step``: one TRADES+LTD training step as ltd/train.py runs it (the step under the
precision's context, zero_grad, the GradScaler's scaled backward, step, update) of a
fresh ``--arch`` on ``--batch-size`` real CIFAR-10 training images at 32 px (streamed
from ``--archive``, the JPEG mirror of ../shared/data; its README), soft labels of a
fresh teacher of the same architecture at T = ``--temperature``, the paper's attack
(8/255, 10 steps of 2/255, TRADES's start), in fp32, fp16-emulated and real CPU fp16
autocast, on the same weights and batch. Printed: seconds per step of each (fp32 and
emulated: the median of ``--steps`` steps, interleaved, after one warm-up; real fp16:
``--real-steps``, no warm-up: it is about 30x slower), their ratios, and per precision,
at the initial weights, the fraction of exactly-zero pixels of the attack's first input
gradient, and the first step's stalled fraction (ltd.attacks.stalled) and loss (the same
random start for each).

``probe``: the feasibility probe's net (3 x conv-BN-ReLU-maxpool, 16/32/64 channels,
linear head scaled by 1.0 and 0.05; 32 px, batch 32, random init) whose real CPU fp16
had more zero-gradient pixels than the emulation. Printed: the zero fraction in fp32,
real CPU fp16, the emulation, and the emulation with the CPU's own 3x3-convolution
input gradient (a GEMM rounded to fp16 per kernel tap, the taps then summed in fp16,
col2im: tests/test_fp16_emulation.py shows it equals the CPU's kernel bit for bit), then
layer by layer the zero fraction of the gradient at each layer's output.

``kernels``: op by op, how often the CPU's fp16 kernel (forward, and input gradient with
grad-outputs in fp16's subnormal range) equals fp32 arithmetic on the same fp16 values
rounded once, which is what CUDA's fp16 kernels and the emulation compute.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import platform
import statistics
import sys
import tarfile
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))

from ltd import fp16_emulation as emu  # noqa: E402
from ltd import runtime  # noqa: E402
from ltd.models import build_model  # noqa: E402
from ltd.steps import build_step  # noqa: E402

ARCHIVE = ROOT.parent / "shared" / "data" / "cifar10-jpeg.tar.gz"
CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
ATTACK = {"eps": 8 / 255, "step_size": 2 / 255}  # the paper's, with --attack-steps (10)
PRECISIONS = ("fp32", emu.PRECISION, "fp16")


def cifar_batch(archive: Path, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``n`` training images of the archive (in its order), as [0, 1] floats, and their labels."""
    from torchvision.io import decode_jpeg

    xs, ys = [], []
    with tarfile.open(archive, "r:gz") as tar:
        for member in tar:
            parts = Path(member.name).parts
            if member.isfile() and "train" in parts and parts[-2] in CLASSES:
                raw = torch.frombuffer(bytearray(tar.extractfile(member).read()), dtype=torch.uint8)
                xs.append(decode_jpeg(raw).float() / 255)
                ys.append(CLASSES.index(parts[-2]))
                if len(xs) == n:
                    break
    return torch.stack(xs), torch.tensor(ys)


def _context(precision: str):
    return runtime.autocast(torch.device("cpu"), precision)


def _train_step(model, step, opt, scaler, precision, x, y, q, seed):
    torch.manual_seed(seed)  # the attack's random start: the same for every precision
    t0 = time.perf_counter()
    with _context(precision):
        loss, _, stats = step(model, x, y, q)
    opt.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(opt)
    scaler.update()
    return time.perf_counter() - t0, stats["stalled"].item(), loss.item()


def bench_step(args) -> dict:
    x, y = cifar_batch(Path(args.archive), args.batch_size)
    torch.manual_seed(args.seed + 1)
    teacher = build_model(args.arch, 10).eval()
    with torch.no_grad():
        q = torch.softmax(teacher(x) / args.temperature, 1)
    torch.manual_seed(args.seed)
    base = build_model(args.arch, 10)
    start = emu.attack_start(x, args.seed)
    out = {"arch": args.arch, "batch_size": args.batch_size, "attack_steps": args.attack_steps, "image_size": x.shape[-1], "temperature": args.temperature,
           "threads": torch.get_num_threads(), "machine": platform.processor() or platform.machine(),
           "torch": torch.__version__, "images": f"{Path(args.archive).name}: the first {len(x)} training images"}
    runners = {}
    for p in PRECISIONS:
        model = copy.deepcopy(base)
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4, nesterov=True)
        runners[p] = (model, build_step("trades-ltd", beta=6.0, attack={**ATTACK, "steps": args.attack_steps}), opt,
                      torch.amp.GradScaler("cpu", enabled=p != "fp32"))
        zero = (emu.start_gradient(model, x, start, p) == 0).double().mean().item()
        out[p] = {"zero_grad": zero, "seconds": []}
    # The first step of each (fp32 and the emulation: their untimed warm-up) starts from the
    # same weights and random start: its stalled fraction and loss are compared.
    for p in ("fp32", emu.PRECISION):
        _, out[p]["stalled"], out[p]["loss"] = _train_step(*runners[p], p, x, y, q, args.seed)
    for i in range(args.steps):  # interleaved: both see the same background load
        for p in (("fp32", emu.PRECISION) if i % 2 == 0 else (emu.PRECISION, "fp32")):
            out[p]["seconds"].append(_train_step(*runners[p], p, x, y, q, args.seed + 1 + i)[0])
    for i in range(args.real_steps):
        seconds, stalled, loss = _train_step(*runners["fp16"], "fp16", x, y, q, args.seed + i)
        out["fp16"]["seconds"].append(seconds)
        if i == 0:
            out["fp16"]["stalled"], out["fp16"]["loss"] = stalled, loss
    for p in PRECISIONS:
        out[p]["median_seconds"] = statistics.median(out[p]["seconds"])
    t = {p: out[p]["median_seconds"] for p in PRECISIONS}
    out["ratios"] = {"emulated/fp32": t[emu.PRECISION] / t["fp32"], "real fp16/fp32": t["fp16"] / t["fp32"],
                     "real fp16/emulated": t["fp16"] / t[emu.PRECISION]}
    print(f"TRADES+LTD step, {args.arch}, batch {len(x)}, 32 px, real CIFAR-10, T={args.temperature:g}, "
          f"{out['threads']} threads, torch {torch.__version__}")
    for p in PRECISIONS:
        r = out[p]
        print(f"  {p:14s} {r['median_seconds']:8.2f} s/step (n={len(r['seconds'])})   zero-grad pixels "
              f"{100 * r['zero_grad']:6.2f} %   first step: stalled {100 * r['stalled']:6.2f} %, loss {r['loss']:.5f}")
    print("  ratios: " + ", ".join(f"{k} {v:.2f}x" for k, v in out["ratios"].items()))
    return out


# ---- the probe: where real CPU fp16 and the emulation part ----

def probe_net(head_scale: float) -> nn.Module:
    torch.manual_seed(0)
    layers, c = [], 3
    for o in (16, 32, 64):
        layers += [nn.Conv2d(c, o, 3, padding=1), nn.BatchNorm2d(o), nn.ReLU(), nn.MaxPool2d(2)]
        c = o
    net = nn.Sequential(*layers, nn.Flatten(), nn.Linear(64 * 4 * 4, 10))
    with torch.no_grad():
        net[-1].weight *= head_scale
        net[-1].bias *= head_scale
    return net.eval()


class _CpuCol2imConv(torch.autograd.Function):
    """A stride-1 'same' 3x3 convolution whose input gradient is rounded as the CPU's fp16
    kernel rounds it: per kernel tap (GEMM over output channels in fp32, rounded to fp16),
    the taps then summed in fp16 by col2im (F.fold in fp16). Forward and weight gradient
    as the emulation's."""

    @staticmethod
    def forward(ctx, x, w, b):
        ctx.save_for_backward(x, w)
        return F.conv2d(x.float(), w.float(), b.float(), padding=1).half()

    @staticmethod
    def backward(ctx, g):
        x, w = ctx.saved_tensors
        n, co, h, wd = g.shape
        cols = torch.einsum("ok,nol->nkl", w.float().reshape(co, -1), g.float().reshape(n, co, -1))
        gx = F.fold(cols.half(), (h, wd), w.shape[-1], padding=1)
        gw = torch.ops.aten.convolution_backward(g.float(), x.float(), w.float(), None, [1, 1], [1, 1], [1, 1], False,
                                                 [0, 0], 1, [False, True, False])[1].half()
        return gx, gw, g.float().sum((0, 2, 3)).half()


class CpuKernelEmulation(emu.Fp16Emulation):
    """The emulation with the CPU's 3x3-convolution input gradient (``_CpuCol2imConv``)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if getattr(func, "__name__", None) == "conv2d":
            x, w, b = (self._to_half(t) for t in args[:3])
            return _CpuCol2imConv.apply(x, w, b)
        return super().__torch_function__(func, types, args, kwargs)


def _layer_zero_fractions(net, x, start, context) -> tuple[list[tuple[str, float]], float]:
    """Per layer, the zero fraction of d KL / d (layer output) at the attack's start; and of the input gradient."""
    grads, hooks = {}, []
    for name, mod in net.named_children():
        def hook(mod, inp, out, key=f"{name}:{type(mod).__name__}"):
            if out.requires_grad:
                out.register_hook(lambda g: grads.__setitem__(key, (g == 0).double().mean().item()))
        hooks.append(mod.register_forward_hook(hook))
    try:
        with context:
            with torch.no_grad():
                log_p = F.log_softmax(net(x).float(), 1)
            xs = start.clone().requires_grad_(True)
            kl = F.kl_div(F.log_softmax(net(xs).float(), 1), log_p, reduction="sum", log_target=True)
            (g,) = torch.autograd.grad(kl, xs)
    finally:
        for h in hooks:
            h.remove()
    return list(grads.items()), (g == 0).double().mean().item()


def bench_probe(args) -> dict:
    x = torch.rand(32, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    start = emu.attack_start(x, 2)
    contexts = {"fp32": contextlib.nullcontext, "real CPU fp16": lambda: torch.autocast("cpu", dtype=torch.float16),
                "emulated": emu.Fp16Emulation, "emulated, CPU's conv input gradient": CpuKernelEmulation}
    out = {}
    print("Probe net (3 x conv3x3-BN-ReLU-maxpool 16/32/64, linear head), 32 px, batch 32, random init: "
          "zero-gradient pixels of TRADES's first input gradient")
    for scale in (1.0, 0.05):
        net = probe_net(scale)
        layers, total = {}, {}
        for k, c in contexts.items():
            layers[k], total[k] = _layer_zero_fractions(net, x, start, c())
        out[str(scale)] = {"input": total, "layers": layers}
        print(f"  head scale {scale:g}: " + ", ".join(f"{k} {100 * v:.1f} %" for k, v in total.items()))
        if scale == 1.0:
            names = [n for n, _ in layers["real CPU fp16"]]
            print(f"    {'d KL / d (output of)':22s}" + "".join(f"{k[:22]:>24s}" for k in contexts if k != "fp32"))
            for i, n in reversed(list(enumerate(names))):
                print(f"    {n:22s}" + "".join(f"{100 * layers[k][i][1]:23.2f}%" for k in contexts if k != "fp32"))
    return out


# ---- the CPU's fp16 kernels, op by op, against fp32 arithmetic rounded once ----

def _round_once_agreement(fn, x16, g16) -> tuple[float, float]:
    """(forward, input gradient): the fraction of outputs where ``fn``'s fp16 CPU kernel
    equals ``fn`` in fp32 on the same fp16 values, rounded to fp16 once (what CUDA's fp16
    kernels compute: fp32 arithmetic, one rounding)."""
    xh = x16.detach().clone().requires_grad_(True)
    yh = fn(xh)
    gh = g16.flatten()[:yh.numel()].view_as(yh).to(yh.dtype)
    (gxh,) = torch.autograd.grad(yh, xh, gh)
    xf = x16.float().requires_grad_(True)
    yf = fn(xf)
    (gxf,) = torch.autograd.grad(yf, xf, gh.float())
    return (yh == yf.to(yh.dtype)).double().mean().item(), (gxh == gxf.half()).double().mean().item()


def bench_kernels(args) -> dict:
    g = torch.Generator().manual_seed(0)
    x = (torch.randn(32, 16, 16, 16, generator=g) * 3).half()
    grad = (torch.randn(32, 16, 16, 16, generator=g) * 1e-6).half()  # in fp16's subnormal range, as at high T
    w, b = torch.rand(16, generator=g) + 0.5, torch.randn(16, generator=g)
    rm, rv = torch.randn(16, generator=g), torch.rand(16, generator=g) + 0.5
    w1, w3 = ((torch.randn(16, 16, k, k, generator=g) * 0.1).half() for k in (1, 3))
    wl = (torch.randn(10, 16 * 16 * 16, generator=g) * 0.01).half()
    ops = {
        "batch_norm, train (fp32 parameters)": lambda t: F.batch_norm(t, rm.clone(), rv.clone(), w, b, training=True),
        "batch_norm, eval (fp32 parameters)": lambda t: F.batch_norm(t, rm, rv, w, b, training=False),
        "relu": F.relu, "max_pool2d 2x2": lambda t: F.max_pool2d(t, 2), "avg_pool2d 2x2": lambda t: F.avg_pool2d(t, 2),
        "adaptive_avg_pool2d 1": lambda t: F.adaptive_avg_pool2d(t, 1), "add (residual)": lambda t: t + t.flip(0),
        "conv2d 1x1": lambda t: F.conv2d(t, w1.to(t.dtype)), "conv2d 3x3": lambda t: F.conv2d(t, w3.to(t.dtype), padding=1),
        "linear (4096 -> 10)": lambda t: F.linear(t.flatten(1), wl.to(t.dtype)),
    }
    out = {}
    print("CPU fp16 kernels against fp32 arithmetic rounded once (fraction of outputs equal; "
          "input gradients in fp16's subnormal range)")
    for name, fn in ops.items():
        out[name] = dict(zip(("forward", "input_gradient"), _round_once_agreement(fn, x, grad)))
        print(f"  {name:38s} forward {100 * out[name]['forward']:6.2f} %   input gradient "
              f"{100 * out[name]['input_gradient']:6.2f} %")
    return out


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--part", default="all", choices=["all", "step", "probe", "kernels"])
    p.add_argument("--arch", default="wrn-16-4")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--temperature", type=float, default=20.0)
    p.add_argument("--attack-steps", type=int, default=10)
    p.add_argument("--steps", type=int, default=3, help="timed steps of fp32 and of the emulation each")
    p.add_argument("--real-steps", type=int, default=1, help="timed steps of real CPU fp16")
    p.add_argument("--archive", default=str(ARCHIVE))
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None, help="also write the results to this JSON file")
    return p.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    out = {}
    if args.part in ("all", "kernels"):
        out["kernels"] = bench_kernels(args)
    if args.part in ("all", "probe"):
        out["probe"] = bench_probe(args)
    if args.part in ("all", "step"):
        out["step"] = bench_step(args)
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
