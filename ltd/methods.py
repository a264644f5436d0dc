"""One training step per method. Adding a method = one step + one name in ``build_step``.

A step takes (model, x, y, q) — q the teacher's soft labels for x or None — and
returns (loss, clean logits, stats). The training loop owns everything else. A step
may also define ``begin_epoch(epoch)`` (0-based, called before each epoch) and
``after_update(model)`` (called right after ``optimizer.step()``); the loop calls
them when present.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from . import awp as awp_lib
from .attacks import trades_attack
from .losses import natural_loss, soft_cross_entropy, trades_kl, trades_loss

Step = Callable[[torch.nn.Module, torch.Tensor, torch.Tensor, torch.Tensor | None], tuple]

METHODS = ("natural", "soft", "trades", "trades-ltd", "awp", "awp-ltd")
SOFT_METHODS = ("soft", "trades-ltd", "awp-ltd")


def natural_step(model, x, y, q):
    """Teacher: cross-entropy on one-hot labels."""
    logits = model(x)
    loss = F.cross_entropy(logits.float(), y)
    return loss, logits, {"loss": loss.item()}


def soft_step(model, x, y, q):
    """Substitute (Sec. 4.2): natural data, the teacher's soft labels at T."""
    logits = model(x)
    loss = soft_cross_entropy(logits.float(), q)
    return loss, logits, {"loss": loss.item()}


def trades_adversarial(model: torch.nn.Module, x: torch.Tensor, attack: dict) -> torch.Tensor:
    """x' for the TRADES KL term. The clean logits the attack aims away from are
    computed once per batch in eval mode (as the official attack runs), not re-computed
    at each of its steps. The model's train/eval mode is restored."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            logits_clean = model(x).float()
        x_adv = trades_attack(model, x, logits_clean, eps=attack["eps"], step_size=attack["step_size"],
                              steps=attack["steps"])
    finally:
        model.train(was_training)
    return x_adv


def _natural_target(method: str, y: torch.Tensor, q: torch.Tensor | None) -> torch.Tensor:
    """Class indices (TRADES, AWP) or the teacher's soft labels (the LTD variants)."""
    if method not in SOFT_METHODS:
        return y
    if q is None:
        raise ValueError(f"method {method!r} trains on the teacher's soft labels, but q is None")
    return q


class TradesStep:
    """TRADES (one-hot natural term) or TRADES+LTD (Eq. 9: soft labels, student T = 1)."""

    def __init__(self, method: str, *, beta: float, attack: dict):
        self.method, self.beta, self.attack = method, beta, attack

    def __call__(self, model, x, y, q):
        x_adv = trades_adversarial(model, x, self.attack)
        target = _natural_target(self.method, y, q)
        logits_nat = model(x)
        logits_adv = model(x_adv)
        loss, parts = trades_loss(logits_nat.float(), logits_adv.float(), target, self.beta)
        return loss, logits_nat, {"loss": loss.item(), **parts}


class AWPStep(TradesStep):
    supports_compile = False  # the proxy is a deep copy of the model it is given

    """TRADES-AWP (one-hot natural term) or AWP+LTD (soft labels in the natural term,
    student T = 1, in the weight-perturbation objective as well as in the update).

    Per batch: x' from the unperturbed model (as the TRADES step); delta from a proxy
    (ltd/awp.py) maximising the same TRADES(+LTD) loss on (x, x'); w += delta; the
    loss is computed at the perturbed weights and returned; the loop's optimiser step
    updates the perturbed weights; ``after_update`` subtracts delta.

    Warm-up: ``warmup_epochs`` means what the official ``--awp-warmup`` flag means.
    The official loop counts epochs from 1 and perturbs when ``epoch >= awp_warmup``,
    so AWP is on from 1-based epoch ``warmup_epochs``: here, for the 0-based epochs
    ``e >= warmup_epochs - 1`` (official default 10: our epochs 0-8, nine of them,
    are plain TRADES; AWP is on from our epoch 9, the loop's "epoch 10/N"). Before
    that the step is exactly the TRADES step. gamma = 0 switches AWP off (official).

    State: the proxy is re-loaded from the model every batch, its SGD step has no
    momentum, and delta is removed within the batch, so nothing needs checkpointing.
    """

    def __init__(self, method: str, *, beta: float, attack: dict, gamma: float, warmup_epochs: int,
                 proxy_lr: float):
        super().__init__(method, beta=beta, attack=attack)
        if gamma < 0 or proxy_lr <= 0:
            raise ValueError(f"AWP needs gamma >= 0 and proxy_lr > 0, got gamma={gamma}, proxy_lr={proxy_lr}")
        self.gamma, self.warmup_epochs, self.proxy_lr = gamma, warmup_epochs, proxy_lr
        self.active = self._active(0)
        self._proxy: torch.nn.Module | None = None
        self._delta: awp_lib.Perturbation | None = None

    def _active(self, epoch: int) -> bool:
        return self.gamma > 0 and epoch + 1 >= self.warmup_epochs

    def begin_epoch(self, epoch: int) -> None:
        self.active = self._active(epoch)

    def _proxy_for(self, model: torch.nn.Module) -> torch.nn.Module:
        ref = next(model.parameters())
        if self._proxy is None or next(self._proxy.parameters()).device != ref.device:
            self._proxy = awp_lib.make_proxy(model)
        return self._proxy

    def __call__(self, model, x, y, q):
        if not self.active:
            return super().__call__(model, x, y, q)
        if self._delta is not None:
            raise RuntimeError("AWP step called again before after_update removed the previous weight perturbation")
        x_adv = trades_adversarial(model, x, self.attack)
        target = _natural_target(self.method, y, q)

        def objective(net):  # the TRADES(+LTD) loss the weights are perturbed to increase
            logits_nat = net(x).float()
            return natural_loss(logits_nat, target) + self.beta * trades_kl(net(x_adv).float(), logits_nat)

        delta = awp_lib.compute_perturbation(model, self._proxy_for(model), objective, gamma=self.gamma,
                                             proxy_lr=self.proxy_lr, n_local=len(x))
        awp_lib.add_perturbation(model, delta)
        self._delta = delta
        logits_nat = model(x)
        logits_adv = model(x_adv)
        loss, parts = trades_loss(logits_nat.float(), logits_adv.float(), target, self.beta)
        return loss, logits_nat, {"loss": loss.item(), **parts}

    def after_update(self, model: torch.nn.Module) -> None:
        if self._delta is not None:
            awp_lib.remove_perturbation(model, self._delta)
            self._delta = None


def build_step(method: str, *, beta: float, attack: dict, awp: dict | None = None) -> Step:
    """The step for ``method``. ``attack`` = {eps, step_size, steps}: the training
    attack of the TRADES-family methods; ``awp`` = {gamma, warmup_epochs, proxy_lr}:
    required by "awp" and "awp-ltd" (see AWPStep for warm-up semantics)."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; expected one of {', '.join(METHODS)}")
    if method == "natural":
        return natural_step
    if method == "soft":
        return soft_step
    attack = {"eps": float(attack["eps"]), "step_size": float(attack["step_size"]), "steps": int(attack["steps"])}
    if method in ("trades", "trades-ltd"):
        return TradesStep(method, beta=beta, attack=attack)
    if awp is None:
        raise ValueError(f"method {method!r} needs an awp dict {{gamma, warmup_epochs, proxy_lr}}")
    return AWPStep(method, beta=beta, attack=attack, gamma=float(awp["gamma"]),
                   warmup_epochs=int(awp["warmup_epochs"]), proxy_lr=float(awp["proxy_lr"]))
