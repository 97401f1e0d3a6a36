import json

import pytest
import torch

from softlabels.data.prepared import prepare_data
from softlabels.experts import Trajectory, expert_key, find_expert, train_expert
from softlabels.io import load_tensors
from softlabels.validation import CorruptFileError, DataNotFoundError


@pytest.fixture
def prepared(tiny_ds, tiny_data_spec):
    return prepare_data(tiny_data_spec, dataset=tiny_ds)


def test_checkpoint_per_epoch_and_manifest(tmp_path, prepared, tiny_expert):
    traj = train_expert(prepared, tiny_expert, root=tmp_path)
    assert traj.complete and traj.epochs_done == 3
    for e in range(4):
        assert traj.checkpoint_path(e).exists()
    m = json.loads((traj.path / "manifest.json").read_text())
    assert m["recipe"] == tiny_expert.to_dict()
    assert m["dataset_fingerprint"] == prepared.dataset.fingerprint()
    assert [h["epoch"] for h in m["history"]] == [0, 1, 2, 3]
    assert all(0 <= h["test_acc"] <= 1 and 0 <= h["val_acc"] <= 1 for h in m["history"])
    # the initial checkpoint differs from the trained one
    assert not torch.equal(traj.state_dict(0)["classifier.weight"], traj.state_dict(3)["classifier.weight"])


def test_interrupted_training_resumes_bit_identical(tmp_path, prepared, tiny_expert):
    recipe = tiny_expert.replace(momentum=0.9)  # momentum state must survive the interruption
    full = train_expert(prepared, recipe, root=tmp_path / "a")
    part = train_expert(prepared, recipe, root=tmp_path / "b", stop_after=1)
    assert part.epochs_done == 1 and not part.complete
    resumed = train_expert(prepared, recipe, root=tmp_path / "b")
    assert resumed.epochs_done == 3
    for e in range(4):
        a, b = full.state_dict(e), resumed.state_dict(e)
        assert all(torch.equal(a[k], b[k]) for k in a), f"epoch {e} differs after resume"
    assert [h["test_acc"] for h in full.history()] == [h["test_acc"] for h in resumed.history()]


def test_same_recipe_is_reused_not_retrained(tmp_path, prepared, tiny_expert, monkeypatch):
    first = train_expert(prepared, tiny_expert, root=tmp_path)
    import softlabels.experts as ex

    monkeypatch.setattr(
        ex.F, "cross_entropy", lambda *a, **k: (_ for _ in ()).throw(AssertionError("retrained"))
    )
    again = train_expert(prepared, tiny_expert, root=tmp_path)
    assert again.key == first.key
    assert find_expert(prepared, tiny_expert, root=tmp_path).key == first.key
    assert find_expert(prepared, tiny_expert.replace(seed=5), root=tmp_path) is None


def test_key_depends_on_recipe_and_data(prepared, tiny_expert, tiny_ds, tiny_data_spec):
    k = expert_key(tiny_expert, prepared)
    assert k != expert_key(tiny_expert.replace(lr=0.02), prepared)
    other = prepare_data(tiny_data_spec.replace(split_seed=1), dataset=tiny_ds)
    assert k != expert_key(tiny_expert, other)


def test_model_loads_weights_and_bad_epoch(tmp_path, prepared, tiny_expert):
    traj = train_expert(prepared, tiny_expert, root=tmp_path)
    net = traj.model(2)
    sd = traj.state_dict(2)
    assert torch.equal(net.state_dict()["classifier.weight"], sd["classifier.weight"])
    with pytest.raises(ValueError, match="epochs 0..3"):
        traj.state_dict(9)


def test_corrupt_checkpoint_and_missing_expert(tmp_path, prepared, tiny_expert):
    traj = train_expert(prepared, tiny_expert, root=tmp_path)
    p = traj.checkpoint_path(1)
    p.write_bytes(p.read_bytes()[:50])
    with pytest.raises(CorruptFileError, match="truncated"):
        traj.state_dict(1)
    with pytest.raises(DataNotFoundError, match="expert train"):
        Trajectory.open(tmp_path / "nope")
    tensors, meta = load_tensors(traj.checkpoint_path(2))
    assert meta["expert"] == traj.key
