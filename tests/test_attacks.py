import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from ltd.attacks import pgd_attack, trades_attack
from ltd.data import load_split
from ltd.jobspec import Data

EPS = 0.1


@pytest.fixture(scope="module")
def trained():
    """A small conv net trained on 8x8 digits to high accuracy."""
    torch.manual_seed(0)
    split = load_split(Data.of({"source": "digits", "image_size": 8, "test_size": 397}), "train")
    x, y = split.x[:512], split.y[:512]
    model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.Flatten(),
                          nn.Linear(16 * 64, 10))
    opt = torch.optim.Adam(model.parameters(), 1e-2)
    for _ in range(150):
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.zero_grad(set_to_none=True)
    model.eval()
    return model, x, y


def accuracy(model, x, y):
    with torch.no_grad():
        return (model(x).argmax(1) == y).float().mean().item()


@pytest.mark.parametrize("attack", ["trades", "pgd"])
@pytest.mark.parametrize("start_training", [True, False])
def test_attacks_stay_in_ball_and_box_and_leave_model_alone(trained, attack, start_training):
    model, x, y = trained
    model.train(start_training)
    with torch.no_grad():
        logits = model(x)
    if attack == "trades":
        x_adv = trades_attack(model, x, logits, eps=EPS, step_size=0.02, steps=5)
    else:
        x_adv = pgd_attack(model, x, y, eps=EPS, step_size=0.02, steps=5)
    assert (x_adv - x).abs().max() <= EPS + 1e-6
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    assert not x_adv.requires_grad
    assert model.training == start_training
    assert all(p.grad is None for p in model.parameters())
    model.eval()


def test_pgd_lowers_accuracy_of_a_trained_model(trained):
    model, x, y = trained
    clean = accuracy(model, x, y)
    assert clean > 0.9
    robust = accuracy(model, pgd_attack(model, x, y, eps=EPS, step_size=0.025, steps=10), y)
    assert robust < clean - 0.2


def test_trades_attack_raises_the_kl(trained):
    model, x, _ = trained
    with torch.no_grad():
        logits = model(x)

    def kl(x2):
        with torch.no_grad():
            return F.kl_div(F.log_softmax(model(x2), 1), F.log_softmax(logits, 1), reduction="batchmean",
                            log_target=True).item()

    torch.manual_seed(1)
    start = (x + 0.001 * torch.randn_like(x)).clamp(0, 1)
    x_adv = trades_attack(model, x, logits, eps=EPS, step_size=0.02, steps=10)
    assert kl(x_adv) > 10 * kl(start) and kl(x_adv) > 0.1


class SmallLogits(nn.Module):
    """Logits of a few hundredths, as a student of nearly uniform soft labels (high T) has."""

    def __init__(self, scale=0.05):
        super().__init__()
        self.conv, self.fc, self.scale = nn.Conv2d(3, 8, 3, padding=1), nn.Linear(8, 10), scale

    def forward(self, x):
        return self.scale * self.fc(torch.relu(self.conv(x)).mean((2, 3)))


@pytest.mark.parametrize("attack", ["trades", "mart", "pgd"])
def test_stalled_is_exactly_the_examples_whose_attack_never_moved(trained, attack):
    """A model whose output ignores half the batch's input: their gradient is exactly zero,
    their x' stays at its random start; the others move."""
    from ltd import attacks

    model, x, y = trained
    x, y = x[:16], y[:16]
    blind = torch.zeros(16, dtype=torch.bool)
    blind[::2] = True

    class HalfBlind(nn.Module):  # examples in `blind` see a constant image
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, inp):
            return self.model(torch.where(blind[:, None, None, None], torch.full_like(inp, 0.5), inp))

    half_blind = HalfBlind().eval()
    torch.manual_seed(0)
    moved = _moved(attack, half_blind, x, y, {"eps": EPS, "step_size": 0.02, "steps": 3})
    assert torch.equal(moved == 0, blind) and torch.equal(attacks.stalled(moved), blind)


