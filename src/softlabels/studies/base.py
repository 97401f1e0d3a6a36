"""The studies' one toolkit: registry, result type, option checks, the student-length and expert-epoch
policies, cell statistics.

A study is a function ``(lab, *, scale, **options) -> StudyResult``. It computes its cells through
:meth:`Lab.evaluate_many` (keyed by value in the results store, so an interrupted study resumes and a re-run
recomputes nothing), returns tidy rows, and :func:`run_study` writes its table, figures and ``summary.json``
under ``<out>/studies/<name>/`` for ``softlabels report``.

Every study at one scale trains students of the same length at the same IPC (:func:`student_recipe`, the
preset's policy, shared with the main job) and takes expert epochs from the same validation sweep
(:func:`expert_epochs`), so their numbers compare.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..analysis.stats import mean_std
from ..config import ExpertRecipe, LabelSpec, StudentRecipe
from ..io import atomic_write_text, write_json
from ..lab import CellSpec, Lab
from ..presets import Preset, get_preset
from ..registry import Registry
from ..sets.spec import SetSpec
from ..validation import check_choice, check_positive_float, check_positive_int

if TYPE_CHECKING:
    from ..experts import Trajectory

SCALES = ("quick", "full")
QUICK_SEEDS = 2  # student seeds per cell at quick scale unless a study says otherwise


@dataclass(frozen=True, kw_only=True)
class StudyResult:
    """A study's output: tidy rows (one per cell, averaged over seeds), key numbers, figures, settings."""

    name: str
    rows: list[dict[str, Any]]
    summary: dict[str, Any]
    figures: list[Path] = field(default_factory=list)
    protocol: str = "clean"
    settings: dict[str, Any] = field(default_factory=dict)
    finding: str = ""

    def to_csv(self) -> str:
        return rows_csv(self.rows)

    def save(self, folder: Path) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write_text(folder / "table.csv", self.to_csv())
        d = _finite(asdict(self))
        d["figures"] = [str(Path(f).name) for f in self.figures]
        write_json(folder / "summary.json", d)
        return folder


