"""BatchNorm running statistics equal the official loops' (ltd/batchnorm.py).

Same seed, same batches, several steps: our TRADES, TRADES+LTD, AWP and AWP+LTD steps
against the official forward orders (TRADES: x, x', x; TRADES-AWP: x', x, x), written
here from yaodongyu/TRADES trades.py and csdongxian/AWP trades_AWP/train_trades_cifar.py.
Both sides craft x' with the official attack's arithmetic (f(x) recomputed at every
step, as benchmarks/train_step.py's official structure does): our leaner attack equals
it in exact arithmetic, but a sign() of a gradient within rounding of zero would let
the trajectories drift apart over several steps and hide what is compared here.
"""

import copy
import importlib.util

import pytest
import torch
import torch.nn.functional as F

from ltd import awp as awp_lib
from ltd import steps
from ltd.batchnorm import CleanForwardReplay
from ltd.methods import get
from ltd.models import build_model
from ltd.steps import Step, build_step, natural_target

from .conftest import ROOT

ATTACK = {"eps": 8 / 255, "step_size": 2 / 255, "steps": 2}
AWP = {"gamma": 5e-3, "warmup_epochs": 0, "proxy_lr": 0.1}
BETA = 6.0
N_STEPS = 3


def _official_trades_structure():
    spec = importlib.util.spec_from_file_location("bench_train_step", ROOT / "benchmarks" / "train_step.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.OfficialStructureTradesStep


class OfficialTradesAWP(Step):
    """TRADES-AWP's update as the official script orders it: x' from the model (eval),
    the proxy's delta, then at w + delta ``logits_adv = model(x')``, the KL against
    ``softmax(model(x))``, and ``logits = model(x)`` for the natural term."""

    def __init__(self, method):
        self.method, self.delta = get(method), None

    def __call__(self, model, x, y, q):
        x_adv = steps.trades_adversarial(model, x, ATTACK)
        target = natural_target(self.method, y, q)

        def objective(net):
            nat = net(x)
            return F.cross_entropy(nat, target) + BETA * F.kl_div(F.log_softmax(net(x_adv), 1), F.softmax(nat, 1),
                                                                  reduction="batchmean")

        self.delta = awp_lib.compute_perturbation(model, awp_lib.make_proxy(model), objective,
                                                  gamma=AWP["gamma"], proxy_lr=AWP["proxy_lr"])
        awp_lib.add_perturbation(model, self.delta)
        logits_adv = model(x_adv)
        robust = F.kl_div(F.log_softmax(logits_adv, 1), F.softmax(model(x), 1), reduction="batchmean")
        logits = model(x)
        loss = F.cross_entropy(logits, target) + BETA * robust
        return loss, logits, {"loss": loss.detach()}

    def after_update(self, model):
        awp_lib.remove_perturbation(model, self.delta)


def _sgd(model):
    return torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4, nesterov=True)


def _step(step, model, opt, x, y, q, seed):
    torch.manual_seed(seed)  # the attack's random start: the same noise for both
    loss, _, _ = step(model, x, y, q)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    step.after_update(model)


def _train(step, model, batches):
    opt = _sgd(model)
    model.train()
    for i, (x, y, q) in enumerate(batches):
        _step(step, model, opt, x, y, q, 100 + i)
    return model


def official_attack(model, x, attack, start=None):
    """The official TRADES attack (eval mode; f(x) recomputed at every step), from the
    random start our step drew (``start``), else its own x + 0.001 N(0, 1)."""
    model.eval()
    x_adv = x.detach() + 0.001 * torch.randn_like(x) if start is None else start.detach()
    for _ in range(attack["steps"]):
        x_adv.requires_grad_(True)
        target = F.softmax(model(x), 1)
        kl = F.kl_div(F.log_softmax(model(x_adv), 1), target, reduction="sum")
        (grad,) = torch.autograd.grad(kl, [x_adv])
        x_adv = torch.min(torch.max(x_adv.detach() + attack["step_size"] * grad.sign(), x - attack["eps"]),
                          x + attack["eps"]).clamp(0.0, 1.0)
    model.train()
    return x_adv.detach()


@pytest.fixture
def model_and_batches(monkeypatch):
    monkeypatch.setattr(steps, "trades_adversarial", official_attack)
    torch.manual_seed(0)
    model = build_model("wrn-10-1", 10)
    g = torch.Generator().manual_seed(1)
    batches = [(torch.rand(16, 3, 16, 16, generator=g), torch.randint(0, 10, (16,), generator=g),
                torch.softmax(3 * torch.randn(16, 10, generator=g), 1)) for _ in range(N_STEPS)]
    return model, batches


