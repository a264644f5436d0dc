"""Count the places where the host waits for the device (or hands it host data), on any
machine: the training loop's per-step code must have none (ltd/train.py reads its totals
every ``SYNC_EVERY`` steps; a wait at every step idles the GPU between kernels).

On a GPU, ``torch.cuda.set_sync_debug_mode`` reports the real synchronisations; it
exists for CUDA only. ``HostSyncs`` is a dispatcher-level stand-in that works on the
CPU too: run the code on a device that is not the CPU (the ``meta`` device: shapes
only, no data, so a WRN step costs nothing) and count

* reads of a device value on the host (``.item()``, ``.tolist()``, ``bool(t)``, ...:
  ``aten._local_scalar_dense``), and ops whose output size depends on device data
  (``nonzero``, ``masked_select``, ``unique``, ...), which read it too;
* copies between the host and the device (``.to(device)``, ``copy_``), and device ops
  given a host tensor with elements (indexing a device tensor with a CPU index copies
  it);
* ``torch.tensor`` / ``torch.as_tensor`` of host data onto the device (they bypass the
  dispatcher, so they are wrapped while counting).

A host scalar passed to a device op (``t * n``, ``torch.full(..., n)``) is a kernel
argument, not a copy: not counted. On the ``meta`` device a host read returns 0 so that
the code runs on and every sync is counted. Hand-written: PyTorch offers a CUDA-only
sync detector and nothing for other devices.
"""

from __future__ import annotations

import contextlib
import traceback
from collections import Counter

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

_HOST = "cpu"
# ops whose output shape depends on the values of a device tensor: the host reads them
_DATA_DEPENDENT = {"nonzero", "masked_select", "unique", "_unique", "_unique2", "unique_consecutive",
                   "unique_dim", "bincount", "repeat_interleave", "histc"}
_COPIES = {"_to_copy", "copy_", "to", "_copy_from", "_copy_from_and_resize"}


def _tensors(args, kwargs) -> list[torch.Tensor]:
    return [a for a in tree_leaves((args, kwargs)) if isinstance(a, torch.Tensor)]


def _host_zeros(func, tensors, kwargs):
    """What a copy from ``meta`` to the host returns while counting: zeros of its shape."""
    if func.overloadpacket.__name__ == "copy_":
        return tensors[0].zero_()
    src = tensors[0]
    return torch.zeros(src.shape, dtype=kwargs.get("dtype") or src.dtype)


class HostSyncs(TorchDispatchMode):
    """``with HostSyncs() as s: ...``; then ``s.count`` and ``s.events`` (kind, op, where)."""

    def __init__(self):
        super().__init__()
        self.events: list[tuple[str, str, str]] = []
        self._patched: contextlib.ExitStack | None = None

    @property
    def count(self) -> int:
        return len(self.events)

    def kinds(self) -> Counter:
        return Counter(kind for kind, _, _ in self.events)

    def _record(self, kind: str, op: str) -> None:
        # the innermost frame outside torch and this module: where to look
        here = next((f"{f.filename}:{f.lineno}" for f in reversed(traceback.extract_stack()[:-2])
                     if "/torch/" not in f.filename and f.filename != __file__), "?")
        self.events.append((kind, op, here))

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = func.overloadpacket.__name__
        tensors = _tensors(args, kwargs)
        devices = {t.device.type for t in tensors}
        if name == "_local_scalar_dense" and tensors[0].device.type != _HOST:
            self._record("read", name)
            if tensors[0].device.type == "meta":  # no value to read: go on counting
                return torch.zeros((), dtype=tensors[0].dtype).item()
        elif name in _DATA_DEPENDENT and devices - {_HOST}:
            self._record("read", name)
            if name == "nonzero" and "meta" in devices:  # (masks index with it): as if none were set
                return torch.empty(0, tensors[0].dim(), dtype=torch.long, device="meta")
        elif name in _COPIES:
            target = kwargs.get("device")
            ends = devices | ({torch.device(target).type} if target is not None else set())
            if _HOST in ends and len(ends) > 1:
                self._record("copy", name)
                if "meta" in devices and (target is None or torch.device(target).type == _HOST):
                    return _host_zeros(func, tensors, kwargs)  # no data to copy out of meta: go on counting
        elif len(devices) > 1 and any(t.device.type == _HOST and t.dim() > 0 for t in tensors):
            self._record("copy", name)  # a host tensor given to a device op is copied to it
        return func(*args, **kwargs)

    def _wrap_factory(self, name: str):
        original = getattr(torch, name)

        def factory(data, *args, **kwargs):
            device = kwargs.get("device")
            if device is None and isinstance(data, torch.Tensor):
                device = data.device
            on_host_data = not isinstance(data, torch.Tensor) or data.device.type == _HOST
            if device is not None and torch.device(device).type != _HOST and on_host_data:
                self._record("copy", f"torch.{name}")
            return original(data, *args, **kwargs)

        return original, factory

    def __enter__(self):
        self._patched = contextlib.ExitStack()
        for name in ("tensor", "as_tensor"):
            original, factory = self._wrap_factory(name)
            setattr(torch, name, factory)
            self._patched.callback(setattr, torch, name, original)
        try:
            return super().__enter__()
        except BaseException:
            self._patched.close()
            raise

    def __exit__(self, *exc):
        try:
            return super().__exit__(*exc)
        finally:
            self._patched.close()
