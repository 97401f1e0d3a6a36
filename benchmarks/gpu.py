"""Device check: the reference loop vs the engine, one student vs N stacked, and a ResNet-18 step, in one run.

On CIFAR-10-shaped data (3 x 32 x 32, 10 classes, random pixels and soft labels: speed does not depend on
what the pixels show), ConvNet-D3 at width 128, prints per student-epoch:

(a) the reference loop (benchmarks/reference.py's re-creation of the official code: TensorDataset +
    DataLoader(batch 256, shuffle) + DSA from the global RNG + nn.CrossEntropyLoss, fp32, eager) with its
    tensors on the device, vs the engine's ``train_student`` (bf16 where native, compiled training graph
    unless --no-compile; the compile warm-up is printed apart, once per shape), at IPC 1 / 10 / 50;
(b) one student at a time (the engine, eager and as in (a)) vs N students stacked as one vmapped model
    (softlabels.engine.batched.train_stacked, eager; compiled too with --compile-stacks) for N = 8, 32,
    100 at IPC 1 and 10: throughput ratio and its fraction of N (the target is >= 0.5 x N for N <= 32),
    also against the compiled one student of (a);
(c) a ResNet-18 training step at 224 px (SGD, bf16 autocast where native), images per second;
(d) for information, the same comparison as (b) on the CPU at IPC 1 (small width, few students).

Every timing is wall-clock around the call with the device synchronised, after a warm-up of the same shape;
per-epoch times are the slope between a short and a long run (fixed costs per student printed apart).
A section that fails or does not fit in --budget seconds prints ``unmeasured`` with the reason, never a
number. Runs with torch, numpy and ``PYTHONPATH=src``:

    PYTHONPATH=src python benchmarks/gpu.py              # on a GPU, < 8 minutes on an H200
    PYTHONPATH=src python benchmarks/gpu.py --cpu-smoke  # tiny sizes on the CPU: checks it runs
"""

from __future__ import annotations

import argparse
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parent))  # reference.py, when run from anywhere
from reference import ref_dsa  # noqa: E402

from softlabels.config import StudentRecipe  # noqa: E402
from softlabels.engine.batched import train_stacked  # noqa: E402
from softlabels.engine.loop import train_student  # noqa: E402
from softlabels.engine.runtime import Engine, resolve_precision, tune_allocator  # noqa: E402
from softlabels.models import init_model  # noqa: E402
from softlabels.resnets import build_resnet  # noqa: E402


@dataclass(frozen=True)
class Sizes:
    """What one run measures (the GPU sizes, or tiny ones for --cpu-smoke)."""

    width: int = 128
    ipcs: tuple[int, ...] = (1, 10, 50)
    epochs: tuple[tuple[int, int], ...] = ((1, 300), (10, 200), (50, 40))  # timed epochs per IPC
    ref_epochs: tuple[tuple[int, int], ...] = ((1, 100), (10, 60), (50, 15))
    stack_ipcs: tuple[int, ...] = (1, 10)
    stacks: tuple[int, ...] = (8, 32, 100)
    stack_epochs: tuple[tuple[int, int], ...] = ((1, 100), (10, 60))
    resnet_px: int = 224
    resnet_batch: int = 128
    resnet_steps: int = 20
    cpu_width: int = 32
    cpu_stack: int = 8
    cpu_epochs: int = 30


SMOKE = Sizes(width=8, ipcs=(1, 2), epochs=((1, 6), (2, 5)), ref_epochs=((1, 5), (2, 5)), stack_ipcs=(1,),
              stacks=(2, 3), stack_epochs=((1, 6),), resnet_px=32, resnet_batch=2, resnet_steps=2,
              cpu_width=8, cpu_stack=2, cpu_epochs=6)


def sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def timed(fn, dev: torch.device) -> float:
    sync(dev)
    t0 = time.perf_counter()
    fn()
    sync(dev)
    return time.perf_counter() - t0


