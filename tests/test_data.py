import os
from pathlib import Path

import numpy as np
import pytest
import torch
from torchvision.transforms import functional as TF

from ltd import data, image_files, loaders, sources
from ltd import experiments as ex
from ltd.jobspec import Data

# the demo's data set section (config/demo.yaml), spelled out so these tests stand alone
DIGITS = {"source": "digits", "image_size": 16, "test_size": 397, "val_size": 200, "crop_padding": 2}


def test_digits_splits_are_fixed_disjoint_and_in_range():
    cfg = DIGITS
    splits = {s: data.load_split(Data.of(cfg), s) for s in ("train", "val", "test")}
    assert len(splits["test"]) == cfg["test_size"]
    assert len(splits["val"]) == cfg["val_size"]
    assert sum(len(s) for s in splits.values()) == 1797
    idx = [set(s.indices.tolist()) for s in splits.values()]
    assert not (idx[0] & idx[1]) and not (idx[0] & idx[2]) and not (idx[1] & idx[2])
    x = splits["train"].x
    assert x.shape[1:] == (3, cfg["image_size"], cfg["image_size"])
    assert x.min() >= 0 and x.max() <= 1 and x.max() > 0.9
    assert torch.equal(x[:, 0], x[:, 2])  # grey digits, shaped as 3-channel images
    again = data.load_split(Data.of(cfg), "train")
    assert np.array_equal(again.indices, splits["train"].indices)
    assert set(splits["test"].y.tolist()) == set(range(10))
    sub = data.load_split(Data.of({**cfg, "train_size": 100}), "train")
    assert len(sub) == 100 and set(sub.indices) <= idx[0] and len(set(sub.y.tolist())) == 10  # a random subset


def test_describe_records_the_split():
    d = data.describe(Data.of(DIGITS))
    assert d["source"] == "digits" and d["num_classes"] == 10
    assert d["train"]["n"] + d["val"]["n"] + d["test"]["n"] == 1797
    assert len(d["test"]["indices_sha256"]) == 64


def test_unknown_source_is_named():
    with pytest.raises(ValueError, match=r"dataset source: unknown data set 'mnist'; expected one of .*imagefolder"):
        data.load_split(Data.of({"source": "mnist"}), "train")
    with pytest.raises(ValueError, match="source"):
        data.num_classes(Data.of({"name": "digits"}))  # the old key is not silently read
    assert data.num_classes(Data.of({"source": "cifar100"})) == 100


def test_the_registry_is_the_schemas_and_names_its_loaders():
    """The schema's `source` enum lists the registry's kinds; build_from's, those held in
    memory without files; every record's loader is a loaders.Loader, streamed where it says."""
    from ltd.schema import _schema

    ds = _schema()["definitions"]["dataset"]["properties"]
    assert ds["source"]["enum"] == list(sources.SOURCES)
    assert ds["build_from"]["properties"]["source"]["enum"] == [
        n for n, s in sources.SOURCES.items() if not s.file_based]
    for kind in sources.SOURCES.values():
        cls = kind.loader_class()
        assert issubclass(cls, loaders.Loader)
        assert kind.streamed == (cls.train_loader is not loaders.Loader.train_loader), kind.name
        assert (kind.sizes is None) == (kind.classes is None) == (cls.num_classes is not loaders.Loader.num_classes)


def test_crop_flip_keeps_pixels_and_shape():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(64, 3, 16, 16)
    out = loaders.crop_flip(x, 2, g)
    assert out.shape == x.shape
    assert out.min() >= 0 and out.max() <= 1
    # every output image is a padded crop of its input at some offset, maybe mirrored
    xp = torch.nn.functional.pad(x, (2, 2, 2, 2))
    for i in range(16):
        crops = [xp[i, :, dy:dy + 16, dx:dx + 16] for dy in range(5) for dx in range(5)]
        assert any(torch.equal(out[i], c) or torch.equal(out[i], c.flip(2)) for c in crops)
    assert not torch.equal(out, x)
    # no padding, no flip randomness beyond a mirror: each image equals itself or its mirror
    out0 = loaders.crop_flip(x, 0, torch.Generator().manual_seed(1))
    assert all(torch.equal(o, i) or torch.equal(o, i.flip(2)) for o, i in zip(out0, x))


