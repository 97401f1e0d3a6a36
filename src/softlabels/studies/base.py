"""Study framework: a registry of studies, each a function ``(lab, *, scale, **options) -> StudyResult``.

A study computes its cells through :meth:`Lab.evaluate` (keyed by config in the results store, so an
interrupted study resumes and a re-run recomputes nothing), returns a tidy table, and writes its
figure(s) and a ``summary.json`` under ``<out>/studies/<name>/`` for ``softlabels report``.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..config import ExpertRecipe, LabelSpec, Preset, StudentRecipe, get_preset
from ..io import atomic_write_text, write_json
from ..lab import CellSpec, Lab
from ..registry import Registry
from ..validation import check_choice, check_positive_float, check_positive_int

if TYPE_CHECKING:
    from ..experts import Trajectory

SCALES = ("quick", "full")


@dataclass
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
        return obj if obj == obj and obj not in (float("inf"), float("-inf")) else None
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
    if scale not in SCALES:
        raise ValueError(f"scale must be one of {SCALES}, got {scale!r}")
    fn = STUDIES.get(name)
    result = fn(lab, scale=scale, **options)
    result.save(study_dir(lab, name))
    return result


def study_dir(lab: Lab, name: str) -> Path:
    return lab.out_dir / "studies" / name


def base_settings(scale: str) -> Preset:
    """The expert and student settings studies start from: the ``default`` preset (quick, sharing the
    main job's expert) or the ``paper`` preset (full)."""
    return get_preset("default" if scale == "quick" else "paper")


def mean_std(values: list[float]) -> tuple[float, float]:
    vals = [v for v in values if v == v]
    if not vals:
        return float("nan"), float("nan")
    m = sum(vals) / len(vals)
    return m, (sum((v - m) ** 2 for v in vals) / len(vals)) ** 0.5


def metric_of(res: list[dict], key: str = "test_acc") -> list[float]:
    return [float(r["metrics"][key]) if r["metrics"].get(key) is not None else float("nan") for r in res]


def pct(v: float | None, digits: int = 1) -> str:
    return "n/a" if v is None or not math.isfinite(v) else f"{100 * v:.{digits}f}%"


# ---------------------------------------------------------------------------------------------------------
# study options, shared by every study


class OptionError(ValueError, TypeError):
    """A study option of the wrong form (not a list, an empty list, unparsable text).

    Both a ValueError and a TypeError: the studies raised one or the other for these before they shared
    one set of option helpers, and callers may catch either.
    """


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
    """A non-empty sorted list of distinct integers in ``[minimum, maximum]``; an int or a string such as
    "1,2,5" is accepted too."""
    if isinstance(values, str):
        values = [v.strip() for v in values.split(",") if v.strip()]
        try:
            values = [int(v) for v in values]
        except ValueError:
            raise OptionError(f"{name} must be integers separated by commas, got {values!r}") from None
    if isinstance(values, int) and not isinstance(values, bool):
        values = [values]
    if isinstance(values, bytes) or not isinstance(values, Sequence) or not values:
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


def seed_list(seeds: Any, *, default: int) -> list[int]:
    """Student seeds: ``None`` (``default`` seeds), a count ``n`` (seeds 0..n-1) or an explicit list."""
    if seeds is None:
        seeds = default
    if isinstance(seeds, int) and not isinstance(seeds, bool):
        return list(range(check_positive_int("seeds", seeds)))
    return int_list("seeds", seeds, minimum=0)


def given_epochs(expert_epoch: int | dict, ipcs: Sequence[int], expert: Trajectory) -> dict[int, int]:
    """Expert epoch per IPC from ``expert_epoch``: one for all, or {ipc: epoch} (JSON's string keys are read
    as ints); each within the epochs ``expert`` has trained."""
    if isinstance(expert_epoch, dict):
        expert_epoch = {int(k): v for k, v in expert_epoch.items()}  # JSON keys arrive as strings
        missing = [i for i in ipcs if i not in expert_epoch]
        if missing:
            raise ValueError(f"expert_epoch has no entry for IPC {missing}")
        epochs = {i: check_positive_int("expert_epoch", expert_epoch[i]) for i in ipcs}
    else:
        e = check_positive_int("expert_epoch", expert_epoch)
        epochs = dict.fromkeys(ipcs, e)
    bad = {i: e for i, e in epochs.items() if e > expert.epochs_done}
    if bad:
        raise ValueError(f"expert_epoch {bad} exceeds the expert's {expert.epochs_done} epochs")
    return epochs


def evaluate_grid(lab: Lab, grid: Sequence[tuple[int, LabelSpec]], *, recipes: dict[int, StudentRecipe],
                  seeds: Sequence[int], expert: Trajectory, study: str,
                  image_seed: int | Callable[[int], int]) -> list[list[dict]]:
    """The clean-protocol students of every (ipc, label) cell of ``grid`` in one :meth:`Lab.evaluate_many`
    call (so they may train in parallel): one list of per-seed results per cell, in order. ``image_seed`` is
    one seed for every cell or a function of the IPC."""
    seed_of = image_seed if callable(image_seed) else (lambda ipc: image_seed)
    return lab.evaluate_many([CellSpec(ipc=ipc, label=label, student=recipes[ipc], seeds=seeds, experts=(expert,),
                                       image_seed=seed_of(ipc), protocol="clean", study=study)
                              for ipc, label in grid])


def sweep_epochs(lab: Lab, preset: Preset, expert: Trajectory, ipcs: Sequence[int]) -> dict[int, int]:
    """Expert epoch per IPC chosen on validation accuracy by the main job's sweep (``baseline-sweep``
    runs in the store are shared, so this is free after ``softlabels run``)."""
    from ..baseline import choose_epochs

    _, chosen = choose_epochs(lab, replace(preset, ipcs=tuple(ipcs)), expert, protocol="clean")
    return {int(i): int(chosen[i]) for i in ipcs}


__all__ = ["STUDIES", "SCALES", "StudyResult", "register_study", "list_studies", "run_study", "study_dir",
           "base_settings", "mean_std", "metric_of", "pct", "rows_csv", "OptionError", "resolve_preset",
           "int_list", "float_list", "seed_list", "given_epochs", "sweep_epochs", "ExpertRecipe",
           "StudentRecipe"]
