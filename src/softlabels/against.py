"""A fair verdict on anyone's distilled set (``softlabels evaluate SET --against-baselines``).

The paper's point is that a distillation method's accuracy is mostly its soft labels. So a set is judged,
under one leakage-free protocol (students of the preset's length policy, the expert epoch chosen on
validation, final-epoch test accuracy), against what its parts are worth alone:

=====================  ==========================================================================
``given``              the set as given
``given-hard``         its images with hard labels (its true classes)
``given-relabelled``   its images relabelled by our expert (the validation-chosen epoch, T = 1)
``random-soft``        random real images with our expert's labels at the same IPC (the soft-label baseline)
``random-hard``        random real images with hard labels at the same IPC
``*-equal-bytes``      the random baselines at the largest IPC whose stored set fits in the given set's bytes
=====================  ==========================================================================

Repetition ``r`` trains student seed ``r`` on every row and draws the random images with image seed ``r``
(``vary_images``), so the gains are paired by repetition and their intervals include the image draw.

The label-robust score follows DD-Ranking's definition (HLR = full-data hard accuracy - the set's images with
hard labels; IOR = the set - random images with the same kind of labels; alpha = w IOR - (1 - w) HLR;
LRS = (e^alpha - e^-1) / (e - e^-1)), but from validation-selected settings only: DD-Ranking picks the
student's learning rate and checkpoint on test accuracy. The full-data reference is our expert's final
test accuracy (the whole training pool, the expert's recipe): no student is trained on the full data.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from .analysis.stats import mean_std, paired_ci
from .config import LabelSpec, StudentRecipe
from .experts import Trajectory
from .lab import CellSpec, Lab
from .presets import Preset
from .sets.compressed import CompressedSet
from .sets.spec import SetSpec
from .validation import check_positive_float

__all__ = ["ROWS", "BaselineComparison", "against_baselines", "label_robust_score"]

STUDY = "against-baselines"
ROWS = {
    "given": "the set as given",
    "given-hard": "its images, hard labels",
    "given-relabelled": "its images, our expert's labels",
    "random-soft": "random real images, our expert's labels (the soft-label baseline)",
    "random-hard": "random real images, hard labels",
    "random-soft-equal-bytes": "random real images, our expert's labels, at the set's bytes",
    "random-hard-equal-bytes": "random real images, hard labels, at the set's bytes",
}
BASELINE_IMAGE_CODEC = "zlib"  # the equal-bytes baselines store images losslessly, labels in fp16 (or hard)
BASELINE_LABEL_CODEC = "fp16"


def label_robust_score(*, full_hard: float, set_hard: float, set_acc: float, random_acc: float,
                       w: float = 0.5) -> dict[str, float]:
    """DD-Ranking's label-robust score from accuracies in [0, 1]: HLR, IOR, alpha and LRS in [0, 1]."""
    w = check_positive_float("w", w, allow_zero=True)
    if w > 1:
        raise ValueError(f"w (the weight of IOR against HLR) must be in [0, 1], got {w}")
    hlr, ior = full_hard - set_hard, set_acc - random_acc
    alpha = w * ior - (1 - w) * hlr
    return {"hlr": hlr, "ior": ior, "alpha": alpha,
            "lrs": (math.exp(alpha) - math.exp(-1)) / (math.e - math.exp(-1))}


@dataclass(frozen=True, kw_only=True)
class BaselineComparison:
    """The rows (one per baseline: ``row``, ``what``, ``ipc``, ``nbytes``, ``mean``, ``std``, ``accs``,
    ``gain``/``gain_lo``/``gain_hi`` of the set over it), the main gain (set - soft-label baseline), the
    label-robust score and everything a reader needs to know how they were made."""

    source: str
    ipc: int
    label_kind: str
    nbytes: int
    expert_epochs: dict[int, int]
    seeds: tuple[int, ...]
    rows: list[dict[str, Any]]
    gain: tuple[float, float, float]
    score: dict[str, float]
    protocol: str = "clean"
    notes: list[str] = field(default_factory=list)

    def row(self, name: str) -> dict[str, Any] | None:
        return next((r for r in self.rows if r["row"] == name), None)


