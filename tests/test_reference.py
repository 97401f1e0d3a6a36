"""The reference loop of the benchmarks (benchmarks/reference.py): seeded, and usable as a lab's executor."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from reference import ReferenceExecutor, train_reference  # noqa: E402

from softlabels.config import LabelSpec, StudentRecipe  # noqa: E402
from softlabels.engine.evaluation import EvalSets  # noqa: E402
from softlabels.sets.spec import SetSpec  # noqa: E402


def test_reference_loop_trains_and_is_seeded(tiny_ds):
    x = tiny_ds.normalize(tiny_ds.train_images[:40])
    y = F.one_hot(tiny_ds.train_targets[:40], 4).float()
    ev = EvalSets(tiny_ds.normalize(tiny_ds.test_images), tiny_ds.test_targets,
                  tiny_ds.normalize(tiny_ds.train_images[200:]), tiny_ds.train_targets[200:])
    rec = StudentRecipe(model="convnet-d3", width=8, epochs=4, batch_size=16)
    state = torch.random.get_rng_state()
    a = train_reference(x, y, rec, seed=1, evals=ev)
    assert torch.equal(state, torch.random.get_rng_state())  # the global RNG is left untouched
    b = train_reference(x, y, rec, seed=1, evals=ev)
    assert a.test_acc == b.test_acc and 0 <= a.test_acc <= 1 and a.val_acc is not None
    with pytest.raises(ValueError, match="reference"):
        train_reference(x, y, rec.replace(optimizer="adamw"), seed=1, evals=ev)


def test_reference_executor_trains_a_labs_students(tiny_lab, tiny_student):
    tiny_lab.workers = ReferenceExecutor(tiny_lab.evals)
    res = tiny_lab.evaluate(SetSpec(ipc=2, label=LabelSpec(kind="hard", codec="hard")), student=tiny_student,
                            seeds=[0, 1])
    assert [r["cached"] for r in res] == [False, False] and len(tiny_lab.store) == 2
    assert all(0 <= r["metrics"]["test_acc"] <= 1 for r in res)
