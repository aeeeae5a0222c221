"""Equilibria found numerically from the model file agree with Richardson's closed form."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from armsdyn.analysis import (
    _compiled_flows,
    _Flows,
    _initial_state,
    analyse,
    classify,
    feedback_stocks,
    numerical_jacobian,
    summarise,
)
from armsdyn.config import Experiment, Scenario, load_config, parse_config
from armsdyn.ensemble import FallbackWarning, compile_model
from armsdyn.model import load_model
from armsdyn.richardson import PARAMETER_NAMES, Richardson
from tests.conftest import CONFIGS, MODELS, write_config

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


# ------------------------------------------------------------------ the compiled engine against PySD
#: Shipped experiment configs (calibration configs are not experiments) whose analysis runs
#: through PySD in seconds; the larger models' configs are checked equilibrium by equilibrium below.
SMALL_CONFIGS = ["richardson.toml", "richardson_1909_four_nations.toml", "triad.toml"]
LARGE_CONFIGS = [
    "security_views.toml",
    "disarmament_vs_knowledge.toml",
    "knowledge_loops.toml",
    "knowledge_sensitivity.toml",
    "knowledge_sweep.toml",
]


def _numbers(table: pd.DataFrame) -> list[str]:
    return [c for c in table.columns if table[c].dtype.kind == "f"]


@pytest.mark.slow
@pytest.mark.parametrize("config", SMALL_CONFIGS)
def test_compiled_analysis_equals_pysds(config: str) -> None:
    exp = load_config(CONFIGS / config)
    assert exp.engine == "compiled"
    # PySD takes 5-30 s per config: two scenarios of each (a baseline and a variant) keep CI in budget.
    exp = replace(exp, scenarios=exp.scenarios[:2])
    compiled = analyse(exp)
    reference = analyse(replace(exp, engine="pysd"))
    assert list(compiled["scenario"]) == list(reference["scenario"])
    assert list(compiled["verdict"]) == list(reference["verdict"])
    assert list(compiled["starts"]) == list(reference["starts"])
    for column in _numbers(reference):
        np.testing.assert_allclose(compiled[column], reference[column], rtol=1e-6, atol=1e-9, err_msg=column)
    np.testing.assert_allclose(np.array(list(compiled["jacobian"])), np.array(list(reference["jacobian"])),
                               rtol=1e-6, atol=1e-9)  # fmt: skip


_ANALYSED: dict[tuple[Any, ...], pd.DataFrame] = {}


def _analysed(exp: Experiment) -> pd.DataFrame:
    """:func:`analyse` of `exp`, each scenario's rows computed once per process for its model, time and parameters.

    A scenario's rows depend on nothing else (each starts its own seeded root finder), and the
    knowledge configs share their model, time and most scenarios: the tests of those configs (one
    xdist group, so one worker) analyse each distinct scenario once.
    """
    parts = []
    for scenario in exp.scenarios:
        key = (exp.model.sha256, exp.time, repr(sorted(scenario.parameters.items())))
        if key not in _ANALYSED:
            _ANALYSED[key] = analyse(replace(exp, scenarios=(scenario,)))
        parts.append(_ANALYSED[key].assign(scenario=scenario.name))
    table = pd.concat(parts, ignore_index=True)
    table.attrs = dict(parts[0].attrs)
    return table


_PYSD_RATES: dict[tuple[Any, ...], tuple[np.ndarray, np.ndarray]] = {}


def _pysd_rates(
    exp: Experiment, scenario: Scenario, names: list[str], states: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """PySD's initial state of `scenario` and its rates at `states`, once per process for the same inputs."""
    key = (exp.model.sha256, exp.time, repr(sorted(scenario.parameters.items())), tuple(names), states.tobytes())
    if key not in _PYSD_RATES:
        flows = _Flows(exp.model, scenario, exp.time, names)
        _PYSD_RATES[key] = (_initial_state(exp, scenario, names), flows(states))
    return _PYSD_RATES[key]


