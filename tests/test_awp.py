"""AWP (TRADES-AWP) and AWP+LTD: the weight-perturbation primitives and the step.

A tiny WRN-10-1 on random 3x16x16 inputs; everything runs on the CPU in fp32.
"""

import copy

import pytest
import torch
import torch.nn.functional as F

from ltd import awp as awp_lib
from ltd.attacks import trades_attack
from ltd.models import build_model
from ltd.steps import AWPStep, build_step

ATTACK = {"eps": 8 / 255, "step_size": 2 / 255, "steps": 3}
AWP = {"gamma": 5e-3, "warmup_epochs": 10, "proxy_lr": 0.01}
BETA = 6.0


@pytest.fixture
def setup():
    torch.manual_seed(0)
    model = build_model("wrn-10-1", 10)
    # Non-trivial BN parameters and running statistics, so a leak or a perturbation shows.
    model.train()
    with torch.no_grad():
        for _ in range(2):
            model(torch.rand(16, 3, 16, 16))
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.1, 0.1)
    x = torch.rand(8, 3, 16, 16)
    y = torch.randint(0, 10, (8,))
    return model, x, y


def _sgd(model):
    return torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4, nesterov=True)


def _train_step(step, model, x, y, q=None, seed=1):
    """What ltd/train.py does with one batch."""
    opt = _sgd(model)
    torch.manual_seed(seed)
    loss, logits, stats = step(model, x, y, q)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    step.after_update(model)
    return loss.detach(), stats


def _objective(x, x_adv, y):
    def f(net):
        nat = net(x)
        return F.cross_entropy(nat, y) + BETA * F.kl_div(F.log_softmax(net(x_adv), 1), F.softmax(nat, 1),
                                                         reduction="batchmean")
    return f


def _state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_perturbed_parameters_are_conv_and_linear_weights(setup):
    model, _, _ = setup
    names = {n for n, _ in awp_lib.perturbed_parameters(model)}
    expected = {n for n, m in model.named_modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))}
    assert names == {n + ".weight" for n in expected}
    assert "fc.weight" in names and "fc.bias" not in names and "bn1.weight" not in names


def test_perturbation_has_relative_norm_gamma_and_spares_bias_bn(setup):
    model, x, y = setup
    x_adv = (x + 0.01 * torch.randn_like(x)).clamp(0, 1)
    before = _state(model)
    delta = awp_lib.compute_perturbation(model, awp_lib.make_proxy(model), _objective(x, x_adv, y),
                                         gamma=AWP["gamma"], proxy_lr=AWP["proxy_lr"])
    assert _state(model).keys() == before.keys()
    assert all(torch.equal(v, before[k]) for k, v in _state(model).items())  # computing delta changes nothing
    awp_lib.add_perturbation(model, delta)
    after = _state(model)
    perturbed = {n for n, _ in awp_lib.perturbed_parameters(model)}
    assert set(delta) == perturbed
    for k in before:
        if k in perturbed:
            ratio = ((after[k] - before[k]).norm() / before[k].norm()).item()
            assert ratio == pytest.approx(AWP["gamma"], rel=1e-4), k
            assert delta[k].norm().item() == pytest.approx(AWP["gamma"] * before[k].norm().item(), rel=1e-5)
        else:  # biases, BN weight/bias, BN running statistics
            assert torch.equal(after[k], before[k]), k


def test_perturbation_ascends_the_loss(setup):
    model, x, y = setup
    x_adv = (x + 0.01 * torch.randn_like(x)).clamp(0, 1)
    f = _objective(x, x_adv, y)
    delta = awp_lib.compute_perturbation(model, awp_lib.make_proxy(model), f, gamma=0.05, proxy_lr=0.01)
    proxy = awp_lib.make_proxy(model)
    base = f(proxy).item()
    awp_lib.add_perturbation(proxy, delta)
    assert f(proxy).item() > base + 1e-3
    awp_lib.add_perturbation(proxy, delta, sign=-2.0)
    assert f(proxy).item() < base


