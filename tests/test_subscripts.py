"""Subscripted models on the PySD path: configs, results, metrics, analysis, figures and the CLI.

The three-state model is the shipped ``models/richardson_n.mdl`` (USA, Russia,
China), run for a short horizon so the tests stay quick.
"""

from __future__ import annotations

import contextlib
import io
import re
import shutil
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xarray as xr

import armsdyn
from armsdyn import load_config
from armsdyn.cli import main
from armsdyn.errors import ConfigError
from armsdyn.model import pysd_module, quiet_pysd
from armsdyn.richardson import RichardsonN
from tests.conftest import CONFIGS, MODELS, write_config

MODEL = MODELS / "richardson_n.mdl"
STATES = ("USA", "Russia", "China")

BODY = """
[time]
initial = 0
final = 6
step = 0.125
saveper = 0.5

[parameters]
"fatigue coefficient a" = { USA = 0.6, Russia = 0.5, China = 0.7 }

[[scenarios]]
name = "base"

[[scenarios]]
name = "elements"
parameters = { "grievance g[China]" = 150, "defence coefficient k[USA, China]" = 0.2, "initial arms[Russia]" = 900 }

[[scenarios]]
name = "whole"
parameters = { "grievance g" = { USA = 50, Russia = 40, China = 150 }, "fatigue coefficient a" = 0.4 }

[[scenarios]]
name = "series"
parameters = { "grievance g[China]" = [[0, -137.5], [3, 250]], "grievance g[USA]" = 100 }

[output]
variables = ["arms", "arming rate", "reaction"]
"""

#: The five figure kinds on the three-state results: the config ``armsdyn figures --config`` draws them from.
FIGURES = """
[[figures]]
kind = "time_series"
name = "ts_overlay"
variables = ["arms", "arming rate"]

[[figures]]
kind = "time_series"
name = "ts_multiples"
layout = "small_multiples"
variables = ["arms"]

[[figures]]
kind = "phase_portrait"
name = "phase"
variables = ["arms", "arming rate"]

[[figures]]
kind = "scenario_grid"
name = "grid"
panels = [["arms"], ["arming rate", "reaction"]]

[[figures]]
kind = "metric_bars"
name = "bars"
metrics = ["final arms[USA]", "final arms[China]", "equilibrium China"]
"""

# What each scenario sets, as PySD takes it, for the reference runs.
A_BASE = [0.6, 0.5, 0.7]


def _da(values: list[float]) -> xr.DataArray:
    return xr.DataArray(values, coords={"state": list(STATES)}, dims=["state"])


def _k(model_file: Path) -> xr.DataArray:
    from armsdyn.model import load_model

    return load_model(model_file).variable("defence coefficient k").default_array()


def _reference_params(scenario: str) -> dict[str, object]:
    params: dict[str, object] = {"fatigue coefficient a": _da(A_BASE)}
    if scenario == "elements":
        k = _k(MODEL)
        k.loc[{"state": "USA", "rival": "China"}] = 0.2
        params |= {"grievance g": _da([312.5, 285, 150]), "defence coefficient k": k}
        params["initial arms"] = _da([1550, 900, 500])
    elif scenario == "whole":
        params |= {"grievance g": _da([50, 40, 150]), "fatigue coefficient a": _da([0.4, 0.4, 0.4])}
    elif scenario == "series":
        # The China series and a constant USA element: PySD's own Series of DataArrays.
        times = [0.0, 3.0, 6.0]
        china = [-137.5, 250.0, 250.0]
        params["grievance g"] = pd.Series([_da([100, 285, c]) for c in china], index=times)
    return params


#: The tests that read :func:`three_state` run on one pytest-xdist worker: a module fixture is built once per
#: worker, and the CLI's five commands on the three-state model cost seconds each time.
THREE_STATE = pytest.mark.xdist_group("three_state")


