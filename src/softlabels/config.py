"""Frozen dataclass configs: the single source of truth, written beside every artifact and result.

``DataSpec`` (which data, how it is split), ``ExpertRecipe`` (how a teacher trains), ``LabelSpec`` (how a set
is labelled) and ``StudentRecipe`` (how a student trains). Presets that bundle them live in
:mod:`softlabels.presets`.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from .validation import check_bool, check_choice, check_fraction, check_positive_float, check_positive_int

PROTOCOLS = ("clean", "paper")
OPTIMIZERS = ("sgd", "adamw")
PRECISIONS = ("fp32", "bf16", "auto")
LABEL_KINDS = ("soft", "hard", "learned")

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


def _check_model(name: str) -> None:
    """An unknown model name fails here, with the closest registered one, before any data or training."""
    from .models import MODELS

    MODELS.get(name)


def describe_protocol(protocol: str) -> str:
    return PROTOCOL_NOTES[check_choice("protocol", protocol, PROTOCOLS)]


class _Config:
    def to_dict(self) -> dict[str, Any]:
        """The fields as plain JSON values (tuples become lists), as written beside artifacts."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}  # type: ignore[call-overload]

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
    """How an expert (teacher) is trained on hard labels, with checkpoints along the way.

    Length: ``steps`` optimizer steps (batches of ``batch_size`` drawn from the whole training pool, pass
    after pass), checkpointed after each step listed in ``checkpoints`` and at the end; or, without
    ``steps``, ``epochs`` passes checkpointed after each (``train_images`` limits a pass to that many random
    images). A step budget means the same training on any dataset size; checkpoints can be spaced finely
    early, where the best soft labels are. Checkpoint k (0 = the initial weights) is "expert epoch" k.
    Defaults follow the reference ``buffer.py``: SGD lr 0.01, no momentum, no weight decay, batch 256, DSA.
    """

    model: str = "convnet-d3"
    width: int | None = None
    epochs: int = 50
    steps: int | None = None
    checkpoints: tuple[int, ...] = ()
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
        _check_model(self.model)
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
        if isinstance(self.checkpoints, (str, bytes)) or not isinstance(self.checkpoints, (tuple, list)):
            raise TypeError(f"checkpoints must be a sequence of step counts, got {self.checkpoints!r}")
        ckpts = tuple(sorted({check_positive_int("checkpoint step", c) for c in self.checkpoints}))
        object.__setattr__(self, "checkpoints", ckpts)
        if self.steps is not None:
            check_positive_int("steps", self.steps)
            if self.train_images is not None:
                raise ValueError("train_images limits an epoch; with a step budget every step draws from the "
                                 "whole pool: drop train_images")
            if ckpts and ckpts[-1] > self.steps:
                raise ValueError(
                    f"checkpoint step {ckpts[-1]} is beyond the {self.steps} steps of the recipe"
                )
        elif ckpts:
            raise ValueError("checkpoints are step counts: give the recipe a step budget (steps=...)")

    def schedule(self, n_pool: int) -> tuple[int, int, list[int]]:
        """(total steps, images per pass, the steps after which checkpoints 1, 2, ... are kept)."""
        if self.steps is None:
            per_pass = min(n_pool, self.train_images or n_pool)
            spp = math.ceil(per_pass / self.batch_size)
            return spp * self.epochs, per_pass, [spp * e for e in range(1, self.epochs + 1)]
        return self.steps, n_pool, sorted({c for c in self.checkpoints if c < self.steps} | {self.steps})

    def truncated(self, n_checkpoints: int, n_pool: int) -> ExpertRecipe:
        """The recipe stopped after checkpoint ``n_checkpoints`` (without lr decay its checkpoints are the
        first ones of this recipe's, bit for bit)."""
        total, _, ckpts = self.schedule(n_pool)
        k = check_positive_int("n_checkpoints", n_checkpoints)
        if k >= len(ckpts):
            return self
        if self.steps is None:
            return self.replace(epochs=k)
        return self.replace(steps=ckpts[k - 1], checkpoints=tuple(ckpts[: k - 1]))


