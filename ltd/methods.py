"""One training step per method. Adding a method = one function here + one name.

A step takes (model, x, y, q) — q the teacher's soft labels for x or None — and
returns (loss, clean logits, stats). The training loop owns everything else. A step
may also define ``begin_epoch(epoch)`` (0-based, called before each epoch) and
``after_update(model)`` (called right after ``optimizer.step()``); the loop calls
them when present.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from .attacks import trades_attack
from .losses import natural_loss, soft_cross_entropy, trades_loss

Step = Callable[[torch.nn.Module, torch.Tensor, torch.Tensor, torch.Tensor | None], tuple]


def natural_step(model, x, y, q):
    """Teacher: cross-entropy on one-hot labels."""
    logits = model(x)
    loss = F.cross_entropy(logits.float(), y)
    return loss, logits, {"loss": loss.item()}


def soft_step(model, x, y, q):
    """Substitute (Sec. 4.2): natural data, the teacher's soft labels at T."""
    logits = model(x)
    loss = soft_cross_entropy(logits.float(), q)
    return loss, logits, {"loss": loss.item()}


def make_trades_step(beta: float, eps: float, step_size: float, steps: int, soft: bool) -> Step:
    """TRADES (one-hot natural term) or TRADES+LTD (Eq. 9: soft labels, student T = 1).

    The clean logits the KL attack aims away from are computed once per batch (eval
    mode, as the official attack runs), not re-computed at each of its steps.
    """

    def step(model, x, y, q):
        was_training = model.training
        model.eval()
        with torch.no_grad():
            logits_clean = model(x).float()
        x_adv = trades_attack(model, x, logits_clean, eps=eps, step_size=step_size, steps=steps)
        model.train(was_training)
        logits_nat = model(x)
        logits_adv = model(x_adv)
        target = q if soft else y
        loss, parts = trades_loss(logits_nat.float(), logits_adv.float(), target, beta)
        return loss, logits_nat, {"loss": loss.item(), **parts}

    return step


def build_step(method: str, trades_cfg: dict) -> Step:
    """``trades_cfg`` is the config's ``trades`` section (beta may be overridden per run)."""
    if method == "natural":
        return natural_step
    if method == "soft":
        return soft_step
    if method in ("trades", "trades-ltd"):
        return make_trades_step(
            beta=trades_cfg["beta"],
            eps=trades_cfg["eps"],
            step_size=trades_cfg["step_size"],
            steps=trades_cfg["steps"],
            soft=method == "trades-ltd",
        )
    raise ValueError(f"unknown method {method!r}; expected natural, soft, trades or trades-ltd")
