"""Time-series overrides of constants run in the compiled engine and equal PySD's runs.

A constant given as a time series (config: a list of [time, value] pairs) is
interpolated as PySD interpolates a ``pandas.Series`` set on a constant: linearly
between the points, the first value before them and the last after them. Every
value computed from it (a flow, an INITIAL, a stock's initial value, a value the
engine would otherwise compute once) follows it; these tests compare every
variable with PySD's run, in both backends.
"""

from __future__ import annotations

import functools
import importlib.util
import shutil
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xarray as xr

import armsdyn
from armsdyn.config import parse_config
from armsdyn.ensemble import FallbackWarning, SampleError, compile_model, run_ensemble
from armsdyn.model import load_model

DATA = Path(__file__).parent / "data"
SCALAR = DATA / "series_scalar.mdl"
SUBSCRIPTED = DATA / "series_subscripted.mdl"
RTOL = 1e-9
NUMBA = importlib.util.find_spec("numba") is not None
BACKENDS = ["numpy", pytest.param("numba", marks=pytest.mark.skipif(not NUMBA, reason="numba is not installed"))]

SCALAR_VARIABLES = ["arms", "build", "first grievance", "initial arms", "grievance weight", "perceived grievance"]
SUBSCRIPTED_VARIABLES = ["arms", "build", "first grievance", "initial arms", "perceived grievance"]

# Knots inside the run (0 to 10), starting before it, ending before it, a single point.
INSIDE = ((2.0, 1.0), (6.0, 3.0))
STARTS_BEFORE = ((-1.0, 0.5), (4.0, 2.0), (7.25, 0.25), (20.0, 4.0))
LATE_START = ((3.0, 4.0), (5.5, 0.5))  # starts after the initial time: the first value holds before it
EARLY_END = ((0.0, 2.0), (1.5, 6.0), (4.0, 1.0))  # ends before the final time: the last value holds after it
ONE_POINT = ((5.0, 2.5),)
# Every shape at once. The numba kernel reads a batch's series at the points of all its runs together, so
# its code depends on how many points that is: the scalar model's tests each run every shape (theirs
# first), and share one kernel instead of compiling one each, seconds apiece.
SHAPES = (INSIDE, STARTS_BEFORE, LATE_START, EARLY_END, ONE_POINT)


def _series(points: tuple[tuple[float, float], ...]) -> pd.Series:
    return pd.Series([v for _, v in points], index=[t for t, _ in points], dtype=float)


@functools.cache
def _pysd(path: Path, params: tuple[tuple[str, object], ...], variables: tuple[str, ...]) -> dict[str, np.ndarray]:
    """PySD's run of `path` with the overrides `params` (a tuple of points: a series), once per process.

    The numpy and numba variant of a test (one xdist group, so one worker) compare with the same runs.
    """
    model = load_model(path)
    pysd_params = {k: _series(v) if isinstance(v, tuple) else v for k, v in params}
    out = model.simulate(pysd_params, model.time, variables)
    for values in out.values():
        values.setflags(write=False)  # shared: no test may change another's reference
    return out


def _assert_equal_to_pysd(
    ds: xr.Dataset, path: Path, runs: list[dict[str, object]], variables: list[str], label: str = ""
) -> None:
    """Run j of `ds` equals PySD's run with the overrides `runs[j]`, for every variable."""
    model = load_model(path)
    for j, params in enumerate(runs):
        reference = _pysd(path, tuple(sorted(params.items())), tuple(variables))
        for name in variables:
            got = ds[model.variable(name).py_name].isel(run=j).values
            np.testing.assert_allclose(got, reference[name], rtol=RTOL, atol=0, err_msg=f"{label} run {j} {name!r}")


