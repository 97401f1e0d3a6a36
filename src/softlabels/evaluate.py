"""``softlabels evaluate SET`` as one call: students trained on any set (ours, or images + labels made
elsewhere) under a named protocol, keyed by the set's content (a moved or copied file is the same set)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .analysis.stats import mean_std
from .config import PROTOCOLS, StudentRecipe
from .lab import Lab
from .presets import Preset
from .sets.compressed import CompressedSet
from .sets.spec import SetSpec
from .validation import check_choice

__all__ = ["SetEvaluation", "evaluate_set"]


@dataclass(frozen=True, kw_only=True)
class SetEvaluation:
    """A set's students: the protocol's accuracy per seed, its mean and population std, the set's bytes."""

    source: str
    images: int
    ipc: float
    label_kind: str
    nbytes: int
    protocol: str
    student_epochs: int
    mean: float
    std: float
    accs: list[float] = field(default_factory=list)
    spec: SetSpec | None = field(default=None, repr=False)


def evaluate_set(
    lab: Lab,
    cset: CompressedSet | str | Path,
    *,
    preset: Preset,
    seeds: Sequence[int] = (0, 1, 2),
    protocol: str = "clean",
    student: StudentRecipe | None = None,
    student_epochs: int | None = None,
    loss: str | None = None,
    image_space: str | None = None,
    quantize: bool = False,
) -> SetEvaluation:
    """Train one student per seed on ``cset`` (a set, or a path to ``.safetensors`` / ``.npz``), resumable.

    The student is ``student``, else the preset's at the set's IPC (``student_epochs`` overrides its length,
    ``loss`` its loss). The run is keyed by the set's content hash and stored with the set's true label kind,
    so ``budget`` finds it under hard or soft labels. ``image_space`` and ``quantize`` apply to a file's float
    images (:meth:`CompressedSet.from_arrays`).
    """
    check_choice("protocol", protocol, PROTOCOLS)
    source = str(cset) if isinstance(cset, (str, Path)) else "given set"
    if isinstance(cset, (str, Path)):
        cset = CompressedSet.from_file(cset, num_classes=lab.prepared.num_classes, image_space=image_space,
                                       quantize=quantize)
    lab.check_compatible(cset, name=source)
    spec = SetSpec.of_set(cset)
    recipe = student if student is not None else preset.student_for(spec.ipc)
    if student_epochs is not None:
        recipe = recipe.replace(epochs=student_epochs, steps=None)
    if loss is not None:
        recipe = recipe.replace(loss=loss)
    res = lab.evaluate(
        spec, student=recipe, seeds=tuple(seeds), protocol=protocol, study="evaluate", given=cset
    )
    key = "paper_acc" if protocol == "paper" else "test_acc"
    accs = [
        float(r["metrics"][key] if r["metrics"].get(key) is not None else r["metrics"]["test_acc"])
        for r in res
    ]
    mean, std = mean_std(accs)
    return SetEvaluation(
        source=source,
        images=len(cset),
        ipc=cset.ipc,
        label_kind=spec.label.kind,
        nbytes=int(res[0]["nbytes"]),
        protocol=protocol,
        student_epochs=recipe.epochs,
        mean=mean,
        std=std,
        accs=accs,
        spec=spec,
    )
