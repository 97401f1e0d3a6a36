"""External experts: folders of per-epoch checkpoints written here (safetensors; torch state dicts and
torchvision-style checkpoint dicts) loaded as trajectories; unsafe pickles refused; tampering detected."""

import argparse
import hashlib
import shutil

import pytest
import torch

from softlabels.checkpoints import UnsafeCheckpointError
from softlabels.config import LabelSpec
from softlabels.experts import Trajectory
from softlabels.experts_external import external_checkpoints, load_external_trajectory
from softlabels.io import save_tensors
from softlabels.main_job import run_baseline
from softlabels.models import init_model
from softlabels.presets import Preset
from softlabels.sets.spec import SetSpec
from softlabels.validation import CorruptFileError, DataNotFoundError

ARCH = {"in_channels": 1, "num_classes": 4, "image_size": (12, 12)}  # the synthetic fixture's data


def _states(n, model="convnet-d3", width=8):
    """n different state dicts of the architecture (different seeds stand in for training)."""
    return [init_model(model, width, seed=100 + e, **ARCH).state_dict() for e in range(n)]


def _safetensors_folder(path, states, epochs=None):
    path.mkdir(parents=True)
    for e, sd in zip(epochs or range(len(states)), states, strict=True):
        save_tensors(path / f"epoch_{e}.safetensors", sd)
    (path / "notes.txt").write_text("not a checkpoint")
    return path


def test_a_safetensors_folder_is_a_trajectory_with_a_content_key(tiny_lab, tmp_path):
    states = _states(3)
    folder = _safetensors_folder(tmp_path / "ext", states)
    traj = load_external_trajectory(folder, model="convnet-d3", width=8, prepared=tiny_lab.prepared,
                                    root=tiny_lab.out_dir)
    assert traj.external and traj.epochs == (0, 1, 2) and traj.epochs_done == 2
    rec = traj.manifest["recipe"]
    assert rec["kind"] == "external" and rec["source"] == str(folder.resolve())
    assert rec["model"] == "convnet-d3" and rec["width"] == 8
    for c in traj.manifest["checkpoints"]:
        assert c["sha256"] == hashlib.sha256(open(c["file"], "rb").read()).hexdigest()
    for e in (0, 2):  # the weights are the files'
        got = traj.model(e).state_dict()
        assert all(torch.equal(got[k], states[e][k]) for k in states[e])
    again = Trajectory.open(traj.path)  # the manifest is on disk under the lab's folder
    assert again.key == traj.key and (tiny_lab.out_dir / "experts" / traj.key / "manifest.json").exists()
    moved = shutil.copytree(folder, tmp_path / "elsewhere")  # the key is the content's, not the path's
    assert load_external_trajectory(moved, model="convnet-d3", width=8, prepared=tiny_lab.prepared,
                                    root=tmp_path / "other").key == traj.key
    other = _safetensors_folder(tmp_path / "ext2", _states(2) + [_states(4)[3]])
    assert load_external_trajectory(other, model="convnet-d3", width=8, prepared=tiny_lab.prepared,
                                    root=tiny_lab.out_dir).key != traj.key
    with pytest.raises(ValueError, match="no ExpertRecipe"):
        traj.recipe  # noqa: B018


def test_its_labels_are_the_checkpoints_softmax_and_feed_students(tiny_lab, tmp_path, tiny_student):
    folder = _safetensors_folder(tmp_path / "ext", _states(2))
    traj = load_external_trajectory(folder, model="convnet-d3", width=8, prepared=tiny_lab.prepared,
                                    root=tiny_lab.out_dir)
    spec = SetSpec(ipc=2, label=LabelSpec(expert_epoch=1))
    cset = tiny_lab.build_set(spec, experts=[traj])
    net = init_model("convnet-d3", 8, seed=101, **ARCH).eval()
    x = cset.model_input(mean=tiny_lab.prepared.dataset.mean, std=tiny_lab.prepared.dataset.std)
    with torch.no_grad():
        want = torch.softmax(net(x), 1)
    assert torch.allclose(cset.labels, want, atol=1e-5)
    res = tiny_lab.evaluate(spec, student=tiny_student, seeds=[0], experts=[traj])[0]
    assert res["config"]["expert_key"] == traj.key and 0 <= res["metrics"]["test_acc"] <= 1


def test_torch_state_dicts_and_torchvision_checkpoints_load(tiny_lab, tmp_path):
    states = _states(3, model="resnet18")
    folder = tmp_path / "tv"
    folder.mkdir()
    torch.save(states[0], folder / "model_0.pth")  # a plain state dict
    torch.save({f"module.{k}": v for k, v in states[1].items()}, folder / "model_1.pt")  # DataParallel's
    torch.save({"model": states[2], "optimizer": {"state": {}, "param_groups": []}, "epoch": 2,
                "args": argparse.Namespace(lr=0.1, epochs=90)}, folder / "model_2.pth")  # torchvision's
    torch.save({"model": states[2]}, folder / "checkpoint.pth")  # no epoch in the name: left alone
    assert [e for e, _ in external_checkpoints(folder)] == [0, 1, 2]
    traj = load_external_trajectory(folder, model="resnet18", width=8, root=tiny_lab.out_dir, **ARCH)
    assert traj.epochs == (0, 1, 2) and {c["format"] for c in traj.manifest["checkpoints"]} == {"torch"}
    for e in range(3):
        got = traj.model(e).state_dict()
        assert all(torch.equal(got[k], states[e][k]) for k in states[e])
    assert load_external_trajectory(folder, model="resnet18", width=8, root=tiny_lab.out_dir, format="torch",
                                    epochs=[2], **ARCH).epochs == (2,)


