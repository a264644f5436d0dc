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
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import json
import os
import shutil
import tarfile
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F

from . import sources
from .jobspec import Data
from .sources import split_sizes

SPLIT_SEED = 0  # fixed: the train/val(/test for digits) split never depends on the run seed
RESIZE_RATIO = 256 / 224  # evaluation resizes to image_size * 256/224, then center-crops


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


@dataclass
class FileSplit:
    """A split of an ImageFolder tree: image files, not pixels."""

    files: list[str]
    y: torch.Tensor  # int64, N
    indices: np.ndarray  # positions in the folder's sorted file list (train/ or val/)
    folder: str  # the train/ or val/ directory the files lie in

    def __len__(self) -> int:
        return len(self.y)

    def head(self, n: int) -> "FileSplit":
        return FileSplit(self.files[:n], self.y[:n], self.indices[:n], self.folder)

    def tail(self, n: int) -> "FileSplit":
        k = max(0, len(self) - n)
        return FileSplit(self.files[k:], self.y[k:], self.indices[k:], self.folder)


@functools.cache
def _loader_class(path: str) -> type:
    module, name = path.split(":")
    return getattr(importlib.import_module(module), name)


def loader(cfg: dict) -> "Loader":
    """The loader of a data set's source kind, as its registry record names it."""
    kind = sources.get(cfg.get("source"))
    return _loader_class(kind.loader)(kind)


def _check_split(split: str) -> None:
    if split not in ("train", "val", "test"):
        raise ValueError(f"unknown split {split!r}; expected train, val or test")


def _indices(cfg: dict, split: str, n: int, carve_test: bool, shuffle_test: bool = False) -> np.ndarray:
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


