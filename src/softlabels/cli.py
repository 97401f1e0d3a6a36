"""The ``softlabels`` command: thin wrappers over the library (each command has a one-call equivalent)."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

DEFAULT_OUT = "softlabels-out"


def _common(p: argparse.ArgumentParser, *, preset: bool = True) -> None:
    p.add_argument("--out", default=DEFAULT_OUT, help=f"output folder (default: ./{DEFAULT_OUT})")
    p.add_argument("--dataset", default=None, help="dataset name (default: the preset's, fashion-mnist)")
    p.add_argument("--root", default=None, help="where the dataset's files are (default: search)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 or auto (default)")
    if preset:
        p.add_argument("--preset", default="default", help="settings bundle: default (CPU), paper (GPU), smoke")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--workers", default="auto", type=_workers,
                   help="where students train: auto (default: parallel processes on CPU only for long "
                        "small-batch sweeps, where it was measured to pay), N processes (1 = all in this "
                        "process), or ray (each student a Ray task; the cluster at RAY_ADDRESS, else a local "
                        "one; needs pip install 'softlabels[ray]')")


def _workers(v: str) -> int | str:
    if v in ("auto", "ray"):
        return v
    try:
        n = int(v)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"--workers takes 'auto', 'ray' or a positive integer, got {v!r}")
    return n


def _lab(args, preset):
    from .lab import Lab

    data = preset.data if args.dataset is None else preset.data.replace(name=args.dataset)
    return Lab(Path(args.out), data=data, device=args.device, root=args.root, progress=not args.quiet,
               workers=args.workers)


def _console():
    import shutil

    from rich.console import Console

    # wide tables stay readable when output goes to a file or pipe (no terminal width to measure)
    return Console(width=None if sys.stdout.isatty() else max(160, shutil.get_terminal_size().columns))


def cmd_run(args) -> int:
    from .baseline import run_baseline, write_baseline_report
    from .config import get_preset

    preset = get_preset(args.preset)
    if args.student_epochs:
        preset = dataclasses.replace(preset, student_epochs_by_ipc={},
                                     student=preset.student.replace(epochs=args.student_epochs))
    if args.ipc:
        preset = dataclasses.replace(preset, ipcs=tuple(args.ipc))
    if args.precision:
        preset = dataclasses.replace(preset, student=preset.student.replace(precision=args.precision))
    if args.compile:
        preset = dataclasses.replace(preset, student=preset.student.replace(compile=args.compile))
    lab = _lab(args, preset)
    con = _console()
    con.print(f"[bold]softlabels run[/] preset={preset.name} dataset={lab.data.name} device={lab.device} "
              f"out={lab.out_dir}")
    result = run_baseline(lab, preset, protocol=args.protocol, seeds=args.seeds)
    md, png = write_baseline_report(result, lab.out_dir, dataset=lab.data.name)
    _print_baseline(con, result)
    con.print(f"report: {md}\nplot:   {png}\nresults store: {lab.out_dir / 'results.sqlite'}")
    return 0


def _print_baseline(con, result) -> None:
    from rich.table import Table

    t = Table(title=f"soft vs hard labels ({result.protocol} protocol: final-epoch test accuracy)")
    for col in ("IPC", "labels", "expert epoch", "test acc %", "seeds", "bytes", "wall s"):
        t.add_column(col, justify="right")
    for r in result.rows:
        t.add_row(str(r.ipc), r.label, "" if r.expert_epoch is None else str(r.expert_epoch),
                  f"{100 * r.mean:.1f} ± {100 * r.std:.1f}", str(r.seeds), f"{r.nbytes:,}", f"{r.wall_s:.0f}")
    con.print(t)
    con.print(f"total wall time: {result.wall_s:.0f} s")


def cmd_datasets(args) -> int:
    from .data import list_datasets

    for name, doc in list_datasets().items():
        print(f"{name:16s} {doc}")
    return 0


def cmd_models(args) -> int:
    from .models import list_models

    for name, doc in list_models().items():
        print(f"{name:16s} {doc}")
    return 0


def cmd_expert_train(args) -> int:
    from .config import get_preset

    preset = get_preset(args.preset)
    changes = {k: v for k, v in {"model": args.model, "width": args.width, "epochs": args.epochs, "lr": args.lr,
                                 "seed": args.seed, "train_images": args.train_images}.items() if v is not None}
    recipe = preset.expert.replace(**changes)
    lab = _lab(args, preset)
    traj = lab.expert(recipe)
    con = _console()
    con.print(f"expert {traj.key}: {traj.epochs_done}/{recipe.epochs} epochs at {traj.path}")
    for h in traj.history():
        con.print(f"  epoch {h['epoch']:3d}  val {100 * h.get('val_acc', float('nan')):5.1f}%  "
                  f"test {100 * h['test_acc']:5.1f}%")
    return 0


def cmd_distill(args) -> int:
    from .config import LabelSpec, get_preset

    preset = get_preset(args.preset)
    lab = _lab(args, preset)
    kind = "hard" if args.hard else "soft"
    label = LabelSpec(kind=kind, expert_epoch=None if args.hard else args.expert_epoch,
                      temperature=args.temperature, ensemble=args.ensemble, transform=args.transform,
                      codec=args.codec or ("hard" if args.hard else "fp32"))
    experts = lab.experts(preset.expert, label.ensemble) if kind == "soft" else []
    from .distill import build_compressed_set

    cset = build_compressed_set(lab.prepared, ipc=args.ipc, label=label, experts=experts, seed=args.seed,
                                image_codec=args.image_codec, device=lab.device)
    path = cset.save(args.output, overwrite=args.overwrite)
    nb = cset.nbytes
    print(f"wrote {path}: {len(cset)} images, {cset.num_classes} classes, payload {nb['total']:,} bytes "
          f"(images {nb['images']:,} with {args.image_codec}, labels {nb['labels']:,} with {label.codec})")
    return 0


def cmd_evaluate(args) -> int:
    from .compressed import CompressedSet
    from .config import get_preset
    from .train import summarize

    preset = get_preset(args.preset)
    cset = CompressedSet.from_file(args.set)
    lab = _lab(args, preset)
    ds = lab.prepared.dataset
    if cset.num_classes != ds.num_classes:
        raise ValueError(f"{args.set} has {cset.num_classes} classes but {ds.name} has {ds.num_classes}")
    if tuple(cset.images.shape[1:]) != ds.image_shape:
        raise ValueError(f"{args.set} images are {tuple(cset.images.shape[1:])} but {ds.name} images are "
                         f"{ds.image_shape}")
    if "mean" not in cset.manifest:
        cset.manifest["mean"], cset.manifest["std"] = list(ds.mean), list(ds.std)
    ipc = max(1, round(cset.ipc))
    recipe = preset.student_for(ipc)
    if args.student_epochs:
        recipe = recipe.replace(epochs=args.student_epochs)
    from .config import LabelSpec

    label = LabelSpec(kind="soft", codec=cset.manifest.get("label_codec", "fp32"),
                      transform=f"user:{cset.content_hash()}")
    res = lab.evaluate(ipc=ipc, label=label, student=recipe, seeds=list(range(args.seeds)), protocol=args.protocol,
                       study="evaluate", extra={"set_hash": cset.content_hash(), "set_file": str(args.set)},
                       make_set=lambda: cset)
    from .train import StudentResult

    results = [StudentResult(**{k: v for k, v in r["metrics"].items() if k in StudentResult.__dataclass_fields__})
               for r in res]
    s = summarize(results, args.protocol)
    print(f"{args.set}: {len(cset)} images (IPC {cset.ipc:g}), {cset.nbytes['total']:,} bytes; "
          f"{args.protocol} test accuracy {100 * s['mean']:.2f} ± {100 * s['std']:.2f} % over {s['n']} seeds "
          f"({recipe.epochs} student epochs)")
    return 0


def cmd_results(args) -> int:
    from .store import ResultsStore

    store = ResultsStore(Path(args.out) / "results.sqlite")
    where = {}
    for w in args.where or []:
        if "=" not in w:
            raise ValueError(f"--where takes KEY=VALUE, got {w!r}")
        k, v = w.split("=", 1)
        where[k] = _parse_value(v)
    if args.csv:
        n = store.export_csv(args.csv, study=args.study, where=where or None)
        print(f"wrote {n} rows to {args.csv}")
    if args.parquet:
        n = store.export_parquet(args.parquet, study=args.study, where=where or None)
        print(f"wrote {n} rows to {args.parquet}")
    if not args.csv and not args.parquet:
        from rich.table import Table

        recs = store.query(study=args.study, where=where or None, limit=args.limit)
        t = Table(title=f"{len(recs)} runs in {store_path(args)}")
        for col in ("study", "dataset", "ipc", "label", "epoch", "T", "codec", "seed", "test %", "bytes"):
            t.add_column(col)
        for r in recs:
            c, m = r.config, r.metrics
            t.add_row(r.study, str(c.get("dataset")), str(c.get("ipc")), str(c.get("label", {}).get("kind")),
                      str(c.get("expert_epoch")), str(c.get("temperature")), r.codec, str(c.get("seed")),
                      f"{100 * m.get('test_acc', float('nan')):.1f}", f"{r.nbytes or 0:,}")
        _console().print(t)
    return 0


def store_path(args) -> Path:
    return Path(args.out) / "results.sqlite"


def _parse_value(v: str):
    for cast in (int, float):
        try:
            return cast(v)
        except ValueError:
            pass
    return v


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="softlabels", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    r = sub.add_parser("run", help="main job: expert, epoch choice on validation, hard vs soft at IPC 1/10/50")
    _common(r)
    r.add_argument("--protocol", default="clean", choices=["clean", "paper"])
    r.add_argument("--seeds", type=int, default=None, help="student seeds per cell (default: preset's)")
    r.add_argument("--ipc", type=int, nargs="+", default=None, help="IPC values (default: preset's)")
    r.add_argument("--student-epochs", type=int, default=None, help="override student epochs")
    r.add_argument("--precision", default=None, choices=["auto", "fp32", "bf16"],
                   help="student compute precision (default: the preset's, auto = bf16 where native)")
    r.add_argument("--compile", default=None, choices=["auto", "on", "off"],
                   help="compile the student training graph (default auto: when a cell has >= 150 steps)")
    r.set_defaults(fn=cmd_run)

    sub.add_parser("datasets", help="list datasets").set_defaults(fn=cmd_datasets)
    sub.add_parser("models", help="list models").set_defaults(fn=cmd_models)

    e = sub.add_parser("expert", help="train and inspect experts")
    esub = e.add_subparsers(dest="expert_command", required=True)
    et = esub.add_parser("train", help="train (or resume, or reuse) an expert, one checkpoint per epoch")
    _common(et)
    et.add_argument("--model", default=None)
    et.add_argument("--width", type=int, default=None)
    et.add_argument("--epochs", type=int, default=None)
    et.add_argument("--lr", type=float, default=None)
    et.add_argument("--seed", type=int, default=None)
    et.add_argument("--train-images", type=int, default=None, help="images per expert epoch (default: all)")
    et.set_defaults(fn=cmd_expert_train)

    d = sub.add_parser("distill", help="build a compressed set: random real images + expert labels")
    _common(d)
    d.add_argument("--ipc", type=int, required=True)
    d.add_argument("--expert-epoch", type=int, default=None)
    d.add_argument("--temperature", type=float, default=1.0, help="true temperature T: softmax(z / T)")
    d.add_argument("--ensemble", type=int, default=1)
    d.add_argument("--transform", default="none", help='label transform, e.g. "topk:k=3" or "swap:i=1"')
    d.add_argument("--codec", default=None, help='label codec, e.g. fp32, fp16, "topk:k=2,values=fp16", hard')
    d.add_argument("--image-codec", default="raw", help="raw, png or zlib")
    d.add_argument("--hard", action="store_true", help="hard labels instead of expert soft labels")
    d.add_argument("--seed", type=int, default=0, help="image selection seed")
    d.add_argument("--overwrite", action="store_true")
    d.add_argument("-o", "--output", required=True, help="file to write (.safetensors)")
    d.set_defaults(fn=cmd_distill)

    v = sub.add_parser("evaluate", help="train students on a compressed set (ours, or images + labels from elsewhere)")
    _common(v)
    v.add_argument("set", help=".safetensors compressed set, or .npz/.safetensors with images + labels/targets")
    v.add_argument("--seeds", type=int, default=3)
    v.add_argument("--protocol", default="clean", choices=["clean", "paper"])
    v.add_argument("--student-epochs", type=int, default=None)
    v.set_defaults(fn=cmd_evaluate)

    q = sub.add_parser("results", help="list, filter and export stored results")
    q.add_argument("--out", default=DEFAULT_OUT)
    q.add_argument("--study", default=None)
    q.add_argument("--where", action="append", help="KEY=VALUE filter (promoted column or config.KEY)")
    q.add_argument("--limit", type=int, default=None)
    q.add_argument("--csv", default=None)
    q.add_argument("--parquet", default=None)
    q.set_defaults(fn=cmd_results)

    for extra in _extensions():
        extra(sub, _common)
    return p


def _extensions():
    """Commands contributed by other modules (studies, report, budget), discovered at import."""
    out = []
    for mod in ("softlabels.studies.cli", "softlabels.budget_cli"):
        try:
            m = __import__(mod, fromlist=["register"])
        except ModuleNotFoundError as e:
            if e.name != mod:
                raise
            continue
        out.append(m.register)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.fn(args) or 0)
    except KeyboardInterrupt:
        print("interrupted: everything finished so far is saved; re-run the same command to resume",
              file=sys.stderr)
        return 130
    except (ValueError, TypeError, FileNotFoundError, FileExistsError, ImportError) as e:
        print(f"softlabels: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
