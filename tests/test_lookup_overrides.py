"""A scenario may redraw a graphical function (lookup) with its own points, as Vensim users do."""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import armsdyn
from armsdyn import ConfigError
from armsdyn.config import parse_config
from armsdyn.ensemble import UnsupportedConstruct, compile_model
from armsdyn.model import load_model

MODEL = """{{UTF-8}}
arms = INTEG(response - arms / 5, 1) ~ arms ~ Arms. |
response = effect of threat(threat) * 2 ~ arms/Year ~ Response read off the graphical function. |
threat = arms / 10 ~ Dmnl ~ Threat. |
effect of threat([(0,0)-(4,4)],{points}) ~ Dmnl ~ The graphical function. |
INITIAL TIME = 0 ~ Year ~ |
FINAL TIME = 10 ~ Year ~ |
TIME STEP = 0.25 ~ Year ~ |
SAVEPER = 1 ~ Year ~ |
"""
FILE_POINTS = "(0,0.2),(1,1),(2,1.5),(4,2)"
NEW_POINTS = [[0, 0.2], [1, 2], [4, 4]]


def _model(folder: Path, points: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "threat.mdl"
    path.write_text(MODEL.format(points=points))
    return path


def _run(model: Path, scenarios: list[dict]) -> object:
    data = {
        "experiment": {"name": "lk", "model": str(model)},
        "scenarios": scenarios,
        "output": {"variables": ["arms"]},
    }
    return armsdyn.run(parse_config(data))


def test_a_scenario_with_new_points_runs_as_the_redrawn_model_file(tmp_path: Path) -> None:
    """Overriding the lookup gives what editing its points in the file gives; other scenarios keep the file's."""
    original = _model(tmp_path / "original", FILE_POINTS)
    ds = _run(original, [{"name": "file"}, {"name": "redrawn", "parameters": {"effect of threat": NEW_POINTS}}])
    edited = _model(tmp_path / "edited", ",".join(f"({x},{y})" for x, y in NEW_POINTS))
    reference = _run(edited, [{"name": "file"}])
    np.testing.assert_allclose(
        ds["arms"].sel(scenario="redrawn").values, reference["arms"].isel(scenario=0).values, rtol=1e-12
    )
    # Not vacuous: the redrawn function arms far more than the file's.
    assert float(ds["arms"].sel(scenario="redrawn").isel(time=-1)) > 2 * float(
        ds["arms"].sel(scenario="file").isel(time=-1)
    )


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (2.0, "is a lookup (graphical function): give at least two [x, y] points"),
        ([[0, 1]], "give at least two [x, y] points"),
        ([[1, 0], [0, 1]], "x increasing strictly"),
        ([[0, 1], [1, "a"]], "pairs of finite numbers"),
    ],
    ids=["number", "one point", "decreasing", "text"],
)
def test_bad_points_are_a_config_error_naming_the_lookup(tmp_path: Path, value: object, message: str) -> None:
    model = _model(tmp_path, FILE_POINTS)
    with pytest.raises(ConfigError) as err:
        _run(model, [{"name": "bad", "parameters": {"effect of threat": value}}])
    assert 'scenarios[0].parameters."effect of threat"' in str(err.value)
    assert message in str(err.value)


# ---------------------------------------------------------------------- the compiled engine
FOLDED_MODEL = """{{UTF-8}}
arms = INTEG(response - arms / 5, effect of threat(0.5)) ~ arms ~ Arms, starting from the function's value. |
response = effect of threat(threat) * gain + base effect ~ arms/Year ~ Response read off the graphical function. |
gain = 2 ~ arms/Year ~ How strongly the response follows the function. |
base effect = effect of threat(1.5) ~ Dmnl ~ A number the engine computes once from the table. |
threat = arms / 10 + (Time - 4) / 2 ~ Dmnl ~ Threat, from below the table's points to above them. |
effect of threat([(0,0)-(4,4)],{points}) ~ Dmnl ~ The graphical function. |
INITIAL TIME = 0 ~ Year ~ |
FINAL TIME = 10 ~ Year ~ |
TIME STEP = 0.25 ~ Year ~ |
SAVEPER = 1 ~ Year ~ |
"""
XMILE_MODEL = """<xmile xmlns="http://docs.oasis-open.org/xmile/ns/XMILE/v1.0" version="1.0">
    <header><options namespace="std"/><vendor>armsdyn tests</vendor><product lang="en">armsdyn</product></header>
    <sim_specs method="Euler" time_units="Year"><start>0</start><stop>10</stop><dt>0.25</dt></sim_specs>
    <dimensions/>
    <model>
        <variables>
            <aux name="TIME STEP"><eqn>0.25</eqn><units>Year</units></aux>
            <aux name="INITIAL TIME"><eqn>0</eqn><units>Year</units></aux>
            <aux name="FINAL TIME"><eqn>10</eqn><units>Year</units></aux>
            <aux name="SAVEPER"><eqn>1</eqn><units>Year</units></aux>
            <stock name="arms"><eqn>1</eqn><inflow>response</inflow><outflow>retirement</outflow></stock>
            <flow name="response"><eqn>effect_of_threat(threat) * 2 + 1</eqn></flow>
            <flow name="retirement"><eqn>arms / 5</eqn></flow>
            <aux name="threat"><eqn>arms / 10 + (TIME - 4) / 2</eqn></aux>
            <gf name="effect of threat" type="{kind}"><xscale min="0" max="3"/><ypts>0.2,1,1.5,2</ypts></gf>
        </variables>
    </model>
</xmile>
"""
Table = tuple[tuple[float, float], ...]
# Tables of other lengths and ranges than the file's (threat runs from about -2 to 4).
TABLES = [
    ((0.0, 0.2), (1.0, 2.0), (4.0, 4.0)),
    ((0.5, 1.0), (1.7, 0.3), (2.5, 3.0), (6.0, 1.0)),
    ((-1.0, 0.5), (0.9, 1.5)),
]
NUMBA = importlib.util.find_spec("numba") is not None
BACKENDS = ["numpy", pytest.param("numba", marks=pytest.mark.skipif(not NUMBA, reason="numba is not installed"))]


