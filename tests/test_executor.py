"""Parallel students: the worker policy, the thread plan, and that a worker trains the same student."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch

from softlabels.config import LabelSpec
from softlabels.engine.executors import (
    PARALLEL_MAX_BATCH,
    PARALLEL_MIN_STEPS,
    ProcessExecutor,
    SerialExecutor,
    StudentJob,
    make_executor,
    resolve_workers,
)
from softlabels.sets.spec import SetSpec


def test_auto_workers_only_for_enough_small_batch_work_on_cpu():
    big = PARALLEL_MIN_STEPS
    assert resolve_workers("auto", "cpu", n_jobs=5, batch=10, steps=big, cores=2) == 2
    assert resolve_workers("auto", "cpu", n_jobs=5, batch=10, steps=big, cores=16) == 5
    assert resolve_workers("auto", "cpu", n_jobs=5, batch=PARALLEL_MAX_BATCH + 1, steps=big, cores=2) == 1
    assert resolve_workers("auto", "cpu", n_jobs=5, batch=10, steps=big - 1, cores=2) == 1
    assert resolve_workers("auto", "cpu", n_jobs=1, batch=10, steps=big, cores=2) == 1
    assert resolve_workers("auto", "cpu", n_jobs=5, batch=10, steps=big, cores=1) == 1
    assert resolve_workers("auto", "cuda", n_jobs=5, batch=10, steps=big, cores=8) == 1
    assert resolve_workers(3, "cpu", n_jobs=1, batch=1000, steps=0) == 3
    with pytest.raises(ValueError, match="workers must be 'auto' or a positive int"):
        resolve_workers("many", "cpu", n_jobs=2, batch=10, steps=big)
    with pytest.raises(ValueError, match="workers"):
        resolve_workers(0, "cpu", n_jobs=2, batch=10, steps=big)
    with pytest.raises(ValueError, match="CPU only"):
        make_executor(2, None, device="meta")


def test_a_worker_trains_the_same_student_as_this_process(student_jobs):
    ev, jobs = student_jobs(2)
    serial, parallel = {}, {}
    SerialExecutor(ev).run(jobs, lambda job, res: serial.__setitem__(job.tag, res))
    ex = ProcessExecutor(ev, workers=2, cores=2)  # one thread per worker, as this process (conftest)
    try:
        ex.run(jobs, lambda job, res: parallel.__setitem__(job.tag, res))
    finally:
        ex.close()
    assert sorted(parallel) == [0, 1]
    for s in (0, 1):
        a, b = serial[s], parallel[s]
        assert b.threads == 1 and a.test_acc == b.test_acc and a.train_acc == b.train_acc
        for k in a.state:
            torch.testing.assert_close(a.state[k], b.state[k], rtol=0, atol=1e-6)
    assert serial[0].state["classifier.weight"].ne(serial[1].state["classifier.weight"]).any()


def test_a_failing_job_raises_in_the_caller(student_jobs, tiny_student):
    ev, jobs = student_jobs(2)
    bad = StudentJob(
        images=jobs[0].images, labels=jobs[0].labels[:, :2] * 5, recipe=tiny_student, seed=0
    )  # sum 5
    ex = ProcessExecutor(ev, workers=2, cores=2)
    try:
        with pytest.raises(ValueError):
            ex.run([bad, jobs[1]], lambda job, res: None)
    finally:
        ex.close()


def test_lab_with_workers_stores_each_student_and_resumes(tiny_lab, tiny_expert, tiny_student):
    from softlabels.lab import Lab

    lab = Lab(tiny_lab.out_dir, data=tiny_lab.data, dataset=tiny_lab.dataset, progress=False, workers=2)
    traj = lab.expert(tiny_expert)
    cell = {
        "set": SetSpec(ipc=2, label=LabelSpec(expert_epoch=2)),
        "student": tiny_student,
        "experts": [traj],
    }
    try:
        res = lab.evaluate(seeds=[0, 1, 2], **cell)
        assert [r["cached"] for r in res] == [False] * 3 and len(lab.store) == 3
        assert {r["metrics"]["threads"] for r in res} <= {1, 2}
        again = lab.evaluate(seeds=[0, 1, 2, 3], **cell)  # only seed 3 trains
        assert [r["cached"] for r in again] == [True, True, True, False]
        assert [r["metrics"]["test_acc"] for r in again[:3]] == [r["metrics"]["test_acc"] for r in res]
    finally:
        lab.close()


@pytest.mark.slow
def test_workers_do_not_rerun_a_script_without_a_main_guard(tmp_path):
    marker = tmp_path / "runs.txt"
    script = tmp_path / "noguard.py"
    script.write_text(textwrap.dedent(f"""
        from softlabels import DataSpec, Lab, LabelSpec, SetSpec, StudentRecipe
        from softlabels.data.synthetic import make_synthetic

        with open({str(marker)!r}, "a") as f:
            f.write("run\\n")
        ds = make_synthetic(num_classes=4, n_train=240, n_test=80, size=12, seed=0)
        st = StudentRecipe(model="convnet-d3", width=8, epochs=2, precision="fp32", compile="off",
                           batch_size=16)
        with Lab({str(tmp_path / "out")!r}, data=DataSpec(name="synthetic", val_fraction=0.2), dataset=ds,
                 progress=False, workers=2) as lab:
            hard = SetSpec(ipc=2, label=LabelSpec(kind="hard", codec="hard"))
            res = lab.evaluate(hard, student=st, seeds=[0, 1])
        print("ok", len(res))
    """))
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "ok 2" in out.stdout
    assert marker.read_text().count("run") == 1


def test_an_interrupt_stops_the_workers_and_a_later_run_starts_fresh_ones(student_jobs):
    ev, jobs = student_jobs(4)
    ex = ProcessExecutor(ev, workers=2, cores=2)
    got = []

    def interrupt(job, res):
        got.append(job.tag)
        raise KeyboardInterrupt

    try:
        with pytest.raises(KeyboardInterrupt):
            ex.run(jobs, interrupt)
        assert len(got) == 1 and ex._pool is None  # the other students were stopped, not awaited
        done = []
        ex.run(jobs[:2], lambda job, res: done.append(job.tag))
        assert sorted(done) == [0, 1]
    finally:
        ex.close()


def test_lab_decides_workers_from_all_seeds_of_its_cells(tiny_lab, tiny_expert, tiny_student, monkeypatch):
    """Like the compile choice: a resumed cell (some seeds stored) must train on the same thread counts."""
    import softlabels.lab as lab_mod
    from softlabels.engine.runtime import planned_steps

    seen = []
    real = lab_mod.resolve_workers
    monkeypatch.setattr(lab_mod, "resolve_workers", lambda *a, **k: (seen.append(k), real(*a, **k))[1])
    traj = tiny_lab.expert(tiny_expert)
    cell = {
        "set": SetSpec(ipc=2, label=LabelSpec(expert_epoch=2)),
        "student": tiny_student,
        "experts": [traj],
    }
    tiny_lab.evaluate(seeds=[0], **cell)
    tiny_lab.evaluate(seeds=[0, 1], **cell)  # seed 0 is stored: one student left, the decision weighs two
    assert seen[-1] == {"n_jobs": 2, "batch": 8, "steps": planned_steps(tiny_student, 8, 2)}


def test_lab_rejects_bad_worker_settings_at_construction(tmp_path):
    from softlabels.lab import Lab

    with pytest.raises(ValueError, match="workers must be 'auto', 'ray' or a positive int"):
        Lab(tmp_path, workers="lots")
    with pytest.raises(ValueError, match="workers"):
        Lab(tmp_path, workers=0)
    assert Lab(tmp_path, workers=2).workers == 2
