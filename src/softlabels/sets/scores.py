"""How hard or typical each real training image is, and the selections built on those scores.

Pure, vectorised functions over tensors from the data-pruning literature, used to choose which real images
go into a compressed training set (a few per class). Scores are float64 (counts int64), one per image;
higher = harder for EL2N, GraNd and forgetting, higher = easier for AUM. Every selection returns int64
positions grouped class by class (class 0's first), the layout of
:func:`softlabels.selection.random_per_class`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, vmap

from ..validation import check_choice, check_fraction, check_labels, check_positive_int, check_targets

__all__ = [
    "aum",
    "by_score_rank",
    "ccs_select",
    "el2n",
    "forgetting_events",
    "grand",
    "herding",
    "k_center_greedy",
    "per_class",
]


# --------------------------------------------------------------------------------------------- checks
def _check_float(name: str, x: object, *, ndims: tuple[int, ...]) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.ndim not in ndims:
        want = " or ".join(f"{d}-D" for d in ndims)
        raise ValueError(f"{name} must be {want}, got shape {tuple(x.shape)}")
    if not x.dtype.is_floating_point:
        raise TypeError(f"{name} must be floating point, got {x.dtype}")
    if x.numel() == 0:
        raise ValueError(f"{name} is empty (shape {tuple(x.shape)}); need at least one entry")
    if not torch.isfinite(x).all():
        raise ValueError(f"{name} contains NaN or infinite values; fix or drop those rows first")
    return x


def _check_scores(scores: object, targets: object, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    check_positive_int("num_classes", num_classes)
    s = _check_float("scores", scores, ndims=(1,))
    t = check_targets(targets, num_classes=num_classes, n=s.shape[0])
    return s.double(), t.long()


def _check_counts(targets: torch.Tensor, ipc: int, num_classes: int) -> torch.Tensor:
    check_positive_int("ipc", ipc)
    counts = torch.bincount(targets, minlength=num_classes)
    short = torch.nonzero(counts < ipc).flatten()
    if short.numel():
        c = int(short[0])
        raise ValueError(f"class {c} has only {int(counts[c])} images in the pool; ipc={ipc} is too large")
    return counts


def _check_features(features: object, m: int) -> torch.Tensor:
    x = _check_float("features", features, ndims=(2,))
    check_positive_int("m", m)
    if m > x.shape[0]:
        raise ValueError(f"m={m} is larger than the number of points N={x.shape[0]}; lower m")
    return x.double()  # float64: herding compares running means that should match exactly


def _class_major(rank: torch.Tensor, targets: torch.Tensor, counts: torch.Tensor, ipc: int) -> torch.Tensor:
    """The first ``ipc`` entries of each class in ``rank`` (a permutation), class 0's first."""
    rank = rank[torch.sort(targets[rank], stable=True).indices]  # stable: keeps rank order within a class
    starts = torch.cumsum(counts, 0) - counts
    return rank[(starts.view(-1, 1) + torch.arange(ipc).view(1, -1)).flatten()]