# More points than the numba kernel reads branch-free (it then searches each run's table).
DENSE = tuple((x / 4, 1 + 0.5 * np.sin(x)) for x in range(-4, 20))


@functools.cache
def _pysd(path: Path, table: Table | None, variables: tuple[str, ...]) -> dict[str, np.ndarray]:
    """PySD's run of `path` with "effect of threat" redrawn as `table` (None: the file's), once per process.

    The numpy and numba variant of a test (one xdist group, so one worker) compare with the same runs.
    """
    model = load_model(path)
    redrawn = None if table is None else pd.Series([y for _, y in table], index=[x for x, _ in table])
    out = model.simulate({} if redrawn is None else {"effect of threat": redrawn}, model.time, variables)
    for values in out.values():
        values.setflags(write=False)  # shared: no test may change another's reference
    return out


def _assert_tables_match_pysd(path: Path, backend: str, variables: list[str], dense: bool = False) -> None:
    """Each run of the compiled engine, one table per run (or the file's), equals PySD's with that table."""
    compiled = compile_model(path, backend=backend)
    tables = [*TABLES, None, DENSE] if dense else [*TABLES, None]
    ds = compiled.run({}, variables=variables, lookups={"effect of threat": tables})
    model = load_model(path)
    for j, table in enumerate(tables):
        reference = _pysd(path, table, tuple(variables))
        for name in variables:
            got = ds[model.variable(name).py_name].isel(run=j).values
            np.testing.assert_allclose(got, reference[name], rtol=1e-9, atol=0, err_msg=f"run {j} {name!r}")


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The folded model and the XMILE model of each kind, one file each for both backends' tests."""
    folder = tmp_path_factory.mktemp("lookups")
    paths = {"folded": folder / "folded.mdl", "extrapolate": folder / "extrapolate.xmile"}
    paths["discrete"] = folder / "discrete.xmile"
    paths["folded"].write_text(FOLDED_MODEL.format(points=FILE_POINTS))
    for kind in ("extrapolate", "discrete"):
        paths[kind].write_text(XMILE_MODEL.format(kind=kind))
    return paths


@pytest.mark.xdist_group("lookups:folded")
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dense", [False, True], ids=["few points", "many points"])
def test_the_compiled_engine_redraws_a_lookup_per_run_as_pysd_does(
    models: dict[str, Path], backend: str, dense: bool
) -> None:
    """Calls in flows, in a stock's initial value and in a number computed once all read the run's table."""
    _assert_tables_match_pysd(models["folded"], backend, ["arms", "response", "base effect", "threat"], dense)


@pytest.mark.xdist_group("lookups:xmile")
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", ["extrapolate", "discrete"])
def test_redrawn_xmile_lookups_keep_their_kind(models: dict[str, Path], backend: str, kind: str) -> None:
    """XMILE's extrapolating and discrete graphical functions continue a redrawn table as PySD does."""
    _assert_tables_match_pysd(models[kind], backend, ["arms", "response", "threat"])


def test_scenarios_that_redraw_a_lookup_run_compiled_with_the_others(tmp_path: Path) -> None:
    """One batch: the file's table, redrawn ones, a time series; the engine attr names no PySD run."""
    model = tmp_path / "model" / "folded.mdl"
    model.parent.mkdir()
    model.write_text(FOLDED_MODEL.format(points=FILE_POINTS))
    scenarios = [
        {"name": "file"},
        {"name": "redrawn", "parameters": {"effect of threat": NEW_POINTS}},
        {"name": "other", "parameters": {"effect of threat": [[0, 1], [0.5, 0.1], [3, 2.5]], "gain": 3}},
        {"name": "series", "parameters": {"effect of threat": NEW_POINTS, "gain": [[2, 1], [6, 3]]}},
    ]
    data = {
        "experiment": {"name": "lk", "model": str(model)},
        "scenarios": scenarios,
        "output": {"variables": ["arms", "response", "base effect"]},
    }
    ds = armsdyn.run(parse_config(data))
    assert ds.attrs["engine"] == "compiled (numpy)"
    reference = armsdyn.run(parse_config({**data, "experiment": {**data["experiment"], "engine": "pysd"}}))
    for name in ("arms", "response", "base_effect"):
        np.testing.assert_allclose(ds[name].values, reference[name].values, rtol=1e-9, atol=0, err_msg=name)
    # Not vacuous: the scenarios differ.
    assert len({round(float(v), 6) for v in ds["arms"].isel(time=-1).values}) == 4


def test_sampling_a_number_computed_from_a_redrawn_lookup_is_unsupported(tmp_path: Path) -> None:
    """The batch cannot both sample it and compute it from each run's table (configs call it an auxiliary)."""
    path = tmp_path / "folded.mdl"
    path.write_text(FOLDED_MODEL.format(points=FILE_POINTS))
    compiled = compile_model(path, backend="numpy")
    with pytest.raises(UnsupportedConstruct, match="'base effect' uses a number computed from lookup"):
        compiled.run({"base effect": [3.0, 1.0]}, lookups={"effect of threat": [TABLES[0], None]})
    # Either alone is fine.
    compiled.run({"base effect": [3.0, 1.0]})
    compiled.run({}, lookups={"effect of threat": [TABLES[0], None]})
