"""The ensemble engine: vectorised runs of many samples agree with PySD run by run."""

from __future__ import annotations

import importlib.util
import json
import shutil
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from armsdyn.ensemble import (
    BACKENDS,
    CompiledModel,
    FallbackWarning,
    SampleError,
    UnsupportedConstruct,
    compile_model,
    run_ensemble,
)
from armsdyn.errors import ModelError
from armsdyn.model import TimeSettings, load_model
from tests.conftest import MODELS, SHARED
from tests.helpers import pysd_run, scalar_name, scalar_twin, subscripted_counterpart


def pysd_group(path: Path) -> pytest.MarkDecorator:
    """Tests of one model file (both backends) on one pytest-xdist worker: they share PySD's reference runs."""
    return pytest.mark.xdist_group(f"pysd:{path.parent.name}/{path.name}")


MODEL_FILES = [
    # Large models take PySD several seconds for 20 runs.
    pytest.param(p, marks=[pysd_group(p), *([pytest.mark.slow] if p.stat().st_size > 20_000 else [])])
    for p in sorted(MODELS.glob("*.mdl")) + sorted(MODELS.glob("*.xmile"))
]
CASES = SHARED / "test-models"
CASE_FILES = sorted(CASES.glob("*/*.mdl")) + sorted(CASES.glob("*/*.xmile")) if CASES.is_dir() else []
NUMBA = importlib.util.find_spec("numba") is not None
BACKEND_PARAMS = [
    "numpy",
    pytest.param("numba", marks=pytest.mark.skipif(not NUMBA, reason="numba is not installed")),
]
RTOL = 1e-9
# Shared cases whose numba kernel takes more than ~10 s to compile (hundreds of subscript elements' statements).
NUMBA_SLOW = {"test_subscripted_delays.mdl", "test_subscripted_smooth.mdl", "test_subscript_definition.mdl"}
CASE_PARAMS = [
    pytest.param(p, "numpy", id=f"{p.parent.name}/{p.name}-numpy", marks=pysd_group(p)) for p in CASE_FILES
] + [
    pytest.param(
        p,
        "numba",
        id=f"{p.parent.name}/{p.name}-numba",
        marks=[pysd_group(p), pytest.mark.skipif(not NUMBA, reason="numba is not installed")]
        + ([pytest.mark.slow] if p.name in NUMBA_SLOW else []),
    )
    for p in CASE_FILES
]
ATOL = 1e-12  # floor for values that should be 0 but carry rounding noise
#: Shared cases over subscript ranges: sampled at their defaults and with every element of every
#: constant varied, in chunks of two (see :func:`case_samples`).
SUBSCRIPTED_CASES = ("subscript_", "subscripted_", "subrange_merge", "vector_select")
#: Shared cases PySD cannot read (its XMILE parser stops at their subscripts): the engine must refuse
#: them as well. Any other case PySD fails on fails the test, so cases cannot drift into skips.
PYSD_CANNOT = {
    "test_subscript_1d_arrays.xmile",
    "test_subscript_constant_call.xmile",
    "test_subscript_mixed_assembly.xmile",
    "test_multiple_subscripts.xmile",
    "test_subscript_subrange.xmile",
    "test_subscripted_flows.xmile",
}
#: Shared cases PySD runs whose constructs the engine does not compile: it raises UnsupportedConstruct
#: for them (a clean fallback to PySD). Every other case must compile in both backends.
NOT_COMPILED = {"test_vector_select.mdl"}

