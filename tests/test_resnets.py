"""ResNet-18/34/50 match torchvision's architecture, names and init, and batch under torch.func."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from softlabels.resnets import (
    RESNET_SPECS,
    BasicBlock,
    Bottleneck,
    ResNet,
    ResNetSpec,
    build_resnet,
)


def _meta(name: str) -> ResNet:
    """A full-size torchvision-shaped model on the meta device: no memory, no init cost."""
    with torch.device("meta"):
        return build_resnet(name, in_channels=3, num_classes=1000, image_size=(224, 224))


def _tiny(depth: int = 18, *, width: int = 8, image_size=(32, 32), in_channels: int = 3, num_classes: int = 5,
          **kw) -> ResNet:
    spec = ResNetSpec(name=f"resnet{depth}-tiny", depth=depth, width=width, **kw)
    return ResNet(spec, in_channels=in_channels, num_classes=num_classes, image_size=image_size)


# torchvision's counts for 1000 classes, 3 channels, width 64
@pytest.mark.parametrize("name, params, keys", [
    ("resnet18", 11_689_512, 122), ("resnet34", 21_797_672, 218), ("resnet50", 25_557_032, 320)])
def test_parameter_and_key_counts_match_torchvision(name, params, keys):
    model = _meta(name)
    assert model.stem == "imagenet"
    assert sum(p.numel() for p in model.parameters()) == params
    assert len(model.state_dict()) == keys


def test_resnet18_state_dict_keys_match_torchvision():
    keys = list(_meta("resnet18").state_dict())
    # 20 norm layers x (weight, bias, running_mean, running_var, num_batches_tracked) + 20 convs + fc = 122
    assert len(keys) == 122
    assert keys[:10] == [
        "conv1.weight", "bn1.weight", "bn1.bias", "bn1.running_mean", "bn1.running_var",
        "bn1.num_batches_tracked", "layer1.0.conv1.weight", "layer1.0.bn1.weight", "layer1.0.bn1.bias",
        "layer1.0.bn1.running_mean"]
    assert keys[-4:] == [
        "layer4.1.bn2.running_var", "layer4.1.bn2.num_batches_tracked", "fc.weight", "fc.bias"]
    start = keys.index("layer2.0.conv1.weight")
    bn = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
    assert keys[start:start + 18] == [
        "layer2.0.conv1.weight", *(f"layer2.0.bn1.{s}" for s in bn),
        "layer2.0.conv2.weight", *(f"layer2.0.bn2.{s}" for s in bn),
        "layer2.0.downsample.0.weight", *(f"layer2.0.downsample.1.{s}" for s in bn)]
    assert [k for k in keys if k.endswith("conv1.weight") or k.endswith("conv2.weight")
            or k.endswith("downsample.0.weight")] == [
        "conv1.weight",
        "layer1.0.conv1.weight", "layer1.0.conv2.weight", "layer1.1.conv1.weight", "layer1.1.conv2.weight",
        "layer2.0.conv1.weight", "layer2.0.conv2.weight", "layer2.0.downsample.0.weight",
        "layer2.1.conv1.weight", "layer2.1.conv2.weight",
        "layer3.0.conv1.weight", "layer3.0.conv2.weight", "layer3.0.downsample.0.weight",
        "layer3.1.conv1.weight", "layer3.1.conv2.weight",
        "layer4.0.conv1.weight", "layer4.0.conv2.weight", "layer4.0.downsample.0.weight",
        "layer4.1.conv1.weight", "layer4.1.conv2.weight"]


def test_shapes_and_v15_strides_match_torchvision():
    sd = _meta("resnet18").state_dict()
    assert sd["conv1.weight"].shape == (64, 3, 7, 7)
    assert sd["layer2.0.downsample.0.weight"].shape == (128, 64, 1, 1)
    assert sd["fc.weight"].shape == (1000, 512)
    r50 = _meta("resnet50")
    sd = r50.state_dict()
    assert sd["layer1.0.conv1.weight"].shape == (64, 64, 1, 1)
    assert sd["layer1.0.downsample.0.weight"].shape == (256, 64, 1, 1)
    assert sd["layer2.0.conv2.weight"].shape == (128, 128, 3, 3)
    assert sd["fc.weight"].shape == (1000, 2048)
    assert r50.feature_dim == 2048
    # v1.5: the stride is on the 3x3 conv of the first bottleneck of a stage, not on its 1x1
    assert r50.layer2[0].conv1.stride == (1, 1) and r50.layer2[0].conv2.stride == (2, 2)
    assert r50.layer2[0].downsample[0].stride == (2, 2)


def test_torchvision_state_dict_loads_strictly():
    # a state dict with torchvision's names and shapes (here: another instance's) loads with strict=True
    a, b = _tiny(width=64, image_size=(224, 224)), _tiny(width=64, image_size=(224, 224))
    b.load_state_dict(a.state_dict(), strict=True)
    assert torch.equal(b.fc.weight, a.fc.weight)


@pytest.mark.parametrize("depth, in_channels, size, stem", [
    (18, 1, (28, 28), "cifar"), (18, 3, (32, 32), "cifar"), (18, 3, (64, 64), "cifar"),
    (18, 3, (48, 96), "cifar"), (18, 3, (224, 224), "imagenet"), (34, 1, (28, 28), "cifar"),
    (50, 3, (32, 32), "cifar")])
def test_output_shapes_and_auto_stem(depth, in_channels, size, stem):
    model = _tiny(depth, in_channels=in_channels, image_size=size)
    assert model.stem == stem
    if stem == "cifar":
        assert model.conv1.kernel_size == (3, 3) and model.conv1.stride == (1, 1)
        assert isinstance(model.maxpool, nn.Identity)
    else:
        assert model.conv1.kernel_size == (7, 7) and model.conv1.stride == (2, 2)
        assert isinstance(model.maxpool, nn.MaxPool2d)
    x = torch.randn(2, in_channels, *size)
    assert model.feature_dim == 8 * 8 * (4 if depth == 50 else 1)
    assert model.embed(x).shape == (2, model.feature_dim)
    assert model(x).shape == (2, 5)
    assert model.fused_stem is False


def test_explicit_stem_overrides_auto_and_full_width_forward():
    model = build_resnet("resnet18", in_channels=3, num_classes=10, image_size=(64, 64))
    assert model.stem == "cifar"  # auto at 64
    model = build_resnet(ResNetSpec(stem="imagenet"), in_channels=3, num_classes=10, image_size=(64, 64))
    assert model.stem == "imagenet" and isinstance(model.maxpool, nn.MaxPool2d)
    assert model(torch.randn(2, 3, 64, 64)).shape == (2, 10)
    assert _tiny(image_size=(224, 224), stem="cifar").stem == "cifar"


def test_registry_entries():
    assert set(RESNET_SPECS) == {"resnet18", "resnet34", "resnet50", "resnet18-gn", "resnet50-gn",
                                 "resnet18-cifar"}
    assert RESNET_SPECS["resnet50-gn"].norm == "groupnorm" and RESNET_SPECS["resnet50-gn"].depth == 50
    assert RESNET_SPECS["resnet18-cifar"].stem == "cifar"
    assert all(s.name == n for n, s in RESNET_SPECS.items())
    assert RESNET_SPECS["resnet18-gn"].to_dict() == {
        "name": "resnet18-gn", "depth": 18, "norm": "groupnorm", "stem": "auto", "width": 64,
        "zero_init_residual": False}
    assert _meta("resnet18-cifar").stem == "cifar"


def test_norm_variants():
    gn = _meta("resnet18-gn")
    assert isinstance(gn.bn1, nn.GroupNorm) and gn.bn1.num_groups == 32
    assert isinstance(gn.layer2[0].downsample[1], nn.GroupNorm)
    assert not list(gn.buffers())
    # names stay torchvision's: bn1, bn2, downsample.1
    assert "layer2.0.downsample.1.weight" in gn.state_dict() and "layer1.0.bn2.bias" in gn.state_dict()
    assert _tiny(width=8, norm="groupnorm").bn1.num_groups == 8  # gcd(32, 8)
    assert _tiny(width=24, norm="groupnorm").bn1.num_groups == 8  # gcd(32, 24)
    assert _tiny(width=3, norm="groupnorm").bn1.num_groups == 1
    inst = _tiny(width=8, norm="instancenorm")
    assert inst.layer3[0].bn1.num_groups == inst.layer3[0].bn1.num_channels == 32
    assert isinstance(_tiny().bn1, nn.BatchNorm2d)


def test_groupnorm_batches_under_vmap():
    torch.manual_seed(0)
    models = [_tiny(norm="groupnorm", width=8, image_size=(16, 16)) for _ in range(3)]
    for m in models:  # non-trivial norm affine parameters, so they take part in the check
        with torch.no_grad():
            for p in m.parameters():
                p.add_(0.1 * torch.randn_like(p))
    assert not list(models[0].buffers())
    params, buffers = torch.func.stack_module_state(models)
    base = copy.deepcopy(models[0]).to("meta")
    x = torch.randn(4, 3, 16, 16)

    def run(p, b, xb):
        return torch.func.functional_call(base, (p, b), (xb,))

    batched = torch.func.vmap(run, in_dims=(0, 0, None))(params, buffers, x)
    single = torch.stack([m(x) for m in models])
    assert batched.shape == (3, 4, 5)
    torch.testing.assert_close(batched, single, atol=1e-5, rtol=1e-5)


def test_determinism_and_init():
    torch.manual_seed(0)
    a = _tiny(width=16)
    torch.manual_seed(0)
    b = _tiny(width=16)
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert ka == kb and torch.equal(va, vb), ka
    torch.manual_seed(1)
    assert not torch.equal(_tiny(width=16).conv1.weight, a.conv1.weight)
    # kaiming normal, fan_out, relu: std = sqrt(2 / (out_channels * k * k))
    w = a.layer4[1].conv2.weight.detach()
    assert abs(float(w.std()) / math.sqrt(2 / (w.shape[0] * 9)) - 1) < 0.05
    assert torch.equal(a.bn1.weight, torch.ones(16)) and torch.equal(a.bn1.bias, torch.zeros(16))
    bound = 1 / math.sqrt(a.feature_dim)  # nn.Linear's default init
    assert float(a.fc.weight.detach().abs().max()) <= bound and float(a.fc.bias.detach().abs().max()) <= bound


@pytest.mark.parametrize("depth, block, last", [(18, BasicBlock, "bn2"), (50, Bottleneck, "bn3")])
@pytest.mark.parametrize("norm", ["batchnorm", "groupnorm"])
def test_zero_init_residual(depth, block, last, norm):
    model = _tiny(depth, norm=norm, zero_init_residual=True)
    blocks = [m for m in model.modules() if isinstance(m, block)]
    assert len(blocks) == (8 if depth == 18 else 16)
    for blk in blocks:
        assert torch.equal(getattr(blk, last).weight, torch.zeros_like(getattr(blk, last).weight))
        assert torch.equal(blk.bn1.weight, torch.ones_like(blk.bn1.weight))
        if blk.downsample is not None:  # the shortcut's norm is not the residual branch's
            assert torch.equal(blk.downsample[1].weight, torch.ones_like(blk.downsample[1].weight))
    assert torch.equal(model.bn1.weight, torch.ones_like(model.bn1.weight))
    plain = _tiny(depth, norm=norm)
    assert all(bool((getattr(b, last).weight == 1).all()) for b in plain.modules() if isinstance(b, block))


@pytest.mark.parametrize("kwargs, match", [
    ({"depth": 20}, "depth must be 18, 34 or 50"), ({"depth": 0}, "depth must be >= 1"),
    ({"norm": "layernorm"}, "norm must be one of"), ({"norm": "groupnrom"}, "Did you mean 'groupnorm'"),
    ({"stem": "tiny"}, "stem must be one of"), ({"width": 0}, "width must be >= 1"),
    ({"name": ""}, "name must be a non-empty string"), ({"zero_init_residual": "yes"}, "True or False")])
def test_bad_specs_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ResNetSpec(**kwargs)


def test_spec_is_frozen_and_keyword_only():
    with pytest.raises(TypeError):
        ResNetSpec("resnet18")  # positional fields are refused
    spec = ResNetSpec()
    with pytest.raises(AttributeError):
        spec.depth = 34


@pytest.mark.parametrize("kwargs, match", [
    ({"in_channels": 0}, "in_channels must be >= 1"), ({"num_classes": 0}, "num_classes must be >= 1"),
    ({"image_size": (32,)}, "image_size must be"),
    ({"image_size": (0, 32)}, r"image_size\[0\] must be >= 1")])
def test_bad_model_arguments_raise(kwargs, match):
    args = {"in_channels": 3, "num_classes": 10, "image_size": (32, 32)} | kwargs
    with pytest.raises(ValueError, match=match):
        build_resnet(ResNetSpec(width=8), **args)


def test_unknown_name_raises():
    with pytest.raises(ValueError, match="Did you mean 'resnet18'"):
        build_resnet("resnet19", in_channels=3, num_classes=10, image_size=(32, 32))
