"""What an expert says about every image of the training pool, computed once per expert and stored.

Pruning scores (EL2N, GraNd, forgetting events, AUM, CCS) and feature-space selections (herding, k-centre)
all read the expert's trajectory, never a separate proxy run: the expert keeps fine early checkpoints
(:meth:`Trajectory.model`), so "early-training" scores come from its checkpoints and are "computed once per
expert". Three artifacts, each for one checkpoint ("epoch") of one expert:

* ``logits``: fp32 logits (N, K) of every pool image (un-augmented, eval mode); EL2N, forgetting, AUM and
  uncertainty are cheap functions of them;
* ``features``: the penultimate embedding (N, D) the classifier reads, stored as fp16 (it is large);
  every caller sees the stored values, so a fresh computation and a reload select the same images;
* ``grand``: per-image gradient norms (N,) of the cross-entropy (all parameters, or the head only).

An artifact lives in ``<root>/scores/<key>/`` (``root`` is the folder holding ``experts/``): a safetensors
file and a ``manifest.json`` with the spec, the expert, the data split and the file's SHA-256, both written
atomically. ``key`` hashes the spec, the expert's key and the pool's split key, so nothing else can change
what a stored score means. A file that does not match its manifest is computed again, saying so.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from ..io import config_hash, load_tensors, read_json, save_tensors, write_json
from ..validation import CorruptFileError, check_choice, check_positive_int
from ..version import __version__

if TYPE_CHECKING:
    from ..data.prepared import PreparedData
    from ..experts import Trajectory
    from ..labels.generate import LogitCache

__all__ = ["SCORE_KINDS", "ScoreSpec", "pool_features", "pool_grand", "pool_logits", "pool_scores",
           "score_dir", "score_key"]

FORMAT = "softlabels.scores/1"
SCORE_KINDS = ("logits", "features", "grand")
GRAND_PARAMS = ("all", "head")
_FILE = "scores.safetensors"


@dataclass(frozen=True, kw_only=True)
class ScoreSpec:
    """One stored per-image quantity: ``kind`` at expert checkpoint ``epoch``; ``params`` is GraNd's
    parameter set ("all", or "head": the classifier only)."""

    kind: str
    epoch: int
    params: str = "all"

    def __post_init__(self) -> None:
        check_choice("score kind", self.kind, SCORE_KINDS)
        check_positive_int("epoch", self.epoch, minimum=0)
        check_choice("params", self.params, GRAND_PARAMS)
        if self.kind != "grand" and self.params != "all":
            raise ValueError(f"params applies to grand scores only; drop it for {self.kind}")


def score_key(spec: ScoreSpec, expert: Trajectory, prepared: PreparedData) -> str:
    return config_hash({"score": asdict(spec), "expert": expert.key, "split_key": prepared.split_key(),
                        "format": FORMAT})


def score_dir(expert: Trajectory) -> Path:
    """``<root>/scores``: beside the ``experts`` folder the expert lives in (else beside the expert)."""
    p = Path(expert.path)
    return (p.parent.parent if p.parent.name == "experts" else p.parent) / "scores"


def pool_scores(prepared: PreparedData, expert: Trajectory, spec: ScoreSpec, *,
                device: str | torch.device = "cpu", cache: LogitCache | None = None) -> torch.Tensor:
    """The stored tensor of ``spec`` for every pool image (computed and stored on first use)."""
    if expert.manifest.get("split_key", prepared.split_key()) != prepared.split_key():
        raise ValueError(f"expert {expert.key} was trained on other data than this pool (split "
                         f"{expert.manifest.get('split_key')} vs {prepared.split_key()}); use this lab's "
                         "expert")
    if spec.epoch > expert.epochs_done:
        raise ValueError(
            f"score epoch {spec.epoch} exceeds expert {expert.key}'s {expert.epochs_done} epochs"
        )
    key = score_key(spec, expert, prepared)

    def load_or_compute() -> torch.Tensor:
        folder = score_dir(expert) / key
        stored = _load(folder, key)
        if stored is not None:
            return stored
        return _compute_and_store(prepared, expert, spec, key, folder, device)

    return load_or_compute() if cache is None else cache.get_or_compute(("pool-score", key), load_or_compute)


def pool_logits(prepared, expert, epoch: int, **kw) -> torch.Tensor:
    return pool_scores(prepared, expert, ScoreSpec(kind="logits", epoch=epoch), **kw)


def pool_features(prepared, expert, epoch: int, **kw) -> torch.Tensor:
    return pool_scores(prepared, expert, ScoreSpec(kind="features", epoch=epoch), **kw)


def pool_grand(prepared, expert, epoch: int, *, params: str = "all", **kw) -> torch.Tensor:
    return pool_scores(prepared, expert, ScoreSpec(kind="grand", epoch=epoch, params=params), **kw)


def _load(folder: Path, key: str) -> torch.Tensor | None:
    """The stored tensor, or None when absent; a file whose hash differs from its manifest is recomputed."""
    from ..experts import file_sha256

    mf = folder / "manifest.json"
    if not mf.exists():
        return None
    try:
        man = read_json(mf)
        if man.get("format") != FORMAT or man.get("key") != key:
            raise CorruptFileError(f"{mf} names another artifact")
        path = folder / _FILE
        if not path.exists() or file_sha256(path) != man["sha256"]:
            raise CorruptFileError(f"{path} is missing or does not match its manifest's SHA-256")
        return load_tensors(path)[0]["scores"]
    except (CorruptFileError, KeyError) as e:
        warnings.warn(f"stored scores {folder.name}: {e}; computing them again", RuntimeWarning, stacklevel=4)
        return None


def _compute_and_store(prepared, expert, spec: ScoreSpec, key: str, folder: Path, device) -> torch.Tensor:
    from ..experts import file_sha256

    t0 = time.perf_counter()
    values = _compute(prepared, expert, spec, device).contiguous()
    wall = time.perf_counter() - t0
    save_tensors(folder / _FILE, {"scores": values}, metadata={"key": key, "expert": expert.key})
    write_json(folder / "manifest.json", {
        "format": FORMAT, "key": key, "spec": asdict(spec), "expert": expert.key,
        "split_key": prepared.split_key(), "dataset": prepared.dataset.name,
        "num_images": int(values.shape[0]),
        "shape": list(values.shape), "dtype": str(values.dtype).replace("torch.", ""),
        "sha256": file_sha256(folder / _FILE), "device": str(device), "wall_s": wall,
        "softlabels_version": __version__,
    })
    return values


def _compute(prepared, expert, spec: ScoreSpec, device) -> torch.Tensor:
    model = expert.model(spec.epoch, device=device)
    x, y = prepared.tensors("train", device=device)
    if spec.kind == "grand":
        from .scores import grand

        params = None if spec.params == "all" else [n for n, _ in model.named_parameters()
                                                     if n.startswith("classifier.")]
        return grand(model, x, y, params=params)
    out = []
    with torch.inference_mode():
        for i in range(0, x.shape[0], 1024):
            xb = x[i:i + 1024]
            if spec.kind == "logits":
                out.append(model(xb).float().cpu())
            else:
                if not hasattr(model, "embed"):
                    raise TypeError(f"{type(model).__name__} has no embed() (penultimate features); "
                                    "feature-space selection needs a ConvNet expert")
                out.append(model.embed(xb).float().cpu())
    values = torch.cat(out)
    # features are large: stored as fp16, and returned as stored so every call sees the same values
    return values.half() if spec.kind == "features" else values
