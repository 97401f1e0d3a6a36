"""Learned labels (paper section 5.2, Fig. 8): labels trained by back-propagation through unrolled students,
against the expert's soft labels and hard labels on the same images, and how close the learned labels are
to each expert checkpoint's labels (normalised Jensen-Shannon distance).

Repetition r uses image seed r (so the learned labels' seed) and student seed r for every row, so rows are
paired by repetition: the images, the learning and the student all vary between repetitions.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ..config import LabelSpec
from ..lab import CellSpec, Lab
from ..labels.generate import expert_logits, soft_labels
from ..labels.learned import jsd_to_expert_labels
from ..labels.learners import DEFAULT_LEARNER, LEARNERS
from ..presets import Preset
from ..sets.spec import SetSpec
from .base import (
    StudyResult,
    cell_stats,
    ci_text,
    ci_verdict,
    common_options,
    common_settings,
    expert_epochs,
    paired_gain,
    pct,
    register_study,
    student_recipe,
    study_dir,
)

NAME = "learned"
# 3 repetitions left the IPC-1 CI of learned - hard across zero on Fashion-MNIST; 5 resolved it (RESULTS.md)
QUICK_REPETITIONS = 5


@register_study(
    NAME, help="learned labels (truncated BPTT) vs expert and hard labels; JSD to each expert epoch"
)
def study_learned(lab: Lab, *, scale: str = "quick", ipcs: Sequence[int] | None = None,
                  seeds: Sequence[int] | None = None, learner: str | None = None,
                  expert_epoch: int | dict | None = None, student_epochs: int | None = None,
                  preset: Preset | str | None = None) -> StudyResult:
    """Per IPC and repetition: students on learned, expert (validation-chosen epoch) and hard labels of the
    same random images; the learned labels' JSD to the expert's labels at every checkpoint."""
    p, ipc_list, reps, _ = common_options(
        scale, preset, ipcs, seeds, ipcs_default=(1,), quick_seeds=QUICK_REPETITIONS
    )
    spec = LEARNERS.canonical(learner or DEFAULT_LEARNER)  # a bad learner fails here, before any training
    recipes = {ipc: student_recipe(p, ipc, student_epochs=student_epochs) for ipc in ipc_list}
    epochs, epoch_source = expert_epochs(lab, p, None, ipc_list, expert_epoch)
    expert = lab.expert(p.expert)
    labels = {"learned": lambda ipc: LabelSpec(kind="learned", learner=spec),
              "expert": lambda ipc: LabelSpec(kind="soft", expert_epoch=epochs[ipc]),
              "hard": lambda ipc: LabelSpec(kind="hard")}
    plan = [(ipc, kind, r) for ipc in ipc_list for kind in labels for r in reps]
    cells = [CellSpec(set=SetSpec(ipc=ipc, label=labels[kind](ipc), image_seed=r), student=recipes[ipc],
                      seeds=(r,), experts=(expert,), study=NAME) for ipc, kind, r in plan]
    out = lab.evaluate_many(cells)
    res: dict[tuple[int, str], list[dict]] = {}
    for (ipc, kind, _), r in zip(plan, out, strict=True):
        res.setdefault((ipc, kind), []).extend(r)
    rows: list[dict[str, Any]] = []
    for ipc in ipc_list:
        for kind in labels:
            row = {"ipc": ipc, "labels": kind, "expert_epoch": epochs[ipc] if kind == "expert" else None,
                   **cell_stats(res[(ipc, kind)])}
            if kind == "learned":
                row["vs_hard"] = paired_gain(res[(ipc, kind)], res[(ipc, "hard")])
                row["vs_expert"] = paired_gain(res[(ipc, kind)], res[(ipc, "expert")])
            rows.append(row)
    jsd = {ipc: _jsd_curve(lab, expert, ipc, reps, spec) for ipc in ipc_list}
    steps = {e: expert.checkpoint_step(e) for e in expert.epochs if e > 0}
    summary = {str(ipc): summarize([r for r in rows if r["ipc"] == ipc], jsd[ipc], chosen=epochs[ipc])
               for ipc in ipc_list}
    figs = [_plot(jsd, steps, study_dir(lab, NAME) / "learned_jsd.png", chosen=epochs, dataset=lab.data.name)]
    settings = {
        **common_settings(
            p, expert, recipes, scale=scale, ipcs=ipc_list, seeds=reps, image_seed="= repetition"
        ),
        "learner": spec,
        "expert_epochs": epochs,
        "expert_epoch_source": epoch_source,
        "jsd_by_epoch": {str(i): {str(e): v for e, v in c.items()} for i, c in jsd.items()},
        "checkpoint_steps": steps,
        "meta_set": "per repetition, a seeded sample of training-pool images outside the set "
        "(never validation or test images)",
        "comparison": "learned minus hard / expert labels, paired by repetition (image seed = student "
        "seed = r), 95% CI, Student t",
    }
    finding = " ".join(verdict(int(ipc), s) for ipc, s in summary.items())
    return StudyResult(
        name=NAME, rows=rows, summary=summary, figures=figs, settings=settings, finding=finding
    )


def _jsd_curve(lab: Lab, expert, ipc: int, reps: Sequence[int], learner: str) -> dict[int, float]:
    """Mean over repetitions of the learned labels' normalised JSD to the expert's labels, by checkpoint."""
    per_epoch: dict[int, list[float]] = {}
    for r in reps:
        cset = lab.build_set(SetSpec(ipc=ipc, label=LabelSpec(kind="learned", learner=learner), image_seed=r))
        x = lab.prepared.to_input(cset.images, device=lab.device)
        by_epoch = {e: soft_labels(expert_logits([expert], e, x, device=lab.device)).cpu()
                    for e in expert.epochs if e > 0}
        for e, d in jsd_to_expert_labels(cset.labels, by_epoch).items():
            per_epoch.setdefault(e, []).append(d)
    return {e: float(np.mean(v)) for e, v in sorted(per_epoch.items())}


def summarize(cells: list[dict], jsd: dict[int, float], *, chosen: int) -> dict[str, Any]:
    by = {r["labels"]: r for r in cells}
    learned = by["learned"]
    closest = min(jsd, key=jsd.get)
    return {
        "learned": learned["test_mean"],
        "expert": by["expert"]["test_mean"],
        "hard": by["hard"]["test_mean"],
        "vs_hard": ci_text(learned["vs_hard"]),
        "vs_hard_verdict": ci_verdict(learned["vs_hard"]),
        "vs_expert": ci_text(learned["vs_expert"]),
        "vs_expert_verdict": ci_verdict(learned["vs_expert"]),
        "closest_epoch": closest,
        "closest_jsd": jsd[closest],
        "chosen_epoch": chosen,
        "jsd_chosen": jsd.get(chosen),
        "jsd_last": jsd[max(jsd)],
        "n": learned["n"],
    }


def verdict(ipc: int, s: dict) -> str:
    word = {"better": "beat", "worse": "fall below", "tie": "are within the CI of"}
    return (f"IPC {ipc} ({s['n']} paired repetitions): learned labels reach {pct(s['learned'])} and "
            f"{word[s['vs_hard_verdict']]} hard labels ({pct(s['hard'])}; {s['vs_hard']}); against the "
            f"expert's labels at epoch {s['chosen_epoch']} ({pct(s['expert'])}) they "
            f"{word[s['vs_expert_verdict']]} them ({s['vs_expert']}). The learned labels are closest to the "
            f"expert's checkpoint {s['closest_epoch']} (normalised JSD {s['closest_jsd']:.3f}; final "
            f"checkpoint {s['jsd_last']:.3f}).")


def _plot(jsd: dict[int, dict[int, float]], steps: dict[int, int], path, *, chosen: dict[int, int],
          dataset: str):
    from ..report.plots import plt, save_figure

    fig, ax = plt.subplots(figsize=(4.6, 3.2), layout="constrained")
    for ipc, curve in jsd.items():
        xs = [steps[e] for e in curve]
        line, = ax.plot(xs, list(curve.values()), marker="o", label=f"IPC {ipc}")
        if chosen.get(ipc) in curve:
            ax.axvline(steps[chosen[ipc]], color=line.get_color(), ls=":", lw=1)
    ax.set_xscale("log")
    ax.set_xlabel("expert checkpoint (training steps; dotted: validation-chosen)")
    ax.set_ylabel("normalised JSD, learned vs expert labels")
    ax.legend(fontsize=8)
    ax.set_title(f"{dataset}: learned labels vs each expert checkpoint (paper Fig. 8)", fontsize=9)
    return save_figure(fig, path)
