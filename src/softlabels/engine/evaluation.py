"""Evaluation: argmax predictions in large batches, accuracies, and the sets a student is judged on.

An :class:`EvalSets` holds the model-ready validation and test tensors and, for models with the fused
instance-norm stem, the per-image patch statistics that stem needs: they depend on the images only, so
they are computed once per set and shared by every student evaluated on it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from .runtime import Engine, autocast_ctx, compile_available, tune_allocator

__all__ = ["COMPILED_EVAL_MIN_IMAGES", "EvalSets", "accuracy", "evaluator", "logits_of", "per_class_accuracy",
           "predict"]

COMPILED_EVAL_MIN_IMAGES = 4096  # compiling inference repays its warm-up on sets at least this large


@dataclass(frozen=True, eq=False)
class EvalSets:
    """Model-ready evaluation tensors on the training device: validation (optional) and test."""

    test_x: torch.Tensor
    test_y: torch.Tensor
    val_x: torch.Tensor | None = None
    val_y: torch.Tensor | None = None
    _stats: dict = field(default_factory=dict, init=False, repr=False)

    @classmethod
    def from_prepared(cls, prepared, *, device) -> EvalSets:
        tx, ty = prepared.tensors("test", device=device)
        vx, vy = prepared.tensors("val", device=device) if prepared.val_idx.numel() else (None, None)
        return cls(tx, ty, vx, vy)

    def to(self, device: str | torch.device) -> EvalSets:
        """The same sets on ``device`` (statistics are recomputed there when needed)."""
        return EvalSets(*(None if t is None else t.to(device) for t in (self.test_x, self.test_y, self.val_x,
                                                                          self.val_y)))

    def stem_stats(self, model: nn.Module, part: str, *, batch_size: int = 1024,
                   flip: bool = False) -> tuple[torch.Tensor, ...] | None:
        """``model.stem_stats`` of the ``part`` ("test" or "val") images (mirrored with ``flip``), computed
        once per stem padding."""
        if not getattr(model, "fused_stem", False):
            return None
        x = self.test_x if part == "test" else self.val_x
        # an in-place change of the images bumps their version and so recomputes
        key = (part, flip, tuple(model.features[0].padding), None if x.is_inference() else x._version)
        if key not in self._stats:
            with torch.inference_mode():
                chunks = (x[i:i + batch_size] for i in range(0, x.shape[0], batch_size))
                parts = [model.stem_stats(c.flip(3) if flip else c) for c in chunks]
                self._stats[key] = tuple(torch.cat(p) for p in zip(*parts, strict=True))
        return self._stats[key]

    def __getstate__(self) -> dict:  # workers recompute the statistics rather than receive them
        state = dict(self.__dict__)
        state["_stats"] = {}
        return state


@torch.inference_mode()
def predict(model: nn.Module, x: torch.Tensor, *, batch_size: int = 2048,
            amp_dtype: torch.dtype | None = None, fixed_shape: bool = False,
            stats: tuple[torch.Tensor, ...] | None = None, flip: bool = False,
            flip_stats: tuple[torch.Tensor, ...] | None = None) -> torch.Tensor:
    """Argmax predictions in large batches (no augmentation; ``flip`` adds the logits of the mirrored image).

    ``fixed_shape`` pads the last chunk to ``batch_size`` so a compiled model sees one input shape.
    ``stats`` / ``flip_stats``: the model's ``stem_stats`` of ``x`` / of its mirror, computed beforehand
    (see :meth:`EvalSets.stem_stats`).
    """
    was_training = model.training
    model.eval()
    out = []
    dev = x.device

    def logits_of_chunk(xb, st, i, n):
        sb = None if st is None else tuple(s[i:i + batch_size] for s in st)
        if fixed_shape:  # padded or not, an inference tensor: a compiled graph guards on the tensor kind
            xb = _pad_rows(xb, batch_size)
            sb = None if sb is None else tuple(_pad_rows(s, batch_size) for s in sb)
        with autocast_ctx(dev, amp_dtype):
            return (model(xb) if sb is None else model(xb, sb))[:n].float()

    for i in range(0, x.shape[0], batch_size):
        xb = x[i:i + batch_size]
        n = xb.shape[0]
        logits = logits_of_chunk(xb, stats, i, n)
        if flip:
            logits = logits + logits_of_chunk(xb.flip(3), flip_stats, i, n)
        out.append(logits.argmax(1))
    model.train(was_training)
    return torch.cat(out)


def _pad_rows(t: torch.Tensor, rows: int) -> torch.Tensor:
    """A new tensor of ``rows`` rows: ``t`` then zeros."""
    return torch.cat([t, t.new_zeros((rows - t.shape[0], *t.shape[1:]))]) if t.shape[0] < rows else t.clone()


@torch.inference_mode()
def logits_of(model: nn.Module, x: torch.Tensor, *, batch_size: int = 1024) -> torch.Tensor:
    """fp32 logits of ``model`` on un-augmented ``x`` (eval mode), in chunks."""
    was_training = model.training
    model.eval()
    out = [model(x[i:i + batch_size]).float() for i in range(0, x.shape[0], batch_size)]
    model.train(was_training)
    return torch.cat(out)


def accuracy(pred: torch.Tensor, y: torch.Tensor) -> float:
    return float((pred == y).float().mean()) if y.numel() else float("nan")


def per_class_accuracy(pred: torch.Tensor, y: torch.Tensor, num_classes: int) -> list[float]:
    correct = torch.zeros(num_classes, device=y.device).index_add_(0, y, (pred == y).float())
    count = torch.bincount(y, minlength=num_classes).float()
    return (correct / count.clamp(min=1)).where(count > 0, torch.full_like(count, float("nan"))).tolist()


def evaluator(model: nn.Module, *, compile_setting: str, key: tuple, device: torch.device, evals: EvalSets,
              engine: Engine, flip: bool = False) -> Callable[..., torch.Tensor]:
    """``run(part, amp_dtype=...)`` -> predictions on the test or validation images: compiled inference
    (one fixed batch shape, the last chunk padded) for large sets unless compiling is off; ``flip`` averages
    each image's logits with its mirror's."""
    if device.type == "cpu":
        tune_allocator()
    big = evals.test_x.shape[0] >= COMPILED_EVAL_MIN_IMAGES
    compiled = compile_setting == "on" or (
        compile_setting == "auto" and big and compile_available(device.type)
    )
    target = engine.inference_model(key, model) if compiled else model

    def run(part: str, *, amp_dtype: torch.dtype | None) -> torch.Tensor:
        x = evals.test_x if part == "test" else evals.val_x
        return predict(target, x, batch_size=1024 if compiled else 2048, amp_dtype=amp_dtype,
                       fixed_shape=compiled, stats=evals.stem_stats(model, part), flip=flip,
                       flip_stats=evals.stem_stats(model, part, flip=True) if flip else None)

    return run
