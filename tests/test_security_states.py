"""The security-dilemma model written over a ``state`` range: its scalar twin's race, and N states.

``tests/data/security_dilemma_scalar.mdl`` is the model as written before
subscripts were supported, every per-state equation twice with a suffix ``A`` or
``B``. The shipped model writes each mechanism once, with adversaries through a
``rivalry[state, rival]`` matrix. The scalar file runs with PySD (the reference
engine), the shipped one through the normal config path, and every variable must
agree; PySD on the subscripted file itself agrees too; and a third state is one
more element, nothing else.
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
from armsdyn.model import load_model
from tests.conftest import MODELS

SUBSCRIPTED = MODELS / "security_dilemma.mdl"
SCALAR = Path(__file__).parent / "data" / "security_dilemma_scalar.mdl"


def _step(t: float, value: float) -> list[list[float]]:
    return [[0.0, 0.0], [t, 0.0], [t + 0.0625, value]]


# Per-state values as {element: value}; each case touches a mechanism that couples the states.
CASES: dict[str, dict[str, Any]] = {
    "status quo": {},
    "B power": {"cost of defeat": {"B": 0.5}, "opportunism": {"B": 2.0}},
    "security, unequal": {"reflexive weight": {"A": 0.5, "B": 0.2}, "defensive share": {"A": 0.5, "B": 0.1}},
    "A restrains unilaterally": {
        "restraint pace": {"A": _step(30, 0.2)},
        "reciprocity": {"A": 0.0},
        "cost of defeat": {"B": 0.5},
        "opportunism": {"B": 2.0},
        "perception delay": {"A": 0.5, "B": 4.0},
    },
}


#: The two tests that run the scalar file with PySD share one worker, so they share its translation.
TWINS = pytest.mark.xdist_group("security_twins")


def _parameters(case: dict[str, Any], element: str) -> dict[str, Any]:
    """A case's parameters named per element: ``"{name} A"`` (scalar file) or ``"{name}[A]"``."""
    return {element.format(name=name, s=s): v for name, by_state in case.items() for s, v in by_state.items()}


def _run(model: Path, scenarios: dict[str, dict[str, Any]], engine: str, time: tuple[float, float]) -> xr.Dataset:
    final, step = time
    every = [v.name for v in load_model(model).variables.values() if v.kind not in ("constant", "lookup")]
    data = {
        "experiment": {"name": "twins", "model": str(model), "engine": engine},
        "time": {"initial": 0, "final": final, "step": step, "saveper": step},
        "scenarios": [{"name": f"s{i}", "parameters": p} for i, p in enumerate(scenarios.values())],
        "output": {"variables": every},
    }
    return armsdyn.run(parse_config(data)).assign_coords(scenario=list(scenarios))


def _twin(subscripted: xr.Dataset, name: str) -> xr.DataArray:
    """The subscripted model's counterpart of the scalar file's variable `name`."""
    base, state = re.fullmatch(r"(.+) ([AB])", name).groups()  # type: ignore[union-attr]
    key = "threat_posed" if base == "threat posed by" else base.replace(" ", "_")
    return subscripted[key].sel(state=state)


def _assert_twins(scalar: xr.Dataset, subscripted: xr.Dataset) -> None:
    for da in scalar.data_vars.values():
        name = da.attrs["long_name"]
        np.testing.assert_allclose(_twin(subscripted, name).values, da.values, rtol=1e-9, atol=1e-12, err_msg=name)


@TWINS
@pytest.mark.slow
def test_the_subscripted_model_is_its_scalar_twin() -> None:
    """Every variable of the scalar file (PySD) equals its element of the shipped model (default engine)."""
    time = (100, 0.0625)
    scalar = _run(SCALAR, {k: _parameters(v, "{name} {s}") for k, v in CASES.items()}, "pysd", time)
    subscripted = _run(SUBSCRIPTED, {k: _parameters(v, "{name}[{s}]") for k, v in CASES.items()}, "compiled", time)
    assert "pysd" not in subscripted.attrs["engine"], subscripted.attrs["engine"]
    # The cases differ (the overrides took effect, the series included), so the comparison is not vacuous.
    hardware_a = scalar["hardware_a"]
    assert (
        float(abs(hardware_a.sel(scenario="A restrains unilaterally") - hardware_a.sel(scenario="B power")).max()) > 5
    )
    assert len(scalar.data_vars) == 88  # 44 per state: every stock, flow and auxiliary
    _assert_twins(scalar, subscripted)


