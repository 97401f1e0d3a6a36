import dataclasses
import math

import pytest

import softlabels.engine.executors as executor_mod
from softlabels.config import LabelSpec
from softlabels.main_job import run_baseline, write_baseline_report
from softlabels.presets import Preset
from softlabels.sets.spec import SetSpec


def _preset(tiny_data_spec, tiny_expert, tiny_student):
    return Preset(name="tiny", data=tiny_data_spec, expert=tiny_expert, student=tiny_student, ipcs=(1, 3),
                  seeds=(0, 1), sweep_epochs=(1, 3), sweep_length=4)


def test_evaluate_stores_and_resumes(tiny_lab, tiny_expert, tiny_student, monkeypatch):
    traj = tiny_lab.expert(tiny_expert)
    calls = []
    real = executor_mod.train_student

    def counting(*a, **k):
        calls.append(k["seed"])
        if len(calls) == 2:
            raise KeyboardInterrupt  # interrupted after one stored student
        return real(*a, **k)

    monkeypatch.setattr(executor_mod, "train_student", counting)
    label = LabelSpec(expert_epoch=2)
    with pytest.raises(KeyboardInterrupt):
        tiny_lab.evaluate(SetSpec(ipc=2, label=label), student=tiny_student, seeds=[0, 1, 2], experts=[traj])
    assert len(tiny_lab.store) == 1
    calls.clear()
    monkeypatch.setattr(
        executor_mod, "train_student", lambda *a, **k: (calls.append(k["seed"]), real(*a, **k))[1]
    )
    res = tiny_lab.evaluate(
        SetSpec(ipc=2, label=label), student=tiny_student, seeds=[0, 1, 2], experts=[traj]
    )
    assert calls == [1, 2]  # seed 0 was stored before the interruption
    assert [r["cached"] for r in res] == [True, False, False]
    assert all(0 <= r["metrics"]["test_acc"] <= 1 for r in res)
    calls.clear()
    again = tiny_lab.evaluate(
        SetSpec(ipc=2, label=label), student=tiny_student, seeds=[0, 1, 2], experts=[traj]
    )
    assert calls == [] and [r["metrics"]["test_acc"] for r in again] == [
        r["metrics"]["test_acc"] for r in res
    ]
    rec = tiny_lab.store.query(study="baseline")[0]
    assert rec.nbytes == res[0]["nbytes"] > 0 and rec.codec == "raw|fp32"
    assert rec.config["expert_key"] == traj.key and rec.config["protocol"] == "clean"


def test_different_settings_are_different_runs(tiny_lab, tiny_expert, tiny_student):
    traj = tiny_lab.expert(tiny_expert)
    a = tiny_lab.evaluate(SetSpec(ipc=1, label=LabelSpec(expert_epoch=1)), student=tiny_student, seeds=[0],
                          experts=[traj])
    b = tiny_lab.evaluate(SetSpec(ipc=1, label=LabelSpec(expert_epoch=2)), student=tiny_student, seeds=[0],
                          experts=[traj])
    c = tiny_lab.evaluate(SetSpec(ipc=1, label=LabelSpec(kind="hard", codec="hard")), student=tiny_student,
                          seeds=[0])
    keys = {r[0]["config"]["expert_epoch"] for r in (a, b)}
    assert keys == {1, 2} and not c[0]["cached"] and len(tiny_lab.store) == 3


def test_baseline_job_end_to_end_and_report(tiny_lab, tiny_data_spec, tiny_expert, tiny_student, tmp_path):
    preset = _preset(tiny_data_spec, tiny_expert, tiny_student)
    res = run_baseline(tiny_lab, preset)
    assert [(r.ipc, r.label) for r in res.rows] == [(1, "hard"), (1, "soft"), (3, "hard"), (3, "soft")]
    assert set(res.chosen) == {1, 3} and all(e in (1, 3) for e in res.chosen.values())
    # the chosen epoch maximises validation accuracy of the sweep
    for ipc, accs in res.sweep.items():
        assert accs[res.chosen[ipc]] == max(accs.values())
    assert all(r.seeds == 2 and 0 <= r.mean <= 1 for r in res.rows)
    md, png = write_baseline_report(res, tiny_lab.out_dir, dataset="synthetic")
    text = md.read_text()
    assert "Protocol: **clean**" in text and "| 3 | soft |" in text and png.stat().st_size > 1000
    n = len(tiny_lab.store)
    res2 = run_baseline(tiny_lab, preset)  # warm: everything reused
    assert len(tiny_lab.store) == n and [r.mean for r in res2.rows] == [r.mean for r in res.rows]


