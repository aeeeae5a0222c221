"""A subscripted graphical function (lookup) redrawn per run: whole, or one element's table.

A three-state model written as a Vensim user writes it (tests/data/threat_lookup_subscripted.mdl):
each state's response reads its own table of ``effect of threat[state]``, in a flow and in a
number the compiler computes once (``base effect``).
"""

from __future__ import annotations

import functools
import importlib.util
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import armsdyn
from armsdyn import ConfigError
from armsdyn.config import parse_config
from armsdyn.ensemble import SampleError, UnsupportedConstruct, compile_model
from armsdyn.model import load_model
from armsdyn.scenario_inputs import batch_inputs
from tests.conftest import SHARED

DATA = Path(__file__).parent / "data"
MODEL = DATA / "threat_lookup_subscripted.mdl"
VARIABLES = ["arms", "response", "base effect", "threat"]
NUMBA = importlib.util.find_spec("numba") is not None
BACKENDS = ["numpy", pytest.param("numba", marks=pytest.mark.skipif(not NUMBA, reason="numba is not installed"))]

Table = tuple[tuple[float, float], ...]

# Tables of other lengths and ranges than the file's (threat runs from about -2 to 4).
A = ((0.0, 0.2), (1.0, 2.0), (4.0, 4.0))
B = ((0.5, 1.0), (1.7, 0.3), (2.5, 3.0), (6.0, 1.0))
C = ((-1.0, 0.5), (0.9, 1.5))
# More points than the numba kernel reads branch-free (it then searches each run's table).
DENSE = tuple((x / 4, 1 + 0.5 * np.sin(x)) for x in range(-4, 20))

RUSSIA_FILE = ((0.0, 0.5), (2.0, 1.0), (3.0, 2.0))  # Russia's table in the model file

# One run per row: the whole lookup's table and Russia's own (None: the run gives none). The
# engine takes Russia's column as Russia's in every run, as for a constant's elements: None
# there is the file's table, whatever the whole lookup's column says.
RUNS = [
    (None, A),  # one element redrawn, the others the file's
    (B, None),  # every element redrawn but Russia
    (A, C),  # Russia's own table wins over the whole lookup's
    (None, None),  # the file's tables
    (DENSE, B),
]


def _series(table: tuple[tuple[float, float], ...]) -> pd.Series:
    return pd.Series([y for _, y in table], index=[x for x, _ in table], dtype=float)


def _pysd_params(whole: tuple | None, russia: tuple | None) -> dict[str, Table]:
    params = {}
    if whole is not None:
        params["effect of threat"] = whole
    if russia is not None or whole is not None:
        params["effect of threat[Russia]"] = RUSSIA_FILE if russia is None else russia
    return params


@functools.cache
def _pysd_cached(
    path: Path, tables: tuple[tuple[str, Table], ...], variables: tuple[str, ...]
) -> dict[str, np.ndarray]:
    model = load_model(path)
    out = model.simulate({name: _series(table) for name, table in tables}, model.time, variables)
    for values in out.values():
        values.setflags(write=False)  # shared by the tests that ask for it: none may change it
    return out


def _pysd(path: Path, tables: dict[str, Table], variables: list[str]) -> dict[str, np.ndarray]:
    """PySD's run of the model file `path` with redrawn `tables`, computed once per process.

    PySD runs a subscripted lookup through xarray, a second or more a run: the numpy and numba
    variant of a test (one xdist group, so one worker) compare with the same reference runs.
    """
    return _pysd_cached(path, tuple(sorted(tables.items())), tuple(variables))


@pytest.mark.xdist_group("subscripted_lookups:threat")
@pytest.mark.parametrize("backend", BACKENDS)
def test_the_compiled_engine_redraws_elements_of_a_subscripted_lookup_as_pysd_does(backend: str) -> None:
    """Every run (whole, one element, both, neither) equals PySD's run with the same tables to 1e-9."""
    compiled = compile_model(MODEL, backend=backend)
    lookups = {
        "effect of threat": [whole for whole, _ in RUNS],
        "effect of threat[Russia]": [russia for _, russia in RUNS],
    }
    ds = compiled.run({}, variables=VARIABLES, lookups=lookups)
    model = load_model(MODEL)
    for j, (whole, russia) in enumerate(RUNS):
        reference = _pysd(MODEL, _pysd_params(whole, russia), VARIABLES)
        for name in VARIABLES:
            got = ds[model.variable(name).py_name].isel(run=j).transpose("time", "state").values
            np.testing.assert_allclose(got, reference[name], rtol=1e-9, atol=1e-12, err_msg=f"run {j} {name!r}")
    # Not vacuous: every run differs from the others.
    final = ds["arms"].isel(time=-1).transpose("run", "state").values
    assert len({tuple(np.round(row, 6)) for row in final}) == len(RUNS)


