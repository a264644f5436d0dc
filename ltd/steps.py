"""One training step per method (registered in ``ltd.methods``).

A step takes (model, x, y, q) — q the teacher's soft labels for x, or None — and
returns (loss, logits, stats): the logits the loop counts training accuracy on (f(x),
or f(x') for PGD-AT, which computes no f(x) before its update), stats being detached
scalar tensors (no host synchronisation: the loop keeps running totals on the device). The training loop owns
everything else: autocast, backward, the optimiser, checkpoints. The two hooks are
called by the loop for every step (no-ops unless a step needs them).

Every step with a training attack reports, besides its loss terms, ``attack_stats``:
``moved`` (the mean over the batch of the fraction of its pixels that x' moved from its
random start), ``stalled`` (the fraction of the batch whose attack moved fewer than
``ltd.attacks.STALLED_BELOW`` = half of its pixels: an input gradient exactly zero at
every attack step on most pixels, as fp16 underflow gives at high T, even where a few
pixels stayed representable) and ``adv_accuracy`` (accuracy on x', from the logits of x'
the step computes anyway). The loop keeps them as history keys ``train_moved``,
``train_stalled`` and ``train_adv_accuracy`` (TRADES's and MART's KL term is
``train_robust``).

BatchNorm: each step leaves the running statistics as its official loop does
(``ltd.batchnorm``: the official TRADES update runs f(x) twice, we once and replay its
statistics update; PGD-AT's official attack makes one more forward of x' than ours,
replayed the same way).
"""

from __future__ import annotations

import contextlib
from typing import Protocol

import torch

from . import awp as awp_lib
from . import distributed, fp16_emulation, methods
from .attacks import mart_attack, moved, moved_fraction, pgd_delta, pgd_start, random_start, stalled, trades_attack
from .batchnorm import CleanForwardReplay
from .losses import mart_loss, natural_loss, trades_kl, trades_loss
from .methods import Method


class Step(Protocol):
    """The interface the loop drives. Subclass it to inherit the no-op hooks."""

    supports_compile: bool = True  # False: the step copies the model, torch.compile would not see it
    # train.compile_attack: an ltd.compiled.AttackForward for the TRADES/AWP/MART attacks' forwards
    compiled_attack = None

    def __call__(self, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor,
                 q: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]: ...

    def begin_epoch(self, epoch: int) -> None:
        """Before each epoch (0-based), e.g. AWP switches on after its warm-up."""

    def after_update(self, model: torch.nn.Module) -> None:
        """Right after ``optimizer.step()``, e.g. AWP removes its weight perturbation."""


def natural_target(method: Method, y: torch.Tensor, q: torch.Tensor | None) -> torch.Tensor:
    """Class indices, or the teacher's soft labels for a method that learns from them."""
    if not method.uses_soft_labels:
        return y
    if q is None:
        raise ValueError(f"method {method.name!r} trains on the teacher's soft labels, but q is None")
    return q


class NaturalStep(Step):
    """Teachers: cross-entropy on one-hot labels. Substitutes (Sec. 4.2): natural data,
    the teacher's soft labels at T."""

    def __init__(self, method: Method):
        self.method = method

    def __call__(self, model, x, y, q):
        logits = model(x)
        loss = natural_loss(logits.float(), natural_target(self.method, y, q))
        return loss, logits, {"loss": loss.detach()}


