"""Frozen dataclass configs: the single source of truth, written beside every artifact and result.

``DataSpec`` (which data, how it is split), ``ExpertRecipe`` (how a teacher trains), ``LabelSpec`` (how a set
is labelled) and ``StudentRecipe`` (how a student trains). Presets that bundle them live in
:mod:`softlabels.presets`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from .validation import check_choice, check_fraction, check_positive_float, check_positive_int

PROTOCOLS = ("clean", "paper")
OPTIMIZERS = ("sgd", "adamw")
PRECISIONS = ("fp32", "bf16", "auto")
LABEL_KINDS = ("soft", "hard")

#: What each protocol's number means: printed beside every table.
PROTOCOL_NOTES = {
    "clean": (
        "clean protocol: expert trained on the training split minus a held-out validation split; every "
        "choice made on validation accuracy; reported numbers are test accuracy at the final student "
        "epoch, mean ± std over student seeds"
    ),
    "paper": (
        "paper protocol (the reference code's): max test accuracy over checkpoints every 200 epochs and "
        "at the end; it selects on the test set and is optimistic"
    ),
}


def describe_protocol(protocol: str) -> str:
    return PROTOCOL_NOTES[check_choice("protocol", protocol, PROTOCOLS)]


class _Config:
    def to_dict(self) -> dict[str, Any]:
        return asdict(self)  # type: ignore[call-overload]

    def replace(self, **changes: Any):
        return replace(self, **changes)  # type: ignore[type-var]

    @classmethod
    def from_dict(cls, d: dict[str, Any]):
        names = {f.name for f in fields(cls)}  # type: ignore[arg-type]
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown {cls.__name__} fields {sorted(unknown)}; valid: {sorted(names)}")
        return cls(**d)


@dataclass(frozen=True, kw_only=True)
class DataSpec(_Config):
    """Which dataset and how its training split is carved into train / validation."""

    name: str = "fashion-mnist"
    val_fraction: float = 5000 / 60000
    split_seed: int = 0
    zca: bool = False
    train_subset: int | None = None  # use a stratified subset of the training split (smoke runs)

    def __post_init__(self) -> None:
        check_fraction("val_fraction", self.val_fraction)
        if self.train_subset is not None:
            check_positive_int("train_subset", self.train_subset)


@dataclass(frozen=True, kw_only=True)
class ExpertRecipe(_Config):
    """How an expert (teacher) is trained on hard labels; a checkpoint is kept after every epoch.

    Defaults follow the reference ``buffer.py``: SGD lr 0.01, no momentum, no weight decay, batch 256,
    DSA on. ``train_images`` limits each epoch to a fixed stratified subset (CPU presets).
    """

    model: str = "convnet-d3"
    width: int | None = None
    epochs: int = 50
    lr: float = 0.01
    momentum: float = 0.0
    weight_decay: float = 0.0
    batch_size: int = 256
    dsa: bool = True
    decay: bool = False
    train_images: int | None = None
    precision: str = "fp32"
    seed: int = 0

    def __post_init__(self) -> None:
        check_positive_int("epochs", self.epochs)
        check_positive_float("lr", self.lr)
        check_positive_float("momentum", self.momentum, allow_zero=True)
        check_positive_float("weight_decay", self.weight_decay, allow_zero=True)
        check_positive_int("batch_size", self.batch_size)
        check_choice("precision", self.precision, PRECISIONS)
        check_positive_int("seed", self.seed, minimum=0)
        if self.width is not None:
            check_positive_int("width", self.width)
        if self.train_images is not None:
            check_positive_int("train_images", self.train_images)


@dataclass(frozen=True, kw_only=True)
class LabelSpec(_Config):
    """How a compressed set is labelled.

    ``kind``: "soft" (expert softmax at ``expert_epoch`` with true temperature ``temperature``),
    or "hard" (class indices). ``ensemble`` > 1 averages the logits of that many experts (seeds
    ``seed, seed+1, ...``). ``transform`` is a label-transform spec (e.g. "topk:k=3").
    ``codec`` is how labels are stored (e.g. "fp32", "fp16", "topk:k=2,values=fp16", "hard").
    Transform and codec are kept in canonical form, so equal labels have equal specs.
    """

    kind: str = "soft"
    expert_epoch: int | None = None
    temperature: float = 1.0
    ensemble: int = 1
    transform: str = "none"
    codec: str = "fp32"

    def __post_init__(self) -> None:
        from .labels.transforms import parse_transform
        from .sets.codecs import label_codec

        check_choice("label kind", self.kind, LABEL_KINDS)
        check_positive_float("temperature", self.temperature)
        check_positive_int("ensemble", self.ensemble)
        if self.expert_epoch is not None:
            check_positive_int("expert_epoch", self.expert_epoch, minimum=0)
        object.__setattr__(self, "transform", parse_transform(self.transform).spec)
        object.__setattr__(self, "codec", label_codec(self.codec).spec)


@dataclass(frozen=True, kw_only=True)
class StudentRecipe(_Config):
    """How students are trained on a compressed set (paper §6).

    SGD: momentum 0.9, weight decay 5e-4, StepLR(epochs // 4, 0.3). AdamW: weight decay 0.01, cosine.
    Cross-entropy with probability targets, DSA on every batch, batch 256. ``eval_every`` is the
    paper protocol's test-checkpoint interval (200). ``compile`` and nothing else is a speed switch that
    leaves results equal (it is not part of a run's identity).
    """

    model: str = "convnet-d3"
    width: int | None = None
    epochs: int = 3000
    lr: float = 0.01
    optimizer: str = "sgd"
    momentum: float = 0.9
    weight_decay: float | None = None
    batch_size: int = 256
    dsa: bool = True
    eval_every: int = 200
    precision: str = "auto"
    compile: str = "auto"

    def __post_init__(self) -> None:
        check_positive_int("epochs", self.epochs)
        check_positive_float("lr", self.lr)
        check_choice("optimizer", self.optimizer, OPTIMIZERS)
        check_positive_float("momentum", self.momentum, allow_zero=True)
        check_positive_int("batch_size", self.batch_size)
        check_positive_int("eval_every", self.eval_every)
        check_choice("precision", self.precision, PRECISIONS)
        check_choice("compile", self.compile, ("auto", "on", "off"))
        if self.weight_decay is not None:
            check_positive_float("weight_decay", self.weight_decay, allow_zero=True)
        if self.width is not None:
            check_positive_int("width", self.width)

    @property
    def resolved_weight_decay(self) -> float:
        if self.weight_decay is not None:
            return self.weight_decay
        return 5e-4 if self.optimizer == "sgd" else 0.01

    @property
    def model_name(self) -> str:
        """The model and its width as one name, e.g. ``convnet-d3-w32``."""
        return self.model if self.width is None else f"{self.model}-w{self.width}"

    def identity(self) -> dict[str, Any]:
        """The fields that change results (speed switches that keep results equal are excluded)."""
        d = self.to_dict()
        d.pop("compile")
        return d
