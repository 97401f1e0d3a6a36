"""The workflow facade: one output folder holding experts, compressed sets and the results store.

``Lab`` ties the pure parts together. Every student run goes through :meth:`Lab.evaluate_many`, which keys
the run by values only (the set's :class:`~softlabels.sets.spec.SetSpec`, the student recipe, the seed, the
protocol, the data split and the study), skips what the store already holds (so interrupted studies resume)
and stores what it computes, with the set's codecs and measured bytes.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .config import PROTOCOLS, DataSpec, ExpertRecipe, StudentRecipe
from .data.prepared import PreparedData
from .data.streaming import prepare
from .engine.batched import BatchedExecutor, check_stack_setting
from .engine.evaluation import EvalSets
from .engine.executors import (
    PARALLEL_MAX_BATCH,
    StudentJob,
    check_workers,
    check_workers_device,
    make_executor,
    resolve_workers,
)
from .engine.loop import StudentResult
from .engine.runtime import Engine, planned_steps, resolve_compile, resolve_device
from .experts import Trajectory, train_expert
from .labels.generate import LogitCache
from .sets.compressed import CompressedSet
from .sets.spec import SetSpec
from .store import ResultsStore
from .validation import check_choice, check_positive_int
from .version import __version__

__all__ = ["CellSpec", "Lab"]


@dataclass(frozen=True, kw_only=True)
class CellSpec:
    """One cell of a study as a value: the students of ``seeds`` on the set named by ``set``.

    ``experts`` are the experts the set may read (labels, selection); ``given`` is the user's set for a
    file source (``SetSpec.of_set``). ``eval_classes`` adds the accuracy on those classes' test images.
    ``parts`` are the evaluation sets the students are judged on ("test", "val"; a sweep that chooses on
    validation needs only "val").
    """

    set: SetSpec
    student: StudentRecipe
    seeds: tuple[int, ...]
    experts: tuple[Trajectory, ...] = ()
    protocol: str = "clean"
    study: str = "baseline"
    eval_classes: tuple[int, ...] | None = None
    given: CompressedSet | None = None
    parts: tuple[str, ...] = ("test", "val")

    def __post_init__(self) -> None:
        if not isinstance(self.set, SetSpec):
            raise TypeError(f"CellSpec.set must be a SetSpec, got {type(self.set).__name__}")
        if isinstance(self.seeds, int) or not isinstance(self.seeds, Sequence):
            raise TypeError(f"seeds must be a sequence of student seeds, e.g. (0, 1, 2), got {self.seeds!r}")
        seeds = tuple(check_positive_int("seed", s, minimum=0) for s in self.seeds)
        if not seeds:
            raise ValueError("a cell needs at least one student seed, e.g. seeds=(0, 1, 2)")
        if len(set(seeds)) != len(seeds):
            raise ValueError(f"seeds must be distinct, got {list(seeds)}")
        object.__setattr__(self, "seeds", seeds)
        object.__setattr__(self, "experts", tuple(self.experts))
        check_choice("protocol", self.protocol, PROTOCOLS)
        if self.eval_classes is not None:
            object.__setattr__(self, "eval_classes", tuple(int(c) for c in self.eval_classes))
        object.__setattr__(self, "parts", tuple(self.parts))
        if not self.parts or any(p not in ("test", "val") for p in self.parts):
            raise ValueError(f"parts must be a non-empty subset of ('test', 'val'), got {self.parts!r}")
        if (self.given is None) != (self.set.source == "pool"):
            raise ValueError("given= is required with a file source (SetSpec.of_set) and only then")


class Lab:
    """``Lab(out_dir, data=DataSpec(...))``: construction only stores settings; work happens in calls.

    ``workers`` is where students train: ``"auto"`` (parallel processes only where measured to pay), a
    number of local processes, ``"ray"``, or an executor object (``run(jobs, on_result, on_epoch=)`` and
    ``close()``, see :mod:`softlabels.engine.executors`).

    ``batch_students`` stacks students of one shape into one model (:mod:`softlabels.engine.batched`):
    ``"auto"`` on CUDA only, a number of students per stack on any device, or ``"off"``. Like ``workers``,
    it says where students train, not how: results equal the one-at-a-time students' within the stated
    float tolerance, and it is not part of any run key.
    """

    def __init__(self, out_dir: str | Path, *, data: DataSpec | None = None, device: str = "cpu",
                 root: str | Path | None = None, dataset=None, progress: bool = True,
                 workers: int | str | Any = "auto", batch_students: int | str = "auto") -> None:
        self.out_dir = Path(out_dir)
        self.data = data if data is not None else DataSpec()
        if not isinstance(self.data, DataSpec):
            raise TypeError(f"data must be a DataSpec, got {type(self.data).__name__}")
        self.device = str(resolve_device(device))
        self.root, self.dataset, self.progress = root, dataset, progress
        self.workers = workers if hasattr(workers, "run") else check_workers(workers)
        if not hasattr(workers, "run"):
            check_workers_device(self.workers, self.device)
        self.batch_students = check_stack_setting(batch_students)
        if isinstance(self.batch_students, int) and self.batch_students > 1 and (
                self.workers == "ray" or (isinstance(self.workers, int) and self.workers > 1)):
            raise ValueError(f"workers={self.workers!r} trains students one per process or task, while "
                             "batch_students stacks them in this process: choose one")
        self.engine = Engine()  # compiled graphs of the students trained in this process
        self.logits = LogitCache()  # expert logits of pool images, shared by the sets built here
        self._prepared: PreparedData | None = None
        self._store: ResultsStore | None = None
        self._evals: EvalSets | None = None
        self._executors: dict = {}

    def __repr__(self) -> str:
        return (f"Lab({str(self.out_dir)!r}, data={self.data!r}, device={self.device!r}, "
                f"workers={self.workers!r}, batch_students={self.batch_students!r})")

    # ---- lazily built parts -------------------------------------------------------------------------
    @property
    def prepared(self) -> PreparedData:
        if self._prepared is None:
            self._prepared = prepare(self.data, root=self.root, dataset=self.dataset)  # streaming ones too
        return self._prepared

    @property
    def store(self) -> ResultsStore:
        if self._store is None:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            self._store = ResultsStore(self.out_dir / "results.sqlite")
        return self._store

    @property
    def evals(self) -> EvalSets:
        if self._evals is None:
            self._evals = EvalSets.from_prepared(self.prepared, device=self.device)
        return self._evals

    # ---- experts and sets ---------------------------------------------------------------------------
    def expert(self, recipe: ExpertRecipe, *, on_epoch=None) -> Trajectory:
        """Train, resume or reuse the expert for ``recipe``."""
        with self._bar(f"expert {recipe.model} seed {recipe.seed}", recipe.epochs) as tick:
            def cb(epoch: int, rec: dict) -> None:
                tick(1)
                if on_epoch:
                    on_epoch(epoch, rec)

            return train_expert(self.prepared, recipe, root=self.out_dir, device=self.device, on_epoch=cb)

    def experts(self, recipe: ExpertRecipe, n: int) -> list[Trajectory]:
        """``n`` experts with seeds ``recipe.seed, recipe.seed + 1, ...`` (for ensembles)."""
        return [self.expert(recipe.replace(seed=recipe.seed + i)) for i in range(check_positive_int("n", n))]

    def build_set(self, spec: SetSpec, *, experts: Sequence[Trajectory] = (),
                  given: CompressedSet | None = None) -> CompressedSet:
        """The set named by ``spec`` on this lab's data (``given``: the user's set of a file source)."""
        if given is not None:
            self.check_compatible(given)
        if spec.label.kind != "learned" or spec.source != "pool":
            return spec.build(
                self.prepared, experts=experts, device=self.device, cache=self.logits, given=given
            )
        from .labels.learners import learner_config

        steps = learner_config(spec.label.learner, seed=spec.image_seed)[0].meta_steps
        with self._bar(f"learned labels IPC {spec.ipc} seed {spec.image_seed}", steps) as tick:
            return spec.build(self.prepared, experts=experts, device=self.device, cache=self.logits,
                              work_dir=self.out_dir / "learned-labels", on_step=lambda _rec: tick(1))

    def check_compatible(self, cset: CompressedSet, *, name: str = "the set") -> None:
        """A set from elsewhere must have this dataset's classes and image shape."""
        ds = self.prepared.dataset
        if cset.num_classes != ds.num_classes:
            raise ValueError(f"{name} has {cset.num_classes} classes but {ds.name} has {ds.num_classes}")
        if tuple(cset.images.shape[1:]) != ds.image_shape:
            raise ValueError(f"{name} images are {tuple(cset.images.shape[1:])} but {ds.name} images are "
                             f"{ds.image_shape}")

    # ---- run identity -------------------------------------------------------------------------------
    def run_config(self, cell: CellSpec, seed: int) -> dict[str, Any]:
        """The identity of one student run, built from values only; its hash is the run's key."""
        cfg = {
            "study": cell.study, "dataset": self.prepared.dataset.name, "data": self.data.to_dict(),
            "split_key": self.prepared.split_key(), **cell.set.identity(cell.set.experts_used(cell.experts)),
            "model": cell.student.model_name, "student": cell.student.identity(), "seed": int(seed),
            "protocol": cell.protocol,
        }
        if cell.parts != ("test", "val"):  # fewer metrics: not the same stored result
            cfg["eval_parts"] = list(cell.parts)
        return cfg

    # ---- students -----------------------------------------------------------------------------------
    def evaluate(self, set: SetSpec, *, student: StudentRecipe, seeds: Sequence[int],
                 experts: Sequence[Trajectory] = (), protocol: str = "clean", study: str = "baseline",
                 eval_classes: Sequence[int] | None = None, given: CompressedSet | None = None) -> list[dict]:
        """:meth:`evaluate_many` for one cell (the fields of :class:`CellSpec`)."""
        cell = CellSpec(
            set=set,
            student=student,
            seeds=tuple(seeds),
            experts=tuple(experts),
            protocol=protocol,
            study=study,
            eval_classes=None if eval_classes is None else tuple(eval_classes),
            given=given,
        )
        return self.evaluate_many([cell])[0]

    def evaluate_many(self, cells: Sequence[CellSpec]) -> list[list[dict]]:
        """Train and evaluate the students of ``cells`` (resumable): one list of per-seed results per cell,
        in order, each ``{"config", "metrics", "nbytes", "codec", "wall_s", "cached"}``.

        Students of all cells may train at once (``workers``); each result is stored as soon as its student
        finishes, so a re-run trains only what the store lacks.
        """
        outs: list[list[dict]] = []
        jobs: list[StudentJob] = []
        ds = self.prepared.dataset
        # one training graph serves every cell of a model shape: compiling pays when the call's cells of that
        # shape, all their seeds (not the ones left: a resumed call takes the same path), have enough steps
        planned: dict[tuple, int] = {}
        for cell in cells:
            key = (cell.student.model, cell.student.width, cell.student.compile)
            planned[key] = planned.get(key, 0) + planned_steps(
                cell.student, self._cell_images(cell), len(cell.seeds)
            )
        for ci, cell in enumerate(cells):
            out, todo = self._lookup(cell)
            outs.append(out)
            if not todo:
                continue
            cset = self.build_set(cell.set, experts=cell.experts, given=cell.given)
            x = cset.model_input(device=self.device, zca=self.prepared.zca, mean=ds.mean, std=ds.std)
            compile_model = resolve_compile(cell.student.compile, torch.device(self.device),
                                            total_steps=planned[(cell.student.model, cell.student.width,
                                                                 cell.student.compile)],
                                            model=cell.student.model)
            meta = {"cell": ci, "nbytes": cset.nbytes,
                    "codec": f"{cset.manifest['image_codec']}|{cset.manifest['label_codec']}"}
            for pos, seed, cfg in todo:
                jobs.append(
                    StudentJob(
                        images=x,
                        labels=cset.labels,
                        hard=cset.targets,
                        recipe=cell.student,
                        seed=seed,
                        protocol=cell.protocol,
                        compile_model=compile_model,
                        parts=cell.parts,
                        tag={**meta, "pos": pos, "config": cfg},
                    )
                )
        if not jobs:
            return outs

        def store(job: StudentJob, res: StudentResult) -> None:
            cell, nb = cells[job.tag["cell"]], job.tag["nbytes"]
            metrics = res.to_dict()
            metrics["final_acc"] = res.test_acc
            if cell.eval_classes is not None:
                metrics["class_acc"] = _class_acc(res.per_class, cell.eval_classes)
            metrics["nbytes_images"], metrics["nbytes_labels"] = nb["images"], nb["labels"]
            cfg = job.tag["config"]
            self.store.put(cfg, metrics, study=cell.study, wall_s=res.wall_s, nbytes=nb["total"],
                           codec=job.tag["codec"], version=__version__)
            outs[job.tag["cell"]][job.tag["pos"]] = {"config": cfg, "metrics": metrics, "nbytes": nb["total"],
                                                     "codec": job.tag["codec"], "wall_s": res.wall_s,
                                                     "cached": False}

        first = cells[jobs[0].tag["cell"]]
        what = (f"{first.study} ipc={first.set.ipc} {first.set.label.kind} e={first.set.label.expert_epoch}"
                if len(cells) == 1 else f"{first.study}: {len(jobs)} students")
        if not isinstance(self.workers, (int, str)):  # the caller's executor
            groups = [(self.workers, jobs)]
        elif self.workers == "ray":  # every student a Ray task
            groups, what = [(self._executor("ray"), jobs)], f"{what} on Ray"
        else:
            groups, workers = self._local_groups(cells, jobs)
            what += f" on {workers} workers" if workers > 1 and len(cells) > 1 else ""
        with self._bar(what, sum(j.recipe.total_epochs(len(j.images)) for j in jobs)) as tick:
            for executor, group in groups:
                executor.run(group, store, on_epoch=tick)
        return outs

    def _cell_images(self, cell: CellSpec) -> int:
        """Images of a cell's set as its configuration says (what the worker decision weighs)."""
        return len(cell.given) if cell.given is not None else cell.set.ipc * self.prepared.num_classes

    def _local_groups(self, cells: Sequence[CellSpec], jobs: list[StudentJob]) -> tuple[list, int]:
        """(executor, jobs) pairs on this machine, and the number of worker processes used.

        Students with small batches may train in parallel (where that pays, see softlabels.engine.executors);
        like the compile choice, the decision weighs every seed of the cells, not what is left, so a resumed
        sweep trains on the same thread counts as an uninterrupted one."""
        if self._stacking():  # stacked students train in this process, where the choice of workers is moot
            return [(self._executor("stacked"), jobs)], 1
        batch = [min(c.student.batch_size, self._cell_images(c)) for c in cells]
        small = {i for i in range(len(cells)) if batch[i] <= PARALLEL_MAX_BATCH}
        workers = resolve_workers(
            self.workers, self.device, n_jobs=sum(len(cells[i].seeds) for i in small),
            batch=max((batch[i] for i in small), default=0),
            steps=sum(planned_steps(cells[i].student, self._cell_images(cells[i]), len(cells[i].seeds))
                      for i in small))
        if workers == 1:
            return [(self._executor(1), jobs)], 1
        return [(self._executor(workers), [j for j in jobs if j.tag["cell"] in small]),
                (self._executor(1), [j for j in jobs if j.tag["cell"] not in small])], workers

    def _lookup(self, cell: CellSpec) -> tuple[list[dict], list[tuple[int, int, dict]]]:
        """Stored results of ``cell`` (one dict per seed, ``{}`` where missing) and its missing seeds."""
        out: list[dict] = []
        todo = []
        for pos, seed in enumerate(cell.seeds):
            cfg = self.run_config(cell, seed)
            rec = self.store.get(ResultsStore.key(cfg))
            if rec is None:
                todo.append((pos, seed, cfg))
                out.append({})
                continue
            metrics = dict(rec.metrics)
            if cell.eval_classes is not None:
                metrics["class_acc"] = _class_acc(metrics["per_class"], cell.eval_classes)
            out.append({"config": rec.config, "metrics": metrics, "nbytes": rec.nbytes, "codec": rec.codec,
                        "wall_s": rec.wall_s, "cached": True})
        return out, todo

    def _stacking(self) -> bool:
        """Whether students may be stacked: an explicit size, or ``auto`` on CUDA (off on CPU, where the
        default must not change)."""
        s = self.batch_students
        return s != "off" and (s != "auto" or torch.device(self.device).type == "cuda")

    def _executor(self, workers: int | str):
        if workers not in self._executors:
            if workers == "stacked":
                self._executors[workers] = BatchedExecutor(self.evals, device=self.device, engine=self.engine,
                                                           setting=self.batch_students)
            else:
                self._executors[workers] = make_executor(
                    workers, self.evals, device=self.device, engine=self.engine
                )
        return self._executors[workers]

    def close(self) -> None:
        """Stop worker processes or leave Ray (if any were started), drop compiled graphs and cached logits,
        close the results store."""
        for ex in self._executors.values():
            ex.close()
        self._executors.clear()
        self.engine.close()
        self.logits.clear()
        if self._store is not None:
            self._store.close()
            self._store = None

    def __enter__(self) -> Lab:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ---- progress -----------------------------------------------------------------------------------
    @contextmanager
    def _bar(self, what: str, total: int):
        if not self.progress:
            yield lambda k=1: None
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                      TimeElapsedColumn(), transient=True) as p:
            task = p.add_task(what, total=total)
            yield lambda k=1: p.advance(task, k)


def _class_acc(per_class: Sequence[float], classes: Sequence[int]) -> float:
    """Accuracy on the test images of ``classes`` (mean of their per-class accuracies)."""
    return float(torch.tensor([per_class[c] for c in classes], dtype=torch.float64).nanmean())
