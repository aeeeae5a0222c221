"""Loop-group attribution: knockout runs apportioned by the Shapley value (armsdyn.attribution).

Every test runs the real model files through the compiled engine or PySD. Known answers come from
the definition worked by hand on Richardson's equations, not from the code.
"""

from __future__ import annotations

import itertools
import json
import math
import re
from dataclasses import replace
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
import xarray as xr

from armsdyn.attribution import OTHER, attribute, knockout_model
from armsdyn.config import load_config
from armsdyn.ensemble import compile_model
from armsdyn.errors import ConfigError
from armsdyn.model import Model, TimeSettings, file_sha256, load_model
from armsdyn.pipeline import run_experiment
from armsdyn.specs import AttributionSpec, LoopGroup, Scenario
from tests.conftest import CONFIGS, MODELS, RACE_ATTRIBUTION, call_cli, write_config

RICHARDSON = MODELS / "richardson.mdl"
KNOWLEDGE = MODELS / "knowledge_engine.mdl"

ACTION_REACTION = LoopGroup("action-reaction", ("reaction of X", "reaction of Y"))
FATIGUE = LoopGroup("fatigue", ("fatigue of X", "fatigue of Y"))

#: From zero arms, so that the race has something to do in every scenario.
FROM_ZERO = {"initial arms X": 0.0, "initial arms Y": 0.0}


def _shares(ds: xr.Dataset, scenario: str, stock: str = "arms X") -> dict[str, float]:
    share = ds["attribution_share"].sel(scenario=scenario, attributed=stock)
    return {str(g): float(v) for g, v in zip(share["loop_group"].values, share.values, strict=True)}


@pytest.fixture(scope="module")
def richardson() -> Model:
    return load_model(RICHARDSON)


def test_an_ablated_action_reaction_loop_has_no_share_and_the_shares_sum_to_one(richardson: Model) -> None:
    spec = AttributionSpec(("arms X", "arms Y"), (ACTION_REACTION, FATIGUE), window=(0.0, 5.0))
    scenarios = {
        "race": FROM_ZERO,
        "no reaction": {**FROM_ZERO, "defence coefficient k": 0.0, "defence coefficient l": 0.0},
    }
    ds = attribute(richardson, spec, scenarios)
    race, ablated = _shares(ds, "race"), _shares(ds, "no reaction")
    # With k = l = 0 holding the reaction terms changes nothing, in any combination: exactly 0.
    assert ablated["action-reaction"] == 0.0
    assert race["action-reaction"] > 0.1
    for shares in (race, ablated):
        assert math.fsum(shares.values()) == pytest.approx(1.0, abs=1e-12)
    # Shapley values are changes of the stock: they and 'other' add up to its change.
    total = ds["attribution_change"].sum("loop_group")
    np.testing.assert_allclose(total.values, ds["stock_change"].values, rtol=1e-12)


def test_richardsons_action_reaction_share_is_the_one_worked_by_hand(richardson: Model) -> None:
    """Without fatigue (a = b = 0) and symmetric states, x' = k x + g.

    Cut (reaction held at k x0): x grows by (k x0 + g) T. Active: x(T) = (x0 + g/k) e^{kT} - g/k.
    The one group's Shapley value is the difference, so its share is 1 - (k x0 + g) T / (x(T) - x0).
    """
    k, g, x0, horizon = 0.3, 1.0, 2.0, 4.0
    params = {
        "defence coefficient k": k,
        "defence coefficient l": k,
        "fatigue coefficient a": 0.0,
        "fatigue coefficient b": 0.0,
        "grievance g": g,
        "grievance h": g,
        "initial arms X": x0,
        "initial arms Y": x0,
    }
    grown = (x0 + g / k) * math.exp(k * horizon) - g / k - x0
    expected = 1.0 - (k * x0 + g) * horizon / grown
    time = replace(richardson.time, step=1 / 1024, saveper=1 / 1024)
    spec = AttributionSpec(("arms X",), (ACTION_REACTION,), window=(0.0, horizon))
    shares = _shares(attribute(richardson, spec, {"s": params}, time=time), "s")
    assert shares["action-reaction"] == pytest.approx(expected, rel=1e-3)  # Euler's error at dt = 1/1024
    assert shares[OTHER] == pytest.approx(1.0 - expected, rel=1e-2)


