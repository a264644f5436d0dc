"""Install Debian packages a test needs (Slurm, Chromium) when their programs are missing.

Tests skip, naming the failing step, where that cannot be done (not root, no apt-get,
apt-get failing); they never pass silently without the real program.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path


class Unavailable(Exception):
    """The packages cannot be installed here; the message says which step failed."""


def ensure(packages: tuple[str, ...], binaries: tuple[str, ...], timeout: float = 1200) -> None:
    """``apt-get install`` ``packages`` unless every one of ``binaries`` is on PATH."""
    if all(shutil.which(b) for b in binaries):
        return
    what = f"{', '.join(binaries)} missing"
    if os.geteuid() != 0:
        raise Unavailable(f"{what} and the tests do not run as root (apt-get needs root)")
    if not shutil.which("apt-get"):
        raise Unavailable(f"{what} and apt-get is not available to install {' '.join(packages)}")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    # Keep apt from starting the packages' system services: only what a test starts runs.
    policy = Path("/usr/sbin/policy-rc.d")
    own_policy = not policy.exists()
    if own_policy:
        policy.write_text("#!/bin/sh\n# temporary, from tests/debian.py\nexit 101\n")
        policy.chmod(0o755)
    try:
        deadline = time.monotonic() + timeout
        for cmd in (["apt-get", "update"],
                    ["apt-get", "install", "-y", "--no-install-recommends", "-o", "Dpkg::Options::=--force-confold",
                     *packages]):
            left = deadline - time.monotonic()
            try:
                p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=max(left, 1))
            except subprocess.TimeoutExpired:
                raise Unavailable(f"`{' '.join(cmd)}` did not finish within {timeout} s") from None
            if p.returncode != 0:
                raise Unavailable(f"`{' '.join(cmd)}` failed (exit {p.returncode}): {p.stderr.strip()[-800:]}")
    finally:
        if own_policy:
            policy.unlink(missing_ok=True)
    missing = [b for b in binaries if not shutil.which(b)]
    if missing:
        raise Unavailable(f"apt-get installed {' '.join(packages)} but {', '.join(missing)} are not on PATH")