# Exercises every construct the engine compiles, with delay times that make PySD
# lower delay orders and pipe lengths differently from sample to sample.
CONSTRUCTS_MDL = """{UTF-8}
input= 1 + STEP(2, 3) + RAMP(0.5, 2, 8) + PULSE TRAIN(1, 1, 3, 15) + PULSE(start time, width) ~ ~ |
start time = 4 ~ ~ |
width = 2 ~ ~ |
dtime= 2.5 ~ ~ |
fixed= DELAY FIXED(input, dtime, 0) ~ ~ |
d3= DELAY3(input, dtime) ~ ~ |
d3i= DELAY3I(input, dtime, 7) ~ ~ |
d1= DELAY1(input * 2, dtime) ~ ~ |
d1i= DELAY1I(input, dtime, 3) ~ ~ |
dn= DELAY N(input, dtime, 1, norder) ~ ~ |
norder = 2 ~ ~ |
s1= SMOOTH(input, dtime) ~ ~ |
s1i= SMOOTHI(input, dtime, 4) ~ ~ |
s3= SMOOTH3(input, dtime) ~ ~ |
s3i= SMOOTH3I(input, dtime, 2) ~ ~ |
sn= SMOOTH N(input, dtime, 3, norder) ~ ~ |
tr= TREND(input, dtime, 0.1) ~ ~ |
fc= FORECAST(input, dtime, 3) + QUANTUM(Time, 3) ~ ~ |
ai= ACTIVE INITIAL(stock * 2, 5) ~ ~ |
stock= INTEG(ai / 10 + tr - SMOOTH(stock, dtime) / 5, 1) ~ ~ |
init= INITIAL(stock + input) ~ ~ |
sit = SAMPLE IF TRUE(Time > 6 :AND: Time < 9, stock, -1) ~ ~ |
lk( [(0,0)-(10,10)],(0,0),(2,3),(5,4),(10,1)) ~ ~ |
l= lk(Time * dtime / 2) ~ ~ |
wl = WITH LOOKUP(Time, ([(0,0)-(10,10)],(0,1),(5,2),(10,0))) ~ ~ |
m = MODULO(Time, dtime) + INTEGER(dtime * 1.7) + XIDZ(1, dtime - 2.5, 3) + ZIDZ(Time, dtime - 2.5) ~ ~ |
q = IF THEN ELSE(Time >= dtime :OR: :NOT: (stock > 3), -(Time > 2), 1) ~ ~ |
e = EXP(-Time/dtime) + LN(dtime) + LOG(dtime + Time, 10) + SQRT(dtime) + ABS(-dtime) + SIN(Time) + COS(Time)\
 + TAN(Time / 10) + ARCTAN(dtime) + ARCSIN(0.5) + ARCCOS(0.5) + MIN(dtime, 3) + MAX(dtime, 3) + dtime ^ 2 ~ ~ |
INITIAL TIME = 0 ~ ~ |
FINAL TIME = 20 ~ ~ |
TIME STEP = 1 ~ ~ |
SAVEPER = 1 ~ ~ |
"""

SUBSCRIPTED_MDL = """{UTF-8}
dim: a, b ~~|
x[dim] = 1, 2 ~~|
y[dim] :EXCEPT: [a] = 2 ~~|
y[a] = 3 ~~|
flow[dim] = x[dim] * y[dim] - stocks[dim] / tau ~~|
stocks[dim] = INTEG(flow[dim], 1) ~~|
total = SUM(x[dim!] * y[dim!]) * k ~~|
k = 3 ~~|
stock = INTEG(total - stock / tau, 0) ~~|
tau = 4 ~~|
INITIAL TIME = 0 ~ ~ |
FINAL TIME = 10 ~ ~ |
TIME STEP = 0.5 ~ ~ |
SAVEPER = 1 ~ ~ |
"""


def vary_constants(
    model: CompiledModel, n: int, seed: int = 0, *, first_default: bool = False
) -> dict[str, np.ndarray]:
    """Every constant (every element of a subscripted one) drawn within +-30% of its default (infinite kept).

    Defaults between 0 and 1 stay at most 1: they are often fractions, and a
    fraction above 1 takes a negative number to a fractional power, which PySD
    (Python floats) turns complex where numpy gives NaN. With `first_default`,
    the first sample is every constant's default (the others are drawn as without it).
    """
    rng = np.random.default_rng(seed)
    samples = {}
    for var in model.variables.values():
        if var.kind != "constant":
            continue
        # A subscripted constant is sampled element by element ("k[USA, China]").
        items = [(var.name, var.default)] if var.default is not None else []
        if var.dims:
            items += [(var.element_name(e), d) for e, d in zip(var.elements(), var.defaults, strict=True)]
        for name, default in items:
            factor = rng.uniform(0.7, 1.3, n) if np.isfinite(default) else np.ones(n)
            if first_default:
                factor[0] = 1.0
            values = default * factor
            samples[name] = np.minimum(values, 1) if 0 < default <= 1 else values
    return samples


def value_names(model: CompiledModel) -> list[str]:
    """Every variable that has a value to save (all but lookup tables)."""
    return [v.name for v in model.variables.values() if v.kind != "lookup"]


def assert_matches_pysd(
    path: Path,
    ds,
    samples: dict[str, np.ndarray],
    names: list[str],
    time: TimeSettings | None = None,
    runs: Sequence[int] | None = None,
) -> None:
    """Each run of `ds` (or those numbered `runs`) equals PySD's run of the same sample, variable by variable."""
    pysd_model = load_model(path)
    for i in range(ds.sizes["run"]) if runs is None else runs:
        params = {name: float(values[i]) for name, values in samples.items()}
        expected = pysd_run(path, params, time, names)
        for name in names:
            got = ds[pysd_model.variable(name).py_name].values[i]
            np.testing.assert_allclose(
                got, expected[name], rtol=RTOL, atol=ATOL, equal_nan=True, err_msg=f"{path.name}: {name}, run {i}"
            )


