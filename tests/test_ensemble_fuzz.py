"""Random valid Vensim models: the compiled engine agrees with PySD to 1e-9, or falls back cleanly.

Models are drawn from the grammar the engine supports: arithmetic, IF THEN ELSE,
MIN/MAX, named lookups and WITH LOOKUP (every interpolation mode Vensim files
can state), SMOOTH, DELAY1, STEP and INTEG stocks. Each model runs through
PySD (the reference) once and through each backend of the engine this machine
can run, with a sampled constant; the engine must either match PySD or raise
UnsupportedConstruct, never any other exception.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from armsdyn.ensemble import UnsupportedConstruct, compile_model
from armsdyn.model import load_model
from tests.test_ensemble import ATOL, NUMBA, RTOL

CONSTANTS = ["alpha", "beta", "gamma"]
N_AUX = 5
N_STOCKS = 2


def _number(draw: st.DrawFn, lo: float = 0.25, hi: float = 3.0) -> str:
    return repr(round(draw(st.floats(lo, hi)), 3))


def _table(draw: st.DrawFn) -> str:
    """A lookup table's points, sorted by x, distinct."""
    n = draw(st.integers(2, 6))
    xs = sorted(draw(st.lists(st.integers(-20, 40), min_size=n, max_size=n, unique=True)))
    ys = draw(st.lists(st.integers(-20, 20), min_size=n, max_size=n))
    points = ",".join(f"({x / 4},{y / 4})" for x, y in zip(xs, ys, strict=True))
    return f"[({xs[0] / 4},-5)-({xs[-1] / 4},5)],{points}"


@st.composite
def expressions(draw: st.DrawFn, names: list[str], tables: list[str], depth: int = 3) -> str:
    """A Vensim expression over `names`, Time, numbers and the lookup tables."""
    leaves = [*names, "Time"]
    if depth == 0 or draw(st.integers(0, 3)) == 0:
        if draw(st.booleans()):
            return draw(st.sampled_from(leaves))
        return _number(draw)
    sub = expressions(names, tables, depth - 1)
    kind = draw(st.sampled_from(["+", "-", "*", "/", "neg", "if", "min", "max", "lookup", "smooth", "delay", "step"]))
    a = draw(sub)
    if kind in "+-*":
        return f"({a} {kind} {draw(sub)})"
    if kind == "/":
        b = draw(sub)
        return f"({a} / ({b} * {b} + 1))"  # never a division by zero (PySD's Python floats would raise)
    if kind == "neg":
        return f"-({a})"
    if kind == "if":
        op = draw(st.sampled_from(["<", ">", "<=", ">=", "=", "<>"]))
        return f"IF THEN ELSE({a} {op} {draw(sub)}, {draw(sub)}, {draw(sub)})"
    if kind in ("min", "max"):
        return f"{kind.upper()}({a}, {draw(sub)})"
    if kind == "lookup" and tables:
        return f"{draw(st.sampled_from(tables))}({a})"
    if kind == "smooth":
        return f"SMOOTH({a}, {draw(st.sampled_from(CONSTANTS))})"
    if kind == "delay":
        return f"DELAY1({a}, {_number(draw, 0.5, 2)})"
    if kind == "step":
        return f"STEP({a}, {_number(draw, 0, 4)})"
    return a


@st.composite
def models(draw: st.DrawFn) -> str:
    """The text of a random, valid Vensim model."""
    lines = ["{UTF-8}"]
    lines += [f"{c} = {_number(draw, 0.5, 2)} ~~|" for c in CONSTANTS]
    tables = [f"table {i}" for i in range(draw(st.integers(0, 2)))]
    lines += [f"{t}({_table(draw)}) ~~|" for t in tables]
    stocks = [f"stock {i}" for i in range(N_STOCKS)]
    names = [*CONSTANTS, *stocks]
    for i in range(N_AUX):
        if draw(st.integers(0, 4)) == 0:
            expr = f"WITH LOOKUP({draw(expressions(names, tables))}, ({_table(draw)}))"
        else:
            expr = draw(expressions(names, tables))
        lines.append(f"aux {i} = {expr} ~~|")
        names.append(f"aux {i}")
    for stock in stocks:
        flow = draw(expressions(names, tables, 2))
        # A damping term keeps stocks bounded over the short horizon.
        lines.append(f"{stock} = INTEG({flow} - {stock} / 2, {_number(draw, -2, 2)}) ~~|")
    lines += [
        "INITIAL TIME = 0 ~~|",
        "FINAL TIME = 4 ~~|",
        "TIME STEP = 0.25 ~~|",
        "SAVEPER = 0.5 ~~|",
    ]
    return "\n".join(lines) + "\n"


#: The engine's backends this machine can run: each is checked on every random model (one PySD run of it).
BACKENDS = ["numpy", *(["numba"] if NUMBA else [])]


@settings(
    max_examples=6,
    deadline=None,
    derandomize=True,  # the same models on every run: a failure is reproducible, CI is stable
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(text=models())
def test_random_models_match_pysd_or_fall_back_cleanly(tmp_path_factory, text: str) -> None:
    path: Path = tmp_path_factory.mktemp("fuzz") / "model.mdl"
    path.write_text(text, encoding="utf-8")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            reference = load_model(path)
            names = [v.name for v in reference.variables.values() if v.kind != "lookup"]
            expected = [reference.simulate({"alpha": a}, reference.time, names) for a in (0.75, 1.5)]
    except Exception:  # a model PySD itself cannot run is no test of the engine
        assume(False)
    for backend in BACKENDS:
        fallback = None
        try:
            model = compile_model(path, backend=backend)
            assert model.backend == backend
            ds = model.run({"alpha": np.array([0.75, 1.5])}, variables=names, chunk_size=1)
        except UnsupportedConstruct as exc:
            fallback = exc
        if fallback is not None:  # a clean fallback names what it cannot compile
            assert fallback.variable
            assert fallback.construct
            continue
        for i, want in enumerate(expected):
            for name in names:
                np.testing.assert_allclose(
                    ds[reference.variable(name).py_name].values[i],
                    want[name],
                    rtol=RTOL,
                    atol=ATOL,
                    equal_nan=True,
                    err_msg=f"{backend}: {name}, run {i}, model:\n{text}",
                )
