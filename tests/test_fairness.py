"""Robust fairness: metrics, PGD, ABSLD temperatures and its training loop, on hand-computed cases."""

import math

import pytest
import torch
from torch import nn

from softlabels.config import StudentRecipe
from softlabels.fairness import (
    AbsldConfig,
    AttackSpec,
    class_losses,
    class_tempered,
    fairness_of,
    pgd_perturb,
    pixel_bounds,
    stratified_subset,
    train_absld_student,
    update_temperatures,
)


def test_fairness_of_hand_computed():
    f = fairness_of([0.2, 0.4, 0.6, 0.8])
    assert f["mean"] == pytest.approx(0.5)
    assert f["worst"] == 0.2 and f["best"] == 0.8
    std = math.sqrt((0.09 + 0.01 + 0.01 + 0.09) / 4)  # population std
    assert f["std"] == pytest.approx(std)
    assert f["nsd"] == pytest.approx(std / 0.5)
    assert fairness_of([0.5, float("nan"), 0.5])["nsd"] == 0.0  # NaN classes are left out
    assert math.isnan(fairness_of([0.0, 0.0])["nsd"])  # mean 0: NSD undefined


def test_stratified_subset_balances_classes_and_is_seeded():
    y = torch.tensor([0] * 10 + [1] * 10 + [2] * 10)
    idx = stratified_subset(y, 7, num_classes=3, seed=1)
    assert torch.bincount(y[idx], minlength=3).tolist() == [3, 2, 2]
    assert torch.equal(idx, stratified_subset(y, 7, num_classes=3, seed=1))
    assert torch.equal(stratified_subset(y, None, num_classes=3, seed=0), torch.arange(30))


def test_pixel_bounds_map_pixels_to_model_units():
    lo, hi, inv = pixel_bounds([0.5], [0.25])
    assert float(lo) == -2.0 and float(hi) == 2.0 and float(inv) == 4.0