@pytest.fixture(params=BACKEND_PARAMS)
def backend(request: pytest.FixtureRequest) -> str:
    """Each code generator of the engine that this machine can run."""
    return str(request.param)


@pytest.mark.parametrize("path", MODEL_FILES, ids=lambda p: Path(p).name)
def test_models_match_pysd_for_sampled_constants(path: Path, backend: str) -> None:
    try:
        model = compile_model(path, backend=backend)
        assert model.backend == backend
    except UnsupportedConstruct as exc:  # a clean fallback to PySD; any other exception fails
        pytest.skip(f"unsupported construct {exc.construct} in {exc.variable!r}")
    samples = vary_constants(model, 20)
    twin = scalar_twin(path)
    if twin is not None:  # the twin has no rivalry matrix: it is fixed at its value (each state the other's rival)
        samples = {k: v for k, v in samples.items() if not k.startswith("rivalry")}
    names = value_names(model)
    time = model.time
    if twin is None and any(v.dims for v in model.variables.values()):
        # PySD runs a subscripted model through xarray, seconds a run: ten model years (every equation
        # evaluated at each of hundreds of steps) instead of the file's fifty for richardson_n.mdl.
        time = replace(time, final=min(time.final, time.initial + 10))
    ds = model.run(samples, time, variables=names, chunk_size=CHUNK)  # several chunks, last one partial
    assert ds.sizes["run"] == 20
    if twin is not None:
        # PySD takes minutes a run on the subscripted knowledge model (xarray per equation): its
        # reference is the same equations written per state (tests/test_knowledge_states.py).
        assert_matches_scalar_twin(twin, ds, samples, model)
    else:
        assert_matches_pysd(path, ds, samples, names, time, runs=chunk_edges(20, CHUNK))


#: Samples per chunk in the sampled-constants test: 20 samples make two whole chunks and a partial one.
CHUNK = 8


def chunk_edges(n: int, chunk: int) -> list[int]:
    """The first and the last run of every chunk of `chunk` runs among `n`: ``0, 7, 8, 15, 16, 19`` for 20 and 8.

    A chunk's samples go through the same array code as one block, so a value that goes wrong
    for one sample only does so by its place in the block (a row mixed up with its neighbour, an
    edge of a numba block or thread's share), which the first and last run of each chunk show.
    PySD's reference runs of the subscripted models take over a second each (xarray per
    equation), the bulk of these tests' time: these runs are the ones PySD checks.
    """
    return sorted({i for start in range(0, n, chunk) for i in (start, min(start + chunk, n) - 1)})


def assert_matches_scalar_twin(twin: Path, ds, samples: dict[str, np.ndarray], model: CompiledModel) -> None:
    """Each run of a subscripted model equals PySD's run of its twin written per element (``x A`` for ``x[A]``)."""
    pysd_model = load_model(twin)
    scalar = {scalar_name(k): v for k, v in samples.items()}
    subscripted = {v.name for v in model.variables.values() if v.dims}
    for i in chunk_edges(ds.sizes["run"], CHUNK):  # as assert_matches_pysd is given: every chunk's edges
        names = [v.name for v in pysd_model.variables.values() if v.kind != "lookup"]
        expected = pysd_run(twin, {k: float(v[i]) for k, v in scalar.items()}, None, names)
        for name in names:
            var_name, element = subscripted_counterpart(name, subscripted, model.path.stem)
            var = model.variable(var_name)
            got = ds[var.py_name].values[i]
            if element is not None:
                got = got[..., list(var.dims[0][1]).index(element)]
            np.testing.assert_allclose(
                got, expected[name], rtol=RTOL, atol=ATOL, equal_nan=True, err_msg=f"{twin.name}: {name}, run {i}"
            )


def pysd_error(path: Path) -> str | None:
    """Why PySD cannot load the model file `path`, or None if it can."""
    try:
        load_model(path)
    except Exception as exc:  # PySD's own KeyErrors too: whatever it cannot run
        return f"{type(exc).__name__}: {exc}"
    return None


def case_samples(model: CompiledModel, path: Path) -> dict[str, np.ndarray]:
    """The samples a shared case runs: its defaults, and for a subscripted case two runs with varied constants.

    A scalar case runs its defaults twice (the per-sample array code against PySD's default run).
    A subscripted case runs its defaults, then two samples with every element of every constant
    varied (:func:`vary_constants`): with chunks of two, the first chunk holds a default and a
    varied run (a row read from its neighbour shows) and the last chunk is partial.
    """
    if path.parent.name.startswith(SUBSCRIPTED_CASES):
        return vary_constants(model, 3, seed=4, first_default=True)
    return {
        v.name: np.full(2, v.default)
        for v in model.variables.values()
        if v.kind == "constant" and v.default is not None
    }


