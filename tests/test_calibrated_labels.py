"""FerKD calibration, SSLD and USKD labels on hand-computed cases; USKD labels agree with the uskd loss."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from softlabels.engine.losses import loss_fn
from softlabels.labels.calibrated import ferkd_calibrate, ssld_labels, uskd_labels, zipf_nontarget
from softlabels.labels.transforms import parse_transform


def test_ferkd_replaces_unsure_rows_by_smoothed_one_hot():
    labels = torch.tensor([[0.40, 0.35, 0.25], [0.80, 0.10, 0.10], [0.90, 0.05, 0.05]])
    targets = torch.tensor([1, 0, 2])
    out = ferkd_calibrate(labels, targets, threshold=0.5, epsilon=0.3)
    # row 0: max 0.40 < 0.5 -> 0.7 * onehot(1) + 0.3 / 3; rows 1, 2 confident: kept
    torch.testing.assert_close(out, torch.tensor([[0.1, 0.8, 0.1], [0.8, 0.1, 0.1], [0.9, 0.05, 0.05]]))
    by_true = ferkd_calibrate(labels, targets, threshold=0.5, epsilon=0.3, score="true")
    # the true-class score also catches row 2 (the expert is sure of the wrong class: 0.05 on class 2)
    torch.testing.assert_close(by_true, torch.tensor([[0.1, 0.8, 0.1], [0.8, 0.1, 0.1], [0.1, 0.1, 0.8]]))
    assert torch.equal(labels[2], torch.tensor([0.90, 0.05, 0.05]))  # input untouched
    spec = parse_transform("ferkd:threshold=0.5,eps=0.3")
    torch.testing.assert_close(spec.fn(labels, targets), out)
    with pytest.raises(ValueError, match="needs targets"):
        spec.fn(labels, None)
    with pytest.raises(ValueError, match="score"):
        ferkd_calibrate(labels, targets, threshold=0.5, epsilon=0.1, score="mean")


def test_ssld_renormalises_and_retempers_without_targets():
    labels = torch.tensor([[0.2, 0.2, 0.0], [0.6, 0.2, 0.2]])
    torch.testing.assert_close(ssld_labels(labels), torch.tensor([[0.5, 0.5, 0.0], [0.6, 0.2, 0.2]]))
    # t = 0.5 squares then renormalises: 0.36, 0.04, 0.04 over 0.44
    sharp = parse_transform("ssld:t=0.5").fn(labels, None)
    torch.testing.assert_close(sharp[1], torch.tensor([0.36, 0.04, 0.04]) / 0.44)
    assert sharp[0, 2] == 0
    with pytest.raises(ValueError, match="row 0 sums to 0"):
        ssld_labels(torch.zeros(1, 3))


def test_uskd_labels_hand_computed():
    labels = torch.tensor([[0.1, 0.5, 0.3, 0.1]])
    out = uskd_labels(labels, torch.tensor([1]), target=0.6)
    # non-target ranks: class 2 (0.3) -> 1, class 0 (0.1, lower index wins the tie) -> 2, class 3 -> 3;
    # H_3 = 11/6, so z = (3/11, -, 6/11, 2/11) and the other 0.4 of the mass follows z
    expected = torch.tensor([[0.4 * 3 / 11, 0.6, 0.4 * 6 / 11, 0.4 * 2 / 11]])
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(out.sum(1), torch.ones(1))
    # hard input labels (no teacher): all non-target entries tie, ranks follow class index
    hard = uskd_labels(F.one_hot(torch.tensor([2]), 4).float(), torch.tensor([2]), target=0.5)
    torch.testing.assert_close(hard, torch.tensor([[0.5 * 6 / 11, 0.5 * 3 / 11, 0.5, 0.5 * 2 / 11]]))
    assert parse_transform("uskd").spec == "uskd:target=0.9"


def test_uskd_labels_match_the_uskd_loss_nontarget_term():
    """The loss's non-target term is -sum_j z_j log softmax over the non-targets; with labels ranked like the
    student's logits (labels = softmax(s)) the labels' non-target shape is that z."""
    g = torch.Generator().manual_seed(0)
    s = torch.randn(6, 5, generator=g)
    h = torch.randint(0, 5, (6,), generator=g)
    z = zipf_nontarget(torch.softmax(s, 1), h).float()
    tmask = F.one_hot(h, 5).bool()
    log_shat = F.log_softmax(s.masked_fill(tmask, float("-inf")), 1).masked_fill(tmask, 0.0)
    ours = -(z * log_shat).sum(1).mean()
    loss = loss_fn("uskd:alpha=0.0,beta=1.0")(s, torch.softmax(s, 1), hard=h) - F.cross_entropy(s, h)
    torch.testing.assert_close(loss, ours, rtol=1e-5, atol=1e-6)
    lab = uskd_labels(torch.softmax(s, 1), h, target=0.7)
    torch.testing.assert_close(lab.masked_fill(tmask, 0.0) / 0.3, z, rtol=1e-5, atol=1e-6)
