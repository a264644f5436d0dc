"""PGD-AT, MART and their LTD variants against the official training loops.

The references below are written here from reading the official code (never copied
into the project):

* PGD-AT: csdongxian/AWP AT_AWP/train_cifar10.py with AWP off (Rice et al.'s loop):
  ``attack_pgd`` (L_inf, one restart: uniform start clipped to the image box, ``steps``
  sign steps of the batch-mean cross-entropy through ``loss.backward()``, each clipped
  to [-eps, eps] and the box, then a forward of x + delta to pick the restart), run
  with the model in whatever mode it is in; then ``model.train()``, the loss on
  ``clamp(x + delta, 0, 1)``, the update, and a forward of x (train mode) for the log.
  Between epochs the test pass leaves the model in eval mode. No input normalisation
  here (the paper's models take [0, 1] inputs).
* MART: YisenWang/MART mart.py ``mart_loss`` (eval-mode attack on the cross-entropy
  from x + 0.001 N(0, 1); then train mode, f(x), f(x') and the loss with its guards).
* The LTD variants: the same loops with CE(q, f(x')) in place of CE(f(x'), y), the
  attack and (MART) the margin term and the weight keeping y.

A tiny WRN-10-1 on random 3x16x16 inputs, CPU, fp32. Several steps, each from the same
state on both sides (as tests/test_batchnorm.py): x', loss, gradients, weights after an
SGD step and BN running statistics must be equal (x' came out bitwise equal when
written; the tolerance admits rounding, not one sign step of 2/255).
"""

import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from ltd import steps
from ltd.batchnorm import CleanForwardReplay
from ltd.methods import get
from ltd.models import build_model
from ltd.steps import build_step

PGD = {"eps": 8 / 255, "step_size": 2 / 255, "steps": 3}  # AT_AWP/train_cifar10.py's eps and step (/255)
MART = {"eps": 0.031, "step_size": 0.007, "steps": 3}  # MART train_wideresnet.py's eps and step
BETA = 6.0


def soft_ce(logits, q):
    return -(q * F.log_softmax(logits, 1)).sum(1).mean()


# ---- the official loops, re-implemented from reading them ----

def _clamp(x, lower, upper):  # the official script's clamp: max(min(x, upper), lower)
    return torch.max(torch.min(x, upper), lower)


def official_attack_pgd(model, X, y, epsilon, alpha, attack_iters):
    """``attack_pgd`` with restarts=1, norm l_inf, no early stop, no mixup."""
    max_loss = torch.zeros(y.shape[0])
    max_delta = torch.zeros_like(X)
    delta = torch.zeros_like(X)
    delta.uniform_(-epsilon, epsilon)
    delta = _clamp(delta, 0 - X, 1 - X)
    delta.requires_grad = True
    for _ in range(attack_iters):
        output = model(X + delta)
        loss = F.cross_entropy(output, y)
        loss.backward()  # also fills the weights' .grad: the loop's zero_grad clears them
        grad = delta.grad.detach()
        d = torch.clamp(delta + alpha * torch.sign(grad), min=-epsilon, max=epsilon)
        d = _clamp(d, 0 - X, 1 - X)
        delta.data[:] = d
        delta.grad.zero_()
    all_loss = F.cross_entropy(model(X + delta), y, reduction="none")  # picks the restart (one here)
    max_delta[all_loss >= max_loss] = delta.detach()[all_loss >= max_loss]
    return max_delta


class OfficialPgdAT:
    """One batch of the official loop; ``q`` given: PGD-AT+LTD's loss."""

    def __call__(self, model, opt, X, y, q):
        delta = official_attack_pgd(model, X, y, PGD["eps"], PGD["step_size"], PGD["steps"]).detach()
        x_adv = torch.clamp(X + delta, min=0, max=1)
        model.train()
        robust_output = model(x_adv)
        robust_loss = F.cross_entropy(robust_output, y) if q is None else soft_ce(robust_output, q)
        opt.zero_grad()
        robust_loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters()}
        opt.step()
        model(X)  # the training-accuracy log's forward
        return x_adv, robust_loss.detach(), grads

    def end_epoch(self, model):
        model.eval()  # the test pass