@pytest.mark.parametrize(("path", "backend"), CASE_PARAMS)
def test_conformance_cases_match_pysd(path: Path, backend: str) -> None:
    error = pysd_error(path)
    if error is not None:
        assert path.name in PYSD_CANNOT, f"PySD cannot run {path}: {error}"
        with pytest.raises(ModelError):  # what PySD cannot read, the engine must not claim to run
            compile_model(path, backend=backend)
        pytest.skip(f"PySD cannot run this case: {error}")
    if path.name in NOT_COMPILED:  # a clean fallback names what it cannot compile
        with pytest.raises(UnsupportedConstruct) as info:
            compile_model(path, backend=backend).backend  # noqa: B018 - resolving the backend compiles
        assert info.value.variable
        assert info.value.construct
        return
    # Any other case runs in this backend: an UnsupportedConstruct fails the test like any other exception.
    model = compile_model(path, backend=backend)
    assert model.backend == backend
    samples = case_samples(model, path)
    names = value_names(model)
    ds = model.run(samples, variables=names, chunk_size=2)
    assert_matches_pysd(path, ds, samples, names)


@pytest.mark.skipif(not CASE_FILES, reason=f"peer conformance models not found in {CASES}")
def test_conformance_cases_are_present() -> None:
    assert any(p.parent.name == "delay_fixed" for p in CASE_FILES)


def test_every_supported_construct_matches_pysd_with_per_sample_delay_orders(tmp_path: Path, backend: str) -> None:
    path = tmp_path / "constructs.mdl"
    path.write_text(CONSTRUCTS_MDL, encoding="utf-8")
    model = compile_model(path, backend=backend)
    assert model.backend == backend
    # Delay times from 1 to 4.2 TIME STEPs: DELAY3 orders 1-3 and DELAY FIXED pipes 1-4 in one chunk.
    samples = {
        "dtime": np.array([1, 1.5, 2.5, 2.5, 4.2, 2.0, 3.0, 1.2]),
        "start time": np.arange(8.0),
        "width": np.array([1, 2, 0, 0.5, 3, 1, 1, 2.0]),
    }
    names = value_names(model)
    ds = model.run(samples, variables=names)
    assert_matches_pysd(path, ds, samples, names)
    # Chunking and regrouping do not change any value.
    assert ds.identical(model.run(samples, variables=names, chunk_size=3))


def test_time_settings_override_matches_pysd(backend: str) -> None:
    path = MODELS / "richardson.mdl"
    model = compile_model(path, backend=backend)
    time = TimeSettings(initial=2, final=12, step=0.25, saveper=0.5, units="Year")
    samples = vary_constants(model, 3, seed=1)
    ds = model.run(samples, time)
    np.testing.assert_array_equal(ds["time"].values, time.save_times())
    assert_matches_pysd(path, ds, samples, [model.variable(py).name for py in ds.data_vars], time)


def test_dataset_layout_names_and_attrs() -> None:
    model = compile_model(MODELS / "richardson.mdl")
    frame = pd.DataFrame({"defence coefficient k": [0.5, 0.9, 1.2], "grievance_g": [1.0, 0.0, -1.0]})
    ds = model.run(frame)
    assert ds["arms_x"].dims == ("run", "time")
    assert set(ds.data_vars) == {"arms_x", "arms_y", "arming_rate_x", "arming_rate_y"}  # stocks and flows
    assert ds["arms_x"].attrs["long_name"] == "arms X"
    assert ds["arms_x"].attrs["units"] == "arms"
    assert ds["arms_x"].attrs["description"].startswith("Armaments of state X")
    np.testing.assert_array_equal(ds["defence_coefficient_k"].values, [0.5, 0.9, 1.2])
    assert ds["grievance_g"].attrs["long_name"] == "grievance g"
    np.testing.assert_array_equal(ds["time"].values, model.time.save_times())
    # An unsampled run uses the model's own values.
    single = model.run({}, variables=["arms X"])
    assert single.sizes["run"] == 1


def test_unknown_sample_name_suggests_the_closest() -> None:
    model = compile_model(MODELS / "richardson.mdl")
    with pytest.raises(SampleError, match=r"did you mean 'defence coefficient k'\?"):
        model.run({"defense coefficient k": np.ones(3)})
    with pytest.raises(SampleError, match="not a constant"):
        model.run({"arms X": np.ones(3)})
    with pytest.raises(SampleError, match="have 2 values"):
        model.run({"grievance g": np.ones(3), "grievance h": np.ones(2)})