def test_shares_do_not_change_when_the_arms_unit_is_rescaled(richardson: Model) -> None:
    spec = AttributionSpec(("arms X",), (ACTION_REACTION, FATIGUE), window=(0.0, 3.0))
    base = {"initial arms X": 2.0, "initial arms Y": 0.5, "grievance g": 1.0, "grievance h": 0.2}
    # Arms counted in thousandths: every level and every grievance (arms per year) times 1000.
    scaled = {key: 1000 * value for key, value in base.items()}
    ds = attribute(richardson, spec, {"base": base, "scaled": scaled})
    np.testing.assert_allclose(
        ds["attribution_share"].sel(scenario="scaled"), ds["attribution_share"].sel(scenario="base"), rtol=1e-9
    )
    np.testing.assert_allclose(
        ds["stock_change"].sel(scenario="scaled"), 1000 * ds["stock_change"].sel(scenario="base"), rtol=1e-9
    )


def test_shares_do_not_depend_on_saveper_and_converge_as_dt_halves(richardson: Model) -> None:
    spec = AttributionSpec(("arms X",), (ACTION_REACTION, FATIGUE), window=(0.0, 4.0))
    scenarios = {"s": FROM_ZERO}
    step = 1 / 16
    by_saveper = [
        attribute(richardson, spec, scenarios, time=replace(richardson.time, step=step, saveper=saveper))
        for saveper in (step, 0.5, 2.0)
    ]
    for ds in by_saveper[1:]:
        xr.testing.assert_identical(ds["attribution_share"], by_saveper[0]["attribution_share"])
    shares = [
        attribute(richardson, spec, scenarios, time=replace(richardson.time, step=dt, saveper=dt))[
            "attribution_share"
        ].values.ravel()
        for dt in (1 / 8, 1 / 16, 1 / 32, 1 / 64)
    ]
    gaps = [np.abs(b - a).max() for a, b in itertools.pairwise(shares)]
    # Euler is first order: each halving about halves the change.
    assert all(0.3 < later / earlier < 0.7 for earlier, later in itertools.pairwise(gaps)), gaps
    assert gaps[-1] < 0.03 * np.abs(shares[-1]).max()


def test_time_series_scenarios_run_on_the_compiled_engine_and_agree_with_pysd(richardson: Model) -> None:
    spec = AttributionSpec(("arms X", "arms Y"), (ACTION_REACTION, FATIGUE), window=(0.0, 2.0))
    # X's grievance rising over the window, Y's falling, beside a scenario of numbers only: each
    # number a series of one point in the one batch.
    scenarios = {
        "ramps": {
            **FROM_ZERO,
            "grievance g": pd.Series([1.0, 3.0], index=[0.0, 1.5]),
            "grievance h": pd.Series([2.0, 0.5], index=[0.0, 1.0]),
        },
        "numbers": {**FROM_ZERO, "grievance g": 2.0},
    }
    compiled = attribute(richardson, spec, scenarios)
    pysd = attribute(richardson, spec, scenarios, engine="pysd")
    assert (compiled.attrs["engine"], pysd.attrs["engine"]) == ("compiled", "pysd")
    for key in ("attribution_share", "attribution_change", "knockout_change", "stock_change"):
        np.testing.assert_allclose(compiled[key], pysd[key], rtol=1e-9, atol=1e-12)
    # The ramps matter (the shares differ from the constant scenario's) and sum to one.
    assert not np.allclose(
        compiled["attribution_share"].sel(scenario="ramps"), compiled["attribution_share"].sel(scenario="numbers")
    )
    np.testing.assert_allclose(compiled["attribution_share"].sum("loop_group"), 1.0, rtol=1e-12)
    # A constant series is the constant.
    flat = {"s": {**FROM_ZERO, "grievance g": pd.Series([2.0, 2.0], index=[0.0, 30.0])}}
    constant = attribute(richardson, spec, {"s": {**FROM_ZERO, "grievance g": 2.0}})
    np.testing.assert_allclose(
        attribute(richardson, spec, flat)["attribution_share"], constant["attribution_share"], rtol=1e-9
    )


