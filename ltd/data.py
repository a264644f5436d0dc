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
(``Data.of`` wraps a bare section), and ``open`` gives it to its kind's loader, which holds
its section and data_dir.
The file-based kinds (cifarfolder, imagefolder) are in ``ltd.image_files``.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import importlib.util
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F

from . import sources
from .jobspec import Data
from .loaders import SPLIT_SEED, Loader, Split, check_split, split_indices


def open(data: Data) -> Loader:  # ltd.data.open, as gzip.open: the builtin is not used in this module
    """A data set opened by the loader its source kind's registry record names."""
    kind = sources.get(data.section.get("source"))
    return kind.loader_class()(kind, data)


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
    return open(data).load(split)


def make_train_loader(data: Data, device: torch.device | str, batch_size: int,
                      q: torch.Tensor | None, seed: int, rank: int = 0, world_size: int = 1):
    """The training split's loader: a DeviceLoader for in-memory sources (crop with
    ``crop_padding`` + flip), a StreamLoader for streamed ones (RandomResizedCrop + flip)."""
    return open(data).train_loader(device, batch_size, q, seed, rank, world_size)


def eval_batches(data: Data, split: str, device: torch.device | str, batch_size: int,
                 n: int | None = None, last: bool = False) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(x, y) batches of the first ``n`` (all if None; ``last``: the last ``n``, where the
    students' monitor chooses best.pt apart from the evaluated first images) un-augmented
    images of a split, in split order (so predictions line up with soft labels by
    position); a streamed source streams."""
    def take(s):
        return s if n is None else s.tail(n) if last else s.head(n)

    yield from open(data).eval_batches(split, device, batch_size, take)


def num_classes(data: Data) -> int:
    """The record's, for a source of fixed classes; else counted in its class folders."""
    return open(data).num_classes()


def prepare(data: Data) -> None:
    """What a source needs before its first job (rules/data.smk, prepare_data): the demo's
    ImageFolder tree built, a cifarfolder's archive unpacked; downloads happen on first read."""
    open(data).prepare()


def describe_source(data: Data) -> dict:
    """What a data set's source holds, before any split: classes and images per folder
    (CIFAR: downloaded here if missing; imagefolder: listed, with a fingerprint of the
    file names)."""
    opened = open(data)
    return {**_header(opened), **opened.source_facts()}


def _header(opened: Loader) -> dict:
    return {"source": opened.cfg["source"], "num_classes": opened.num_classes(), "split_seed": SPLIT_SEED}


def describe(data: Data, splits: tuple[str, ...] = ("train", "val", "test")) -> dict:
    """Sizes and a fingerprint of each split: recorded so a result names its data.
    For imagefolder from the file lists alone (no image is decoded)."""
    opened = open(data)
    out = _header(opened)
    for split in splits:
        check_split(split)
        s_ix, n, shape, extra = opened.split_facts(split)
        out[split] = {
            "n": n,
            "shape": shape,
            "indices_sha256": hashlib.sha256(np.asarray(s_ix, dtype=np.int64).tobytes()).hexdigest(),
            **extra,
        }
    return {**out, **opened.facts()}


# --- the in-memory kinds' loaders (ltd.sources.SOURCES names each; the file-based ones are in
# ltd.image_files) ----------------------------------------------------------------------------


class Cifar(Loader):
    """torchvision's CIFAR-10/100 (downloaded into ``data_dir`` on first read)."""

    def load(self, split):
        x, y = _cifar(self.cfg["source"], self.data_dir, train=split != "test")
        idx = split_indices(self.cfg, split, len(y), carve_test=False)
        return Split(x[idx], y[idx], idx)

    def source_facts(self):
        return {split: {"images": len(_cifar(self.cfg["source"], self.data_dir, train=split == "train")[1])}
                for split in ("train", "test")}


class Digits(Loader):
    """scikit-learn's digits, upsampled; its test split carved out of its one pool."""

    def load(self, split):
        x, y = _digits(sources.image_size(self.cfg))
        idx = split_indices(self.cfg, split, len(y), carve_test=True)
        return Split(x[idx], y[idx], idx)

    def source_facts(self):
        return {"pool": {"images": len(_digits(8)[1])}}
