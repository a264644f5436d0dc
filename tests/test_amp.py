"""fp16 as the paper trained (PyTorch 1.11 "mixed precision"): autocast + GradScaler.

A step of ``ltd.train.fit`` in fp16 equals a plain AMP TRADES training script written
here from yaodongyu/TRADES trades.py (the attack in eval mode from x + 0.001 N(0, 1),
f(x) recomputed at every attack step; the loss from the train-mode forwards x, x', x)
inside ``torch.autocast(float16)``, updated through torch.amp's GradScaler as its
examples do (``scale(loss).backward()``, ``step``, ``update``), the attack's gradient
taken under autocast and unscaled: same x', loss, gradients, weights, loss-scaler state
and BatchNorm statistics, on the CPU (torch's CPU autocast has fp16) and, marked
``cuda``, on a GPU. Then what AMP is for: a step with non-finite gradients is skipped
and the run goes on, the scaler's state survives a SIGTERM mid-epoch, and a table
entry's own fp16 really runs in fp16 on the CPU.
"""
import copy
import math
import os
import signal

import pytest
import torch
import torch.nn.functional as F

from ltd import flops, loaders, runtime
from ltd import train as loop
from ltd.losses import natural_loss
from ltd.models import build_model
from ltd.steps import build_step

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)]
ATTACK = {"eps": 8 / 255, "step_size": 2 / 255, "steps": 2}
BETA = 6.0
SCHED = {"epochs": 1, "lr": 0.1, "momentum": 0.9, "weight_decay": 5e-4, "nesterov": True, "lr_milestones": [],
         "lr_gamma": 0.1}


@pytest.fixture(autouse=True)
def _one_cpu_thread():
    with flops.one_thread():
        yield


def _device(name):
    if name == "cuda":
        device = runtime.setup("cuda")
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = False, True  # same kernels both sides
        return device
    return torch.device("cpu")


def _data(n=16, size=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, 3, size, size, generator=g), torch.randint(0, 10, (n,), generator=g),
            torch.softmax(2 * torch.randn(n, 10, generator=g), 1))


def amp_trades_reference(model, opt, scaler, x, y, target, device):
    """One step of a plain AMP TRADES script (see the module docstring). The KL is taken
    on log-probabilities, as ours: the official softmax form differs in the last bit, and
    sign() can turn that into another x' (tests/test_batchnorm.py)."""
    with torch.autocast(device.type, dtype=torch.float16):
        model.eval()
        x_adv = x.detach() + 0.001 * torch.randn_like(x)
        for _ in range(ATTACK["steps"]):
            x_adv.requires_grad_(True)
            kl = F.kl_div(F.log_softmax(model(x_adv).float(), 1), F.log_softmax(model(x).float(), 1),
                          reduction="sum", log_target=True)
            (grad,) = torch.autograd.grad(kl, [x_adv])
            x_adv = torch.min(torch.max(x_adv.detach() + ATTACK["step_size"] * grad.sign(), x - ATTACK["eps"]),
                              x + ATTACK["eps"]).clamp(0.0, 1.0)
        model.train()
        logits = model(x)
        natural = natural_loss(logits.float(), target)
        robust = F.kl_div(F.log_softmax(model(x_adv).float(), 1), F.log_softmax(model(x).float(), 1),
                          reduction="batchmean", log_target=True)
        loss = natural + BETA * robust
    opt.zero_grad()
    scaler.scale(loss).backward()
    scaler.step(opt)  # unscales the gradients in place, then steps unless one is inf/nan
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    scaler.update()
    return x_adv.detach(), loss.detach(), grads


class _Recording(torch.optim.SGD):
    """The loop's SGD, keeping the (unscaled) gradients it steps with."""

    grads: dict = {}

    def step(self, closure=None):
        _Recording.grads = {id(p): p.grad.clone() for g in self.param_groups for p in g["params"]}
        return super().step(closure)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("method", ["trades", "trades-ltd"])