def test_baseline_draws_per_seed_pairs_hard_and_soft_on_each_draw(tiny_lab, tiny_data_spec, tiny_expert,
                                                                   tiny_student):
    from softlabels.main_job import image_draws

    preset = _preset(tiny_data_spec, tiny_expert, tiny_student)
    assert image_draws(preset, (0, 1)) == [(0, (0, 1))]
    per_seed = dataclasses.replace(preset, draw_per_seed=True)
    assert image_draws(per_seed, (0, 1)) == [(0, (0,)), (1, (1,))]
    res = run_baseline(tiny_lab, per_seed)
    assert res.image_seeds == (0, 1) and all(r.seeds == 2 for r in res.rows)
    assert "own random draw (image seeds 0, 1)" in (tiny_lab.out_dir / "report.md").read_text()
    runs = [r.config for r in tiny_lab.store.query(study="baseline")]
    # each (IPC, labels) row: seed s on draw s; hard and soft on the same draws
    assert sorted((c["ipc"], c["label"]["kind"], c["seed"], c["image_seed"]) for c in runs) == sorted(
        (ipc, kind, s, s) for ipc in (1, 3) for kind in ("hard", "soft") for s in (0, 1))
    shared = run_baseline(tiny_lab, preset)  # one draw for both seeds
    assert shared.image_seeds == (0,)
    assert "one random draw (image seed 0)" in (tiny_lab.out_dir / "report.md").read_text()
    assert [r.accs[0] for r in shared.rows] == [r.accs[0] for r in res.rows]  # seed 0 is on draw 0 both ways
    assert len(tiny_lab.store.query(study="baseline")) == len(runs) + 4  # only seed 1 on draw 0 is new


def test_baseline_decides_workers_over_its_whole_sweep_and_grid(
    tiny_lab, tiny_data_spec, tiny_expert, tiny_student, monkeypatch
):
    import softlabels.lab as lab_mod

    seen = []
    real = lab_mod.resolve_workers
    monkeypatch.setattr(
        lab_mod, "resolve_workers", lambda *a, **k: (seen.append(k["n_jobs"]), real(*a, **k))[1]
    )
    preset = _preset(tiny_data_spec, tiny_expert, tiny_student)
    res = run_baseline(tiny_lab, preset)
    n_candidates = len(next(iter(res.sweep.values())))
    # one decision for the sweep (IPCs x candidate epochs, one seed each), one for 2 IPCs x 2 labels x 2 seeds
    assert seen == [len(preset.ipcs) * n_candidates, len(preset.ipcs) * 2 * 2]


def test_preset_student_length_policy(tiny_data_spec, tiny_expert, tiny_student):
    """One policy for every caller: exact at the anchors, linear in log(IPC) between them, flat beyond."""
    base = _preset(tiny_data_spec, tiny_expert, tiny_student)
    assert base.student_for(3).epochs == tiny_student.epochs  # no anchors: the student's own length
    p = dataclasses.replace(base, student_length_by_ipc={1: 300, 10: 150, 50: 50})
    assert [p.student_for(i).epochs for i in (1, 10, 50)] == [300, 150, 50]
    assert p.student_for(2).epochs == round(300 - 150 * math.log(2) / math.log(10))  # 255
    assert p.student_for(20).epochs == round(150 - 100 * math.log(2) / math.log(5))  # 107
    assert p.student_for(100).epochs == 50 and p.student_for(1).epochs == 300
    assert p.sweep_student_for(10).epochs == min(150, base.sweep_length)
    # batch sizes per IPC: a step function, shared by the sweep's students
    b = dataclasses.replace(base, student_batch_by_ipc={1: 25, 50: 50})
    assert [b.student_for(i).batch_size for i in (1, 10, 49, 50, 100)] == [25, 25, 25, 50, 50]
    assert b.sweep_student_for(50).batch_size == 50
    assert base.student_for(50).batch_size == tiny_student.batch_size
    with pytest.raises(ValueError, match="student batch size"):
        dataclasses.replace(base, student_batch_by_ipc={10: 0})


def test_the_sweep_skips_chance_level_experts_and_warns(tiny_lab, tiny_data_spec, tiny_expert, tiny_student):
    from softlabels.main_job import choose_expert_epochs, near_chance, sweep_candidates

    assert near_chance(0.26, 4) and not near_chance(0.5, 4) and near_chance(float("nan"), 4)
    learner = tiny_expert.replace(lr=0.05, momentum=0.9)
    preset = _preset(tiny_data_spec, learner, tiny_student)
    expert = tiny_lab.expert(learner)
    frozen = tiny_lab.expert(tiny_expert.replace(lr=1e-9, seed=3))  # learns nothing: chance at every epoch
    candidates, notes = sweep_candidates(preset, frozen)
    assert candidates == [frozen.epochs_done] and "near chance at every candidate epoch" in notes[0]
    choice = choose_expert_epochs(tiny_lab, preset, frozen, ipcs=[1])
    assert any("near chance" in w for w in choice.warnings) and choice.chosen == {1: frozen.epochs_done}
    assert any("near-uniform labels" in w for w in choice.warnings)
    assert not near_chance(expert.history()[-1]["val_acc"], 4)  # the fixture's recipe learns the task
    good, notes = sweep_candidates(preset, expert)
    assert good and not notes and all(not near_chance(expert.history()[e]["val_acc"], 4) for e in good)


def test_sweep_students_are_judged_on_validation_only(tiny_lab, tiny_data_spec, tiny_expert, tiny_student):
    from softlabels.main_job import choose_expert_epochs

    preset = _preset(tiny_data_spec, tiny_expert, tiny_student)
    choose_expert_epochs(tiny_lab, preset, tiny_lab.expert(tiny_expert), ipcs=[1])
    runs = tiny_lab.store.query(study="baseline-sweep")
    assert runs and all(r.metrics["val_acc"] is not None and r.metrics["per_class"] == [] for r in runs)
    assert all(r.config["eval_parts"] == ["val"] for r in runs)
