"""The bytes study: test accuracy against the total bytes a training set takes to store.

A cell is (IPC, label codec, expert epoch, image codec). Hard labels (codec ``hard``) at each IPC make the
hard-label curve; expert soft labels stored with dense, top-k or quantised codecs make the soft curves.
Codecs only change the labels, so cells with the same (IPC, image seed 0) share the same real images and
every soft cell at one IPC labels them with the same expert output (the epoch the shared validation sweep
chooses at that IPC). Images are stored with the lossless image codec that is smallest on the grid's images
(measured), unless one is named.

The question it answers: at a fixed budget, is it better to spend bytes on more images with hard labels
or on fewer images with rich labels? Every cell's bytes are the measured payload of the set as stored.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..analysis.budget import best_within_budget
from ..analysis.frontier import pareto_front
from ..config import LABEL_KINDS, LabelSpec, StudentRecipe
from ..lab import CellSpec, Lab
from ..presets import Preset
from ..sets.codecs import image_codec, label_codec
from ..sets.label_codecs import short_label_codec
from ..sets.selection import random_per_class
from ..sets.spec import SetSpec
from ..units import format_bytes, parse_size
from ..validation import check_choice, check_positive_int
from .base import (
    StudyResult,
    cell_stats,
    default_seeds,
    expert_epochs,
    int_list,
    planned_epochs,
    register_study,
    resolve_preset,
    seed_list,
    student_recipe,
    study_dir,
)

__all__ = [
    "DEFAULT_BUDGETS",
    "FULL_CODECS",
    "FULL_IPCS",
    "IMAGE_CODECS",
    "QUICK_CODECS",
    "QUICK_IPCS",
    "BytesPlan",
    "bytes_study",
    "canonical_codecs",
    "cell_spec",
    "image_codec_bytes",
    "resolve_plan",
]

STUDY = "bytes"
QUICK_IPCS = (1, 2, 5, 10, 20)
FULL_IPCS = (1, 2, 5, 10, 20, 50, 100)
QUICK_CODECS = ("hard", "fp16", "topk:k=2,values=fp16", "quant:bits=4,renorm=1")
FULL_CODECS = (
    "hard",
    "fp32",
    "fp16",
    "bf16",
    *(f"topk:k={k},values={v}" for k in (1, 2, 4, 8) for v in ("fp16", "int8")),
    "quant:bits=8,renorm=1",
    "quant:bits=4,renorm=1",
    "quant:bits=2,renorm=1",
)
FULL_EPOCHS = (1, 2, 5, 10, 20)
IMAGE_CODECS = ("raw", "zlib", "png")
DEFAULT_BUDGETS = ("8KB", "64KB", "512KB")
IMAGE_SEED = 0
QUICK_SEEDS = 1


def canonical_codecs(codecs: object) -> tuple[str, ...]:
    """Canonical label-codec specs, in order, without repeats; a string holds specs separated by ';' (specs
    contain commas)."""
    if isinstance(codecs, str):
        codecs = [c.strip() for c in codecs.split(";") if c.strip()]
    if not isinstance(codecs, Sequence) or not codecs:
        raise ValueError(f"codecs must be a non-empty list of label-codec specs, got {codecs!r}")
    return tuple(dict.fromkeys(label_codec(str(c)).spec for c in codecs))


@dataclass(frozen=True, kw_only=True)
class BytesPlan:
    """The resolved grid: IPCs, label codecs, expert epochs per IPC, image codecs, and how students train."""

    scale: str
    preset: Preset
    ipcs: tuple[int, ...]
    codecs: tuple[str, ...]
    expert_epochs: dict[int, tuple[int, ...]]
    epoch_source: str
    image_codecs: tuple[str, ...]
    seeds: tuple[int, ...]
    expert_key: str | None = None
    image_codec_bytes: dict = field(default_factory=dict)
    skipped: dict = field(default_factory=dict)
    student_epochs: int | None = None

    def student(self, ipc: int) -> StudentRecipe:
        return student_recipe(self.preset, ipc, student_epochs=self.student_epochs)

    def cells(self) -> list[tuple[int, str, int | None, str]]:
        """(ipc, label codec, expert epoch, image codec) of every cell; hard cells once per IPC."""
        return [(ipc, codec, e, ic) for ipc in self.ipcs for ic in self.image_codecs for codec in self.codecs
                for e in ([None] if codec == "hard" else self.expert_epochs[ipc])]


def pool_limit(lab: Lab) -> int:
    """The largest IPC the training pool supports (images of the rarest class)."""
    import torch

    return int(torch.bincount(lab.prepared.train_targets.long(), minlength=lab.prepared.num_classes).min())


def image_codec_bytes(lab: Lab, ipcs: Sequence[int], *, codecs: Sequence[str] = IMAGE_CODECS,
                      image_seed: int = IMAGE_SEED) -> dict[str, dict[int, int]]:
    """Measured image payload bytes per image codec and IPC for the images the grid stores."""
    prep = lab.prepared
    out: dict[str, dict[int, int]] = {c: {} for c in codecs}
    for ipc in ipcs:
        pos = random_per_class(prep.train_targets, ipc=ipc, num_classes=prep.num_classes, seed=image_seed)
        images = prep.dataset.train_images[prep.train_idx[pos]]
        for c in codecs:
            out[c][ipc] = int(image_codec(c).encode(images).nbytes)
    return out


def _smallest_codec(measured: Mapping[str, Mapping[int, int]]) -> str:
    totals = {c: sum(v.values()) for c, v in measured.items()}
    return min(totals, key=lambda c: (totals[c], list(totals).index(c)))


def resolve_plan(lab: Lab, *, scale: str = "quick", preset: Preset | str | None = None, ipcs: Any = None,
                 codecs: Any = None, expert_epoch: int | None = None, expert_epochs_grid: Any = None,
                 image_codec: Any = "auto", seeds: Any = None, student_epochs: int | None = None,
                 label_kind: str | None = None, measure_ipcs: Sequence[int] | None = None,
                 choose_epochs: bool = True) -> tuple[BytesPlan, Any]:
    """The study's options as a :class:`BytesPlan` (and the expert, trained if needed).

    Expert epochs per IPC: ``expert_epoch`` for all, else the shared validation sweep's choice at each IPC
    (``choose_epochs=False`` skips it and leaves the epochs empty for the caller); ``expert_epochs_grid`` adds
    a grid axis; at full scale the :data:`FULL_EPOCHS` are added. ``image_codec``: "auto" (the smallest
    lossless codec measured on the grid's images, or on ``measure_ipcs``), a codec name, or several.
    """
    p = resolve_preset(scale, preset)
    limit = pool_limit(lab)
    grid = int_list("ipcs", ipcs if ipcs is not None else (QUICK_IPCS if scale == "quick" else FULL_IPCS))
    skipped: dict[str, list] = {}
    if any(i > limit for i in grid):
        skipped["ipcs"] = [i for i in grid if i > limit]
        grid = [i for i in grid if i <= limit]
    if not grid:
        raise ValueError(f"no IPC fits the training pool (at most {limit} images per class)")
    codec_list = canonical_codecs(
        codecs if codecs is not None else (QUICK_CODECS if scale == "quick" else FULL_CODECS)
    )
    if label_kind is not None:
        check_choice("label kind", label_kind, LABEL_KINDS)
        codec_list = tuple(c for c in codec_list if (c == "hard") == (label_kind == "hard"))
    num_classes = lab.prepared.num_classes
    too_wide = [c for c in codec_list if c.startswith("topk:") and label_codec(c).k > num_classes]
    if too_wide:
        skipped["codecs"] = too_wide
        codec_list = tuple(c for c in codec_list if c not in too_wide)
    if not codec_list:
        raise ValueError("no label codec left to evaluate")
    seed_ids = tuple(seed_list(seeds, default=default_seeds(scale, p, quick=QUICK_SEEDS)))
    measured = image_codec_bytes(lab, sorted({i for i in (measure_ipcs or grid) if i <= limit} or set(grid)))
    if image_codec in (None, "auto"):
        image_list: tuple[str, ...] = (_smallest_codec(measured),)
    else:
        names = image_codec.split(",") if isinstance(image_codec, str) else list(image_codec)
        image_list = tuple(dict.fromkeys(_image_spec(c) for c in names))
    expert, epochs, source = None, {ipc: () for ipc in grid}, "no soft labels"
    if any(c != "hard" for c in codec_list):
        last = planned_epochs(lab, p.expert)  # every option is checked before the expert trains
        axis = (
            [] if expert_epochs_grid is None else int_list("expert_epochs", expert_epochs_grid, maximum=last)
        )
        if expert_epoch is not None:
            e = check_positive_int("expert_epoch", expert_epoch)
            if e > last:
                raise ValueError(f"expert epoch {e} is not available; the expert has epochs 0..{last}")
            base, source = dict.fromkeys(grid, e), "given"
        expert = lab.expert(p.expert)
        if expert_epoch is None and choose_epochs and not axis:
            base, source = expert_epochs(lab, p, expert, grid)
        elif expert_epoch is None:
            base, source = {}, "grid"
        extra = [e for e in FULL_EPOCHS if e <= last] if scale == "full" else []
        epochs = {ipc: tuple(sorted({*([base[ipc]] if ipc in base else []), *axis, *extra})) for ipc in grid}
    plan = BytesPlan(scale=scale, preset=p, ipcs=tuple(grid), codecs=codec_list, expert_epochs=epochs,
                     epoch_source=source, image_codecs=image_list, seeds=seed_ids,
                     expert_key=expert.key if expert else None, image_codec_bytes=measured, skipped=skipped,
                     student_epochs=None if student_epochs is None else check_positive_int("student_epochs",
                                                                                           student_epochs))
    return plan, expert


def _image_spec(name: object) -> str:
    return image_codec(str(name).strip()).spec


def cell_label(codec: str, expert_epoch: int | None) -> LabelSpec:
    """The label spec of a cell: hard labels for codec ``hard``, else soft labels at ``expert_epoch``."""
    if codec == "hard":
        return LabelSpec(kind="hard", codec="hard")
    return LabelSpec(kind="soft", expert_epoch=expert_epoch, codec=codec)


def cell_spec(plan: BytesPlan, expert, *, ipc: int, codec: str, expert_epoch: int | None,
              image_codec: str) -> CellSpec:
    """One cell's students for :meth:`Lab.evaluate_many`."""
    spec = SetSpec(
        ipc=ipc, label=cell_label(codec, expert_epoch), image_seed=IMAGE_SEED, image_codec=image_codec
    )
    return CellSpec(
        set=spec,
        student=plan.student(ipc),
        seeds=plan.seeds,
        experts=(expert,) if expert else (),
        study=STUDY,
    )


@register_study(STUDY, help="accuracy vs stored bytes over IPC x label codec (hard, fp16, top-k, quantised) "
                            "x expert epoch: Pareto frontier and best soft vs hard set per byte budget")
def bytes_study(lab: Lab, *, scale: str = "quick", ipcs: Sequence[int] | None = None, codecs: Any = None,
                expert_epoch: int | None = None, expert_epochs: Sequence[int] | None = None,
                image_codec: Any = "auto", seeds: Sequence[int] | None = None, budgets: Any = None,
                student_epochs: int | None = None, preset: Preset | str | None = None) -> StudyResult:
    """Accuracy (final-epoch test, clean protocol, mean over seeds) against total stored bytes.

    Options: ``ipcs``, ``codecs`` (label-codec specs; a string separates them with ';'), ``expert_epoch``
    (default: chosen on validation per IPC), ``expert_epochs`` (a grid axis), ``image_codec`` ("auto": the
    smallest lossless codec measured on the grid's images), ``seeds``, ``budgets`` (extra sizes such as
    "16KB"), ``student_epochs`` (override), ``preset``.
    """
    plan, expert = resolve_plan(lab, scale=scale, preset=preset, ipcs=ipcs, codecs=codecs,
                                expert_epoch=expert_epoch, expert_epochs_grid=expert_epochs,
                                image_codec=image_codec, seeds=seeds, student_epochs=student_epochs)
    cells = plan.cells()
    specs = [cell_spec(plan, expert, ipc=ipc, codec=codec, expert_epoch=e, image_codec=ic)
             for ipc, codec, e, ic in cells]  # one call: the students may train in parallel (Lab.workers)
    rows: list[dict[str, Any]] = []
    records: list[dict] = []
    for (ipc, codec, e, ic), res in zip(cells, lab.evaluate_many(specs), strict=True):
        records.extend(res)
        met = res[0]["metrics"]
        stats = cell_stats(res)
        rows.append({"ipc": ipc, "expert_epoch": e, "label_codec": codec, "image_codec": ic,
                     "bytes_images": int(met["nbytes_images"]), "bytes_labels": int(met["nbytes_labels"]),
                     "bytes_total": int(res[0]["nbytes"]), "test_mean": stats["test_mean"],
                     "test_std": stats["test_std"], "n": stats["n"],
                     "val_mean": None if stats["val_mean"] != stats["val_mean"] else stats["val_mean"],
                     "on_frontier": False, "on_hard_frontier": False})
    _mark_frontiers(rows)
    budget_list = _budgets(budgets)
    summary_budgets = []
    for text, b in budget_list:
        soft = best_within_budget(records, b, label_kind="soft")
        hard = best_within_budget(records, b, label_kind="hard")
        diff = None if soft is None or hard is None else round(100 * (soft.mean - hard.mean), 2)
        summary_budgets.append({"budget": text, "bytes": b, "best_soft": _answer_dict(soft),
                                "best_hard": _answer_dict(hard), "soft_minus_hard_points": diff})
    front = [r for r in rows if r["on_frontier"]]
    summary = {
        "dataset": lab.data.name,
        "expert_key": plan.expert_key,
        "expert_epochs": {str(i): list(es) for i, es in plan.expert_epochs.items()},
        "expert_epoch_source": plan.epoch_source,
        "image_codec": list(plan.image_codecs),
        "image_codec_bytes": {
            c: {"total": sum(v.values()), **{str(k): n for k, n in v.items()}}
            for c, v in plan.image_codec_bytes.items()
        },
        "ipcs": list(plan.ipcs),
        "label_codecs": list(plan.codecs),
        "seeds": list(plan.seeds),
        "student_epochs": {str(i): plan.student(i).epochs for i in plan.ipcs},
        "skipped": plan.skipped,
        "frontier": [_brief(r) for r in front],
        "hard_frontier": [_brief(r) for r in rows if r["on_hard_frontier"]],
        "frontier_soft_points": sum(r["label_codec"] != "hard" for r in front),
        "frontier_hard_points": sum(r["label_codec"] == "hard" for r in front),
        "budgets": summary_budgets,
        "selected_on": "val_acc",
    }
    from .bytes_plot import plot_bytes

    figures = [plot_bytes(rows, budget_list, study_dir(lab, STUDY) / "bytes.png", dataset=lab.data.name)]
    settings = {"scale": scale, "preset": plan.preset.name, "student": plan.preset.student.to_dict(),
                "expert": plan.preset.expert.to_dict(), "image_seed": IMAGE_SEED}
    return StudyResult(name=STUDY, rows=rows, summary=summary, figures=figures, settings=settings,
                       finding=verdict(rows, summary, plan))


def _mark_frontiers(rows: list[dict]) -> None:
    ok = [i for i, r in enumerate(rows) if r["test_mean"] == r["test_mean"]]
    for j in pareto_front([rows[i]["bytes_total"] for i in ok], [rows[i]["test_mean"] for i in ok]):
        rows[ok[j]]["on_frontier"] = True
    hard = [i for i in ok if rows[i]["label_codec"] == "hard"]
    for j in pareto_front([rows[i]["bytes_total"] for i in hard], [rows[i]["test_mean"] for i in hard]):
        rows[hard[j]]["on_hard_frontier"] = True


def _budgets(budgets: Any) -> list[tuple[str, int]]:
    extra = [] if budgets is None else ([budgets] if isinstance(budgets, (str, int)) else list(budgets))
    out: dict[int, str] = {}
    for b in (*DEFAULT_BUDGETS, *extra):
        n = parse_size(b)
        out.setdefault(n, str(b) if isinstance(b, str) else format_bytes(n))
    return sorted(((text, n) for n, text in out.items()), key=lambda t: t[1])


def _brief(r: Mapping) -> dict:
    return {
        k: r[k] for k in ("ipc", "label_codec", "expert_epoch", "image_codec", "bytes_total", "test_mean")
    }


def _answer_dict(a) -> dict | None:
    if a is None:
        return None
    return {
        "ipc": a.ipc,
        "label_codec": a.label_codec,
        "expert_epoch": a.expert_epoch,
        "image_codec": a.image_codec,
        "bytes_total": a.bytes_total,
        "mean": a.mean,
        "std": a.std,
        "n": a.n,
        "val_mean": a.val_mean,
    }


def verdict(rows: list[dict], summary: dict, plan: BytesPlan) -> str:
    parts = []
    for b in summary["budgets"]:
        s, h, d = b["best_soft"], b["best_hard"], b["soft_minus_hard_points"]
        if d is not None:
            verb = "beats" if d > 0 else ("ties with" if d == 0 else "trails")
            by = f" by {abs(d):.1f} points" if d != 0 else ""
            parts.append(
                f"at {b['budget']} the best soft set (IPC {s['ipc']}, {short_label_codec(s['label_codec'])}, "
                f"{100 * s['mean']:.1f}%) {verb} the best hard set (IPC {h['ipc']}, "
                f"{100 * h['mean']:.1f}%){by}"
            )
        elif s is not None:
            parts.append(f"at {b['budget']} only soft sets fit (best IPC {s['ipc']}, {100 * s['mean']:.1f}%)")
        elif h is not None:
            parts.append(f"at {b['budget']} only hard sets fit (best IPC {h['ipc']}, {100 * h['mean']:.1f}%)")
        else:
            parts.append(f"nothing fits in {b['budget']}")
    nf = summary["frontier_soft_points"] + summary["frontier_hard_points"]
    text = "; ".join(parts)
    text = text[:1].upper() + text[1:] + "." if text else ""
    text += f" {summary['frontier_soft_points']} of {nf} Pareto-frontier points use soft labels"
    hard_front = [r for r in rows if r["on_frontier"] and r["label_codec"] == "hard"]
    if hard_front:
        text += (
            f"; hard labels join the frontier from {format_bytes(min(r['bytes_total'] for r in hard_front))}"
        )
    text += "."
    measured = plan.image_codec_bytes
    if measured and len(plan.image_codecs) == 1:
        ic = plan.image_codecs[0]
        raw, chosen = sum(measured.get("raw", {}).values()), sum(measured.get(ic, {}).values())
        if raw and ic != "raw":
            text += f" Images are stored with {ic} ({100 * chosen / raw:.0f}% of raw bytes on this grid)."
    return text + " Best-in-budget sets are chosen on validation accuracy; test accuracy is reported."
