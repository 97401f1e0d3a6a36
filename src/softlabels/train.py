"""The student engine: train fresh students on a (compressed) labelled set and evaluate them.

Data stays on the device as one tensor; batches are index slices of a seeded permutation; DSA is
batched; there is no DataLoader and no per-sample Python. Every source of randomness is a seeded
``torch.Generator`` (model init, shuffling, augmentation), so the same seed gives the same student.
"""

from __future__ import annotations

import contextlib
import copy
import math
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace

import torch
import torch.nn.functional as F
from torch import nn

from .config import PROTOCOLS, StudentRecipe
from .models import build_model, get_model_spec
from .perf import compile_available, tune_allocator
from .validation import check_choice, check_labels

ProgressFn = Callable[[int], None]


@dataclass
class EvalSets:
    """Model-ready evaluation tensors on the training device: validation (optional) and test."""

    test_x: torch.Tensor
    test_y: torch.Tensor
    val_x: torch.Tensor | None = None
    val_y: torch.Tensor | None = None

    @classmethod
    def from_prepared(cls, prepared, *, device) -> EvalSets:
        tx, ty = prepared.tensors("test", device=device)
        vx, vy = prepared.tensors("val", device=device) if prepared.val_idx.numel() else (None, None)
        return cls(tx, ty, vx, vy)


@dataclass
class StudentResult:
    """One trained student. ``test_acc``/``val_acc`` are at the final epoch (the ``clean`` number);
    ``paper_acc`` is the max test accuracy over checkpoints every ``eval_every`` epochs and the end
    (the reference code's number, optimistic: it selects on the test set)."""

    seed: int
    test_acc: float
    val_acc: float | None
    paper_acc: float | None
    train_acc: float
    per_class: list[float]
    curve: list[tuple[int, float]] = field(default_factory=list)
    epochs: int = 0
    wall_s: float = 0.0
    train_s: float = 0.0
    threads: int = 0  # CPU threads it trained on (provenance: float order depends on it)
    state: dict[str, torch.Tensor] | None = field(default=None, repr=False)  # trained weights, if asked for

    def metric(self, protocol: str) -> float:
        if protocol == "paper":
            return float(self.paper_acc if self.paper_acc is not None else self.test_acc)
        return self.test_acc

    def to_dict(self) -> dict:
        """The metrics (everything but the weights)."""
        return {k: v for k, v in asdict(replace(self, state=None)).items() if k != "state"}


def resolve_device(device: str | torch.device | None) -> torch.device:
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' requested but CUDA is not available; use --device cpu")
    return dev