def official_mart_loss(model, x_natural, y, q, step_size, epsilon, perturb_steps, beta):
    """``mart_loss`` (l_inf); ``q`` given: CE(q, f(x')) in place of CE(f(x'), y)."""
    kl = nn.KLDivLoss(reduction="none")
    model.eval()
    batch_size = len(x_natural)
    x_adv = x_natural.detach() + 0.001 * torch.randn(x_natural.shape).detach()
    for _ in range(perturb_steps):
        x_adv.requires_grad_()
        with torch.enable_grad():
            loss_ce = F.cross_entropy(model(x_adv), y)
        grad = torch.autograd.grad(loss_ce, [x_adv])[0]
        x_adv = x_adv.detach() + step_size * torch.sign(grad.detach())
        x_adv = torch.min(torch.max(x_adv, x_natural - epsilon), x_natural + epsilon)
        x_adv = torch.clamp(x_adv, 0.0, 1.0)
    model.train()
    x_adv = torch.clamp(x_adv, 0.0, 1.0).detach()
    logits = model(x_natural)
    logits_adv = model(x_adv)
    adv_probs = F.softmax(logits_adv, dim=1)
    tmp1 = torch.argsort(adv_probs, dim=1)[:, -2:]
    new_y = torch.where(tmp1[:, -1] == y, tmp1[:, -2], tmp1[:, -1])
    ce = F.cross_entropy(logits_adv, y) if q is None else soft_ce(logits_adv, q)
    loss_adv = ce + F.nll_loss(torch.log(1.0001 - adv_probs + 1e-12), new_y)
    nat_probs = F.softmax(logits, dim=1)
    true_probs = torch.gather(nat_probs, 1, (y.unsqueeze(1)).long()).squeeze()
    loss_robust = (1.0 / batch_size) * torch.sum(
        torch.sum(kl(torch.log(adv_probs + 1e-12), nat_probs), dim=1) * (1.0000001 - true_probs))
    return loss_adv + float(beta) * loss_robust, x_adv


class OfficialMart:
    def __call__(self, model, opt, X, y, q):
        opt.zero_grad()
        loss, x_adv = official_mart_loss(model, X, y, q, MART["step_size"], MART["eps"], MART["steps"], BETA)
        loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters()}
        opt.step()
        return x_adv, loss.detach(), grads

    def end_epoch(self, model):
        model.eval()  # the test pass; the next epoch's train() precedes every batch


# ---- ours, driven as ltd/train.py drives a step ----

class Ours:
    def __init__(self, method, monkeypatch):
        m = get(method)
        self.step = build_step(method, beta=BETA, attack=PGD if m.attack == "pgd" else MART)
        self.soft = m.uses_soft_labels
        self.x_adv = None
        if m.attack == "pgd":  # record x' as the step makes it
            real = steps.pgd_delta

            def pgd_delta(model, x, y, **kw):
                delta = real(model, x, y, **kw)
                self.x_adv = (x + delta).clamp(0, 1)
                return delta
            monkeypatch.setattr(steps, "pgd_delta", pgd_delta)
        else:
            real = steps.mart_attack

            def mart_attack(model, x, y, **kw):
                self.x_adv = real(model, x, y, **kw)
                return self.x_adv
            monkeypatch.setattr(steps, "mart_attack", mart_attack)

    def begin_epoch(self, model, epoch):
        model.train()
        self.step.begin_epoch(epoch)

    def __call__(self, model, opt, x, y, q):
        loss, _, _ = self.step(model, x, y, q if self.soft else None)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters()}
        opt.step()
        self.step.after_update(model)
        return self.x_adv, loss.detach(), grads


def _sgd(model):
    return torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4, nesterov=True)


@pytest.fixture
def model_and_epochs():
    torch.manual_seed(0)
    model = build_model("wrn-10-1", 10)
    g = torch.Generator().manual_seed(1)
    epochs = [[(torch.rand(16, 3, 16, 16, generator=g), torch.randint(0, 10, (16,), generator=g),
                torch.softmax(3 * torch.randn(16, 10, generator=g), 1)) for _ in range(2)] for _ in range(2)]
    return model, epochs


def _official(method):
    return OfficialPgdAT() if get(method).attack == "pgd" else OfficialMart()


def compare(method, model0, epochs, monkeypatch, q_of=lambda y, q: q):
    """Two epochs of two batches, ours against the official loop, each step from the
    same state. Returns the official num_batches_tracked per step."""
    ours, official = Ours(method, monkeypatch), _official(method)
    soft = get(method).uses_soft_labels
    a, b = copy.deepcopy(model0).train(), copy.deepcopy(model0).train()
    opt_a, opt_b = _sgd(a), _sgd(b)
    tracked, moved = [], 0
    for epoch, batches in enumerate(epochs):
        if epoch > 0:
            official.end_epoch(b)
        ours.begin_epoch(a, epoch)
        for i, (x, y, q) in enumerate(batches):
            q = q_of(y, q)
            b.load_state_dict(a.state_dict())
            opt_b.load_state_dict(copy.deepcopy(opt_a.state_dict()))
            start = copy.deepcopy(a.state_dict())
            where = f"{method} epoch {epoch} batch {i}"
            seed = 100 + 10 * epoch + i
            torch.manual_seed(seed)  # the attack's random start: the same draw for both
            x_adv_a, loss_a, grads_a = ours(a, opt_a, x, y, q)
            torch.manual_seed(seed)
            x_adv_b, loss_b, grads_b = official(b, opt_b, x, y, q if soft else None)
            torch.testing.assert_close(x_adv_a, x_adv_b, rtol=0, atol=1e-6, msg=lambda m: f"{where}: x': {m}")
            torch.testing.assert_close(loss_a, loss_b, rtol=1e-5, atol=1e-6, msg=lambda m: f"{where}: loss: {m}")
            for name, g in grads_a.items():
                torch.testing.assert_close(g, grads_b[name], rtol=1e-4, atol=1e-6,
                                           msg=lambda m: f"{where}: grad {name}: {m}")
            for (name, va), vb in zip(a.state_dict().items(), b.state_dict().values()):
                if name.endswith("num_batches_tracked"):
                    assert va.item() == vb.item(), (where, name)
                else:
                    torch.testing.assert_close(va, vb, rtol=1e-5, atol=1e-6, msg=lambda m: f"{where}: {name}: {m}")
                    moved += "running" in name and not torch.allclose(va, start[name])
            tracked.append(b.state_dict()["bn1.num_batches_tracked"].item() - start["bn1.num_batches_tracked"].item())
    assert moved > 0
    return tracked


