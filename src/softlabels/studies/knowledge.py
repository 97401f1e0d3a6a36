"""Zero-shot and knowledge removal (paper E6, Fig. 7): data vs knowledge about one subject class.

For a subject class c, three sets built from the same random images and expert labels:

- ``control``: unchanged.
- ``remove-images`` ("remove data"): the images of class c are dropped with their labels (set treatment
  ``drop-class:cls=c``); the other images keep their full soft labels, including the mass on column c, so
  the student can only learn c zero-shot from the other classes' labels.
- ``remove-knowledge``: all images kept; column c is zeroed in the labels of every image not of class c
  (transform ``remove-class:cls=c,renorm=R``; no renormalisation by default, as the paper).

Metric: the student's test accuracy on the subject class's test images, at the final epoch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from ..analysis.stats import mean_std
from ..config import LabelSpec
from ..engine.evaluation import per_class_accuracy, predict
from ..experts import Trajectory
from ..lab import CellSpec, Lab
from ..presets import Preset
from ..sets.spec import SetSpec
from ..validation import check_bool, check_choice, check_positive_int
from .base import (
    StudyResult,
    common_options,
    common_settings,
    expert_epochs,
    int_list,
    metric_of,
    pct,
    register_study,
    student_recipe,
    study_dir,
)

NAME = "knowledge"
TREATMENTS = ("control", "remove-images", "remove-knowledge")
QUICK_SUBJECTS = 3
QUICK_IPCS = (1, 10)


def knowledge_spec(label: LabelSpec, *, ipc: int, image_seed: int, subject: int, treatment: str,
                   renorm: bool = False) -> SetSpec:
    """The set of one (subject, treatment) cell; ``label`` is the untreated spec. ``remove-knowledge`` adds
    the class-removal label transform, ``remove-images`` the ``drop-class`` treatment."""
    check_choice("treatment", treatment, TREATMENTS)
    if treatment == "control":
        return SetSpec(ipc=ipc, label=label, image_seed=image_seed)
    if treatment == "remove-images":
        return SetSpec(ipc=ipc, label=label, image_seed=image_seed, treatment=f"drop-class:cls={subject}")
    if label.transform != "none":
        raise ValueError(f"knowledge removal composes with no other transform, got {label.transform!r}")
    return SetSpec(ipc=ipc, label=label.replace(transform=f"remove-class:cls={subject},renorm={int(renorm)}"),
                   image_seed=image_seed)


def expert_class_accuracy(lab: Lab, expert: Trajectory, epoch: int) -> list[float]:
    """The expert's per-class accuracy at ``epoch`` on the validation split (the train pool if none)."""
    prep = lab.prepared
    part = "val" if prep.val_idx.numel() else "train"
    x, y = prep.tensors(part, device=lab.device)
    pred = predict(expert.model(epoch, device=lab.device), x)
    return per_class_accuracy(pred, y, prep.num_classes)


def pick_subjects(class_acc: Sequence[float], n: int) -> list[int]:
    """``n`` classes spread from easiest to hardest by ``class_acc`` (ties: lower class index first)."""
    order = sorted(range(len(class_acc)), key=lambda c: (-class_acc[c], c))
    n = min(n, len(order))
    picks = sorted({round(k * (len(order) - 1) / max(1, n - 1)) for k in range(n)})
    return [order[k] for k in picks]


