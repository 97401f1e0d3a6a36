"""``run``, ``expert train``, ``distill``, ``evaluate`` and ``diagnose``: each one library call, printed."""

from __future__ import annotations

from .common import add_common, console, make_lab, positive_int


def register(sub) -> None:
    r = sub.add_parser(
        "run", help="main job: expert, epoch choice on validation, hard vs soft at IPC 1/10/50"
    )
    add_common(r)
    r.add_argument("--protocol", default="clean", choices=["clean", "paper"])
    r.add_argument("--seeds", type=positive_int, default=None,
                   help="number of student seeds per cell, 0..N-1 (default: the preset's)")
    r.add_argument("--ipc", type=positive_int, nargs="+", default=None, help="IPC values (default: preset's)")
    r.add_argument("--student-epochs", type=positive_int, default=None, help="override student epochs")
    r.add_argument("--precision", default=None, choices=["auto", "fp32", "bf16"],
                   help="student compute precision (default: the preset's, auto = bf16 where native)")
    r.add_argument("--compile", default=None, choices=["auto", "on", "off"],
                   help="compile the student training graph (default auto: when a cell has >= 150 steps)")
    r.set_defaults(fn=cmd_run)

    e = sub.add_parser("expert", help="train and inspect experts")
    esub = e.add_subparsers(dest="expert_command", required=True)
    et = esub.add_parser("train", help="train (or resume, or reuse) an expert, one checkpoint per epoch")
    add_common(et)
    et.add_argument("--model", default=None)
    et.add_argument("--width", type=positive_int, default=None)
    et.add_argument(
        "--epochs", type=positive_int, default=None, help="passes over the pool (without --steps)"
    )
    et.add_argument("--steps", type=positive_int, default=None, help="optimizer steps in all")
    et.add_argument("--lr", type=float, default=None)
    et.add_argument("--seed", type=int, default=None)
    et.add_argument(
        "--train-images", type=positive_int, default=None, help="images per expert epoch (default: all)"
    )
    et.set_defaults(fn=cmd_expert_train)

    d = sub.add_parser("distill", help="build a compressed set: random real images + expert labels")
    add_common(d)
    d.add_argument("--ipc", type=positive_int, required=True)
    d.add_argument("--expert-epoch", type=int, default=None)
    d.add_argument(
        "--temperature", type=float, default=None, help="true temperature T: softmax(z / T) (default 1)"
    )
    d.add_argument("--ensemble", type=positive_int, default=None, help="experts averaged (default 1)")
    d.add_argument("--transform", default="none", help='label transform, e.g. "topk:k=3" or "swap:i=1"')
    d.add_argument("--codec", default=None, help='label codec, e.g. fp32, fp16, "topk:k=2,values=fp16", hard')
    d.add_argument("--image-codec", default="raw", help="raw, png or zlib")
    d.add_argument("--selection", "--select", default="random",
                   help='which images, e.g. random, "ce-bin:bin=0,epoch=3" or "el2n:epoch=3,keep=easy" '
                        "(`softlabels selections` lists them)")
    d.add_argument("--queries", default="all",
                   help='label-query budget, e.g. "uncertainty:q=20,proxy=1": only q images get expert '
                        "labels")
    d.add_argument("--hard", action="store_true", help="hard labels instead of expert soft labels")
    d.add_argument("--seed", type=int, default=0, help="image selection seed")
    d.add_argument("--overwrite", action="store_true")
    d.add_argument("-o", "--output", required=True, help="file to write (.safetensors)")
    d.set_defaults(fn=cmd_distill)

    v = sub.add_parser(
        "evaluate", help="train students on a compressed set (ours, or images + labels from elsewhere)"
    )
    add_common(v)
    v.add_argument(
        "set", help=".safetensors compressed set, or .npz/.safetensors with images + labels/targets"
    )
    v.add_argument(
        "--seeds", type=positive_int, default=3, help="number of student seeds, 0..N-1 (default 3)"
    )
    v.add_argument("--protocol", default="clean", choices=["clean", "paper"])
    v.add_argument("--student-epochs", type=positive_int, default=None)
    v.set_defaults(fn=cmd_evaluate)

    g = sub.add_parser("diagnose", help="label diagnostics of a set: cleanlab label issues, entropy, JSD")
    add_common(g)
    g.add_argument("set", help=".safetensors compressed set, or .npz/.safetensors with images + labels")
    g.add_argument("--pool", action="store_true", help="also the pool the set's expert labels, and each "
                                                       "set image's place in it")
    g.add_argument("--no-cleanlab", action="store_true", help="our diagnostics only (no cleanlab)")
    g.add_argument("--top", type=positive_int, default=10, help="worst samples listed (default 10)")
    g.add_argument("--json", default=None, help="write the whole report (per-sample scores) to this file")
    g.set_defaults(fn=cmd_diagnose)