def _digits(image_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0  # values are 0..16
    x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", align_corners=False)
    return x.clamp(0, 1).repeat(1, 3, 1, 1).contiguous(), torch.tensor(d.target, dtype=torch.int64)


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
    _check_split(split)
    return loader(data.section).load(data.section, data.data_dir, split)


def _folder_split(cfg: dict, split: str) -> tuple[list[str], list[int], np.ndarray]:
    """A cifarfolder split's files, labels and positions in its folder's listing. test/
    is listed class by class, so its test split is a fixed permutation: the first
    ``n_examples`` an evaluation takes cover every class, as in CIFAR's own test set."""
    files, labels = sources.folder_files(cfg, "test" if split == "test" else "train")
    idx = _indices(cfg, split, len(files), carve_test=False, shuffle_test=True)
    return [files[i] for i in idx], [labels[i] for i in idx], idx


def _decode_one(path: str) -> torch.Tensor:
    """One image file as uint8 3 x H x W, RGB (a grey or palette image is converted)."""
    from PIL import Image

    with Image.open(path) as im:
        return torch.from_numpy(np.asarray(im.convert("RGB")).copy()).permute(2, 0, 1)


def _decode(files: list[str], size: int | None) -> torch.Tensor:
    """Image files as one uint8 tensor N x 3 x H x W, as stored (never resized): every
    image must have the first one's size (and ``size``, if the config gives one).
    Decoded by PIL in a few threads (its decoders release the GIL), in file order."""
    from concurrent.futures import ThreadPoolExecutor

    if not files:
        return torch.empty(0, 3, size or 32, size or 32, dtype=torch.uint8)
    first = _decode_one(files[0])
    h, w = first.shape[1:]
    if size is not None and (h, w) != (size, size):
        raise ValueError(f"{files[0]}: {w}x{h} pixels, but image_size is {size}; a cifarfolder source is never "
                         "resized: remove image_size or give the size the images have")
    out = torch.empty(len(files), 3, h, w, dtype=torch.uint8)

    def chunk(start: int) -> None:
        for i in range(start, min(start + 1024, len(files))):
            img = _decode_one(files[i])
            if img.shape != first.shape:
                raise ValueError(f"{files[i]}: {img.shape[2]}x{img.shape[1]} pixels, but {files[0]} has {w}x{h}; "
                                 f"a cifarfolder source needs images of one size (it never resizes)")
            out[i] = img

    with ThreadPoolExecutor(min(8, os.cpu_count() or 1)) as pool:
        list(pool.map(chunk, range(0, len(files), 1024)))  # list(): re-raises a chunk's error
    return out


# --- ImageFolder ------------------------------------------------------------------------


def _root(cfg: dict, data_dir: str) -> Path:
    return Path(cfg["path"])  # a workflow path like any other; data_dir is where downloads go


def _scan(root: str, sub: str) -> tuple[tuple[str, ...], np.ndarray]:
    """Sorted files and labels of root/sub; classes come from root/train so that val/
    uses the same label numbering. Cached: ImageNet's listing takes seconds; the key
    includes the folder's inode and mtime, so a rewritten tree is listed afresh."""
    st = os.stat(os.path.join(root, sub))
    return _scan_cached(root, sub, st.st_ino, st.st_mtime_ns)


@functools.lru_cache(maxsize=8)
def _scan_cached(root: str, sub: str, *_stamp) -> tuple[tuple[str, ...], np.ndarray]:
    from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes, make_dataset

    _, class_to_idx = find_classes(os.path.join(root, "train"))
    samples = make_dataset(os.path.join(root, sub), class_to_idx, IMG_EXTENSIONS, allow_empty=True)
    if not samples:
        raise FileNotFoundError(f"no images under {os.path.join(root, sub)}")
    files, labels = zip(*samples)
    return files, np.asarray(labels, dtype=np.int64)


def file_split(data: Data, split: str) -> FileSplit:
    """The files of an imagefolder split: "test" is val/, train/val are drawn from train/."""
    return _file_split(data.section, data.data_dir, split)


def _file_split(cfg: dict, data_dir: str, split: str) -> FileSplit:
    _check_split(split)
    root = str(_root(cfg, data_dir))
    sub = "val" if split == "test" else "train"
    files, labels = _scan(root, sub)
    idx = _indices(cfg, split, len(files), carve_test=False, shuffle_test=True)
    return FileSplit([files[i] for i in idx], torch.from_numpy(labels[idx]), idx, os.path.join(root, sub))


def train_transform(image_size: int, scale: tuple[float, float] = (0.08, 1.0)):
    """RandomResizedCrop (torchvision's default area range 8-100 %, the ImageNet recipe)
    + flip."""
    from torchvision import transforms as T

    return T.Compose([
        T.RandomResizedCrop(image_size, scale=tuple(scale), interpolation=T.InterpolationMode.BILINEAR),
        T.RandomHorizontalFlip(),
        T.PILToTensor(),
        T.ConvertImageDtype(torch.float),
    ])


def eval_transform(image_size: int):
    from torchvision import transforms as T

    return T.Compose([
        T.Resize(round(image_size * RESIZE_RATIO), interpolation=T.InterpolationMode.BILINEAR),
        T.CenterCrop(image_size),
        T.PILToTensor(),
        T.ConvertImageDtype(torch.float),
    ])


class ImageFiles(torch.utils.data.Dataset):
    """Decodes one image per item; returns (x, label, position in the split).

    A key is a position, or a (position, seed) pair: the random transform then runs under
    that seed, so an image's augmentation depends only on (run seed, epoch, position in the
    epoch), not on which worker or process decodes it.
    """

    def __init__(self, split: FileSplit, transform):
        self.split, self.transform = split, transform

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, key):
        from torchvision.datasets.folder import default_loader

        i, seed = key if isinstance(key, tuple) else (key, None)
        img = default_loader(self.split.files[i])
        if seed is None:
            return self.transform(img), self.split.y[i], i
        with torch.random.fork_rng(devices=[]):  # leave the process's RNG stream alone
            torch.manual_seed(seed)
            return self.transform(img), self.split.y[i], i


# --- training loaders -------------------------------------------------------------------


def _batch_bounds(n: int, batch_size: int, world_size: int) -> list[tuple[int, int]]:
    """Global batches as [start, stop) positions in the epoch's order. A short last batch
    is dropped when it cannot give every process an image."""
    bounds = [(i, min(i + batch_size, n)) for i in range(0, n, batch_size)]
    if bounds:
        last = bounds[-1][1] - bounds[-1][0]
        if last < world_size:
            bounds.pop()
    return bounds


def _shard(start: int, stop: int, rank: int, world_size: int) -> tuple[int, int]:
    """Rank r's contiguous slice of a global batch (sizes differ by at most one)."""
    m = stop - start
    return start + m * rank // world_size, start + m * (rank + 1) // world_size