def _moved(attack, model, x, y, kw):
    """Per example the fraction of pixels ``attack``'s x' moved from its start."""
    from ltd import attacks

    if attack == "pgd":
        start = attacks.pgd_start(x, kw["eps"])
        return attacks.moved(attacks.pgd_delta(model, x, y, start=start, **kw), start)
    start = attacks.random_start(x)
    if attack == "trades":
        with torch.no_grad():
            logits = model(x).float()
        x_adv = trades_attack(model, x, logits, start=start, **kw)
    else:
        x_adv = attacks.mart_attack(model, x, y, start=start, **kw)
    return attacks.moved_fraction(x_adv, start, x, kw["eps"])


def _start_gradient(attack, model, x, y, eps):
    """The input gradient of ``attack``'s loss at a random start (its first step's)."""
    from ltd import attacks

    start = (x + attacks.pgd_start(x, eps)) if attack == "pgd" else attacks.random_start(x)
    start.requires_grad_(True)
    if attack == "trades":
        with torch.no_grad():
            log_p = F.log_softmax(model(x).float(), 1)
        loss = F.kl_div(F.log_softmax(model(start).float(), 1), log_p, reduction="sum", log_target=True)
    else:
        loss = F.cross_entropy(model(start).float(), y)
    return torch.autograd.grad(loss, start)[0]


class PartlyUnderflowing(nn.Module):
    """Input gradients that fp16 keeps on a few pixels and underflows on the rest, as on
    a real fp16 network (most pixels' gradient exactly zero, not all): the features of a
    4 x 4 corner patch weigh 100, the others 1e-6; where those small weights scale the
    gradient it falls below fp16's smallest subnormal (6e-8), never below fp32's."""

    def __init__(self, size=16, patch=4):
        super().__init__()
        self.conv, self.fc = nn.Conv2d(3, 8, 3, padding=1), nn.Linear(8, 10)
        weight = torch.full((size, size), 1e-6)
        weight[:patch, :patch] = 100.0
        self.register_buffer("weight", weight)

    def forward(self, x):
        return self.fc((torch.relu(self.conv(x)) * self.weight).mean((2, 3)))


@pytest.mark.parametrize("attack", ["trades", "mart", "pgd"])
def test_partial_fp16_underflow_stalls_the_attack_though_a_few_pixels_move(attack):
    """The rule counts attacks that moved fewer than STALLED_BELOW of their pixels: here
    each fp16 attack moves the ~10 % of pixels around the patch (the old rule, "no pixel
    moved", counted none of them stalled); every fp32 attack moves nearly all pixels."""
    from ltd import attacks, runtime

    torch.manual_seed(0)
    model, x = PartlyUnderflowing().eval(), torch.rand(32, 3, 16, 16)
    y = torch.arange(32) % 10
    kw = {"eps": 8 / 255, "step_size": 2 / 255, "steps": 3}
    for precision in ("fp16", "fp32"):
        torch.manual_seed(1)
        with runtime.autocast(torch.device("cpu"), precision):
            zero = (_start_gradient(attack, model, x, y, kw["eps"]) == 0).float().mean().item()
            moved = _moved(attack, model, x, y, kw)
        if precision == "fp16":
            assert 0.8 < zero < 1.0, zero  # underflow on most pixels, not all
            assert (moved > 0).all() and (moved < 0.2).all(), moved  # every attack moved a few pixels
            assert (moved == 0).sum() == 0 and attacks.stalled(moved).all()  # old rule: 0 %; new: 100 %
        else:
            assert zero == 0.0 and (moved > 0.95).all() and not attacks.stalled(moved).any(), moved


def test_an_fp16_attack_stalls_on_small_logits_where_fp32_moves():
    """The mechanism behind Table IV's T >= 15 rows: from x + 0.001 N(0, 1) the KL's input
    gradient is second order; with small logits it underflows fp16 (not fp32) to zero."""
    from ltd import attacks, runtime

    torch.manual_seed(0)
    model, x = SmallLogits(), torch.rand(32, 3, 16, 16)
    fractions = {}
    for precision in ("fp16", "fp32"):
        torch.manual_seed(1)
        with runtime.autocast(torch.device("cpu"), precision):
            with torch.no_grad():
                logits = model(x).float()
            start = attacks.random_start(x)
            x_adv = trades_attack(model, x, logits, eps=8 / 255, step_size=2 / 255, steps=2, start=start)
        moved = attacks.moved_fraction(x_adv, start, x, 8 / 255)
        fractions[precision] = attacks.stalled(moved).float().mean().item()
    assert fractions == {"fp16": 1.0, "fp32": 0.0}
