import math

import pytest
import torch
import torch.nn.functional as F

from ltd.losses import natural_loss, soft_cross_entropy, tempered_softmax, trades_kl, trades_loss


def test_soft_ce_with_one_hot_equals_cross_entropy():
    logits = torch.randn(8, 10)
    y = torch.randint(0, 10, (8,))
    assert soft_cross_entropy(logits, F.one_hot(y, 10).float()).item() == pytest.approx(
        F.cross_entropy(logits, y).item(), rel=1e-6)


def test_soft_ce_hand_computed():
    logits = torch.tensor([[0.0, math.log(3.0)]])  # probabilities 0.25, 0.75
    q = torch.tensor([[0.5, 0.5]])
    expected = -(0.5 * math.log(0.25) + 0.5 * math.log(0.75))
    assert soft_cross_entropy(logits, q).item() == pytest.approx(expected, rel=1e-6)


def test_soft_labels_sum_to_one_and_sharpen_as_t_falls():
    z = torch.randn(16, 10) * 3
    maxima = []
    for t in [20.0, 5.0, 1.0, 0.5]:
        q = tempered_softmax(z, t)
        assert torch.allclose(q.sum(1), torch.ones(16))
        maxima.append(q.max(1).values)
    for hot, cold in zip(maxima, maxima[1:]):
        assert (cold > hot).all()
    assert torch.equal(tempered_softmax(z, 1e-3).argmax(1), z.argmax(1))
    assert (tempered_softmax(z, 1e-3).max(1).values > 0.999).all()
    assert torch.allclose(tempered_softmax(z, 1e4), torch.full_like(z, 0.1), atol=1e-3)
    with pytest.raises(ValueError):
        tempered_softmax(z, 0)


def test_kl_is_zero_at_x_and_positive_elsewhere():
    z = torch.randn(4, 10)
    assert trades_kl(z, z).item() == pytest.approx(0.0, abs=1e-6)
    assert trades_kl(z + torch.randn(4, 10), z).item() > 0
    # KL(f(x) || f(x')) = sum p_nat (log p_nat - log p_adv), averaged over the batch
    adv = torch.randn(4, 10)
    p = F.softmax(z, 1)
    manual = (p * (F.log_softmax(z, 1) - F.log_softmax(adv, 1))).sum(1).mean()
    assert trades_kl(adv, z).item() == pytest.approx(manual.item(), rel=1e-5)


def test_trades_loss_parts_and_dispatch():
    nat, adv = torch.randn(4, 10), torch.randn(4, 10)
    y = torch.randint(0, 10, (4,))
    loss0, _ = trades_loss(nat, adv, y, beta=0.0)
    assert loss0.item() == pytest.approx(F.cross_entropy(nat, y).item(), rel=1e-6)
    loss6, parts = trades_loss(nat, adv, y, beta=6.0)
    assert loss6.item() == pytest.approx((parts["natural"] + 6.0 * parts["robust"]).item(), rel=1e-5)
    q = tempered_softmax(torch.randn(4, 10), 5.0)
    assert natural_loss(nat, q).item() == pytest.approx(soft_cross_entropy(nat, q).item())
    assert natural_loss(nat, y).item() == pytest.approx(F.cross_entropy(nat, y).item())