def test_matches_official_proxy_sgd_arithmetic(setup):
    """Our d = lr * grad equals the official (proxy after an SGD step) - model, up to
    the official subtraction's fp32 cancellation (documented in ltd/awp.py)."""
    model, x, y = setup
    x_adv = (x + 0.01 * torch.randn_like(x)).clamp(0, 1)
    f = _objective(x, x_adv, y)
    ours = awp_lib.compute_perturbation(model, awp_lib.make_proxy(model), f, gamma=AWP["gamma"], proxy_lr=0.01)
    proxy = copy.deepcopy(model)
    proxy.load_state_dict(model.state_dict())
    proxy.train()
    popt = torch.optim.SGD(proxy.parameters(), lr=0.01)
    popt.zero_grad()
    (-f(proxy)).backward()
    popt.step()
    pw = dict(proxy.named_parameters())
    for name, w in awp_lib.perturbed_parameters(model):
        d = pw[name].detach() - w.detach()
        official = AWP["gamma"] * w.norm() / (d.norm() + 1e-20) * d
        rel = ((official - ours[name]).norm() / ours[name].norm()).item()
        assert rel < 2e-3, (name, rel)  # measured: <= 2e-4
        cos = F.cosine_similarity(official.flatten(), ours[name].flatten(), dim=0).item()
        assert cos > 0.99999, (name, cos)


def test_perturb_then_restore_recovers_weights(setup):
    """w + delta - delta in fp32 is w up to two roundings: each elementwise error is at
    most u*|w + delta| + u*|w| (u = 2^-24), bounded here by 2^-22 * (|w| + |delta|). Not
    exact, because restoring must subtract delta (the official semantics after an
    update), not copy saved weights back."""
    model, x, y = setup
    x_adv = (x + 0.01 * torch.randn_like(x)).clamp(0, 1)
    before = _state(model)
    delta = awp_lib.compute_perturbation(model, awp_lib.make_proxy(model), _objective(x, x_adv, y),
                                         gamma=AWP["gamma"], proxy_lr=AWP["proxy_lr"])
    awp_lib.add_perturbation(model, delta)
    assert not torch.equal(model.fc.weight, before["fc.weight"])
    awp_lib.remove_perturbation(model, delta)
    eps32 = torch.finfo(torch.float32).eps  # 2^-23
    for k, v in _state(model).items():
        if k in delta:
            bound = 2 * eps32 * (before[k].abs() + delta[k].abs())
            assert ((v - before[k]).abs() <= bound).all(), k
        else:
            assert torch.equal(v, before[k]), k


def test_awp_step_equals_manual_official_computation(setup):
    """Gradient at w + delta, optimiser step applied to w + delta, delta subtracted."""
    model0, x, y = setup
    model_a = copy.deepcopy(model0)
    step = build_step("awp", beta=BETA, attack=ATTACK, awp=AWP)
    step.begin_epoch(AWP["warmup_epochs"] - 1)
    opt_a = _sgd(model_a)
    torch.manual_seed(1)
    loss_a, _, _ = step(model_a, x, y, None)
    delta_a = {k: v.clone() for k, v in step._delta.items()}
    opt_a.zero_grad(set_to_none=True)
    loss_a.backward()
    opt_a.step()
    step.after_update(model_a)

    # By hand: x' from the unperturbed model, delta from a full-backward proxy, then TRADES.
    model_b = copy.deepcopy(model0)
    torch.manual_seed(1)
    model_b.eval()
    with torch.no_grad():
        clean = model_b(x)
    x_adv = trades_attack(model_b, x, clean, **ATTACK)
    model_b.train()
    proxy = copy.deepcopy(model_b)
    proxy.zero_grad(set_to_none=True)
    (-_objective(x, x_adv, y)(proxy)).backward()
    pg = dict(proxy.named_parameters())
    delta_b = {}
    for name, w in model_b.named_parameters():
        if w.dim() > 1:
            d = AWP["proxy_lr"] * -pg[name].grad
            delta_b[name] = AWP["gamma"] * w.detach().norm() * d / d.norm()
    assert delta_a.keys() == delta_b.keys()
    for k in delta_b:
        torch.testing.assert_close(delta_a[k], delta_b[k], rtol=1e-5, atol=1e-8)
    with torch.no_grad():
        for name, w in model_b.named_parameters():
            if name in delta_b:
                w.add_(delta_b[name])
    opt_b = _sgd(model_b)
    # the official TRADES-AWP loss, three train-mode forwards x', x, x (BN statistics compare too)
    adv = model_b(x_adv)
    robust = F.kl_div(F.log_softmax(adv, 1), F.softmax(model_b(x), 1), reduction="batchmean")
    nat = model_b(x)
    loss_b = F.cross_entropy(nat, y) + BETA * robust
    opt_b.zero_grad(set_to_none=True)
    loss_b.backward()
    opt_b.step()
    with torch.no_grad():
        for name, w in model_b.named_parameters():
            if name in delta_b:
                w.sub_(delta_b[name])

    assert loss_a.item() == pytest.approx(loss_b.item(), rel=1e-6)
    sa, sb, s0 = _state(model_a), _state(model_b), _state(model0)
    for k in sb:
        torch.testing.assert_close(sa[k], sb[k], rtol=1e-5, atol=1e-7)
    # ... and the tolerance is far below what AWP changes: without delta the update differs.
    plain = copy.deepcopy(model0)
    _train_step(build_step("trades", beta=BETA, attack=ATTACK), plain, x, y)
    sp = _state(plain)
    assert max((sp[k] - sa[k]).abs().max().item() for k in delta_b) > 1e-4
    assert all(not torch.equal(sa[k], s0[k]) for k in delta_b)


