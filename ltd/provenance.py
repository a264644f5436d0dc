"""Where a result came from: the code (git commit, dirty tree, this package's version),
the packages, the device, and the job's own settings. Every JSON result carries it."""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

PACKAGES = ("ltd", "torch", "torchvision", "pyautoattack", "snakemake", "numpy")


def fingerprint(obj: Any) -> str:
    """A short, stable hash of JSON-able settings (a run's identity, a state file's key)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def git_commit() -> dict:
    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(["git", *args], capture_output=True, text=True, check=False, cwd=Path(__file__).parent)
        except OSError:
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"git_commit": commit, "git_dirty": None if status is None else bool(status)}


def versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in PACKAGES:
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = None
    return out


def provenance(results: str, device=None, *, gpus: int = 0, wall_seconds: float | None = None,
               **extra: Any) -> dict:
    """The provenance block of a result of the run ``results`` (the config's ``run``: its
    results folder). ``device`` (a torch.device) adds its description;
    ``wall_seconds`` with ``gpus`` (GPUs held) adds GPU-hours; ``extra``: the job's own
    facts (seed, precision, the settings that produced it)."""
    timing = {} if wall_seconds is None else {"wall_seconds": round(wall_seconds, 1),
                                              "gpu_hours": round(wall_seconds * gpus / 3600, 4)}
    where = {}
    if device is not None:
        from .runtime import describe

        where = describe(device)
    return {**git_commit(), "run": results, "finished": _dt.datetime.now().isoformat(timespec="seconds"),
            **where, "gpus": gpus, "packages": versions(), **timing, **extra}


def log_to(path: str | Path) -> None:
    """Send this job's stdout and stderr to its Snakemake log file (line-buffered)."""
    f = open(path, "a", buffering=1)
    sys.stdout = sys.stderr = f