def _edited_model(folder: Path, element: str, table: tuple[tuple[float, float], ...]) -> Path:
    """The model file with one element's points written in, as a user redraws it in Vensim."""
    text = MODEL.read_text()
    points = ",".join(f"({x:g},{y:g})" for x, y in table)
    text, count = re.subn(
        rf"(effect of threat\[{element}\]\(\[\(0,0\)-\(4,4\)\]),[^)]*\)(?:,\([^)]*\))*", rf"\1,{points}", text
    )
    assert count == 1
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / MODEL.name
    path.write_text(text)
    return path


@pytest.mark.xdist_group("subscripted_lookups:threat")
def test_pysd_runs_a_redrawn_element_as_the_edited_model_file(tmp_path: Path) -> None:
    """The reference side: an element's table given to PySD gives what editing that element in the file gives."""
    model = load_model(MODEL)
    got = model.simulate({"effect of threat[Russia]": _series(B)}, model.time, VARIABLES)
    edited = load_model(_edited_model(tmp_path, "Russia", B))
    expected = edited.simulate({}, edited.time, VARIABLES)
    for name in VARIABLES:
        np.testing.assert_allclose(got[name], expected[name], rtol=1e-12, atol=1e-12, err_msg=name)
    # The next run starts from the file's tables again (PySD redraws its loaded lookup in place).
    again = model.simulate({}, model.time, VARIABLES)
    original = _pysd(MODEL, {}, VARIABLES)  # the file's tables: computed before or after any redraw, the same
    np.testing.assert_array_equal(again["arms"], original["arms"])
    assert not np.allclose(got["arms"], original["arms"])


def test_a_batch_of_scenarios_splits_a_whole_lookup_into_its_elements() -> None:
    """Scenario overrides: a whole lookup is each element's table; an element's own wins; others keep the file's."""
    model = load_model(MODEL)
    runs = [
        {"effect of threat": A},
        {"effect of threat[China]": B},
        {"effect of threat": A, "effect of threat[USA]": C},
    ]
    inputs = batch_inputs(model, runs)
    assert inputs.samples == {}
    assert inputs.series == {}
    assert inputs.lookups == {
        "effect of threat[USA]": [A, None, C],
        "effect of threat[Russia]": [A, None, A],
        "effect of threat[China]": [A, B, A],
    }


@pytest.mark.parametrize(
    ("lookups", "error", "message"),
    [
        (
            {"effect of threat[Rusia]": [A]},
            SampleError,
            r"'effect of threat' has no element 'Rusia' in subscript range 'state'; did you mean 'Russia'\?"
            r" \(allowed: USA, Russia, China\)",
        ),
        ({"gain": [A]}, SampleError, r"'gain' in model .* is a constant, not a lookup, so it has no table to redraw"),
        ({"effect of threat[USA]": [((0, 1), (0, 2))]}, SampleError, r"'effect of threat\[USA\]'.*increase strictly"),
    ],
    ids=["misspelt element", "not a lookup", "bad points"],
)
def test_bad_redraws_name_the_lookup_and_element(lookups: dict, error: type, message: str) -> None:
    compiled = compile_model(MODEL, backend="numpy")
    with pytest.raises(error, match=message):
        compiled.run({}, variables=["arms"], lookups=lookups)


def test_sampling_a_number_computed_from_a_redrawn_element_is_unsupported() -> None:
    """The batch cannot both sample ``base effect`` and compute it from a run's table of one element."""
    compiled = compile_model(MODEL, backend="numpy")
    with pytest.raises(UnsupportedConstruct, match="'base effect' uses a number computed from lookup"):
        compiled.run({"base effect[USA]": [1.0, 2.0]}, lookups={"effect of threat[China]": [A, None]})


