"""L_inf attacks used in training (the TRADES KL maximisation) and evaluation (PGD).

Both run the model in eval mode (as the official TRADES code does), restore its mode
afterwards, and take gradients with respect to the input only: no parameter .grad.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
import torch.nn.functional as F


@contextmanager
def _eval_mode(model: torch.nn.Module):
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def _project(x_adv: torch.Tensor, x: torch.Tensor, eps: float) -> torch.Tensor:
    return torch.min(torch.max(x_adv, x - eps), x + eps).clamp_(0.0, 1.0)


def trades_attack(model: torch.nn.Module, x: torch.Tensor, logits_nat: torch.Tensor, *, eps: float,
                  step_size: float, steps: int, init_std: float = 0.001) -> torch.Tensor:
    """max_{||x'-x||_inf <= eps} KL(f(x) || f(x')) by sign-gradient ascent from x + N(0, init_std^2).

    ``logits_nat`` = f(x), computed once by the caller: the official loop recomputes it
    at every step, which costs one forward per step and changes nothing.
    """
    log_p_nat = F.log_softmax(logits_nat.detach().float(), dim=1)
    # randn, not randn_like: the same noise whatever x's memory format (channels_last on the GPU)
    x_adv = (x + init_std * torch.randn(x.shape, dtype=x.dtype, device=x.device)).detach()
    with _eval_mode(model):
        for _ in range(steps):
            x_adv.requires_grad_(True)
            kl = F.kl_div(F.log_softmax(model(x_adv).float(), dim=1), log_p_nat, reduction="sum", log_target=True)
            (grad,) = torch.autograd.grad(kl, x_adv)
            x_adv = _project(x_adv.detach() + step_size * grad.sign(), x, eps)
    return _project(x_adv.detach(), x, eps)


def pgd_attack(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float, step_size: float,
               steps: int, random_start: bool = True) -> torch.Tensor:
    """Madry et al.'s L_inf PGD on cross-entropy, from a uniform random start."""
    x_adv = x.detach().clone()
    if random_start:
        x_adv = (x_adv + torch.empty(x.shape, dtype=x.dtype, device=x.device).uniform_(-eps, eps)).clamp_(0.0, 1.0)
    with _eval_mode(model):
        for _ in range(steps):
            x_adv.requires_grad_(True)
            loss = F.cross_entropy(model(x_adv).float(), y)
            (grad,) = torch.autograd.grad(loss, x_adv)
            x_adv = _project(x_adv.detach() + step_size * grad.sign(), x, eps)
    return x_adv.detach()
