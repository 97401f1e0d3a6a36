"""Expert ensembles (paper E8, with the label comparison of E9 / Fig. 8): labels from one expert vs the
softmax of the logit average of ``n`` experts (seeds ``seed .. seed + n - 1``).

Students: per IPC, the same random images labelled by the single expert and by the ensemble at the
IPC's expert epoch (chosen on validation by the main job's sweep, unless given). ``modes`` adds committees
combined otherwise than by logit averaging (``probs``: MEAL V2's mean softmax, ``vote``: the members' vote
share, either with ``weights=prior``: CV-DD's validation-accuracy weights), each compared with the single
expert and with the logit ensemble by paired seeds (95% CI); the committee's agreement on the train-pool
sample (pairwise argmax agreement, Fleiss' kappa) is in the summary.
Labels (no students): on a fixed stratified sample of the train pool, per expert epoch, the Jensen-Shannon
distance between single and ensemble labels (mean over images), how often their argmax agrees, and how
often each argmax is the true class (does averaging keep the correct argmax?).

The extra experts only need to reach the largest epoch used; without lr decay their first E epochs are
identical to those of a longer run, so by default they are trained only that far (``truncate=False``
trains the preset's full recipe).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from ..analysis.stats import paired_ci
from ..config import LabelSpec
from ..experts import Trajectory
from ..io import atomic_write_text
from ..lab import CellSpec, Lab
from ..labels.diagnostics import entropy, js_distance
from ..labels.generate import COMMITTEES, committee_agreement, expert_logits, label_images, member_logits
from ..presets import Preset
from ..sets.selection import random_per_class
from ..sets.spec import SetSpec
from ..validation import check_positive_int
from .base import (
    StudyResult,
    cell_stats,
    default_seeds,
    expert_epochs,
    finite,
    int_list,
    metric_of,
    pct,
    planned_epochs,
    register_study,
    resolve_preset,
    rows_csv,
    seed_list,
    student_recipe,
    study_dir,
)

NAME = "ensemble"
QUICK_N, FULL_N = 3, 5
QUICK_IPCS = (1, 10)
QUICK_POOL, FULL_POOL = 5000, 10000
POOL_SEED = 2024
IMAGE_SEED = 0


def ensemble_members(lab: Lab, p: Preset, n: int, *, up_to: int, truncate: bool = True) -> list[Trajectory]:
    """The preset's expert (shared with the main job) plus ``n - 1`` experts with the next seeds, trained
    to ``up_to`` epochs when ``truncate`` and the recipe has no lr decay (identical first epochs)."""
    lead = lab.expert(p.expert)
    if n == 1:
        return [lead]
    recipe = p.expert
    if truncate and not recipe.decay:
        recipe = recipe.truncated(up_to, lab.prepared.train_idx.numel())
    return [lead, *lab.experts(recipe.replace(seed=p.expert.seed + 1), n - 1)]


def compare_labels(single: torch.Tensor, ens: torch.Tensor, targets: torch.Tensor) -> dict[str, float]:
    """JSD, argmax agreement and argmax-correctness of single vs ensemble labels on the same images."""
    d = js_distance(single, ens)
    a1, a2 = single.argmax(1), ens.argmax(1)
    c1, c2 = a1 == targets, a2 == targets
    return {
        "jsd_mean": float(d.mean()),
        "jsd_median": float(d.median()),
        "argmax_agreement": float((a1 == a2).double().mean()),
        "single_argmax_correct": float(c1.double().mean()),
        "ensemble_argmax_correct": float(c2.double().mean()),
        "ensemble_keeps_correct": float(c2[c1].double().mean()) if c1.any() else float("nan"),
        "ensemble_fixes_wrong": float(c2[~c1].double().mean()) if (~c1).any() else float("nan"),
        "single_entropy": float(entropy(single).mean()),
        "ensemble_entropy": float(entropy(ens).mean()),
    }


@register_study(NAME, help="E8 / E9: ensemble-expert labels vs one expert (students, JSD, argmax agreement)")
def study_ensemble(lab: Lab, *, scale: str = "quick", n: int | None = None, ipcs: Sequence[int] | None = None,
                   expert_epoch: int | dict | None = None, seeds: Sequence[int] | None = None,
                   student_epochs: int | None = None, label_epochs: Sequence[int] | None = None,
                   pool_images: int | None = None, truncate: bool = True, modes: Sequence[str] = ("logits",),
                   preset: Preset | str | None = None) -> StudyResult:
    """Students on single vs ensemble labels per IPC; label agreement per expert epoch."""
    p = resolve_preset(scale, preset)
    n = check_positive_int("n", n if n is not None else (QUICK_N if scale == "quick" else FULL_N))
    ipc_list = int_list("ipcs", ipcs if ipcs is not None else (QUICK_IPCS if scale == "quick" else p.ipcs))
    seed_ids = seed_list(seeds, default=default_seeds(scale, p))
    pool_n = check_positive_int("pool_images", pool_images if pool_images is not None else
                                (QUICK_POOL if scale == "quick" else FULL_POOL))
    if not isinstance(truncate, bool):
        raise TypeError(f"truncate must be a bool, got {truncate!r}")
    extra_modes = list(dict.fromkeys(COMMITTEES.canonical(m) for m in ([modes] if isinstance(modes, str)
                                                                        else modes)))
    extra_modes = [m for m in extra_modes if m != "logits"]  # the logit ensemble is always there
    prep = lab.prepared
    num_classes = prep.num_classes
    if label_epochs is not None:
        int_list("label_epochs", label_epochs, maximum=planned_epochs(lab, p.expert))  # before any training
    epochs, epoch_source = expert_epochs(lab, p, None, ipc_list, expert_epoch)
    lead = lab.expert(p.expert)
    up_to = max(epochs.values())
    if label_epochs is not None:
        up_to = max(up_to, max(int_list("label_epochs", label_epochs, maximum=lead.epochs_done)))
    members = ensemble_members(lab, p, n, up_to=up_to, truncate=truncate)
    avail = min(m.epochs_done for m in members)
    if label_epochs is None:
        lab_epochs = list(range(1, avail + 1)) if avail <= 12 else \
            sorted({e for e in p.sweep_epochs if 0 < e <= avail} | set(epochs.values()))
    else:
        lab_epochs = int_list("label_epochs", label_epochs, maximum=avail)

    # ---- students: single vs ensemble labels on the same images --------------------------------------------
    rows: list[dict[str, Any]] = []
    recipes = {ipc: student_recipe(p, ipc, student_epochs=student_epochs) for ipc in ipc_list}
    grid = [(ipc, source, label, experts) for ipc in ipc_list for source, label, experts in (
        ("single", LabelSpec(kind="soft", expert_epoch=epochs[ipc]), members[:1]),
        ("ensemble", LabelSpec(kind="soft", expert_epoch=epochs[ipc], ensemble=n), members),
        *((f"ensemble-{m}", LabelSpec(kind="soft", expert_epoch=epochs[ipc], ensemble=n, ensemble_mode=m),
           members) for m in (extra_modes if n > 1 else [])))]
    results = lab.evaluate_many(
        [  # one call: the students may train in parallel (see Lab.workers)
            CellSpec(
                set=SetSpec(ipc=ipc, label=label, image_seed=IMAGE_SEED),
                student=recipes[ipc],
                seeds=tuple(seed_ids),
                experts=tuple(experts),
                study=NAME,
            )
            for ipc, _, label, experts in grid
        ]
    )
    by_cell = {
        (ipc, source): {
            "ipc": ipc,
            "expert_epoch": epochs[ipc],
            "labels": source,
            "n_experts": label.ensemble,
            "ensemble_mode": label.ensemble_mode,
            "student_epochs": recipes[ipc].epochs,
            **cell_stats(res),
        }
        for (ipc, source, label, _), res in zip(grid, results, strict=True)
    }
    per_seed = {(ipc, source): metric_of(res) for (ipc, source, _, _), res in zip(grid, results, strict=True)}
    for ipc in ipc_list:
        single, ens = by_cell[(ipc, "single")], by_cell[(ipc, "ensemble")]
        ens["delta"], single["delta"] = ens["test_mean"] - single["test_mean"], 0.0
        rows += [single, ens]
        for m in extra_modes if n > 1 else []:
            r = by_cell[(ipc, f"ensemble-{m}")]
            r["delta"] = r["test_mean"] - single["test_mean"]
            for ref in ("single", "ensemble"):
                d, lo, hi = paired_ci(per_seed[(ipc, f"ensemble-{m}")], per_seed[(ipc, ref)])
                tag = "single" if ref == "single" else "logits"
                r.update({f"vs_{tag}": d, f"vs_{tag}_lo": lo, f"vs_{tag}_hi": hi})
            rows.append(r)

    # ---- labels: JSD and argmax agreement per expert epoch -------------------------------------------------
    counts = torch.bincount(prep.train_targets.long(), minlength=num_classes)
    per_class = max(1, min(pool_n // num_classes, int(counts.min())))
    pos = random_per_class(prep.train_targets, ipc=per_class, num_classes=num_classes, seed=POOL_SEED)
    y = prep.train_targets[pos].long()
    test_x, test_y = prep.tensors("test", device=lab.device)
    label_rows = []
    for e in lab_epochs:
        single = label_images(
            prep,
            pos,
            LabelSpec(kind="soft", expert_epoch=e),
            members[:1],
            device=lab.device,
            cache=lab.logits,
        )
        ens = label_images(prep, pos, LabelSpec(kind="soft", expert_epoch=e, ensemble=n), members,
                           device=lab.device, cache=lab.logits)
        rec = {"expert_epoch": e, "images": int(pos.numel()), **compare_labels(single, ens, y)}
        if e in epochs.values():
            for key, ex in (("single_expert_test_acc", members[:1]), ("ensemble_expert_test_acc", members)):
                z = expert_logits(ex, e, test_x, device=lab.device)
                rec[key] = float((z.argmax(1).cpu() == test_y.cpu()).double().mean())
        label_rows.append(rec)

    agreement = {}
    if n > 1:  # the committee's agreement on the pool sample at each IPC's expert epoch
        x_pool = prep.tensors("train", device=lab.device)[0][pos.to(lab.device)]
        for e in sorted(set(epochs.values())):
            zs = [z.cpu() for z in member_logits(members, e, x_pool, device=lab.device)]
            agreement[str(e)] = committee_agreement(zs, y)

    folder = study_dir(lab, NAME)
    folder.mkdir(parents=True, exist_ok=True)
    _write_csv(folder / "labels.csv", label_rows)
    figures = [_plot(rows, label_rows, n, folder / "ensemble.png", dataset=prep.dataset.name)]
    deltas = {str(r["ipc"]): r["delta"] for r in rows if r["labels"] == "ensemble"}
    summary = {
        "n_experts": n, "expert_epochs": {str(k): v for k, v in epochs.items()}, "delta_by_ipc": deltas,
        "labels_by_epoch": label_rows,
        "member_keys": [m.key for m in members], "member_epochs_trained": [m.epochs_done for m in members],
        "committee_agreement": agreement, "modes": ["logits", *extra_modes],
    }
    settings = {
        "scale": scale, "preset": p.name, "expert": p.expert.to_dict(), "n": n, "ipcs": ipc_list,
        "expert_epochs": {str(k): v for k, v in epochs.items()}, "epochs_source": epoch_source,
        "seeds": seed_ids, "student": {str(i): r.to_dict() for i, r in recipes.items()},
        "label_epochs": lab_epochs, "pool_images": int(pos.numel()), "pool_seed": POOL_SEED,
        "image_seed": IMAGE_SEED, "truncate_members": truncate,
    }
    finding = verdict([r for r in rows if r["labels"] in ("single", "ensemble")], label_rows, epochs, n)
    if extra_modes and n > 1:
        finding += " " + mode_verdict(rows)
    return StudyResult(
        name=NAME, rows=rows, summary=summary, figures=figures, settings=settings, finding=finding
    )


def verdict(rows: list[dict], label_rows: list[dict], epochs: dict[int, int], n: int) -> str:
    if n == 1:
        return "Not assessed: an ensemble of n = 1 expert is the single expert (labels identical, JSD 0)."
    ens = [r for r in rows if r["labels"] == "ensemble"]
    single = {r["ipc"]: r for r in rows if r["labels"] == "single"}
    parts, clear = [], []
    for r in ens:
        noise = max(single[r["ipc"]]["test_std"], r["test_std"]) if finite(r["test_std"]) else 0.0
        clear.append(abs(r["delta"]) > noise)
        tag = "" if clear[-1] else " (within seed noise)"
        parts.append(f"IPC {r['ipc']} (epoch {r['expert_epoch']}): {pct(single[r['ipc']]['test_mean'])} -> "
                     f"{pct(r['test_mean'])}, {100 * r['delta']:+.1f} points{tag}")
    up = [r["delta"] > 0 for r in ens if finite(r["delta"])]
    if up and all(up):
        claim = "Holds here" if any(clear) else "Holds only within seed noise"
    else:
        claim = ("Partly holds" if any(up) else
                   "Does not hold here" if any(clear) else "Not seen here (no difference beyond seed noise)")
    lab_by_e = {r["expert_epoch"]: r for r in label_rows}
    lr = [lab_by_e[e] for e in sorted(set(epochs.values())) if e in lab_by_e]
    label_txt = "; ".join(
        f"epoch {r['expert_epoch']}: mean JSD {r['jsd_mean']:.3f}, "
        f"argmax agreement {pct(r['argmax_agreement'])}, argmax = true class "
        f"{pct(r['single_argmax_correct'])} (single) vs {pct(r['ensemble_argmax_correct'])} "
        f"(ensemble)"
        for r in lr
    )
    return (f"{claim}: {n}-expert ensemble labels vs one expert - " + "; ".join(parts)
            + (f". Labels: {label_txt}." if label_txt else "."))


def mode_verdict(rows: list[dict]) -> str:
    """Per IPC and committee mode: better / worse / no different than the logit ensemble and the single
    expert, by the paired 95% CI over seeds."""

    def word(d, lo, hi) -> str:
        if finite(lo) and lo > 0:
            return "beats"
        if finite(hi) and hi < 0:
            return "loses to"
        return "does not differ from"

    parts = []
    for r in rows:
        if not str(r["labels"]).startswith("ensemble-"):
            continue
        parts.append(f"IPC {r['ipc']}: {r['ensemble_mode']} committee ({pct(r['test_mean'])}) "
                     f"{word(r['vs_logits'], r['vs_logits_lo'], r['vs_logits_hi'])} the logit ensemble "
                     f"({100 * r['vs_logits']:+.1f} pts [{100 * r['vs_logits_lo']:+.1f}, "
                     f"{100 * r['vs_logits_hi']:+.1f}]) and "
                     f"{word(r['vs_single'], r['vs_single_lo'], r['vs_single_hi'])} the single expert "
                     f"({100 * r['vs_single']:+.1f} pts [{100 * r['vs_single_lo']:+.1f}, "
                     f"{100 * r['vs_single_hi']:+.1f}])")
    return ("Committee modes (paired 95% CIs over seeds): " + "; ".join(parts) + ".") if parts else ""


def _write_csv(path, rows: list[dict]) -> None:
    if rows:
        atomic_write_text(path, rows_csv(rows))


def _plot(rows, label_rows, n, path, *, dataset: str):
    from ..report.plots import merged_legend, save_figure
    from ..report.plots import plt as pl

    fig, (ax, bx) = pl.subplots(1, 2, figsize=(10, 3.8))
    ipcs = sorted({r["ipc"] for r in rows})
    width = 0.38
    for j, (src, color) in enumerate((("single", "tab:blue"), ("ensemble", "tab:orange"))):
        rs = [next(r for r in rows if r["ipc"] == i and r["labels"] == src) for i in ipcs]
        ax.bar(
            [i + (j - 0.5) * width for i in range(len(ipcs))],
            [100 * r["test_mean"] for r in rs],
            width,
            yerr=[100 * (r["test_std"] if finite(r["test_std"]) else 0) for r in rs],
            capsize=3,
            color=color,
            label="1 expert" if src == "single" else f"ensemble of {n}",
        )
    ax.set_xticks(range(len(ipcs)))
    ax.set_xticklabels([f"IPC {i}\n(epoch {next(r['expert_epoch'] for r in rows if r['ipc'] == i)})"
                        for i in ipcs])
    ax.set_ylabel("student test accuracy (%)")
    ax.set_title(f"{dataset}: single vs ensemble labels", fontsize=9)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, axis="y")
    es = [r["expert_epoch"] for r in label_rows]
    bx.plot(
        es, [r["jsd_mean"] for r in label_rows], "o-", color="tab:purple", label="mean JSD(single, ensemble)"
    )
    bx.set_xlabel("expert epoch")
    bx.set_ylabel("Jensen-Shannon distance")
    cx = bx.twinx()
    cx.plot(es, [100 * r["single_argmax_correct"] for r in label_rows], "s--", ms=3, color="tab:blue",
            label="argmax = true (single)")
    cx.plot(es, [100 * r["ensemble_argmax_correct"] for r in label_rows], "^--", ms=3, color="tab:orange",
            label="argmax = true (ensemble)")
    cx.plot(
        es, [100 * r["argmax_agreement"] for r in label_rows], ":", color="tab:gray", label="argmax agreement"
    )
    cx.set_ylabel("% of images")
    merged_legend(bx, cx, fontsize=7, loc="best")
    bx.set_title("labels on a train-pool sample", fontsize=9)
    bx.grid(alpha=0.3)
    return save_figure(fig, path, svg=True)