# --------------------------------------------------------------------------------------------- scores
def el2n(probs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """EL2N (Paul et al., 2021, "Deep Learning on a Data Diet"): ``||p - onehot(y)||_2``, higher = harder.

    ``probs`` is (N, K) softmax outputs, or (M, N, K) for M models / early checkpoints, whose M per-image
    scores are averaged (the mean of the scores, not the score of the mean probabilities, as in the paper).
    """
    probs = _check_float("probs", probs, ndims=(2, 3))
    stack = probs if probs.ndim == 3 else probs.unsqueeze(0)
    for i, p in enumerate(stack):
        check_labels(p, normalized=True, name="probs" if probs.ndim == 2 else f"probs[{i}]")
    _, n, k = stack.shape
    y = check_targets(targets, num_classes=k, n=n).long()
    onehot = F.one_hot(y, k).to(torch.float64)
    return (stack.double() - onehot).norm(dim=2).mean(0)


def grand(model: nn.Module | Sequence[nn.Module], images: torch.Tensor, targets: torch.Tensor, *,
          batch_size: int = 256, params: Sequence[str] | None = None) -> torch.Tensor:
    """GraNd (Paul et al., 2021): per-image L2 norm of the gradient of the cross-entropy with respect to the
    model's parameters (all, or the named subset ``params``, e.g. ``["fc.weight", "fc.bias"]``).

    Computed in eval mode with ``torch.func`` (vmap of grad over functional_call) in chunks of
    ``batch_size``; parameters are left untouched, no ``.grad`` is written, and every module's train/eval
    mode is restored afterwards. A list of models (initialisations, checkpoints) averages their scores.
    """
    models = list(model) if isinstance(model, (list, tuple)) else [model]
    if not models or not all(isinstance(m, nn.Module) for m in models):
        raise TypeError("model must be an nn.Module or a non-empty list of nn.Modules")
    if not isinstance(images, torch.Tensor) or images.ndim < 2:
        raise TypeError("images must be a torch.Tensor of shape (N, ...) with one row per image")
    if not images.dtype.is_floating_point:
        raise TypeError(f"images must be floating point (normalised model inputs), got {images.dtype}")
    if images.shape[0] == 0 or not torch.isfinite(images).all():
        raise ValueError("images must be non-empty and finite")
    y = check_targets(targets, n=images.shape[0]).long()
    check_positive_int("batch_size", batch_size)
    if isinstance(params, str):
        params = [params]
    total = torch.zeros(images.shape[0], dtype=torch.float64)
    for m in models:
        total += _grand_one(m, images.detach(), y, batch_size, params)
    return total / len(models)


def _grand_one(model: nn.Module, images: torch.Tensor, y: torch.Tensor, batch_size: int,
               params: Sequence[str] | None) -> torch.Tensor:
    named = dict(model.named_parameters())
    if not named:
        raise ValueError("model has no parameters; GraNd needs a model with trainable weights")
    wanted = list(named) if params is None else list(dict.fromkeys(params))
    if not wanted:
        raise ValueError("params is empty; pass None for all parameters or name at least one")
    unknown = [p for p in wanted if p not in named]
    if unknown:
        raise ValueError(f"params {unknown} are not parameters of the model; choose from {list(named)}")
    # Detached copies: grad differentiates w.r.t. `diff` functionally, so nothing touches the real tensors.
    diff = {k: named[k].detach() for k in wanted}
    const = {k: v.detach() for k, v in named.items() if k not in diff}
    const.update({k: b.detach() for k, b in model.named_buffers()})

    def loss(p: dict[str, torch.Tensor], x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        out = functional_call(model, (p, const), (x.unsqueeze(0),))
        return F.cross_entropy(out, t.unsqueeze(0))

    per_sample = vmap(grad(loss), in_dims=(None, 0, 0))
    device = next(iter(named.values())).device
    modes = [(m, m.training) for m in model.modules()]  # per module: a blanket .train() could change some
    model.eval()
    try:
        out = []
        for s in range(0, images.shape[0], batch_size):
            g = per_sample(diff, images[s:s + batch_size].to(device), y[s:s + batch_size].to(device))
            sq = sum(v.flatten(1).double().pow(2).sum(1) for v in g.values())
            out.append(sq.sqrt().cpu())
    finally:
        for m, was_training in modes:
            m.training = was_training
    return torch.cat(out)


def forgetting_events(correct: torch.Tensor) -> torch.Tensor:
    """Forgetting events (Toneva et al., 2019): per image, the number of correct -> incorrect transitions
    between consecutive epochs of ``correct`` (T, N) bool; higher = harder.

    Images never classified correctly in any epoch ("never learned") get T, above any learned image's count
    (at most T // 2): Toneva et al. treat them as infinitely forgettable.
    """
    if not isinstance(correct, torch.Tensor):
        raise TypeError(f"correct must be a torch.Tensor of shape (T, N), got {type(correct).__name__}")
    if correct.ndim != 2 or 0 in correct.shape:
        raise ValueError(f"correct must be non-empty (T epochs, N images), got shape {tuple(correct.shape)}")
    if correct.dtype != torch.bool:
        raise TypeError(f"correct must be bool (e.g. preds == targets per epoch), got {correct.dtype}")
    t = correct.shape[0]
    events = (correct[:-1] & ~correct[1:]).sum(0, dtype=torch.int64)
    return torch.where(correct.any(0), events, torch.full_like(events, t))


def aum(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Area Under the Margin (Pleiss et al., 2020): mean over the T recorded epochs of the margin
    ``z_y - max_{j != y} z_j`` of ``logits`` (T, N, K); higher = easier, negative = mostly misclassified.
    """
    z = _check_float("logits", logits, ndims=(3,)).double()
    t, n, k = z.shape
    if k < 2:
        raise ValueError(f"logits need at least 2 classes for a margin, got K={k}")
    idx = check_targets(targets, num_classes=k, n=n).long().view(1, n, 1).expand(t, n, 1)
    true = z.gather(2, idx).squeeze(2)
    other = z.scatter(2, idx, float("-inf")).amax(2)  # largest logit among the other classes
    return (true - other).mean(0)


# --------------------------------------------------------------------------------------------- selections
def by_score_rank(scores: torch.Tensor, targets: torch.Tensor, *, ipc: int, num_classes: int,
                  order: str = "lowest") -> torch.Tensor:
    """The ``ipc`` lowest- (or highest-) scoring images of each class, class by class, in rank order within a
    class (the most extreme first); ties go to the lower index. E.g. lowest EL2N = easiest images.
    """
    check_choice("order", order, ("lowest", "highest"))
    s, t = _check_scores(scores, targets, num_classes)
    counts = _check_counts(t, ipc, num_classes)
    rank = torch.sort(s if order == "lowest" else -s, stable=True).indices  # stable: lower index wins ties
    return _class_major(rank, t, counts, ipc)


def _allocate(budget: int, sizes: torch.Tensor) -> torch.Tensor:
    """Split ``budget`` over bins of ``sizes``: from the smallest bin up, each non-empty bin gets an equal
    share of what is left, or all its images if it has fewer (the rest is redistributed), as in CCS's
    ``bin_allocate``; flooring leaves the remainder to the largest bins. Exact when budget <= sizes.sum().
    """
    alloc = torch.zeros_like(sizes)
    rest = budget
    nonempty = [b for b in torch.argsort(sizes, stable=True).tolist() if sizes[b] > 0]
    for i, b in enumerate(nonempty):
        take = min(int(sizes[b]), rest // (len(nonempty) - i))
        alloc[b] = take
        rest -= take
    return alloc


def ccs_select(scores: torch.Tensor, targets: torch.Tensor, *, ipc: int, num_classes: int, cut: float = 0.1,
               strata: int = 50, seed: int = 0, hardest_is_high: bool = True) -> torch.Tensor:
    """Coverage-centric coreset selection (Zheng et al., ICLR 2023), per class: drop the hardest
    ``floor(cut * n_c)`` images (ties: lower index dropped first), cut the rest into ``strata`` equal-width
    score bins, share ``ipc`` over the non-empty bins (:func:`_allocate`), draw uniformly within bins.

    ``hardest_is_high=False`` for scores where low = hard (AUM). Seeded by ``seed`` (a ``torch.Generator``);
    returns exactly ``ipc`` positions per class, class by class, ascending within a class.
    """
    s, t = _check_scores(scores, targets, num_classes)
    check_positive_int("ipc", ipc)
    cut = check_fraction("cut", cut)
    check_positive_int("strata", strata)
    hard = s if hardest_is_high else -s
    g = torch.Generator().manual_seed(int(seed))
    out = []
    for c in range(num_classes):
        idx = torch.nonzero(t == c).flatten()
        n_drop = int(cut * idx.numel() + 1e-9)  # floor, robust to 0.29 * 100 = 28.999...
        keep = idx[torch.sort(-hard[idx], stable=True).indices[n_drop:]]
        if keep.numel() < ipc:
            raise ValueError(
                f"class {c} has only {keep.numel()} images after dropping the hardest cut={cut} fraction; "
                f"ipc={ipc} is too large: lower ipc or cut"
            )
        ks = s[keep]
        lo, hi = ks.min(), ks.max()
        if hi > lo:  # bin k covers [lo + k w, lo + (k+1) w), the last one closed at hi
            bins = ((ks - lo) * strata / (hi - lo)).floor().long().clamp_(0, strata - 1)
        else:
            bins = torch.zeros_like(keep)
        budget = _allocate(ipc, torch.bincount(bins, minlength=strata))
        picks = []
        for b in torch.nonzero(budget).flatten().tolist():
            pool = keep[bins == b]
            picks.append(pool[torch.randperm(pool.numel(), generator=g)[: int(budget[b])]])
        out.append(torch.cat(picks).sort().values)
    return torch.cat(out)


def herding(features: torch.Tensor, m: int) -> torch.Tensor:
    """Greedy herding (Welling, 2009; as in iCaRL, Rebuffi et al., 2017): ``m`` distinct rows of
    ``features`` (N, D), each chosen so the running mean of the chosen rows is closest to the mean of all
    rows. Returned in pick order (most representative first); ties go to the lower index.
    """
    x = _check_features(features, m)
    mu = x.mean(0)
    total = torch.zeros_like(mu)
    taken = torch.zeros(x.shape[0], dtype=torch.bool)
    chosen = []
    for k in range(1, m + 1):
        d = ((total + x) / k - mu).pow(2).sum(1)  # distance of each candidate running mean to the target
        d[taken] = float("inf")  # no repeats
        i = int(torch.argmin(d))  # argmin returns the first minimum: lower index wins ties
        chosen.append(i)
        taken[i] = True
        total += x[i]
    return torch.tensor(chosen, dtype=torch.int64)


def k_center_greedy(features: torch.Tensor, m: int, *, seed: int = 0) -> torch.Tensor:
    """Greedy k-centre (Sener & Savarese, 2018): start from a row of ``features`` (N, D) drawn with
    ``seed``, then repeatedly add the row farthest (Euclidean) from its nearest chosen centre. Returned
    in pick order; ties go to the lower index; a duplicate of a chosen row is taken only when nothing else
    is left.
    """
    x = _check_features(features, m)
    g = torch.Generator().manual_seed(int(seed))
    i = int(torch.randint(x.shape[0], (1,), generator=g))
    chosen = [i]
    nearest = (x - x[i]).pow(2).sum(1)  # squared distance to the nearest centre (same argmax as distance)
    nearest[i] = float("-inf")  # never re-pick a centre, even if a duplicate row is 0 away
    for _ in range(m - 1):
        i = int(torch.argmax(nearest))
        chosen.append(i)
        nearest = torch.minimum(nearest, (x - x[i]).pow(2).sum(1))
        nearest[i] = float("-inf")
    return torch.tensor(chosen, dtype=torch.int64)


def per_class(select_fn: Callable[..., torch.Tensor], data: torch.Tensor, targets: torch.Tensor, *, ipc: int,
              num_classes: int, **kwargs: object) -> torch.Tensor:
    """Run ``select_fn(data[rows of class c], ipc, **kwargs)`` (e.g. :func:`herding`,
    :func:`k_center_greedy` on per-image features) within each class and map its local positions back to
    positions in ``targets``: class by class, keeping ``select_fn``'s order within a class.

    ``kwargs`` (e.g. ``seed``) are passed unchanged to every class.
    """
    if not callable(select_fn):
        raise TypeError(f"select_fn must be callable (features, m, **kwargs) -> positions, got {select_fn!r}")
    if not isinstance(data, torch.Tensor) or data.ndim < 1:
        raise TypeError("data must be a torch.Tensor with one row per image")
    check_positive_int("num_classes", num_classes)
    t = check_targets(targets, num_classes=num_classes, n=data.shape[0]).long()
    _check_counts(t, ipc, num_classes)
    out = []
    for c in range(num_classes):
        idx = torch.nonzero(t == c).flatten()
        local = torch.as_tensor(select_fn(data[idx], ipc, **kwargs)).long().flatten()
        if (local.numel() != ipc or local.unique().numel() != ipc
                or int(local.min()) < 0 or int(local.max()) >= idx.numel()):
            raise ValueError(
                f"select_fn returned {local.tolist()} for class {c}; it must return {ipc} distinct "
                f"positions in 0..{idx.numel() - 1} into that class's rows"
            )
        out.append(idx[local])
    return torch.cat(out)
