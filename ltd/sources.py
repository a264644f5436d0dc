"""The data-source registry: every kind of data set's ``source``, defined once.

A source kind is its name (as configs write ``datasets.<d>.source``), its images per
split and classes where fixed, whether torchvision downloads it or it reads image files
from ``path``, whether its images stream from disk (DataLoader workers) rather than sit
in memory, its loader (a class of ``ltd.data``, named here as ``module:Class`` so this
module stays torch-free), the table note that says which images a result comes from,
and the budget's assumptions. The schema's ``source`` enum, ``ltd.data``, the budget,
the config checks and the rules all read this table (tests/test_data.py checks that the
schema's enum lists its names).

Adding a source kind = one record below + its loader class in ``ltd/data.py`` (or
``ltd/image_files.py`` for a kind kept as files; a subclass of ``ltd.loaders.Loader``) + its
name in config/schema.yaml's ``source`` enum;
docs/data.md "Adding a data source" says how.

Besides the fixed sources (torchvision's CIFAR, ImageNet's ImageFolder tree, the demo's
digits) a ``cifarfolder`` source reads any small-image data set kept as image files in
CIFAR's recipe: ``<path>/train/<class>/*`` and ``<path>/test/<class>/*``, decoded once
into memory as stored (no resize). Its numbers come from listing the folder, or, before
``prepare_data`` unpacked it, from listing its ``archive``.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import os
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .schema import dataset_defaults


@dataclass(frozen=True)
class Source:
    name: str
    loader: str  # "module:Class" of the loader (an ltd.loaders.Loader), imported on first use
    note: Callable[[dict], str]  # which images a result's numbers come from (table notes), from the section
    # {"train", "test"} images as the source ships them (a pool source: its one pool, as
    # "train"); None where they are counted from its files.
    sizes: dict[str, int] | None = None
    classes: int | None = None  # None where counted from its class folders
    downloaded: bool = False  # torchvision downloads it into data_dir (rules/data.smk: where Snakemake runs)
    file_based: bool = False  # reads image files under its `path` (ltd.checks looks for them before any job)
    streamed: bool = False  # decoded by `workers` DataLoader processes per training process, not held in memory
    # One pool: a fixed test split of `test_size` (default: this) is carved out of it, so
    # test_size shapes its train and val splits too (and their identity).
    carved_test: int | None = None
    buildable: bool = False  # may be written from another, in-memory source first (`build_from`: the demo)
    robustbench: bool = False  # RobustBench's model zoo has checkpoints for it, under its name
    # What stops a data set of this kind before any job, from (name, section), or None
    # (ltd.checks.missing_data): its files, where it reads files.
    problem: Callable[[str, dict], str | None] | None = None
    # {train, test, classes} counted in its files for the budget (FileNotFoundError while
    # they are not there); None: priced as `priced_as` without looking.
    count: Callable[[dict], dict[str, int]] | None = None
    priced_as: dict[str, int] | None = None  # the budget's {train, test, classes} where not counted
    # The budget's (clean, robust) accuracy: how many test images AutoAttack keeps
    # attacking; roughly the paper's and RobustBench's figures.
    accuracy: tuple[float, float] = (0.85, 0.57)

    def loader_class(self) -> type:
        """The class ``loader`` names: imported here, on first use, so that the registry
        stays torch-free for the budget and the checks."""
        return _import(self.loader)


@functools.cache
def _import(path: str) -> type:
    module, name = path.split(":")
    return getattr(importlib.import_module(module), name)


# ---- cifarfolder: a CIFAR-style tree of image files ------------------------------------

FOLDER_SPLITS = ("train", "test")  # the sub-folders: "train" serves the train and val splits
# torchvision's IMG_EXTENSIONS (torchvision.datasets.folder), here without importing torch
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
LOSSY_SUFFIXES = (".jpg", ".jpeg", ".webp")  # lossy encodings: pixels differ from the originals
UNPACKED_MARK = ".unpacked_from.json"  # prepare_data writes it into a folder it unpacked


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _stamp(path: str | Path) -> tuple[int, int]:
    st = os.stat(path)
    return st.st_ino, st.st_mtime_ns


def folder_classes(cfg: dict) -> list[str]:
    """The class folders in label order: ``classes`` if the config lists them (checked
    against train/'s folders), else train/'s folder names sorted (CIFAR-10's archive:
    airplane ... truck, which is CIFAR-10's own label order)."""
    root = Path(cfg["path"]) / "train"
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such folder (a cifarfolder source holds train/<class>/ and test/<class>/)")
    found = sorted(e.name for e in os.scandir(root) if e.is_dir())
    classes = list(cfg.get("classes") or found)
    if sorted(classes) != found:
        raise ValueError(f"classes of {root}: the config lists {classes}, the folder holds {found}; "
                         "list every class folder once, in label order")
    return classes


def folder_files(cfg: dict, sub: str) -> tuple[tuple[str, ...], tuple[int, ...]]:
    """Image files of ``<path>/<sub>`` (train or test) and their labels, by class in label
    order, then by file name (the order torchvision's ImageFolder lists them in)."""
    root = Path(cfg["path"]) / sub
    classes = tuple(folder_classes(cfg))
    # cached: listing 60,000 files takes a while; the key holds the folders' inodes and
    # mtimes (a file added to or removed from a class folder changes that folder's)
    stamps = [_stamp(d) for d in (root, *(root / c for c in classes)) if d.is_dir()]
    return _folder_files(str(root), classes, tuple(stamps))


@functools.lru_cache(maxsize=8)
def _folder_files(root: str, classes: tuple[str, ...], _stamps) -> tuple[tuple[str, ...], tuple[int, ...]]:
    files: list[str] = []
    labels: list[int] = []
    extra = sorted(e.name for e in os.scandir(root) if e.is_dir() and e.name not in classes)
    if extra:
        raise ValueError(f"{root}: class folders {extra} are not among train/'s classes {list(classes)}")
    for label, c in enumerate(classes):
        d = os.path.join(root, c)
        if not os.path.isdir(d):
            continue  # a class without test images
        names = sorted(n for n in os.listdir(d) if n.lower().endswith(IMAGE_SUFFIXES))
        files += [os.path.join(d, n) for n in names]
        labels += [label] * len(names)
    if not files:
        raise FileNotFoundError(f"no images ({', '.join(IMAGE_SUFFIXES)}) under {root}/<class>/")
    return tuple(files), tuple(labels)


@functools.lru_cache(maxsize=4)
def _archive_listing(archive: str, *_stamp) -> dict:
    """Images per split and the class folders, from an archive's member names."""
    counts = {s: 0 for s in FOLDER_SPLITS}
    classes: set[str] = set()
    with tarfile.open(archive) as tar:
        for m in tar:
            parts = m.name.lstrip("./").split("/")
            if m.isfile() and len(parts) >= 3 and parts[-3] in counts and parts[-1].lower().endswith(IMAGE_SUFFIXES):
                counts[parts[-3]] += 1
                if parts[-3] == "train":
                    classes.add(parts[-2])
    return {**counts, "classes": len(classes)}


def folder_present(cfg: dict) -> bool:
    """Whether the tree is unpacked: ``path`` has train/ and test/."""
    return all((Path(cfg["path"]) / s).is_dir() for s in FOLDER_SPLITS)


def folder_problem(name: str, cfg: dict) -> str | None:
    """What stops a ``cifarfolder`` data set before any job (for ltd.checks): no tree at
    ``path`` and no ``archive`` to unpack there. None when it can run."""
    path, archive = cfg.get("path"), cfg.get("archive")
    if archive and not Path(archive).is_file():
        return (f"datasets.{name}.archive = {archive!r}: no such file (relative paths start at the working "
                "directory, the repository root); fix the path, or remove `archive` and unpack the images "
                f"into datasets.{name}.path yourself")
    if archive and Path(path).exists() and not (Path(path) / UNPACKED_MARK).is_file():
        return (f"datasets.{name}.path = {path!r} holds files that were not unpacked from datasets.{name}.archive; "
                "prepare_data never overwrites them: remove `archive` to read the folder as it is, or move the "
                "folder away")
    if not archive and not folder_present(cfg):
        return (f"datasets.{name}.path = {path!r}: no train/ and test/ folders there (a cifarfolder source reads "
                f"{path}/train/<class>/* and {path}/test/<class>/*); unpack the images there, or give "
                f"datasets.{name}.archive: a .tar.gz that prepare_data unpacks into it")
    return None


def folder_sizes(cfg: dict) -> dict[str, int]:
    """{train, test, classes} of a cifarfolder source: counted in its folder, or in its
    archive before it is unpacked."""
    if folder_present(cfg):
        n = {s: len(folder_files(cfg, s)[0]) for s in FOLDER_SPLITS}
        return {**n, "classes": len(folder_classes(cfg))}
    if cfg.get("archive") and Path(cfg["archive"]).is_file():
        listing = _archive_listing(str(cfg["archive"]), *_stamp(cfg["archive"]))
        return {**listing, "classes": len(cfg["classes"]) if cfg.get("classes") else listing["classes"]}
    raise FileNotFoundError(f"{cfg['path']}: no train/ and test/ folders, and no archive to count the images in")


# ---- imagefolder: ImageNet's tree, streamed ---------------------------------------------

def tree_problem(name: str, cfg: dict) -> str | None:
    """What stops an ``imagefolder`` data set before any job (for ltd.checks): no
    train/ and val/ under ``path``, unless it is built from another source (the demo's)."""
    if cfg.get("build_from"):
        return None
    root = Path(cfg["path"])
    missing = [s for s in ("train", "val") if not (root / s).is_dir()]
    if not missing:
        return None
    return (f"datasets.{name}.path = {cfg['path']!r}: "
            + ("no such folder" if not root.is_dir() else f"no {' or '.join(m + '/' for m in missing)} folder in it")
            + " (ImageFolder layout: train/<class>/*, val/<class>/*; relative to the working directory); put the "
            "data set there, or point `path` at it")


# ---- the registry -------------------------------------------------------------------------

def _cifar_note(cfg: dict) -> str:
    return f"Data: torchvision's {cfg['source'].upper().replace('CIFAR', 'CIFAR-')} (the original pixels)"


def _folder_note(cfg: dict) -> str:
    where = f"image files under {cfg['path']}" + (f" (unpacked from {Path(cfg['archive']).name})"
                                                   if cfg.get("archive") else "")
    try:
        lossy = folder_present(cfg) and any(f.lower().endswith(LOSSY_SUFFIXES)
                                            for s in FOLDER_SPLITS for f in folder_files(cfg, s)[0])
    except (OSError, ValueError):
        lossy = None
    text = f"Data: {where}, decoded as stored"
    if lossy:
        text += ("; JPEG is lossy: their pixels differ slightly from the original data set's, so these numbers are "
                 "close to, not equal to, numbers on it")
    elif lossy is None:
        text += " (folder not found when this table was rendered: whether its encoding is lossy is not known)"
    return text


# The side of CIFAR's images, and of the digits upsampled where `image_size` is unset.
IMAGE_SIZE = 32
_CIFAR10 = {"train": 50_000, "test": 10_000}

SOURCES: dict[str, Source] = {s.name: s for s in [
    Source("cifar10", "ltd.data:Cifar", _cifar_note, sizes=_CIFAR10, classes=10, downloaded=True,
           robustbench=True),
    Source("cifar100", "ltd.data:Cifar", _cifar_note, sizes=_CIFAR10, classes=100, downloaded=True,
           robustbench=True, accuracy=(0.64, 0.31)),
    # The offline demo: scikit-learn's digits, one pool of 1,797 images in the installed
    # package; ltd.data carves a fixed test split of `test_size` (this default: a
    # digits-only one, so not the schema's) out of it.
    Source("digits", "ltd.data:Digits", lambda cfg: "Data: scikit-learn's digits (8x8, upsampled)",
           sizes={"train": 1_797}, classes=10, carved_test=397, accuracy=(0.95, 0.60)),
    # Priced as CIFAR-10's images while its files are not there yet (a plan made before
    # the data is on disk, which the plan names: ltd.checks.missing_data); accuracy: CIFAR-10's.
    Source("cifarfolder", "ltd.image_files:CifarFolder", _folder_note, file_based=True, problem=folder_problem,
           count=folder_sizes, priced_as={**_CIFAR10, "classes": 10}),
    # ImageNet-1k, priced without listing its 1.3 million files; ltd.data reads the
    # number of classes from its train/ folder.
    Source("imagefolder", "ltd.image_files:ImageFolder", lambda cfg: f"Data: image files under {cfg['path']} (ImageFolder)",
           file_based=True, streamed=True, buildable=True, problem=tree_problem,
           priced_as={"train": 1_281_167, "test": 50_000, "classes": 1000}, accuracy=(0.65, 0.40)),
]}


def get(name: str) -> Source:
    try:
        return SOURCES[name]
    except (KeyError, TypeError):
        raise ValueError(f"dataset source: unknown data set {name!r}; expected one of {list(SOURCES)}") from None


def split_sizes(cfg: dict, counts: dict | None = None) -> dict[str, int | None]:
    """How many images each split of a data set has: {"train", "val", "test"}; None where
    its source's count is unknown. The budget, the config checks and ltd.data's index
    selection all take their numbers from here. ``cfg``: the data set's section (as written:
    its schema defaults are laid under here, as ltd.experiments.dataset_cfg does; a
    `build_from` section reaches here unfilled); ``counts``: {"train", "test"} images of the
    sets the splits are drawn from, where counted (the files, the data loaded; a pool
    source: its one pool, as "train"), else the source's own ``sizes`` where fixed.

    A pool source (digits) carves a fixed ``test_size`` out of its pool; any other
    source's test split is
    its first ``test_size`` test images (all if unset). val is ``val_size`` images held
    out of the training set; train is the rest, its first ``train_size`` if set."""
    cfg, kind = {**dataset_defaults(), **cfg}, get(cfg["source"])
    if kind.carved_test is not None:
        test = cfg.get("test_size", kind.carved_test)
        pool = (counts or {}).get("train", kind.sizes["train"]) - test
    else:
        counts = kind.sizes if counts is None and kind.sizes else counts or {}
        pool, test = counts.get("train"), counts.get("test")
        if test is not None and cfg.get("test_size"):
            test = min(test, cfg["test_size"])
    train = None if pool is None else pool - cfg["val_size"]
    if train is not None and cfg.get("train_size"):
        train = min(train, cfg["train_size"])
    return {"train": train, "val": cfg["val_size"], "test": test}


def image_size(cfg: dict) -> int:
    """The side of a data set's images: its ``image_size`` (digits: upsampled to it;
    imagefolder: the crop), else CIFAR's 32."""
    return int(cfg.get("image_size") or IMAGE_SIZE)


def sizes(cfg: dict) -> dict[str, int]:
    """{train, test, classes} of a data set's source, for the budget: fixed, counted in
    its files (a cifarfolder), or its ``priced_as``; a cifarfolder whose files are not
    there yet takes the classes its config lists."""
    kind = get(cfg["source"])
    if kind.sizes is not None:
        return {**kind.sizes, "classes": kind.classes}
    if kind.count is None:
        return dict(kind.priced_as)
    try:
        return kind.count(cfg)
    except FileNotFoundError:
        return {**kind.priced_as, **({"classes": len(cfg["classes"])} if cfg.get("classes") else {})}


def describe_note(cfg: dict) -> str:
    """Which images a result's numbers come from, for table notes (torch-free)."""
    return get(cfg["source"]).note(cfg)
