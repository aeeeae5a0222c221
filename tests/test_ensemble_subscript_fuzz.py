"""Random valid subscripted Vensim models: the compiled engine agrees with PySD, or falls back cleanly.

The scalar grammar of ``tests/test_ensemble_fuzz.py`` written the way Vensim users
write N-state models: a range ``s`` and a mapped range ``r <-> s``, constants
given element by element (a list) and as a matrix ``k[s, r]``, subscripted
stocks and auxiliaries, references to single elements (``x[s2]``), sums and
extrema over a range (``SUM(k[s, r!] * x[r!])``, ``VMAX``, ``VMIN``), variables
defined element by element, SMOOTH of a subscripted input, and scalar variables
that aggregate a range. Each model runs through PySD (the reference) once and
through each backend of the engine this machine can run, with a sampled constant
and a sampled element; the engine must either match PySD or raise UnsupportedConstruct,
never any other exception. Models are tiny and short because PySD evaluates
subscripted equations through xarray, a hundred times slower than scalars.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from armsdyn.ensemble import UnsupportedConstruct, compile_model
from armsdyn.model import load_model
from tests.test_ensemble import ATOL, RTOL
from tests.test_ensemble_fuzz import BACKENDS

ELEMENTS = ["s1", "s2", "s3"]
N_AUX = 4
N_STOCKS = 2


def _number(draw: st.DrawFn, lo: float = 0.25, hi: float = 3.0) -> str:
    return repr(round(draw(st.floats(lo, hi)), 3))


@st.composite
def expressions(draw: st.DrawFn, arrays: list[str], scalars: list[str], depth: int = 2) -> str:
    """An expression valid in an equation over ``[s]``: `arrays` are subscripted by ``s``."""
    if depth == 0 or draw(st.integers(0, 3)) == 0:
        leaf = draw(st.sampled_from(["array", "array", "element", "scalar", "time", "number"]))
        if leaf == "array":
            return f"{draw(st.sampled_from(arrays))}[s]"
        if leaf == "element":
            return f"{draw(st.sampled_from(arrays))}[{draw(st.sampled_from(ELEMENTS))}]"
        if leaf == "scalar":
            return draw(st.sampled_from(scalars))
        return "Time" if leaf == "time" else _number(draw)
    sub = expressions(arrays, scalars, depth - 1)
    kind = draw(st.sampled_from(["+", "-", "*", "/", "if", "min", "max", "sum", "matrix", "vmax", "vmin", "smooth"]))
    a = draw(sub)
    if kind in "+-*":
        return f"({a} {kind} {draw(sub)})"
    if kind == "/":
        b = draw(sub)
        return f"({a} / ({b} * {b} + 1))"  # never a division by zero
    if kind == "if":
        op = draw(st.sampled_from(["<", ">", "<=", ">="]))
        return f"IF THEN ELSE({a} {op} {draw(sub)}, {draw(sub)}, {a})"
    if kind in ("min", "max"):
        return f"{kind.upper()}({a}, {draw(sub)})"
    other = draw(st.sampled_from(arrays))
    if kind == "sum":
        return f"SUM({other}[s!])"
    if kind == "matrix":
        return f"SUM(k[s, r!] * {other}[r!])"
    if kind in ("vmax", "vmin"):
        return f"{kind.upper()}({other}[s!])"
    return f"SMOOTH({a}, tau)"


@st.composite
def models(draw: st.DrawFn) -> str:
    """The text of a random, valid subscripted Vensim model."""
    lines = [
        "{UTF-8}",
        f"s: {', '.join(ELEMENTS)} ~~|",
        "r <-> s ~~|",
        f"alpha = {_number(draw, 0.5, 2)} ~~|",
        f"tau = {_number(draw, 0.5, 2)} ~~|",
        f"w[s] = {', '.join(_number(draw) for _ in ELEMENTS)} ~~|",
        "k[s, r] = " + " ".join(", ".join(_number(draw, 0, 1) for _ in ELEMENTS) + ";" for _ in ELEMENTS) + " ~~|",
    ]
    stocks = [f"x{i}" for i in range(N_STOCKS)]
    arrays = ["w", *stocks]
    scalars = ["alpha"]
    for i in range(N_AUX):
        name = f"aux{i}"
        if draw(st.integers(0, 3)) == 0:  # defined element by element: the element in place of the range
            for e in ELEMENTS:
                expr = draw(expressions(arrays, scalars)).replace("[s]", f"[{e}]").replace("k[s,", f"k[{e},")
                lines.append(f"{name}[{e}] = {expr} ~~|")
        else:
            lines.append(f"{name}[s] = {draw(expressions(arrays, scalars))} ~~|")
        arrays.append(name)
        if draw(st.booleans()):  # a scalar that aggregates the range, used downstream
            agg = draw(st.sampled_from(["SUM", "VMAX", "VMIN"]))
            lines.append(f"total{i} = {agg}({name}[s!]) ~~|")
            scalars.append(f"total{i}")
    for stock in stocks:
        flow = draw(expressions(arrays, scalars, 2))
        # A damping term keeps stocks bounded over the short horizon.
        lines.append(f"{stock}[s] = INTEG({flow} - {stock}[s] / 2, w[s] * {_number(draw, -1, 1)}) ~~|")
    lines += ["INITIAL TIME = 0 ~~|", "FINAL TIME = 2 ~~|", "TIME STEP = 0.25 ~~|", "SAVEPER = 0.5 ~~|"]
    return "\n".join(lines) + "\n"


SAMPLES = ({"alpha": 0.75, "w[s2]": 2.5}, {"alpha": 1.5, "w[s2]": 0.5})


@pytest.mark.slow
@settings(
    max_examples=5,
    deadline=None,
    derandomize=True,  # the same models on every run: a failure is reproducible, CI is stable
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(text=models())
def test_random_subscripted_models_match_pysd_or_fall_back_cleanly(tmp_path_factory, text: str) -> None:
    path: Path = tmp_path_factory.mktemp("fuzz") / "model.mdl"
    path.write_text(text, encoding="utf-8")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            reference = load_model(path)
            names = [v.name for v in reference.variables.values() if v.kind not in ("lookup", "constant")]
            expected = [reference.simulate(p, reference.time, names) for p in SAMPLES]
    except Exception:  # a model PySD itself cannot run is no test of the engine
        assume(False)
    samples = {key: np.array([p[key] for p in SAMPLES]) for key in SAMPLES[0]}
    for backend in BACKENDS:
        fallback = None
        try:
            model = compile_model(path, backend=backend)
            assert model.backend == backend
            ds = model.run(samples, variables=names, chunk_size=1)
        except UnsupportedConstruct as exc:
            fallback = exc
        if fallback is not None:  # a clean fallback names what it cannot compile
            assert fallback.variable
            assert fallback.construct
            continue
        for i, want in enumerate(expected):
            for name in names:
                got = ds[reference.variable(name).py_name].isel(run=i).values
                np.testing.assert_allclose(
                    got,
                    want[name],
                    rtol=RTOL,
                    atol=ATOL,
                    equal_nan=True,
                    err_msg=f"{backend}: {name}, run {i}, model:\n{text}",
                )
