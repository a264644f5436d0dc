"""Is the compiled training attack (``train.compile_attack``, ltd/compiled.py) bit for bit
the eager one under fp16 and bf16 autocast? If not, the switch changes x' and with it the
stall rate, and belongs in a run's identity (it does: ltd/jobspec.py).

    .venv/bin/python benchmarks/compiled_attack_bits.py              # CPU, inductor: minutes to compile

The TRADES attack (``ltd.steps.trades_adversarial``) from one random start, eager and
through ``AttackForward`` (``--backend``), under ``ltd.runtime.autocast`` in each
precision, on a random-init model. Printed per precision: whether x' is bitwise equal, the
fraction of pixels and of examples that differ, and the clean logits' largest difference.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))

from ltd import runtime  # noqa: E402
from ltd.attacks import random_start  # noqa: E402
from ltd.compiled import AttackForward  # noqa: E402
from ltd.models import build_model  # noqa: E402
from ltd.steps import trades_adversarial  # noqa: E402


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--arch", default="wrn-10-1")
    p.add_argument("--image-size", type=int, default=16)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--attack-steps", type=int, default=3)
    p.add_argument("--backend", default="inductor")
    p.add_argument("--precisions", nargs="+", default=["fp16", "bf16"])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    attack = {"eps": 8 / 255, "step_size": 2 / 255, "steps": args.attack_steps}
    torch.manual_seed(0)
    model = build_model(args.arch, 10)
    x = torch.rand(args.batch_size, 3, args.image_size, args.image_size, generator=torch.Generator().manual_seed(0))
    start = random_start(x)
    result = {"arch": args.arch, "backend": args.backend, "torch": torch.__version__}
    for precision in args.precisions:
        compiled = AttackForward(backend=args.backend)
        t0 = time.time()
        with runtime.autocast(torch.device("cpu"), precision):
            eager = trades_adversarial(model, x, attack, start=start)
            comp = trades_adversarial(model, x, attack, start=start, compiled=compiled)
            model.eval()
            with torch.no_grad():
                logits = (model(x).float() - compiled.bind(model)(x).float()).abs().max().item()
            model.train()
        differ = eager != comp
        r = result[precision] = {"bitwise_equal": torch.equal(eager, comp), "pixels_differing": differ.float().mean().item(),
                                 "examples_differing": differ.flatten(1).any(1).float().mean().item(),
                                 "clean_logits_max_abs_difference": logits, "seconds": time.time() - t0}
        print(f"{args.backend}, {precision} autocast, {args.arch}, torch {torch.__version__}: x' bitwise equal: "
              f"{r['bitwise_equal']}; pixels differing {r['pixels_differing']:.2%}, examples "
              f"{r['examples_differing']:.0%}; clean logits differ by up to {logits:.3g} ({r['seconds']:.0f} s)")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
