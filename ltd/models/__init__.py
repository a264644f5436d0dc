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

import torch.nn as nn

from ..archs import ARCH_PATTERN, check_arch  # noqa: F401 - ARCH_PATTERN: the schema's, for tests
from .preact_resnet import PreActResNet18
from .wideresnet import WideResNet

# torchvision ResNet layouts: (block, blocks per stage). resnet-14 is the demo stand-in.
# torchvision is imported when one is built: its import pulls in torch._dynamo (through
# torchvision.ops), 1.3 s of every job's start on a CPU, and most jobs train a WRN.
TORCHVISION_RESNETS = {
    "resnet-14": ("Bottleneck", [1, 1, 1, 1]),
    "resnet-18": ("BasicBlock", [2, 2, 2, 2]),
    "resnet-50": ("Bottleneck", [3, 4, 6, 3]),
    "resnet-101": ("Bottleneck", [3, 4, 23, 3]),
}
# Blocks per stage of torchvision's wide (Bottleneck) ResNets, by the depth in wrn-<depth>-<width>.
TORCHVISION_WRN_LAYERS = {14: [1, 1, 1, 1], 50: [3, 4, 6, 3], 101: [3, 4, 23, 3]}


def build_model(arch: str, num_classes: int, sub_block1: bool = False) -> nn.Module:
    family = check_arch(arch)
    if family == "wrn":
        depth, width = (int(v) for v in arch.split("-")[1:])
        return WideResNet(depth, width, num_classes, sub_block1=sub_block1)
    if family == "preact":
        return PreActResNet18(num_classes)
    from torchvision.models import resnet

    if family == "torchvision-wrn":
        depth, width = (int(v) for v in arch.split("-")[1:])
        return resnet.ResNet(resnet.Bottleneck, TORCHVISION_WRN_LAYERS[depth], num_classes=num_classes,
                             width_per_group=64 * width)
    block, layers = TORCHVISION_RESNETS[arch]
    return resnet.ResNet(getattr(resnet, block), layers, num_classes=num_classes)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
