"""Tests for softlabels.labels.transforms: exact hand-computed values, properties and spec parsing."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from softlabels.labels.transforms import (
    LABEL_TRANSFORMS,
    hard,
    mix_hard,
    parse_transform,
    remove_class_knowledge,
    renormalize,
    retemper,
    shuffle_nontop,
    smooth,
    softmax_with_temperature,
    swap,
    topk,
)
from softlabels.registry import UnknownNameError

# Row 0 has distinct values; row 1 has a tie at the top-2 (0.25, 0.25) and a zero minimum.
L = torch.tensor([[0.1, 0.4, 0.3, 0.2], [0.25, 0.25, 0.5, 0.0]])
T = torch.tensor([1, 2])


def close(a: torch.Tensor, b: object, atol: float = 1e-6) -> None:
    torch.testing.assert_close(a, torch.as_tensor(b, dtype=a.dtype), atol=atol, rtol=0)


def H(p: torch.Tensor) -> torch.Tensor:
    p = p.double()
    return -torch.special.xlogy(p, p).sum(dim=1)


@st.composite
def stochastic(draw: st.DrawFn, *, distinct: bool = False, max_c: int = 8) -> torch.Tensor:
    """Random row-stochastic float32 matrices; small integer weights make ties and zeros frequent."""
    n = draw(st.integers(1, 6))
    c = draw(st.integers(2, max_c))
    elems = st.integers(0, 1000) if distinct else st.integers(0, 6)
    rows = draw(st.lists(st.lists(elems, min_size=c, max_size=c, unique=distinct), min_size=n, max_size=n))
    x = torch.tensor(rows, dtype=torch.float64)
    x = torch.where(x.sum(dim=1, keepdim=True) > 0, x, torch.ones_like(x))
    return (x / x.sum(dim=1, keepdim=True)).float()


FAST = settings(max_examples=60, deadline=None)


# ---------------------------------------------------------------------------------------------- exact values


def test_topk_exact():
    close(topk(L, k=1), [[0, 0.4, 0, 0], [0, 0, 0.5, 0]])
    close(topk(L, k=2), [[0, 0.4, 0.3, 0], [0.25, 0, 0.5, 0]])  # tie 0.25/0.25 -> lower index 0 kept
    close(topk(L, k=1, renormalize=True), [[0, 1, 0, 0], [0, 0, 1, 0]])
    close(topk(L, k=2, renormalize=True), [[0, 4 / 7, 3 / 7, 0], [1 / 3, 0, 2 / 3, 0]])
    close(topk(L, k=4), L)


def test_swap_exact():
    close(swap(L, i=1), [[0.4, 0.1, 0.3, 0.2], [0.25, 0.25, 0.0, 0.5]])
    # row 1: stable order is 2, 0, 1, 3 -> the 2nd largest is class 0 (tie with class 1, lower index first)
    close(swap(L, i=2), [[0.3, 0.4, 0.1, 0.2], [0.0, 0.25, 0.5, 0.25]])
    close(swap(L, i=3), [[0.2, 0.4, 0.3, 0.1], [0.25, 0.0, 0.5, 0.25]])  # i = C - 1


def test_swap_smallest_among_tied_minima_is_highest_index():
    x = torch.tensor([[0.0, 1.0, 0.0, 0.0]])
    close(swap(x, i=1), [[0.0, 0.0, 0.0, 1.0]])


def test_swap_is_not_an_involution_when_the_ith_value_is_tied():
    # the brief's condition (i-th largest != smallest) is not sufficient: ties reorder after the swap
    x = torch.tensor([[0.4, 0.3, 0.3, 0.0]])
    once = swap(x, i=2)
    close(once, [[0.4, 0.0, 0.3, 0.3]])
    assert not torch.equal(swap(once, i=2), x)


def test_tie_breaking_is_deterministic_on_wide_rows():
    # torch's default (unstable) sort reorders ties for rows this wide; ours must not
    x = torch.zeros(2, 64)
    x[:, ::3] = 1 / 22  # 22 tied maxima at columns 0, 3, ..., 63; the other 42 columns tie at 0
    kept = (topk(x, k=5) > 0).nonzero()[:, 1].view(2, 5)
    assert kept.tolist() == [[0, 3, 6, 9, 12]] * 2
    y = swap(x, i=2)  # 2nd largest = column 3, smallest = the last tied zero = column 62
    assert (y[:, 3] == 0).all() and (y[:, 62] == 1 / 22).all()
    assert torch.equal(y.ne(x).nonzero()[:, 1].view(2, 2), torch.tensor([[3, 62]] * 2))


def test_remove_class_knowledge_exact():
    targets = torch.tensor([1, 2])
    out = remove_class_knowledge(L, targets, cls=1)
    close(out[0], L[0])  # row of class 1: untouched
    close(out[1], [0.25, 0.0, 0.5, 0.0])  # other class: column 1 zeroed, not renormalised
    out_r = remove_class_knowledge(L, targets, cls=1, renormalize=True)
    close(out_r[0], L[0])
    close(out_r[1], [1 / 3, 0.0, 2 / 3, 0.0])
    # cls = 2: row 0 (class 1) loses 0.3, row 1 (class 2) untouched
    close(remove_class_knowledge(L, targets, cls=2), [[0.1, 0.4, 0.0, 0.2], [0.25, 0.25, 0.5, 0.0]])
    close(remove_class_knowledge(L, targets, cls=2, renormalize=True)[0], [1 / 7, 4 / 7, 0, 2 / 7])


def test_remove_class_knowledge_renorm_zero_row_names_row():
    x = torch.tensor([[0.5, 0.5, 0.0], [0.0, 1.0, 0.0]])
    with pytest.raises(ValueError, match="row 1"):
        remove_class_knowledge(x, torch.tensor([0, 0]), cls=1, renormalize=True)


def test_hard_smooth_mix_hard_exact():
    h = hard(torch.tensor([1, 2]), num_classes=4)
    assert h.dtype == torch.float32
    close(h, [[0, 1, 0, 0], [0, 0, 1, 0]])
    close(smooth(L, epsilon=0.2), [[0.13, 0.37, 0.29, 0.21], [0.25, 0.25, 0.45, 0.05]])
    close(mix_hard(L, T, alpha=0.5), [[0.05, 0.7, 0.15, 0.1], [0.125, 0.125, 0.75, 0.0]])
    close(mix_hard(L, T, alpha=0.0), L)
    close(mix_hard(L, T, alpha=1.0), h)
    close(smooth(L, epsilon=1.0), torch.full((2, 4), 0.25))


def test_renormalize_exact_and_zero_row():
    close(renormalize(torch.tensor([[0.2, 0.2, 0.0, 0.1], [0.0, 0.0, 0.3, 0.1]])),
          [[0.4, 0.4, 0.0, 0.2], [0.0, 0.0, 0.75, 0.25]])
    with pytest.raises(ValueError, match="row 1"):
        renormalize(torch.tensor([[0.5, 0.5], [0.0, 0.0]]))


def test_retemper_exact():
    close(retemper(L, temperature=1.0), L)
    # T = 1/2 squares then renormalises: row 0 -> [1, 16, 9, 4] / 30
    close(retemper(L, temperature=0.5), [[1 / 30, 16 / 30, 9 / 30, 4 / 30], [1 / 6, 1 / 6, 4 / 6, 0.0]])
    sharp = retemper(L, temperature=0.01)
    close(sharp, [[0, 1, 0, 0], [0, 0, 1, 0]], atol=1e-6)
    assert (H(retemper(L, temperature=0.5)) < H(L)).all()
    assert (H(retemper(L, temperature=2.0)) > H(L)).all()
    assert retemper(L, temperature=3.0)[1, 3] == 0  # zeros stay zero


def test_functions_do_not_modify_input():
    x = L.clone()
    g = torch.Generator().manual_seed(0)
    for out in [
        topk(x, k=2, renormalize=True),
        swap(x, i=1),
        remove_class_knowledge(x, T, cls=1, renormalize=True),
        mix_hard(x, T, alpha=0.3),
        smooth(x, epsilon=0.1),
        retemper(x, temperature=0.5),
        shuffle_nontop(x, generator=g),
        renormalize(x),
        topk(x, k=4),
        swap(x, i=3),
    ]:
        assert out.data_ptr() != x.data_ptr()
    assert torch.equal(x, L)


def test_validation_errors():
    with pytest.raises(ValueError, match="k must be in 1..4"):
        topk(L, k=5)
    with pytest.raises(ValueError, match="k must be >= 1"):
        topk(L, k=0)
    with pytest.raises(ValueError, match=r"i must be in 1\.\.3"):
        swap(L, i=4)
    with pytest.raises(ValueError, match="cls must be in 0..3"):
        remove_class_knowledge(L, T, cls=4)
    with pytest.raises(ValueError, match="alpha must be in"):
        mix_hard(L, T, alpha=1.5)
    with pytest.raises(ValueError, match="negative"):
        topk(-L, k=1)
    with pytest.raises(ValueError, match="2-D"):
        swap(L[0], i=1)
    with pytest.raises(ValueError, match="temperature"):
        softmax_with_temperature(L, temperature=0.0)
    with pytest.raises(ValueError, match="num_classes is 2"):
        hard(torch.tensor([0, 2]), num_classes=2)


# ---------------------------------------------------------------------------------------------- softmax


def test_softmax_with_temperature():
    z = torch.tensor([[2.0, -1.0, 0.5, 3.0], [0.0, 0.0, 1.0, -2.0]])
    out = softmax_with_temperature(z, temperature=1.0)
    assert out.dtype == torch.float32
    close(out, torch.softmax(z, dim=1))
    close(softmax_with_temperature(z + 100.0, temperature=2.0), softmax_with_temperature(z, temperature=2.0))
    for temp in (0.5, 4.0):  # the reference's --temp is an inverse temperature
        close(torch.softmax(z * temp, dim=1), softmax_with_temperature(z, temperature=1 / temp))
    hs = [H(softmax_with_temperature(z, temperature=t)) for t in (0.25, 0.5, 1.0, 2.0, 8.0)]
    for lo, hi in zip(hs[:-1], hs[1:], strict=True):
        assert (hi > lo).all()
    # no overflow for huge logits (float64 logsumexp)
    big = softmax_with_temperature(torch.tensor([[1e4, 0.0]]), temperature=1e-3)
    close(big, [[1.0, 0.0]])


# ---------------------------------------------------------------------------------------------- properties


@FAST
@given(x=stochastic(), data=st.data())
def test_swap_preserves_sums_and_entropy(x: torch.Tensor, data: st.DataObject):
    i = data.draw(st.integers(1, x.shape[1] - 1))
    y = swap(x, i=i)
    close(y.sum(dim=1), x.sum(dim=1), atol=1e-6)
    torch.testing.assert_close(H(y), H(x), atol=1e-6, rtol=0)
    assert torch.equal(torch.sort(y, dim=1).values, torch.sort(x, dim=1).values)  # values are only moved


@FAST
@given(x=stochastic(), data=st.data())
def test_swap_is_an_involution_when_ith_and_smallest_values_are_unique(x: torch.Tensor, data: st.DataObject):
    i = data.draw(st.integers(1, x.shape[1] - 1))
    s = torch.sort(x, dim=1, descending=True).values
    vi, vmin = s[:, i - 1 : i], s[:, -1:]
    ok = ((x == vi).sum(dim=1) == 1) & ((x == vmin).sum(dim=1) == 1)
    assert torch.equal(swap(swap(x, i=i), i=i)[ok], x[ok])


@FAST
@given(x=stochastic(distinct=True), data=st.data())
def test_swap_is_an_involution_on_distinct_rows(x: torch.Tensor, data: st.DataObject):
    i = data.draw(st.integers(1, x.shape[1] - 1))
    assert torch.equal(swap(swap(x, i=i), i=i), x)


@FAST
@given(x=stochastic(), data=st.data())
def test_topk_properties(x: torch.Tensor, data: st.DataObject):
    c = x.shape[1]
    k = data.draw(st.integers(1, c))
    y = topk(x, k=k)
    assert torch.equal(y.argmax(dim=1), x.argmax(dim=1))
    assert ((y > 0).sum(dim=1) <= k).all()
    assert torch.equal(y[y > 0], x[y > 0])  # kept entries keep their values
    # every dropped entry is <= every kept entry
    dropped_max = torch.where(y == 0, x, torch.zeros(())).max(dim=1).values
    kept_min = torch.where(y > 0, y, torch.full((), 2.0)).min(dim=1).values
    assert (dropped_max <= kept_min).all()
    r = topk(x, k=k, renormalize=True)
    close(r.sum(dim=1), torch.ones(x.shape[0]), atol=1e-5)
    close(renormalize(y), r)


@FAST
@given(x=stochastic())
def test_renormalize_rows_sum_to_one(x: torch.Tensor):
    sub = x * torch.linspace(0.1, 1.0, x.shape[0])[:, None]
    close(renormalize(sub).sum(dim=1), torch.ones(x.shape[0]), atol=1e-5)


@FAST
@given(x=stochastic(), seed=st.integers(0, 2**31 - 1))
def test_shuffle_nontop_properties(x: torch.Tensor, seed: int):
    y = shuffle_nontop(x, generator=torch.Generator().manual_seed(seed))
    top = x.argmax(dim=1, keepdim=True)
    assert torch.equal(y.gather(1, top), x.gather(1, top))
    assert torch.equal(torch.sort(y, dim=1).values, torch.sort(x, dim=1).values)
    assert torch.equal(y, shuffle_nontop(x, generator=torch.Generator().manual_seed(seed)))


def test_shuffle_nontop_is_uniform_over_nontop_positions():
    x = torch.tensor([[0.1, 0.6, 0.2, 0.05]]).repeat(3000, 1)
    y = shuffle_nontop(x, generator=torch.Generator().manual_seed(1))
    assert (y[:, 1] == 0.6).all()
    for pos in (0, 2, 3):
        for value in (0.1, 0.2, 0.05):
            frac = float((y[:, pos] == torch.tensor(value)).float().mean())
            assert abs(frac - 1 / 3) < 0.05, (pos, value, frac)
    a = shuffle_nontop(x, generator=torch.Generator().manual_seed(2))
    assert not torch.equal(a, y)


# ---------------------------------------------------------------------------------------------- spec strings


def test_registry_names():
    assert set(LABEL_TRANSFORMS.names()) == {
        "none",
        "topk",
        "swap",
        "remove-class",
        "hard",
        "mix-hard",
        "smooth",
        "retemper",
        "shuffle-nontop",
        "renorm",
        "ferkd",
        "ssld",
        "uskd",
    }
    assert all(LABEL_TRANSFORMS.describe().values())


@pytest.mark.parametrize(
    ("spec", "canonical"),
    [
        ("none", "none"),
        ("topk:k=3+renorm", "topk:k=3,renorm=0+renorm"),
        (" TopK : k = 2 , renorm = 1 ", "topk:k=2,renorm=1"),
        ("none+swap:i=2+none", "swap:i=2"),
        ("remove-class:cls=1", "remove-class:cls=1,renorm=0"),
        ("smooth:eps=.1+retemper:t=2", "smooth:eps=0.1+retemper:t=2.0"),
        ("mix-hard:alpha=0.25", "mix-hard:alpha=0.25"),
        ("hard+shuffle-nontop", "hard+shuffle-nontop"),
    ],
)
def test_parse_transform_canonical(spec: str, canonical: str):
    fn, canon = parse_transform(spec)
    assert canon == canonical
    assert parse_transform(canon).spec == canon  # canonical form is a fixed point


def test_parse_transform_applies_chain_in_order():
    fn, _ = parse_transform("topk:k=2+renorm")
    close(fn(L, T), topk(L, k=2, renormalize=True))
    fn2, _ = parse_transform("remove-class:cls=2,renorm=1+smooth:eps=0.2")
    close(fn2(L, T), smooth(remove_class_knowledge(L, T, cls=2, renormalize=True), epsilon=0.2))
    fn3, _ = parse_transform("swap:i=3+swap:i=3")
    close(fn3(L, None), swap(swap(L, i=3), i=3))
    close(parse_transform("hard")[0](L, T), hard(T, num_classes=4))
    close(parse_transform("mix-hard:alpha=0.5")[0](L, T), mix_hard(L, T, alpha=0.5))
    close(parse_transform("retemper:t=0.5")[0](L, None), retemper(L, temperature=0.5))
    close(parse_transform("none")[0](L, None), L)
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    close(parse_transform("shuffle-nontop")[0](L, None, generator=g1), shuffle_nontop(L, generator=g2))


def test_parse_transform_unknown_name_suggests_closest():
    with pytest.raises(UnknownNameError, match="Did you mean 'topk'") as info:
        parse_transform("renorm+topq:k=2")
    assert isinstance(info.value, ValueError)
    with pytest.raises(ValueError, match="Did you mean 'remove-class'"):
        parse_transform("remove_class:cls=1")


@pytest.mark.parametrize(
    ("spec", "pattern"),
    [
        ("topk", "needs parameter.*k"),
        ("topk:k=0", "parameter k must be an integer >= 1, got '0'"),
        ("topk:k=2.5", "parameter k must be an integer >= 1"),
        ("topk:k=2,renorm=2", "parameter renorm must be 0 or 1, got '2'"),
        ("topk:k=2,renorm=yes", "parameter renorm must be 0 or 1"),
        ("topk:k=2,k=3", "parameter 'k' is given twice"),
        ("topk:j=2", "unknown parameter 'j'.*Valid parameters: k, renorm"),
        ("renorm:k=2", "takes no parameters, got 'k'"),
        ("topk:k", "malformed parameter 'k'.*key=value"),
        ("topk:", "has ':' but no parameters"),
        ("smooth:eps=1.5", r"parameter eps must be a number in \[0, 1\]"),
        ("smooth:eps=nan", "parameter eps must be"),
        ("retemper:t=0", "parameter t must be a number > 0"),
        ("mix-hard:alpha=-0.1", "parameter alpha must be"),
        ("remove-class:cls=-1", "parameter cls must be an integer >= 0"),
        ("swap:i=0", "parameter i must be an integer >= 1"),
        ("", "empty transform spec"),
        ("topk:k=1+", "empty step"),
    ],
)
def test_parse_transform_bad_params(spec: str, pattern: str):
    with pytest.raises(ValueError, match=pattern):
        parse_transform(spec)


def test_parsed_transform_runtime_errors():
    with pytest.raises(ValueError, match="needs targets"):
        parse_transform("remove-class:cls=1")[0](L, None)
    with pytest.raises(ValueError, match=r"i must be in 1\.\.3"):
        parse_transform("swap:i=4")[0](L, None)
    with pytest.raises(TypeError):
        parse_transform(3)  # type: ignore[arg-type]


def test_retemper_matches_softmax_of_log():
    t = 1.7
    close(retemper(L[:1], temperature=t), softmax_with_temperature(torch.log(L[:1]), temperature=t))
    assert math.isclose(float(retemper(L, temperature=t).sum(dim=1)[0]), 1.0, abs_tol=1e-6)