def _hard_copy(cset: CompressedSet) -> CompressedSet:
    man = {k: v for k, v in cset.manifest.items() if k in ("image_space", "image_codec", "mean", "std")}
    return CompressedSet(cset.images.clone(), F.one_hot(cset.targets, cset.num_classes).float(),
                         cset.targets.clone(), {**man, "label_codec": "hard", "source": "given images"})


@torch.no_grad()
def _relabelled(lab: Lab, cset: CompressedSet, expert: Trajectory, epoch: int, codec: str) -> CompressedSet:
    ds = lab.prepared.dataset
    x = cset.model_input(device=lab.device, zca=lab.prepared.zca, mean=ds.mean, std=ds.std)
    model = expert.model(epoch, device=lab.device).eval()
    probs = torch.cat([F.softmax(model(x[i:i + 512]).float(), 1) for i in range(0, len(x), 512)]).cpu()
    man = {k: v for k, v in cset.manifest.items() if k in ("image_space", "image_codec", "mean", "std")}
    return CompressedSet(cset.images.clone(), probs, cset.targets.clone(),
                         {**man, "source": f"given images, labels of expert {expert.key} epoch {epoch}"}
                         ).encode(label_codec=codec)


def _equal_bytes_ipc(lab: Lab, label: LabelSpec, budget: int, expert: Trajectory, *, image_seed: int) -> int:
    """The largest IPC whose random set (``label``, :data:`BASELINE_IMAGE_CODEC`) fits in ``budget`` bytes,
    measured on built sets (0 when even IPC 1 does not fit)."""
    def nbytes(ipc: int) -> int:
        spec = SetSpec(ipc=ipc, label=label, image_seed=image_seed, image_codec=BASELINE_IMAGE_CODEC)
        return lab.build_set(spec, experts=[expert]).nbytes["total"]

    prep = lab.prepared
    most = int(torch.bincount(prep.train_targets.long(), minlength=prep.num_classes).min())
    if nbytes(1) > budget:
        return 0
    lo, hi = 1, 2
    while hi <= most and nbytes(hi) <= budget:
        lo, hi = hi, hi * 2
    hi = min(hi, most + 1)
    while hi - lo > 1:  # lo fits, hi does not (or is past the pool)
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if nbytes(mid) <= budget else (lo, mid)
    return lo


