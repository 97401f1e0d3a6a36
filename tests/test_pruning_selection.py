"""Pruning selections wired to the expert's stored pool scores, on a hand-made expert with known answers;
the score store (manifest, hash, reuse, corruption); the label-query budget."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from softlabels.config import LabelSpec
from softlabels.data.prepared import prepare_data
from softlabels.io import read_json
from softlabels.sets.score_store import ScoreSpec, pool_logits, pool_scores, score_dir, score_key
from softlabels.sets.scores import aum, forgetting_events, k_center_greedy
from softlabels.sets.selection import by_keep, selection
from softlabels.sets.spec import SetSpec

T = 4  # checkpoints after the initial weights


class LookupNet(nn.Module):
    """Returns the hand-made logits / features of the pool image equal to each input."""

    def __init__(self, pool_x, logits, feats):
        super().__init__()
        self.pool, self.logits, self.feats = pool_x.flatten(1), logits, feats
        self.w = nn.Parameter(torch.zeros(()))

    def _index(self, x):
        return torch.cdist(x.flatten(1).double(), self.pool.double()).argmin(1)

    def embed(self, x):
        return self.feats[self._index(x)] + 0 * self.w

    def forward(self, x):
        return self.logits[self._index(x)] + 0 * self.w


@dataclass
class FakeExpert:
    path: Path
    key: str
    pool_x: torch.Tensor
    logits: list  # per epoch 0..T: (N, K)
    feats: torch.Tensor
    manifest: dict = field(default_factory=dict)
    calls: int = 0

    @property
    def epochs_done(self) -> int:
        return len(self.logits) - 1

    def model(self, epoch, *, device="cpu"):
        self.calls += 1
        return LookupNet(self.pool_x, self.logits[epoch], self.feats).eval()


@pytest.fixture
def world(tmp_path, tiny_ds, tiny_data_spec):
    """A pool of 4 classes x 48 images and an expert whose every output is chosen by hand:

    per class, one image never learned (wrong at every checkpoint), one forgotten twice (right, wrong,
    right, wrong), one learned with a huge margin (the easiest); the rest learned with moderate margins.
    Features: one image per class at its class mean, one far outlier per class.
    """
    prep = prepare_data(tiny_data_spec, dataset=tiny_ds)
    y = prep.train_targets
    n, k = y.numel(), 4
    g = torch.Generator().manual_seed(0)
    margin = 1.0 + torch.rand(n, generator=g)
    roles = {}
    for c in range(k):
        idx = torch.nonzero(y == c).flatten()
        roles[c] = {"never": int(idx[3]), "flip": int(idx[7]), "easiest": int(idx[11]),
                    "central": int(idx[5]), "outlier": int(idx[9])}
    logits = [torch.zeros(n, k)]
    for e in range(1, T + 1):
        z = F.one_hot(y, k).float() * margin[:, None]
        for c in range(k):
            r = roles[c]
            wrong = (c + 1) % k
            z[r["never"]] = 0
            z[r["never"], wrong] = 2.0
            if e % 2 == 0:  # forgotten at epochs 2 and 4
                z[r["flip"]] = 0
                z[r["flip"], wrong] = 1.5
            z[r["easiest"], c] = 50.0
        logits.append(z)
    feats = torch.randn(n, 6, generator=g)
    for c in range(k):
        idx = torch.nonzero(y == c).flatten()
        r = roles[c]
        others = idx[idx != r["central"]]
        feats[r["outlier"]] = 100.0
        feats[r["central"]] = feats[others].mean(0)  # then it is the mean of the whole class exactly
    x, _ = prep.tensors("train")
    ex = FakeExpert(tmp_path / "experts" / "fake", "fake-key", x, logits, feats,
                    manifest={"split_key": prep.split_key()})
    return prep, ex, roles


def _pick(prep, ex, spec, ipc, seed=0):
    sel, _ = selection(spec)
    return sel.select(prep, ipc=ipc, seed=seed, experts=[ex], device="cpu", cache=None)


def test_scores_from_store_match_hand_answers(world):
    prep, ex, roles = world
    y = prep.train_targets
    stack = torch.stack([pool_logits(prep, ex, e) for e in range(1, T + 1)])
    fe = forgetting_events(stack.argmax(2) == y)
    au = aum(stack, y)
    for c, r in roles.items():
        assert fe[r["never"]] == T and fe[r["flip"]] == 2  # never learned: more than any learned image
        assert au[r["never"]] == -2.0 and au[r["never"]] == au[y == c].min()
        assert au[r["easiest"]] == au[y == c].max()


@pytest.mark.parametrize("spec, ipc, role", [
    ("forgetting:epoch=4,keep=hard", 1, "never"),
    ("aum:epoch=4,keep=hard", 1, "never"),
    ("aum:epoch=4,keep=easy", 1, "easiest"),
    ("el2n:epoch=4,keep=hard", 1, "never"),
    ("el2n:epoch=4,keep=easy", 1, "easiest"),
    ("herding:epoch=4", 1, "central"),
])
def test_selection_picks_the_known_image(world, spec, ipc, role):
    prep, ex, roles = world
    pos = _pick(prep, ex, spec, ipc)
    assert pos.tolist() == [roles[c][role] for c in range(4)]  # class by class


def test_forgetting_hard_two_and_kcenter_outlier(world):
    prep, ex, roles = world
    pos = _pick(prep, ex, "forgetting:epoch=4,keep=hard", 2).view(4, 2)
    for c in range(4):
        assert set(pos[c].tolist()) == {roles[c]["never"], roles[c]["flip"]}
    for seed in range(3):  # whatever the seeded start, the far outlier is one of two centres
        pos = _pick(prep, ex, "kcenter:epoch=4", 2, seed=seed).view(4, 2)
        assert all(roles[c]["outlier"] in pos[c].tolist() for c in range(4))


def test_ccs_cut_drops_the_hardest(world):
    prep, ex, roles = world
    # 48 images per class, cut 0.03 drops floor(1.44) = 1 image: the never-learned one (lowest AUM)
    pos = _pick(prep, ex, "ccs:score=aum,epoch=4,cut=0.03,strata=5", 47)
    y = prep.train_targets
    for c in range(4):
        expect = set(torch.nonzero(y == c).flatten().tolist()) - {roles[c]["never"]}
        assert set(pos[c * 47:(c + 1) * 47].tolist()) == expect


def test_by_keep_ranks_and_breaks_ties_at_random():
    s = torch.tensor([5.0, 1.0, 3.0, 2.0, 4.0, 9.0, 7.0, 8.0])
    y = torch.tensor([0, 0, 0, 0, 0, 1, 1, 1])
    assert by_keep(s, y, ipc=2, num_classes=2, keep="hard").tolist() == [0, 4, 5, 7]
    assert by_keep(s, y, ipc=2, num_classes=2, keep="easy").tolist() == [1, 3, 6, 7]
    assert by_keep(s, y, ipc=1, num_classes=2, keep="middle").tolist() == [2, 7]
    assert by_keep(s, y, ipc=2, num_classes=2, keep="hard", hard_is_high=False).tolist() == [1, 3, 6, 7]
    ties = torch.zeros(40)
    draws = {tuple(by_keep(ties, torch.zeros(40, dtype=torch.long), ipc=3, num_classes=1, keep="easy",
                           seed=s).tolist()) for s in range(5)}
    assert len(draws) > 1  # not the first indices every time
    with pytest.raises(ValueError, match="class 1 has only 3"):
        by_keep(s, y, ipc=4, num_classes=2, keep="hard")


def test_selection_specs_check_their_parameters():
    assert selection("el2n:epoch=3")[1] == "el2n:epoch=3,keep=hard"
    assert selection("ccs:epoch=5")[1] == "ccs:score=aum,epoch=5,cut=0.1,strata=50"
    with pytest.raises(ValueError, match="epoch must be an integer >= 2"):
        selection("forgetting:epoch=1")
    with pytest.raises(ValueError, match="keep must be one of"):
        selection("aum:epoch=3,keep=hardest")
    with pytest.raises(ValueError, match="needs parameter"):
        selection("herding")


# ------------------------------------------------------------------------------------------ score store
def test_score_store_writes_a_manifest_and_reuses_it(world):
    from softlabels.experts import file_sha256

    prep, ex, _ = world
    first = pool_logits(prep, ex, 2)
    key = score_key(ScoreSpec(kind="logits", epoch=2), ex, prep)
    folder = score_dir(ex) / key
    assert folder.parent == ex.path.parent.parent / "scores"
    man = read_json(folder / "manifest.json")
    assert man["expert"] == "fake-key" and man["spec"] == {"kind": "logits", "epoch": 2, "params": "all"}
    assert man["sha256"] == file_sha256(folder / "scores.safetensors") and man["shape"] == list(first.shape)
    calls = ex.calls
    again = pool_logits(prep, ex, 2)
    assert ex.calls == calls and torch.equal(first, again)  # read back, the expert not asked again
    assert key != score_key(ScoreSpec(kind="logits", epoch=3), ex, prep)
    fspec = ScoreSpec(kind="features", epoch=2)
    feats = pool_scores(prep, ex, fspec)
    assert feats.dtype == torch.float16 and torch.equal(feats, pool_scores(prep, ex, fspec))


def test_score_store_recomputes_a_corrupt_file(world):
    prep, ex, _ = world
    first = pool_logits(prep, ex, 1)
    path = score_dir(ex) / score_key(ScoreSpec(kind="logits", epoch=1), ex, prep) / "scores.safetensors"
    path.write_bytes(path.read_bytes()[:-8] + b"12345678")
    with pytest.warns(RuntimeWarning, match="computing them again"):
        again = pool_logits(prep, ex, 1)
    assert torch.equal(first, again)


def test_score_store_refuses_another_pool_and_bad_specs(world):
    prep, ex, _ = world
    ex.manifest["split_key"] = "other"
    with pytest.raises(ValueError, match="other data"):
        pool_logits(prep, ex, 1)
    with pytest.raises(ValueError, match="params applies to grand"):
        ScoreSpec(kind="logits", epoch=1, params="head")


def test_grand_store_matches_the_function(tiny_lab, tiny_expert):
    from softlabels.sets.score_store import pool_grand
    from softlabels.sets.scores import grand

    ex = tiny_lab.expert(tiny_expert)
    x, y = tiny_lab.prepared.tensors("train")
    stored = pool_grand(tiny_lab.prepared, ex, 2, params="head")
    head = [n for n, _ in ex.model(2).named_parameters() if n.startswith("classifier.")]
    torch.testing.assert_close(stored, grand(ex.model(2), x, y, params=head))
    pos = selection("grand:epoch=2,params=head,keep=hard")[0].select(
        tiny_lab.prepared, ipc=2, seed=0, experts=[ex], device="cpu", cache=None)
    for c in range(4):  # the two largest gradient norms of each class
        idx = torch.nonzero(y == c).flatten()
        assert set(pos[2 * c:2 * c + 2].tolist()) == set(idx[stored[idx].topk(2).indices].tolist())


# ------------------------------------------------------------------------------------------ query budget
def _proxy_world(world):
    """Proxy checkpoint 1 grows more confident with the pool position: position 0 is uniform."""
    prep, ex, roles = world
    y = prep.train_targets
    n = y.numel()
    ex.logits[1] = F.one_hot(y, 4).float() * (5.0 * torch.arange(n) / n)[:, None]
    return prep, ex


def test_uncertainty_budget_queries_the_least_sure_images(world):
    prep, ex = _proxy_world(world)
    spec = SetSpec(ipc=3, label=LabelSpec(kind="soft", expert_epoch=4), image_seed=1,
                   queries="uncertainty:q=4,proxy=1")
    cset = spec.build(prep, experts=[ex])
    pos = torch.tensor([int((prep.train_idx == s).nonzero()) for s in cset.manifest["source_indices"]])
    q = cset.manifest["queries"]
    assert q["expert_queries"] == 4 and q["proxy_queries"] == 12
    assert sorted(q["queried"]) == sorted(torch.argsort(pos)[:4].tolist())  # the 4 lowest pool positions
    soft = torch.softmax(ex.logits[4][pos], 1)
    for i in range(12):
        want = soft[i] if i in q["queried"] else F.one_hot(prep.train_targets[pos[i]], 4).float()
        torch.testing.assert_close(cset.labels[i], want)


def test_random_and_diversity_budgets_count_no_proxy_queries(world):
    prep, ex = _proxy_world(world)
    label = LabelSpec(kind="soft", expert_epoch=4)
    r = SetSpec(ipc=3, label=label, queries="random:q=5").build(prep, experts=[ex])
    assert r.manifest["queries"]["expert_queries"] == 5 and r.manifest["queries"]["proxy_queries"] == 0
    assert int((r.labels.max(1).values < 1).sum()) == 5  # five soft rows, seven one-hot rows
    d = SetSpec(ipc=3, label=label, queries="diversity:q=3").build(prep, experts=[ex])
    x = prep.to_input(d.images)
    assert sorted(d.manifest["queries"]["queried"]) == sorted(
        k_center_greedy(x.flatten(1).double(), 3, seed=0).tolist())
    dropped = SetSpec(ipc=3, label=label, queries="random:q=5,rest=none").build(prep, experts=[ex])
    assert len(dropped) == 5 and bool((dropped.labels.max(1).values < 1).all())


def test_query_budget_is_part_of_identity_and_checked():
    label = LabelSpec(kind="soft", expert_epoch=4)
    assert "queries" not in SetSpec(ipc=2, label=label).identity()
    spec = SetSpec(ipc=2, label=label, queries="uncertainty:q=3")
    assert spec.queries == "uncertainty:q=3,proxy=1,measure=entropy,rest=hard"
    assert spec.identity()["queries"] == spec.queries
    assert SetSpec(ipc=2, label=label, queries="random:q=3").identity() != spec.identity()
    with pytest.raises(ValueError, match="soft LabelSpec"):
        SetSpec(ipc=2, label=LabelSpec(kind="hard"), queries="random:q=3")
    with pytest.raises(ValueError, match="earlier checkpoint"):
        SetSpec(ipc=2, label=label, queries="uncertainty:q=3,proxy=4")
    with pytest.raises(ValueError, match="unknown label query budget"):
        SetSpec(ipc=2, label=label, queries="entropy:q=3")


def test_query_budget_larger_than_the_set_fails(world):
    prep, ex, _ = world
    with pytest.raises(ValueError, match="exceeds the set's 8 images"):
        SetSpec(ipc=2, label=LabelSpec(kind="soft", expert_epoch=4), queries="random:q=9").build(
            prep, experts=[ex])
