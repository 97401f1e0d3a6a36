"""Experts (teachers): trained on hard labels with a checkpoint after every epoch; resumable.

An expert lives in ``<root>/experts/<key>/`` where ``key`` hashes the recipe and the exact data it
sees. ``epoch_0000.safetensors`` holds the initial weights and ``epoch_E`` the weights after E epochs
(the paper's convention). ``manifest.json`` records the recipe, data fingerprint, seed and per-epoch
train / validation / test accuracy. An interrupted run resumes from its last finished epoch with the
same optimiser and random-generator state, so it ends bit-identical to an uninterrupted one.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .config import ExpertRecipe
from .data.prepared import PreparedData
from .engine.evaluation import accuracy, predict
from .engine.runtime import autocast_ctx, resolve_device, resolve_precision, tune_allocator
from .io import config_hash, load_tensors, read_json, save_tensors, write_json
from .models import get_model_spec, init_model
from .validation import CorruptFileError, DataNotFoundError
from .version import __version__

EpochCallback = Callable[[int, dict], None]


def expert_key(recipe: ExpertRecipe, prepared: PreparedData) -> str:
    return config_hash({"recipe": recipe.to_dict(), "data": prepared.split_key(),
                        "zca": bool(prepared.spec.zca), "kind": "expert"})


@dataclass
class Trajectory:
    """A trained (or partially trained) expert on disk."""

    path: Path
    manifest: dict

    @classmethod
    def open(cls, path: str | Path) -> Trajectory:
        path = Path(path)
        mf = path / "manifest.json"
        if not mf.exists():
            raise DataNotFoundError(f"no expert at {path} (missing manifest.json); train one with "
                                    "`softlabels expert train`")
        return cls(path, read_json(mf))

    @property
    def key(self) -> str:
        return self.manifest["key"]

    @property
    def recipe(self) -> ExpertRecipe:
        return ExpertRecipe.from_dict(self.manifest["recipe"])

    @property
    def epochs_done(self) -> int:
        return int(self.manifest["epochs_done"])

    @property
    def complete(self) -> bool:
        return self.epochs_done >= self.recipe.epochs

    def history(self) -> list[dict]:
        """Per-epoch records: epoch, train_acc, val_acc, test_acc, loss, wall_s (epoch 0 = init)."""
        return list(self.manifest["history"])

    def checkpoint_path(self, epoch: int) -> Path:
        return self.path / f"epoch_{epoch:04d}.safetensors"

    def state_dict(self, epoch: int) -> dict[str, torch.Tensor]:
        if not 0 <= epoch <= self.epochs_done:
            raise ValueError(f"expert {self.key} has epochs 0..{self.epochs_done}; epoch {epoch} is not "
                             "available (train it longer with a larger --epochs)")
        tensors, meta = load_tensors(self.checkpoint_path(epoch))
        if meta.get("expert", self.key) != self.key:
            raise CorruptFileError(f"{self.checkpoint_path(epoch)} belongs to expert {meta.get('expert')}, "
                                   f"not {self.key}")
        return tensors

    def model(self, epoch: int, *, device: str | torch.device = "cpu") -> nn.Module:
        m = self.manifest
        r = self.recipe
        net = init_model(r.model, r.width, seed=r.seed, in_channels=m["in_channels"],
                         num_classes=m["num_classes"], image_size=tuple(m["image_size"]),
                         device=torch.device(device))
        net.load_state_dict(self.state_dict(epoch))
        net.eval()
        return net


def train_expert(prepared: PreparedData, recipe: ExpertRecipe, *, root: str | Path,
                 device: str | torch.device = "cpu", on_epoch: EpochCallback | None = None,
                 stop_after: int | None = None) -> Trajectory:
    """Train (or resume, or reuse) the expert for ``recipe`` on ``prepared``'s train pool.

    ``stop_after`` ends the call after that many new epochs (used to test resumption); the run
    continues on the next call.
    """
    dev = resolve_device(device)
    if dev.type == "cpu":
        tune_allocator()
    key = expert_key(recipe, prepared)
    path = Path(root) / "experts" / key
    ds = prepared.dataset
    x_train, y_train = prepared.tensors("train", device=dev)
    evals = {part: prepared.tensors(part, device=dev) for part in ("val", "test")
             if part == "test" or prepared.val_idx.numel()}
    n = x_train.shape[0]
    model = init_model(recipe.model, recipe.width, seed=recipe.seed, in_channels=ds.image_shape[0],
                       num_classes=ds.num_classes, image_size=ds.image_shape[1:], device=dev)
    opt = torch.optim.SGD(model.parameters(), lr=recipe.lr, momentum=recipe.momentum,
                          weight_decay=recipe.weight_decay)
    gen = torch.Generator(device=dev).manual_seed(recipe.seed * 7919 + 1)
    amp = resolve_precision(recipe.precision, dev)

    def evaluate(loss: float, wall: float, epoch: int) -> dict:
        rec = {"epoch": epoch, "loss": loss, "wall_s": wall,
               "train_acc": accuracy(predict(model, x_train[:2000], amp_dtype=amp), y_train[:2000])}
        for part, (x, y) in evals.items():
            rec[f"{part}_acc"] = accuracy(predict(model, x, amp_dtype=amp), y)
        return rec

    if (path / "manifest.json").exists():
        traj = Trajectory.open(path)
        manifest = traj.manifest
        start = traj.epochs_done
        model.load_state_dict(traj.state_dict(start))
        if start > 0 and not traj.complete:
            state, _ = load_tensors(path / "resume.safetensors")
            gen.set_state(state.pop("__generator__"))
            for i, p in enumerate(model.parameters()):
                if f"momentum.{i}" in state:
                    opt.state[p]["momentum_buffer"] = state[f"momentum.{i}"].to(dev)
    else:
        spec = get_model_spec(recipe.model, **({"width": recipe.width} if recipe.width else {}))
        manifest = {
            "key": key, "kind": "expert", "softlabels_version": __version__, "recipe": recipe.to_dict(),
            "model_spec": spec.to_dict(), "dataset": ds.name, "dataset_fingerprint": ds.fingerprint(),
            "split_key": prepared.split_key(), "data_spec": prepared.spec.to_dict(),
            "num_train": int(n), "num_val": int(prepared.val_idx.numel()),
            "num_classes": ds.num_classes, "in_channels": ds.image_shape[0],
            "image_size": list(ds.image_shape[1:]), "seed": recipe.seed, "device": str(dev),
            "precision": "bf16" if amp is not None else "fp32", "epochs_done": 0, "history": [],
        }
        save_tensors(
            path / "epoch_0000.safetensors", model.state_dict(), metadata={"expert": key, "epoch": "0"}
        )
        manifest["history"].append(evaluate(float("nan"), 0.0, 0))
        write_json(path / "manifest.json", manifest)
        start = 0

    per_epoch = min(n, recipe.train_images or n)
    new = 0
    for epoch in range(start, recipe.epochs):
        if stop_after is not None and new >= stop_after:
            break
        t0 = time.perf_counter()
        for g in opt.param_groups:  # reference --decay: x0.1 after epoch epochs // 2 + 1
            g["lr"] = recipe.lr * (0.1 if recipe.decay and epoch > recipe.epochs // 2 else 1.0)
        model.train()
        perm = torch.randperm(n, generator=gen, device=dev)[:per_epoch]
        total, count = 0.0, 0
        for s in range(0, per_epoch, recipe.batch_size):
            idx = perm[s:s + recipe.batch_size]
            xb, yb = x_train[idx], y_train[idx]
            if recipe.dsa:
                from .augment import dsa

                xb = dsa(xb, generator=gen)
            with autocast_ctx(dev, amp):
                out = model(xb)
            loss = F.cross_entropy(out.float(), yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss.detach()) * idx.numel()
            count += idx.numel()
        done = epoch + 1
        rec = evaluate(total / max(count, 1), time.perf_counter() - t0, done)
        save_tensors(path / f"epoch_{done:04d}.safetensors", model.state_dict(),
                     metadata={"expert": key, "epoch": str(done)})
        resume = {"__generator__": gen.get_state()}
        for i, p in enumerate(model.parameters()):
            buf = opt.state.get(p, {}).get("momentum_buffer")
            if buf is not None:
                resume[f"momentum.{i}"] = buf
        save_tensors(path / "resume.safetensors", resume, metadata={"expert": key, "epoch": str(done)})
        manifest["history"].append(rec)
        manifest["epochs_done"] = done
        write_json(path / "manifest.json", manifest)
        new += 1
        if on_epoch is not None:
            on_epoch(done, rec)
    return Trajectory(path, manifest)


def find_expert(prepared: PreparedData, recipe: ExpertRecipe, *, root: str | Path) -> Trajectory | None:
    path = Path(root) / "experts" / expert_key(recipe, prepared)
    return Trajectory.open(path) if (path / "manifest.json").exists() else None
