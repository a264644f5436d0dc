"""L_inf attacks used in training (each method's inner maximisation) and evaluation (PGD).

All take gradients with respect to the input only (no parameter .grad). The TRADES
and MART training attacks and the evaluation PGD run the model in eval mode (as the
official TRADES and MART code does) and restore its mode afterwards; PGD-AT's training
attack runs the model in the mode it is in, as its official loop does (``pgd_delta``).
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


def _noise_like(x: torch.Tensor) -> torch.Tensor:
    """An empty tensor of x's shape in the default (contiguous) layout: random starts
    drawn into it are the same noise whatever x's memory format (channels_last on the
    GPU), where ``*_like`` would follow x's strides."""
    return torch.empty(x.shape, dtype=x.dtype, device=x.device)


def _project(x_adv: torch.Tensor, x: torch.Tensor, eps: float) -> torch.Tensor:
    return torch.min(torch.max(x_adv, x - eps), x + eps).clamp_(0.0, 1.0)


INIT_STD = 0.001  # TRADES's and MART's random start: x + 0.001 N(0, 1), as officially


def random_start(x: torch.Tensor, init_std: float = INIT_STD) -> torch.Tensor:
    """The TRADES/MART attack's start x + N(0, init_std^2) (drawn from the global RNG)."""
    return x + init_std * _noise_like(x).normal_()


# An attack stalled when it moved fewer than this fraction of its example's pixels. A
# working fp32 attack moves nearly every pixel; what stays is pinned at the [0, 1] box or
# stepped back onto its start. Measured (benchmarks/stalled_attacks.py; TRADES, MART and
# PGD-AT attacks, eps 8/255, 10 steps, random-init and naturally trained WRN-10-2): on
# 1,000 real CIFAR-10 test images every example moved >= 0.82 of its pixels (1st
# percentile >= 0.92, medians 0.95-0.99); on the digits at 8 px (58 % of pixels at 0 or 1)
# >= 0.73. An fp16 attack whose input gradient underflowed on most pixels moves only the
# few that kept one. Half leaves a wide margin on both sides.
STALLED_BELOW = 0.5


def moved_fraction(x_adv: torch.Tensor, start: torch.Tensor, x: torch.Tensor, eps: float) -> torch.Tensor:
    """Per example: the fraction of its pixels (values) that the attack moved, x' differing
    from its random start (projected on the eps-ball and [0, 1], as the first step leaves
    an unmoved start). A pixel whose input gradient is exactly zero at every step (in
    fp16, one that underflowed) stays. A device tensor: no host synchronisation."""
    return moved(x_adv, _project(start, x, eps))


def moved(end: torch.Tensor, start: torch.Tensor) -> torch.Tensor:
    """Per example: the fraction of values where ``end`` differs from ``start`` (float32)."""
    return (end != start).flatten(1).float().mean(1)


def stalled(moved: torch.Tensor, below: float = STALLED_BELOW) -> torch.Tensor:
    """Per example (``moved``: ``moved_fraction``): whether its attack stalled, moving
    fewer than ``below`` of its pixels. Partial underflow counts: an attack that moved
    only the few pixels whose gradient stayed representable is stalled, though x' is not
    exactly its start (the rule before counted only attacks that moved no pixel at all)."""
    return moved < below


def trades_attack(model: torch.nn.Module, x: torch.Tensor, logits_nat: torch.Tensor, *, eps: float,
                  step_size: float, steps: int, init_std: float = INIT_STD,
                  start: torch.Tensor | None = None, forward=None) -> torch.Tensor:
    """max_{||x'-x||_inf <= eps} KL(f(x) || f(x')) by sign-gradient ascent from x + N(0, init_std^2)
    (``start``: that random start, drawn by the caller to tell stalled attacks, ``moved_fraction``).

    ``logits_nat`` = f(x), computed once by the caller: the official loop recomputes it
    at every step, which costs one forward per step and changes nothing. ``forward``:
    what computes f(x') (default the model; ltd.compiled.AttackForward's compiled call).
    """
    log_p_nat = F.log_softmax(logits_nat.detach().float(), dim=1)

    def kl(logits):
        return F.kl_div(F.log_softmax(logits.float(), dim=1), log_p_nat, reduction="sum", log_target=True)

    start = random_start(x, init_std) if start is None else start
    x_adv = _sign_ascent(model, x, start, kl, eps=eps, step_size=step_size, steps=steps, forward=forward)
    return _project(x_adv, x, eps)


