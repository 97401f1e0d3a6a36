"""Runtime policy of the engine: device, precision, compile and allocator choices, and the :class:`Engine`
that owns a process's compiled graphs.

Every choice here depends on the configuration only (never on what is left to do), so a resumed sweep
takes the same path as an uninterrupted one. Measured speed-ups are in ``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import contextlib
import copy
import ctypes
import ctypes.util
import os
import shutil
import sys
import warnings
from collections import OrderedDict
from collections.abc import Callable

import torch
from torch import nn

from ..config import StudentRecipe

__all__ = ["CPU_COMPILE_MIN_STEPS", "CUDA_COMPILE_MIN_STEPS", "Engine", "allocator_tuned", "autocast_ctx",
           "compile_available", "planned_steps", "resolve_compile", "resolve_device", "resolve_precision",
           "tune_allocator"]

CPU_COMPILE_MIN_STEPS = 150
CUDA_COMPILE_MIN_STEPS = 2000
_state: dict[str, bool] = {}


# ---- device and precision ---------------------------------------------------------------------------------
def resolve_device(device: str | torch.device | None) -> torch.device:
    """``auto`` (or None) is CUDA when available, else CPU; anything else must exist on this machine."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"unknown device {device!r}; use cpu, cuda, cuda:N or auto") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("device 'cuda' requested but CUDA is not available; use --device cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(
                f"device {device!r} does not exist: this machine has {torch.cuda.device_count()} "
                "CUDA device(s)"
            )
    elif dev.type != "cpu":
        raise ValueError(f"device {device!r} is not supported; use cpu, cuda, cuda:N or auto")
    return dev


