"""What every source kind's loader is built from: a split in memory (``Split``), which
images each split holds (``split_indices``), the global batches and each process's shard
of them, the in-memory training loader (``DeviceLoader``: crop + flip on the device), and
``Loader``, the base class of the per-kind loaders (ltd.data's in-memory kinds,
ltd.image_files' file-based ones). ltd.data's public functions pick a kind's loader
through its registry record (ltd.sources); the loaders come here and to ltd.sources for
what they share, never back to ltd.data.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterator

import numpy as np
import torch
import torch.nn.functional as F

from . import sources
from .sources import split_sizes

if TYPE_CHECKING:
    from .jobspec import Data

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

    def tail(self, n: int) -> "Split":
        k = max(0, len(self) - n)
        return Split(self.x[k:], self.y[k:], self.indices[k:])


def check_split(split: str) -> None:
    if split not in ("train", "val", "test"):
        raise ValueError(f"unknown split {split!r}; expected train, val or test")


def split_indices(cfg: dict, split: str, n: int, carve_test: bool, shuffle_test: bool = False) -> np.ndarray:
    """Positions of ``split``'s images in the set it is drawn from: the test set for
    "test", the training set for "train"/"val" (``n`` is that set's size).

    ``carve_test`` (digits, a single pool): a fixed ``test_size`` of the pool is the test
    set. Otherwise ``test_size`` takes the first N of a fixed permutation of the test set
    (``shuffle_test``: always in that order, so that any prefix covers all classes). val
    is a fixed ``val_size`` of the training set that train excludes; ``train_size`` keeps
    the first N of a fixed permutation of the rest. How many: ltd.sources.split_sizes.
    """
    rng = np.random.default_rng(SPLIT_SEED)
    sizes = split_sizes(cfg, {"train": n, "test": n})
    if carve_test:
        order = rng.permutation(n)
        if split == "test":
            return np.sort(order[:sizes["test"]])
        pool = np.sort(order[sizes["test"]:])
    elif split == "test":
        if shuffle_test:
            return rng.permutation(n)[:sizes["test"]]
        return np.sort(rng.permutation(n)[:sizes["test"]]) if sizes["test"] < n else np.arange(n)
    else:
        pool = np.arange(n)

    val_size = sizes["val"]
    if val_size >= len(pool):
        raise ValueError(f"dataset.val_size={val_size} leaves no training images (pool of {len(pool)})")
    val_idx = np.sort(rng.permutation(pool)[:val_size])
    if split == "val":
        return val_idx
    train_idx = np.setdiff1d(pool, val_idx)
    if sizes["train"] < len(train_idx):
        train_idx = np.sort(rng.permutation(train_idx)[: sizes["train"]])
    return train_idx


def batch_bounds(n: int, batch_size: int, world_size: int) -> list[tuple[int, int]]:
    """Global batches as [start, stop) positions in the epoch's order. A short last batch
    is dropped when it cannot give every process an image."""
    bounds = [(i, min(i + batch_size, n)) for i in range(0, n, batch_size)]
    if bounds:
        last = bounds[-1][1] - bounds[-1][0]
        if last < world_size:
            bounds.pop()
    return bounds


def shard(start: int, stop: int, rank: int, world_size: int) -> tuple[int, int]:
    """Rank r's contiguous slice of a global batch (sizes differ by at most one)."""
    m = stop - start
    return start + m * rank // world_size, start + m * (rank + 1) // world_size


def check_rank(rank: int, world_size: int) -> None:
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is not in [0, world_size={world_size})")


def _crop_flip_params(b: int, padding: int, generator: torch.Generator):
    dy = dx = None
    if padding > 0:
        dy = torch.randint(0, 2 * padding + 1, (b,), generator=generator)
        dx = torch.randint(0, 2 * padding + 1, (b,), generator=generator)
    return dy, dx, torch.rand(b, generator=generator) < 0.5


def _apply_crop_flip(x: torch.Tensor, padding: int, dy, dx, flip) -> torch.Tensor:
    """Crop (offsets dy, dx into the zero-padded image) and flip each image. The
    parameters should already be on x's device: a CPU tensor is copied here, and a copy
    from the host makes the host wait for the device (DeviceLoader copies an epoch's once)."""
    b, _, h, w = x.shape
    dev = x.device
    if padding > 0:
        xp = F.pad(x, (padding,) * 4)
        rows = (dy.to(dev)[:, None] + torch.arange(h, device=dev))[:, :, None]
        cols = (dx.to(dev)[:, None] + torch.arange(w, device=dev))[:, None, :]
        x = xp.permute(0, 2, 3, 1)[torch.arange(b, device=dev)[:, None, None], rows, cols]
        x = x.permute(0, 3, 1, 2)
    return torch.where(flip.to(dev)[:, None, None, None], x.flip(3), x).contiguous()


def crop_flip(x: torch.Tensor, padding: int, generator: torch.Generator) -> torch.Tensor:
    """Random crop with zero padding and random horizontal flip, per image, batched."""
    return _apply_crop_flip(x, padding, *_crop_flip_params(len(x), padding, generator))


def _epoch_draws(generator: torch.Generator, n: int, shuffle: bool, bounds: list[tuple[int, int]], padding: int,
                 augment: bool, device: torch.device) -> tuple[torch.Tensor, tuple]:
    """An epoch's order and every batch's crop/flip parameters (by position in the epoch),
    on the device in one copy. Drawn from ``generator`` in the order the batches once drew
    them one at a time (the order, then each global batch's dy, dx, flip), so the batches
    are bitwise those of per-batch draws; but no batch copies parameters from the host,
    which would make the host wait for the device at every step."""
    order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
    if not augment or not bounds:
        return order.to(device), (None, None, None)
    draws = [_crop_flip_params(stop - start, padding, generator) for start, stop in bounds]
    parts = [order] + [torch.cat([d[k] for d in draws]).long() for k in range(3) if draws[0][k] is not None]
    packed = torch.cat(parts).to(device)  # the epoch's one host-to-device copy
    order, rest = packed[:n], packed[n:].view(len(parts) - 1, -1)
    dy, dx = (rest[0], rest[1]) if padding > 0 else (None, None)
    return order, (dy, dx, rest[-1].bool())


class DeviceLoader:
    """Batches of (x, y, q or None) from tensors already on the device.

    The order and augmentation of epoch e depend only on (seed, e), so a run resumed
    at an epoch boundary sees exactly the batches an uninterrupted run would. With
    ``world_size`` > 1, process ``rank`` gets its slice of every global batch; the global
    batches (and each image's crop/flip) are the same for any world size. No host
    synchronisation per batch: the epoch's order and crop/flip parameters reach the
    device in one copy when the epoch starts.
    """

    def __init__(
        self,
        split: Split,
        batch_size: int,
        q: torch.Tensor | None = None,
        shuffle: bool = True,
        crop_padding: int = 0,
        augment: bool = True,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ):
        if q is not None and len(q) != len(split):
            raise ValueError(f"{len(q)} soft labels for {len(split)} training images")
        check_rank(rank, world_size)
        self.split, self.q = split, q
        self.batch_size, self.shuffle, self.augment = batch_size, shuffle, augment
        self.padding, self.seed = crop_padding, seed
        self.rank, self.world_size = rank, world_size
        self.bounds = batch_bounds(len(split), batch_size, world_size)

    def __len__(self) -> int:
        return len(self.bounds)

    def epoch(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        # drawn for each whole global batch: a shard's augmentation ignores world size
        order, params = _epoch_draws(g, len(self.split), self.shuffle, self.bounds, self.padding, self.augment,
                                     self.split.x.device)
        for start, stop in self.bounds:
            lo, hi = shard(start, stop, self.rank, self.world_size)
            idx = order[lo:hi]
            x = self.split.x[idx]
            if self.augment:
                x = _apply_crop_flip(x, self.padding, *(p if p is None else p[lo:hi] for p in params))
            yield x, self.split.y[idx], None if self.q is None else self.q[idx]


class Loader:
    """A data set opened by its source kind's loader: what ``ltd.data`` asks of it. The
    defaults hold a split in memory on the device (a DeviceLoader), as every source but
    imagefolder does; a new kind defines ``load`` and ``source_facts`` at least.
    ``kind``: its record (ltd.sources.Source); ``cfg``: its settings (the config's
    section, defaults laid under); ``data_dir``: where downloads go."""

    def __init__(self, kind: sources.Source, data: Data):
        self.kind, self.cfg, self.data_dir = kind, data.section, data.data_dir

    def prepare(self) -> None:
        """Fetch, build or unpack what the source reads, once (prepare_data)."""

    def load(self, split: str) -> Split:
        raise NotImplementedError

    def num_classes(self) -> int:
        return self.kind.classes

    def source_facts(self) -> dict:
        """What the source holds before any split (images per folder...), for describe_source."""
        raise NotImplementedError

    def split_facts(self, split: str) -> tuple[np.ndarray, int, list[int], dict]:
        """A split's positions in the source, its size, its images' shape and extra facts."""
        s = self.load(split)
        return s.indices, len(s), list(s.x.shape[1:]), {}

    def facts(self) -> dict:
        """Facts of the whole source that every result's provenance records."""
        return {}

    def train_loader(self, device, batch_size, q, seed, rank, world_size):
        split = self.load("train").to(device)
        return DeviceLoader(split, batch_size, q=q, crop_padding=self.cfg["crop_padding"],
                            seed=seed, rank=rank, world_size=world_size)

    def eval_batches(self, split, device, batch_size, take):
        s = take(self.load(split)).to(device)
        for sl in batches(s.x, batch_size):
            yield s.x[sl], s.y[sl]


def batches(x: torch.Tensor, batch_size: int) -> Iterator[slice]:
    for i in range(0, len(x), batch_size):
        yield slice(i, i + batch_size)
