"""Tensors on disk: checkpoints, models, soft labels.

Written atomically (ltd.files: temp file + rename), so a job killed mid-write leaves
the previous file or none. Loading always uses ``weights_only=True``: a checkpoint is
data, never code.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from .files import atomic_write


def save(obj: Any, path: str | Path) -> None:
    atomic_write(path, lambda tmp: torch.save(obj, tmp))


def load(path: str | Path, map_location: str | torch.device = "cpu") -> Any:
    return torch.load(path, map_location=map_location, weights_only=True)
