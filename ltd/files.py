"""Files that must never be seen half-written: JSON results, text, and (through
``ltd.checkpoint``) tensors.

Everything is written to a temporary file in the same directory and renamed into
place (atomic on POSIX), so a job killed mid-write leaves the previous file or none.
No torch here: the workflow plans its DAG with these alone.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable


def atomic_write(path: str | Path, write: Callable[[str], None]) -> None:
    """``write(tmp)`` fills a temporary sibling of ``path``, which then replaces it."""
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


def save_json(obj: Any, path: str | Path) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=2, sort_keys=False)
            f.write("\n")

    atomic_write(path, write)


def load_json(path: str | Path) -> Any:
    with open(path) as f:
        return json.load(f)


def write_text(text: str, path: str | Path) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))