XMILE_MODEL = """<xmile xmlns="http://docs.oasis-open.org/xmile/ns/XMILE/v1.0" version="1.0">
    <header><options namespace="std"/><vendor>armsdyn tests</vendor><product lang="en">armsdyn</product></header>
    <sim_specs method="Euler" time_units="Year"><start>0</start><stop>10</stop><dt>0.25</dt></sim_specs>
    <dimensions><dim name="state"><elem name="USA"/><elem name="Russia"/></dim></dimensions>
    <model>
        <variables>
            <aux name="TIME STEP"><eqn>0.25</eqn><units>Year</units></aux>
            <aux name="INITIAL TIME"><eqn>0</eqn><units>Year</units></aux>
            <aux name="FINAL TIME"><eqn>10</eqn><units>Year</units></aux>
            <aux name="SAVEPER"><eqn>1</eqn><units>Year</units></aux>
            <stock name="arms"><dimensions><dim name="state"/></dimensions><eqn>1</eqn>
                <inflow>response</inflow><outflow>retirement</outflow></stock>
            <flow name="response"><dimensions><dim name="state"/></dimensions>
                <eqn>effect_of_threat[state](threat[state]) * 2 + 1</eqn></flow>
            <flow name="retirement"><dimensions><dim name="state"/></dimensions><eqn>arms[state] / 5</eqn></flow>
            <aux name="threat"><dimensions><dim name="state"/></dimensions>
                <eqn>arms[state] / 10 + (TIME - 4) / 2</eqn></aux>
            <gf name="effect of threat" type="{kind}"><dimensions><dim name="state"/></dimensions>
                <xscale min="0" max="3"/><ypts>0.2,1,1.5,2</ypts></gf>
        </variables>
    </model>
</xmile>
"""


@pytest.fixture(scope="module")
def xmile_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The XMILE model with each kind of graphical function, one file per kind that both backends' tests share."""
    folder = tmp_path_factory.mktemp("xmile")
    paths = {kind: folder / f"{kind}.xmile" for kind in ("extrapolate", "discrete")}
    for kind, path in paths.items():
        path.write_text(XMILE_MODEL.format(kind=kind))
    return paths


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    "kind",
    [
        pytest.param(kind, marks=pytest.mark.xdist_group(f"subscripted_lookups:xmile_{kind}"))
        for kind in ("extrapolate", "discrete")
    ],
)
def test_redrawn_elements_of_xmile_lookups_keep_their_kind(
    xmile_models: dict[str, Path], backend: str, kind: str
) -> None:
    """An element's table is continued beyond its points (or stepped) as PySD continues the lookup's kind."""
    path = xmile_models[kind]
    tables = [A, B, None, DENSE]
    ds = compile_model(path, backend=backend).run(
        {}, variables=["response"], lookups={"effect of threat[Russia]": tables}
    )
    for j, table in enumerate(tables):
        params = {} if table is None else {"effect of threat[Russia]": table}
        reference = _pysd(path, params, ["response"])["response"]
        got = ds["response"].isel(run=j).transpose("time", "state").values
        np.testing.assert_allclose(got, reference, rtol=1e-9, atol=1e-12, err_msg=f"run {j}")
    # Not vacuous: threat runs beyond the redrawn tables' points, where the kinds differ.
    assert len({round(float(v), 6) for v in ds["response"].isel(time=-1).sel(state="Russia").values}) == len(tables)


SHARED_LOOKUPS = SHARED / "test-models" / "subscripted_lookups" / "test_subscripted_lookups.mdl"


@pytest.mark.skipif(not SHARED_LOOKUPS.is_file(), reason="the shared test models are not present")
@pytest.mark.xdist_group("subscripted_lookups:two_dimensional")
@pytest.mark.parametrize("backend", BACKENDS)
def test_elements_of_two_dimensional_lookups_are_redrawn_as_pysd_does(backend: str) -> None:
    """The shared case: an element of a lookup over two ranges (``"lookup2dim[B, D]"``) and a whole one-range one."""
    model = load_model(SHARED_LOOKUPS)
    outputs = [v.name for v in model.variables.values() if v.kind not in ("lookup", "constant")]
    runs = [(A, B), (B, None), (None, A)]
    lookups = {"lookup2dim[B, D]": [r for r, _ in runs], "lookup1dim": [w for _, w in runs]}
    ds = compile_model(SHARED_LOOKUPS, backend=backend).run({}, variables=outputs, lookups=lookups)
    for j, (element, whole) in enumerate(runs):
        params = {} if element is None else {"lookup2dim[B, D]": element}
        if whole is not None:
            params["lookup1dim"] = whole
        reference = _pysd(SHARED_LOOKUPS, params, outputs)
        for name in outputs:
            var = model.variable(name)
            got = ds[var.py_name].isel(run=j).transpose("time", *var.dim_names).values
            np.testing.assert_allclose(got, reference[name], rtol=1e-9, atol=1e-12, err_msg=f"run {j} {name!r}")
    # Not vacuous: the redrawn element changes what reads it.
    assert not np.allclose(ds["lookup2vardim1"].isel(run=0).values, ds["lookup2vardim1"].isel(run=2).values)


