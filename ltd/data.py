"""Data sets as tensors in [0, 1], and a loader that keeps them on the training device.

CIFAR comes from torchvision (downloaded into ``data_dir`` on first use). The offline
demo data set is scikit-learn's ``load_digits`` (1,797 real 8x8 handwritten digits
that ship inside the installed package), upsampled and repeated to 3 channels so that
the CIFAR code path (models, crop+flip, attacks) is the one exercised.

Like airbench, the whole split sits on the device and crop/flip run there on whole
batches: no DataLoader workers, no per-image Python.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F

NUM_CLASSES = {"cifar10": 10, "cifar100": 100, "digits": 10}
SPLIT_SEED = 0  # fixed: the train/val(/test for digits) split never depends on the run seed


@dataclass
class Split:
    x: torch.Tensor  # float32, N x 3 x H x W, in [0, 1]
    y: torch.Tensor  # int64, N
    indices: np.ndarray  # positions in the source data set (for provenance)

    def __len__(self) -> int:
        return len(self.y)

    def to(self, device: torch.device | str) -> "Split":
        return Split(self.x.to(device), self.y.to(device), self.indices)

    def head(self, n: int) -> "Split":
        return Split(self.x[:n], self.y[:n], self.indices[:n])


def _digits(image_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0  # values are 0..16
    x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", align_corners=False)
    return x.clamp(0, 1).repeat(1, 3, 1, 1).contiguous(), torch.tensor(d.target, dtype=torch.int64)


def _cifar(name: str, data_dir: str, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
    from torchvision import datasets

    cls = {"cifar10": datasets.CIFAR10, "cifar100": datasets.CIFAR100}[name]
    ds = cls(root=data_dir, train=train, download=True)
    x = torch.from_numpy(ds.data).permute(0, 3, 1, 2).float().div_(255)
    return x.contiguous(), torch.tensor(ds.targets, dtype=torch.int64)


def load_split(cfg: dict, data_dir: str, split: str) -> Split:
    """``split`` in train | val | test. ``cfg`` is the config's ``dataset`` section.

    val is a fixed subset of the training set (``val_size`` images) that train excludes.
    Digits has no official test set: a fixed ``test_size`` of the 1,797 images is.
    """
    if split not in ("train", "val", "test"):
        raise ValueError(f"unknown split {split!r}; expected train, val or test")
    name = cfg["name"]
    rng = np.random.default_rng(SPLIT_SEED)
    if name == "digits":
        x, y = _digits(cfg.get("image_size", 32))
        order = rng.permutation(len(y))
        n_test = cfg.get("test_size", 397)
        if split == "test":
            idx = np.sort(order[:n_test])
            return Split(x[idx], y[idx], idx)
        pool = np.sort(order[n_test:])
    elif name in ("cifar10", "cifar100"):
        x, y = _cifar(name, data_dir, train=split != "test")
        if split == "test":
            return Split(x, y, np.arange(len(y)))
        pool = np.arange(len(y))
    else:
        raise ValueError(f"dataset.name: unknown data set {name!r}; expected one of {sorted(NUM_CLASSES)}")

    val_size = cfg.get("val_size", 0)
    if val_size >= len(pool):
        raise ValueError(f"dataset.val_size={val_size} leaves no training images (pool of {len(pool)})")
    val_idx = np.sort(rng.permutation(pool)[:val_size])
    if split == "val":
        return Split(x[val_idx], y[val_idx], val_idx)
    train_idx = np.setdiff1d(pool, val_idx)
    if cfg.get("train_size"):
        train_idx = train_idx[: cfg["train_size"]]
    return Split(x[train_idx], y[train_idx], train_idx)


def describe(cfg: dict, data_dir: str) -> dict:
    """Sizes and a fingerprint of every split: recorded so a result names its data."""
    out = {"dataset": cfg["name"], "num_classes": NUM_CLASSES[cfg["name"]], "split_seed": SPLIT_SEED}
    for split in ("train", "val", "test"):
        s = load_split(cfg, data_dir, split)
        out[split] = {
            "n": len(s),
            "shape": list(s.x.shape[1:]),
            "indices_sha256": hashlib.sha256(np.asarray(s.indices, dtype=np.int64).tobytes()).hexdigest(),
        }
    return out


def crop_flip(x: torch.Tensor, padding: int, generator: torch.Generator) -> torch.Tensor:
    """Random crop with zero padding and random horizontal flip, per image, batched."""
    b, _, h, w = x.shape
    dev = x.device
    if padding > 0:
        xp = F.pad(x, (padding,) * 4)
        dy = torch.randint(0, 2 * padding + 1, (b,), generator=generator).to(dev)
        dx = torch.randint(0, 2 * padding + 1, (b,), generator=generator).to(dev)
        rows = (dy[:, None] + torch.arange(h, device=dev))[:, :, None]
        cols = (dx[:, None] + torch.arange(w, device=dev))[:, None, :]
        x = xp.permute(0, 2, 3, 1)[torch.arange(b, device=dev)[:, None, None], rows, cols]
        x = x.permute(0, 3, 1, 2)
    flip = (torch.rand(b, generator=generator) < 0.5).to(dev)
    return torch.where(flip[:, None, None, None], x.flip(3), x).contiguous()


class DeviceLoader:
    """Batches of (x, y, soft_labels or None) from tensors already on the device.

    The order and augmentation of epoch e depend only on (seed, e), so a run resumed
    at an epoch boundary sees exactly the batches an uninterrupted run would.
    """

    def __init__(
        self,
        split: Split,
        batch_size: int,
        soft_labels: torch.Tensor | None = None,
        shuffle: bool = True,
        crop_padding: int = 0,
        augment: bool = True,
        seed: int = 0,
        drop_last: bool = False,
    ):
        if soft_labels is not None and len(soft_labels) != len(split):
            raise ValueError(f"{len(soft_labels)} soft labels for {len(split)} training images")
        self.split, self.q = split, soft_labels
        self.batch_size, self.shuffle, self.augment = batch_size, shuffle, augment
        self.padding, self.seed, self.drop_last = crop_padding, seed, drop_last

    def __len__(self) -> int:
        n = len(self.split)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def epoch(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        n = len(self.split)
        order = torch.randperm(n, generator=g) if self.shuffle else torch.arange(n)
        order = order.to(self.split.x.device)
        for i in range(len(self)):
            idx = order[i * self.batch_size : (i + 1) * self.batch_size]
            x = self.split.x[idx]
            if self.augment:
                x = crop_flip(x, self.padding, g)
            yield x, self.split.y[idx], None if self.q is None else self.q[idx]


def batches(x: torch.Tensor, batch_size: int) -> Iterator[slice]:
    for i in range(0, len(x), batch_size):
        yield slice(i, i + batch_size)
