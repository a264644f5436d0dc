"""The compiled training attack (ltd/compiled.py, ``train.compile_attack``): it computes
what the eager attack computes, and its backward computes no weight gradient.

Compiled with AOTAutograd and no code generation (as dynamo's ``aot_eager`` backend,
plus a record of the graphs): the same forward and backward graphs inductor would get,
at a few seconds of compile on 2 CPU cores, where inductor's C++ code generation took
90 s for this tiny model (measured here, cold cache). Inductor's numerics are measured
by benchmarks/compile_attack.py and, on a GPU, by benchmarks/device_check.py (stage 3).

Tolerances: those tests/test_cuda.py accepts between a bf16 and an fp32 step (loss
within 0.5 %); the compiled graph runs the same ATen operations as eager here, so
x', loss and weights are usually bitwise equal, but a sign() of an input gradient near
zero may flip on another CPU and move a pixel by two steps.
"""
import copy

import pytest
import torch
import torch.nn.functional as F

from ltd import flops
from ltd.compiled import AttackForward
from ltd.models import build_model
from ltd.steps import build_step, trades_adversarial

from .graphs import Recorder

ATTACK = {"eps": 8 / 255, "step_size": 2 / 255, "steps": 3}
AWP = {"gamma": 5e-3, "warmup_epochs": 0, "proxy_lr": 0.1}
BF16_RTOL = 5e-3  # tests/test_cuda.py


@pytest.fixture(autouse=True)
def _one_cpu_thread():
    with flops.one_thread():
        yield


def _batch(n=8, size=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, 3, size, size, generator=g), torch.randint(0, 10, (n,), generator=g),
            F.softmax(2 * torch.randn(n, 10, generator=g), dim=1))


def _train(model, method, compiled, batch, seed):
    step = build_step(method, beta=6.0, attack=ATTACK, awp=AWP if method.startswith("awp") else None)
    step.compiled_attack = compiled
    step.begin_epoch(0)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    torch.manual_seed(seed)
    x, y, q = batch
    torch.manual_seed(seed)
    x_adv = trades_adversarial(model, x, ATTACK, compiled=compiled)
    torch.manual_seed(seed)  # the step draws the same random start
    loss, _, _ = step(model, x, y, q)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    step.after_update(model)
    return x_adv, loss.item()


def test_compiled_attack_equals_eager_and_computes_no_weight_gradient():
    torch.manual_seed(0)
    base = build_model("wrn-10-1", 10)
    eager, comp = copy.deepcopy(base), copy.deepcopy(base)
    rec = Recorder()
    compiled = AttackForward(backend=rec.backend)
    # TRADES+LTD, then AWP+LTD (whose proxy is a copy of the model, perturbed in place
    # after the attack) on the same models: each step starts from weights and BatchNorm
    # statistics the previous one updated, which the compiled call must see
    for i, method in enumerate(["trades-ltd", "trades-ltd", "awp-ltd", "awp-ltd"]):
        batch = _batch(seed=i)
        xe, le = _train(eager, method, None, batch, seed=10 + i)
        xc, lc = _train(comp, method, compiled, batch, seed=10 + i)
        assert (xe - xc).abs().gt(1e-6).float().mean() <= 0.01, (method, i)  # at most 1 % of pixels moved apart
        assert abs(lc - le) <= BF16_RTOL * abs(le), (method, i, lc, le)
    for (k, a), b in zip(eager.state_dict().items(), comp.state_dict().values()):
        torch.testing.assert_close(b, a, rtol=1e-3, atol=1e-5, msg=k)  # weights and BN running statistics
    assert comp.training  # the attack's eval mode was restored
    # BatchNorm's running statistics are read through shared storage: an in-place update
    # (as a training forward makes) is what the next compiled call sees, without a recompile
    bn = next(m for m in comp.modules() if isinstance(m, torch.nn.BatchNorm2d))
    x = _batch(seed=9)[0]
    comp.eval()
    with torch.no_grad():
        bn.running_mean.add_(0.5)
        torch.testing.assert_close(compiled.bind(comp)(x), comp(x))
    comp.train()
    masks = rec.conv_backward_masks()
    n_convs = sum(isinstance(m, torch.nn.Conv2d) for m in base.modules())
    assert len(masks) == n_convs, masks  # the attack's backward, traced once, covers every convolution
    assert all(not weight for _, weight, _ in masks), masks  # input gradients only
    assert len(rec.backward) == 1 and len(rec.forward) == 2  # one graph with autograd (the attack), one without (f(x))


def test_compiling_the_model_computes_weight_gradients_in_the_attack():
    """Why ``train.compile`` lost on the GPU (0.95x eager): the same attack through
    ``torch.compile(model)`` traces a backward that computes every weight's gradient."""
    torch.manual_seed(0)
    model = build_model("wrn-10-1", 10)
    rec = Recorder()
    net = torch.compile(model, backend=rec.backend)
    trades_adversarial(net, _batch()[0], ATTACK)
    assert any(weight for _, weight, _ in rec.conv_backward_masks())
