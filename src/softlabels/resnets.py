"""ResNet-18/34/50, architecturally identical to torchvision's (v1.5: the stride sits on the 3x3 conv).

Written here so the project does not depend on torchvision. Parameter and buffer names match
torchvision's, so with ``norm="batchnorm"``, ``stem="imagenet"`` and ``width=64`` a torchvision
``state_dict`` loads with ``strict=True``. Modules are built in torchvision's order and initialised
the same way, so the same seed draws the same weights.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import nn

from .validation import check_choice, check_positive_int

NORMS = ("batchnorm", "groupnorm", "instancenorm")
STEMS = ("auto", "imagenet", "cifar")
# blocks per stage for each depth, and whether the depth uses Bottleneck blocks
LAYERS: dict[int, tuple[tuple[int, int, int, int], bool]] = {
    18: ((2, 2, 2, 2), False),
    34: ((3, 4, 6, 3), False),
    50: ((3, 4, 6, 3), True),
}
AUTO_CIFAR_MAX_SIDE = 64  # "auto" picks the cifar stem up to this shorter side


@dataclass(frozen=True, kw_only=True)
class ResNetSpec:
    """Architecture of a ResNet.

    ``norm``: ``batchnorm`` (nn.BatchNorm2d); ``groupnorm`` (nn.GroupNorm with ``gcd(32, C)`` groups:
    32 when ``C`` is a multiple of 32 as in every stage at width 64, else the largest power of two below
    32 that divides ``C``, e.g. 8 groups at 8 channels, 1 group at an odd count); ``instancenorm``
    (GroupNorm(C, C), as the project's ConvNet). Neither GroupNorm variant has running buffers, so
    models can be batched with ``torch.func``.
    ``stem``: ``imagenet`` (7x7 stride-2 conv, norm, ReLU, 3x3 stride-2 max pool), ``cifar`` (3x3
    stride-1 conv, norm, ReLU, no pool: the usual stem for 32x32 inputs) or ``auto`` (cifar when the
    input's shorter side is <= 64, else imagenet).
    ``width``: channels of the first stage (64 in torchvision); stages have width x (1, 2, 4, 8).
    ``zero_init_residual``: zero the last norm weight of each block, so each block starts as identity.
    """

    name: str = "resnet18"
    depth: int = 18
    norm: str = "batchnorm"
    stem: str = "auto"
    width: int = 64
    zero_init_residual: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"name must be a non-empty string, got {self.name!r}")
        check_positive_int("depth", self.depth)
        if self.depth not in LAYERS:
            raise ValueError(f"depth must be 18, 34 or 50 (the torchvision ResNets), got {self.depth}")
        check_choice("norm", self.norm, NORMS)
        check_choice("stem", self.stem, STEMS)
        check_positive_int("width", self.width)
        if not isinstance(self.zero_init_residual, bool):
            raise ValueError(f"zero_init_residual must be True or False, got {self.zero_init_residual!r}")

    def to_dict(self) -> dict:
        return asdict(self)


def make_norm(kind: str, channels: int) -> nn.Module:
    if kind == "batchnorm":
        return nn.BatchNorm2d(channels)
    if kind == "groupnorm":  # 32 groups where C allows it, else the largest power of two dividing C
        return nn.GroupNorm(math.gcd(32, channels), channels)
    return nn.GroupNorm(channels, channels)  # instancenorm


def conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel_size=3, stride=stride, padding=1, bias=False)


def conv1x1(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel_size=1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, cin: int, planes: int, *, stride: int, norm: str, downsample: nn.Module | None):
        super().__init__()
        self.conv1 = conv3x3(cin, planes, stride)
        self.bn1 = make_norm(norm, planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = make_norm(norm, planes)
        self.downsample = downsample

    def last_norm(self) -> nn.Module:
        return self.bn2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin: int, planes: int, *, stride: int, norm: str, downsample: nn.Module | None):
        super().__init__()
        self.conv1 = conv1x1(cin, planes)
        self.bn1 = make_norm(norm, planes)
        self.conv2 = conv3x3(planes, planes, stride)  # v1.5: stride on the 3x3 conv, not the first 1x1
        self.bn2 = make_norm(norm, planes)
        self.conv3 = conv1x1(planes, planes * self.expansion)
        self.bn3 = make_norm(norm, planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def last_norm(self) -> nn.Module:
        return self.bn3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(out + identity)


def resolve_stem(stem: str, image_size: tuple[int, int]) -> str:
    """``auto`` -> ``cifar`` when the shorter side is <= 64, else ``imagenet``; others unchanged."""
    if stem != "auto":
        return stem
    return "cifar" if min(image_size) <= AUTO_CIFAR_MAX_SIDE else "imagenet"


class ResNet(nn.Module):
    """torchvision's ResNet for a :class:`ResNetSpec`; ``forward`` gives logits, ``embed`` the pooled
    features (N, ``feature_dim``) that ``fc`` reads. ``stem`` is the resolved stem (never ``auto``)."""

    fused_stem = False  # the engine's fused conv->instance-norm stem is for ConvNet only

    def __init__(self, spec: ResNetSpec, *, in_channels: int, num_classes: int, image_size: tuple[int, int]):
        super().__init__()
        if not isinstance(spec, ResNetSpec):
            raise TypeError(f"spec must be a ResNetSpec, got {type(spec).__name__}")
        check_positive_int("in_channels", in_channels)
        check_positive_int("num_classes", num_classes)
        if len(tuple(image_size)) != 2:
            raise ValueError(f"image_size must be (height, width), got {image_size!r}")
        h, w = (check_positive_int(f"image_size[{i}]", s) for i, s in enumerate(image_size))
        self.spec = spec
        self.stem = resolve_stem(spec.stem, (h, w))
        block = Bottleneck if LAYERS[spec.depth][1] else BasicBlock
        c = spec.width
        if self.stem == "imagenet":
            self.conv1 = nn.Conv2d(in_channels, c, kernel_size=7, stride=2, padding=3, bias=False)
        else:
            self.conv1 = conv3x3(in_channels, c)
        self.bn1 = make_norm(spec.norm, c)
        self.relu = nn.ReLU(inplace=True)
        # Identity keeps the attribute (and forward) the same for both stems; it has no state_dict entries
        imagenet = self.stem == "imagenet"
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1) if imagenet else nn.Identity()
        self._cin = c
        for i, n in enumerate(LAYERS[spec.depth][0]):
            stage = self._make_layer(block, spec.width * 2**i, n, stride=1 if i == 0 else 2, norm=spec.norm)
            setattr(self, f"layer{i + 1}", stage)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.feature_dim = self._cin
        self.fc = nn.Linear(self.feature_dim, num_classes)
        del self._cin

        for m in self.modules():  # torchvision's init; the Linear keeps its default
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)
        if spec.zero_init_residual:  # each residual branch starts at zero, so each block as identity
            for m in self.modules():
                if isinstance(m, (BasicBlock, Bottleneck)):
                    nn.init.constant_(m.last_norm().weight, 0)

    def _make_layer(self, block: type[BasicBlock] | type[Bottleneck], planes: int, blocks: int, *,
                    stride: int, norm: str) -> nn.Sequential:
        out = planes * block.expansion
        downsample = None
        if stride != 1 or self._cin != out:
            downsample = nn.Sequential(conv1x1(self._cin, out, stride), make_norm(norm, out))
        layers = [block(self._cin, planes, stride=stride, norm=norm, downsample=downsample)]
        self._cin = out
        layers += [block(out, planes, stride=1, norm=norm, downsample=None) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return torch.flatten(self.avgpool(x), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.embed(x))


RESNET_SPECS: dict[str, ResNetSpec] = {
    "resnet18": ResNetSpec(name="resnet18", depth=18),
    "resnet34": ResNetSpec(name="resnet34", depth=34),
    "resnet50": ResNetSpec(name="resnet50", depth=50),
    "resnet18-gn": ResNetSpec(name="resnet18-gn", depth=18, norm="groupnorm"),
    "resnet50-gn": ResNetSpec(name="resnet50-gn", depth=50, norm="groupnorm"),
    "resnet18-cifar": ResNetSpec(name="resnet18-cifar", depth=18, stem="cifar"),
}


def build_resnet(spec: ResNetSpec | str, *, in_channels: int, num_classes: int,
                 image_size: tuple[int, int]) -> ResNet:
    """A :class:`ResNet` for ``spec`` or the name of one in :data:`RESNET_SPECS`."""
    if isinstance(spec, str):
        spec = RESNET_SPECS[check_choice("resnet", spec, tuple(RESNET_SPECS))]
    return ResNet(spec, in_channels=in_channels, num_classes=num_classes, image_size=tuple(image_size))
