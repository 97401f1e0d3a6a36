"""Learned labels (paper §5.2): meta-gradients, truncation, learning, determinism, resume, JSD to experts."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from softlabels.data.synthetic import make_synthetic
from softlabels.labels.learned import (
    LearnedLabelConfig,
    jsd_to_expert_labels,
    learn_labels,
    unrolled_meta_loss,
)
from softlabels.models import init_model

K_CLASSES = 3


@pytest.fixture(scope="module")
def split():
    """2 fixed images per class, the other training images as the held-out meta set."""
    ds = make_synthetic(num_classes=K_CLASSES, n_train=120, n_test=30, size=12)
    x, y = ds.normalize(ds.train_images), ds.train_targets
    pick = torch.cat([torch.nonzero(y == c).flatten()[:2] for c in range(K_CLASSES)])
    rest = torch.ones(len(y), dtype=torch.bool)
    rest[pick] = False
    return x[pick], y[pick], x[rest], y[rest]


def tiny(**kw) -> LearnedLabelConfig:
    base = dict(width=8, inner_steps=3, inner_lr=0.1, meta_steps=4, meta_lr=0.05, meta_batch=32)
    return LearnedLabelConfig(**{**base, **kw})


def f64_problem(split, n_meta=24):
    """A float64 one-block model on the plain conv -> GroupNorm path: the fused stem computes its patch
    statistics in float32, which would swamp a float64 finite difference."""
    x, _, mx, my = split
    model = init_model("convnet-d1", 4, seed=0, in_channels=1, num_classes=K_CLASSES, image_size=(12, 12))
    model = model.double()
    model.fused_stem = False
    params = {k: p.detach() for k, p in model.named_parameters()}
    z = torch.randn(x.shape[0], K_CLASSES, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    return model, params, z, x.double(), mx[:n_meta].double(), my[:n_meta]


def meta_loss(problem, z, *, lr=0.1, truncate=None):
    model, params, _, x, mx, my = problem
    return unrolled_meta_loss(model, params, z, x, mx, my, inner_steps=3, inner_lr=lr, inner_momentum=0.9,
                              truncate=truncate).meta_loss


def test_label_gradient_matches_finite_difference(split):
    problem = f64_problem(split)
    z0 = problem[2]
    z = z0.clone().requires_grad_(True)
    lr = torch.tensor(0.1, dtype=torch.float64, requires_grad=True)
    gz, glr = torch.autograd.grad(meta_loss(problem, z, lr=lr), [z, lr])
    gz, glr = gz.detach(), glr.detach()
    assert gz.abs().max() > 1e-6  # a non-trivial gradient, so the comparison means something
    # central differences in float64 at eps = 1e-5: truncation ~ eps^2 |L'''| / 6 and rounding
    # ~ 1e-16 |L| / eps, both ~ 1e-11 absolute, ~ 1e-9 relative to entries of ~ 1e-2 (measured:
    # 1e-9 to 1e-10, shrinking as eps^2 down to 1e-5); rel 1e-6 leaves a wide margin, while a wrong
    # or missing term (momentum, a second-order path) moves the gradient by far more. eps is too
    # small to flip a ReLU.
    eps = 1e-5
    for i, j in ((0, 0), (4, 2)):
        e = torch.zeros_like(z0)
        e[i, j] = eps
        fd = (meta_loss(problem, z0 + e) - meta_loss(problem, z0 - e)).detach() / (2 * eps)
        assert float(gz[i, j]) == pytest.approx(float(fd), rel=1e-6, abs=1e-10)
    fd_lr = (meta_loss(problem, z0, lr=0.1 + eps) - meta_loss(problem, z0, lr=0.1 - eps)).detach() / (2 * eps)
    assert float(glr) == pytest.approx(float(fd_lr), rel=1e-6, abs=1e-10)


def test_truncation_changes_the_gradient_and_full_truncation_is_bptt(split):
    problem = f64_problem(split)

    def grad(truncate):
        z = problem[2].clone().requires_grad_(True)
        return torch.autograd.grad(meta_loss(problem, z, truncate=truncate), z)[0]

    full, short = grad(None), grad(1)
    assert torch.isfinite(short).all() and short.abs().max() > 0
    assert not torch.allclose(short, full, rtol=1e-3, atol=0)
    assert torch.equal(grad(3), full)


def test_short_run_lowers_the_meta_loss(split):
    x, y, mx, my = split
    cfg = tiny(init="uniform", inner_lr=0.3, meta_steps=20, meta_lr=0.1, dsa=False)
    out = learn_labels(x, y, mx, my, num_classes=K_CLASSES, config=cfg)
    # fixed students unseen in training and the whole meta set, so batch and init draws do not decide it
    students = [init_model("convnet-d3", 8, seed=s, in_channels=1, num_classes=K_CLASSES, image_size=(12, 12))
                for s in (101, 102, 103)]

    def loss(z):
        return sum(float(unrolled_meta_loss(m, dict(m.named_parameters()), z, x, mx, my, inner_steps=3,
                                            inner_lr=0.3, inner_momentum=0.9).meta_loss.detach())
                   for m in students) / len(students)

    before, after = loss(torch.zeros(x.shape[0], K_CLASSES)), loss(out.logits)
    assert after < before - 0.02
    # uniform labels teach nothing; the learned ones point the images towards their own classes
    assert (out.probs.argmax(1) == y).float().mean() >= 2 / 3
    assert len(out.history) == 20 and [r["step"] for r in out.history] == list(range(20))


def test_probs_valid_deterministic_and_global_rng_untouched(split):
    x, y, mx, my = split
    cfg = tiny(learn_inner_lr=True, reset_every=2, truncate=2)
    rng = torch.get_rng_state()
    a = learn_labels(x, y, mx, my, num_classes=K_CLASSES, config=cfg)
    b = learn_labels(x, y, mx, my, num_classes=K_CLASSES, config=cfg)
    assert torch.equal(torch.get_rng_state(), rng)
    assert torch.equal(a.logits, b.logits) and a.history == b.history
    assert a.logits.dtype == torch.float32 and a.logits.shape == (x.shape[0], K_CLASSES)
    assert (a.probs >= 0).all() and torch.allclose(a.probs.sum(1), torch.ones(x.shape[0]))
    assert torch.equal(a.probs, F.softmax(a.logits, 1))
    assert a.inner_lr != pytest.approx(0.1, abs=1e-6)  # the lr was learned
    assert all(math.isfinite(r["meta_loss"]) for r in a.history)
    c = learn_labels(x, y, mx, my, num_classes=K_CLASSES, config=tiny(learn_inner_lr=True, reset_every=2,
                                                                        truncate=2, seed=1))
    assert not torch.equal(a.logits, c.logits)


def test_hard_init_is_smoothed_one_hot(split):
    x, y, mx, my = split
    out = learn_labels(x, y, mx, my, num_classes=K_CLASSES, config=tiny(meta_steps=1, meta_lr=1e-12))
    expected = F.one_hot(y, K_CLASSES).float() * 0.9 + 0.1 / K_CLASSES
    assert torch.allclose(out.probs, expected, atol=1e-6)


class Crash(Exception):
    pass


@pytest.mark.parametrize("reset_every", [1, 3])
def test_resume_is_bit_identical(split, tmp_path, reset_every):
    x, y, mx, my = split
    cfg = tiny(meta_steps=20, checkpoint_every=5, reset_every=reset_every, learn_inner_lr=True)
    whole = learn_labels(x, y, mx, my, num_classes=K_CLASSES, config=cfg)

    def crash_at_13(record):
        if record["step"] == 12:
            raise Crash

    with pytest.raises(Crash):
        learn_labels(x, y, mx, my, num_classes=K_CLASSES, config=cfg, state_dir=tmp_path / "a",
                     on_step=crash_at_13)
    resumed = learn_labels(x, y, mx, my, num_classes=K_CLASSES, config=cfg, state_dir=tmp_path / "a")
    assert resumed.resumed_from == 10
    assert torch.equal(resumed.logits, whole.logits) and resumed.history == whole.history
    assert resumed.inner_lr == whole.inner_lr
    assert len(list((tmp_path / "a").glob("*.safetensors"))) == 1

    if reset_every != 1:
        return
    # a run of 10 extended to 20 in a second call (meta_steps is not part of the identity)
    learn_labels(x, y, mx, my, num_classes=K_CLASSES, config=tiny(
        meta_steps=10, checkpoint_every=5, reset_every=reset_every, learn_inner_lr=True),
        state_dir=tmp_path / "b")
    extended = learn_labels(x, y, mx, my, num_classes=K_CLASSES, config=cfg, state_dir=tmp_path / "b")
    assert extended.resumed_from == 10 and torch.equal(extended.logits, whole.logits)
    # a finished state returns without further meta steps
    again = learn_labels(x, y, mx, my, num_classes=K_CLASSES, config=cfg, state_dir=tmp_path / "b")
    assert again.resumed_from == 20 and torch.equal(again.logits, whole.logits)


def test_mismatched_state_dir_is_refused(split, tmp_path):
    x, y, mx, my = split
    cfg = tiny(meta_steps=2, checkpoint_every=1)
    learn_labels(x, y, mx, my, num_classes=K_CLASSES, config=cfg, state_dir=tmp_path)
    with pytest.raises(ValueError, match="inner_lr"):
        learn_labels(x, y, mx, my, num_classes=K_CLASSES, config=tiny(meta_steps=2, inner_lr=0.2),
                     state_dir=tmp_path)
    with pytest.raises(ValueError, match="data hash"):
        learn_labels(x + 0.01, y, mx, my, num_classes=K_CLASSES, config=cfg, state_dir=tmp_path)
    with pytest.raises(ValueError, match="data hash"):
        learn_labels(x, y, mx[1:], my[1:], num_classes=K_CLASSES, config=cfg, state_dir=tmp_path)
    with pytest.raises(ValueError, match="more than the 1"):
        learn_labels(x, y, mx, my, num_classes=K_CLASSES, config=tiny(meta_steps=1), state_dir=tmp_path)


@pytest.mark.parametrize("kw, match", [
    (dict(truncate=4), "cannot exceed inner_steps"),
    (dict(truncate=0), "truncate must be >= 1"),
    (dict(model="convnet-d3-bn"), "batch norm"),
    (dict(init="soft"), "init must be one of"),
    (dict(init_smoothing=0.0), "init_smoothing > 0"),
    (dict(inner_momentum=1.0), "inner_momentum"),
    (dict(meta_lr=0.0), "meta_lr"),
])
def test_config_validation(kw, match):
    with pytest.raises(ValueError, match=match):
        tiny(**kw)
    with pytest.raises(TypeError):
        LearnedLabelConfig(width=8, dsa="yes")
    with pytest.raises(TypeError):
        LearnedLabelConfig(8)  # keyword-only


def test_inputs_are_validated(split):
    x, y, mx, my = split
    with pytest.raises(ValueError, match="meta_targets"):
        learn_labels(x, y, mx, my[:-1], num_classes=K_CLASSES, config=tiny())
    with pytest.raises(TypeError, match="normalise"):
        learn_labels((x * 0).to(torch.uint8), y, mx, my, num_classes=K_CLASSES, config=tiny())


def test_jsd_to_expert_labels():
    from scipy.spatial.distance import jensenshannon

    p = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]])
    q = torch.tensor([[0.2, 0.5, 0.3], [1.0, 0.0, 0.0]])
    out = jsd_to_expert_labels(p, {20: q, 5: p.clone()})
    assert list(out) == [5, 20]
    assert out[5] == pytest.approx(0.0, abs=1e-7)
    expected = sum(float(jensenshannon(a.double().numpy(), b.double().numpy(), base=2))
                   for a, b in zip(p, q, strict=True)) / 2
    assert out[20] == pytest.approx(expected, rel=1e-6)
    assert 0 < out[20] <= 1
    with pytest.raises(ValueError, match="epoch 3"):
        jsd_to_expert_labels(p, {3: q[:1]})
