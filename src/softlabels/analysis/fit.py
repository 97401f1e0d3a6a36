"""Scaling-law fits of student accuracy against images per class (IPC), with scipy's ``curve_fit``.

Two laws (our choice; the paper's exact formula was not available, so nothing here claims to match it):

- saturating power law ``acc = a - b * ipc^(-alpha)``: ``a`` is the asymptote (accuracy with unlimited
  images), ``b >= 0`` the gap at IPC 1 and ``alpha > 0`` how fast the gap closes;
- log-linear ``acc = c + d * ln(ipc)``: the fallback with fewer than 3 distinct IPC or a failed fit.

``fit_saturating`` falls back to the log-linear law by itself and records which law it used (``law``,
``form`` and ``fallback``), so a study can always report a fit.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["LawFit", "SATURATING_FORM", "LOG_LINEAR_FORM", "fit_saturating", "fit_log_linear", "ipc_to_match"]

SATURATING_FORM = "acc = a - b * ipc^(-alpha)"
LOG_LINEAR_FORM = "acc = c + d * ln(ipc)"
_ALPHA_MAX = 5.0
_ALPHA_MIN = 1e-3


@dataclass(frozen=True)
class LawFit:
    """A fitted law. ``law`` is ``"saturating"`` or ``"log-linear"``; ``form`` its formula; ``params`` the
    fitted constants; ``r2`` / ``rmse`` the goodness of fit on the ``n`` points; ``fallback`` says why a
    saturating fit fell back to the log-linear law (``None`` when it did not); ``floor`` clips predictions
    from below (e.g. chance accuracy)."""

    law: str
    form: str
    params: dict[str, float]
    r2: float
    rmse: float
    n: int
    ipc_range: tuple[float, float]
    fallback: str | None = None
    floor: float | None = None

    def predict(self, ipc: float | Sequence[float] | np.ndarray) -> float | np.ndarray:
        """Predicted accuracy at ``ipc`` (scalar in, float out; array in, array out)."""
        x = np.asarray(ipc, dtype=np.float64)
        if np.any(~np.isfinite(x)) or np.any(x <= 0):
            raise ValueError("ipc must be finite and > 0")
        p = self.params
        if self.law == "saturating":
            y = p["a"] - p["b"] * x ** (-p["alpha"])
        else:
            y = p["c"] + p["d"] * np.log(x)
        if self.floor is not None:
            y = np.maximum(y, self.floor)
        return float(y) if y.ndim == 0 else y

    def inverse(self, acc: float) -> float:
        """The IPC at which the law reaches ``acc``: ``inf`` when it never does (``acc >= a`` for the
        saturating law; a flat or decreasing log-linear law), ``0.0`` when every IPC does."""
        acc = float(acc)
        if not math.isfinite(acc):
            raise ValueError(f"acc must be finite, got {acc}")
        p = self.params
        if self.law == "saturating":
            a, b, alpha = p["a"], p["b"], p["alpha"]
            if acc >= a:
                return math.inf
            if b <= 0:
                return 0.0
            return float((b / (a - acc)) ** (1.0 / alpha))
        c, d = p["c"], p["d"]
        if d <= 0:
            return math.inf if acc > c else 0.0
        z = (acc - c) / d
        return math.inf if z > 700 else float(math.exp(z))

    def to_dict(self) -> dict[str, Any]:
        return {"law": self.law, "form": self.form, "params": dict(self.params), "r2": self.r2,
                "rmse": self.rmse, "n": self.n, "ipc_range": list(self.ipc_range), "fallback": self.fallback,
                "floor": self.floor}


def _check_xy(ipc: Sequence[float], acc: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(ipc, dtype=np.float64).ravel()
    y = np.asarray(acc, dtype=np.float64).ravel()
    if x.shape != y.shape:
        raise ValueError(f"ipc and acc differ in length ({x.size} vs {y.size})")
    if x.size == 0:
        raise ValueError("need at least one (ipc, acc) point to fit")
    if not np.all(np.isfinite(x)) or not np.all(np.isfinite(y)):
        raise ValueError("ipc and acc must be finite (no NaN or infinity); drop missing cells first")
    if np.any(x <= 0):
        raise ValueError(f"ipc must be > 0, got {x[x <= 0][0]:g}")
    return x, y


def _goodness(y: np.ndarray, pred: np.ndarray) -> tuple[float, float]:
    ss_res = float(np.sum((y - pred) ** 2))
    ss_tot = float(np.sum((y - y.mean()) ** 2))
    rmse = math.sqrt(ss_res / y.size)
    if ss_tot <= 1e-24:  # constant data: a perfect fit has r2 = 1, anything else is undefined
        return (1.0 if rmse <= 1e-8 else math.nan), rmse
    return 1.0 - ss_res / ss_tot, rmse


def fit_log_linear(ipc: Sequence[float], acc: Sequence[float], *, floor: float | None = None,
                   fallback: str | None = None) -> LawFit:
    """Least-squares ``acc = c + d * ln(ipc)``; needs at least 2 distinct IPC."""
    x, y = _check_xy(ipc, acc)
    if np.unique(x).size < 2:
        raise ValueError("a log-linear fit needs at least 2 distinct ipc values")
    design = np.stack([np.ones_like(x), np.log(x)], axis=1)
    (c, d), *_ = np.linalg.lstsq(design, y, rcond=None)
    r2, rmse = _goodness(y, c + d * np.log(x))
    return LawFit("log-linear", LOG_LINEAR_FORM, {"c": float(c), "d": float(d)}, r2, rmse, int(x.size),
                  (float(x.min()), float(x.max())), fallback, floor)


def _initial_guess(x: np.ndarray, y: np.ndarray, a_max: float) -> tuple[float, float, float]:
    """Grid over alpha; for each, (a, b) by linear least squares, clipped to the bounds."""
    best: tuple[float, tuple[float, float, float]] | None = None
    for alpha in np.geomspace(0.05, _ALPHA_MAX, 40):
        t = x ** (-alpha)
        design = np.stack([np.ones_like(t), -t], axis=1)
        (a, b), *_ = np.linalg.lstsq(design, y, rcond=None)
        a, b = float(np.clip(a, 0.0, a_max)), max(float(b), 0.0)
        err = float(np.sum((y - (a - b * t)) ** 2))
        if best is None or err < best[0]:
            best = (err, (a, b, float(alpha)))
    assert best is not None
    return best[1]


def fit_saturating(ipc: Sequence[float], acc: Sequence[float], *, floor: float | None = None) -> LawFit:
    """Bounded least-squares ``acc = a - b * ipc^(-alpha)`` with ``0 <= a <= A``, ``b >= 0`` and
    ``0 < alpha <= 5``, where ``A = 1`` for accuracies given as fractions (all <= 1) and
    ``1.5 * max(acc)`` otherwise (e.g. percent).

    ``floor`` (optional, e.g. chance accuracy ``1 / C``) is a lower bound for the asymptote and for
    predictions. With fewer than 3 distinct IPC, or when ``curve_fit`` fails, the log-linear law is fit
    instead and ``fallback`` says why.
    """
    from scipy.optimize import curve_fit

    x, y = _check_xy(ipc, acc)
    if floor is not None and not math.isfinite(float(floor)):
        raise ValueError(f"floor must be finite, got {floor}")
    if np.unique(x).size < 3:
        return fit_log_linear(x, y, floor=floor, fallback=f"only {np.unique(x).size} distinct ipc (< 3)")
    a_max = 1.0 if float(y.max()) <= 1.0 else 1.5 * float(y.max())
    a_min = 0.0 if floor is None else min(float(floor), a_max)
    p0 = _initial_guess(x, y, a_max)
    p0 = (min(max(p0[0], a_min), a_max), p0[1], min(max(p0[2], _ALPHA_MIN * 2), _ALPHA_MAX))

    def law(t: np.ndarray, a: float, b: float, alpha: float) -> np.ndarray:
        return a - b * t ** (-alpha)

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # OptimizeWarning for exactly-determined fits (n == 3)
            popt, _ = curve_fit(
                law, x, y, p0=p0, bounds=([a_min, 0.0, _ALPHA_MIN], [a_max, np.inf, _ALPHA_MAX]), maxfev=20000
            )
    except (RuntimeError, ValueError) as err:
        return fit_log_linear(x, y, floor=floor, fallback=f"curve_fit failed: {err}")
    if not np.all(np.isfinite(popt)):
        return fit_log_linear(x, y, floor=floor, fallback="curve_fit returned non-finite parameters")
    a, b, alpha = (float(v) for v in popt)
    r2, rmse = _goodness(y, law(x, a, b, alpha))
    return LawFit("saturating", SATURATING_FORM, {"a": a, "b": b, "alpha": alpha}, r2, rmse, int(x.size),
                  (float(x.min()), float(x.max())), None, floor)


def ipc_to_match(hard_fit: LawFit, target_acc: float) -> float:
    """The hard-label IPC the ``hard_fit`` law needs to reach ``target_acc`` (e.g. a soft-label accuracy);
    ``inf`` when the law never reaches it. Values outside ``hard_fit.ipc_range`` are extrapolations."""
    return hard_fit.inverse(target_acc)
