"""Data sets as tensors in [0, 1]: in memory on the training device, or streamed from an
ImageFolder tree (ImageNet).

The dataset config section names its kind with ``source`` (``ltd.sources.SOURCES``, the
registry: each kind's record names its loader class here, a ``Loader``):

* ``cifar10`` / ``cifar100``: torchvision's (downloaded into ``data_dir`` on first use).
* ``digits``: the offline demo, scikit-learn's ``load_digits`` (1,797 real 8x8
  handwritten digits that ship inside the installed package), upsampled and repeated to
  3 channels so that the CIFAR code path (models, crop+flip, attacks) is the one exercised.
* ``cifarfolder``: any small-image data set kept as image files, in CIFAR's recipe:
  ``path`` holds ``train/<class>/*`` and ``test/<class>/*`` (JPEG, PNG, ...), all of one
  size, decoded once into memory as stored (no resize; RGB) and then handled exactly as
  torchvision's CIFAR (crop with ``crop_padding`` + flip on the device, [0, 1] inputs).
  Labels follow ``classes`` if given, else the sorted folder names (for CIFAR-10's
  folders airplane ... truck that is CIFAR-10's own order). ``prepare_data`` unpacks
  ``archive`` (a .tar.gz, checked against ``archive_sha256``) into ``path`` first.
* ``imagefolder``: ``path`` (as any workflow path: relative to the working directory) holds
  ``train/<class>/*`` and ``val/<class>/*`` in torchvision's ImageFolder layout.
  Training: RandomResizedCrop(image_size) + flip; evaluation: Resize(image_size*256/224)
  + CenterCrop(image_size), as torchvision's references/classification; no normalisation.

In-memory sources work like airbench: the whole split sits on the device and crop/flip
run there on whole batches. ImageNet does not fit, so ``make_train_loader`` returns a
streaming loader with the same interface (``len``, ``epoch(e)`` -> (x, y, q) on the
device) and ``eval_batches`` streams evaluation data for any source.

The public functions take a data set as a job's spec holds it, one ``ltd.jobspec.Data``
(``Data.of`` wraps a bare section); only the per-kind loaders see its section and data_dir.
The file-based kinds (cifarfolder, imagefolder) are in ``ltd.image_files``.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import importlib
import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F

from . import sources
from .jobspec import Data
from .sources import split_sizes

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


@functools.cache
def _loader_class(path: str) -> type:
    module, name = path.split(":")
    return getattr(importlib.import_module(module), name)


def loader(cfg: dict) -> "Loader":
    """The loader of a data set's source kind, as its registry record names it."""
    kind = sources.get(cfg.get("source"))
    return _loader_class(kind.loader)(kind)


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


# --- in-memory sources ------------------------------------------------------------------


def digits_file() -> Path:
    """The digits as scikit-learn ships them (sklearn/datasets/data/digits.csv.gz: 64 pixel
    values and the label per line), found without importing scikit-learn."""
    spec = importlib.util.find_spec("sklearn")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("the digits source needs scikit-learn installed (requirements.txt)")
    return Path(spec.submodule_search_locations[0]) / "datasets" / "data" / "digits.csv.gz"


@functools.cache
def _digits_raw() -> tuple[np.ndarray, np.ndarray]:
    """(images 1797 x 8 x 8 in 0..16, labels), exactly as ``sklearn.datasets.load_digits``
    reads them (np.loadtxt of that file; tests/test_data.py compares the two). Read here
    because importing sklearn.datasets costs 2.4 s of every demo job's start on this
    2-core machine (a third of a short job), for one small CSV file."""
    with gzip.open(digits_file(), mode="rt", encoding="utf-8") as f:
        data = np.loadtxt(f, delimiter=",")
    return data[:, :-1].reshape(-1, 8, 8), data[:, -1].astype(int)


