"""End-to-end study time: a study run with softlabels' engine vs the same study with the reference loop.

Both runs start from empty output folders that share one already-trained expert (copied), so the
difference is the student engine: ``reference.ReferenceExecutor`` (DataLoader, fp32, eager, batch-128
evaluation) vs the default engine. Each study runs in its own fresh process (the reference one with the
system allocator, as the reference code runs). Prints both wall times and their ratio, measured in one run.

    python benchmarks/study_speed.py --study scaling                 # the quick scaling study
    python benchmarks/study_speed.py --study scaling -O ipcs=1,2      # a reduced grid
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import shutil
import tempfile
import time
from pathlib import Path

from reference import ReferenceExecutor

from softlabels import Lab, get_preset, run_study
from softlabels.cli.common import parse_value


def timed_study(name: str, out: Path, expert_src: Path, loop: str, options: dict) -> tuple[float, list]:
    preset = get_preset("default")
    shutil.copytree(expert_src, out / "experts", dirs_exist_ok=True)
    lab = Lab(out, data=preset.data, device="cpu", progress=False)
    if loop == "reference":
        lab.workers = ReferenceExecutor(lab.evals)
    lab.expert(preset.expert)  # loads the data and the (copied) expert outside the timed part
    t0 = time.perf_counter()
    res = run_study(name, lab, scale="quick", preset=preset, **options)
    return time.perf_counter() - t0, res.rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--study", default="scaling")
    ap.add_argument("-O", action="append", default=[], help="study option KEY=VALUE (e.g. ipcs=1,2)")
    ap.add_argument("--expert-from", default=None, help="an output folder whose experts/ to reuse")
    args = ap.parse_args()
    options = {k: parse_value(v) for k, v in (o.split("=", 1) for o in args.O)}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        src = Path(args.expert_from) / "experts" if args.expert_from else None
        if src is None:
            preset = get_preset("default")
            Lab(tmp / "expert", data=preset.data, device="cpu", progress=False).expert(preset.expert)
            src = tmp / "expert" / "experts"
        ctx = mp.get_context("spawn")
        with ctx.Pool(1, maxtasksperchild=1) as pool:  # one fresh process per study
            ref, rows_r = pool.apply(timed_study, (args.study, tmp / "ref", src, "reference", options))
            fast, rows_f = pool.apply(timed_study, (args.study, tmp / "fast", src, "fast", options))
    print(f"study {args.study} (quick, options {options or 'none'}), {len(rows_f)} rows:")
    print(f"  reference loop: {ref:7.1f} s")
    print(f"  softlabels:     {fast:7.1f} s")
    print(f"  ratio (reference / softlabels): {ref / fast:.2f}x")
    for a, b in zip(rows_f, rows_r, strict=False):
        keys = [k for k in ("ipc", "k", "expert_epoch") if k in a]
        print(
            "  "
            + " ".join(f"{k}={a[k]}" for k in keys)
            + f"  softlabels {100 * a.get('test_mean', float('nan')):.1f}%"
            + f"  reference {100 * b.get('test_mean', float('nan')):.1f}%"
        )


if __name__ == "__main__":
    main()
