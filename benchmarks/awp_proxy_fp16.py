"""Does AWP's proxy gradient underflow in fp16? It is taken under autocast and not
loss-scaled (ltd/awp.py ``compute_perturbation``, as a plain AMP script of the official
TRADES-AWP loop would take it).

    .venv/bin/python benchmarks/awp_proxy_fp16.py --threads 2    # CPU fp16 autocast: wrn-16-4, 32 px, batch 32

One AWP+LTD perturbation from the same weights and batch (x' from the step's own attack),
computed four ways: fp32; fp16 autocast unscaled (what the step does); fp16 autocast with
the objective multiplied by 2^16 (torch.amp's initial loss scale) and the gradient divided
by it again, as a GradScaler would; and bf16. Printed per precision and in total over the
perturbed weights (convolutions and the fc matrix): the fraction of gradient entries that
are exactly zero where fp32's are not, and per layer the cosine between its perturbation
and fp32's (the perturbation is normalised to gamma * ||w|| per layer, so only its
direction matters: a layer with cosine near 1 is perturbed as in fp32). ``--scale-logits``
multiplies the final layer's output by a factor < 1 first: the small logits of a student
of nearly uniform soft labels (high T), whose gradients are smallest.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))

from ltd import awp, runtime  # noqa: E402
from ltd.losses import natural_loss, trades_kl  # noqa: E402
from ltd.models import build_model  # noqa: E402
from ltd.steps import trades_adversarial  # noqa: E402

SCALE = 2.0 ** 16  # torch.amp.GradScaler's initial scale


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", default="wrn-16-4")
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--attack-steps", type=int, default=10)
    p.add_argument("--temperature", type=float, default=5.0, help="of the stand-in soft labels")
    p.add_argument("--scale-logits", type=float, default=1.0, help="multiply the model's logits (small-logit student)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None)
    return p.parse_args(argv)


def _grads(model, x, x_adv, q, precision: str, scale: float = 1.0) -> list[torch.Tensor]:
    """The proxy's gradients of the AWP+LTD objective (ltd.steps.AWPStep's), as
    compute_perturbation takes them, the objective multiplied by ``scale`` and the
    gradients divided by it again."""
    proxy = awp.make_proxy(model)
    proxy.load_state_dict(model.state_dict())
    proxy.train()
    names = [n for n, _ in awp.perturbed_parameters(model)]
    params = dict(proxy.named_parameters())
    with runtime.autocast(torch.device("cpu"), precision):
        logits_nat = proxy(x).float()
        objective = natural_loss(logits_nat, q) + 6.0 * trades_kl(proxy(x_adv).float(), logits_nat)
    grads = torch.autograd.grad(-objective * scale, [params[n] for n in names])
    return [g / scale for g in grads]


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    model = build_model(args.arch, 10)
    if args.scale_logits != 1.0:
        with torch.no_grad():
            model.fc.weight.mul_(args.scale_logits)
            model.fc.bias.mul_(args.scale_logits)
    b, s = args.batch_size, args.image_size
    x = torch.rand(b, 3, s, s)
    q = F.softmax(torch.randn(b, 10) * 3 / args.temperature, dim=1)
    attack = {"eps": 8 / 255, "step_size": 2 / 255, "steps": args.attack_steps}
    with runtime.autocast(torch.device("cpu"), "fp16"):
        x_adv = trades_adversarial(model, x, attack)
    names = [n for n, _ in awp.perturbed_parameters(model)]
    ref = _grads(copy.deepcopy(model), x, x_adv, q, "fp32")
    variants = {"fp16 unscaled (the step)": ("fp16", 1.0), "fp16 scaled 2^16": ("fp16", SCALE),
                "bf16": ("bf16", 1.0)}
    result = {"arch": args.arch, "image_size": s, "batch_size": b, "temperature": args.temperature,
              "scale_logits": args.scale_logits, "torch": torch.__version__, "layers": len(names),
              "fp32_zero_fraction": sum(int((g == 0).sum()) for g in ref) / sum(g.numel() for g in ref)}
    print(f"{args.arch} at {s}x{s}, batch {b}, AWP+LTD objective (soft labels at T={args.temperature}, logits x "
          f"{args.scale_logits}), torch {torch.__version__}; {len(names)} perturbed weights; fp32 gradient entries "
          f"exactly zero: {result['fp32_zero_fraction']:.4%}")
    for label, (precision, scale) in variants.items():
        grads = _grads(copy.deepcopy(model), x, x_adv, q, precision, scale)
        lost = sum(int(((g == 0) & (r != 0)).sum()) for g, r in zip(grads, ref))
        nonzero = sum(int((r != 0).sum()) for r in ref)
        cos = [F.cosine_similarity(g.double().flatten(), r.double().flatten(), dim=0).item() for g, r in zip(grads, ref)]
        zero_layers = [n for n, g in zip(names, grads) if not g.any()]
        result[label] = {"underflowed_fraction": lost / nonzero, "min_layer_cosine": min(cos),
                         "layer_cosines": dict(zip(names, cos)), "all_zero_layers": zero_layers,
                         "worst_layer_underflow": max(((g == 0) & (r != 0)).float().mean().item()
                                                      for g, r in zip(grads, ref))}
        r = result[label]
        print(f"{label:26} entries underflowed to 0 (fp32 non-zero): {r['underflowed_fraction']:.4%} in total, "
              f"{r['worst_layer_underflow']:.2%} in the worst layer; layers all zero: {len(zero_layers)}; "
              f"perturbation direction vs fp32: min cosine {r['min_layer_cosine']:.5f} over layers")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
