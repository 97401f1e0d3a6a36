"""Batched DSA augmentation and ZCA whitening (softlabels.augment)."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from softlabels import augment as A
from softlabels.augment import DSA_FAMILIES, ZCA, DSAConfig, dsa, dsa_family, fit_zca
from softlabels.io import load_tensors, save_tensors


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def images(n: int = 8, c: int = 3, h: int = 16, w: int = 16, seed: int = 123) -> torch.Tensor:
    return torch.rand(n, c, h, w, generator=gen(seed))


# --- reference oracles: the paper's code (Zhao & Bilen, DiffAugment), with explicit parameters --------------

def ref_crop(x: torch.Tensor, tx: torch.Tensor, ty: torch.Tensor) -> torch.Tensor:
    gb, gx, gy = torch.meshgrid(torch.arange(x.size(0)), torch.arange(x.size(2)), torch.arange(x.size(3)),
                                indexing="ij")
    gx = torch.clamp(gx + tx.view(-1, 1, 1) + 1, 0, x.size(2) + 1)
    gy = torch.clamp(gy + ty.view(-1, 1, 1) + 1, 0, x.size(3) + 1)
    x_pad = F.pad(x, [1, 1, 1, 1, 0, 0, 0, 0])
    return x_pad.permute(0, 2, 3, 1).contiguous()[gb, gx, gy].permute(0, 3, 1, 2)


def ref_cutout(x: torch.Tensor, ox: torch.Tensor, oy: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    gb, gx, gy = torch.meshgrid(torch.arange(x.size(0)), torch.arange(size[0]), torch.arange(size[1]),
                                indexing="ij")
    gx = torch.clamp(gx + ox.view(-1, 1, 1) - size[0] // 2, min=0, max=x.size(2) - 1)
    gy = torch.clamp(gy + oy.view(-1, 1, 1) - size[1] // 2, min=0, max=x.size(3) - 1)
    mask = torch.ones(x.size(0), x.size(2), x.size(3), dtype=x.dtype)
    mask[gb, gx, gy] = 0
    return x * mask.unsqueeze(1)


def shifted(xi: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """out[i, j] = xi[i + dy, j + dx], zero outside (one sample, (C, H, W))."""
    _, h, w = xi.shape
    out = torch.zeros_like(xi)
    ys, ye, xs, xe = max(0, -dy), min(h, h - dy), max(0, -dx), min(w, w - dx)
    if ys < ye and xs < xe:
        out[:, ys:ye, xs:xe] = xi[:, ys + dy:ye + dy, xs + dx:xe + dx]
    return out


# --- determinism and RNG hygiene ----------------------------------------------------------------------------

@pytest.mark.parametrize("one_family", [True, False])
def test_same_seed_bit_identical_different_seed_differs(one_family: bool) -> None:
    x = images()
    cfg = DSAConfig(one_family_per_batch=one_family)
    outs = [dsa(x, generator=gen(s), config=cfg) for s in (5, 5, 6, 7, 8)]
    assert torch.equal(outs[0], outs[1])
    assert not all(torch.equal(outs[0], o) for o in outs[2:])
    assert not torch.equal(outs[2], outs[3]) or not torch.equal(outs[3], outs[4])


def test_uses_only_the_given_generator_and_never_modifies_input() -> None:
    x = images()
    before = x.clone()
    torch.manual_seed(0)
    state = torch.get_rng_state()
    for family in DSA_FAMILIES:
        out = dsa_family(x, family, generator=gen(1))
        assert out.data_ptr() != x.data_ptr()
    out = dsa(x, generator=gen(2), config=DSAConfig(strategy="none"))
    assert torch.equal(out, x) and out.data_ptr() != x.data_ptr()
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(x, before)


# --- one family per batch -----------------------------------------------------------------------------------

def test_each_batch_gets_exactly_one_family() -> None:
    x = images(n=6)
    cfg = DSAConfig()
    chosen = Counter()
    for seed in range(30):
        out = dsa(x, generator=gen(seed), config=cfg)
        matches = []
        for family in DSA_FAMILIES:
            g = gen(seed)
            A._choose_family(g, cfg.families, x.device)
            if torch.equal(out, dsa_family(x, family, generator=g, config=cfg)):
                matches.append(family)
        assert len(matches) == 1, (seed, matches)
        chosen[matches[0]] += 1
    assert set(chosen) == set(DSA_FAMILIES)


def test_all_families_mode_applies_every_family_in_order() -> None:
    x = images(n=4)
    cfg = DSAConfig(one_family_per_batch=False)
    g = gen(3)
    expected = x
    for family in DSA_FAMILIES:
        expected = dsa_family(expected, family, generator=g, config=cfg)
    assert torch.equal(dsa(x, generator=gen(3), config=cfg), expected)


def test_family_choice_is_uniform_over_many_batches(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []

    def recorder(name: str):
        def fn(x: torch.Tensor, g: torch.Generator, cfg: DSAConfig) -> torch.Tensor:
            calls.append(name)
            return x
        return fn

    monkeypatch.setattr(A, "_FAMILY_FNS", {f: recorder(f) for f in DSA_FAMILIES})
    g = gen(11)
    x = images(n=1, c=1, h=4, w=4)
    for _ in range(600):
        dsa(x, generator=g)
    counts = Counter(calls)
    assert len(calls) == 600
    assert set(counts) == set(DSA_FAMILIES)
    assert all(60 <= counts[f] <= 140 for f in DSA_FAMILIES), counts


def test_single_family_strategy_always_applies_it() -> None:
    x = images(n=32)
    for seed in range(5):
        out = dsa(x, generator=gen(seed), config=DSAConfig(strategy="flip"))
        assert all(torch.equal(o, xi) or torch.equal(o, xi.flip(2)) for o, xi in zip(out, x, strict=True))


# --- per-family properties ----------------------------------------------------------------------------------

def test_flip_mirrors_exactly_the_flipped_samples() -> None:
    x = images(n=64)
    out = dsa_family(x, "flip", generator=gen(0))
    same = [torch.equal(o, xi) for o, xi in zip(out, x, strict=True)]
    mirrored = [torch.equal(o, xi.flip(2)) for o, xi in zip(out, x, strict=True)]
    assert all(s != m for s, m in zip(same, mirrored, strict=True))  # each sample is exactly one of the two
    assert 10 < sum(mirrored) < 54
    assert torch.equal(dsa_family(x, "flip", generator=gen(0), config=DSAConfig(flip_p=0.0)), x)
    assert torch.equal(dsa_family(x, "flip", generator=gen(0), config=DSAConfig(flip_p=1.0)), x.flip(3))


def test_crop_is_an_integer_translation_with_zero_fill() -> None:
    x = images(n=64, h=12, w=20) + 1.0  # no zeros in the input
    out = dsa_family(x, "crop", generator=gen(0))
    bh, bw = 2, 3  # int(12 * 0.125 + 0.5), int(20 * 0.125 + 0.5): 1.5 and 2.5 round up
    shifts = []
    for o, xi in zip(out, x, strict=True):
        found = [(dy, dx) for dy in range(-bh, bh + 1) for dx in range(-bw, bw + 1)
                 if torch.equal(o, shifted(xi, dy, dx))]
        assert len(found) == 1
        shifts.append(found[0])
    assert {dy for dy, _ in shifts} == set(range(-bh, bh + 1))  # independent per sample, full range
    assert {dx for _, dx in shifts} == set(range(-bw, bw + 1))
    assert len(set(shifts)) >= 15
    assert (out == 0).any()  # revealed borders are zero
    assert torch.equal(dsa_family(x, "crop", generator=gen(0), config=DSAConfig(crop_pad=0.0)), x)


def test_translate_matches_reference_gather() -> None:
    x = torch.randn(40, 3, 10, 7, generator=gen(1))
    tx = torch.randint(-4, 5, (40,), generator=gen(2))
    ty = torch.randint(-4, 5, (40,), generator=gen(3))
    assert torch.equal(A._translate(x, tx, ty), ref_crop(x, tx, ty))


@pytest.mark.parametrize("h,w", [(16, 16), (9, 12)])
def test_cutout_zeroes_one_clipped_square_of_the_expected_size(h: int, w: int) -> None:
    n = 256
    x = images(n=n, h=h, w=w) + 1.0
    out = dsa_family(x, "cutout", generator=gen(0))
    size = int(h * 0.5 + 0.5), int(w * 0.5 + 0.5)
    centres = []
    for o, xi in zip(out, x, strict=True):
        zero = (o == 0).all(dim=0)
        assert torch.equal((o == 0), zero.expand_as(o))  # all channels together
        rows = zero.any(dim=1).nonzero().flatten()
        cols = zero.any(dim=0).nonzero().flatten()
        r0, r1, c0, c1 = int(rows.min()), int(rows.max()) + 1, int(cols.min()), int(cols.max()) + 1
        assert zero.sum() == (r1 - r0) * (c1 - c0) and zero[r0:r1, c0:c1].all()  # one rectangle
        assert r1 - r0 == size[0] or r0 == 0 or r1 == h  # full size unless clipped
        assert c1 - c0 == size[1] or c0 == 0 or c1 == w
        assert r1 - r0 <= size[0] and c1 - c0 <= size[1]
        assert torch.equal(o[:, ~zero], xi[:, ~zero])
        start_h = r1 - size[0] if r0 == 0 else r0  # undo the clipping
        start_w = c1 - size[1] if c0 == 0 else c0
        centres.append((start_h + size[0] // 2, start_w + size[1] // 2))
    assert len(set(centres)) >= 50
    # centres span [0, H + (1 - size % 2)) like the reference
    assert min(c for c, _ in centres) == 0 and max(c for c, _ in centres) == h - size[0] % 2
    assert min(c for _, c in centres) == 0 and max(c for _, c in centres) == w - size[1] % 2


def test_cutout_matches_reference_mask() -> None:
    for h, w, ratio in [(8, 8, 0.5), (9, 7, 0.5), (5, 6, 0.3), (3, 3, 1.0), (6, 6, 0.0)]:
        x = torch.randn(50, 2, h, w, generator=gen(h * w))
        size = int(h * ratio + 0.5), int(w * ratio + 0.5)
        ox = torch.randint(0, h + (1 - size[0] % 2), (50,), generator=gen(1))
        oy = torch.randint(0, w + (1 - size[1] % 2), (50,), generator=gen(2))
        assert torch.equal(A._cutout(x, ox, oy, size), ref_cutout(x, ox, oy, size))


def test_scale_and_rotate_with_identity_parameters_return_the_input() -> None:
    x = images(n=5, h=12, w=10)
    out_s = dsa_family(x, "scale", generator=gen(0), config=DSAConfig(scale=1.0))
    out_r = dsa_family(x, "rotate", generator=gen(0), config=DSAConfig(rotate_deg=0.0))
    torch.testing.assert_close(out_s, x, atol=1e-5, rtol=0)
    torch.testing.assert_close(out_r, x, atol=1e-5, rtol=0)
    for family in ("scale", "rotate"):
        assert (dsa_family(x, family, generator=gen(0)) - x).abs().amax() > 0.05


@pytest.mark.parametrize("family", ["scale", "rotate"])
def test_affine_families_match_affine_grid_with_drawn_parameters(family: str) -> None:
    x = images(n=8, h=11, w=11)
    out = dsa_family(x, family, generator=gen(4))
    u = torch.rand((2, 8) if family == "scale" else (8,), generator=gen(4))
    if family == "scale":
        s = u * (1.2 - 1 / 1.2) + 1 / 1.2
        assert ((s >= 1 / 1.2) & (s <= 1.2)).all()
        theta = torch.zeros(8, 2, 3)
        theta[:, 0, 0], theta[:, 1, 1] = s[0], s[1]
    else:
        a = (u - 0.5) * 2 * 15 * math.pi / 180
        rows = [torch.stack([a.cos(), a.sin(), 0 * a], 1), torch.stack([-a.sin(), a.cos(), 0 * a], 1)]
        theta = torch.stack(rows, 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=True)
    torch.testing.assert_close(out, F.grid_sample(x, grid, align_corners=True), atol=1e-6, rtol=0)
    # no translation: the centre pixel of an odd-sized image is kept exactly
    torch.testing.assert_close(out[..., 5, 5], x[..., 5, 5], atol=1e-6, rtol=0)


@pytest.mark.parametrize("h,w", [(1, 1), (1, 6), (5, 1), (8, 8), (9, 13)])
def test_broadcast_grid_equals_affine_grid(h: int, w: int, recwarn: pytest.WarningsRecorder) -> None:
    theta = torch.randn(7, 2, 3, generator=gen(h * 31 + w))
    expected = F.affine_grid(theta, [7, 1, h, w], align_corners=True)
    torch.testing.assert_close(A._affine_grid(theta, h, w), expected, atol=1e-6, rtol=0)


def test_rotation_theta_convention_is_cos_sin_minus_sin_cos() -> None:
    x = images(n=2, h=9, w=9)
    quarter = A._affine(x, A._rotation_theta(torch.full((2,), math.pi / 2)))
    torch.testing.assert_close(quarter, torch.rot90(x, -1, dims=(2, 3)), atol=1e-5, rtol=0)


def test_color_sub_operations() -> None:
    x = images(n=6)
    u = torch.rand(6, generator=gen(9))
    # brightness: a per-sample constant offset (u - 0.5) * ratio
    diff = A._brightness(x, u, 1.0) - x
    torch.testing.assert_close(diff, (u - 0.5).view(-1, 1, 1, 1).expand_as(x), atol=1e-6, rtol=0)
    # saturation: keeps each pixel's channel mean, scales deviations from it by u * ratio
    sat = A._saturation(x, u, 2.0)
    m = x.mean(1, keepdim=True)
    torch.testing.assert_close(sat.mean(1, keepdim=True), m, atol=1e-6, rtol=0)
    torch.testing.assert_close(sat - m, (x - m) * (2 * u).view(-1, 1, 1, 1), atol=1e-6, rtol=0)
    torch.testing.assert_close(A._saturation(x, torch.full((6,), 0.5), 2.0), x, atol=1e-6, rtol=0)
    # contrast: keeps each sample's mean, scales deviations by u + ratio
    con = A._contrast(x, u, 0.5)
    mm = x.mean((1, 2, 3), keepdim=True)
    torch.testing.assert_close(con.mean((1, 2, 3), keepdim=True), mm, atol=1e-6, rtol=0)
    torch.testing.assert_close(con - mm, (x - mm) * (u + 0.5).view(-1, 1, 1, 1), atol=1e-6, rtol=0)


@pytest.mark.parametrize("c", [1, 3])
def test_fused_color_equals_brightness_then_saturation_then_contrast(c: int) -> None:
    x = torch.randn(10, c, 7, 9, generator=gen(c))
    u = torch.rand(3, 10, generator=gen(c + 10))
    expected = A._contrast(A._saturation(A._brightness(x, u[0], 1.0), u[1], 2.0), u[2], 0.5)
    torch.testing.assert_close(A._color(x, u, DSAConfig()), expected, atol=1e-5, rtol=0)
    out = dsa_family(x, "color", generator=gen(7))
    u = torch.rand(3, 10, generator=gen(7))
    expected = A._contrast(A._saturation(A._brightness(x, u[0], 1.0), u[1], 2.0), u[2], 0.5)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=0)


def test_color_family_properties_on_grayscale() -> None:
    x = images(n=32, c=1)
    out = dsa_family(x, "color", generator=gen(0))
    shift = (out.mean((1, 2, 3)) - x.mean((1, 2, 3)))
    assert ((shift >= -0.5) & (shift < 0.5)).all()  # brightness (U - 0.5) * 1.0
    xc = x - x.mean((1, 2, 3), keepdim=True)
    oc = out - out.mean((1, 2, 3), keepdim=True)
    slope = (oc * xc).sum((1, 2, 3)) / (xc * xc).sum((1, 2, 3))
    torch.testing.assert_close(oc, xc * slope.view(-1, 1, 1, 1), atol=1e-5, rtol=0)  # per-sample affine
    assert ((slope >= 0.5 - 1e-5) & (slope < 1.5)).all()  # contrast U + 0.5
    assert shift.unique().numel() == 32 and slope.unique().numel() == 32


@pytest.mark.parametrize("family", DSA_FAMILIES)
def test_parameters_differ_between_samples_of_a_batch(family: str) -> None:
    x = images(n=1).expand(16, -1, -1, -1).contiguous()
    out = dsa_family(x, family, generator=gen(0))
    distinct = {tuple(o.flatten().tolist()) for o in out}
    assert len(distinct) >= (2 if family == "flip" else 8)


# --- shapes, dtypes, autocast, gradients --------------------------------------------------------------------

@pytest.mark.parametrize("family", DSA_FAMILIES)
@pytest.mark.parametrize("shape", [(1, 3, 32, 32), (3, 1, 28, 28), (2, 3, 10, 13), (1, 1, 1, 1)])
def test_shapes_and_dtypes_preserved(family: str, shape: tuple[int, ...]) -> None:
    for dtype in (torch.float32, torch.float64, torch.bfloat16):
        x = torch.rand(shape, generator=gen(0)).to(dtype)
        out = dsa_family(x, family, generator=gen(1))
        assert out.shape == x.shape and out.dtype == dtype
        assert torch.isfinite(out.float()).all()


@pytest.mark.parametrize("family", DSA_FAMILIES)
def test_bfloat16_matches_float32_up_to_rounding(family: str) -> None:
    x = images(n=8).bfloat16()
    out = dsa_family(x, family, generator=gen(2))
    ref = dsa_family(x.float(), family, generator=gen(2))
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), ref, atol=2e-2, rtol=1e-2)


def test_affine_under_bfloat16_autocast_keeps_a_float32_grid() -> None:
    x = images(n=4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = dsa_family(x, "scale", generator=gen(0), config=DSAConfig(scale=1.0))
        out_bf = dsa(x.bfloat16(), generator=gen(0), config=DSAConfig(strategy="rotate", rotate_deg=0.0))
    assert out.dtype == torch.float32 and out_bf.dtype == torch.bfloat16
    torch.testing.assert_close(out, x, atol=1e-5, rtol=0)
    torch.testing.assert_close(out_bf, x.bfloat16(), atol=0, rtol=0)


@pytest.mark.parametrize("family", DSA_FAMILIES)
def test_differentiable_with_respect_to_images(family: str) -> None:
    x = images(n=4).requires_grad_(True)
    out = dsa_family(x, family, generator=gen(0))
    (out * torch.arange(out.numel()).view_as(out).float()).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_batch_of_one() -> None:
    x = images(n=1)
    for seed in range(12):
        out = dsa(x, generator=gen(seed))
        assert out.shape == x.shape


# --- validation ---------------------------------------------------------------------------------------------

def test_unknown_family_lists_valid_names() -> None:
    with pytest.raises(ValueError, match="color, crop, cutout, flip, scale, rotate"):
        DSAConfig(strategy="color_blur")
    with pytest.raises(ValueError, match="valid ones are color, crop"):
        dsa_family(images(), "blur", generator=gen())
    with pytest.raises(ValueError, match="unknown DSA family"):
        DSAConfig(strategy="")


@pytest.mark.parametrize("kwargs", [{"scale": 0.9}, {"flip_p": 1.5}, {"brightness": -1.0}, {"cutout": 2.0},
                                    {"rotate_deg": float("nan")}])
def test_invalid_config_values(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        DSAConfig(**kwargs)


def test_invalid_inputs() -> None:
    with pytest.raises(TypeError, match="Generator"):
        dsa(images(), generator=None)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="floating"):
        dsa(torch.zeros(2, 3, 4, 4, dtype=torch.uint8), generator=gen())
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        dsa(torch.zeros(3, 4, 4), generator=gen())
    assert DSAConfig().families == DSA_FAMILIES and DSAConfig(strategy="none").families == ()


# --- ZCA ----------------------------------------------------------------------------------------------------

def correlated(n: int, c: int = 3, h: int = 2, w: int = 2, seed: int = 0) -> torch.Tensor:
    g = gen(seed)
    d = c * h * w
    mix = torch.randn(d, d, generator=g) / math.sqrt(d) + torch.eye(d)
    return (torch.randn(n, d, generator=g) @ mix + 0.3).reshape(n, c, h, w)


def test_zca_matches_kornia_formula() -> None:
    x = correlated(40)
    zca = fit_zca(x, eps=0.1)
    flat = x.reshape(40, -1).double().numpy()
    cov = np.cov(flat, rowvar=False)  # unbiased, like kornia
    u, s, _ = np.linalg.svd(cov)
    expected = u @ np.diag(1 / np.sqrt(s + 0.1)) @ u.T
    np.testing.assert_allclose(zca.matrix.numpy(), expected, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(zca.inverse_matrix.numpy(), u @ np.diag(np.sqrt(s + 0.1)) @ u.T, rtol=1e-4,
                               atol=1e-5)
    np.testing.assert_allclose(zca.mean.numpy().ravel(), flat.mean(0), atol=1e-6)
    assert zca.mean.shape == (3, 2, 2) and zca.eps == 0.1
    assert torch.allclose(fit_zca(x, eps=0.1, chunk=7).matrix, zca.matrix, atol=1e-6)


def test_zca_whitens_to_identity_covariance() -> None:
    x = correlated(3000)
    z = fit_zca(x, eps=1e-5).apply(x).reshape(3000, -1).double()
    torch.testing.assert_close(z.mean(0), torch.zeros(12, dtype=torch.float64), atol=1e-4, rtol=0)
    torch.testing.assert_close(torch.cov(z.T), torch.eye(12, dtype=torch.float64), atol=1e-3, rtol=0)
    # with a large eps the whitened variance along eigenvector v is S / (S + eps)
    flat = x.reshape(3000, -1).double()
    s, v = torch.linalg.eigh(torch.cov(flat.T))
    zc = fit_zca(x, eps=0.1).apply(x).reshape(3000, -1).double()
    var = ((zc - zc.mean(0)) @ v).var(0)
    torch.testing.assert_close(var, s / (s + 0.1), atol=1e-4, rtol=1e-4)


def test_zca_invert_undoes_apply_and_state_dict_round_trips(tmp_path) -> None:
    x = correlated(200)
    zca = fit_zca(x)
    torch.testing.assert_close(zca.invert(zca.apply(x)), x, atol=1e-4, rtol=1e-4)
    save_tensors(tmp_path / "zca.safetensors", zca.state_dict())
    loaded = ZCA.from_state_dict(load_tensors(tmp_path / "zca.safetensors")[0])
    for name in ("mean", "matrix", "inverse_matrix"):
        assert torch.equal(getattr(loaded, name), getattr(zca, name))
    assert loaded.eps == zca.eps
    assert torch.equal(loaded.apply(x[:5]), zca.apply(x[:5]))
    assert zca.apply(x.double()).dtype == torch.float64


def test_zca_errors() -> None:
    zca = fit_zca(correlated(20))
    with pytest.raises(ValueError, match="fitted on images of shape"):
        zca.apply(torch.zeros(2, 3, 4, 4))
    with pytest.raises(ValueError, match="at least 2"):
        fit_zca(correlated(1))
    with pytest.raises(TypeError, match="floating"):
        fit_zca(torch.zeros(4, 3, 2, 2, dtype=torch.uint8))
    with pytest.raises(ValueError, match="eps"):
        fit_zca(correlated(20), eps=0.0)
    with pytest.raises(ValueError, match="missing"):
        ZCA.from_state_dict({"mean": zca.mean})