@register_study(NAME, help="E6 / Fig. 7: zero-shot (remove a class's images) vs removing its label knowledge")
def study_knowledge(lab: Lab, *, scale: str = "quick", ipcs: Sequence[int] | None = None,
                    subjects: Sequence[int] | None = None, n_subjects: int | None = None,
                    renorm: bool = False,
                    seeds: Sequence[int] | None = None, student_epochs: int | None = None,
                    expert_epoch: int | dict | None = None, image_seed: int = 0,
                    preset: Preset | str | None = None) -> StudyResult:
    """Per IPC and subject class: accuracy on the subject's test images under the three treatments."""
    p, ipc_list, seed_ids, image_seed = common_options(scale, preset, ipcs, seeds, image_seed=image_seed,
                                                       ipcs_default=QUICK_IPCS if scale == "quick" else None)
    check_bool("renorm", renorm)
    prep = lab.prepared
    c = prep.num_classes
    if c < 2:
        raise ValueError("the knowledge study needs at least 2 classes")
    if expert_epoch is not None:
        expert_epochs(lab, p, None, ipc_list, expert_epoch)  # checked before any training
    if subjects is not None:
        int_list("subjects", subjects, minimum=0, maximum=c - 1)
    expert = lab.expert(p.expert)
    class_acc = expert_class_accuracy(lab, expert, expert.epochs_done)
    if subjects is not None:
        if n_subjects is not None:
            raise ValueError("give subjects or n_subjects, not both")
        subject_list = int_list("subjects", subjects, minimum=0, maximum=c - 1)
    else:
        n = QUICK_SUBJECTS if scale == "quick" else c
        n = check_positive_int("n_subjects", n_subjects) if n_subjects is not None else n
        subject_list = pick_subjects(class_acc, n)
    epochs, how = expert_epochs(lab, p, expert, ipc_list, expert_epoch)
    names = list(prep.dataset.classes)

    rows: list[dict[str, Any]] = []
    recipes = {ipc: student_recipe(p, ipc, student_epochs=student_epochs) for ipc in ipc_list}
    labels = {ipc: LabelSpec(kind="soft", expert_epoch=epochs[ipc]) for ipc in ipc_list}
    # every cell in one call (the students may train in parallel, see Lab.workers): per IPC a control, then
    # per subject each treatment
    keys: list[tuple[int, int | None, str]] = []
    specs: list[CellSpec] = []
    for ipc in ipc_list:
        common = dict(student=recipes[ipc], seeds=tuple(seed_ids), experts=(expert,), study=NAME)
        keys.append((ipc, None, "control"))
        specs.append(CellSpec(set=SetSpec(ipc=ipc, label=labels[ipc], image_seed=image_seed), **common))
        for subject in subject_list:
            for t in TREATMENTS[1:]:
                keys.append((ipc, subject, t))
                spec = knowledge_spec(
                    labels[ipc], ipc=ipc, image_seed=image_seed, subject=subject, treatment=t, renorm=renorm
                )
                specs.append(CellSpec(set=spec, eval_classes=(subject,), **common))
    results = dict(zip(keys, lab.evaluate_many(specs), strict=True))
    for ipc in ipc_list:
        control = results[(ipc, None, "control")]
        ctrl_t_mean, ctrl_t_std = mean_std(metric_of(control, "test_acc"))
        for subject in subject_list:
            ctrl_acc = [float(r["metrics"]["per_class"][subject]) for r in control]
            cells = {"control": (ctrl_acc, ctrl_t_mean, ctrl_t_std)}
            for t in TREATMENTS[1:]:
                res = results[(ipc, subject, t)]
                cells[t] = (metric_of(res, "class_acc"), *mean_std(metric_of(res, "test_acc")))
            ref = mean_std(ctrl_acc)[0]
            for t, (accs, t_mean, t_std) in cells.items():
                s_mean, s_std = mean_std(accs)
                rows.append({"ipc": ipc, "subject": subject, "subject_name": names[subject],
                             "expert_class_acc": class_acc[subject], "treatment": t,
                             "expert_epoch": epochs[ipc],
                             "subject_mean": s_mean, "subject_std": s_std,
                             "relative": s_mean / ref if ref > 0 else float("nan"),
                             "test_mean": t_mean, "test_std": t_std, "n": len(accs)})

    summary = {str(ipc): summarize([r for r in rows if r["ipc"] == ipc], c) for ipc in ipc_list}
    figs = [_plot(rows, c, study_dir(lab, NAME) / "knowledge.png", dataset=lab.data.name)]
    settings = {**common_settings(p, expert, recipes, scale=scale, ipcs=ipc_list, seeds=seed_ids,
                                  image_seed=image_seed),
                "expert_epochs": epochs, "expert_epoch_choice": how, "subjects": subject_list,
                "renorm": renorm,
                "subject_choice": ("given" if subjects is not None else
                                   "spread from easiest to hardest by the final expert's per-class "
                                   "validation accuracy"),
                "metric": "test accuracy on the subject class's test images, final student epoch"}
    finding = " ".join(verdict(int(ipc), s) for ipc, s in summary.items())
    return StudyResult(
        name=NAME, rows=rows, summary=summary, figures=figs, settings=settings, finding=finding
    )


