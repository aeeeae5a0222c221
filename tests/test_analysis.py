"""Equilibria found numerically from the model file agree with Richardson's closed form."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from armsdyn.analysis import analyse, classify, feedback_stocks, summarise
from armsdyn.config import parse_config
from armsdyn.model import load_model
from armsdyn.richardson import PARAMETER_NAMES, Richardson
from tests.conftest import CONFIGS, MODELS

#: (k, l, a, b, g, h): stable, runaway saddle, disarmament saddle, asymmetric, goodwill, and a
#: stable focus (l < 0: Y disarms as X arms, so the approach oscillates).
CASES = [
    (0.5, 0.5, 1.0, 1.0, 1.0, 1.0),
    (1.2, 1.2, 1.0, 1.0, 1.0, 1.0),
    (1.2, 1.2, 1.0, 1.0, -1.0, -1.0),
    (0.9, 0.3, 0.6, 1.2, 1.5, 0.5),
    (0.5, 0.5, 1.0, 1.0, -0.5, -0.5),
    (1.0, -1.0, 0.3, 0.2, 2.0, 1.0),
    (0.2, 0.1, 0.05, 0.04, 3.0, -1.0),
]


def _experiment(model: Path, cases: list[tuple[float, ...]]):
    scenarios = [
        {"name": f"case{i}", "parameters": {PARAMETER_NAMES[s]: v for s, v in zip("klabgh", case, strict=True)}}
        for i, case in enumerate(cases)
    ]
    return parse_config({"experiment": {"name": "eq", "model": str(model)}, "scenarios": scenarios})


@pytest.mark.parametrize("model", [MODELS / "richardson.mdl", MODELS / "richardson.xmile"])
def test_equilibria_agree_with_the_closed_form(model: Path) -> None:
    table = analyse(_experiment(model, CASES))
    assert list(table["scenario"]) == [f"case{i}" for i in range(len(CASES))]  # exactly one equilibrium each
    for case, row in zip(CASES, table.to_dict("records"), strict=True):
        closed = Richardson(*case)
        np.testing.assert_allclose([row["arms X"], row["arms Y"]], closed.equilibrium(), rtol=1e-7, atol=1e-9)
        ev = closed.eigenvalues()
        np.testing.assert_allclose([row["eigenvalue 1 real"], row["eigenvalue 2 real"]], ev.real, atol=1e-6)
        np.testing.assert_allclose(
            sorted([row["eigenvalue 1 imag"], row["eigenvalue 2 imag"]]), sorted(ev.imag), atol=1e-6
        )
        np.testing.assert_allclose(row["jacobian"], closed.jacobian, atol=1e-7)
        assert row["stability"] == closed.stability()
        assert row["starts"] >= 1
    assert table.loc[5, "verdict"] == "stable focus"
    assert table.loc[1, "verdict"] == "saddle"
    assert table.loc[0, "verdict"] == "stable node"


def test_shipped_richardson_config() -> None:
    table = analyse(CONFIGS / "richardson.toml")
    by = table.set_index("scenario")
    assert by.loc["runaway", "stability"] == "saddle"
    assert by.loc["stable", "arms X"] == pytest.approx(2.0)
    text = summarise(table)
    assert "runaway[0]: arms X = -5, arms Y = -5" in text


def test_no_isolated_equilibrium_is_reported() -> None:
    # ab = kl with grievances that do not balance: the nullclines are parallel, no equilibrium exists.
    table = analyse(_experiment(MODELS / "richardson.mdl", [(1.0, 1.0, 1.0, 1.0, 1.0, 2.0)]))
    assert table.loc[0, "verdict"] == "no equilibrium found"


def test_accumulators_are_not_part_of_the_state() -> None:
    stocks = feedback_stocks(load_model(MODELS / "security_dilemma.mdl"))
    assert "hardware" in stocks
    assert not any(s.startswith("cumulative") for s in stocks)


@pytest.mark.parametrize(
    ("eigenvalues", "expected"),
    [
        ([-1, -2], ("stable", "stable node")),
        ([-1 + 1j, -1 - 1j], ("stable", "stable focus")),
        ([1 + 1j, 1 - 1j], ("unstable", "unstable focus")),
        ([1, 2], ("unstable", "unstable node")),
        ([-1, 2], ("saddle", "saddle")),
        ([1j, -1j], ("non-hyperbolic", "centre")),
        ([0, -1], ("non-hyperbolic", "non-hyperbolic")),
    ],
)
def test_classify(eigenvalues: list[complex], expected: tuple[str, str]) -> None:
    assert classify(np.array(eigenvalues)) == expected