def _run_preset(args):
    from ..presets import get_preset

    preset = get_preset(args.preset)
    if args.student_epochs:
        preset = preset.replace(
            student_length_by_ipc={}, student=preset.student.replace(epochs=args.student_epochs, steps=None)
        )
    if args.ipc:
        if len(set(args.ipc)) != len(args.ipc):
            raise ValueError(f"--ipc lists a value twice: {args.ipc}; give each IPC once")
        preset = preset.replace(ipcs=tuple(args.ipc))
    if args.precision:
        preset = preset.replace(student=preset.student.replace(precision=args.precision))
    if args.compile:
        preset = preset.replace(student=preset.student.replace(compile=args.compile))
    return preset


def cmd_run(args) -> int:
    from ..main_job import run_baseline

    preset = _run_preset(args)
    lab = make_lab(args, preset)
    con = console()
    con.print(f"[bold]softlabels run[/] preset={preset.name} dataset={lab.data.name} device={lab.device} "
              f"out={lab.out_dir}")
    seeds = None if args.seeds is None else tuple(range(args.seeds))
    with lab:
        result = run_baseline(lab, preset, protocol=args.protocol, seeds=seeds)
    _print_baseline(con, result)
    con.print(
        f"report: {result.report}\nplot:   {result.plot}\nresults store: {lab.out_dir / 'results.sqlite'}"
    )
    return 0


def _print_baseline(con, result) -> None:
    from rich.table import Table

    from ..main_job import gain_text

    t = Table(title=f"soft vs hard labels ({result.protocol} protocol: final-epoch test accuracy)")
    for col in (
        "IPC",
        "labels",
        "expert epoch",
        "test acc %",
        "soft - hard [95% CI]",
        "seeds",
        "steps",
        "bytes",
        "wall s",
    ):
        t.add_column(col, justify="right")
    for r in result.rows:
        t.add_row(
            str(r.ipc),
            r.label,
            "" if r.expert_epoch is None else str(r.expert_epoch),
            f"{100 * r.mean:.1f} ± {100 * r.std:.1f}",
            gain_text(r.gain),
            str(r.seeds),
            str(r.student_steps),
            f"{r.nbytes:,}",
            f"{r.wall_s:.0f}",
        )
    con.print(t)
    for w in result.warnings:
        con.print(f"[bold red]warning:[/] {w}")
    con.print(f"total wall time: {result.wall_s:.0f} s")


def cmd_expert_train(args) -> int:
    from ..presets import get_preset

    preset = get_preset(args.preset)
    given = {
        "model": args.model,
        "width": args.width,
        "epochs": args.epochs,
        "lr": args.lr,
        "seed": args.seed,
        "train_images": args.train_images,
    }
    changes = {k: v for k, v in given.items() if v is not None}
    if args.steps is not None:  # a new budget: the preset's checkpoints beyond it are dropped
        changes.update(
            steps=args.steps, checkpoints=tuple(c for c in preset.expert.checkpoints if c < args.steps)
        )
    recipe = preset.expert.replace(**changes)
    lab = make_lab(args, preset)
    traj = lab.expert(recipe)
    con = console()
    con.print(f"expert {traj.key}: {traj.steps_done}/{traj.manifest['total_steps']} steps, "
              f"{traj.epochs_done} checkpoints, at {traj.path}")
    for h in traj.history():
        val = 100 * h.get("val_acc", float("nan"))
        con.print(
            f"  epoch {h['epoch']:3d}  step {h['step']:6d}  val {val:5.1f}%  test {100 * h['test_acc']:5.1f}%"
        )
    return 0


