"""The bytes study: test accuracy against the total bytes a training set takes to store.

A cell is (IPC, label codec, expert epoch, image codec). Hard labels (codec ``hard``) at each IPC make the
hard-label curve; expert soft labels stored with dense, top-k or quantised codecs make the soft curves.
Codecs only change the labels, so cells with the same (IPC, image seed 0) share the same real images and
every soft cell at one expert epoch labels them with the same expert output. Images are stored with the
lossless image codec that is smallest on the grid's images (measured), unless one is named.

The question it answers: at a fixed budget, is it better to spend bytes on more images with hard labels
or on fewer images with rich labels? Every cell's bytes are the measured payload of the set as stored.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from ..baseline import choose_epochs
from ..codecs import image_codec as _image_codec
from ..codecs import label_codec as _label_codec
from ..config import LabelSpec, Preset, StudentRecipe
from ..frontier import pareto_front
from ..lab import CellSpec, Lab
from ..selection import random_per_class
from ..validation import check_choice, check_positive_int, parse_size
from .base import StudyResult, mean_std, metric_of, register_study, resolve_preset, study_dir

__all__ = [
    "DEFAULT_BUDGETS",
    "FULL_CODECS",
    "FULL_IPCS",
    "IMAGE_CODECS",
    "QUICK_CODECS",
    "QUICK_IPCS",
    "BytesPlan",
    "bytes_study",
    "choose_expert_epoch",
    "cell_records",
    "cell_spec",
    "evaluate_cell",
    "image_codec_bytes",
    "quick_student_epochs",
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


# ------------------------------------------------------------------------------------------ options


def _split(value: object, sep: str) -> list:
    if value is None:
        return []
    if isinstance(value, str):
        return [s.strip() for s in value.split(sep) if s.strip()]
    if isinstance(value, (int, float)):
        return [value]
    return list(value)  # type: ignore[call-overload]


def _ints(name: str, value: object) -> tuple[int, ...]:
    out = []
    for v in _split(value, ","):
        try:
            out.append(check_positive_int(name, int(v)))
        except (TypeError, ValueError):
            raise ValueError(f"{name} must be positive integers (e.g. 1,2,5), got {value!r}") from None
    return tuple(out)


def _seeds(value: object, *, default: int) -> tuple[int, ...]:
    """An int is a count (seeds 0..n-1); a sequence (or "0,1,2") lists the seeds."""
    if value is None:
        return tuple(range(default))
    if isinstance(value, int) and not isinstance(value, bool):
        return tuple(range(check_positive_int("seeds", value)))
    items = _split(value, ",")
    if len(items) == 1 and isinstance(value, str):
        return tuple(range(check_positive_int("seeds", int(items[0]))))
    try:
        seeds = tuple(dict.fromkeys(int(v) for v in items))
    except (TypeError, ValueError):
        raise ValueError(f"seeds must be a count or a list of integers, got {value!r}") from None
    if not seeds or min(seeds) < 0:
        raise ValueError(f"seeds must be a count or a list of integers >= 0, got {value!r}")
    return seeds


def canonical_codecs(codecs: object) -> tuple[str, ...]:
    """Canonical label-codec specs; a string holds specs separated by ';' (specs contain commas)."""
    out = []
    for spec in _split(codecs, ";"):
        canon = _label_codec(str(spec)).spec
        if canon not in out:
            out.append(canon)
    return tuple(out)


def quick_student_epochs(preset: Preset, ipc: int) -> int:
    """Quick scale: the preset's student epochs capped at 150 for IPC <= 2 and 100 above."""
    return min(preset.student_for(ipc).epochs, 150 if ipc <= 2 else 100)


def short_codec(spec: str) -> str:
    """A compact legend name: ``topk:k=2,values=fp16,renorm=0`` -> ``top2/fp16``."""
    name, _, rest = spec.partition(":")
    params = dict(p.split("=", 1) for p in rest.split(",") if "=" in p)
    if name == "topk":
        s = f"top{params.get('k')}/{params.get('values', 'fp32')}"
    elif name == "quant":
        s = f"{params.get('bits')}-bit"
    else:
        s = name
    return s + ("+renorm" if params.get("renorm") == "1" else "")


