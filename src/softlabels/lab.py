"""The workflow facade: one output folder holding experts, compressed sets and the results store.

``Lab`` ties the pure parts together. Every student run goes through :meth:`Lab.evaluate`, which keys
the run by its full config, skips what the store already holds (so interrupted studies resume) and
stores what it computes, with the compressed set's codec and measured bytes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch

from . import __version__
from .compressed import CompressedSet
from .config import DataSpec, ExpertRecipe, LabelSpec, StudentRecipe
from .data.prepared import PreparedData, prepare_data
from .distill import build_compressed_set
from .executor import (
    PARALLEL_MAX_BATCH,
    StudentJob,
    check_workers,
    check_workers_device,
    make_executor,
    resolve_workers,
)
from .experts import Trajectory, train_expert
from .store import ResultsStore
from .train import EvalSets, StudentResult, planned_steps, resolve_compile, resolve_device

Progress = Callable[[str, int, int], None]


@dataclass(frozen=True)
class CellSpec:
    """One :meth:`Lab.evaluate` call as a value (for :meth:`Lab.evaluate_many`): the students of ``seeds``
    on the set for (``ipc``, ``label``, ``image_seed``)."""

    ipc: int
    label: LabelSpec
    student: StudentRecipe
    seeds: tuple[int, ...]
    experts: tuple[Trajectory, ...] = ()
    image_seed: int = 0
    protocol: str = "clean"
    study: str = "baseline"
    extra: dict | None = None
    make_set: Callable[[], CompressedSet] | None = None
    eval_classes: tuple[int, ...] | None = None
    image_codec: str = "raw"

    def __post_init__(self) -> None:
        object.__setattr__(self, "seeds", tuple(int(s) for s in self.seeds))
        object.__setattr__(self, "experts", tuple(self.experts))
        if self.eval_classes is not None:
            object.__setattr__(self, "eval_classes", tuple(self.eval_classes))
        if not self.seeds:
            raise ValueError("a cell needs at least one student seed, e.g. seeds=(0, 1, 2)")


@dataclass
class Lab:
    """``Lab(out_dir, data=DataSpec(...))``: construction only stores settings; work happens in calls."""

    out_dir: Path
    data: DataSpec = field(default_factory=DataSpec)
    device: str = "cpu"
    root: str | None = None
    dataset: object | None = None
    progress: bool = True
    workers: int | str = "auto"  # where students train (softlabels.executor): "auto", N processes or "ray"
    _prepared: PreparedData | None = field(default=None, repr=False)
    _store: ResultsStore | None = field(default=None, repr=False)
    _evals: EvalSets | None = field(default=None, repr=False)
    _executors: dict = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self.out_dir = Path(self.out_dir)
        self.device = str(resolve_device(self.device))
        check_workers_device(check_workers(self.workers), self.device)

    # ---- lazily built parts -------------------------------------------------------------------------
    @property
    def prepared(self) -> PreparedData:
        if self._prepared is None:
            self._prepared = prepare_data(self.data, root=self.root, dataset=self.dataset)  # type: ignore[arg-type]
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

    # ---- experts ------------------------------------------------------------------------------------
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
        return [self.expert(recipe.replace(seed=recipe.seed + i)) for i in range(n)]

    # ---- students -----------------------------------------------------------------------------------
    def run_config(self, *, study: str, ipc: int, label: LabelSpec, student: StudentRecipe, seed: int,
                   image_seed: int, protocol: str, experts: Sequence[Trajectory], extra: dict | None = None,
                   image_codec: str = "raw") -> dict:
        used = [t.key for t in experts[: label.ensemble]] if label.kind == "soft" else []
        return {
            "study": study, "dataset": self.prepared.dataset.name, "data": self.data.to_dict(),
            "split_key": self.prepared.split_key(), "ipc": ipc, "image_seed": image_seed,
            "label": label.to_dict(), "expert_key": ",".join(used),
            "expert_epoch": label.expert_epoch if label.kind == "soft" else None,
            "temperature": label.temperature, "codec": label.codec, "image_codec": image_codec,
            "selection": "random",
            "model": student.model if student.width is None else f"{student.model}-w{student.width}",
            "student": student.identity(), "seed": seed, "protocol": protocol, **(extra or {}),
        }

    def evaluate(self, *, ipc: int, label: LabelSpec, student: StudentRecipe, seeds: Sequence[int],
                 experts: Sequence[Trajectory] = (), image_seed: int = 0, protocol: str = "clean",
                 study: str = "baseline", extra: dict | None = None,
                 make_set: Callable[[], CompressedSet] | None = None,
                 eval_classes: Sequence[int] | None = None, image_codec: str = "raw") -> list[dict]:
        """Train/evaluate one student per seed on the set for (ipc, label, image_seed); resumable.

        Returns one dict per seed: ``config``, ``metrics`` (test_acc, val_acc, paper_acc, train_acc,
        per_class, ...), ``nbytes``, ``cached``. ``make_set`` overrides how the set is built (studies
        that remove images or change labels); its identity must be captured in ``extra``.
        """
        return self.evaluate_many([CellSpec(ipc=ipc, label=label, student=student, seeds=seeds, experts=experts,
                                        image_seed=image_seed, protocol=protocol, study=study, extra=extra,
                                        make_set=make_set, eval_classes=eval_classes, image_codec=image_codec)])[0]

    def evaluate_many(self, cells: Sequence[CellSpec]) -> list[list[dict]]:
        """:meth:`evaluate` for several cells at once, so their students can train in parallel
        (``workers``): one list of per-seed dicts per cell, in order. Each result is stored as soon as its
        student finishes; a re-run trains only what the store lacks."""
        outs: list[list[dict]] = []
        jobs: list[StudentJob] = []
        for ci, cell in enumerate(cells):
            out, todo = self._lookup(cell)
            outs.append(out)
            if not todo:
                continue
            cset = cell.make_set() if cell.make_set is not None else build_compressed_set(
                self.prepared, ipc=cell.ipc, label=cell.label, experts=cell.experts, seed=cell.image_seed,
                image_codec=cell.image_codec, device=self.device)
            x = cset.model_input(device=self.device, zca=self.prepared.zca)
            # all seeds, not the ones left: a resumed cell must take the same (compiled or eager) path
            steps = planned_steps(cell.student, len(cset), len(cell.seeds))
            compile_model = resolve_compile(cell.student.compile, torch.device(self.device), total_steps=steps)
            meta = {"cell": ci, "nbytes": cset.nbytes, "codec": f"{cset.manifest['image_codec']}|"
                                                               f"{cset.manifest['label_codec']}"}
            for pos, seed, cfg in todo:
                jobs.append(StudentJob(x, cset.labels, cell.student, seed, cell.protocol, compile_model,
                                       tag={**meta, "pos": pos, "config": cfg}))
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
                                                     "wall_s": res.wall_s, "cached": False}

        first = cells[jobs[0].tag["cell"]]
        what = f"{first.study} ipc={first.ipc} {first.label.kind} e={first.label.expert_epoch}" if len(cells) == 1 \
            else f"{first.study}: {len(jobs)} students"
        if self.workers == "ray":  # every student a Ray task
            groups, what = [(self._executor("ray"), jobs)], f"{what} on Ray"
        else:
            groups, workers = self._local_groups(cells, jobs)
            what += f" on {workers} workers" if workers > 1 and len(cells) > 1 else ""
        with self._bar(what, sum(j.recipe.epochs for j in jobs)) as tick:
            for executor, group in groups:
                executor.run(group, store, on_epoch=tick)
        return outs

    def _local_groups(self, cells: Sequence[CellSpec], jobs: list[StudentJob]) -> tuple[list, int]:
        """(executor, jobs) pairs on this machine, and the number of worker processes used.

        Students with small batches may train in parallel (where that pays, see softlabels.executor); like
        the compile choice, the decision weighs every seed of the cells (ipc x classes images each), not
        what is left, so a resumed sweep trains on the same thread counts as an uninterrupted one."""
        n_cls = self.prepared.num_classes
        batch = [min(c.student.batch_size, c.ipc * n_cls) for c in cells]
        small_cells = {i for i, c in enumerate(cells) if batch[i] <= PARALLEL_MAX_BATCH and c.student.loop != "reference"}
        workers = resolve_workers(
            self.workers, self.device, n_jobs=sum(len(cells[i].seeds) for i in small_cells),
            batch=max((batch[i] for i in small_cells), default=0),
            steps=sum(planned_steps(cells[i].student, cells[i].ipc * n_cls, len(cells[i].seeds)) for i in small_cells))
        if workers == 1:
            return [(self._executor(1), jobs)], 1
        return [(self._executor(workers), [j for j in jobs if j.tag["cell"] in small_cells]),
                (self._executor(1), [j for j in jobs if j.tag["cell"] not in small_cells])], workers

    def _lookup(self, cell: CellSpec) -> tuple[list[dict], list[tuple[int, int, dict]]]:
        """Stored results of ``cell`` (one dict per seed, ``{}`` where missing) and its missing seeds."""
        out: list[dict] = []
        todo = []
        for pos, seed in enumerate(cell.seeds):
            cfg = self.run_config(study=cell.study, ipc=cell.ipc, label=cell.label, student=cell.student, seed=seed,
                                  image_seed=cell.image_seed, protocol=cell.protocol, experts=cell.experts,
                                  extra=cell.extra, image_codec=cell.image_codec)
            rec = self.store.get(ResultsStore.key(cfg))
            if rec is not None:
                metrics = dict(rec.metrics)
                if cell.eval_classes is not None:
                    metrics["class_acc"] = _class_acc(metrics["per_class"], cell.eval_classes)
                out.append({"config": rec.config, "metrics": metrics, "nbytes": rec.nbytes,
                            "wall_s": rec.wall_s, "cached": True})
            else:
                todo.append((pos, seed, cfg))
                out.append({})
        return out, todo

    def _executor(self, workers: int | str):
        if workers not in self._executors:
            self._executors[workers] = make_executor(workers, self.evals, device=self.device)
        return self._executors[workers]

    def close(self) -> None:
        """Stop the student worker processes (started by parallel ``evaluate`` calls) or leave Ray, if any."""
        for ex in self._executors.values():
            ex.close()
        self._executors.clear()

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