def test_loader_is_deterministic_per_epoch():
    split = loaders.Split(torch.rand(50, 3, 8, 8), torch.arange(50) % 10, np.arange(50))
    q = torch.softmax(torch.randn(50, 10), 1)
    loader = loaders.DeviceLoader(split, 16, q=q, crop_padding=1, seed=3)
    a = [b for b in loader.epoch(2)]
    b = [b for b in loader.epoch(2)]
    c = [b for b in loader.epoch(3)]
    assert len(a) == len(loader) == 4
    assert all(torch.equal(x1, x2) and torch.equal(q1, q2) for (x1, _, q1), (x2, _, q2) in zip(a, b))
    assert not torch.equal(a[0][1], c[0][1])
    # soft labels travel with their images
    ys = torch.cat([y for _, y, _ in a])
    qs = torch.cat([q for _, _, q in a])
    assert sorted(ys.tolist()) == sorted(split.y.tolist())
    for y_, q_ in zip(ys, qs):
        assert any(torch.equal(q_, q[j]) for j in (split.y == y_).nonzero().flatten())


def _assert_shards_make_the_global_batches(make, world_size, epoch=1):
    whole = list(make(0, 1).epoch(epoch))
    ranks = [list(make(r, world_size).epoch(epoch)) for r in range(world_size)]
    assert all(len(r) == len(ranks[0]) for r in ranks) and len(ranks[0]) >= len(whole) - 1
    for b, parts in enumerate(zip(*ranks)):
        assert all(len(p[0]) > 0 for p in parts)
        for k in range(3):  # x (augmentation included), y, q
            assert torch.equal(torch.cat([p[k] for p in parts]), whole[b][k])


def test_device_loader_shards_each_global_batch():
    split = loaders.Split(torch.rand(50, 3, 8, 8), torch.arange(50) % 10, np.arange(50))
    q = torch.rand(50, 10)
    make = lambda r, w: loaders.DeviceLoader(split, 16, q=q, crop_padding=1, seed=3, rank=r, world_size=w)
    _assert_shards_make_the_global_batches(make, 3)  # 16 = 5 + 5 + 6; the last batch (2 images) is dropped
    assert len(make(0, 3)) == 3 and len(make(0, 2)) == 4
    with pytest.raises(ValueError, match="rank 3"):
        make(3, 3)


def test_in_memory_factories():
    loader = data.make_train_loader(Data.of(DIGITS), "cpu", 64, None, seed=1)
    assert isinstance(loader, loaders.DeviceLoader) and len(loader.split) == 1200 and loader.padding == 2
    test = data.load_split(Data.of(DIGITS), "test")
    got = list(data.eval_batches(Data.of(DIGITS), "test", "cpu", 100, n=250))
    assert [len(x) for x, _ in got] == [100, 100, 50]
    assert torch.equal(torch.cat([x for x, _ in got]), test.x[:250])
    assert torch.equal(torch.cat([y for _, y in got]), test.y[:250])


# --- ImageFolder: the demo's stand-in for ImageNet, written to real PNG files -------------

STORED = 37  # round(32 * 256/224): evaluation's Resize is then the identity, CenterCrop(32) remains


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("imagefolder") / "digits"
    source = {"source": "digits", "image_size": STORED, "val_size": 50}  # val_size is ignored: all 1,400 written
    image_files.write_image_folder(Data.of(source), root)
    return root, source


