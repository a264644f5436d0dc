import re

import pytest
import torch

from ltd.models import ARCH_PATTERN, build_model, count_parameters


def test_wrn_34_10_has_the_papers_46_16_m_parameters():
    assert count_parameters(build_model("wrn-34-10", 10)) == 46_160_474


def test_depth_picks_the_wide_resnet_family():
    from torchvision.models.resnet import ResNet

    from ltd.models.wideresnet import WideResNet

    assert isinstance(build_model("wrn-16-2", 10), WideResNet)
    assert isinstance(build_model("wrn-14-2", 10), ResNet)
    assert build_model("wrn-14-2", 10).layer1[0].conv2.out_channels == 128  # width_per_group 64 * 2
    assert build_model("resnet-14", 10).layer1[0].conv2.out_channels == 64


def test_wrn_state_dict_uses_robustbench_names():
    keys = set(build_model("wrn-34-10", 10).state_dict())
    for k in ["conv1.weight", "block1.layer.0.convShortcut.weight", "block1.layer.1.bn1.running_mean",
              "block2.layer.4.conv2.weight", "block3.layer.0.bn1.weight",
              "bn1.num_batches_tracked", "fc.weight", "fc.bias"]:
        assert k in keys, k
    assert "block1.layer.1.convShortcut.weight" not in keys  # same width: identity shortcut
    assert not any(k.startswith("sub_block1.") for k in keys)
    assert len([k for k in keys if re.fullmatch(r"block1\.layer\.\d+\.conv1\.weight", k)]) == 5


def test_sub_block1_checkpoints_load_strictly_only_into_the_same_layout():
    with_sub = build_model("wrn-10-2", 100, sub_block1=True)
    keys = with_sub.state_dict().keys()
    assert any(k.startswith("sub_block1.layer.0.") for k in keys)
    build_model("wrn-10-2", 100, sub_block1=True).load_state_dict(with_sub.state_dict(), strict=True)
    with pytest.raises(RuntimeError, match="sub_block1"):
        build_model("wrn-10-2", 100).load_state_dict(with_sub.state_dict(), strict=True)
    # the extra block is never used: same output with or without its weights randomised
    x = torch.rand(2, 3, 16, 16)
    with_sub.eval()
    before = with_sub(x)
    torch.nn.init.normal_(with_sub.sub_block1.layer[0].conv1.weight)
    assert torch.equal(before, with_sub(x))


def test_imagenet_architectures_are_torchvisions():
    from torchvision import models as tvm

    with torch.device("meta"):  # no memory, no init cost: only the shapes are counted
        assert count_parameters(build_model("resnet-50", 1000)) == 25_557_032
        assert count_parameters(build_model("wrn-50-2", 1000)) == 68_883_240
        for arch, ref in [("resnet-18", tvm.resnet18), ("resnet-50", tvm.resnet50), ("wrn-50-2", tvm.wide_resnet50_2),
                          ("wrn-101-2", tvm.wide_resnet101_2)]:
            ours, theirs = build_model(arch, 1000).state_dict(), ref(weights=None).state_dict()
            assert {k: v.shape for k, v in ours.items()} == {k: v.shape for k, v in theirs.items()}, arch
        assert build_model("wrn-50-2", 5).fc.out_features == 5


@pytest.mark.parametrize("arch", ["wrn-10-2", "preact-resnet18", "resnet-14", "wrn-14-2"])
@pytest.mark.parametrize("size", [16, 32])
def test_forward_shapes(arch, size):
    model = build_model(arch, 7).eval()
    assert model(torch.rand(2, 3, size, size)).shape == (2, 7)


def test_bad_arch_names_are_named_in_the_error():
    with pytest.raises(ValueError, match="'resnet-9000'"):
        build_model("resnet-9000", 10)
    with pytest.raises(ValueError, match="'wrn-33-10'.*6n\\+4"):
        build_model("wrn-33-10", 10)
    with pytest.raises(ValueError, match="'wrn-49-2'.*6n\\+4.*14, 50, 101"):
        build_model("wrn-49-2", 10)
    for good in ["wrn-34-10", "wrn-10-1", "preact-resnet18", "resnet-18", "resnet-50", "wrn-50-2", "resnet-14",
                 "wrn-14-2"]:
        assert re.match(ARCH_PATTERN, good)
        with torch.device("meta"):
            build_model(good, 10)
    for bad in ["wrn-34", "vit", "preact-resnet18x", "WRN-34-10", "resnet-9000", "resnet50", "resnet-50x"]:
        assert not re.match(ARCH_PATTERN, bad)


def test_schema_and_library_accept_the_same_arch_names():
    import yaml

    from ltd.config import SCHEMA

    assert yaml.safe_load(SCHEMA.read_text())["definitions"]["arch"]["pattern"] == ARCH_PATTERN