# --------------------------------------------------------------------------------------------- plan


@dataclass(frozen=True)
class BytesPlan:
    """The resolved grid: which IPCs, codecs, expert epochs and image codecs, how students train."""

    scale: str
    preset: Preset
    ipcs: tuple[int, ...]
    codecs: tuple[str, ...]
    expert_epochs: tuple[int, ...]
    image_codecs: tuple[str, ...]
    seeds: tuple[int, ...]
    expert_key: str | None = None
    epoch_choice: dict = field(default_factory=dict)
    image_codec_bytes: dict = field(default_factory=dict)
    skipped: dict = field(default_factory=dict)
    student_epochs: int | None = None

    def student(self, ipc: int) -> StudentRecipe:
        """The student recipe of a cell at ``ipc`` (quick: capped epochs)."""
        if self.student_epochs is not None:
            return self.preset.student.replace(epochs=self.student_epochs)
        if self.scale == "quick":
            return self.preset.student.replace(epochs=quick_student_epochs(self.preset, ipc))
        return self.preset.student_for(ipc)


def pool_limit(lab: Lab) -> int:
    """The largest IPC the training pool supports (images of the rarest class)."""
    import torch

    return int(torch.bincount(lab.prepared.train_targets.long(), minlength=lab.prepared.num_classes).min())


def image_codec_bytes(
    lab: Lab, ipcs: Sequence[int], *, codecs: Sequence[str] = IMAGE_CODECS, image_seed: int = IMAGE_SEED
) -> dict[str, dict[int, int]]:
    """Measured image payload bytes per image codec and IPC for the images the grid stores."""
    prep = lab.prepared
    out: dict[str, dict[int, int]] = {c: {} for c in codecs}
    for ipc in ipcs:
        pos = random_per_class(prep.train_targets, ipc=ipc, num_classes=prep.num_classes, seed=image_seed)
        images = prep.dataset.train_images[prep.train_idx[pos]]
        for c in codecs:
            out[c][ipc] = int(_image_codec(c).encode(images).nbytes)
    return out


def _smallest_codec(measured: Mapping[str, Mapping[int, int]]) -> str:
    totals = {c: sum(v.values()) for c, v in measured.items()}
    return min(totals, key=lambda c: (totals[c], list(totals).index(c)))