# ---------------------------------------------------------------------- configs
def _config(model: Path, scenarios: list[dict], parameters: dict | None = None, engine: str = "compiled") -> dict:
    data = {
        "experiment": {"name": "lk", "model": str(model), "engine": engine},
        "scenarios": scenarios,
        "output": {"variables": ["arms", "response", "base effect"]},
    }
    if parameters is not None:
        data["parameters"] = parameters
    return data


def _points(table: tuple[tuple[float, float], ...]) -> list[list[float]]:
    return [[x, y] for x, y in table]


def test_a_config_redraws_a_subscripted_lookup_whole_and_by_element(tmp_path: Path) -> None:
    """Scenarios run compiled, equal to PySD's runs; an element's own points win over the whole lookup's."""
    scenarios = [
        {"name": "file"},
        {"name": "whole", "parameters": {"effect of threat": _points(A)}},
        {"name": "usa", "parameters": {"effect of threat[USA]": _points(B)}},
        {"name": "both", "parameters": {"effect of threat": _points(A), "effect of threat[usa]": _points(B)}},
        # The same tables element by element: must equal "both".
        {
            "name": "each",
            "parameters": {
                f"effect of threat[{s}]": _points(B if s == "USA" else A) for s in ("USA", "Russia", "China")
            },
        },
        # A scenario's whole lookup over the base's element.
        {"name": "over_base", "parameters": {"effect of threat": _points(C)}},
    ]
    data = _config(MODEL, scenarios, parameters={"effect of threat[China]": _points(B)})
    ds = armsdyn.run(parse_config(data))
    assert ds.attrs["engine"] == "compiled (numpy)"
    reference = armsdyn.run(parse_config(_config(MODEL, scenarios, data["parameters"], engine="pysd")))
    for name in ("arms", "response", "base_effect"):
        np.testing.assert_allclose(ds[name].values, reference[name].values, rtol=1e-9, atol=1e-12, err_msg=name)
    arms = ds["arms"].isel(time=-1)
    np.testing.assert_array_equal(arms.sel(scenario="both").values, arms.sel(scenario="each").values)
    # The base redraws China only; "over_base" redraws every element, China included.
    model = load_model(MODEL)
    over = model.simulate({"effect of threat": _series(C)}, model.time, ["arms"])["arms"]
    np.testing.assert_allclose(ds["arms"].sel(scenario="over_base").transpose("time", "state").values, over, rtol=1e-9)
    # Not vacuous: the scenarios differ.
    assert len({tuple(np.round(arms.sel(scenario=s).values, 6)) for s in ("file", "whole", "usa", "both")}) == 4


@pytest.mark.parametrize(
    ("parameters", "where", "message"),
    [
        (
            {"effect of threat[Rusia]": _points(A)},
            '"effect of threat[Rusia]"',
            "'effect of threat' has no element 'Rusia' in subscript range 'state'; did you mean 'Russia'? "
            "(allowed: USA, Russia, China)",
        ),
        (
            {"effect of threat[USA]": 2.0},
            '"effect of threat[USA]"',
            "'effect of threat[USA]' is a lookup (graphical function): give at least two [x, y] points",
        ),
        (
            {"effect of threat[USA]": [[1, 0], [0, 1]]},
            '"effect of threat[USA]"',
            "'effect of threat[USA]' is a lookup: its points must be [x, y] pairs of finite numbers, x increasing",
        ),
        (
            {"effect of threat": {"USA": _points(A)}},
            '"effect of threat"',
            "'effect of threat' is a subscripted lookup: give one list of [x, y] points for every element, "
            'or set one element, e.g. "effect of threat[USA]"',
        ),
        (
            {"effect of threat[USA, China]": _points(A)},
            '"effect of threat[USA, China]"',
            "'effect of threat' has 1 subscript(s) [state], got 2",
        ),
    ],
    ids=["misspelt element", "number", "decreasing x", "table of elements", "two subscripts"],
)
def test_bad_redraws_in_a_config_name_the_key_the_element_and_what_is_allowed(
    parameters: dict, where: str, message: str
) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config(_config(MODEL, [{"name": "bad", "parameters": parameters}]))
    assert f"scenarios[0].parameters.{where}" in str(err.value)
    assert message in str(err.value)