@pytest.mark.parametrize("init_scale", [2.0 ** 16, 2.0 ** 40], ids=["applied", "skipped"])
def test_fp16_step_equals_a_plain_amp_trades_loop(device, method, init_scale, tmp_path, monkeypatch):
    """init_scale 2^40 overflows fp16's gradients: the scaler skips the update on both sides."""
    from ltd import steps

    device = _device(device)
    x, y, q = (t.to(device) for t in _data())
    torch.manual_seed(0)
    model0 = build_model("wrn-10-1", 10).to(device)
    monkeypatch.setattr(runtime, "grad_scaler", lambda dev, p: torch.amp.GradScaler(
        torch.device(dev).type, init_scale=init_scale, enabled=p == "fp16"))
    def make_optimizer(model, s):  # the loop's SGD, recording; no LR milestones in one epoch
        opt = _Recording(model.parameters(), lr=s["lr"], momentum=s["momentum"], weight_decay=s["weight_decay"],
                         nesterov=s["nesterov"])
        return opt, torch.optim.lr_scheduler.MultiStepLR(opt, [])

    monkeypatch.setattr(loop, "make_optimizer", make_optimizer)
    adversarial, real = [], steps.trades_adversarial
    monkeypatch.setattr(steps, "trades_adversarial",
                        lambda *a, **k: adversarial.append(real(*a, **k)) or adversarial[-1])
    _Recording.grads = {}
    ours = copy.deepcopy(model0)
    loader = loaders.DeviceLoader(loaders.Split(x, y, None), len(y), q=q, shuffle=False, augment=False)
    torch.manual_seed(100)  # the attack's random start
    history = loop.fit(ours, build_step(method, beta=BETA, attack=ATTACK), loader, SCHED, ckpt_path=tmp_path / "c.pt",
                       device=device, precision="fp16")
    ours_grads = {n: _Recording.grads.get(id(p)) for n, p in ours.named_parameters()}

    ref = copy.deepcopy(model0)
    opt = torch.optim.SGD(ref.parameters(), lr=SCHED["lr"], momentum=SCHED["momentum"],
                          weight_decay=SCHED["weight_decay"], nesterov=SCHED["nesterov"])
    scaler = torch.amp.GradScaler(device.type, init_scale=init_scale)
    torch.manual_seed(100)
    x_adv, loss, grads = amp_trades_reference(ref, opt, scaler, x, y, q if method.endswith("-ltd") else y, device)

    skipped = init_scale > 2 ** 16
    assert torch.equal(adversarial[0], x_adv)  # the same attack, bitwise: gradients under autocast, unscaled
    assert history[0]["train_loss"] == pytest.approx(loss.item(), rel=1e-6)
    assert history[0]["precision"] == "fp16" and history[0]["train_skipped_steps"] == int(skipped)
    state = torch.load(tmp_path / "c.pt", weights_only=True)["scaler"]
    assert state == scaler.state_dict()  # scale (halved by a skip) and growth tracker
    assert state["scale"] == (init_scale / 2 if skipped else init_scale)
    if skipped:
        assert _Recording.grads == {}  # SGD never stepped
        assert all(torch.equal(a, b) for a, b in zip(ours.parameters(), model0.parameters()))
    else:
        # Gradients: ours backpropagates f(x) once for both terms, the script twice; fp16's
        # rounding (2^-11 relative per operation) differs on the two paths. Measured on the
        # CPU: 1 - cos < 3e-6 and a relative difference of at most 0.22 % per tensor, in the
        # gradients and hence in the weights' update.
        for n, g in grads.items():
            a, b = ours_grads[n].double().flatten(), g.double().flatten()
            assert F.cosine_similarity(a, b, dim=0) > 0.9999 and (a - b).norm() <= 1e-2 * b.norm(), n
        for (n, a), b, start in zip(ours.named_parameters(), ref.parameters(), model0.parameters()):
            assert (a - b).norm() <= 1e-2 * (b - start).norm(), n
        assert any(not torch.equal(a, b) for a, b in zip(ours.parameters(), model0.parameters()))
    for (n, a), b in zip(ours.named_buffers(), ref.buffers()):  # x, x', x officially; ours replays one x
        if n.endswith("num_batches_tracked"):
            assert a.item() == b.item() == 3, n
        else:
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=n)