def test_unsupported_construct_names_file_variable_and_construct(tmp_path: Path) -> None:
    path = tmp_path / "random.mdl"
    path.write_text(
        "{UTF-8}\nnoise = RANDOM UNIFORM(0, 1, 0) ~~|\nlevel = INTEG(noise, 0) ~~|\n"
        "INITIAL TIME = 0 ~~|\nFINAL TIME = 1 ~~|\nTIME STEP = 1 ~~|\nSAVEPER = 1 ~~|\n",
        encoding="utf-8",
    )
    with pytest.raises(UnsupportedConstruct) as info:
        compile_model(path)
    assert isinstance(info.value, ModelError)
    assert (info.value.variable, info.value.construct) == ("noise", "RANDOM UNIFORM")
    assert str(path) in str(info.value)


def test_fallback_to_pysd_warns_and_matches_pysd(tmp_path: Path) -> None:
    path = tmp_path / "subscripted.mdl"
    path.write_text(SUBSCRIPTED_MDL, encoding="utf-8")
    # :EXCEPT: is not compiled: a subscripted model that PySD runs, sampled whole and by element.
    samples = {"k": np.array([1.0, 2.0, 3.0]), "tau": np.array([2.0, 4.0, 8.0]), "x[b]": np.array([2.0, 0.5, 1])}
    with pytest.warns(FallbackWarning, match="EXCEPT"):
        ds = run_ensemble(path, samples)
    assert ds.attrs["engine"] == "pysd"
    assert set(ds.data_vars) == {"stock", "stocks", "flow", "total"}
    assert ds["stocks"].dims == ("run", "time", "dim")
    assert list(ds["dim"].values) == ["a", "b"]
    np.testing.assert_array_equal(ds["x[b]"].values, samples["x[b]"])
    assert_matches_pysd(path, ds, samples, ["stock", "stocks", "flow", "total"])


@pytest.mark.slow
def test_two_workers_give_the_same_results_as_one() -> None:
    path = MODELS / "richardson.mdl"
    samples = vary_constants(compile_model(path), 50, seed=2)
    serial = run_ensemble(path, samples, workers=1, chunk_size=7)
    parallel = run_ensemble(path, samples, workers=2, chunk_size=7)
    assert parallel.identical(serial)


def test_compiled_model_is_cached_by_content(tmp_path: Path) -> None:
    # A content no other test compiled under another path first (with pytest-xdist, which tests ran
    # before in this process varies): the cached object itself comes back, not a renamed copy.
    original = tmp_path / "richardson.mdl"
    original.write_text((MODELS / "richardson.mdl").read_text(encoding="utf-8") + f"\n{{ {tmp_path.name} }}\n")
    first = compile_model(original)
    assert compile_model(original) is first
    copy = Path(shutil.copy(original, tmp_path / "copy.mdl"))
    assert compile_model(copy).path == copy
    copy.write_text(copy.read_text(encoding="utf-8").replace("0.9\n", "0.7\n", 1), encoding="utf-8")
    assert compile_model(copy).variable("defence coefficient k").default == 0.7


#: The knowledge model's numba kernel takes ten seconds of CPU to compile: the tests that run it save every
#: variable (one kernel) and run on the worker of its sampled-constants test, which compiles it first.
KNOWLEDGE = MODELS / "knowledge_engine.mdl"


@pytest.mark.skipif(not NUMBA, reason="numba is not installed")
@pysd_group(KNOWLEDGE)
def test_backends_agree_and_report_unusable_delay_orders_alike(tmp_path: Path) -> None:
    path = KNOWLEDGE
    samples = vary_constants(compile_model(path), 30, seed=3)
    time = TimeSettings(initial=0, final=40, step=0.125, saveper=1, units="Year")
    names = value_names(compile_model(path))
    by_numpy = compile_model(path, backend="numpy").run(samples, time, variables=names, chunk_size=16)
    by_numba = compile_model(path, backend="numba").run(samples, time, variables=names, chunk_size=16)
    assert set(by_numba.data_vars) == set(by_numpy.data_vars)
    for name in by_numpy.data_vars:
        np.testing.assert_allclose(by_numba[name], by_numpy[name], rtol=RTOL, atol=ATOL, equal_nan=True)
    # A delay time below TIME STEP / order gives no usable order: both backends say so.
    bad = tmp_path / "bad_delay.mdl"
    bad.write_text(CONSTRUCTS_MDL.replace("dn= DELAY N(input, dtime, 1, norder)", "dn= DELAY N(input, dtime, 1, 0.5)"))
    for name in ("numpy", "numba"):
        with pytest.raises(ModelError, match=r"'dn' \(DELAY N\): order 0\.0 is not a whole number"):
            compile_model(bad, backend=name).run({"dtime": np.array([2.0, 3.0])}, variables=["dn"])


