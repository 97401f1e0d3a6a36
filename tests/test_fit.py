"""Tests for softlabels.fit: parameter recovery on synthetic laws, inverses, fallbacks, input errors."""

from __future__ import annotations

import math

import numpy as np
import pytest

from softlabels.analysis.fit import (
    LOG_LINEAR_FORM,
    SATURATING_FORM,
    LawFit,
    fit_log_linear,
    fit_saturating,
    ipc_to_match,
)

IPC = np.array([1, 2, 3, 4, 6, 8, 10, 12, 16, 20, 40, 60, 100], dtype=float)


def law(x, a=0.9, b=0.6, alpha=0.5):
    return a - b * np.asarray(x, dtype=float) ** (-alpha)


def test_saturating_exact_recovery():
    fit = fit_saturating(IPC, law(IPC))
    assert fit.law == "saturating" and fit.form == SATURATING_FORM and fit.fallback is None
    assert fit.params["a"] == pytest.approx(0.9, abs=1e-5)
    assert fit.params["b"] == pytest.approx(0.6, abs=1e-5)
    assert fit.params["alpha"] == pytest.approx(0.5, abs=1e-5)
    assert fit.r2 == pytest.approx(1.0, abs=1e-9)
    assert fit.rmse < 1e-6 and fit.n == IPC.size and fit.ipc_range == (1.0, 100.0)


@pytest.mark.parametrize("params", [(0.9, 0.6, 0.5), (0.75, 0.3, 1.2), (0.95, 0.8, 0.25)])
def test_saturating_noisy_recovery(params):
    a, b, alpha = params
    rng = np.random.default_rng(0)
    y = law(IPC, a, b, alpha) + rng.normal(0.0, 0.003, IPC.size)
    fit = fit_saturating(IPC, y)
    assert fit.law == "saturating"
    assert fit.params["a"] == pytest.approx(a, abs=0.03)
    assert fit.params["b"] == pytest.approx(b, abs=0.03)
    assert fit.params["alpha"] == pytest.approx(alpha, rel=0.2)
    assert fit.r2 > 0.98


def test_saturating_percent_scale_and_repeated_points():
    x = np.repeat(IPC, 3)
    fit = fit_saturating(x, 100 * law(x))
    assert fit.params["a"] == pytest.approx(90.0, abs=1e-3)
    assert fit.n == x.size


def test_bounds_are_respected():
    # a decreasing series: the bounded law (b >= 0) cannot follow it; parameters stay in their box
    y = 0.8 - 0.01 * np.log(IPC)
    fit = fit_saturating(IPC, y)
    assert 0.0 <= fit.params["a"] <= 1.0 and fit.params["b"] >= 0.0 and 0.0 < fit.params["alpha"] <= 5.0


def test_inverse_of_predict_and_vector_predict():
    fit = fit_saturating(IPC, law(IPC))
    for x in (1.0, 2.5, 7.0, 50.0, 300.0):
        assert fit.inverse(fit.predict(x)) == pytest.approx(x, rel=1e-6)
    pred = fit.predict(IPC)
    assert isinstance(pred, np.ndarray) and pred.shape == IPC.shape
    assert isinstance(fit.predict(3), float)
    assert fit.inverse(0.95) == math.inf and fit.inverse(fit.params["a"]) == math.inf


def test_ipc_to_match():
    hard = fit_saturating(IPC, law(IPC))
    target = float(law(25.0))
    assert ipc_to_match(hard, target) == pytest.approx(25.0, rel=1e-5)
    assert ipc_to_match(hard, 0.99) == math.inf


def test_log_linear_exact_and_inverse():
    x = np.array([1, 2, 5, 10, 50], dtype=float)
    y = 0.3 + 0.07 * np.log(x)
    fit = fit_log_linear(x, y)
    assert fit.law == "log-linear" and fit.form == LOG_LINEAR_FORM
    assert fit.params["c"] == pytest.approx(0.3, abs=1e-12) and fit.params["d"] == pytest.approx(
        0.07, abs=1e-12
    )
    assert fit.r2 == pytest.approx(1.0)
    assert fit.inverse(fit.predict(17.0)) == pytest.approx(17.0)
    flat = fit_log_linear([1, 2, 4], [0.5, 0.5, 0.5])
    assert flat.inverse(0.6) == math.inf and flat.inverse(0.4) == 0.0


def test_fallback_with_two_points():
    fit = fit_saturating([1, 10], [0.4, 0.7])
    assert fit.law == "log-linear" and fit.fallback and "distinct" in fit.fallback
    assert fit.predict(10) == pytest.approx(0.7)


def test_floor_clips_predictions_and_bounds_asymptote():
    fit = fit_saturating(IPC, law(IPC), floor=0.1)
    assert fit.predict(0.01) == pytest.approx(0.1)  # the law itself is far below chance there
    assert fit.params["a"] >= 0.1


def test_to_dict_round_trips_the_numbers():
    fit = fit_saturating(IPC, law(IPC))
    d = fit.to_dict()
    assert d["form"] == SATURATING_FORM and set(d["params"]) == {"a", "b", "alpha"}
    assert isinstance(fit, LawFit)


@pytest.mark.parametrize(
    "ipc, acc, match",
    [
        ([1, 2, 3], [0.1, 0.2], "differ in length"),
        ([0, 2, 3], [0.1, 0.2, 0.3], "> 0"),
        ([-1, 2, 3], [0.1, 0.2, 0.3], "> 0"),
        ([1, 2, 3], [0.1, float("nan"), 0.3], "finite"),
        ([1, float("nan"), 3], [0.1, 0.2, 0.3], "finite"),
        ([], [], "at least one"),
    ],
)
def test_bad_input_errors(ipc, acc, match):
    with pytest.raises(ValueError, match=match):
        fit_saturating(ipc, acc)
    with pytest.raises(ValueError, match=match):
        fit_log_linear(ipc, acc)


def test_single_distinct_ipc_errors():
    with pytest.raises(ValueError, match="2 distinct"):
        fit_saturating([4, 4, 4], [0.1, 0.2, 0.3])


def test_predict_rejects_bad_ipc():
    fit = fit_log_linear([1, 2], [0.1, 0.2])
    with pytest.raises(ValueError):
        fit.predict(0)
    with pytest.raises(ValueError):
        fit.inverse(float("nan"))
