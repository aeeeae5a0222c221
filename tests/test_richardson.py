"""Richardson's model: PySD runs against the closed-form analysis."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr
from hypothesis import given, settings
from hypothesis import strategies as st

from armsdyn import Richardson, TimeSettings, load_model
from armsdyn.analysis import classify, find_equilibria, numerical_jacobian
from armsdyn.richardson import PARAMETER_NAMES, RichardsonN
from tests.conftest import MODELS

# (k, l, a, b, g, h, x0, y0) spanning the regimes: stable, runaway, spiral,
# asymmetric, oscillation-free degenerate-adjacent, and goodwill.
CASES = {
    "stable": (0.5, 0.5, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0),
    "runaway": (1.2, 1.2, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0),
    "spiral": (1.2, 1.2, 1.0, 1.0, -1.0, -1.0, 2.0, 2.0),
    "asymmetric": (0.9, 0.3, 0.6, 1.2, 1.5, 0.5, 3.0, 1.0),
    "goodwill": (0.5, 0.5, 1.0, 1.0, -0.5, -0.5, 4.0, 4.0),
    "near_degenerate": (1.0, 0.99, 1.0, 1.0, 0.2, 0.1, 0.5, 2.0),
}


def _params(case: tuple[float, ...]) -> dict[str, float]:
    return dict(zip(PARAMETER_NAMES.values(), case, strict=True))


def _simulate(case: tuple[float, ...], step: float, final: float = 10.0) -> tuple[np.ndarray, np.ndarray]:
    model = load_model(MODELS / "richardson.mdl")
    time = TimeSettings(initial=0.0, final=final, step=step, saveper=0.5)
    out = model.simulate(_params(case), time, ["arms X", "arms Y"])
    return time.save_times(), np.vstack([out["arms X"], out["arms Y"]])


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_euler_converges_to_exact_solution_at_first_order(case: tuple[float, ...]) -> None:
    rich = Richardson(*case[:6])
    errors = []
    # Steps down to 1/64 of a year: the error ratios are within 3% of 2 there (1/128 adds nothing but cost).
    for step in (1 / 16, 1 / 32, 1 / 64):
        t, sim = _simulate(case, step)
        exact = rich.solve(case[6], case[7], t)
        scale = np.abs(exact).max()
        errors.append(np.abs(sim - exact).max() / scale)
    assert errors[-1] < 0.02
    # Euler's global error is O(dt): halving the step halves the error.
    ratios = np.array(errors[:-1]) / np.array(errors[1:])
    np.testing.assert_allclose(ratios, 2.0, rtol=0.1)


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_equilibrium_is_a_fixed_point(case: tuple[float, ...]) -> None:
    rich = Richardson(*case[:6])
    eq = rich.equilibrium()
    assert eq is not None
    np.testing.assert_allclose(rich.jacobian @ eq + [rich.g, rich.h], 0.0, atol=1e-9)
    # The exact solution started at the equilibrium stays there.
    np.testing.assert_allclose(rich.solve(eq[0], eq[1], [0.0, 5.0])[:, -1], eq, rtol=1e-8)


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_regime_matches_the_simulated_trajectory(case: tuple[float, ...]) -> None:
    """The closed-form verdict must describe what PySD actually produces."""
    rich = Richardson(*case[:6])
    regime = rich.regime(case[6], case[7])
    t, sim = _simulate(case, 1 / 64, final=60.0)
    eq = rich.equilibrium()
    start_gap = np.abs(np.array(case[6:8]) - eq).max()
    end_gap = np.abs(sim[:, -1] - eq).max()
    if regime.startswith("stable"):
        assert rich.determinant > 0
        # Distance to a stable equilibrium decays at least as fast as the slowest
        # mode, up to the conditioning of the eigenvectors (and Euler's small error).
        slowest = rich.eigenvalues().real.max()
        cond = np.linalg.cond(np.linalg.eig(rich.jacobian)[1])
        assert end_gap < start_gap
        assert end_gap <= 1.05 * cond * start_gap * np.exp(slowest * t[-1]) + 1e-9
        assert (regime == "stable equilibrium") == bool(np.all(eq >= 0))
    elif regime == "runaway race":
        assert np.all(sim[:, -1] > 10 * np.abs(sim[:, 0]).max())
    elif regime == "disarmament spiral":
        assert np.all(sim[:, -1] < -10 * np.abs(sim[:, 0]).max())
    else:
        pytest.fail(f"unexpected regime {regime!r}")


def test_stability_follows_ab_against_kl() -> None:
    rng = np.random.default_rng(1)
    for _ in range(200):
        k, l_, a, b = rng.uniform(0.05, 2.0, 4)
        rich = Richardson(k, l_, a, b, 1.0, 1.0)
        expected = "stable" if a * b > k * l_ else "saddle"
        assert rich.stability() == expected


def test_degenerate_system_has_no_equilibrium_but_an_exact_solution() -> None:
    rich = Richardson(1.0, 1.0, 1.0, 1.0, 1.0, 1.0)  # ab == kl
    assert rich.is_degenerate()
    assert rich.equilibrium() is None
    assert rich.regime(1.0, 1.0) == "degenerate"
    t, sim = _simulate((1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0), 1 / 128)
    exact = rich.solve(1.0, 1.0, t)
    # x - y stays 0 and x + y grows linearly at rate g + h: both are exact here.
    np.testing.assert_allclose(exact[0, -1], 1.0 + 1.0 * t[-1], rtol=1e-9)
    np.testing.assert_allclose(sim, exact, rtol=1e-9)


# ---------------------------------------------------------------- N states


def _random_system(rng: np.random.Generator, n: int, stable: bool) -> RichardsonN:
    """Non-negative reactions; fatigue above every row sum (stable by Gershgorin) or below the smallest (unstable)."""
    k = rng.uniform(0.05, 1.0, (n, n))
    np.fill_diagonal(k, 0.0)
    rows = k.sum(axis=1)
    a = rows + rng.uniform(0.1, 1.0, n) if stable else np.full(n, rows.min() * rng.uniform(0.2, 0.9))
    g = rng.uniform(-2.0, 3.0, n)
    return RichardsonN(k, a, g)


@settings(max_examples=60, deadline=None)
@given(n=st.integers(2, 4), stable=st.booleans(), seed=st.integers(0, 2**32 - 1))
def test_n_state_closed_form_matches_numerical_equilibria(n: int, stable: bool, seed: int) -> None:
    model = _random_system(np.random.default_rng(seed), n, stable)
    if stable:
        assert model.stability() == "stable"
    else:
        assert model.stability() != "stable"
    eq = model.equilibrium()
    assert eq is not None
    np.testing.assert_allclose(model.jacobian @ eq + model.g, 0.0, atol=1e-9 * max(1.0, np.abs(eq).max()))

    def rates(x: np.ndarray) -> np.ndarray:
        # One state (1-D) or a batch, a row each: find_equilibria passes both.
        return x @ model.jacobian.T + model.g

    roots = find_equilibria(rates, np.ones(n), seed=seed % 1000)
    assert len(roots) == 1
    np.testing.assert_allclose(roots[0][0], eq, rtol=1e-6, atol=1e-8)
    jac = numerical_jacobian(rates, eq)
    ev = np.linalg.eigvals(jac).astype(complex)
    np.testing.assert_allclose(np.sort_complex(ev), np.sort_complex(model.eigenvalues()), atol=1e-6)
    assert classify(ev, float(np.abs(jac).max()))[0] == model.stability()


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(0.05, 2.0), min_size=4, max_size=4), st.floats(-2, 2), st.floats(-2, 2))
def test_two_state_special_case_agrees_with_the_two_state_closed_form(
    coefficients: list[float], g: float, h: float
) -> None:
    k, l_, a, b = coefficients
    two = Richardson(k, l_, a, b, g, h)
    n = RichardsonN.from_two(two)
    assert n.stability() == two.stability()
    np.testing.assert_allclose(n.determinant, two.determinant, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(n.eigenvalues(), two.eigenvalues(), atol=1e-12)
    if two.stability() != "degenerate":
        np.testing.assert_allclose(n.equilibrium(), two.equilibrium(), rtol=1e-9, atol=1e-9)
        assert n.regime([1.0, 2.0]) == two.regime(1.0, 2.0)
    np.testing.assert_allclose(n.solve([1.0, 2.0], [0.0, 1.5]), two.solve(1.0, 2.0, [0.0, 1.5]), rtol=1e-9)


def _as_params(model: RichardsonN, states: tuple[str, ...], x0: np.ndarray) -> dict[str, object]:
    def da(values: np.ndarray, dims: tuple[str, ...]) -> xr.DataArray:
        return xr.DataArray(values, coords={d: list(states) for d in dims}, dims=dims)

    return {
        "defence coefficient k": da(model.k, ("state", "rival")),
        "fatigue coefficient a": da(model.a, ("state",)),
        "grievance g": da(model.g, ("state",)),
        "initial arms": da(x0, ("state",)),
    }


@pytest.mark.parametrize(
    ("model_file", "stable", "seed"),
    [
        ("richardson_n.mdl", True, 3),
        ("richardson_n.mdl", False, 4),
        ("richardson_n_1909.mdl", True, 5),
        ("richardson_n_1909.mdl", False, 6),
    ],
)
def test_n_state_closed_form_matches_the_simulation(model_file: str, stable: bool, seed: int) -> None:
    """PySD's Euler run of the subscripted model converges to the exact solution at first order."""
    model_n = load_model(MODELS / model_file)
    states = model_n.variable("arms").dims[0][1]
    rng = np.random.default_rng(seed)
    rich = _random_system(rng, len(states), stable)
    rich = RichardsonN(rich.k, rich.a, rich.g, states)
    x0 = rng.uniform(0.5, 3.0, len(states))
    errors = []
    for step in (1 / 16, 1 / 32):
        time = TimeSettings(initial=0.0, final=3.0, step=step, saveper=0.5)
        sim = model_n.simulate(_as_params(rich, states, x0), time, ["arms"])["arms"].T
        exact = rich.solve(x0, time.save_times())
        errors.append(np.abs(sim - exact).max() / np.abs(exact).max())
    assert errors[-1] < 0.1
    assert errors[0] / errors[1] == pytest.approx(2.0, rel=0.15)  # Euler's error halves with the step
    # Where the trajectory goes is what the closed form says. Euler's fixed point is the equilibrium
    # whatever the step, and a step with |1 + step * eigenvalue| < 1 for every eigenvalue converges
    # to it (asserted below): the long run needs no finer step than that, PySD's subscripted steps
    # being the cost here.
    eq = rich.equilibrium()
    time = TimeSettings(initial=0.0, final=60.0, step=1 / 4, saveper=60.0)
    final = model_n.simulate(_as_params(rich, states, x0), time, ["arms"])["arms"][-1]
    regime = rich.regime(x0)
    if stable:
        assert regime.startswith("stable")
        assert np.all(np.abs(1 + time.step * rich.eigenvalues()) < 1)
        np.testing.assert_allclose(final, eq, rtol=1e-4, atol=1e-6)
    elif regime == "runaway race":
        assert np.all(final > 10 * np.abs(x0).max())
    else:
        assert regime == "disarmament spiral"
        assert np.all(final < -10 * np.abs(x0).max())
