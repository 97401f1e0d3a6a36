"""Where students train: in this process, or several at once in worker processes.

A student at IPC 1-5 trains on batches of 10-50 images, too small for PyTorch to keep two CPU cores
busy: per step, Python, the autograd engine and thread hand-offs cost as much as the arithmetic. Two
students in two single-threaded processes then finish sooner than the same two students one after the
other on two threads each. Measured on these 2 cores, 2 workers vs serial, per student-step, over 2-3
runs each (``benchmarks/parallel.py``; the machine's timings are noisy): width 32, batch 10: 1.7-2.0x;
width 128, batch 10: 1.1-1.8x; width 32, batch 100: 0.95-1.10x; width 128, batch 100: 1.02-1.21x; a 10k
evaluation: 1.0x. Each worker also starts Python and compiles its own graphs (~15 s with a warm compile
cache). So ``workers="auto"`` runs students in parallel on CPU only where the batch is small
(``PARALLEL_MAX_BATCH``) and there is enough of that work to repay the start (``PARALLEL_MIN_STEPS``).

Students are :class:`StudentJob` s; an executor runs a list of them and hands each result back as it
completes, so the caller stores it at once and an interrupted sweep loses at most the students in flight.
The workers are started once (spawned, with the evaluation sets) and reused by later calls; each worker
compiles its own graphs (the on-disk compile cache is shared). The same job gives the same result in a
worker as in this process up to the floating-point order of a different thread count (tested in fp32).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any

import torch

from .config import StudentRecipe
from .train import EvalSets, StudentResult, train_student
from .validation import check_positive_int

PARALLEL_MAX_BATCH = 50  # images per step up to which parallel students paid here (see the module doc)
# ~1.4-1.7 ms saved per step (width 32 / 128, batch 10) against ~15 s to start the workers and compile their
# graphs (warm compile cache): the quick scaling study (3600 small-batch steps) ran 96.9 s in parallel vs
# 89.1 s serially, so auto waits for paper-scale work (an IPC 1 cell of 5 students x 3000 epochs)
PARALLEL_MIN_STEPS = 10_000
MAX_AUTO_WORKERS = 8


@dataclass(frozen=True, eq=False)  # eq=False: compared by identity, never tensor by tensor
class StudentJob:
    """One student to train: model-ready ``images`` and probability ``labels`` (CPU or device tensors);
    ``tag`` is the caller's (it stays in the caller's process)."""

    images: torch.Tensor
    labels: torch.Tensor
    recipe: StudentRecipe
    seed: int
    protocol: str = "clean"
    compile_model: bool = False
    evaluate: bool = True
    return_state: bool = False
    tag: Any = None


OnResult = Callable[[StudentJob, StudentResult], None]


def cpu_cores() -> int:
    """CPU cores this process may use (its affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - macOS, Windows
        return os.cpu_count() or 1


def resolve_workers(setting: int | str, device: torch.device | str, *, n_jobs: int, batch: int, steps: int,
                    cores: int | None = None) -> int:
    """How many worker processes run ``n_jobs`` students (``steps`` optimizer steps in all, at most ``batch``
    images per step).

    An int is taken as is (1 = in this process). ``auto``: on CPU, ``min(cores, n_jobs, 8)`` when the
    batch is at most ``PARALLEL_MAX_BATCH``, there are two jobs or more and at least ``PARALLEL_MIN_STEPS``
    steps to repay starting the workers; else 1. On CUDA, 1: parallel students on one GPU were not
    measured here.
    """
    if isinstance(setting, str):
        if setting != "auto":
            raise ValueError(f"workers must be 'auto' or a positive int, got {setting!r}")
        cores = cpu_cores() if cores is None else cores
        if (torch.device(device).type != "cpu" or n_jobs < 2 or batch > PARALLEL_MAX_BATCH or cores < 2
                or steps < PARALLEL_MIN_STEPS):
            return 1
        return min(cores, n_jobs, MAX_AUTO_WORKERS)
    return check_positive_int("workers", setting)


class SerialExecutor:
    """Every student in this process, one after the other (the engine's default on GPUs and large batches)."""

    def __init__(self, evals: EvalSets | None, *, device: str | torch.device = "cpu") -> None:
        self.evals, self.device = evals, device

    def run(self, jobs: Sequence[StudentJob], on_result: OnResult, *,
            on_epoch: Callable[[int], None] | None = None) -> None:
        for job in jobs:
            on_result(job, _train(job, self.evals, self.device, on_epoch))

    def close(self) -> None:
        pass


# ---- worker processes -----------------------------------------------------------------------------
_WORKER: dict[str, Any] = {}


def _init_worker(evals: EvalSets | None, device: str, threads: int) -> None:
    from .perf import tune_allocator

    torch.set_num_threads(threads)
    tune_allocator()
    _WORKER.update(evals=evals, device=device)


def _run_in_worker(job: StudentJob) -> StudentResult:
    return _train(job, _WORKER["evals"], _WORKER["device"], None)


def _train(job: StudentJob, evals: EvalSets | None, device, on_epoch) -> StudentResult:
    return train_student(job.images, job.labels, job.recipe, seed=job.seed, evals=evals if job.evaluate else None,
                         protocol=job.protocol, device=device, compile_model=job.compile_model, on_epoch=on_epoch,
                         return_state=job.return_state)


class ProcessExecutor:
    """``workers`` spawned processes, each training one student at a time on ``cores // workers`` threads.

    The pool starts on the first ``run`` and is reused until :meth:`close` (``Lab.close``), so each worker
    compiles a model shape once. A worker's thread count stays fixed: a compiled graph is specialised for
    it (changing it recompiles), so a last job alone in a round does not take the idle cores. CPU only.
    """

    def __init__(self, evals: EvalSets | None, *, workers: int, cores: int | None = None) -> None:
        self.workers = check_positive_int("workers", workers)
        self.cores = cpu_cores() if cores is None else cores
        self.evals = _to_cpu(evals)
        self._pool: ProcessPoolExecutor | None = None

    def _ensure_pool(self) -> ProcessPoolExecutor:
        if self._pool is None:
            import multiprocessing as mp

            self._pool = ProcessPoolExecutor(
                max_workers=self.workers, mp_context=mp.get_context("spawn"), initializer=_init_worker,
                initargs=(self.evals, "cpu", max(1, self.cores // self.workers)))
        return self._pool

    def run(self, jobs: Sequence[StudentJob], on_result: OnResult, *,
            on_epoch: Callable[[int], None] | None = None) -> None:
        """Train ``jobs``; ``on_result(job, result)`` in this process as each finishes (completion order).

        ``on_epoch`` receives a job's epochs when it finishes (workers do not report per epoch). An error in a
        job, or an interrupt, cancels the jobs not started and terminates those in flight; results already
        handed back are kept (the caller has stored them).
        """
        if not jobs:
            return
        pool = self._ensure_pool()
        pending: dict[Future, StudentJob] = {}
        try:
            with _main_not_reimported():  # workers are spawned on submit
                for job in jobs:
                    pending[pool.submit(_run_in_worker, _cpu_job(job))] = job
            while pending:
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for fut in done:
                    job = pending.pop(fut)
                    res = fut.result()
                    if on_epoch is not None:
                        on_epoch(job.recipe.epochs)
                    on_result(job, res)
        except BaseException:
            if pending:  # an interrupt or a failed job: stop the students in flight too (a fresh pool next time)
                self.close(terminate=True)
            raise

    def close(self, *, terminate: bool = False) -> None:
        """Stop the workers: after their current students, or at once with ``terminate``."""
        if self._pool is None:
            return
        pool, self._pool = self._pool, None
        if terminate:
            for proc in list(getattr(pool, "_processes", {}).values()):
                proc.terminate()
        pool.shutdown(wait=True, cancel_futures=True)


@contextmanager
def _main_not_reimported() -> Iterator[None]:
    """Keep spawned workers from importing the caller's ``__main__``: they need only softlabels, and a script
    without an ``if __name__ == "__main__":`` guard would otherwise start its whole job again in each worker."""
    main = sys.modules.get("__main__")
    saved = {k: getattr(main, k) for k in ("__file__", "__spec__") if hasattr(main, k)}
    try:
        for k in saved:
            setattr(main, k, None)
        yield
    finally:
        for k, v in saved.items():
            setattr(main, k, v)


def _to_cpu(evals: EvalSets | None) -> EvalSets | None:
    if evals is None:
        return None
    test_x, test_y, val_x, val_y = (None if t is None else t.cpu()
                                    for t in (evals.test_x, evals.test_y, evals.val_x, evals.val_y))
    return EvalSets(test_x, test_y, val_x, val_y)


def _cpu_job(job: StudentJob) -> StudentJob:
    return replace(job, images=job.images.cpu(), labels=job.labels.cpu(), tag=None)


def make_executor(workers: int, evals: EvalSets | None, *, device: str | torch.device = "cpu"):
    """A :class:`SerialExecutor` for one worker, else a :class:`ProcessExecutor` (CPU only)."""
    if workers == 1:
        return SerialExecutor(evals, device=device)
    check_workers_device(workers, device)
    return ProcessExecutor(evals, workers=workers)


def check_workers_device(workers: int, device: str | torch.device) -> None:
    """Worker processes train on CPU only: more than one worker on another device is an error."""
    if workers > 1 and torch.device(device).type != "cpu":
        raise ValueError(f"parallel student workers run on CPU only; use workers=1 (or 'auto') on {device}")