def _cfg(root, **kw):
    """An imagefolder section as the jobs get it: its schema defaults laid under (dataset_cfg)."""
    section = {"source": "imagefolder", "path": str(root), "image_size": 32, "workers": 0, **kw}
    return ex.dataset_cfg({"datasets": {"d": section}}, "d")


def test_write_image_folder_layout_is_atomic_and_replaces(folder, tmp_path):
    root, source = folder
    assert sorted(os.listdir(root)) == ["train", "val"]
    assert sorted(os.listdir(root / "train")) == [str(c) for c in range(10)]
    assert sum(len(os.listdir(root / "train" / c)) for c in os.listdir(root / "train")) == 1797 - 397
    assert sum(len(os.listdir(root / "val" / c)) for c in os.listdir(root / "val")) == 397
    assert not [p for p in os.listdir(root.parent) if p.startswith(".")]  # no temporary left behind
    small = {"source": "digits", "image_size": 8, "train_size": 30, "test_size": 20}
    out = tmp_path / "x"
    image_files.write_image_folder(Data.of(small), out)
    image_files.write_image_folder(Data.of(small), out)  # a rewrite replaces the tree
    assert sorted(os.listdir(tmp_path)) == ["x"]
    assert data.describe(Data.of(_cfg(out, image_size=8)))["train"]["n"] == 30


def test_image_folder_reads_back_labels_and_pixels(folder):
    root, source = folder
    cfg = _cfg(root)
    assert data.num_classes(Data.of(cfg)) == 10
    orig = data.load_split(Data.of(source), "test")  # what was written to val/
    pos = {int(i): j for j, i in enumerate(orig.indices)}
    fs = image_files.file_split(Data.of(cfg), "test")
    src_idx = [pos[int(Path(f).stem)] for f in fs.files]  # file names carry the source index
    assert torch.equal(fs.y, orig.y[src_idx])
    expect = TF.center_crop(orig.x[src_idx], [32, 32])
    got = data.load_split(Data.of(cfg), "test")
    assert got.x.shape == (397, 3, 32, 32) and torch.equal(got.y, fs.y)
    assert (got.x - expect).abs().max() <= 0.5 / 255 + 1e-6  # PNG's 8-bit rounding only
    streamed = list(data.eval_batches(Data.of(cfg), "test", "cpu", 128, n=200))
    assert [len(x) for x, _ in streamed] == [128, 72]
    assert torch.equal(torch.cat([x for x, _ in streamed]), got.x[:200])
    # test_size: the first N of the same fixed permutation; a prefix covers the classes
    sub = image_files.file_split(Data.of(_cfg(root, test_size=100)), "test")
    assert sub.files == fs.files[:100] and len(set(sub.y.tolist())) == 10


def test_image_folder_splits_and_describe(folder):
    root, _ = folder
    cfg = _cfg(root, val_size=100)
    d = data.describe(Data.of(cfg))
    assert (d["train"]["n"], d["val"]["n"], d["test"]["n"]) == (1300, 100, 397)
    assert d["source"] == "imagefolder" and d["num_classes"] == 10 and d["train"]["shape"] == [3, 32, 32]
    assert d == data.describe(Data.of(cfg))  # the same listing, the same fingerprints
    assert d["train"]["files_sha256"] != data.describe(Data.of(_cfg(root, val_size=101)))["train"]["files_sha256"]
    tr, va = image_files.file_split(Data.of(cfg), "train"), image_files.file_split(Data.of(cfg), "val")
    assert not set(tr.files) & set(va.files)

def test_image_folder_path_is_relative_to_the_working_directory(folder, monkeypatch):
    root, _ = folder
    monkeypatch.chdir(root.parent)
    rel, absolute = data.describe(Data.of(_cfg(root.name), "elsewhere")), data.describe(Data.of(_cfg(root), "elsewhere"))
    assert rel["train"] == absolute["train"] and rel["path"] == root.name


