"""A TRADES(+LTD) training step with its attack compiled (``train.compile_attack``)
against the eager step and against ``torch.compile(model)`` (``train.compile``).

    .venv/bin/python benchmarks/compile_attack.py --threads 1          # CPU: wrn-16-4, 32 px, batch 32
    .venv/bin/python benchmarks/compile_attack.py --device cuda --arch wrn-34-10 --batch-size 128 --channels-last

Every variant trains its own copy of the same weights on the same batch in one process:
first step (compiling, timed apart), ``--warmup`` more, then ``--steps`` timed steps of
each, interleaved (eager, attack, model, model, attack, eager, ...) so all see the same
background load. A step is what ltd/train.py runs per batch: the step under autocast,
zero_grad, backward, optimiser step.

* ``eager``: ``ltd.steps.build_step`` as the loop runs it today;
* ``attack``: the same step with ``step.compiled_attack = ltd.compiled.AttackForward()``
  (the attack's forwards through a compiled functional call on detached parameters: no
  weight gradients), the loss step eager;
* ``model``: ``torch.compile(model)`` for everything (the attack's backward then
  computes every weight gradient: docs/performance.md).

Printed: images/s per variant (medians and fastest steps), ratios to eager, compile
seconds (the first step), each variant's first loss against eager's (the same weights:
the numerics) and the largest difference over all steps (each variant follows its own
trajectory from the second step on, as a bf16 run does an fp32 one).
``--variants`` picks some. That the compiled attack computes no weight gradient is
tested (tests/test_compiled.py), not measured here.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))

from benchmarks import clock  # noqa: E402
from benchmarks.train_step import device_peak_tflops  # noqa: E402
from ltd import flops, runtime  # noqa: E402
from ltd.compiled import AttackForward  # noqa: E402
from ltd.methods import forward_equivalents  # noqa: E402
from ltd.models import build_model  # noqa: E402
from ltd.steps import build_step  # noqa: E402

VARIANTS = ("eager", "attack", "model")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", default="wrn-16-4")
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--method", default="trades-ltd", choices=["trades", "trades-ltd", "awp-ltd"])
    p.add_argument("--attack-steps", type=int, default=10)
    p.add_argument("--steps", type=int, default=5, help="timed steps of each variant")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps of each after the first (compiling) one")
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    p.add_argument("--backend", default="inductor", help="torch.compile backend (aot_eager: no code generation)")
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--precision", default=None, choices=["bf16", "fp32"], help="CUDA autocast (default bf16); CPU: fp32")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--json", default=None)
    return p.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    device = runtime.setup(args.device, threads=args.threads)  # as a job: on CUDA, TF32 off, cuDNN autotuning on
    precision = runtime.effective_precision(device, args.precision or "bf16")
    attack = {"eps": 8 / 255, "step_size": 2 / 255, "steps": args.attack_steps}
    awp = {"gamma": 5e-3, "warmup_epochs": 0, "proxy_lr": 0.1}
    torch.manual_seed(0)
    base = build_model(args.arch, 10)
    g = torch.Generator().manual_seed(0)
    b, s = args.batch_size, args.image_size
    memory_format = torch.channels_last if args.channels_last else torch.contiguous_format
    x = torch.rand(b, 3, s, s, generator=g).to(device).contiguous(memory_format=memory_format)
    y = torch.randint(0, 10, (b,), generator=g).to(device)
    q = F.softmax(3 * torch.randn(b, 10, generator=g), dim=1).to(device)

    runners, losses, first = {}, {}, {}
    for name in args.variants:
        model = copy.deepcopy(base).to(device, memory_format=memory_format)
        step = build_step(args.method, beta=6.0, attack=attack, awp=awp if args.method.startswith("awp") else None)
        step.begin_epoch(0)
        net = model
        if name == "attack":
            step.compiled_attack = AttackForward(backend=args.backend)
        elif name == "model":
            net = torch.compile(model, backend=args.backend)
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4, nesterov=True)
        losses[name] = []

        def run(net=net, step=step, opt=opt, model=model, out=losses[name]):
            with runtime.autocast(device, precision):
                loss, logits, _ = step(net, x, y, q)
            (logits.argmax(1) == y).sum()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step.after_update(model)
            out.append(loss.detach())

        runners[name] = run

    def timed(name, seed):
        torch.manual_seed(seed)  # the same random start for every variant at the same step
        t0 = clock.now(device)
        runners[name]()
        return clock.now(device) - t0

    for name in args.variants:  # each variant's first step compiles: timed apart
        first[name] = timed(name, 0)
        for i in range(args.warmup):
            timed(name, 1 + i)
    times = {name: [] for name in args.variants}
    for i in range(args.steps):
        order = args.variants if i % 2 == 0 else args.variants[::-1]
        for name in order:
            times[name].append(timed(name, 1 + args.warmup + i))

    fwd = flops.model_forward_flops(args.arch, s, 10)
    fe = forward_equivalents(args.method, args.attack_steps, awp_on=args.method.startswith("awp"))
    label, peak = device_peak_tflops(device, precision)
    result = {"arch": args.arch, "image_size": s, "batch_size": b, "method": args.method,
              "attack_steps": args.attack_steps, "device": str(device), "device_name": label,
              "threads": torch.get_num_threads(), "precision": precision, "channels_last": args.channels_last,
              "backend": args.backend, "torch": torch.__version__, "steps": args.steps, "warmup": args.warmup,
              "forward_equivalents": fe, "forward_gflop_per_image": fwd / 1e9}
    ref = torch.stack(losses["eager"]).float().cpu() if "eager" in losses else None
    for name in args.variants:
        med = statistics.median(times[name])
        ls = torch.stack(losses[name]).float().cpu()
        result[name] = {"first_step_seconds": first[name], "seconds_per_step": times[name], "median_seconds": med,
                        "min_seconds": min(times[name]), "images_per_s": b / med,
                        "mfu": fe * fwd * b / med / (peak * 1e12) if peak else None,
                        "losses": ls.tolist(),
                        # the first step starts from the same weights: the numerics' difference;
                        # later steps follow each variant's own trajectory (as bf16's does fp32's)
                        "first_loss_relative_difference": None if ref is None else
                        ((ls[0] - ref[0]).abs() / ref[0].abs()).item(),
                        "max_loss_relative_difference": None if ref is None else
                        ((ls - ref).abs() / ref.abs()).max().item()}
    if "eager" in result:
        for name in args.variants:
            if name != "eager":
                result[f"{name}_over_eager"] = result[name]["images_per_s"] / result["eager"]["images_per_s"]
                result[f"{name}_over_eager_fastest"] = result["eager"]["min_seconds"] / result[name]["min_seconds"]

    print(f"{args.arch} at {s}x{s}, batch {b}, {args.method} ({args.attack_steps}-step attack, {fe:g} fwd-eq); "
          f"{label} ({device}), {precision}, threads {torch.get_num_threads()}, channels_last={args.channels_last}, "
          f"backend {args.backend}, torch {torch.__version__}; 1 + {args.warmup} warm-up + {args.steps} timed steps "
          "each, interleaved")
    print(f"{'':8} {'images/s':>10} {'s/step median':>14} {'min':>8} {'first step':>11} {'1st loss vs eager':>18} "
          f"{'max (all steps)':>16}")
    for name in args.variants:
        r = result[name]
        d, m = r["first_loss_relative_difference"], r["max_loss_relative_difference"]
        print(f"{name:8} {r['images_per_s']:10.2f} {r['median_seconds']:14.3f} {r['min_seconds']:8.3f} "
              f"{r['first_step_seconds']:11.1f} {'n/a' if d is None else f'{d:.1e}':>18} "
              f"{'n/a' if m is None else f'{m:.1e}':>16}")
    for name in args.variants:
        if f"{name}_over_eager" in result:
            print(f"{name} / eager: {result[f'{name}_over_eager']:.2f}x images/s (medians), "
                  f"{result[f'{name}_over_eager_fastest']:.2f}x (fastest steps)")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