@TWINS
@pytest.mark.slow
def test_pysd_runs_the_subscripted_model_as_its_scalar_twin() -> None:
    """The reference engine on the subscripted file itself, on a coarse grid (PySD is slow on subscripts)."""
    case = {"B power": CASES["B power"]}
    time = (30, 0.5)
    scalar = _run(SCALAR, {k: _parameters(v, "{name} {s}") for k, v in case.items()}, "pysd", time)
    subscripted = _run(SUBSCRIPTED, {k: _parameters(v, "{name}[{s}]") for k, v in case.items()}, "pysd", time)
    assert subscripted.attrs["engine"] == "pysd"
    _assert_twins(scalar, subscripted)


def _three_states(tmp_path: Path, rivalry: str) -> Path:
    """The shipped model with a third state C: one more element and one more row and column of rivalry."""
    text = SUBSCRIPTED.read_text()
    text = text.replace("state:\n\tA, B\n", "state:\n\tA, B, C\n", 1)
    two = "rivalry[state, rival]=\n\t0, 1;\n\t1, 0;\n"
    assert two in text
    text = text.replace(two, f"rivalry[state, rival]=\n{rivalry}", 1)
    path = tmp_path / "security_three_states.mdl"
    path.write_text(text)
    return path


@pytest.mark.slow
def test_a_third_state_is_one_more_element(tmp_path: Path) -> None:
    """A third state needs only the range and the rivalry matrix; who is whose adversary decides the race.

    With C a bystander (no adversary, nobody's adversary), A and B run exactly
    their two-state race and C keeps only its grievance forces. With all three
    mutual adversaries, each faces twice the threat at the start and the race
    runs higher than with two.
    """
    time = (60, 0.0625)
    scenario = {"B power": _parameters(CASES["B power"], "{name}[{s}]")}
    two = _run(SUBSCRIPTED, scenario, "compiled", time).isel(scenario=0)
    bystander = _run(_three_states(tmp_path, "\t0, 1, 0;\n\t1, 0, 0;\n\t0, 0, 0;\n"), scenario, "compiled", time)
    bystander = bystander.isel(scenario=0)
    assert list(bystander["state"].values) == ["A", "B", "C"]
    for var in ("hardware", "insecurity", "relative lead", "restraint"):
        key = var.replace(" ", "_")
        np.testing.assert_allclose(bystander[key].sel(state=["A", "B"]), two[key], rtol=1e-12, err_msg=var)
    assert float(abs(bystander["perceived_threat"].sel(state="C")).max()) == 0
    assert float(bystander["insecurity"].sel(state="C").isel(time=-1)) == 0
    # C's forces settle where its grievance alone puts them, below the two racing states'.
    assert float(bystander["hardware"].sel(state="C").isel(time=-1)) < 0.5 * float(
        two["hardware"].sel(state="A").isel(time=-1)
    )

    everyone = _run(_three_states(tmp_path, "\t0, 1, 1;\n\t1, 0, 1;\n\t1, 1, 0;\n"), scenario, "compiled", time)
    everyone = everyone.isel(scenario=0)
    ratio = everyone["perceived_threat"].sel(state="A").isel(time=0) / two["perceived_threat"].sel(state="A").isel(
        time=0
    )
    assert float(ratio) == pytest.approx(2.0, rel=1e-12)
    assert float(everyone["hardware"].sel(state="A").isel(time=-1)) > float(
        two["hardware"].sel(state="A").isel(time=-1)
    )
