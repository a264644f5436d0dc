"""Architectures by name.

* ``wrn-<depth>-<width>`` with depth 6n+4 (10, 16, 22, 28, 34, 40, ...): our CIFAR
  WideResNet (RobustBench layout).
* ``wrn-<depth>-<width>`` with depth 14, 50 or 101: torchvision's ImageNet wide ResNet
  (Bottleneck blocks, ``width_per_group = 64 * width``; wrn-50-2 is wide_resnet50_2).
  None of 14, 50, 101 is 6n+4, so the depth alone picks the family.
* ``resnet-18``, ``resnet-50``, ``resnet-101``: torchvision's ImageNet ResNets;
  ``resnet-14`` (Bottleneck, one block per stage) is the CPU demo's stand-in for resnet-50,
  as ``wrn-14-2`` is for wrn-50-2.
* ``preact-resnet18``.

torchvision models are built with weights=None (trained here, never downloaded).
"""

from __future__ import annotations

import re

import torch.nn as nn
from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet

from .preact_resnet import PreActResNet18
from .wideresnet import WideResNet

# torchvision ResNet layouts: (block, blocks per stage). resnet-14 is the demo stand-in.
TORCHVISION_RESNETS = {
    "resnet-14": (Bottleneck, [1, 1, 1, 1]),
    "resnet-18": (BasicBlock, [2, 2, 2, 2]),
    "resnet-50": (Bottleneck, [3, 4, 6, 3]),
    "resnet-101": (Bottleneck, [3, 4, 23, 3]),
}
# Depths of wrn-<depth>-<width> that mean torchvision's wide (Bottleneck) ResNet, not ours.
TORCHVISION_WRN_DEPTHS = {14: [1, 1, 1, 1], 50: [3, 4, 6, 3], 101: [3, 4, 23, 3]}

# Must match config/schema.yaml's `arch` pattern.
ARCH_PATTERN = r"^(wrn-[0-9]+-[0-9]+|resnet-(14|18|50|101)|preact-resnet18)$"

VALID_FORMS = ("'wrn-<depth>-<width>' with depth 6n+4 (10, 16, 22, 28, 34, 40, ...; CIFAR WideResNet, "
               "e.g. wrn-34-10) or depth 14, 50, 101 (torchvision wide ResNet, e.g. wrn-50-2); "
               f"{', '.join(repr(a) for a in TORCHVISION_RESNETS)}; or 'preact-resnet18'")


def build_model(arch: str, num_classes: int, sub_block1: bool = False) -> nn.Module:
    m = re.fullmatch(r"wrn-(\d+)-(\d+)", arch)
    if m:
        depth, width = int(m[1]), int(m[2])
        if width < 1:
            raise ValueError(f"arch {arch!r}: width must be >= 1; expected {VALID_FORMS}")
        if depth in TORCHVISION_WRN_DEPTHS:
            layers = TORCHVISION_WRN_DEPTHS[depth]
            return ResNet(Bottleneck, layers, num_classes=num_classes, width_per_group=64 * width)
        if (depth - 4) % 6 or depth < 10:
            raise ValueError(f"arch {arch!r}: depth {depth} is neither 6n+4 nor one of "
                             f"{sorted(TORCHVISION_WRN_DEPTHS)}; expected {VALID_FORMS}")
        return WideResNet(depth, width, num_classes, sub_block1=sub_block1)
    if arch in TORCHVISION_RESNETS:
        block, layers = TORCHVISION_RESNETS[arch]
        return ResNet(block, layers, num_classes=num_classes)
    if arch == "preact-resnet18":
        return PreActResNet18(num_classes)
    raise ValueError(f"unknown arch {arch!r}; expected {VALID_FORMS}")


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
