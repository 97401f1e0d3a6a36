"""Label diagnostics (paper E14 / Fig. 10, in the spirit of cleanlab's label-quality views); no students.

For the expert's labels at one epoch (default: the last) on the whole train pool (or a random IPC set):
entropy and confidence histograms, the class-similarity map (mean soft label per true class with the
own-class entry blanked, Fig. 10), per-sample quality scores (``p_y``) with the worst-ranked samples
listed, and summary numbers. Across expert epochs: mean entropy, confidence and argmax accuracy of the
labels (on a stratified sample of the pool at quick scale) beside the expert's own test accuracy.
The most similar class pairs are computed from the map (symmetrised), never hard-coded.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from ..config import LabelSpec
from ..lab import Lab
from ..labels.diagnostics import (
    class_similarity,
    confidence,
    entropy,
    label_quality_scores,
    rank_by_quality,
    summarize,
)
from ..labels.generate import label_images
from ..presets import Preset
from ..sets.selection import random_per_class
from ..validation import check_positive_int
from .base import (
    StudyResult,
    expert_history_value,
    finite,
    int_list,
    pct,
    planned_epochs,
    register_study,
    resolve_preset,
    study_dir,
)

NAME = "labels"
QUICK_CURVE_IMAGES = 10000
CURVE_SEED = 4242
STRUCTURE_RATIO = 2.0  # "structured" if the top pair's mean probability is >= 2x the mean off-class entry


def similar_pairs(sim: torch.Tensor, classes: Sequence[str], *, top: int) -> list[dict[str, Any]]:
    """The ``top`` class pairs with the largest symmetrised mean probability ``(S_ab + S_ba) / 2``."""
    c = sim.shape[0]
    sym = 0.5 * (sim + sim.T)
    iu = torch.triu_indices(c, c, offset=1)
    vals = sym[iu[0], iu[1]]
    ok = ~torch.isnan(vals)
    order = torch.argsort(
        torch.where(ok, vals, torch.full_like(vals, -math.inf)), descending=True, stable=True
    )
    out = []
    for j in order[: min(top, int(ok.sum()))].tolist():
        a, b = int(iu[0, j]), int(iu[1, j])
        out.append({"a": classes[a], "b": classes[b], "mean_prob": float(vals[j]), "a_to_b": float(sim[a, b]),
                    "b_to_a": float(sim[b, a])})
    return out


@register_study(NAME, help="E14 / Fig. 10: label entropy, confidence, class-similarity map, worst samples")
def study_labels(
    lab: Lab,
    *,
    scale: str = "quick",
    epoch: int | None = None,
    epochs: Sequence[int] | None = None,
    ipc: int | None = None,
    image_seed: int = 0,
    curve_images: int | None = None,
    worst: int = 12,
    top_pairs: int = 5,
    preset: Preset | str | None = None,
) -> StudyResult:
    """Diagnostics of the expert's labels at ``epoch`` and a summary per epoch of ``epochs``."""
    p = resolve_preset(scale, preset)
    worst = check_positive_int("worst", worst)
    top_pairs = check_positive_int("top_pairs", top_pairs)
    image_seed = check_positive_int("image_seed", image_seed, minimum=0)
    prep = lab.prepared
    ds, num_classes = prep.dataset, prep.num_classes
    classes = list(ds.classes)
    last = planned_epochs(lab, p.expert)
    epoch = last if epoch is None else check_positive_int("epoch", epoch, minimum=0)
    if epoch > last:
        raise ValueError(f"epoch {epoch} exceeds the expert's {last} epochs")
    if epochs is None:
        grid = range(1, last + 1) if last <= 12 else {e for e in p.sweep_epochs if 0 < e <= last} | {last}
        epoch_list = sorted(set(grid) | {epoch})
    else:
        epoch_list = int_list("epochs", epochs, minimum=0, maximum=last)
    if ipc is not None:
        check_positive_int("ipc", ipc)
    expert = lab.expert(p.expert)  # every option is checked: now the training

    targets = prep.train_targets
    if ipc is not None:
        ipc = check_positive_int("ipc", ipc)
        pos = random_per_class(targets, ipc=ipc, num_classes=num_classes, seed=image_seed)
        curve_pos, source = pos, f"random IPC {ipc} set (image seed {image_seed})"
    else:
        pos = torch.arange(targets.numel())
        source = f"whole train pool ({pos.numel()} images)"
        n_curve = (
            curve_images if curve_images is not None else (QUICK_CURVE_IMAGES if scale == "quick" else None)
        )
        counts = torch.bincount(targets.long(), minlength=num_classes)
        if n_curve is None or check_positive_int("curve_images", n_curve) >= pos.numel():
            curve_pos = pos
        else:
            per_class = max(1, min(n_curve // num_classes, int(counts.min())))
            curve_pos = random_per_class(targets, ipc=per_class, num_classes=num_classes, seed=CURVE_SEED)

    def labels_at(e: int, where: torch.Tensor) -> torch.Tensor:
        return label_images(prep, where, LabelSpec(kind="soft", expert_epoch=e), [expert], device=lab.device,
                            cache=lab.logits).cpu()

    # ---- per-epoch summaries ------------------------------------------------------------------------------
    y_curve = targets[curve_pos]
    rows: list[dict[str, Any]] = []
    for e in epoch_list:
        lab_e = labels_at(e, curve_pos)
        rows.append(
            {
                "epoch": e,
                "images": int(curve_pos.numel()),
                "expert_test_acc": expert_history_value(expert, e, "test_acc"),
                "expert_val_acc": expert_history_value(expert, e, "val_acc"),
                **summarize(lab_e, y_curve),
                "median_entropy": float(entropy(lab_e).median()),
            }
        )

    # ---- detailed diagnostics at one epoch -----------------------------------------------------------------
    labels = labels_at(epoch, pos)
    y = targets[pos]
    h, conf = entropy(labels), confidence(labels)
    correct = labels.argmax(1) == y
    sim = class_similarity(labels, y, num_classes=num_classes)
    quality = label_quality_scores(labels, y)
    ranked = rank_by_quality(labels, y)[:worst]
    worst_rows = [
        {
            "rank": r + 1,
            "pool_position": int(pos[j]),
            "dataset_index": int(prep.train_idx[pos[j]]),
            "true": classes[int(y[j])],
            "predicted": classes[int(labels[j].argmax())],
            "p_true": float(quality[j]),
            "confidence": float(conf[j]),
        }
        for r, j in enumerate(ranked.tolist())
    ]
    pairs = similar_pairs(sim, classes, top=top_pairs)
    off = sim[~torch.isnan(sim)]
    mean_off = float(off.mean()) if off.numel() else math.nan
    nearest = []
    for c in range(num_classes):
        row = sim[c]
        if torch.isnan(row).all():
            continue
        j = int(torch.where(torch.isnan(row), torch.full_like(row, -math.inf), row).argmax())
        nearest.append({"class": classes[c], "most_similar": classes[j], "mean_prob": float(row[j])})
    detail = {
        **summarize(labels, y),
        "epoch": epoch,
        "images": int(pos.numel()),
        "median_entropy": float(h.median()),
        "mean_entropy_correct": float(h[correct].mean()) if correct.any() else math.nan,
        "mean_entropy_wrong": float(h[~correct].mean()) if (~correct).any() else math.nan,
        "mean_off_class_prob": mean_off,
    }

    folder = study_dir(lab, NAME)
    figures = [
        _plot_overview(h, conf, correct, rows, epoch, folder / "labels.png", dataset=ds.name),
        _plot_similarity(sim, classes, epoch, folder / "class_similarity.png", dataset=ds.name),
        _plot_worst(ds, prep, pos, ranked, labels, y, classes, folder / "worst_samples.png"),
    ]
    ratio = pairs[0]["mean_prob"] / mean_off if pairs and mean_off > 0 else math.nan
    summary = {
        "epoch": epoch,
        "label_set": source,
        "detail": detail,
        "similar_pairs": pairs,
        "nearest_class": nearest,
        "structure_ratio": ratio,
        "worst_samples": worst_rows,
        "similarity_matrix": [[None if math.isnan(v) else v for v in r] for r in sim.tolist()],
        "classes": classes,
    }
    settings = {
        "scale": scale,
        "preset": p.name,
        "expert": p.expert.to_dict(),
        "expert_key": expert.key,
        "epoch": epoch,
        "epochs": epoch_list,
        "label_set": source,
        "curve_images": int(curve_pos.numel()),
        "worst": worst,
        "top_pairs": top_pairs,
        "structure_ratio_threshold": STRUCTURE_RATIO,
    }
    finding = verdict(rows, pairs, ratio, epoch)
    return StudyResult(
        name=NAME, rows=rows, summary=summary, figures=figures, settings=settings, finding=finding
    )


def verdict(rows: list[dict], pairs: list[dict], ratio: float, epoch: int) -> str:
    first, lastr = rows[0], rows[-1]
    ents = [r["mean_entropy"] for r in rows]
    mono = all(a >= b for a, b in zip(ents, ents[1:], strict=False))
    trend = (f"Mean label entropy goes from {first['mean_entropy']:.3f} (epoch {first['epoch']}) to "
             f"{lastr['mean_entropy']:.3f} nats (epoch {lastr['epoch']})"
             + (", falling at every epoch," if mono and len(rows) > 1 else "")
             + f" while the expert's test accuracy goes from {pct(first['expert_test_acc'])} to "
               f"{pct(lastr['expert_test_acc'])}.")
    if not pairs or not finite(ratio):
        return trend + " Class structure not assessed (no off-class mass)."
    top = pairs[0]
    claim = (
        "structured (holds here)" if ratio >= STRUCTURE_RATIO else "weakly structured (does not clearly hold)"
    )
    return (trend + f" At epoch {epoch} the non-top mass is {claim}: the most similar pair is "
            f"{top['a']} <-> {top['b']} (mean probability {top['mean_prob']:.3f}, {ratio:.1f}x the mean "
            f"off-class entry).")


def _plot_overview(h, conf, correct, rows, epoch, path, *, dataset: str):
    from ..report.plots import merged_legend, save_figure
    from ..report.plots import plt as pl

    fig, (a1, a2, a3) = pl.subplots(1, 3, figsize=(13, 3.6))
    for ax, vals, name in ((a1, h, "entropy (nats)"), (a2, conf, "confidence (max probability)")):
        ax.hist([vals[correct].numpy(), vals[~correct].numpy()], bins=40, stacked=True,
                color=["tab:blue", "tab:red"], label=["argmax = true class", "argmax wrong"])
        ax.set_xlabel(name)
        ax.set_ylabel("images")
        ax.set_yscale("log")
        ax.legend(fontsize=7)
        ax.set_title(f"{dataset}: expert epoch {epoch}", fontsize=9)
    es = [r["epoch"] for r in rows]
    a3.plot(es, [r["mean_entropy"] for r in rows], "o-", color="tab:purple", label="mean label entropy")
    a3.set_xlabel("expert epoch")
    a3.set_ylabel("entropy (nats)")
    bx = a3.twinx()
    bx.plot(es, [100 * r["expert_test_acc"] for r in rows], "s--", ms=3, color="tab:green",
            label="expert test acc")
    bx.plot(es, [100 * r["accuracy"] for r in rows], ":", color="tab:gray", label="label argmax acc (pool)")
    bx.set_ylabel("accuracy (%)")
    merged_legend(a3, bx, fontsize=7, loc="center right")
    a3.set_title("entropy vs expert epoch", fontsize=9)
    a3.grid(alpha=0.3)
    return save_figure(fig, path, svg=True)


def _plot_similarity(sim, classes, epoch, path, *, dataset: str):
    import numpy as np

    from ..report.plots import plt as pl
    from ..report.plots import save_figure

    c = len(classes)
    size = min(14.0, 2.5 + 0.45 * c)
    fig, ax = pl.subplots(figsize=(size + 1, size))
    im = ax.imshow(np.ma.masked_invalid(sim.numpy()), cmap="viridis")
    ticks = c <= 60
    if ticks:
        ax.set_xticks(range(c))
        ax.set_yticks(range(c))
        ax.set_xticklabels(classes, rotation=90, fontsize=7)
        ax.set_yticklabels(classes, fontsize=7)
    ax.set_xlabel("class (soft-label entry)")
    ax.set_ylabel("true class")
    ax.set_title(f"{dataset}: mean soft label per class, own class blank (epoch {epoch})", fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    return save_figure(fig, path, svg=True)


def _plot_worst(ds, prep, pos, ranked, labels, y, classes, path):
    from ..report.plots import plt as pl
    from ..report.plots import save_figure

    k = len(ranked)
    cols = min(6, max(1, k))
    nrows = max(1, math.ceil(k / cols))
    fig, axes = pl.subplots(nrows, cols, figsize=(1.9 * cols, 2.1 * nrows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, j in zip(axes.flat, ranked.tolist(), strict=False):
        img = ds.train_images[int(prep.train_idx[pos[j]])]
        if img.shape[0] == 1:
            ax.imshow(img[0].numpy(), cmap="gray")
        else:
            ax.imshow(img.permute(1, 2, 0).numpy())
        ax.set_title(
            f"{classes[int(y[j])]}\n-> {classes[int(labels[j].argmax())]} p_y={float(labels[j, y[j]]):.2f}",
            fontsize=6,
        )
    fig.suptitle("lowest label quality (p_y): true -> expert argmax", fontsize=8)
    return save_figure(fig, path, svg=True)
