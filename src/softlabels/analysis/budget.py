"""Byte budgets: the most accurate stored training set that fits in N bytes.

Every stored student run carries its set's measured payload bytes (``nbytes``) and codecs, so any study
can answer. This module only reads stored rows; ``softlabels.studies.bytes_fill.fill_budget`` trains
missing cells near a budget first. Runs are grouped into cells (the run config without its seed) and
averaged over seeds. The winner inside the budget is chosen on validation accuracy by default (the clean
protocol: choices are made on validation, test accuracy is what is reported); ``select_on="test_acc"``
picks on test accuracy.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..io import canonical_json
from ..sets.label_codecs import short_label_codec
from ..store import ResultsStore, RunRecord
from ..units import format_bytes, parse_size
from ..validation import check_choice

if TYPE_CHECKING:
    from ..config import DataSpec

__all__ = ["SELECT_ON", "BudgetAnswer", "Cell", "answer_json", "best_within_budget", "cells_of"]

SELECT_ON = ("val_acc", "test_acc")


@dataclass(frozen=True)
class Cell:
    """One configuration (a run config minus its seed), averaged over its seeds.

    ``mean``/``std`` are final-epoch test accuracy (population std over seeds); ``val_mean`` the mean
    validation accuracy (None without a validation split).
    """

    ipc: int | None
    label_kind: str
    expert_epoch: int | None
    label_codec: str
    image_codec: str
    transform: str
    study: str
    model: str | None
    student_epochs: int | None
    mean: float
    std: float
    n: int
    val_mean: float | None
    bytes_images: int | None
    bytes_labels: int | None
    bytes_total: int
    config: dict = field(default_factory=dict, repr=False, compare=False)

    def describe(self) -> str:
        """E.g. ``IPC 10, soft labels (epoch 2, fp16), zlib images``."""
        if self.label_kind == "hard":
            labels = f"hard labels ({self.label_codec})" if self.label_codec != "hard" else "hard labels"
        else:
            bits = [f"epoch {self.expert_epoch}"] if self.expert_epoch is not None else []
            bits.append(short_label_codec(self.label_codec))
            if self.transform not in ("none", ""):
                bits.append(self.transform)
            labels = f"{self.label_kind} labels ({', '.join(bits)})"
        return f"IPC {self.ipc}, {labels}, {self.image_codec} images"


@dataclass(frozen=True)
class BudgetAnswer:
    """The best stored configuration within ``budget`` bytes, and what it trades (``traded``).

    ``best_hard`` is the best hard-label cell within budget (the chosen one if it is hard), ``best_soft``
    likewise, ``best_overall`` the best cell at any size; ``fits`` counts the cells within budget.
    """

    budget: int
    ipc: int | None
    label_kind: str
    expert_epoch: int | None
    label_codec: str
    image_codec: str
    transform: str
    mean: float
    std: float
    n: int
    bytes_images: int | None
    bytes_labels: int | None
    bytes_total: int
    traded: str
    val_mean: float | None = None
    study: str = ""
    model: str | None = None
    student_epochs: int | None = None
    selected_on: str = "val_acc"
    fits: int = 0
    cell: Cell | None = field(default=None, repr=False, compare=False)
    best_hard: Cell | None = field(default=None, repr=False, compare=False)
    best_soft: Cell | None = field(default=None, repr=False, compare=False)
    best_overall: Cell | None = field(default=None, repr=False, compare=False)

    def describe(self) -> str:
        return self.cell.describe() if self.cell is not None else f"IPC {self.ipc}, {self.label_kind} labels"

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able fields, with the comparison cells as dicts."""
        out = {
            f.name: getattr(self, f.name)
            for f in fields(self)
            if f.name not in ("cell", "best_hard", "best_soft", "best_overall")
        }
        for name in ("best_hard", "best_soft", "best_overall"):
            c = getattr(self, name)
            out[name] = None if c is None else _cell_fields(c)
        out["config"] = self.cell.config if self.cell is not None else None
        return out


def _cell_fields(cell: Cell) -> dict[str, Any]:
    """A cell's fields without its config: what a :class:`BudgetAnswer` repeats of its chosen cell."""
    return {f.name: getattr(cell, f.name) for f in fields(cell) if f.name != "config"}


# ------------------------------------------------------------------------------------------- cells


