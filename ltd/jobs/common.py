"""What several stages' jobs share: a model of a data set's classes, a split in memory."""

from __future__ import annotations

from pathlib import Path

import torch

from .. import checkpoint, data
from ..jobspec import Data, Model
from ..models import build_model


def new_model(model: Model) -> torch.nn.Module:
    """``model``'s architecture with its data set's classes, freshly initialised."""
    return build_model(model.arch, data.num_classes(model.data))


def load_model(spec: Model, path: str | Path, device: torch.device) -> torch.nn.Module:
    """A trained model for inference and attacks: eval mode, frozen weights."""
    model = new_model(spec)
    model.load_state_dict(checkpoint.load(path, map_location="cpu"))
    # Attacks need input gradients only; frozen weights spare the weight gradients that
    # pyautoattack's FAB-T would otherwise compute (about 8 % of AutoAttack's FLOPs).
    return model.requires_grad_(False).to(device).eval()


def tensors(batches) -> tuple[torch.Tensor, torch.Tensor]:
    """A split's (first n) images in memory: AutoAttack and PGD take whole tensors."""
    xs, ys = zip(*batches)
    return torch.cat(xs), torch.cat(ys)


def split_tensors(dataset: Data, split: str, device: torch.device, batch_size: int,
                  n: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    return tensors(data.eval_batches(dataset, split, device, batch_size, n=n))
