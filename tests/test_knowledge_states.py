"""The knowledge model written with a ``state`` subscript: the same race as its scalar twin, and N states.

``tests/data/knowledge_engine_scalar.mdl`` is the model as it was written before
subscripts were supported: every per-state equation twice, suffixed ``A`` and
``B``. The shipped model writes each mechanism once over a ``state`` range, with
adversaries through a ``rivalry[state, rival]`` matrix. Both run through the
normal config path with PySD and must agree exactly, in symmetric and asymmetric
scenarios; and a third state must be one more element, nothing else.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import xarray as xr

import armsdyn
from armsdyn.config import parse_config
from armsdyn.metrics import compute_metrics
from armsdyn.model import load_model
from tests.conftest import MODELS
from tests.helpers import SCALAR_TWIN, state_parameters, subscripted_counterpart

SUBSCRIPTED = MODELS / "knowledge_engine.mdl"
SCALAR = SCALAR_TWIN

# Symmetric and asymmetric cases, each touching a mechanism that couples the states.
CASES: dict[str, dict[str, Any]] = {
    "treaty": {},
    "lead and cheating": {
        "initial military knowledge": {"A": 1.0},
        "adoption time": {"A": 5, "B": 15},
        "knowledge half life": {"B": 3},
        "treaty research restriction": 1,
        "covert research share": {"B": 0.5},
    },
    "open-ended, forgetting": {"knowledge half life": {"A": 0, "B": 0}, "treaty end time": 200},
}


def _run(
    model: Path,
    scenarios: dict[str, dict[str, float]],
    variables: list[str] | None = None,
    engine: str = "compiled",
    time: tuple[float, float] = (100, 0.0625),
) -> xr.Dataset:
    final, step = time
    data = {
        "experiment": {"name": "twins", "model": str(model), "engine": engine},
        "time": {"initial": 0, "final": final, "step": step, "saveper": step},
        "scenarios": [{"name": f"s{i}", "parameters": p} for i, p in enumerate(scenarios.values())],
    }
    if variables:
        data["output"] = {"variables": variables}
    return armsdyn.run(parse_config(data)).assign_coords(scenario=list(scenarios))


def _everything(model: Path) -> list[str]:
    """Every variable of a model that has values over time (stocks, flows and auxiliaries)."""
    return [v.name for v in load_model(model).variables.values() if v.kind not in ("constant", "lookup")]


#: The two tests that run the scalar file with PySD share one worker, so they share its translation (2 s).
TWINS = pytest.mark.xdist_group("knowledge_twins")


def _twin(subscripted: xr.Dataset, key: str, name: str) -> xr.DataArray:
    """The subscripted model's counterpart of the scalar file's variable `name` (Dataset key `key`)."""
    keys = {da.attrs["long_name"]: k for k, da in subscripted.data_vars.items()}
    per_state = {n for n, k in keys.items() if "state" in subscripted[k].dims}
    var, element = subscripted_counterpart(name, per_state)
    return subscripted[key] if element is None else subscripted[keys[var]].sel(state=element)


@TWINS
@pytest.mark.slow
def test_the_subscripted_model_is_its_scalar_twin() -> None:
    """Every variable of the scalar file (PySD) equals its element of the subscripted model (compiled engine)."""
    scalar = _run(
        SCALAR,
        {k: state_parameters(v, subscripted=False) for k, v in CASES.items()},
        _everything(SCALAR),
        engine="pysd",
    )
    subscripted = _run(
        SUBSCRIPTED, {k: state_parameters(v, subscripted=True) for k, v in CASES.items()}, _everything(SUBSCRIPTED)
    )
    # The cases differ from each other (the overrides took effect), so the comparison is not vacuous.
    hardware_b = scalar["hardware_b"]
    assert float(abs(hardware_b.sel(scenario="lead and cheating") - hardware_b.sel(scenario="treaty")).max()) > 1
    for key, da in scalar.data_vars.items():
        name = da.attrs["long_name"]
        np.testing.assert_allclose(_twin(subscripted, key, name).values, da.values, rtol=1e-9, atol=1e-12, err_msg=name)
    assert len(scalar.data_vars) > 160


@TWINS
@pytest.mark.slow
def test_pysd_runs_the_subscripted_model_as_its_scalar_twin() -> None:
    """The reference engine on the subscripted file itself: one scenario, as PySD is slow on subscripts.

    A coarse step and 40 years keep it short (PySD takes about 0.05 s a step on
    this file): the treaty is signed at 30.5, B's cheating detected and the
    treaty broken at 32, and A and B regain their power at 33.5 and 34.5, so
    every event of the case happens inside. Both files run on the same grid, so
    they must still agree exactly.
    """
    case = {"lead and cheating": CASES["lead and cheating"]}
    names = ["hardware", "insecurity", "effective power", "military knowledge", "regain time", "treaty broken"]
    grid = (40, 0.5)
    scalar = _run(
        SCALAR, {k: state_parameters(v, subscripted=False) for k, v in case.items()}, engine="pysd", time=grid
    )
    subscripted = _run(
        SUBSCRIPTED,
        {k: state_parameters(v, subscripted=True) for k, v in case.items()},
        names,
        engine="pysd",
        time=grid,
    )
    last = scalar.isel(scenario=0, time=-1)
    assert float(last["treaty_broken"]) == 1.0  # the breakdown is inside the window
    assert float(last["power_regained_a"]) == float(last["power_regained_b"]) == 1.0  # and both rebuilds
    for key, da in scalar.data_vars.items():
        name = da.attrs["long_name"]
        per_state = re.fullmatch(r"(.+) [AB]", name)
        if (per_state and per_state.group(1) in names) or name in names:
            np.testing.assert_array_equal(_twin(subscripted, key, name).values, da.values, err_msg=name)


def _three_states(tmp_path: Path) -> Path:
    """The shipped model with a third state C: one more element and one more row and column of rivalry."""
    text = SUBSCRIPTED.read_text()
    text = text.replace("state:\n\tA, B\n", "state:\n\tA, B, C\n", 1)
    text = text.replace(
        "rivalry[state, rival]=\n\t0, 1;\n\t1, 0;\n", "rivalry[state, rival]=\n\t0, 1, 1;\n\t1, 0, 1;\n\t1, 1, 0;\n", 1
    )
    path = tmp_path / "knowledge_three_states.mdl"
    path.write_text(text)
    return path


@pytest.mark.slow
def test_a_third_state_is_one_more_element(tmp_path: Path) -> None:
    """Three states run with nothing but the range and the rivalry matrix changed, and the metrics follow.

    Each state then faces two adversaries, so its perceived threat at the start
    is about twice what it is in the two-state race; with all three alike, the
    three states behave identically; and the treaty metrics gain C's columns
    and the pairs' mobilisation edges.
    """
    three = _three_states(tmp_path)
    names = [
        "perceived threat",
        "insecurity",
        "hardware",
        *armsdyn.treaty.required_variables(),
        "peak power ratio after breakdown",
    ]
    run3 = _run(three, {"treaty": {}}, names)
    ds3 = run3.sel(scenario="treaty")
    ds2 = _run(SUBSCRIPTED, {"treaty": {}}, names).sel(scenario="treaty")
    assert list(ds3["state"].values) == ["A", "B", "C"]
    np.testing.assert_allclose(ds3["hardware"].sel(state="A"), ds3["hardware"].sel(state="C"), rtol=1e-12)
    threat_ratio = float(
        ds3["perceived_threat"].sel(state="A", time=0) / ds2["perceived_threat"].sel(state="A", time=0)
    )
    assert threat_ratio == pytest.approx(2.0, rel=1e-9)
    assert float(ds3["insecurity"].sel(state="A", time=20)) > float(ds2["insecurity"].sel(state="A", time=20))
    metrics = compute_metrics(run3)
    assert {
        "breakout time C",
        "dampening efficiency C",
        "mobilisation edge A over C",
        "mobilisation edge B over C",
    } <= set(metrics.columns)
