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
    _add_expert_dir(r)
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
    kind = d.add_mutually_exclusive_group()
    kind.add_argument("--hard", action="store_true", help="hard labels instead of expert soft labels")
    kind.add_argument("--learned", action="store_true",
                      help="labels learned by back-propagation through unrolled students (no expert)")
    d.add_argument("--learner", default=None,
                   help='learned-label options, e.g. "bptt:meta_steps=200,inner_steps=10" (with --learned)')
    d.add_argument("--seed", type=int, default=0, help="image selection seed (and label-learning seed)")
    d.add_argument("--overwrite", action="store_true")
    d.add_argument("-o", "--output", required=True, help="file to write (.safetensors)")
    _add_expert_dir(d)
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
    v.add_argument("--loss", default=None, help='student loss, e.g. "kl:t=4" (see `softlabels losses`)')
    v.add_argument("--image-space", default=None, choices=["pixels", "model"],
                   help="float images of a file: pixels in [0, 1] (default) or already the model's input")
    v.add_argument("--quantize", action="store_true", help="store a file's float pixels as uint8")
    v.add_argument("--against-baselines", action="store_true",
                   help="also judge the set against its images with hard / our labels and random real images "
                        "with soft / hard labels at the same IPC and at the same bytes, with paired CIs")
    v.add_argument("--expert-epoch", type=positive_int, default=None,
                   help="our expert's epoch for --against-baselines (default: chosen on validation)")
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

    preset = get_preset(args.preset, dataset=args.dataset)
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


def _add_expert_dir(p) -> None:
    p.add_argument("--expert-dir", default=None,
                   help="label with checkpoints made elsewhere: a folder of <name><epoch>.safetensors / .pt "
                        "/ .pth state dicts (torch files read with weights_only=True only)")
    p.add_argument("--expert-model", default=None, help="the --expert-dir checkpoints' model, e.g. resnet18")
    p.add_argument("--expert-width", type=positive_int, default=None, help="its width (default: the model's)")


def _external_expert(args, lab):
    """The --expert-dir trajectory (None without it); --expert-model is required with it."""
    if args.expert_dir is None:
        if args.expert_model or args.expert_width:
            raise ValueError("--expert-model and --expert-width describe --expert-dir: give the folder too")
        return None
    if not args.expert_model:
        raise ValueError("--expert-dir needs --expert-model, its checkpoints' architecture (e.g. resnet18)")
    from ..experts_external import load_external_trajectory

    return load_external_trajectory(args.expert_dir, model=args.expert_model, width=args.expert_width,
                                    prepared=lab.prepared, root=lab.out_dir)


def cmd_run(args) -> int:
    from ..main_job import run_baseline

    preset = _run_preset(args)
    lab = make_lab(args, preset)
    external = _external_expert(args, lab)
    con = console()
    con.print(f"[bold]softlabels run[/] preset={preset.name} dataset={lab.data.name} device={lab.device} "
              f"out={lab.out_dir}")
    seeds = None if args.seeds is None else tuple(range(args.seeds))
    with lab:
        result = run_baseline(lab, preset, protocol=args.protocol, seeds=seeds, experts=external)
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

    preset = get_preset(args.preset, dataset=args.dataset)
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

    learner = getattr(args, "learner", None)
    if learner is not None and not getattr(args, "learned", False):
        raise ValueError("--learner sets the options of learned labels; add --learned")
    if args.hard or getattr(args, "learned", False):
        flag = "--hard" if args.hard else "--learned"
        given = [f for f, v in (("--expert-epoch", args.expert_epoch), ("--temperature", args.temperature),
                                ("--ensemble", args.ensemble)) if v is not None]
        if given:
            raise ValueError(f"{flag} takes no soft-label options; drop {', '.join(given)}")
        label = (LabelSpec(kind="hard", transform=args.transform, codec=args.codec or "hard") if args.hard
                 else LabelSpec(kind="learned", learner=learner, transform=args.transform,
                                codec=args.codec or "fp32"))
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
    preset = get_preset(args.preset, dataset=args.dataset)
    lab = make_lab(args, preset)
    external = _external_expert(args, lab)
    cset = distill(lab, spec, expert=preset.expert if external is None else external, output=args.output,
                   overwrite=args.overwrite)
    nb = cset.nbytes
    print(
        f"wrote {args.output}: {len(cset)} images, {cset.num_classes} classes, payload {nb['total']:,} bytes "
        f"(images {nb['images']:,} with {spec.image_codec}, labels {nb['labels']:,} with {spec.label.codec})"
    )
    return 0


