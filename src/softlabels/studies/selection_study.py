"""Image selection by difficulty (paper E10, Fig. 9): images from one per-class bin of the expert's
cross-entropy to the true class vs random images, at the same IPC and with the same soft labels.

The score is ``-log p_y`` of the expert's softmax at the score epoch (the label epoch unless given) over
the whole train pool (the reference code feeds probabilities to ``F.cross_entropy`` as logits; we do not).
Per class, the pool is cut into ``num_bins`` equal-count quantile bins (bin 0 = easiest) and ``ipc`` images
are drawn at random from one bin. Each repetition ``r`` uses image seed ``base + r`` (for both the bin draw
and the random baseline) and student seed ``r``; the reported number is the relative accuracy change vs
random selection, ``acc_bin / acc_random - 1``, paired per repetition, then averaged.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from ..analysis.stats import mean_std
from ..config import LabelSpec
from ..lab import CellSpec, Lab
from ..presets import Preset
from ..sets.selection import by_score_bin, difficulty_scores
from ..sets.spec import SetSpec
from ..validation import check_positive_int
from .base import (
    StudyResult,
    default_seeds,
    expert_epochs,
    finite,
    int_list,
    metric_of,
    pct,
    planned_epochs,
    register_study,
    resolve_preset,
    seed_list,
    student_recipe,
    study_dir,
)

NAME = "selection"
QUICK_IPCS = (1, 10)
IMAGE_SEED_BASE = 900
SCORE = "neg-log-p-true"


def default_bins(scale: str, num_bins: int) -> list[int]:
    return sorted({0, num_bins // 2, num_bins - 1}) if scale == "quick" else list(range(num_bins))


@register_study(NAME, help="E10 / Fig. 9: images from one -log p_y difficulty bin vs random images")
def study_selection(lab: Lab, *, scale: str = "quick", ipcs: Sequence[int] | None = None,
                    bins: Sequence[int] | None = None, num_bins: int = 10, seeds: Sequence[int] | None = None,
                    expert_epoch: int | dict | None = None, score_epoch: int | None = None,
                    student_epochs: int | None = None, preset: Preset | str | None = None) -> StudyResult:
    """Per IPC and bin, students on bin-selected images vs random images (same labels, same seeds)."""
    p = resolve_preset(scale, preset)
    num_bins = check_positive_int("num_bins", num_bins, minimum=2)
    ipc_list = int_list("ipcs", ipcs if ipcs is not None else (QUICK_IPCS if scale == "quick" else p.ipcs))
    bin_list = int_list("bins", bins if bins is not None else default_bins(scale, num_bins), minimum=0,
                        maximum=num_bins - 1)
    reps = seed_list(seeds, default=default_seeds(scale, p))
    prep = lab.prepared
    num_classes = prep.num_classes
    last = planned_epochs(lab, p.expert)
    if score_epoch is not None:
        score_epoch = check_positive_int("score_epoch", score_epoch)
        if score_epoch > last:
            raise ValueError(f"score_epoch {score_epoch} exceeds the expert's {last} epochs")
    epochs, epoch_source = expert_epochs(lab, p, None, ipc_list, expert_epoch)
    expert = lab.expert(p.expert)
    targets = prep.train_targets
    counts = torch.bincount(targets.long(), minlength=num_classes)
    scores: dict[int, torch.Tensor] = {}

    rows: list[dict[str, Any]] = []
    recipes = {ipc: student_recipe(p, ipc, student_epochs=student_epochs) for ipc in ipc_list}
    # every student in one call (they may train in parallel, see Lab.workers): per IPC and repeat, the random
    # draw and each score bin
    keys: list[tuple[int, int | None, int]] = []
    specs: list[CellSpec] = []
    sel_scores: dict[tuple[int, int], list[float]] = {}
    for ipc in ipc_list:
        e = epochs[ipc]
        se = score_epoch or e
        if se not in scores:
            scores[se] = difficulty_scores(prep, expert, se, device=lab.device, cache=lab.logits)
        label = LabelSpec(kind="soft", expert_epoch=e)
        common = dict(student=recipes[ipc], experts=(expert,), study=NAME)
        for r in reps:
            keys.append((ipc, None, r))
            specs.append(
                CellSpec(
                    set=SetSpec(ipc=ipc, label=label, image_seed=IMAGE_SEED_BASE + r), seeds=(r,), **common
                )
            )
        for b in bin_list:
            for r in reps:
                seed = IMAGE_SEED_BASE + r
                pos = by_score_bin(
                    targets, scores[se], ipc=ipc, num_classes=num_classes, bin=b, num_bins=num_bins, seed=seed
                )  # the same draw the set's selection makes: its mean score
                sel_scores.setdefault((ipc, b), []).append(float(scores[se][pos].mean()))
                spec = SetSpec(ipc=ipc, label=label, image_seed=seed,
                               selection=f"ce-bin:bin={b},bins={num_bins},epoch={se}")
                keys.append((ipc, b, r))
                specs.append(CellSpec(set=spec, seeds=(r,), **common))
    results = {k: res[0] for k, res in zip(keys, lab.evaluate_many(specs), strict=True)}
    smallest_bin = int(counts.min()) // num_bins
    for ipc in ipc_list:
        e = epochs[ipc]
        common = {
            "ipc": ipc,
            "expert_epoch": e,
            "score_epoch": score_epoch or e,
            "student_epochs": recipes[ipc].epochs,
        }
        rand = [results[(ipc, None, r)] for r in reps]
        rand_acc = metric_of(rand, "test_acc")
        m, s = mean_std(rand_acc)
        rows.append(
            {
                **common,
                "selection": "random",
                "bin": None,
                "test_mean": m,
                "test_std": s,
                "n": len(rand),
                "val_mean": mean_std(metric_of(rand, "val_acc"))[0],
                "rel_change": 0.0,
                "rel_change_std": 0.0,
                "score_mean": None,
                "topped_up": False,
            }
        )
        for b in bin_list:
            res = [results[(ipc, b, r)] for r in reps]
            acc = metric_of(res, "test_acc")
            rel = [a / ra - 1.0 if ra > 0 else float("nan") for a, ra in zip(acc, rand_acc, strict=True)]
            m, s = mean_std(acc)
            rm, rs = mean_std(rel)
            rows.append(
                {
                    **common,
                    "selection": f"bin {b}/{num_bins}",
                    "bin": b,
                    "test_mean": m,
                    "test_std": s,
                    "n": len(res),
                    "val_mean": mean_std(metric_of(res, "val_acc"))[0],
                    "rel_change": rm,
                    "rel_change_std": rs,
                    "score_mean": sum(sel_scores[(ipc, b)]) / len(sel_scores[(ipc, b)]),
                    "topped_up": smallest_bin < ipc,
                }
            )

    folder = study_dir(lab, NAME)
    figures = [_plot(rows, num_bins, folder / "selection.png", dataset=prep.dataset.name)]
    rel = {
        str(ipc): {str(r["bin"]): r["rel_change"] for r in rows if r["ipc"] == ipc and r["bin"] is not None}
        for ipc in ipc_list
    }
    summary = {
        "relative_change": rel,
        "random_acc": {str(r["ipc"]): r["test_mean"] for r in rows if r["bin"] is None},
        "score_quantiles": {str(se): _quantiles(sc) for se, sc in scores.items()},
        "expert_epochs": {str(k): v for k, v in epochs.items()},
    }
    settings = {
        "scale": scale, "preset": p.name, "expert": p.expert.to_dict(), "expert_key": expert.key,
        "ipcs": ipc_list, "bins": bin_list, "num_bins": num_bins, "repetitions": reps,
        "image_seed": f"{IMAGE_SEED_BASE} + repetition", "score": "-log p_y (probabilities, not logits)",
        "score_epoch": score_epoch or "label epoch", "expert_epochs": {str(k): v for k, v in epochs.items()},
        "epochs_source": epoch_source, "student": {str(i): r.to_dict() for i, r in recipes.items()},
    }
    finding = verdict(rows, ipc_list, bin_list, num_bins)
    return StudyResult(
        name=NAME, rows=rows, summary=summary, figures=figures, settings=settings, finding=finding
    )


def _quantiles(sc: torch.Tensor) -> dict[str, float]:
    q = torch.quantile(sc.double(), torch.tensor([0.0, 0.1, 0.5, 0.9, 1.0], dtype=torch.float64))
    return {k: float(v) for k, v in zip(("min", "p10", "median", "p90", "max"), q, strict=True)}


def verdict(rows: list[dict], ipcs: list[int], bins: list[int], num_bins: int) -> str:
    lo, hi = min(bins), max(bins)
    if lo == hi:
        return f"Not assessed: only bin {lo} was run; easy vs hard needs at least two bins."
    easy = {i: next(r["rel_change"] for r in rows if r["ipc"] == i and r["bin"] == lo) for i in ipcs}
    hard = {i: next(r["rel_change"] for r in rows if r["ipc"] == i and r["bin"] == hi) for i in ipcs}
    if not all(finite(v) for v in (*easy.values(), *hard.values())):
        return "Not assessed: some relative changes are undefined (random baseline at 0% accuracy)."
    holds_at = [i for i in ipcs if easy[i] > 0 > hard[i]]
    if len(holds_at) == len(ipcs):
        claim = "Holds here"
    elif holds_at:
        claim = f"Holds at IPC {', '.join(map(str, holds_at))} only"
    elif any(hard[i] < 0 for i in ipcs):
        claim = "Partly holds (hard images hurt, easy images do not help)"
    elif any(easy[i] > 0 for i in ipcs):
        claim = "Partly holds (easy images help, hard images do not hurt)"
    else:
        claim = "Does not hold here"
    txt = "; ".join(f"IPC {i}: bin {lo} {100 * easy[i]:+.1f}%, bin {hi} {100 * hard[i]:+.1f}%" for i in ipcs)
    return (f"{claim}: relative test-accuracy change vs random images (bin 0 = easiest of {num_bins}, "
            f"by the expert's -log p_y) - {txt}.")


def _plot(rows, num_bins, path, *, dataset: str):
    from ..report.plots import plt as pl
    from ..report.plots import save_figure

    fig, ax = pl.subplots(figsize=(5.4, 3.8))
    for ipc in sorted({r["ipc"] for r in rows}):
        rs = sorted((r for r in rows if r["ipc"] == ipc and r["bin"] is not None), key=lambda r: r["bin"])
        base = next(r for r in rows if r["ipc"] == ipc and r["bin"] is None)
        ax.errorbar([r["bin"] for r in rs], [100 * r["rel_change"] for r in rs],
                    yerr=[100 * (r["rel_change_std"] if finite(r["rel_change_std"]) else 0) for r in rs],
                    marker="o", capsize=3, label=f"IPC {ipc} (random {pct(base['test_mean'])})")
    ax.axhline(0, color="k", lw=0.8)
    ax.set_xlabel(f"difficulty bin of -log p_y (0 = easiest of {num_bins})")
    ax.set_ylabel("accuracy change vs random (%)")
    ax.set_xticks(range(num_bins))
    ax.set_title(f"{dataset}: image selection by expert cross-entropy", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return save_figure(fig, path, svg=True)
