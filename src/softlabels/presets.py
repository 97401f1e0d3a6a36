"""Presets: named bundles of data, expert and student settings for the main job and the studies.

A preset also holds the two length policies every caller shares: how long a student trains at an IPC
(:meth:`Preset.student_for`) and how long the short students that choose the expert epoch train
(:meth:`Preset.sweep_student_for`).
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

from .config import DataSpec, ExpertRecipe, StudentRecipe, geometric_checkpoints
from .validation import check_choice, check_positive_int

__all__ = ["PRESETS", "Preset", "get_preset", "interpolate_epochs", "list_presets", "register_preset"]


def interpolate_epochs(anchors: Mapping[int, int], ipc: int) -> int | None:
    """Epochs at ``ipc`` from ``{ipc: epochs}`` anchors: exact at an anchor, linear in log(IPC) between two,
    the nearest anchor's beyond them; None without anchors."""
    if not anchors:
        return None
    pts = sorted(anchors.items())
    if ipc <= pts[0][0]:
        return pts[0][1]
    if ipc >= pts[-1][0]:
        return pts[-1][1]
    for (i0, e0), (i1, e1) in zip(pts, pts[1:], strict=False):
        if i0 <= ipc <= i1:
            t = (math.log(ipc) - math.log(i0)) / (math.log(i1) - math.log(i0))
            return max(1, round(e0 + t * (e1 - e0)))
    raise AssertionError("unreachable")  # pragma: no cover


LENGTH_UNITS = ("epochs", "steps")


@dataclass(frozen=True, kw_only=True)
class Preset:
    """A named bundle of settings for ``softlabels run`` and the studies.

    ``seeds``: the student seeds of every reported cell. ``sweep_epochs``: the candidate expert epochs
    (checkpoint indices) of the validation sweep. Student lengths, in ``length_unit`` ("epochs" or
    "steps"): ``student_length_by_ipc`` anchors (see :func:`interpolate_epochs`), else the student recipe's
    own; the sweep's students: ``sweep_length_by_ipc`` anchors, else ``sweep_length``, at most the student's.
    """

    name: str
    data: DataSpec
    expert: ExpertRecipe
    student: StudentRecipe
    ipcs: tuple[int, ...] = (1, 10, 50)
    seeds: tuple[int, ...] = (0, 1, 2)
    sweep_epochs: tuple[int, ...] = ()
    length_unit: str = "epochs"
    student_length_by_ipc: dict[int, int] = field(default_factory=dict)
    sweep_length_by_ipc: dict[int, int] = field(default_factory=dict)
    sweep_length: int | None = None
    description: str = ""

    def __post_init__(self) -> None:
        for name in ("ipcs", "seeds", "sweep_epochs"):
            value = getattr(self, name)
            if isinstance(value, int) or not isinstance(value, Sequence):
                raise TypeError(
                    f"Preset {name} must be a sequence of integers, e.g. (0, 1, 2), got {value!r}"
                )
            object.__setattr__(self, name, tuple(int(v) for v in value))
        if not self.seeds:
            raise ValueError("a preset needs at least one student seed")
        for s in self.seeds:
            check_positive_int("seed", s, minimum=0)
        for i in self.ipcs:
            check_positive_int("ipc", i)
        check_choice("length_unit", self.length_unit, LENGTH_UNITS)
        if self.sweep_length is not None:
            check_positive_int("sweep_length", self.sweep_length)

    def _with_length(self, recipe: StudentRecipe, length: int) -> StudentRecipe:
        return recipe.replace(steps=length) if self.length_unit == "steps" else recipe.replace(epochs=length,
                                                                                               steps=None)

    def _length(self, recipe: StudentRecipe) -> int:
        return recipe.steps if self.length_unit == "steps" and recipe.steps is not None else recipe.epochs

    def student_for(self, ipc: int) -> StudentRecipe:
        """The student recipe at ``ipc``: the one length policy of the main job and the studies."""
        e = interpolate_epochs(self.student_length_by_ipc, ipc)
        return self.student if e is None else self._with_length(self.student, e)

    def sweep_student_for(self, ipc: int) -> StudentRecipe:
        """The (shorter) student used to choose the expert epoch on validation."""
        r = self.student_for(ipc)
        e = interpolate_epochs(self.sweep_length_by_ipc, ipc) or self.sweep_length
        return r if e is None else self._with_length(r, min(self._length(r), e))

    def replace(self, **changes) -> Preset:
        return replace(self, **changes)


PRESETS: dict[str, Preset] = {}


def register_preset(p: Preset) -> Preset:
    if p.name in PRESETS:
        raise ValueError(f"preset {p.name!r} is already registered")
    PRESETS[p.name] = p
    return p


def get_preset(name: str) -> Preset:
    if name not in PRESETS:
        close = difflib.get_close_matches(name, list(PRESETS), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"unknown preset {name!r}.{hint} Valid presets: {', '.join(sorted(PRESETS))}")
    return PRESETS[name]


def list_presets() -> dict[str, str]:
    return {n: PRESETS[n].description for n in sorted(PRESETS)}


#: The default preset's student: AdamW with a cosine schedule to zero, chosen on the validation split
#: (``benchmarks/recipe_search.py``); it reaches the reference recipe's 3000-epoch accuracy in a few hundred
#: steps (``benchmarks/time_to_accuracy.py``).
FAST_STUDENT = StudentRecipe(model="convnet-d3", width=32, optimizer="adamw", lr=3e-3, schedule="cosine",
                             warmup=0.05, steps=300)

register_preset(Preset(
    name="default",
    data=DataSpec(),
    expert=ExpertRecipe(model="convnet-d3", width=32, steps=512, checkpoints=geometric_checkpoints(8, 512, 7),
                        momentum=0.9, precision="auto"),
    student=FAST_STUDENT,
    ipcs=(1, 10, 50),
    seeds=(0, 1, 2),
    sweep_epochs=(3, 5, 7),  # checkpoints after 32, 128 and 512 steps
    length_unit="steps",
    student_length_by_ipc={1: 300, 10: 200, 50: 200},
    sweep_length_by_ipc={1: 150, 10: 100, 50: 100},
    description="CPU: width-32 ConvNet-3; an expert of 512 steps on the whole training split (checkpoints "
                "after 8, 16, ..., 512 steps); fast students (AdamW, cosine; 300 / 200 / 200 steps at IPC "
                "1 / 10 / 50)",
))

register_preset(Preset(
    name="paper",
    data=DataSpec(),
    expert=ExpertRecipe(model="convnet-d3", epochs=50),
    student=StudentRecipe(model="convnet-d3", epochs=3000),
    ipcs=(1, 10, 50),
    seeds=(0, 1, 2, 3, 4),
    sweep_epochs=(1, 2, 3, 5, 8, 13, 20, 30, 50),
    sweep_length=1000,
    description="The paper's settings (width 128, 3000 student epochs, 5 seeds): for GPUs",
))

register_preset(Preset(
    name="smoke",
    data=DataSpec(train_subset=3000, val_fraction=0.1),
    expert=ExpertRecipe(model="convnet-d3", width=32, epochs=3, train_images=2000, precision="fp32"),
    student=StudentRecipe(model="convnet-d3", width=32, epochs=30),
    ipcs=(1, 5),
    seeds=(0, 1),
    sweep_epochs=(1, 3),
    sweep_length=20,
    description="Seconds-long end-to-end check of the whole pipeline",
))
