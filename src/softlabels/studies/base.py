"""Study framework: a registry of studies, each a function ``(lab, *, scale, **options) -> StudyResult``.

A study computes its cells through :meth:`Lab.evaluate` (keyed by config in the results store, so an
interrupted study resumes and a re-run recomputes nothing), returns a tidy table, and writes its
figure(s) and a ``summary.json`` under ``<out>/studies/<name>/`` for ``softlabels report``.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..config import ExpertRecipe, Preset, StudentRecipe, get_preset
from ..io import atomic_write_text, write_json
from ..lab import Lab
from ..registry import Registry

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
        if not self.rows:
            return ""
        cols = list(dict.fromkeys(k for r in self.rows for k in r))
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=cols)
        w.writeheader()
        w.writerows(self.rows)
        return buf.getvalue()

    def save(self, folder: Path) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write_text(folder / "table.csv", self.to_csv())
        d = asdict(self)
        d["figures"] = [str(Path(f).name) for f in self.figures]
        write_json(folder / "summary.json", d)
        return folder


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


__all__ = ["STUDIES", "SCALES", "StudyResult", "register_study", "list_studies", "run_study", "study_dir",
           "base_settings", "mean_std", "metric_of", "ExpertRecipe", "StudentRecipe"]
