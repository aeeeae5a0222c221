"""Scenario overrides as one batch of the compiled engine (armsdyn.scenario_inputs.batch_inputs).

The split is checked on a small subscripted model with a graphical function, and the batch it gives
is run through the compiled engine and compared with PySD running each scenario on its own.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from armsdyn.ensemble import compile_model
from armsdyn.errors import ModelError
from armsdyn.model import Model, TimeSettings, load_model
from armsdyn.scenario_inputs import batch_inputs

#: Two states, a subscripted grievance, a scalar fatigue and a reaction read from a graphical function.
RACE = """{UTF-8}
state : A, B ~ ~ |
arms[state] = INTEG(reaction[state] - fatigue * arms[state] + grievance[state], initial arms[state])
	~	arms
	~	|
rival arms[state] = SUM(arms[state!]) - arms[state]
	~	arms
	~	|
reaction[state] = effect of threat(rival arms[state])
	~	arms/Year
	~	|
effect of threat(
	[(0,0)-(10,10)],(0,0),(2,1.5),(10,6))
	~	arms/Year
	~	|
grievance[state] = 1, 2
	~	arms/Year
	~	|
fatigue = 0.5
	~	1/Year
	~	|
initial arms[state] = 0, 1
	~	arms
	~	|
INITIAL TIME = 0
	~	Year
	~	|
FINAL TIME = 4
	~	Year
	~	|
TIME STEP = 0.125
	~	Year
	~	|
SAVEPER = 0.5
	~	Year
	~	|
"""

RAMP = ((0.0, 1.0), (2.0, 4.0))
STEEPER = pd.Series([0.0, 3.0, 9.0], index=[0.0, 2.0, 10.0])  # y indexed by x, as PySD takes a lookup


@pytest.fixture(scope="module")
def race(tmp_path_factory: pytest.TempPathFactory) -> Model:
    path = tmp_path_factory.mktemp("race") / "race.mdl"
    path.write_text(RACE, encoding="utf-8")
    return load_model(path)


def test_a_whole_subscripted_constant_is_split_into_its_elements_and_an_elements_own_value_wins(race: Model) -> None:
    samples, series, lookups = batch_inputs(
        race, [{"grievance": 3.0}, {"grievance[b]": 5.0, "Grievance": 4.0}, {"fatigue": 0.25}]
    )
    assert (series, lookups) == ({}, {})
    # One column per element in the model's spelling; where a run leaves it, the model file's value.
    assert sorted(samples) == ["fatigue", "grievance[A]", "grievance[B]"]
    np.testing.assert_array_equal(samples["grievance[A]"], [3.0, 4.0, 1.0])
    np.testing.assert_array_equal(samples["grievance[B]"], [3.0, 5.0, 2.0])
    np.testing.assert_array_equal(samples["fatigue"], [0.5, 0.5, 0.25])


def test_a_constant_any_run_gives_as_a_series_is_a_series_in_every_run(race: Model) -> None:
    as_pandas = pd.Series([2.0, 0.5], index=[0.0, 3.0])
    samples, series, _ = batch_inputs(race, [{"grievance[A]": RAMP}, {"grievance": 2.5}, {"fatigue": as_pandas}, {}])
    assert sorted(series) == ["fatigue", "grievance[A]"]
    # A number is a series of one point; None leaves the engine the model's own value.
    assert series["grievance[A]"] == [RAMP, ((0.0, 2.5),), None, None]
    assert series["fatigue"][:2] == [None, None]
    assert series["fatigue"][2] is as_pandas
    np.testing.assert_array_equal(samples["grievance[B]"], [2.0, 2.5, 2.0, 2.0])


def test_a_redrawn_lookup_is_a_table_per_run_and_a_number_for_it_is_refused(race: Model) -> None:
    samples, series, lookups = batch_inputs(race, [{}, {"effect of threat": STEEPER}])
    assert (samples, series) == ({}, {})
    assert list(lookups) == ["effect of threat"]
    assert lookups["effect of threat"][0] is None
    assert lookups["effect of threat"][1] is STEEPER
    with pytest.raises(
        ModelError, match=r"run 1 redraws lookup 'effect of threat' of model .*race\.mdl with the number 2\.0"
    ):
        batch_inputs(race, [{}, {"effect of threat": 2.0}])


def test_no_overrides_give_an_empty_batch_and_an_unknown_name_is_refused(race: Model) -> None:
    assert batch_inputs(race, [{}, {}]) == ({}, {}, {})
    with pytest.raises(KeyError, match="grievance"):
        batch_inputs(race, [{"grievance[C]": 1.0}])


def test_the_batch_runs_on_the_compiled_engine_as_pysd_runs_each_scenario(race: Model) -> None:
    scenarios = [
        {},
        {"grievance": 3.0},
        {"grievance": 4.0, "grievance[B]": 0.5, "fatigue": 0.25},
        {"grievance[A]": RAMP, "effect of threat": STEEPER},
        {"grievance": pd.Series([2.0, 0.0], index=[0.0, 3.0])},
    ]
    samples, series, lookups = batch_inputs(race, scenarios)
    time = TimeSettings(0.0, 4.0, 0.125, 0.5, "Year")
    ds = compile_model(race.path, backend="numpy").run(
        samples, time=time, variables=["arms"], series=series, lookups=lookups
    )
    for i, params in enumerate(scenarios):
        pysd = {k: _pandas(v) if isinstance(v, tuple) else v for k, v in params.items()}
        expected = race.simulate(pysd, time, ["arms"])["arms"]
        np.testing.assert_allclose(ds["arms"].isel(run=i).transpose("time", "state").values, expected, rtol=1e-9)
    # The scenarios differ, so the comparison tells them apart.
    finals = ds["arms"].isel(time=-1).transpose("run", "state").values
    assert len({tuple(np.round(row, 6)) for row in finals}) == len(scenarios)


def _pandas(pairs: tuple[tuple[float, float], ...]) -> pd.Series:
    times, values = zip(*pairs, strict=True)
    return pd.Series(values, index=times, dtype=float)
