"""Throughput of evaluation: clean accuracy, PGD-k and AutoAttack, per image, with
ltd.evaluate's own functions (full fp32, as the workflow's `evaluate` rule).

    .venv/bin/python benchmarks/evaluate.py                                  # CPU: wrn-16-4, 64 random images
    .venv/bin/python benchmarks/evaluate.py --checkpoint results/paper/students/<run>/model.pt \
        --arch wrn-34-10 --data cifar10 --n 500 --autoattack standard --device cuda

Prints images/s of each stage and projects the time for ``--project`` images (10,000:
the CIFAR test set).

AutoAttack's cost depends on the model: each attack after the first runs only on the
images still robust, and Square spends 5,000 queries on each image it cannot break.
An untrained model (no ``--checkpoint``) is broken at once, so its AutoAttack time says
little about a robust model's: by default its labels are its own predictions (every
image counts as correctly classified and goes through the first attack), and the last
lines project AutoAttack ``standard`` for a robust model from counted
forward-equivalents (ltd/budget.py) at the forward rate this run measured in PGD.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks import clock  # noqa: E402
from ltd import autoattack, budget, checkpoint, data, evaluate, flops, jobspec, runtime, sources  # noqa: E402
from ltd.models import build_model  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", default="wrn-16-4")
    p.add_argument("--checkpoint", default=None, help="a model.pt (state dict) to load; default: untrained")
    p.add_argument("--num-classes", type=int, default=None, help="default: the data set's, 10 for random")
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--data", default="random", choices=["random", "digits", "cifar10", "cifar100"],
                   help="test images: uniform noise, or a data set's test split (cifar: downloaded to --data-dir)")
    p.add_argument("--data-dir", default="data")
    p.add_argument("--labels", default=None, choices=["given", "predicted"],
                   help="predicted: the model's own predictions (default without --checkpoint)")
    p.add_argument("--n", type=int, default=64, help="images evaluated")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--eps", type=float, default=8 / 255)
    p.add_argument("--pgd-steps", type=int, default=20)
    p.add_argument("--pgd-step-size", type=float, default=2 / 255)
    p.add_argument("--autoattack", default="custom", choices=["standard", "custom", "none"])
    p.add_argument("--attacks", nargs="+", default=["apgd-ce"], help="for --autoattack custom")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--project", type=int, default=10_000, help="project the time for this many images")
    p.add_argument("--assume-accuracy", type=float, nargs=2, default=list(sources.get("cifar10").accuracy),
                   metavar=("CLEAN", "ROBUST"), help="for the counted AutoAttack-standard projection")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None)
    return p.parse_args(argv)


def _images(args) -> tuple[torch.Tensor, torch.Tensor, int]:
    if args.data == "random":
        g = torch.Generator().manual_seed(args.seed)
        k = args.num_classes or 10
        s = args.image_size
        return torch.rand(args.n, 3, s, s, generator=g), torch.randint(0, k, (args.n,), generator=g), k
    cfg = {"source": args.data, "image_size": args.image_size, "test_size": 397} if args.data == "digits" else \
        {"source": args.data}
    split = data.load_split(jobspec.Data.of(cfg, args.data_dir), "test").head(args.n)
    return split.x, split.y, args.num_classes or sources.get(args.data).classes


def main(argv=None) -> dict:
    args = parse_args(argv)
    device = runtime.setup(args.device, threads=args.threads)  # as a job: reported numbers in full fp32
    torch.manual_seed(args.seed)
    x, y, classes = _images(args)
    model = build_model(args.arch, classes)
    if args.checkpoint:
        model.load_state_dict(checkpoint.load(args.checkpoint, map_location="cpu"))
    memory_format = torch.channels_last if args.channels_last else torch.contiguous_format
    model = model.to(device, memory_format=memory_format).eval()
    x, y = x.to(device, memory_format=memory_format), y.to(device)
    bs, n = args.batch_size, len(y)
    labels = args.labels or ("given" if args.checkpoint else "predicted")
    if labels == "predicted":
        y = evaluate.predict(model, x, args.batch_size).argmax(1)
    fwd_gflop = flops.forward_flops(model, x[:1]) / 1e9
    evaluate.predict(model, x[:bs], bs)  # warm-up (kernel selection, allocator)

    stages: dict[str, dict] = {}

    def timed(name: str, fwd_eq: float | None, fn):
        t0 = clock.now(device)
        out = fn()
        sec = clock.now(device) - t0
        stages[name] = {"seconds": sec, "images_per_s": n / sec, "forward_equivalents": fwd_eq,
                        "projected_hours": args.project / (n / sec) / 3600, **out}

    timed("clean", 1.0, lambda: {"accuracy": evaluate.clean_accuracy(model, x, y, bs)})
    timed(f"pgd-{args.pgd_steps}", 2.0 * args.pgd_steps + 1, lambda: {"accuracy": evaluate.pgd_accuracy(
        model, x, y, eps=args.eps, step_size=args.pgd_step_size, steps=args.pgd_steps, batch_size=bs, seed=args.seed)})
    if args.autoattack != "none":
        def aa():
            r = autoattack.autoattack(model, x, y, eps=args.eps, version=args.autoattack,
                                    attacks=args.attacks if args.autoattack == "custom" else None,
                                    batch_size=bs, seed=args.seed, device=device)
            return {"accuracy": r["robust_accuracy"], "after": r["robust_accuracy_after"], "attacks": r["attacks"]}

        timed(f"autoattack-{args.autoattack}", None, aa)

    # Forward rate measured in PGD (forwards + input gradients, what AutoAttack mostly does)
    pgd = stages[f"pgd-{args.pgd_steps}"]
    fwd_per_s = pgd["images_per_s"] * pgd["forward_equivalents"]
    ev = {"pgd_steps": args.pgd_steps, "autoattack": {"version": "standard"}}
    evaluation_fe = budget.evaluation_forward_equivalents(ev, classes, tuple(args.assume_accuracy))
    projected_aa_hours = args.project * evaluation_fe["autoattack"] / fwd_per_s / 3600

    result = {"arch": args.arch, "checkpoint": args.checkpoint, "data": args.data, "labels": labels, "n": n,
              "image_size": x.shape[-1], "classes": classes, "device": str(device), "threads": torch.get_num_threads(),
              "torch": torch.__version__, "forward_gflop_per_image": fwd_gflop, "stages": stages,
              "forward_equivalents_per_s": fwd_per_s, "project": args.project,
              "autoattack_standard_forward_equivalents": evaluation_fe["autoattack"],
              "assumed_accuracy": args.assume_accuracy,
              "projected_autoattack_standard_hours": projected_aa_hours}
    print(f"{args.arch} ({'checkpoint ' + args.checkpoint if args.checkpoint else 'untrained'}), {n} {args.data} "
          f"images at {x.shape[-1]} px, labels {labels}, batch {bs}, {device} fp32, threads {torch.get_num_threads()}, "
          f"torch {torch.__version__}; one forward {fwd_gflop:.3f} GFLOP per image (counted)")
    print(f"{'stage':22} {'accuracy':>9} {'seconds':>9} {'images/s':>10} {'fwd-eq/img':>11} "
          f"{f'h per {args.project:,}':>13}")
    for name, st in stages.items():
        fe = "" if st["forward_equivalents"] is None else f"{st['forward_equivalents']:.0f}"
        print(f"{name:22} {st['accuracy']:9.3f} {st['seconds']:9.2f} {st['images_per_s']:10.2f} {fe:>11} "
              f"{st['projected_hours']:13.2f}")
        if st.get("after"):
            print(f"{'':22} robust after each attack: " + ", ".join(f"{k} {v:.3f}" for k, v in st["after"].items()))
    print(f"measured forward rate (PGD): {fwd_per_s:.0f} forward-equivalents/s = "
          f"{fwd_per_s * fwd_gflop:.0f} GFLOP/s")
    print(f"AutoAttack standard on a robust model (assumed clean {args.assume_accuracy[0]:.0%}, robust "
          f"{args.assume_accuracy[1]:.0%}; {classes} classes): {evaluation_fe['autoattack']:.0f} forward-equivalents "
          f"per image (counted, ltd/budget.py) -> {projected_aa_hours:.1f} h for {args.project:,} images at that rate")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