def attack_stats(moved_pixels: torch.Tensor, logits_adv: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
    """The training attack's statistics (means over the batch, detached device scalars),
    from ``moved_pixels`` (per example, the fraction of pixels its attack moved):
    ``moved`` (its mean), ``stalled`` (fewer than ``STALLED_BELOW`` moved) and
    ``adv_accuracy`` (f(x') right)."""
    return {"stalled": stalled(moved_pixels).float().mean(), "moved": moved_pixels.mean(),
            "adv_accuracy": (logits_adv.detach().argmax(1) == y).float().mean()}


def trades_adversarial(model: torch.nn.Module, x: torch.Tensor, attack: dict,
                       start: torch.Tensor | None = None, compiled=None) -> torch.Tensor:
    """x' for the TRADES KL term, from ``start`` (the random start; drawn here if None).
    The clean logits the attack aims away from are computed once per batch in eval mode
    (as the official attack runs), not re-computed at each of its steps. The model's
    train/eval mode is restored. ``compiled``: an ltd.compiled.AttackForward that runs
    these forwards (no weight gradients)."""
    was_training = model.training
    model.eval()
    forward = model if compiled is None else compiled.bind(model)
    try:
        with torch.no_grad():
            logits_clean = forward(x).float()
        x_adv = trades_attack(model, x, logits_clean, eps=attack["eps"], step_size=attack["step_size"],
                              steps=attack["steps"], start=start, forward=forward)
    finally:
        model.train(was_training)
    return x_adv


class _Replay:
    """A ``CleanForwardReplay`` per model the step is given (the loop's, or a compiled wrapper)."""

    def __init__(self):
        self._model, self._replay = None, None

    def __call__(self, model: torch.nn.Module) -> CleanForwardReplay:
        if self._model is not model:
            self._model, self._replay = model, CleanForwardReplay(model)
        return self._replay


class TradesStep(Step):
    """TRADES (one-hot natural term) or TRADES+LTD (Eq. 9: soft labels, student T = 1).

    Forwards in train mode: x, x', then f(x)'s BN update replayed (the official x, x', x)."""

    def __init__(self, method: Method, *, beta: float, attack: dict):
        self.method, self.beta, self.attack = method, beta, attack
        self.replay = _Replay()

    def adversarial(self, model, x, start):
        """x' (``trades_adversarial``) from ``start``; through ``compiled_attack`` when
        train.compile_attack set one (else called as before: tests replace it)."""
        if self.compiled_attack is None:
            return trades_adversarial(model, x, self.attack, start=start)
        return trades_adversarial(model, x, self.attack, start=start, compiled=self.compiled_attack)

    def forwards(self, model, x, x_adv):
        """The natural and adversarial logits the TRADES(+LTD) loss takes, at the model's
        current weights, BN updated as officially: TRADES's x, x', x (AWPStep overrides the order)."""
        replay = self.replay(model)
        with replay.record():
            logits_nat = model(x)
        logits_adv = model(x_adv)
        replay.apply()
        return logits_nat, logits_adv

    def __call__(self, model, x, y, q):
        start = random_start(x)
        x_adv = self.adversarial(model, x, start)
        target = natural_target(self.method, y, q)
        logits_nat, logits_adv = self.forwards(model, x, x_adv)
        loss, parts = trades_loss(logits_nat.float(), logits_adv.float(), target, self.beta)
        moved_pixels = moved_fraction(x_adv, start, x, self.attack["eps"])
        return loss, logits_nat, {"loss": loss.detach(), **parts, **attack_stats(moved_pixels, logits_adv, y)}


class AWPStep(TradesStep):
    """TRADES-AWP (one-hot natural term) or AWP+LTD (soft labels in the natural term,
    student T = 1, in the weight-perturbation objective as well as in the update).

    Per batch: x' from the unperturbed model (as the TRADES step); delta from a proxy
    (ltd/awp.py) maximising the same TRADES(+LTD) loss on (x, x'); w += delta; the
    loss is computed at the perturbed weights and returned; the loop's optimiser step
    updates the perturbed weights; ``after_update`` subtracts delta. The model's own
    forwards run in the official TRADES-AWP order, x', x, x (the last one replayed),
    before and after the warm-up alike.

    Warm-up: ``warmup_epochs`` means what the official ``--awp-warmup`` flag means.
    The official loop counts epochs from 1 and perturbs when ``epoch >= awp_warmup``,
    so AWP is on from 1-based epoch ``warmup_epochs``: here, for the 0-based epochs
    ``e >= warmup_epochs - 1`` (official default 10: our epochs 0-8, nine of them,
    are plain TRADES; AWP is on from our epoch 9, the loop's "epoch 10/N"). gamma = 0
    switches AWP off (official).

    State: the proxy is re-loaded from the model every batch, its SGD step has no
    momentum, and delta is removed within the batch, so nothing needs checkpointing.
    """

    supports_compile = False  # the proxy is a deep copy of the model it is given

    def __init__(self, method: Method, *, beta: float, attack: dict, awp: dict):
        super().__init__(method, beta=beta, attack=attack)
        gamma, proxy_lr = awp["gamma"], awp["proxy_lr"]
        if gamma < 0 or proxy_lr <= 0:
            raise ValueError(f"AWP needs gamma >= 0 and proxy_lr > 0, got gamma={gamma}, proxy_lr={proxy_lr}")
        self.gamma, self.warmup_epochs, self.proxy_lr = gamma, awp["warmup_epochs"], proxy_lr
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

    def forwards(self, model, x, x_adv):  # TRADES-AWP's order: x', x, x
        replay = self.replay(model)
        logits_adv = model(x_adv)
        with replay.record():
            logits_nat = model(x)
        replay.apply()
        return logits_nat, logits_adv

    def __call__(self, model, x, y, q):
        if not self.active:
            return super().__call__(model, x, y, q)
        if self._delta is not None:
            raise RuntimeError("AWP step called again before after_update removed the previous weight perturbation")
        start = random_start(x)
        x_adv = self.adversarial(model, x, start)
        target = natural_target(self.method, y, q)

        def objective(net):  # the TRADES(+LTD) loss the weights are perturbed to increase
            logits_nat = net(x).float()
            return natural_loss(logits_nat, target) + self.beta * trades_kl(net(x_adv).float(), logits_nat)

        delta = awp_lib.compute_perturbation(model, self._proxy_for(model), objective, gamma=self.gamma,
                                             proxy_lr=self.proxy_lr, n_local=len(x))
        awp_lib.add_perturbation(model, delta)
        self._delta = delta
        logits_nat, logits_adv = self.forwards(model, x, x_adv)
        loss, parts = trades_loss(logits_nat.float(), logits_adv.float(), target, self.beta)
        moved_pixels = moved_fraction(x_adv, start, x, self.attack["eps"])
        return loss, logits_nat, {"loss": loss.detach(), **parts, **attack_stats(moved_pixels, logits_adv, y)}

    def after_update(self, model: torch.nn.Module) -> None:
        if self._delta is not None:
            awp_lib.remove_perturbation(model, self._delta)
            self._delta = None



class PgdStep(Step):
    """PGD-AT (Madry et al.; cross-entropy on x') or PGD-AT+LTD (CE(q_T, f(x'))), as
    the PyTorch PGD-AT of csdongxian/AWP (AT_AWP/train_cifar10.py, AWP off: Rice et
    al.'s loop) trains it. The attack uses the true label y in both (the paper crafts
    adversarial examples with the original label); ``beta`` is unused (no trade-off
    term) and only part of the run's name, as for every student.

    Equal to the official loop in x', loss, update and BatchNorm statistics:

    * Attack mode: the official attack runs the model in whatever mode it is in, and
      the loop calls ``model.train()`` only after it. So it attacks in train mode (BN
      on batch statistics, each forward moving the running statistics), except the
      first batch of every epoch after the first: the previous epoch's test pass left
      the model in eval mode (``begin_epoch``). Resumed runs differ in that one batch:
      an official ``--resume`` starts in train mode, ours resumed attacks the first
      batch it runs of an epoch after the first in eval mode.
    * Its one restart ends with a forward of x + delta only to pick the restart with
      the larger loss (always this one): in train mode it moves the running statistics
      exactly as the training forward of x' right after it does (same weights and
      input), so we skip it and replay that update (``ltd.batchnorm``).
    * After the optimiser step the official loop runs f(x) in train mode for its
      training-accuracy log, which moves the running statistics towards the clean
      batch at the new weights. No replay can stand in for a forward at new weights,
      so ``after_update`` runs it (without autograd, in the step's autocast precision);
      it is part of the declared cost. The loop counts training accuracy on f(x')
      (the official loop logs that one as its robust training accuracy).

    Forward-equivalents: 2k (attack) + 3 (x' with backward) + 1 (x after the update);
    officially 3k + 5 (its attack's backward also computes the weights' gradients,
    and the selection forward).
    """

    def __init__(self, method: Method, *, beta: float, attack: dict):
        self.method, self.attack = method, attack
        self.replay = _Replay()
        self._eval_attack = False  # the next batch is the first of an epoch after the first
        self._pending: tuple | None = None  # x and the step's precision, for after_update

    def begin_epoch(self, epoch: int) -> None:
        self._eval_attack = epoch > 0

    def __call__(self, model, x, y, q):
        target = natural_target(self.method, y, q)
        training = model.training
        if self._eval_attack:
            model.eval()
        start = pgd_start(x, self.attack["eps"])
        try:
            delta = pgd_delta(model, x, y, start=start, **self.attack)
        finally:
            model.train(training)
        attacked_in_train_mode = training and not self._eval_attack
        self._eval_attack = False
        x_adv = (x + delta).clamp(0.0, 1.0)
        if attacked_in_train_mode:  # the official selection forward of x + delta moved the statistics
            replay = self.replay(model)
            with replay.record():
                logits_adv = model(x_adv)
            replay.apply()
        else:
            logits_adv = model(x_adv)
        loss = natural_loss(logits_adv.float(), target)
        if training:
            device = x.device.type
            self._pending = (x, torch.is_autocast_enabled(device), torch.get_autocast_dtype(device),
                             fp16_emulation.active())  # fp16-emulated: no torch.autocast, its own mode
        return loss, logits_adv, {"loss": loss.detach(), **attack_stats(moved(delta, start), logits_adv, y)}

    def after_update(self, model: torch.nn.Module) -> None:
        """The official post-update forward of x in train mode (its BN statistics update)."""
        if self._pending is None:
            return
        x, autocast, dtype, emulation = self._pending
        self._pending = None
        emulated = contextlib.nullcontext() if emulation is None else fp16_emulation.Fp16Emulation(emulation.cache_enabled)
        with torch.no_grad(), torch.autocast(x.device.type, dtype=dtype, enabled=autocast), emulated:
            model(x)
        if distributed.active():  # each rank moved its statistics on its own slice
            distributed.average_buffers(model)


class MartStep(Step):
    """MART (Wang et al., ICLR 2020) or MART+LTD, as YisenWang/MART trains it
    (mart.py): x' by PGD on the cross-entropy with the true label y (eval mode, start
    x + N(0, 0.001^2)); then in train mode f(x), f(x') (the official order: nothing to
    replay) and ``ltd.losses.mart_loss``. MART+LTD: q_T replaces y in the boosted
    cross-entropy's CE term only; its margin term, the misclassification weight
    (1 - f_y(x)) and the attack keep y (see the registry's note).

    Forward-equivalents: 2k (attack) + 2 x 3 (x and x' with backward), as officially.
    """

    def __init__(self, method: Method, *, beta: float, attack: dict):
        self.method, self.beta, self.attack = method, beta, attack

    def __call__(self, model, x, y, q):
        target = natural_target(self.method, y, q) if self.method.uses_soft_labels else None
        start = random_start(x)
        forward = None if self.compiled_attack is None else self.compiled_attack.bind(model)
        x_adv = mart_attack(model, x, y, start=start, **self.attack, forward=forward)
        logits_nat = model(x)
        logits_adv = model(x_adv)
        loss, parts = mart_loss(logits_nat.float(), logits_adv.float(), y, self.beta, target)
        moved_pixels = moved_fraction(x_adv, start, x, self.attack["eps"])
        return loss, logits_nat, {"loss": loss.detach(), **parts, **attack_stats(moved_pixels, logits_adv, y)}


# Each Method's step kind (ltd/methods.py, torch-free, names it) -> its class, here beside
# the torch code it runs: the registry never imports this module, so none goes back up.
STEP_CLASSES: dict[str, type[Step]] = {"natural": NaturalStep, "trades": TradesStep, "awp": AWPStep, "pgd": PgdStep,
                                       "mart": MartStep}


def build_step(method: str, *, beta: float = 6.0, attack: dict | None = None, awp: dict | None = None) -> Step:
    """The step object of ``method`` (see ``Step``). ``attack`` = {eps, step_size, steps}:
    its training attack; ``awp`` = {gamma, warmup_epochs, proxy_lr}: required by AWP
    methods."""
    m = methods.get(method)
    settings: dict = {}
    if m.attack is not None:
        if attack is None:
            raise ValueError(f"method {method!r} needs its training attack {{eps, step_size, steps}}")
        settings["beta"] = float(beta)
        settings["attack"] = {"eps": float(attack["eps"]), "step_size": float(attack["step_size"]),
                              "steps": int(attack["steps"])}
    if m.awp:
        if awp is None:
            raise ValueError(f"method {method!r} needs an awp dict {{gamma, warmup_epochs, proxy_lr}}")
        settings["awp"] = {"gamma": float(awp["gamma"]), "warmup_epochs": int(awp["warmup_epochs"]),
                           "proxy_lr": float(awp["proxy_lr"])}
    return STEP_CLASSES[m.step](m, **settings)