def _finite(obj: Any) -> Any:
    """Strict JSON: NaN and infinities become None (e.g. a law that never reaches an accuracy)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def rows_csv(rows: list[dict[str, Any]]) -> str:
    """CSV text of tidy rows (columns in first-seen order); ``""`` for no rows."""
    if not rows:
        return ""
    cols = list(dict.fromkeys(k for r in rows for k in r))
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols)
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue()


StudyFn = Callable[..., StudyResult]
STUDIES: Registry[StudyFn] = Registry("study")


def register_study(name: str, *, help: str = "") -> Callable[[StudyFn], StudyFn]:
    return STUDIES.register(name, help=help)  # type: ignore[return-value]


def list_studies() -> dict[str, str]:
    return STUDIES.describe()


def run_study(name: str, lab: Lab, *, scale: str = "quick", **options) -> StudyResult:
    """Run a registered study in ``lab`` and save its table, summary and figures."""
    check_choice("scale", scale, SCALES)
    fn = STUDIES.get(name)
    result = fn(lab, scale=scale, **options)
    result.save(study_dir(lab, name))
    return result


def study_dir(lab: Lab, name: str) -> Path:
    return lab.out_dir / "studies" / name


def base_settings(scale: str) -> Preset:
    """The settings studies start from: the ``default`` preset (quick, sharing the main job's expert and
    student lengths) or the ``paper`` preset (full)."""
    return get_preset("default" if scale == "quick" else "paper")


def pct(v: float | None, digits: int = 1) -> str:
    return "n/a" if v is None or not math.isfinite(v) else f"{100 * v:.{digits}f}%"


def finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


# ---------------------------------------------------------------------------------------------------------
# options


class OptionError(ValueError, TypeError):
    """A study option of the wrong form (not a list, an empty list, a count where seeds are expected).

    Both a ValueError and a TypeError: callers may catch either."""


def resolve_preset(scale: str, preset: Preset | str | None) -> Preset:
    """The study's base settings: ``preset`` if given (a Preset or a preset name), else
    ``base_settings(scale)``."""
    check_choice("scale", scale, SCALES)
    if preset is None:
        return base_settings(scale)
    if isinstance(preset, str):
        return get_preset(preset)
    if isinstance(preset, Preset):
        return preset
    raise TypeError(f"preset must be a Preset or a preset name, got {type(preset).__name__}")


def int_list(name: str, values: Any, *, minimum: int = 1, maximum: int | None = None) -> list[int]:
    """A non-empty sorted list of distinct integers in ``[minimum, maximum]`` (one int is a list of one)."""
    if isinstance(values, int) and not isinstance(values, bool):
        values = [values]
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or not values:
        raise OptionError(f"{name} must be a non-empty list of integers, got {values!r}")
    out = [check_positive_int(f"{name} entry", v, minimum=minimum) for v in values]
    if maximum is not None and max(out) > maximum:
        raise ValueError(f"{name} entries must be <= {maximum}, got {max(out)}")
    return sorted(set(out))


def float_list(name: str, values: Any) -> list[float]:
    """A non-empty list of distinct positive finite numbers, sorted."""
    if isinstance(values, (int, float)) and not isinstance(values, bool):
        values = [values]
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or not values:
        raise OptionError(f"{name} must be a non-empty list of numbers, got {values!r}")
    return sorted({check_positive_float(f"{name} entry", v) for v in values})


def seed_list(seeds: Any, *, default: Sequence[int]) -> list[int]:
    """Student seeds: a sequence of distinct seeds (``None``: ``default``). A bare count is refused: a study's
    seeds are named, e.g. ``seeds=range(3)``."""
    if seeds is None:
        return [int(s) for s in default]
    if isinstance(seeds, int) and not isinstance(seeds, bool):
        raise OptionError(
            f"seeds must be a sequence of student seeds, e.g. seeds=range({seeds}) or [0, 1, 2]; "
            f"got the number {seeds}"
        )
    out = [
        check_positive_int("seed", s, minimum=0) for s in (seeds if isinstance(seeds, Sequence) else [seeds])
    ]
    if not out or len(set(out)) != len(out):
        raise OptionError(f"seeds must be a non-empty list of distinct integers >= 0, got {seeds!r}")
    return out


def default_seeds(scale: str, preset: Preset, *, quick: int = QUICK_SEEDS) -> list[int]:
    """The preset's seeds: the first ``quick`` of them at quick scale, all at full scale."""
    return list(preset.seeds[:quick] if scale == "quick" else preset.seeds)


def common_options(scale: str, preset: Preset | str | None, ipcs: Sequence[int] | None, seeds: Any, *,
                   ipcs_default: Sequence[int] | None = None, image_seed: int = 0,
                   quick_seeds: int = QUICK_SEEDS) -> tuple[Preset, list[int], list[int], int]:
    """The options every study takes, checked: (preset, IPCs, student seeds, image seed). IPCs default to
    ``ipcs_default``, else the preset's."""
    p = resolve_preset(scale, preset)
    if ipcs is None:
        ipcs = p.ipcs if ipcs_default is None else ipcs_default
    ipc_list = int_list("ipcs", ipcs)
    seed_ids = seed_list(seeds, default=default_seeds(scale, p, quick=quick_seeds))
    return p, ipc_list, seed_ids, check_positive_int("image_seed", image_seed, minimum=0)


def common_settings(p: Preset, expert: Trajectory, recipes: dict[int, StudentRecipe], *, scale: str,
                    ipcs: list[int], seeds: list[int], image_seed: int | str) -> dict[str, Any]:
    """The settings every study records (a study adds its own)."""
    return {"scale": scale, "preset": p.name, "expert": p.expert.to_dict(), "expert_key": expert.key,
            "student": {str(i): r.to_dict() for i, r in recipes.items()}, "ipcs": ipcs, "seeds": seeds,
            "image_seed": image_seed}


def epoch_grid(epochs: Sequence[int] | None, scale: str, last: int, *, quick: Sequence[int],
               every: int) -> list[int]:
    """``epochs`` (each <= the expert's ``last`` epoch), else the default grid: the ``quick`` epochs at quick
    scale, every ``every``-th epoch from 1 at full scale; the default always includes ``last``."""
    if epochs is not None:
        return int_list("epochs", epochs, maximum=last)
    grid = quick if scale == "quick" else range(1, last + 1, every)
    return sorted({e for e in grid if e <= last} | {last})


