"""Robust fairness (ABSLD, Zhao et al., NeurIPS 2024): uniform-temperature vs ABSLD labels, with and without
adversarial training of the student.

One set per study: random images at ``ipc`` labelled by the expert at the main job's validation-chosen
epoch. Per (labels, training, seed) a student trains on it with :func:`train_absld_student` (``uniform``:
class temperatures fixed at 1; ``absld``: adapted), the same seed giving the same init, batches,
augmentation and attack starts, so ABSLD - uniform differences pair by seed. Each student is scored on a
stratified sample of the TEST split (evaluation only: nothing is chosen on it) for per-class clean accuracy
and per-class robust accuracy under an ART PGD; the rows report the mean and worst class and the NSD
(std / mean over classes). Runs are cached under the study folder by a hash of everything that makes them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from ..analysis.stats import mean_std, paired_ci
from ..config import LabelSpec
from ..fairness.absld import AbsldConfig, train_absld_student
from ..fairness.robust import AttackSpec, require_art, robust_evaluation
from ..io import config_hash, read_json, write_json
from ..lab import Lab
from ..presets import Preset
from ..sets.spec import SetSpec
from ..validation import check_positive_float, check_positive_int
from .base import (
    StudyResult,
    expert_epochs,
    register_study,
    resolve_preset,
    seed_list,
    student_recipe,
    study_dir,
)

NAME = "fairness"
QUICK_SEEDS = (0, 1, 2)
EPS = 8 / 255  # L-inf, pixel units; small for Fashion-MNIST (attacks there often use 0.1 - 0.3)
LABELS = ("uniform", "absld")
TRAININGS = ("standard", "adversarial")
METRICS = ("clean_mean", "clean_worst", "clean_nsd", "robust_mean", "robust_worst", "robust_nsd")


@register_study(NAME, help="ABSLD: uniform vs class-wise adaptive label temperatures; per-class PGD "
                           "accuracy, worst class, NSD, with and without adversarial training")
def study_fairness(lab: Lab, *, scale: str = "quick", ipc: int = 10, seeds: Sequence[int] | None = None,
                   steps: int | None = None, eps: float = EPS, attack_steps: int = 10,
                   train_attack_steps: int = 5, test_images: int = 1000, trainings: Sequence[str] = TRAININGS,
                   expert_epoch: int | None = None, rate: float = 0.1, image_seed: int = 0,
                   preset: Preset | str | None = None) -> StudyResult:
    """Uniform vs ABSLD labels x standard / adversarial training, over ``seeds`` (default 3)."""
    require_art()  # before any training: the evaluation needs it
    p = resolve_preset(scale, preset)
    ipc = check_positive_int("ipc", ipc)
    seed_ids = seed_list(seeds, default=QUICK_SEEDS if scale == "quick" else p.seeds)
    eps = check_positive_float("eps", eps)
    attack = AttackSpec(eps=eps, steps=check_positive_int("attack_steps", attack_steps),
                        images=check_positive_int("test_images", test_images), seed=0)
    modes = [str(t) for t in (trainings if not isinstance(trainings, str) else [trainings])]
    bad = [t for t in modes if t not in TRAININGS]
    if bad or not modes:
        raise ValueError(f"trainings must be a non-empty subset of {', '.join(TRAININGS)}, got {modes}")
    if lab.prepared.zca is not None:
        raise ValueError("the fairness study attacks pixels; use data without ZCA (DataSpec(zca=False))")
    recipe = student_recipe(p, ipc)
    if steps is not None:
        recipe = recipe.replace(steps=check_positive_int("steps", steps))
    expert = lab.expert(p.expert)
    epochs, epoch_source = expert_epochs(lab, p, expert, [ipc], expert_epoch)
    spec = SetSpec(ipc=ipc, label=LabelSpec(kind="soft", expert_epoch=epochs[ipc]), image_seed=image_seed)
    cset = lab.build_set(spec, experts=[expert])
    prep, ds = lab.prepared, lab.prepared.dataset
    x = prep.to_input(cset.images, device=lab.device)
    runs_dir = study_dir(lab, NAME) / "runs"
    runs: list[dict[str, Any]] = []
    for training in modes:
        for labels in LABELS:
            cfg = AbsldConfig(adaptive=labels == "absld", adversarial=training == "adversarial", eps=eps,
                              attack_steps=check_positive_int("train_attack_steps", train_attack_steps),
                              rate=check_positive_float("rate", rate))
            for seed in seed_ids:
                ident = {"set": cset.content_hash(), "student": recipe.to_dict(), "config": cfg.to_dict(),
                         "attack": attack.to_dict(), "seed": seed, "data": prep.split_key()}
                path = runs_dir / f"{config_hash(ident)}.json"
                if path.exists():
                    rec = read_json(path)
                else:
                    res = train_absld_student(x, cset.labels, cset.targets, recipe, config=cfg, seed=seed,
                                              mean=ds.mean, std=ds.std, device=lab.device)
                    ev = robust_evaluation(res.model, ds.test_images, ds.test_targets,
                                           num_classes=prep.num_classes, mean=ds.mean, std=ds.std,
                                           attack=attack)
                    rec = {"labels": labels, "training": training, "seed": seed, **run_metrics(ev),
                           "clean_per_class": ev["clean_per_class"],
                           "robust_per_class": ev["robust_per_class"],
                           "temperatures": res.temperatures, "identity": ident}
                    write_json(path, rec)
                runs.append(rec)
    rows = table_rows(runs)
    summary = {t: compare(runs, t) for t in modes}
    settings = {"scale": scale, "preset": p.name, "ipc": ipc, "expert_key": expert.key,
                "expert_epoch": epochs[ipc], "epoch_source": epoch_source, "seeds": seed_ids,
                "student": recipe.to_dict(), "attack": attack.to_dict(),
                "train_attack_steps": train_attack_steps,
                "eps": eps, "rate": rate, "image_seed": image_seed, "set": cset.content_hash(),
                "evaluation": f"{attack.images} stratified test images, ART PGD-{attack.steps} L-inf"}
    return StudyResult(name=NAME, rows=rows, summary=summary, settings=settings, protocol="clean",
                       finding=verdict(summary))


def run_metrics(ev: dict[str, Any]) -> dict[str, float]:
    """The six numbers of one student: mean, worst class and NSD of clean and robust accuracy."""
    return {f"{part}_{k}": ev[part][k] for part in ("clean", "robust") for k in ("mean", "worst", "nsd")}


def table_rows(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (training, labels): mean and std over seeds of each metric."""
    rows = []
    for training in dict.fromkeys(r["training"] for r in runs):
        for labels in LABELS:
            rs = [r for r in runs if r["training"] == training and r["labels"] == labels]
            if not rs:
                continue
            row: dict[str, Any] = {"training": training, "labels": labels, "n": len(rs)}
            for m in METRICS:
                row[f"{m}"], row[f"{m}_std"] = mean_std([r[m] for r in rs])
            rows.append(row)
    return rows


