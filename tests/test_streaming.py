"""Streaming image folders: the same pixels as the in-memory loader, decoded only when read, and the same
experts, sets and students; the expert-side loader crops and flips the same way for any number of workers."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from softlabels.config import DataSpec, ExpertRecipe, LabelSpec, StudentRecipe
from softlabels.data import load_dataset
from softlabels.data.streaming import (
    LazyImages,
    LazyInput,
    StreamingPrepared,
    expert_loader,
    prepare,
    random_resized_crop_box,
)
from softlabels.sets.spec import SetSpec

K, TRAIN, VAL, RES = 4, 14, 5, 12


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """An ImageFolder tree of small JPEGs of several sizes (4 classes, 14 train and 5 val images each)."""
    root = tmp_path_factory.mktemp("folder")
    rng = np.random.default_rng(0)
    for split, n in (("train", TRAIN), ("val", VAL)):
        for c in range(K):
            d = root / split / f"class{c}"
            d.mkdir(parents=True)
            for i in range(n):
                h, w = int(rng.integers(14, 30)), int(rng.integers(14, 30))
                base = rng.integers(0, 256, (1, 1, 3)) * (c + 1) % 256  # a class colour plus noise
                arr = np.clip(base + rng.normal(0, 40, (h, w, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(arr).save(d / f"im{i:02d}.jpg", quality=90)
    return root


def test_streamed_images_are_the_in_memory_pixels_decoded_only_when_read(folder, tmp_path):
    mem = load_dataset("imagefolder", root=folder, resolution=RES)
    st = load_dataset("imagefolder", root=folder, resolution=RES, stream=True)
    assert isinstance(st.train_images, LazyImages) and st.train_images.decoded == 0
    assert st.classes == mem.classes and st.image_shape == mem.image_shape == (3, RES, RES)
    assert torch.equal(st.train_targets, mem.train_targets) and torch.equal(st.test_targets, mem.test_targets)
    idx = torch.tensor([40, 3, 17, 3])
    assert torch.equal(st.train_images[idx], mem.train_images[idx]) and st.train_images.decoded == 4
    assert torch.equal(st.train_images[5], mem.train_images[5])
    assert torch.equal(st.test_images[2:7], mem.test_images[2:7])
    mask = mem.test_targets == 1
    assert torch.equal(st.test_images[mask], mem.test_images[mask]) and st.test_images.decoded == 5 + VAL
    sub = st.subset(8, 4, seed=1)
    assert len(sub.train_images) == 8 and sub.train_images.decoded == 0
    assert torch.equal(sub.train_images[:], mem.subset(8, 4, seed=1).train_images)
    # the fingerprint is the listing: stable, and it changes with a file
    again = load_dataset("imagefolder", root=folder, resolution=RES, stream=True)
    assert st.fingerprint() == again.fingerprint()
    other = load_dataset("imagefolder", root=folder, resolution=RES + 2, stream=True)
    assert other.fingerprint() != st.fingerprint()


def test_a_lab_on_a_streamed_folder_gives_the_in_memory_results(folder, tmp_path):
    from softlabels.lab import Lab

    data = DataSpec(name="imagefolder", val_fraction=0.2)
    expert = ExpertRecipe(model="convnet-d3", width=8, epochs=2, batch_size=16, precision="fp32")
    student = StudentRecipe(model="convnet-d3", width=8, epochs=4, precision="fp32", compile="off")
    spec = SetSpec(ipc=2, label=LabelSpec(expert_epoch=1))
    out = {}
    for mode in ("memory", "stream"):
        ds = load_dataset("imagefolder", root=folder, resolution=RES, stream=mode == "stream")
        lab = Lab(tmp_path / mode, data=data, dataset=ds, progress=False)
        traj = lab.expert(expert)
        out[mode] = (traj, lab.evaluate(spec, student=student, seeds=[0, 1], experts=[traj]), lab)
    (t_mem, r_mem, _), (t_st, r_st, lab) = out["memory"], out["stream"]
    assert isinstance(lab.prepared, StreamingPrepared) and isinstance(lab.evals.test_x, LazyInput)
    assert torch.equal(lab.prepared.train_idx, out["memory"][2].prepared.train_idx)  # the same split
    accs = [[h["test_acc"] for h in t.manifest["history"]] for t in (t_mem, t_st)]
    assert accs[0] == accs[1]
    for a, b in zip(t_mem.model(2).state_dict().values(), t_st.model(2).state_dict().values(), strict=True):
        assert torch.equal(a, b)
    for a, b in zip(r_mem, r_st, strict=True):
        assert {k: a["metrics"][k] for k in ("test_acc", "val_acc", "train_acc")} == \
            {k: b["metrics"][k] for k in ("test_acc", "val_acc", "train_acc")}
    # building a hard-label set decodes exactly its images: ipc per class, nothing of the rest of the pool
    before = lab.prepared.dataset.train_images.decoded
    cset = lab.build_set(SetSpec(ipc=3, label=LabelSpec(kind="hard", codec="hard")))
    assert len(cset) == 3 * K and lab.prepared.dataset.train_images.decoded - before == 3 * K
    for _, _, lb in out.values():
        lb.close()


def test_large_selections_stay_views_and_read_in_chunks(folder, monkeypatch):
    st = load_dataset("imagefolder", root=folder, resolution=RES, stream=True)
    mem = load_dataset("imagefolder", root=folder, resolution=RES)
    p = prepare(DataSpec(name="imagefolder", val_fraction=0.2), dataset=st)
    x, y = p.tensors("train")
    monkeypatch.setattr(LazyInput, "CHUNK", 10)
    view = x[:15]
    assert isinstance(view, LazyInput) and view.shape == (15, 3, RES, RES) and st.train_images.decoded == 0
    part = view[5:15]  # at most CHUNK images: a tensor
    ref = mem.normalize(mem.train_images[p.train_idx[5:15]])
    assert isinstance(part, torch.Tensor) and torch.equal(part, ref) and st.train_images.decoded == 10
    assert torch.equal(x[torch.tensor([2])], mem.normalize(mem.train_images[p.train_idx[2:3]]))
    moved = pickle.loads(pickle.dumps(view.to("cpu")))  # worker processes receive views, not pixels
    assert torch.equal(moved[5:15], ref)
    with pytest.raises(ValueError, match="cannot be whitened"):
        prepare(DataSpec(name="imagefolder", val_fraction=0.2, zca=True), dataset=st)


def test_random_resized_crop_box_known_answers():
    rng = np.random.default_rng(0)
    for _ in range(200):
        left, top, cw, ch = random_resized_crop_box(rng, 40, 30)
        assert 0 <= left and left + cw <= 40 and 0 <= top and top + ch <= 30
        assert 0.08 * 1200 * 0.7 <= cw * ch <= 1200  # the area fraction, up to the rounding of the sides
    # a 100 x 10 image cannot hold any crop of full area at ratio <= 4/3: the centre crop, clamped
    assert random_resized_crop_box(rng, 100, 10, scale=(1.0, 1.0)) == (43, 0, 13, 10)
    assert random_resized_crop_box(rng, 10, 10, scale=(1.0, 1.0), ratio=(1.0, 1.0)) == (0, 0, 10, 10)


def test_expert_loader_batches_do_not_depend_on_workers(folder):
    st = load_dataset("imagefolder", root=folder, resolution=RES, stream=True)
    p = prepare(DataSpec(name="imagefolder", val_fraction=0.2), dataset=st)
    n = p.train_idx.numel()
    alone = list(expert_loader(p, batch_size=16, steps=5, seed=3, resolution=16, workers=0))
    pooled = list(expert_loader(p, batch_size=16, steps=5, seed=3, resolution=16, workers=2))
    tail = list(expert_loader(p, batch_size=16, steps=5, seed=3, resolution=16, workers=0, start=3))
    assert st.train_images.decoded == 0  # the loader decodes in its own dataset (the workers'), not here
    for (xa, ya), (xb, yb) in zip(alone, pooled, strict=True):
        assert xa.dtype == torch.uint8 and xa.shape[1:] == (3, 16, 16) and torch.equal(xa, xb)
        assert torch.equal(ya, yb)
    for (xa, _), (xt, _) in zip(alone[3:], tail, strict=True):
        assert torch.equal(xa, xt)  # a resumed loader continues the same sequence
    per_pass = -(-n // 16)
    first = torch.cat([yb for _, yb in alone[:per_pass]])
    assert sorted(first.tolist()) == sorted(p.train_targets.tolist())  # one pass sees every pool image once
    other = list(expert_loader(p, batch_size=16, steps=1, seed=4, resolution=16, workers=0))
    assert not torch.equal(other[0][0], alone[0][0])
    with pytest.raises(TypeError, match="stream=True"):
        expert_loader(prepare(DataSpec(name="imagefolder", val_fraction=0.2),
                              dataset=load_dataset("imagefolder", root=folder, resolution=RES)),
                      batch_size=4, steps=1)
