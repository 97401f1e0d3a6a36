"""Parallel students: the same students trained one after the other in this process (all cores) vs in N
worker processes (softlabels.engine.executors.ProcessExecutor, cores // N threads each), measured in one run.

For each (width, batch) point, both sides first warm up (compile; the workers also start) -- printed
apart -- then train the same K students (seeds 0..K-1, training only); the line gives milliseconds per
student-step (wall / (K x epochs)) and the ratio. This is what ``Lab(workers="auto")`` is tuned from.

    python benchmarks/parallel.py                      # widths 32 and 128, batches 10 and 100
    python benchmarks/parallel.py --points 32x10 --students 8 --workers 2
"""

from __future__ import annotations

import argparse
import time

import torch

from softlabels.config import StudentRecipe
from softlabels.engine.executors import ProcessExecutor, SerialExecutor, StudentJob, cpu_cores
from softlabels.engine.runtime import tune_allocator

STEPS = 400  # optimizer steps per timed student at batch 10 (fewer for bigger students)


def timed(executor, jobs, warm_jobs) -> tuple[float, float]:
    t0 = time.perf_counter()
    executor.run(warm_jobs, lambda job, res: None)
    warm = time.perf_counter() - t0
    t0 = time.perf_counter()
    executor.run(jobs, lambda job, res: None)
    return time.perf_counter() - t0, warm


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--points", nargs="+", default=["32x10", "32x100", "128x10", "128x100"],
                    help="WIDTHxBATCH (batch = images per student, one step per epoch)")
    ap.add_argument("--workers", type=int, default=min(2, cpu_cores()))
    ap.add_argument("--students", type=int, default=4, help="students per side (a multiple of --workers)")
    args = ap.parse_args()
    tune_allocator()
    print(
        f"torch {torch.__version__}, {cpu_cores()} cores; serial: 1 process x {torch.get_num_threads()} "
        f"threads; parallel: {args.workers} processes x {max(1, cpu_cores() // args.workers)} thread(s); "
        "bf16 where native, "
        f"compiled training"
    )
    serial = SerialExecutor(None)
    parallel = ProcessExecutor(None, workers=args.workers)
    try:
        for point in args.points:
            width, batch = (int(v) for v in point.lower().split("x"))
            epochs = max(20, STEPS * 10 * 32 // (batch * width))
            g = torch.Generator().manual_seed(0)
            x = torch.randn(batch, 1, 28, 28, generator=g)
            y = torch.softmax(torch.randn(batch, 10, generator=g), 1)
            recipe = StudentRecipe(model="convnet-d3", width=width, epochs=epochs, batch_size=256)

            def jobs(n, ep, seed0=0, recipe=recipe, x=x, y=y):
                return [StudentJob(images=x, labels=y, recipe=recipe.replace(epochs=ep), seed=seed0 + i,
                                   compile_model=True, parts=()) for i in range(n)]

            ts, ws = timed(serial, jobs(args.students, epochs), jobs(1, 2, 100))
            tp, wp = timed(parallel, jobs(args.students, epochs), jobs(args.workers, 2, 100))
            steps = args.students * epochs
            print(f"width {width:3d}, batch {batch:3d} ({args.students} students x {epochs} steps): serial "
                  f"{ts / steps * 1e3:6.2f} ms  parallel {tp / steps * 1e3:6.2f} ms per student-step  "
                  f"ratio {ts / tp:4.2f}x   (warm-up: serial {ws:.0f} s, workers {wp:.0f} s)", flush=True)
    finally:
        parallel.close()


if __name__ == "__main__":
    main()
