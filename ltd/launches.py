"""Counted kernel launches: how many GPU kernels one training step (or one attack
iteration of an evaluation) starts, for the launch-bound floor of ``ltd.throughput``.

A small network's step can be bound by the host, not the GPU: eager PyTorch dispatches
every ATen op from Python and launches its kernel one by one, each costing the host some
microseconds, whatever the kernel's size. Counted with a ``TorchDispatchMode`` on the
``meta`` device (shapes only: no memory, no arithmetic), as the loop drives a step: the
method's step, ``loss.backward()``, the optimiser step, the after-update hook and the
loop's running totals (``ltd.train.Totals.add``). Counted: every ATen op that runs a
kernel on a GPU; not counted: views and aliases (``detach``, ``view``, ``t``, ...),
uninitialised allocations (``empty*``) and profiler markers. One op is counted as one
launch: a lower bound (a cuDNN convolution or a foreach op over many tensors may start
several). Not counted: the data loader's per-batch augmentation and fp16's GradScaler
(a handful of ops per step).

The counts depend on the network's layers and the step's structure, not on the batch or
image size: ``ltd.budget`` keeps them for the paper's architectures in
``ltd.throughput.COUNTED_LAUNCHES`` (planning imports no torch), and tests/test_budget.py
counts them again.
"""

from __future__ import annotations

import contextlib
from unittest import mock

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from . import methods, steps
from .flops import one_thread
from .models import build_model
from .train import Totals, make_optimizer

META = torch.device("meta")
NO_KERNEL = {"empty", "empty_like", "empty_strided", "new_empty", "new_empty_strided", "_record_function_enter_new",
             "_record_function_exit", "lift_fresh"}
# Step kinds (ltd.methods' ``step``) -> the method counted for it: the soft-label variant
# (one-hot ones differ by a few loss ops: tests/test_budget.py).
KIND_METHODS = {"natural": "soft", "trades": "trades-ltd", "awp": "awp-ltd", "pgd": "pgd-at-ltd", "mart": "mart-ltd"}
ATTACK = "attack"  # an evaluation's attack iteration: eval-mode forward + input gradient of the cross-entropy
SCHED = {"lr": 0.1, "momentum": 0.9, "weight_decay": 5e-4, "nesterov": True, "lr_milestones": [1], "lr_gamma": 0.1}
AWP = {"gamma": 5e-3, "warmup_epochs": 0, "proxy_lr": 0.01}


class LaunchCounter(TorchDispatchMode):
    """``with LaunchCounter() as c: ...``; then ``c.count``: ATen ops that launch a kernel."""

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if not func.is_view and func.overloadpacket.__name__ not in NO_KERNEL:
            self.count += 1
        return func(*args, **(kwargs or {}))


def _batch(size: int, classes: int, n: int = 2):
    x = torch.rand(n, 3, size, size, device=META)
    y = torch.zeros(n, dtype=torch.long, device=META)
    q = torch.full((n, classes), 1.0 / classes, device=META)
    return x, y, q


def step_launches(arch: str, kind: str, attack_steps: int, *, image_size: int = 32, num_classes: int = 10) -> int:
    """Kernel launches of one training step of step kind ``kind`` (``KIND_METHODS``; AWP
    on) with a ``attack_steps``-step attack, as the loop drives it; or, for ``ATTACK``,
    of one attack iteration in eval mode."""
    with torch.device(META):
        model = build_model(arch, num_classes)
    x, y, q = _batch(image_size, num_classes)
    if kind == ATTACK:
        model.eval().requires_grad_(False)  # as ltd.jobs.common.load_model hands the evaluated model over

        def body():
            x_adv = x.clone().requires_grad_(True)
            torch.autograd.grad(torch.nn.functional.cross_entropy(model(x_adv), y), x_adv)
    else:
        method = KIND_METHODS[kind]
        m = methods.get(method)
        attack = {"eps": 8 / 255, "step_size": 2 / 255, "steps": attack_steps} if m.attack else None
        step = steps.build_step(method, beta=6.0, attack=attack, awp=AWP if m.awp else None)
        step.begin_epoch(0)
        opt, _ = make_optimizer(model, SCHED)
        totals = Totals(META)

        def after_update():
            if kind == "pgd":  # PgdStep's post-update forward of x, run here: its autocast query knows no meta
                step._pending = None
                with torch.no_grad():
                    model(x)
            step.after_update(model)

        def body():
            loss, logits, stats = step(model, x, y, q)
            totals.add(loss, logits, y, stats)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            after_update()

    with torch.random.fork_rng(devices=[]), one_thread(), contextlib.ExitStack() as stack:
        if kind == "pgd":  # PgdStep asks autocast about the batch's device, which knows no meta: fp32
            stack.enter_context(mock.patch.object(torch, "is_autocast_enabled", lambda *_: False))
            stack.enter_context(mock.patch.object(torch, "get_autocast_dtype", lambda *_: torch.float32))
        body()  # the first step creates the optimiser's state and the step's caches
        counter = LaunchCounter()
        with counter:
            body()
    return counter.count


def launch_counts(arch: str, kind: str) -> tuple[int, int]:
    """(launches of a step without its attack, launches per attack iteration): the step's
    count is linear in the attack's steps (each iteration is the same ops), so two counts
    give both. For ``natural`` and ``ATTACK`` the second is 0."""
    if kind == ATTACK:
        return 0, step_launches(arch, kind, 0)
    if kind == "natural":
        return step_launches(arch, kind, 0), 0
    one, two = step_launches(arch, kind, 1), step_launches(arch, kind, 2)
    return one - (two - one), two - one
