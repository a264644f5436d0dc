"""Throughput of one TRADES(+LTD) training step: ours against the official loop's structure.

    .venv/bin/python benchmarks/train_step.py                         # CPU: wrn-16-4, 32 px, batch 64
    .venv/bin/python benchmarks/train_step.py --device cuda --arch wrn-34-10 --batch-size 128 \
        --channels-last [--compile]                                   # GPU: bf16 autocast

Both steps run on the same model weights (two copies, one optimiser each), the same
batch and the same device, in one process: warm-up, then ``--steps`` timed steps of
each, interleaved (ours, official, official, ours, ...) so that both see the same
background load. A step is what ltd/train.py does per batch: the step function under
autocast, zero_grad, backward, optimiser step.

* ours: ``ltd.steps.build_step(method)`` (f(x) once per batch for the attack's target);
* official structure: TRADES as yaodongyu/TRADES's trades.py + train_trades_cifar10.py
  structure it, re-implemented below: f(x) recomputed at every attack step (under
  autograd), KL summed over the batch in the attack and divided by the batch size in the
  loss, and f(x) computed twice in the loss. Same mathematics, more forwards.

Printed: images/s of each and their ratio, counted forward-equivalents per image of
each (FLOPs of the step / FLOPs of one forward, ltd/flops.py) and, on a GPU whose peak is
in PEAK_TFLOPS, the model FLOP utilisation (counted FLOPs per second / peak). On a CPU
the peak is unknown: MFU 'n/a'.

``--channels-last`` and ``--compile`` are benchmark-only switches (ltd/train.py has
neither yet): NHWC memory layout for cuDNN's tensor-core kernels, and torch.compile of
the model (the attack switches eval/train mode, so expect two graphs per mode and a
longer warm-up).
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import re
import statistics
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))

from benchmarks import clock  # noqa: E402
from ltd import flops, runtime  # noqa: E402
from ltd.losses import natural_loss  # noqa: E402
from ltd.models import build_model  # noqa: E402
from ltd.steps import (
    Step,  # noqa: E402
    build_step,  # noqa: E402
)

# Dense (no sparsity) peak TFLOP/s per GPU from the vendors' data sheets:
# (pattern on torch.cuda.get_device_name, label, bf16/fp16 tensor core, fp32 without TF32).
# First match wins: the specific variants come before the generic name.
PEAK_TFLOPS = [
    (r"H100.*PCIe", "H100 PCIe", 756.0, 51.0),
    (r"H100.*NVL", "H100 NVL", 835.0, 60.0),
    (r"H100", "H100 SXM", 989.0, 67.0),
    (r"H200", "H200", 989.0, 67.0),
    (r"A100", "A100", 312.0, 19.5),
    (r"L40S", "L40S", 362.0, 91.6),
    (r"\bL4\b", "L4", 121.0, 30.3),
    (r"\bA10\b", "A10", 125.0, 31.2),
    (r"V100", "V100 (fp16)", 125.0, 15.7),
]


def device_peak_tflops(device: torch.device, precision: str) -> tuple[str, float | None]:
    """(label, peak TFLOP/s) of the device at ``precision``; (name, None) when unknown (any CPU)."""
    if device.type != "cuda":
        return (platform.processor() or "cpu", None)
    name = torch.cuda.get_device_name(device)
    for pattern, label, low, fp32 in PEAK_TFLOPS:
        if re.search(pattern, name):
            return label, fp32 if precision == "fp32" else low
    return name, None


class OfficialStructureTradesStep(Step):
    """TRADES (``target`` = class indices) or TRADES+LTD (soft labels ``q``) structured
    as the official TRADES training loop does it. Our own re-implementation of that
    structure, for counting and timing; driven exactly as ltd.methods' steps are.

    Attack, model in eval mode: x' = x + N(0, 0.001^2); ``steps`` times: KL(f(x) || f(x'))
    summed over the batch, with f(x) *recomputed* (and recorded by autograd) at every
    step; x' += step_size * sign(grad); project onto the eps-ball and [0, 1].
    Loss, model in train mode: natural term on f(x), plus beta * KL(f(x) || f(x')) / batch
    size, whose f(x) is a *second* forward of x (both recorded for the backward).
    """

    def __init__(self, method: str, *, beta: float, attack: dict):
        self.method, self.beta = method, beta
        self.eps, self.step_size, self.steps = float(attack["eps"]), float(attack["step_size"]), int(attack["steps"])

    def __call__(self, model, x, y, q):
        model.eval()
        x_adv = x.detach() + 0.001 * torch.randn_like(x)
        for _ in range(self.steps):
            x_adv.requires_grad_(True)
            with torch.enable_grad():
                target = F.softmax(model(x).float(), dim=1)  # f(x) again, every step
                kl = F.kl_div(F.log_softmax(model(x_adv).float(), dim=1), target, reduction="sum")
            (grad,) = torch.autograd.grad(kl, [x_adv])
            x_adv = x_adv.detach() + self.step_size * grad.detach().sign()
            x_adv = torch.min(torch.max(x_adv, x - self.eps), x + self.eps).clamp(0.0, 1.0)
        model.train()
        x_adv = x_adv.clamp(0.0, 1.0).detach()
        logits = model(x)
        natural = natural_loss(logits.float(), q if self.method.endswith("-ltd") else y)
        robust = F.kl_div(F.log_softmax(model(x_adv).float(), dim=1), F.softmax(model(x).float(), dim=1),
                          reduction="sum") / len(x)
        loss = natural + self.beta * robust
        return loss, logits, {"loss": loss.detach(), "natural": natural.detach(), "robust": robust.detach()}


def make_steps(method: str, beta: float, attack: dict):
    """(ours, official structure) for a TRADES-family ``method``."""
    if method not in ("trades", "trades-ltd"):
        raise ValueError(f"method must be trades or trades-ltd, got {method!r}")
    return build_step(method, beta=beta, attack=attack), OfficialStructureTradesStep(method, beta=beta, attack=attack)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", default="wrn-16-4", help="ltd.models name (default: a small WRN for the CPU)")
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--num-classes", type=int, default=10)
    p.add_argument("--steps", type=int, default=5, help="timed steps of each implementation")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps of each first (more with --compile)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (torch.set_num_threads)")
    p.add_argument("--method", default="trades-ltd", choices=["trades", "trades-ltd"])
    p.add_argument("--beta", type=float, default=6.0)
    p.add_argument("--attack-steps", type=int, default=10)
    p.add_argument("--eps", type=float, default=0.031)
    p.add_argument("--step-size", type=float, default=0.007)
    p.add_argument("--precision", default=None, choices=["bf16", "fp32"],
                   help="autocast dtype on CUDA (default bf16, as config/config.yaml); the CPU always runs fp32")
    p.add_argument("--channels-last", action="store_true", help="NHWC model and inputs (CUDA tensor cores)")
    p.add_argument("--compile", action="store_true", help="torch.compile the model (both implementations)")
    p.add_argument("--peak-tflops", type=float, default=None, help="override the device's peak for MFU")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None, help="also write the results to this JSON file")
    return p.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    device = runtime.setup(args.device, threads=args.threads)  # as a job: no TF32 (autocast carries the speed)
    precision = runtime.effective_precision(device, args.precision or "bf16")
    attack = {"eps": args.eps, "step_size": args.step_size, "steps": args.attack_steps}
    ours, official = make_steps(args.method, args.beta, attack)

    torch.manual_seed(args.seed)
    base = build_model(args.arch, args.num_classes)
    b, s, c = args.batch_size, args.image_size, args.num_classes
    x = torch.rand(b, 3, s, s)
    y = torch.randint(0, c, (b,))
    q = F.softmax(torch.randn(b, c) * 3, dim=1)  # stand-in soft labels

    # Counted forward-equivalents: eager model, its device, a batch of 2 (FLOPs are linear in the batch).
    counting = copy.deepcopy(base).to(device)
    xs, ys, qs = x[:2].to(device), y[:2].to(device), q[:2].to(device)
    fwd_flops_image = flops.forward_flops(counting, xs) / 2
    fe = {"ours": flops.count_step_forward_equivalents(ours, counting, xs, ys, qs),
          "official": flops.count_step_forward_equivalents(official, counting, xs, ys, qs)}
    del counting

    memory_format = torch.channels_last if args.channels_last else torch.contiguous_format
    x, y, q = x.to(device, memory_format=memory_format), y.to(device), q.to(device)
    runners, models = {}, {}
    for name, step in (("ours", ours), ("official", official)):
        model = copy.deepcopy(base).to(device, memory_format=memory_format)
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4, nesterov=True)
        net = torch.compile(model) if args.compile else model
        models[name] = model

        def run(net=net, step=step, opt=opt):
            with runtime.autocast(device, precision):
                loss, logits, _ = step(net, x, y, q)
            (logits.argmax(1) == y).sum()  # as the loop's accuracy count (on the device, no sync)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        runners[name] = run

    for _ in range(args.warmup):
        for run in runners.values():
            run()
    times = {"ours": [], "official": []}
    for i in range(args.steps):
        order = ("ours", "official") if i % 2 == 0 else ("official", "ours")
        for name in order:
            t0 = clock.now(device)
            runners[name]()
            times[name].append(clock.now(device) - t0)

    label, peak = device_peak_tflops(device, precision)
    if args.peak_tflops:
        peak = args.peak_tflops
    result = {
        "arch": args.arch, "image_size": s, "batch_size": b, "attack_steps": args.attack_steps,
        "method": args.method, "device": str(device), "device_name": label, "threads": torch.get_num_threads(),
        "precision": precision, "channels_last": args.channels_last, "compile": args.compile,
        "torch": torch.__version__, "steps": args.steps, "warmup": args.warmup,
        "forward_gflop_per_image": fwd_flops_image / 1e9, "peak_tflops": peak,
    }
    for name in ("ours", "official"):
        med = statistics.median(times[name])
        step_flops = fe[name] * fwd_flops_image * b
        result[name] = {
            "seconds_per_step": times[name], "median_seconds": med, "min_seconds": min(times[name]),
            "images_per_s": b / med,
            "forward_equivalents": fe[name], "step_tflop": step_flops / 1e12,
            "mfu": None if not peak else step_flops / med / (peak * 1e12),
        }
    result["speedup"] = result["ours"]["images_per_s"] / result["official"]["images_per_s"]
    result["speedup_total_time"] = sum(times["official"]) / sum(times["ours"])
    # Background load only ever adds time: the fastest steps are the least disturbed.
    result["speedup_fastest"] = result["official"]["min_seconds"] / result["ours"]["min_seconds"]
    result["counted_flop_ratio"] = fe["official"] / fe["ours"]

    print(f"{args.arch} at {s}x{s}, batch {b}, {args.method} with a {args.attack_steps}-step attack; "
          f"{label} ({device}), {precision}, threads {torch.get_num_threads()}, channels_last={args.channels_last}, "
          f"compile={args.compile}, torch {torch.__version__}; {args.warmup} warm-up + {args.steps} timed steps each, "
          f"interleaved")
    print(f"one forward: {fwd_flops_image / 1e9:.3f} GFLOP per image (counted)")
    print(f"{'':10} {'images/s':>10} {'s/step median':>14} {'min':>8} {'max':>8} {'fwd-equiv/image':>16} {'MFU':>7}")
    for name in ("ours", "official"):
        r = result[name]
        mfu = "n/a" if r["mfu"] is None else f"{100 * r['mfu']:.1f}%"
        print(f"{name:10} {r['images_per_s']:10.2f} {r['median_seconds']:14.3f} {r['min_seconds']:8.3f} "
              f"{max(r['seconds_per_step']):8.3f} {r['forward_equivalents']:16.2f} {mfu:>7}")
    print(f"ours / official: {result['speedup']:.2f}x images/s (medians), {result['speedup_fastest']:.2f}x (fastest "
          f"steps), {result['speedup_total_time']:.2f}x (total time); counted FLOPs official / ours: "
          f"{result['counted_flop_ratio']:.2f}x")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