def geometric_checkpoints(first: int, last: int, n: int) -> tuple[int, ...]:
    """``n`` checkpoint steps spaced geometrically from ``first`` to ``last`` (rounded, distinct)."""
    if n < 2 or not 0 < first < last:
        raise ValueError(f"need n >= 2 and 0 < first < last, got n={n}, first={first}, last={last}")
    ratio = (last / first) ** (1 / (n - 1))
    return tuple(sorted({round(first * ratio**i) for i in range(n)}))


@dataclass(frozen=True, kw_only=True)
class LabelSpec(_Config):
    """How a compressed set is labelled.

    ``kind``: "soft" (expert softmax at ``expert_epoch`` with true temperature ``temperature``),
    "hard" (class indices), or "learned" (label logits trained by truncated back-propagation through
    unrolled students, :mod:`softlabels.labels.learners`; ``learner`` is its spec, default
    :data:`~softlabels.labels.learners.DEFAULT_LEARNER`). ``ensemble`` > 1 combines that many experts (the
    first ``ensemble`` experts given: seeds ``seed, seed+1, ...`` or a committee of architectures) by
    ``ensemble_mode``: "logits" (softmax of the mean logits), "probs" (mean softmax, MEAL V2) or "vote"
    (committee vote), the last two with ``weights=equal|prior`` (see :mod:`softlabels.labels.generate`).
    ``transform`` is a label-transform spec (e.g. "topk:k=3").
    ``codec`` is how labels are stored (e.g. "fp32", "fp16", "topk:k=2,values=fp16", "hard"; default "hard"
    for hard labels, "fp32" for soft ones).
    Transform and codec are kept in canonical form, so equal labels have equal specs.
    """

    kind: str = "soft"
    expert_epoch: int | None = None
    temperature: float = 1.0
    ensemble: int = 1
    transform: str = "none"
    codec: str | None = None
    ensemble_mode: str = "logits"
    learner: str | None = None

    def __post_init__(self) -> None:
        from .labels.committees import COMMITTEES
        from .labels.learners import DEFAULT_LEARNER, LEARNERS
        from .labels.transforms import parse_transform
        from .sets.codecs import label_codec

        check_choice("label kind", self.kind, LABEL_KINDS)
        if self.kind == "learned":
            object.__setattr__(self, "learner", LEARNERS.canonical(self.learner or DEFAULT_LEARNER))
            if self.expert_epoch is not None or self.ensemble != 1 or self.temperature != 1.0:
                raise ValueError("learned labels read no expert: drop expert_epoch, ensemble and temperature "
                                 "(the learner spec sets how they are learned)")
        elif self.learner is not None:
            raise ValueError(f"learner= is for learned labels; drop it or use kind='learned' (got kind "
                             f"{self.kind!r})")
        if self.codec is None:
            object.__setattr__(self, "codec", "hard" if self.kind == "hard" else "fp32")
        check_positive_float("temperature", self.temperature)
        check_positive_int("ensemble", self.ensemble)
        if self.expert_epoch is not None:
            check_positive_int("expert_epoch", self.expert_epoch, minimum=0)
        object.__setattr__(self, "transform", parse_transform(self.transform).spec)
        object.__setattr__(self, "codec", label_codec(self.codec).spec)
        object.__setattr__(self, "ensemble_mode", COMMITTEES.canonical(self.ensemble_mode))

    def to_dict(self) -> dict[str, Any]:
        d = super().to_dict()
        if d["ensemble_mode"] == "logits":  # the only mode before committees: keys of earlier runs stay valid
            del d["ensemble_mode"]
        if d["learner"] is None:  # likewise for the labels of every kind but "learned"
            del d["learner"]
        return d


SCHEDULES = ("auto", "cosine", "linear")
TTA_MODES = ("none", "flip")