def _check_rank(rank: int, world_size: int) -> None:
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
        _check_rank(rank, world_size)
        self.split, self.q = split, q
        self.batch_size, self.shuffle, self.augment = batch_size, shuffle, augment
        self.padding, self.seed = crop_padding, seed
        self.rank, self.world_size = rank, world_size
        self.bounds = _batch_bounds(len(split), batch_size, world_size)

    def __len__(self) -> int:
        return len(self.bounds)

    def epoch(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        # drawn for each whole global batch: a shard's augmentation ignores world size
        order, params = _epoch_draws(g, len(self.split), self.shuffle, self.bounds, self.padding, self.augment,
                                     self.split.x.device)
        for start, stop in self.bounds:
            lo, hi = _shard(start, stop, self.rank, self.world_size)
            idx = order[lo:hi]
            x = self.split.x[idx]
            if self.augment:
                x = _apply_crop_flip(x, self.padding, *(p if p is None else p[lo:hi] for p in params))
            yield x, self.split.y[idx], None if self.q is None else self.q[idx]


class StreamLoader:
    """DeviceLoader's interface over image files decoded by DataLoader workers.

    Epoch e's order and every image's random crop/flip depend only on (seed, e), so a
    resumed run sees the same batches, whatever the number of workers or processes.
    Soft labels ``q`` are indexed by the image's position in the split (they belong to
    the un-augmented, center-cropped image).
    """

    def __init__(self, split: FileSplit, batch_size: int, transform, device: torch.device | str,
                 q: torch.Tensor | None = None, seed: int = 0, workers: int = 0,
                 rank: int = 0, world_size: int = 1):
        if q is not None and len(q) != len(split):
            raise ValueError(f"{len(q)} soft labels for {len(split)} training images")
        _check_rank(rank, world_size)
        self.split, self.q, self.device = split, q, torch.device(device)
        self.dataset = ImageFiles(split, transform)
        self.seed, self.workers, self.rank, self.world_size = seed, workers, rank, world_size
        self.bounds = _batch_bounds(len(split), batch_size, world_size)

    def __len__(self) -> int:
        return len(self.bounds)

    def epoch(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        order = torch.randperm(len(self.split), generator=g).tolist()
        seeds = torch.randint(2**62, (len(self.split),), generator=g).tolist()  # per position in the epoch
        shards = [[(order[j], seeds[j]) for j in range(*_shard(a, b, self.rank, self.world_size))]
                  for a, b in self.bounds]
        # generator: else DataLoader draws its worker base seed from the global RNG stream
        loader = torch.utils.data.DataLoader(self.dataset, batch_sampler=shards, num_workers=self.workers,
                                             pin_memory=self.device.type == "cuda", generator=torch.Generator())
        for x, y, i in loader:
            # i is pinned (pin_memory): copied without making the host wait
            q = None if self.q is None else self.q[i.to(self.q.device, non_blocking=True)]
            yield x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True), q


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
        _check_split(split)
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
        idx = _indices(cfg, split, len(y), carve_test=False)
        return Split(x[idx], y[idx], idx)

    def source_facts(self, cfg, data_dir):
        return {split: {"images": len(_cifar(cfg["source"], data_dir, train=split == "train")[1])}
                for split in ("train", "test")}


class Digits(Loader):
    """scikit-learn's digits, upsampled; its test split carved out of its one pool."""

    def load(self, cfg, data_dir, split):
        x, y = _digits(sources.image_size(cfg))
        idx = _indices(cfg, split, len(y), carve_test=True)
        return Split(x[idx], y[idx], idx)

    def source_facts(self, cfg, data_dir):
        return {"pool": {"images": len(_digits(8)[1])}}


class CifarFolder(Loader):
    """Image files in CIFAR's recipe, decoded once into memory as stored."""

    def prepare(self, cfg, data_dir):
        if cfg.get("archive"):
            unpack_archive(cfg)

    def load(self, cfg, data_dir, split):
        files, labels, idx = _folder_split(cfg, split)
        x = _decode(files, cfg.get("image_size"))
        return Split(x.float().div_(255), torch.tensor(labels, dtype=torch.int64), idx)

    def num_classes(self, cfg, data_dir):
        return len(sources.folder_classes(cfg))

    def source_facts(self, cfg, data_dir):
        out = _folder_facts(cfg)
        for sub in sources.FOLDER_SPLITS:
            files, _ = sources.folder_files(cfg, sub)
            formats: dict[str, int] = {}
            for f in files:
                formats[Path(f).suffix.lower()] = formats.get(Path(f).suffix.lower(), 0) + 1
            out[sub] = {"images": len(files), "formats": formats,
                        "files_sha256": _names_sha256(files, Path(cfg["path"]) / sub)}
        return out

    def split_facts(self, cfg, data_dir, split):  # from the file list and one decoded image
        files, _, s_ix = _folder_split(cfg, split)
        shape = list(_decode(files[:1], cfg.get("image_size")).shape[1:])
        sub = "test" if split == "test" else "train"
        return s_ix, len(files), shape, {"files_sha256": _names_sha256(files, Path(cfg["path"]) / sub)}

    def facts(self, cfg, data_dir):
        return _folder_facts(cfg)


class ImageFolder(Loader):
    """ImageNet's tree, streamed: decoded by DataLoader workers, never held whole."""

    def prepare(self, cfg, data_dir):
        if cfg.get("build_from") and not Path(cfg["path"]).exists():
            write_image_folder(Data.of(cfg["build_from"], data_dir), cfg["path"])

    def load(self, cfg, data_dir, split):
        fs, size = _file_split(cfg, data_dir, split), cfg["image_size"]
        xs, ys = [torch.empty(0, 3, size, size)], [torch.empty(0, dtype=torch.int64)]
        for x, y in self.eval_batches(cfg, data_dir, split, "cpu", 256, lambda s: s):
            xs.append(x)
            ys.append(y)
        return Split(torch.cat(xs), torch.cat(ys), fs.indices)

    def num_classes(self, cfg, data_dir):
        from torchvision.datasets.folder import find_classes

        return len(find_classes(_root(cfg, data_dir) / "train")[0])

    def source_facts(self, cfg, data_dir):
        root, out = str(_root(cfg, data_dir)), {}
        for sub in ("train", "val"):
            files, _ = _scan(root, sub)
            rel = "\n".join(os.path.relpath(f, os.path.join(root, sub)) for f in files)
            out[sub] = {"images": len(files), "files_sha256": hashlib.sha256(rel.encode()).hexdigest()}
        return {**out, "path": root}

    def split_facts(self, cfg, data_dir, split):  # from the file list alone
        fs = _file_split(cfg, data_dir, split)
        rel = "\n".join(os.path.relpath(f, fs.folder) for f in fs.files)  # class/file, location-free
        return (fs.indices, len(fs), [3, cfg["image_size"], cfg["image_size"]],
                {"files_sha256": hashlib.sha256(rel.encode()).hexdigest()})

    def facts(self, cfg, data_dir):
        return {"path": str(_root(cfg, data_dir))}

    def train_loader(self, cfg, data_dir, device, batch_size, q, seed, rank, world_size):
        transform = train_transform(cfg["image_size"], cfg["crop_scale"])
        return StreamLoader(_file_split(cfg, data_dir, "train"), batch_size, transform,
                            device, q, seed=seed, workers=cfg["workers"],
                            rank=rank, world_size=world_size)

    def eval_batches(self, cfg, data_dir, split, device, batch_size, take):
        fs = take(_file_split(cfg, data_dir, split))
        device = torch.device(device)
        loader = torch.utils.data.DataLoader(ImageFiles(fs, eval_transform(cfg["image_size"])),
                                             batch_size=batch_size, num_workers=cfg["workers"],
                                             pin_memory=device.type == "cuda",
                                             generator=torch.Generator())  # leave the global RNG alone
        for x, y, _ in loader:
            yield x.to(device, non_blocking=True), y.to(device, non_blocking=True)


def _names_sha256(files, folder) -> str:
    """A fingerprint of the files' names (class/file), wherever the folder lies."""
    return hashlib.sha256("\n".join(os.path.relpath(f, folder) for f in files).encode()).hexdigest()


def _folder_facts(cfg: dict) -> dict:
    """Where a cifarfolder's images come from, for every result's provenance."""
    files = [f for s in sources.FOLDER_SPLITS for f in sources.folder_files(cfg, s)[0]]
    out = {"path": str(cfg["path"]), "classes": sources.folder_classes(cfg),
           "lossy": any(f.lower().endswith(sources.LOSSY_SUFFIXES) for f in files),
           "note": sources.describe_note(cfg)}
    mark = Path(cfg["path"]) / sources.UNPACKED_MARK
    if mark.is_file():  # what prepare_data unpacked here (the archive's own sha256)
        out["archive"] = json.loads(mark.read_text())
    return out


def _extract(archive: Path, dest: Path) -> None:
    """The archive's regular files into ``dest``. By hand rather than tarfile's
    ``extractall(filter="data")``, which took 2-3x as long on CIFAR-10's 60,000 small
    files (its per-member path resolution): the same safety, by accepting only regular
    files and folders whose names are relative and have no '..' (no links, no devices)."""
    made: set[Path] = set()
    with tarfile.open(archive) as tar:
        for m in tar:
            parts = PurePosixPath(m.name).parts
            if m.name.startswith("/") or ".." in parts or not (m.isfile() or m.isdir()):
                raise ValueError(f"{archive}: member {m.name!r} is not a plain file or folder inside the archive")
            if m.isdir():
                continue
            folder = dest.joinpath(*parts[:-1])
            if folder not in made:
                folder.mkdir(parents=True, exist_ok=True)
                made.add(folder)
            with tar.extractfile(m) as src, open(folder / parts[-1], "wb") as out:
                shutil.copyfileobj(src, out)


def unpack_archive(cfg: dict) -> dict:
    """Unpack a cifarfolder's ``archive`` (.tar.gz, .tar, ...) into its ``path``, once.

    The archive is checked against ``archive_sha256`` when the config gives one. It is
    extracted into a temporary sibling of ``path`` (``_extract``), its train/ and test/ (at its top, or
    under its one top folder) are renamed into place, and the folder is marked with the
    archive's name and sha256. A ``path`` unpacked from the same archive is kept; one
    unpacked from another archive is replaced; a folder this did not unpack is left
    alone (an error: it is not the archive's). Returns the mark's contents.
    """
    archive, root = Path(cfg["archive"]), Path(cfg["path"])
    digest = sources.sha256_file(archive)
    want = cfg.get("archive_sha256")
    if want and digest != want.lower():
        raise ValueError(f"{archive}: sha256 {digest}, but archive_sha256 says {want}: not the archive the config "
                         "names (a truncated copy, or another file); fix the file or the checksum")
    record = {"archive": str(archive), "sha256": digest}
    mark = root / sources.UNPACKED_MARK
    if root.exists():
        if not mark.is_file():
            raise FileExistsError(f"{root} exists but was not unpacked from an archive by this workflow: remove "
                                  f"`archive` to read the folder as it is, or move it away to unpack {archive} there")
        if json.loads(mark.read_text()).get("sha256") == digest:
            return record
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.", dir=root.parent))
    try:
        _extract(archive, tmp)
        top = tmp
        if not all((top / s).is_dir() for s in sources.FOLDER_SPLITS):
            dirs = [d for d in tmp.iterdir() if d.is_dir()]
            if len(dirs) != 1 or not all((dirs[0] / s).is_dir() for s in sources.FOLDER_SPLITS):
                raise ValueError(f"{archive}: no train/ and test/ folders at its top or under its one top folder")
            top = dirs[0]
        (top / sources.UNPACKED_MARK).write_text(json.dumps(record))
        if root.exists():
            shutil.rmtree(root)
        top.rename(root)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return record


def write_image_folder(source: Data, root: str | Path) -> Path:
    """Write an in-memory source as PNGs in ImageFolder layout, root/train/<class>/<idx>.png
    (its train split, val_size ignored: the imagefolder config holds out its own) and
    root/val/<class>/<idx>.png (its test split), so the demo's ImageNet table trains from
    real files through the real ImageNet loading code. ``idx`` is the image's position in
    the source. Atomic: written into a temporary sibling, then renamed to ``root``.
    """
    from PIL import Image

    if sources.get(source.section.get("source")).streamed:
        raise ValueError(f"write_image_folder: the source must be an in-memory data set, not {source.section['source']}")
    root = Path(root)
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.", dir=root.parent))
    k = num_classes(source)
    cls_name = [f"{c:0{len(str(k - 1))}d}" for c in range(k)]  # zero-padded: sorted order == label order
    try:
        for split, sub in (("train", "train"), ("test", "val")):
            s = load_split(replace(source, section={**source.section, "val_size": 0}), split)
            width = max(5, len(str(int(s.indices.max()))))
            for c in cls_name:
                (tmp / sub / c).mkdir(parents=True)
            pixels = s.x.mul(255).round_().to(torch.uint8).permute(0, 2, 3, 1).numpy()  # N x H x W x RGB
            for img, label, idx in zip(pixels, s.y.tolist(), s.indices.tolist()):
                Image.fromarray(img).save(tmp / sub / cls_name[label] / f"{idx:0{width}d}.png")
        if root.exists():
            shutil.rmtree(root)
        tmp.rename(root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return root


def batches(x: torch.Tensor, batch_size: int) -> Iterator[slice]:
    for i in range(0, len(x), batch_size):
        yield slice(i, i + batch_size)