@pytest.mark.parametrize("grievance", [5.0, ((0.0, 100.0), (1.0, -50.0))], ids=["number", "time-series"])
def test_a_whole_subscripted_override_beside_scenarios_without_it_runs_compiled_as_pysd_runs_it(
    grievance: float | tuple[tuple[float, float], ...],
) -> None:
    # One scenario overrides the whole of a subscripted constant, one leaves it, one sets an element
    # and one both (the element wins): the runs that leave an element take the model file's value.
    model = load_model(MODELS / "richardson_n.mdl")
    time = TimeSettings(0.0, 2.0, 0.0625, 0.0625, "Year")  # short: PySD's subscripted runs are slow
    spec = AttributionSpec(("arms",), (LoopGroup("action-reaction", ("reaction",)),), window=(0.0, 2.0))
    scenarios = [
        Scenario("whole", parameters={"grievance g": grievance}),
        Scenario("own"),
        Scenario("element", parameters={"grievance g[China]": 400.0}),
        Scenario("both", parameters={"grievance g": grievance, "grievance g[USA]": -100.0}),
    ]
    compiled = attribute(model, spec, scenarios, time=time)
    pysd = attribute(model, spec, scenarios, time=time, engine="pysd")
    assert (compiled.attrs["engine"], pysd.attrs["engine"]) == ("compiled", "pysd")
    for key in ("attribution_share", "attribution_change", "knockout_change", "stock_change"):
        np.testing.assert_allclose(compiled[key], pysd[key], rtol=1e-9, atol=1e-9)
    # Every scenario changes the stocks differently, so the comparison tells them apart.
    change = compiled["stock_change"].values
    assert len({tuple(np.round(row, 6)) for row in change}) == len(scenarios)


#: Richardson's model with X's reaction a graphical function of Y's arms, which a scenario redraws.
WITH_LOOKUP = """{UTF-8}
arms X= INTEG (reaction of X - fatigue of X + 1, 0)
	~	arms
	~	|
arms Y= INTEG (reaction of Y - fatigue of Y + 1, 0)
	~	arms
	~	|
reaction of X= effect of threat(arms Y)
	~	arms/Year
	~	|
effect of threat(
	[(0,0)-(10,10)],(0,0),(2,1.5),(10,6))
	~	arms/Year
	~	|
reaction of Y= 0.8 * arms X
	~	arms/Year
	~	|
fatigue of X= 0.5 * arms X
	~	arms/Year
	~	|
fatigue of Y= 0.5 * arms Y
	~	arms/Year
	~	|
INITIAL TIME = 0
	~	Year
	~	|
FINAL TIME = 4
	~	Year
	~	|
TIME STEP = 0.0625
	~	Year
	~	|
SAVEPER = 0.5
	~	Year
	~	|
"""


def test_a_redrawn_lookup_runs_on_the_compiled_engine_and_agrees_with_pysd(tmp_path: Path) -> None:
    path = tmp_path / "lookup_race.mdl"
    path.write_text(WITH_LOOKUP, encoding="utf-8")
    model = load_model(path)
    spec = AttributionSpec(("arms X",), (ACTION_REACTION, FATIGUE), window=(0.0, 4.0))
    steeper = pd.Series([0.0, 3.0, 9.0], index=[0.0, 2.0, 10.0])  # y indexed by x, as PySD takes a lookup
    scenarios = {"own": {}, "steeper": {"effect of threat": steeper}}
    compiled = attribute(model, spec, scenarios)
    pysd = attribute(model, spec, scenarios, engine="pysd")
    assert compiled.attrs["engine"] == "compiled"
    np.testing.assert_allclose(compiled["knockout_change"], pysd["knockout_change"], rtol=1e-9)
    np.testing.assert_allclose(compiled["attribution_share"], pysd["attribution_share"], rtol=1e-9)
    # The redrawn table is the one run: a stronger reaction everywhere, so X arms more.
    change = compiled["stock_change"].sel(attributed="arms X")
    assert float(change.sel(scenario="steeper")) > 1.2 * float(change.sel(scenario="own")) > 0


