"""Tensors on disk: checkpoints, models, soft labels.

Written atomically (ltd.files: temp file + rename), so a job killed mid-write leaves
the previous file or none. Loading always uses ``weights_only=True``: a checkpoint is
data, never code. A file that cannot be read (truncated by a disk fault or a copy cut
short) raises ``UnreadableFile`` naming it: torch's own errors ("PytorchStreamReader
failed reading zip archive", an EOFError, "[Errno 22] Invalid argument") do not.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any

import torch

from .files import atomic_write


class UnreadableFile(RuntimeError):
    """A file torch.load cannot read (truncated, or not a plain tensor file)."""


def save(obj: Any, path: str | Path) -> None:
    atomic_write(path, lambda tmp: torch.save(obj, tmp))


def load(path: str | Path, map_location: str | torch.device = "cpu") -> Any:
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except (FileNotFoundError, PermissionError, IsADirectoryError):
        raise  # these name the file already
    except (RuntimeError, EOFError, OSError, pickle.UnpicklingError) as e:
        first = (str(e).splitlines() or [""])[0][:200]
        raise UnreadableFile(f"{path} cannot be read by torch.load ({type(e).__name__}: {first or 'no more data'}); "
                             "the file is truncated or not a tensor file") from e


def set_aside(path: str | Path) -> Path:
    """Move an unreadable file out of the way, keeping it: <name>.corrupt (.corrupt.1, ...
    if that exists too). Returns where it went."""
    path = Path(path)
    aside, i = path.with_name(path.name + ".corrupt"), 0
    while aside.exists():
        i += 1
        aside = path.with_name(f"{path.name}.corrupt.{i}")
    os.replace(path, aside)
    return aside