def choose_expert_epoch(lab: Lab, preset: Preset, expert, *, ipc: int | None = None) -> tuple[int, dict]:
    """The candidate expert epoch with the best validation accuracy, and how it was chosen.

    Candidates are the preset's sweep epochs the expert has. Stored ``baseline-sweep`` results of this
    expert are reused (mean validation accuracy over the IPCs every candidate has); otherwise one short
    student per candidate is trained at ``ipc`` (default: the preset's middle IPC) with exactly the
    baseline sweep's settings, so the runs are shared with ``softlabels run``.
    """
    avail = expert.epochs_done
    candidates = sorted({e for e in preset.sweep_epochs if 0 < e <= avail} or {avail})
    if len(candidates) == 1:
        return candidates[0], {"source": "only candidate", "candidates": candidates, "val_acc": {}}
    stored: dict[int, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    for r in lab.store.query(study="baseline-sweep", where={"expert_key": expert.key}):
        e, v = r.config.get("expert_epoch"), r.metrics.get("val_acc")
        if e in candidates and v is not None:
            stored[e][int(r.config["ipc"])].append(float(v))
    common = (
        set.intersection(*(set(stored[e]) for e in candidates)) if len(stored) == len(candidates) else set()
    )
    if common:
        val = {
            e: sum(sum(stored[e][i]) / len(stored[e][i]) for i in common) / len(common) for e in candidates
        }
        source = f"stored baseline sweep (IPC {', '.join(map(str, sorted(common)))})"
    else:
        ipcs = sorted(preset.ipcs) or [1]
        ipc = min(ipc or ipcs[len(ipcs) // 2], pool_limit(lab))
        sweep, _ = choose_epochs(lab, replace(preset, ipcs=(ipc,)), expert, protocol="clean")  # the main job's
        val = {e: float(v) for e, v in sweep[ipc].items()}
        source = f"validation sweep at IPC {ipc}"
    chosen = max(candidates, key=lambda e: (val[e], -e))
    return chosen, {"source": source, "candidates": candidates, "val_acc": val}


def resolve_plan(
    lab: Lab,
    *,
    scale: str = "quick",
    preset: Preset | str | None = None,
    ipcs: object = None,
    codecs: object = None,
    expert_epoch: int | None = None,
    expert_epochs: object = None,
    image_codec: object = "auto",
    seeds: object = None,
    student_epochs: int | None = None,
    label_kind: str | None = None,
    measure_ipcs: Sequence[int] | None = None,
) -> tuple[BytesPlan, Any]:
    """Resolve the study's options into a :class:`BytesPlan` (and the expert, trained if needed).

    ``image_codec``: "auto" (the smallest lossless codec measured on the grid's images, or on
    ``measure_ipcs``), a codec name, or several names (a grid axis).
    """
    p = resolve_preset(scale, preset)
    limit = pool_limit(lab)
    grid = _ints("ipcs", ipcs) or (QUICK_IPCS if scale == "quick" else FULL_IPCS)
    skipped: dict[str, list] = {}
    if any(i > limit for i in grid):
        skipped["ipcs"] = [i for i in grid if i > limit]
        grid = tuple(i for i in grid if i <= limit)
    if not grid:
        raise ValueError(f"no IPC fits the training pool (at most {limit} images per class)")
    codec_list = canonical_codecs(codecs) or canonical_codecs(
        QUICK_CODECS if scale == "quick" else FULL_CODECS
    )
    if label_kind is not None:
        check_choice("label kind", label_kind, ("soft", "hard"))
        codec_list = tuple(c for c in codec_list if (c == "hard") == (label_kind == "hard"))
    num_classes = lab.prepared.num_classes
    too_wide = [
        c for c in codec_list if c.startswith("topk:") and int(c.split("k=")[1].split(",")[0]) > num_classes
    ]
    if too_wide:
        skipped["codecs"] = too_wide
        codec_list = tuple(c for c in codec_list if c not in too_wide)
    if not codec_list:
        raise ValueError("no label codec left to evaluate")
    seed_list = _seeds(seeds, default=1 if scale == "quick" else 3)
    # images: measured bytes of each lossless codec on the grid's images
    measured = image_codec_bytes(lab, sorted({i for i in (measure_ipcs or grid) if i <= limit} or set(grid)))
    if image_codec in (None, "auto"):
        image_list: tuple[str, ...] = (_smallest_codec(measured),)
    else:
        image_list = tuple(_image_codec(str(c)).spec for c in _split(image_codec, ","))
    expert, chosen, epochs = None, {}, ()
    if any(c != "hard" for c in codec_list):
        expert = lab.expert(p.expert)
        wanted = _ints("expert_epochs", expert_epochs)
        if expert_epoch is not None:
            wanted = tuple(
                dict.fromkeys((*wanted, check_positive_int("expert_epoch", int(expert_epoch), minimum=0)))
            )
            chosen = {"source": "given", "epoch": int(expert_epoch)}
        if not wanted:
            e, chosen = choose_expert_epoch(lab, p, expert)
            chosen["epoch"] = e
            wanted = (
                (e,)
                if scale == "quick"
                else tuple(sorted({e, *(x for x in FULL_EPOCHS if x <= expert.epochs_done)}))
            )
        bad = [e for e in wanted if e > expert.epochs_done]
        if bad:
            raise ValueError(
                f"expert epochs {bad} are not available; the expert has epochs 0..{expert.epochs_done}"
            )
        epochs = tuple(wanted)
    plan = BytesPlan(
        scale=scale,
        preset=p,
        ipcs=tuple(grid),
        codecs=codec_list,
        expert_epochs=epochs,
        image_codecs=image_list,
        seeds=seed_list,
        expert_key=expert.key if expert else None,
        epoch_choice=chosen,
        image_codec_bytes=measured,
        skipped=skipped,
        student_epochs=None
        if student_epochs is None
        else check_positive_int("student_epochs", int(student_epochs)),
    )
    return plan, expert


# --------------------------------------------------------------------------------------------- cells


def cell_label(codec: str, expert_epoch: int | None) -> LabelSpec:
    """The label spec of a cell: hard labels for codec ``hard``, else soft labels at ``expert_epoch``."""
    if codec == "hard":
        return LabelSpec(kind="hard", codec="hard")
    return LabelSpec(kind="soft", expert_epoch=expert_epoch, codec=codec)


def cell_experts(label: LabelSpec, expert) -> list:
    """The experts a cell's labels come from: the expert for soft labels, none for hard labels."""
    return [expert] if expert is not None and label.kind == "soft" else []


def build_cell_set(lab: Lab, *, ipc: int, label: LabelSpec, experts: Sequence, image_codec: str):
    """The stored set of one cell: the grid's real images (image seed ``IMAGE_SEED``) with ``label``."""
    from ..distill import build_compressed_set

    return build_compressed_set(
        lab.prepared,
        ipc=ipc,
        label=label,
        experts=experts,
        seed=IMAGE_SEED,
        image_codec=image_codec,
        device=lab.device,
    )


def cell_spec(
    lab: Lab,
    plan: BytesPlan,
    expert,
    *,
    ipc: int,
    codec: str,
    expert_epoch: int | None,
    image_codec: str,
    make_set: Callable | None = None,
    study: str = STUDY,
) -> CellSpec:
    """One cell's students for :meth:`Lab.evaluate_many`; the image codec is part of its config."""
    label = cell_label(codec, expert_epoch)
    experts = cell_experts(label, expert)

    def build():
        return build_cell_set(lab, ipc=ipc, label=label, experts=experts, image_codec=image_codec)

    return CellSpec(ipc=ipc, label=label, student=plan.student(ipc), seeds=tuple(plan.seeds), experts=tuple(experts),
                    image_seed=IMAGE_SEED, protocol="clean", study=study, extra={"image_codec": image_codec},
                    make_set=make_set or build)


def cell_records(spec: CellSpec, results: list[dict]) -> list[dict]:
    """A cell's per-seed results tagged with its ``image|label`` codec and study."""
    return [dict(r, codec=f"{spec.extra['image_codec']}|{spec.label.codec}", study=spec.study) for r in results]


def evaluate_cell(lab: Lab, plan: BytesPlan, expert, **cell: Any) -> list[dict]:
    """Run (or read back) one cell (the keywords of :func:`cell_spec`)."""
    spec = cell_spec(lab, plan, expert, **cell)
    return cell_records(spec, lab.evaluate_many([spec])[0])


def plan_cells(plan: BytesPlan) -> list[tuple[int, str, int | None, str]]:
    """(ipc, label codec, expert epoch, image codec) of every cell; hard cells once per IPC."""
    cells = []
    for ipc in plan.ipcs:
        for ic in plan.image_codecs:
            for codec in plan.codecs:
                for e in [None] if codec == "hard" else plan.expert_epochs:
                    cells.append((ipc, codec, e, ic))
    return cells


# --------------------------------------------------------------------------------------------- study


@register_study(
    "bytes",
    help="accuracy vs stored bytes over IPC x label codec (hard, fp16, top-k, quantised) "
    "x expert epoch: Pareto frontier and best soft vs hard set per byte budget",
)
def bytes_study(
    lab: Lab,
    *,
    scale: str = "quick",
    ipcs: object = None,
    codecs: object = None,
    expert_epoch: int | None = None,
    expert_epochs: object = None,
    image_codec: object = "auto",
    seeds: object = None,
    budgets: object = None,
    student_epochs: int | None = None,
    preset: Preset | str | None = None,
) -> StudyResult:
    """Accuracy (final-epoch test, clean protocol, mean over seeds) against total stored bytes.

    Options: ``ipcs``, ``codecs`` (label-codec specs; a string separates them with ';'), ``expert_epoch``
    (default: chosen on validation), ``expert_epochs`` (a grid axis), ``image_codec`` ("auto": the
    smallest lossless codec measured on the grid's images), ``seeds`` (a count), ``budgets`` (extra sizes
    such as "16KB"), ``student_epochs`` (override), ``preset``.
    """
    from ..budget import best_within_budget

    plan, expert = resolve_plan(
        lab,
        scale=scale,
        preset=preset,
        ipcs=ipcs,
        codecs=codecs,
        expert_epoch=expert_epoch,
        expert_epochs=expert_epochs,
        image_codec=image_codec,
        seeds=seeds,
        student_epochs=student_epochs,
    )
    rows: list[dict[str, Any]] = []
    records: list[dict] = []
    cells = plan_cells(plan)
    specs = [cell_spec(lab, plan, expert, ipc=ipc, codec=codec, expert_epoch=epoch, image_codec=ic)
             for ipc, codec, epoch, ic in cells]  # one call: the students may train in parallel (Lab.workers)
    for (ipc, codec, epoch, ic), spec, out in zip(cells, specs, lab.evaluate_many(specs), strict=True):
        res = cell_records(spec, out)
        records.extend(res)
        m, s = mean_std(metric_of(res, "test_acc"))
        v, _ = mean_std(metric_of(res, "val_acc"))
        met = res[0]["metrics"]
        rows.append(
            {
                "ipc": ipc,
                "expert_epoch": epoch,
                "label_codec": codec,
                "image_codec": ic,
                "bytes_images": int(met["nbytes_images"]),
                "bytes_labels": int(met["nbytes_labels"]),
                "bytes_total": int(res[0]["nbytes"]),
                "mean": m,
                "std": s,
                "n": len(res),
                "val_mean": None if v != v else v,
                "on_frontier": False,
                "on_hard_frontier": False,
            }
        )
    _mark_frontiers(rows)

    budget_list = _budgets(budgets)
    summary_budgets = []
    for label, b in budget_list:
        soft = best_within_budget(records, b, label_kind="soft")
        hard = best_within_budget(records, b, label_kind="hard")
        diff = None if soft is None or hard is None else round(100 * (soft.mean - hard.mean), 2)
        summary_budgets.append(
            {
                "budget": label,
                "bytes": b,
                "best_soft": _answer_dict(soft),
                "best_hard": _answer_dict(hard),
                "soft_minus_hard_points": diff,
            }
        )
    front = [r for r in rows if r["on_frontier"]]
    summary = {
        "dataset": lab.data.name,
        "expert_key": plan.expert_key,
        "expert_epochs": list(plan.expert_epochs),
        "expert_epoch_choice": plan.epoch_choice,
        "image_codec": list(plan.image_codecs),
        "image_codec_bytes": {
            c: {"total": sum(v.values()), **{str(k): n for k, n in v.items()}}
            for c, v in plan.image_codec_bytes.items()
        },
        "ipcs": list(plan.ipcs),
        "label_codecs": list(plan.codecs),
        "seeds": len(plan.seeds),
        "student_epochs": {str(i): plan.student(i).epochs for i in plan.ipcs},
        "skipped": plan.skipped,
        "frontier": [_brief(r) for r in front],
        "hard_frontier": [_brief(r) for r in rows if r["on_hard_frontier"]],
        "frontier_soft_points": sum(r["label_codec"] != "hard" for r in front),
        "frontier_hard_points": sum(r["label_codec"] == "hard" for r in front),
        "budgets": summary_budgets,
        "selected_on": "val_acc",
    }
    figures = [_plot(rows, budget_list, study_dir(lab, STUDY) / "bytes.png", dataset=lab.data.name)]
    settings = {
        "scale": scale,
        "preset": plan.preset.name,
        "student": plan.preset.student.to_dict(),
        "expert": plan.preset.expert.to_dict(),
        "image_seed": IMAGE_SEED,
    }
    return StudyResult(
        name=STUDY,
        rows=rows,
        summary=summary,
        figures=figures,
        protocol="clean",
        settings=settings,
        finding=_finding(rows, summary, plan),
    )


def _mark_frontiers(rows: list[dict]) -> None:
    ok = [i for i, r in enumerate(rows) if r["mean"] == r["mean"]]
    for i in (
        ok[j] for j in pareto_front([rows[i]["bytes_total"] for i in ok], [rows[i]["mean"] for i in ok])
    ):
        rows[i]["on_frontier"] = True
    hard = [i for i in ok if rows[i]["label_codec"] == "hard"]
    for j in pareto_front([rows[i]["bytes_total"] for i in hard], [rows[i]["mean"] for i in hard]):
        rows[hard[j]]["on_hard_frontier"] = True


def _budgets(budgets: object) -> list[tuple[str, int]]:
    from ..budget import format_bytes

    out: dict[int, str] = {}
    for b in (*DEFAULT_BUDGETS, *_split(budgets, ",")):
        n = parse_size(b)
        out.setdefault(n, str(b) if isinstance(b, str) else format_bytes(n))
    return sorted(((label, n) for n, label in out.items()), key=lambda t: t[1])


def _brief(r: Mapping) -> dict:
    return {k: r[k] for k in ("ipc", "label_codec", "expert_epoch", "image_codec", "bytes_total", "mean")}


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


def _finding(rows: list[dict], summary: dict, plan: BytesPlan) -> str:
    from ..budget import format_bytes

    parts = []
    for b in summary["budgets"]:
        s, h, d = b["best_soft"], b["best_hard"], b["soft_minus_hard_points"]
        if d is not None:
            verb = "beats" if d > 0 else ("ties with" if d == 0 else "trails")
            by = f" by {abs(d):.1f} points" if d != 0 else ""
            parts.append(
                f"at {b['budget']} the best soft set (IPC {s['ipc']}, {short_codec(s['label_codec'])}, "
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
    text += " Best-in-budget sets are chosen on validation accuracy; test accuracy is reported."
    return text


def _plot(rows: list[dict], budgets: list[tuple[str, int]], path, *, dataset: str):
    from ..report.plots import plt, save_figure

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    markers = "sD^v<>pPX*hH8d"
    soft_codecs = list(dict.fromkeys(r["label_codec"] for r in rows if r["label_codec"] != "hard"))
    cmap = plt.get_cmap("tab10")
    hard = sorted(
        (r for r in rows if r["label_codec"] == "hard" and r["mean"] == r["mean"]),
        key=lambda r: r["bytes_total"],
    )
    if hard:
        ax.plot(
            [r["bytes_total"] for r in hard],
            [100 * r["mean"] for r in hard],
            "o-",
            color="0.35",
            label="hard labels",
            zorder=3,
        )
    for k, codec in enumerate(soft_codecs):
        groups: dict[tuple, list[dict]] = defaultdict(list)
        for r in rows:
            if r["label_codec"] == codec and r["mean"] == r["mean"]:
                groups[(r["expert_epoch"], r["image_codec"])].append(r)
        for g, (_key, pts) in enumerate(sorted(groups.items(), key=lambda t: str(t[0]))):
            pts.sort(key=lambda r: r["bytes_total"])
            ax.plot(
                [r["bytes_total"] for r in pts],
                [100 * r["mean"] for r in pts],
                linestyle="-",
                linewidth=0.8,
                marker=markers[k % len(markers)],
                color=cmap(k % 10),
                alpha=0.9 if g == 0 else 0.5,
                label=f"soft {short_codec(codec)}" if g == 0 else None,
                zorder=2,
            )
    front = sorted((r for r in rows if r["on_frontier"]), key=lambda r: r["bytes_total"])
    if front:
        ax.step(
            [r["bytes_total"] for r in front],
            [100 * r["mean"] for r in front],
            where="post",
            color="black",
            linewidth=1.4,
            label="Pareto frontier",
            zorder=4,
        )
    sizes = [r["bytes_total"] for r in rows]
    for label, b in budgets:
        if sizes and not min(sizes) / 2 <= b <= 2 * max(sizes):
            continue  # far outside the measured range: in the summary, not on the plot
        ax.axvline(b, color="tab:red", linestyle=":", linewidth=1)
        ax.text(
            b,
            0.98,
            f" {label}",
            color="tab:red",
            fontsize=7,
            rotation=90,
            va="top",
            transform=ax.get_xaxis_transform(),
        )
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    from ..budget import format_bytes

    ax.set_xscale("log")
    ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: format_bytes(v)))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.tick_params(axis="x", labelsize=7)
    ax.set_xlabel("stored bytes (images + labels)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"{dataset}: accuracy vs storage (clean protocol, final epoch)", fontsize=9)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7, loc="best")
    return save_figure(fig, path, svg=True)
