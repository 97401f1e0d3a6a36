"""Batched DSA (``softlabels.augment.dsa``) against a naive per-sample Python loop of the same ops.

Run: ``python benchmarks/augment.py [--quick] [--device cuda] [--threads 1]``. For each image shape and
each family (and the full one-family-per-batch ``dsa``, 12 batches per repetition) it prints images/s of
both versions (median of ``--reps`` repetitions, same run, same seeds) and the speed-up. On a shared,
busy CPU the multi-threaded batched ops stall on their thread pool; ``--threads 1`` gives steadier numbers.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import time
from collections.abc import Callable
from functools import partial

import torch
import torch.nn.functional as F

from softlabels.augment import DSA_FAMILIES, DSAConfig, dsa, dsa_family

# --- naive reference: one sample at a time, parameters drawn per sample ------------------------------------


def _u(g: torch.Generator, device: torch.device) -> float:
    return float(torch.rand(1, generator=g, device=device))


def _ri(lo: int, hi: int, g: torch.Generator, device: torch.device) -> int:
    return int(torch.randint(lo, hi, (1,), generator=g, device=device))


def loop_color(xi: torch.Tensor, g: torch.Generator, cfg: DSAConfig) -> torch.Tensor:
    xi = xi + (_u(g, xi.device) - 0.5) * cfg.brightness
    m = xi.mean(dim=1, keepdim=True)
    xi = (xi - m) * (_u(g, xi.device) * cfg.saturation) + m
    m = xi.mean()
    return (xi - m) * (_u(g, xi.device) + cfg.contrast) + m


def loop_crop(xi: torch.Tensor, g: torch.Generator, cfg: DSAConfig) -> torch.Tensor:
    _, _, h, w = xi.shape
    sh, sw = int(h * cfg.crop_pad + 0.5), int(w * cfg.crop_pad + 0.5)
    dy, dx = _ri(-sh, sh + 1, g, xi.device), _ri(-sw, sw + 1, g, xi.device)
    out = torch.zeros_like(xi)
    ys, ye = max(0, -dy), min(h, h - dy)
    xs, xe = max(0, -dx), min(w, w - dx)
    if ys < ye and xs < xe:
        out[..., ys:ye, xs:xe] = xi[..., ys + dy:ye + dy, xs + dx:xe + dx]
    return out


def loop_cutout(xi: torch.Tensor, g: torch.Generator, cfg: DSAConfig) -> torch.Tensor:
    _, _, h, w = xi.shape
    sh, sw = int(h * cfg.cutout + 0.5), int(w * cfg.cutout + 0.5)
    cy = _ri(0, h + (1 - sh % 2), g, xi.device) - sh // 2
    cx = _ri(0, w + (1 - sw % 2), g, xi.device) - sw // 2
    out = xi.clone()
    out[..., max(cy, 0):max(cy + sh, 0), max(cx, 0):max(cx + sw, 0)] = 0
    return out


def loop_flip(xi: torch.Tensor, g: torch.Generator, cfg: DSAConfig) -> torch.Tensor:
    return xi.flip(3) if _u(g, xi.device) < cfg.flip_p else xi.clone()


def _loop_affine(xi: torch.Tensor, theta: list[list[float]]) -> torch.Tensor:
    t = torch.tensor([theta], dtype=torch.float32, device=xi.device)
    grid = F.affine_grid(t, list(xi.shape), align_corners=True)
    return F.grid_sample(xi, grid, align_corners=True)


def loop_scale(xi: torch.Tensor, g: torch.Generator, cfg: DSAConfig) -> torch.Tensor:
    lo = 1.0 / cfg.scale
    sx = _u(g, xi.device) * (cfg.scale - lo) + lo
    sy = _u(g, xi.device) * (cfg.scale - lo) + lo
    return _loop_affine(xi, [[sx, 0.0, 0.0], [0.0, sy, 0.0]])


def loop_rotate(xi: torch.Tensor, g: torch.Generator, cfg: DSAConfig) -> torch.Tensor:
    a = (_u(g, xi.device) - 0.5) * 2 * cfg.rotate_deg * math.pi / 180
    c, s = math.cos(a), math.sin(a)
    return _loop_affine(xi, [[c, s, 0.0], [-s, c, 0.0]])


LOOP_FNS: dict[str, Callable[[torch.Tensor, torch.Generator, DSAConfig], torch.Tensor]] = {
    "color": loop_color, "crop": loop_crop, "cutout": loop_cutout,
    "flip": loop_flip, "scale": loop_scale, "rotate": loop_rotate,
}


def loop_family(x: torch.Tensor, family: str, g: torch.Generator, *, cfg: DSAConfig) -> torch.Tensor:
    fn = LOOP_FNS[family]
    return torch.cat([fn(x[i:i + 1], g, cfg) for i in range(x.shape[0])])


def loop_dsa(x: torch.Tensor, g: torch.Generator, *, cfg: DSAConfig) -> torch.Tensor:
    families = cfg.families
    family = families[_ri(0, len(families), g, x.device)]
    return loop_family(x, family, g, cfg=cfg)


# --- timing -------------------------------------------------------------------------------------------------


def _call_dsa_family(x: torch.Tensor, family: str, cfg: DSAConfig, g: torch.Generator) -> torch.Tensor:
    return dsa_family(x, family, generator=g, config=cfg)


def _call_dsa(x: torch.Tensor, cfg: DSAConfig, g: torch.Generator) -> torch.Tensor:
    return dsa(x, generator=g, config=cfg)


def median_seconds(fn: Callable[[torch.Generator], object], device: torch.device, reps: int, warmup: int,
                   calls: int = 1) -> float:
    """Median over ``reps`` of the time of ``calls`` calls; call k of repetition r uses seed r * calls + k,
    so both versions see the same parameters and the same family sequence."""
    times = []
    for r in range(warmup + reps):
        gens = [torch.Generator(device=device).manual_seed(r * calls + k) for k in range(calls)]
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        for g in gens:
            fn(g)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if r >= warmup:
            times.append(time.perf_counter() - t0)
    return statistics.median(times) / calls


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="few repetitions (smoke run)")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--reps", type=int, default=None, help="timed repetitions (default 21, 5 with --quick)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (CPU)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    reps = args.reps or (5 if args.quick else 21)
    warmup = 2 if args.quick else 5
    device = torch.device(args.device)
    cfg = DSAConfig()
    load = f" load={os.getloadavg()[0]:.1f}" if hasattr(os, "getloadavg") else ""
    print(f"device={device} threads={torch.get_num_threads()}{load} batch={args.batch} reps={reps} (median)")
    print(f"{'shape':>9} {'op':>7} {'loop img/s':>12} {'dsa img/s':>12} {'speed-up':>9}")
    for c in (1, 3):
        x = torch.rand(args.batch, c, 32, 32, generator=torch.Generator().manual_seed(c)).to(device)
        shape = f"{c}x32x32"
        for name in (*DSA_FAMILIES, "dsa"):
            if name == "dsa":
                loop_fn = partial(loop_dsa, x, cfg=cfg)
                dsa_fn = partial(_call_dsa, x, cfg)
            else:
                loop_fn = partial(loop_family, x, name, cfg=cfg)
                dsa_fn = partial(_call_dsa_family, x, name, cfg)
            calls = 12 if name == "dsa" else 1  # a repetition of dsa mixes ~2 batches of each family
            t_loop = median_seconds(loop_fn, device, reps, warmup, calls)
            t_dsa = median_seconds(dsa_fn, device, reps, warmup, calls)
            n = args.batch
            print(f"{shape:>9} {name:>7} {n / t_loop:>12.0f} {n / t_dsa:>12.0f} {t_loop / t_dsa:>8.1f}x")


if __name__ == "__main__":
    main()
