"""The numba backend's vectorisable exp, log and pow agree with numpy to a few ulp."""

from __future__ import annotations

import itertools
import re

import numpy as np
import pytest

pytest.importorskip("numba", reason="numba is not installed (the 'fast' extra)")

from numba import njit

from armsdyn.ensemble._vecmath import exp, log, power

ULP = np.finfo(float).eps  # relative spacing of doubles at 1
SPECIAL = [0.0, -0.0, 1.0, -1.0, 2.0, -2.0, 0.5, -0.5, 3.0, -3.0, np.inf, -np.inf, np.nan, 1e-310, -1e-310, 1e300, 2.5]


@njit(error_model="numpy")
def _exp_all(x: np.ndarray, out: np.ndarray) -> None:
    for i in range(x.shape[0]):
        out[i] = exp(x[i])


@njit(error_model="numpy")
def _log_all(x: np.ndarray, out: np.ndarray) -> None:
    for i in range(x.shape[0]):
        out[i] = log(x[i])


@njit(error_model="numpy")
def _power_all(x: np.ndarray, y: np.ndarray, out: np.ndarray) -> None:
    for i in range(x.shape[0]):
        out[i] = power(x[i], y[i])


def relative_error(got: np.ndarray, want: np.ndarray) -> np.ndarray:
    return np.abs(got - want) / np.abs(want)


def test_exp_within_two_ulp_and_special_values_exact() -> None:
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.uniform(-708, 709, 200_000), rng.uniform(-1, 1, 200_000), np.linspace(-40, 40, 4001)])
    out = np.empty_like(x)
    _exp_all(x, out)
    assert relative_error(out, np.exp(x)).max() <= 2 * ULP
    # Subnormal results keep their absolute accuracy; overflow and underflow as numpy.
    edges = np.array([-745.2, -745.1, -740.0, -720.3, -708.5, 709.78, 709.8, 710.0, *SPECIAL])
    out = np.empty_like(edges)
    _exp_all(edges, out)
    with np.errstate(over="ignore"):
        want = np.exp(edges)
    np.testing.assert_allclose(out, want, rtol=2 * ULP, atol=5e-324, equal_nan=True)


def test_log_within_one_ulp_and_special_values_exact() -> None:
    rng = np.random.default_rng(1)
    x = np.concatenate([np.exp(rng.uniform(-744, 709, 200_000)), rng.uniform(0.5, 2, 200_000), [5e-324, 1e-310, 2.0]])
    x = x[x != 1.0]
    out = np.empty_like(x)
    _log_all(x, out)
    assert relative_error(out, np.log(x)).max() <= ULP
    special = np.array(SPECIAL)
    out = np.empty_like(special)
    _log_all(special, out)
    with np.errstate(divide="ignore", invalid="ignore"):
        want = np.log(special)
    np.testing.assert_array_equal(out, want)


def test_power_special_cases_match_numpy() -> None:
    pairs = np.array(list(itertools.product(SPECIAL, SPECIAL)))
    x, y = pairs[:, 0].copy(), pairs[:, 1].copy()
    out = np.empty(len(pairs))
    _power_all(x, y, out)
    with np.errstate(all="ignore"):
        want = x**y
    # Same NaNs, infinities, zeros and signs; finite values within the accuracy bound below.
    np.testing.assert_array_equal(np.isnan(out), np.isnan(want))
    np.testing.assert_array_equal(out[~np.isfinite(want)], want[~np.isfinite(want)])
    np.testing.assert_array_equal(np.signbit(out)[~np.isnan(want)], np.signbit(want)[~np.isnan(want)])
    np.testing.assert_allclose(out, want, rtol=1e-13, equal_nan=True)


def test_power_error_grows_only_with_y_log_x() -> None:
    rng = np.random.default_rng(2)
    x = np.exp(rng.uniform(-30, 30, 200_000))
    y = rng.uniform(-20, 20, 200_000)
    keep = np.abs(y * np.log(x)) < 700  # finite, normal results
    x, y = x[keep], y[keep]
    out = np.empty_like(x)
    _power_all(x, y, out)
    bound = (3 + np.abs(y * np.log(x))) * ULP
    assert np.all(relative_error(out, x**y) <= bound)
    # Whole exponents of negative bases: real, with the sign of an odd power.
    base = -rng.uniform(0.1, 10, 1000)
    whole = rng.integers(-9, 10, 1000).astype(float)
    out = np.empty_like(base)
    _power_all(base, whole, out)
    np.testing.assert_allclose(out, base**whole, rtol=1e-14)


def test_loops_calling_them_vectorise() -> None:
    x = np.linspace(0.1, 2, 64)
    _power_all(x, x, np.empty_like(x))
    ir = _power_all.inspect_llvm(_power_all.signatures[0])
    assert re.search(r"fdiv <\d+ x double>", ir), "the loop over samples did not vectorise"


@pytest.mark.parametrize("kind", ["interpolate", "extrapolate", "hold_backward"])
def test_unrolled_lookup_tables_give_the_numpy_backends_values_to_the_bit(kind: str) -> None:
    from armsdyn.ensemble import _runtime
    from armsdyn.ensemble._vecmath import table_function

    reference = {
        "interpolate": _runtime.lookup,
        "extrapolate": _runtime.lookup_extrapolate,
        "hold_backward": _runtime.lookup_hold,
    }[kind]
    rng = np.random.default_rng(3)
    for n in (1, 2, 3, 7, 64):
        xs = np.sort(rng.choice(np.arange(-100, 100.0), n, replace=False)) * 0.37
        ys = rng.normal(size=n) * 10
        table = table_function(kind, xs, ys)

        @njit(error_model="numpy")
        def lookup_all(x: np.ndarray, out: np.ndarray) -> None:
            for i in range(x.shape[0]):
                out[i] = table(x[i])  # noqa: B023  (compiled now, with this table)

        # Random points, every table point, just either side of each, beyond both ends, specials.
        x = np.concatenate(
            [rng.uniform(-45, 45, 2000), xs, np.nextafter(xs, -np.inf), np.nextafter(xs, np.inf), SPECIAL]
        )
        out = np.empty_like(x)
        lookup_all(x, out)
        with np.errstate(invalid="ignore"):
            want = reference(xs, ys, x)
        np.testing.assert_array_equal(out, want, err_msg=f"{kind}, {n} points")
        if n == 64:
            ir = lookup_all.inspect_llvm(lookup_all.signatures[0])
            assert re.search(r"select <\d+ x i1>", ir), "the loop over samples did not vectorise"
