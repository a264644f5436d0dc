"""Clean accuracy, PGD and AutoAttack (through ``pyautoattack``), in full fp32.

Reported robust accuracy is never computed under autocast: bf16 logits make
gradient-based attacks weaker and the number optimistic.
"""

from __future__ import annotations

import logging
import re
import time
from pathlib import Path

import torch

from .attacks import pgd_attack, trades_attack
from .data import batches
from .losses import soft_cross_entropy, trades_kl


@torch.no_grad()
def predict(model: torch.nn.Module, x: torch.Tensor, batch_size: int) -> torch.Tensor:
    model.eval()
    return torch.cat([model(x[s]).float() for s in batches(x, batch_size)])


def clean_accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int) -> float:
    return (predict(model, x, batch_size).argmax(1) == y).float().mean().item()


def clean_accuracy_batches(model: torch.nn.Module, batches_) -> float:
    """Clean accuracy over streamed (x, y) batches (data too large to hold, e.g. ImageNet)."""
    model.eval()
    correct = n = 0
    with torch.no_grad():
        for x, y in batches_:
            correct += (model(x).argmax(1) == y).sum().item()
            n += len(y)
    return correct / max(n, 1)


def pgd_accuracy(model, x, y, *, eps, step_size, steps, batch_size) -> float:
    correct = 0
    for s in batches(x, batch_size):
        x_adv = pgd_attack(model, x[s], y[s], eps=eps, step_size=step_size, steps=steps)
        correct += (predict(model, x_adv, batch_size).argmax(1) == y[s]).sum().item()
    return correct / len(y)


def eq9_loss(model, x, q, *, beta, eps, step_size, steps, batch_size) -> float:
    """The LTD objective (Eq. 9) on held-out data, with its TRADES inner maximisation."""
    total = 0.0
    for s in batches(x, batch_size):
        logits = predict(model, x[s], batch_size)
        x_adv = trades_attack(model, x[s], logits, eps=eps, step_size=step_size, steps=steps)
        logits_adv = predict(model, x_adv, batch_size)
        total += (soft_cross_entropy(logits, q[s]) + beta * trades_kl(logits_adv, logits)).item() * len(x[s])
    return total / len(x)


class _AccuracyLog(logging.Handler):
    """pyautoattack reports the robust accuracy after each attack only in its log."""

    pattern = re.compile(r"robust accuracy after (\S+): ([0-9.]+)%")

    def __init__(self):
        super().__init__(logging.DEBUG)
        self.after: dict[str, float] = {}

    def emit(self, record: logging.LogRecord) -> None:
        m = self.pattern.search(record.getMessage())
        if m:
            self.after[m.group(1).lower()] = float(m.group(2)) / 100


def autoattack(
    model: torch.nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float,
    version: str = "standard",
    attacks: list[str] | None = None,
    square_queries: int | None = None,
    batch_size: int = 500,
    seed: int = 0,
    state_path: str | Path | None = None,
    device: torch.device | str = "cpu",
) -> dict:
    """Linf AutoAttack; the robust accuracy is the per-example worst case over attacks.

    ``version='custom'`` runs ``attacks`` with the standard version's settings (one
    restart, 9 target classes or fewer), for cheap demo evaluations.
    """
    import pyautoattack
    from pyautoattack import AutoAttack

    model.eval()
    if version == "custom":
        if not attacks:
            raise ValueError("evaluation.autoattack.attacks: list the attacks for version 'custom'")
        adversary = AutoAttack(model, attacks=list(attacks), version="custom", eps=eps, norm="Linf",
                               seed=seed, device=device)
        n_cls = predict(model, x[:2], 2).shape[1]
        adversary.apgd.n_restarts = 1
        adversary.fab.n_restarts = 1
        adversary.apgd_targeted.n_target_classes = min(9, n_cls - 1)
        adversary.fab.n_target_classes = min(9, n_cls - 1)
    else:
        adversary = AutoAttack(model, version=version, eps=eps, norm="Linf", seed=seed, device=device)
    if square_queries:
        adversary.square.n_queries = square_queries
    log = _AccuracyLog()
    aa_logger = logging.getLogger("auto-attack")
    aa_logger.addHandler(log)
    old_level = aa_logger.level
    aa_logger.setLevel(logging.DEBUG)
    t0 = time.time()
    try:
        x_adv, _ = adversary.run_standard_evaluation(
            x, y, batch_size=batch_size, state_path=Path(state_path) if state_path else None
        )
    finally:
        aa_logger.removeHandler(log)
        aa_logger.setLevel(old_level)
    if state_path is not None:
        # After a resume, x_adv holds only this attempt's adversarial examples; the
        # state file holds every example's verdict.
        from pyautoattack.state import EvaluationState

        flags = EvaluationState.from_disk(Path(state_path)).robust_flags
        robust = flags.float().mean().item()
    else:
        robust = (predict(model, x_adv, batch_size).argmax(1) == y).float().mean().item()
    return {
        "robust_accuracy": robust,
        "robust_accuracy_after": log.after,
        "attacks": list(adversary.attacks_to_run),
        "version": version,
        "eps": eps,
        "norm": "Linf",
        "n_examples": len(y),
        "seed": seed,
        "batch_size": batch_size,
        "pyautoattack": pyautoattack.__version__,
        "max_perturbation": (x_adv - x).abs().amax().item(),
        "seconds": time.time() - t0,
    }