def summarize(cells: list[dict], c: int) -> dict[str, Any]:
    out: dict[str, Any] = {"chance": 1.0 / c, "subjects": sorted({r["subject"] for r in cells})}
    for t in TREATMENTS:
        vals = [r["subject_mean"] for r in cells if r["treatment"] == t]
        out[t] = mean_std(vals)[0]
    return out


def verdict(ipc: int, s: dict) -> str:
    ctrl, img, know, chance = s["control"], s["remove-images"], s["remove-knowledge"], s["chance"]
    head = (f"IPC {ipc}, mean over {len(s['subjects'])} subject classes: control {pct(ctrl)}, remove images "
            f"{pct(img)} (zero-shot; chance {pct(chance)}), remove knowledge {pct(know)}")
    if not all(math.isfinite(v) for v in (ctrl, img, know)):
        return f"{head}."
    zero_shot = img > 2 * chance
    worse = know < img
    if zero_shot and worse:
        claim = ("students still learn the absent class from the other labels and removing the knowledge "
                   "hurts more than removing the images, as in the paper")
    elif worse:
        claim = ("removing knowledge hurts more than removing images, but zero-shot accuracy is not well "
                   "above chance, so only half of the paper's finding holds")
    elif zero_shot:
        claim = ("zero-shot learning works, but removing knowledge does not hurt more than removing "
                   "images, unlike the paper")
    else:
        claim = "neither part of the paper's finding holds here"
    return f"{head}: {claim}."


def _plot(rows: list[dict], c: int, path, *, dataset: str):
    from ..report.plots import plt, save_figure

    ipcs = sorted({r["ipc"] for r in rows})
    subjects = list(dict.fromkeys(r["subject"] for r in rows))
    fig, axes = plt.subplots(1, len(ipcs), figsize=(1.5 + 1.1 * len(subjects) * len(ipcs), 3.6),
                             squeeze=False, sharey=True)
    width = 0.8 / len(TREATMENTS)
    for ax, ipc in zip(axes[0], ipcs, strict=True):
        for k, t in enumerate(TREATMENTS):
            cells = {r["subject"]: r for r in rows if r["ipc"] == ipc and r["treatment"] == t}
            xs = [j + (k - 1) * width for j in range(len(subjects))]
            ax.bar(xs, [100 * cells[s]["subject_mean"] for s in subjects], width,
                   yerr=[100 * (cells[s]["subject_std"] if math.isfinite(cells[s]["subject_std"]) else 0.0)
                         for s in subjects], capsize=2, color=f"C{k}", label=t)
        ax.axhline(100 / c, color="k", ls=":", lw=1, label="chance")
        names = {r["subject"]: r["subject_name"] for r in rows}
        ax.set_xticks(range(len(subjects)), [str(names[s]) for s in subjects], rotation=30, ha="right",
                      fontsize=7)
        ax.set_title(f"IPC {ipc}", fontsize=9)
        ax.grid(alpha=0.3, axis="y")
    axes[0][0].set_ylabel("test accuracy on the subject class (%)")
    axes[0][0].legend(fontsize=7)
    fig.suptitle(f"{dataset}: removing a class's images vs its knowledge in the labels", fontsize=9)
    return save_figure(fig, path, svg=True)
