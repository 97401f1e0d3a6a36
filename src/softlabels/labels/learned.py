"""Learned soft labels (paper §5.2): the label logits of a few fixed images are trained by truncated
back-propagation through the training of a student on them.

One meta step: a student (fresh every ``reset_every`` meta steps, seeded) takes K SGD-momentum steps on
the fixed images with targets ``softmax(label_logits)``; its cross-entropy on a random batch of held-out
*real training* images (hard labels) is the meta-loss; its gradient with respect to the logits (and the
inner lr when learned) drives an Adam step. The student runs functionally
(``torch.func.functional_call``) so its parameters are ordinary tensors carrying the graph.

The held-out meta set must come from the training split, never from validation or test data: the labels
are fitted to it, so any accuracy measured on it afterwards is optimistic.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from softlabels.augment import dsa as dsa_augment
from softlabels.io import load_tensors, read_json, save_tensors, tensor_hash, write_json
from softlabels.labels.diagnostics import mean_js_distance
from softlabels.models import get_model_spec, init_model
from softlabels.validation import (
    CorruptFileError,
    check_choice,
    check_fraction,
    check_images,
    check_labels,
    check_positive_float,
    check_positive_int,
    check_targets,
)

__all__ = ["LearnedLabelConfig", "LearnedLabels", "Unroll", "jsd_to_expert_labels", "learn_labels",
           "unrolled_meta_loss"]

INITS = ("hard", "uniform")
MANIFEST = "manifest.json"
_FORMAT = 1


@dataclass(frozen=True, kw_only=True)
class LearnedLabelConfig:
    """Options of :func:`learn_labels`.

    ``truncate`` (None: all K) is how many of the last inner steps are differentiated through; the first
    ``K - truncate`` run without the label graph (truncated BPTT). ``init="hard"`` starts from the log of
    one-hot labels smoothed by ``init_smoothing``; ``"uniform"`` from zeros. ``meta_steps`` and
    ``checkpoint_every`` are not part of a run's identity: a state can be extended to more meta steps.
    """

    model: str = "convnet-d3"
    width: int = 32
    inner_steps: int = 20
    inner_lr: float = 0.01
    learn_inner_lr: bool = False
    inner_momentum: float = 0.9
    meta_steps: int = 200
    meta_lr: float = 0.01
    meta_batch: int = 256
    dsa: bool = True
    init: str = "hard"
    init_smoothing: float = 0.1
    truncate: int | None = None
    reset_every: int = 1
    checkpoint_every: int = 10
    seed: int = 0

    def __post_init__(self) -> None:
        spec = get_model_spec(self.model, width=check_positive_int("width", self.width))
        if spec.norm == "batchnorm":
            # running statistics are module state the functional unroll would mutate behind the graph
            raise ValueError(f"model {self.model!r} uses batch norm; learned labels need a model without "
                             "running buffers (instance norm or no norm), e.g. 'convnet-d3'")
        for name in ("inner_steps", "meta_steps", "meta_batch", "reset_every", "checkpoint_every"):
            check_positive_int(name, getattr(self, name))
        check_positive_int("seed", self.seed, minimum=0)
        check_positive_float("inner_lr", self.inner_lr)
        check_positive_float("meta_lr", self.meta_lr)
        check_fraction("inner_momentum", self.inner_momentum)
        check_fraction("init_smoothing", self.init_smoothing)
        for name in ("learn_inner_lr", "dsa"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"{name} must be a bool, got {getattr(self, name)!r}")
        check_choice("init", self.init, INITS)
        if self.init == "hard" and self.init_smoothing == 0:
            raise ValueError("init='hard' needs init_smoothing > 0: the logits are the log of the smoothed "
                             "one-hot labels, and log(0) is -inf")
        if self.truncate is not None:
            check_positive_int("truncate", self.truncate)
            if self.truncate > self.inner_steps:
                raise ValueError(f"truncate ({self.truncate}) cannot exceed inner_steps "
                                 f"({self.inner_steps}); use truncate=None to differentiate through all "
                                 "inner steps")

    @property
    def truncate_steps(self) -> int:
        return self.inner_steps if self.truncate is None else self.truncate

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def identity(self) -> dict[str, Any]:
        """The fields a resumed state must share (everything but the run length and checkpoint cadence)."""
        d = self.to_dict()
        d.pop("meta_steps")
        d.pop("checkpoint_every")
        d["truncate"] = self.truncate_steps  # None and K are the same run
        return d


@dataclass(frozen=True, kw_only=True)
class LearnedLabels:
    """The result of :func:`learn_labels`: ``logits``/``probs`` (N, K) CPU float32, one ``history`` dict per
    meta step (``step``, ``meta_loss``, ``meta_acc``, ``inner_lr``; the loss and accuracy are of the
    labels *before* that step's update), the final ``inner_lr``, and the meta step it resumed from."""

    logits: torch.Tensor
    probs: torch.Tensor
    history: list[dict[str, float]] = field(repr=False)
    config: LearnedLabelConfig
    inner_lr: float
    resumed_from: int = 0


@dataclass(frozen=True)
class Unroll:
    """One unrolled inner loop: the meta-loss (a graph to the labels and lr), the meta batch accuracy,
    and the student's final parameters and momentum buffers."""

    meta_loss: torch.Tensor
    meta_acc: float
    params: dict[str, torch.Tensor]
    momentum: dict[str, torch.Tensor]


def _soft_ce(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    # the engine's soft_cross_entropy casts to float32; here float64 must stay float64 (gradient checks)
    return -(targets * F.log_softmax(logits, dim=1)).sum(dim=1).mean()


def unrolled_meta_loss(model: nn.Module, params: dict[str, torch.Tensor], label_logits: torch.Tensor,
                       images: torch.Tensor, meta_images: torch.Tensor, meta_targets: torch.Tensor, *,
                       inner_steps: int, inner_lr: float | torch.Tensor, inner_momentum: float,
                       truncate: int | None = None, momentum: dict[str, torch.Tensor] | None = None,
                       dsa_generator: torch.Generator | None = None,
                       stats: tuple[torch.Tensor, torch.Tensor] | None = None) -> Unroll:
    """Train ``model`` (run as ``functional_call(model, params, ...)``) for ``inner_steps`` SGD-momentum steps
    on ``(images, softmax(label_logits))`` and return its cross-entropy on ``(meta_images, meta_targets)``.

    Inner step: ``g = grad_theta CE_soft(f(aug(x); theta), softmax(z))``, ``b = mu b + g``,
    ``theta = theta - lr b`` (PyTorch SGD, no dampening or weight decay). The last ``truncate`` steps keep
    the graph (``create_graph``); the ones before run detached from it. ``dsa_generator`` augments the
    images at every inner step (None: no augmentation); ``stats`` are the un-augmented images' stem
    statistics, passed to the model when there is no augmentation.
    """
    truncate = inner_steps if truncate is None else truncate
    targets = F.softmax(label_logits, dim=1)
    names = list(params)
    theta = {n: p.detach().requires_grad_(True) for n, p in params.items()}
    buf = {n: torch.zeros_like(p) for n, p in theta.items()} if momentum is None else dict(momentum)
    for step in range(inner_steps):
        tracked = step >= inner_steps - truncate
        x = images if dsa_generator is None else dsa_augment(images, generator=dsa_generator)
        args = (x,) if dsa_generator is not None or stats is None else (x, stats)
        with torch.enable_grad():
            loss = _soft_ce(functional_call(model, theta, args), targets if tracked else targets.detach())
            # the fused stem's conv bias cancels in the norm and gets no gradient: zeros, as SGD would see
            grads = torch.autograd.grad(loss, [theta[n] for n in names], create_graph=tracked,
                                        allow_unused=True, materialize_grads=True)
        lr = inner_lr if tracked or not isinstance(inner_lr, torch.Tensor) else inner_lr.detach()
        new_theta = {}
        for n, g in zip(names, grads, strict=True):
            b = inner_momentum * buf[n] + g
            p = theta[n] - lr * b
            if not tracked:  # detached steps: plain tensors, made differentiable for the next inner grad
                b, p = b.detach(), p.detach().requires_grad_(True)
            buf[n], new_theta[n] = b, p
        theta = new_theta
    out = functional_call(model, theta, (meta_images,))
    meta_loss = F.cross_entropy(out, meta_targets)
    meta_acc = float((out.detach().argmax(1) == meta_targets).double().mean())
    return Unroll(meta_loss, meta_acc, {n: p.detach() for n, p in theta.items()},
                  {n: b.detach() for n, b in buf.items()})


def _initial_logits(targets: torch.Tensor, num_classes: int, config: LearnedLabelConfig,
                    dtype: torch.dtype) -> torch.Tensor:
    if config.init == "uniform":
        return torch.zeros(targets.shape[0], num_classes, dtype=dtype, device=targets.device)
    s = config.init_smoothing
    p = F.one_hot(targets, num_classes).to(dtype) * (1 - s) + s / num_classes
    return p.log()


def _file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _identity(config: LearnedLabelConfig, num_classes: int, tensors: tuple[torch.Tensor, ...]) -> dict:
    return {"format": _FORMAT, "config": config.identity(), "num_classes": int(num_classes),
            "data_hash": tensor_hash(*tensors)}


def learn_labels(images: torch.Tensor, targets: torch.Tensor, meta_images: torch.Tensor,
                 meta_targets: torch.Tensor, *, num_classes: int, config: LearnedLabelConfig | None = None,
                 state_dir: str | Path | None = None,
                 on_step: Callable[[dict[str, float]], None] | None = None) -> LearnedLabels:
    """Learn soft labels for the fixed model-ready ``images`` (N, C, H, W) by meta-gradient descent.

    ``targets`` (N,) are the images' true classes, used only to initialise the labels. ``meta_images`` /
    ``meta_targets`` are a held-out split of real *training* images (never validation or test data) on
    which the meta-loss is computed. Runs on the images' device and dtype; every random draw comes from
    generators seeded by ``config.seed`` (the global RNG is untouched). With ``state_dir`` the state is
    written atomically every ``checkpoint_every`` meta steps and at the end, and a later call with the
    same arguments resumes from it, ending bit-identical to an uninterrupted run; a state of another
    config or other data is refused. ``on_step`` receives each new history record.
    """
    config = LearnedLabelConfig() if config is None else config
    if not isinstance(config, LearnedLabelConfig):
        raise TypeError(f"config must be a LearnedLabelConfig, got {type(config).__name__}")
    num_classes = check_positive_int("num_classes", num_classes, minimum=2)
    for name, x in (("images", images), ("meta_images", meta_images)):
        check_images(x, name=name)
        if not x.dtype.is_floating_point:
            raise TypeError(f"{name} must be model-ready floats (normalise the uint8 images first), "
                            f"got {x.dtype}")
    check_targets(targets, num_classes=num_classes, n=images.shape[0])
    check_targets(meta_targets, num_classes=num_classes, n=meta_images.shape[0], name="meta_targets")
    if meta_images.shape[1:] != images.shape[1:] or meta_images.dtype != images.dtype:
        raise ValueError(f"meta_images {tuple(meta_images.shape[1:])} {meta_images.dtype} must match images "
                         f"{tuple(images.shape[1:])} {images.dtype}")
    dev, dtype = images.device, images.dtype
    meta_images, targets, meta_targets = meta_images.to(dev), targets.to(dev), meta_targets.to(dev)
    n, c, h, w = images.shape
    ident = _identity(config, num_classes, (images, targets, meta_images, meta_targets))

    def student(reset: int) -> tuple[nn.Module, dict[str, torch.Tensor]]:
        m = init_model(config.model, config.width, seed=config.seed * 100_003 + reset, in_channels=c,
                       num_classes=num_classes, image_size=(h, w), device=dev).to(dtype)
        return m, {k: p.detach() for k, p in m.named_parameters()}

    model, _ = student(0)
    if any(True for _ in model.buffers()):
        raise ValueError(f"model {config.model!r} has buffers; learned labels need a buffer-free model")
    stats = model.stem_stats(images) if hasattr(model, "stem_stats") and not config.dsa else None

    logits = nn.Parameter(_initial_logits(targets, num_classes, config, dtype))
    log_lr = nn.Parameter(torch.tensor(math.log(config.inner_lr), dtype=dtype, device=dev))
    learnables = [logits, log_lr] if config.learn_inner_lr else [logits]
    opt = torch.optim.Adam(learnables, lr=config.meta_lr)
    # separate streams, so turning DSA off leaves the meta batches unchanged
    g_batch = torch.Generator(device=dev).manual_seed(config.seed * 1_000_003 + 1)
    g_dsa = torch.Generator(device=dev).manual_seed(config.seed * 1_000_003 + 2)
    history: list[dict[str, float]] = []
    params: dict[str, torch.Tensor] | None = None
    buf: dict[str, torch.Tensor] | None = None
    start = 0

    sdir = Path(state_dir) if state_dir is not None else None
    if sdir is not None and (sdir / MANIFEST).exists():
        manifest = read_json(sdir / MANIFEST)
        if manifest.get("identity") != ident:
            theirs = manifest.get("identity", {})
            diff = sorted(k for k in set(ident["config"]) | set(theirs.get("config", {}))
                          if ident["config"].get(k) != theirs.get("config", {}).get(k))
            what = (f"config fields {', '.join(diff)}" if diff else
                    "images or targets (data hash)" if ident["data_hash"] != theirs.get("data_hash") else
                    "num_classes or state format")
            raise ValueError(f"{sdir} holds the state of a different label-learning run (its {what} differ); "
                             "use another state_dir or delete this one to start over")
        path = sdir / manifest["file"]
        if not path.exists() or _file_sha256(path) != manifest["sha256"]:
            raise CorruptFileError(f"{path} is missing or does not match the hash in {sdir / MANIFEST}; "
                                   "delete the state_dir to start over")
        if manifest["step"] > config.meta_steps:
            raise ValueError(f"{sdir} holds {manifest['step']} meta steps, more than the {config.meta_steps} "
                             "asked for; ask for at least as many or use another state_dir")
        t, _ = load_tensors(path)
        with torch.no_grad():
            logits.copy_(t["logits"])
            log_lr.copy_(t["log_inner_lr"])
        sd = opt.state_dict()
        for i in range(len(learnables)):
            if f"adam.{i}.step" in t:
                sd["state"][i] = {k: t[f"adam.{i}.{k}"] for k in ("step", "exp_avg", "exp_avg_sq")}
        opt.load_state_dict(sd)
        g_batch.set_state(t["gen.batch"])
        g_dsa.set_state(t["gen.dsa"])
        if "params.__present__" in t:
            params = {k: t[f"params.{k}"].to(dev) for k, _ in model.named_parameters()}
            buf = {k: t[f"momentum.{k}"].to(dev) for k, _ in model.named_parameters()}
        history = list(manifest["history"])
        start = int(manifest["step"])

    def checkpoint(step: int) -> None:
        t = {"logits": logits.detach(), "log_inner_lr": log_lr.detach(),
             "gen.batch": g_batch.get_state(), "gen.dsa": g_dsa.get_state()}
        for i, st in opt.state_dict()["state"].items():
            t.update({f"adam.{i}.{k}": v for k, v in st.items()})
        if params is not None and config.reset_every > 1:  # a student that carries over to the next step
            t["params.__present__"] = torch.ones(1)
            t.update({f"params.{k}": v for k, v in params.items()})
            t.update({f"momentum.{k}": v for k, v in buf.items()})
        name = f"state-{step:08d}.safetensors"
        save_tensors(sdir / name, t)
        old = read_json(sdir / MANIFEST).get("file") if (sdir / MANIFEST).exists() else None
        # the manifest moves to the new file only once it is complete, so a crash leaves a consistent pair
        write_json(sdir / MANIFEST, {"identity": ident, "step": step, "file": name,
                                     "sha256": _file_sha256(sdir / name), "history": history})
        if old and old != name and (sdir / old).exists():
            (sdir / old).unlink()

    m_count = meta_images.shape[0]
    bsz = min(config.meta_batch, m_count)
    for step in range(start, config.meta_steps):
        if step % config.reset_every == 0 or params is None:
            _, params = student(step // config.reset_every)
            buf = None
        idx = torch.randperm(m_count, generator=g_batch, device=dev)[:bsz]
        inner_lr = log_lr.exp() if config.learn_inner_lr else config.inner_lr
        run = unrolled_meta_loss(model, params, logits, images, meta_images[idx], meta_targets[idx],
                                 inner_steps=config.inner_steps, inner_lr=inner_lr,
                                 inner_momentum=config.inner_momentum, truncate=config.truncate,
                                 momentum=buf, dsa_generator=g_dsa if config.dsa else None, stats=stats)
        grads = torch.autograd.grad(run.meta_loss, learnables)
        for p, g in zip(learnables, grads, strict=True):
            p.grad = g
        record = {"step": step, "meta_loss": float(run.meta_loss.detach()), "meta_acc": run.meta_acc,
                  "inner_lr": float(log_lr.detach().exp())}
        opt.step()
        params, buf = run.params, run.momentum
        history.append(record)
        done = step + 1
        if sdir is not None and (done % config.checkpoint_every == 0 or done == config.meta_steps):
            checkpoint(done)
        if on_step is not None:
            on_step(dict(record))

    out = logits.detach().to("cpu", torch.float32)
    return LearnedLabels(logits=out, probs=F.softmax(out, dim=1), history=history, config=config,
                         inner_lr=float(log_lr.detach().exp()), resumed_from=start)


def jsd_to_expert_labels(learned_probs: torch.Tensor,
                         expert_probs_by_epoch: dict[int, torch.Tensor]) -> dict[int, float]:
    """Mean normalised Jensen–Shannon distance (base-2 logs, square root of the divergence, in [0, 1])
    between the learned labels and each expert epoch's labels of the same images, by epoch (sorted)."""
    check_labels(learned_probs, normalized=True, name="learned_probs")
    if not expert_probs_by_epoch:
        raise ValueError("expert_probs_by_epoch is empty: pass {epoch: (N, K) labels} for at least one epoch")
    out = {}
    for epoch in sorted(expert_probs_by_epoch):
        q = check_labels(expert_probs_by_epoch[epoch], n=learned_probs.shape[0],
                         num_classes=learned_probs.shape[1], name=f"expert labels of epoch {epoch}")
        out[int(epoch)] = mean_js_distance(learned_probs.detach().cpu(), q.detach().cpu())
    return out