@pytest.mark.parametrize("method", ["trades", "trades-ltd", "awp", "awp-ltd"])
def test_running_statistics_equal_the_official_order(model_and_batches, method):
    model0, batches = model_and_batches
    if get(method).awp:
        ours = build_step(method, beta=BETA, attack=ATTACK, awp=AWP)
        official = OfficialTradesAWP(method)
    else:
        ours = build_step(method, beta=BETA, attack=ATTACK)
        official = _official_trades_structure()(method, beta=BETA, attack=ATTACK)
    ours.begin_epoch(0)
    # Each step from the same state (model and optimiser): a sign() in the attack turns
    # rounding-level differences into different x' a step later, so trajectories are
    # compared step by step along ours.
    a, b = copy.deepcopy(model0).train(), copy.deepcopy(model0).train()
    opt_a, opt_b = _sgd(a), _sgd(b)
    moved = 0
    for i, (x, y, q) in enumerate(batches):
        b.load_state_dict(a.state_dict())
        opt_b.load_state_dict(copy.deepcopy(opt_a.state_dict()))  # else both share momentum buffers
        start = copy.deepcopy(a.state_dict())
        _step(ours, a, opt_a, x, y, q, 100 + i)
        _step(official, b, opt_b, x, y, q, 100 + i)
        for (name, va), vb in zip(a.state_dict().items(), b.state_dict().values()):
            if name.endswith("num_batches_tracked"):
                assert va.item() == vb.item() == 3 * (i + 1), name  # three train-mode forwards per step
            elif "running" in name:
                torch.testing.assert_close(va, vb, rtol=1e-5, atol=1e-6, msg=lambda m: f"step {i + 1}: {name}: {m}")
                moved += not torch.allclose(va, start[name])
            else:  # the weights too, looser: AWP's objective here is the official formula, ours an
                # equal one (KL from log-probabilities), and a ReLU input within rounding of zero
                # can flip between the two
                torch.testing.assert_close(va, vb, rtol=1e-4, atol=1e-4, msg=lambda m: f"step {i + 1}: {name}: {m}")
    assert moved > 0


def test_without_the_replay_the_statistics_differ(model_and_batches, monkeypatch):
    """The check above can fail: two forwards alone (x, x') leave other running means."""
    model0, batches = model_and_batches
    monkeypatch.setattr(CleanForwardReplay, "apply", lambda self: None)
    x, y, q = batches[0]
    a = _train(build_step("trades", beta=BETA, attack=ATTACK), copy.deepcopy(model0), [(x, y, q)])
    b = _train(_official_trades_structure()("trades", beta=BETA, attack=ATTACK), copy.deepcopy(model0), [(x, y, q)])
    diff = max((a.state_dict()[k] - b.state_dict()[k]).abs().max().item()
               for k in a.state_dict() if k.endswith("running_mean"))
    assert diff > 1e-3


def test_replay_equals_a_third_forward_on_one_layer():
    """One BN layer, momentum 0.1: a clean share of 0.67 after x, x', x from zero stats."""
    torch.manual_seed(0)
    bn = torch.nn.BatchNorm2d(4).train()
    x, x_adv = torch.randn(8, 4, 5, 5) + 1.0, torch.randn(8, 4, 5, 5) - 1.0
    ref = copy.deepcopy(bn)
    ref(x), ref(x_adv), ref(x)
    replay = CleanForwardReplay(bn)
    with replay.record():
        bn(x)
    bn(x_adv)
    replay.apply()
    torch.testing.assert_close(bn.running_mean, ref.running_mean, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(bn.running_var, ref.running_var, rtol=1e-6, atol=1e-7)
    assert bn.num_batches_tracked.item() == ref.num_batches_tracked.item() == 3
    # weights of the batch means in the running mean: clean 0.1 + 0.1 * 0.9^2, adversarial 0.1 * 0.9
    clean_share = (0.1 + 0.081) / (0.1 + 0.081 + 0.09)
    assert clean_share == pytest.approx(0.67, abs=0.005)


def test_replay_in_eval_mode_changes_nothing():
    bn = torch.nn.BatchNorm2d(4).eval()
    before = copy.deepcopy(bn.state_dict())
    replay = CleanForwardReplay(bn)
    with replay.record():
        bn(torch.randn(4, 4, 3, 3))
    replay.apply()
    assert all(torch.equal(v, before[k]) for k, v in bn.state_dict().items())
