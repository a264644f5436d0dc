import numpy as np
import torch

from ltd import data


def test_digits_splits_are_fixed_disjoint_and_in_range(demo_config):
    cfg = demo_config["dataset"]
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


def test_describe_records_the_split(demo_config):
    d = data.describe(demo_config["dataset"], "unused")
    assert d["train"]["n"] + d["val"]["n"] + d["test"]["n"] == 1797
    assert len(d["test"]["indices_sha256"]) == 64


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
