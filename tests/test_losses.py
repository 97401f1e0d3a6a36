"""Student losses: each against arithmetic written out by hand, plus the properties the docstrings claim."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from softlabels.engine.losses import (
    LOSSES,
    Loss,
    check_targets_for,
    jaccard_metric_loss,
    list_losses,
    loss_fn,
    soft_jaccard_loss,
)

NAMES = ["soft-ce", "kl", "mse+gt", "nkd", "uskd", "jml"]
S = [[1.0, 2.0, 0.0], [0.5, -1.0, 0.25]]  # student logits used by the hand computations


def softmax(row, t=1.0):
    e = [math.exp(v / t) for v in row]
    return [v / sum(e) for v in e]


def close(a, b, tol=1e-6):
    assert abs(float(a) - float(b)) <= tol, (float(a), float(b))


def tensors(*rows_lists):
    return [torch.tensor(r, dtype=torch.float32) for r in rows_lists]


# ---- soft-ce -----------------------------------------------------------------------------------------

def test_soft_ce_by_hand_with_a_sub_stochastic_row():
    y = [[0.2, 0.7, 0.1], [0.6, 0.0, 0.3]]  # row 1 sums to 0.9: top-k without renormalisation
    rows = [-sum(yc * math.log(pc) for yc, pc in zip(yr, softmax(sr), strict=True))
            for sr, yr in zip(S, y, strict=True)]
    close(loss_fn("soft-ce")(*tensors(S, y)), sum(rows) / 2)


def test_soft_ce_equals_cross_entropy_with_probability_targets():
    g = torch.Generator().manual_seed(0)
    s = torch.randn(8, 5, generator=g)
    y = torch.softmax(torch.randn(8, 5, generator=g), 1) * torch.rand(8, 1, generator=g)
    close(loss_fn("soft-ce")(s, y), F.cross_entropy(s, y))
    s4, y4 = torch.randn(2, 5, 3, 4, generator=g), torch.softmax(torch.randn(2, 5, 3, 4, generator=g), 1)
    close(loss_fn()(s4, y4), F.cross_entropy(s4, y4))


@pytest.mark.parametrize("name", NAMES)
def test_segmentation_shape_equals_flattened_rows(name):
    g = torch.Generator().manual_seed(1)
    s = torch.randn(2, 4, 3, 3, generator=g)
    y = torch.softmax(2 * torch.randn(2, 4, 3, 3, generator=g), 1)
    hard = torch.randint(0, 4, (2, 3, 3), generator=g)
    flat = lambda t: t.permute(0, 2, 3, 1).reshape(-1, 4)  # noqa: E731
    loss = loss_fn(name)
    close(loss(s, y, hard=hard), loss(flat(s), flat(y), hard=hard.reshape(-1)))
    close(loss(s, y), loss(flat(s), flat(y)))


# ---- kl ----------------------------------------------------------------------------------------------

def test_kl_by_hand_at_t2_with_a_zero_entry():
    t = 2.0
    y = [[0.2, 0.7, 0.1], [0.6, 0.4, 0.0]]
    rows = []
    for sr, yr in zip(S, y, strict=True):
        powered = [v ** (1 / t) for v in yr]  # softmax(log y / t) = y^(1/t) / sum y^(1/t)
        q = [v / sum(powered) for v in powered]
        p = softmax(sr, t)
        rows.append(sum(qc * math.log(qc / pc) for qc, pc in zip(q, p, strict=True) if qc > 0))
    close(loss_fn("kl:t=2")(*tensors(S, y)), t * t * sum(rows) / 2)


def test_kl_at_t1_is_kl_divergence_to_the_student():
    g = torch.Generator().manual_seed(2)
    s = torch.randn(6, 4, generator=g)
    y = torch.softmax(torch.randn(6, 4, generator=g), 1)
    y[0, 1] = 0.0
    y = y / y.sum(1, keepdim=True)
    close(loss_fn("kl:t=1")(s, y), F.kl_div(F.log_softmax(s, 1), y, reduction="batchmean"))


def test_kl_retempers_probabilities_and_is_zero_at_the_match():
    g = torch.Generator().manual_seed(3)
    z, s = torch.randn(5, 4, generator=g), torch.randn(5, 4, generator=g)
    t0, t = 2.0, 3.0
    y = torch.softmax(z / t0, 1)
    direct = t * t * F.kl_div(F.log_softmax(s / t, 1), torch.softmax(z / (t0 * t), 1), reduction="batchmean")
    close(loss_fn("kl:t=3")(s, y), direct, 1e-5)
    close(loss_fn("kl:t=3")(z / t0, y), 0.0, 1e-5)  # softmax(s / t) == q


def test_kl_zero_rows_count_zero_and_sub_stochastic_rows_follow_soft_ce():
    g = torch.Generator().manual_seed(4)
    s = torch.randn(2, 3, generator=g)
    y = torch.tensor([[0.5, 0.3, 0.2], [0.0, 0.0, 0.0]])
    kl = loss_fn("kl:t=2")
    close(kl(s, y), kl(s[:1], y[:1]) / 2)
    top2 = torch.tensor([[0.6, 0.3, 0.0], [0.0, 0.45, 0.45]])
    grads = []
    for loss in (loss_fn("kl:t=1"), loss_fn("soft-ce")):
        x = s.clone().requires_grad_()
        loss(x, top2).backward()
        grads.append(x.grad)
    torch.testing.assert_close(grads[0], grads[1])


# ---- mse+gt ------------------------------------------------------------------------------------------

def test_mse_gt_by_hand():
    y = [[0.2, 0.7, 0.1], [0.6, 0.1, 0.3]]
    hard = [2, 2]
    total = 0.0
    for sr, yr, h in zip(S, y, hard, strict=True):
        p = softmax(sr)
        total += sum((pc - yc) ** 2 for pc, yc in zip(p, yr, strict=True)) + 0.5 * -math.log(p[h])
    s_t, y_t = tensors(S, y)
    close(loss_fn("mse+gt:alpha=0.5")(s_t, y_t, hard=torch.tensor(hard)), total / 2)
    argmax = y_t.argmax(1)
    close(loss_fn("mse+gt")(s_t, y_t), loss_fn("mse+gt")(s_t, y_t, hard=argmax))


# ---- nkd ---------------------------------------------------------------------------------------------

def test_nkd_by_hand_at_t2():
    t, gamma = 2.0, 1.5
    y = [[0.2, 0.7, 0.1], [0.5, 0.2, 0.3]]  # hard = argmax = [1, 0]
    total = 0.0
    for sr, yr in zip(S, y, strict=True):
        tc = yr.index(max(yr))
        others = [j for j in range(3) if j != tc]
        first = -yr[tc] * math.log(softmax(sr)[tc])
        powered = [yr[j] ** (1 / t) for j in others]
        y_hat = [v / sum(powered) for v in powered]
        s_hat = softmax([sr[j] for j in others], t)
        total += first - gamma * t * t * sum(a * math.log(b) for a, b in zip(y_hat, s_hat, strict=True))
    close(loss_fn("nkd:t=2")(*tensors(S, y)), total / 2)


def test_nkd_without_non_target_mass_is_the_target_term():
    s, y = tensors(S, [[0.0, 1.0, 0.0], [0.0, 0.0, 0.8]])
    expected = (-math.log(softmax(S[0])[1]) - 0.8 * math.log(softmax(S[1])[2])) / 2
    close(loss_fn("nkd:t=3,gamma=2")(s, y), expected)


def test_nkd_needs_two_classes():
    with pytest.raises(ValueError, match="at least 2 classes"):
        loss_fn("nkd")(torch.zeros(3, 1), torch.ones(3, 1))


# ---- uskd --------------------------------------------------------------------------------------------

def test_uskd_by_hand():
    alpha, beta = 0.5, 2.0
    hard = [1, 2]
    st_ = [softmax(sr)[h] for sr, h in zip(S, hard, strict=True)]
    mean_sq = sum(v * v for v in st_) / 2
    total = 0.0
    for sr, h, s_t in zip(S, hard, st_, strict=True):
        others = sorted((j for j in range(3) if j != h), key=lambda j: -sr[j])  # rank 1 = largest logit
        zipf = [1 / r for r in range(1, len(others) + 1)]
        z = [v / sum(zipf) for v in zipf]
        s_hat = softmax([sr[j] for j in others])
        p_t = s_t * s_t + 1 - mean_sq
        total += -math.log(s_t) + alpha * -p_t * math.log(s_t)
        total += beta * -sum(a * math.log(b) for a, b in zip(z, s_hat, strict=True))
    s, y = tensors(S, [[0.3, 0.3, 0.4], [0.1, 0.1, 0.8]])
    close(loss_fn("uskd:alpha=0.5,beta=2")(s, y, hard=torch.tensor(hard)), total / 2)


def test_uskd_ignores_the_teacher_and_detaches_its_own_labels():
    g = torch.Generator().manual_seed(5)
    s = torch.randn(4, 5, generator=g)
    hard = torch.tensor([0, 3, 3, 1])
    uskd = loss_fn("uskd:alpha=0.5,beta=2")
    a = torch.softmax(torch.randn(4, 5, generator=g), 1)
    close(uskd(s, a, hard=hard), uskd(s, torch.zeros(4, 5), hard=hard))
    x = s.clone().requires_grad_()
    uskd(x, a, hard=hard).backward()
    # d/ds of CE + alpha * (-p_t log S_t) + beta * (-z . log Shat), with p_t and z constants
    prob = torch.softmax(s, 1)
    onehot = F.one_hot(hard, 5).float()
    st2 = (prob * onehot).sum(1, keepdim=True) ** 2
    p_t = st2 + 1 - st2.mean()
    others = s.masked_fill(onehot.bool(), -1e9)
    s_hat = torch.softmax(others, 1)
    rank = others.argsort(1, descending=True).argsort(1).float() + 1
    z = torch.where(onehot.bool(), 0.0, 1 / rank)
    z = z / z.sum(1, keepdim=True)
    expected = ((prob - onehot) * (1 + 0.5 * p_t) + 2.0 * (s_hat - z)) / 4
    torch.testing.assert_close(x.grad, expected, atol=1e-6, rtol=1e-5)


# ---- jml ---------------------------------------------------------------------------------------------

X4 = [[0.7, 0.2, 0.1, 0.0], [0.1, 0.3, 0.6, 0.0]]
Y4 = [[0.6, 0.4, 0.0, 0.0], [0.0, 0.5, 0.5, 0.0]]  # class 3: neither present nor predicted


def test_jaccard_losses_by_hand():
    jml, sjl = [], []
    for c in range(3):
        xs, ys = X4[0][c] + X4[1][c], Y4[0][c] + Y4[1][c]
        d = abs(X4[0][c] - Y4[0][c]) + abs(X4[1][c] - Y4[1][c])
        inter = X4[0][c] * Y4[0][c] + X4[1][c] * Y4[1][c]
        jml.append(1 - (xs + ys - d) / (xs + ys + d))
        sjl.append(1 - inter / (xs + ys - inter))
    x, y = tensors(X4, Y4)
    close(jaccard_metric_loss(x, y), sum(jml) / 3)
    close(soft_jaccard_loss(x, y), sum(sjl) / 3)
    close(jaccard_metric_loss(x.T, y.T, dim=0), sum(jml) / 3)
    close(jaccard_metric_loss(torch.zeros(2, 3), torch.zeros(2, 3)), 0.0)


def test_jml_loss_is_weighted_soft_ce_plus_jml():
    s, y = tensors(S, [[0.2, 0.7, 0.1], [0.6, 0.1, 0.3]])
    expected = 0.5 * F.cross_entropy(s, y) + 2.0 * jaccard_metric_loss(torch.softmax(s, 1), y)
    close(loss_fn("jml:weight=2,ce=0.5")(s, y), expected)


@st.composite
def prob_pairs(draw):
    n, k = draw(st.integers(1, 5)), draw(st.integers(1, 5))
    unit = st.floats(0.0, 1.0, allow_nan=False)

    def probs():
        t = torch.tensor(draw(st.lists(unit, min_size=n * k, max_size=n * k)), dtype=torch.float64)
        t = t.reshape(n, k)
        return t / t.sum(1, keepdim=True).clamp_min(1.0)  # rows sum to at most 1; zero rows allowed

    return probs(), probs(), torch.tensor(draw(st.lists(st.integers(0, k - 1), min_size=n, max_size=n)))


PROPS = settings(max_examples=60, deadline=None)


@PROPS
@given(prob_pairs())
def test_jml_equals_sjl_for_one_hot_labels(pair):
    x, _, cls = pair
    y = F.one_hot(cls, x.shape[1]).double()
    close(jaccard_metric_loss(x, y), soft_jaccard_loss(x, y), 1e-9)


@PROPS
@given(prob_pairs())
def test_jml_is_zero_for_identical_soft_labels(pair):
    x, _, _ = pair
    close(jaccard_metric_loss(x, x.clone()), 0.0, 1e-12)


@PROPS
@given(prob_pairs())
def test_jml_is_symmetric_and_in_unit_interval(pair):
    x, y, _ = pair
    v = float(jaccard_metric_loss(x, y))
    close(v, jaccard_metric_loss(y, x), 1e-12)
    assert 0.0 <= v <= 1.0 + 1e-12
    assert 0.0 <= float(soft_jaccard_loss(x, y)) <= 1.0 + 1e-12


# ---- all losses --------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", NAMES)
def test_gradients_flow_and_bf16_computes_in_float32(name):
    g = torch.Generator().manual_seed(6)
    y = torch.softmax(torch.randn(4, 5, generator=g), 1)
    for dtype in (torch.float32, torch.bfloat16):
        s = torch.randn(4, 5, generator=g).to(dtype).requires_grad_()
        v = loss_fn(name)(s, y)
        assert v.shape == () and v.dtype == torch.float32 and torch.isfinite(v)
        v.backward()
        assert s.grad.dtype == dtype and torch.isfinite(s.grad).all() and s.grad.abs().sum() > 0


def test_canonical_specs_write_every_parameter():
    assert loss_fn("kl").spec == "kl:t=4.0"
    assert loss_fn().spec == "soft-ce" and loss_fn().name == "soft-ce"
    assert loss_fn(" nkd : gamma = 2 ").spec == "nkd:t=1.0,gamma=2.0"
    assert loss_fn("uskd:beta=0.5").spec == "uskd:alpha=1.0,beta=0.5"
    assert loss_fn("jml").spec == "jml:weight=1.0,ce=1.0"
    assert loss_fn("mse+gt:alpha=0").spec == "mse+gt:alpha=0.0"
    assert LOSSES.canonical("kl:t=2") == loss_fn("kl:t=2").spec == "kl:t=2.0"
    assert isinstance(loss_fn("kl"), Loss) and loss_fn("kl") == loss_fn("kl:t=4")


@pytest.mark.parametrize("spec, match", [
    ("kll", "Did you mean 'kl'"),
    ("focal", "Valid student loss names"),
    ("kl:t=0", "parameter t must be a number > 0"),
    ("kl:t=abc", "parameter t must be a number > 0"),
    ("kl:temp=2", "Valid parameters: t"),
    ("nkd:gama=2", "Did you mean 'gamma'"),
    ("soft-ce:t=1", "takes no parameters"),
    ("uskd:alpha=-1", "alpha must be a number >= 0"),
])
def test_bad_specs_raise_helpful_errors(spec, match):
    with pytest.raises(ValueError, match=match):
        loss_fn(spec)


def test_direct_construction_checks_parameters():
    with pytest.raises(ValueError, match="parameter t must be a finite number > 0"):
        type(loss_fn("kl"))(spec="kl:t=0.0", name="kl", t=0.0)


def test_list_losses_lists_all_six_with_one_line_help():
    listed = list_losses()
    assert sorted(listed) == sorted(NAMES)
    assert all(h and "\n" not in h for h in listed.values())


@pytest.mark.parametrize("args, kwargs, err, match", [
    ((torch.zeros(2, 3), torch.zeros(2, 4)), {}, ValueError, "same shape"),
    ((torch.zeros(3), torch.zeros(3)), {}, ValueError, "classes on dim 1"),
    ((torch.zeros(2, 3), torch.zeros(2, 3, dtype=torch.long)), {}, TypeError, "hard="),
    (([[0.0, 1.0]], torch.zeros(1, 2)), {}, TypeError, "torch.Tensor"),
    ((torch.zeros(0, 3), torch.zeros(0, 3)), {}, ValueError, "empty"),
    ((torch.zeros(2, 3), torch.zeros(2, 3)), {"hard": torch.zeros(3, dtype=torch.long)}, ValueError,
     r"need \(2,\)"),
    ((torch.zeros(2, 3), torch.zeros(2, 3)), {"hard": torch.zeros(2)}, TypeError, "int64"),
])
@pytest.mark.parametrize("name", ["soft-ce", "nkd"])
def test_bad_inputs_raise_one_line_errors(name, args, kwargs, err, match):
    with pytest.raises(err, match=match) as info:
        loss_fn(name)(*args, **kwargs)
    assert "\n" not in str(info.value)


def test_check_targets_for_checks_values_once_per_set():
    y = torch.softmax(torch.randn(3, 4, 2, 2), 1)
    hard = torch.zeros(3, 2, 2, dtype=torch.long)
    assert check_targets_for("nkd", y, hard=hard) is y
    assert check_targets_for(loss_fn("soft-ce"), y[:, :, 0, 0] * 0.5) is not None  # sub-stochastic is fine
    bad_cases = [
        (y.clone().index_put_((torch.tensor(0),), torch.tensor(float("nan"))), {}, "NaN"),
        (y - 0.5, {}, "negative"),
        (y * 2, {}, "> 1"),
        (y, {"hard": hard + 4}, "contains class 4 but num_classes is 4"),
        (y, {"hard": hard - 1}, "negative class"),
        (y, {"hard": hard[:, 0]}, "shape"),
    ]
    for targets, kwargs, match in bad_cases:
        with pytest.raises(ValueError, match=match):
            check_targets_for("mse+gt", targets, **kwargs)
    with pytest.raises(ValueError, match="Did you mean"):
        check_targets_for("nkdd", y)
    with pytest.raises(ValueError, match="at least 2 classes"):
        check_targets_for("uskd", torch.ones(3, 1))