def resolve_precision(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``precision`` on ``device`` (None = fp32).

    ``auto`` picks bf16 where the hardware runs it natively (CUDA with bf16 support, or a CPU with
    AVX512-BF16/AMX) and fp32 otherwise; benchmarks/students.py measures that it pays and keeps
    accuracy.
    """
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


def soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy with probability targets: mean over rows of -sum_c y_c log softmax(s)_c.

    Equals ``nn.CrossEntropyLoss()(logits, targets)`` for float targets; rows that sum to less than one
    (top-k without renormalisation) are down-weighted exactly as in the reference code.
    """
    return -(targets * F.log_softmax(logits.float(), dim=1)).sum(dim=1).mean()


@torch.inference_mode()
def predict(model: nn.Module, x: torch.Tensor, *, batch_size: int = 2048,
            amp_dtype: torch.dtype | None = None, fixed_shape: bool = False,
            stats: tuple[torch.Tensor, ...] | None = None) -> torch.Tensor:
    """Argmax predictions in large batches (no augmentation).

    ``fixed_shape`` pads the last chunk to ``batch_size`` so a compiled model sees one input shape.
    ``stats``: the model's ``stem_stats(x)``, computed beforehand (see :data:`EVAL_STATS`).
    """
    was_training = model.training
    model.eval()
    out = []
    dev = x.device
    for i in range(0, x.shape[0], batch_size):
        xb = x[i:i + batch_size]
        n = xb.shape[0]
        sb = None if stats is None else tuple(s[i:i + batch_size] for s in stats)
        if fixed_shape:  # padded or not, an inference tensor: a compiled graph guards on the tensor kind
            xb = _pad_rows(xb, batch_size)
            sb = None if sb is None else tuple(_pad_rows(s, batch_size) for s in sb)
        with autocast_ctx(dev, amp_dtype):
            logits = model(xb) if sb is None else model(xb, sb)
        out.append(logits[:n].argmax(1))
    model.train(was_training)
    return torch.cat(out)


def _pad_rows(t: torch.Tensor, rows: int) -> torch.Tensor:
    """A new tensor of ``rows`` rows: ``t`` then zeros."""
    return torch.cat([t, t.new_zeros((rows - t.shape[0], *t.shape[1:]))]) if t.shape[0] < rows else t.clone()


class _EvalStats:
    """Fused-stem input statistics (``ConvNet.stem_stats``) of evaluation sets, computed once per set and
    reused by every model evaluated on it: they depend on the images only. A compiled width-32 evaluation
    took 0.45 vs 0.55 s per 10k with them reused (interleaved in one process); the quick scaling study's 35
    students (10k test + 5k validation images each) spent 27.3 vs 32.0 s evaluating. Holds the last ``size``
    sets (and so keeps them alive)."""

    def __init__(self, size: int = 4) -> None:
        self._size = size
        self._entries: OrderedDict[tuple, tuple[torch.Tensor, tuple[torch.Tensor, ...]]] = OrderedDict()

    @torch.inference_mode()
    def get(self, model: nn.Module, x: torch.Tensor, *, batch_size: int = 1024) -> tuple[torch.Tensor, ...] | None:
        if not getattr(model, "fused_stem", False):
            return None
        padding = tuple(model.features[0].padding)
        key = (id(x), x.shape, x.device, padding, None if x.is_inference() else x._version)
        hit = self._entries.get(key)
        if hit is not None and hit[0] is x:  # the set itself is held, so its id is not reused
            self._entries.move_to_end(key)
            return hit[1]
        parts = [model.stem_stats(x[i:i + batch_size]) for i in range(0, x.shape[0], batch_size)]
        stats = tuple(torch.cat(p) for p in zip(*parts, strict=True))
        self._entries[key] = (x, stats)
        while len(self._entries) > self._size:
            self._entries.popitem(last=False)
        return stats

    def clear(self) -> None:
        self._entries.clear()


EVAL_STATS = _EvalStats()


@torch.no_grad()
def _copy_weights(dst: nn.Module, src: nn.Module) -> None:
    """Copy parameters and buffers of ``src`` into the same-shaped ``dst`` (which a compiled graph holds)."""
    for p, q in zip(dst.parameters(), src.parameters(), strict=True):
        p.copy_(q)
    for b, c in zip(dst.buffers(), src.buffers(), strict=True):
        b.copy_(c)


class _CompiledModels:
    """One compiled copy of a model per key (a model shape), reused by later models of that shape: their
    weights are copied into it, so the graph is built once per process."""

    def __init__(self, **compile_kwargs) -> None:
        self._compile_kwargs = compile_kwargs
        self._cache: dict[tuple, tuple[nn.Module, nn.Module]] = {}

    def get(self, key: tuple, model: nn.Module) -> nn.Module:
        if key not in self._cache:
            base = copy.deepcopy(model)
            self._cache[key] = (base, torch.compile(base, **self._compile_kwargs))
        base, compiled = self._cache[key]
        _copy_weights(base, model)
        return compiled


class _CompiledEval(_CompiledModels):
    """Compiled inference with one fixed batch shape (the last chunk is padded).

    Compiling inference pays on CPU (about 1.9x at width 64 for a 10k-image test set) once a process
    evaluates more than a handful of times. The training graph is compiled separately (``COMPILED_TRAIN``):
    with the fused stem and the tuned allocator it gave 1.35-1.6x per step at width 128 and 2.2x at width
    32, batch 100 (at width 32, batch 10: 4.4 vs 4.1 ms, little).
    """

    def predictor(self, key: tuple, model: nn.Module) -> Callable[..., torch.Tensor]:
        compiled = self.get(key, model)

        def run(x: torch.Tensor, *, amp_dtype: torch.dtype | None) -> torch.Tensor:
            return predict(compiled, x, batch_size=1024, amp_dtype=amp_dtype, fixed_shape=True,
                           stats=EVAL_STATS.get(model, x))

        return run


COMPILED_EVAL = _CompiledEval(dynamic=False)


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


def init_model(recipe_model: str, width: int | None, *, seed: int, in_channels: int, num_classes: int,
               image_size: tuple[int, int], device: torch.device) -> nn.Module:
    """A freshly initialised model whose weights depend only on ``seed`` (global RNG untouched)."""
    spec = get_model_spec(recipe_model, **({"width": width} if width else {}))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        model = build_model(spec, in_channels=in_channels, num_classes=num_classes, image_size=image_size)
    return model.to(device)


# the batch dimension is marked dynamic at each step: one training graph for every batch size
COMPILED_TRAIN = _CompiledModels()


CPU_COMPILE_MIN_STEPS = 150
CUDA_COMPILE_MIN_STEPS = 2000


def planned_steps(recipe: StudentRecipe, n_images: int, n_students: int) -> int:
    """Optimizer steps of ``n_students`` students on ``n_images`` images: what ``resolve_compile`` weighs."""
    return recipe.epochs * max(1, math.ceil(n_images / recipe.batch_size)) * n_students


def resolve_compile(setting: str, device: torch.device, *, total_steps: int) -> bool:
    """Whether to compile the TRAINING graph: ``auto`` compiles when the planned optimizer steps of the
    call repay the warm-up (one graph per model shape and process, reused by later students).

    ``total_steps`` must depend on the configuration only (all seeds of a cell, not the ones left to
    do), so a resumed sweep takes the same path as an uninterrupted one.
    """
    if setting == "on":
        return True
    if setting == "off" or not compile_available(device.type):
        return False
    return total_steps >= (CUDA_COMPILE_MIN_STEPS if device.type == "cuda" else CPU_COMPILE_MIN_STEPS)


def make_optimizer(recipe: StudentRecipe, params: list[nn.Parameter]) -> torch.optim.Optimizer:
    """The recipe's optimizer, with PyTorch's fused (single-kernel) update where this build has one.

    The fused SGD update is the same arithmetic as the per-tensor loop (tested); it took 11.5 vs 12.4 ms
    per step at width 128, batch 10 on these 2 cores (one kernel for all parameters instead of ~4 per
    tensor). Builds or devices without it fall back to the loop. Experts keep the loop (their stored
    checkpoints stay what they were).
    """
    wd = recipe.resolved_weight_decay
    if recipe.optimizer == "sgd":
        cls, kw = torch.optim.SGD, {"lr": recipe.lr, "momentum": recipe.momentum, "weight_decay": wd}
    else:
        cls, kw = torch.optim.AdamW, {"lr": recipe.lr, "weight_decay": wd}
    fused = all(p.device.type in ("cpu", "cuda") and p.dtype == torch.float32 for p in params)
    if fused:
        try:
            return cls(params, fused=True, **kw)
        except (RuntimeError, TypeError, ValueError):
            pass
    return cls(params, **kw)


def train_student(images: torch.Tensor, labels: torch.Tensor, recipe: StudentRecipe, *, seed: int,
                  evals: EvalSets | None = None, protocol: str = "clean", device: str | torch.device = "cpu",
                  compile_model: bool = False, on_epoch: ProgressFn | None = None,
                  return_state: bool = False) -> StudentResult:
    """Train one student from scratch on model-ready ``images`` (N, C, H, W) and ``labels`` (N, K).

    ``labels`` are probability targets (one-hot rows for hard labels). Returns final / checkpoint
    accuracies per the protocol (and the trained weights as ``state`` with ``return_state``).
    """
    from .augment import dsa

    check_choice("protocol", protocol, PROTOCOLS)
    if recipe.loop == "reference":
        return _train_reference(images, labels, recipe, seed=seed, evals=evals, protocol=protocol,
                                on_epoch=on_epoch)
    dev = resolve_device(device)
    if dev.type == "cpu":
        tune_allocator()
    images = images.to(dev)
    # rows may sum above one by a quantisation step (quant codecs); CompressedSet checks the bound
    labels = check_labels(labels.to(dev).float(), n=images.shape[0], atol=float(labels.shape[1]))
    n, c, h, w = images.shape
    k = labels.shape[1]
    t0 = time.perf_counter()
    fresh = init_model(recipe.model, recipe.width, seed=seed, in_channels=c, num_classes=k,
                       image_size=(h, w), device=dev)
    shape_key = (recipe.model, recipe.width, c, k, h, w, str(dev))
    model = COMPILED_TRAIN.get(shape_key, fresh) if compile_model else fresh
    params = list(model.parameters())  # a compiled module's are those of its cached copy
    opt = make_optimizer(recipe, params)
    amp = resolve_precision(recipe.precision, dev)
    gen = torch.Generator(device=dev).manual_seed(int(seed) * 1_000_003 + 17)
    step_size = max(1, recipe.epochs // 4)
    bs = min(recipe.batch_size, n)
    curve: list[tuple[int, float]] = []
    # the trained module itself: inference through the compiled *training* graph would recompile it
    plain = getattr(model, "_orig_mod", model)
    model.train()
    for epoch in range(recipe.epochs):
        if recipe.optimizer == "sgd":
            lr = recipe.lr * (0.3 ** (epoch // step_size))
        else:
            lr = recipe.lr * 0.5 * (1 + math.cos(math.pi * epoch / recipe.epochs))
        for g in opt.param_groups:
            g["lr"] = lr
        perm = torch.randperm(n, generator=gen, device=dev) if n > bs else None
        for start in range(0, n, bs):
            idx = perm[start:start + bs] if perm is not None else None
            xb = images if idx is None else images[idx]
            yb = labels if idx is None else labels[idx]
            if recipe.dsa:
                xb = dsa(xb, generator=gen)
            if compile_model:
                torch._dynamo.mark_dynamic(xb, 0)  # the last batch of an epoch is usually smaller
            with autocast_ctx(dev, amp):
                out = model(xb)
            loss = soft_cross_entropy(out, yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        if on_epoch is not None:
            on_epoch(1)
        done = epoch + 1
        if evals is not None and protocol == "paper" and done % recipe.eval_every == 0 and done < recipe.epochs:
            pred = predict(plain, evals.test_x, amp_dtype=amp, stats=EVAL_STATS.get(plain, evals.test_x))
            curve.append((done, accuracy(pred, evals.test_y)))
    train_s = time.perf_counter() - t0
    train_acc = accuracy(predict(plain, images, amp_dtype=amp), labels.argmax(1))
    evaluate = _evaluator(plain, recipe, shape_key, dev, evals)
    state = {k: v.detach().clone() for k, v in plain.state_dict().items()} if return_state else None
    if evals is None:
        return StudentResult(seed, float("nan"), None, None, train_acc, [], curve, recipe.epochs,
                             time.perf_counter() - t0, train_s, torch.get_num_threads(), state)
    test_pred = evaluate(evals.test_x, amp_dtype=amp)
    test_acc = accuracy(test_pred, evals.test_y)
    curve.append((recipe.epochs, test_acc))
    val_acc = None
    if evals.val_x is not None:
        val_acc = accuracy(evaluate(evals.val_x, amp_dtype=amp), evals.val_y)
    paper_acc = max(a for _, a in curve) if protocol == "paper" else None
    return StudentResult(
        seed=int(seed), test_acc=test_acc, val_acc=val_acc, paper_acc=paper_acc, train_acc=train_acc,
        per_class=per_class_accuracy(test_pred, evals.test_y, k), curve=curve, epochs=recipe.epochs,
        wall_s=time.perf_counter() - t0, train_s=train_s, threads=torch.get_num_threads(), state=state,
    )


def _train_reference(images: torch.Tensor, labels: torch.Tensor, recipe: StudentRecipe, *, seed: int,
                     evals: EvalSets | None, protocol: str, on_epoch: ProgressFn | None) -> StudentResult:
    """The reference loop (softlabels.reference) on CPU, timed and reported like the engine's students."""
    from .reference import ref_predict, ref_train

    if recipe.optimizer != "sgd" or protocol != "clean":
        raise ValueError("loop='reference' supports the SGD recipe and the clean protocol only")
    images, labels = images.cpu(), labels.cpu().float()
    t0 = time.perf_counter()
    with torch.random.fork_rng(devices=[]):
        net = ref_train(images, labels, width=recipe.width, epochs=recipe.epochs, seed=seed, lr=recipe.lr,
                        model=recipe.model, weight_decay=recipe.resolved_weight_decay,
                        batch_size=recipe.batch_size)
    if on_epoch is not None:
        on_epoch(recipe.epochs)
    train_s = time.perf_counter() - t0
    train_acc = accuracy(ref_predict(net, images), labels.argmax(1))
    if evals is None:
        return StudentResult(seed, float("nan"), None, None, train_acc, [], [], recipe.epochs,
                             time.perf_counter() - t0, train_s)
    pred = ref_predict(net, evals.test_x.cpu())
    ty = evals.test_y.cpu()
    val_acc = None
    if evals.val_x is not None:
        val_acc = accuracy(ref_predict(net, evals.val_x.cpu()), evals.val_y.cpu())
    test_acc = accuracy(pred, ty)
    return StudentResult(int(seed), test_acc, val_acc, None, train_acc, per_class_accuracy(pred, ty, labels.shape[1]),
                         [(recipe.epochs, test_acc)], recipe.epochs, time.perf_counter() - t0, train_s)


def _evaluator(model: nn.Module, recipe: StudentRecipe, key: tuple, dev: torch.device,
               evals: EvalSets | None) -> Callable[..., torch.Tensor]:
    """The evaluation path: compiled inference for large evaluation sets unless compile is off."""
    big = evals is not None and evals.test_x.shape[0] >= 4096
    if dev.type == "cpu":
        tune_allocator()
    if recipe.compile == "on" or (recipe.compile == "auto" and big and compile_available(dev.type)):
        return COMPILED_EVAL.predictor(key, model)
    return lambda x, *, amp_dtype: predict(model, x, amp_dtype=amp_dtype, stats=EVAL_STATS.get(model, x))


def train_students(images: torch.Tensor, labels: torch.Tensor, recipe: StudentRecipe, *, seeds: Sequence[int],
                   evals: EvalSets | None = None, protocol: str = "clean", device: str | torch.device = "cpu",
                   on_epoch: ProgressFn | None = None) -> list[StudentResult]:
    """Train one student per seed (sequentially, reusing a compiled graph when compiling pays)."""
    dev = resolve_device(device)
    if not seeds:
        raise ValueError("seeds must name at least one student seed, e.g. seeds=[0, 1, 2]")
    steps = planned_steps(recipe, images.shape[0], len(seeds))
    compile_model = resolve_compile(recipe.compile, dev, total_steps=steps)
    return [train_student(images, labels, recipe, seed=s, evals=evals, protocol=protocol, device=dev,
                          compile_model=compile_model, on_epoch=on_epoch) for s in seeds]


def summarize(results: Sequence[StudentResult], protocol: str) -> dict[str, float]:
    """Mean and population std (as the paper's np.std) of the protocol's metric over students."""
    vals = torch.tensor([r.metric(protocol) for r in results], dtype=torch.float64)
    return {"mean": float(vals.mean()), "std": float(vals.std(unbiased=False)) if len(vals) > 1 else 0.0,
            "n": len(vals)}
