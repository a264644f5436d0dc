"""Losses of TRADES and LTD. All take logits (never probabilities) for stability.

The student's temperature is always 1: only the teacher's soft labels carry a
temperature. That is what separates LTD from defensive distillation's gradient masking.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def tempered_softmax(teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
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


def mart_loss(logits_nat: torch.Tensor, logits_adv: torch.Tensor, y: torch.Tensor, beta: float,
              target: torch.Tensor | None = None) -> tuple[torch.Tensor, dict]:
    """MART (Wang et al., ICLR 2020) as YisenWang/MART mart.py computes it, its guards
    (1e-12, 1.0001, 1.0000001) included:

        BCE(f(x'), y) + beta * mean_i KL(f(x_i) || f(x'_i)) * (1 - f_y(x_i))

    with BCE = CE(f(x'), y) - log(1 - max_{k != y} f_k(x')) (the margin term pushes down
    the most probable wrong class). Gradients flow through every factor, the weight
    (1 - f_y(x)) included, as officially.

    ``target`` (MART+LTD): the teacher's soft labels q_T replace y in the
    cross-entropy term only, CE(q_T, f(x')). The margin term and the weight keep y:
    both are defined by *which* class is true (the most probable wrong class; the
    probability given to the true one), not by a target distribution.
    """
    p_adv = F.softmax(logits_adv, dim=1)
    top2 = p_adv.topk(2, dim=1).indices  # equal probabilities may pick another class than
    wrong = torch.where(top2[:, 0] == y, top2[:, 1], top2[:, 0])  # the official argsort; the loss is equal
    ce = natural_loss(logits_adv, y if target is None else target)
    margin = F.nll_loss(torch.log(1.0001 - p_adv + 1e-12), wrong)
    p_nat = F.softmax(logits_nat, dim=1)
    kl = F.kl_div(torch.log(p_adv + 1e-12), p_nat, reduction="none").sum(dim=1)
    weight = 1.0000001 - p_nat.gather(1, y[:, None]).squeeze(1)
    robust = (kl * weight).mean()
    adversarial = ce + margin
    return adversarial + beta * robust, {"adversarial": adversarial.detach(), "robust": robust.detach()}
