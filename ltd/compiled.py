"""The training attack's forwards through ``torch.compile``, without weight gradients.

``torch.compile(model)`` under the attack's ``autograd.grad(loss, x_adv)`` also computes
every weight gradient: a compiled module's backward returns gradients for every input
that required grad when it was traced, parameters included, where eager autograd prunes
them. Each attack iteration then costs 3 forward-equivalents instead of 2, which is why
compiling the model made the TRADES+LTD step slower on the GPU (docs/performance.md).

``AttackForward`` compiles a functional call of the model on *detached* parameters and
buffers (``torch.func.functional_call``): nothing in the traced graph requires grad but
the input, so its backward computes the input gradient only. Detached tensors share the
parameters' storage, so the optimiser's in-place updates, AWP's in-place weight
perturbation and BatchNorm's running statistics (read in eval mode during the attack)
are always what the compiled call sees; the parameter dict is rebuilt for each attack
(``bind``), so a model moved to another device or layout is followed too. Parameters
are never switched to ``requires_grad=False`` instead: dynamo may then reuse a frame
compiled for the other state (pytorch/pytorch#139476).

The loss step (train mode, weight gradients) stays eager; ``train.compile`` compiles
the whole model instead (``ltd/train.py``). Switched on by ``train.compile_attack``.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch.func import functional_call


def _functional_forward(module: torch.nn.Module, params: dict, buffers: dict, x: torch.Tensor) -> torch.Tensor:
    return functional_call(module, (params, buffers), (x,))


class AttackForward:
    """``bind(model)`` -> ``forward(x)``: the model's logits through one compiled functional
    call on its detached parameters, for attacks that need input gradients only. One
    instance per training job; ``backend`` and ``options`` go to ``torch.compile``."""

    def __init__(self, backend="inductor", **options):
        self.backend = backend
        # static shapes: a training job sees two batch sizes (full, the epoch's last), each
        # compiled once, rather than one slower dynamic-shape graph
        self._compiled = torch.compile(_functional_forward, backend=backend, **{"dynamic": False, **options})

    def bind(self, model: torch.nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
        module = getattr(model, "_orig_mod", model)  # a torch.compile'd model (train.compile): its module
        params = {k: p.detach() for k, p in module.named_parameters()}
        buffers = dict(module.named_buffers())
        return lambda x: self._compiled(module, params, buffers, x)
