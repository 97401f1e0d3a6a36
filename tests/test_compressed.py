import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from softlabels.config import LabelSpec
from softlabels.data.prepared import prepare_data
from softlabels.engine.evaluation import logits_of
from softlabels.experts import train_expert
from softlabels.labels.generate import soft_labels
from softlabels.sets.compressed import CompressedSet
from softlabels.sets.selection import random_per_class
from softlabels.sets.spec import SetSpec
from softlabels.validation import CorruptFileError


@pytest.fixture
def setup(tmp_path, tiny_ds, tiny_data_spec, tiny_expert):
    prepared = prepare_data(tiny_data_spec, dataset=tiny_ds)
    traj = train_expert(prepared, tiny_expert, root=tmp_path)
    return prepared, traj


def test_random_per_class_is_seeded_and_balanced():
    t = torch.arange(100) % 5
    a = random_per_class(t, ipc=3, num_classes=5, seed=1)
    assert torch.equal(a, random_per_class(t, ipc=3, num_classes=5, seed=1))
    assert not torch.equal(a, random_per_class(t, ipc=3, num_classes=5, seed=2))
    assert torch.bincount(t[a], minlength=5).tolist() == [3] * 5
    assert len(set(a.tolist())) == 15
    with pytest.raises(ValueError, match="class 0 has only 20"):
        random_per_class(t, ipc=21, num_classes=5, seed=0)


def test_soft_labels_are_softmax_of_expert_logits_over_T(setup):
    prepared, traj = setup
    cset = SetSpec(ipc=2, label=LabelSpec(expert_epoch=2, temperature=2.0)).build(prepared, experts=[traj])
    pos = random_per_class(prepared.train_targets, ipc=2, num_classes=4, seed=0)
    x, _ = prepared.tensors("train")
    z = logits_of(traj.model(2), x[pos])
    assert torch.allclose(cset.labels, torch.softmax(z / 2.0, 1), atol=1e-6)
    assert torch.equal(cset.targets, prepared.train_targets[pos])
    assert torch.equal(cset.images, prepared.dataset.train_images[prepared.train_idx[pos]])
    # the reference's --temp multiplies logits: temp = 1 / T
    assert torch.allclose(soft_labels(z, temperature=2.0), torch.softmax(z * 0.5, 1), atol=1e-6)
    assert cset.manifest["experts"] == [traj.key] and cset.manifest["label"]["expert_epoch"] == 2


def test_hard_labels_and_transform(setup):
    prepared, traj = setup
    hard = SetSpec(ipc=3, label=LabelSpec(kind="hard", codec="hard")).build(prepared)
    assert torch.equal(hard.labels.argmax(1), hard.targets) and torch.all(hard.labels.sum(1) == 1)
    assert hard.nbytes["labels"] == 12  # one uint8 per image
    top1 = SetSpec(ipc=3, label=LabelSpec(expert_epoch=1, transform="topk:k=1")).build(
        prepared, experts=[traj]
    )
    assert torch.all((top1.labels > 0).sum(1) == 1)
    assert torch.all(top1.labels.sum(1) < 1)  # no renormalisation, as in the paper


def test_save_load_round_trip_and_bytes_match_file(tmp_path, setup):
    prepared, traj = setup
    cset = SetSpec(ipc=2, label=LabelSpec(expert_epoch=3, codec="fp16"), image_codec="zlib").build(
        prepared, experts=[traj])
    path = cset.save(tmp_path / "set.safetensors")
    back = CompressedSet.load(path)
    assert torch.equal(back.images, cset.images) and torch.equal(back.labels, cset.labels)
    assert back.manifest["label_codec"] == "fp16" and back.nbytes == cset.nbytes
    header = int.from_bytes(path.read_bytes()[:8], "little")
    assert path.stat().st_size == 8 + header + cset.nbytes["total"] + cset.nbytes["aux"]
    with pytest.raises(FileExistsError, match="overwrite"):
        cset.save(path)
    cset.save(path, overwrite=True)


def test_quantised_labels_save_without_reencoding(tmp_path, setup):
    prepared, traj = setup
    cset = SetSpec(ipc=2, label=LabelSpec(expert_epoch=1, codec="quant:bits=2")).build(
        prepared, experts=[traj]
    )
    back = CompressedSet.load(cset.save(tmp_path / "q.safetensors"))
    assert torch.equal(back.labels, cset.labels)


def test_corrupt_and_foreign_files(tmp_path, setup):
    prepared, traj = setup
    cset = SetSpec(ipc=1, label=LabelSpec(kind="hard", codec="hard")).build(prepared)
    path = cset.save(tmp_path / "s.safetensors")
    path.write_bytes(path.read_bytes()[:-7])
    with pytest.raises(CorruptFileError):
        CompressedSet.load(path)
    save_file({"x": torch.zeros(2)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(CorruptFileError, match="not a softlabels compressed set"):
        CompressedSet.load(tmp_path / "other.safetensors")


def test_user_sets_from_npz_and_safetensors(tmp_path):
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, size=(6, 12, 12, 1), dtype=np.uint8)  # NHWC: transposed on load
    labels = rng.dirichlet(np.ones(4), size=6).astype(np.float32)
    np.savez(tmp_path / "u.npz", images=imgs, labels=labels)
    s = CompressedSet.from_file(tmp_path / "u.npz")
    assert s.images.shape == (6, 1, 12, 12) and s.num_classes == 4
    assert torch.equal(s.targets, torch.from_numpy(labels).argmax(1))
    save_file({"images": torch.from_numpy(imgs[..., 0]), "targets": torch.tensor([0, 1, 2, 3, 0, 1])},
              str(tmp_path / "h.safetensors"))
    h = CompressedSet.from_file(tmp_path / "h.safetensors")
    assert h.labels.sum().item() == 6 and h.manifest["label_codec"] == "hard"
    np.savez(tmp_path / "bad.npz", images=imgs, labels=-labels)
    with pytest.raises(ValueError, match="negative"):
        CompressedSet.from_file(tmp_path / "bad.npz")
    np.savez(tmp_path / "nolab.npz", pictures=imgs)
    with pytest.raises(ValueError, match="'images'"):
        CompressedSet.from_file(tmp_path / "nolab.npz")
    with pytest.raises(ValueError, match="rows"):
        CompressedSet.from_arrays(torch.zeros(3, 1, 4, 4, dtype=torch.uint8), torch.full((2, 4), 0.25))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        CompressedSet.from_arrays(torch.full((2, 1, 4, 4), 3.0), torch.full((2, 4), 0.25))


def test_row_sum_slack_comes_from_the_label_codec():
    from softlabels.sets.codecs import label_codec

    assert label_codec("quant:bits=2").row_sum_excess(4) == pytest.approx(4 * 0.5 / 3)
    assert label_codec("quant:bits=2,renorm=1").row_sum_excess(4) == 0.0
    assert label_codec("fp16").row_sum_excess(4) == 0.0
    imgs = torch.zeros(1, 1, 4, 4, dtype=torch.uint8)
    over = torch.tensor([[2 / 3, 2 / 3, 0.0, 0.0]])  # [0.5, 0.5, 0, 0] after 2-bit quantisation
    CompressedSet(imgs, over, torch.tensor([0]), {"label_codec": "quant:bits=2"})
    with pytest.raises(ValueError, match="sums to"):
        CompressedSet(imgs, over, torch.tensor([0]), {"label_codec": "fp32"})
