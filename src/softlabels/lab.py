"""The workflow facade: one output folder holding experts, compressed sets and the results store.

``Lab`` ties the pure parts together. Every student run goes through :meth:`Lab.evaluate`, which keys
the run by its full config, skips what the store already holds (so interrupted studies resume) and
stores what it computes, with the compressed set's codec and measured bytes.
"""

from __future__ import annotations

import time
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
from .experts import Trajectory, train_expert
from .store import ResultsStore
from .train import EvalSets, planned_steps, resolve_compile, resolve_device, train_student

Progress = Callable[[str, int, int], None]


@dataclass
class Lab:
    """``Lab(out_dir, data=DataSpec(...))``: construction only stores settings; work happens in calls."""

    out_dir: Path
    data: DataSpec = field(default_factory=DataSpec)
    device: str = "cpu"
    root: str | None = None
    dataset: object | None = None
    progress: bool = True
    _prepared: PreparedData | None = field(default=None, repr=False)
    _store: ResultsStore | None = field(default=None, repr=False)
    _evals: EvalSets | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self.out_dir = Path(self.out_dir)
        self.device = str(resolve_device(self.device))

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
        out: list[dict] = []
        position = {seed: i for i, seed in enumerate(seeds)}
        todo = []
        for seed in seeds:
            cfg = self.run_config(study=study, ipc=ipc, label=label, student=student, seed=seed,
                                  image_seed=image_seed, protocol=protocol, experts=experts, extra=extra,
                                  image_codec=image_codec)
            rec = self.store.get(ResultsStore.key(cfg))
            if rec is not None:
                metrics = dict(rec.metrics)
                if eval_classes is not None:
                    metrics["class_acc"] = _class_acc(metrics["per_class"], eval_classes)
                out.append({"config": rec.config, "metrics": metrics, "nbytes": rec.nbytes,
                            "wall_s": rec.wall_s, "cached": True})
            else:
                todo.append((seed, cfg))
                out.append({})
        if not todo:
            return out
        if make_set is not None:
            cset = make_set()
        else:
            cset = build_compressed_set(self.prepared, ipc=ipc, label=label, experts=experts, seed=image_seed,
                                        image_codec=image_codec, device=self.device)
        x = cset.model_input(device=self.device, zca=self.prepared.zca)
        # all seeds, not the ones left: a resumed cell must take the same (compiled or eager) path
        steps = planned_steps(student, len(cset), len(seeds))
        compile_model = resolve_compile(student.compile, torch.device(self.device), total_steps=steps)
        nb = cset.nbytes
        with self._bar(f"{study} ipc={ipc} {label.kind} e={label.expert_epoch}", student.epochs * len(todo)) as tick:
            for seed, cfg in todo:
                t0 = time.perf_counter()
                res = train_student(x, cset.labels, student, seed=seed, evals=self.evals, protocol=protocol,
                                    device=self.device, compile_model=compile_model, on_epoch=tick)
                metrics = res.to_dict()
                metrics["final_acc"] = res.test_acc
                if eval_classes is not None:
                    metrics["class_acc"] = _class_acc(res.per_class, eval_classes)
                metrics["nbytes_images"], metrics["nbytes_labels"] = nb["images"], nb["labels"]
                wall = time.perf_counter() - t0
                self.store.put(cfg, metrics, study=study, wall_s=wall, nbytes=nb["total"],
                               codec=f"{cset.manifest['image_codec']}|{cset.manifest['label_codec']}",
                               version=__version__)
                out[position[seed]] = {"config": cfg, "metrics": metrics, "nbytes": nb["total"], "wall_s": wall,
                                       "cached": False}
        return out

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
