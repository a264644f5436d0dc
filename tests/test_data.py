import os
from pathlib import Path

import numpy as np
import pytest
import torch
from torchvision.transforms import functional as TF

from ltd import data

# the demo's data set section (config/demo.yaml), spelled out so these tests stand alone
DIGITS = {"source": "digits", "image_size": 16, "test_size": 397, "val_size": 200, "crop_padding": 2}


def test_digits_splits_are_fixed_disjoint_and_in_range():
    cfg = DIGITS
    splits = {s: data.load_split(cfg, "unused", s) for s in ("train", "val", "test")}
    assert len(splits["test"]) == cfg["test_size"]
    assert len(splits["val"]) == cfg["val_size"]
    assert sum(len(s) for s in splits.values()) == 1797
    idx = [set(s.indices.tolist()) for s in splits.values()]
    assert not (idx[0] & idx[1]) and not (idx[0] & idx[2]) and not (idx[1] & idx[2])
    x = splits["train"].x
    assert x.shape[1:] == (3, cfg["image_size"], cfg["image_size"])
    assert x.min() >= 0 and x.max() <= 1 and x.max() > 0.9
    assert torch.equal(x[:, 0], x[:, 2])  # grey digits, shaped as 3-channel images
    again = data.load_split(cfg, "unused", "train")
    assert np.array_equal(again.indices, splits["train"].indices)
    assert set(splits["test"].y.tolist()) == set(range(10))
    sub = data.load_split({**cfg, "train_size": 100}, "unused", "train")
    assert len(sub) == 100 and set(sub.indices) <= idx[0] and len(set(sub.y.tolist())) == 10  # a random subset


def test_describe_records_the_split():
    d = data.describe(DIGITS, "unused")
    assert d["source"] == "digits" and d["num_classes"] == 10
    assert d["train"]["n"] + d["val"]["n"] + d["test"]["n"] == 1797
    assert len(d["test"]["indices_sha256"]) == 64


def test_unknown_source_is_named():
    with pytest.raises(ValueError, match=r"dataset source: unknown data set 'mnist'; expected one of .*imagefolder"):
        data.load_split({"source": "mnist"}, "unused", "train")
    with pytest.raises(ValueError, match="source"):
        data.num_classes({"name": "digits"}, "unused")  # the old key is not silently read
    assert data.num_classes({"source": "cifar100"}, "unused") == 100


def test_crop_flip_keeps_pixels_and_shape():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(64, 3, 16, 16)
    out = data.crop_flip(x, 2, g)
    assert out.shape == x.shape
    assert out.min() >= 0 and out.max() <= 1
    # every output image is a padded crop of its input at some offset, maybe mirrored
    xp = torch.nn.functional.pad(x, (2, 2, 2, 2))
    for i in range(16):
        crops = [xp[i, :, dy:dy + 16, dx:dx + 16] for dy in range(5) for dx in range(5)]
        assert any(torch.equal(out[i], c) or torch.equal(out[i], c.flip(2)) for c in crops)
    assert not torch.equal(out, x)
    # no padding, no flip randomness beyond a mirror: each image equals itself or its mirror
    out0 = data.crop_flip(x, 0, torch.Generator().manual_seed(1))
    assert all(torch.equal(o, i) or torch.equal(o, i.flip(2)) for o, i in zip(out0, x))


def test_loader_is_deterministic_per_epoch():
    split = data.Split(torch.rand(50, 3, 8, 8), torch.arange(50) % 10, np.arange(50))
    q = torch.softmax(torch.randn(50, 10), 1)
    loader = data.DeviceLoader(split, 16, soft_labels=q, crop_padding=1, seed=3)
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
    split = data.Split(torch.rand(50, 3, 8, 8), torch.arange(50) % 10, np.arange(50))
    q = torch.rand(50, 10)
    make = lambda r, w: data.DeviceLoader(split, 16, soft_labels=q, crop_padding=1, seed=3, rank=r, world_size=w)
    _assert_shards_make_the_global_batches(make, 3)  # 16 = 5 + 5 + 6; the last batch (2 images) is dropped
    assert len(make(0, 3)) == 3 and len(make(0, 2)) == 4
    with pytest.raises(ValueError, match="rank 3"):
        make(3, 3)


def test_in_memory_factories():
    loader = data.make_train_loader(DIGITS, "unused", "cpu", 64, None, seed=1)
    assert isinstance(loader, data.DeviceLoader) and len(loader.split) == 1200 and loader.padding == 2
    test = data.load_split(DIGITS, "unused", "test")
    got = list(data.eval_batches(DIGITS, "unused", "test", "cpu", 100, n=250))
    assert [len(x) for x, _ in got] == [100, 100, 50]
    assert torch.equal(torch.cat([x for x, _ in got]), test.x[:250])
    assert torch.equal(torch.cat([y for _, y in got]), test.y[:250])