def test_pysd_gives_the_compiled_engines_shares_and_any_group_name_is_safe(richardson: Model) -> None:
    # Vensim's delimiters in a name must not break the generated model.
    odd = LoopGroup('action | "reaction" ~ {k}', ACTION_REACTION.variables)
    spec = AttributionSpec(("arms X",), (odd, FATIGUE), window=(0.0, 2.0))
    scenarios = {"s": FROM_ZERO, "t": {"grievance h": 3.0}}
    compiled = attribute(richardson, spec, scenarios)
    pysd = attribute(richardson, spec, scenarios, engine="pysd")
    np.testing.assert_allclose(pysd["attribution_share"], compiled["attribution_share"], rtol=1e-9)
    assert str(compiled["loop_group"].values[0]) == odd.name


def test_the_knockout_model_is_the_model_until_a_group_is_cut(richardson: Model) -> None:
    path = knockout_model(richardson, [ACTION_REACTION])
    original = compile_model(RICHARDSON, backend="numpy").run({}, variables=["arms X", "reaction of X"])
    edited = compile_model(path, backend="numpy").run(
        {"armsdyn attribution cut 1": np.array([0.0, 1.0])}, variables=["arms X", "reaction of X"]
    )
    np.testing.assert_array_equal(edited["arms_x"].isel(run=0).values, original["arms_x"].isel(run=0).values)
    held = edited["reaction_of_x"].isel(run=1).values
    assert np.all(held == held[0])
    assert held[0] == original["reaction_of_x"].isel(run=0).values[0]


def test_the_knowledge_engine_takes_the_whole_explained_growth_without_action_reaction() -> None:
    """The issue's known case, on the shipped knowledge model (one batch of 2**3 runs per scenario)."""
    model = load_model(KNOWLEDGE)
    groups = (
        LoopGroup("action-reaction", ("rival signal",)),
        LoopGroup("frontier push", ("frontier push",)),
        LoopGroup("knowledge growth", ("civil frontier",), "driver"),
    )
    spec = AttributionSpec(("effective power",), groups)
    scenarios = {
        "race": {"treaty switch": 0.0},
        "no action-reaction": {"treaty switch": 0.0, "action reaction switch": 0.0},
        "treaty": {},
    }
    ds = attribute(model, spec, scenarios)
    for state in ("A", "B"):
        race = _shares(ds, "race", f"effective power[{state}]")
        off = _shares(ds, "no action-reaction", f"effective power[{state}]")
        assert off["action-reaction"] == 0.0
        assert off["frontier push"] == 0.0  # the push is driven by insecurity, i.e. by the rival
        assert off["knowledge growth"] + off[OTHER] == pytest.approx(1.0, abs=1e-12)
        assert race["action-reaction"] > 0.5  # anarchy's race is most of the growth ...
        assert race["knowledge growth"] > 0.02  # ... with knowledge an engine of its own
        treaty = _shares(ds, "treaty", f"effective power[{state}]")
        assert treaty != race


CONFIG_ERRORS = [
    ('stocks = ["arms x"]', r"attribution\.stocks\[0\]: 'arms x' is not a variable.*did you mean 'arms X'\?"),
    ('stocks = ["reaction of X"]', r"attribution\.stocks\[0\]: 'reaction of X' is a auxiliary, not a stock"),
    ('stock = ["arms X"]', r"attribution\.stock: unknown key; did you mean 'stocks'\?"),
    ('stocks = ["arms X"]\nwindow = [0, 0.01]', r"attribution\.window: .*integration grid"),
    ('stocks = ["arms X"]\nwindow = [5, 1]', r"attribution\.window: expected \[start, end\] with start < end"),
]
GROUP_ERRORS = [
    ('name = "ar"\nvariables = ["reaction of Z"]', r"groups\[0\]\.variables\[0\]: .*did you mean 'reaction of [XY]'\?"),
    ('name = "ar"\nvariables = ["arms X"]', r"groups\[0\]\.variables\[0\]: 'arms X' is a stock; .*auxiliary or flow"),
    ('name = "other"\nvariables = ["reaction of X"]', r"groups\[0\]\.name: 'other' is used twice or reserved"),
    ('name = "ar"\nvariables = ["reaction of X"]\nkind = "loop"', r"unknown loop group kind 'loop'; did you mean"),
]


