"""softlabels.sets.scores: each score and selection on a tiny case with a known answer."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from softlabels.sets.scores import (
    aum,
    by_score_rank,
    ccs_select,
    el2n,
    forgetting_events,
    grand,
    herding,
    k_center_greedy,
    per_class,
)


# ------------------------------------------------------------------------------------------------ EL2N
def test_el2n_hand_example():
    probs = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.0, 0.0, 1.0]])
    y = torch.tensor([0, 2, 2])
    # row 0: (-0.3, 0.2, 0.1); row 1: (0.1, 0.8, -0.9); row 2: exact hit
    expect = torch.tensor([math.sqrt(0.09 + 0.04 + 0.01), math.sqrt(0.01 + 0.64 + 0.81), 0.0],
                          dtype=torch.float64)
    out = el2n(probs, y)
    assert out.dtype == torch.float64 and out.shape == (3,)
    torch.testing.assert_close(out, expect, atol=1e-6, rtol=0)


def test_el2n_averages_per_model_scores():
    a = torch.tensor([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    b = torch.tensor([[0.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    y = torch.tensor([0, 0])
    out = el2n(torch.stack([a, b]), y)
    # sample 0: both models score sqrt(2); the score of the mean probs would be sqrt(1.5)
    torch.testing.assert_close(out, torch.tensor([math.sqrt(2), math.sqrt(2) / 2], dtype=torch.float64))
    torch.testing.assert_close(out, (el2n(a, y) + el2n(b, y)) / 2)


@pytest.mark.parametrize("probs, y, exc", [
    (torch.full((2, 3), 1 / 3), torch.tensor([0, 1, 2]), ValueError),      # length mismatch
    (torch.full((3,), 1 / 3), torch.tensor([0]), ValueError),              # wrong ndim
    (torch.tensor([[0.5, 0.6, 0.0]]), torch.tensor([0]), ValueError),      # not a distribution
    (torch.tensor([[float("nan"), 0.5, 0.5]]), torch.tensor([0]), ValueError),
    (torch.full((1, 3), 1 / 3), torch.tensor([3]), ValueError),            # class out of range
    (torch.ones(1, 3, dtype=torch.long), torch.tensor([0]), TypeError),
])
def test_el2n_validates(probs, y, exc):
    with pytest.raises(exc):
        el2n(probs, y)


# ------------------------------------------------------------------------------------------------ GraNd
def _tiny_model(seed=0):
    torch.manual_seed(seed)
    m = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.ReLU(), nn.Flatten(), nn.Linear(8, 3))
    with torch.no_grad():  # non-trivial running stats, so eval mode (not batch stats) matters
        m[1].running_mean.copy_(torch.tensor([0.3, -0.2]))
        m[1].running_var.copy_(torch.tensor([2.0, 0.5]))
    return m


def _loop_grand(model, x, y, names=None):
    model.eval()
    ps = [p for n, p in model.named_parameters() if names is None or n in names]
    out = []
    for i in range(x.shape[0]):
        gs = torch.autograd.grad(F.cross_entropy(model(x[i:i + 1]), y[i:i + 1]), ps)
        out.append(torch.sqrt(sum(g.double().pow(2).sum() for g in gs)))
    model.train()
    return torch.stack(out)


def _data():
    g = torch.Generator().manual_seed(1)
    return torch.randn(5, 1, 4, 4, generator=g), torch.tensor([0, 1, 2, 1, 0])


def test_grand_matches_per_sample_loop_and_leaves_model_alone():
    model, (x, y) = _tiny_model(), _data()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    out = grand(model, x, y, batch_size=2)  # 3 chunks
    assert out.shape == (5,) and out.dtype == torch.float64
    assert model.training and all(m.training for m in model.modules())  # mode restored
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k  # parameters and running stats untouched
    assert all(p.grad is None for p in model.parameters())
    torch.testing.assert_close(out, _loop_grand(model, x, y), atol=1e-5, rtol=1e-5)


def test_grand_param_subset_and_model_list():
    m0, m1, (x, y) = _tiny_model(0), _tiny_model(1), _data()
    head = ["4.weight", "4.bias"]
    sub = grand(m0, x, y, params=head)
    torch.testing.assert_close(sub, _loop_grand(m0, x, y, names=head), atol=1e-5, rtol=1e-5)
    assert (sub <= grand(m0, x, y) + 1e-6).all()  # a subset of the gradient is no longer than all of it
    both = grand([m0, m1], x, y)
    ref = (_loop_grand(m0, x, y) + _loop_grand(m1, x, y)) / 2
    torch.testing.assert_close(both, ref, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="not parameters"):
        grand(m0, x, y, params=["fc.weight"])
    with pytest.raises(ValueError):
        grand(m0, x, y[:4])


# ------------------------------------------------------------------------------------------------ forgetting
def test_forgetting_events():
    correct = torch.tensor([
        [1, 1, 0, 0, 0],
        [0, 1, 0, 1, 0],
        [1, 1, 0, 1, 1],
        [0, 1, 0, 0, 1],
    ], dtype=torch.bool)  # T=4 epochs x 5 samples
    out = forgetting_events(correct)
    assert out.dtype == torch.int64
    # c-i-c-i: 2 events; always correct: 0; never learned: T; learned late then forgotten: 1; learned late: 0
    assert out.tolist() == [2, 0, 4, 1, 0]
    assert int(out.max()) == 4 == correct.shape[0]
    with pytest.raises(TypeError, match="bool"):
        forgetting_events(correct.long())
    with pytest.raises(ValueError):
        forgetting_events(correct[0])


# ------------------------------------------------------------------------------------------------ AUM
def test_aum():
    logits = torch.tensor([
        [[3.0, 1.0, 0.0], [2.0, 0.0, 1.0], [1.0, 0.0, 0.0]],
        [[5.0, 3.0, -1.0], [0.0, -1.0, 4.0], [0.0, 2.0, 0.0]],
        [[2.0, 0.0, 0.0], [1.0, 0.5, 0.0], [0.0, 3.0, 1.0]],
    ])  # (T=3, N=3, K=3)
    y = torch.tensor([0, 1, 1])
    out = aum(logits, y)
    assert out.dtype == torch.float64
    # sample 0 wins by 2 every epoch; sample 1 is always wrong (-2, -5, -0.5); sample 2 learned: -1, 2, 2
    torch.testing.assert_close(out, torch.tensor([2.0, -2.5, 1.0], dtype=torch.float64))
    assert int(out.argmin()) == 1
    with pytest.raises(ValueError):
        aum(logits[0], y)
    with pytest.raises(ValueError, match="2 classes"):
        aum(logits[..., :1], torch.zeros(3, dtype=torch.long))


# ------------------------------------------------------------------------------------------------ CCS
def _two_classes(n=100, seed=0):
    """Classes 0 and 1, n images each at shuffled positions, scores 0..n-1 within each class."""
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(2 * n, generator=g)
    targets = torch.arange(2 * n)[perm] // n
    scores = (torch.arange(2 * n)[perm] % n).double()
    return scores, targets


def test_ccs_drops_hardest_and_returns_ipc_per_class():
    scores, targets = _two_classes(20)
    # cut=0.25 drops scores 15..19 of each class; ipc=15 must then take exactly the rest
    idx = ccs_select(scores, targets, ipc=15, num_classes=2, cut=0.25, strata=4)
    assert targets[idx].tolist() == [0] * 15 + [1] * 15
    assert sorted(scores[idx[:15]].tolist()) == list(range(15)) == sorted(scores[idx[15:]].tolist())
    for seed in range(5):
        idx = ccs_select(scores, targets, ipc=5, num_classes=2, cut=0.25, strata=4, seed=seed)
        assert idx.unique().numel() == 10 and (scores[idx] < 15).all()
        easy = ccs_select(scores, targets, ipc=5, num_classes=2, cut=0.25, strata=4, seed=seed,
                          hardest_is_high=False)  # low = hard: drops scores 0..4
        assert (scores[easy] >= 5).all()
    with pytest.raises(ValueError, match="after dropping"):
        ccs_select(scores, targets, ipc=16, num_classes=2, cut=0.25)


def test_ccs_covers_strata():
    scores, targets = _two_classes(100)
    # cut 0.1 keeps scores 0..89; 9 equal-width strata hold 10 each, so ipc=9 takes one from every stratum
    idx = ccs_select(scores, targets, ipc=9, num_classes=2, cut=0.1, strata=9, seed=3)
    assert targets[idx].tolist() == [0] * 9 + [1] * 9
    for c in range(2):
        assert sorted((scores[idx[9 * c:9 * (c + 1)]] // 10).long().tolist()) == list(range(9))


def test_ccs_allocation_redistributes_small_bins():
    # strata over [0, 3]: bin 0 holds 1 image, bins 1 and 2 hold 10 each; ipc=6 -> 1 + 2 + 3
    s = torch.tensor([0.0] + [1.0 + k / 16 for k in range(10)] + [2.0 + k / 10 for k in range(1, 11)])
    t = torch.zeros(21, dtype=torch.long)
    idx = ccs_select(s, t, ipc=6, num_classes=1, cut=0.0, strata=3, seed=0)
    per_bin = torch.bincount(s[idx].floor().long().clamp(max=2), minlength=3).tolist()
    assert per_bin[0] == 1 and sorted(per_bin) == [1, 2, 3]


def test_ccs_deterministic_per_seed():
    scores, targets = _two_classes(100)
    a = ccs_select(scores, targets, ipc=10, num_classes=2, seed=7)
    assert torch.equal(a, ccs_select(scores, targets, ipc=10, num_classes=2, seed=7))
    assert not torch.equal(a, ccs_select(scores, targets, ipc=10, num_classes=2, seed=8))
    bad = scores.clone()
    bad[0] = float("inf")
    with pytest.raises(ValueError, match="NaN or infinite"):
        ccs_select(bad, targets, ipc=10, num_classes=2)


# -------------------------------------------------------------------------------------- herding / k-centre
def test_herding_first_pair_matches_mean():
    mu = torch.tensor([1.0, 2.0])
    offsets = torch.tensor([[0.0, 3.0], [1.0, 0.0], [2.0, 2.0], [4.0, -1.0]])
    pts = torch.cat([mu + offsets, mu - offsets])[torch.tensor([6, 0, 2, 4, 1, 7, 3, 5])]
    # the only pair at distance 1 from the mean is mu +- (1, 0): rows 4 and 7 after the shuffle
    assert pts[4].tolist() == [2.0, 2.0] and pts[7].tolist() == [0.0, 2.0]
    idx = herding(pts, 2)
    assert idx.tolist() == [4, 7]  # tie between the two at distance 1: the lower index first
    assert torch.equal(pts[idx].mean(0), mu)
    full = herding(pts, 8)
    assert sorted(full.tolist()) == list(range(8))  # no repeats
    with pytest.raises(ValueError, match="larger than"):
        herding(pts, 9)


def test_k_center_picks_extremes_on_a_line():
    line = torch.tensor([[5.0], [0.0], [4.9], [10.0], [5.1]])
    for seed in range(6):
        idx = k_center_greedy(line, 3, seed=seed)
        assert {1, 3} <= set(idx.tolist()) and idx.unique().numel() == 3
        assert torch.equal(idx, k_center_greedy(line, 3, seed=seed))
    dup = torch.zeros(4, 2)  # all rows equal: still no repeats
    assert sorted(k_center_greedy(dup, 4).tolist()) == [0, 1, 2, 3]


def test_per_class_layout():
    targets = torch.tensor([1, 0, 1, 0, 1, 0, 1])
    feats = torch.tensor([[10.0], [0.0], [12.0], [1.0], [20.0], [2.0], [0.0]])
    idx = per_class(herding, feats, targets, ipc=2, num_classes=2)
    assert targets[idx].tolist() == [0, 0, 1, 1]
    # class 0 (rows 1, 3, 5; mean 1): picks row 3 (=1), then 1 or 5 (tie -> the lower position, row 1)
    # class 1 (rows 0, 2, 4, 6; mean 10.5): picks row 0 (10), then row 2 (12): (10 + 12) / 2 is closest
    assert idx.tolist() == [3, 1, 0, 2]
    kc = per_class(k_center_greedy, feats, targets, ipc=2, num_classes=2, seed=1)
    assert targets[kc].tolist() == [0, 0, 1, 1]
    with pytest.raises(ValueError, match="too large"):
        per_class(herding, feats, targets, ipc=4, num_classes=2)
    with pytest.raises(ValueError, match="distinct"):
        per_class(lambda f, m: torch.zeros(m, dtype=torch.long), feats, targets, ipc=2, num_classes=2)


# ------------------------------------------------------------------------------------------- by_score_rank
def test_by_score_rank_order_ties_layout():
    targets = torch.tensor([0, 1, 0, 1, 0, 1, 0])
    scores = torch.tensor([3.0, 1.0, 1.0, 1.0, 2.0, 0.0, 1.0])
    # class 0 rows 0, 2, 4, 6 score 3, 1, 2, 1; class 1 rows 1, 3, 5 score 1, 1, 0
    assert by_score_rank(scores, targets, ipc=2, num_classes=2).tolist() == [2, 6, 5, 1]
    assert by_score_rank(scores, targets, ipc=2, num_classes=2, order="highest").tolist() == [0, 4, 1, 3]
    assert by_score_rank(scores, targets, ipc=3, num_classes=2).tolist() == [2, 6, 4, 5, 1, 3]
    with pytest.raises(ValueError, match="class 1 has only 3"):
        by_score_rank(scores, targets, ipc=4, num_classes=2)
    with pytest.raises(ValueError, match="order"):
        by_score_rank(scores, targets, ipc=1, num_classes=2, order="low")
    with pytest.raises(ValueError, match="entries"):
        by_score_rank(scores[:6], targets, ipc=1, num_classes=2)
    with pytest.raises(TypeError):
        by_score_rank(scores, targets, ipc=1.5, num_classes=2)
