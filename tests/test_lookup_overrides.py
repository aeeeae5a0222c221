"""A scenario may redraw a graphical function (lookup) with its own points, as Vensim users do."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import armsdyn
from armsdyn import ConfigError
from armsdyn.config import parse_config

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
