"""Expert-epoch sweep (paper E2, Fig. 2, Table 7): which expert epoch gives the best soft labels per IPC?

For each IPC and each expert epoch of a grid, students learn from the same random images labelled by
the expert at that epoch. The epoch is chosen on validation accuracy; test accuracy is reported. The
expert's own test accuracy and the mean entropy of the labels are recorded beside each cell (Fig. 2).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from ..config import LabelSpec
from ..lab import Lab
from ..presets import Preset
from ..sets.spec import SetSpec
from .base import (
    StudyResult,
    argbest,
    cell_stats,
    common_options,
    common_settings,
    epoch_grid,
    evaluate_grid,
    expert_history_value,
    mean_label_entropy,
    pct,
    planned_epochs,
    register_study,
    student_recipe,
    study_dir,
)

NAME = "expert-epoch"
QUICK_IPCS = (1, 10)
QUICK_EPOCH_GRID = (1, 2, 4, 7)  # plus the expert's last epoch


# ---------------------------------------------------------------------------------------------------------
# the study


@register_study(NAME, help="E2 / Fig. 2: student accuracy vs expert epoch (expert accuracy, label entropy)")
def study_expert_epoch(lab: Lab, *, scale: str = "quick", ipcs: Sequence[int] | None = None,
                       epochs: Sequence[int] | None = None, seeds: Sequence[int] | None = None,
                       student_epochs: int | None = None, image_seed: int = 0,
                       preset: Preset | str | None = None) -> StudyResult:
    """Per IPC, students on labels from every expert epoch of a grid; the best epoch by validation."""
    p, ipc_list, seed_ids, image_seed = common_options(scale, preset, ipcs, seeds, image_seed=image_seed,
                                                       ipcs_default=QUICK_IPCS if scale == "quick" else None)
    last = planned_epochs(lab, p.expert)
    # default grid: quick 1, 2, 4, 7 and the last epoch; full every 2nd epoch from 1 (the paper's), the last
    grid = epoch_grid(epochs, scale, last, quick=QUICK_EPOCH_GRID, every=2)

    recipes = {ipc: student_recipe(p, ipc, student_epochs=student_epochs) for ipc in ipc_list}
    expert = lab.expert(p.expert)  # every option is checked: now the training
    grid_cells = [(ipc, e, LabelSpec(kind="soft", expert_epoch=e)) for ipc in ipc_list for e in grid]
    results = evaluate_grid(
        lab,
        [(ipc, label) for ipc, _, label in grid_cells],
        recipes=recipes,
        seeds=seed_ids,
        expert=expert,
        study=NAME,
        image_seed=image_seed,
    )
    rows: list[dict[str, Any]] = []
    for (ipc, e, label), res in zip(grid_cells, results, strict=True):
        rows.append({"ipc": ipc, "expert_epoch": e, "expert_acc": expert_history_value(expert, e),
                     "label_entropy": mean_label_entropy(lab, expert, SetSpec(ipc=ipc, label=label,
                                                                                image_seed=image_seed)),
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
    summary = {"chosen": chosen, "expert_last_epoch": last,
               "expert_test_acc_last": expert_history_value(expert, last), "epoch_grid": grid}
    figs = [_plot(rows, chosen, study_dir(lab, NAME) / "expert_epoch.png", dataset=lab.data.name)]
    settings = {**common_settings(p, expert, recipes, scale=scale, ipcs=ipc_list, seeds=seed_ids,
                                  image_seed=image_seed),
                "epoch_grid": grid,
                "label_entropy": "mean Shannon entropy (nats) of the soft labels of the cell's images"}
    return StudyResult(name=NAME, rows=rows, summary=summary, figures=figs, settings=settings,
                       finding=verdict(chosen, last))


def verdict(chosen: dict[int, dict], last: int) -> str:
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
    claim = ("consistent with the paper" if early and len(early) == len(ipcs) and grows else
               "partly consistent with the paper" if early or grows else "not consistent with the paper")
    return (f"Best expert epoch by validation (expert trained {last} epochs) — {parts}; {early_txt} and "
            f"{grow_txt}: {claim}.")


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
