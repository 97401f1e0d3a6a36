"""Batched students: N students of one shape trained as one stacked model (``torch.func`` + ``vmap``).

On a GPU a student at IPC 1-10 is tiny: one at a time, the device waits on kernel launches. Students of the
same model, width, set size and recipe (different seeds, or different sets of the same shape) train here as
one model whose parameters are stacked along a leading student dimension: ``functional_call`` of the model
under ``vmap`` runs every layer once for all of them (a convolution becomes a grouped convolution).

Each student keeps everything of its own: its initial weights (``init_model`` with its seed), its
generator (the same seed formula as :func:`~softlabels.engine.loop.train_student`), hence its data order and
its augmentation (one DSA family per student per step, drawn from its own generator in the order the serial
loop draws), and its optimizer state (SGD and AdamW are element-wise, so one optimizer over the stacked
tensors is N independent optimizers; the learning rate schedule is the same for all). The stacked DSA draws
each student's parameters from its generator and applies each family once to all the students that drew it.

So the same seed gives the same student as when it trains alone, up to the floating-point order of the
batched kernels (tested on CPU in fp32: ``tests/test_batched.py`` states the tolerance). Evaluation runs per
student through the serial code path. Models with buffers (BatchNorm's running statistics) are not stacked:
they train one at a time (:func:`stackable`).

``resolve_stack`` is the policy: ``"auto"`` stacks on CUDA only (on CPU the stacked model was not faster, and
the CPU default must not get slower), up to ``MAX_AUTO_STACK`` students and ``STACK_PIXEL_BUDGET`` pixels per
stacked step; an int stacks up to that many on any device (tests run it on CPU); ``"off"`` never.
"""

from __future__ import annotations

import copy
import math
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.func import functional_call, stack_module_state, vmap

from ..augment import (
    DSAConfig,
    _affine,
    _color,
    _cutout,
    _flip,
    _rotation_theta,
    _scale_theta,
    _translate,
)
from ..config import PROTOCOLS, StudentRecipe
from ..models import init_model
from ..validation import check_choice, check_labels, check_positive_int
from .evaluation import EvalSets, accuracy, evaluator, per_class_accuracy, predict
from .executors import OnResult, StudentJob, _train
from .loop import StudentResult, _predict_plain, _WeightAverage, lr_at, make_optimizer, soft_cross_entropy
from .runtime import Engine, autocast_ctx, resolve_device, resolve_precision, tune_allocator

__all__ = ["MAX_AUTO_STACK", "STACK_PIXEL_BUDGET", "BatchedExecutor", "check_stack_setting", "resolve_stack",
           "stackable", "stacked_dsa", "train_stacked"]

MAX_AUTO_STACK = 32  # students per stack under "auto" (the target range; 100 is measured by gpu.py)
STACK_PIXEL_BUDGET = 2**22  # input pixels per stacked step under "auto": bounds the activation memory
STACK_SETTINGS = "'auto', 'off' or a positive int"
_DSA = DSAConfig()  # the configuration train_student's dsa() call uses


# ---- policy -------------------------------------------------------------------------------------------
def check_stack_setting(setting: int | str) -> int | str:
    """A valid ``batch_students`` setting: ``"auto"``, ``"off"`` or a positive int (returned as given)."""
    if isinstance(setting, str):
        if setting not in ("auto", "off"):
            raise ValueError(f"batch_students must be {STACK_SETTINGS}, got {setting!r}")
        return setting
    return check_positive_int("batch_students", setting)


