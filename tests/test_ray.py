"""Students as Ray tasks (``workers="ray"``) on a local Ray instance: same student as in this process,
errors and interrupts, the Lab storing and resuming, and who shuts Ray down."""

from __future__ import annotations

import dataclasses
import time

import pytest
import ray
import torch

from softlabels.config import LabelSpec
from softlabels.engine.executors import RayExecutor, SerialExecutor, StudentJob, make_executor
from softlabels.lab import Lab
from softlabels.sets.spec import SetSpec

RAY_INIT = {"num_cpus": 2, "include_dashboard": False, "log_to_driver": False, "configure_logging": False}


def test_an_executor_that_starts_ray_trains_the_same_students_and_shuts_it_down(student_jobs, tiny_student):
    assert not ray.is_initialized()
    ev, jobs = student_jobs(3)
    serial, remote, epochs = {}, {}, []
    SerialExecutor(ev).run(jobs, lambda job, res: serial.__setitem__(job.tag, res))
    ex = make_executor("ray", ev)
    assert isinstance(ex, RayExecutor)
    ex.num_cpus = 2
    try:
        ex.run(jobs, lambda job, res: remote.__setitem__(job.tag, res), on_epoch=epochs.append)
        assert ray.is_initialized()
    finally:
        ex.close()
    assert not ray.is_initialized()
    assert sorted(remote) == [0, 1, 2] and epochs == [tiny_student.epochs] * 3
    for s in range(3):  # one thread here (conftest) and in each task: the same arithmetic
        a, b = serial[s], remote[s]
        assert b.threads == 1 and a.test_acc == b.test_acc and a.train_acc == b.train_acc
        for k in a.state:
            torch.testing.assert_close(a.state[k], b.state[k], rtol=0, atol=1e-6)


@pytest.fixture(scope="module")
def local_ray():
    ray.init(**RAY_INIT)
    yield
    ray.shutdown()


def test_a_failing_task_raises_its_own_error_here(local_ray, student_jobs, tiny_student):
    ev, jobs = student_jobs(3)
    bad = StudentJob(
        images=jobs[0].images, labels=jobs[0].labels[:, :2] * 5, recipe=tiny_student, seed=0
    )  # sum 5
    ex = RayExecutor(ev)
    with pytest.raises(ValueError, match="labels"):
        ex.run([bad, *jobs[1:]], lambda job, res: None)
    ex.close()
    assert ray.is_initialized()  # joined, not started, here: left running


@pytest.mark.timeout(300)  # without the cancel it would wait hours, not fail
def test_an_interrupt_in_the_caller_cancels_the_unfinished_tasks(local_ray, student_jobs, tiny_student):
    ev, jobs = student_jobs(3)
    endless = dataclasses.replace(tiny_student, epochs=1_000_000)  # hours: only a cancel frees its CPU
    long_jobs = [dataclasses.replace(j, recipe=endless, tag=f"long{j.seed}") for j in jobs[:2]]
    ex = RayExecutor(ev)
    got = []

    def interrupt(job, res):
        got.append(job.tag)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        ex.run([jobs[2], *long_jobs], interrupt)
    assert got == [2]
    done = []
    t0 = time.perf_counter()  # on 2 CPUs, the next students run only if the long ones were cancelled
    ex.run(jobs[:2], lambda job, res: done.append(job.tag))
    assert sorted(done) == [0, 1] and time.perf_counter() - t0 < 120
    ex.close()


def test_lab_on_ray_stores_each_student_and_resumes(local_ray, tiny_lab, tiny_expert, tiny_student):
    lab = Lab(tiny_lab.out_dir, data=tiny_lab.data, dataset=tiny_lab.dataset, progress=False, workers="ray")
    traj = lab.expert(tiny_expert)
    cell = {
        "set": SetSpec(ipc=2, label=LabelSpec(expert_epoch=2)),
        "student": tiny_student,
        "experts": [traj],
    }
    with lab:
        res = lab.evaluate(seeds=[0, 1], **cell)
        assert [r["cached"] for r in res] == [False, False] and len(lab.store) == 2
        again = lab.evaluate(seeds=[0, 1, 2], **cell)  # only seed 2 trains
        assert [r["cached"] for r in again] == [True, True, False] and len(lab.store) == 3
    serial = Lab(
        tiny_lab.out_dir.parent / "serial",
        data=tiny_lab.data,
        dataset=tiny_lab.dataset,
        progress=False,
        workers=1,
    )
    here = serial.evaluate(seeds=[0, 1, 2], **{**cell, "experts": [serial.expert(tiny_expert)]})
    assert [r["metrics"]["test_acc"] for r in here] == [r["metrics"]["test_acc"] for r in again]
    assert ray.is_initialized()