class _Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):  # unpickling this would write the marker file
        return (open, (str(self.marker), "w"))


def test_a_pickle_that_runs_code_is_refused(tiny_lab, tmp_path):
    folder = tmp_path / "evil"
    folder.mkdir()
    marker = tmp_path / "pwned"
    torch.save({"model": _states(1)[0], "payload": _Exploit(marker)}, folder / "model_0.pth")
    with pytest.raises(UnsafeCheckpointError, match="weights_only=True"):
        load_external_trajectory(folder, model="convnet-d3", width=8, root=tiny_lab.out_dir, **ARCH)
    assert not marker.exists() and not (tiny_lab.out_dir / "experts").exists()


def test_tampered_or_vanished_files_are_detected(tiny_lab, tmp_path):
    folder = _safetensors_folder(tmp_path / "ext", _states(2))
    traj = load_external_trajectory(folder, model="convnet-d3", width=8, prepared=tiny_lab.prepared,
                                    root=tiny_lab.out_dir)
    f = folder / "epoch_1.safetensors"
    data = bytearray(f.read_bytes())
    data[-5] ^= 0xFF  # one weight's byte: same size, other content
    f.write_bytes(bytes(data))
    reopened = Trajectory.open(traj.path)  # sizes still match
    with pytest.raises(CorruptFileError, match="SHA-256"):
        reopened.state_dict(1)
    assert torch.equal(reopened.state_dict(0)["classifier.bias"], _states(1)[0]["classifier.bias"])
    f.write_bytes(bytes(data) + b"\0")
    with pytest.raises(CorruptFileError, match="changed since it was loaded"):
        Trajectory.open(traj.path)
    f.unlink()
    with pytest.raises(DataNotFoundError, match="is gone"):
        Trajectory.open(traj.path)


def test_checkpoints_must_fit_the_named_architecture(tiny_lab, tmp_path):
    folder = _safetensors_folder(tmp_path / "ext", _states(1))
    with pytest.raises(ValueError, match="features.0.weight has shape"):
        load_external_trajectory(folder, model="convnet-d3", width=16, root=tiny_lab.out_dir, **ARCH)
    with pytest.raises(ValueError, match="does not load into resnet18 .strict.: missing"):
        load_external_trajectory(folder, model="resnet18", width=8, root=tiny_lab.out_dir, **ARCH)
    with pytest.raises(ValueError, match="prepared="):
        load_external_trajectory(folder, model="convnet-d3", width=8, root=tiny_lab.out_dir)


def test_gaps_duplicates_and_empty_folders(tiny_lab, tmp_path):
    folder = _safetensors_folder(tmp_path / "gaps", _states(3), epochs=[0, 2, 5])
    traj = load_external_trajectory(folder, model="convnet-d3", width=8, root=tiny_lab.out_dir, **ARCH)
    assert traj.epochs == (0, 2, 5) and traj.epochs_done == 5
    with pytest.raises(ValueError, match="epochs 0, 2, 5; epoch 3"):
        traj.state_dict(3)
    save_tensors(folder / "model_005.safetensors", _states(1)[0])
    with pytest.raises(ValueError, match="both expert epoch 5"):
        external_checkpoints(folder)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataNotFoundError, match="no checkpoint files"):
        external_checkpoints(tmp_path / "empty")


def test_run_baseline_with_an_evaluated_external_expert(tiny_lab, tiny_data_spec, tiny_expert, tiny_student,
                                                        tmp_path):
    trained = tiny_lab.expert(tiny_expert)  # stands in for an expert made elsewhere
    folder = tmp_path / "ext"
    folder.mkdir()
    for e in trained.epochs:
        save_tensors(folder / f"epoch_{e}.safetensors", trained.state_dict(e))
    traj = load_external_trajectory(folder, model="convnet-d3", width=8, prepared=tiny_lab.prepared,
                                    root=tiny_lab.out_dir, evaluate=True)
    hist = {h["epoch"]: h for h in traj.history()}
    own = {h["epoch"]: h for h in trained.history()}
    assert all(hist[e]["test_acc"] == pytest.approx(own[e]["test_acc"]) for e in trained.epochs)
    preset = Preset(name="tiny", data=tiny_data_spec, expert=tiny_expert, student=tiny_student, ipcs=(1, 2),
                    seeds=(0,), sweep_epochs=(1, 3), sweep_length=4, expert_epoch_by_ipc={1: 2})
    res = run_baseline(tiny_lab, preset, experts=traj, report=True)
    assert res.chosen[1] == 2 and res.chosen[2] in (1, 3) and set(res.expert_keys.values()) == {traj.key}
    assert res.report.exists()


def test_cli_distill_and_run_with_an_expert_dir(tmp_path, capsys):
    from softlabels.cli import main
    from softlabels.sets.compressed import CompressedSet

    folder = _safetensors_folder(tmp_path / "ext", _states(3))
    out = tmp_path / "out"
    common = ["--dataset", "synthetic", "--preset", "smoke", "--out", str(out), "--quiet"]
    ext = ["--expert-dir", str(folder), "--expert-model", "convnet-d3", "--expert-width", "8"]
    assert main(["distill", *common, "--ipc", "2", "--expert-epoch", "2", *ext,
                 "-o", str(tmp_path / "set.safetensors")]) == 0
    cset = CompressedSet.load(tmp_path / "set.safetensors")
    assert len(cset) == 8 and cset.labels.shape == (8, 4)
    assert main(["distill", *common, "--ipc", "2", "--expert-epoch", "2", "--expert-dir", str(folder),
                 "-o", str(tmp_path / "other.safetensors")]) == 2
    assert "--expert-model" in capsys.readouterr().err