GROUPED = [(f'stocks = ["arms X"]\n[[attribution.groups]]\n{g}', m) for g, m in GROUP_ERRORS]


@pytest.mark.parametrize(("table", "message"), CONFIG_ERRORS + GROUPED)
def test_config_errors_name_the_key_and_what_is_allowed(tmp_path: Path, table: str, message: str) -> None:
    body = f"[attribution]\n{table}\n"
    if "[[attribution.groups]]" not in table:
        body += '[[attribution.groups]]\nname = "ar"\nvariables = ["reaction of X"]\n'
    with pytest.raises(ConfigError, match=message):
        load_config(write_config(tmp_path, body))


DRIVEN = """{UTF-8}
level= INTEG (
	growth,
		1)
	~	units
	~	A stock that grows by itself and by an outside push.
	|

growth=
	own rate * level + push
	~	units/Year
	~	Inflow.
	|

own rate=
	0.05
	~	1/Year
	~	Fractional growth.
	|

push=
	0.5 + 0.1 * Time
	~	units/Year
	~	An exogenous driver: on no loop.
	|

INITIAL TIME  = 0
	~	Year
	~	The initial time for the simulation.
	|

FINAL TIME  = 10
	~	Year
	~	The final time for the simulation.
	|

SAVEPER  = 1
	~	Year
	~	The frequency with which output is stored.
	|

TIME STEP  = 0.125
	~	Year
	~	The time step for the simulation.
	|
"""


def test_a_variable_on_no_loop_is_refused_as_a_loop_group_and_accepted_as_a_driver(tmp_path: Path) -> None:
    model = tmp_path / "driven.mdl"
    model.write_text(DRIVEN, encoding="utf-8")
    body = '[attribution]\nstocks = ["level"]\n[[attribution.groups]]\nname = "push"\nvariables = ["push"]\n'
    with pytest.raises(ConfigError, match=r"'push' lies on no feedback loop.*kind = \"driver\""):
        load_config(write_config(tmp_path, body, model=model))
    body += 'kind = "driver"\n[[attribution.groups]]\nname = "growth loop"\nvariables = ["growth"]\n'
    experiment = load_config(write_config(tmp_path, body, model=model))
    ds = attribute(experiment.model, experiment.attribution, experiment.scenarios, time=experiment.time)
    shares = _shares(ds, "base", "level")
    # With both held at their initial values the inflow stays at 0.05 * 1 + 0.5 for 10 years: all
    # that is left to 'other' is that initial momentum.
    change = float(ds["stock_change"].sel(scenario="base", attributed="level"))
    assert shares[OTHER] == pytest.approx(0.55 * 10 / change, rel=1e-12)
    assert shares["push"] > 0
    assert shares["growth loop"] > 0


def test_run_writes_loops_nc_and_attribution_metrics_and_figures_redraw_from_it(tmp_path: Path) -> None:
    body = (
        RACE_ATTRIBUTION
        + """
[loop_dominance]

[[figures]]
kind = "loop_dominance"
name = "dominance"

[[figures]]
kind = "time_series"
variables = ["arms X"]

[[figures]]
kind = "model_diagram"
name = "diagram"
"""
    )
    out = tmp_path / "out"
    # In this process (the command's exit code and output are the same): a new interpreter's imports
    # and model load are not under test here.
    proc = call_cli("run", write_config(tmp_path, body), "--out", out)
    assert proc.returncode == 0, proc.stderr
    with xr.open_dataset(out / "loops.nc") as loops:
        assert loops["relative_loop_score"].dims == ("scenario", "loop", "time")
        assert list(loops["scenario"].values) == ["race", "no_reaction"]
        assert loops["attribution_share"].sel(scenario="no_reaction", loop_group="action-reaction").item() == 0.0
    metrics = pd.read_csv(out / "metrics.csv", index_col=0)
    assert metrics.loc["no_reaction", "arms X change share: action-reaction"] == 0.0
    assert metrics.loc["race", "arms X change share: action-reaction"] > 0.1
    assert "final arms X" in metrics.columns  # the other families are still there
    manifest = json.loads((out / "manifest.json").read_text())
    files = ("loops.nc", "metrics.csv", "figures/dominance.pdf", "figures/diagram.svg", "figures/time_series.pdf")
    for name in (*files, "results.nc"):
        assert manifest["files"][name] == file_sha256(out / name), name
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging left behind
    # Redrawn from loops.nc, without running anything.
    for path in (out / "figures").iterdir():
        path.unlink()
    proc = call_cli("figures", out)
    assert proc.returncode == 0, proc.stderr
    assert (out / "figures" / "dominance.svg").is_file()
    assert (out / "figures" / "diagram.pdf").is_file()  # from the model file the recorded config names


