"""How much a soft-label result depends on the student's loss: the same images and labels, the same student
seeds, trained with each loss of :func:`softlabels.engine.losses.list_losses`.

Each IPC's set is the main job's (random images, the expert epoch its validation sweep chose); each loss row
is paired seed by seed with cross-entropy on probability targets (``soft-ce``, the reference code's loss),
and a hard-label row shows what the labels themselves are worth under the default loss.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..config import LabelSpec
from ..engine.losses import loss_fn
from ..lab import Lab
from ..presets import Preset
from .base import (
    StudyResult,
    cell_stats,
    ci_text,
    ci_verdict,
    common_options,
    common_settings,
    evaluate_grid,
    expert_epochs,
    paired_gain,
    pct,
    register_study,
    student_recipe,
    study_dir,
)

NAME = "losses"
REFERENCE = "soft-ce"
DEFAULT_LOSSES = ("soft-ce", "kl:t=4", "mse+gt", "nkd", "uskd")


def loss_list(losses: Sequence[str] | None) -> list[str]:
    """Canonical loss specs, the reference first, without repeats."""
    if losses is None:
        losses = DEFAULT_LOSSES
    if isinstance(losses, str):  # one spec (``-O losses=nkd``)
        losses = [losses]
    if not isinstance(losses, Sequence) or not losses:
        raise ValueError(
            f"losses must be a non-empty list of loss specs, e.g. ['kl:t=4', 'nkd'], got {losses!r}"
        )
    specs = [loss_fn(s).spec for s in losses]  # unknown names fail here, with the closest match
    return list(dict.fromkeys([REFERENCE, *specs]))


@register_study(NAME, help="student losses (soft-ce, KL at T, MSE+GT, NKD, USKD) on the same soft-label sets")
def study_losses(lab: Lab, *, scale: str = "quick", ipcs: Sequence[int] | None = None,
                 losses: Sequence[str] | None = None, seeds: Sequence[int] | None = None,
                 expert_epoch: int | dict | None = None, student_epochs: int | None = None,
                 image_seed: int = 0, preset: Preset | str | None = None) -> StudyResult:
    """Per IPC: students on the same soft-label set under each loss, and on hard labels (soft-ce)."""
    p, ipc_list, seed_ids, image_seed = common_options(scale, preset, ipcs, seeds, image_seed=image_seed,
                                                       ipcs_default=(1, 10), quick_seeds=3)
    specs = loss_list(losses)
    recipes = {ipc: student_recipe(p, ipc, student_epochs=student_epochs) for ipc in ipc_list}
    epochs, epoch_source = expert_epochs(lab, p, None, ipc_list, expert_epoch)
    expert = lab.expert(p.expert)
    plan = [(ipc, spec, "soft") for ipc in ipc_list for spec in specs]
    plan += [(ipc, REFERENCE, "hard") for ipc in ipc_list]
    rows: list[dict[str, Any]] = []
    results: dict[tuple[int, str, str], list[dict]] = {}
    # one evaluate_many call per loss: the grid helper takes one recipe per IPC
    for spec in specs:
        grid = [(ipc, LabelSpec(kind="soft", expert_epoch=epochs[ipc])) for ipc in ipc_list]
        if spec == REFERENCE:
            grid += [(ipc, LabelSpec(kind="hard")) for ipc in ipc_list]
        res = evaluate_grid(lab, grid, recipes={i: r.replace(loss=spec) for i, r in recipes.items()},
                            seeds=seed_ids, expert=expert, study=NAME, image_seed=image_seed)
        for (ipc, label), r in zip(grid, res, strict=True):
            results[(ipc, spec, label.kind)] = r
    for ipc, spec, kind in plan:
        res = results[(ipc, spec, kind)]
        row = {"ipc": ipc, "loss": spec, "labels": kind,
               "expert_epoch": epochs[ipc] if kind == "soft" else None, **cell_stats(res)}
        if (spec, kind) != (REFERENCE, "soft"):
            row.update(paired_gain(res, results[(ipc, REFERENCE, "soft")]))
        rows.append(row)
    summary = {str(ipc): summarize([r for r in rows if r["ipc"] == ipc]) for ipc in ipc_list}
    figs = [_plot(rows, study_dir(lab, NAME) / "losses.png", dataset=lab.data.name)]
    settings = {**common_settings(p, expert, recipes, scale=scale, ipcs=ipc_list, seeds=seed_ids,
                                  image_seed=image_seed),
                "losses": specs, "expert_epochs": epochs, "expert_epoch_source": epoch_source,
                "comparison": f"each row minus {REFERENCE} on the same soft labels, paired by student seed "
                              "(95% CI, Student t)"}
    finding = " ".join(verdict(int(ipc), s) for ipc, s in summary.items())
    return StudyResult(name=NAME, rows=rows, summary=summary, figures=figs, settings=settings,
                       finding=finding)


def summarize(cells: list[dict]) -> dict[str, Any]:
    """The reference row, the other losses by verdict, the spread of the soft-label losses' means and the
    hard-label row."""
    ref = next(r for r in cells if r["loss"] == REFERENCE and r["labels"] == "soft")
    others = [r for r in cells if r["labels"] == "soft" and r is not ref]
    hard = next((r for r in cells if r["labels"] == "hard"), None)
    means = [r["test_mean"] for r in cells if r["labels"] == "soft"]
    by = {v: [r["loss"] for r in others if ci_verdict(r) == v] for v in ("better", "worse", "tie")}
    return {"reference": ref["test_mean"], "better": by["better"], "worse": by["worse"], "tie": by["tie"],
            "gains": {r["loss"]: ci_text(r) for r in others},
            "spread": max(means) - min(means), "hard": hard["test_mean"] if hard else None,
            "hard_gain": ci_text(hard) if hard else None}


def verdict(ipc: int, s: dict) -> str:
    head = f"IPC {ipc}: {REFERENCE} reaches {pct(s['reference'])}"
    parts = []
    for kind, word in (("better", "beat it"), ("worse", "fall below it"), ("tie", "are within the CI of it")):
        if s[kind]:
            parts.append(", ".join(f"{n} ({s['gains'][n]})" for n in s[kind]) + f" {word}")
    hard = f"; hard labels under {REFERENCE}: {pct(s['hard'])} ({s['hard_gain']})" if s["hard"] is not None \
        else ""
    return (f"{head}; " + "; ".join(parts) + f"; the losses span {100 * s['spread']:.1f} pts{hard}. "
            "A loss 'beats' the reference only when the paired 95% CI excludes zero.")


def _plot(rows: list[dict], path, *, dataset: str):
    from ..report.plots import plt, save_figure

    ipcs = sorted({r["ipc"] for r in rows})
    fig, axes = plt.subplots(
        1, len(ipcs), figsize=(3.6 * len(ipcs), 3.2), squeeze=False, layout="constrained"
    )
    for ax, ipc in zip(axes[0], ipcs, strict=True):
        cells = [r for r in rows if r["ipc"] == ipc]
        names = [r["loss"] if r["labels"] == "soft" else f"hard ({r['loss']})" for r in cells]
        ax.bar(range(len(cells)), [100 * r["test_mean"] for r in cells],
               yerr=[100 * r["test_std"] for r in cells], capsize=3,
               color=["tab:blue" if r["labels"] == "soft" else "tab:gray" for r in cells])
        ax.set_xticks(range(len(cells)), names, rotation=35, ha="right", fontsize=7)
        lo = min(100 * r["test_mean"] for r in cells)
        ax.set_ylim(max(0.0, lo - 10), None)
        ax.set_ylabel("student test accuracy (%)")
        ax.set_title(f"IPC {ipc}", fontsize=9)
    fig.suptitle(f"{dataset}: student losses on the same soft labels (mean ± std over seeds)", fontsize=9)
    return save_figure(fig, path)
