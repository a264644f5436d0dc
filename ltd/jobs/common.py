"""What several stages' jobs share: a run's data set section and model, a split in memory."""

from __future__ import annotations

from pathlib import Path

import torch

from .. import checkpoint, data, experiments
from ..experiments import Run
from ..models import build_model


def dataset(config: dict, run: Run) -> dict:
    return experiments.dataset_cfg(config, run.dataset)


def new_model(config: dict, run: Run) -> torch.nn.Module:
    return build_model(run.arch, data.num_classes(dataset(config, run), config["data_dir"]))


def load_model(config: dict, run: Run, path: str | Path, device: torch.device) -> torch.nn.Module:
    """A trained run's model for inference and attacks: eval mode, frozen weights."""
    model = new_model(config, run)
    model.load_state_dict(checkpoint.load(path, map_location="cpu"))
    # Attacks need input gradients only; frozen weights spare the weight gradients that
    # pyautoattack's FAB-T would otherwise compute (about 8 % of AutoAttack's FLOPs).
    return model.requires_grad_(False).to(device).eval()


def tensors(batches) -> tuple[torch.Tensor, torch.Tensor]:
    """A split's (first n) images in memory: AutoAttack and PGD take whole tensors."""
    xs, ys = zip(*batches)
    return torch.cat(xs), torch.cat(ys)


def split_tensors(config: dict, dataset_name: str, split: str, device: torch.device, batch_size: int,
                  n: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    cfg = experiments.dataset_cfg(config, dataset_name)
    return tensors(data.eval_batches(cfg, config["data_dir"], split, device, batch_size, n=n))