def test_before_warmup_awp_is_trades_and_not_after(setup):
    model0, x, y = setup
    w = AWP["warmup_epochs"]
    ref = copy.deepcopy(model0)
    loss_t, _ = _train_step(build_step("trades", beta=BETA, attack=ATTACK), ref, x, y)
    for epoch, expect_same in [(0, True), (w - 2, True), (w - 1, False), (w, False), (w + 50, False)]:
        model = copy.deepcopy(model0)
        step = build_step("awp", beta=BETA, attack=ATTACK, awp=AWP)
        step.begin_epoch(epoch)
        loss_a, _ = _train_step(step, model, x, y)
        same_loss = torch.equal(loss_a, loss_t)
        # parameters: the BN running statistics differ by design (TRADES-AWP's forward order
        # x', x, x against TRADES's x, x', x: test_batchnorm.py)
        same_weights = all(torch.equal(a, b) for a, b in zip(model.parameters(), ref.parameters()))
        assert same_loss == expect_same and same_weights == expect_same, epoch
        if not expect_same:
            assert loss_a.item() > loss_t.item()  # the loss at the perturbed (uphill) weights


def test_gamma_zero_switches_awp_off(setup):
    model0, x, y = setup
    ref, model = copy.deepcopy(model0), copy.deepcopy(model0)
    loss_t, _ = _train_step(build_step("trades", beta=BETA, attack=ATTACK), ref, x, y)
    step = build_step("awp", beta=BETA, attack=ATTACK, awp={**AWP, "gamma": 0.0})
    step.begin_epoch(100)
    loss_a, _ = _train_step(step, model, x, y)
    assert torch.equal(loss_a, loss_t)


def test_awp_ltd_with_one_hot_q_equals_awp(setup):
    model0, x, y = setup
    q = F.one_hot(y, 10).float()
    results = []
    for method in ("awp", "awp-ltd"):
        model = copy.deepcopy(model0)
        step = build_step(method, beta=BETA, attack=ATTACK, awp=AWP)
        step.begin_epoch(AWP["warmup_epochs"])
        loss, stats = _train_step(step, model, x, y, q)
        results.append((loss, _state(model), stats))
    (la, sa, _), (ll, sl, _) = results
    assert ll.item() == pytest.approx(la.item(), rel=1e-6)
    for k in sa:
        torch.testing.assert_close(sl[k], sa[k], rtol=1e-5, atol=1e-7)
    # and soft labels do change it (in the perturbation and in the update)
    model = copy.deepcopy(model0)
    step = build_step("awp-ltd", beta=BETA, attack=ATTACK, awp=AWP)
    step.begin_epoch(AWP["warmup_epochs"])
    loss_s, _ = _train_step(step, model, x, y, 0.5 * q + 0.05)
    assert abs(loss_s.item() - la.item()) > 1e-3


