"""Counted FLOPs: what one forward of a model costs, and what one training step costs
in forwards ("forward-equivalents").

Counting uses ``torch.utils.flop_counter.FlopCounterMode``: convolutions and matrix
products (forward and backward, 2 FLOPs per multiply-add), nothing else (BatchNorm,
activations and the optimiser are memory-bound and left out). The counts are exact
for those operations and do not depend on the device, the precision or the timing, so
they compare two implementations of a step without any of a shared machine's noise.

A step's count divided by one forward of the same batch gives its cost in forwards per
image. A backward costs about two forwards (input gradients + weight gradients), one
when only input gradients are needed (an attack step). So: natural training 3; a
TRADES(+LTD) step with a k-step attack computed leanly 1 + 2k + 2 x 3 = 2k + 7
(27 for k = 10), and 3k + 9 (39) as the official loop structures it, which recomputes
f(x) at every attack step and once more in the loss. PGD-AT 2k + 4, MART 2k + 6
(ltd/methods.py).
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator

import torch
from torch.utils.flop_counter import FlopCounterMode

from .methods import get
from .models import build_model
from .steps import build_step


class _NoModuleTracker:
    """Stands in for FlopCounterMode's ModuleTracker: only the global total is kept."""

    parents = frozenset({"Global"})

    def __enter__(self):
        return self

    def __exit__(self, *args):
        return None


class TotalFlopCounter(FlopCounterMode):
    """``FlopCounterMode`` counting the global total only. Its per-module tracker puts
    backward hooks on every module, and those make ``torch.autograd.grad`` with respect
    to a leaf input (an attack's x_adv) fail: "A leaf node was passed to
    _will_engine_execute_node" (torch 2.14). The FLOP formulas are FlopCounterMode's."""

    def __init__(self):
        super().__init__(display=False)
        self.mod_tracker = _NoModuleTracker()


def count_flops(fn: Callable[[], Any]) -> int:
    """FLOPs (convolutions and matrix products) of running ``fn()``, backward passes included."""
    with TotalFlopCounter() as counter:
        fn()
    return int(counter.get_total_flops())


def forward_flops(model: torch.nn.Module, x: torch.Tensor) -> int:
    """FLOPs of one forward of ``model`` on the batch ``x`` (eval mode, no autograd;
    the model's mode is restored)."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            return count_flops(lambda: model(x))
    finally:
        model.train(was_training)


def model_forward_flops(arch: str, image_size: int, num_classes: int = 10) -> int:
    """FLOPs of one forward of ``arch`` on one image_size x image_size RGB image.

    Built and run on the meta device: shapes only, no memory, no arithmetic, so even
    WRN-34-20 or WRN-50-2 at 224 px takes milliseconds. (WRN-34-10 at 32 px: 13.32 GFLOP.)
    """
    with torch.device("meta"):
        model = build_model(arch, num_classes)
        x = torch.empty(1, 3, image_size, image_size)
    return forward_flops(model, x)


def count_step_flops(step_fn: Callable, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor,
                     q: torch.Tensor | None) -> int:
    """FLOPs of one training step driven as ltd/train.py drives it: the model in train
    mode, ``loss, logits, stats = step_fn(model, x, y, q)``, ``loss.backward()``, then
    the step's ``after_update`` (no optimiser step: the weights are left as they were).
    ``after_update`` is counted: PGD-AT's forward of x there (for its BN statistics) is
    part of its cost; AWP's removal of its weight perturbation costs no FLOPs.
    Gradients are cleared."""
    was_training = model.training
    model.train()
    done = False

    def run():
        nonlocal done
        loss, _, _ = step_fn(model, x, y, q)
        loss.backward()
        step_fn.after_update(model)
        done = True

    try:
        flops = count_flops(run)
    finally:
        if not done:  # the step failed: still undo what it left (AWP's perturbation)
            step_fn.after_update(model)
        model.zero_grad(set_to_none=True)
        model.train(was_training)
    return flops


def count_step_forward_equivalents(step_fn: Callable, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor,
                                   q: torch.Tensor | None) -> float:
    """Forward-equivalents per image of one training step: FLOPs of the step (and its
    backward) divided by the FLOPs of one forward of the model on the same batch.

    Counting is exact and cheap for a small model and a batch of 2; the ratio does not
    depend on the batch size and hardly on the width (see ``forward_equivalents``)."""
    return count_step_flops(step_fn, model, x, y, q) / forward_flops(model, x)


# The model and batch the budget counts steps on: the ratio step / forward is a property
# of the step's structure (how many forwards, which backwards). TRADES on this WRN: 26.98;
# on WRN-34-10: 27.00; on ResNet-50: 26.94 (docs/performance.md), at a tiny fraction of the cost.
COUNTING_ARCH, COUNTING_IMAGE_SIZE, COUNTING_BATCH = "wrn-10-2", 16, 2


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """torch on one CPU thread inside: a tiny model's ops are too small to share, and two
    OpenMP threads on a busy 2-core machine wait on each other (a count then takes 1-2 s
    instead of 0.05 s)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


def forward_equivalents(method: str, attack: dict | None = None, *, beta: float = 6.0,
                        awp: dict | None = None, arch: str = COUNTING_ARCH,
                        image_size: int = COUNTING_IMAGE_SIZE, num_classes: int = 10, seed: int = 0) -> float:
    """Counted forward-equivalents per image of one training step of ``method``
    (ltd.steps.build_step) with ``attack`` = {eps, step_size, steps}, on a small model
    (``arch`` at ``image_size``) and a batch of 2. An AWP method is counted with AWP on
    from the first epoch, proxy pass included (``awp``: its gamma and proxy_lr)."""
    if get(method).awp:
        if awp is None:
            raise ValueError(f"counting {method!r} needs its awp settings {{gamma, proxy_lr}}")
        awp = {**awp, "warmup_epochs": 0}
    step = build_step(method, beta=beta, attack=attack, awp=awp)
    step.begin_epoch(0)
    g = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]), one_thread():
        torch.manual_seed(seed)
        model = build_model(arch, num_classes)
        x = torch.rand(COUNTING_BATCH, 3, image_size, image_size, generator=g)
        y = torch.randint(0, num_classes, (COUNTING_BATCH,), generator=g)
        q = torch.softmax(torch.randn(COUNTING_BATCH, num_classes, generator=g), dim=1)
        return count_step_forward_equivalents(step, model, x, y, q)
