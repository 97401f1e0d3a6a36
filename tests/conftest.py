"""Shared fixtures: a tiny synthetic dataset and tiny recipes so every test runs in seconds on CPU."""

from __future__ import annotations

import pytest
import torch

from softlabels.config import DataSpec, ExpertRecipe, StudentRecipe
from softlabels.data.synthetic import make_synthetic

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_ds():
    return make_synthetic(num_classes=4, n_train=240, n_test=80, size=12, seed=0)


@pytest.fixture
def tiny_data_spec():
    return DataSpec(name="synthetic", val_fraction=0.2)


@pytest.fixture
def tiny_expert():
    return ExpertRecipe(
        model="convnet-d3", width=8, epochs=3, train_images=160, batch_size=32, precision="fp32"
    )


@pytest.fixture
def tiny_student():
    return StudentRecipe(
        model="convnet-d3", width=8, epochs=6, precision="fp32", compile="off", batch_size=16
    )


@pytest.fixture
def tiny_lab(tmp_path, tiny_ds, tiny_data_spec):
    from softlabels.lab import Lab

    return Lab(tmp_path / "out", data=tiny_data_spec, dataset=tiny_ds, progress=False)


@pytest.fixture
def student_jobs(tiny_ds, tiny_student):
    """``student_jobs(n)``: evaluation sets and ``n`` StudentJobs (seeds 0..n-1, tagged by seed) on 24 images
    with fixed soft labels, for the executor tests."""
    import torch.nn.functional as F

    from softlabels.engine.evaluation import EvalSets
    from softlabels.engine.executors import StudentJob

    def make(n):
        x = tiny_ds.normalize(tiny_ds.train_images[:24])
        y = F.softmax(torch.randn(24, 4, generator=torch.Generator().manual_seed(0)), 1)
        ev = EvalSets(tiny_ds.normalize(tiny_ds.test_images), tiny_ds.test_targets)
        return ev, [StudentJob(images=x, labels=y, recipe=tiny_student, seed=s, return_state=True, tag=s)
                    for s in range(n)]

    return make
