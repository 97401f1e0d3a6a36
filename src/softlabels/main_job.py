"""The main job (``softlabels run``): the soft-label baseline vs hard labels at several IPC (paper Tables
1/2), and the one expert-epoch chooser every study shares.

1. Train (or reuse) an expert with a checkpoint per epoch.
2. Per IPC, pick the expert epoch on the VALIDATION split with short students (:func:`choose_expert_epochs`).
3. Per IPC, train students on random real images with hard labels and with soft labels from the chosen
   epoch; report final-epoch test accuracy, mean +- std over seeds; write ``report.md`` and ``baseline.png``.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from .analysis.stats import mean_std, paired_ci
from .config import ExpertRecipe, LabelSpec, describe_protocol
from .experts import Trajectory
from .lab import CellSpec, Lab
from .presets import Preset
from .sets.spec import SetSpec

__all__ = ["BaselineResult", "BaselineRow", "EpochChoice", "choose_expert_epochs", "image_draws",
           "run_baseline", "sweep_candidates", "sweep_image_seed", "write_baseline_report"]

SWEEP_STUDY = "baseline-sweep"


def sweep_image_seed(ipc: int) -> int:
    """The sweep draws other images (seed 1000 + ipc) than the reported runs (seed 0): no selection bias."""
    return 1000 + ipc


@dataclass(frozen=True, kw_only=True)
class EpochChoice:
    """Validation accuracy of one short student per candidate expert epoch (``sweep[ipc][epoch]``, swept IPCs
    only), the epoch chosen per IPC, and ``warnings`` a user must see (a chance-level expert, near-uniform
    labels)."""

    sweep: dict[int, dict[int, float]]
    chosen: dict[int, int]
    candidates: tuple[int, ...]
    warnings: tuple[str, ...] = ()
    fixed: tuple[int, ...] = ()  # the IPCs whose epoch the preset fixes (not swept, absent from ``sweep``)


def near_chance(acc: float, num_classes: int) -> bool:
    """Within a tenth of the way from chance to perfect: an expert that has not learned yet."""
    chance = 1.0 / num_classes
    return not acc == acc or acc < chance + 0.1 * (1.0 - chance)


def sweep_candidates(preset: Preset, expert: Trajectory) -> tuple[list[int], list[str]]:
    """The preset's candidate epochs the expert has trained (its last if none), without checkpoints whose
    validation (else test) accuracy is near chance: labels from an expert that has learned nothing are
    uniform noise, and a tie between such candidates must not pick one. Returns (candidates, warnings)."""
    avail = expert.epochs_done
    have = set(expert.epochs)
    wanted = sorted({e for e in preset.sweep_epochs if e > 0 and e in have} or {avail})
    classes = int(expert.manifest["num_classes"])
    acc = {int(h["epoch"]): h.get("val_acc", h.get("test_acc")) for h in expert.history()}
    # an external expert loaded without evaluation has no accuracies: every candidate is kept
    learned = [e for e in wanted if acc.get(e) is None or not near_chance(float(acc[e]), classes)]
    if learned:
        dropped = sorted(set(wanted) - set(learned))
        note = [f"expert epochs {dropped} were left out of the sweep: the expert was near chance there"] \
            if dropped else []
        return learned, note
    last = float(acc.get(avail, float("nan")) or float("nan"))
    return [avail], [
        f"the expert is near chance at every candidate epoch (last: {100 * last:.1f}% validation "
        f"accuracy, chance {100 / classes:.1f}%): its soft labels carry no knowledge; train it "
        "longer (ExpertRecipe steps), with a higher learning rate, or check the data"
    ]


def choose_expert_epochs(lab: Lab, preset: Preset, expert: Trajectory, *,
                         ipcs: Sequence[int] | None = None) -> EpochChoice:
    """The one expert-epoch chooser: per IPC, the preset's fixed epoch where it has one
    (``Preset.expert_epoch_by_ipc``: the paper's presets take Table 7's epochs, no sweep), else one short
    student (``preset.sweep_student_for``) per candidate epoch (:func:`sweep_candidates`) on random images
    (image seed :func:`sweep_image_seed`), scored on validation accuracy; a tie goes to the candidate whose
    expert is more accurate on validation.

    Every caller (the main job, every study, ``budget --fill``) shares these runs through the store (study
    ``baseline-sweep``), so a study after ``softlabels run`` trains none of them again.
    """
    ipc_list = list(preset.ipcs if ipcs is None else ipcs)
    fixed = {ipc: e for ipc in ipc_list if (e := preset.fixed_expert_epoch(ipc)) is not None}
    for ipc, e in fixed.items():
        if e not in expert.epochs:
            raise ValueError(f"preset {preset.name!r} fixes expert epoch {e} at IPC {ipc}, but expert "
                             f"{expert.key} has epochs {expert.epochs[0]}..{expert.epochs_done}: train it "
                             "longer or load that checkpoint")
    swept = [ipc for ipc in ipc_list if ipc not in fixed]
    candidates, warnings = sweep_candidates(preset, expert) if swept else ([], [])
    grid = [(ipc, e) for ipc in swept for e in candidates]
    cells = [CellSpec(set=SetSpec(ipc=ipc, label=LabelSpec(kind="soft", expert_epoch=e),
                                  image_seed=sweep_image_seed(ipc)),
                      student=preset.sweep_student_for(ipc), seeds=(0,), experts=(expert,), study=SWEEP_STUDY,
                      parts=("val",))
             for ipc, e in grid]
    results = lab.evaluate_many(cells)  # one call: the students may train in parallel (see Lab.workers)
    sweep: dict[int, dict[int, float]] = {ipc: {} for ipc in swept}
    for (ipc, e), res in zip(grid, results, strict=True):
        v = res[0]["metrics"]["val_acc"]
        sweep[ipc][e] = float("nan") if v is None else float(v)
    expert_val = {
        int(h["epoch"]): float(h.get("val_acc") or h.get("test_acc") or 0.0) for h in expert.history()
    }
    chosen = {
        ipc: fixed[ipc] if ipc in fixed else
        max(sweep[ipc], key=lambda e, ipc=ipc: (_finite_or_low(sweep[ipc][e]), expert_val.get(e, 0.0)))
        for ipc in ipc_list
    }
    classes = int(expert.manifest["num_classes"])
    for ipc in ipc_list:
        spec = SetSpec(ipc=ipc, label=LabelSpec(kind="soft", expert_epoch=chosen[ipc]),
                       image_seed=sweep_image_seed(ipc))
        confidence = float(lab.build_set(spec, experts=[expert]).labels.max(1).values.mean())
        if confidence < 1.0 / classes + 0.1 * (1.0 - 1.0 / classes):
            warnings.append(
                f"IPC {ipc}: the chosen expert epoch {chosen[ipc]} gives near-uniform labels (mean "
                f"max-probability {confidence:.3f}, uniform {1 / classes:.3f}); soft labels cannot "
                "help: train the expert longer or lower the label temperature"
            )
    return EpochChoice(sweep=sweep, chosen=chosen, candidates=tuple(candidates), warnings=tuple(warnings),
                       fixed=tuple(sorted(fixed)))


def _finite_or_low(v: float) -> float:
    return v if v == v else float("-inf")


@dataclass(frozen=True, kw_only=True)
class BaselineRow:
    ipc: int
    label: str
    expert_epoch: int | None
    mean: float
    std: float
    seeds: int
    protocol: str
    wall_s: float
    nbytes: int
    accs: list[float] = field(default_factory=list)
    student_steps: int = 0
    gain: tuple[float, float, float] | None = (
        None  # soft rows: soft - hard, mean and 95% CI over paired seeds
    )


@dataclass(frozen=True, kw_only=True)
class BaselineResult:
    rows: list[BaselineRow]
    sweep: dict[int, dict[int, float]]       # ipc -> {expert epoch: validation accuracy}
    chosen: dict[int, int]                   # ipc -> chosen expert epoch
    expert_history: list[dict]
    expert_key: str
    preset: str
    protocol: str
    wall_s: float
    student: dict
    expert: dict
    warnings: tuple[str, ...] = ()
    report: Path | None = None
    plot: Path | None = None
    expert_keys: dict[int, str] = field(default_factory=dict)  # ipc -> the key of the expert labelling it
    fixed: tuple[int, ...] = ()  # IPCs whose expert epoch the preset fixes (the paper's Table 7)
    image_seeds: tuple[int, ...] = (0,)  # the random image draws of the reported rows (see image_draws)


def run_baseline(lab: Lab, preset: Preset, *, protocol: str = "clean", seeds: Sequence[int] | None = None,
                 expert_epochs: dict[int, int] | None = None, report: bool = True,
                 experts: Trajectory | Mapping[int, Trajectory] | None = None) -> BaselineResult:
    """Run the main job in ``lab`` with ``preset``; resumable through the lab's store. With ``report``
    (default) it writes ``report.md`` and ``baseline.png`` into the lab's folder.

    ``seeds`` (default: the preset's) are the student seeds of every reported cell. The sweep uses other
    images and the validation split, so the reported test numbers are not selected on. ``experts``: a
    trajectory (or one per IPC) to label with instead of training ``preset.expert_for(ipc)``, e.g. one made
    elsewhere (:func:`softlabels.experts_external.load_external_trajectory`).
    """
    t0 = time.perf_counter()
    seed_ids = tuple(preset.seeds if seeds is None else seeds)
    by_ipc = _experts_by_ipc(lab, preset, experts)
    expert = by_ipc[preset.ipcs[-1]]  # the report's expert: the largest IPC's (the only one, mostly)
    if expert_epochs:
        sweep, chosen, warnings, fixed = {}, dict(expert_epochs), (), list(expert_epochs)
    else:
        sweep, chosen, warnings, fixed = {}, {}, [], []
        groups: dict[str, list[int]] = {}
        for ipc, traj in by_ipc.items():
            groups.setdefault(traj.key, []).append(ipc)
        for ipcs in groups.values():  # one chooser call per expert, on its IPCs
            choice = choose_expert_epochs(lab, preset, by_ipc[ipcs[0]], ipcs=ipcs)
            sweep.update(choice.sweep)
            chosen.update(choice.chosen)
            warnings += choice.warnings
            fixed += choice.fixed
    grid = [
        (ipc, label)
        for ipc in preset.ipcs
        for label in (LabelSpec(kind="hard", codec="hard"), LabelSpec(kind="soft", expert_epoch=chosen[ipc]))
    ]
    recipes = {ipc: preset.student_for(ipc) for ipc in preset.ipcs}
    draws = image_draws(preset, seed_ids)
    flat = lab.evaluate_many([
        CellSpec(set=SetSpec(ipc=ipc, label=label, image_seed=image_seed), student=recipes[ipc], seeds=seeds,
                 experts=(by_ipc[ipc],), protocol=protocol, study="baseline")
        for ipc, label in grid for image_seed, seeds in draws])
    n = len(draws)
    results = [[r for res in flat[i:i + n] for r in res] for i in range(0, len(flat), n)]
    rows: list[BaselineRow] = []
    hard_accs: dict[int, list[float]] = {}
    for (ipc, label), res in zip(grid, results, strict=True):
        accs = [r["metrics"]["paper_acc"] if protocol == "paper" else r["metrics"]["test_acc"] for r in res]
        mean, std = mean_std(accs)
        wall = sum(r["wall_s"] for r in res)  # the students' own times (several may have run at once)
        if label.kind == "hard":
            hard_accs[ipc] = accs
        # the same images and student seeds with both labels: a paired comparison
        gain = paired_ci(accs, hard_accs[ipc]) if label.kind == "soft" else None
        rows.append(
            BaselineRow(
                ipc=ipc,
                label=label.kind,
                expert_epoch=label.expert_epoch,
                mean=mean,
                std=std,
                seeds=len(accs),
                protocol=protocol,
                wall_s=wall,
                nbytes=res[0]["nbytes"],
                accs=accs,
                student_steps=recipes[ipc].total_steps(ipc * lab.prepared.num_classes),
                gain=gain,
            )
        )
    result = BaselineResult(rows=rows, sweep=sweep, chosen=chosen, expert_history=expert.history(),
                            expert_key=expert.key, preset=preset.name, protocol=protocol,
                            wall_s=time.perf_counter() - t0, student=preset.student.to_dict(),
                            expert=preset.expert.to_dict(), warnings=tuple(warnings),
                            expert_keys={i: t.key for i, t in by_ipc.items()}, fixed=tuple(sorted(fixed)),
                            image_seeds=tuple(i for i, _ in draws))
    if not report:
        return result
    md, png = write_baseline_report(result, lab.out_dir, dataset=lab.data.name)
    return replace(result, report=md, plot=png)


def image_draws(preset: Preset, seeds: Sequence[int]) -> list[tuple[int, tuple[int, ...]]]:
    """The reported cells' (image seed, student seeds) groups: with ``preset.draw_per_seed`` each student
    seed s trains on its own random draw (image seed s), so a row's mean is over draws as well, as published
    random-real baselines are; else every seed trains on draw 0. Hard and soft rows share the groups, so
    their seeds stay paired."""
    if preset.draw_per_seed:
        return [(s, (s,)) for s in seeds]
    return [(0, tuple(seeds))]


def _experts_by_ipc(lab: Lab, preset: Preset,
                    given: Trajectory | Mapping[int, Trajectory] | None) -> dict[int, Trajectory]:
    """The expert of each IPC: the given one(s), else ``lab.expert(preset.expert_for(ipc))`` (one training
    per distinct recipe)."""
    if isinstance(given, Trajectory):
        return dict.fromkeys(preset.ipcs, given)
    if given is not None:
        missing = [i for i in preset.ipcs if i not in given]
        if missing:
            raise ValueError(f"experts were given for IPC {sorted(given)}, not for IPC {missing}: give one "
                             "trajectory for all IPCs or one per IPC")
        return {i: given[i] for i in preset.ipcs}
    trained: dict[ExpertRecipe, Trajectory] = {}  # recipes are frozen values
    for ipc in preset.ipcs:
        r = preset.expert_for(ipc)
        if r not in trained:
            trained[r] = lab.expert(r)
    return {ipc: trained[preset.expert_for(ipc)] for ipc in preset.ipcs}


def gain_text(gain: tuple[float, float, float] | None) -> str:
    """``+6.8 [+3.1, +10.5]`` points: soft minus hard, 95% CI over paired seeds (blank without pairs)."""
    if gain is None:
        return ""
    m, lo, hi = (100 * v for v in gain)
    return f"{m:+.1f} [{lo:+.1f}, {hi:+.1f}]" if lo == lo else f"{m:+.1f}"


def write_baseline_report(result: BaselineResult, out_dir: Path, *, dataset: str) -> tuple[Path, Path]:
    """Markdown report + PNG plot of accuracy vs IPC for hard and soft labels."""
    from .io import atomic_write_text
    from .report.plots import plot_baseline

    out_dir = Path(out_dir)
    png = plot_baseline(result, out_dir / "baseline.png", dataset=dataset)
    lines = [
        f"# Soft-label baseline on {dataset}",
        "",
        f"Protocol: **{result.protocol}** — {describe_protocol(result.protocol)}.",
        f"Preset: `{result.preset}`; expert `{result.expert_key}`; total wall time {result.wall_s:.0f} s.",
        "",
    ]
    if len(result.image_seeds) > 1:
        lines += [f"Images: each student seed trains on its own random draw (image seeds "
                  f"{', '.join(map(str, result.image_seeds))}); a row's mean and std are over draws and "
                  "seeds, hard and soft rows paired on both.", ""]
    else:
        lines += [f"Images: one random draw (image seed {result.image_seeds[0]}) for every student seed.", ""]
    if len(set(result.expert_keys.values())) > 1:
        lines += ["Experts: " + "; ".join(f"IPC {i}: `{k}`" for i, k in result.expert_keys.items()), ""]
    if result.fixed:
        lines += [f"Expert epochs fixed (not chosen here) at IPC {', '.join(map(str, result.fixed))}: "
                  + ", ".join(f"{result.chosen[i]}" for i in result.fixed) + ".", ""]
    if result.warnings:
        lines += ["**Warnings.**", "", *(f"- {w}" for w in result.warnings), ""]
    lines += ["| IPC | labels | expert epoch | test acc % (mean ± std) | soft − hard, points [95% CI, paired "
              "seeds] | seeds | student steps | bytes (images+labels) | wall s |",
              "|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in result.rows:
        ep = "" if r.expert_epoch is None else str(r.expert_epoch)
        lines.append(
            f"| {r.ipc} | {r.label} | {ep} | {100 * r.mean:.1f} ± {100 * r.std:.1f} | {gain_text(r.gain)} | "
            f"{r.seeds} | {r.student_steps} | {r.nbytes:,} | {r.wall_s:.0f} |"
        )
    if result.sweep:
        epochs = next(iter(result.sweep.values()))
        lines += ["", "## Expert-epoch choice (validation accuracy %, one short student per epoch)", "",
                  "| IPC | " + " | ".join(f"epoch {e}" for e in epochs) + " | chosen |",
                  "|---:|" + "---:|" * (len(epochs) + 1)]
        for ipc, accs in result.sweep.items():
            lines.append(f"| {ipc} | " + " | ".join(f"{100 * a:.1f}" for a in accs.values())
                         + f" | {result.chosen[ipc]} |")
    lines += [
        "",
        "## Expert trajectory",
        "",
        "| epoch | step | val acc % | test acc % |",
        "|---:|---:|---:|---:|",
    ]
    for h in result.expert_history:
        lines.append(f"| {h['epoch']} | {h.get('step', '')} | {100 * h.get('val_acc', float('nan')):.1f} | "
                     f"{100 * h.get('test_acc', float('nan')):.1f} |")
    lines += ["", "## Settings", "", f"- expert: `{result.expert}`", f"- student: `{result.student}`", "",
              "![accuracy vs IPC](baseline.png)", ""]
    md = atomic_write_text(out_dir / "report.md", "\n".join(lines))
    return md, png
