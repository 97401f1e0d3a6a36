"""Faults: a process killed (SIGKILL) at many points of expert training or of a study sweep, and processes
working in one output folder at once. After each kill a resume must end bit-identical to an uninterrupted
run, and nothing committed may be computed again."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from softlabels.config import ExpertRecipe
from softlabels.data.prepared import prepare_data
from softlabels.experts import Trajectory, train_expert

pytestmark = pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs POSIX signals")

SETUP = """
import os, signal, sys, json
import torch
torch.set_num_threads(1)
from softlabels.config import DataSpec, ExpertRecipe, LabelSpec, StudentRecipe
from softlabels.data.synthetic import make_synthetic
ds = make_synthetic(num_classes=4, n_train=240, n_test=80, size=12, seed=0)
data = DataSpec(name="synthetic", val_fraction=0.2)
recipe = ExpertRecipe(model="convnet-d3", width=8, steps=12, checkpoints=(2, 4, 6, 8, 10), batch_size=32,
                      momentum=0.9, precision="fp32")
student = StudentRecipe(model="convnet-d3", width=8, epochs=3, precision="fp32", compile="off", batch_size=16)
COUNT = sys.argv[2] if len(sys.argv) > 2 else None

def kill_on_call(module, name, n):
    # SIGKILL this process at the n-th call of module.name (before the call runs)
    real, calls = getattr(module, name), [0]
    def wrapper(*a, **k):
        calls[0] += 1
        if calls[0] == n:
            os.kill(os.getpid(), signal.SIGKILL)
        return real(*a, **k)
    setattr(module, name, wrapper)

def count_calls(module, name):
    # append one line per call to the COUNT file (the work a process did)
    real = getattr(module, name)
    def wrapper(*a, **k):
        with open(COUNT, "a") as f:
            f.write("x\\n")
        return real(*a, **k)
    setattr(module, name, wrapper)
"""


def _run(
    tmp_path: Path, body: str, *args: str, check_killed: bool | None = None
) -> subprocess.CompletedProcess:
    script = tmp_path / f"job_{abs(hash(body)) % 10**8}.py"
    script.write_text(SETUP + textwrap.dedent(body))
    out = subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True, timeout=600)
    if check_killed is True:
        assert out.returncode == -signal.SIGKILL, out.stderr[-3000:]
    elif check_killed is False:
        assert out.returncode == 0, out.stderr[-3000:]
    return out


EXPERT = """
from softlabels.data.prepared import prepare_data
import softlabels.experts as ex
prepared = prepare_data(data, dataset=ds)
root = sys.argv[1]
{patch}
ex.train_expert(prepared, recipe, root=root)
"""


def _recipe() -> ExpertRecipe:
    return ExpertRecipe(model="convnet-d3", width=8, steps=12, checkpoints=(2, 4, 6, 8, 10), batch_size=32,
                        momentum=0.9, precision="fp32")


def _same_trajectory(a: Trajectory, b: Trajectory) -> None:
    assert a.epochs_done == b.epochs_done and a.complete and b.complete
    for e in range(a.epochs_done + 1):
        sa, sb = a.state_dict(e), b.state_dict(e)
        assert all(torch.equal(sa[k], sb[k]) for k in sa), f"checkpoint {e} differs"
    def stripped(t: Trajectory) -> list[str]:  # as JSON text: the initial loss is NaN (!= itself)
        return [json.dumps({k: v for k, v in h.items() if k != "wall_s"}, sort_keys=True)
                for h in t.history()]

    assert stripped(a) == stripped(b)


@pytest.mark.slow
@pytest.mark.parametrize("kill", [
    "kill_on_call(ex, 'write_json', 1)",     # the first manifest: only checkpoint 0's file was written
    "kill_on_call(ex, 'write_json', 3)",     # between the writes of one commit (file written, manifest not)
    "kill_on_call(ex, 'save_tensors', 4)",   # before a checkpoint file
    "kill_on_call(ex.F, 'cross_entropy', 5)",  # in the middle of an interval between checkpoints
    "kill_on_call(ex.F, 'cross_entropy', 12)",  # on the last step
])
def test_a_killed_expert_resumes_bit_identical_and_retrains_nothing_committed(tmp_path, tiny_ds,
                                                                             tiny_data_spec, kill):
    prepared = prepare_data(tiny_data_spec, dataset=tiny_ds)
    full = train_expert(prepared, _recipe(), root=tmp_path / "full")
    _run(tmp_path, EXPERT.format(patch=kill), str(tmp_path / "killed"), check_killed=True)
    path = tmp_path / "killed" / "experts" / full.key
    committed = 0
    if (path / "manifest.json").exists():
        committed = json.loads((path / "manifest.json").read_text())["checkpoints"][-1]["step"]
    count = tmp_path / "steps.txt"
    _run(tmp_path, EXPERT.format(patch="count_calls(ex.F, 'cross_entropy')"), str(tmp_path / "killed"),
         str(count), check_killed=False)
    steps = len(count.read_text().splitlines()) if count.exists() else 0
    assert steps == 12 - committed  # only what was not committed is trained
    _same_trajectory(full, Trajectory.open(path))


def test_a_corrupt_last_checkpoint_rolls_back_and_says_so(tmp_path, tiny_ds, tiny_data_spec):
    prepared = prepare_data(tiny_data_spec, dataset=tiny_ds)
    full = train_expert(prepared, _recipe(), root=tmp_path / "full")
    part = train_expert(prepared, _recipe(), root=tmp_path / "part", stop_after=3)  # checkpoints at 2, 4, 6
    last = part.checkpoint_path(3)
    last.write_bytes(last.read_bytes()[:-16])  # truncated on disk after its commit
    with pytest.warns(RuntimeWarning, match="corrupt; resuming from ckpt_0000004"):
        resumed = train_expert(prepared, _recipe(), root=tmp_path / "part")
    _same_trajectory(full, resumed)


def test_an_expert_of_another_format_is_refused(tmp_path, tiny_ds, tiny_data_spec):
    prepared = prepare_data(tiny_data_spec, dataset=tiny_ds)
    traj = train_expert(prepared, _recipe(), root=tmp_path)
    manifest = json.loads((traj.path / "manifest.json").read_text())
    (traj.path / "manifest.json").write_text(json.dumps(dict(manifest, format="softlabels.expert/1")))
    with pytest.raises(ValueError, match="another format"):
        Trajectory.open(traj.path)


STUDY = """
import softlabels.engine.executors as executors
from softlabels.lab import Lab
from softlabels.presets import Preset
from softlabels.studies import run_study
preset = Preset(name="faults", data=data, expert=recipe, student=student, ipcs=(1, 2), seeds=(0, 1),
                sweep_epochs=(2, 6), sweep_length=2)
{patch}
with Lab(sys.argv[1], data=data, dataset=ds, progress=False, workers=1) as lab:
    run_study("expert-epoch", lab, preset=preset, epochs=[2, 6], ipcs=[1, 2])
