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


def stalled(x_adv: torch.Tensor, start: torch.Tensor, x: torch.Tensor, eps: float) -> torch.Tensor:
    """Per example: whether x' is still its random start (projected on the eps-ball and
    [0, 1], as the first step leaves an unmoved start): the attack never moved it, which
    is what an input gradient that is exactly zero at every step (in fp16, one that
    underflowed) gives. A device tensor of bools: no host synchronisation."""
    return (x_adv == _project(start, x, eps)).flatten(1).all(1)


def trades_attack(model: torch.nn.Module, x: torch.Tensor, logits_nat: torch.Tensor, *, eps: float,
                  step_size: float, steps: int, init_std: float = INIT_STD,
                  start: torch.Tensor | None = None, forward=None) -> torch.Tensor:
    """max_{||x'-x||_inf <= eps} KL(f(x) || f(x')) by sign-gradient ascent from x + N(0, init_std^2)
    (``start``: that random start, drawn by the caller to tell stalled attacks, ``stalled``).

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
    ``start``: the random start (``pgd_start``), if the caller drew it; the attack stalled
    for the examples whose returned delta equals it."""
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
