"""Clean accuracy, PGD and the temperature search's validation criteria, in full fp32,
and the precision flags every evaluation records. AutoAttack: ``ltd.autoattack``.

Reported robust accuracy is never computed under autocast: bf16 logits make
gradient-based attacks weaker and the number optimistic. ``numeric_precision`` states
what the matmuls and convolutions actually ran in ("fp32", or "tf32" when TF32 is on).
"""

from __future__ import annotations

import contextlib
import warnings
from typing import Iterator

import torch

from .attacks import pgd_attack, trades_attack
from .data import batches
from .losses import soft_cross_entropy, trades_kl


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


def numeric_precision(device: torch.device | str) -> str:
    """"tf32" if TF32 is enabled for CUDA matmuls or cuDNN convolutions, else "fp32"
    (the CPU never uses TF32). Read from torch's flags at the time of the call."""
    if torch.device(device).type != "cuda":
        return "fp32"
    return "tf32" if any(tf32_flags().values()) else "fp32"


def tf32_flags() -> dict[str, bool]:
    with warnings.catch_warnings():  # newer torch deprecates allow_tf32 for fp32_precision
        warnings.simplefilter("ignore")
        flags = {"cuda.matmul.allow_tf32": bool(torch.backends.cuda.matmul.allow_tf32),
                 "cudnn.allow_tf32": bool(torch.backends.cudnn.allow_tf32),
                 "float32_matmul_precision_not_highest": torch.get_float32_matmul_precision() != "highest"}
        for name, obj in (("cuda.matmul", torch.backends.cuda.matmul),
                          ("cudnn.conv", getattr(torch.backends.cudnn, "conv", None))):
            p = getattr(obj, "fp32_precision", None)
            if isinstance(p, str):
                flags[f"{name}.fp32_precision_tf32"] = p == "tf32"
    return flags


