"""Running experiments: the Dataset's shape, scenario isolation, numerical faults."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

import armsdyn
from armsdyn import NumericalWarning, Richardson, load_config
from tests.conftest import CONFIGS, write_config


@pytest.fixture(scope="module")
def richardson_ds() -> xr.Dataset:
    return armsdyn.run(CONFIGS / "richardson.toml")


def test_dataset_layout(richardson_ds: xr.Dataset) -> None:
    ds = richardson_ds
    assert ds["arms_x"].dims == ("scenario", "time")
    assert ds["arms_x"].attrs["long_name"] == "arms X"
    assert ds["arms_x"].attrs["units"] == "arms"
    assert ds["arms_x"].attrs["description"].startswith("Armaments of state X")
    assert ds["time"].attrs["units"] == "Year"
    np.testing.assert_allclose(ds["time"].values, np.arange(0, 30.0001, 0.25))
    # Parameter values are coordinates on scenario: select and read them back.
    runaway = ds.sel(scenario="runaway")
    assert float(runaway["defence_coefficient_k"]) == 1.2
    assert ds["defence_coefficient_k"].attrs["long_name"] == "defence coefficient k"


def test_scenarios_are_isolated_from_each_other() -> None:
    """PySD keeps earlier run(params=...) values; a reversed order must not change results."""
    exp = load_config(CONFIGS / "richardson.toml")
    forward = armsdyn.run(exp)
    backward = armsdyn.run(replace(exp, scenarios=exp.scenarios[::-1]))
    xr.testing.assert_identical(forward, backward.sel(scenario=forward["scenario"].values))


def test_each_scenario_matches_the_exact_solution(richardson_ds: xr.Dataset) -> None:
    ds = richardson_ds
    for scenario in ds["scenario"].values:
        row = ds.sel(scenario=scenario)
        rich = Richardson(
            *(
                float(row[k])
                for k in (
                    "defence_coefficient_k",
                    "defence_coefficient_l",
                    "fatigue_coefficient_a",
                    "fatigue_coefficient_b",
                    "grievance_g",
                    "grievance_h",
                )
            )
        )
        exact = rich.solve(float(row["initial_arms_x"]), float(row["initial_arms_y"]), ds["time"].values)
        sim = np.vstack([row["arms_x"].values, row["arms_y"].values])
        assert np.abs(sim - exact).max() <= 0.02 * np.abs(exact).max(), scenario


def test_time_series_parameter_is_interpolated(tmp_path: Path) -> None:
    text = (
        '[time]\nfinal = 10\nstep = 0.125\nsaveper = 1\n[[scenarios]]\nname = "ramp"\n'
        'parameters = { "grievance g" = [[0, 0.0], [10, 5.0]] }\n[output]\nvariables = ["grievance g", "arms X"]\n'
    )
    ds = armsdyn.run(write_config(tmp_path, text))
    np.testing.assert_allclose(ds["grievance_g"].sel(scenario="ramp").values, np.arange(11) * 0.5)
    assert np.isnan(float(armsdyn.results.parameter_values(ds, "grievance g").sel(scenario="ramp")))
    table = armsdyn.compute_metrics(ds)
    assert table.loc["ramp", "regime"] == "not analysed: a parameter varies over time"


def test_overflow_is_reported_not_raised(tmp_path: Path) -> None:
    text = """
[time]
final = 100
step = 0.125
saveper = 0.5
[[scenarios]]
name = "explodes"
parameters = { "defence coefficient k" = 2000, "defence coefficient l" = 2000 }
[[scenarios]]
name = "calm"
"""
    with pytest.warns(
        NumericalWarning, match=r"scenario 'explodes': 'arm.*' became (inf|-inf|nan) at time [0-9.]+ Year"
    ):
        ds = armsdyn.run(write_config(tmp_path, text))
    faults = armsdyn.find_faults(ds)
    assert [f.scenario for f in faults] == ["explodes"]
    fault = faults[0]
    # The reported time is the first saved time with a non-finite value.
    values = ds[next(k for k, v in ds.data_vars.items() if v.attrs["long_name"] == fault.variable)]
    series = values.sel(scenario="explodes").values
    first_bad = ds["time"].values[np.flatnonzero(~np.isfinite(series))[0]]
    assert fault.time == first_bad
    assert np.isfinite(ds.sel(scenario="calm").to_array()).all()
    table = armsdyn.compute_metrics(ds)
    assert table.loc["explodes", "fault time"] == fault.time
    assert table.loc["explodes", "fault"] == "non-finite"
    assert table.loc["calm", "fault"] == "none"


def test_metrics_agree_with_the_simulated_finals(richardson_ds: xr.Dataset) -> None:
    table = armsdyn.compute_metrics(richardson_ds)
    assert list(table.index) == list(richardson_ds["scenario"].values)
    np.testing.assert_allclose(table["final arms X"], richardson_ds["arms_x"].isel(time=-1).values)
    stable = table.loc["stable"]
    assert stable["stability"] == "stable"
    # A stable run ends at the closed-form equilibrium.
    assert stable["final arms X"] == pytest.approx(stable["equilibrium X"], rel=1e-4)
    assert {"runaway race", "disarmament spiral", "stable equilibrium"} <= set(table["regime"])
