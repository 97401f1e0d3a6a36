"""Committees of experts: logit / probability averaging, votes, prior weights and the agreement diagnostic."""

from __future__ import annotations

import math

import pytest
import torch

from softlabels.config import LabelSpec
from softlabels.labels.generate import committee_agreement, committee_labels, committee_weights, expert_logits
from softlabels.sets.spec import SetSpec

Z1 = torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
Z2 = torch.tensor([[0.0, 2.0, 0.0], [0.0, 3.0, 0.0]])


def test_modes_hand_computed():
    logits = committee_labels([Z1, Z2], mode="logits")
    torch.testing.assert_close(logits, torch.softmax((Z1 + Z2) / 2, 1))
    probs = committee_labels([Z1, Z2], mode="probs")
    torch.testing.assert_close(probs, (torch.softmax(Z1, 1) + torch.softmax(Z2, 1)) / 2)
    hot = committee_labels([Z1, Z2, Z2], mode="vote")  # row 0 votes 0, 1, 1; row 1 votes 1, 1, 1
    torch.testing.assert_close(hot, torch.tensor([[1 / 3, 2 / 3, 0.0], [0.0, 1.0, 0.0]]))
    weighted = committee_labels([Z1, Z2], mode="vote:weights=prior", weights=torch.tensor([0.25, 0.75]))
    torch.testing.assert_close(weighted, torch.tensor([[0.25, 0.75, 0.0], [0.0, 1.0, 0.0]]))
    t2 = committee_labels([Z1, Z2], mode="probs", temperature=2.0)
    torch.testing.assert_close(t2, (torch.softmax(Z1 / 2, 1) + torch.softmax(Z2 / 2, 1)) / 2)
    with pytest.raises(ValueError, match="summing to 1"):
        committee_labels([Z1, Z2], mode="probs", weights=torch.tensor([0.5, 0.6]))
    with pytest.raises(ValueError, match="equal weights"):
        committee_labels([Z1, Z2], mode="logits", weights=torch.tensor([0.5, 0.5]))


class _FakeTrajectory:
    def __init__(self, key, val):
        self.key, self._val = key, val

    def history(self):
        return [{"epoch": 0, "val_acc": 0.1}, {"epoch": 3, "val_acc": self._val}]


def test_prior_weights_are_cvdd_softmax_of_percent_accuracy_over_5():
    w = committee_weights([_FakeTrajectory("a", 0.80), _FakeTrajectory("b", 0.85)], 3, "prior")
    e = math.exp(1.0)  # (85 - 80) / 5
    torch.testing.assert_close(w, torch.tensor([1 / (1 + e), e / (1 + e)], dtype=torch.float64))
    assert committee_weights([_FakeTrajectory("a", 0.8)], 3, "equal") is None
    with pytest.raises(ValueError, match="validation accuracy at epoch 2"):
        committee_weights([_FakeTrajectory("a", 0.8)], 2, "prior")


def test_agreement_pairwise_and_fleiss_kappa_hand_computed():
    # votes per image (3 members): (0,0,0), (0,0,1), (1,1,1), (1,0,1)
    def z(votes):
        return torch.nn.functional.one_hot(torch.tensor(votes), 2).float()

    members = [z([0, 0, 1, 1]), z([0, 0, 1, 0]), z([0, 1, 1, 1])]
    out = committee_agreement(members, targets=torch.tensor([0, 0, 1, 1]))
    # share of agreeing pairs per image: 1, 1/3, 1, 1/3 -> mean 2/3 (= Fleiss' P-bar)
    assert out["pairwise_agreement"] == pytest.approx(2 / 3)
    # class 0 gets 3 + 2 + 0 + 1 = 6 of the 12 votes: P_e = 2 * (1/2)^2 = 1/2, kappa = (2/3 - 1/2) / (1/2)
    assert out["fleiss_kappa"] == pytest.approx(1 / 3)
    assert out["member_accuracy"] == [1.0, 0.75, 0.75]
    single = committee_agreement(members[:1])
    assert math.isnan(single["pairwise_agreement"]) and single["members"] == 1


def test_label_spec_mode_is_canonical_and_old_keys_are_unchanged():
    assert "ensemble_mode" not in LabelSpec(kind="soft", expert_epoch=1).to_dict()
    spec = LabelSpec(kind="soft", expert_epoch=1, ensemble=2, ensemble_mode="vote")
    assert spec.ensemble_mode == "vote:weights=equal"
    assert spec.to_dict()["ensemble_mode"] == spec.ensemble_mode
    assert LabelSpec.from_dict(spec.to_dict()) == spec
    with pytest.raises(ValueError, match="Did you mean 'probs'"):
        LabelSpec(ensemble_mode="prob")


def test_committee_sets_record_agreement_and_keys_differ(tiny_lab, tiny_expert):
    experts = tiny_lab.experts(tiny_expert, 2)
    sets = {}
    for mode in ("logits", "probs", "vote"):
        spec = SetSpec(ipc=5, label=LabelSpec(kind="soft", expert_epoch=2, ensemble=2, ensemble_mode=mode))
        sets[mode] = (spec, tiny_lab.build_set(spec, experts=experts))
    logits_set = sets["logits"][1]
    x = tiny_lab.prepared.tensors("train")[0]
    pos = torch.tensor([tiny_lab.prepared.train_idx.tolist().index(i)
                        for i in logits_set.manifest["source_indices"]])
    mean = expert_logits(experts, 2, x[pos])  # the reference code's ensemble, unchanged
    torch.testing.assert_close(logits_set.labels, torch.softmax(mean, 1))
    votes = sets["vote"][1].labels
    assert set(votes.unique().tolist()) <= {0.0, 0.5, 1.0}
    c = sets["vote"][1].manifest["committee"]
    assert c["members"] == 2 and c["images"] == len(votes) and c["experts"] == [e.key for e in experts]
    # two members agree on an image exactly when its vote label has a 1
    assert c["pairwise_agreement"] == pytest.approx(float((votes.max(1).values == 1).double().mean()))
    keys = {str(spec.identity(experts)) for spec, _ in sets.values()}
    assert len(keys) == 3
    single = tiny_lab.build_set(SetSpec(ipc=5, label=LabelSpec(kind="soft", expert_epoch=2)), experts=experts)
    assert "committee" not in single.manifest
