"""``datasets``, ``models``, ``losses``, ``selections`` and ``results``: what is registered and stored."""

from __future__ import annotations

from pathlib import Path

from .common import DEFAULT_OUT, console, key_values, positive_int


def register(sub) -> None:
    sub.add_parser("datasets", help="list datasets").set_defaults(fn=cmd_datasets)
    sub.add_parser("models", help="list models").set_defaults(fn=cmd_models)
    sub.add_parser("losses", help="list student losses (StudentRecipe.loss, --loss)").set_defaults(
        fn=cmd_losses
    )
    sub.add_parser("selections", help="list image selections and label-query budgets").set_defaults(
        fn=cmd_selections)
    q = sub.add_parser("results", help="list, filter and export stored results")
    q.add_argument("--out", default=DEFAULT_OUT)
    q.add_argument("--study", default=None)
    q.add_argument("--where", action="append", help="KEY=VALUE filter (promoted column or config.KEY)")
    q.add_argument("--limit", type=positive_int, default=None)
    q.add_argument("--csv", default=None)
    q.add_argument("--parquet", default=None)
    q.set_defaults(fn=cmd_results)


def _print_names(names: dict[str, str]) -> None:
    for name, doc in names.items():
        print(f"{name:16s} {doc}")


def cmd_datasets(args) -> int:
    from ..data import list_datasets

    _print_names(list_datasets())
    return 0


def cmd_models(args) -> int:
    from ..models import list_models

    _print_names(list_models())
    return 0


def cmd_losses(args) -> int:
    from ..engine.losses import list_losses

    _print_names(list_losses())
    return 0


def cmd_selections(args) -> int:
    from ..sets.queries import list_queries
    from ..sets.selection import list_selections

    print("image selections (--selection):")
    _print_names(list_selections())
    print("label-query budgets (--queries):")
    _print_names(list_queries())
    return 0


def cmd_results(args) -> int:
    from rich.table import Table

    from ..store import ResultsStore

    where = key_values(args.where, "--where") or None
    path = Path(args.out) / "results.sqlite"
    with ResultsStore(path) as store:
        if args.csv:
            print(f"wrote {store.export_csv(args.csv, study=args.study, where=where)} rows to {args.csv}")
        if args.parquet:
            print(
                f"wrote {store.export_parquet(args.parquet, study=args.study, where=where)} rows to "
                f"{args.parquet}"
            )
        if args.csv or args.parquet:
            return 0
        recs = store.query(study=args.study, where=where, limit=args.limit)
    t = Table(title=f"{len(recs)} runs in {path}")
    for col in ("study", "dataset", "ipc", "label", "epoch", "T", "codec", "seed", "test %", "bytes"):
        t.add_column(col)
    for r in recs:
        c, m = r.config, r.metrics
        t.add_row(r.study, str(c.get("dataset")), str(c.get("ipc")), str(c.get("label", {}).get("kind")),
                  str(c.get("expert_epoch")), str(c.get("temperature")), r.codec, str(c.get("seed")),
                  f"{100 * m.get('test_acc', float('nan')):.1f}", f"{r.nbytes or 0:,}")
    console().print(t)
    return 0