def compare(runs: list[dict[str, Any]], training: str) -> dict[str, Any]:
    """ABSLD - uniform per metric for one training mode: mean paired difference and its 95% CI over seeds."""
    by = {(r["labels"], r["seed"]): r for r in runs if r["training"] == training}
    seeds = sorted({s for (lab_, s) in by if lab_ == "absld"} & {s for (lab_, s) in by if lab_ == "uniform"})
    out: dict[str, Any] = {"seeds": seeds}
    for m in METRICS:
        d, lo, hi = paired_ci([by[("absld", s)][m] for s in seeds], [by[("uniform", s)][m] for s in seeds])
        out[m] = {"diff": d, "lo": lo, "hi": hi,
                  "absld": mean_std([by[("absld", s)][m] for s in seeds])[0],
                  "uniform": mean_std([by[("uniform", s)][m] for s in seeds])[0]}
    return out


def _sig(c: dict[str, float]) -> int:
    """+1 / -1 when the CI excludes 0 above / below, else 0."""
    if math.isfinite(c["lo"]) and c["lo"] > 0:
        return 1
    if math.isfinite(c["hi"]) and c["hi"] < 0:
        return -1
    return 0


def verdict(summary: dict[str, dict[str, Any]]) -> str:
    """Did ABSLD help robust fairness? Helped: worst-class robust accuracy up (95% CI excluding 0) with the
    NSD not up; an NSD decrease alone is reported as a narrower spread (a lower NSD can come from a lower
    mean); hurt: worst class down or NSD up with neither moving the right way; else no difference shown."""
    parts = []
    for training, s in summary.items():
        w, nsd, mean, clean = s["robust_worst"], s["robust_nsd"], s["robust_mean"], s["clean_mean"]
        if not s["seeds"]:
            parts.append(f"{training} training: not assessed (no paired seeds)")
            continue
        sw, sn = _sig(w), _sig(nsd)
        if sw > 0 and sn <= 0:
            claim = "ABSLD helped robust fairness (worst class up)"
        elif sn < 0 and sw == 0:
            claim = ("ABSLD narrowed the spread across classes (NSD down) without raising the worst class"
                     + (", at a lower mean robust accuracy" if _sig(mean) < 0 else ""))
        elif (sw < 0 or sn > 0) and not (sw > 0 or sn < 0):
            claim = "ABSLD hurt robust fairness"
        elif sw or sn:
            claim = "mixed: ABSLD moved worst class and NSD in conflicting directions"
        else:
            claim = "no difference shown (95% CIs include 0)"
        n = len(s["seeds"])
        parts.append(
            f"{training} training ({n} seeds): {claim} - worst-class robust accuracy "
            f"{100 * w['uniform']:.1f}% -> {100 * w['absld']:.1f}% ({100 * w['diff']:+.1f} pts "
            f"[{100 * w['lo']:+.1f}, {100 * w['hi']:+.1f}]), robust NSD {nsd['uniform']:.3f} -> "
            f"{nsd['absld']:.3f} ({nsd['diff']:+.3f} [{nsd['lo']:+.3f}, {nsd['hi']:+.3f}]), mean robust "
            f"accuracy {100 * mean['diff']:+.1f} pts [{100 * mean['lo']:+.1f}, {100 * mean['hi']:+.1f}], "
            f"clean "
            f"accuracy {100 * clean['diff']:+.1f} pts [{100 * clean['lo']:+.1f}, {100 * clean['hi']:+.1f}]")
    return "; ".join(parts) + "."
