"""Under autocast every weight gets a gradient: one real training step (``ltd.train.fit``)
of every registered method, in fp16 (with its loss scaler) and in bf16, on the CPU.

What it guards against: autocast's weight-cast cache. Within one autocast region it
keeps the fp16/bf16 copy of each weight it cast and reuses it. On torch < 2.10 a copy
made under ``no_grad`` (the TRADES/AWP attack's clean forward, ltd/steps.py
``trades_adversarial``) carries no autograd history: the training forward reusing it
gives every convolution and linear weight *no* gradient, and only BatchNorm trains
(pytorch/pytorch#112583, fixed by #165068 in torch 2.10). ``ltd.runtime.autocast``
therefore switches the cache off. On torch 2.9.1 with that switch reverted this test
fails for trades and trades-ltd in both precisions (every conv and fc weight without a
gradient; AWP's old cache clear after its perturbation hid it there) and passes with it:
docs/autocast_cache.md has the commands and output.

The gradients are the ones the loop's optimiser steps with (after the scaler's unscale
in fp16): a recording SGD stands in for the loop's, nothing else of the step is replaced.
"""
import math

import pytest
import torch

from ltd import flops, loaders, methods
from ltd import train as loop
from ltd.models import build_model
from ltd.steps import build_step

ATTACK = {"eps": 8 / 255, "step_size": 2 / 255, "steps": 2}
AWP = {"gamma": 5e-3, "warmup_epochs": 0, "proxy_lr": 0.1}  # perturbing from the first step
SCHED = {"epochs": 1, "lr": 0.1, "momentum": 0.9, "weight_decay": 5e-4, "nesterov": True, "lr_milestones": [],
         "lr_gamma": 0.1}


@pytest.fixture(autouse=True)
def _one_cpu_thread():
    with flops.one_thread():
        yield


class _Recording(torch.optim.SGD):
    """The loop's SGD, keeping the (unscaled) gradients of its one step."""

    grads: dict = {}

    def step(self, closure=None):
        _Recording.grads = {id(p): None if p.grad is None else p.grad.clone()
                            for g in self.param_groups for p in g["params"]}
        return super().step(closure)


def _recording_optimizer(model, s):
    opt = _Recording(model.parameters(), lr=s["lr"], momentum=s["momentum"], weight_decay=s["weight_decay"],
                     nesterov=s["nesterov"])
    return opt, torch.optim.lr_scheduler.MultiStepLR(opt, [])


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
@pytest.mark.parametrize("method", list(methods.METHODS))
def test_every_weight_gets_a_gradient_under_autocast(method, precision, tmp_path, monkeypatch):
    m = methods.get(method)
    g = torch.Generator().manual_seed(0)
    n = 8
    x, y = torch.rand(n, 3, 8, 8, generator=g), torch.randint(0, 10, (n,), generator=g)
    q = torch.softmax(2 * torch.randn(n, 10, generator=g), 1)
    loader = loaders.DeviceLoader(loaders.Split(x, y, None), n, q=q, shuffle=False, augment=False)  # one step
    torch.manual_seed(0)
    model = build_model("wrn-10-1", 10)
    step = build_step(method, beta=6.0, attack=ATTACK if m.attack else None, awp=AWP if m.awp else None)
    monkeypatch.setattr(loop, "make_optimizer", _recording_optimizer)
    _Recording.grads = {}
    history = loop.fit(model, step, loader, SCHED, ckpt_path=tmp_path / "c.pt", device=torch.device("cpu"),
                       precision=precision)
    assert history[0]["precision"] == precision and math.isfinite(history[0]["train_loss"])
    assert _Recording.grads, "the optimiser never stepped (the fp16 loss scaler skipped the step)"
    bad = {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            grad = _Recording.grads[id(p)]
            if grad is None or not torch.isfinite(grad).all() or not grad.any():
                bad[name] = "none" if grad is None else "not finite" if not torch.isfinite(grad).all() else "all zero"
    assert not bad, f"{method} in {precision}: parameters without a usable gradient: {bad}"
