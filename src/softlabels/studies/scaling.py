"""Data-knowledge scaling (paper E7, Fig. 6 / 11): how knowledge in the labels (top-k) trades with data (IPC).

Grid: IPC x k for one or more expert epochs, where ``k = 0`` is hard labels, ``k = C`` full soft labels and
``0 < k < C`` keeps the k largest probabilities without renormalising (the paper's choice; ``renorm=True``
renormalises). Every IPC draws fresh random images (image seed derived from the IPC, shared by every k and
epoch at that IPC, so the k comparison is paired). Per k a law ``acc = a - b * ipc^(-alpha)`` is fit
(log-linear fallback; our choice of form: the paper's exact formula was not available), and the hard-label
IPC needed to match each k's accuracy at the smallest IPC is read off the hard-label law. With full labels
from several expert epochs, the Pareto frontier is the best epoch per IPC (chosen on validation accuracy).

"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from ..analysis.fit import LawFit, fit_saturating, ipc_to_match
from ..analysis.frontier import upper_envelope
from ..config import LabelSpec
from ..lab import Lab
from ..presets import Preset
from . import base
from .base import StudyResult, cell_stats, finite, int_list, pct, register_study, student_recipe, study_dir

NAME = "scaling"
QUICK_IPCS = (1, 2, 5, 10)
FULL_IPCS = (1, 2, 3, 4, 6, 8, 10, 12, 16, 20, 40)
QUICK_SEEDS = 1
IMAGE_SEED_BASE = 70_000  # image seed of a cell = base + ipc: fresh images per IPC, shared across k / epochs


# ---------------------------------------------------------------------------------------------------------
# the study


def label_for_k(k: int, *, epoch: int, num_classes: int, renorm: bool = False) -> LabelSpec:
    """k = 0: hard labels; k = C: full soft labels at ``epoch``; else top-k stored with a top-k codec."""
    if not 0 <= k <= num_classes:
        raise ValueError(f"k must be in 0..{num_classes} (0 = hard labels, C = full labels), got {k}")
    if k == 0:
        return LabelSpec(kind="hard", codec="hard")
    if k == num_classes:
        return LabelSpec(kind="soft", expert_epoch=epoch)
    return LabelSpec(kind="soft", expert_epoch=epoch, transform=f"topk:k={k},renorm={int(renorm)}",
                     codec=f"topk:k={k},values=fp32")


def default_ks(scale: str, num_classes: int) -> list[int]:
    """Quick: 0, 1, 2, C; full: 0, 1, 2, 4, 8, ... (< C) and C (the paper's grid adapted to C)."""
    if scale == "quick":
        return sorted({0, 1, min(2, num_classes), num_classes})
    ks = {0, num_classes}
    k = 1
    while k < num_classes:
        ks.add(k)
        k *= 2
    return sorted(ks)


def k_name(k: int, num_classes: int) -> str:
    return "hard" if k == 0 else ("full" if k == num_classes else f"top-{k}")


@register_study(NAME, help="E7 / Fig. 6, 11: IPC x top-k knowledge grid, scaling-law fits, Pareto frontier")
def study_scaling(lab: Lab, *, scale: str = "quick", ipcs: Sequence[int] | None = None,
                  ks: Sequence[int] | None = None, epochs: Sequence[int] | None = None,
                  frontier_epochs: Sequence[int] | None = None, seeds: Sequence[int] | None = None,
                  student_epochs: int | None = None, renorm: bool = False,
                  preset: Preset | str | None = None) -> StudyResult:
    """IPC x k students at the ``epochs`` (default: the validation-chosen epoch at the smallest IPC and the
    last epoch), full-label students at the ``frontier_epochs``; law fits; hard-IPC-to-match; frontier."""
    p = base.resolve_preset(scale, preset)
    if not isinstance(renorm, bool):
        raise TypeError(f"renorm must be a bool, got {renorm!r}")
    num_classes = lab.prepared.num_classes
    ipc_list = int_list("ipcs", ipcs if ipcs is not None else (QUICK_IPCS if scale == "quick" else FULL_IPCS))
    k_list = int_list("ks", ks if ks is not None else default_ks(scale, num_classes), minimum=0,
                      maximum=num_classes)
    seed_ids = base.seed_list(seeds, default=base.default_seeds(scale, p, quick=QUICK_SEEDS))
    last = base.planned_epochs(lab, p.expert)
    given = None if epochs is None else int_list("epochs", epochs, maximum=last)
    given_front = None if frontier_epochs is None else int_list("frontier_epochs", frontier_epochs,
                                                               maximum=last)
    recipes = {ipc: student_recipe(p, ipc, student_epochs=student_epochs) for ipc in ipc_list}
    expert = lab.expert(p.expert)  # every option is checked: now the training
    epoch_source = "given"
    if given is None:
        early = base.expert_epochs(lab, p, expert, [ipc_list[0]])[0][ipc_list[0]]
        epoch_list = sorted({early, last})
        epoch_source = f"validation-chosen epoch at IPC {ipc_list[0]} ({early}) and the last epoch ({last})"
    else:
        epoch_list = given
    front_list = given_front or sorted({e for e in p.sweep_epochs if 0 < e <= last} | set(epoch_list))
    keys: list[tuple[int | None, int, int]] = []  # (expert epoch or None for hard labels, k, ipc)
    for e in epoch_list:
        for k in k_list:
            keys += [(None if k == 0 else e, k, ipc) for ipc in ipc_list]
    for e in front_list:
        keys += [(e, num_classes, ipc) for ipc in ipc_list]
    keys = list(dict.fromkeys(keys))
    labels = {
        key: label_for_k(key[1], epoch=key[0] or last, num_classes=num_classes, renorm=renorm) for key in keys
    }
    results = base.evaluate_grid(
        lab,
        [(key[2], labels[key]) for key in keys],
        recipes=recipes,
        seeds=seed_ids,
        expert=expert,
        study=NAME,
        image_seed=lambda ipc: IMAGE_SEED_BASE + ipc,
    )
    cells: dict[tuple[int | None, int, int], dict[str, Any]] = {}
    for key, res in zip(keys, results, strict=True):
        e, k, ipc = key
        label = labels[key]
        cells[key] = {"expert_epoch": e, "k": k, "labels": k_name(k, num_classes), "ipc": ipc,
                      "label_kind": label.kind, "transform": label.transform, "codec": label.codec,
                      "renorm": bool(renorm) if 0 < k < num_classes else None,
                      "student_epochs": recipes[ipc].epochs, **cell_stats(res)}
    rows = sorted(cells.values(), key=lambda r: (r["expert_epoch"] or 0, r["k"], r["ipc"]))

    # ---- law fits per (epoch, k) and the hard-label IPC to match -----------------------------------------
    chance = 1.0 / num_classes
    fits: dict[int, dict[int, LawFit]] = {}
    for e in epoch_list:
        fits[e] = {}
        for k in k_list:
            pts = [(r["ipc"], r["test_mean"]) for r in rows
                   if r["k"] == k and r["expert_epoch"] == (None if k == 0 else e) and finite(r["test_mean"])]
            if len({x for x, _ in pts}) >= 2:
                fits[e][k] = fit_saturating([x for x, _ in pts], [y for _, y in pts], floor=chance)
    m = ipc_list[0]
    matches: list[dict[str, Any]] = []
    for e in epoch_list:
        hard_fit = fits[e].get(0)
        hard_pts = sorted((r["ipc"], r["test_mean"]) for r in rows if r["k"] == 0)
        for k in k_list:
            if k == 0 or (e, k, m) not in cells:
                continue
            target = cells[(e, k, m)]["test_mean"]
            fitted = ipc_to_match(hard_fit, target) if hard_fit is not None and finite(target) else math.nan
            observed = next((x for x, y in hard_pts if finite(target) and y >= target), None)
            matches.append({
                "expert_epoch": e, "k": k, "labels": k_name(k, num_classes), "ipc": m, "acc": target,
                "hard_ipc_fitted": fitted, "times_data_fitted": fitted / m if finite(fitted) else fitted,
                "extrapolated": bool(finite(fitted) and fitted > ipc_list[-1]) or fitted == math.inf,
                "hard_ipc_observed": observed,
            })

    # ---- Pareto frontier over expert epochs (full labels), chosen on validation ------------------------
    fr = [cells[(e, num_classes, ipc)] for e in front_list for ipc in ipc_list]
    use_val = all(finite(r["val_mean"]) for r in fr)
    env = upper_envelope([r["ipc"] for r in fr], [r["val_mean"] if use_val else r["test_mean"] for r in fr],
                         [r["expert_epoch"] for r in fr])
    frontier = [
        {
            "ipc": int(ipc),
            "best_epoch": int(ep),
            "test_acc": cells[(ep, num_classes, int(ipc))]["test_mean"],
            "val_acc": cells[(ep, num_classes, int(ipc))]["val_mean"],
        }
        for ipc, (_, ep) in env.items()
    ]
    best_epochs = [f["best_epoch"] for f in frontier]
    nondecreasing = all(a <= b for a, b in zip(best_epochs, best_epochs[1:], strict=False))

    folder = study_dir(lab, NAME)
    figures = [_plot(rows, fits, frontier, epoch_list, front_list, k_list, num_classes, ipc_list,
                     folder / "scaling.png", dataset=lab.prepared.dataset.name)]
    finding = verdict(cells, matches, epoch_list, k_list, num_classes, m, ipc_list, frontier, nondecreasing)
    summary = {
        "fits": {
            str(e): {k_name(k, num_classes): f.to_dict() for k, f in fe.items()} for e, fe in fits.items()
        },
        "ipc_to_match": matches,
        "frontier": frontier,
        "frontier_chosen_on": "validation accuracy" if use_val else "test accuracy (no validation split)",
        "frontier_best_epoch_nondecreasing_in_ipc": nondecreasing,
        "law_note": "law form chosen by us; the paper's exact scaling-law formula was not available",
    }
    settings = {
        "scale": scale, "preset": p.name, "expert": p.expert.to_dict(), "expert_key": expert.key,
        "student": {str(i): r.to_dict() for i, r in recipes.items()}, "ipcs": ipc_list, "ks": k_list,
        "epochs": epoch_list, "epochs_source": epoch_source, "frontier_epochs": front_list, "seeds": seed_ids,
        "renorm": renorm, "image_seed": f"{IMAGE_SEED_BASE} + ipc", "num_classes": num_classes,
    }
    return StudyResult(
        name=NAME, rows=rows, summary=summary, figures=figures, settings=settings, finding=finding
    )


def verdict(cells, matches, epoch_list, k_list, num_classes, m, ipc_list, frontier, nondecreasing) -> str:
    if 0 not in k_list or not any(k > 0 for k in k_list):
        return "Knowledge-for-data trade not assessed: the grid needs k = 0 (hard labels) and some k > 0."
    e = epoch_list[0]
    kmax = max(k for k in k_list if k > 0)
    soft, hard = cells[(e, kmax, m)]["test_mean"], cells[(None, 0, m)]["test_mean"]
    match = next(x for x in matches if x["expert_epoch"] == e and x["k"] == kmax)
    accs = [cells[(e, k, m)]["test_mean"] if k else hard for k in k_list]
    mono = all(a <= b + 1e-9 for a, b in zip(accs, accs[1:], strict=False))
    fitted = match["hard_ipc_fitted"]
    if not (finite(soft) and finite(hard)):
        return "Knowledge-for-data trade not assessed: missing accuracies."
    if soft <= hard:
        return (
            f"Does not hold here: at IPC {m}, {k_name(kmax, num_classes)} labels (expert epoch {e}) reach "
            f"{pct(soft)} vs {pct(hard)} with hard labels, so extra label knowledge does not replace data."
        )
    if fitted == math.inf:
        how = "the fitted hard-label law never reaches it"
    elif finite(fitted):
        how = (f"the fitted hard-label law needs ~{fitted:.1f} IPC ({fitted / m:.1f}x the images)"
               + (f", extrapolated beyond IPC {ipc_list[-1]}" if fitted > ipc_list[-1] else ""))
    else:
        how = "no hard-label law could be fit"
    obs = match["hard_ipc_observed"]
    obs_txt = f"; on the grid hard labels first match it at IPC {obs}" if obs else \
        f"; no hard-label cell up to IPC {ipc_list[-1]} matches it"
    frontier_txt = ""
    if len(frontier) > 1:
        frontier_txt = (
            " The best expert epoch per IPC "
            + ("does not decrease" if nondecreasing else "is not monotone")
            + " with IPC ("
            + ", ".join(f"{f['ipc']}:{f['best_epoch']}" for f in frontier)
            + ")."
        )
    return (
        f"Holds here: at IPC {m}, {k_name(kmax, num_classes)} soft labels (expert epoch {e}) reach "
        f"{pct(soft)} "
        f"vs {pct(hard)} with hard labels; {how}{obs_txt}. Accuracy at IPC {m} "
        + ("rises" if mono else "does not rise monotonically")
        + " with k ("
        + ", ".join(f"k={k}: {pct(a)}" for k, a in zip(k_list, accs, strict=True))
        + ")."
        + frontier_txt
    )


def _plot(rows, fits, frontier, epoch_list, front_list, k_list, num_classes, ipc_list, path, *, dataset: str):
    import numpy as np

    from ..report.plots import plt as pl
    from ..report.plots import save_figure

    n = len(epoch_list) + 1
    fig, axes = pl.subplots(1, n, figsize=(4.6 * n, 3.8), squeeze=False)
    xs = np.geomspace(ipc_list[0], ipc_list[-1], 100)
    colors = pl.get_cmap("viridis")
    for ax, e in zip(axes[0][:-1], epoch_list, strict=True):
        for i, k in enumerate(k_list):
            pts = [r for r in rows if r["k"] == k and r["expert_epoch"] == (None if k == 0 else e)]
            c = "tab:gray" if k == 0 else colors(i / max(1, len(k_list) - 1))
            ax.errorbar(
                [r["ipc"] for r in pts],
                [100 * r["test_mean"] for r in pts],
                yerr=[100 * (r["test_std"] if finite(r["test_std"]) else 0) for r in pts],
                fmt="o",
                ms=4,
                capsize=2,
                color=c,
                label=k_name(k, num_classes),
            )
            f = fits.get(e, {}).get(k)
            if f is not None:
                ax.plot(xs, 100 * np.asarray(f.predict(xs)), "-" if f.law == "saturating" else "--", color=c,
                        lw=1)
        _ipc_axis(ax, ipc_list)
        ax.set_ylabel("test accuracy (%)")
        ax.set_title(f"{dataset}: knowledge (top-k) vs data, expert epoch {e}", fontsize=8)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, title="labels (fit: a - b·IPC^-α)", title_fontsize=7)
    ax = axes[0][-1]
    for i, e in enumerate(front_list):
        pts = [r for r in rows if r["k"] == num_classes and r["expert_epoch"] == e]
        ax.plot([r["ipc"] for r in pts], [100 * r["test_mean"] for r in pts], "o-", ms=3, lw=1,
                color=pl.get_cmap("plasma")(i / max(1, len(front_list) - 1) * 0.85), label=f"epoch {e}")
    hard = [r for r in rows if r["k"] == 0]
    if hard:
        ax.plot([r["ipc"] for r in hard], [100 * r["test_mean"] for r in hard], "s--", ms=3, color="tab:gray",
                label="hard labels")
    ax.plot([f["ipc"] for f in frontier], [100 * f["test_acc"] for f in frontier], "k-", lw=2.2, alpha=0.5,
            label="frontier (val-chosen)")
    _ipc_axis(ax, ipc_list)
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("full labels per expert epoch + Pareto frontier", fontsize=8)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return save_figure(fig, path, svg=True)


def _ipc_axis(ax, ipcs: list[int]) -> None:
    ax.set_xscale("log")
    ax.set_xticks(ipcs)
    ax.set_xticklabels([str(i) for i in ipcs])
    ax.minorticks_off()
    ax.set_xlabel("images per class (IPC)")