@pytest.mark.xdist_group("series:scalar")
@pytest.mark.parametrize("backend", BACKENDS)
def test_a_series_feeding_a_flow_an_initial_and_a_stock_initial_value_equals_pysd(backend: str) -> None:
    compiled = compile_model(SCALAR, backend=backend)
    runs = list(SHAPES)
    ds = compiled.run({}, variables=SCALAR_VARIABLES, series={"grievance": runs})
    _assert_equal_to_pysd(ds, SCALAR, [{"grievance": r} for r in runs], SCALAR_VARIABLES, backend)
    # Not vacuous: the series reached the INITIAL and the stock's initial value (the model has 1 and 10).
    assert float(ds["first_grievance"].isel(run=0, time=0)) == 1.0
    assert float(ds["initial_arms"].isel(run=1, time=0)) == pytest.approx(10 * (0.5 + 1.5 / 5 * 1))
    # ... and a value of constants only (computed once without series) changes over the run.
    assert np.ptp(ds["grievance_weight"].isel(run=1).values) > 1


@pytest.mark.xdist_group("series:scalar")
@pytest.mark.parametrize("backend", BACKENDS)
def test_series_starting_late_or_ending_early_hold_their_end_values_as_pysd_does(backend: str) -> None:
    compiled = compile_model(SCALAR, backend=backend)
    runs = [LATE_START, EARLY_END, ONE_POINT, INSIDE, STARTS_BEFORE]
    lives = [5.0, 4.0, 6.0, 5.5, 4.5]
    ds = compiled.run({"service life": lives}, variables=SCALAR_VARIABLES, series={"grievance": runs})
    expected = [{"grievance": r, "service life": life} for r, life in zip(runs, lives, strict=True)]
    _assert_equal_to_pysd(ds, SCALAR, expected, SCALAR_VARIABLES, backend)
    # The held ends themselves: the first value before the first point, the last after the last.
    weight = ds["grievance_weight"]
    assert float(weight.isel(run=0).sel(time=0)) == 4.0 * 5
    assert float(weight.isel(run=1).sel(time=10)) == 1.0 * 4
    assert float(weight.isel(run=2).sel(time=0)) == 2.5 * 6


@pytest.mark.xdist_group("series:subscripted_element")
@pytest.mark.parametrize("backend", BACKENDS)
def test_a_series_on_one_element_of_a_subscripted_constant_equals_pysd(backend: str) -> None:
    compiled = compile_model(SUBSCRIPTED, backend=backend)
    runs = [INSIDE, LATE_START]
    ds = compiled.run(
        {"grievance[USA]": [4.0, 5.0]},
        variables=SUBSCRIPTED_VARIABLES,
        series={"grievance[China]": runs},
    )
    expected = [{"grievance[China]": r, "grievance[USA]": usa} for r, usa in zip(runs, (4.0, 5.0), strict=True)]
    _assert_equal_to_pysd(ds, SUBSCRIPTED, expected, SUBSCRIPTED_VARIABLES, backend)
    first = ds["first_grievance"].isel(run=1, time=0)
    assert first.sel(state="China") == 4.0  # the series at the initial time
    assert first.sel(state="USSR") == 2.0  # the model's value for the others
    assert first.sel(state="USA") == 5.0  # a sampled element


@pytest.mark.xdist_group("series:subscripted_whole")
@pytest.mark.parametrize("backend", BACKENDS)
def test_a_series_on_a_whole_subscripted_constant_leaves_a_sampled_element_its_value(backend: str) -> None:
    compiled = compile_model(SUBSCRIPTED, backend=backend)
    runs = [INSIDE, STARTS_BEFORE]
    ds = compiled.run({"grievance[USSR]": [7.0, 8.0]}, variables=SUBSCRIPTED_VARIABLES, series={"grievance": runs})
    expected = [{"grievance": r, "grievance[USSR]": ussr} for r, ussr in zip(runs, (7.0, 8.0), strict=True)]
    _assert_equal_to_pysd(ds, SUBSCRIPTED, expected, SUBSCRIPTED_VARIABLES, backend)
    assert ds["first_grievance"].isel(run=0, time=0).sel(state="USSR") == 7.0