@pytest.mark.skipif(not NUMBA, reason="numba is not installed")
@pysd_group(KNOWLEDGE)
def test_numba_layouts_agree_with_numpy_across_block_and_thread_edges(tmp_path: Path) -> None:
    # Scalar states: the blocked, vectorised kernel. 150 samples in chunks of 150 split between two
    # threads (75 each) and of 100 (100 then 50): no piece is a whole number of blocks.
    path = KNOWLEDGE
    fast = compile_model(path, backend="numba")
    names = value_names(fast)
    assert "prefer_wide_vectors()" in fast.source(names)
    samples = vary_constants(fast, 150, seed=5)
    time = TimeSettings(initial=0, final=60, step=0.25, saveper=2, units="Year")
    want = compile_model(path, backend="numpy").run(samples, time, variables=names)
    threads, fast.threads = fast.threads, 2  # the compiled model is shared (cached): put its setting back
    try:
        for chunk in (150, 100):
            got = fast.run(samples, time, variables=names, chunk_size=chunk)
            for name in want.data_vars:
                np.testing.assert_allclose(got[name], want[name], rtol=RTOL, atol=ATOL, equal_nan=True)
    finally:
        fast.threads = threads
    # Delays keep an array per state: the per-sample kernel.
    constructs = tmp_path / "constructs.mdl"
    constructs.write_text(CONSTRUCTS_MDL)
    assert "prefer_wide_vectors()" not in compile_model(constructs, backend="numba").source(["d3", "fixed"])


def test_backend_choice() -> None:
    assert BACKENDS == ("auto", "numpy", "numba")
    model = compile_model(MODELS / "richardson.mdl", backend="numpy")
    assert model.backend == "numpy"
    assert "def simulate(" in model.source()
    auto = compile_model(MODELS / "richardson.mdl")
    assert auto.backend == ("numba" if NUMBA else "numpy")
    with pytest.raises(ValueError, match="unknown ensemble backend 'fortran'"):
        compile_model(MODELS / "richardson.mdl", backend="fortran")
    if NUMBA:
        assert "nogil=True" in auto.source(backend="numba")


CONTROLS = "INITIAL TIME = 0 ~~|\nFINAL TIME = {final} ~~|\nTIME STEP = 0.5 ~~|\nSAVEPER = {saveper} ~~|\n"
GROWTH = "{UTF-8}\nstock = INTEG(rate, 1) ~~|\nrate = k * stock ~~|\nk = 0.1 ~~|\nx = 5 ~~|\n"


@pytest.mark.parametrize(
    ("final", "construct"),
    [("x * 2", "a time control defined by model variables"), ("10 + stock", "a time control that changes")],
)
def test_time_controls_defined_by_variables_fall_back_cleanly(tmp_path: Path, final: str, construct: str) -> None:
    path = tmp_path / "controls.mdl"
    path.write_text(GROWTH + CONTROLS.format(final=final, saveper=1), encoding="utf-8")
    with pytest.raises(UnsupportedConstruct, match=construct) as info:
        compile_model(path)
    assert info.value.variable == "FINAL TIME"
    with pytest.warns(FallbackWarning, match="FINAL TIME"):
        ds = run_ensemble(path, {"k": np.array([0.1, 0.2])})
    assert ds.attrs["engine"] == "pysd"


def test_time_controls_defined_by_other_controls_compile(tmp_path: Path, backend: str) -> None:
    path = tmp_path / "controls.mdl"
    path.write_text(GROWTH + CONTROLS.format(final="(TIME STEP + 4.5) * 2", saveper="TIME STEP"), encoding="utf-8")
    model = compile_model(path, backend=backend)
    assert (model.time.final, model.time.saveper) == (10.0, 0.5)
    samples = {"k": np.array([0.1, 0.3])}
    assert_matches_pysd(path, model.run(samples), samples, ["stock", "rate"])


def test_constant_folding_divides_by_zero_as_numpy_does(tmp_path: Path, backend: str) -> None:
    # PySD's Python floats raise ZeroDivisionError here; with sampled (numpy) values it gives inf or
    # nan. The engine folds to those values and leaves them to the fault scan.
    path = tmp_path / "divide.mdl"
    path.write_text(
        GROWTH
        + "zero = 0 ~~|\ninf = 1/0 ~~|\nnan = 0/0 ~~|\nratio = k / zero ~~|\nundefined = zero / zero ~~|\n"
        + "mixed = stock * (2 / 0) - stock * (10.0 ^ 400) ~~|\nlk([(0,0)-(10,10)],(0,1),(10,2)) ~~|\nl5 = lk(5) ~~|\n"
        + CONTROLS.format(final=2, saveper=1),
        encoding="utf-8",
    )
    model = compile_model(path, backend=backend)
    assert model.variable("inf").default == np.inf
    assert np.isnan(model.variable("nan").default)
    assert model.variable("l5").default == 1.5
    ds = model.run({}, variables=["ratio", "mixed", "undefined"])
    assert (ds["ratio"].values == np.inf).all()
    assert np.isnan(ds["mixed"].values).all()  # inf - inf
    assert np.isnan(ds["undefined"].values).all()
    ds = model.run({"zero": np.array([0.0, 2.0])}, variables=["ratio"])
    np.testing.assert_array_equal(ds["ratio"].values[:, 0], [np.inf, 0.05])


