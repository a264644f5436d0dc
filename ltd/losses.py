"""Losses of TRADES and LTD. All take logits (never probabilities) for stability.

The student's temperature is always 1: only the teacher's soft labels carry a
temperature. That is what separates LTD from defensive distillation's gradient masking.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def soft_labels(teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """q_T(x) = softmax(z_teacher(x) / T)."""
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    return F.softmax(teacher_logits.float() / temperature, dim=1)


def soft_cross_entropy(logits: torch.Tensor, target_probs: torch.Tensor) -> torch.Tensor:
    """CE(q, f) = -sum_i q_i log f_i, averaged over the batch."""
    return -(target_probs * F.log_softmax(logits, dim=1)).sum(dim=1).mean()


def natural_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """One-hot CE for class indices (TRADES), soft CE for a (B, C) float target (LTD)."""
    if target.is_floating_point():
        return soft_cross_entropy(logits, target)
    return F.cross_entropy(logits, target)


def trades_kl(logits_adv: torch.Tensor, logits_nat: torch.Tensor) -> torch.Tensor:
    """KL(f(x) || f(x')), summed over classes and averaged over the batch."""
    return F.kl_div(F.log_softmax(logits_adv, dim=1), F.log_softmax(logits_nat, dim=1),
                    reduction="batchmean", log_target=True)


def trades_loss(logits_nat: torch.Tensor, logits_adv: torch.Tensor, target: torch.Tensor,
                beta: float) -> tuple[torch.Tensor, dict]:
    """TRADES with one-hot ``target``; Eq. 9 (TRADES+LTD) with soft labels."""
    natural = natural_loss(logits_nat, target)
    robust = trades_kl(logits_adv, logits_nat)
    return natural + beta * robust, {"natural": natural.detach(), "robust": robust.detach()}
