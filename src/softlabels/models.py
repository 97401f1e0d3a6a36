"""The model registry: the ConvNet family of the dataset-distillation field and ResNet-18/34/50
(:mod:`softlabels.resnets`), by name, with discovery. Every student and expert builds through
:func:`init_model`, so a registered name works wherever a model is named (recipes, experts, studies)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn

from .registry import Registry
from .resnets import RESNET_SPECS, ResNet, ResNetSpec
from .validation import check_choice, check_positive_int

NORMS = ("instancenorm", "batchnorm", "none")
POOLINGS = ("avgpool", "maxpool", "none")


@dataclass(frozen=True)
class ModelSpec:
    """Architecture of a ConvNet: ``depth`` blocks of conv3x3 -> norm -> ReLU -> pool, then a linear head.

    ``instancenorm`` is GroupNorm(width, width) as in the field's code (no running buffers).
    For 1-channel 28x28 inputs the first convolution pads by 3 (28 -> 32), as the field's ConvNet does
    for MNIST-like data, so published Fashion-MNIST tables compare.
    """

    name: str = "convnet-d3"
    depth: int = 3
    width: int = 128
    norm: str = "instancenorm"
    pooling: str = "avgpool"

    def __post_init__(self) -> None:
        check_positive_int("depth", self.depth)
        check_positive_int("width", self.width)
        check_choice("norm", self.norm, NORMS)
        check_choice("pooling", self.pooling, POOLINGS)

    def to_dict(self) -> dict:
        return asdict(self)


class ConvNet(nn.Module):
    def __init__(self, spec: ModelSpec, *, in_channels: int, num_classes: int, image_size: tuple[int, int]):
        super().__init__()
        h, w = image_size
        layers: list[nn.Module] = []
        c = in_channels
        for d in range(spec.depth):
            pad = 3 if (d == 0 and in_channels == 1 and (h, w) == (28, 28)) else 1
            layers.append(nn.Conv2d(c, spec.width, kernel_size=3, padding=pad))
            h, w = h + 2 * pad - 2, w + 2 * pad - 2
            if spec.norm == "instancenorm":
                layers.append(nn.GroupNorm(spec.width, spec.width, affine=True))
            elif spec.norm == "batchnorm":
                layers.append(nn.BatchNorm2d(spec.width))
            layers.append(nn.ReLU(inplace=True))
            if spec.pooling != "none":
                if h < 2 or w < 2:
                    raise ValueError(f"{spec.name}: image too small for depth {spec.depth} "
                                     f"(feature map {h}x{w} at block {d + 1}); use a smaller depth")
                layers.append(nn.AvgPool2d(2, 2) if spec.pooling == "avgpool" else nn.MaxPool2d(2, 2))
                h, w = h // 2, w // 2
            c = spec.width
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(c * h * w, num_classes)
        self.feature_dim = c * h * w
        # conv -> instance norm of the first block as one per-image linear map (same function, faster)
        self.fused_stem = spec.norm == "instancenorm"
        self._block = 4 if spec.pooling != "none" else 3  # modules per block: conv, norm, ReLU[, pool]

    def stem_stats(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The input statistics the fused first block needs (:func:`patch_stats`), None without it.

        They depend on the images only, so an evaluation set's can be computed once and passed to every
        model that evaluates on it (``forward(x, stats)``).
        """
        return patch_stats(x, self.features[0].padding) if self.fused_stem else None

    def embed(self, x: torch.Tensor, stats: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        if self.fused_stem:
            x = instance_norm_stem(
                x,
                self.features[0],
                self.features[1],
                stats=stats,
                channels_last=not torch.is_grad_enabled() and torch.compiler.is_compiling(),
            )
            x = self.features[2:self._block](x).contiguous()
            return self.features[self._block:](x).flatten(1)
        return self.features(x).flatten(1)

    def forward(
        self, x: torch.Tensor, stats: tuple[torch.Tensor, torch.Tensor] | None = None
    ) -> torch.Tensor:
        """Logits; ``stats`` are ``stem_stats(x)`` computed beforehand (ignored without a fused stem)."""
        return self.classifier(self.embed(x, stats))


def patch_stats(x: torch.Tensor, padding: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per image, the mean (N, 9C) and covariance (N, 9C, 9C) of its 3x3 patches at ``padding``, in fp32."""
    return _patch_moments(F.unfold(x, 3, padding=tuple(padding)))


def _patch_moments(patches: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.autocast(patches.device.type, enabled=False):
        p = patches.float()  # (N, 9C, L)
        mu = p.mean(-1)
        pc = p - mu[:, :, None]
        return mu, pc @ pc.transpose(1, 2) / p.shape[-1]


def instance_norm_stem(x: torch.Tensor, conv: nn.Conv2d, norm: nn.GroupNorm, *,
                       stats: tuple[torch.Tensor, torch.Tensor] | None = None,
                       channels_last: bool = False) -> torch.Tensor:
    """``norm(conv(x))`` for a 3x3 convolution followed by instance norm, computed per image as one
    linear map of the input patches.

    The first convolution of a ConvNet reads few channels (1 or 3) and writes ``width`` channels at full
    resolution, a shape oneDNN handles poorly (its weight gradient ran far below peak). Since the
    convolution is linear, each output channel's spatial mean and variance follow from the mean and the
    (9C x 9C) covariance of the image's patches: ``mean_o = w_o . mu``, ``var_o = w_o' Cov w_o``. Folding
    the normalisation into the weights gives, per image, ``W_eff = gamma * w / std`` and a bias, applied in
    one batched matmul. Statistics are computed in fp32 (autocast off), the matmul in the autocast dtype.
    The convolution's bias cancels in the normalisation, as it does in ``norm(conv(x))``; it receives no
    gradient here. ``channels_last`` returns an NCHW-shaped view of an (N, H, W, O) result; ReLU + pooling
    of it in a compiled graph was faster in inference but slower in training (``benchmarks/RESULTS.md``).
    ``stats`` are ``patch_stats(x, conv.padding)`` computed beforehand: an evaluation set's are the same for
    every model, so they are computed once per set and reused.
    """
    n, _, h, w = x.shape
    pad_h, pad_w = conv.padding
    ho, wo = h + 2 * pad_h - 2, w + 2 * pad_w - 2
    patches = F.unfold(x, 3, padding=(pad_h, pad_w))  # (N, 9C, L)
    mu, cov = _patch_moments(patches) if stats is None else stats  # (N, 9C), (N, 9C, 9C)
    with torch.autocast(x.device.type, enabled=False):
        wf = conv.weight.float().flatten(1)  # (O, 9C)
        var = ((wf @ cov) * wf).sum(-1)  # (N, O)
        scale = norm.weight.float() * torch.rsqrt(var.clamp_min(0) + norm.eps)
        w_eff = scale[:, :, None] * wf  # (N, O, 9C)
        b_eff = norm.bias.float() - scale * (mu @ wf.t())  # (N, O)
    if not torch.is_autocast_enabled(x.device.type):
        w_eff, b_eff = w_eff.to(x.dtype), b_eff.to(x.dtype)
    if channels_last:  # (N, H, W, O): the ReLU and pooling that follow vectorise over channels
        out = torch.baddbmm(b_eff[:, None, :], patches.transpose(1, 2), w_eff.transpose(1, 2))
        return out.view(n, ho, wo, conv.out_channels).permute(0, 3, 1, 2)
    out = torch.baddbmm(b_eff[:, :, None], w_eff, patches)  # (N, O, L)
    return out.view(n, conv.out_channels, ho, wo)


ModelFactory = Callable[..., nn.Module]
#: A registered architecture: a ConvNet's spec or a ResNet's; both have ``width`` and ``norm`` fields.
AnySpec = ModelSpec | ResNetSpec
MODELS: Registry[AnySpec] = Registry("model")

for _d in (1, 2, 3, 4, 5):
    MODELS.register(f"convnet-d{_d}", ModelSpec(name=f"convnet-d{_d}", depth=_d),
                    help=f"ConvNet, {_d} blocks, width 128, instance norm, avg pooling")
MODELS.register(
    "convnet", ModelSpec(name="convnet", depth=3), help="alias of convnet-d3 (the field's 'ConvNet')"
)
MODELS.register("convnet-d3-w64", ModelSpec(name="convnet-d3-w64", depth=3, width=64),
                help="ConvNet-3, width 64: cheaper, for CPU presets")
MODELS.register("convnet-d3-w32", ModelSpec(name="convnet-d3-w32", depth=3, width=32),
                help="ConvNet-3, width 32: for tests and tiny CPU budgets")
MODELS.register("convnet-d3-bn", ModelSpec(name="convnet-d3-bn", depth=3, norm="batchnorm"),
                help="ConvNet-3 with batch norm")
for _name, _spec in RESNET_SPECS.items():
    MODELS.register(_name, _spec, help=f"ResNet-{_spec.depth} (torchvision's architecture), {_spec.norm}, "
                                       f"{_spec.stem} stem, width {_spec.width}")


def get_model_spec(name: str, **overrides) -> AnySpec:
    """The registered spec for ``name`` with optional field overrides (width=..., norm=...)."""
    spec = MODELS.get(name)
    return replace(spec, **overrides) if overrides else spec


def build_model(spec: AnySpec | str, *, in_channels: int, num_classes: int,
                image_size: tuple[int, int]) -> ConvNet | ResNet:
    if isinstance(spec, str):
        spec = get_model_spec(spec)
    if isinstance(spec, ResNetSpec):
        return ResNet(spec, in_channels=in_channels, num_classes=num_classes, image_size=tuple(image_size))
    return ConvNet(spec, in_channels=in_channels, num_classes=num_classes, image_size=tuple(image_size))


def list_models() -> dict[str, str]:
    return MODELS.describe()


def init_model(recipe_model: str, width: int | None, *, seed: int, in_channels: int, num_classes: int,
               image_size: tuple[int, int], device: torch.device | str = "cpu") -> nn.Module:
    """A freshly initialised model whose weights depend only on ``seed`` (the global RNG is untouched)."""
    spec = get_model_spec(recipe_model, **({"width": width} if width else {}))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        model = build_model(spec, in_channels=in_channels, num_classes=num_classes, image_size=image_size)
    return model.to(device)
