"""Frozen dataclass configs: the single source of truth, written beside every artifact and result."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from .validation import check_choice, check_fraction, check_positive_float, check_positive_int

PROTOCOLS = ("clean", "paper")
OPTIMIZERS = ("sgd", "adamw")
PRECISIONS = ("fp32", "bf16", "auto")


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


@dataclass(frozen=True)
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


@dataclass(frozen=True)
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
        if self.width is not None:
            check_positive_int("width", self.width)
        if self.train_images is not None:
            check_positive_int("train_images", self.train_images)


@dataclass(frozen=True)
class LabelSpec(_Config):
    """How a compressed set is labelled.

    ``kind``: "soft" (expert softmax at ``expert_epoch`` with true temperature ``temperature``),
    or "hard" (class indices). ``ensemble`` > 1 averages the logits of that many experts (seeds
    ``seed, seed+1, ...``). ``transform`` is a label-transform spec (e.g. "topk:k=3").
    ``codec`` is how labels are stored (e.g. "fp32", "fp16", "topk:k=2,values=fp16", "hard").
    """

    kind: str = "soft"
    expert_epoch: int | None = None
    temperature: float = 1.0
    ensemble: int = 1
    transform: str = "none"
    codec: str = "fp32"

    def __post_init__(self) -> None:
        check_choice("label kind", self.kind, ("soft", "hard"))
        check_positive_float("temperature", self.temperature)
        check_positive_int("ensemble", self.ensemble)
        if self.expert_epoch is not None:
            check_positive_int("expert_epoch", self.expert_epoch, minimum=0)


@dataclass(frozen=True)
class StudentRecipe(_Config):
    """How students are trained on a compressed set (paper §6).

    ``loop="reference"`` trains with a re-creation of the reference code's loop (DataLoader, fp32,
    eager; SGD only) instead of softlabels' engine: a baseline for measuring speed, not for use.

    SGD: momentum 0.9, weight decay 5e-4, StepLR(epochs // 4, 0.3). AdamW: weight decay 0.01, cosine.
    Cross-entropy with probability targets, DSA on every batch, batch 256. ``eval_every`` is the
    paper protocol's test-checkpoint interval (200).
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
    loop: str = "fast"

    def __post_init__(self) -> None:
        check_positive_int("epochs", self.epochs)
        check_positive_float("lr", self.lr)
        check_choice("optimizer", self.optimizer, OPTIMIZERS)
        check_choice("loop", self.loop, ("fast", "reference"))
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

    def identity(self) -> dict[str, Any]:
        """The fields that change results (speed switches that keep results equal are excluded)."""
        d = self.to_dict()
        d.pop("compile")
        return d


@dataclass(frozen=True)
class Preset:
    """A named bundle of settings for ``softlabels run`` and the studies."""

    name: str
    data: DataSpec
    expert: ExpertRecipe
    student: StudentRecipe
    ipcs: tuple[int, ...] = (1, 10, 50)
    seeds: int = 3
    sweep_epochs: tuple[int, ...] = ()
    sweep_student_epochs: int | None = None
    student_epochs_by_ipc: dict[int, int] = field(default_factory=dict)
    sweep_epochs_by_ipc: dict[int, int] = field(default_factory=dict)
    description: str = ""

    def student_for(self, ipc: int) -> StudentRecipe:
        e = self.student_epochs_by_ipc.get(ipc)
        return self.student if e is None else self.student.replace(epochs=e)

    def sweep_student_for(self, ipc: int) -> StudentRecipe:
        """The (shorter) student used to choose the expert epoch on validation."""
        r = self.student_for(ipc)
        e = self.sweep_epochs_by_ipc.get(ipc, self.sweep_student_epochs)
        return r if e is None else r.replace(epochs=min(r.epochs, e))


PRESETS: dict[str, Preset] = {}


def register_preset(p: Preset) -> Preset:
    PRESETS[p.name] = p
    return p


register_preset(Preset(
    name="default",
    data=DataSpec(),
    expert=ExpertRecipe(model="convnet-d3", width=32, epochs=10, train_images=10000, momentum=0.9,
                        precision="auto"),
    student=StudentRecipe(model="convnet-d3", width=32, epochs=300),
    ipcs=(1, 10, 50),
    seeds=3,
    sweep_epochs=(1, 3, 10),
    sweep_student_epochs=150,
    student_epochs_by_ipc={1: 300, 10: 150, 50: 50},
    sweep_epochs_by_ipc={1: 150, 10: 100, 50: 25},
    description="CPU: width-32 ConvNet-3; a 10-epoch expert (10k images per epoch, SGD momentum 0.9, bf16 "
                "where native); short students (300/150/50 epochs at IPC 1/10/50)",
))

register_preset(Preset(
    name="paper",
    data=DataSpec(),
    expert=ExpertRecipe(model="convnet-d3", epochs=50),
    student=StudentRecipe(model="convnet-d3", epochs=3000),
    ipcs=(1, 10, 50),
    seeds=5,
    sweep_epochs=(1, 2, 3, 5, 8, 13, 20, 30, 50),
    sweep_student_epochs=1000,
    description="The paper's settings (width 128, 3000 student epochs, 5 seeds): for GPUs",
))

register_preset(Preset(
    name="smoke",
    data=DataSpec(train_subset=3000, val_fraction=0.1),
    expert=ExpertRecipe(model="convnet-d3", width=32, epochs=3, train_images=2000, precision="fp32"),
    student=StudentRecipe(model="convnet-d3", width=32, epochs=30),
    ipcs=(1, 5),
    seeds=2,
    sweep_epochs=(1, 3),
    sweep_student_epochs=20,
    description="Seconds-long end-to-end check of the whole pipeline",
))


def get_preset(name: str) -> Preset:
    if name not in PRESETS:
        import difflib

        close = difflib.get_close_matches(name, list(PRESETS), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"unknown preset {name!r}.{hint} Valid presets: {', '.join(sorted(PRESETS))}")
    return PRESETS[name]