def test_awp_ltd_uses_q_in_the_perturbation(setup, monkeypatch):
    from ltd import steps
    model0, x, y = setup
    x_adv = (x + 0.02 * torch.randn_like(x)).clamp(0, 1)
    monkeypatch.setattr(steps, "trades_adversarial", lambda model, x, attack, start=None: x_adv)
    seen = []
    real = awp_lib.compute_perturbation

    def spy(model, proxy, objective, **kw):
        seen.append(objective)
        return real(model, proxy, objective, **kw)

    monkeypatch.setattr(awp_lib, "compute_perturbation", spy)
    q = torch.softmax(torch.randn(8, 10), 1)
    step = build_step("awp-ltd", beta=BETA, attack=ATTACK, awp=AWP)
    step.begin_epoch(AWP["warmup_epochs"])
    _train_step(step, copy.deepcopy(model0), x, y, q)
    probe = copy.deepcopy(model0).train()
    with torch.no_grad():
        value = seen[0](probe).item()
        nat, adv = probe(x), probe(x_adv)
    kl = F.kl_div(F.log_softmax(adv, 1), F.softmax(nat, 1), reduction="batchmean").item()
    with_soft = -(q * F.log_softmax(nat, 1)).sum(1).mean().item() + BETA * kl
    with_hard = F.cross_entropy(nat, y).item() + BETA * kl
    assert value == pytest.approx(with_soft, rel=1e-5)
    assert abs(with_soft - with_hard) > 1e-2


def test_proxy_never_touches_model_buffers_or_grads(setup):
    model0, x, y = setup
    model = copy.deepcopy(model0)
    step = build_step("awp", beta=BETA, attack=ATTACK, awp=AWP)
    step.begin_epoch(AWP["warmup_epochs"])
    # Run a first full step so that the model holds .grad and the proxy exists.
    _train_step(step, model, x, y)
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    buffers = {k: v.clone() for k, v in model.named_buffers()}
    x_adv = (x + 0.01 * torch.randn_like(x)).clamp(0, 1)
    delta = awp_lib.compute_perturbation(model, step._proxy, _objective(x, x_adv, y), gamma=0.005, proxy_lr=0.01)
    assert delta
    for k, v in model.named_buffers():
        assert torch.equal(v, buffers[k]), k
    for n, p in model.named_parameters():
        assert torch.equal(p.grad, grads[n]), n
    assert model.training
    # The proxy's own BN statistics did move (it ran in train mode on this batch).
    assert not torch.equal(dict(step._proxy.named_buffers())["bn1.running_mean"], buffers["bn1.running_mean"])


def test_bn_buffers_after_step_come_from_the_model_passes_only(setup):
    """After a full AWP step the model's BN buffers are those of the official loop's three
    train-mode passes (x', x, x) at the perturbed weights: num_batches_tracked advanced by
    3, not by the proxy's passes too, and running stats equal the official order's
    (checked above in test_awp_step_equals_manual_official_computation)."""
    model0, x, y = setup
    model = copy.deepcopy(model0)
    n0 = {k: v.item() for k, v in model.named_buffers() if k.endswith("num_batches_tracked")}
    step = build_step("awp", beta=BETA, attack=ATTACK, awp=AWP)
    step.begin_epoch(AWP["warmup_epochs"])
    _train_step(step, model, x, y)
    for k, v in model.named_buffers():
        if k.endswith("num_batches_tracked"):
            assert v.item() == n0[k] + 3, k


def test_step_twice_without_after_update_is_an_error(setup):
    model, x, y = setup
    step = build_step("awp", beta=BETA, attack=ATTACK, awp=AWP)
    step.begin_epoch(AWP["warmup_epochs"])
    step(model, x, y, None)
    with pytest.raises(RuntimeError, match="after_update"):
        step(model, x, y, None)


def test_build_step_interface():
    for m in ("awp", "awp-ltd"):
        s = build_step(m, beta=BETA, attack=ATTACK, awp=AWP)
        assert isinstance(s, AWPStep) and not s.supports_compile
        with pytest.raises(ValueError, match="awp"):
            build_step(m, beta=BETA, attack=ATTACK)


def test_awp_ltd_without_q_is_an_error(setup):
    model, x, y = setup
    step = build_step("awp-ltd", beta=BETA, attack=ATTACK, awp=AWP)
    step.begin_epoch(AWP["warmup_epochs"])
    with pytest.raises(ValueError, match="soft labels"):
        step(model, x, y, None)
