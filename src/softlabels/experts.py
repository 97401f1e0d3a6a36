"""Experts (teachers): trained on hard labels with checkpoints along the way; crash-safe and resumable.

An expert lives in ``<root>/experts/<key>/`` where ``key`` hashes the recipe and the exact data it sees.
``ckpt_<step>.safetensors`` holds the weights after that many optimizer steps (step 0: the initial weights)
and, beside them, everything a resume needs (optimizer state, generator state, the current pass's order and
position in it). ``manifest.json`` is the one commit point: it lists every checkpoint with its step and the
SHA-256 of its file, and the per-checkpoint train / validation / test accuracy. A checkpoint file the
manifest does not name (a crash between the two writes) is ignored and written again. A resume verifies the
last listed checkpoint and rolls back to the last one whose file is intact, saying so; it then ends
bit-identical to an uninterrupted run. One process trains an expert at a time (a lock file; a process that
dies releases it).
"""

from __future__ import annotations

import contextlib
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .checkpoints import check_external_files, file_sha256, read_external_checkpoint
from .config import ExpertRecipe
from .data.prepared import PreparedData
from .engine.evaluation import accuracy, predict
from .engine.runtime import autocast_ctx, resolve_device, resolve_precision, tune_allocator
from .io import config_hash, load_tensors, read_json, save_tensors, write_json
from .models import get_model_spec, init_model
from .validation import CorruptFileError, DataNotFoundError
from .version import __version__

__all__ = ["Trajectory", "expert_key", "find_expert", "train_expert"]

EpochCallback = Callable[[int, dict], None]
FORMAT = "softlabels.expert/2"
_RESUME = "resume."


def expert_key(recipe: ExpertRecipe, prepared: PreparedData) -> str:
    return config_hash({"recipe": recipe.to_dict(), "data": prepared.split_key(),
                        "zca": bool(prepared.spec.zca), "kind": "expert"})


@dataclass
class Trajectory:
    """A trained (or partially trained) expert on disk; checkpoint k is "expert epoch" k."""

    path: Path
    manifest: dict

    @classmethod
    def open(cls, path: str | Path) -> Trajectory:
        path = Path(path)
        mf = path / "manifest.json"
        if not mf.exists():
            raise DataNotFoundError(f"no expert at {path} (missing manifest.json); train one with "
                                    "`softlabels expert train`")
        manifest = read_json(mf)
        if manifest.get("format") != FORMAT:
            raise CorruptFileError(f"{path} holds an expert of another format ({manifest.get('format')!r}); "
                                   "delete the folder to train it again")
        if manifest["recipe"].get("kind") == "external":
            check_external_files(manifest)  # every checkpoint file still there, unchanged in size
        return cls(path, manifest)

    @property
    def key(self) -> str:
        return self.manifest["key"]

    @property
    def external(self) -> bool:
        """Made elsewhere and loaded from a folder of checkpoints (``experts_external``), not trained here."""
        return self.manifest["recipe"].get("kind") == "external"

    @property
    def recipe(self) -> ExpertRecipe:
        if self.external:
            raise ValueError(f"expert {self.key} was made elsewhere ({self.manifest['recipe']['source']}): "
                             "it has no ExpertRecipe; see manifest['recipe']")
        return ExpertRecipe.from_dict(self.manifest["recipe"])

    @property
    def epochs(self) -> tuple[int, ...]:
        """The expert epochs it has checkpoints of (0, 1, ..., epochs_done for one trained here)."""
        return tuple(int(c.get("epoch", i)) for i, c in enumerate(self.manifest["checkpoints"]))

    @property
    def epochs_done(self) -> int:
        """The last expert epoch (for one trained here: the number of checkpoints after the initial ones)."""
        return self.epochs[-1]

    @property
    def steps_done(self) -> int:
        return int(self.manifest["checkpoints"][-1]["step"])

    @property
    def complete(self) -> bool:
        return self.steps_done >= int(self.manifest["total_steps"])

    def history(self) -> list[dict]:
        """Per checkpoint: epoch (its index), step, passes (images seen / pool size), train_acc, val_acc,
        test_acc, loss, wall_s (an external expert's: epoch, and the accuracies if it was evaluated)."""
        return list(self.manifest["history"])

    def checkpoint_step(self, epoch: int) -> int:
        return int(self._entry(epoch)["step"])

    def checkpoint_path(self, epoch: int) -> Path:
        return self.path / self._entry(epoch)["file"]  # an external expert's files are absolute paths

    def _entry(self, epoch: int) -> dict:
        ckpts = self.manifest["checkpoints"]
        if "epoch" not in ckpts[0]:  # trained here: checkpoint k is epoch k
            if not 0 <= epoch <= self.epochs_done:
                raise ValueError(f"expert {self.key} has epochs 0..{self.epochs_done}; epoch {epoch} is not "
                                 "available (train it longer)")
            return ckpts[epoch]
        for c in ckpts:
            if int(c["epoch"]) == epoch:
                return c
        raise ValueError(f"expert {self.key} has checkpoints of epochs {_ranges(self.epochs)}; epoch {epoch} "
                         "is not among them")

    def state_dict(self, epoch: int) -> dict[str, torch.Tensor]:
        if self.external:
            return read_external_checkpoint(self._entry(epoch))
        tensors, meta = load_tensors(self.checkpoint_path(epoch))
        if meta.get("expert", self.key) != self.key:
            raise CorruptFileError(f"{self.checkpoint_path(epoch)} belongs to expert {meta.get('expert')}, "
                                   f"not {self.key}")
        return {k: v for k, v in tensors.items() if not k.startswith(_RESUME)}

    def model(self, epoch: int, *, device: str | torch.device = "cpu") -> nn.Module:
        m = self.manifest
        arch = m["recipe"]  # the model and width: an ExpertRecipe's, or an external expert's
        net = init_model(arch["model"], arch.get("width"), seed=int(arch.get("seed", 0)),
                         in_channels=m["in_channels"], num_classes=m["num_classes"],
                         image_size=tuple(m["image_size"]), device=torch.device(device))
        net.load_state_dict(self.state_dict(epoch))
        net.eval()
        return net


