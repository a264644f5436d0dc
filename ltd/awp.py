"""Adversarial Weight Perturbation (Wu, Xia and Wang, NeurIPS 2020), as in TRADES-AWP.

Before each update AWP moves the weights a small step *uphill* on the training loss,
takes the gradient there, applies the update, and takes the step back:

    w  <-  w + delta                                 (perturb)
    w  <-  optimizer_step(w, grad L(w + delta))      (the loop's ordinary update)
    w  <-  w - delta                                 (restore)

``delta`` is found on a *proxy*, a copy of the model re-loaded from its weights each
time: one plain SGD step (no momentum, no weight decay) on the negated loss moves it
by ``d = w_proxy - w = -lr * grad(-L) = lr * grad L``, and each perturbed layer gets
``delta_l = gamma * ||w_l|| * d_l / ||d_l||`` (Frobenius norms, one per layer: the
perturbation's size is relative to the layer's).
The proxy runs in train mode, so its BatchNorm layers use batch statistics and update
*its own* running statistics, never the model's: the proxy is how AWP keeps the
model's BN buffers free of the extra forward passes.

Which parameters are perturbed: the weights with more than one dimension, i.e.
convolution kernels and linear (fc) weight matrices. Biases and BatchNorm
scales/shifts (one-dimensional) and buffers (running statistics) are left alone, as in
the official code: a per-layer *relative* norm is meaningful for a weight matrix, while
BN parameters and biases set scales/offsets that a relative perturbation would distort
(and the official ``diff_in_weights`` skips every tensor with ``dim() <= 1``).

``d`` is taken as ``-lr * g`` directly rather than as ``(w - lr * g) - w`` after an
actual proxy update (the official code's arithmetic): the two are equal in exact
arithmetic, but the subtraction cancels in fp32 (|lr * g| << |w|) and leaves
rounding errors in ``d`` (up to 2e-4 relative per layer in tests/test_awp.py). Because ``d`` is normalised, the
proxy's learning rate then cancels out entirely (it is kept for the record). A layer
that gets no gradient (one unused in ``forward``, e.g. a checkpoint's spare
``sub_block1``) gets ``delta = 0``, as in the official code (its ``EPS`` keeps 0/0 away).
"""

from __future__ import annotations

import copy
from typing import Callable

import torch

from . import distributed

EPS = 1e-20  # as the official code: guards ||d|| = 0

Perturbation = dict[str, torch.Tensor]


def perturbed_parameters(model: torch.nn.Module) -> list[tuple[str, torch.nn.Parameter]]:
    """The (name, parameter) pairs AWP perturbs: weights with more than one dimension."""
    return [(name, p) for name, p in model.named_parameters() if p.dim() > 1 and "weight" in name.rsplit(".", 1)[-1]]


def make_proxy(model: torch.nn.Module) -> torch.nn.Module:
    """A private copy of ``model`` (architecture, device, dtype) to compute ``delta`` on."""
    proxy = copy.deepcopy(model)
    for p in proxy.parameters():
        p.grad = None
    return proxy


def compute_perturbation(model: torch.nn.Module, proxy: torch.nn.Module,
                         objective: Callable[[torch.nn.Module], torch.Tensor], *, gamma: float,
                         proxy_lr: float, n_local: int | None = None) -> Perturbation:
    """delta for every perturbed weight of ``model``, from one proxy SGD step that
    *increases* ``objective(proxy)`` (the training loss, evaluated with the proxy).

    Neither ``model``'s parameters, gradients nor buffers are touched: the proxy is
    re-loaded from ``model.state_dict()`` (buffers included) and put in train mode.
    Under torch.distributed the proxy gradients are averaged over the processes
    (``n_local``: this process's batch size), so every rank perturbs its weights alike.
    """
    proxy.load_state_dict(model.state_dict())
    proxy.train()
    names = [name for name, _ in perturbed_parameters(model)]
    proxy_params = dict(proxy.named_parameters())
    params = [proxy_params[name] for name in names]
    loss = -objective(proxy)  # ascend the training loss
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    if distributed.active():
        if n_local is None:
            raise ValueError("under torch.distributed, compute_perturbation needs n_local (this rank's batch size)")
        n_global = int(distributed.all_reduce_sum([n_local], grads[0].device)[0])
        distributed.average_tensors([g for g in grads if g is not None], n_local, n_global)
    model_params = dict(model.named_parameters())
    delta: Perturbation = {}
    with torch.no_grad():
        for name, g in zip(names, grads):
            w = model_params[name]
            # The proxy's SGD step (no momentum, no weight decay) moves it by exactly d.
            d = torch.zeros_like(w) if g is None else g * -proxy_lr
            delta[name] = d * (gamma * w.norm() / (d.norm() + EPS))
    return delta


def add_perturbation(model: torch.nn.Module, delta: Perturbation, sign: float = 1.0) -> None:
    """w += sign * delta, in place, for the parameters named in ``delta``."""
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, d in delta.items():
            params[name].add_(d, alpha=sign)
    # Under autocast the training step's region has no weight-cast cache (ltd.runtime.autocast):
    # a bf16/fp16 copy of a weight cast before this in-place change (the attack's forwards)
    # would otherwise be reused, the loss computed at the unperturbed weights, AWP a no-op.


def remove_perturbation(model: torch.nn.Module, delta: Perturbation) -> None:
    """w -= delta: undoes ``add_perturbation`` up to float rounding (the weights have
    usually moved in between: the official code subtracts delta after the update)."""
    add_perturbation(model, delta, sign=-1.0)