@pytest.mark.xdist_group("series:scalar")
@pytest.mark.parametrize("backend", BACKENDS)
def test_runs_with_different_points_share_one_batch(backend: str) -> None:
    """Each run's series is its own, though the batch reads them at the points of all runs together."""
    compiled = compile_model(SCALAR, backend=backend)
    runs = list(SHAPES)
    ds = compiled.run({}, variables=SCALAR_VARIABLES, series={"grievance": runs}, chunk_size=2)
    _assert_equal_to_pysd(ds, SCALAR, [{"grievance": r} for r in runs], SCALAR_VARIABLES, backend)


@pytest.fixture(scope="module")
def delayed_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The scalar model with a DELAY3 of the series, one file for both backends' runs (and their PySD references)."""
    path = tmp_path_factory.mktemp("delayed") / "delayed.mdl"
    delayed = "delayed grievance = DELAY3(grievance, delay time) ~ arms/Year ~ The grievance, three years late. |\n"
    delayed += "delay time = 1 + grievance ~ Year ~ Slower with more grievance. |\n"
    path.write_text(SCALAR.read_text().replace("grievance = 1 ~", delayed + "grievance = 1 ~", 1))
    return path


@pytest.mark.xdist_group("series:delay")
@pytest.mark.parametrize("backend", BACKENDS)
def test_a_series_into_a_delay_equals_pysd(delayed_model: Path, backend: str) -> None:
    """A delay's operands read the series too (numba: the kernel that runs one sample at a time)."""
    path = delayed_model
    variables = [*SCALAR_VARIABLES, "delayed grievance"]
    runs = [INSIDE, STARTS_BEFORE, LATE_START]
    ds = compile_model(path, backend=backend).run({}, variables=variables, series={"grievance": runs})
    _assert_equal_to_pysd(ds, path, [{"grievance": r} for r in runs], variables, backend)


def test_run_ensemble_takes_series_on_workers_and_in_the_pysd_fallback(tmp_path: Path) -> None:
    """Series split with the samples across worker processes; a model PySD runs gets them as pandas.Series."""
    runs = [INSIDE, None, LATE_START, EARLY_END]  # None: the model's own value
    samples = {"service life": [5.0, 4.0, 6.0, 5.5]}
    common = {"variables": SCALAR_VARIABLES, "series": {"grievance": runs}, "backend": "numpy"}
    one = run_ensemble(SCALAR, samples, **common)
    two = run_ensemble(SCALAR, samples, **common, workers=2, chunk_size=2)
    xr.testing.assert_identical(one, two)
    expected = [
        {"service life": life} if r is None else {"grievance": r, "service life": life}
        for r, life in zip(runs, samples["service life"], strict=True)
    ]
    _assert_equal_to_pysd(one, SCALAR, expected, SCALAR_VARIABLES)
    unsupported = tmp_path / "unsupported.mdl"
    random = "grievance * service life + RANDOM UNIFORM(0, 0, 1) ~"  # PySD's draw from [0, 0]: 0
    unsupported.write_text(SCALAR.read_text().replace("grievance * service life ~", random))
    with pytest.warns(FallbackWarning, match="RANDOM UNIFORM"):
        pysd = run_ensemble(unsupported, samples, variables=SCALAR_VARIABLES, series={"grievance": runs})
    assert pysd.attrs["engine"] == "pysd"
    for name in one.data_vars:
        np.testing.assert_allclose(pysd[name].values, one[name].values, rtol=RTOL, atol=0, err_msg=name)


def test_series_that_do_not_fit_are_refused() -> None:
    compiled = compile_model(SCALAR, backend="numpy")
    cases = [
        ({"grievance": [((1.0, 1.0), (1.0, 2.0))]}, "increase strictly"),
        ({"grievance": [()]}, "at least one point"),
        ({"grievance": [INSIDE, INSIDE]}, "2 series for 1 samples"),
        ({"arms": [INSIDE]}, "not a constant"),
        ({"grievance": _series(INSIDE)}, "one series per sample"),
    ]
    for series, message in cases:
        with pytest.raises(SampleError, match=message):
            compiled.run({"service life": [5.0]}, series=series)
    with pytest.raises(SampleError, match="given twice"):
        compiled.run({"grievance": [1.0]}, series={"grievance": [INSIDE]})


