"""How much of each example a training attack moves, on real CIFAR-10 test images: the
figures behind ``ltd.attacks.STALLED_BELOW`` (the moved-pixel fraction under which an
attack counts as stalled) and the old rule's blind spot (stalled only if no pixel moved).

    .venv/bin/python benchmarks/stalled_attacks.py --arch wrn-10-2 --n 256 --train-steps 200
    .venv/bin/python benchmarks/stalled_attacks.py --arch wrn-10-2 --n 64 --precisions fp16 --attacks trades

For each model state (``random``: as built; ``trained``: ``--train-steps`` natural SGD
steps on CIFAR-10's training images first, fp32), precision (CPU autocast) and training
attack (TRADES's KL attack and MART's, in eval mode from x + 0.001 N(0, 1); PGD-AT's in
train mode from a uniform start; the paper's eps 8/255, step 2/255, 10 steps): per example
the fraction of pixels x' moved from its projected start, summarised (min, 1st and 5th
percentile, median, mean), the stalled fraction by the old rule (moved == 0) and by the new
one (moved < ``STALLED_BELOW``), the fraction of the attack's first input gradient that is
exactly zero, and the fraction of pixels at the [0, 1] box (the ones an attack may push
against it and so leave unmoved). Real fp16 on the CPU is slow (~40 s a WRN-10-2 TRADES
step of 64 images): keep ``--n`` small there.

The data: the cifarfolder archive (``--archive``, default the project's shared copy),
unpacked once into ``--unpack`` (default a temporary folder); its test images are CIFAR-10
re-encoded as JPEG (close to, not equal to, torchvision's CIFAR-10).
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))

from ltd import attacks, data, image_files, jobspec, loaders, runtime  # noqa: E402
from ltd.models import build_model  # noqa: E402
from ltd.steps import trades_adversarial  # noqa: E402

# The shared copy beside the clone (tests/conftest.py's CIFAR10_JPEG), or beside a worktree's parent.
ARCHIVE = next((p for p in (ROOT.parent / "shared", ROOT.parent.parent / "shared")
                if (p / "data" / "cifar10-jpeg.tar.gz").is_file()), ROOT.parent / "shared") / "data" / "cifar10-jpeg.tar.gz"
ATTACK = {"eps": 8 / 255, "step_size": 2 / 255, "steps": 10}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--archive", default=str(ARCHIVE))
    p.add_argument("--unpack", default=None, help="folder to unpack the archive into (default: a temporary one)")
    p.add_argument("--digits", type=int, default=None, metavar="PX",
                   help="scikit-learn's digits at PX px instead (the demo's CIFAR-10 stand-in, 30-58 %% of pixels at 0)")
    p.add_argument("--arch", default="wrn-10-2")
    p.add_argument("--n", type=int, default=256, help="test images attacked")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--states", nargs="+", default=["random", "trained"], choices=["random", "trained"])
    p.add_argument("--train-steps", type=int, default=200, help="natural SGD steps (batch 128) for `trained`")
    p.add_argument("--precisions", nargs="+", default=["fp32"], choices=["fp32", "fp16", "bf16"])
    p.add_argument("--attacks", nargs="+", default=["trades", "mart", "pgd"], choices=["trades", "mart", "pgd"])
    p.add_argument("--attack-steps", type=int, default=ATTACK["steps"])
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None, help="write the figures here")
    return p.parse_args(argv)


def load(archive: str, folder: str, split: str, n: int, digits: int | None = None) -> loaders.Split:
    if digits:
        return data.load_split(jobspec.Data.of({"source": "digits", "image_size": digits, "test_size": 397}), split).head(n)
    cfg = {"source": "cifarfolder", "path": folder, "archive": archive}
    image_files.unpack_archive(cfg)
    return data.load_split(jobspec.Data.of(cfg, folder), split).head(n)


def train_naturally(model: torch.nn.Module, train: loaders.Split, steps: int, seed: int) -> float:
    """``steps`` SGD steps (batch 128, lr 0.05, momentum 0.9, flips) on ``train``; the
    last 20 steps' training accuracy."""
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4, nesterov=True)
    model.train()
    correct = []
    for _ in range(steps):
        idx = torch.randint(0, len(train), (128,), generator=g)
        x, y = train.x[idx], train.y[idx]
        x = torch.where(torch.rand(128, 1, 1, 1, generator=g) < 0.5, x.flip(3), x)
        logits = model(x)
        loss = F.cross_entropy(logits, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        correct.append((logits.argmax(1) == y).float().mean().item())
    return sum(correct[-20:]) / len(correct[-20:])


def attack_batch(kind: str, model, x, y, attack: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """(moved fraction per example, zero fraction of the first input gradient per example)."""
    if kind == "pgd":
        start = attacks.pgd_start(x, attack["eps"])
        model.train()
        delta = attacks.pgd_delta(model, x, y, start=start, **attack)
        moved = attacks.moved(delta, start)
        first = start.clone().requires_grad_(True)
        loss = F.cross_entropy(model(x + first).float(), y)
    else:
        start = attacks.random_start(x)
        model.eval()
        if kind == "trades":
            x_adv = trades_adversarial(model, x, attack, start=start)
        else:
            x_adv = attacks.mart_attack(model, x, y, start=start, **attack)
        moved = attacks.moved_fraction(x_adv, start, x, attack["eps"])
        first = start.clone().requires_grad_(True)
        if kind == "trades":
            with torch.no_grad():
                p_nat = F.log_softmax(model(x).float(), 1)
            loss = F.kl_div(F.log_softmax(model(first).float(), 1), p_nat, reduction="sum", log_target=True)
        else:
            loss = F.cross_entropy(model(first).float(), y)
    (grad,) = torch.autograd.grad(loss, first)
    return moved, (grad == 0).flatten(1).float().mean(1)


def summary(moved: torch.Tensor, zero: torch.Tensor, seconds: float) -> dict:
    q = torch.quantile(moved.double(), torch.tensor([0.0, 0.01, 0.05, 0.5], dtype=torch.float64)).tolist()
    return {"n": len(moved), "moved_min": q[0], "moved_p1": q[1], "moved_p5": q[2], "moved_median": q[3],
            "moved_mean": moved.mean().item(), "stalled_old": (moved == 0).float().mean().item(),
            "stalled_new": attacks.stalled(moved).float().mean().item(),
            "zero_grad_pixels": zero.mean().item(), "seconds": seconds}


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    attack = {**ATTACK, "steps": args.attack_steps}
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.unpack or str(Path(tmp) / "cifar10-jpeg")
        test = load(args.archive, folder, "test", args.n, args.digits)
        train = load(args.archive, folder, "train", 50_000, args.digits) if "trained" in args.states else None
    at_box = ((test.x == 0) | (test.x == 1)).float().mean().item()
    images = f"digits at {args.digits} px" if args.digits else "CIFAR-10 test images"
    out = {"arch": args.arch, "images": images, "n": len(test), "attack": attack, "pixels_at_box": at_box,
           "stalled_below": attacks.STALLED_BELOW, "torch": torch.__version__, "threads": torch.get_num_threads(),
           "rows": []}
    print(f"{args.arch}, {len(test)} {images} ({100 * at_box:.2f} % of pixels at 0 or 1), "
          f"attack {attack}, stalled below {attacks.STALLED_BELOW}")
    for state in args.states:
        torch.manual_seed(args.seed)
        model = build_model(args.arch, 10)
        acc = None
        if state == "trained":
            acc = train_naturally(model, train, args.train_steps, args.seed)
        for precision in args.precisions:
            for kind in args.attacks:
                net = copy.deepcopy(model)  # PGD-AT's train-mode attack moves BN statistics
                torch.manual_seed(args.seed + 1)
                moved, zero = [], []
                t0 = time.time()
                with runtime.autocast(torch.device("cpu"), precision):
                    for i in range(0, len(test), args.batch_size):
                        m, z = attack_batch(kind, net, test.x[i:i + args.batch_size], test.y[i:i + args.batch_size],
                                            attack)
                        moved.append(m)
                        zero.append(z)
                row = {"state": state, "train_accuracy": acc, "precision": precision, "attack": kind,
                       **summary(torch.cat(moved), torch.cat(zero), time.time() - t0)}
                out["rows"].append(row)
                print(f"{state:8s} {precision} {kind:6s}: moved min {row['moved_min']:.4f} p1 {row['moved_p1']:.4f} "
                      f"p5 {row['moved_p5']:.4f} median {row['moved_median']:.4f} mean {row['moved_mean']:.4f}; "
                      f"stalled old {100 * row['stalled_old']:.1f} % new {100 * row['stalled_new']:.1f} %; "
                      f"zero first-gradient pixels {100 * row['zero_grad_pixels']:.2f} %"
                      + (f"; train acc {100 * acc:.1f} %" if acc is not None else "")
                      + f" ({row['seconds']:.0f} s)", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
