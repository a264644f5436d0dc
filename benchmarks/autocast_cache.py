"""The price of training without autocast's weight-cast cache (``ltd.runtime.autocast``),
and what the cache does to the weights' gradients on the torch that runs this.

    .venv/bin/python benchmarks/autocast_cache.py --threads 2    # CPU: wrn-16-4, 32 px, batch 32, bf16
    .venv/bin/python benchmarks/autocast_cache.py --device cuda --arch wrn-34-10 --batch-size 128 --precision fp16

A step is what ltd/train.py runs per batch: the step (``ltd.steps.build_step``) under
autocast, zero_grad, backward (scaled in fp16, torch.amp's GradScaler), optimiser step.
Two variants, each training its own copy of the same weights on the same batch in one
process, timed interleaved (uncached, cached, cached, uncached, ...) so that both see the
same background load:

* ``uncached``: ``ltd.runtime.autocast``, what the loop runs (``cache_enabled=False``:
  every weight cast afresh at each use);
* ``cached``: ``torch.autocast`` with its default cache (what the loop ran before).

Printed: seconds per step (median, fastest) of each and their ratio, and the weights' size
(one cast of all of them reads 4 and writes 2 bytes per parameter). Then a gradient check of
one step from the same weights: how many convolution and linear weights got a non-zero
gradient with our step uncached, cached, and with the official TRADES loop's structure
(benchmarks/train_step.py: every attack forward under autograd) cached. On torch < 2.10
ours cached gives none (pytorch/pytorch#112583); the official structure is unaffected.
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
from benchmarks.train_step import OfficialStructureTradesStep  # noqa: E402
from ltd import runtime  # noqa: E402
from ltd.models import build_model  # noqa: E402
from ltd.steps import build_step  # noqa: E402

VARIANTS = ("uncached", "cached")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", default="wrn-16-4")
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--steps", type=int, default=6, help="timed steps of each variant")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps of each first")
    p.add_argument("--attack-steps", type=int, default=10)
    p.add_argument("--method", default="trades-ltd")
    p.add_argument("--precision", default="bf16", choices=["bf16", "fp16"])
    p.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (torch.set_num_threads)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None, help="also write the results to this JSON file")
    return p.parse_args(argv)


def cached_autocast(device: torch.device, precision: str):
    """torch.autocast with its weight-cast cache on (torch's default)."""
    return torch.autocast(device.type, dtype=runtime.AMP_DTYPES[precision], cache_enabled=True)


class _Trainer:
    """One copy of the weights, its optimiser and loss scaler; ``step()`` runs one training step."""

    def __init__(self, base, step, batch, device, precision, autocast):
        self.model = copy.deepcopy(base).to(device)
        self.opt = torch.optim.SGD(self.model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4, nesterov=True)
        self.scaler = runtime.grad_scaler(device, precision)
        self.step_fn, self.batch, self.device, self.precision, self.autocast = step, batch, device, precision, autocast

    def step(self, update: bool = True) -> None:
        x, y, q = self.batch
        with self.autocast(self.device, self.precision):
            loss, logits, _ = self.step_fn(self.model, x, y, q)
        (logits.argmax(1) == y).sum()  # as the loop's accuracy count (on the device, no sync)
        self.opt.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if update:
            self.scaler.step(self.opt)
            self.scaler.update()
        self.step_fn.after_update(self.model)

    def weights_with_gradient(self) -> tuple[int, int]:
        """(conv/linear weights whose gradient is non-zero, all of them)."""
        weights = [p for p in self.model.parameters() if p.dim() > 1]
        return sum(p.grad is not None and bool(p.grad.any()) for p in weights), len(weights)


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    attack = {"eps": 8 / 255, "step_size": 2 / 255, "steps": args.attack_steps}
    torch.manual_seed(args.seed)
    base = build_model(args.arch, 10)
    b, s = args.batch_size, args.image_size
    batch = (torch.rand(b, 3, s, s, device=device), torch.randint(0, 10, (b,), device=device),
             F.softmax(3 * torch.randn(b, 10, device=device), dim=1))
    autocasts = {"uncached": runtime.autocast, "cached": cached_autocast}
    trainers = {v: _Trainer(base, build_step(args.method, beta=6.0, attack=attack), batch, device, args.precision,
                            autocasts[v]) for v in VARIANTS}

    # The gradient check: one step from the same weights, no update.
    official = OfficialStructureTradesStep("trades-ltd", beta=6.0, attack=attack)
    checks = {}
    for name, step, autocast in (("ours uncached", build_step(args.method, beta=6.0, attack=attack), runtime.autocast),
                                 ("ours cached", build_step(args.method, beta=6.0, attack=attack), cached_autocast),
                                 ("official structure cached", official, cached_autocast)):
        t = _Trainer(base, step, batch, device, args.precision, autocast)
        torch.manual_seed(args.seed)
        t.step(update=False)
        checks[name] = t.weights_with_gradient()

    for _ in range(args.warmup):
        for t in trainers.values():
            t.step()
    times = {v: [] for v in VARIANTS}
    for i in range(args.steps):
        for v in (VARIANTS if i % 2 == 0 else VARIANTS[::-1]):
            t0 = clock.now(device)
            trainers[v].step()
            times[v].append(clock.now(device) - t0)

    n_params = sum(p.numel() for p in base.parameters())
    result = {"arch": args.arch, "image_size": s, "batch_size": b, "attack_steps": args.attack_steps,
              "method": args.method, "precision": args.precision, "device": str(device),
              "threads": torch.get_num_threads(), "torch": torch.__version__, "parameters": n_params,
              "steps": args.steps, "warmup": args.warmup,
              "gradient_check": {k: {"with_gradient": a, "weights": n} for k, (a, n) in checks.items()}}
    for v in VARIANTS:
        result[v] = {"seconds_per_step": times[v], "median_seconds": statistics.median(times[v]),
                     "min_seconds": min(times[v])}
    result["uncached_over_cached_median"] = result["uncached"]["median_seconds"] / result["cached"]["median_seconds"]
    result["uncached_over_cached_fastest"] = result["uncached"]["min_seconds"] / result["cached"]["min_seconds"]

    print(f"{args.arch} at {s}x{s}, batch {b}, {args.method} with a {args.attack_steps}-step attack; {device}, "
          f"{args.precision} autocast, threads {torch.get_num_threads()}, torch {torch.__version__}; "
          f"{args.warmup} warm-up + {args.steps} timed steps each, interleaved")
    print(f"weights: {n_params / 1e6:.2f} M parameters, {6 * n_params / 1e6:.1f} MB of traffic per cast of all")
    print(f"{'':10} {'s/step median':>14} {'fastest':>8} {'slowest':>8}")
    for v in VARIANTS:
        r = result[v]
        print(f"{v:10} {r['median_seconds']:14.3f} {r['min_seconds']:8.3f} {max(r['seconds_per_step']):8.3f}")
    print(f"uncached / cached: {result['uncached_over_cached_median']:.3f}x (medians), "
          f"{result['uncached_over_cached_fastest']:.3f}x (fastest steps)")
    for k, (a, n) in checks.items():
        print(f"gradient check, {k}: {a} of {n} conv/linear weights got a non-zero gradient")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