def against_baselines(lab: Lab, cset: CompressedSet | str | Path, *, preset: Preset,
                      seeds: Sequence[int] = (0, 1, 2), expert_epoch: int | None = None,
                      student: StudentRecipe | None = None, vary_images: bool = True, w: float = 0.5,
                      equal_bytes: bool = True, image_space: str | None = None,
                      quantize: bool = False, loss: str | None = None) -> BaselineComparison:
    """Judge ``cset`` (a set, or a path to ``.safetensors`` / ``.npz``) against the baselines of
    :data:`ROWS` under the clean protocol, resumable (every student is keyed in the lab's store).

    ``student``: the students of every row (default: the preset's at each row's IPC; ``loss`` replaces its
    loss). ``expert_epoch``: our
    expert's epoch for the relabelled and soft rows (default: the main job's validation sweep). ``seeds``:
    the repetitions (student seed r; image seed r of the random rows when ``vary_images``).
    """
    from .main_job import choose_expert_epochs

    source = str(cset) if isinstance(cset, (str, Path)) else "given set"
    if isinstance(cset, (str, Path)):
        cset = CompressedSet.from_file(cset, num_classes=lab.prepared.num_classes, image_space=image_space,
                                       quantize=quantize)
    lab.check_compatible(cset, name=source)
    seeds = tuple(int(s) for s in seeds)
    if loss is not None:
        StudentRecipe(loss=loss)  # an unknown loss fails before any training
    if len(seeds) < 2:
        raise ValueError(
            "a comparison with confidence intervals needs at least 2 seeds, e.g. seeds=(0, 1, 2)"
        )
    spec = SetSpec.of_set(cset)
    ipc, budget = spec.ipc, int(cset.nbytes["total"])
    expert = lab.expert(preset.expert)
    last = expert.epochs_done
    if expert_epoch is not None and not 1 <= int(expert_epoch) <= last:
        raise ValueError(f"expert_epoch must be in 1..{last} (the expert's checkpoints), got {expert_epoch}")
    soft_codec = spec.label.codec if spec.label.kind == "soft" else BASELINE_LABEL_CODEC

    def epoch_at(i: int) -> int:
        if expert_epoch is not None:
            return int(expert_epoch)
        return int(choose_expert_epochs(lab, preset, expert, ipcs=[i]).chosen[i])

    def recipe(i: int) -> StudentRecipe:
        r = student if student is not None else preset.student_for(i)
        return r if loss is None else r.replace(loss=loss)

    epochs = {ipc: epoch_at(ipc)}
    plan: list[tuple[str, int, Any]] = [  # (row, ipc, a given set or a function of the image seed)
        ("given", ipc, cset), ("given-hard", ipc, _hard_copy(cset)),
        ("given-relabelled", ipc, _relabelled(lab, cset, expert, epochs[ipc], soft_codec)),
    ]

    def label(kind: str, at: int, codec: str) -> LabelSpec:
        return LabelSpec(kind="soft", expert_epoch=epochs[at], codec=codec) if kind == "soft" \
            else LabelSpec(kind="hard")

    def random_row(kind: str, at: int, *, image_codec: str = "raw", codec: str = soft_codec):
        return lambda r: SetSpec(ipc=at, label=label(kind, at, codec), image_seed=r if vary_images else 0,
                                 image_codec=image_codec)

    plan += [("random-soft", ipc, random_row("soft", ipc)), ("random-hard", ipc, random_row("hard", ipc))]
    notes = []
    for kind in ("soft", "hard") if equal_bytes else ():
        k = _equal_bytes_ipc(lab, label(kind, ipc, BASELINE_LABEL_CODEC), budget, expert, image_seed=0)
        if k == 0:
            notes.append(f"random-{kind}-equal-bytes: even IPC 1 needs more than the set's {budget:,} bytes")
            continue
        if kind == "soft" and k not in epochs:
            epochs[k] = epoch_at(k)
        plan.append((f"random-{kind}-equal-bytes", k,
                     random_row(kind, k, image_codec=BASELINE_IMAGE_CODEC, codec=BASELINE_LABEL_CODEC)))

    cells, where = [], []
    for name, at, what in plan:
        if isinstance(what, CompressedSet):
            cells.append(CellSpec(set=SetSpec.of_set(what), student=recipe(at), seeds=seeds, given=what,
                                  study=STUDY))
            where.append((name, None))
        else:
            for r in seeds:
                cells.append(
                    CellSpec(set=what(r), student=recipe(at), seeds=(r,), experts=(expert,), study=STUDY)
                )
                where.append((name, r))
    results = lab.evaluate_many(cells)
    by_row: dict[str, dict[int, dict]] = {}
    for (name, _r), res in zip(where, results, strict=True):
        by_row.setdefault(name, {}).update({int(x["config"]["seed"]): x for x in res})
    ipc_of = {name: at for name, at, _ in plan}

    def accs(name: str) -> list[float]:
        return [float(by_row[name][s]["metrics"]["test_acc"]) for s in seeds]

    rows = []
    for name in by_row:
        m, sd = mean_std(accs(name))
        nb = [int(by_row[name][s]["nbytes"]) for s in seeds]
        row = {"row": name, "what": ROWS[name], "ipc": ipc_of[name], "nbytes": round(sum(nb) / len(nb)),
               "mean": m, "std": sd, "accs": accs(name)}
        if name != "given":
            g = paired_ci(accs("given"), accs(name))
            row.update(gain=g[0], gain_lo=g[1], gain_hi=g[2])
        rows.append(row)
    full_hard = float(expert.history()[-1]["test_acc"])
    same_kind = "random-soft" if spec.label.kind == "soft" else "random-hard"
    score = label_robust_score(
        full_hard=full_hard,
        set_hard=mean_std(accs("given-hard"))[0],
        set_acc=mean_std(accs("given"))[0],
        random_acc=mean_std(accs(same_kind))[0],
        w=w,
    )
    score.update(w=w, full_hard=full_hard, random_row=same_kind)
    return BaselineComparison(
        source=source, ipc=ipc, label_kind=spec.label.kind, nbytes=budget, expert_epochs=epochs, seeds=seeds,
        rows=rows, gain=paired_ci(accs("given"), accs("random-soft")), score=score, notes=notes)