def resolve_stack(setting: int | str, device: torch.device | str, *, batch: int, pixels: int) -> int:
    """Students per stack for students of ``batch`` images of ``pixels`` (H x W) each per step; 1 = alone.

    Depends on the configuration only (never on how many students are left), so a resumed sweep stacks the
    same way. ``auto``: CUDA only, ``min(MAX_AUTO_STACK, STACK_PIXEL_BUDGET // (batch * pixels))``."""
    setting = check_stack_setting(setting)
    if setting == "off":
        return 1
    if setting == "auto":
        if torch.device(device).type != "cuda":
            return 1
        return max(1, min(MAX_AUTO_STACK, STACK_PIXEL_BUDGET // max(1, batch * pixels)))
    return setting


def stackable(model: nn.Module) -> bool:
    """Whether a model can train stacked: no buffers (BatchNorm's running statistics would need a per-student
    update rule under ``vmap``; GroupNorm, the ConvNet's instance norm, has none)."""
    return not any(True for _ in model.buffers())


# ---- stacked DSA --------------------------------------------------------------------------------------
def _draw(family: str, n: int, h: int, w: int, g: torch.Generator, dev: torch.device, cfg: DSAConfig):
    """One student's random parameters for ``family``: the same draws, in the same order, as the family
    functions of :mod:`softlabels.augment` make (tests compare the two)."""
    def rand(*shape):
        return torch.rand(shape, generator=g, device=dev, dtype=torch.float32)

    def randint(low, high):
        return torch.randint(low, high, (n,), generator=g, device=dev)

    if family == "color":
        return (rand(3, n),)
    if family == "crop":
        sh, sw = int(h * cfg.crop_pad + 0.5), int(w * cfg.crop_pad + 0.5)
        return randint(-sh, sh + 1), randint(-sw, sw + 1)
    if family == "cutout":
        size = int(h * cfg.cutout + 0.5), int(w * cfg.cutout + 0.5)
        return randint(0, h + (1 - size[0] % 2)), randint(0, w + (1 - size[1] % 2))
    if family == "flip":
        return (rand(n) < cfg.flip_p,)
    if family == "scale":
        lo = 1.0 / cfg.scale
        return (rand(2, n) * (cfg.scale - lo) + lo,)
    return ((rand(n) - 0.5) * (2.0 * cfg.rotate_deg * math.pi / 180.0),)  # rotate


def _apply(family: str, x: torch.Tensor, params: list[tuple], cfg: DSAConfig) -> torch.Tensor:
    """``family`` on the concatenated batches of several students with their concatenated parameters (every
    DSA operation acts on each image with its own parameters, so concatenating changes nothing)."""
    _, _, h, w = x.shape
    if family == "color":
        return _color(x, torch.cat([p[0] for p in params], 1), cfg)
    if family in ("scale", "rotate"):
        cat = torch.cat([p[0] for p in params], -1)
        theta = _scale_theta(cat[0], cat[1]) if family == "scale" else _rotation_theta(cat)
        return _affine(x, theta)
    if family == "flip":
        return _flip(x, torch.cat([p[0] for p in params]))
    a, b = (torch.cat([p[i] for p in params]) for i in (0, 1))
    if family == "crop":
        return _translate(x, a, b)
    return _cutout(x, a, b, (int(h * cfg.cutout + 0.5), int(w * cfg.cutout + 0.5)))


def stacked_dsa(xb: torch.Tensor, generators: Sequence[torch.Generator], *,
                config: DSAConfig = _DSA) -> torch.Tensor:
    """DSA of a stacked batch ``xb`` (S, B, C, H, W), student ``s`` with ``generators[s]``: equal to
    ``dsa(xb[s], generator=generators[s], config=config)`` for each ``s``, with each family applied once.

    One family per student per call (the reference's 'S' mode, the only one train_student uses); the
    families of all students are read back to the host together (one synchronisation)."""
    if not config.one_family_per_batch:
        raise ValueError("stacked_dsa supports one_family_per_batch=True (the mode students train with)")
    s, b, c, h, w = xb.shape
    families = config.families
    if not families:
        return xb.clone()
    dev = xb.device
    picks = torch.cat([torch.randint(0, len(families), (1,), generator=g, device=dev) for g in generators])
    chosen = [families[i] for i in picks.tolist()]
    params = [_draw(f, b, h, w, g, dev, config) for f, g in zip(chosen, generators, strict=True)]
    out = torch.empty_like(xb)
    for family in dict.fromkeys(chosen):  # each drawn family once, in first-drawn order
        members = [i for i, f in enumerate(chosen) if f == family]
        group = xb[members].reshape(len(members) * b, c, h, w)
        out[members] = _apply(family, group, [params[i] for i in members], config).view(-1, b, c, h, w)
    return out


# ---- training -----------------------------------------------------------------------------------------
def _seed_generator(seed: int, dev: torch.device) -> torch.Generator:
    # the formula of train_student: a stacked student draws exactly what it draws alone
    return torch.Generator(device=dev).manual_seed(int(seed) * 1_000_003 + 17)


@dataclass(frozen=True)
class _Stack:
    """The stacked parameters of S students and the meta-device module their ``functional_call`` runs."""

    params: dict[str, torch.Tensor]
    base: nn.Module

    def load_into(self, model: nn.Module, s: int, source: dict[str, torch.Tensor] | None = None) -> nn.Module:
        with torch.no_grad():
            for name, p in model.named_parameters():
                p.copy_((source or self.params)[name][s])
        return model


def _losses_fn(base: nn.Module) -> Callable:
    def one(p: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return soft_cross_entropy(functional_call(base, p, (x,)), y)

    return vmap(one)


_EAGER = object()  # a graphs entry: compiling this stack's step failed once, so it runs eager


def _step(fn, params, xb, yb, gens, recipe, opt, dev, amp) -> None:
    """One optimizer step of every student of the stack."""
    if recipe.dsa:
        xb = stacked_dsa(xb, gens)
    with autocast_ctx(dev, amp):
        losses = fn(params, xb, yb)
    opt.zero_grad(set_to_none=True)
    losses.sum().backward()  # student s's gradient is that of its own mean loss
    opt.step()


def train_stacked(images: Sequence[torch.Tensor], labels: Sequence[torch.Tensor], recipe: StudentRecipe, *,
                  seeds: Sequence[int], evals: EvalSets | None = None, protocol: str = "clean",
                  device: str | torch.device = "cpu", compile_model: bool = False,
                  on_epoch: Callable[[int], None] | None = None, return_state: bool = False,
                  engine: Engine | None = None, parts: tuple[str, ...] = ("test", "val"),
                  graphs: dict | None = None) -> list[StudentResult]:
    """Train ``len(seeds)`` students as one stacked model: student ``s`` on ``images[s]`` / ``labels[s]``
    (all of one shape; the same tensor may be passed for every student) with seed ``seeds[s]``.

    Returns what :func:`~softlabels.engine.loop.train_student` returns for each, in order; ``train_s`` is
    the stack's training time divided by the number of students (each student's share). ``graphs`` holds
    compiled stacked steps for reuse (keyed by shape and stack size; a private dict without it).
    """
    check_choice("protocol", protocol, PROTOCOLS)
    seeds = [int(s) for s in seeds]
    n_st = len(seeds)
    if n_st == 0 or len(images) != n_st or len(labels) != n_st:
        raise ValueError(f"need one images and one labels tensor per seed, got {len(images)} images, "
                         f"{len(labels)} labels for {n_st} seeds")
    if len({tuple(t.shape) for t in images}) != 1 or len({tuple(t.shape) for t in labels}) != 1:
        raise ValueError("stacked students need sets of one shape (same images per class and classes)")
    engine = engine if engine is not None else Engine(max_shapes=1)
    graphs = graphs if graphs is not None else {}
    dev = resolve_device(device)
    if dev.type == "cpu":
        tune_allocator()
    shared = all(t is images[0] for t in images)
    xs = [t.to(dev) for t in images[:1 if shared else n_st]]
    ys = [check_labels(t.to(dev).float(), n=xs[0].shape[0], atol=float(t.shape[1])) for t in labels]
    n, c, h, w = xs[0].shape
    k = ys[0].shape[1]
    if recipe.label_smoothing:
        ys = [(1 - recipe.label_smoothing) * y + recipe.label_smoothing / k for y in ys]
    big_x = xs[0] if shared else torch.stack(xs)
    big_y = torch.stack(ys)
    t0 = time.perf_counter()
    models = [init_model(recipe.model, recipe.width, seed=s, in_channels=c, num_classes=k, image_size=(h, w),
                         device=dev) for s in seeds]
    if not stackable(models[0]):
        raise ValueError(f"{recipe.model} has buffers (batch norm): its students cannot train stacked; "
                         "use batch_students='off'")
    params, _ = stack_module_state(models)
    stack = _Stack(params, copy.deepcopy(models[0]).to("meta"))
    shape_key = (recipe.model, recipe.width, c, k, h, w, str(dev))
    eager = fn = _losses_fn(stack.base)
    gkey = (*shape_key, n_st)
    if compile_model and graphs.get(gkey) is not _EAGER:
        if gkey not in graphs:
            graphs[gkey] = torch.compile(fn, dynamic=False)
        fn = graphs[gkey]
    untried = fn is not eager  # a compiled step not yet run here: on failure, this stack trains eager
    tensors = list(params.values())
    opt = make_optimizer(recipe, tensors)
    average = _WeightAverage(tensors, recipe.ema) if recipe.ema else None
    amp = resolve_precision(recipe.precision, dev)
    gens = [_seed_generator(s, dev) for s in seeds]
    bounds = recipe.batch_bounds(n)
    total_steps, total_epochs = recipe.total_steps(n), recipe.total_epochs(n)
    rows = torch.arange(n_st, device=dev)[:, None]
    curves: list[list[tuple[int, float]]] = [[] for _ in seeds]
    step = 0
    for epoch in range(total_epochs):
        perms = (torch.stack([torch.randperm(n, generator=g, device=dev) for g in gens])
                 if len(bounds) > 1 else None)
        for start, end in bounds:
            if step >= total_steps:
                break
            lr = lr_at(recipe, step=step, epoch=epoch, total_steps=total_steps, total_epochs=total_epochs)
            for grp in opt.param_groups:
                grp["lr"] = lr
            if perms is None:
                xb = big_x.expand(n_st, *big_x.shape) if shared else big_x
                yb = big_y
            else:
                idx = perms[:, start:end]
                xb = big_x[idx] if shared else big_x[rows, idx]
                yb = big_y[rows, idx]
            saved = [g.get_state() for g in gens] if untried else None
            try:
                _step(fn, params, xb, yb, gens, recipe, opt, dev, amp)
            except Exception as e:  # noqa: BLE001 - any compiler failure: the eager step is the same step
                if not untried:
                    raise
                warnings.warn(f"the compiled stacked step failed ({type(e).__name__}: {str(e)[:200]}); "
                              "training these students eager", RuntimeWarning, stacklevel=2)
                graphs[gkey], fn = _EAGER, eager
                for g, st in zip(gens, saved, strict=True):  # redo the step with the same random draws
                    g.set_state(st)
                _step(fn, params, xb, yb, gens, recipe, opt, dev, amp)
            untried = False
            if average is not None:
                average.update()
            step += 1
        if on_epoch is not None:
            on_epoch(n_st)
        done = epoch + 1
        checkpoint = protocol == "paper" and done % recipe.eval_every == 0 and done < total_epochs
        if evals is not None and checkpoint:
            src = None if average is None else dict(zip(params, average.avg, strict=True))
            for s, model in enumerate(models):
                pred = _predict_plain(stack.load_into(model, s, src), evals, None, amp, recipe)
                curves[s].append((done, accuracy(pred, evals.test_y)))
    final = None if average is None else dict(zip(params, average.avg, strict=True))
    if dev.type == "cuda":  # the training time is the device's, not the host's queueing
        torch.cuda.synchronize(dev)
    share = (time.perf_counter() - t0) / n_st
    out = []
    for s, model in enumerate(models):  # each judged alone, by the serial code path
        t1 = time.perf_counter()
        plain = stack.load_into(model, s, final)
        out.append(_judge(plain, xs[0 if shared else s], ys[s], recipe, seed=seeds[s], evals=evals,
                          protocol=protocol, dev=dev, amp=amp, engine=engine, parts=parts, curve=curves[s],
                          shape_key=shape_key, train_s=share, return_state=return_state, t_eval=t1))
    return out


def _judge(plain: nn.Module, images: torch.Tensor, labels: torch.Tensor, recipe: StudentRecipe, *, seed: int,
           evals: EvalSets | None, protocol: str, dev: torch.device, amp, engine: Engine,
           parts: tuple[str, ...], curve: list, shape_key: tuple, train_s: float, return_state: bool,
           t_eval: float) -> StudentResult:
    """The end of train_student for one trained student (the same calls, so the same metrics)."""
    total_epochs = recipe.total_epochs(images.shape[0])
    train_acc = accuracy(predict(plain, images, amp_dtype=amp), labels.argmax(1))
    state = {k: v.detach().clone() for k, v in plain.state_dict().items()} if return_state else None
    common = dict(seed=int(seed), train_acc=train_acc, epochs=total_epochs, train_s=train_s,
                  threads=torch.get_num_threads(), state=state)
    if evals is None or not parts:
        return StudentResult(test_acc=float("nan"), curve=curve,
                             wall_s=train_s + time.perf_counter() - t_eval, **common)
    run = evaluator(plain, compile_setting=recipe.compile, key=shape_key, device=dev, evals=evals,
                    engine=engine, flip=recipe.tta == "flip")
    test_acc, per_class = float("nan"), []
    if "test" in parts:
        test_pred = run("test", amp_dtype=amp)
        test_acc = accuracy(test_pred, evals.test_y)
        per_class = per_class_accuracy(test_pred, evals.test_y, labels.shape[1])
        curve.append((total_epochs, test_acc))
    val_acc = accuracy(run("val", amp_dtype=amp), evals.val_y) if "val" in parts and evals.val_x is not None \
        else None
    return StudentResult(test_acc=test_acc, val_acc=val_acc,
                         paper_acc=max(a for _, a in curve) if protocol == "paper" and curve else None,
                         per_class=per_class, curve=curve, wall_s=train_s + time.perf_counter() - t_eval,
                         **common)


# ---- executor -----------------------------------------------------------------------------------------
class BatchedExecutor:
    """Students in this process, stacked where they can be: jobs of one recipe, protocol, evaluation parts,
    compile choice and set shape train together in stacks of ``resolve_stack(setting, ...)``; the others
    (a stack of one, or a model with buffers) train alone as in :class:`SerialExecutor`."""

    def __init__(self, evals: EvalSets | None, *, device: str | torch.device = "cpu",
                 engine: Engine | None = None, setting: int | str = "auto") -> None:
        self.evals, self.device = evals, device
        self.setting = check_stack_setting(setting)
        self.engine = engine if engine is not None else Engine()
        self.graphs: dict = {}  # compiled stacked steps, per shape and stack size
        self._stackable: dict[tuple, bool] = {}

    def stack_size(self, job: StudentJob) -> int:
        """How many students of ``job``'s kind train in one stack (1: alone)."""
        if job.recipe.loss != "soft-ce":  # the stacked step computes soft cross-entropy only
            return 1
        n, _, h, w = job.images.shape
        size = resolve_stack(self.setting, self.device, batch=min(job.recipe.batch_size, n), pixels=h * w)
        if size == 1:
            return 1
        key = (job.recipe.model, job.recipe.width, tuple(job.images.shape[1:]), job.labels.shape[1])
        if key not in self._stackable:
            self._stackable[key] = stackable(init_model(job.recipe.model, job.recipe.width, seed=0,
                                                        in_channels=key[2][0], num_classes=key[3],
                                                        image_size=key[2][1:]))
        return size if self._stackable[key] else 1

    def run(self, jobs: Sequence[StudentJob], on_result: OnResult, *,
            on_epoch: Callable[[int], None] | None = None) -> None:
        groups: dict[tuple, list[StudentJob]] = {}
        for job in jobs:  # grouping keeps the jobs' order within each group
            key = (job.recipe, job.protocol, job.parts, job.compile_model, job.return_state,
                   tuple(job.images.shape), tuple(job.labels.shape))
            groups.setdefault(key, []).append(job)
        for group in groups.values():
            size = self.stack_size(group[0])
            for i in range(0, len(group), size):
                chunk = group[i:i + size]
                if len(chunk) == 1:
                    on_result(chunk[0], _train(chunk[0], self.evals, self.device, on_epoch, self.engine))
                    continue
                first = chunk[0]
                results = train_stacked(
                    [j.images for j in chunk], [j.labels for j in chunk], first.recipe,
                    seeds=[j.seed for j in chunk], evals=self.evals, protocol=first.protocol,
                    device=self.device, compile_model=first.compile_model, on_epoch=on_epoch,
                    return_state=first.return_state, engine=self.engine, parts=first.parts,
                    graphs=self.graphs)
                for job, res in zip(chunk, results, strict=True):
                    on_result(job, res)

    def close(self) -> None:
        self.graphs.clear()
        self.engine.close()
