"""Property test: mutated configs give a clear ConfigError or a valid run, never a crash."""

from __future__ import annotations

import copy
import tomllib
import warnings
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import armsdyn
from armsdyn import ConfigError, NumericalWarning
from armsdyn.config import parse_config
from tests.conftest import MODELS
from tests.test_config import GOOD

BASE: dict[str, Any] = tomllib.loads(
    f'[experiment]\nname = "fuzz"\nmodel = "{(MODELS / "richardson.mdl").as_posix()}"\n' + GOOD
)

values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**20), max_value=10**20),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.sampled_from(["../../etc/passwd", "/abs/path", "con", "nul", "a/b", "ünïcødé", "", " ", "__import__('os')"]),
    st.lists(st.floats(min_value=-10, max_value=10), max_size=3),
    st.lists(st.lists(st.floats(allow_nan=True), min_size=0, max_size=3), max_size=3),
    st.dictionaries(st.text(max_size=5), st.integers(), max_size=2),
)


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix] if prefix else []
    if isinstance(node, dict):
        for k, v in node.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += _paths(v, (*prefix, i))
    return out


def _parent(data: Any, path: tuple[Any, ...]) -> Any:
    for key in path[:-1]:
        data = data[key]
    return data


@st.composite
def mutated(draw: st.DrawFn) -> dict[str, Any]:
    data = copy.deepcopy(BASE)
    for _ in range(draw(st.integers(1, 3))):
        paths = _paths(data)
        if not paths:
            break
        path = draw(st.sampled_from(paths))
        parent = _parent(data, path)
        key = path[-1]
        action = draw(st.sampled_from(["drop", "rename", "retype", "duplicate"]))
        if action == "drop":
            del parent[key]
        elif action == "retype":
            parent[key] = draw(values)
        elif action == "rename" and isinstance(parent, dict):
            parent[draw(st.text(min_size=1, max_size=20))] = parent.pop(key)
        elif action == "duplicate" and isinstance(parent, list):
            parent.append(copy.deepcopy(parent[key]))
    return data


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated())
def test_mutated_config_is_rejected_clearly_or_runs(data: dict[str, Any]) -> None:
    try:
        exp = parse_config(data)
    except ConfigError as exc:
        message = str(exc)
        assert message.startswith("<config>: ")
        assert "Traceback" not in message
        return
    steps = (exp.time.final - exp.time.initial) / exp.time.step
    if steps > 20_000:  # valid but too long to run inside a property test
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NumericalWarning)
        ds = armsdyn.run(exp)
    assert ds.sizes["scenario"] == len(exp.scenarios)