@dataclass(frozen=True, kw_only=True)
class StudentRecipe(_Config):
    """How students are trained on a compressed set.

    Length: ``steps`` optimizer steps if given, else ``epochs`` passes over the set (a set of N images takes
    ceil(N / batch) steps per epoch). ``schedule``: "auto" is the reference code's (SGD: StepLR(epochs // 4,
    0.3); AdamW: cosine per epoch); "cosine" and "linear" decay to zero per step after ``warmup`` (a fraction
    of the steps, linear from zero). SGD: momentum 0.9 (``nesterov`` optional), weight decay 5e-4; AdamW:
    weight decay 0.01. ``loss``: a student-loss spec (:func:`softlabels.engine.losses.list_losses`; default
    cross-entropy with probability targets; losses with a hard-label term use the images' true classes);
    ``label_smoothing`` mixes the uniform distribution into the targets. DSA on every batch, batch 256;
    ``even_batches`` splits each epoch into batches of equal size (see :meth:`batch_bounds`).
    ``ema`` > 0 evaluates an exponential moving average of the weights (decay per step); ``tta="flip"``
    averages the logits of each image and its mirror at evaluation.
    ``eval_every`` is the paper protocol's test-checkpoint interval (200 epochs). ``compile`` and nothing
    else is a speed switch that leaves results equal (it is not part of a run's identity).
    """

    model: str = "convnet-d3"
    width: int | None = None
    epochs: int = 3000
    steps: int | None = None
    lr: float = 0.01
    optimizer: str = "sgd"
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float | None = None
    schedule: str = "auto"
    warmup: float = 0.0
    batch_size: int = 256
    even_batches: bool = False
    dsa: bool = True
    label_smoothing: float = 0.0
    ema: float = 0.0
    tta: str = "none"
    loss: str = "soft-ce"
    eval_every: int = 200
    precision: str = "auto"
    compile: str = "auto"

    def __post_init__(self) -> None:
        _check_model(self.model)
        check_positive_int("epochs", self.epochs)
        if self.steps is not None:
            check_positive_int("steps", self.steps)
        check_positive_float("lr", self.lr)
        check_choice("optimizer", self.optimizer, OPTIMIZERS)
        check_positive_float("momentum", self.momentum, allow_zero=True)
        check_bool("nesterov", self.nesterov)
        if self.nesterov and (self.optimizer != "sgd" or self.momentum == 0):
            raise ValueError("nesterov needs optimizer='sgd' with momentum > 0")
        check_choice("schedule", self.schedule, SCHEDULES)
        check_fraction("warmup", self.warmup)
        if self.warmup and self.schedule == "auto":
            raise ValueError("warmup applies to the per-step schedules: use schedule='cosine' or 'linear'")
        check_positive_int("batch_size", self.batch_size)
        check_bool("even_batches", self.even_batches)
        check_fraction("label_smoothing", self.label_smoothing)
        check_fraction("ema", self.ema)
        check_choice("tta", self.tta, TTA_MODES)
        from .engine.losses import loss_fn

        object.__setattr__(self, "loss", loss_fn(self.loss).spec)  # canonical, so equal losses share keys
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

    def steps_per_epoch(self, n_images: int) -> int:
        return max(1, math.ceil(n_images / min(self.batch_size, max(1, n_images))))

    def batch_bounds(self, n_images: int) -> list[tuple[int, int]]:
        """The (start, end) of each batch of an epoch over a permutation of ``n_images``: ``batch_size``
        images and a smaller last batch (the reference's DataLoader), or with ``even_batches`` the same
        number of batches with sizes differing by at most one (a 4-image last batch of 100 images at batch
        32 is a noisy full-lr step: it cost 1.5 validation points at IPC 10)."""
        n = max(1, n_images)
        nb = self.steps_per_epoch(n)
        if not self.even_batches:
            bs = min(self.batch_size, n)
            return [(s, min(s + bs, n)) for s in range(0, n, bs)]
        q, r = divmod(n, nb)
        ends = [(i + 1) * q + min(i + 1, r) for i in range(nb)]
        return list(zip([0, *ends[:-1]], ends, strict=True))

    def total_steps(self, n_images: int) -> int:
        """Optimizer steps of one student on ``n_images`` images."""
        return self.steps if self.steps is not None else self.epochs * self.steps_per_epoch(n_images)

    def total_epochs(self, n_images: int) -> int:
        """Passes over the set (the last one partial when ``steps`` is not a multiple of an epoch)."""
        return math.ceil(self.total_steps(n_images) / self.steps_per_epoch(n_images))

    def identity(self) -> dict[str, Any]:
        """The fields that change results (speed switches that keep results equal are excluded)."""
        d = self.to_dict()
        d.pop("compile")
        if d["loss"] == "soft-ce":  # the only loss before StudentRecipe.loss: keys of earlier runs stay valid
            d.pop("loss")
        if not d["even_batches"]:  # likewise: absent before the option existed
            d.pop("even_batches")
        return d