# --- ImageFolder: the demo's stand-in for ImageNet, written to real PNG files -------------

STORED = 37  # round(32 * 256/224): evaluation's Resize is then the identity, CenterCrop(32) remains


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("imagefolder") / "digits"
    source = {"source": "digits", "image_size": STORED, "val_size": 50}  # val_size is ignored: all 1,400 written
    data.write_image_folder(source, "unused", root)
    return root, source


def _cfg(root, **kw):
    return {"source": "imagefolder", "path": str(root), "image_size": 32, "workers": 0, **kw}


def test_write_image_folder_layout_is_atomic_and_replaces(folder, tmp_path):
    root, source = folder
    assert sorted(os.listdir(root)) == ["train", "val"]
    assert sorted(os.listdir(root / "train")) == [str(c) for c in range(10)]
    assert sum(len(os.listdir(root / "train" / c)) for c in os.listdir(root / "train")) == 1797 - 397
    assert sum(len(os.listdir(root / "val" / c)) for c in os.listdir(root / "val")) == 397
    assert not [p for p in os.listdir(root.parent) if p.startswith(".")]  # no temporary left behind
    small = {"source": "digits", "image_size": 8, "train_size": 30, "test_size": 20}
    out = tmp_path / "x"
    data.write_image_folder(small, "unused", out)
    data.write_image_folder(small, "unused", out)  # a rewrite replaces the tree
    assert sorted(os.listdir(tmp_path)) == ["x"]
    assert data.describe(_cfg(out, image_size=8), "")["train"]["n"] == 30


def test_image_folder_reads_back_labels_and_pixels(folder):
    root, source = folder
    cfg = _cfg(root)
    assert data.num_classes(cfg, "") == 10
    orig = data.load_split(source, "unused", "test")  # what was written to val/
    pos = {int(i): j for j, i in enumerate(orig.indices)}
    fs = data.file_split(cfg, "", "test")
    src_idx = [pos[int(Path(f).stem)] for f in fs.files]  # file names carry the source index
    assert torch.equal(fs.y, orig.y[src_idx])
    expect = TF.center_crop(orig.x[src_idx], [32, 32])
    got = data.load_split(cfg, "", "test")
    assert got.x.shape == (397, 3, 32, 32) and torch.equal(got.y, fs.y)
    assert (got.x - expect).abs().max() <= 0.5 / 255 + 1e-6  # PNG's 8-bit rounding only
    streamed = list(data.eval_batches(cfg, "", "test", "cpu", 128, n=200))
    assert [len(x) for x, _ in streamed] == [128, 72]
    assert torch.equal(torch.cat([x for x, _ in streamed]), got.x[:200])
    # test_size: the first N of the same fixed permutation; a prefix covers the classes
    sub = data.file_split(_cfg(root, test_size=100), "", "test")
    assert sub.files == fs.files[:100] and len(set(sub.y.tolist())) == 10


def test_image_folder_splits_and_describe(folder):
    root, _ = folder
    cfg = _cfg(root, val_size=100)
    d = data.describe(cfg, "")
    assert (d["train"]["n"], d["val"]["n"], d["test"]["n"]) == (1300, 100, 397)
    assert d["source"] == "imagefolder" and d["num_classes"] == 10 and d["train"]["shape"] == [3, 32, 32]
    assert d == data.describe(cfg, "")  # the same listing, the same fingerprints
    assert d["train"]["files_sha256"] != data.describe(_cfg(root, val_size=101), "")["train"]["files_sha256"]
    tr, va = data.file_split(cfg, "", "train"), data.file_split(cfg, "", "val")
    assert not set(tr.files) & set(va.files)

def test_image_folder_path_is_relative_to_the_working_directory(folder, monkeypatch):
    root, _ = folder
    monkeypatch.chdir(root.parent)
    rel, absolute = data.describe(_cfg(root.name), "elsewhere"), data.describe(_cfg(root), "elsewhere")
    assert rel["train"] == absolute["train"] and rel["path"] == root.name


def test_stream_loader_is_deterministic_sharded_and_carries_soft_labels(folder):
    root, _ = folder
    cfg = _cfg(root, train_size=90)
    fs = data.file_split(cfg, "", "train")
    q = torch.arange(len(fs), dtype=torch.float32)[:, None]  # soft label = the image's position
    make = lambda r, w, **kw: data.make_train_loader({**cfg, **kw}, "", "cpu", 32, q, seed=5, rank=r, world_size=w)
    loader = make(0, 1)
    assert isinstance(loader, data.StreamLoader) and len(loader) == 3
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
    d = data.describe_source(DIGITS, "unused")
    assert d["source"] == "digits" and d["num_classes"] == 10 and d["pool"]["images"] == 1797
    root, _ = folder
    f = data.describe_source(_cfg(root), "")
    assert (f["train"]["images"], f["val"]["images"]) == (1400, 397) and len(f["train"]["files_sha256"]) == 64
