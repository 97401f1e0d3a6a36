"""Student-engine benchmark: the reference loop vs softlabels' engine, measured in one run.

(a) a re-creation of the reference code's student loop (TensorDataset + DataLoader(batch 256,
    shuffle) + per-batch DSA in the reference's style (torch.rand on the global RNG, F.affine_grid) +
    nn.CrossEntropyLoss, fp32, one student at a time, eval at batch 128), and
(b) the engine as ``softlabels`` runs it (data on the device, index batches, batched DSA, bf16 where
    native, the fused first block, the tuned allocator, one compiled graph per model shape reused
    across students -- its warm-up is printed separately --, compiled evaluation),

on the same Fashion-MNIST images, model (ConvNet-3, width 128 unless --width) and epochs, at IPC 1,
10 and 50. Prints seconds per student-epoch, the ratio (a)/(b), test-evaluation time, the accuracy of
both after the same epochs, and achieved GFLOP/s against a matmul peak measured in this run.

The reference runs first, in its own process, with the system allocator as the reference code runs
(``--reference-allocator tuned`` gives it softlabels' allocator setting instead, to separate that
gain); the engine then runs in this process.

    python benchmarks/students.py --quick        # < 3 minutes on 2 cores
    python benchmarks/students.py                # more epochs, 3 seeds for the accuracy comparison
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import statistics
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from reference import ref_eval, ref_train

from softlabels.config import StudentRecipe
from softlabels.data import load_dataset
from softlabels.engine.evaluation import EvalSets, accuracy, predict
from softlabels.engine.loop import train_student
from softlabels.engine.runtime import (
    Engine,
    planned_steps,
    resolve_compile,
    resolve_precision,
    tune_allocator,
)
from softlabels.models import init_model
from softlabels.sets.selection import random_per_class

ENGINE = Engine()  # the benchmark process's compiled inference graphs, as a Lab's


def engine_predict(net: nn.Module, evals: EvalSets, amp, n: int | None = None) -> torch.Tensor:
    """The engine's evaluation path (compiled, fixed batch shape, reused stem statistics) on the first ``n``
    test images (all by default)."""
    stats = evals.stem_stats(net, "test")
    x = evals.test_x if n is None else evals.test_x[:n]
    stats = stats if stats is None or n is None else tuple(t[:n] for t in stats)
    return predict(ENGINE.inference_model(("bench", net.classifier.in_features), net), x, batch_size=1024,
                   amp_dtype=amp, fixed_shape=True, stats=stats)

QUICK_EPOCHS = {1: 60, 10: 20, 50: 4}
FULL_EPOCHS = {1: 300, 10: 100, 50: 30}


# ---- FLOPs and peak -----------------------------------------------------------------------------
def train_flops_per_image(net: nn.Module, shape) -> float:
    """Multiply-adds of conv/linear layers x 2 (FLOPs) x 3 (forward + backward)."""
    macs = []

    def hook(m, inp, out):
        if isinstance(m, nn.Conv2d):
            macs.append(out.numel() * m.in_channels * m.kernel_size[0] * m.kernel_size[1] / m.groups)
        elif isinstance(m, nn.Linear):
            macs.append(out.numel() * m.in_features)

    net.fused_stem = False  # count the first convolution as the convolution it is
    hs = [m.register_forward_hook(hook) for m in net.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    with torch.no_grad():
        net(torch.zeros(1, *shape))
    for h in hs:
        h.remove()
    return 2 * 3 * sum(macs)


def matmul_peak(dtype=torch.float32, n=1024, reps=10) -> float:
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    for _ in range(2):
        a @ b
    t = []
    for _ in range(reps):
        t0 = time.perf_counter()
        a @ b
        t.append(time.perf_counter() - t0)
    return 2 * n**3 / statistics.median(t) / 1e9


def _data(ipc: int):
    ds = load_dataset("fashion-mnist")
    pos = random_per_class(ds.train_targets, ipc=ipc, num_classes=10, seed=0)
    return ds, ds.normalize(ds.train_images[pos]), F.one_hot(ds.train_targets[pos], 10).float()


def reference_runs(ipcs, epochs, width, seeds, allocator) -> dict:
    """(a) in a fresh process: {ipc: (seconds per epoch, test accuracies, eval seconds)} per seed."""
    if allocator == "tuned":
        tune_allocator()
    out = {}
    for ipc in ipcs:
        ds, x, y = _data(ipc)
        test_x, test_y = ds.normalize(ds.test_images), ds.test_targets
        e = epochs.get(ipc, 10)
        t, acc, ev = [], [], []
        for s in range(seeds):
            t0 = time.perf_counter()
            net = ref_train(x, y, width=width, epochs=e, seed=s)
            t.append((time.perf_counter() - t0) / e)
            a, sec = ref_eval(net, test_x, test_y)
            acc.append(a)
            ev.append(sec)
        out[ipc] = (t, acc, ev)
    return out


def parallel_runs(x, y, recipe, seeds, compile_on, evals, amp, workers):
    """The engine's students in ``workers`` processes: (s per student-epoch, test accuracies, warm-up s).

    Workers are started and warmed up (a 2-epoch student each) first; the timed part trains every seed
    (no evaluation), then each returned student is evaluated here.
    """
    from softlabels.engine.executors import ProcessExecutor, StudentJob

    ex = ProcessExecutor(None, workers=workers)
    try:
        t0 = time.perf_counter()
        warm_jobs = [StudentJob(images=x, labels=y, recipe=recipe.replace(epochs=2), seed=99 + i,
                                compile_model=compile_on, parts=()) for i in range(workers)]
        ex.run(warm_jobs, lambda job, res: None)
        warm = time.perf_counter() - t0
        states: dict[int, dict] = {}
        t0 = time.perf_counter()
        ex.run(
            [
                StudentJob(
                    images=x,
                    labels=y,
                    recipe=recipe,
                    seed=s,
                    compile_model=compile_on,
                    parts=(),
                    return_state=True,
                    tag=s,
                )
                for s in range(seeds)
            ],
            lambda job, res: states.__setitem__(job.tag, res.state),
        )
        per_epoch = (time.perf_counter() - t0) / (seeds * recipe.epochs)
    finally:
        ex.close()
    accs = []
    for s in range(seeds):
        net = init_model(
            "convnet-d3",
            recipe.width,
            seed=s,
            in_channels=1,
            num_classes=10,
            image_size=(28, 28),
            device=torch.device("cpu"),
        )
        net.load_state_dict(states[s])
        accs.append(accuracy(engine_predict(net, evals, amp), evals.test_y))
    return [per_epoch] * seeds, accs, warm


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--width", type=int, default=128)
    ap.add_argument("--ipc", type=int, nargs="+", default=[1, 10, 50])
    ap.add_argument("--seeds", type=int, default=None)
    ap.add_argument("--compile", default="on", choices=["auto", "on", "off"],
                    help="engine training graph (default on: a study's students share one graph; "
                         "the warm-up is printed separately)")
    ap.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"])
    ap.add_argument("--reference-allocator", default="system", choices=["system", "tuned"])
    ap.add_argument("--workers", type=int, default=1,
                    help="train the engine's students in N worker processes (softlabels.executor); timing is "
                         "the wall time of all seeds / (seeds x epochs), so use a multiple of N seeds")
    args = ap.parse_args()
    seeds = args.seeds or (1 if args.quick else 3)
    epochs = QUICK_EPOCHS if args.quick else FULL_EPOCHS
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, width {args.width}, "
          f"engine precision={args.precision} compile={args.compile}, "
          f"reference allocator={args.reference_allocator}", flush=True)
    with mp.get_context("spawn").Pool(1) as pool:  # a clean process: nothing of the engine's settings
        ref = pool.apply(reference_runs, (args.ipc, epochs, args.width, seeds, args.reference_allocator))
    tune_allocator()
    peak32, peak16 = matmul_peak(), matmul_peak(torch.bfloat16)
    print(f"matmul peak: fp32 {peak32:.0f} GFLOP/s, bf16 {peak16:.0f} GFLOP/s (1024x1024, median)")
    amp = resolve_precision(args.precision, torch.device("cpu"))
    for ipc in args.ipc:
        ds, x, y = _data(ipc)
        test_x, test_y = ds.normalize(ds.test_images), ds.test_targets
        evals = EvalSets(test_x, test_y)
        e = epochs.get(ipc, 10)
        flops = train_flops_per_image(
            init_model(
                "convnet-d3",
                args.width,
                seed=0,
                in_channels=1,
                num_classes=10,
                image_size=(28, 28),
                device=torch.device("cpu"),
            ),
            (1, 28, 28),
        )
        our_t, our_acc, our_ev = [], [], []
        recipe = StudentRecipe(model="convnet-d3", width=args.width, epochs=e, precision=args.precision,
                               compile=args.compile)
        compile_on = resolve_compile(
            args.compile, torch.device("cpu"), total_steps=planned_steps(recipe, len(x), seeds)
        )
        if (
            compile_on and args.workers == 1
        ):  # warm-up once per model shape, amortised over a study's students
            t0 = time.perf_counter()
            train_student(x, y, recipe.replace(epochs=2), seed=99, evals=None, compile_model=True)
            warm = time.perf_counter() - t0
        if args.workers > 1:  # parallel students: per student-epoch = wall of all seeds / (seeds x epochs)
            our_t, our_acc, warm = parallel_runs(x, y, recipe, seeds, compile_on, evals, amp, args.workers)
        for s in range(seeds):
            if args.workers == 1:
                r = train_student(x, y, recipe, seed=s, evals=evals, compile_model=compile_on)
                our_t.append(r.train_s / e)
                our_acc.append(r.test_acc)
            # the engine's evaluation path (compiled inference, warmed up once per process), timed alone
            net2 = init_model(
                "convnet-d3",
                args.width,
                seed=s,
                in_channels=1,
                num_classes=10,
                image_size=(28, 28),
                device=torch.device("cpu"),
            )
            engine_predict(net2, evals, amp, n=1024)  # warm-up: compiles once per process
            t0 = time.perf_counter()
            engine_predict(net2, evals, amp)
            our_ev.append(time.perf_counter() - t0)
        ref_t, ref_acc, ref_ev = ref[ipc]
        rt, ot = statistics.median(ref_t), statistics.median(our_t)
        print(f"IPC {ipc:3d} ({len(x)} images, {e} epochs, {seeds} seed(s)):")
        print(
            f"  per student-epoch: reference {rt * 1e3:8.1f} ms   softlabels {ot * 1e3:8.1f} ms   "
            f"ratio {rt / ot:5.2f}x"
            + (
                f"   (compile warm-up {warm:.0f} s, once per shape)"
                if compile_on and args.workers == 1
                else ""
            )
            + (
                f"   [{args.workers} worker processes: start + compile {warm:.0f} s]"
                if args.workers > 1
                else ""
            )
        )
        print(
            f"  test evaluation (10k): reference {statistics.median(ref_ev):6.2f} s   softlabels "
            f"{statistics.median(our_ev):6.2f} s   "
            f"ratio {statistics.median(ref_ev) / statistics.median(our_ev):5.2f}x"
        )
        print(
            f"  test accuracy after {e} epochs: reference {100 * np.mean(ref_acc):5.1f} "
            f"± {100 * np.std(ref_acc):.1f}"
            f"   softlabels {100 * np.mean(our_acc):5.1f} ± {100 * np.std(our_acc):.1f}"
        )
        gf = flops * len(x)
        print(
            f"  achieved: reference {gf / rt / 1e9:6.1f} GFLOP/s "
            f"({100 * gf / rt / 1e9 / peak32:4.1f}% of fp32 peak)   softlabels {gf / ot / 1e9:6.1f} GFLOP/s "
            f"({100 * gf / ot / 1e9 / (peak16 if amp else peak32):4.1f}% "
            f"of {'bf16' if amp else 'fp32'} peak)",
            flush=True,
        )


if __name__ == "__main__":
    main()