"""


def _rows(out: Path) -> dict[str, tuple]:
    from softlabels.store import ResultsStore

    with ResultsStore(out / "results.sqlite") as store:
        return {r.key: (r.metrics["test_acc"], r.metrics["val_acc"], r.nbytes, r.codec) for r in store}


@pytest.mark.slow
@pytest.mark.parametrize("n", [1, 3, 6, 8])
def test_a_killed_study_resumes_to_the_same_results_and_retrains_nothing_stored(tmp_path, n):
    _run(tmp_path, STUDY.format(patch=""), str(tmp_path / "full"), check_killed=False)
    full = _rows(tmp_path / "full")
    assert len(full) == 8  # 2 IPCs x 2 epochs x 2 seeds
    _run(
        tmp_path,
        STUDY.format(patch=f"kill_on_call(executors, 'train_student', {n})"),
        str(tmp_path / "cut"),
        check_killed=True,
    )
    stored = len(_rows(tmp_path / "cut"))
    assert stored == n - 1
    count = tmp_path / "students.txt"
    _run(tmp_path, STUDY.format(patch="count_calls(executors, 'train_student')"), str(tmp_path / "cut"),
         str(count), check_killed=False)
    assert len(count.read_text().splitlines()) == 8 - stored
    assert _rows(tmp_path / "cut") == full


@pytest.mark.slow
def test_two_processes_in_one_folder_store_everything_once_and_train_the_expert_once(tmp_path):
    count = tmp_path / "expert_steps.txt"
    script = tmp_path / "both.py"
    script.write_text(SETUP + textwrap.dedent(STUDY.format(
        patch="import softlabels.experts as ex\ncount_calls(ex.F, 'cross_entropy')")))
    procs = [subprocess.Popen([sys.executable, str(script), str(tmp_path / "shared"), str(count)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-2000:] for o in outs]
    assert len(count.read_text().splitlines()) == 12  # one process trained the expert, the other waited
    assert any("another process is training expert" in err for _, err in outs)
    _run(tmp_path, STUDY.format(patch=""), str(tmp_path / "alone"), check_killed=False)
    assert _rows(tmp_path / "shared") == _rows(tmp_path / "alone")  # every result stored once, intact


def test_the_recipe_checks_its_checkpoints():
    with pytest.raises(ValueError, match="beyond"):
        ExpertRecipe(steps=5, checkpoints=(3, 9))
    with pytest.raises(ValueError, match="step budget"):
        ExpertRecipe(checkpoints=(3,))
    with pytest.raises(ValueError, match="train_images"):
        ExpertRecipe(steps=5, train_images=100)
    assert ExpertRecipe(steps=10, checkpoints=(4, 2, 4)).checkpoints == (2, 4)