def resolve_precision(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``precision`` on ``device`` (None = fp32): ``auto`` is bf16 where the hardware
    runs it natively (CUDA with bf16, or a CPU with AVX512-BF16/AMX), else fp32."""
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
    return torch.bfloat16 if _cpu_has_native_bf16() else None


def _cpu_has_native_bf16() -> bool:
    try:
        cap = torch.backends.cpu.get_cpu_capability()
    except Exception:  # pragma: no cover - very old torch
        return False
    if "AMX" in cap.upper():
        return True
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
        return "avx512_bf16" in flags or "amx_bf16" in flags
    except OSError:
        return False


def autocast_ctx(device: torch.device, dtype: torch.dtype | None):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


# --- process settings ---------------------------------------------------------------------------------------
_M_TRIM_THRESHOLD = -1
_M_TOP_PAD = -2
_M_MMAP_MAX = -4


def tune_allocator() -> bool:
    """Keep freed memory in the heap for reuse (glibc only; idempotent); returns whether it is active.

    PyTorch on CPU has no caching allocator: glibc serves each large activation with ``mmap`` and returns
    it on ``free``, so every step page-faults its activations back in. The cost of keeping them: the
    process holds its peak heap until it exits. Opt out with ``SOFTLABELS_ALLOCATOR=system``.
    """
    if "tuned" in _state:
        return _state["tuned"]
    ok = False
    if sys.platform.startswith("linux") and os.environ.get("SOFTLABELS_ALLOCATOR", "tuned") != "system":
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            mallopt = libc.mallopt
        except (OSError, AttributeError):  # musl or an unusual libc: leave it alone
            mallopt = None
        if mallopt is not None:
            mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
            ok = bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, 2**30)) \
                and bool(mallopt(_M_TOP_PAD, 256 * 2**20))
    _state["tuned"] = ok
    return ok


def allocator_tuned() -> bool:
    """Whether :func:`tune_allocator` has changed this process's allocator."""
    return _state.get("tuned", False)


def compile_available(device_type: str) -> bool:
    """Whether ``torch.compile`` can build kernels here: CUDA brings its own compiler (Triton); on CPU,
    inductor needs a C++ compiler (``$CXX``, ``g++``, ``c++`` or ``clang++``). Without one, ``auto``
    settings fall back to eager (warned once) instead of failing mid-run."""
    if device_type != "cpu":
        return True
    if "cxx" not in _state:
        names = [os.environ.get("CXX", ""), "g++", "c++", "clang++"]
        _state["cxx"] = any(n and shutil.which(n) for n in names)
        if not _state["cxx"]:
            warnings.warn("no C++ compiler found (set CXX or install g++): softlabels trains and evaluates "
                          "without torch.compile, about 1.4-2x slower", RuntimeWarning, stacklevel=2)
    return _state["cxx"]


# --- compile policy -----------------------------------------------------------------------------------------
def planned_steps(recipe: StudentRecipe, n_images: int, n_students: int) -> int:
    """Optimizer steps of ``n_students`` students on ``n_images`` images: what ``resolve_compile`` weighs."""
    return recipe.total_steps(n_images) * n_students


def resolve_compile(setting: str, device: torch.device, *, total_steps: int, model: str = "") -> bool:
    """Whether to compile the TRAINING graph: ``auto`` compiles when the planned optimizer steps of the
    call repay the warm-up (one graph per model shape and process, reused by later students). ResNets stay
    eager on CPU under ``auto``: inductor took over 500 s on a width-8 ResNet-18 there (issue #13 notes).

    ``total_steps`` must depend on the configuration only (all seeds of a cell, not the ones left to
    do), so a resumed sweep takes the same path as an uninterrupted one.
    """
    if setting == "on":
        return True
    if setting == "off" or not compile_available(device.type):
        return False
    if device.type == "cpu" and model.startswith("resnet"):
        return False
    return total_steps >= (CUDA_COMPILE_MIN_STEPS if device.type == "cuda" else CPU_COMPILE_MIN_STEPS)


# --- compiled graphs ----------------------------------------------------------------------------------------
@torch.no_grad()
def _copy_weights(dst: nn.Module, src: nn.Module) -> None:
    """Copy parameters and buffers of ``src`` into the same-shaped ``dst`` (which a compiled graph holds)."""
    for p, q in zip(dst.parameters(), src.parameters(), strict=True):
        p.copy_(q)
    for b, c in zip(dst.buffers(), src.buffers(), strict=True):
        b.copy_(c)


class _GraphCache:
    """One compiled copy of a model per key (a model shape), reused by later models of that shape (their
    weights are copied in), so a graph is built once per process; the least recently used beyond
    ``size`` are dropped."""

    def __init__(self, size: int, **compile_kwargs) -> None:
        self._size = size
        self._kwargs = compile_kwargs
        self._cache: OrderedDict[tuple, tuple[nn.Module, nn.Module]] = OrderedDict()

    def get(self, key: tuple, model: nn.Module) -> nn.Module:
        if key not in self._cache:
            base = copy.deepcopy(model)
            self._cache[key] = (base, torch.compile(base, **self._kwargs))
            while len(self._cache) > self._size:
                self._cache.popitem(last=False)
        self._cache.move_to_end(key)
        base, compiled = self._cache[key]
        _copy_weights(base, model)
        return compiled

    def __len__(self) -> int:
        return len(self._cache)

    def clear(self) -> None:
        self._cache.clear()


class Engine:
    """The compiled graphs of one process: a batch-dynamic training graph and a fixed-shape inference graph
    per model shape (at most ``max_shapes`` of each). A :class:`~softlabels.lab.Lab` owns one, and so does
    each worker process; :meth:`close` drops them."""

    def __init__(self, *, max_shapes: int = 8) -> None:
        # training: the batch dimension is marked dynamic at each step; nothing else may become dynamic, or a
        # second model shape in one process turns the spatial sizes symbolic (inductor failed on that)
        self.train_graphs = _GraphCache(max_shapes, dynamic=False)
        self.eval_graphs = _GraphCache(max_shapes, dynamic=False)

    def training_model(self, key: tuple, model: nn.Module) -> nn.Module:
        return self.train_graphs.get(key, model)

    def inference_model(self, key: tuple, model: nn.Module) -> Callable[..., torch.Tensor]:
        return self.eval_graphs.get(key, model)

    def close(self) -> None:
        self.train_graphs.clear()
        self.eval_graphs.clear()