@pytest.fixture(scope="module")
def three_state(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """The config through check, run, analyse, figures and describe, in-process via the CLI.

    The run's config has no ``[[figures]]``: ``figures`` draws the five of :data:`FIGURES` onto its
    results (``--config``), so each is drawn once (drawn by ``run`` too, they were two thirds of
    this fixture's time); ``run`` and ``figures`` draw with the same function.
    """
    folder = tmp_path_factory.mktemp("subscripts")
    cfg = write_config(folder, BODY, model=MODEL, name="three")
    drawn = write_config(folder, BODY + FIGURES, model=MODEL, name="three_figures")
    out = folder / "results"
    captured: dict[str, object] = {"cfg": cfg, "out": out}
    for name, argv in {
        "check": ["check", str(drawn)],
        "run": ["run", str(cfg), "--out", str(out)],
        "analyse": ["analyse", str(cfg), "--out", str(folder / "eq.csv")],
        "figures": ["figures", str(out), "--config", str(drawn)],
        "describe": ["describe", str(MODEL)],
    }.items():
        stdout, stderr = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            status = main(argv)
        captured[name] = (status, stdout.getvalue(), stderr.getvalue())
    captured["equilibria"] = pd.read_csv(folder / "eq.csv")
    return captured


@THREE_STATE
@pytest.mark.parametrize("command", ["check", "run", "analyse", "figures", "describe"])
def test_every_command_succeeds_without_a_traceback(three_state: dict[str, object], command: str) -> None:
    status, stdout, stderr = three_state[command]
    assert status == 0, stderr
    assert "Traceback" not in stdout + stderr
    assert "error" not in stderr.lower()


@THREE_STATE
def test_results_keep_dimensions_and_match_pysd_directly(three_state: dict[str, object], tmp_path: Path) -> None:
    ds = xr.open_dataset(three_state["out"] / "results.nc")
    assert ds["arms"].dims == ("scenario", "time", "state")
    assert list(ds["state"].values) == list(STATES)
    assert ds["arms"].attrs["units"] == "arms"
    assert ds["arms"].attrs["long_name"] == "arms"
    assert ds["arming_rate"].attrs["units"] == "arms/Year"
    # Constants per scenario and element, with their own dims.
    assert ds["defence_coefficient_k"].dims == ("scenario", "state", "rival")
    assert float(ds["defence_coefficient_k"].sel(scenario="elements", state="USA", rival="China")) == 0.2
    assert float(ds["defence_coefficient_k"].sel(scenario="base", state="USA", rival="China")) == 0.15
    assert list(ds["grievance_g"].sel(scenario="whole").values) == [50, 40, 150]
    assert np.isnan(float(ds["grievance_g"].sel(scenario="series", state="China")))
    assert float(ds["grievance_g"].sel(scenario="series", state="USA")) == 100
    # The same runs done directly with PySD (a private translation of a copy of the file).
    copy = Path(shutil.copy(MODEL, tmp_path / "richardson_n.mdl"))
    with quiet_pysd():
        pysd_model = pysd_module().read_vensim(str(copy))
        for scenario in ds["scenario"].values:
            pysd_model.reload()
            df = pysd_model.run(
                params=_reference_params(str(scenario)),
                return_columns=["arms", "arming rate"],
                final_time=6,
                time_step=0.125,
                saveper=0.5,
            )
            for state in STATES:
                got = ds["arms"].sel(scenario=scenario, state=state).values
                np.testing.assert_allclose(got, df[f"arms[{state}]"].to_numpy(), rtol=1e-9, atol=1e-9)
                got = ds["arming_rate"].sel(scenario=scenario, state=state).values
                np.testing.assert_allclose(got, df[f"arming rate[{state}]"].to_numpy(), rtol=1e-9, atol=1e-9)


@THREE_STATE
def test_metrics_have_a_column_per_element_and_the_closed_form(three_state: dict[str, object]) -> None:
    ds = xr.open_dataset(three_state["out"] / "results.nc")
    table = pd.read_csv(three_state["out"] / "metrics.csv", index_col="scenario")
    for state in STATES:
        assert table.loc["whole", f"final arms[{state}]"] == pytest.approx(
            float(ds["arms"].sel(scenario="whole", state=state).isel(time=-1))
        )
    assert (table["fault"] == "none").all()
    # The closed form from the scenario's own parameters.
    k = ds["defence_coefficient_k"].sel(scenario="whole").values
    model = RichardsonN(k, [0.4] * 3, [50, 40, 150], STATES)
    for i, state in enumerate(STATES):
        assert table.loc["whole", f"equilibrium {state}"] == pytest.approx(model.equilibrium()[i], rel=1e-12)
    assert table.loc["whole", "stability"] == model.stability()
    assert table.loc["series", "regime"].startswith("not analysed")


@THREE_STATE
def test_analyse_finds_the_closed_form_equilibrium(three_state: dict[str, object]) -> None:
    table = three_state["equilibria"].set_index("scenario")
    _, stdout, _ = three_state["analyse"]
    assert "arms[China]" in stdout
    exp = load_config(three_state["cfg"])
    k = _k(MODEL).values.copy()
    k[0, 2] = 0.2
    model = RichardsonN(k, A_BASE, [312.5, 285, 150], STATES)
    row = table.loc["elements"]
    got = np.array([row[f"arms[{s}]"] for s in STATES])
    np.testing.assert_allclose(got, model.equilibrium(), rtol=1e-6)
    ev = np.array([complex(row[f"eigenvalue {i} real"], row[f"eigenvalue {i} imag"]) for i in (1, 2, 3)])
    np.testing.assert_allclose(ev, model.eigenvalues(), atol=1e-6)
    assert row["stability"] == model.stability()
    assert len(exp.scenarios) == len(table.index.unique())


@THREE_STATE
def test_figures_draw_a_line_per_element_with_element_legends(three_state: dict[str, object]) -> None:
    folder = three_state["out"] / "figures"
    for stem in ("ts_overlay", "ts_multiples", "phase", "grid", "bars"):
        assert (folder / f"{stem}.svg").stat().st_size > 0
    ds = xr.open_dataset(three_state["out"] / "results.nc")
    fig, axes = armsdyn.figures.time_series(ds, ["arms"], ["base"])
    lines = axes[0].get_lines()
    assert [line.get_label() for line in lines] == list(STATES)
    np.testing.assert_array_equal(lines[2].get_ydata(), ds["arms"].sel(scenario="base", state="China").values)
    fig, axes = armsdyn.figures.time_series(ds, ["arms"], layout="small_multiples")
    assert [line.get_label() for line in axes[1].get_lines()] == list(STATES)
    fig, axes = armsdyn.figures.phase_portrait(ds, "arms", "arming rate", ["whole"])
    assert [line.get_label() for line in axes[0].get_lines() if not line.get_label().startswith("_")] == list(STATES)
    fig, axes = armsdyn.figures.scenario_grid(ds, [["arms"]], ["base", "whole"])
    assert len(axes[0].get_lines()) == 3
    legend = fig.legends[0]
    assert [t.get_text() for t in legend.get_texts()] == list(STATES)
    # One element of a subscripted variable as a variable of its own, and as a parameter.
    fig, axes = armsdyn.figures.phase_portrait(ds, "arms[USA]", "arms[China]", ["base"])
    assert axes[0].get_xlabel().startswith("arms[USA]")
    fig, axes = armsdyn.figures.metric_vs_parameter(ds, "grievance g[USA]", ["final arms[USA]"], ["base", "whole"])
    np.testing.assert_array_equal(sorted(axes[0].get_lines()[0].get_xdata()), [50, 312.5])


@THREE_STATE
def test_describe_and_check_show_dimensions_and_element_values(three_state: dict[str, object]) -> None:
    _, described, _ = three_state["describe"]
    assert "arms [state: USA, Russia, China]" in described
    assert "defence coefficient k [state: USA, Russia, China; rival: USA, Russia, China]" in described
    assert "USA, China: 0.15" in described
    assert "grievance g [state: USA, Russia, China] = {USA: 312.5; Russia: 285; China: -137.5}" in described
    _, checked, _ = three_state["check"]
    assert "arms [state: USA, Russia, China]" in checked


@pytest.mark.parametrize(
    ("parameters", "expected"),
    [
        ('{ "grievance g[Chna]" = 1 }', r"no element 'Chna' in subscript range 'state'; did you mean 'China'\?"),
        ('{ "grievance g[Chna]" = 1 }', r"allowed: USA, Russia, China"),
        ('{ "defence coefficient k[USA]" = 1 }', r"has 2 subscript\(s\) \[state, rival\], got 1"),
        ('{ "defence coefficient k[USA, Chyna]" = 1 }', r"no element 'Chyna' in subscript range 'rival'"),
        ('{ "grievance g" = { USA = 1, Russia = 2 } }', r"misses element\(s\) China"),
        ('{ "grievance g" = { USA = 1, Russia = 2, Kina = 3 } }', r'"grievance g"\.Kina: .*no element \'Kina\''),
        ('{ "grievance g[USA]" = "high" }', r"expected a number or a list of \[time, value\] pairs"),
        ('{ "grievanse g[USA]" = 1 }', r"unknown parameter .*did you mean 'grievance g'"),
        ('{ "arms[USA]" = 1 }', r"'arms' is a stock, not a constant"),
    ],
)
def test_config_element_errors_name_the_element_and_the_allowed_ones(
    tmp_path: Path, parameters: str, expected: str
) -> None:
    cfg = write_config(tmp_path, f'[[scenarios]]\nname = "s"\nparameters = {parameters}\n', model=MODEL)
    with pytest.raises(ConfigError, match=expected):
        load_config(cfg)


def test_an_element_on_a_scalar_constant_is_an_error(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, '[parameters]\n"grievance g[USA]" = 1\n')
    with pytest.raises(ConfigError, match=r"'grievance g' has no subscripts"):
        load_config(cfg)
    cfg = write_config(tmp_path, '[parameters]\n"grievance g" = { USA = 1 }\n')
    with pytest.raises(ConfigError, match=r"'grievance g' has no subscripts"):
        load_config(cfg)


def test_scenario_elements_override_base_elements_and_whole_values(tmp_path: Path) -> None:
    body = (
        '[parameters]\n"grievance g" = { USA = 50, Russia = 40, China = 150 }\n'
        '[[scenarios]]\nname = "s"\nparameters = { "grievance g[China]" = 7 }\n'
        '[[scenarios]]\nname = "t"\nparameters = { "grievance g[USA]" = 9, "grievance g" = 3 }\n'
    )
    exp = load_config(write_config(tmp_path, body, model=MODEL))
    s, t = exp.scenarios
    assert [s.parameters[f"grievance g[{e}]"] for e in STATES] == [50, 40, 7]
    # In one table the element wins over the whole value, whatever the order.
    assert [t.parameters[f"grievance g[{e}]"] for e in STATES] == [9, 3, 3]


def test_four_nation_and_triad_configs_are_valid_and_richardson_unstable() -> None:
    four = load_config(CONFIGS / "richardson_1909_four_nations.toml")
    assert "Richardson 1960" in four.description
    assert four.model.variable("arms").dims == (("state", ("France", "Russia", "Germany", "Austria Hungary")),)
    triad = load_config(CONFIGS / "triad.toml")
    assert triad.model.variable("arms").dims == (("state", STATES),)
    assert {s.name for s in triad.scenarios} >= {"baseline", "bilateral_cut", "china_buildup"}
    # Alliance-shaped reactions with Richardson's combined fit: total growth rate 2k - a = 0.73.
    k = four.model.variable("defence coefficient k").default_array().values
    model = RichardsonN(k, [0.17] * 4, [-35.4] * 4)
    assert model.eigenvalues()[-1].real == pytest.approx(0.73)
    assert model.stability() == "saddle"


def test_the_four_nation_model_has_the_n_state_equations() -> None:
    """richardson_n_1909.mdl differs from richardson_n.mdl only in its states, values and times."""

    def equations(path: Path) -> list[str]:
        text = path.read_text()
        return [e.split("~")[0].strip() for e in text.split("|") if "=" in e.split("~")[0] and "[" in e]

    n, four = equations(MODEL), equations(MODELS / "richardson_n_1909.mdl")
    formulas = [e for e in n if re.search(r"[A-Za-z]", e.split("=", 1)[1])]
    assert len(formulas) == 4
    assert all(f in four for f in formulas)


FAULT_MODEL = """{UTF-8}
arms[state]= INTEG (-retirement[state], 100)
	~	arms
	~	Arms of each state.
	|
retirement[state]= arms[state] / service life[state]
	~	arms/Year
	~	Arms retired.
	|
state: A, B
	~
	~	States.
	|
service life[state]= 10, 20
	~	Year
	~	Years in service.
	|
INITIAL TIME = 0
	~	Year
	~	Start.
	|
FINAL TIME = 4
	~	Year
	~	End.
	|
TIME STEP = 0.25
	~	Year [0,?]
	~	Step.
	|
SAVEPER = 0.5
	~	Year [0,?]
	~	Save.
	|
"""

SCALAR_FAULT_MODEL = """{UTF-8}
stock= INTEG (-decay, 100)
	~	arms
	~	A stock.
	|
decay= stock / half life
	~	arms/Year
	~	Loss.
	|
half life= 10
	~	Year
	~	Half life.
	|
INITIAL TIME = 0
	~	Year
	~	Start.
	|
FINAL TIME = 4
	~	Year
	~	End.
	|
TIME STEP = 0.25
	~	Year [0,?]
	~	Step.
	|
SAVEPER = 0.5
	~	Year [0,?]
	~	Save.
	|
"""


@pytest.mark.parametrize("engine", ["compiled", "pysd"])
def test_a_zero_divisor_ends_only_its_own_scenario(tmp_path: Path, engine: str) -> None:
    """A divisor that a time series takes to 0 at 1.5 faults that scenario only, named with variable and time.

    The compiled engine divides as numpy does (inf, found by the fault scan); PySD
    raises ZeroDivisionError on the Python floats it interpolates (a simulation error).
    """
    model = tmp_path / "decay.mdl"
    model.write_text(SCALAR_FAULT_MODEL)
    body = (
        f'engine = "{engine}"\n'  # still in the [experiment] table write_config starts
        '[[scenarios]]\nname = "before"\n'
        '[[scenarios]]\nname = "zero"\nparameters = { "half life" = [[0, 5], [1, 5], [1.5, 0], [4, 0]] }\n'
        '[[scenarios]]\nname = "after"\nparameters = { "half life" = 3 }\n'
    )
    cfg = write_config(tmp_path, body, model=model)
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        status = main(["run", str(cfg), "--out", str(tmp_path / "out")])
    assert status == 0, stderr.getvalue()
    assert "Traceback" not in stderr.getvalue()
    table = pd.read_csv(tmp_path / "out" / "metrics.csv", index_col="scenario")
    ds = xr.open_dataset(tmp_path / "out" / "results.nc")
    assert ds.attrs["engine"].startswith(engine)
    if engine == "pysd":
        assert "ZeroDivisionError" in stderr.getvalue()
        assert table.loc["zero", "fault"] == "simulation error"
        assert np.isnan(ds["stock"].sel(scenario="zero").values).all()
    else:
        assert "'decay' became inf at time 1.5" in stderr.getvalue()
        assert table.loc["zero", "fault"] == "non-finite"
        # The run up to the fault is kept; its values are the same Euler decay at half life 5.
        np.testing.assert_allclose(ds["stock"].sel(scenario="zero", time=0.5).values, 100 * (1 - 0.25 / 5) ** 2)
    assert table.loc["zero", "fault variable"] == "decay"
    assert table.loc["zero", "fault time"] == 1.5
    assert list(table.loc[["before", "after"], "fault"]) == ["none", "none"]
    # The scenarios either side ran as if alone: exact exponential-Euler decay.
    np.testing.assert_allclose(ds["stock"].sel(scenario="before").values[-1], 100 * (1 - 0.25 / 10) ** 16)
    np.testing.assert_allclose(ds["stock"].sel(scenario="after").values[-1], 100 * (1 - 0.25 / 3) ** 16)


def test_a_zero_divisor_in_one_element_is_reported_and_stop_on_fault_stops(tmp_path: Path) -> None:
    model = tmp_path / "fleet.mdl"
    model.write_text(FAULT_MODEL)
    body = (
        '[[scenarios]]\nname = "zero"\nparameters = { "service life[B]" = 0 }\n'
        '[[scenarios]]\nname = "fine"\nparameters = { "service life" = { A = 5, B = 8 } }\n'
    )
    cfg = write_config(tmp_path, body, model=model)
    # PySD raises on the zero divisor: the run's error ends that scenario alone.
    reference = replace(armsdyn.load_config(cfg), engine="pysd")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = armsdyn.run(reference)
    assert any("ZeroDivisionError" in str(w.message) or "division" in str(w.message) for w in caught)
    table = armsdyn.compute_metrics(ds)
    assert table.loc["zero", "fault"] == "simulation error"
    assert table.loc["zero", "fault variable"] in ("retirement", "ZeroDivisionError: float division by zero")
    np.testing.assert_allclose(ds["arms"].sel(scenario="fine", state="B").values[-1], 100 * (1 - 0.25 / 8) ** 16)
    with pytest.raises(armsdyn.NumericalError, match="scenario 'zero'"):
        armsdyn.run(reference, stop_on_fault=True)
    # The compiled engine divides as numpy does: the same scenario shows a non-finite value instead.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", armsdyn.NumericalWarning)
        compiled = armsdyn.compute_metrics(armsdyn.run(cfg))
    assert compiled.loc["zero", "fault"] == "non-finite"
    assert compiled.loc["fine", "fault"] == "none"
    with pytest.raises(armsdyn.NumericalError, match="scenario 'zero'"):
        armsdyn.run(cfg, stop_on_fault=True)
