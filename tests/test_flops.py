"""Counted FLOPs (ltd/flops.py): one forward, and one training step in forwards.

FLOP counting is exact and independent of the machine, so these compare our TRADES(+LTD)
step with the official loop's structure (benchmarks/train_step.py) without timing
anything: a tiny WRN and a batch of 2."""

import copy
import importlib.util
from pathlib import Path

import pytest
import torch

from ltd import flops
from ltd.models import build_model
from ltd.steps import build_step

ROOT = Path(__file__).resolve().parent.parent
ATTACK = {"eps": 0.031, "step_size": 0.007, "steps": 10}


def _benchmark():
    spec = importlib.util.spec_from_file_location("bench_train_step", ROOT / "benchmarks" / "train_step.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(autouse=True)
def _one_thread():
    with flops.one_thread():  # a tiny model: one thread is fastest, and robust to a busy machine
        yield


@pytest.fixture(scope="module")
def bench():
    return _benchmark()


@pytest.fixture
def batch():
    torch.manual_seed(0)
    model = build_model("wrn-10-1", 10)
    x = torch.rand(2, 3, 8, 8)
    y = torch.tensor([1, 7])
    q = torch.softmax(torch.randn(2, 10), dim=1)
    return model, x, y, q


def test_wrn_34_10_forward_is_13_3_gflop_per_32px_image():
    assert flops.model_forward_flops("wrn-34-10", 32) == pytest.approx(13.3e9, rel=0.005)
    # FLOPs scale with pixels and the square of the width
    assert flops.model_forward_flops("wrn-34-10", 16) == pytest.approx(13.3e9 / 4, rel=0.005)
    assert flops.model_forward_flops("wrn-34-20", 32) == pytest.approx(53.2e9, rel=0.005)


def test_forward_flops_are_linear_in_the_batch(batch):
    model, x, _, _ = batch
    assert flops.forward_flops(model, x) == 2 * flops.forward_flops(model, x[:1])


def test_ours_costs_at_most_28_forwards_and_the_official_structure_at_least_38(batch, bench):
    model, x, y, q = batch
    ours, official = bench.make_steps("trades-ltd", 6.0, ATTACK)
    fe_ours = flops.count_step_forward_equivalents(ours, model, x, y, q)
    fe_official = flops.count_step_forward_equivalents(official, model, x, y, q)
    assert 26 <= fe_ours <= 28
    assert 38 <= fe_official <= 40
    assert fe_official / fe_ours > 1.4


def test_an_attack_step_costs_two_forwards_in_ours_and_three_in_the_official_structure(batch, bench):
    model, x, y, q = batch

    def fe(steps):
        ours, official = bench.make_steps("trades", 6.0, {**ATTACK, "steps": steps})
        return (flops.count_step_forward_equivalents(ours, model, x, y, None),
                flops.count_step_forward_equivalents(official, model, x, y, None))

    (o2, f2), (o4, f4) = fe(2), fe(4)
    assert (o4 - o2) / 2 == pytest.approx(2.0, abs=0.05)
    assert (f4 - f2) / 2 == pytest.approx(3.0, abs=0.05)


def test_natural_step_is_a_forward_and_a_backward(batch):
    model, x, y, q = batch
    assert flops.count_step_forward_equivalents(build_step("natural", beta=0, attack=ATTACK), model, x, y, q) \
        == pytest.approx(3.0, abs=0.1)


def test_counting_an_awp_step_leaves_the_weights_and_gradients_as_they_were(batch):
    model, x, y, q = batch
    before = copy.deepcopy(model.state_dict())
    step = build_step("awp-ltd", beta=6.0, attack=ATTACK, awp={"gamma": 5e-3, "warmup_epochs": 0, "proxy_lr": 0.1})
    fe = flops.count_step_forward_equivalents(step, model, x, y, q)
    trades = flops.count_step_forward_equivalents(build_step("trades-ltd", beta=6.0, attack=ATTACK), model, x, y, q)
    assert fe == pytest.approx(trades + 6, abs=0.2)  # the proxy: two forwards and their full backward
    for name, p in model.named_parameters():
        assert p.grad is None
        torch.testing.assert_close(p.detach(), before[name], rtol=0, atol=1e-6)


def test_forward_equivalents_helper_agrees_with_the_paper_cost():
    assert flops.forward_equivalents("trades-ltd", ATTACK) == pytest.approx(27.0, abs=0.1)
    assert flops.forward_equivalents("trades", {**ATTACK, "steps": 6}) == pytest.approx(19.0, abs=0.1)
