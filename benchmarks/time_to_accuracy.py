"""Time to accuracy: how long softlabels' students take to reach the accuracy the reference loop reaches at
the paper's budget (3000 epochs of SGD + StepLR), on the same CPU, the same images and the same seeds.

For each (width, IPC): Fashion-MNIST, random real images, hard labels, the clean protocol (final-epoch test
accuracy, mean over student seeds and image draws). Image draw 0 (the main job's) everywhere, and at IPC 1
also draws 1 and 2 (``IMAGE_SEEDS``): with one image per class the draw moves accuracy by more than any
recipe.
- The reference's accuracy at 3000 epochs comes from a recorded run of this script (``--record``; kept in
  ``time_to_accuracy.json`` beside it with its date), because it takes hours here.
- The reference's time is measured in THIS run: seconds per epoch (a short timed run) x 3000 + one test
  evaluation.
- softlabels trains the default preset's student recipe at that IPC (width overridden) and is timed in this
  run: training plus one test evaluation, as the reference (the compile warm-up of training and evaluation,
  once per model shape and process, is printed separately and not counted).
- ``--sweep`` also trains softlabels' students at 0.5x and 2x the policy's length (validation and test), to
  show whether a longer student gains more than seed noise.

    python benchmarks/time_to_accuracy.py --quick    # width 32, IPC 1 / 10 / 50, recorded targets (< 5 min)
    python benchmarks/time_to_accuracy.py --sweep           # every configuration, with the length sweep
    python benchmarks/time_to_accuracy.py --record --only 32x50   # (re)record a reference target (slow)
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from reference import ref_eval, ref_train

from softlabels import DataSpec, get_preset
from softlabels.analysis.stats import paired_ci
from softlabels.data.prepared import prepare_data
from softlabels.engine.evaluation import EvalSets
from softlabels.engine.loop import train_student
from softlabels.engine.runtime import Engine, planned_steps, resolve_compile, tune_allocator
from softlabels.sets.selection import random_per_class

RESULTS = Path(__file__).with_name("time_to_accuracy.json")
REFERENCE_EPOCHS = 3000
CONFIGS = ((32, 1), (32, 10), (32, 50), (128, 1), (128, 10))
QUICK = ((32, 1), (32, 10), (32, 50))
TIMED_EPOCHS = {1: 200, 10: 40, 50: 10}  # reference epochs timed in this run (per-epoch cost is steady)
IMAGE_SEEDS = {1: (0, 1, 2)}  # other IPCs: draw 0 only (the reference takes minutes to an hour per student)


def data(ipc: int, image_seed: int = 0):
    prep = prepare_data(DataSpec())
    pos = random_per_class(prep.train_targets, ipc=ipc, num_classes=prep.num_classes, seed=image_seed)
    x, _ = prep.tensors("train")
    return x[pos], F.one_hot(prep.train_targets[pos], prep.num_classes).float(), EvalSets.from_prepared(
        prep, device="cpu")


def key(width: int, ipc: int, seeds: int, image_seed: int = 0) -> str:
    return f"w{width}-ipc{ipc}-hard-seeds{seeds}" + (f"-images{image_seed}" if image_seed else "")


def record_reference(width: int, ipc: int, seeds: int, image_seed: int) -> dict:
    x, y, ev = data(ipc, image_seed)
    accs, wall = [], []
    for s in range(seeds):
        t0 = time.perf_counter()
        net = ref_train(x, y, width=width, epochs=REFERENCE_EPOCHS, seed=s)
        accs.append(ref_eval(net, ev.test_x, ev.test_y)[0])
        wall.append(time.perf_counter() - t0)
        print(f"  recorded w{width} IPC {ipc} images {image_seed} seed {s}: {100 * accs[-1]:.2f}% in "
              f"{wall[-1]:.0f} s", flush=True)
    return {"test_acc": accs, "epochs": REFERENCE_EPOCHS, "date": datetime.date.today().isoformat(),
            "image_seed": image_seed, "student_seeds": list(range(seeds)), "wall_s": wall}


def reference_time(width: int, ipc: int, x, y, ev) -> tuple[float, float]:
    """(seconds per reference epoch, seconds of one reference test evaluation), measured now."""
    e = TIMED_EPOCHS[ipc]
    ref_train(x, y, width=width, epochs=2, seed=99)  # warm-up: allocator, kernels
    t0 = time.perf_counter()
    net = ref_train(x, y, width=width, epochs=e, seed=0)
    per_epoch = (time.perf_counter() - t0) / e
    return per_epoch, ref_eval(net, ev.test_x, ev.test_y)[1]


def ours(width: int, ipc: int, draws, seeds: int, scale: float = 1.0, parts=("test",)):
    """softlabels' students on each draw ``(x, y, ev)``: (recipe, results, mean train s, mean eval s, warm-up
    s). ``parts``: what each student evaluates (the timed run: the test set only, as the reference)."""
    n = len(draws[0][0])
    recipe = get_preset("default").student_for(ipc).replace(width=width)
    recipe = recipe.replace(steps=max(1, round(recipe.total_steps(n) * scale)))
    compile_model = resolve_compile(recipe.compile, torch.device("cpu"),
                                    total_steps=planned_steps(recipe, n, seeds * len(draws)))
    engine = Engine()
    x, y, ev = draws[0]
    t0 = time.perf_counter()
    kw = dict(compile_model=compile_model, engine=engine, parts=parts)
    train_student(x, y, recipe.replace(steps=2), seed=99, evals=ev, **kw)  # compiles training and evaluation
    warm = time.perf_counter() - t0
    res = [train_student(x, y, recipe, seed=s, evals=ev, **kw) for x, y, ev in draws for s in range(seeds)]
    train = statistics.mean(r.train_s for r in res)
    evaluate = statistics.mean(r.wall_s - r.train_s for r in res)
    return recipe, res, train, evaluate, warm


def seed_noise(accs: list[float], seeds: int) -> float:
    """The standard deviation over student seeds within each image draw (``accs`` draw-major), pooled."""
    groups = [accs[i:i + seeds] for i in range(0, len(accs), seeds)]
    return statistics.mean(statistics.pvariance(g) for g in groups) ** 0.5


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="width 32 only (under 5 minutes)")
    ap.add_argument("--only", nargs="+", default=None, help="configurations WIDTHxIPC, e.g. 32x10 128x1")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--record", action="store_true", help="run the reference for 3000 epochs and record it")
    ap.add_argument("--sweep", action="store_true", help="softlabels at 0.5x and 2x the policy's length")
    args = ap.parse_args()
    tune_allocator()
    configs = QUICK if args.quick else CONFIGS
    if args.only:
        configs = tuple(tuple(int(v) for v in c.lower().split("x")) for c in args.only)
    recorded = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.seeds} seeds; hard labels, "
          "clean protocol (final-epoch test accuracy)", flush=True)
    for width, ipc in configs:
        images = IMAGE_SEEDS.get(ipc, (0,))
        keys = [key(width, ipc, args.seeds, i) for i in images]
        if args.record:
            for i, k in zip(images, keys, strict=True):
                recorded[k] = record_reference(width, ipc, args.seeds, i)
                RESULTS.write_text(json.dumps(recorded, indent=2, sort_keys=True) + "\n")
        missing = [k for k in keys if k not in recorded]
        if missing:
            print(f"w{width} IPC {ipc}: no recorded reference target ({', '.join(missing)}); run with "
                  f"--record --only {width}x{ipc}", flush=True)
            continue
        targets = [recorded[k] for k in keys]
        ref_accs = [a for t in targets for a in t["test_acc"]]
        t_mean = statistics.mean(ref_accs)
        draws = [data(ipc, i) for i in images]
        per_epoch, ref_eval_s = reference_time(width, ipc, *draws[0])
        ref_total = per_epoch * REFERENCE_EPOCHS + ref_eval_s
        recipe, res, train, evaluate, warm = ours(width, ipc, draws, args.seeds)
        accs = [r.test_acc for r in res]
        o_mean = statistics.mean(accs)
        # seed noise: the spread over student seeds within a draw (the draws' spread is shared by both sides)
        noise = max(seed_noise(ref_accs, args.seeds), seed_noise(accs, args.seeds))
        diff, lo, hi = paired_ci(accs, ref_accs)  # pairs: the same draw and seed index
        reached = o_mean >= t_mean - noise
        our_total = train + evaluate
        print(
            f"w{width} IPC {ipc:2d} (image draws {','.join(map(str, images))}): reference {REFERENCE_EPOCHS} "
            f"epochs {100 * t_mean:5.1f}% (recorded {min(t['date'] for t in targets)}), "
            f"{per_epoch * 1e3:7.1f} ms/epoch x {REFERENCE_EPOCHS} + eval {ref_eval_s:4.1f} s = "
            f"{ref_total:7.1f} s | softlabels {recipe.steps} steps {100 * o_mean:5.1f}%, "
            f"train {train:6.1f} s + eval {evaluate:4.1f} s = {our_total:6.1f} s (warm-up {warm:.0f} s, "
            f"once) | ours - reference {100 * diff:+.1f} [{100 * lo:+.1f}, {100 * hi:+.1f}] pts; "
            f"{'reached' if reached else 'NOT reached'} within seed noise ({100 * noise:.1f}); "
            f"ratio {ref_total / our_total:5.1f}x",
            flush=True,
        )
        if args.sweep:
            for scale in (0.5, 2.0):
                r2, res2, train2, _, _ = ours(width, ipc, draws, args.seeds, scale=scale,
                                              parts=("test", "val"))
                print(f"    length sweep x{scale:g} ({r2.steps} steps): val "
                      f"{100 * statistics.mean(r.val_acc for r in res2):5.1f}  test "
                      f"{100 * statistics.mean(r.test_acc for r in res2):5.1f} ± "
                      f"{100 * seed_noise([r.test_acc for r in res2], args.seeds):.1f}  "
                      f"(train {train2:.1f} s)",
                      flush=True)
    sys.stdout.flush()


if __name__ == "__main__":
    main()
