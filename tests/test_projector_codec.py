"""The projector label codec: measured head bytes, exact regeneration from the stored images, a fit that
recovers labels a head made, and sets that save, load and train with it."""

from __future__ import annotations

import pytest
import torch

from softlabels.config import LabelSpec
from softlabels.sets.codecs import label_codec
from softlabels.sets.compressed import CompressedSet
from softlabels.sets.label_codecs import short_label_codec
from softlabels.sets.projector_codec import ProjectorCodec, projector_features
from softlabels.sets.spec import SetSpec


def _images(n=40, seed=0):
    return torch.randint(0, 256, (n, 1, 12, 12), generator=torch.Generator().manual_seed(seed),
                         dtype=torch.uint8)


def test_spec_bytes_and_decoding_by_hand():
    codec = label_codec("projector:dim=16")
    assert codec.spec == "projector:dim=16,bits=8,res=8,seed=0,steps=200"
    assert short_label_codec(codec.spec) == "proj16/8b"
    images = _images()
    labels = torch.softmax(torch.randn(40, 5, generator=torch.Generator().manual_seed(1)), 1)
    enc = codec.encode(labels, images=images)
    # the payload is the head: int8 weights (16 x 5), an fp16 scale and an fp16 bias per class
    assert {k: (t.dtype, tuple(t.shape)) for k, t in enc.tensors.items()} == {
        "weight": (torch.int8, (16, 5)), "scale": (torch.float16, (5,)), "bias": (torch.float16, (5,))}
    assert enc.nbytes == 16 * 5 + 2 * 5 + 2 * 5
    # decoding is softmax(features @ (q * scale) + bias), the features recomputed from the images alone
    w = enc.tensors["weight"].double() * enc.tensors["scale"].double()
    by_hand = torch.softmax(projector_features(images, dim=16, res=8, seed=0) @ w
                            + enc.tensors["bias"].double(), 1).float()
    torch.testing.assert_close(codec.decode(enc, images=images), by_hand)
    assert label_codec("projector:dim=16,bits=16").encode(labels, images=images).nbytes == 16 * 5 * 2 + 2 * 5
    with pytest.raises(ValueError, match="pass images="):
        codec.encode(labels)
    with pytest.raises(ValueError, match="the 40 stored images"):
        codec.decode(enc, images=images[:3])


def test_features_are_seeded_standardised_and_image_only():
    images = _images()
    f = projector_features(images, dim=8, res=4, seed=3)
    assert f.shape == (40, 8) and torch.equal(f, projector_features(images.clone(), dim=8, res=4, seed=3))
    assert not torch.equal(f, projector_features(images, dim=8, res=4, seed=4))
    torch.testing.assert_close(f.mean(0), torch.zeros(8, dtype=torch.float64), atol=1e-9, rtol=0)
    torch.testing.assert_close(f.std(0, unbiased=False), torch.ones(8, dtype=torch.float64), atol=1e-6,
                               rtol=0)


def test_fit_recovers_labels_a_head_generated():
    images = _images(60)
    codec = ProjectorCodec(dim=24, bits=16, res=6, seed=2)
    g = torch.Generator().manual_seed(5)
    w_true = torch.randn(24, 4, generator=g, dtype=torch.float64) * 0.7
    labels = torch.softmax(codec.features(images) @ w_true, 1).float()
    out = codec.decode(codec.encode(labels, images=images), images=images)
    assert float((out - labels).abs().max()) < 0.02  # fp16 weights; the optimum is the generating head
    # an unrelated label matrix of the same shape is not reproduced this well (the test can fail)
    noise = torch.softmax(4 * torch.randn(60, 4, generator=g), 1)
    far = codec.decode(codec.encode(noise, images=images), images=images)
    assert float((far - noise).abs().max()) > 0.1


def test_sets_save_load_and_lossy_images(tiny_lab, tiny_expert, tmp_path):
    expert = tiny_lab.expert(tiny_expert)
    spec = SetSpec(ipc=6, label=LabelSpec(kind="soft", expert_epoch=2, codec="projector:dim=8"))
    cset = tiny_lab.build_set(spec, experts=[expert])
    k = cset.num_classes
    assert cset.nbytes["labels"] == 8 * k + 4 * k  # the head, not N x C values
    torch.testing.assert_close(cset.labels.sum(1), torch.ones(len(cset)))
    loaded = CompressedSet.load(cset.save(tmp_path / "p.safetensors"))
    assert torch.equal(loaded.labels, cset.labels) and loaded.nbytes == cset.nbytes
    # with a lossy image codec the head is fitted to, and regenerated from, the decoded images
    lossy = tiny_lab.build_set(SetSpec(ipc=6, label=spec.label, image_codec="down:factor=2"),
                               experts=[expert])
    codec = label_codec(spec.label.codec)
    dense = tiny_lab.build_set(SetSpec(ipc=6, label=LabelSpec(kind="soft", expert_epoch=2)), experts=[expert])
    again = codec.decode(codec.encode(dense.labels, images=lossy.images), images=lossy.images)
    torch.testing.assert_close(lossy.labels, again)