def _ranges(epochs: tuple[int, ...]) -> str:
    """``(0, 1, 2, 5)`` -> ``0-2, 5``: a short list of available epochs for messages."""
    parts: list[str] = []
    for i, e in enumerate(epochs):
        if i and e == epochs[i - 1] + 1:
            parts[-1] = f"{parts[-1].split('-')[0]}-{e}"
        else:
            parts.append(str(e))
    return ", ".join(parts)


@contextlib.contextmanager
def _training_lock(path: Path) -> Iterator[None]:
    """An exclusive lock on the expert's folder while this process trains it; another process waits (told
    so) and then finds the expert trained. The OS releases the lock of a process that dies."""
    path.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # pragma: no cover - no POSIX locks (Windows): one process at a time is on the user
        yield
        return
    with open(path / ".lock", "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"softlabels: another process is training expert {path.name}; waiting for it to finish",
                  file=sys.stderr, flush=True)
            fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _consistent(path: Path, manifest: dict) -> dict:
    """The manifest cut back to its last checkpoint whose file exists and matches its hash."""
    ckpts = manifest["checkpoints"]
    good = len(ckpts)
    while good > 0 and not _intact(path / ckpts[good - 1]["file"], ckpts[good - 1]["sha256"]):
        good -= 1
    if good == len(ckpts):
        return manifest
    if good == 0:
        raise CorruptFileError(f"{path}: no intact checkpoint is left; delete the folder to train it again")
    warnings.warn(
        f"expert {path.name}: checkpoint {ckpts[good]['file']} is missing or corrupt; resuming from "
        f"{ckpts[good - 1]['file']} (step {ckpts[good - 1]['step']})",
        RuntimeWarning,
        stacklevel=3,
    )
    return dict(manifest, checkpoints=ckpts[:good], history=manifest["history"][:good])


def _intact(path: Path, sha256: str) -> bool:
    return path.exists() and file_sha256(path) == sha256


def train_expert(prepared: PreparedData, recipe: ExpertRecipe, *, root: str | Path,
                 device: str | torch.device = "cpu", on_epoch: EpochCallback | None = None,
                 stop_after: int | None = None) -> Trajectory:
    """Train (or resume, or reuse) the expert for ``recipe`` on ``prepared``'s train pool.

    ``stop_after`` ends the call after that many new checkpoints (used to test resumption); the run
    continues on the next call. ``on_epoch(k, record)`` is called after checkpoint k.
    """
    key = expert_key(recipe, prepared)
    path = Path(root) / "experts" / key
    with _training_lock(path):
        return _train(prepared, recipe, key, path, resolve_device(device), on_epoch, stop_after)