def test_stream_loader_is_deterministic_sharded_and_carries_soft_labels(folder):
    root, _ = folder
    cfg = _cfg(root, train_size=90)
    fs = image_files.file_split(Data.of(cfg), "train")
    q = torch.arange(len(fs), dtype=torch.float32)[:, None]  # soft label = the image's position
    make = lambda r, w, **kw: data.make_train_loader(Data.of({**cfg, **kw}), "cpu", 32, q, seed=5, rank=r, world_size=w)
    loader = make(0, 1)
    assert isinstance(loader, image_files.StreamLoader) and len(loader) == 3
    a, b, c = list(loader.epoch(0)), list(loader.epoch(0)), list(loader.epoch(1))
    assert [len(x) for x, _, _ in a] == [32, 32, 26]
    assert all(torch.equal(x1, x2) for (x1, _, _), (x2, _, _) in zip(a, b))
    assert not torch.equal(a[0][0], c[0][0])
    x, y, qb = a[0]
    assert x.shape == (32, 3, 32, 32) and x.dtype == torch.float32 and 0 <= x.min() and x.max() <= 1
    assert torch.equal(y, fs.y[qb[:, 0].long()])  # each soft label belongs to its image
    assert sorted(torch.cat([q_ for _, _, q_ in a])[:, 0].long().tolist()) == list(range(90))
    _assert_shards_make_the_global_batches(make, 2)
    # the augmentation of an image does not depend on who decodes it
    par = list(make(0, 1, workers=2).epoch(1))
    assert all(torch.equal(x1, x2) for (x1, _, _), (x2, _, _) in zip(par, c))
    before = torch.get_rng_state()
    list(make(0, 1).epoch(2))
    assert torch.equal(before, torch.get_rng_state())  # the run's own RNG stream is untouched


def test_describe_source_counts_what_the_source_holds(folder):
    d = data.describe_source(Data.of(DIGITS))
    assert d["source"] == "digits" and d["num_classes"] == 10 and d["pool"]["images"] == 1797
    root, _ = folder
    f = data.describe_source(Data.of(_cfg(root)))
    assert (f["train"]["images"], f["val"]["images"]) == (1400, 397) and len(f["train"]["files_sha256"]) == 64


# --- cifarfolder: small images kept as files, in CIFAR's recipe --------------------------

FOLDER_CLASSES = ["cat", "ant", "bee"]  # sorted: ant (0), bee (1), cat (2)


