"""The method registry (ltd/methods.py) and each method's step (ltd/steps.py) on a tiny model."""

import copy

import pytest
import torch
import torch.nn.functional as F

from ltd import flops, methods, steps
from ltd.experiments import Run
from ltd.models import build_model
from ltd.steps import Step

ATTACK = {"eps": 8 / 255, "step_size": 2 / 255, "steps": 2}
AWP = {"gamma": 5e-3, "warmup_epochs": 0, "proxy_lr": 0.1}


def _build(name, **kw):
    m = methods.get(name)
    return steps.build_step(name, beta=6.0, attack=ATTACK if m.attack else None, awp=AWP if m.awp else None, **kw)


@pytest.fixture
def batch():
    torch.manual_seed(0)
    model = build_model("wrn-10-1", 10)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(8, 3, 16, 16, generator=g)
    y = torch.randint(0, 10, (8,), generator=g)
    q = torch.softmax(3 * torch.randn(8, 10, generator=g), 1)
    return model, x, y, q


def test_registry_is_consistent():
    assert set(methods.ROLE_METHODS) == {"teachers", "substitutes", "students"}
    for name, m in methods.METHODS.items():
        assert m.name == name and m.label
        assert Step in steps.STEP_CLASSES[m.step].__mro__  # an explicit Step: the no-op hooks are inherited
        if m.base is not None:  # an LTD variant: the one-hot method it extends, same attack and AWP
            base = methods.get(m.base)
            assert m.uses_soft_labels and not base.uses_soft_labels and base.attack == m.attack and base.awp == m.awp
            assert m.label.startswith(base.label) and m.note
        if m.role == "students":
            assert m.attack is not None
    with pytest.raises(ValueError, match="unknown method 'nonsense'; expected one of natural, soft, trades"):
        methods.get("nonsense")


@pytest.mark.parametrize("name", list(methods.METHODS))
def test_declared_cost_is_the_counted_cost(name):
    """The budget trusts each entry's cost: it must be what the step really computes
    (FLOPs of its convolutions and matmuls over one forward's), for two attack lengths."""
    m = methods.get(name)
    for k in ((2, 5) if m.attack else (0,)):
        counted = flops.forward_equivalents(name, {**ATTACK, "steps": k} if m.attack else None,
                                            awp=AWP if m.awp else None)
        assert counted == pytest.approx(methods.forward_equivalents(name, k), abs=0.1), (name, k)


@pytest.mark.parametrize("name", list(methods.METHODS))
def test_each_step_trains_a_tiny_model(batch, name):
    model, x, y, q = batch
    step = _build(name)
    step.begin_epoch(0)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    before = copy.deepcopy(model.state_dict())
    loss, logits, stats = step(model, x, y, q)
    assert torch.isfinite(loss) and logits.shape == (8, 10) and stats["loss"].requires_grad is False
    assert all(v.dim() == 0 for v in stats.values())  # scalars that stay on the device
    opt.zero_grad()
    loss.backward()
    opt.step()
    step.after_update(model)
    assert any(not torch.equal(v, before[k]) for k, v in model.state_dict().items() if k.endswith("weight"))


@pytest.mark.parametrize("name", [n for n, m in methods.METHODS.items() if m.uses_soft_labels])
def test_ltd_variants_really_use_q(batch, name):
    """With q one-hot an LTD step is its base method's; with soft q its loss differs; without q it refuses."""
    model, x, y, q = batch
    base = methods.get(name).base or "natural"

    def loss(method, target_q):
        step = _build(method)
        step.begin_epoch(0)
        torch.manual_seed(1)
        value = step(copy.deepcopy(model), x, y, target_q)[0].item()
        step.after_update(copy.deepcopy(model))
        return value

    one_hot = F.one_hot(y, 10).float()
    assert loss(name, one_hot) == pytest.approx(loss(base, None), rel=1e-5)
    assert abs(loss(name, q) - loss(name, one_hot)) > 1e-3  # (an untrained model: outputs near uniform)
    with pytest.raises(ValueError, match="soft labels"):
        _build(name)(copy.deepcopy(model), x, y, None)


def test_run_names_follow_the_registry():
    for name, m in methods.METHODS.items():
        if m.role != "students":
            continue
        run = Run("students", "cifar10", "wrn-34-10", 0, method=name, temperature=5.0 if m.uses_soft_labels else None,
                  beta=6.0, soft_label_mode="precomputed" if m.uses_soft_labels else None)
        assert Run.parse("students", run.name) == run and run.uses_soft_labels == m.uses_soft_labels