def cmd_evaluate(args) -> int:
    from ..config import StudentRecipe
    from ..evaluate import evaluate_set
    from ..presets import get_preset

    if args.loss is not None:
        StudentRecipe(loss=args.loss)  # an unknown loss fails here, before any training
    if args.against_baselines and (args.protocol != "clean" or args.student_epochs):
        raise ValueError("--against-baselines uses the clean protocol and the preset's student lengths; "
                         "drop --protocol paper / --student-epochs")
    if args.expert_epoch is not None and not args.against_baselines:
        raise ValueError("--expert-epoch applies to --against-baselines only")
    preset = get_preset(args.preset, dataset=args.dataset)
    lab = make_lab(args, preset)
    with lab:
        if args.against_baselines:
            return _against(args, lab, preset)
        ev = evaluate_set(
            lab,
            args.set,
            preset=preset,
            seeds=tuple(range(args.seeds)),
            protocol=args.protocol,
            student_epochs=args.student_epochs,
            loss=args.loss,
            image_space=args.image_space,
            quantize=args.quantize,
        )
    print(f"{args.set}: {ev.images} images (IPC {ev.ipc:g}, {ev.label_kind} labels), {ev.nbytes:,} bytes; "
          f"{ev.protocol} test accuracy {100 * ev.mean:.2f} ± {100 * ev.std:.2f} % over {len(ev.accs)} seeds "
          f"({ev.student_epochs} student epochs)")
    return 0


def _against(args, lab, preset) -> int:
    from rich.table import Table

    from ..against import against_baselines
    from ..main_job import gain_text

    res = against_baselines(
        lab,
        args.set,
        preset=preset,
        seeds=tuple(range(args.seeds)),
        expert_epoch=args.expert_epoch,
        image_space=args.image_space,
        quantize=args.quantize,
        loss=args.loss,
    )
    t = Table(
        title=f"{res.source}: IPC {res.ipc}, {res.label_kind} labels, {res.nbytes:,} bytes (clean protocol, "
        f"final-epoch test accuracy, {len(res.seeds)} paired repetitions)"
    )
    for col in ("row", "IPC", "bytes", "test %", "set minus row (95% CI, pts)"):
        t.add_column(col)
    for r in res.rows:
        gain = gain_text((r["gain"], r["gain_lo"], r["gain_hi"])) if "gain" in r else ""
        t.add_row(
            r["what"],
            str(r["ipc"]),
            f"{r['nbytes']:,}",
            f"{100 * r['mean']:.1f} ± {100 * r['std']:.1f}",
            gain,
        )
    con = console()
    con.print(t)
    s = res.score
    con.print(
        f"gain over the soft-label baseline: {gain_text(res.gain)} pts; label-robust score "
        f"{100 * s['lrs']:.1f} (HLR {100 * s['hlr']:.1f}, IOR {100 * s['ior']:.1f} vs {s['random_row']}, "
        f"w={s['w']:g}; full-data reference: our expert, {100 * s['full_hard']:.1f}%); expert epochs "
        f"{res.expert_epochs} chosen on validation" + ("" if args.expert_epoch is None else " (given)")
    )
    for note in res.notes:
        con.print(f"note: {note}")
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
