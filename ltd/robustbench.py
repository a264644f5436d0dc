"""RobustBench-format CIFAR checkpoints: load (strictly), find in a model directory, export.

A RobustBench CIFAR WideResNet (TRADES-style, ``fc`` with bias; LTD's CIFAR-100 model
also carries the unused ``sub_block1``) has exactly our WRN's parameter names, so its
state dict loads into ``build_model("wrn-34-10", classes)`` unchanged, with a strict
key and shape match. Files are read with ``weights_only=True`` (data, never code).

Wrappers handled, explicitly (each one applied is recorded in ``LoadInfo.notes``):

* a dict holding the weights under ``state_dict`` or ``model_state_dict`` (training
  scripts' checkpoints; RobustBench reads ``state_dict`` itself);
* a ``module.`` prefix on every key (``torch.nn.DataParallel``), removed.

Nothing else is renamed or dropped: a checkpoint whose keys or shapes differ raises
``StateDictMismatch`` listing the missing and unexpected keys and the shape mismatches.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch

from . import checkpoint, checks

WRAPPER_KEYS = ("state_dict", "model_state_dict")
DP_PREFIX = "module."


class StateDictMismatch(ValueError):
    """The checkpoint's keys or shapes are not the model's."""

    def __init__(self, missing: list[str], unexpected: list[str], shapes: list[tuple[str, tuple, tuple]],
                 what: str = "checkpoint"):
        self.missing, self.unexpected, self.shapes = missing, unexpected, shapes
        lines = [f"{what} does not match the model (strict load):"]
        if missing:
            lines.append(f"  missing keys ({len(missing)}): " + ", ".join(missing))
        if unexpected:
            lines.append(f"  unexpected keys ({len(unexpected)}): " + ", ".join(unexpected))
        for k, got, want in shapes:
            lines.append(f"  shape mismatch: {k}: checkpoint {list(got)}, model {list(want)}")
        super().__init__("\n".join(lines))


@dataclass
class LoadInfo:
    source: str
    arch: str
    num_classes: int
    sub_block1: bool
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {"source": self.source, "arch": self.arch, "num_classes": self.num_classes,
                "sub_block1": self.sub_block1, "wrappers": self.notes}


def unwrap(obj: Any) -> tuple[OrderedDict, list[str]]:
    """The plain state dict inside a loaded checkpoint, and what was unwrapped."""
    notes: list[str] = []
    if isinstance(obj, Mapping):
        for key in WRAPPER_KEYS:
            if key in obj and isinstance(obj[key], Mapping):
                notes.append(f"weights taken from the checkpoint's {key!r} entry"
                             + (f" (other entries ignored: {sorted(k for k in obj if k != key)})"
                                if len(obj) > 1 else ""))
                obj = obj[key]
                break
    if not isinstance(obj, Mapping):
        raise TypeError(f"expected a state dict (a mapping of names to tensors), got {type(obj).__name__}")
    not_tensors = [k for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if not_tensors:
        raise TypeError(f"not a state dict: entries {not_tensors[:10]} are not tensors; wrappers understood: "
                        f"{', '.join(WRAPPER_KEYS)} (a dict holding the state dict), '{DP_PREFIX}' key prefixes")
    sd = OrderedDict(obj)
    if sd and all(k.startswith(DP_PREFIX) for k in sd):
        sd = OrderedDict((k[len(DP_PREFIX):], v) for k, v in sd.items())
        notes.append(f"'{DP_PREFIX}' prefix (DataParallel) removed from every key")
    return sd, notes


def mismatches(model: torch.nn.Module, sd: Mapping[str, torch.Tensor]):
    own = model.state_dict()
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    shapes = [(k, tuple(sd[k].shape), tuple(own[k].shape)) for k in own if k in sd and sd[k].shape != own[k].shape]
    return missing, unexpected, shapes


def load_strict(model: torch.nn.Module, sd: Mapping[str, torch.Tensor], what: str = "checkpoint") -> torch.nn.Module:
    """Load with every key and shape matching, or raise ``StateDictMismatch`` naming them."""
    missing, unexpected, shapes = mismatches(model, sd)
    if missing or unexpected or shapes:
        raise StateDictMismatch(missing, unexpected, shapes, what)
    model.load_state_dict(sd, strict=True)
    return model


def read(path: str | Path) -> Any:
    try:
        return checkpoint.load(path, map_location="cpu")  # weights_only=True
    except Exception as e:  # noqa: BLE001 - torch raises UnpicklingError and others
        if isinstance(e, FileNotFoundError):
            raise
        first = str(e).splitlines()[0] if str(e) else ""
        raise ValueError(f"{path}: cannot be read with torch.load(weights_only=True) ({type(e).__name__}: {first}). "
                         "Only tensors and plain containers are accepted; re-save the file as a plain state dict "
                         "(torch.save(model.state_dict(), ...))") from e


def from_state_dict(obj: Any, arch: str, num_classes: int,
                    source: str = "state dict") -> tuple[torch.nn.Module, LoadInfo]:
    """Our model for ``arch`` with a (possibly wrapped) published state dict loaded
    strictly. ``sub_block1`` is built when, and only when, the checkpoint has it."""
    from .models import build_model

    sd, notes = unwrap(obj)
    sub = any(k.startswith("sub_block1.") for k in sd)
    if sub:
        notes.append("checkpoint carries the unused 'sub_block1' block (as LTD's CIFAR-100 model): built with it")
    model = build_model(arch, num_classes, sub_block1=sub) if sub else build_model(arch, num_classes)
    load_strict(model, sd, what=source)
    return model.eval(), LoadInfo(source, arch, num_classes, sub, notes)


def load_checkpoint(path: str | Path, arch: str, num_classes: int) -> tuple[torch.nn.Module, LoadInfo]:
    return from_state_dict(read(path), arch, num_classes, source=str(path))


def model_path(model_dir: str | Path, name: str, dataset: str, threat_model: str = "Linf") -> Path:
    """Where ``robustbench.utils.load_model(model_name=name, dataset=dataset,
    threat_model=threat_model, model_dir=model_dir)`` keeps a model-zoo file:
    ``<model_dir>/<dataset>/<threat_model>/<name>.pt``."""
    return checks.robustbench_file(model_dir, name, dataset, threat_model)


def find(model_dir: str | Path, name: str, dataset: str, threat_model: str = "Linf") -> Path:
    """The local file of a RobustBench model-zoo entry. Not there: fetched by the optional
    ``robustbench`` package into the same place when it is installed, else an error that
    says where to put the file."""
    path = model_path(model_dir, name, dataset, threat_model)
    if path.exists():
        return path
    try:
        from robustbench.utils import load_model
    except ImportError:
        raise FileNotFoundError(checks.missing_checkpoint(name, path, dataset, name, str(model_dir))
                                + " (The optional `robustbench` package is not installed here.)") from None
    load_model(model_name=name, dataset=dataset, threat_model=threat_model, model_dir=str(model_dir))
    if not path.exists():
        raise FileNotFoundError(f"robustbench reported {name!r} loaded but {path} does not exist; give `path` instead")
    return path


def export(model_pt: str | Path, out: str | Path, arch: str | None = None,
                       num_classes: int | None = None) -> Path:
    """Write ``model_pt`` (our plain state dict) as RobustBench loads a model-zoo file:
    ``{"state_dict": OrderedDict}`` of contiguous fp32/int64 CPU tensors with the
    WideResNet's names. No key may contain 'module.' or 'model.' (RobustBench strips
    those substrings). With ``arch``/``num_classes`` the weights are first checked to
    load strictly into that architecture."""
    sd, notes = unwrap(checkpoint.load(model_pt))
    bad = [k for k in sd if "module." in k or "model." in k]
    if bad:
        raise ValueError(f"keys {bad[:5]} contain 'module.'/'model.', which RobustBench's loader strips")
    if arch is not None:
        from .models import build_model

        if num_classes is None:
            num_classes = sd["fc.weight"].shape[0]
        sub = any(k.startswith("sub_block1.") for k in sd)
        load_strict(build_model(arch, num_classes, sub_block1=sub) if sub else build_model(arch, num_classes), sd,
                    what=str(model_pt))
    plain = OrderedDict((k, v.detach().cpu().contiguous().clone()) for k, v in sd.items())
    checkpoint.save({"state_dict": plain}, out)
    return Path(out)
