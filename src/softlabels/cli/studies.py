"""``study``, ``studies`` and ``report``: a study of the paper as one ``run_study`` call; the report."""

from __future__ import annotations

import inspect
import math
from pathlib import Path
from typing import Any

from .common import DEFAULT_OUT, add_common, console, make_lab, parse_value, positive_int

SCALE_CHOICES = ("quick", "full")
# options the study command sets itself, and those a user may not pass through --option
_RESERVED = {"lab", "scale"}


def register(sub) -> None:
    """Add the ``study``, ``studies`` and ``report`` subcommands to ``sub``."""
    s = sub.add_parser("study", help="run one of the paper's studies (resumable); --list lists them",
                       description="Run a study: its table, finding, figures and summary.json go to "
                                   "OUT/studies/NAME/. Interrupted runs resume; re-runs recompute nothing.")
    add_common(s, preset=False)
    s.add_argument("name", nargs="?", help="study name (see `softlabels studies`)")
    s.add_argument("--list", action="store_true", help="list the studies and exit")
    s.add_argument("--scale", default="quick", choices=SCALE_CHOICES,
                   help="quick: CPU-sized grid sharing the main job's expert (default); "
                        "full: the paper's grid")
    s.add_argument("--preset", default=None,
                   help="override the scale's settings bundle (quick: default, full: paper)")
    s.add_argument(
        "--ipc", type=positive_int, nargs="+", default=None, help="IPC values (default: the study's)"
    )
    s.add_argument("--seeds", type=positive_int, default=None,
                   help="number of student seeds per cell, 0..N-1 (default: the study's)")
    s.add_argument("--student-epochs", type=positive_int, default=None, help="override student epochs")
    s.add_argument("-O", "--option", action="append", default=[], metavar="KEY=VALUE",
                   help="any other study option, e.g. -O epochs=1,4,10 -O temperatures=1,2,4 (repeatable)")
    s.set_defaults(fn=cmd_study)

    ls = sub.add_parser("studies", help="list the studies")
    ls.set_defaults(fn=cmd_studies)

    r = sub.add_parser("report", help="gather every study's results into OUT/report-all.md (and .html)")
    r.add_argument("--out", default=DEFAULT_OUT, help=f"output folder (default: ./{DEFAULT_OUT})")
    r.add_argument("--html", action="store_true", help="also write report-all.html")
    r.set_defaults(fn=cmd_report)


def cmd_studies(args) -> int:
    from ..studies import list_studies

    studies = list_studies()
    width = max((len(n) for n in studies), default=0)
    for name, doc in studies.items():
        print(f"{name:{width}s}  {doc}")
    return 0


def study_options(args, fn) -> dict[str, Any]:
    """The keyword options for study ``fn`` from the command line, checked against its signature."""
    options: dict[str, Any] = {}
    if args.ipc:
        if len(set(args.ipc)) != len(args.ipc):
            raise ValueError(f"--ipc lists a value twice: {args.ipc}; give each IPC once")
        options["ipcs"] = list(args.ipc)
    if args.seeds is not None:
        options["seeds"] = list(range(args.seeds))
    if args.student_epochs is not None:
        options["student_epochs"] = args.student_epochs
    for item in args.option:
        key, eq, value = item.partition("=")
        key = key.strip().replace("-", "_")
        if not eq or not key:
            raise ValueError(f"--option takes KEY=VALUE, got {item!r}")
        options[key] = parse_value(value)
    if args.preset:
        options["preset"] = args.preset
    params = inspect.signature(fn).parameters
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        valid = sorted(n for n, p in params.items()
                       if p.kind is inspect.Parameter.KEYWORD_ONLY and n not in _RESERVED)
        bad = sorted(k for k in options if k not in valid or k in _RESERVED)
        if bad:
            flags = {"ipcs": "--ipc", "seeds": "--seeds", "student_epochs": "--student-epochs",
                     "preset": "--preset"}
            shown = ", ".join(flags.get(k, k) for k in bad)
            raise ValueError(f"study {args.name!r} does not take {shown}; "
                             f"its options are: {', '.join(valid)}")
    return options


def cmd_study(args) -> int:
    if args.list:
        return cmd_studies(args)
    if not args.name:
        raise ValueError("give a study name, e.g. `softlabels study swap`; `softlabels studies` lists them")
    from ..presets import get_preset
    from ..studies import STUDIES, run_study
    from ..studies import base as study_base

    fn = STUDIES.get(args.name)  # unknown names: the registry's closest-match error
    options = study_options(args, fn)
    preset = get_preset(args.preset) if args.preset else study_base.base_settings(args.scale)
    lab = make_lab(args, preset)
    con = console()
    con.print(f"[bold]softlabels study {args.name}[/] scale={args.scale} dataset={lab.data.name} "
              f"device={lab.device} out={lab.out_dir}")
    with lab:
        result = run_study(args.name, lab, scale=args.scale, **options)
    con.print(rows_table(result.rows, title=f"{result.name} ({result.protocol} protocol)"))
    con.print(f"[bold]finding:[/] {result.finding}")
    folder = study_base.study_dir(lab, args.name)
    figs = ", ".join(Path(f).name for f in result.figures) or "none"
    con.print(f"figures ({figs}), table.csv and summary.json in {folder}")
    con.print(f"gather all studies with: softlabels report --out {lab.out_dir}")
    return 0


def cmd_report(args) -> int:
    from ..report.build import build_report

    path = build_report(Path(args.out), html=args.html)
    print(f"wrote {path}" + (f" and {path.with_suffix('.html')}" if args.html else ""))
    return 0


def fmt(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{v:.4g}"
    return str(v)


def rows_table(rows: list[dict], *, title: str = ""):
    """A rich table of tidy rows (the union of their keys as columns)."""
    from rich.table import Table

    cols = list(dict.fromkeys(k for r in rows for k in r))
    t = Table(title=title)
    for c in cols:
        t.add_column(c, justify="right")
    for r in rows:
        t.add_row(*(fmt(r.get(c)) for c in cols))
    return t


__all__ = ["register", "cmd_study", "cmd_studies", "cmd_report", "rows_table"]