LOOKUPS_MDL = """{UTF-8}
x = Time * speed - 4 ~~|
speed = 0.6 ~~|
table([(0,0)-(10,10)],(0,1),(1,3),(2,2),(4,6),(5,5.5)) ~~|
interpolated = table(x) ~~|
with lookup = WITH LOOKUP(x, ([(0,0)-(10,10)],(-1,0),(3,2),(7,1))) ~~|
short = WITH LOOKUP(x, ([(0,0)-(10,10)],(1,7),(2,-1))) ~~|
big([(0,0)-(100,100)],{big}) ~~|
large = big(x * 9) ~~|
stock = INTEG(interpolated + with lookup - stock / 4, 0) ~~|
INITIAL TIME = 0 ~~|
FINAL TIME = 20 ~~|
TIME STEP = 0.25 ~~|
SAVEPER = 0.5 ~~|
"""


def test_lookups_match_pysd_on_both_sides_of_every_point(tmp_path: Path, backend: str) -> None:
    # Vensim lookups in every form (named, WITH LOOKUP, two points, more points than the numba backend
    # unrolls), swept from below the first point to beyond the last one.
    path = tmp_path / "lookups.mdl"
    path.write_text(LOOKUPS_MDL.replace("{big}", ",".join(f"({i},{(i * 7) % 11})" for i in range(80))))
    model = compile_model(path, backend=backend)
    names = value_names(model)
    samples = {"speed": np.array([0.6, 0.25, 0.5])}
    ds = model.run(samples, variables=names)
    assert_matches_pysd(path, ds, samples, names)


XMILE_GF = """<xmile xmlns="http://docs.oasis-open.org/xmile/ns/XMILE/v1.0" version="1.0">
    <header><vendor>armsdyn tests</vendor><product lang="en">armsdyn</product></header>
    <sim_specs method="Euler" time_units="Months"><start>0</start><stop>20</stop><dt>0.5</dt></sim_specs>
    <model>
        <variables>
            <gf name="effect"><xscale min="0" max="10"/><ypts>0,1,4,9,16,25</ypts></gf>
            <gf name="held" type="discrete"><xpts>0,5,10</xpts><ypts>1,2,3</ypts></gf>
            <gf name="ext" type="extrapolate"><xpts>0,5,10</xpts><ypts>1,2,4</ypts></gf>
            <aux name="y"><eqn>effect(TIME / 2)</eqn></aux>
            <aux name="h"><eqn>held(TIME) + ext(TIME)</eqn></aux>
            <aux name="g"><eqn>TIME</eqn><gf><xscale min="0" max="20"/><ypts>0,3,1</ypts></gf></aux>
            <aux name="u"><eqn>g * 2</eqn></aux>
            <stock name="s"><eqn>0</eqn><inflow>f</inflow></stock>
            <flow name="f"><eqn>y + h + u</eqn></flow>
        </variables>
    </model>
</xmile>
"""


def test_xmile_graphical_functions_by_name_match_pysd(tmp_path: Path, backend: str) -> None:
    # Standalone gf elements (xscale, xpts; continuous, discrete, extrapolating) called by name,
    # and a variable with its own gf referenced by name.
    path = tmp_path / "gf.xmile"
    path.write_text(XMILE_GF, encoding="utf-8")
    model = compile_model(path, backend=backend)
    names = value_names(model)
    ds = model.run({}, variables=names)
    assert_matches_pysd(path, ds, {}, names)


@pytest.mark.skipif(not NUMBA, reason="numba is not installed")
def test_numba_lookups_stay_in_the_vectorised_kernel(tmp_path: Path) -> None:
    path = tmp_path / "lookups.mdl"
    path.write_text(LOOKUPS_MDL.replace("{big}", ",".join(f"({i},{i % 3})" for i in range(80))))
    source = compile_model(path, backend="numba").source(["interpolated", "with lookup", "short", "large"])
    assert "prefer_wide_vectors()" in source
    assert source.count("= table_function(") == 3  # the 80-point table keeps np.interp
    assert "_lookup(LK_big_x, LK_big_y" in source


