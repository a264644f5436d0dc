"""Wall time of the Appendix B simulations at the paper config's settings (CPU).

    .venv/bin/python benchmarks/simulation.py [--repeat 3] [--json out.json]

Prints each repeat's seconds and their minimum (the figure to compare between machines;
the `simulation` rule runs this once per workflow). Timing lives here, not in a test:
a loaded CI machine takes longer, which says nothing about the code.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from ltd import simulation  # noqa: E402


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--n-examples", type=int, default=None, help="override both cases' n_examples (tests)")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    settings = {"seed": 0, **yaml.safe_load((ROOT / "config" / "config.yaml").read_text())["simulation"]}
    if args.n_examples:
        for case in ("binary", "dirichlet"):
            settings[case]["n_examples"] = args.n_examples
    seconds = []
    for i in range(args.repeat):
        t0 = time.perf_counter()
        simulation.simulate(settings)
        seconds.append(time.perf_counter() - t0)
        print(f"repeat {i + 1}: {seconds[-1]:.2f} s", flush=True)
    result = {"seconds": seconds, "min_seconds": min(seconds),
              "n_examples": {c: settings[c]["n_examples"] for c in ("binary", "dirichlet")}}
    print(f"Appendix B simulations (paper settings): min {min(seconds):.2f} s over {args.repeat}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
