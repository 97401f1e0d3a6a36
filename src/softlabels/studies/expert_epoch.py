"""Expert-epoch sweep (paper E2, Fig. 2, Table 7): which expert epoch gives the best soft labels per IPC?

For each IPC and each expert epoch of a grid, students learn from the same random images labelled by
the expert at that epoch. The epoch is chosen on validation accuracy; test accuracy is reported. The
expert's own test accuracy and the mean entropy of the labels are recorded beside each cell (Fig. 2).

This module also holds the helpers shared by the studies of this file group (temperature, swap,
knowledge): the group's option defaults, its quick/full student settings and the per-IPC expert-epoch
choice (the option checks themselves live in :mod:`.base`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from ..config import LabelSpec, Preset, StudentRecipe
from ..distill import label_images
from ..experts import Trajectory
from ..lab import Lab
from ..labels.diagnostics import entropy
from ..selection import random_per_class
from ..validation import check_positive_int
from . import base
from .base import StudyResult, evaluate_grid, int_list, mean_std, metric_of, pct, register_study, study_dir

NAME = "expert-epoch"
QUICK_IPCS = (1, 10)
QUICK_SEEDS = 2
QUICK_STUDENT_EPOCHS = {1: 150, 10: 100, 50: 50}  # caps on the preset's student epochs at quick scale
QUICK_EPOCH_GRID = (1, 2, 4, 7)  # plus the expert's last epoch
PROTOCOL_NOTE = ("clean protocol: expert trained on the train pool (validation split held out); choices made "
                 "on validation accuracy; reported numbers are test accuracy at the final student epoch, "
                 "mean ± std over student seeds")


# ---------------------------------------------------------------------------------------------------------
# helpers shared by the studies of this group


def default_seeds(scale: str, preset: Preset) -> int:
    return min(QUICK_SEEDS, preset.seeds) if scale == "quick" else preset.seeds


def default_ipcs(scale: str, preset: Preset) -> tuple[int, ...]:
    return QUICK_IPCS if scale == "quick" else tuple(preset.ipcs)


def group_options(scale: str, preset: Preset | str | None, ipcs: Sequence[int] | None,
                  seeds: int | Sequence[int] | None, image_seed: int,
                  *, ipcs_default: Sequence[int] | None = None) -> tuple[Preset, list[int], list[int], int]:
    """The options every study of the group takes, checked: (preset, IPCs, student seeds, image seed).

    IPCs default to ``ipcs_default`` if given, else :func:`default_ipcs`; seeds to :func:`default_seeds`.
    """
    p = base.resolve_preset(scale, preset)
    if ipcs is None:
        ipcs = default_ipcs(scale, p) if ipcs_default is None else ipcs_default
    ipc_list = int_list("ipcs", ipcs)
    seed_ids = base.seed_list(seeds, default=default_seeds(scale, p))
    return p, ipc_list, seed_ids, check_positive_int("image_seed", image_seed, minimum=0)


def epoch_grid(epochs: Sequence[int] | None, scale: str, last: int, *, quick: Sequence[int],
               every: int) -> list[int]:
    """``epochs`` (each <= the expert's ``last`` epoch), else the default grid: the ``quick`` epochs at quick
    scale, every ``every``-th epoch from 1 at full scale; the default always includes ``last``."""
    if epochs is not None:
        return int_list("epochs", epochs, maximum=last)
    grid = quick if scale == "quick" else range(1, last + 1, every)
    return sorted({e for e in grid if e <= last} | {last})


def group_settings(p: Preset, expert: Trajectory, recipes: dict[int, StudentRecipe], *, scale: str,
                   ipcs: list[int], seeds: list[int], image_seed: int) -> dict[str, Any]:
    """The settings every study of the group records (the study adds its own)."""
    return {"expert": p.expert.to_dict(), "expert_key": expert.key,
            "student": {i: r.to_dict() for i, r in recipes.items()}, "ipcs": ipcs, "seeds": seeds,
            "image_seed": image_seed, "preset": p.name, "scale": scale}


def student_recipe(preset: Preset, ipc: int, *, scale: str, student_epochs: int | None) -> StudentRecipe:
    """The preset's student for ``ipc``; quick scale caps its epochs (150 / 100 / 50 for IPC 1 / 10 / 50)."""
    recipe = preset.student_for(ipc)
    if student_epochs is not None:
        return recipe.replace(epochs=check_positive_int("student_epochs", student_epochs))
    if scale == "quick":
        caps = sorted(QUICK_STUDENT_EPOCHS.items())
        cap = next((e for i, e in caps if ipc <= i), caps[-1][1])
        recipe = recipe.replace(epochs=min(recipe.epochs, cap))
    return recipe


def chosen_epochs(lab: Lab, preset: Preset, expert: Trajectory, ipcs: Sequence[int],
                  expert_epoch: int | dict | None) -> tuple[dict[int, int], str]:
    """Expert epoch per IPC: given explicitly, or the main job's validation sweep (shared runs)."""
    if expert_epoch is not None:
        return base.given_epochs(expert_epoch, ipcs, expert), "given"
    return (base.sweep_epochs(lab, preset, expert, ipcs),
            "validation sweep of the main job (study 'baseline-sweep', shared)")


def cell_stats(res: list[dict]) -> dict[str, float | int]:
    """Mean / std of test and validation accuracy over the seeds of one cell."""
    t_mean, t_std = mean_std(metric_of(res, "test_acc"))
    v_mean, v_std = mean_std(metric_of(res, "val_acc"))
    return {"val_mean": v_mean, "val_std": v_std, "test_mean": t_mean, "test_std": t_std, "n": len(res)}


def argbest(rows: list[dict], key: str = "val_mean") -> dict | None:
    """The row with the largest finite ``key`` (ties: the earliest row); ``None`` if none is finite."""
    best = None
    for r in rows:
        v = r.get(key)
        if v is not None and math.isfinite(v) and (best is None or v > best[key]):
            best = r
    return best


def mean_label_entropy(lab: Lab, expert: Trajectory, *, ipc: int, label: LabelSpec, image_seed: int) -> float:
    """Mean entropy (nats) of ``label`` on the random images of (ipc, image_seed), as students see it."""
    prep = lab.prepared
    pos = random_per_class(prep.train_targets, ipc=ipc, num_classes=prep.num_classes, seed=image_seed)
    return float(entropy(label_images(prep, pos, label, [expert], device=lab.device)).mean())


def expert_acc(expert: Trajectory, epoch: int, key: str = "test_acc") -> float:
    for h in expert.history():
        if int(h["epoch"]) == epoch:
            v = h.get(key)
            return float(v) if v is not None else float("nan")
    return float("nan")


# ---------------------------------------------------------------------------------------------------------
# the study


@register_study(NAME, help="E2 / Fig. 2: student accuracy vs expert epoch (expert accuracy, label entropy)")
def study_expert_epoch(lab: Lab, *, scale: str = "quick", ipcs: Sequence[int] | None = None,
                       epochs: Sequence[int] | None = None, seeds: int | Sequence[int] | None = None,
                       student_epochs: int | None = None, image_seed: int = 0,
                       preset: Preset | str | None = None) -> StudyResult:
    """Per IPC, students on labels from every expert epoch of a grid; the best epoch by validation."""
    p, ipc_list, seed_ids, image_seed = group_options(scale, preset, ipcs, seeds, image_seed)
    expert = lab.expert(p.expert)
    last = expert.epochs_done
    # default grid: quick 1, 2, 4, 7 and the last epoch; full every 2nd epoch from 1 (the paper's), the last
    grid = epoch_grid(epochs, scale, last, quick=QUICK_EPOCH_GRID, every=2)

    recipes = {ipc: student_recipe(p, ipc, scale=scale, student_epochs=student_epochs) for ipc in ipc_list}
    grid_cells = [(ipc, e, LabelSpec(kind="soft", expert_epoch=e)) for ipc in ipc_list for e in grid]
    results = evaluate_grid(lab, [(ipc, label) for ipc, _, label in grid_cells], recipes=recipes, seeds=seed_ids,
                            expert=expert, study=NAME, image_seed=image_seed)
    rows: list[dict[str, Any]] = []
    for (ipc, e, label), res in zip(grid_cells, results, strict=True):
        rows.append({"ipc": ipc, "expert_epoch": e, "expert_acc": expert_acc(expert, e),
                     "label_entropy": mean_label_entropy(lab, expert, ipc=ipc, label=label, image_seed=image_seed),
                     **cell_stats(res)})

    chosen: dict[int, dict] = {}
    for ipc in ipc_list:
        cells = [r for r in rows if r["ipc"] == ipc]
        best = argbest(cells)
        last_cell = next(r for r in cells if r["expert_epoch"] == grid[-1])
        if best is not None:
            chosen[ipc] = {"epoch": best["expert_epoch"], "test_mean": best["test_mean"],
                           "test_std": best["test_std"], "val_mean": best["val_mean"],
                           "last_epoch_test_mean": last_cell["test_mean"],
                           "last_epoch_val_mean": last_cell["val_mean"],
                           "gain_over_last": best["test_mean"] - last_cell["test_mean"]}
    summary = {"chosen": chosen, "expert_last_epoch": last, "expert_test_acc_last": expert_acc(expert, last),
               "epoch_grid": grid}
    figs = [_plot(rows, chosen, study_dir(lab, NAME) / "expert_epoch.png", dataset=lab.data.name)]
    settings = {**group_settings(p, expert, recipes, scale=scale, ipcs=ipc_list, seeds=seed_ids,
                                 image_seed=image_seed),
                "epoch_grid": grid,
                "label_entropy": "mean Shannon entropy (nats) of the soft labels of the cell's images"}
    return StudyResult(NAME, rows, summary, figs, "clean", settings, _finding(chosen, last))


def _finding(chosen: dict[int, dict], last: int) -> str:
    if not chosen:
        return "No validation accuracy was available, so no expert epoch could be chosen."
    ipcs = sorted(chosen)
    parts = ", ".join(f"IPC {i}: epoch {chosen[i]['epoch']} ({pct(chosen[i]['test_mean'])} test, "
                      f"{100 * chosen[i]['gain_over_last']:+.1f} pts vs the last epoch)" for i in ipcs)
    # early-stopped = chosen before the last epoch AND strictly better than it on validation (not a tie)
    early = [i for i in ipcs
             if chosen[i]["epoch"] < last and chosen[i]["val_mean"] > chosen[i]["last_epoch_val_mean"]]
    if len(early) == len(ipcs):
        early_txt = "every IPC prefers an early-stopped expert"
    elif early:
        early_txt = f"only IPC {', '.join(map(str, early))} prefer(s) an early-stopped expert"
    else:
        early_txt = "no IPC prefers an early-stopped expert"
    eps = [chosen[i]["epoch"] for i in ipcs]
    if len(ipcs) < 2:
        grow_txt, grows = "one IPC only, so growth with IPC is not tested", True
    else:
        grows = all(a <= b for a, b in zip(eps, eps[1:], strict=False)) and eps[-1] > eps[0]
        grow_txt = ("the optimal epoch grows with IPC" if grows else
                    "the optimal epoch does not grow with IPC" if eps[-1] <= eps[0] else
                    "the optimal epoch grows with IPC overall but not monotonically")
    verdict = ("consistent with the paper" if early and len(early) == len(ipcs) and grows else
               "partly consistent with the paper" if early or grows else "not consistent with the paper")
    return (f"Best expert epoch by validation (expert trained {last} epochs) — {parts}; {early_txt} and "
            f"{grow_txt}: {verdict}.")


def _plot(rows: list[dict], chosen: dict[int, dict], path, *, dataset: str):
    from ..report.plots import plt, save_figure

    fig, axes = plt.subplots(1, 2, figsize=(9.5, 3.8), sharey=True)
    for k, ipc in enumerate(sorted({r["ipc"] for r in rows})):
        cells = sorted((r for r in rows if r["ipc"] == ipc), key=lambda r: r["expert_epoch"])
        color = f"C{k}"
        y = [100 * r["test_mean"] for r in cells]
        err = [100 * (r["test_std"] if math.isfinite(r["test_std"]) else 0.0) for r in cells]
        for ax, key, scale in ((axes[0], "expert_acc", 100.0), (axes[1], "label_entropy", 1.0)):
            x = [scale * r[key] for r in cells]
            ax.errorbar(x, y, yerr=err, marker="o", ms=4, capsize=2, color=color, label=f"IPC {ipc}")
            for xi, yi, r in zip(x, y, cells, strict=True):
                ax.annotate(str(r["expert_epoch"]), (xi, yi), textcoords="offset points", xytext=(3, 3),
                            fontsize=6, color=color)
            best = chosen.get(ipc)
            if best is not None:
                b = next(r for r in cells if r["expert_epoch"] == best["epoch"])
                ax.plot([scale * b[key]], [100 * b["test_mean"]], marker="*", ms=13, color=color, mec="k")
    axes[0].set_xlabel("expert test accuracy (%)")
    axes[1].set_xlabel("mean label entropy (nats)")
    axes[0].set_ylabel("student test accuracy (%)")
    for ax in axes:
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"{dataset}: soft-label quality across expert epochs (numbers = epoch, ★ = chosen on val)",
                 fontsize=9)
    return save_figure(fig, path, svg=True)