class _Poisoned:
    """A step whose loss is inf at the calls in ``at`` (1-based): fp16 gradients overflow."""

    def __init__(self, step, at):
        self.step, self.at, self.calls = step, at, 0

    def __getattr__(self, name):
        return getattr(self.step, name)

    def __call__(self, model, x, y, q):
        loss, logits, stats = self.step(model, x, y, q)
        self.calls += 1
        if self.calls in self.at:
            loss = loss * math.inf
        return loss, logits, stats


def _natural_fit(tmp_path, precision, at, name, epochs=1):
    x, y, _ = _data(n=64)
    loader = loaders.DeviceLoader(loaders.Split(x, y, None), 16, seed=1)  # 4 steps
    torch.manual_seed(0)
    model = build_model("wrn-10-1", 10)
    step = _Poisoned(build_step("natural"), at)
    history = loop.fit(model, step, loader, {**SCHED, "epochs": epochs}, ckpt_path=tmp_path / f"{name}.pt",
                       device=torch.device("cpu"), precision=precision)
    return model, history


def test_an_inf_loss_in_fp16_is_a_skipped_step_and_the_run_goes_on(tmp_path):
    _, history = _natural_fit(tmp_path, "fp16", {2}, "fp16")
    h = history[0]
    assert h["train_skipped_steps"] == 1 and math.isfinite(h["train_loss"])  # its loss left out of the mean
    assert h["loss_scale"] == 2.0 ** 15  # halved once, as AMP does
    # bf16 and fp32 have no scaler: the same inf loss would update the weights, and stops the run
    for precision in ("bf16", "fp32"):
        with pytest.raises(loop.NonFiniteLoss, match="loss is nan or inf at epoch 1, within steps 1-4"):
            _natural_fit(tmp_path, precision, {2}, precision)


def test_fp16_stops_where_no_loss_scale_helps(tmp_path):
    """A non-finite loss at every step since the last sync point: the forward itself
    overflows; AMP would skip forever."""
    with pytest.raises(loop.NonFiniteLoss, match="4 non-finite .the loss scaler skipped 4 of them"):
        _natural_fit(tmp_path, "fp16", {1, 2, 3, 4}, "always")


def test_sigterm_mid_epoch_in_fp16_resumes_with_the_loss_scale_it_had(tmp_path, monkeypatch):
    """The scale starts at 2^24, where these gradients overflow: the first steps are skipped
    and halve it. A resumed run that forgot it would skip again and end elsewhere."""
    monkeypatch.setattr(runtime, "grad_scaler", lambda dev, p: torch.amp.GradScaler(
        torch.device(dev).type, init_scale=2.0 ** 24, enabled=p == "fp16"))
    x, y, _ = _data(n=64)

    def run(name, kill_at=None):
        loader = loaders.DeviceLoader(loaders.Split(x, y, None), 16, seed=1)
        torch.manual_seed(0)
        model = build_model("wrn-10-1", 10)
        step = build_step("natural")
        if kill_at:
            calls, inner = [0], step

            class Killing(type(inner)):
                def __call__(self, *a):
                    calls[0] += 1
                    if calls[0] == kill_at:
                        os.kill(os.getpid(), signal.SIGTERM)  # the loop's handler sets its flag
                    return inner(*a)

            step = Killing(inner.method)
        return model, loop.fit(model, step, loader, {**SCHED, "epochs": 2}, ckpt_path=tmp_path / f"{name}.pt",
                               device=torch.device("cpu"), precision="fp16")

    reference, ref_history = run("ref")
    with pytest.raises(loop.Preempted, match="at epoch 2, step 2"):
        run("resumed", kill_at=6)
    saved = torch.load(tmp_path / "resumed.pt", weights_only=True)
    assert saved["scaler"]["scale"] < 2.0 ** 24  # the scale had moved: the check below can fail
    resumed, history = run("resumed")
    assert all(torch.equal(a, b) for a, b in zip(resumed.state_dict().values(), reference.state_dict().values()))
    assert [h["loss_scale"] for h in history] == [h["loss_scale"] for h in ref_history]
    assert sum(h["train_skipped_steps"] for h in ref_history) >= 1
