"""The soft-label segmentation task: canvases, label makers, IoU arithmetic, training and the comparison."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from softlabels.data.synthetic import make_synthetic
from softlabels.engine.losses import loss_fn
from softlabels.segmentation import (
    Canvases,
    boundary_soft_labels,
    build_segnet,
    compare_losses,
    hard_labels,
    iou_from_predictions,
    kd_labels,
    make_canvases,
    mean_iou,
    paste_items,
    smooth_labels,
    train_segmenter,
)

K = 4  # 3 synthetic classes + background


@pytest.fixture(scope="module")
def seg_ds():
    return make_synthetic(num_classes=3, n_train=60, n_test=30, size=12)


@pytest.fixture(scope="module")
def canvases(seg_ds):
    return (make_canvases(seg_ds, n=48, size=24, items=2, seed=0),
            make_canvases(seg_ds, n=24, size=24, items=2, seed=1, split="test"))


# ------------------------------------------------------------------------------------------------ canvases
def test_paste_items_hand_checked():
    a = torch.full((3, 3), 200, dtype=torch.uint8)
    a[1, 1] = 10  # at or below the threshold: not drawn, not foreground
    b = torch.full((3, 3), 100, dtype=torch.uint8)
    b[0, 0] = 0
    items = torch.stack([a, b])[:, None]
    image, mask = paste_items(items, torch.tensor([0, 2]), torch.tensor([[0, 0], [1, 1]]), size=5)
    # a (class 0 -> 1) at the top left; b (class 2 -> 3) one pixel down and right, drawn on top
    assert mask.tolist() == [[1, 1, 1, 0, 0],
                             [1, 0, 3, 3, 0],
                             [1, 3, 3, 3, 0],
                             [0, 3, 3, 3, 0],
                             [0, 0, 0, 0, 0]]
    assert image.tolist() == [[200, 200, 200, 0, 0],
                              [200, 0, 100, 100, 0],
                              [200, 100, 100, 100, 0],
                              [0, 100, 100, 100, 0],
                              [0, 0, 0, 0, 0]]
    with pytest.raises(ValueError, match="positions"):
        paste_items(items, torch.tensor([0, 2]), torch.tensor([[0, 0], [3, 0]]), size=5)


def test_canvases_deterministic_and_consistent(seg_ds, canvases):
    tr, _ = canvases
    assert isinstance(tr, Canvases) and len(tr) == 48 and tr.num_classes == K
    assert tr.images.shape == (48, 1, 24, 24) and tr.images.dtype == torch.float32
    assert tr.masks.shape == (48, 24, 24) and tr.masks.dtype == torch.int64
    assert 0 <= float(tr.images.min()) and float(tr.images.max()) <= 1
    assert int(tr.masks.min()) == 0 and int(tr.masks.max()) < K
    assert tr.class_names == ("background", "class0", "class1", "class2")
    again = make_canvases(seg_ds, n=48, size=24, items=2, seed=0)
    assert torch.equal(again.images, tr.images) and torch.equal(again.masks, tr.masks)
    other = make_canvases(seg_ds, n=48, size=24, items=2, seed=5)
    assert not torch.equal(other.masks, tr.masks)
    # background exactly where the image is black; every canvas rebuilds from its recorded placements
    assert torch.equal(tr.masks == 0, tr.images[:, 0] == 0)
    for i in (0, 17):
        idx = tr.item_indices[i]
        image, mask = paste_items(seg_ds.train_images[idx], seg_ds.train_targets[idx], tr.positions[i],
                                  size=24)
        assert torch.equal(mask, tr.masks[i]) and torch.equal(image.float() / 255, tr.images[i, 0])
        # the last item is on top: its foreground pixels carry its class
        (r, c), item = tr.positions[i].tolist()[-1], seg_ds.train_images[idx[-1], 0]
        fg = item > tr.threshold
        assert (tr.masks[i, r:r + 12, c:c + 12][fg] == int(seg_ds.train_targets[idx[-1]]) + 1).all()


def test_canvases_reject_bad_options(seg_ds):
    with pytest.raises(ValueError, match="smaller"):
        make_canvases(seg_ds, n=2, size=8, seed=0)
    with pytest.raises(ValueError, match="split"):
        make_canvases(seg_ds, n=2, size=24, seed=0, split="val")


# --------------------------------------------------------------------------------------------- label makers
def test_smooth_labels(canvases):
    masks = canvases[0].masks[:4]
    one_hot = hard_labels(masks, K)
    assert torch.equal(smooth_labels(masks, K, epsilon=0.0), one_hot)
    y = smooth_labels(masks, K, epsilon=0.2)
    assert y.shape == (4, K, 24, 24)
    torch.testing.assert_close(y.sum(1), torch.ones(4, 24, 24))
    # the true class gets 1 - 0.2 + 0.2 / 4 = 0.85, every other class 0.05
    torch.testing.assert_close(y.gather(1, masks[:, None])[:, 0], torch.full((4, 24, 24), 0.85))
    torch.testing.assert_close(y.min(1).values, torch.full((4, 24, 24), 0.05))


def test_boundary_labels_hand_checked():
    mask = torch.tensor([[1, 1, 1, 1, 2, 2, 2, 2]] * 2)[None]  # left half class 1, right half class 2
    y = boundary_soft_labels(mask, 3, radius=1)
    torch.testing.assert_close(y.sum(1), torch.ones(1, 2, 8))
    # far from the boundary (and at the replicate-padded canvas edge): one-hot
    for col, cls in ((0, 1), (1, 1), (2, 1), (5, 2), (6, 2), (7, 2)):
        assert y[0, :, :, col].T.tolist() == [[float(c == cls) for c in range(3)]] * 2
    # right at it, a 3x3 box holds 2 columns of the pixel's own class and 1 of the other
    torch.testing.assert_close(y[0, :, 0, 3], torch.tensor([0.0, 2 / 3, 1 / 3]))
    torch.testing.assert_close(y[0, :, 1, 4], torch.tensor([0.0, 1 / 3, 2 / 3]))
    assert torch.equal(boundary_soft_labels(mask, 3, radius=0), hard_labels(mask, 3))


def test_kd_labels_are_tempered_softmax(canvases):
    x = canvases[0].images[:3]
    teacher = build_segnet(K, width=8, seed=0)
    with torch.no_grad():
        logits = teacher(x)
    y = kd_labels(teacher, x, temperature=2.0, batch_size=2)
    torch.testing.assert_close(y, torch.softmax(logits / 2.0, 1))
    torch.testing.assert_close(y.sum(1), torch.ones(3, 24, 24))


# --------------------------------------------------------------------------------------------------- IoU
def test_iou_hand_checked():
    true = torch.tensor([[[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 2, 2], [2, 2, 2, 2]]])
    pred = torch.tensor([[[0, 0, 0, 1], [0, 0, 1, 1], [2, 2, 2, 2], [2, 2, 2, 1]]])
    r = iou_from_predictions(pred, true, 4)
    # class 0: 4 shared pixels, union 4 + the wrongly predicted (0, 2) = 5
    # class 1: shared (0, 3), (1, 2), (1, 3) = 3; union adds (0, 2) missed and (3, 3) wrongly predicted = 5
    # class 2: 7 of its 8 pixels predicted, nothing extra: 7 / 8; class 3 absent and never predicted
    assert r["intersection"] == [4, 3, 7, 0] and r["union"] == [5, 5, 8, 0]
    assert r["per_class_iou"][:3] == pytest.approx([4 / 5, 3 / 5, 7 / 8]) and r["per_class_iou"][3] is None
    assert r["miou"] == pytest.approx((4 / 5 + 3 / 5 + 7 / 8) / 3)
    assert r["pixel_acc"] == pytest.approx(14 / 16)
    perfect = iou_from_predictions(true, true, 4)
    assert perfect["miou"] == 1.0 and perfect["pixel_acc"] == 1.0

    class Oracle(nn.Module):  # "predicts" the class stored in the image
        def forward(self, x):
            return F.one_hot(x[:, 0].long(), 4).permute(0, 3, 1, 2).float()

    images = torch.cat([pred, true]).float()[:, None]
    assert mean_iou(Oracle(), images, torch.cat([pred, true]), 4, batch_size=1)["miou"] == 1.0
    assert mean_iou(Oracle(), images[:1], true, 4) == r


# ---------------------------------------------------------------------------------------------- training
def test_training_learns_and_beats_chance(canvases):
    tr, te = canvases
    hist: list[float] = []
    model = train_segmenter(tr.images, smooth_labels(tr.masks, K, epsilon=0.1), steps=60, batch_size=8,
                            width=16, seed=0, on_step=lambda step, v: hist.append(v))
    assert len(hist) == 60 and sum(hist[-5:]) < 0.8 * sum(hist[:5])
    r = mean_iou(model, te.images, te.masks, K)
    majority = float((te.masks == 0).float().mean())  # all-background is the best constant guess
    assert r["pixel_acc"] > majority + 0.03
    assert r["miou"] > 0.2 and len(r["per_class_iou"]) == K


def test_training_is_seeded_and_leaves_global_rng(canvases):
    tr, _ = canvases
    y = hard_labels(tr.masks, K)
    state = torch.random.get_rng_state()

    def weights(seed):
        model = train_segmenter(tr.images[:16], y[:16], steps=3, batch_size=4, width=8, seed=seed)
        return [p.detach().clone() for p in model.parameters()]

    a, b, c = weights(0), weights(0), weights(1)
    assert all(torch.equal(p, q) for p, q in zip(a, b, strict=True))
    assert not all(torch.equal(p, q) for p, q in zip(a, c, strict=True))
    assert torch.equal(torch.random.get_rng_state(), state)


def test_jml_path_trains_and_backpropagates(canvases):
    tr, _ = canvases
    y = boundary_soft_labels(tr.masks[:8], K, radius=1)
    model = build_segnet(K, width=8, seed=0)
    value = loss_fn("jml:weight=1.0,ce=1.0")(model(tr.images[:8]), y)
    value.backward()
    assert torch.isfinite(value) and all(torch.isfinite(p.grad).all() for p in model.parameters())
    hist: list[float] = []
    train_segmenter(tr.images[:8], y, loss="jml:weight=1.0,ce=1.0", steps=2, batch_size=4, width=8, seed=0,
                    on_step=lambda step, v: hist.append(v))
    assert len(hist) == 2 and all(v == v for v in hist)


# -------------------------------------------------------------------------------------------- comparison
def test_compare_losses_rows_are_paired(seg_ds, canvases):
    tr, te = canvases
    kw = {"steps": 3, "batch_size": 8, "width": 8}
    # jml with weight 0 is soft-ce exactly, so paired runs (same seed) must agree to the bit
    rows = compare_losses(tr, te, losses=("soft-ce", "jml:weight=0,ce=1"), seeds=(0, 1), **kw)
    jml0 = "jml:weight=0.0,ce=1.0"
    assert [(r["loss"], r["seed"]) for r in rows] == [("soft-ce", 0), ("soft-ce", 1), (jml0, 0), (jml0, 1)]
    for r in rows:
        assert {"miou", "pixel_acc", "per_class_iou", "labels", "label_params"} <= r.keys()
        assert r["labels"] == "smooth" and r["label_params"] == {"epsilon": 0.1} and 0 < r["miou"] <= 1
    assert rows[0]["per_class_iou"] == rows[2]["per_class_iou"]
    assert rows[1]["per_class_iou"] == rows[3]["per_class_iou"]
    assert rows[0]["per_class_iou"] != rows[1]["per_class_iou"]

    kd = compare_losses(tr, te, labels="kd", losses=("jml:weight=1.0,ce=1.0",), seeds=(0,), teacher_seed=7,
                        **kw)
    assert len(kd) == 1 and kd[0]["teacher_seed"] == 7 and 0 < kd[0]["teacher_miou"] <= 1
    assert kd[0]["label_params"] == {"temperature": 1.0, "teacher_steps": 3}
    boundary = compare_losses(tr, te, labels="boundary", losses=("soft-ce",), seeds=(0,), radius=2, **kw)
    assert boundary[0]["label_params"] == {"radius": 2}
    with pytest.raises(ValueError, match="share canvases"):
        compare_losses(tr, tr, seeds=(0,), **kw)
    with pytest.raises(ValueError, match="labels"):
        compare_losses(tr, te, labels="mixup", **kw)