def _config(folder: Path, model: Path, scenarios: list[dict], **experiment: str) -> dict:
    folder.mkdir(parents=True, exist_ok=True)
    copy = Path(shutil.copy(model, folder / model.name))
    return {
        "experiment": {"name": "series", "model": str(copy), **experiment},
        "scenarios": scenarios,
        "output": {"variables": SCALAR_VARIABLES if model == SCALAR else SUBSCRIPTED_VARIABLES},
    }


def _pairs(points: tuple[tuple[float, float], ...]) -> list[list[float]]:
    return [list(p) for p in points]


def test_run_experiment_runs_time_series_scenarios_compiled(tmp_path: Path) -> None:
    """A config with time-series scenarios runs in the compiled engine alone, as PySD runs it."""
    scenarios = [
        {"name": "base"},
        {"name": "constant", "parameters": {"grievance": 2, "service life": 4}},
        {"name": "rising", "parameters": {"grievance": _pairs(INSIDE)}},
        {"name": "late", "parameters": {"grievance": _pairs(LATE_START), "service life": 6}},
    ]
    data = _config(tmp_path / "model", SCALAR, scenarios)
    folder = armsdyn.run_experiment(parse_config(data), out=tmp_path / "results")
    with xr.open_dataset(folder / "results.nc") as saved:
        ds = saved.load()
    assert ds.attrs["engine"] == "compiled (numpy)"
    reference = armsdyn.run(parse_config({**data, "experiment": {**data["experiment"], "engine": "pysd"}}))
    assert reference.attrs["engine"] == "pysd"
    for name in ("arms", "build", "first_grievance", "initial_arms", "grievance_weight", "perceived_grievance"):
        np.testing.assert_allclose(ds[name].values, reference[name].values, rtol=RTOL, atol=0, err_msg=name)
    # The series is what the scenarios differ by: the rising grievance arms more than the base.
    assert float(ds["arms"].sel(scenario="rising").isel(time=-1)) > float(ds["arms"].sel(scenario="base").isel(time=-1))


def test_run_experiment_with_element_and_whole_series_equals_pysd(tmp_path: Path) -> None:
    """Series on an element and on a whole subscripted constant (its other elements keep their own values)."""
    scenarios = [
        {"name": "base"},
        {"name": "china", "parameters": {"grievance[China]": _pairs(EARLY_END), "grievance[USA]": 4}},
        {"name": "all", "parameters": {"grievance": _pairs(STARTS_BEFORE), "grievance[USSR]": 0.5}},
    ]
    data = _config(tmp_path, SUBSCRIPTED, scenarios)
    ds = armsdyn.run(parse_config(data))
    assert ds.attrs["engine"] == "compiled (numpy)"
    reference = armsdyn.run(parse_config({**data, "experiment": {**data["experiment"], "engine": "pysd"}}))
    for name in ("arms", "build", "first_grievance", "initial_arms", "perceived_grievance"):
        np.testing.assert_allclose(ds[name].values, reference[name].values, rtol=RTOL, atol=0, err_msg=name)
    assert float(ds["first_grievance"].sel(scenario="all", state="USSR").isel(time=0)) == 0.5


def test_a_model_the_engine_cannot_compile_falls_back_to_pysd_with_a_warning(tmp_path: Path) -> None:
    model = tmp_path / "model" / "unsupported.mdl"
    model.parent.mkdir()
    text = SCALAR.read_text().replace("service life = 5 ~", "service life = 5 + RANDOM UNIFORM(0, 0, 1) ~")
    model.write_text(text)
    scenarios = [{"name": "rising", "parameters": {"grievance": _pairs(INSIDE)}}]
    data = {"experiment": {"name": "fallback", "model": str(model)}, "scenarios": scenarios}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = armsdyn.run(parse_config(data))
    assert any(issubclass(w.category, FallbackWarning) for w in caught), [str(w.message) for w in caught]
    assert ds.attrs["engine"] == "pysd"