def cifar_like(ipc: int, dev: torch.device, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``ipc`` images per class of CIFAR-10's shape, normalised-looking pixels and soft labels."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(10 * ipc, 3, 32, 32, generator=g)
    y = torch.softmax(3 * torch.randn(10 * ipc, 10, generator=g), 1)
    return x.to(dev), y.to(dev)


# ---- (a) the reference loop on the device -----------------------------------------------------------
def ref_train_on(dev: torch.device, x: torch.Tensor, y: torch.Tensor, *, width: int, epochs: int,
                 seed: int = 0) -> nn.Module:
    """reference.ref_train with its tensors on ``dev``, as the official code runs on a GPU: the dataset on
    the device, a shuffling DataLoader collating it, DSA drawing where the official code draws (ref_dsa),
    fp32, eager."""
    torch.manual_seed(seed)
    net = init_model("convnet-d3", width, seed=seed, in_channels=3, num_classes=10, image_size=(32, 32),
                     device=dev)
    net.fused_stem = False  # the reference computes conv -> GroupNorm as two modules
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=max(1, epochs // 4), gamma=0.3)
    loader = DataLoader(TensorDataset(x, y), batch_size=256, shuffle=True)
    crit = nn.CrossEntropyLoss()
    net.train()
    for _ in range(epochs):
        for xb, yb in loader:
            loss = crit(net(ref_dsa(xb)), yb)
            opt.zero_grad()
            loss.backward()
            opt.step()
        sched.step()
    return net


def recipe_for(width: int, epochs: int, compile_on: bool) -> StudentRecipe:
    return StudentRecipe(model="convnet-d3", width=width, epochs=epochs,
                         compile="on" if compile_on else "off")


@dataclass(frozen=True)
class Timing:
    """Seconds per epoch (the slope between a short and a long run, so a student's fixed costs -- model
    init, DataLoader, the final train-accuracy pass -- are not spread over its epochs), those fixed seconds
    (the intercept) and the warm-up run's seconds (compiles, cuDNN autotuning)."""

    per_epoch: float
    fixed: float
    warm: float


def per_epoch(run, epochs: int, dev: torch.device) -> Timing:
    """Time ``run(e)`` (one student, or one stack, of ``e`` epochs): a 2-epoch warm-up, then
    ``max(1, epochs // 5)`` and ``epochs`` epochs."""
    if epochs < 2:
        raise ValueError("need at least 2 timed epochs")
    warm = timed(lambda: run(2), dev)
    short = max(1, epochs // 5)
    t_short, t_long = timed(lambda: run(short), dev), timed(lambda: run(epochs), dev)
    slope = (t_long - t_short) / (epochs - short)
    return Timing(slope, t_short - short * slope, warm)


def reference_timing(dev, x, y, *, width: int, epochs: int) -> Timing:
    return per_epoch(lambda e: ref_train_on(dev, x, y, width=width, epochs=e), epochs, dev)


def engine_timing(dev, x, y, *, width: int, epochs: int, compile_on: bool, engine: Engine) -> Timing:
    """The engine's student (training only; compiled when ``compile_on``, the warm-up compiles)."""
    def run(e: int) -> None:
        train_student(x, y, recipe_for(width, e, compile_on), seed=0, evals=None, device=dev,
                      compile_model=compile_on, engine=engine)

    return per_epoch(run, epochs, dev)


def stacked_timing(dev, x, y, *, width: int, epochs: int, n: int, compile_on: bool = False,
                   graphs: dict | None = None) -> Timing:
    """``n`` students stacked (eager, or compiled: the warm-up compiles, ``graphs`` keeps the graph);
    per_epoch is the stack's, for all ``n``."""
    graphs = {} if graphs is None else graphs

    def run(e: int) -> None:
        train_stacked([x] * n, [y] * n, recipe_for(width, e, compile_on), seeds=range(n), evals=None,
                      device=dev, compile_model=compile_on, graphs=graphs)

    return per_epoch(run, epochs, dev)


# ---- (c) ResNet-18 at 224 px --------------------------------------------------------------------------
def resnet_step_s(dev: torch.device, *, px: int, batch: int, steps: int) -> tuple[float, str]:
    """Seconds per SGD step of ResNet-18 (ImageNet stem, 1000 classes) on ``batch`` images of ``px``."""
    amp = resolve_precision("auto", dev)
    net = build_resnet("resnet18", in_channels=3, num_classes=1000, image_size=(px, px)).to(dev)
    net = net.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    x = torch.randn(batch, 3, px, px, device=dev).to(memory_format=torch.channels_last)
    y = torch.randint(0, 1000, (batch,), device=dev)

    def step() -> None:
        with torch.autocast(dev.type, dtype=amp, enabled=amp is not None):
            loss = F.cross_entropy(net(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(3):
        step()
    return timed(lambda: [step() for _ in range(steps)], dev) / steps, "bf16" if amp else "fp32"


# ---- the run ------------------------------------------------------------------------------------------
class Report:
    """Prints measured lines; a section that fails or would pass the budget prints ``unmeasured``."""

    def __init__(self, budget_s: float) -> None:
        self.t0, self.budget = time.perf_counter(), budget_s
        self.failed = 0

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def section(self, label: str, fn, *, need_s: float = 0.0) -> None:
        if self.elapsed() + need_s > self.budget:
            print(f"  {label}: unmeasured (time budget: {self.elapsed():.0f} of {self.budget:.0f} s used)",
                  flush=True)
            return
        try:
            fn()
        except Exception as e:  # noqa: BLE001 - one failing section must not hide the others' numbers
            self.failed += 1
            why = str(e).splitlines()[0][:160] if str(e) else ""
            print(f"  {label}: unmeasured ({type(e).__name__}: {why})", flush=True)
            traceback.print_exc(limit=3, file=sys.stderr)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cpu-smoke", action="store_true", help="tiny sizes on the CPU (checks the script runs)")
    ap.add_argument("--device", default=None, help="default: cuda (cpu with --cpu-smoke)")
    ap.add_argument("--no-compile", action="store_true", help="the engine's student eager (default compiled)")
    ap.add_argument("--compile-stacks", action="store_true",
                    help="also time compiled stacks in (b) (one compile per stack size: minutes on a GPU)")
    ap.add_argument("--budget", type=float, default=420.0, help="seconds; later sections are skipped past it")
    args = ap.parse_args()
    sz = SMOKE if args.cpu_smoke else Sizes()
    dev = torch.device(args.device or ("cpu" if args.cpu_smoke else "cuda"))
    if dev.type == "cuda" and not torch.cuda.is_available():
        print("no CUDA device: run with --cpu-smoke (or --device cpu)", file=sys.stderr)
        return 2
    compile_on = not args.no_compile and not args.cpu_smoke  # compiling on a small CPU only costs time here
    tune_allocator()
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"
    print(f"device {name}, torch {torch.__version__}, threads {torch.get_num_threads()}, ConvNet-D3 width "
          f"{sz.width}, engine precision {resolve_precision('auto', dev) or 'fp32'}, "
          f"compile {'on' if compile_on else 'off'}{', CPU SMOKE SIZES' if args.cpu_smoke else ''}",
          flush=True)
    rep = Report(args.budget)
    engine = Engine()
    epochs, ref_epochs, stack_epochs = dict(sz.epochs), dict(sz.ref_epochs), dict(sz.stack_epochs)

    print("(a) reference loop vs engine, per student-epoch (CIFAR-10 shape, training only)", flush=True)
    single: dict[int, Timing] = {}  # IPC -> the engine's eager student, for (b)
    single_compiled: dict[int, Timing] = {}  # and compiled, where (a) compiled
    for ipc in sz.ipcs:
        def part_a(ipc=ipc) -> None:
            x, y = cifar_like(ipc, dev)
            ref = reference_timing(dev, x, y, width=sz.width, epochs=ref_epochs[ipc])
            ours = engine_timing(dev, x, y, width=sz.width, epochs=epochs[ipc], compile_on=compile_on,
                                 engine=engine)
            eager = ours
            if compile_on:
                eager = engine_timing(dev, x, y, width=sz.width, epochs=epochs[ipc], compile_on=False,
                                      engine=engine)
            single[ipc] = eager
            if compile_on:
                single_compiled[ipc] = ours
            rt, ot = ref.per_epoch, ours.per_epoch
            extra = "" if not compile_on else (
                f"; compile warm-up {ours.warm:.0f} s once per shape; engine eager "
                f"{eager.per_epoch * 1e3:.3f} ms, ratio {rt / eager.per_epoch:.2f}x")
            print(f"  IPC {ipc:3d}: reference {rt * 1e3:8.3f} ms ({ref_epochs[ipc]} epochs)   engine "
                  f"{ot * 1e3:8.3f} ms ({epochs[ipc]} epochs, {'compiled' if compile_on else 'eager'})   "
                  f"ratio {rt / ot:6.2f}x   [fixed per student: reference {ref.fixed:.2f} s, engine "
                  f"{ours.fixed:.2f} s{extra}]", flush=True)
        rep.section(f"IPC {ipc:3d}", part_a, need_s=60.0 if compile_on else 0.0)

    also = "; and compiled" if args.compile_stacks else ""
    print(f"(b) one student at a time vs N stacked (engine, eager{also}; per student-epoch)", flush=True)
    graphs: dict = {}  # compiled stacked steps, one per stack size and shape
    for ipc in sz.stack_ipcs:
        x, y = cifar_like(ipc, dev)
        if ipc not in single:
            def one(ipc=ipc, x=x, y=y) -> None:
                single[ipc] = engine_timing(dev, x, y, width=sz.width, epochs=stack_epochs[ipc],
                                            compile_on=False, engine=engine)
            rep.section(f"IPC {ipc:3d} one student", one)
        for n in sz.stacks:
            def part_b(ipc=ipc, n=n, x=x, y=y) -> None:
                if ipc not in single:
                    raise RuntimeError("the one-student time was not measured")
                one_t = single[ipc].per_epoch
                st = stacked_timing(dev, x, y, width=sz.width, epochs=stack_epochs[ipc], n=n)
                speed = n * one_t / st.per_epoch  # throughput of the stack / throughput of one student
                vs = "" if ipc not in single_compiled else (
                    f"   [vs the compiled one {single_compiled[ipc].per_epoch * 1e3:.3f} ms: "
                    f"{single_compiled[ipc].per_epoch / st.per_epoch:4.2f} x N]")
                print(f"  IPC {ipc:3d} N {n:4d}: one {one_t * 1e3:8.3f} ms   stacked "
                      f"{st.per_epoch / n * 1e3:8.3f} ms/student ({st.per_epoch * 1e3:.2f} ms per stacked "
                      f"epoch, {stack_epochs[ipc]} epochs; fixed {st.fixed:.2f} s per stack)   throughput "
                      f"{speed:6.2f}x = {speed / n:4.2f} x N{vs}", flush=True)
            rep.section(f"IPC {ipc:3d} N {n:4d}", part_b, need_s=5.0)
            if args.compile_stacks:
                def part_bc(ipc=ipc, n=n, x=x, y=y) -> None:
                    if ipc not in single:
                        raise RuntimeError("the one-student time was not measured")
                    st = stacked_timing(dev, x, y, width=sz.width, epochs=stack_epochs[ipc], n=n,
                                        compile_on=True, graphs=graphs)
                    speed = n * single[ipc].per_epoch / st.per_epoch
                    print(f"  IPC {ipc:3d} N {n:4d} compiled stack: {st.per_epoch / n * 1e3:8.3f} ms/student "
                          f"(compile warm-up {st.warm:.0f} s)   throughput vs the eager one {speed:6.2f}x = "
                          f"{speed / n:4.2f} x N", flush=True)
                rep.section(f"IPC {ipc:3d} N {n:4d} compiled stack", part_bc, need_s=60.0)

    print(f"(c) ResNet-18 training step at {sz.resnet_px} px, batch {sz.resnet_batch}", flush=True)

    def part_c() -> None:
        s, prec = resnet_step_s(dev, px=sz.resnet_px, batch=sz.resnet_batch, steps=sz.resnet_steps)
        print(f"  {s * 1e3:8.1f} ms per step ({prec}, channels_last, {sz.resnet_steps} steps)   "
              f"{sz.resnet_batch / s:8.0f} images/s", flush=True)
    rep.section("resnet18", part_c, need_s=10.0)

    print(f"(d) CPU, for information: one vs {sz.cpu_stack} stacked at IPC 1, width {sz.cpu_width}, eager",
          flush=True)

    def part_d() -> None:
        cpu = torch.device("cpu")
        x, y = cifar_like(1, cpu)
        one = engine_timing(cpu, x, y, width=sz.cpu_width, epochs=sz.cpu_epochs, compile_on=False,
                            engine=engine).per_epoch
        st = stacked_timing(cpu, x, y, width=sz.cpu_width, epochs=sz.cpu_epochs, n=sz.cpu_stack).per_epoch
        speed = sz.cpu_stack * one / st
        print(f"  one {one * 1e3:8.3f} ms   stacked {st / sz.cpu_stack * 1e3:8.3f} ms/student   throughput "
              f"{speed:5.2f}x = {speed / sz.cpu_stack:4.2f} x N ({sz.cpu_epochs} epochs, "
              f"{torch.get_num_threads()} threads)", flush=True)
    rep.section("cpu", part_d, need_s=5.0)
    print(f"total {rep.elapsed():.0f} s", flush=True)
    return 1 if rep.failed else 0


if __name__ == "__main__":
    sys.exit(main())