def test_a_loop_figure_without_loop_dominance_is_refused(tmp_path: Path) -> None:
    body = '[[figures]]\nkind = "loop_dominance"\n'
    with pytest.raises(ConfigError, match=re.escape("figures[0].kind: 'loop_dominance' draws the loop dominance")):
        load_config(write_config(tmp_path, body))


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ('through = ["reaction of Z"]', r"loop_dominance\.through\[0\]: unknown variable 'reaction of Z'"),
        ("max_length = 0", r"loop_dominance\.max_length: must be at least 1, got 0"),
        ("max_lenght = 6", r"loop_dominance\.max_lenght: unknown key; did you mean 'max_length'\?"),
    ],
)
def test_loop_dominance_config_errors_name_the_key(tmp_path: Path, table: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(write_config(tmp_path, f"[loop_dominance]\n{table}\n"))


def test_a_failing_loop_figure_leaves_no_results_folder(tmp_path: Path) -> None:
    """The loop analysis is written in the same atomic write as the rest: all or nothing."""
    body = '[loop_dominance]\n[[figures]]\nkind = "loop_dominance"\nvariables = ["grievance g"]\n'
    out = tmp_path / "out"
    proc = call_cli("run", write_config(tmp_path, body), "--out", out)
    assert proc.returncode == 2
    assert "no loop passes through grievance g" in proc.stderr
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exp.toml"]


def test_the_main_experiments_shares_converge_and_ignore_the_capability_unit() -> None:
    """dt, dt/2, dt/4 on the shipped config; every capability unit ten times smaller moves no share."""
    experiment = load_config(CONFIGS / "disarmament_vs_knowledge.toml")
    spec = experiment.attribution
    assert spec is not None
    shares = [
        attribute(experiment.model, spec, experiment.scenarios, time=replace(experiment.time, step=dt))[
            "attribution_share"
        ].values
        for dt in (1 / 16, 1 / 32, 1 / 64)
    ]
    coarse, fine = np.nanmax(np.abs(shares[1] - shares[0])), np.nanmax(np.abs(shares[2] - shares[1]))
    assert fine < coarse
    assert fine < 0.005
    # Forces, grievance and unit costs in units ten times smaller (as the knowledge claims' test).
    both = {
        f"{name}[{state}]": value
        for name, value in (("initial hardware", 300.0), ("grievance force", 200.0), ("base unit cost", 0.2))
        for state in "AB"
    }
    scenarios = {"base": {"treaty switch": 0.0}, "base_x10": {"treaty switch": 0.0, **both}}
    ds = attribute(experiment.model, spec, scenarios, time=experiment.time)
    np.testing.assert_allclose(
        ds["attribution_share"].sel(scenario="base_x10"), ds["attribution_share"].sel(scenario="base"), rtol=1e-7
    )
    np.testing.assert_allclose(
        ds["stock_change"].sel(scenario="base_x10"), 10 * ds["stock_change"].sel(scenario="base"), rtol=1e-7
    )


def test_an_attribution_figure_without_attribution_is_refused(tmp_path: Path) -> None:
    body = '[[figures]]\nkind = "attribution_shares"\n'
    with pytest.raises(ConfigError, match=re.escape("'attribution_shares' draws the attribution in loops.nc; add a")):
        load_config(write_config(tmp_path, body))


def test_a_configs_time_series_scenario_is_attributed_on_the_compiled_engine(tmp_path: Path) -> None:
    config = write_config(
        tmp_path,
        "[time]\nfinal = 4\nstep = 0.0625\nsaveper = 0.5\n"
        '[[scenarios]]\nname = "rising"\nparameters = { "grievance g" = [[0, 1.0], [4, 3.0]] }\n'
        '[[scenarios]]\nname = "flat"\nparameters = { "grievance g" = 2.0 }\n'
        '[attribution]\nstocks = ["arms X"]\n'
        '[[attribution.groups]]\nname = "action-reaction"\nvariables = ["reaction of X", "reaction of Y"]\n',
    )
    folder = run_experiment(config, out=tmp_path / "results")
    with xr.open_dataset(folder / "loops.nc") as saved:
        loops = saved.load()
    assert loops.attrs["attribution_engine"] == "compiled"
    experiment = load_config(config)
    assert experiment.attribution is not None
    reference = attribute(RICHARDSON, experiment.attribution, experiment.scenarios, time=experiment.time, engine="pysd")
    np.testing.assert_allclose(loops["attribution_share"], reference["attribution_share"], rtol=1e-9)


ATTRIBUTED_BARS = (
    RACE_ATTRIBUTION
    + """
[[figures]]
kind = "metric_bars"
name = "drivers"
metrics = ["arms X change share: action-reaction", "arms X change share: other", "final arms X"]
"""
)


def test_metric_bars_draw_the_attribution_columns_as_metrics_csv_has_them(tmp_path: Path) -> None:
    """metrics.csv's attribution columns were not names a figure could use; metric_bars draws them now."""
    from armsdyn.figures import draw_metric_bars
    from armsdyn.metrics import metrics_table

    config = write_config(tmp_path, ATTRIBUTED_BARS)
    spec = load_config(config).figures[0]
    assert spec.reads_loops  # the attribution comes from loops.nc, which the run writes
    out = tmp_path / "out"
    proc = call_cli("run", config, "--out", out)
    assert proc.returncode == 0, proc.stderr
    assert (out / "figures" / "drivers.pdf").is_file()
    metrics = pd.read_csv(out / "metrics.csv", index_col=0)
    with xr.open_dataset(out / "results.nc") as ds, xr.open_dataset(out / "loops.nc") as loops:
        table = metrics_table(ds.load(), loops.load())
        fig, (ax,) = draw_metric_bars(ds, spec, loops)
    plt.close(fig)
    pd.testing.assert_frame_equal(table[list(spec.metrics)], metrics[list(spec.metrics)], check_names=False)
    # The bars are metrics.csv's numbers: one container per metric, a bar per scenario.
    for container, metric in zip(ax.containers, spec.metrics, strict=True):
        widths = [bar.get_width() for bar in container]
        np.testing.assert_allclose(widths, np.nan_to_num(metrics.loc[["race", "no_reaction"], metric]), rtol=1e-12)
    assert metrics.loc["no_reaction", "arms X change share: action-reaction"] == 0.0
    # Redrawn from the folder's files alone.
    (out / "figures" / "drivers.pdf").unlink()
    assert call_cli("figures", out).returncode == 0
    assert (out / "figures" / "drivers.pdf").is_file()


#: The same config without its [attribution] table.
WITHOUT_ATTRIBUTION = re.sub(r"\[attribution\].*?\n\n\[\[figures", "[[figures", ATTRIBUTED_BARS, flags=re.S)
#: ... and with a parameter sweep's figure, which has no per-scenario attribution to draw.
SWEEP_FIGURE = ATTRIBUTED_BARS.replace(
    'kind = "metric_bars"', 'kind = "metric_vs_parameter"\nparameter = "grievance g"'
)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (WITHOUT_ATTRIBUTION, "unknown metric 'arms X change share: action-reaction'"),
        (SWEEP_FIGURE, "is an [attribution] column, one value a scenario: draw it with metric_bars"),
    ],
)
def test_attribution_metrics_are_refused_where_no_figure_can_draw_them(tmp_path: Path, body: str, message: str) -> None:
    assert "[attribution]" not in WITHOUT_ATTRIBUTION
    with pytest.raises(ConfigError) as err:
        load_config(write_config(tmp_path, body))
    assert message in str(err.value)
    assert "figures[0].metrics[0]" in str(err.value)
