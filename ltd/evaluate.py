"""Clean accuracy, PGD and the temperature search's validation criteria, in full fp32.
AutoAttack: ``ltd.autoattack``.

Reported robust accuracy is never computed under autocast: bf16 logits make
gradient-based attacks weaker and the number optimistic. What the matmuls and
convolutions actually ran in (the TF32 mode, ``ltd.runtime.tf32_mode``: "fp32",
"pytorch_default" or "tf32", as ``evaluation.precision`` names it) is recorded beside it.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch

from .attacks import pgd_attack, trades_attack
from .loaders import batches
from .losses import soft_cross_entropy, trades_kl


def evaluation_model(model: torch.nn.Module, *, channels_last: bool = False, compile: bool = False,
                     backend="inductor") -> torch.nn.Module:
    """The model as evaluated: eval mode, weights frozen (the attacks' backward computes
    input gradients only: FAB-T's ``.backward()`` would otherwise also compute every
    weight's), optionally in channels_last (cuDNN's faster layout on a GPU; reorders
    float sums only) and through ``torch.compile`` (compiled frozen, so its backward too
    computes input gradients only). Both are speed switches (evaluation.channels_last,
    evaluation.compile): not part of a result's identity, recorded as its ``layout``."""
    model = model.eval().requires_grad_(False)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    if compile:
        model = torch.compile(model, backend=backend)
    return model


def layout(model: torch.nn.Module) -> dict:
    """How an evaluated model runs: {"channels_last": ..., "compiled": ...}."""
    inner = getattr(model, "_orig_mod", model)
    weights = [p for p in inner.parameters() if p.dim() == 4]
    channels_last = (all(p.is_contiguous(memory_format=torch.channels_last) for p in weights)
                     and any(not p.is_contiguous() for p in weights))  # (a 1x1 kernel is both)
    return {"channels_last": channels_last, "compiled": inner is not model}


@torch.no_grad()
def predict(model: torch.nn.Module, x: torch.Tensor, batch_size: int) -> torch.Tensor:
    model.eval()
    return torch.cat([model(x[s]).float() for s in batches(x, batch_size)])


def clean_accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int) -> float:
    return (predict(model, x, batch_size).argmax(1) == y).sum().item() / max(len(y), 1)


def fraction(flags: torch.Tensor) -> float:
    """The fraction of True flags, exactly (k / n in float64, not a float32 mean)."""
    return flags.sum().item() / max(len(flags), 1)


def clean_accuracy_batches(model: torch.nn.Module, batches_) -> float:
    """Clean accuracy over streamed (x, y) batches (data too large to hold, e.g. ImageNet)."""
    model.eval()
    correct = n = 0
    with torch.no_grad():
        for x, y in batches_:
            correct += (model(x).argmax(1) == y).sum().item()
            n += len(y)
    return correct / max(n, 1)


@contextlib.contextmanager
def seeded(seed: int, device: torch.device | str) -> Iterator[None]:
    """The global RNG seeded with ``seed`` inside, and as it was outside: an attack's random
    start is then the same in every run and resume, and evaluating (e.g. a student's
    per-epoch monitor) leaves the training's random stream untouched."""
    device = torch.device(device)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        yield


def pgd_accuracy(model, x, y, *, eps, step_size, steps, batch_size, seed: int) -> float:
    correct = 0
    with seeded(seed, x.device):
        for s in batches(x, batch_size):
            x_adv = pgd_attack(model, x[s], y[s], eps=eps, step_size=step_size, steps=steps)
            correct += (predict(model, x_adv, batch_size).argmax(1) == y[s]).sum().item()
    return correct / len(y)


def eq9_kl(model, x, q, *, beta, eps, step_size, steps, batch_size, seed: int) -> float:
    """The LTD objective (Eq. 9) on held-out data, with its TRADES inner maximisation and
    its natural term as KL(q_T || f) = CE(q_T, f) - H(q_T): comparable across the
    temperatures of a search, where CE(q_T, f) alone is bounded below by H(q_T)."""
    total = 0.0
    for s in batches(x, batch_size):
        logits = predict(model, x[s], batch_size)
        with seeded(seed, x.device):
            x_adv = trades_attack(model, x[s], logits, eps=eps, step_size=step_size, steps=steps)
        logits_adv = predict(model, x_adv, batch_size)
        qs = q[s]
        entropy = -(qs * torch.log(qs.clamp_min(1e-30))).sum(1).mean()
        kl_natural = soft_cross_entropy(logits, qs) - entropy
        total += (kl_natural + beta * trades_kl(logits_adv, logits)).item() * len(qs)
    return total / len(x)