def _write_tree(root, n_train=(5, 4, 6), n_test=(2, 3, 2), size=8, seed=0):
    """PNG files (lossless) of random pixels: root/{train,test}/<class>/<i>.png; returns
    {(split, class, i): the uint8 pixels H x W x 3}."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    pixels = {}
    for sub, counts in (("train", n_train), ("test", n_test)):
        for c, n in zip(FOLDER_CLASSES, counts):
            (root / sub / c).mkdir(parents=True)
            for i in range(n):
                img = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
                Image.fromarray(img).save(root / sub / c / f"{i:03d}.png")
                pixels[sub, c, i] = img
    return pixels


@pytest.fixture
def tree(tmp_path):
    root = tmp_path / "tree"
    return root, _write_tree(root)


def _fcfg(root, **kw):
    return {"source": "cifarfolder", "path": str(root), "crop_padding": 2, **kw}


def test_cifarfolder_reads_pixels_as_stored_with_sorted_class_labels(tree):
    root, pixels = tree
    cfg = _fcfg(root)
    train = data.load_split(Data.of(cfg), "train")
    assert train.x.shape == (15, 3, 8, 8) and train.x.dtype == torch.float32
    sorted_classes = sorted(FOLDER_CLASSES)
    assert data.num_classes(Data.of(cfg)) == 3 and sources.folder_classes(cfg) == sorted_classes
    # listing order: class by class in label order, files by name; each image exactly its pixels / 255
    listing = [(c, i) for c in sorted_classes for i in range(len([k for k in pixels if k[:2] == ("train", c)]))]
    for x, y, pos in zip(train.x, train.y, train.indices):
        c, i = listing[pos]
        assert y == sorted_classes.index(c)
        assert torch.equal(x, torch.from_numpy(pixels["train", c, i]).permute(2, 0, 1).float() / 255)
    # the config's class order relabels, pixels unchanged
    mine = data.load_split(Data.of(_fcfg(root, classes=["cat", "bee", "ant"])), "train")
    assert sorted(mine.y.tolist()) == [0] * 5 + [1] * 6 + [2] * 4  # cat 5, bee 6, ant 4 images
    # test/ is the test split, in a fixed permutation (a prefix covers several classes)
    test = data.load_split(Data.of(cfg), "test")
    assert len(test) == 7 and sorted(test.indices.tolist()) == list(range(7))
    assert test.indices.tolist() != sorted(test.indices.tolist())
    assert torch.equal(data.load_split(Data.of(_fcfg(root, test_size=4)), "test").x, test.x[:4])
    # train_size / val_size draw from train/ as for CIFAR
    val, sub = data.load_split(Data.of(_fcfg(root, val_size=5)), "val"), data.load_split(Data.of(_fcfg(root, train_size=6)), "train")
    assert len(val) == 5 and len(sub) == 6 and set(sub.indices) <= set(range(15))
    assert sources.sizes(cfg) == {"train": 15, "test": 7, "classes": 3}


def test_cifarfolder_trains_through_the_in_memory_loader(tree):
    root, _ = tree
    loader = data.make_train_loader(Data.of(_fcfg(root)), "cpu", 4, None, seed=0)
    assert isinstance(loader, loaders.DeviceLoader) and loader.padding == 2 and len(loader) == 4
    x, y, q = next(iter(loader.epoch(0)))
    assert x.shape == (4, 3, 8, 8) and q is None and 0 <= x.min() and x.max() <= 1
    got = list(data.eval_batches(Data.of(_fcfg(root)), "test", "cpu", 5))
    assert [len(x) for x, _ in got] == [5, 2]


def test_cifarfolder_describes_its_files(tree):
    root, _ = tree
    cfg = _fcfg(root)
    d, src = data.describe(Data.of(cfg)), data.describe_source(Data.of(cfg))
    assert d["source"] == "cifarfolder" and d["train"]["shape"] == [3, 8, 8] and d["test"]["n"] == 7
    assert d["classes"] == ["ant", "bee", "cat"] and d["lossy"] is False and d["path"] == str(root)
    assert src["train"] == {"images": 15, "formats": {".png": 15}, "files_sha256": src["train"]["files_sha256"]}
    assert "decoded as stored" in sources.describe_note(cfg) and "lossy" not in sources.describe_note(cfg)
    (root / "test" / "ant" / "000.png").rename(root / "test" / "ant" / "000.jpg")  # not a JPEG inside: names decide
    sources._folder_files.cache_clear()
    assert "JPEG is lossy" in sources.describe_note(cfg) and data.describe(Data.of(cfg), ("test",))["lossy"] is True


def test_cifarfolder_says_what_is_wrong(tree, tmp_path):
    from PIL import Image

    root, _ = tree
    with pytest.raises(ValueError, match=r"image_size is 32; a cifarfolder source is never resized"):
        data.load_split(Data.of(_fcfg(root, image_size=32)), "test")
    with pytest.raises(ValueError, match=r"the config lists \['ant', 'bee'\], the folder holds \['ant', 'bee', 'cat'\]"):
        data.load_split(Data.of(_fcfg(root, classes=["ant", "bee"])), "train")
    Image.new("L", (8, 8), 200).save(root / "train" / "bee" / "grey.png")  # grey: read as RGB
    x = data.load_split(Data.of(_fcfg(root)), "train").x
    assert ((x == 200 / 255).all(dim=(1, 2, 3))).sum() == 1
    Image.new("RGB", (9, 8)).save(root / "train" / "bee" / "wide.png")
    with pytest.raises(ValueError, match=r"wide.png: 9x8 pixels, but .* has 8x8; a cifarfolder source needs images of one size"):
        data.load_split(Data.of(_fcfg(root)), "train")
    (root / "test" / "dog").mkdir()
    with pytest.raises(ValueError, match=r"class folders \['dog'\] are not among train/'s classes"):
        data.load_split(Data.of(_fcfg(root)), "test")
    missing = _fcfg(tmp_path / "nothing")
    assert "no train/ and test/ folders there" in sources.folder_problem("mine", missing)
    assert "datasets.mine.archive = 'x.tar.gz': no such file" in sources.folder_problem("mine", {**missing, "archive": "x.tar.gz"})
    assert sources.folder_problem("mine", _fcfg(root)) is None


def _tar(tree_root, out, top=None):
    import tarfile

    with tarfile.open(out, "w:gz") as tar:
        for sub in ("train", "test"):
            tar.add(tree_root / sub, arcname=f"{top}/{sub}" if top else sub)
    return out


def test_unpack_archive_checks_unpacks_once_and_replaces(tree, tmp_path):
    root, pixels = tree
    archive = _tar(root, tmp_path / "a.tar.gz", top="mydata")  # under one top folder
    digest = sources.sha256_file(archive)
    cfg = _fcfg(tmp_path / "data" / "mine", archive=str(archive))
    assert sources.folder_problem("mine", cfg) is None  # nothing unpacked yet, but an archive to unpack
    assert sources.sizes(cfg) == {"train": 15, "test": 7, "classes": 3}  # from the archive's listing
    with pytest.raises(ValueError, match="sha256 .* but archive_sha256 says 0000"):
        image_files.unpack_archive({**cfg, "archive_sha256": "0" * 64})
    assert not (tmp_path / "data" / "mine").exists()
    assert image_files.unpack_archive({**cfg, "archive_sha256": digest.upper()})["sha256"] == digest
    assert torch.equal(data.load_split(Data.of(cfg), "test").x, data.load_split(Data.of(_fcfg(root)), "test").x)
    assert [p.name for p in (tmp_path / "data").iterdir()] == ["mine"]  # no temporary left behind
    stamp = (tmp_path / "data" / "mine").stat().st_mtime_ns
    image_files.unpack_archive(cfg)  # the same archive: kept as it is
    assert (tmp_path / "data" / "mine").stat().st_mtime_ns == stamp
    assert data.describe(Data.of(cfg), ("test",))["archive"] == {"archive": str(archive), "sha256": digest}
    # another archive (here: one class fewer) replaces what the first one unpacked
    import shutil
    shutil.rmtree(root / "train" / "cat")
    shutil.rmtree(root / "test" / "cat")
    other = _tar(root, tmp_path / "b.tar.gz")
    image_files.unpack_archive({**cfg, "archive": str(other)})
    assert data.num_classes(Data.of(cfg)) == 2
    # a folder it did not unpack is never overwritten (and the plan says so first)
    assert "holds files that were not unpacked from datasets.mine.archive" in sources.folder_problem(
        "mine", _fcfg(root, archive=str(other)))
    with pytest.raises(FileExistsError, match="was not unpacked from an archive by this workflow"):
        image_files.unpack_archive(_fcfg(root, archive=str(other)))
    # nothing outside the folder: a link or a '..' name stops it, and nothing is left
    import tarfile
    for name, kind in (("train/ant/link.png", tarfile.SYMTYPE), ("../evil.png", tarfile.REGTYPE)):
        with tarfile.open(tmp_path / "bad.tar", "w") as tar:
            tar.add(root / "train", arcname="train")
            tar.add(root / "test", arcname="test")
            member = tarfile.TarInfo(name)
            member.type, member.linkname = kind, "/etc/passwd"
            tar.addfile(member)
        with pytest.raises(ValueError, match=f"member {name!r} is not a plain file or folder inside the archive"):
            image_files.unpack_archive(_fcfg(tmp_path / "bad", archive=str(tmp_path / "bad.tar")))
    assert not (tmp_path / "bad").exists() and not (tmp_path / "evil.png").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".bad.")]


def test_prepare_data_unpacks_and_records_the_archive(tree, tmp_path, monkeypatch):
    from ltd import jobspec
    from ltd.files import load_json
    from ltd.jobs.preparation import prepare_data

    root, _ = tree
    archive = _tar(root, tmp_path / "a.tar.gz")
    monkeypatch.chdir(tmp_path)  # workflow paths are relative to the working directory
    section = {**_fcfg("data/mine", archive="a.tar.gz"), "attack": {}, "evaluation": {}}
    spec = jobspec.Source(jobspec.Data("mine", section, section, "data"), jobspec.Machine(results="t"))
    prepare_data(spec, "mine.json")
    rec = load_json("mine.json")
    assert rec["source"] == "cifarfolder" and rec["train"]["images"] == 15 and rec["test"]["images"] == 7
    assert rec["archive"] == {"archive": "a.tar.gz", "sha256": sources.sha256_file(archive)}
    assert rec["provenance"]["settings"] == {"source": "cifarfolder", "path": "data/mine", "archive": "a.tar.gz"}


# The real CIFAR-10 images (../shared/data/cifar10-jpeg.tar.gz, unpacked once per session).
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def test_cifar10_jpeg_is_cifar10_in_its_label_order(cifar10_jpeg):
    cfg = cifar10_jpeg
    # the folder names sorted are CIFAR-10's labels 0 ... 9 (torchvision's CIFAR10.classes)
    assert sources.folder_classes(cfg) == CIFAR10_CLASSES
    files, labels = sources.folder_files(cfg, "train")
    assert np.bincount(labels).tolist() == [5000] * 10
    assert np.bincount(sources.folder_files(cfg, "test")[1]).tolist() == [1000] * 10
    assert sources.sizes(cfg) == {"train": 50_000, "test": 10_000, "classes": 10}
    sub = data.load_split(Data.of({**cfg, "train_size": 5000}), "train")
    assert sub.x.shape == (5000, 3, 32, 32)
    # the pixels are CIFAR-10's in RGB order and [0, 1]: the training set's channel means
    # are 0.4914, 0.4822, 0.4465; the two bluest classes (sky, sea) are airplane and ship
    assert torch.allclose(sub.x.mean((0, 2, 3)), torch.tensor([0.4914, 0.4822, 0.4465]), atol=0.01)
    blue = torch.stack([(sub.x[sub.y == c, 2] - sub.x[sub.y == c, 0]).mean() for c in range(10)])
    assert sorted(blue.topk(2).indices.tolist()) == [0, 8]
    # the first 1,000 test images (quick.yaml's AutoAttack) hold every class
    first = data.load_split(Data.of({**cfg, "test_size": 1000}), "test")
    assert np.bincount(first.y.numpy(), minlength=10).min() >= 70
    d = data.describe_source(Data.of(cfg))
    assert d["lossy"] and d["train"]["formats"] == {".jpg": 50_000} and d["archive"]["sha256"] == cfg["archive_sha256"]
    assert "JPEG is lossy" in d["note"]


def test_the_digits_are_read_as_scikit_learn_reads_them():
    """ltd.data reads sklearn's digits file itself (importing sklearn.datasets costs every
    demo job 2.4 s): the same images and labels, bit for bit."""
    from sklearn.datasets import load_digits

    images, target = data._digits_raw()
    d = load_digits()
    assert images.dtype == d.images.dtype and np.array_equal(images, d.images)
    assert np.array_equal(target, d.target) and target.dtype == d.target.dtype
    x, y = data._digits(16)
    assert x.shape == (1797, 3, 16, 16) and torch.equal(y, torch.tensor(d.target))
