"""The closed-form metric columns, computed for every scenario at once, equal the scalar analysis scenario by scenario.

`compute_metrics` analyses Richardson's model (two states and N) with stacked
LAPACK calls (:func:`armsdyn.richardson.closed_forms`); the reference is what
it did before, one scenario at a time: :func:`richardson_parameters` and the
:class:`Richardson` class (:func:`richardson_n_parameters` and
:class:`RichardsonN`). Both read the same real runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import xarray as xr

import armsdyn
from armsdyn.ensemble import run_ensemble
from armsdyn.metrics import NOT_ANALYSED, compute_metrics, richardson_n_parameters, richardson_parameters
from armsdyn.richardson import PARAMETER_NAMES
from tests.conftest import MODELS, write_config

TIME = "[time]\nfinal = 1\nstep = 0.125\nsaveper = 0.5\n"
STATES = ("USA", "Russia", "China")

# (k, l, a, b, g, h, x0, y0) for the branches of the analysis a random draw rarely reaches.
SPECIAL = {
    "degenerate": (1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0),
    "balanced": (1.2, 1.2, 1.0, 1.0, 1.0, 1.0, -5.0, -5.0),  # starts at the saddle's equilibrium
    "unstable": (0.1, 0.1, -0.5, -0.5, 1.0, 2.0, 1.0, 1.0),
    "stable_focus": (-1.0, 1.0, 0.1, 0.1, 1.0, 1.0, 2.0, 0.0),
    "unstable_focus": (-1.0, 1.0, -0.1, -0.1, 1.0, 1.0, 2.0, 0.0),
    "spiral": (1.2, 1.2, 1.0, 1.0, -1.0, -1.0, 2.0, 2.0),
    "goodwill": (0.5, 0.5, 1.0, 1.0, -0.5, -0.5, 4.0, 4.0),
}


def _toml_value(value: float) -> str:
    return repr(float(value))


def two_state_config(tmp: Path, draws: int) -> Path:
    rng = np.random.default_rng(7)
    cases: dict[str, tuple[float, ...]] = dict(SPECIAL)
    for i in range(draws):
        coefficients = rng.uniform(0.05, 2.0, 4)
        cases[f"draw{i}"] = (*coefficients, *rng.uniform(-2.0, 3.0, 2), *rng.uniform(-3.0, 5.0, 2))
    lines = [TIME]
    for name, case in cases.items():
        values = ", ".join(f'"{p}" = {_toml_value(v)}' for p, v in zip(PARAMETER_NAMES.values(), case, strict=True))
        lines.append(f'[[scenarios]]\nname = "{name}"\nparameters = {{ {values} }}\n')
    lines.append('[[scenarios]]\nname = "ramp"\nparameters = { "grievance g" = [[0, 0.0], [1, 5.0]] }\n')
    return write_config(tmp, "\n".join(lines), name="two_state")


def n_state_config(tmp: Path, draws: int) -> Path:
    rng = np.random.default_rng(8)
    cases: dict[str, dict[str, float]] = {}
    for i in range(draws):
        k = rng.uniform(0.0, 1.0, (3, 3))  # asymmetric: complex eigenvalues in some draws
        a = rng.uniform(0.2, 2.0, 3)
        cases[f"draw{i}"] = _n_parameters(k, a, rng.uniform(-50, 150, 3), rng.uniform(0, 1000, 3))
    # A - K singular: every row of A - K sums to zero.
    k = np.full((3, 3), 0.5) - 0.5 * np.eye(3)
    cases["degenerate"] = _n_parameters(k, np.full(3, 1.0), np.array([10.0, 20.0, 30.0]), np.full(3, 100.0))
    lines = [TIME]
    for name, params in cases.items():
        values = ", ".join(f'"{p}" = {_toml_value(v)}' for p, v in params.items())
        lines.append(f'[[scenarios]]\nname = "{name}"\nparameters = {{ {values} }}\n')
    lines.append('[[scenarios]]\nname = "series"\nparameters = { "grievance g[China]" = [[0, 10.0], [1, 50.0]] }\n')
    return write_config(tmp, "\n".join(lines), model=MODELS / "richardson_n.mdl", name="n_state")


def _n_parameters(k: np.ndarray, a: np.ndarray, g: np.ndarray, x0: np.ndarray) -> dict[str, float]:
    params = {f"defence coefficient k[{s}, {r}]": k[i, j] for i, s in enumerate(STATES) for j, r in enumerate(STATES)}
    params |= {f"fatigue coefficient a[{s}]": a[i] for i, s in enumerate(STATES)}
    params |= {f"grievance g[{s}]": g[i] for i, s in enumerate(STATES)}
    return params | {f"initial arms[{s}]": x0[i] for i, s in enumerate(STATES)}


def reference_two_state(ds: xr.Dataset) -> pd.DataFrame:
    """The columns as the per-scenario loop computed them."""
    rows: dict[str, dict[str, Any]] = {}
    for scenario in map(str, ds["scenario"].values):
        found = richardson_parameters(ds, scenario)
        if found is None:
            rows[scenario] = {"regime": NOT_ANALYSED}
            continue
        model, x0, y0 = found
        eq = model.equilibrium()
        ev = model.eigenvalues()
        rows[scenario] = {
            "determinant ab-kl": model.determinant,
            "equilibrium X": np.nan if eq is None else eq[0],
            "equilibrium Y": np.nan if eq is None else eq[1],
            "eigenvalue 1 real": ev[0].real,
            "eigenvalue 1 imag": ev[0].imag,
            "eigenvalue 2 real": ev[1].real,
            "eigenvalue 2 imag": ev[1].imag,
            "stability": model.stability(),
            "regime": model.regime(x0, y0),
        }
    return pd.DataFrame.from_dict(rows, orient="index")


def reference_n_state(ds: xr.Dataset) -> pd.DataFrame:
    rows: dict[str, dict[str, Any]] = {}
    for scenario in map(str, ds["scenario"].values):
        found = richardson_n_parameters(ds, scenario)
        if found is None:
            rows[scenario] = {"regime": NOT_ANALYSED}
            continue
        model, x0 = found
        eq = model.equilibrium()
        row: dict[str, Any] = {"determinant det(A-K)": model.determinant}
        for i, state in enumerate(model.states):
            row[f"equilibrium {state}"] = np.nan if eq is None else eq[i]
        for i, value in enumerate(model.eigenvalues(), start=1):
            row[f"eigenvalue {i} real"] = value.real
            row[f"eigenvalue {i} imag"] = value.imag
        row["stability"] = model.stability()
        row["regime"] = model.regime(x0)
        rows[scenario] = row
    return pd.DataFrame.from_dict(rows, orient="index")


def assert_same_columns(table: pd.DataFrame, reference: pd.DataFrame) -> None:
    table = table.loc[reference.index, list(reference.columns)]
    for column in reference.columns:
        got, want = table[column].to_numpy(), reference[column].to_numpy()
        if column in ("stability", "regime"):
            assert [str(v) for v in got] == [str(v) for v in want], column
        else:
            # The same LAPACK routines on the same numbers: equal to the last bit, bar the summation order.
            np.testing.assert_allclose(got.astype(float), want.astype(float), rtol=1e-13, atol=1e-13, err_msg=column)


@pytest.mark.parametrize("engine", ["compiled", "pysd"])
def test_two_state_columns_equal_the_scalar_analysis(tmp_path: Path, engine: str) -> None:
    config = two_state_config(tmp_path, 60 if engine == "compiled" else 5)
    config.write_text(config.read_text().replace("[experiment]\n", f'[experiment]\nengine = "{engine}"\n', 1))
    ds = armsdyn.run(config)
    table = compute_metrics(ds)
    reference = reference_two_state(ds)
    assert_same_columns(table, reference)
    # Every branch of the analysis is exercised.
    regimes = set(table["regime"])
    assert {"stable equilibrium", "stable disarmament", "runaway race", "disarmament spiral"} <= regimes
    assert {"degenerate", "balanced", NOT_ANALYSED} <= regimes
    assert {"stable", "saddle", "unstable", "degenerate"} <= set(table["stability"].dropna())
    assert table.loc["stable_focus", "eigenvalue 2 imag"] != 0
    # A scenario whose parameter varies over time is named, its numbers left empty.
    assert table.loc["ramp", "regime"] == NOT_ANALYSED
    assert table.loc["ramp", ["determinant ab-kl", "equilibrium X", "eigenvalue 1 real"]].isna().all()
    assert pd.isna(table.loc["ramp", "stability"])


def test_n_state_columns_equal_the_scalar_analysis(tmp_path: Path) -> None:
    ds = armsdyn.run(n_state_config(tmp_path, 40))
    table = compute_metrics(ds)
    reference = reference_n_state(ds)
    assert_same_columns(table, reference)
    assert {"stable", "saddle", "degenerate"} <= set(table["stability"].dropna())
    assert (table.filter(like="eigenvalue").filter(like="imag") != 0).any().any()
    assert table.loc["degenerate", "regime"] == "degenerate"
    assert table.loc["series", "regime"] == NOT_ANALYSED
    assert np.isnan(table.loc["degenerate", "equilibrium USA"])


def test_a_run_ensemble_gets_the_columns_of_its_sampled_parameters() -> None:
    """An ensemble's run dim: the same analysis of each run's sampled parameters."""
    rng = np.random.default_rng(3)
    n = 500
    samples = {name: rng.uniform(0.05, 2.0, n) for name in PARAMETER_NAMES.values()}
    samples["grievance g"] = rng.uniform(-2.0, 3.0, n)
    ds = run_ensemble(MODELS / "richardson.mdl", samples, variables=["arms X"])
    table = compute_metrics(ds)
    stable = samples["fatigue coefficient a"] * samples["fatigue coefficient b"] > (
        samples["defence coefficient k"] * samples["defence coefficient l"]
    )
    np.testing.assert_array_equal(table["stability"].to_numpy() == "stable", stable)
    for run in rng.choice(n, 20, replace=False):
        found = richardson_parameters(ds, int(run))
        assert found is not None
        model, x0, y0 = found
        assert table.loc[int(run), "regime"] == model.regime(x0, y0)
        assert table.loc[int(run), "determinant ab-kl"] == model.determinant
