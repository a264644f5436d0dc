"""Sources kept as image files: the ``cifarfolder`` kind (decoded once into memory, then
handled as CIFAR) and the ``imagefolder`` kind (ImageNet's tree, streamed by DataLoader
workers), with what ``prepare_data`` does for them (unpack an archive, write the demo's
ImageFolder tree). Their loaders follow ``ltd.loaders.Loader``; the registry
(``ltd.sources.SOURCES``) names them; ``ltd.data``'s public functions reach them through it.
"""

from __future__ import annotations

import functools
import hashlib
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

from . import sources
from .data import load_split, num_classes
from .jobspec import Data
from .loaders import Loader, Split, batch_bounds, check_rank, check_split, shard, split_indices

RESIZE_RATIO = 256 / 224  # evaluation resizes to image_size * 256/224, then center-crops


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


def _folder_split(cfg: dict, split: str) -> tuple[list[str], list[int], np.ndarray]:
    """A cifarfolder split's files, labels and positions in its folder's listing. test/
    is listed class by class, so its test split is a fixed permutation: the first
    ``n_examples`` an evaluation takes cover every class, as in CIFAR's own test set."""
    files, labels = sources.folder_files(cfg, "test" if split == "test" else "train")
    idx = split_indices(cfg, split, len(files), carve_test=False, shuffle_test=True)
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


def _root(cfg: dict) -> Path:
    return Path(cfg["path"])  # a workflow path like any other (data_dir is where downloads go)


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
    return _file_split(data.section, split)


def _file_split(cfg: dict, split: str) -> FileSplit:
    check_split(split)
    root = str(_root(cfg))
    sub = "val" if split == "test" else "train"
    files, labels = _scan(root, sub)
    idx = split_indices(cfg, split, len(files), carve_test=False, shuffle_test=True)
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
        check_rank(rank, world_size)
        self.split, self.q, self.device = split, q, torch.device(device)
        self.dataset = ImageFiles(split, transform)
        self.seed, self.workers, self.rank, self.world_size = seed, workers, rank, world_size
        self.bounds = batch_bounds(len(split), batch_size, world_size)

    def __len__(self) -> int:
        return len(self.bounds)

    def epoch(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        order = torch.randperm(len(self.split), generator=g).tolist()
        seeds = torch.randint(2**62, (len(self.split),), generator=g).tolist()  # per position in the epoch
        shards = [[(order[j], seeds[j]) for j in range(*shard(a, b, self.rank, self.world_size))]
                  for a, b in self.bounds]
        # generator: else DataLoader draws its worker base seed from the global RNG stream
        loader = torch.utils.data.DataLoader(self.dataset, batch_sampler=shards, num_workers=self.workers,
                                             pin_memory=self.device.type == "cuda", generator=torch.Generator())
        for x, y, i in loader:
            # i is pinned (pin_memory): copied without making the host wait
            q = None if self.q is None else self.q[i.to(self.q.device, non_blocking=True)]
            yield x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True), q


class CifarFolder(Loader):
    """Image files in CIFAR's recipe, decoded once into memory as stored."""

    def prepare(self):
        if self.cfg.get("archive"):
            unpack_archive(self.cfg)

    def load(self, split):
        files, labels, idx = _folder_split(self.cfg, split)
        x = _decode(files, self.cfg.get("image_size"))
        return Split(x.float().div_(255), torch.tensor(labels, dtype=torch.int64), idx)

    def num_classes(self):
        return len(sources.folder_classes(self.cfg))

    def source_facts(self):
        cfg = self.cfg
        out = _folder_facts(cfg)
        for sub in sources.FOLDER_SPLITS:
            files, _ = sources.folder_files(cfg, sub)
            formats: dict[str, int] = {}
            for f in files:
                formats[Path(f).suffix.lower()] = formats.get(Path(f).suffix.lower(), 0) + 1
            out[sub] = {"images": len(files), "formats": formats,
                        "files_sha256": _names_sha256(files, Path(cfg["path"]) / sub)}
        return out

    def split_facts(self, split):  # from the file list and one decoded image
        cfg = self.cfg
        files, _, s_ix = _folder_split(cfg, split)
        shape = list(_decode(files[:1], cfg.get("image_size")).shape[1:])
        sub = "test" if split == "test" else "train"
        return s_ix, len(files), shape, {"files_sha256": _names_sha256(files, Path(cfg["path"]) / sub)}

    def facts(self):
        return _folder_facts(self.cfg)


class ImageFolder(Loader):
    """ImageNet's tree, streamed: decoded by DataLoader workers, never held whole."""

    def prepare(self):
        cfg = self.cfg
        if cfg.get("build_from") and not Path(cfg["path"]).exists():
            write_image_folder(Data.of(cfg["build_from"], self.data_dir), cfg["path"])

    def load(self, split):
        fs, size = _file_split(self.cfg, split), self.cfg["image_size"]
        xs, ys = [torch.empty(0, 3, size, size)], [torch.empty(0, dtype=torch.int64)]
        for x, y in self.eval_batches(split, "cpu", 256, lambda s: s):
            xs.append(x)
            ys.append(y)
        return Split(torch.cat(xs), torch.cat(ys), fs.indices)

    def num_classes(self):
        from torchvision.datasets.folder import find_classes

        return len(find_classes(_root(self.cfg) / "train")[0])

    def source_facts(self):
        root, out = str(_root(self.cfg)), {}
        for sub in ("train", "val"):
            files, _ = _scan(root, sub)
            rel = "\n".join(os.path.relpath(f, os.path.join(root, sub)) for f in files)
            out[sub] = {"images": len(files), "files_sha256": hashlib.sha256(rel.encode()).hexdigest()}
        return {**out, "path": root}

    def split_facts(self, split):  # from the file list alone
        cfg = self.cfg
        fs = _file_split(cfg, split)
        rel = "\n".join(os.path.relpath(f, fs.folder) for f in fs.files)  # class/file, location-free
        return (fs.indices, len(fs), [3, cfg["image_size"], cfg["image_size"]],
                {"files_sha256": hashlib.sha256(rel.encode()).hexdigest()})

    def facts(self):
        return {"path": str(_root(self.cfg))}

    def train_loader(self, device, batch_size, q, seed, rank, world_size):
        cfg = self.cfg
        transform = train_transform(cfg["image_size"], cfg["crop_scale"])
        return StreamLoader(_file_split(cfg, "train"), batch_size, transform,
                            device, q, seed=seed, workers=cfg["workers"],
                            rank=rank, world_size=world_size)

    def eval_batches(self, split, device, batch_size, take):
        cfg = self.cfg
        fs = take(_file_split(cfg, split))
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
