"""Architecture names, checked without building anything (no torch: the config checks
run while the workflow plans its DAG)."""

from __future__ import annotations

import re

# Must match config/schema.yaml's `arch` pattern.
ARCH_PATTERN = r"^(wrn-[0-9]+-[0-9]+|resnet-(14|18|50|101)|preact-resnet18)$"
# Depths of wrn-<depth>-<width> that mean torchvision's wide (Bottleneck) ResNet, not ours.
TORCHVISION_WRN_DEPTHS = (14, 50, 101)
TORCHVISION_RESNETS = ("resnet-14", "resnet-18", "resnet-50", "resnet-101")

VALID_FORMS = ("'wrn-<depth>-<width>' with depth 6n+4 (10, 16, 22, 28, 34, 40, ...; CIFAR WideResNet, "
               "e.g. wrn-34-10) or depth 14, 50, 101 (torchvision wide ResNet, e.g. wrn-50-2); "
               f"{', '.join(repr(a) for a in TORCHVISION_RESNETS)}; or 'preact-resnet18'")


def check_arch(arch: str) -> str:
    """The family of ``arch`` ("wrn", "torchvision-wrn", "torchvision-resnet", "preact"),
    or ValueError saying which names exist."""
    m = re.fullmatch(r"wrn-(\d+)-(\d+)", arch)
    if m:
        depth, width = int(m[1]), int(m[2])
        if width < 1:
            raise ValueError(f"arch {arch!r}: width must be >= 1; expected {VALID_FORMS}")
        if depth in TORCHVISION_WRN_DEPTHS:
            return "torchvision-wrn"
        if (depth - 4) % 6 or depth < 10:
            raise ValueError(f"arch {arch!r}: depth {depth} is neither 6n+4 nor one of "
                             f"{list(TORCHVISION_WRN_DEPTHS)}; expected {VALID_FORMS}")
        return "wrn"
    if arch in TORCHVISION_RESNETS:
        return "torchvision-resnet"
    if arch == "preact-resnet18":
        return "preact"
    raise ValueError(f"unknown arch {arch!r}; expected {VALID_FORMS}")
