"""Student losses in the recipe (StudentRecipe.loss): the loop trains with them, they are part of a run's
identity, the set's true classes reach the hard-label terms, and the `losses` study compares them."""

from __future__ import annotations

import math

import pytest
import torch
from tiny import DATA, C, tiny_preset

from softlabels.config import LabelSpec, StudentRecipe
from softlabels.data.synthetic import make_synthetic
from softlabels.engine.executors import SerialExecutor
from softlabels.engine.loop import train_student
from softlabels.lab import CellSpec, Lab
from softlabels.registry import UnknownNameError
from softlabels.sets.spec import SetSpec
from softlabels.studies import losses as losses_study
from softlabels.studies import run_study

TINY = tiny_preset((0, 1, 2))
RECIPE = StudentRecipe(model="convnet-d3", width=8, steps=6, lr=0.05, precision="fp32", compile="off")


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def data(n=12, k=C, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, 12, 12, generator=g)
    y = torch.softmax(2 * torch.randn(n, k, generator=g), 1)
    return x, y


def weights(res):
    return torch.cat([v.flatten() for v in res.state.values()])


def test_kl_at_t1_trains_the_same_student_as_soft_ce():
    # KL(q || p) = CE(q, p) - H(q): the same gradients, so the same student step by step
    x, y = data()
    a = train_student(x, y, RECIPE, seed=3, return_state=True)
    b = train_student(x, y, RECIPE.replace(loss="kl:t=1"), seed=3, return_state=True)
    c = train_student(x, y, RECIPE.replace(loss="kl:t=4"), seed=3, return_state=True)
    assert torch.allclose(weights(a), weights(b), atol=1e-5)
    assert not torch.allclose(weights(a), weights(c), atol=1e-3)


def test_hard_label_terms_read_the_true_classes_not_the_argmax():
    x, y = data()
    true = (y.argmax(1) + 1) % C  # every image's true class differs from its labels' argmax
    r = RECIPE.replace(loss="mse+gt")
    by_true = train_student(x, y, r, seed=0, hard=true, return_state=True)
    by_argmax = train_student(x, y, r, seed=0, return_state=True)
    explicit = train_student(x, y, r, seed=0, hard=y.argmax(1), return_state=True)
    assert torch.equal(weights(by_argmax), weights(explicit))
    assert not torch.allclose(weights(by_true), weights(by_argmax), atol=1e-4)
    with pytest.raises(ValueError, match="true classes"):
        train_student(x, y, r, seed=0, hard=torch.full((12,), C))


def test_the_loss_is_canonical_checked_at_once_and_part_of_the_run_key(tmp_path):
    assert StudentRecipe(loss="kl").loss == "kl:t=4.0" == StudentRecipe(loss="kl:t=4").loss
    with pytest.raises(UnknownNameError, match="nkd"):
        StudentRecipe(loss="nkdd")
    lab = Lab(tmp_path, data=DATA, dataset=make_synthetic(num_classes=C, n_train=120, n_test=40, size=12),
              progress=False)
    spec = SetSpec(ipc=1, label=LabelSpec(kind="hard"))
    keys = {
        lab.store.key(lab.run_config(CellSpec(set=spec, student=RECIPE.replace(loss=loss), seeds=(0,)), 0))
        for loss in ("soft-ce", "kl:t=4", "kl:t=2", "nkd")
    }
    assert len(keys) == 4


def test_lab_hands_the_sets_true_classes_to_the_students(tmp_path):
    seen = []

    class Recording(SerialExecutor):
        def run(self, jobs, on_result, **kw):
            seen.extend(jobs)
            return super().run(jobs, on_result, **kw)

    lab = Lab(tmp_path, data=DATA, dataset=make_synthetic(num_classes=C, n_train=120, n_test=40, size=12),
              progress=False)
    lab.workers = Recording(lab.evals)
    spec = SetSpec(ipc=2, label=LabelSpec(kind="hard"))
    lab.evaluate(spec, student=RECIPE.replace(loss="uskd"), seeds=[0])
    cset = lab.build_set(spec)
    assert len(seen) == 1 and torch.equal(seen[0].hard, cset.targets)


def test_losses_study_pairs_every_loss_with_soft_ce(tmp_path):
    lab = Lab(tmp_path, data=DATA, dataset=make_synthetic(num_classes=C, n_train=240, n_test=80, size=12),
              progress=False)
    res = run_study("losses", lab, preset=TINY, ipcs=[2], losses=["kl:t=2", "mse+gt"])
    cells = [(r["loss"], r["labels"]) for r in res.rows]
    assert cells == [("soft-ce", "soft"), ("kl:t=2.0", "soft"), ("mse+gt:alpha=1.0", "soft"),
                     ("soft-ce", "hard")]
    ref = res.rows[0]
    assert "gain" not in ref and ref["n"] == 3
    for r in res.rows[1:]:
        assert r["gain_lo"] <= r["gain"] <= r["gain_hi"]
        assert r["gain"] == pytest.approx(r["test_mean"] - ref["test_mean"], abs=1e-9)  # same seeds paired
    assert res.rows[1]["expert_epoch"] == ref["expert_epoch"] and res.rows[3]["expert_epoch"] is None
    assert res.finding.startswith("IPC 2: soft-ce reaches")
    assert (tmp_path / "studies" / "losses" / "losses.png").stat().st_size > 0
    with pytest.raises(ValueError, match="losses must be"):
        run_study("losses", lab, preset=TINY, losses=[])


def test_losses_verdict_follows_the_intervals():
    def row(loss, mean, gain=None, lo=None, hi=None, labels="soft"):
        r = {"loss": loss, "labels": labels, "test_mean": mean, "test_std": 0.01}
        if gain is not None:
            r.update(gain=gain, gain_lo=lo, gain_hi=hi)
        return r

    rows = [row("soft-ce", 0.70), row("kl:t=4.0", 0.73, 0.03, 0.01, 0.05),
            row("nkd", 0.66, -0.04, -0.06, -0.02), row("mse+gt", 0.71, 0.01, -0.02, 0.04),
            row("soft-ce", 0.60, -0.10, -0.12, -0.08, labels="hard")]
    s = losses_study.summarize(rows)
    assert (s["better"], s["worse"], s["tie"]) == (["kl:t=4.0"], ["nkd"], ["mse+gt"])
    assert s["spread"] == pytest.approx(0.07) and s["hard"] == 0.60
    v = losses_study.verdict(10, s)
    assert "kl:t=4.0 (+3.0 [+1.0, +5.0] pts) beat it" in v and "nkd (-4.0 [-6.0, -2.0] pts) fall below" in v
    assert "mse+gt (+1.0 [-2.0, +4.0] pts) are within the CI" in v and "span 7.0 pts" in v
    none = losses_study.summarize([row("soft-ce", 0.7), row("nkd", 0.7, 0.0, math.nan, math.nan)])
    assert none["tie"] == ["nkd"] and "beat it" not in losses_study.verdict(1, none)
