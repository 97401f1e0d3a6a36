"""Stacked students: the same seed gives the same student as one trained alone.

Tolerance (CPU, fp32, eager): after the steps below every weight is within 1e-5 (absolute) of the
one-at-a-time student's (with AdamW, except the convolution biases that instance norm cancels), logits on
the test images within 1e-4, and accuracies equal. The stacked DSA is
exact (bit for bit): it draws what ``dsa`` draws and applies each family to the concatenated batches.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from softlabels.augment import DSA_FAMILIES, dsa
from softlabels.config import LabelSpec, StudentRecipe
from softlabels.engine.batched import (
    MAX_AUTO_STACK,
    STACK_PIXEL_BUDGET,
    BatchedExecutor,
    resolve_stack,
    stackable,
    stacked_dsa,
    train_stacked,
)
from softlabels.engine.evaluation import EvalSets, logits_of
from softlabels.engine.executors import SerialExecutor, StudentJob
from softlabels.engine.loop import train_student
from softlabels.models import init_model
from softlabels.sets.spec import SetSpec

WEIGHT_ATOL, LOGIT_ATOL = 1e-5, 1e-4


def _data(n, k=4, c=3, size=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, c, size, size, generator=g), F.softmax(2 * torch.randn(n, k, generator=g), 1)


def _evals(c=3, size=12):
    g = torch.Generator().manual_seed(99)
    return EvalSets(torch.randn(40, c, size, size, generator=g), torch.randint(0, 4, (40,), generator=g),
                    torch.randn(20, c, size, size, generator=g), torch.randint(0, 4, (20,), generator=g))


def _cancelled(name: str) -> bool:
    """A ConvNet convolution's bias: the instance norm after it cancels it, so its gradient is zero up to
    rounding, which AdamW normalises into steps of size lr (rounding noise, no effect on any output)."""
    return name.startswith("features.") and name.endswith(".bias") and int(name.split(".")[1]) % 4 == 0


def _same_student(alone, stacked, evals, recipe, c=3, size=12):
    assert alone.seed == stacked.seed and alone.epochs == stacked.epochs
    for k in alone.state:
        if not (recipe.optimizer == "adamw" and _cancelled(k)):
            torch.testing.assert_close(stacked.state[k], alone.state[k], rtol=0, atol=WEIGHT_ATOL)

    def logits(res):
        net = init_model(recipe.model, recipe.width, seed=0, in_channels=c, num_classes=4,
                         image_size=(size, size))
        net.load_state_dict(res.state)
        return logits_of(net, evals.test_x)

    torch.testing.assert_close(logits(stacked), logits(alone), rtol=0, atol=LOGIT_ATOL)
    assert (stacked.test_acc, stacked.val_acc, stacked.train_acc) == (alone.test_acc, alone.val_acc,
                                                                       alone.train_acc)
    assert [a for _, a in stacked.curve] == [a for _, a in alone.curve]


def test_stacked_dsa_draws_and_applies_what_dsa_does_per_student():
    x = torch.randn(4, 5, 3, 10, 10, generator=torch.Generator().manual_seed(1))
    seen = set()
    for trial in range(12):
        gens = [torch.Generator().manual_seed(100 * trial + s) for s in range(4)]
        alone = [torch.Generator().manual_seed(100 * trial + s) for s in range(4)]
        out = stacked_dsa(x, gens)
        for s in range(4):
            fam = DSA_FAMILIES[int(torch.randint(0, 6, (1,), generator=torch.Generator().manual_seed(
                100 * trial + s)))]
            seen.add(fam)
            assert torch.equal(out[s], dsa(x[s], generator=alone[s])), (trial, s, fam)
            assert torch.equal(gens[s].get_state(), alone[s].get_state())  # the same numbers consumed
    assert seen == set(DSA_FAMILIES)  # every family was exercised


def test_a_stacked_student_equals_the_same_seed_alone_sgd_with_shuffling():
    x, y = _data(24)  # 24 images, batch 10: three steps per epoch on a fresh permutation each epoch
    ev = _evals()
    recipe = StudentRecipe(model="convnet-d3", width=8, epochs=8, batch_size=10, precision="fp32",
                           compile="off")
    seeds = [3, 0, 7]
    stacked = train_stacked([x] * 3, [y] * 3, recipe, seeds=seeds, evals=ev, return_state=True)
    for s, res in zip(seeds, stacked, strict=True):
        _same_student(train_student(x, y, recipe, seed=s, evals=ev, return_state=True), res, ev, recipe)
    assert stacked[0].state["classifier.weight"].ne(stacked[1].state["classifier.weight"]).any()


def test_stacked_students_on_different_sets_adamw_ema_smoothing_paper_protocol():
    sets = [_data(8, seed=s) for s in range(3)]  # one set per student, all of one shape
    ev = _evals()
    recipe = StudentRecipe(model="convnet-d3", width=8, epochs=20, optimizer="adamw", lr=0.003, ema=0.9,
                           label_smoothing=0.1, eval_every=5, tta="flip", precision="fp32", compile="off")
    stacked = train_stacked([s[0] for s in sets], [s[1] for s in sets], recipe, seeds=[0, 1, 2], evals=ev,
                            protocol="paper", return_state=True)
    for (x, y), res, s in zip(sets, stacked, [0, 1, 2], strict=True):
        alone = train_student(x, y, recipe, seed=s, evals=ev, protocol="paper", return_state=True)
        assert len(alone.curve) == 4 and alone.paper_acc == res.paper_acc
        _same_student(alone, res, ev, recipe)


def test_stack_policy_and_validation():
    assert resolve_stack("auto", "cpu", batch=10, pixels=1024) == 1  # the CPU default is unchanged
    assert resolve_stack("auto", "cuda", batch=10, pixels=1024) == MAX_AUTO_STACK
    assert resolve_stack("auto", "cuda", batch=256, pixels=1024) == STACK_PIXEL_BUDGET // (256 * 1024)
    assert resolve_stack("auto", "cuda", batch=256, pixels=224 * 224) == 1
    assert resolve_stack(5, "cpu", batch=256, pixels=224 * 224) == 5
    assert resolve_stack("off", "cuda", batch=1, pixels=1) == 1
    with pytest.raises(ValueError, match="batch_students must be 'auto', 'off' or a positive int"):
        resolve_stack("on", "cpu", batch=1, pixels=1)
    with pytest.raises(ValueError, match="batch_students must be >= 1"):
        resolve_stack(0, "cpu", batch=1, pixels=1)
    kw = dict(in_channels=1, num_classes=4, image_size=(12, 12))
    assert stackable(init_model("convnet-d3", 8, seed=0, **kw))
    assert not stackable(init_model("convnet-d3-bn", 8, seed=0, **kw))
    x, y = _data(8)
    with pytest.raises(ValueError, match="one shape"):
        train_stacked([x, x[:4]], [y, y[:4]], StudentRecipe(width=8, epochs=1), seeds=[0, 1])
    with pytest.raises(ValueError, match="batch norm"):
        train_stacked([x, x], [y, y], StudentRecipe(model="convnet-d3-bn", width=8, epochs=1), seeds=[0, 1])


def test_executor_stacks_compatible_jobs_and_trains_the_rest_alone():
    x, y = _data(8)
    ev = _evals()
    r1 = StudentRecipe(model="convnet-d3", width=8, epochs=3, precision="fp32", compile="off")
    r2 = r1.replace(lr=0.02)
    bn = StudentRecipe(model="convnet-d3-bn", width=8, epochs=3, precision="fp32", compile="off")
    jobs = [StudentJob(images=x, labels=y, recipe=r, seed=s, return_state=True, tag=(name, s))
            for name, r in (("a", r1), ("b", r2), ("bn", bn)) for s in range(3)]
    got, alone, epochs = {}, {}, []
    ex = BatchedExecutor(ev, setting=2)
    assert [ex.stack_size(j) for j in (jobs[0], jobs[-1])] == [2, 1]  # batch norm trains alone
    kl = StudentJob(images=x, labels=y, recipe=r1.replace(loss="kl:t=4"), seed=0, hard=y.argmax(1))
    assert ex.stack_size(kl) == 1  # the stacked step is soft cross-entropy only: other losses train alone
    ex.run(jobs, lambda job, res: got.__setitem__(job.tag, res), on_epoch=epochs.append)
    SerialExecutor(ev).run(jobs, lambda job, res: alone.__setitem__(job.tag, res))
    assert sorted(got) == sorted(alone) and sum(epochs) == 3 * len(jobs)
    for tag, res in got.items():
        if tag[0] == "bn":  # trained alone by the serial path: identical
            assert res.test_acc == alone[tag].test_acc
            assert all(torch.equal(res.state[k], alone[tag].state[k]) for k in res.state)
        else:
            _same_student(alone[tag], res, ev, r1 if tag[0] == "a" else r2, c=3)


def test_lab_stacks_students_under_the_same_keys(tmp_path, tiny_ds, tiny_data_spec, tiny_expert,
                                                 tiny_student):
    from softlabels.lab import Lab

    spec = SetSpec(ipc=2, label=LabelSpec(expert_epoch=2))
    rows = {}
    for mode in ("off", 3):
        lab = Lab(tmp_path / str(mode), data=tiny_data_spec, dataset=tiny_ds, progress=False,
                  batch_students=mode)
        traj = lab.expert(tiny_expert)
        rows[mode] = lab.evaluate(spec, student=tiny_student, seeds=[0, 1, 2, 3], experts=[traj])
        again = lab.evaluate(spec, student=tiny_student, seeds=[0, 1, 2, 3], experts=[traj])
        assert all(r["cached"] for r in again)
        lab.close()
    for a, b in zip(rows["off"], rows[3], strict=True):
        assert a["config"] == b["config"]  # the stacking is not part of the key
        assert abs(a["metrics"]["test_acc"] - b["metrics"]["test_acc"]) <= 1 / 80 + 1e-9
    assert repr(Lab(tmp_path, batch_students=4)).endswith("batch_students=4)")
    with pytest.raises(ValueError, match="choose one"):
        Lab(tmp_path, workers=2, batch_students=4)
    with pytest.raises(ValueError, match="batch_students must be"):
        Lab(tmp_path, batch_students="yes")


def test_a_failing_compiled_step_falls_back_to_the_same_eager_step(monkeypatch):
    x, y = _data(8)
    recipe = StudentRecipe(model="convnet-d3", width=8, epochs=3, precision="fp32", compile="off")

    def broken(fn, **kw):
        def run(*a, **k):
            raise RuntimeError("no compiler here")
        return run

    monkeypatch.setattr(torch, "compile", broken)
    graphs: dict = {}
    with pytest.warns(RuntimeWarning, match="compiled stacked step failed"):
        fell = train_stacked([x] * 2, [y] * 2, recipe, seeds=[0, 1], compile_model=True, graphs=graphs,
                             return_state=True)
    eager = train_stacked([x] * 2, [y] * 2, recipe, seeds=[0, 1], return_state=True)
    for a, b in zip(fell, eager, strict=True):
        assert all(torch.equal(a.state[k], b.state[k]) for k in a.state)
    again = train_stacked([x] * 2, [y] * 2, recipe, seeds=[0, 1], compile_model=True, graphs=graphs)
    assert len(again) == 2  # the failed graph is remembered: no second warning, no second try
