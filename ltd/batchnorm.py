"""BatchNorm running statistics as the official training loops leave them, without
their extra forward passes.

The official TRADES update runs three train-mode forwards per batch: x, x', x (the
loss computes f(x) twice); TRADES-AWP runs x', x, x. Each forward moves every BN
layer's running mean and variance towards that batch's statistics. Our steps compute
f(x) once, so the last clean forward is missing, and with it a share of the clean
statistics in every evaluation's BN (after one step at momentum 0.1: 0.67 officially,
0.47 without it).

The missing forward would see exactly the statistics the first clean forward saw (the
same weights and inputs, train mode), and the running-average update is linear. So we
record, around the clean forward, the update it made, ``d = m1 - (1 - a) m0`` (which
is ``a * batch statistic``), and after the remaining forwards apply it once more:
``m <- (1 - a) m + d``. That is the official result up to float rounding, at no
forward's cost (a few element-wise ops on per-channel vectors). ``num_batches_tracked``
advances as officially. Needs a fixed ``momentum`` (every torch BN default).
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch
from torch.nn.modules.batchnorm import _BatchNorm


def _layers(model: torch.nn.Module) -> list[_BatchNorm]:
    layers = [m for m in model.modules() if isinstance(m, _BatchNorm) and m.track_running_stats]
    for m in layers:
        if m.momentum is None:
            raise ValueError(f"{m}: momentum=None (a cumulative average) cannot be replayed")
    return layers


class CleanForwardReplay:
    """``with replay.record(): model(x)`` then, after the other forwards,
    ``replay.apply()``: the running statistics as if ``model(x)`` had run once more."""

    def __init__(self, model: torch.nn.Module):
        self.layers = _layers(model)
        self.keep = [1.0 - m.momentum for m in self.layers for _ in (0, 1)]  # per buffer: mean, var
        self._delta: list[torch.Tensor] | None = None

    def _buffers(self) -> list[torch.Tensor]:
        # .data: written without bumping the buffers' version counters, as BN's own kernel
        # updates them; autograd saved them with the forwards (unused by a train-mode
        # backward) and would otherwise refuse the backward.
        return [b.data for m in self.layers for b in (m.running_mean, m.running_var)]

    @contextlib.contextmanager
    def record(self) -> Iterator[None]:
        if not self.layers or not self.layers[0].training:
            yield  # eval mode: no statistics move, nothing to replay
            return
        before = torch._foreach_mul(self._buffers(), self.keep)  # (1 - a) m0, a copy
        yield
        self._delta = torch._foreach_sub(self._buffers(), before)  # m1 - (1 - a) m0 = a * batch statistic

    def apply(self) -> None:
        if self._delta is None:
            return
        buffers = self._buffers()
        torch._foreach_mul_(buffers, self.keep)
        torch._foreach_add_(buffers, self._delta)
        for m in self.layers:
            m.num_batches_tracked.data.add_(1)
        self._delta = None