def _digits(image_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    images, target = _digits_raw()
    x = torch.tensor(images, dtype=torch.float32).unsqueeze(1) / 16.0  # values are 0..16
    x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", align_corners=False)
    return x.clamp(0, 1).repeat(1, 3, 1, 1).contiguous(), torch.tensor(target, dtype=torch.int64)


def _cifar(name: str, data_dir: str, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
    from torchvision import datasets

    cls = getattr(datasets, name.upper())  # CIFAR10, CIFAR100
    ds = cls(root=data_dir, train=train, download=True)
    x = torch.from_numpy(ds.data).permute(0, 3, 1, 2).float().div_(255)
    return x.contiguous(), torch.tensor(ds.targets, dtype=torch.int64)


def load_split(data: Data, split: str) -> Split:
    """``split`` in train | val | test, as tensors.

    For a streamed source (imagefolder) this decodes the whole split (evaluation
    transform): meant for test subsets (AutoAttack needs tensors), not for ImageNet's
    training set.
    """
    check_split(split)
    return loader(data.section).load(data.section, data.data_dir, split)


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


def make_train_loader(data: Data, device: torch.device | str, batch_size: int,
                      q: torch.Tensor | None, seed: int, rank: int = 0, world_size: int = 1):
    """The training split's loader: a DeviceLoader for in-memory sources (crop with
    ``crop_padding`` + flip), a StreamLoader for streamed ones (RandomResizedCrop + flip)."""
    return loader(data.section).train_loader(data.section, data.data_dir, device, batch_size, q, seed, rank,
                                             world_size)


def eval_batches(data: Data, split: str, device: torch.device | str, batch_size: int,
                 n: int | None = None, last: bool = False) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(x, y) batches of the first ``n`` (all if None; ``last``: the last ``n``, where the
    students' monitor chooses best.pt apart from the evaluated first images) un-augmented
    images of a split, in split order (so predictions line up with soft labels by
    position); a streamed source streams."""
    def take(s):
        return s if n is None else s.tail(n) if last else s.head(n)

    yield from loader(data.section).eval_batches(data.section, data.data_dir, split, device, batch_size, take)


def num_classes(data: Data) -> int:
    """The record's, for a source of fixed classes; else counted in its class folders."""
    return loader(data.section).num_classes(data.section, data.data_dir)


def prepare(data: Data) -> None:
    """What a source needs before its first job (rules/data.smk, prepare_data): the demo's
    ImageFolder tree built, a cifarfolder's archive unpacked; downloads happen on first read."""
    loader(data.section).prepare(data.section, data.data_dir)


def describe_source(data: Data) -> dict:
    """What a data set's source holds, before any split: classes and images per folder
    (CIFAR: downloaded here if missing; imagefolder: listed, with a fingerprint of the
    file names)."""
    cfg, data_dir = data.section, data.data_dir
    kind = loader(cfg)
    out = {"source": cfg["source"], "num_classes": kind.num_classes(cfg, data_dir), "split_seed": SPLIT_SEED}
    return {**out, **kind.source_facts(cfg, data_dir)}


def describe(data: Data, splits: tuple[str, ...] = ("train", "val", "test")) -> dict:
    """Sizes and a fingerprint of each split: recorded so a result names its data.
    For imagefolder from the file lists alone (no image is decoded)."""
    cfg, data_dir = data.section, data.data_dir
    kind = loader(cfg)
    out = {"source": cfg["source"], "num_classes": kind.num_classes(cfg, data_dir), "split_seed": SPLIT_SEED}
    for split in splits:
        check_split(split)
        s_ix, n, shape, extra = kind.split_facts(cfg, data_dir, split)
        out[split] = {
            "n": n,
            "shape": shape,
            "indices_sha256": hashlib.sha256(np.asarray(s_ix, dtype=np.int64).tobytes()).hexdigest(),
            **extra,
        }
    return {**out, **kind.facts(cfg, data_dir)}


# --- the loaders: one class per source kind (ltd.sources.SOURCES names it) -----------------


class Loader:
    """What ``ltd.data`` asks of a source kind. Its defaults hold a split in memory on the
    device (a DeviceLoader), as every source but imagefolder does; a new kind defines
    ``load`` and ``source_facts`` at least. ``kind``: its record (ltd.sources.Source)."""

    def __init__(self, kind: sources.Source):
        self.kind = kind

    def prepare(self, cfg: dict, data_dir: str) -> None:
        """Fetch, build or unpack what the source reads, once (prepare_data)."""

    def load(self, cfg: dict, data_dir: str, split: str) -> Split:
        raise NotImplementedError

    def num_classes(self, cfg: dict, data_dir: str) -> int:
        return self.kind.classes

    def source_facts(self, cfg: dict, data_dir: str) -> dict:
        """What the source holds before any split (images per folder...), for describe_source."""
        raise NotImplementedError

    def split_facts(self, cfg: dict, data_dir: str, split: str) -> tuple[np.ndarray, int, list[int], dict]:
        """A split's positions in the source, its size, its images' shape and extra facts."""
        s = self.load(cfg, data_dir, split)
        return s.indices, len(s), list(s.x.shape[1:]), {}

    def facts(self, cfg: dict, data_dir: str) -> dict:
        """Facts of the whole source that every result's provenance records."""
        return {}

    def train_loader(self, cfg, data_dir, device, batch_size, q, seed, rank, world_size):
        split = self.load(cfg, data_dir, "train").to(device)
        return DeviceLoader(split, batch_size, q=q, crop_padding=cfg["crop_padding"],
                            seed=seed, rank=rank, world_size=world_size)

    def eval_batches(self, cfg, data_dir, split, device, batch_size, take):
        s = take(self.load(cfg, data_dir, split)).to(device)
        for sl in batches(s.x, batch_size):
            yield s.x[sl], s.y[sl]


class Cifar(Loader):
    """torchvision's CIFAR-10/100 (downloaded into ``data_dir`` on first read)."""

    def load(self, cfg, data_dir, split):
        x, y = _cifar(cfg["source"], data_dir, train=split != "test")
        idx = split_indices(cfg, split, len(y), carve_test=False)
        return Split(x[idx], y[idx], idx)

    def source_facts(self, cfg, data_dir):
        return {split: {"images": len(_cifar(cfg["source"], data_dir, train=split == "train")[1])}
                for split in ("train", "test")}


class Digits(Loader):
    """scikit-learn's digits, upsampled; its test split carved out of its one pool."""

    def load(self, cfg, data_dir, split):
        x, y = _digits(sources.image_size(cfg))
        idx = split_indices(cfg, split, len(y), carve_test=True)
        return Split(x[idx], y[idx], idx)

    def source_facts(self, cfg, data_dir):
        return {"pool": {"images": len(_digits(8)[1])}}


def batches(x: torch.Tensor, batch_size: int) -> Iterator[slice]:
    for i in range(0, len(x), batch_size):
        yield slice(i, i + batch_size)