@pytest.mark.slow
@pytest.mark.parametrize(
    "config",
    [
        pytest.param(c, marks=pytest.mark.xdist_group("analysis:knowledge")) if "knowledge" in c else c
        for c in LARGE_CONFIGS
    ],
)
def test_compiled_equilibria_of_larger_models_are_pysds(config: str) -> None:
    # PySD's root finding takes many minutes on these 20- and 30-stock models, so PySD checks the
    # engine's answer instead: its rates at the initial state and at random states, and at one
    # equilibrium the engine found its rates vanish and its Jacobian is the engine's.
    exp = load_config(CONFIGS / config)
    table = _analysed(exp)
    names = feedback_stocks(exp.model)
    labels = table.attrs["stocks"]
    found = table[table["verdict"] != "no equilibrium found"]
    scenario = next((s for s in exp.scenarios if s.name in set(found["scenario"])), exp.scenarios[0])
    rates, x0 = _compiled_flows(exp, compile_model(exp.model.path, backend="numpy"), scenario, names)
    states = np.vstack([x0, x0 * np.random.default_rng(2).uniform(0.5, 2.0, size=(2, x0.size))])
    pysd_x0, pysd_rates = _pysd_rates(exp, scenario, names, states)
    np.testing.assert_array_equal(x0, pysd_x0)
    np.testing.assert_allclose(rates(states), pysd_rates, rtol=1e-9, atol=1e-12)
    for row in found[found["scenario"] == scenario.name].head(1).to_dict("records"):
        flows = _Flows(exp.model, scenario, exp.time, names)
        x = np.array([row[s] for s in labels])
        assert np.max(np.abs(flows(x))) <= 10 * row["max_rate"] + 1e-9
        jac = numerical_jacobian(flows, x, np.maximum(np.abs(x0), 1.0))
        np.testing.assert_allclose(np.array(row["jacobian"]), jac, rtol=1e-6, atol=1e-9)


def test_rates_agree_with_pysd_at_a_batch_of_states() -> None:
    # The security-dilemma model: subscripted stocks, SMOOTH-like perception stocks settled on the
    # set state, a cumulative stock held at its own initial value; random states around the initial one.
    exp = load_config(CONFIGS / "security_views.toml")
    scenario = exp.scenarios[-1]
    names = feedback_stocks(exp.model)
    flows = _Flows(exp.model, scenario, exp.time, names)
    x0 = _initial_state(exp, scenario, names)
    rng = np.random.default_rng(1)
    states = x0 * rng.uniform(0.2, 3.0, size=(6, x0.size)) + rng.uniform(0, 5, size=(6, x0.size))
    rates, compiled_x0 = _compiled_flows(exp, compile_model(exp.model.path, backend="numpy"), scenario, names)
    np.testing.assert_array_equal(compiled_x0, x0)
    batch = rates(states)
    assert batch.shape == states.shape
    np.testing.assert_allclose(batch, flows(states), rtol=1e-9, atol=1e-12)
    np.testing.assert_array_equal(rates(states[2]), batch[2])  # one state or a batch: the same numbers


UNSUPPORTED_MDL = """{UTF-8}
stock = INTEG(k * (target - stock), 1) ~~|
k = 0.5 ~~|
target = 4 ~~|
horizon = 5 ~~|
INITIAL TIME = 0 ~~|
FINAL TIME = horizon * 2 ~~|
TIME STEP = 0.25 ~~|
SAVEPER = 1 ~~|
"""


def test_analysis_falls_back_to_pysd_naming_the_construct(tmp_path: Path) -> None:
    # A FINAL TIME computed from a model variable is not compiled: PySD evaluates the rates, warned once.
    model = tmp_path / "controls.mdl"
    model.write_text(UNSUPPORTED_MDL, encoding="utf-8")
    scenarios = '[[scenarios]]\nname = "base"\n[[scenarios]]\nname = "fast"\nparameters = { k = 2 }\n'
    config = write_config(tmp_path, scenarios, model=model)
    with pytest.warns(FallbackWarning, match="FINAL TIME") as caught:
        table = analyse(config)
    assert len([w for w in caught if issubclass(w.category, FallbackWarning)]) == 1
    np.testing.assert_allclose(table["stock"], [4.0, 4.0], rtol=1e-9)
    np.testing.assert_allclose(table["eigenvalue 1 real"], [-0.5, -2.0], rtol=1e-6)
    assert list(table["verdict"]) == ["stable node", "stable node"]


def test_an_equilibrium_without_a_jacobian_is_reported_undetermined(tmp_path: Path) -> None:
    # At the origin the rate is 0/0 next to it (XIDZ would hide it; a plain division does not):
    # the equilibrium is found and reported, its stability undetermined instead of a LinAlgError.
    model = tmp_path / "ratio.mdl"
    model.write_text(
        "{UTF-8}\nx = INTEG(-x * SQRT(x) , 1) ~~|\nINITIAL TIME = 0 ~~|\nFINAL TIME = 1 ~~|\n"
        "TIME STEP = 0.5 ~~|\nSAVEPER = 0.5 ~~|\n",
        encoding="utf-8",
    )
    table = analyse(write_config(tmp_path, '[[scenarios]]\nname = "base"\n', model=model))
    assert len(table) == 1  # points where the rate is NaN are no equilibria
    origin = table.iloc[0]
    assert abs(origin["x"]) < 1e-20
    assert origin["verdict"] == "undetermined"
    assert np.isnan(origin["eigenvalue 1 real"])
    assert "not finite" in origin["note"]
