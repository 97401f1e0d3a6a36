"""Every image-selection method against random images, with hard and with soft labels, on one protocol.

The dataset-compression benchmark among our sources ("Rethinking Large-scale Dataset Compression") finds
that pruning scores select real images well and that methods compare only under one protocol; here every
method shares the expert, the students (the preset's, :func:`student_recipe`), the soft-label epochs (the
main job's validation sweep) and the seeds. Repetition ``r`` uses image seed ``700 + r`` and student seed
``r`` for every method, so each method is paired with the random draw of the same repetition and judged by
the paired 95% confidence interval of the difference (:func:`softlabels.analysis.stats.paired_ci`); nothing
is chosen on the test set (each method runs in the one variant named, no variant search).

Two more sections share the figure of accuracy against stored bytes: random images stored with lossy image
codecs (JPEG, WebP, downsampling; soft labels) and a label-query budget (only ``q`` images of the set get the
expert's label, the rest hard labels: random, uncertainty by an earlier checkpoint, pixel-space diversity),
whose expert and proxy queries are recorded beside the bytes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..analysis.frontier import pareto_front
from ..analysis.stats import paired_ci
from ..config import LabelSpec
from ..lab import CellSpec, Lab
from ..presets import Preset
from ..sets.queries import query_budget
from ..sets.selection import selection as parse_selection
from ..sets.spec import SetSpec
from ..validation import check_fraction, check_positive_int
from .base import (
    OptionError,
    StudyResult,
    cell_stats,
    common_options,
    common_settings,
    expert_epochs,
    finite,
    metric_of,
    planned_epochs,
    register_study,
    student_recipe,
    study_dir,
)

NAME = "pruning"
IMAGE_SEED_BASE = 700
LABEL_KINDS = ("hard", "soft")
#: each method's one variant when named without parameters ({e}: the score epoch): the literature's rule
#: (keep the hardest images) for the scores, CCS on AUM with its published 10% cut
VARIANTS = {
    "random": "random",
    "el2n": "el2n:epoch={e},keep=hard",
    "grand": "grand:epoch={e},params=all,keep=hard",
    "forgetting": "forgetting:epoch={e},keep=hard",
    "aum": "aum:epoch={e},keep=hard",
    "ccs": "ccs:score=aum,epoch={e},cut=0.1",
    "herding": "herding:epoch={e}",
    "kcenter": "kcenter:epoch={e}",
    "ce-bin": "ce-bin:bin=0,bins=10,epoch={e}",
}
DEFAULT_METHODS = ("random", "el2n", "grand", "forgetting", "aum", "ccs", "herding", "kcenter")
DEFAULT_CODECS = ("jpeg:quality=50", "webp:quality=50", "down:factor=2,mode=area")
DEFAULT_QUERIES = ("random", "uncertainty", "diversity")


def method_specs(methods: Sequence[str], score_epoch: int) -> list[str]:
    """Canonical selection specs: a bare name takes its :data:`VARIANTS` entry; random always comes first."""
    if isinstance(methods, str) or not isinstance(methods, Sequence) or not methods:
        raise OptionError(f"methods must be a non-empty list of selection specs, got {methods!r}")
    out = []
    for m in methods:
        spec = VARIANTS[m].format(e=score_epoch) if isinstance(m, str) and m in VARIANTS else m
        out.append(parse_selection(spec)[1])
    out = list(dict.fromkeys(["random", *out]))
    if len(out) < 2:
        raise OptionError("methods must name at least one selection besides random")
    return out


def _short(spec: str) -> str:
    return spec.split(":")[0]


def _compare(acc: list[float], base: list[float]) -> dict[str, Any]:
    d, lo, hi = paired_ci(acc, base)
    call = ("n/a" if not (finite(lo) and finite(hi)) else
            "better" if lo > 0 else "worse" if hi < 0 else "no clear difference")
    return {"diff": d, "ci_low": lo, "ci_high": hi, "vs_base": call}


@register_study(NAME, help="EL2N, GraNd, forgetting, AUM, CCS, herding, k-centre vs random; codecs; queries")
def study_pruning(lab: Lab, *, scale: str = "quick", ipcs: Sequence[int] | None = None,
                  seeds: Sequence[int] | None = None, methods: Sequence[str] = DEFAULT_METHODS,
                  labels: Sequence[str] = LABEL_KINDS, score_epoch: int | None = None,
                  expert_epoch: int | dict | None = None, codecs: Sequence[str] = DEFAULT_CODECS,
                  codec_ipcs: Sequence[int] | None = None, queries: Sequence[str] = DEFAULT_QUERIES,
                  query_ipcs: Sequence[int] | None = None, query_fraction: float = 0.1, proxy_epoch: int = 3,
                  student_epochs: int | None = None, preset: Preset | str | None = None) -> StudyResult:
    """Per IPC, label kind and method, students on the method's images vs random images (paired seeds);
    lossy codecs (``codec_ipcs``, default the largest IPC) and query budgets (``query_ipcs``, default IPC 10
    or the smallest; ``query_fraction`` of the set's images queried) on the same bytes axis. Empty
    ``codecs`` / ``queries`` skip those sections."""
    p, ipc_list, reps, _ = common_options(scale, preset, ipcs, seeds, quick_seeds=3)
    last = planned_epochs(lab, p.expert)
    e_score = last if score_epoch is None else check_positive_int("score_epoch", score_epoch)
    if e_score > last:
        raise ValueError(f"score_epoch {e_score} exceeds the expert's {last} epochs")
    specs = method_specs(methods, e_score)
    kinds = [check_label_kind(k) for k in (labels if not isinstance(labels, str) else [labels])]
    codec_list = _codec_specs(codecs)
    query_list = [_check_strategy(q) for q in ([queries] if isinstance(queries, str) else queries or ())]
    c_ipcs = _sub_ipcs("codec_ipcs", codec_ipcs, ipc_list, [max(ipc_list)]) if codec_list else []
    q_ipcs = _sub_ipcs("query_ipcs", query_ipcs, ipc_list, [10 if 10 in ipc_list else min(ipc_list)]) \
        if query_list else []
    frac = check_fraction("query_fraction", query_fraction)
    if query_list and frac <= 0:
        raise ValueError("query_fraction must be > 0 (a budget of at least one query)")
    check_positive_int("proxy_epoch", proxy_epoch, minimum=0)
    epochs, epoch_source = expert_epochs(lab, p, None, ipc_list, expert_epoch)
    if query_list and any(proxy_epoch >= epochs[i] for i in q_ipcs):
        raise ValueError(f"proxy_epoch {proxy_epoch} must precede the label epochs {epochs}; lower it")
    expert = lab.expert(p.expert)
    recipes = {i: student_recipe(p, i, student_epochs=student_epochs) for i in ipc_list}
    num_classes = lab.prepared.num_classes

    def label_of(kind: str, ipc: int) -> LabelSpec:
        return LabelSpec(kind="hard", codec="hard") if kind == "hard" else \
            LabelSpec(kind="soft", expert_epoch=epochs[ipc])

    # every cell: (section, name, label kind, ipc) -> the SetSpec of repetition r; one evaluate_many call
    plan: dict[tuple[str, str, str, int], Any] = {}
    for ipc in ipc_list:
        for kind in kinds:
            for m in specs:
                plan[("selection", m, kind, ipc)] = lambda r, m=m, kind=kind, ipc=ipc: SetSpec(
                    ipc=ipc, label=label_of(kind, ipc), selection=m, image_seed=IMAGE_SEED_BASE + r)
    for ipc in c_ipcs:
        for c in codec_list:
            plan[("codec", c, "soft", ipc)] = lambda r, c=c, ipc=ipc: SetSpec(
                ipc=ipc, label=label_of("soft", ipc), image_codec=c, image_seed=IMAGE_SEED_BASE + r)
    q_of = {ipc: max(1, round(frac * ipc * num_classes)) for ipc in q_ipcs}
    for ipc in q_ipcs:
        if "soft" not in kinds:
            raise ValueError("the query budget compares against soft-label cells: include labels=soft")
        for s in query_list:
            qspec = _query_spec(s, q_of[ipc], proxy_epoch)
            plan[("queries", qspec, "soft", ipc)] = lambda r, q=qspec, ipc=ipc: SetSpec(
                ipc=ipc, label=label_of("soft", ipc), queries=q, image_seed=IMAGE_SEED_BASE + r)
    cells = [CellSpec(set=make(r), student=recipes[key[3]], seeds=(r,), experts=(expert,), study=NAME)
             for key, make in plan.items() for r in reps]
    flat = iter(lab.evaluate_many(cells))
    results = {key: [next(flat)[0] for _ in reps] for key in plan}

    rows = []
    for (section, name, kind, ipc), res in results.items():
        base = ("selection", "random", kind, ipc)  # the same images, all labelled, for random queries
        if section == "queries" and not name.startswith("random"):
            base = ("queries", _query_spec("random", q_of[ipc], proxy_epoch), kind, ipc)
        row: dict[str, Any] = {"section": section, "method": _short(name), "spec": name, "labels": kind,
                               "ipc": ipc, "expert_epoch": epochs[ipc] if kind == "soft" else None,
                               **cell_stats(res)}
        if (section, name) != ("selection", "random"):
            row["baseline"] = base[1]
            row.update(_compare(metric_of(res, "test_acc"), metric_of(results[base], "test_acc")))
        if section == "queries":
            q = lab.build_set(plan[(section, name, kind, ipc)](reps[0]), experts=[expert]).manifest["queries"]
            row["expert_queries"], row["proxy_queries"] = q["expert_queries"], q["proxy_queries"]
            hard = results.get(("selection", "random", "hard", ipc))
            if hard is not None:  # what the q expert labels buy over none
                row["diff_vs_hard"] = paired_ci(metric_of(res, "test_acc"), metric_of(hard, "test_acc"))[0]
        rows.append(row)

    folder = study_dir(lab, NAME)
    figures = [_plot_ipc(rows, folder / "pruning_ipc.png", dataset=lab.prepared.dataset.name),
               _plot_bytes(rows, folder / "pruning_bytes.png", dataset=lab.prepared.dataset.name)]
    settings = common_settings(p, expert, recipes, scale=scale, ipcs=ipc_list, seeds=reps,
                               image_seed=f"{IMAGE_SEED_BASE} + repetition")
    settings.update(methods=specs, labels=kinds, score_epoch=e_score, codecs=codec_list, codec_ipcs=c_ipcs,
                    queries={str(i): [_query_spec(s, q_of[i], proxy_epoch) for s in query_list]
                             for i in q_ipcs},
                    expert_epochs={str(k): v for k, v in epochs.items()}, epochs_source=epoch_source,
                    pairing="repetition r: image seed 700 + r and student seed r for every method",
                    ci="95% paired Student-t over repetitions (analysis.stats.paired_ci)")
    return StudyResult(name=NAME, rows=rows, summary=summarize(rows), figures=figures, settings=settings,
                       finding=verdict(rows))


def _check_strategy(name: object) -> str:
    if name not in DEFAULT_QUERIES:
        raise OptionError(f"queries entries must be among {', '.join(DEFAULT_QUERIES)}, got {name!r}")
    return str(name)


def check_label_kind(kind: object) -> str:
    if kind not in LABEL_KINDS:
        raise OptionError(f"labels entries must be 'hard' or 'soft', got {kind!r}")
    return str(kind)


def _codec_specs(codecs: Sequence[str] | None) -> list[str]:
    from ..sets.codecs import image_codec

    if not codecs:
        return []
    if isinstance(codecs, str):
        codecs = [codecs]
    return list(dict.fromkeys(image_codec(c).spec for c in codecs))


def _sub_ipcs(name: str, given, ipc_list: list[int], default: list[int]) -> list[int]:
    from .base import int_list

    out = default if given is None else int_list(name, given)
    missing = [i for i in out if i not in ipc_list]
    if missing:
        raise ValueError(f"{name} {missing} are not among the study's IPCs {ipc_list}: the paired random "
                         "cells live there")
    return out


def _query_spec(strategy: str, q: int, proxy: int) -> str:
    if strategy == "uncertainty":
        return query_budget(f"uncertainty:q={q},proxy={proxy}")[1]
    return query_budget(f"{strategy}:q={q}")[1]


def summarize(rows: list[dict]) -> dict[str, Any]:
    """Per label kind and method: the IPCs where it beats random, and where it is worse (paired CIs)."""
    out: dict[str, Any] = {"better": {}, "worse": {}, "random_acc": {}}
    for r in rows:
        if r["section"] != "selection":
            continue
        if r["method"] == "random":
            out["random_acc"].setdefault(r["labels"], {})[str(r["ipc"])] = r["test_mean"]
            continue
        for call in ("better", "worse"):
            if r.get("vs_base") == call:
                out[call].setdefault(r["labels"], {}).setdefault(r["spec"], []).append(r["ipc"])
    return out


def verdict(rows: list[dict]) -> str:
    """Which methods beat random images, under which labels and at which IPC (95% paired CIs)."""
    sel = [r for r in rows if r["section"] == "selection" and r["method"] != "random"]
    if not sel:
        return "Not assessed: no selection method besides random was run."
    if all(r.get("vs_base") == "n/a" for r in sel):
        return "Not assessed: paired confidence intervals need at least two repetitions per cell."
    n = min(int(r["n"]) for r in sel)
    parts = []
    for kind in LABEL_KINDS:
        these = [r for r in sel if r["labels"] == kind]
        if not these:
            continue
        better = _listing(these, "better")
        worse = _listing(these, "worse")
        parts.append(f"{kind} labels: beat random: {better or 'none'}; worse than random: {worse or 'none'}")
    text = (f"Selection vs random images (95% paired CI of the test-accuracy difference, {n} repetitions; "
            "no clear difference where not listed) - " + "; ".join(parts) + ".")
    q = [r for r in rows if r["section"] == "queries" and r.get("baseline", "").startswith("random")
         and r["method"] != "random"]
    if q:
        text += " Query budget vs random queries: " + "; ".join(
            f"{r['method']} at IPC {r['ipc']} ({r['expert_queries']} expert + {r['proxy_queries']} proxy "
            f"queries) {_pts(r)}" for r in q) + "."
    return text


def _listing(rows: list[dict], call: str) -> str:
    by: dict[str, list[str]] = {}
    for r in rows:
        if r.get("vs_base") == call:
            by.setdefault(r["method"], []).append(f"IPC {r['ipc']} {_pts(r)}")
    return ", ".join(f"{m} ({'; '.join(v)})" for m, v in by.items())


def _pts(r: dict) -> str:
    lo, hi = r.get("ci_low"), r.get("ci_high")
    ci = f" [{100 * lo:+.1f}, {100 * hi:+.1f}]" if finite(lo) and finite(hi) else ""
    return f"{100 * r['diff']:+.1f} pts{ci}"


# ------------------------------------------------------------------------------------------ figures
def _plot_ipc(rows, path, *, dataset: str):
    from ..report.plots import plt as pl
    from ..report.plots import save_figure

    sel = [r for r in rows if r["section"] == "selection"]
    kinds = [k for k in LABEL_KINDS if any(r["labels"] == k for r in sel)]
    fig, axes = pl.subplots(1, len(kinds), figsize=(5.2 * len(kinds), 3.9), squeeze=False, sharey=True)
    for ax, kind in zip(axes[0], kinds, strict=True):
        for spec in dict.fromkeys(r["spec"] for r in sel):
            rs = sorted((r for r in sel if r["spec"] == spec and r["labels"] == kind), key=lambda r: r["ipc"])
            base = spec == "random"
            ax.errorbar([r["ipc"] for r in rs], [100 * r["test_mean"] for r in rs],
                        yerr=[100 * (r["test_std"] if finite(r["test_std"]) else 0) for r in rs], marker="o",
                        capsize=2, lw=2.2 if base else 1.2, color="k" if base else None, label=_short(spec))
        ax.set_xscale("log")
        ax.set_xlabel("images per class (IPC)")
        ax.set_title(f"{dataset}: {kind} labels", fontsize=9)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("test accuracy (%)")
    axes[0][-1].legend(fontsize=7, ncol=2)
    return save_figure(fig, path, svg=True)


def _plot_bytes(rows, path, *, dataset: str):
    from ..report.plots import plt as pl
    from ..report.plots import save_figure

    pts = [r for r in rows if finite(r.get("nbytes")) and finite(r.get("test_mean"))]
    fig, ax = pl.subplots(figsize=(6.4, 4.2))
    style = {("selection", "hard"): ("s", "selection, hard labels"), ("selection", "soft"): ("o",
             "selection, soft labels"), ("codec", "soft"): ("^", "lossy image codec (random, soft)"),
             ("queries", "soft"): ("D", "query budget (random images)")}
    for (section, kind), (marker, label) in style.items():
        rs = [r for r in pts if r["section"] == section and r["labels"] == kind]
        if rs:
            ax.scatter([r["nbytes"] for r in rs], [100 * r["test_mean"] for r in rs], marker=marker, s=22,
                       alpha=0.8, label=label)
    front = pareto_front([r["nbytes"] for r in pts], [r["test_mean"] for r in pts])
    ax.plot([pts[i]["nbytes"] for i in front], [100 * pts[i]["test_mean"] for i in front], "k-", lw=1,
            label="frontier")
    for i in front:
        ax.annotate(f"{pts[i]['method']}@{pts[i]['ipc']}", (pts[i]["nbytes"], 100 * pts[i]["test_mean"]),
                    fontsize=6, xytext=(3, -8), textcoords="offset points")
    ax.set_xscale("log")
    ax.set_xlabel("stored bytes (images + labels)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"{dataset}: accuracy vs stored bytes", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return save_figure(fig, path, svg=True)


__all__ = ["DEFAULT_METHODS", "VARIANTS", "method_specs", "study_pruning", "summarize", "verdict"]