def distill_spec(args):
    """The SetSpec of ``softlabels distill``'s options; soft-label options with ``--hard`` are an error
    (they would be recorded but do nothing)."""
    from ..config import LabelSpec
    from ..sets.spec import SetSpec

    if args.hard:
        given = [f for f, v in (("--expert-epoch", args.expert_epoch), ("--temperature", args.temperature),
                                ("--ensemble", args.ensemble)) if v is not None]
        if given:
            raise ValueError(f"--hard takes no soft-label options; drop {', '.join(given)}")
        label = LabelSpec(kind="hard", transform=args.transform, codec=args.codec or "hard")
    else:
        if args.expert_epoch is None:
            raise ValueError(
                "soft labels need --expert-epoch E (the expert checkpoint that labels the images); "
                "or pass --hard"
            )
        label = LabelSpec(kind="soft", expert_epoch=args.expert_epoch,
                          temperature=1.0 if args.temperature is None else args.temperature,
                          ensemble=args.ensemble or 1, transform=args.transform, codec=args.codec or "fp32")
    return SetSpec(ipc=args.ipc, label=label, selection=args.selection, image_seed=args.seed,
                   image_codec=args.image_codec, queries=args.queries)


def cmd_distill(args) -> int:
    from ..distill import distill
    from ..presets import get_preset

    spec = distill_spec(args)  # every option checked before any training
    preset = get_preset(args.preset)
    lab = make_lab(args, preset)
    cset = distill(lab, spec, expert=preset.expert, output=args.output, overwrite=args.overwrite)
    nb = cset.nbytes
    print(
        f"wrote {args.output}: {len(cset)} images, {cset.num_classes} classes, payload {nb['total']:,} bytes "
        f"(images {nb['images']:,} with {spec.image_codec}, labels {nb['labels']:,} with {spec.label.codec})"
    )
    return 0


def cmd_evaluate(args) -> int:
    from ..evaluate import evaluate_set
    from ..presets import get_preset

    preset = get_preset(args.preset)
    lab = make_lab(args, preset)
    with lab:
        ev = evaluate_set(
            lab,
            args.set,
            preset=preset,
            seeds=tuple(range(args.seeds)),
            protocol=args.protocol,
            student_epochs=args.student_epochs,
        )
    print(f"{args.set}: {ev.images} images (IPC {ev.ipc:g}, {ev.label_kind} labels), {ev.nbytes:,} bytes; "
          f"{ev.protocol} test accuracy {100 * ev.mean:.2f} ± {100 * ev.std:.2f} % over {len(ev.accs)} seeds "
          f"({ev.student_epochs} student epochs)")
    return 0


def cmd_diagnose(args) -> int:
    from ..diagnose import diagnose_set
    from ..presets import get_preset

    lab = make_lab(args, get_preset(args.preset))
    with lab:
        d = diagnose_set(lab, args.set, pool=args.pool, cleanlab=not args.no_cleanlab, top=args.top)
    for name, rep in (("set", d.set_report), ("pool", d.pool_report)):
        if rep is None:
            continue
        s = rep["summary"]
        line = (f"{name}: {rep['n']} images; mean entropy {s['mean_entropy']:.3f} nats, mean p_true "
                f"{s['mean_true_class_prob']:.3f}, argmax = class {100 * s['accuracy']:.1f}%, mean JS "
                f"distance to the class {rep['mean_js_to_class']:.3f}")
        if "cleanlab" in rep:
            c = rep["cleanlab"]
            line += (f"; cleanlab flags {c['num_issues']} ({100 * c['issue_fraction']:.1f}%), "
                     f"worst {c['issues']}")
        print(line)
        overlaps = ", ".join(f"{o['cls']}->{o['other']} {o['mass']:.3f}" for o in rep["class_overlaps"][:5])
        print(f"  strongest class overlaps (mean label mass): {overlaps}")
        worst = ", ".join(f"#{w['index']} (class {w['cls']}, p_true {w['p_true']:.3f})" for w in rep["worst"])
        print(f"  lowest p_true: {worst}")
    if d.set_in_pool:
        low = sorted(d.set_in_pool, key=lambda r: r["class_percentile"])[: args.top]
        print("set images least trusted within their class in the pool: " + ", ".join(
            f"#{r['index']} ({100 * r['class_percentile']:.0f}th pct)" for r in low))
    if args.json:
        print(f"wrote {d.save(args.json)}")
    return 0
