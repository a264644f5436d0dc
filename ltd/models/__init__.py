"""Architectures by name: ``wrn-<depth>-<width>`` and ``preact-resnet18``."""

from __future__ import annotations

import re

import torch.nn as nn

from .preact_resnet import PreActResNet18
from .wideresnet import WideResNet

# Must match config/schema.yaml's `arch` pattern.
ARCH_PATTERN = r"^(wrn-[0-9]+-[0-9]+|preact-resnet18)$"


def build_model(arch: str, num_classes: int, sub_block1: bool = False) -> nn.Module:
    m = re.fullmatch(r"wrn-(\d+)-(\d+)", arch)
    if m:
        depth, width = int(m[1]), int(m[2])
        if (depth - 4) % 6 or width < 1:
            raise ValueError(f"arch {arch!r}: a WideResNet needs depth 6n+4 (10, 16, 22, 28, 34, ...) and width >= 1")
        return WideResNet(depth, width, num_classes, sub_block1=sub_block1)
    if arch == "preact-resnet18":
        return PreActResNet18(num_classes)
    raise ValueError(f"unknown arch {arch!r}; expected 'wrn-<depth>-<width>' (e.g. wrn-34-10) or 'preact-resnet18'")


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