def _train(prepared, recipe, key, path, dev, on_epoch, stop_after) -> Trajectory:
    if dev.type == "cpu":
        tune_allocator()
    ds = prepared.dataset
    x_train, y_train = prepared.tensors("train", device=dev)
    evals = {part: prepared.tensors(part, device=dev) for part in ("val", "test")
             if part == "test" or prepared.val_idx.numel()}
    n = x_train.shape[0]
    total, per_pass, ckpt_steps = recipe.schedule(n)
    model = init_model(recipe.model, recipe.width, seed=recipe.seed, in_channels=ds.image_shape[0],
                       num_classes=ds.num_classes, image_size=ds.image_shape[1:], device=dev)
    opt = torch.optim.SGD(model.parameters(), lr=recipe.lr, momentum=recipe.momentum,
                          weight_decay=recipe.weight_decay)
    gen = torch.Generator(device=dev).manual_seed(recipe.seed * 7919 + 1)
    amp = resolve_precision(recipe.precision, dev)
    perm, offset, passes = None, per_pass, 0  # the current pass's order and position in it

    def evaluate(loss: float, wall: float, index: int, step: int) -> dict:
        rec = {
            "epoch": index,
            "step": step,
            "passes": step * recipe.batch_size / n,
            "loss": loss,
            "wall_s": wall,
            "train_acc": accuracy(predict(model, x_train[:2000], amp_dtype=amp), y_train[:2000]),
        }
        for part, (x, y) in evals.items():
            rec[f"{part}_acc"] = accuracy(predict(model, x, amp_dtype=amp), y)
        return rec

    def commit(step: int, rec: dict) -> None:
        """One checkpoint: its file (weights + resume state) first, then the manifest that names it."""
        tensors = dict(model.state_dict())
        tensors[_RESUME + "generator"] = gen.get_state()
        for i, p in enumerate(model.parameters()):
            buf = opt.state.get(p, {}).get("momentum_buffer")
            if buf is not None:
                tensors[f"{_RESUME}momentum.{i}"] = buf
        if perm is not None:
            tensors[_RESUME + "perm"] = perm.to(torch.int64)
        tensors[_RESUME + "position"] = torch.tensor([offset, passes], dtype=torch.int64)
        name = f"ckpt_{step:07d}.safetensors"
        save_tensors(path / name, tensors, metadata={"expert": key, "step": str(step)})
        manifest["checkpoints"].append({"step": step, "file": name, "sha256": file_sha256(path / name)})
        manifest["history"].append(rec)
        write_json(path / "manifest.json", manifest)

    if (path / "manifest.json").exists():
        manifest = _consistent(path, Trajectory.open(path).manifest)
        last = manifest["checkpoints"][-1]
        state, _ = load_tensors(path / last["file"])
        step = int(last["step"])
        model.load_state_dict({k: v for k, v in state.items() if not k.startswith(_RESUME)})
        gen.set_state(state[_RESUME + "generator"])
        for i, p in enumerate(model.parameters()):
            if f"{_RESUME}momentum.{i}" in state:
                opt.state[p]["momentum_buffer"] = state[f"{_RESUME}momentum.{i}"].to(dev)
        if _RESUME + "perm" in state:
            perm = state[_RESUME + "perm"].to(dev)
        offset, passes = (int(v) for v in state[_RESUME + "position"])
    else:
        spec = get_model_spec(recipe.model, **({"width": recipe.width} if recipe.width else {}))
        manifest = {
            "format": FORMAT,
            "key": key,
            "kind": "expert",
            "softlabels_version": __version__,
            "recipe": recipe.to_dict(),
            "model_spec": spec.to_dict(),
            "dataset": ds.name,
            "dataset_fingerprint": ds.fingerprint(),
            "split_key": prepared.split_key(),
            "data_spec": prepared.spec.to_dict(),
            "num_train": int(n),
            "num_val": int(prepared.val_idx.numel()),
            "num_classes": ds.num_classes,
            "in_channels": ds.image_shape[0],
            "image_size": list(ds.image_shape[1:]),
            "seed": recipe.seed,
            "device": str(dev),
            "precision": "bf16" if amp is not None else "fp32",
            "total_steps": total,
            "checkpoint_steps": ckpt_steps,
            "checkpoints": [],
            "history": [],
        }
        step = 0
        commit(0, evaluate(float("nan"), 0.0, 0, 0))

    new, t0, loss_sum, seen = 0, time.perf_counter(), 0.0, 0
    for target in (s for s in ckpt_steps if s > step):
        if stop_after is not None and new >= stop_after:
            break
        while step < target:
            if offset >= per_pass:  # a new pass over the pool (per_pass images of it, for legacy recipes)
                perm, offset, passes = torch.randperm(n, generator=gen, device=dev)[:per_pass], 0, passes + 1
            half = (passes - 1 > recipe.epochs // 2) if recipe.steps is None else step >= total // 2
            for g in opt.param_groups:  # the reference's --decay: x0.1 for the second half
                g["lr"] = recipe.lr * (0.1 if recipe.decay and half else 1.0)
            model.train()
            idx = perm[offset:offset + recipe.batch_size]
            offset += recipe.batch_size
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
            loss_sum += float(loss.detach()) * idx.numel()
            seen += idx.numel()
            step += 1
        index = len(manifest["checkpoints"])
        rec = evaluate(loss_sum / max(seen, 1), time.perf_counter() - t0, index, step)
        commit(step, rec)
        new, t0, loss_sum, seen = new + 1, time.perf_counter(), 0.0, 0
        if on_epoch is not None:
            on_epoch(index, rec)
    return Trajectory(path, manifest)


def find_expert(prepared: PreparedData, recipe: ExpertRecipe, *, root: str | Path) -> Trajectory | None:
    path = Path(root) / "experts" / expert_key(recipe, prepared)
    return Trajectory.open(path) if (path / "manifest.json").exists() else None