def _records(source: object, *, study: str | None, dataset: str | None) -> list[Any]:
    """Runs from a ResultsStore, a Lab, a store path, or an iterable of RunRecords / run dicts."""
    if hasattr(source, "store") and isinstance(getattr(source, "store", None), ResultsStore):
        source = source.store  # a Lab
    if isinstance(source, (str, Path)):
        path = Path(source)
        path = path / "results.sqlite" if path.is_dir() else path
        if not path.exists():
            return []
        with ResultsStore(path) as store:
            return _records(store, study=study, dataset=dataset)
    if isinstance(source, ResultsStore):
        where = {"dataset": dataset} if dataset is not None else None
        return source.query(study=study, where=where)
    if isinstance(source, Iterable) and not isinstance(source, Mapping):
        return list(source)
    raise TypeError(
        "give a ResultsStore, a Lab, a results.sqlite path, or an iterable of RunRecords / dicts "
        f"with config, metrics, nbytes and codec; got {type(source).__name__}"
    )


def _parts(rec: Any) -> tuple[dict, dict, int | None, str, str]:
    if isinstance(rec, RunRecord):
        return rec.config, rec.metrics, rec.nbytes, rec.codec, rec.study
    if isinstance(rec, Mapping):
        cfg = rec.get("config") or {}
        return (
            cfg,
            rec.get("metrics") or {},
            rec.get("nbytes"),
            rec.get("codec") or "",
            rec.get("study") or cfg.get("study", ""),
        )
    raise TypeError(
        f"a run must be a RunRecord or a dict with config/metrics/nbytes/codec, got {type(rec).__name__}"
    )


def _num(v: Any) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if f == f else None


def cells_of(
    source: object,
    *,
    dataset: str | None = None,
    study: str | None = None,
    label_kind: str | None = None,
    data: DataSpec | Mapping | None = None,
) -> list[Cell]:
    """Stored runs grouped into cells (config minus seed) and averaged over seeds.

    Runs without a byte count or a test accuracy are skipped. With ``dataset=None`` the runs must all be
    of one dataset. ``data`` (a DataSpec or its dict) keeps only runs on exactly that data split.
    """
    if label_kind is not None:
        check_choice("label kind", label_kind, ("soft", "hard"))
    data_dict = None if data is None else (dict(data) if isinstance(data, Mapping) else data.to_dict())
    groups: dict[str, list[tuple[dict, dict, int, str, str]]] = {}
    for rec in _records(source, study=study, dataset=dataset):
        cfg, met, nbytes, codec, rec_study = _parts(rec)
        if nbytes is None or _num(met.get("test_acc")) is None:
            continue
        if study is not None and rec_study != study:
            continue
        if dataset is not None and cfg.get("dataset") != dataset:
            continue
        if data_dict is not None and cfg.get("data") != data_dict:
            continue
        key = canonical_json({k: v for k, v in cfg.items() if k != "seed"})
        groups.setdefault(key, []).append((cfg, met, int(nbytes), codec, rec_study))
    datasets = sorted({str(runs[0][0].get("dataset")) for runs in groups.values()})
    if dataset is None and len(datasets) > 1:
        raise ValueError(f"the results hold several datasets ({', '.join(datasets)}); pass dataset=")
    out = []
    for _key, runs in sorted(groups.items()):
        cell = _cell(runs)
        if label_kind is None or cell.label_kind == label_kind:
            out.append(cell)
    return out


def _cell(runs: list[tuple[dict, dict, int, str, str]]) -> Cell:
    cfg, met, _, codec, rec_study = runs[0]
    label = cfg.get("label") if isinstance(cfg.get("label"), Mapping) else {}
    image_c, _, label_c = codec.partition("|") if "|" in codec else ("", "", "")
    tests = [float(m["test_acc"]) for _, m, *_ in runs]
    vals = [v for v in (_num(m.get("val_acc")) for _, m, *_ in runs) if v is not None]
    mean = sum(tests) / len(tests)
    std = (sum((t - mean) ** 2 for t in tests) / len(tests)) ** 0.5
    student = cfg.get("student") if isinstance(cfg.get("student"), Mapping) else {}

    def common_int(key: str) -> int | None:
        v = {m.get(key) for _, m, *_ in runs}
        return int(next(iter(v))) if len(v) == 1 and None not in v else None

    return Cell(
        ipc=cfg.get("ipc"),
        label_kind=str(label.get("kind", "soft")),
        expert_epoch=cfg.get("expert_epoch"),
        label_codec=label_c or str(cfg.get("codec") or label.get("codec") or "fp32"),
        image_codec=image_c or str(cfg.get("image_codec", "raw")),
        transform=str(label.get("transform", "none")),
        study=rec_study,
        model=cfg.get("model"),
        student_epochs=student.get("epochs"),
        mean=mean,
        std=std,
        n=len(runs),
        val_mean=sum(vals) / len(vals) if len(vals) == len(runs) else None,
        bytes_images=common_int("nbytes_images"),
        bytes_labels=common_int("nbytes_labels"),
        bytes_total=max(n for _, _, n, *_ in runs),
        config={k: v for k, v in cfg.items() if k != "seed"},
    )