@pytest.mark.skipif(not NUMBA, reason="numba is not installed")
def test_a_run_that_saves_nothing_compiles_in_numba() -> None:
    """An audit of closed-form metrics saves no variable: the kernel's step loop is then empty, not invalid."""
    model = compile_model(MODELS / "richardson.mdl", backend="numba")
    ds = model.run({"grievance g": np.linspace(1, 2, 5)}, variables=[])
    assert ds.sizes["run"] == 5
    assert not ds.data_vars


# ------------------------------------------------------------------ measured backend speeds
def test_backend_timings_are_plain_numbers_and_a_bad_file_is_ignored(tmp_path: Path) -> None:
    from armsdyn.ensemble import _numba

    source = "# a kernel module's source\n"
    assert _numba.read_timings(source, tmp_path) == {}  # nothing measured yet
    _numba.write_timing(source, tmp_path, "numpy", 2e-6)
    _numba.write_timing(source, tmp_path, "numba", 3e-7)
    (stored,) = tmp_path.glob("*.timings.json")
    assert json.loads(stored.read_text(encoding="utf-8")) == {"numpy": 2e-6, "numba": 3e-7}
    assert _numba.read_timings(source, tmp_path) == {"numpy": 2e-6, "numba": 3e-7}
    # The cache folder is untrusted: anything but finite positive numbers under a second (a minute for a
    # kernel's load) is ignored.
    bad = [
        "import os; os.remove('x')",
        "[1e-6, 2e-7]",
        '{"numpy": "1e-6", "numba": true}',
        '{"numpy": NaN, "numba": Infinity}',
        '{"numpy": -1e-6, "numba": 5}',
        '{"numba load": 100, "numpy chunk": 2}',  # seconds to load a kernel, and per chunk and step
        '{"numpy": 1e-6, "numba": ' + "1" * 5000 + "}",
        "\xff\xfe",
    ]
    for text in bad:
        stored.write_text(text, encoding="utf-8", errors="surrogateescape")
        assert _numba.read_timings(source, tmp_path) == {}, text
    stored.write_text('{"numpy": 1e-6, "numba": "fast", "fortran": 1e-9, "numba load": 5}', encoding="utf-8")
    assert _numba.read_timings(source, tmp_path) == {"numpy": 1e-6, "numba load": 5.0}
    _numba.write_timing(source, tmp_path, "numba", float("nan"))  # not a measurement: not written
    assert _numba.read_timings(source, tmp_path) == {"numpy": 1e-6, "numba load": 5.0}


@pytest.mark.skipif(not NUMBA, reason="numba is not installed")
def test_auto_backend_chooses_from_stored_timings_without_a_pilot(tmp_path: Path, monkeypatch) -> None:
    from armsdyn.ensemble import _numba

    monkeypatch.setenv("ARMSDYN_CACHE_DIR", str(tmp_path))
    path = tmp_path / "richardson.mdl"
    shutil.copy(MODELS / "richardson.mdl", path)
    samples = {"defence coefficient k": np.linspace(0.1, 0.9, 2000)}
    reference = compile_model(path, backend="numpy").run(samples)
    kernels = tmp_path / "ensemble-numba"
    # Kept under the model file's hash (here "sha") and the saved names: no code generated to find them.
    source = CompiledModel(compile_model(path)._graph, "sha").timing_key(compile_model(path).output_names(None))

    # numpy measured faster per run than numba: the study runs on numpy, no kernel compiled or loaded.
    _numba.write_timing(source, kernels, "numpy", 1e-9)
    _numba.write_timing(source, kernels, "numba", 1e-6)
    model = CompiledModel(compile_model(path)._graph, "sha", backend="auto")
    ds = model.run(samples)
    assert model._kernels == {}
    np.testing.assert_array_equal(ds["arms_x"].values, reference["arms_x"].values)

    # numba measured faster: a call of 2,000 runs would not pay numba's compilation, but as a chunk of
    # a study of a hundred million runs it does, so it runs compiled at once, equal to numpy's results.
    _numba.write_timing(source, kernels, "numpy", 1e-7)
    _numba.write_timing(source, kernels, "numba", 1e-9)
    small = CompiledModel(compile_model(path)._graph, "sha", backend="auto")
    small.run(samples)
    assert small._kernels == {}
    chunk = CompiledModel(compile_model(path)._graph, "sha", backend="auto")
    chunk.study_runs = 100_000_000
    ds = chunk.run(samples)
    assert len(chunk._kernels) == 1
    np.testing.assert_allclose(ds["arms_x"].values, reference["arms_x"].values, rtol=1e-9)
    # The run measured numba's speed itself and kept it, beside the kernel, as plain numbers.
    assert _numba.read_timings(source, kernels)["numba"] != 1e-9