def mart_attack(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float, step_size: float,
                steps: int, init_std: float = INIT_STD, start: torch.Tensor | None = None,
                forward=None) -> torch.Tensor:
    """MART's inner maximisation (YisenWang/MART mart.py): cross-entropy on the true
    label y (batch mean), sign-gradient ascent from x + N(0, init_std^2) (``start``, if
    the caller drew it), each step projected on the eps-ball and [0, 1]; the result
    clamped to [0, 1] (as officially: with no step, x plus its noise)."""
    def ce(logits):
        return F.cross_entropy(logits.float(), y)

    start = random_start(x, init_std) if start is None else start
    x_adv = _sign_ascent(model, x, start, ce, eps=eps, step_size=step_size, steps=steps, forward=forward)
    return x_adv.clamp(0.0, 1.0)


def _sign_ascent(model: torch.nn.Module, x: torch.Tensor, x_adv: torch.Tensor, loss_fn, *, eps: float,
                 step_size: float, steps: int, forward=None) -> torch.Tensor:
    """``steps`` sign-gradient steps up ``loss_fn(model(x_adv))`` from ``x_adv``, each
    projected on the eps-ball around x and [0, 1], in eval mode. ``forward`` (default
    the model) computes the logits: e.g. a compiled call without weight gradients."""
    forward = model if forward is None else forward
    x_adv = x_adv.detach()
    with _eval_mode(model):
        for _ in range(steps):
            x_adv.requires_grad_(True)
            (grad,) = torch.autograd.grad(loss_fn(forward(x_adv)), x_adv)
            x_adv = _project(x_adv.detach() + step_size * grad.sign(), x, eps)
    return x_adv.detach()


def pgd_start(x: torch.Tensor, eps: float) -> torch.Tensor:
    """PGD-AT's random start: delta uniform in the eps-ball, clipped to the image box."""
    return _box(_noise_like(x).uniform_(-eps, eps), x)


def pgd_delta(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float, step_size: float,
              steps: int, start: torch.Tensor | None = None) -> torch.Tensor:
    """PGD-AT's training attack (Madry et al.), as Rice et al.'s ``attack_pgd`` computes it
    in csdongxian/AWP AT_AWP/train_cifar10.py (L_inf, one restart): the perturbation
    delta, from a uniform random start in the eps-ball, ``steps`` sign-gradient steps up
    the cross-entropy on the true label y (batch mean); each step clipped to [-eps, eps]
    and then to the box, ``-x <= delta <= 1 - x``. The adversarial example is
    ``(x + delta).clamp(0, 1)``.

    The model runs in the mode it is in (the official attack never sets one: in train
    mode BatchNorm normalises with the batch's statistics and every one of the ``steps``
    forwards moves the running statistics, as officially; ltd.steps.PgdStep chooses the
    mode). Kept as delta with the official arithmetic, so the model sees bitwise the
    official inputs ``x + delta`` (a projection of x' itself differs in the last bit,
    and a sign() of a gradient near zero can turn that into a different step).
    ``start``: the random start (``pgd_start``), if the caller drew it; the attack moved
    the values where the returned delta differs from it (``moved(delta, start)``)."""
    delta = pgd_start(x, eps) if start is None else start.detach().clone()
    for _ in range(steps):
        delta.requires_grad_(True)
        loss = F.cross_entropy(model(x + delta).float(), y)
        (grad,) = torch.autograd.grad(loss, delta)
        delta = _box((delta.detach() + step_size * grad.sign()).clamp_(-eps, eps), x)
    return delta.detach()


def _box(delta: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """delta with x + delta in [0, 1]: clipped to [-x, 1 - x]."""
    return torch.max(torch.min(delta, 1.0 - x), -x)


def pgd_attack(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float, step_size: float,
               steps: int, random_start: bool = True) -> torch.Tensor:
    """Madry et al.'s L_inf PGD on cross-entropy, from a uniform random start."""
    x_adv = x.detach().clone()
    if random_start:
        x_adv = (x_adv + _noise_like(x).uniform_(-eps, eps)).clamp_(0.0, 1.0)
    with _eval_mode(model):
        for _ in range(steps):
            x_adv.requires_grad_(True)
            loss = F.cross_entropy(model(x_adv).float(), y)
            (grad,) = torch.autograd.grad(loss, x_adv)
            x_adv = _project(x_adv.detach() + step_size * grad.sign(), x, eps)
    return x_adv.detach()