class _Linear(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Linear(4, 2, bias=False)
        with torch.no_grad():
            self.w.weight.copy_(torch.tensor([[1.0, 1.0, 1.0, 1.0], [-1.0, -1.0, -1.0, -1.0]]))

    def forward(self, x):
        return self.w(x.flatten(1))


def test_pgd_ce_moves_every_pixel_eps_against_the_true_class():
    # logit margin of class 0 = 2 * sum(x): CE on class 0 grows as every pixel decreases, so a PGD with
    # step >= eps ends at x - eps everywhere (pixel range permitting), from any start.
    model = _Linear()
    x = torch.full((1, 1, 2, 2), 0.5)
    lo, hi, inv = pixel_bounds([0.0], [1.0])
    adv = pgd_perturb(model, x, torch.tensor([0]), eps=0.1, step=0.1, steps=3, lo=lo, hi=hi, inv_std=inv,
                      generator=torch.Generator().manual_seed(0), loss="ce")
    assert torch.allclose(adv, torch.full_like(x, 0.4))
    # pixel bounds clip: at 0.05 the attack stops at 0
    adv0 = pgd_perturb(model, torch.full_like(x, 0.05), torch.tensor([0]), eps=0.1, step=0.1, steps=2,
                       lo=lo, hi=hi, inv_std=inv, generator=torch.Generator().manual_seed(0), loss="ce")
    assert torch.allclose(adv0, torch.zeros_like(x))
    # in model units with std 0.5, eps = 0.1 pixel is 0.2 model units
    lo2, hi2, inv2 = pixel_bounds([0.0], [0.5])
    adv2 = pgd_perturb(model, torch.ones_like(x), torch.tensor([0]), eps=0.1, step=0.1, steps=2, lo=lo2,
                       hi=hi2, inv_std=inv2, generator=torch.Generator().manual_seed(0), loss="ce")
    assert torch.allclose(adv2, torch.full_like(x, 0.8))


def test_class_tempered_hand_computed():
    p = torch.tensor([[0.5, 0.25, 0.25], [0.5, 0.25, 0.25], [0.0, 0.5, 0.5]])
    y = torch.tensor([0, 1, 1])
    out = class_tempered(p, y, torch.tensor([0.5, 1.0, 2.0]))
    # T = 0.5 squares then renormalises: [.25, .0625, .0625] / .375
    assert torch.allclose(out[0], torch.tensor([2 / 3, 1 / 6, 1 / 6]))
    assert torch.allclose(out[1], p[1])  # T = 1: unchanged
    assert torch.allclose(out[2], torch.tensor([0.0, 0.5, 0.5]))  # zeros stay zero
    # equals tempering the logits: softmax(z) re-tempered by T is softmax(z / T)
    z = torch.tensor([[2.0, -1.0, 0.5]])
    got = class_tempered(torch.softmax(z, 1), torch.tensor([2]), torch.tensor([1.0, 1.0, 3.0]))
    assert torch.allclose(got, torch.softmax(z / 3.0, 1), atol=1e-6)


def test_update_temperatures_follows_the_authors_rule():
    t = torch.ones(4, dtype=torch.float64)
    loss = torch.tensor([1.0, 2.0, 3.0, 6.0], dtype=torch.float64)  # mean 3, gaps -2 -1 0 3, max |gap| 3
    new = update_temperatures(t, loss, rate=0.3, t_min=0.5, t_max=5.0)
    assert torch.allclose(new, torch.tensor([1.2, 1.1, 1.0, 0.7], dtype=torch.float64))
    # hard class sharper, easy class smoother; clamped at the bounds
    clamped = update_temperatures(torch.tensor([0.55, 1.0, 1.0, 4.95]), torch.tensor([9.0, 5.0, 5.0, 1.0]),
                                  rate=0.1, t_min=0.5, t_max=5.0)
    assert torch.allclose(clamped.float(), torch.tensor([0.5, 1.0, 1.0, 5.0]))
    # equal losses: nothing moves; an unseen class (NaN) keeps its temperature and is out of the mean
    assert torch.equal(update_temperatures(t, torch.full((4,), 2.0), rate=0.1, t_min=0.5, t_max=5.0), t)
    part = update_temperatures(t, torch.tensor([1.0, 3.0, float("nan"), 2.0]), rate=0.1, t_min=0.5,
                               t_max=5.0)
    assert torch.allclose(part, torch.tensor([1.1, 0.9, 1.0, 1.0], dtype=torch.float64))


def test_class_losses_sums_per_class():
    s, c = class_losses(torch.tensor([1.0, 2.0, 4.0]), torch.tensor([0, 2, 0]), 3)
    assert s.tolist() == [5.0, 0.0, 2.0] and c.tolist() == [2.0, 0.0, 1.0]


def test_absld_config_checks():
    with pytest.raises(ValueError, match="contain 1"):
        AbsldConfig(t_min=1.5)
    with pytest.raises(TypeError, match="adaptive"):
        AbsldConfig(adaptive="yes")
    with pytest.raises(ValueError, match="adv_weight"):
        AbsldConfig(adv_weight=2.0)


def _tiny_set(n_per=4, k=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(k).repeat_interleave(n_per)
    x = torch.randn(len(y), 1, 8, 8, generator=g) + y.view(-1, 1, 1, 1).float()
    labels = torch.softmax(torch.randn(len(y), k, generator=g) + 3 * torch.nn.functional.one_hot(y, k), 1)
    return x, labels, y


RECIPE = StudentRecipe(model="convnet-d3-w32", width=8, epochs=6, batch_size=6, lr=0.01, dsa=False)


def test_absld_training_is_seeded_and_adapts_temperatures():
    x, p, y = _tiny_set()
    kw = dict(seed=3, mean=[0.0], std=[1.0])
    a = train_absld_student(x, p, y, RECIPE, config=AbsldConfig(), **kw)
    b = train_absld_student(x, p, y, RECIPE, config=AbsldConfig(), **kw)
    for pa, pb in zip(a.model.parameters(), b.model.parameters(), strict=True):
        assert torch.equal(pa, pb)
    assert a.steps == 12 and len(a.history) == 6  # one update per pass of 2 batches
    assert a.temperatures == b.temperatures and set(a.temperatures) == {"nat"}
    first = a.history[0]
    loss, temps = torch.tensor(first["nat_class_loss"]), torch.tensor(first["nat_temperatures"])
    # after one update: the class with the largest loss is the sharpest (0.9), the smallest the smoothest
    assert temps[loss.argmax()] == pytest.approx(0.9) and temps[loss.argmin()] > 1.0
    uniform = train_absld_student(x, p, y, RECIPE, config=AbsldConfig(adaptive=False), **kw)
    assert uniform.temperatures["nat"] == [1.0, 1.0, 1.0]


def test_absld_adversarial_training_has_two_branches():
    x, p, y = _tiny_set()
    cfg = AbsldConfig(adversarial=True, attack_steps=2, eps=0.1, attack_step=0.05)
    recipe = RECIPE.replace(epochs=2)
    r = train_absld_student(x, p, y, recipe, config=cfg, seed=0, mean=[0.0], std=[1.0])
    assert set(r.temperatures) == {"adv", "nat"}
    assert all(0.5 <= t <= 5.0 for t in r.temperatures["adv"])
    assert r.temperatures["adv"] != [1.0, 1.0, 1.0]


def test_robust_evaluation_with_art():
    pytest.importorskip("art")
    from softlabels.fairness import robust_evaluation

    # a model that reads the mean pixel: class 1 iff mean > 0.5 (in pixel units; normalised mean 0, std 1)
    class MeanModel(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.scale = nn.Parameter(torch.tensor(10.0))

        def forward(self, x):
            m = x.mean(dim=(1, 2, 3))
            return torch.stack([-(m - 0.5) * self.scale, (m - 0.5) * self.scale], 1)

    # class 0 images at 0.3 (far from the boundary), class 1 at 0.52 (within eps = 8/255 of it)
    imgs = torch.cat([torch.full((4, 1, 4, 4), 77, dtype=torch.uint8),
                      torch.full((4, 1, 4, 4), 133, dtype=torch.uint8)])
    y = torch.tensor([0] * 4 + [1] * 4)
    res = robust_evaluation(MeanModel(), imgs, y, num_classes=2, mean=[0.0], std=[1.0],
                            attack=AttackSpec(eps=8 / 255, steps=5, images=None))
    assert res["clean_per_class"] == [1.0, 1.0]
    assert res["robust_per_class"] == [1.0, 0.0]  # 0.52 - 8/255 < 0.5: every class-1 image flips
    assert res["robust"]["worst"] == 0.0 and res["robust"]["nsd"] == pytest.approx(1.0)
    assert res["max_perturbation"] <= 8 / 255 + 1e-6


def test_missing_art_names_the_extra(monkeypatch):
    import sys

    from softlabels.fairness import MissingExtraError, require_art

    monkeypatch.setitem(sys.modules, "art", None)  # import art -> ImportError
    with pytest.raises(MissingExtraError, match=r"softlabels\[robust\]"):
        require_art()
