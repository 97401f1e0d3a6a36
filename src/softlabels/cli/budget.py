"""``softlabels budget SIZE``: the most accurate stored training set within a byte budget."""

from __future__ import annotations

from pathlib import Path

from ..analysis.budget import BudgetAnswer, Cell, answer_json, best_within_budget, cells_of
from ..sets.label_codecs import short_label_codec
from ..units import format_bytes, parse_size
from .common import add_common, console, make_lab


def register(sub) -> None:
    """Add the ``budget`` command to the ``softlabels`` sub-parsers."""
    p = sub.add_parser(
        "budget",
        help="the most accurate stored training set within a byte budget (e.g. 64KB)",
        description="Answer 'what is the most accurate training set I can store in SIZE bytes?' "
        "from stored results (every run records its set's measured bytes); --fill "
        "first trains bytes-study configurations of about that size.",
    )
    add_common(p)
    p.add_argument(
        "size", metavar="SIZE", help="byte budget: 64KB, 1MB, 1.5MiB or 4096 (KB = 1000 B, KiB = 1024 B)"
    )
    p.add_argument(
        "--fill",
        action="store_true",
        help="first train the missing bytes-study configurations whose sets take 1/4 to all of SIZE",
    )
    p.add_argument(
        "--label-kind", choices=["soft", "hard"], default=None, help="only soft or only hard labels"
    )
    p.add_argument(
        "--scale", choices=["quick", "full"], default="quick", help="grid and student length for --fill"
    )
    p.add_argument(
        "--study", default=None, help="only results of this study (default: all; with --fill: bytes)"
    )
    p.add_argument(
        "--select-on",
        choices=["val", "test"],
        default="val",
        help="choose the winner on validation (default, clean protocol) or test accuracy",
    )
    p.add_argument("--json", action="store_true", help="print the answer as JSON")
    p.set_defaults(fn=cmd_budget)


def cmd_budget(args) -> int:
    from ..presets import get_preset

    budget = parse_size(args.size)
    preset = get_preset(args.preset)
    data = preset.data if args.dataset is None else preset.data.replace(name=args.dataset)
    select_on = "val_acc" if args.select_on == "val" else "test_acc"
    store_path = Path(args.out) / "results.sqlite"
    if args.fill:
        from ..studies.bytes_fill import fill_budget

        lab = make_lab(args, preset)
        answer = fill_budget(
            lab,
            budget,
            scale=args.scale,
            label_kind=args.label_kind,
            preset=None if args.preset == "default" else preset,
            select_on=select_on,
            study=args.study or "bytes",
        )
        source: object = lab.store
    else:
        source = store_path
        answer = best_within_budget(
            source,
            budget,
            dataset=data.name,
            study=args.study,
            label_kind=args.label_kind,
            data=data,
            select_on=select_on,
        )
    if args.json:
        print(answer_json(answer))
        return 0 if answer is not None else 1
    if answer is None:
        print(
            no_fit_message(
                source,
                budget,
                size_text=args.size,
                dataset=data.name,
                data=data,
                study=args.study,
                label_kind=args.label_kind,
                select_on=select_on,
                filled=args.fill,
                preset=args.preset,
            )
        )
        return 1
    _print_answer(answer, dataset=data.name)
    return 0


def no_fit_message(
    source: object,
    budget: int,
    *,
    size_text: str,
    dataset: str,
    data=None,
    study: str | None = None,
    label_kind: str | None = None,
    select_on: str = "val_acc",
    filled: bool = False,
    preset: str = "default",
) -> str:
    """Why nothing was found, and what to run next."""
    where = (
        f"{dataset}"
        + (f", study {study}" if study else "")
        + (f", {label_kind} labels" if label_kind else "")
    )
    head = f"No stored configuration ({where}) fits in {format_bytes(budget)} ({budget:,} bytes)."
    if isinstance(source, Path) and not source.exists():
        why = f"There are no stored results in {source.parent} yet."
    else:
        every = cells_of(source, dataset=dataset, study=study, label_kind=label_kind)
        mine = cells_of(source, dataset=dataset, study=study, label_kind=label_kind, data=data)
        if not every:
            why = f"No results for {dataset} are stored" + (f" for study {study}." if study else ".")
        elif not mine:
            why = (
                f"{len(every)} stored configurations of {dataset} use another data split than the "
                f"'{preset}' preset's; pass the --preset they were made with."
            )
        else:
            smallest = min(mine, key=lambda c: c.bytes_total)
            if smallest.bytes_total <= budget and select_on == "val_acc":
                why = (
                    "The configurations that fit have no validation accuracy (no validation split); "
                    "pass --select-on test."
                )
            else:
                size = format_bytes(smallest.bytes_total)
                why = f"The smallest stored set needs {size}: {smallest.describe()}."
    if filled:
        hint = (
            "--fill found no bytes-study set of this size: even one image per class with the smallest "
            "codec is larger. Try a larger SIZE."
        )
    else:
        hint = (
            f"Run `softlabels budget {size_text} --fill` to train candidate sets of about that size, or "
            "`softlabels study bytes` for the whole accuracy-vs-bytes grid."
        )
    return f"{head}\n{why}\n{hint}"


def _row(role: str, c: Cell) -> list[str]:
    return [
        role,
        str(c.ipc),
        c.label_kind,
        "" if c.expert_epoch is None else str(c.expert_epoch),
        short_label_codec(c.label_codec),
        c.image_codec,
        f"{100 * c.mean:.1f} ± {100 * c.std:.1f}",
        str(c.n),
        f"{c.bytes_total:,}",
        format_bytes(c.bytes_total),
        c.study,
    ]


def _print_answer(answer: BudgetAnswer, *, dataset: str) -> None:
    from rich.table import Table

    con = console()
    t = Table(
        title=f"{dataset}: best stored training set within {format_bytes(answer.budget)} "
        f"({answer.budget:,} bytes)"
    )
    for col in (
        "",
        "IPC",
        "labels",
        "expert epoch",
        "label codec",
        "image codec",
        "test acc %",
        "seeds",
        "bytes",
        "",
        "study",
    ):
        t.add_column(
            col, justify="left" if col in ("", "labels", "label codec", "image codec", "study") else "right"
        )
    if answer.cell is not None:
        t.add_row(*_row("[bold]chosen[/]", answer.cell))
    for role, c in (
        ("best hard within budget", answer.best_hard),
        ("best soft within budget", answer.best_soft),
    ):
        if c is not None and c is not answer.cell:
            t.add_row(*_row(role, c))
    o = answer.best_overall
    if o is not None and o is not answer.cell and o.bytes_total > answer.budget:
        t.add_row(*_row("best at any size", o))
    con.print(t)
    bi = "?" if answer.bytes_images is None else f"{answer.bytes_images:,}"
    bl = "?" if answer.bytes_labels is None else f"{answer.bytes_labels:,}"
    con.print(
        f"chosen: {answer.describe()}; {bi} image bytes + {bl} label bytes = {answer.bytes_total:,} bytes"
    )
    con.print(f"trade-off: {answer.traded}")
    picked = "validation" if answer.selected_on == "val_acc" else "test"
    con.print(
        f"{answer.fits} stored configurations fit; picked on {picked} accuracy, final-epoch test accuracy "
        "shown (mean ± std over seeds)."
    )
