import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from ltd.attacks import pgd_attack, trades_attack
from ltd.data import load_split

EPS = 0.1


@pytest.fixture(scope="module")
def trained():
    """A small conv net trained on 8x8 digits to high accuracy."""
    torch.manual_seed(0)
    split = load_split({"source": "digits", "image_size": 8, "test_size": 397}, "unused", "train")
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
