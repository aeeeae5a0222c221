"""The ensemble engine on subscripted models: element samples, result layout, rolled element loops.

The shared subscripted cases run in ``tests/test_ensemble.py``'s conformance test, at their defaults
and with every element of every constant varied, in both backends.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from armsdyn.ensemble import SampleError, UnsupportedConstruct, compile_model, run_ensemble
from armsdyn.ensemble._expand import roll_elements
from armsdyn.model import TimeSettings
from tests.conftest import MODELS
from tests.test_ensemble import NUMBA, RTOL, assert_matches_pysd


def test_richardson_n_matches_pysd_for_sampled_elements() -> None:
    path = MODELS / "richardson_n.mdl"
    model = compile_model(path, backend="numpy")
    rng = np.random.default_rng(11)
    samples = {
        "grievance g[China]": rng.uniform(-150, 250, 6),
        "defence coefficient k[USA, China]": rng.uniform(0.05, 0.3, 6),
        "fatigue coefficient a": rng.uniform(0.4, 0.6, 6),  # whole: every element alike
        "initial_arms[Russia]": rng.uniform(1000, 2000, 6),
    }
    time = TimeSettings(initial=0, final=10, step=0.125, saveper=0.5, units="Year")
    names = ["arms", "arming rate", "reaction"]
    ds = model.run(samples, time, variables=names, chunk_size=4)
    assert ds["arms"].dims == ("run", "time", "state")
    assert list(ds["state"].values) == ["USA", "Russia", "China"]
    assert ds["grievance_g[China]"].attrs["long_name"] == "grievance g[China]"
    assert_matches_pysd(path, ds, samples, names, time)


def test_element_sample_errors_name_the_element() -> None:
    model = compile_model(MODELS / "richardson_n.mdl", backend="numpy")
    with pytest.raises(SampleError, match="no element 'India'"):
        model.run({"grievance g[India]": np.ones(2)})
    with pytest.raises(SampleError, match="sampled twice"):
        model.run({"grievance g[China]": np.ones(2), "grievance_g[china]": np.ones(2)})


@pytest.mark.skipif(not NUMBA, reason="numba is not installed")
def test_numba_runs_subscripts_as_numpy_does_for_sampled_elements() -> None:
    # One scalar per element in the vectorised kernel: no element loops, no array temporaries.
    path = MODELS / "richardson_n.mdl"
    fast = compile_model(path, backend="numba")
    assert compile_model(path).backend == "numba"  # auto: numba can run it (the pilot decides when)
    assert "prefer_wide_vectors()" in fast.source(["arms"])
    rng = np.random.default_rng(12)
    samples = {
        "grievance g[China]": rng.uniform(-150, 250, 40),
        "defence coefficient k[USA, China]": rng.uniform(0.05, 0.3, 40),
        "fatigue coefficient a": rng.uniform(0.4, 0.6, 40),
        "initial_arms[Russia]": rng.uniform(1000, 2000, 40),
    }
    time = TimeSettings(initial=0, final=10, step=0.125, saveper=0.5, units="Year")
    names = ["arms", "arming rate", "reaction"]
    want = compile_model(path, backend="numpy").run(samples, time, variables=names, chunk_size=16)
    fast.threads = 2
    got = fast.run(samples, time, variables=names, chunk_size=16)
    assert got["arms"].dims == ("run", "time", "state")
    for name in want.data_vars:
        assert got[name].dims == want[name].dims
        np.testing.assert_allclose(got[name], want[name], rtol=RTOL, atol=1e-12, err_msg=name)
    assert_matches_pysd(path, got.isel(run=slice(0, 3)), {k: v[:3] for k, v in samples.items()}, names, time)


TOO_MANY = """{UTF-8}
big: (b1-b60) ~~|
other: (c1-c60) ~~|
m[big, other] = 1 ~~|
x[big] = INTEG(SUM(m[big, other!]) - x[big], 0) ~~|
INITIAL TIME = 0 ~~|
FINAL TIME = 2 ~~|
TIME STEP = 1 ~~|
SAVEPER = 1 ~~|
"""


def test_subscripts_too_many_for_numba_raise_unsupported_and_auto_uses_numpy(tmp_path: Path) -> None:
    path = tmp_path / "big.mdl"
    path.write_text(TOO_MANY, encoding="utf-8")
    if NUMBA:
        # 3,600 elements of m: a kernel of thousands of statements would take minutes to compile.
        with pytest.raises(UnsupportedConstruct, match="subscript elements") as info:
            compile_model(path, backend="numba").backend  # noqa: B018
        assert info.value.variable == "m"
    assert compile_model(path).backend == "numpy"
    ds = compile_model(path).run({"m[b1,c1]": np.array([2.0, 3.0])}, variables=["x"])
    assert_matches_pysd(path, ds, {"m[b1,c1]": np.array([2.0, 3.0])}, ["x"])


def test_run_ensemble_on_two_workers_keeps_the_element_layout() -> None:
    path = MODELS / "richardson_n.mdl"
    samples = {"grievance g[USA]": np.linspace(100, 300, 5)}
    time = TimeSettings(initial=0, final=5, step=0.25, saveper=1, units="Year")
    serial = run_ensemble(path, samples, time, ["arms"], workers=1, chunk_size=2)
    assert serial["arms"].shape == (5, 6, 3)
    assert serial.attrs["engine"] == "armsdyn.ensemble"
    assert_matches_pysd(path, serial, samples, ["arms"], time)


def test_auto_backend_pilot_on_a_subscripted_model_gives_numpys_values() -> None:
    # "auto" runs a short first chunk with numpy, then numba for the rest if its compilation pays:
    # either way every run equals the numpy backend's.
    path = MODELS / "richardson_n.mdl"
    rng = np.random.default_rng(13)
    samples = {"grievance g[USA]": rng.uniform(100, 300, 3000), "fatigue coefficient a": rng.uniform(0.4, 0.6, 3000)}
    time = TimeSettings(initial=0, final=5, step=0.25, saveper=1, units="Year")
    auto = compile_model(path).with_backend("numpy").with_backend("auto")
    want = compile_model(path, backend="numpy").run(samples, time, ["arms"], chunk_size=2048)
    got = auto.run(samples, time, ["arms"], chunk_size=2048)
    np.testing.assert_allclose(got["arms"], want["arms"], rtol=RTOL, atol=1e-12)


DELAYS_OVER = """{{UTF-8}}
s: (e1-e{n}) ~~|
delay time[s] = 1.5 ~~|
inflow[s] = STEP(2, 1) + delay time[s] ~~|
outflow[s] = DELAY3(inflow[s], delay time[s]) ~~|
stock[s] = INTEG(inflow[s] - outflow[s], 1) ~~|
smoothed[s] = SMOOTH3(stock[s], delay time[s] * 2) ~~|
first = stock[e1] + outflow[e{n}] ~~|
INITIAL TIME = 0 ~~|
FINAL TIME = 4 ~~|
TIME STEP = 0.25 ~~|
SAVEPER = 0.5 ~~|
"""


@pytest.mark.skipif(not NUMBA, reason="numba is not installed")
def test_a_subscripted_delay_kernel_loops_over_elements_and_runs_as_numpy(tmp_path: Path) -> None:
    # numba's compile time grows faster than a kernel's length: a per-sample kernel must not
    # grow with the number of elements (a statement per element made the peer model
    # subscripted_delays, 20 elements, a 26-second compile), and its loops must compute what
    # the numpy backend does.
    lengths = {}
    for n in (4, 40):
        path = tmp_path / f"delays{n}.mdl"
        path.write_text(DELAYS_OVER.format(n=n), encoding="utf-8")
        lengths[n] = len(compile_model(path, backend="numba").source(backend="numba").splitlines())
    assert lengths[40] == lengths[4]
    samples = {"delay time[e2]": np.array([0.5, 1.0, 2.5]), "delay time[e40]": np.array([3.0, 1.0, 0.75])}
    names = ["inflow", "outflow", "stock", "smoothed", "first"]
    got = compile_model(path, backend="numba").run(samples, variables=names)
    want = compile_model(path, backend="numpy").run(samples, variables=names)
    for name in names:
        np.testing.assert_allclose(got[name], want[name], rtol=1e-13, atol=0, err_msg=name)
    assert not np.array_equal(got["outflow"].values[0], got["outflow"].values[2])  # the samples differ


def _run_statements(lines: list[str], arrays: dict[str, int]) -> dict[str, np.ndarray]:
    """Executes generated scalar statements (our own generator's, not a model's) on fresh arrays."""
    scope: dict[str, object] = {"np": np, **{name: np.arange(size) + 0.5 for name, size in arrays.items()}}
    exec("\n".join(lines), scope)
    return {name: np.asarray(scope[name]) for name in arrays}


def test_rolled_element_statements_compute_what_the_unrolled_ones_do() -> None:
    n = 6
    unrolled = [f"c__{k} = d__{k} * 3" for k in range(n)]
    unrolled += [f"a__{k} = c__{k} * 2" for k in range(n)]
    unrolled += [f"b__{k} = a__{(k + 1) % n} - c__{(k * 5) % n}" for k in range(n)]  # a neighbour: no fusion with a
    unrolled += [f"a__{k} = a__{k} + b__{k}" for k in range(n)]  # a again, after b read the old one
    unrolled += [f"r__{k} = r__{k - 1} + a__{k}" if k else f"r__{k} = a__{k}" for k in range(n)]  # carried along
    sizes = {"a": n, "b": n, "c": n, "d": n, "r": n}
    rolled = roll_elements([unrolled])
    assert rolled.arrays == sizes
    assert len(rolled.sections[0]) < len(unrolled) / 2
    assert any("_ix" in line for line in rolled.sections[0])  # the permuted index reads a table
    want = _run_statements([_subscripted(line) for line in unrolled], sizes)
    scope = {line.partition(" = ")[0]: line for line in rolled.tables}
    got = _run_statements([*scope.values(), *rolled.sections[0]], sizes)
    for name in sizes:
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)


def _subscripted(line: str) -> str:
    """``x__3`` as ``x[3]``: the unrolled statements on the same arrays."""
    return re.sub(r"\b([a-z])__(\d+)\b", r"\1[\2]", line)