def _score(cell: Cell, select_on: str) -> float | None:
    return cell.val_mean if select_on == "val_acc" else cell.mean


def _best(cells: Sequence[Cell], budget: float | None, select_on: str) -> Cell | None:
    """The cell with the highest ``select_on`` score within ``budget``; ties: fewer bytes, then test acc."""
    ok = [
        c for c in cells if (budget is None or c.bytes_total <= budget) and _score(c, select_on) is not None
    ]
    if not ok:
        return None
    return max(
        ok,
        key=lambda c: (
            _score(c, select_on),
            -c.bytes_total,
            c.mean,
            canonical_json(c.config) if c.config else "",
        ),
    )


def _versus(chosen: Cell, other: Cell | None, what: str) -> str:
    if other is None:
        return f"no {what}-label set fits this budget"
    d = 100 * (chosen.mean - other.mean)
    extra = f", {short_label_codec(other.label_codec)}" if other.label_kind != "hard" else ""
    return (
        f"{d:+.1f} points over {what} labels at IPC {other.ipc}{extra} ({format_bytes(other.bytes_total)}, "
        f"{100 * other.mean:.1f}%)"
    )


def best_within_budget(
    store_or_rows: object,
    budget_bytes: int | str,
    *,
    dataset: str | None = None,
    study: str | None = None,
    label_kind: str | None = None,
    data: DataSpec | Mapping | None = None,
    select_on: str = "val_acc",
) -> BudgetAnswer | None:
    """The best stored configuration whose set takes at most ``budget_bytes`` (e.g. 65536 or "64KB").

    ``store_or_rows``: a ResultsStore, a Lab, a results.sqlite path, or RunRecords / dicts with
    ``config``, ``metrics``, ``nbytes`` and ``codec``. Cells are averaged over seeds and picked on
    ``select_on`` ("val_acc", default, or "test_acc"); ``None`` when nothing fits.
    """
    budget = parse_size(budget_bytes)
    check_choice("select_on", select_on, SELECT_ON)
    every = cells_of(store_or_rows, dataset=dataset, study=study, data=data)
    pool = every if label_kind is None else [c for c in every if c.label_kind == label_kind]
    best = _best(pool, budget, select_on)
    if best is None:
        return None
    hard = _best([c for c in every if c.label_kind == "hard"], budget, select_on)
    soft = _best([c for c in every if c.label_kind != "hard"], budget, select_on)
    overall = _best(every, None, select_on)
    parts = [_versus(best, hard, "hard") if best.label_kind != "hard" else _versus(best, soft, "soft")]
    if overall is not None and overall is not best:
        if overall.bytes_total > budget:
            parts.append(
                f"the unconstrained best ({100 * overall.mean:.1f}%, {overall.describe()}) needs "
                f"{format_bytes(overall.bytes_total)}"
            )
        else:
            parts.append(
                f"the best set of any label kind within budget is {overall.describe()} "
                f"({100 * overall.mean:.1f}%)"
            )
    elif overall is best:
        parts.append("no stored set of any size does better")
    fits = sum(c.bytes_total <= budget for c in pool)
    return BudgetAnswer(
        budget=budget,
        **_cell_fields(best),
        traded="; ".join(parts),
        selected_on=select_on,
        fits=fits,
        cell=best,
        best_hard=hard,
        best_soft=soft,
        best_overall=overall,
    )


def answer_json(answer: BudgetAnswer | None) -> str:
    """The answer as JSON text (``null`` when nothing fits)."""
    return json.dumps(None if answer is None else answer.to_dict(), indent=2, default=str)
