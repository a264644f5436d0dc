"""A training run's monitor: the per-epoch numbers of its curves, and the epoch best.pt
keeps (students: the first with the highest monitored PGD accuracy)."""

from __future__ import annotations

import torch

from .. import data, evaluate, runtime
from ..jobspec import Training
from .common import tensors

# The training curves' monitor (students' per-epoch PGD accuracy) chooses best.pt.
BEST_KEY = "test_pgd_accuracy"


class Monitor:
    """The training curves' per-epoch numbers: clean test accuracy and (students with a
    monitor) PGD accuracy on the monitor's images, in TF32 on a GPU (recorded). Those are
    the first or the last ``n_examples`` of its split (test, or val: held out of
    training), apart from the evaluated first test images where the config says so
    (ltd.selection checks it before any job); the key stays ``test_pgd_accuracy``."""

    def __init__(self, spec: Training, device: torch.device):
        self.spec, self.device, self.bs = spec, device, spec.schedule["eval_batch_size"]
        self.x = self.y = None
        m = spec.monitor
        if m:
            self.x, self.y = tensors(data.eval_batches(spec.data, m["split"], device, self.bs, n=m["n_examples"],
                                                       last=m["images"] == "last"))

    def clean(self, model: torch.nn.Module) -> float:
        return evaluate.clean_accuracy_batches(model, data.eval_batches(self.spec.data, "test", self.device, self.bs))

    def __call__(self, model: torch.nn.Module) -> dict:
        # the curves only: TF32 on a GPU (recorded); the reported clean accuracy is fp32 (final_clean)
        with runtime.in_tf32_mode(self.device, "tf32") as monitor_precision:
            record = {"test_accuracy": self.clean(model), "monitor_precision": monitor_precision}
            m = self.spec.monitor
            if m:
                record[BEST_KEY] = evaluate.pgd_accuracy(
                    model, self.x, self.y, eps=m["eps"], step_size=m["step_size"], steps=m["pgd_steps"],
                    batch_size=self.bs, seed=m["seed"])  # seeded apart: training's RNG untouched
        return record

    def final_clean(self, model: torch.nn.Module, history: list[dict]) -> float:
        """The run's reported clean accuracy, in fp32 (the T_max search reads it): the last
        epoch's where it was measured in fp32, else measured now (the curves may be TF32)."""
        last = history[-1]
        return last["test_accuracy"] if last.get("monitor_precision") == "fp32" else self.clean(model)


def best_epoch(history: list[dict]) -> dict:
    """The epoch best.pt holds: the first with the highest monitored PGD accuracy, else the last."""
    scored = [h for h in history if BEST_KEY in h]
    if not scored:
        return {"epoch": history[-1]["epoch"], "by": None}
    top = max(scored, key=lambda h: h[BEST_KEY])  # max keeps the first of equal values
    return {"epoch": top["epoch"], "by": BEST_KEY, BEST_KEY: top[BEST_KEY]}
