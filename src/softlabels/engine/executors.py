"""Where students train: in this process, or several at once in worker processes.

A student at IPC 1-5 trains on batches of 10-50 images, too small for PyTorch to keep two CPU cores
busy: per step, Python, the autograd engine and thread hand-offs cost as much as the arithmetic. Two
students in two single-threaded processes then finish sooner than the same two students one after the
other on two threads each (``benchmarks/parallel.py`` measures it; figures in ``benchmarks/RESULTS.md``).
Each worker also starts Python and compiles its own graphs, so ``workers="auto"`` runs students in
parallel on CPU only where the batch is small (``PARALLEL_MAX_BATCH``) and there is enough of that work
to repay the start (``PARALLEL_MIN_STEPS``).

Students are :class:`StudentJob` s; an executor runs a list of them and hands each result back as it
completes, so the caller stores it at once and an interrupted sweep loses at most the students in flight.
The workers are started once (spawned, with the evaluation sets) and reused by later calls; each worker
compiles its own graphs (the on-disk compile cache is shared). The same job gives the same result in a
worker as in this process up to the floating-point order of a different thread count (tested in fp32).

Beyond one machine, ``workers="ray"`` (:class:`RayExecutor`) makes each student a Ray task on an existing
cluster (``RAY_ADDRESS``, or a local one Ray starts): the scheduling is Ray's, the results flow back to the
caller, which stores them in the same SQLite store as they complete.
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

from ..config import StudentRecipe
from ..validation import check_positive_int
from .evaluation import EvalSets
from .loop import StudentResult, train_student
from .runtime import Engine, tune_allocator

PARALLEL_MAX_BATCH = 50  # images per step up to which parallel students paid here (see the module doc)
# the start of the workers is repaid only by paper-scale small-batch work (an IPC 1 cell of 5 students x 3000
# epochs); a quick study's few thousand steps ran slower in parallel than serially
PARALLEL_MIN_STEPS = 10_000
MAX_AUTO_WORKERS = 8


@dataclass(frozen=True, eq=False, kw_only=True)  # eq=False: compared by identity, never tensor by tensor
class StudentJob:
    """One student to train: model-ready ``images``, probability ``labels`` and the images' true classes
    ``hard`` (for losses with a hard-label term; None: the labels' argmax), CPU or device tensors; ``tag`` is
    the caller's (it stays in the caller's process)."""

    images: torch.Tensor
    labels: torch.Tensor
    recipe: StudentRecipe
    hard: torch.Tensor | None = None
    seed: int
    protocol: str = "clean"
    compile_model: bool = False
    parts: tuple[str, ...] = ("test", "val")  # evaluation parts; () trains only
    return_state: bool = False
    tag: Any = None


OnResult = Callable[[StudentJob, StudentResult], None]


def cpu_cores() -> int:
    """CPU cores this process may use (its affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - macOS, Windows
        return os.cpu_count() or 1


WORKER_SETTINGS = "'auto', 'ray' or a positive int"


def check_workers(setting: int | str) -> int | str:
    """A valid ``workers`` setting: ``"auto"``, ``"ray"`` or a positive int (returned as given)."""
    if isinstance(setting, str):
        if setting not in ("auto", "ray"):
            raise ValueError(f"workers must be {WORKER_SETTINGS}, got {setting!r}")
        return setting
    return check_positive_int("workers", setting)


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
            raise ValueError(f"workers must be 'auto' or a positive int here, got {setting!r}")
        cores = cpu_cores() if cores is None else cores
        if (torch.device(device).type != "cpu" or n_jobs < 2 or batch > PARALLEL_MAX_BATCH or cores < 2
                or steps < PARALLEL_MIN_STEPS):
            return 1
        return min(cores, n_jobs, MAX_AUTO_WORKERS)
    return check_positive_int("workers", setting)


class SerialExecutor:
    """Every student in this process, one after the other (the engine's default on GPUs and large batches);
    ``engine`` holds the compiled graphs they share."""

    def __init__(self, evals: EvalSets | None, *, device: str | torch.device = "cpu",
                 engine: Engine | None = None) -> None:
        self.evals, self.device = evals, device
        self.engine = engine if engine is not None else Engine()

    def run(self, jobs: Sequence[StudentJob], on_result: OnResult, *,
            on_epoch: Callable[[int], None] | None = None) -> None:
        for job in jobs:
            on_result(job, _train(job, self.evals, self.device, on_epoch, self.engine))

    def close(self) -> None:
        self.engine.close()


# ---- worker processes -----------------------------------------------------------------------------
_WORKER: dict[str, Any] = {}


def _set_up_worker(threads: int) -> None:
    """A worker process's torch threads and allocator. Set only when it changes: a compiled graph is
    specialised for the thread count, and a worker keeps its graphs across students."""
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    tune_allocator()


def _init_worker(evals: EvalSets | None, device: str, threads: int) -> None:
    _set_up_worker(threads)
    _WORKER.update(evals=evals, device=device, engine=Engine())  # the worker's own compiled graphs


def _run_in_worker(job: StudentJob) -> StudentResult:
    return _train(job, _WORKER["evals"], _WORKER["device"], None, _WORKER["engine"])


def _train(job: StudentJob, evals: EvalSets | None, device, on_epoch, engine: Engine) -> StudentResult:
    return train_student(
        job.images,
        job.labels,
        job.recipe,
        seed=job.seed,
        hard=job.hard,
        evals=evals,
        parts=job.parts,
        protocol=job.protocol,
        device=device,
        compile_model=job.compile_model,
        on_epoch=on_epoch,
        return_state=job.return_state,
        engine=engine,
    )


class ProcessExecutor:
    """``workers`` spawned processes, each training one student at a time on ``cores // workers`` threads.

    The pool starts on the first ``run`` and is reused until :meth:`close` (``Lab.close``), so each worker
    compiles a model shape once. A worker's thread count stays fixed: a compiled graph is specialised for
    it (changing it recompiles), so a last job alone in a round does not take the idle cores. CPU only.
    """

    def __init__(self, evals: EvalSets | None, *, workers: int, cores: int | None = None) -> None:
        self.workers = check_positive_int("workers", workers)
        self.cores = cpu_cores() if cores is None else cores
        self.evals = _evals_to(evals, "cpu")
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
            if (
                pending
            ):  # an interrupt or a failed job: stop the students in flight too (a fresh pool next time)
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
    without an ``if __name__ == "__main__":`` guard would otherwise start its whole job again in each
    worker."""
    main = sys.modules.get("__main__")
    saved = {k: getattr(main, k) for k in ("__file__", "__spec__") if hasattr(main, k)}
    try:
        for k in saved:
            setattr(main, k, None)
        yield
    finally:
        for k, v in saved.items():
            setattr(main, k, v)


def _evals_to(evals: EvalSets | None, device: str | torch.device) -> EvalSets | None:
    return None if evals is None else evals.to(device)


def _cpu_job(job: StudentJob) -> StudentJob:
    return replace(job, images=job.images.cpu(), labels=job.labels.cpu(), tag=None)


# ---- Ray ----------------------------------------------------------------------------------------------
def _run_in_ray(job: StudentJob, evals: EvalSets | None, device: str, threads: int) -> StudentResult:
    _set_up_worker(threads)  # a Ray worker process runs many tasks, and keeps one engine for them
    engine = _WORKER.setdefault("engine", Engine())
    # the object store holds CPU tensors; a GPU task evaluates on its GPU, as it trains there
    return _train(job, evals if device == "cpu" else _evals_to(evals, device), device, None, engine)


def _import_ray():
    try:
        import ray
    except ImportError as e:  # pragma: no cover - ray is a dev dependency, so the tests always have it
        raise ImportError("workers='ray' needs Ray: pip install 'softlabels[ray]'") from e
    return ray


class RayExecutor:
    """Each student a Ray task: ``cpus_per_student`` CPUs (its torch threads) and, on a GPU device, one GPU.

    Connects on the first ``run``: to the cluster at ``address`` or ``RAY_ADDRESS`` (Ray's own variable),
    else to a local one Ray starts (``num_cpus`` caps it); a connection made here is shut down by
    :meth:`close`. Every node needs softlabels and torch installed. The evaluation sets go to the object
    store once; results come back in completion order, so the caller stores each at once. A failed task or
    an interrupt cancels the tasks not finished (their students are trained again by a later run).
    """

    def __init__(
        self,
        evals: EvalSets | None,
        *,
        device: str | torch.device = "cpu",
        address: str | None = None,
        cpus_per_student: int = 1,
        num_cpus: int | None = None,
    ) -> None:
        self.device = torch.device(device)
        self.address = address
        self.cpus_per_student = check_positive_int("cpus_per_student", cpus_per_student)
        self.num_cpus = None if num_cpus is None else check_positive_int("num_cpus", num_cpus)
        self.evals = _evals_to(evals, "cpu")
        self._evals_ref = None
        self._task = None
        self._connected_here = False

    def _connect(self):
        ray = _import_ray()
        if not ray.is_initialized():
            ray.init(address=self.address, num_cpus=self.num_cpus, include_dashboard=False,
                     log_to_driver=False, configure_logging=False)
            self._connected_here = True
        if self._evals_ref is None:
            self._evals_ref = ray.put(self.evals)
            self._task = ray.remote(_run_in_ray).options(
                num_cpus=self.cpus_per_student, num_gpus=1 if self.device.type == "cuda" else 0, max_retries=0
            )
        return ray

    def run(self, jobs: Sequence[StudentJob], on_result: OnResult, *,
            on_epoch: Callable[[int], None] | None = None) -> None:
        """Train ``jobs`` as Ray tasks; ``on_result(job, result)`` here as each finishes (in completion
        order)."""
        if not jobs:
            return
        ray = self._connect()
        device = self.device.type  # "cuda", not "cuda:1": a task sees only the GPU Ray gave it
        pending = {self._task.remote(_cpu_job(job), self._evals_ref, device, self.cpus_per_student): job
                   for job in jobs}
        try:
            while pending:
                done, _ = ray.wait(list(pending), num_returns=1)
                for ref in done:
                    job = pending.pop(ref)
                    try:
                        res = ray.get(ref)
                    except ray.exceptions.RayTaskError as e:  # the student's own error, as it was raised
                        raise e.as_instanceof_cause() from None
                    if on_epoch is not None:
                        on_epoch(job.recipe.epochs)
                    on_result(job, res)
        finally:
            for ref in pending:  # a failed job or an interrupt: the unfinished students stop too
                ray.cancel(ref, force=True)

    def close(self) -> None:
        """Disconnect from Ray if this executor connected (a cluster it joined keeps running)."""
        if self._connected_here:
            _import_ray().shutdown()
        self._connected_here, self._evals_ref, self._task = False, None, None


def make_executor(workers: int | str, evals: EvalSets | None, *, device: str | torch.device = "cpu",
                  engine: Engine | None = None):
    """A :class:`SerialExecutor` for one worker (sharing ``engine``), a :class:`RayExecutor` for ``"ray"``,
    else
    a :class:`ProcessExecutor` (CPU only)."""
    if workers == "ray":
        return RayExecutor(evals, device=device)
    if workers == 1:
        return SerialExecutor(evals, device=device, engine=engine)
    check_workers_device(workers, device)
    return ProcessExecutor(evals, workers=workers)


def check_workers_device(workers: int | str, device: str | torch.device) -> None:
    """Worker processes train on CPU only: more than one local worker on another device is an error (Ray
    tasks may take GPUs)."""
    if isinstance(workers, int) and workers > 1 and torch.device(device).type != "cpu":
        raise ValueError(
            f"parallel student workers run on CPU only; use workers=1, 'auto' or 'ray' on {device}"
        )