def expert_history_value(expert: Trajectory, epoch: int, key: str = "test_acc") -> float:
    """The expert's recorded ``key`` (e.g. test_acc, val_acc) at ``epoch``; NaN if not recorded."""
    for h in expert.history():
        if int(h["epoch"]) == epoch:
            v = h.get(key)
            return float(v) if v is not None else float("nan")
    return float("nan")


def mean_label_entropy(lab: Lab, expert: Trajectory, spec: SetSpec) -> float:
    """Mean entropy (nats) of the labels students see on the set ``spec`` (built from the lab's cache)."""
    from ..labels.diagnostics import entropy

    return float(entropy(lab.build_set(spec, experts=[expert]).labels).mean())


# ---------------------------------------------------------------------------------------------------------
# the shared policies


def student_recipe(preset: Preset, ipc: int, *, student_epochs: int | None = None) -> StudentRecipe:
    """The student at ``ipc``: the preset's length policy (the main job's), or ``student_epochs``."""
    recipe = preset.student_for(ipc)
    if student_epochs is not None:
        recipe = recipe.replace(epochs=check_positive_int("student_epochs", student_epochs), steps=None)
    return recipe


def planned_epochs(lab: Lab, recipe: ExpertRecipe) -> int:
    """The expert epochs (checkpoints after the initial weights) ``recipe`` trains on ``lab``'s data: what a
    study checks its options against before any training."""
    return len(recipe.schedule(int(lab.prepared.train_idx.numel()))[2])


def given_epochs(expert_epoch: int | dict, ipcs: Sequence[int], last: int) -> dict[int, int]:
    """Expert epoch per IPC from ``expert_epoch``: one for all, or {ipc: epoch} (JSON's string keys are read
    as ints); each within the ``last`` epoch the expert has (or will have)."""
    if isinstance(expert_epoch, dict):
        expert_epoch = {int(k): v for k, v in expert_epoch.items()}  # JSON keys arrive as strings
        missing = [i for i in ipcs if i not in expert_epoch]
        if missing:
            raise ValueError(f"expert_epoch has no entry for IPC {missing}")
        epochs = {i: check_positive_int("expert_epoch", expert_epoch[i]) for i in ipcs}
    else:
        e = check_positive_int("expert_epoch", expert_epoch)
        epochs = dict.fromkeys(ipcs, e)
    bad = {i: e for i, e in epochs.items() if e > last}
    if bad:
        raise ValueError(f"expert_epoch {bad} exceeds the expert's {last} epochs")
    return epochs


def expert_epochs(lab: Lab, preset: Preset, expert: Trajectory | None, ipcs: Sequence[int],
                  expert_epoch: int | dict | None = None) -> tuple[dict[int, int], str]:
    """Expert epoch per IPC: ``expert_epoch`` if given (checked against the preset's planned checkpoints, so
    before any training), else the main job's validation sweep on ``expert`` (trained if None; its runs are
    shared through the store, so this is free after ``softlabels run``); and how it was chosen."""
    from ..main_job import choose_expert_epochs

    if expert_epoch is not None:
        return given_epochs(expert_epoch, ipcs, planned_epochs(lab, preset.expert)), "given"
    expert = expert if expert is not None else lab.expert(preset.expert)
    chosen = choose_expert_epochs(lab, preset, expert, ipcs=ipcs).chosen
    return {int(i): int(chosen[i]) for i in ipcs}, "validation sweep of the main job (study 'baseline-sweep')"


# ---------------------------------------------------------------------------------------------------------
# cells


def metric_of(res: list[dict], key: str = "test_acc") -> list[float]:
    return [float(r["metrics"][key]) if r["metrics"].get(key) is not None else float("nan") for r in res]