@pytest.mark.parametrize("method", ["pgd-at", "pgd-at-ltd"])
def test_pgd_at_equals_the_official_loop(model_and_epochs, monkeypatch, method):
    model0, epochs = model_and_epochs
    tracked = compare(method, model0, epochs, monkeypatch)
    # train-mode forwards per batch: k attack steps + the restart pick + x' + the log's x;
    # the first batch of the second epoch is attacked in eval mode (left by the test pass)
    k = PGD["steps"]
    assert tracked == [k + 3, k + 3, 2, k + 3]


@pytest.mark.parametrize("method", ["mart", "mart-ltd"])
def test_mart_equals_the_official_loss(model_and_epochs, monkeypatch, method):
    model0, epochs = model_and_epochs
    assert compare(method, model0, epochs, monkeypatch) == [2, 2, 2, 2]  # f(x), f(x') in train mode


@pytest.mark.parametrize("method", ["pgd-at-ltd", "mart-ltd"])
def test_ltd_variant_with_one_hot_labels_is_the_official_base_method(model_and_epochs, monkeypatch, method):
    """With one-hot q the LTD step equals the official one-hot loop (the reference
    without q); with the soft q above the reference with q (checked above) differs."""
    model0, epochs = model_and_epochs
    ours, official = Ours(method, monkeypatch), _official(get(method).base)
    x, y, q = epochs[0][0]
    a, b = copy.deepcopy(model0).train(), copy.deepcopy(model0).train()
    torch.manual_seed(5)
    _, loss_onehot, _ = ours(a, _sgd(a), x, y, F.one_hot(y, 10).float())
    torch.manual_seed(5)
    _, loss_base, _ = official(b, _sgd(b), x, y, None)
    torch.testing.assert_close(loss_onehot, loss_base, rtol=1e-5, atol=1e-6)
    for (name, va), vb in zip(a.state_dict().items(), b.state_dict().values()):
        torch.testing.assert_close(va, vb, rtol=1e-5, atol=1e-6, msg=lambda m: f"{name}: {m}")
    c = copy.deepcopy(model0).train()
    torch.manual_seed(5)
    _, loss_soft, _ = ours(c, _sgd(c), x, y, q)
    assert abs(loss_soft.item() - loss_base.item()) > 1e-3


@pytest.mark.parametrize("sabotage", ["no_replay", "no_after_update", "train_mode_attack"])
def test_the_comparison_can_fail(model_and_epochs, monkeypatch, sabotage):
    """Without the selection forward's replay, without the post-update forward of x, or
    attacking the second epoch's first batch in train mode, PGD-AT leaves other running
    statistics (or other x') than the official loop."""
    model0, epochs = model_and_epochs
    if sabotage == "no_replay":
        monkeypatch.setattr(CleanForwardReplay, "apply", lambda self: None)
    elif sabotage == "no_after_update":
        monkeypatch.setattr(steps.PgdStep, "after_update", lambda self, model: None)
    else:
        monkeypatch.setattr(steps.PgdStep, "begin_epoch", lambda self, epoch: None)
    with pytest.raises(AssertionError):
        compare("pgd-at", model0, epochs, monkeypatch)


def test_mart_loss_pieces():
    """The margin term targets the most probable wrong class; the weight is 1 - f_y(x)."""
    from ltd.losses import mart_loss

    logits_adv = torch.tensor([[3.0, 2.0, 0.0], [0.0, 1.0, 4.0]])
    logits_nat = torch.tensor([[5.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    y = torch.tensor([0, 2])
    loss, parts = mart_loss(logits_nat, logits_adv, y, beta=0.0)
    p = F.softmax(logits_adv, 1)
    margin = -(torch.log(1.0001 - p[0, 1] + 1e-12) + torch.log(1.0001 - p[1, 1] + 1e-12)) / 2
    torch.testing.assert_close(parts["adversarial"], F.cross_entropy(logits_adv, y) + margin)
    _, parts = mart_loss(logits_nat, logits_adv, y, beta=1.0)
    p_nat = F.softmax(logits_nat, 1)
    kl = (p_nat * (p_nat.log() - p.log())).sum(1)
    torch.testing.assert_close(parts["robust"], (kl * (1 - p_nat[[0, 1], y])).mean(), rtol=1e-5, atol=1e-6)
