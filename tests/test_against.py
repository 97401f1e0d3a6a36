"""``against_baselines``: a distilled set judged against its parts and the soft-label baseline; float
(synthetic) images stored as floats; the label-robust score by hand."""

from __future__ import annotations

import math

import pytest
import torch
from tiny import DATA, C, tiny_preset

from softlabels.against import against_baselines, label_robust_score
from softlabels.config import LabelSpec
from softlabels.data.synthetic import make_synthetic
from softlabels.lab import Lab
from softlabels.sets.compressed import CompressedSet
from softlabels.sets.spec import SetSpec

TINY = tiny_preset((0, 1, 2))


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    return Lab(tmp_path_factory.mktemp("against"), data=DATA,
               dataset=make_synthetic(num_classes=C, n_train=240, n_test=80, size=12), progress=False)


def test_label_robust_score_by_hand():
    s = label_robust_score(full_hard=0.9, set_hard=0.5, set_acc=0.7, random_acc=0.6)
    assert s["hlr"] == pytest.approx(0.4) and s["ior"] == pytest.approx(0.1)
    assert s["alpha"] == pytest.approx(0.5 * 0.1 - 0.5 * 0.4)
    assert s["lrs"] == pytest.approx((math.exp(-0.15) - math.exp(-1)) / (math.e - math.exp(-1)))
    best = label_robust_score(full_hard=1.0, set_hard=1.0, set_acc=1.0, random_acc=0.0, w=1.0)
    worst = label_robust_score(full_hard=1.0, set_hard=0.0, set_acc=0.0, random_acc=0.0, w=0.0)
    assert best["lrs"] == pytest.approx(1.0) and worst["lrs"] == pytest.approx(0.0)


def test_a_set_that_is_the_soft_label_baseline_gains_exactly_nothing(lab):
    expert = lab.expert(TINY.expert)
    baseline = lab.build_set(SetSpec(ipc=2, label=LabelSpec(kind="soft", expert_epoch=2)), experts=[expert])
    res = against_baselines(lab, baseline, preset=TINY, seeds=(0, 1, 2), expert_epoch=2, vary_images=False)
    assert res.gain == (0.0, 0.0, 0.0)
    rows = {r["row"]: r for r in res.rows}
    assert list(rows) == ["given", "given-hard", "given-relabelled", "random-soft", "random-hard",
                          "random-soft-equal-bytes", "random-hard-equal-bytes"]
    # relabelled by the same expert epoch: the same labels, so the same students
    assert rows["given-relabelled"]["accs"] == rows["given"]["accs"] == rows["random-soft"]["accs"]
    assert rows["given-hard"]["accs"] == rows["random-hard"]["accs"]
    for name, r in rows.items():
        assert len(r["accs"]) == 3 and (name == "given") == ("gain" not in r)
    # equal bytes: the largest random set that fits, within the given set's bytes
    assert rows["random-soft-equal-bytes"]["nbytes"] <= res.nbytes
    assert rows["random-hard-equal-bytes"]["ipc"] >= rows["random-soft-equal-bytes"]["ipc"] >= 1
    assert res.score["random_row"] == "random-soft" and 0 <= res.score["lrs"] <= 1
    assert res.score["ior"] == 0.0


def test_images_of_a_synthetic_set_stay_float(lab, tmp_path):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(8, 1, 12, 12, generator=g)  # normalised, out of [0, 1]: the model's input space
    y = torch.softmax(torch.randn(8, C, generator=g), 1)
    with pytest.raises(ValueError, match="image_space='model'"):
        CompressedSet.from_arrays(x, y)
    s = CompressedSet.from_arrays(x, y, image_space="model")
    assert s.images.dtype == torch.float32 and s.manifest["image_codec"] == "float:dtype=fp32"
    assert torch.equal(s.model_input(mean=[0.5], std=[0.2]), x)  # used as given, not re-normalised
    path = s.save(tmp_path / "syn.safetensors")
    back = CompressedSet.load(path)
    assert torch.equal(back.images, x) and back.nbytes["images"] == x.numel() * 4
    half = s.encode(image_codec="float:dtype=fp16", label_codec="fp16")
    assert half.nbytes["images"] == x.numel() * 2 and torch.allclose(half.images, x, atol=1e-2)
    with pytest.raises(TypeError, match="float:dtype=fp32"):
        s.encode(image_codec="png")
    pixels = CompressedSet.from_arrays(torch.rand(8, 1, 12, 12, generator=g), y)
    assert pixels.images.dtype == torch.float32 and pixels.manifest["image_space"] == "pixels"
    q = CompressedSet.from_arrays(pixels.images, y, quantize=True)
    assert q.images.dtype == torch.uint8
    assert torch.allclose(pixels.model_input(), q.model_input(), atol=1 / 255)
    # the same values in another space are another set
    assert SetSpec.of_set(s).source != SetSpec.of_set(CompressedSet.from_arrays(x.sigmoid(), y)).source
    res = against_baselines(lab, s, preset=TINY, seeds=(0, 1), expert_epoch=3, equal_bytes=False)
    assert [r["row"] for r in res.rows] == ["given", "given-hard", "given-relabelled", "random-soft",
                                            "random-hard"]
    assert res.label_kind == "soft" and res.ipc == 2