def cell_stats(res: list[dict]) -> dict[str, Any]:
    """Mean and std of final test and validation accuracy over a cell's seeds, its seed count and bytes."""
    t_mean, t_std = mean_std(metric_of(res, "test_acc"))
    v_mean, v_std = mean_std(metric_of(res, "val_acc"))
    nbytes = res[0].get("nbytes") if res else None
    return {"test_mean": t_mean, "test_std": t_std, "val_mean": v_mean, "val_std": v_std, "n": len(res),
            "nbytes": None if nbytes is None else int(nbytes)}


def paired_gain(res: list[dict], ref: list[dict], key: str = "test_acc") -> dict[str, float]:
    """``res`` minus ``ref`` paired by student seed (both cells' seeds must match): the mean difference of
    ``key`` and its 95% confidence interval, as ``gain``, ``gain_lo``, ``gain_hi``."""
    from ..analysis.stats import paired_ci

    a = {r["config"]["seed"]: r for r in res}
    b = {r["config"]["seed"]: r for r in ref}
    if set(a) != set(b):
        raise ValueError(f"paired cells need the same student seeds, got {sorted(a)} and {sorted(b)}")
    order = sorted(a)
    m, lo, hi = paired_ci(metric_of([a[s] for s in order], key), metric_of([b[s] for s in order], key))
    return {"gain": m, "gain_lo": lo, "gain_hi": hi}


def ci_verdict(row: dict) -> str:
    """"better", "worse" or "tie" from a row's ``gain_lo`` / ``gain_hi`` (a 95% CI excluding zero or not)."""
    lo, hi = row.get("gain_lo"), row.get("gain_hi")
    if not (finite(lo) and finite(hi)):
        return "tie"
    return "better" if lo > 0 else "worse" if hi < 0 else "tie"


def ci_text(row: dict) -> str:
    """``+1.2 [+0.3, +2.1] pts`` from a row's gain and its CI (fractions of one)."""
    m, lo, hi = (row.get(k) for k in ("gain", "gain_lo", "gain_hi"))
    if not finite(m):
        return "n/a"
    return f"{100 * m:+.1f} [{100 * lo:+.1f}, {100 * hi:+.1f}] pts" if finite(lo) else f"{100 * m:+.1f} pts"


def argbest(rows: list[dict], key: str = "val_mean") -> dict | None:
    """The row with the largest finite ``key`` (ties: the earliest row); ``None`` if none is finite."""
    best = None
    for r in rows:
        v = r.get(key)
        if finite(v) and (best is None or v > best[key]):
            best = r
    return best


def evaluate_grid(lab: Lab, grid: Sequence[tuple[int, LabelSpec]], *, recipes: dict[int, StudentRecipe],
                  seeds: Sequence[int], expert: Trajectory, study: str,
                  image_seed: int | Callable[[int], int]) -> list[list[dict]]:
    """The clean-protocol students of every (ipc, label) cell of ``grid`` on random images, in one
    :meth:`Lab.evaluate_many` call (so they may train in parallel): one list of per-seed results per cell, in
    order. ``image_seed`` is one seed for every cell or a function of the IPC."""
    seed_of = image_seed if callable(image_seed) else (lambda ipc: image_seed)
    return lab.evaluate_many(
        [
            CellSpec(
                set=SetSpec(ipc=ipc, label=label, image_seed=seed_of(ipc)),
                student=recipes[ipc],
                seeds=tuple(seeds),
                experts=(expert,),
                study=study,
            )
            for ipc, label in grid
        ]
    )


__all__ = [
    "QUICK_SEEDS",
    "SCALES",
    "STUDIES",
    "OptionError",
    "StudyResult",
    "argbest",
    "base_settings",
    "cell_stats",
    "ci_text",
    "ci_verdict",
    "common_options",
    "common_settings",
    "default_seeds",
    "epoch_grid",
    "evaluate_grid",
    "expert_epochs",
    "expert_history_value",
    "finite",
    "float_list",
    "mean_label_entropy",
    "given_epochs",
    "int_list",
    "planned_epochs",
    "list_studies",
    "mean_std",
    "metric_of",
    "paired_gain",
    "pct",
    "register_study",
    "resolve_preset",
    "rows_csv",
    "run_study",
    "seed_list",
    "student_recipe",
    "study_dir",
]
