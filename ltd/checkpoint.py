"""Files that must never be seen half-written: checkpoints, models, JSON results.

Everything is written to a temporary file in the same directory and renamed into
place (atomic on POSIX), so a job killed mid-write leaves the previous file or none.
Loading always uses ``weights_only=True``: a checkpoint is data, never code.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable

import torch


def _atomic(path: str | Path, write: Callable[[str], None]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save(obj: Any, path: str | Path) -> None:
    _atomic(path, lambda tmp: torch.save(obj, tmp))


def load(path: str | Path, map_location: str | torch.device = "cpu") -> Any:
    return torch.load(path, map_location=map_location, weights_only=True)


def save_json(obj: Any, path: str | Path) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=2, sort_keys=False)
            f.write("\n")

    _atomic(path, write)


def load_json(path: str | Path) -> Any:
    with open(path) as f:
        return json.load(f)


def write_text(text: str, path: str | Path) -> None:
    def write(tmp: str) -> None:
        Path(tmp).write_text(text)

    _atomic(path, write)
