"""Richardson's model: PySD runs against the closed-form analysis."""

from __future__ import annotations

import numpy as np
import pytest

from armsdyn import Richardson, TimeSettings, load_model
from armsdyn.richardson import PARAMETER_NAMES
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
    for step in (1 / 32, 1 / 64, 1 / 128):
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
