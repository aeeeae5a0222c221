"""Helpers shared by the engine tests: PySD reference runs computed once, and the knowledge model's scalar twin.

PySD is the reference the compiled engine is checked against, and its runs are
the bulk of the engine tests' time. The same reference run (same model file,
parameters, time settings and variables) is asked for by both backends' variant
of a test, and by identical samples within one test: :func:`pysd_run` computes
it once per test process.

``tests/data/knowledge_engine_scalar.mdl`` is the knowledge model written per
state (``hardware A``, ``hardware B``) where the shipped model has a ``state``
subscript (``hardware[A]``); PySD runs the scalar file about a hundred times
faster. The name mapping between the two lives here, once.
``tests/data/richardson_n_per_element.mdl`` is ``models/richardson_n.mdl`` written
the same way (``arms USA``, ``defence coefficient k USA China`` for
``defence coefficient k[USA, China]``), for the engine tests' PySD reference.
"""

from __future__ import annotations

import re
from collections.abc import Container, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from armsdyn.model import TimeSettings, load_model

ROOT = Path(__file__).resolve().parents[1]
SCALAR_TWIN = ROOT / "tests" / "data" / "knowledge_engine_scalar.mdl"
STATES = ("A", "B")
# Shipped models written over a ``state`` range whose scalar twin (``tests/data/<stem>_scalar.mdl``)
# names a per-state variable other than ``<name> A``, ``<name> B``: the twin's names, in STATES order.
TWIN_NAMES: dict[str, dict[str, tuple[str, str]]] = {
    "knowledge_engine": {
        "peak power ratio after breakdown": (
            "peak power ratio A over B after breakdown",
            "peak power ratio B over A after breakdown",
        )
    },
    "security_dilemma": {"threat posed": ("threat posed by A", "threat posed by B")},
}


def scalar_twin(model: Path) -> Path | None:
    """The scalar twin of a shipped model written over a ``state`` range, if it has one."""
    twin = ROOT / "tests" / "data" / f"{Path(model).stem}_scalar.mdl"
    return twin if twin.is_file() else None


def element_twin(model: Path) -> Path | None:
    """A shipped model written per element, if it has such a twin: its scalar twin or ``<stem>_per_element.mdl``.

    The latter holds matrices (one constant per element of ``k[state, rival]``), which the
    element-by-element check of ``tests/test_ensemble.py`` (one subscript) does not read; the
    engine tests read them through :func:`scalar_names`.
    """
    twin = ROOT / "tests" / "data" / f"{Path(model).stem}_per_element.mdl"
    return scalar_twin(model) or (twin if twin.is_file() else None)


_references: dict[tuple[Any, ...], dict[str, np.ndarray]] = {}


def pysd_run(
    path: Path, params: Mapping[str, float], time: TimeSettings | None, names: Sequence[str]
) -> dict[str, np.ndarray]:
    """PySD's run of the model file `path` (``Model.simulate``), computed once per process for the same inputs.

    Keyed by the file's path and content hash, the parameters, the time settings
    (the model's own when None) and the variables. The arrays are read-only, so
    no test can change another's reference.
    """
    model = load_model(path)
    time = time or model.time
    key = (str(Path(path).resolve()), model.sha256, tuple(sorted(params.items())), time, tuple(names))
    if key not in _references:
        out = model.simulate(params, time, list(names))
        for values in out.values():
            values.setflags(write=False)
        _references[key] = out
    return _references[key]


def scalar_name(name: str) -> str:
    """The scalar twin's name of one element of a subscripted name: ``x[A]`` -> ``x A``, ``k[A, B]`` -> ``k A B``."""
    return re.sub(r"\[([\w, ]+)\]$", lambda m: " " + " ".join(e.strip() for e in m.group(1).split(",")), name)


def scalar_names(
    name: str, model: str = "knowledge_engine", elements: Sequence[tuple[str, ...]] | None = None
) -> list[str]:
    """The scalar twin's variables that hold the subscripted variable `name` of `model` (a stem).

    One per element, in the order of `elements` (tuples of one element per subscript range, as
    :meth:`armsdyn.model.Variable.elements` gives them; default: STATES).
    """
    named = TWIN_NAMES.get(model, {}).get(name)
    if named is not None:
        return list(named)
    return [f"{name} {' '.join(e)}" for e in (elements or [(s,) for s in STATES])]


def subscripted_counterpart(
    name: str, subscripted: Container[str], model: str = "knowledge_engine"
) -> tuple[str, str | None]:
    """The subscripted model's variable and ``state`` element for the scalar twin's variable `name`.

    `subscripted` holds the names of the subscripted model's per-state
    variables; any other name is the same variable in both files (element None).
    """
    for var, names in TWIN_NAMES.get(model, {}).items():
        if name in names:
            return var, STATES[names.index(name)]
    per_state = re.fullmatch(r"(.+) ([AB])", name)
    if per_state and per_state.group(1) in subscripted:
        return per_state.group(1), per_state.group(2)
    return name, None


def state_parameters(case: Mapping[str, Any], *, subscripted: bool) -> dict[str, float]:
    """A scenario's parameters, per-state values (``{"A": 1}``) as ``name[A]`` or, for the scalar twin, ``name A``."""
    out: dict[str, float] = {}
    for name, value in case.items():
        if isinstance(value, Mapping):
            out |= {(f"{name}[{s}]" if subscripted else f"{name} {s}"): v for s, v in value.items()}
        else:
            out[name] = value
    return out
