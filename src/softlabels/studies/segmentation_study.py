"""Jaccard Metric Losses on soft segmentation labels (Wang & Blaschko, NeurIPS 2023): CE vs CE + JML.

Canvases of the lab's dataset items (:func:`softlabels.segmentation.make_canvases`: train canvases from
the train split, test canvases from the test split) are labelled with label smoothing and with a teacher's
soft masks (KD); per label kind every loss trains one :class:`SegNet` per seed (a seed fixes init, batches
and flips for every loss, so differences pair by seed) and is scored by mean IoU on the test canvases
(evaluation only: nothing is chosen on them). Each loss is compared with the first (the reference, soft
cross-entropy) by the paired mean difference in mIoU and its 95% CI. Per label kind the result is cached
under the study folder by a hash of everything that makes it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from ..analysis.stats import mean_std, paired_ci
from ..engine.losses import loss_fn
from ..io import config_hash, read_json, write_json
from ..lab import Lab
from ..segmentation import DEFAULT_LOSSES, LABEL_KINDS, compare_losses, make_canvases
from ..validation import check_choice, check_positive_int
from .base import SCALES, StudyResult, register_study, seed_list, study_dir

NAME = "segmentation"
QUICK = {"n_train": 400, "n_test": 200, "size": 40, "items": 2, "steps": 200, "width": 16}
FULL = {"n_train": 2000, "n_test": 1000, "size": 56, "items": 3, "steps": 1500, "width": 32}
TRAIN_SEED, TEST_SEED = 0, 1


@register_study(NAME, help="Jaccard metric loss: soft-CE vs CE + JML on label-smoothing and KD soft masks "
                           "(mean IoU, paired CIs over seeds)")
def study_segmentation(lab: Lab, *, scale: str = "quick", labels: Sequence[str] = ("smooth", "kd"),
                       losses: Sequence[str] = DEFAULT_LOSSES, seeds: Sequence[int] | None = None,
                       n_train: int | None = None, n_test: int | None = None, size: int | None = None,
                       items: int | None = None, steps: int | None = None, width: int | None = None,
                       epsilon: float = 0.1, temperature: float = 1.0) -> StudyResult:
    """Every (label kind, loss, seed) SegNet, scored by test mIoU; losses vs the first, paired by seed."""
    check_choice("scale", scale, SCALES)
    base = QUICK if scale == "quick" else FULL
    given = {"n_train": n_train, "n_test": n_test, "size": size, "items": items, "steps": steps,
             "width": width}
    cfg = {k: check_positive_int(k, v) if v is not None else base[k] for k, v in given.items()}
    kinds = [labels] if isinstance(labels, str) else list(labels)
    if not kinds or any(k not in LABEL_KINDS for k in kinds):
        raise ValueError(f"labels must be a non-empty subset of {', '.join(LABEL_KINDS)}, got {kinds}")
    specs = [loss_fn(s).spec for s in ([losses] if isinstance(losses, str) else losses)]
    if len(specs) < 2:
        raise ValueError(f"losses needs a reference and at least one other loss, got {specs}")
    seed_ids = seed_list(seeds, default=(0, 1, 2))
    ds = lab.prepared.dataset
    train = make_canvases(ds, n=cfg["n_train"], size=cfg["size"], items=cfg["items"], seed=TRAIN_SEED)
    test = make_canvases(ds, n=cfg["n_test"], size=cfg["size"], items=cfg["items"], seed=TEST_SEED,
                         split="test")
    folder = study_dir(lab, NAME) / "runs"
    runs: list[dict[str, Any]] = []
    for kind in kinds:
        opts = {"labels": kind, "losses": specs, "seeds": seed_ids, "steps": cfg["steps"],
                "width": cfg["width"], "epsilon": epsilon, "temperature": temperature}
        ident = {**opts, "data": ds.fingerprint(), **cfg, "train_seed": TRAIN_SEED, "test_seed": TEST_SEED}
        path = folder / f"{config_hash(ident)}.json"
        if path.exists():
            rows = read_json(path)["rows"]
        else:
            rows = compare_losses(train, test, **opts)
            write_json(path, {"identity": ident, "rows": rows})
        runs += [{k: r[k] for k in ("loss", "seed", "labels", "miou", "pixel_acc")} for r in rows]
    rows = table_rows(runs, specs)
    summary = {kind: {r["loss"]: r for r in rows if r["labels"] == kind} for kind in kinds}
    settings = {"scale": scale, **cfg, "labels": kinds, "losses": specs, "seeds": seed_ids,
                "epsilon": epsilon,
                "temperature": temperature, "dataset": ds.name, "train_seed": TRAIN_SEED,
                "test_seed": TEST_SEED, "reference": specs[0]}
    return StudyResult(name=NAME, rows=rows, summary=summary, settings=settings, finding=verdict(rows))


def table_rows(runs: list[dict[str, Any]], specs: Sequence[str]) -> list[dict[str, Any]]:
    """Per (label kind, loss): mean / std mIoU and pixel accuracy over seeds, and the paired mIoU difference
    to the reference loss ``specs[0]`` with its 95% CI (None for the reference itself)."""
    out = []
    for kind in dict.fromkeys(r["labels"] for r in runs):
        ref = {r["seed"]: r["miou"] for r in runs if r["labels"] == kind and r["loss"] == specs[0]}
        for spec in specs:
            rs = {r["seed"]: r for r in runs if r["labels"] == kind and r["loss"] == spec}
            if not rs:
                continue
            m, s = mean_std([r["miou"] for r in rs.values()])
            pa, _ = mean_std([r["pixel_acc"] for r in rs.values()])
            row: dict[str, Any] = {"labels": kind, "loss": spec, "n": len(rs), "miou_mean": m, "miou_std": s,
                                   "pixel_acc_mean": pa, "diff": None, "diff_lo": None, "diff_hi": None}
            if spec != specs[0]:
                both = sorted(set(rs) & set(ref))
                d, lo, hi = paired_ci([rs[i]["miou"] for i in both], [ref[i] for i in both])
                row.update(diff=d, diff_lo=lo, diff_hi=hi)
            out.append(row)
    return out


def verdict(rows: list[dict[str, Any]]) -> str:
    """Per label kind and loss: beats / loses to / no difference from the reference (95% CI excluding 0)."""
    parts = []
    for kind in dict.fromkeys(r["labels"] for r in rows):
        group = [r for r in rows if r["labels"] == kind]
        ref = group[0]
        for r in group[1:]:
            d, lo, hi = r["diff"], r["diff_lo"], r["diff_hi"]
            if d is None or not math.isfinite(d):
                parts.append(f"{kind} labels: {r['loss']} not assessed (no paired seeds)")
                continue
            if math.isfinite(lo) and lo > 0:
                claim = "beats"
            elif math.isfinite(hi) and hi < 0:
                claim = "loses to"
            else:
                claim = "shows no difference from"
            parts.append(f"{kind} labels ({r['n']} seeds): {r['loss']} {claim} {ref['loss']} - mIoU "
                         f"{100 * ref['miou_mean']:.1f}% -> {100 * r['miou_mean']:.1f}% ({100 * d:+.1f} pts "
                         f"[{100 * lo:+.1f}, {100 * hi:+.1f}])")
    return "; ".join(parts) + "."
