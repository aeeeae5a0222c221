"""The automatic backend's pilot: numpy's cost split into per chunk and per sample, and what it decides.

The numbers are numpy's CPU seconds on chunks of two sizes (64 and 960 samples) as measured on
this project's machine (see benchmarks/README.md); the decisions they must give are
the measured best backends of those studies.
"""

from __future__ import annotations

import importlib.util
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from armsdyn.ensemble import CompiledModel, TimeGrid, UnsupportedConstruct, _engine, _numba, compile_model
from armsdyn.ensemble._choice import NumpyCost, Plan, choose, numpy_seconds, pilot_cost
from tests.conftest import MODELS, SHARED

NUMBA = importlib.util.find_spec("numba") is not None

# (64 samples, seconds), (960 samples, seconds) of numpy's chunks.
SMOOTH = [(64, 0.0010), (960, 0.0020)]  # shared test_smooth_and_stock.mdl: 181 steps, two stocks
SECURITY = [(64, 0.183), (960, 0.428)]  # models/security_dilemma.mdl: 1,601 steps


def test_two_chunks_of_different_sizes_separate_the_fixed_cost_from_the_cost_per_sample() -> None:
    cost = pilot_cost([(64, 0.1 + 64 * 2e-4), (960, 0.1 + 960 * 2e-4)])
    assert cost.per_chunk == pytest.approx(0.1)
    assert cost.per_sample == pytest.approx(2e-4)
    # A busy machine can make the shorter chunk the slower one: nothing negative comes out, and the
    # time is all counted per sample (the cost of a study is not taken to be nothing).
    assert pilot_cost([(64, 0.05), (960, 0.04)]) == NumpyCost(0.0, pytest.approx(0.09 / 1024))
    # Chunks of one size cannot separate the two: all of it counts per sample.
    assert pilot_cost([(512, 0.2), (512, 0.4)]) == NumpyCost(0.0, pytest.approx(0.3 / 512))


def test_a_cheap_model_stays_on_numpy_in_one_process_where_its_time_per_sample_scaled_up_would_have_switched() -> None:
    # 10^5 runs of the SMOOTH model took 2.0 s on numpy and 8.0 s when the pilot switched to numba
    # (compiling, ~1.6 s estimated). The old pilot timed its 1,024 samples together with their copy
    # into the study's result, which first touches that whole array (2.56 s measured), and scaled the
    # time per sample up to the study.
    # (The old rule switched: 2.56 s / 1,024 samples x 98,976 more x 2/3 saved = 165 s > 1.6 s.)
    runs, chunk, compile_cost = 100_000 - 1024, 8192, 1.6
    for pilot in (SMOOTH, [(m, t * 3) for m, t in SMOOTH]):  # and wall time on a machine loaded 3x over
        plan = choose(pilot_cost(pilot), runs, chunk, cpus=2, processes=2, numba_ready=compile_cost)
        assert (plan.backend, plan.processes) == ("numpy", 1)  # 0.2 s of work: not worth a second process


def test_an_expensive_model_shares_numpy_at_ten_thousand_runs_and_compiles_numba_at_a_hundred_thousand() -> None:
    # security_dilemma, measured cold on 2 cores (benchmarks/README.md): at 10^4 runs numpy on two
    # processes 2.2 s, numba with its 3.5 s compile 4.0 s, numpy on one 4.2 s; at 10^5, 16.1, 11.6, 34.7 s.
    cost, compile_cost = pilot_cost(SECURITY), 3.5
    plan = choose(cost, 10_000 - 1024, 8192, cpus=2, processes=2, numba_ready=compile_cost)
    assert (plan.backend, plan.processes) == ("numpy", 2)
    plan = choose(cost, 100_000 - 1024, 8192, cpus=2, processes=2, numba_ready=compile_cost)
    assert (plan.backend, plan.processes) == ("numba", 1)
    # In one process (a chunk of a study that already shares its chunks out), numba or numpy alone.
    assert choose(cost, 10_000 - 1024, 8192, cpus=2, processes=1, numba_ready=compile_cost).processes == 1
    assert choose(cost, 10, 8192, cpus=2, processes=2, numba_ready=compile_cost).backend == "numpy"  # 10 more runs
    # Where numba cannot run the model, numpy on every core still pays for the large study.
    assert choose(cost, 100_000, 8192, cpus=2, processes=2) == Plan("numpy", 2, pytest.approx(numpy_seconds(
        cost, 100_000, 8192, 2)))  # fmt: skip


def test_a_measured_numba_speed_is_taken_as_it_is() -> None:
    # Measured slower than numpy (the shared SMOOTH model is such a case): numpy, however large the study.
    numpy = NumpyCost(0.0, 1e-5)
    assert choose(numpy, 10**6, 8192, cpus=2, processes=1, numba_ready=0.7, numba_per_sample=2e-5).backend == "numpy"
    assert choose(numpy, 10**6, 8192, cpus=2, processes=1, numba_ready=0.7, numba_per_sample=1e-6).backend == "numba"


#: A model whose numpy and numba runs differ in the last bits (numba's vectorised EXP), so that a
#: result's runs show which backend computed them (richardson.mdl's linear arithmetic does not).
EXP_MODEL = """{UTF-8}
x = INTEG(k * EXP(-x / 10) - x / 7, 1) ~ units ~ |
k = 1 ~ units/Year ~ |
INITIAL TIME = 0 ~ Year ~ |
FINAL TIME = 20 ~ Year ~ |
TIME STEP = 0.25 ~ Year ~ |
SAVEPER = 1 ~ Year ~ |
"""


def _exp_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, final_time: int = 20) -> Path:
    """EXP_MODEL in `tmp_path` (to `final_time`, in steps of 0.25), with a cache of its own there."""
    monkeypatch.setenv("ARMSDYN_CACHE_DIR", str(tmp_path))
    path = tmp_path / "exp.mdl"
    path.write_text(EXP_MODEL.replace("FINAL TIME = 20", f"FINAL TIME = {final_time}"), encoding="utf-8")
    return path


def test_the_pilot_leaves_every_run_as_numpy_computes_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The pilot's chunk (1,024 samples) and the probe change where chunks start, not any value:
    # bit for bit, with an EXP whose vectorised evaluation would show a dependence on the layout.
    monkeypatch.setenv("ARMSDYN_CACHE_DIR", str(tmp_path))  # nothing measured yet: the pilot decides
    path = tmp_path / "exp.mdl"
    path.write_text(EXP_MODEL, encoding="utf-8")
    samples = {"k": np.random.default_rng(5).uniform(0.5, 1.5, 3000)}
    want = compile_model(path, backend="numpy").run(samples, chunk_size=2048)
    auto = compile_model(path).with_backend("numpy").with_backend("auto")
    got = auto.run(samples, chunk_size=2048)
    assert auto._kernels == {}  # 3,000 cheap runs stay on numpy
    np.testing.assert_array_equal(got["x"].values, want["x"].values)


@pytest.mark.skipif(importlib.util.find_spec("numba") is None, reason="numba is not installed")
@pytest.mark.parametrize(
    "model",
    [MODELS / "security_dilemma.mdl", SHARED / "test-models" / "subscripted_smooth" / "test_subscripted_smooth.mdl"],
    ids=["security_dilemma", "shared:subscripted_smooth"],
)
def test_a_study_numpy_finishes_before_numba_could_load_generates_no_numba_code(
    model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Generating numba's kernel module, to see whether numba compiles the model or has it cached,
    # cost security_dilemma 0.1-0.3 s twice over: more than a study of a thousand runs on numpy.
    if not model.is_file():
        pytest.skip(f"{model} is absent (../shared holds the peer test models)")
    monkeypatch.setenv("ARMSDYN_CACHE_DIR", str(tmp_path))
    base = compile_model(model, backend="numpy")
    # The first constant with a non-zero value (a subscripted one's first element).
    name, value = next(
        (v.name, v.default) if v.default is not None else (v.element_name(v.elements()[0]), v.defaults[0])
        for v in base.variables.values()
        if v.kind == "constant" and (v.default or (v.defaults and v.defaults[0]))
    )
    samples = {name: value * np.linspace(0.9, 1.1, 500)}
    auto = CompiledModel(base._graph, "sha", backend="auto")
    got = auto.run(samples)
    assert auto._sources == {}
    xr.testing.assert_equal(got, base.run(samples))


#: More subscript elements than the numba backend expands: numpy runs it, numba raises UnsupportedConstruct.
WIDE_MODEL = """{UTF-8}
i: (i1-i4000) ~~|
x[i] = INTEG(-k * x[i], 1) ~ units ~ |
k = 0.1 ~ 1/Year ~ |
INITIAL TIME = 0 ~ Year ~ |
FINAL TIME = 10 ~ Year ~ |
TIME STEP = 1 ~ Year ~ |
SAVEPER = 10 ~ Year ~ |
"""


@pytest.mark.skipif(importlib.util.find_spec("numba") is None, reason="numba is not installed")
def test_a_model_numba_cannot_compile_is_found_out_by_the_plan_and_runs_on_numpy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The backend is no longer resolved up front (that generated the whole kernel): the plan, pricing
    # numba for a study it could win, meets UnsupportedConstruct and settles on numpy.
    monkeypatch.setenv("ARMSDYN_CACHE_DIR", str(tmp_path))
    path = tmp_path / "wide.mdl"
    path.write_text(WIDE_MODEL, encoding="utf-8")
    with pytest.raises(UnsupportedConstruct):
        compile_model(path, backend="numba").backend  # noqa: B018 - resolving raises
    samples = {"k": np.linspace(0.05, 0.15, 2000)}
    auto = CompiledModel(compile_model(path)._graph, "sha", backend="auto")
    auto.study_runs = 10**9  # numba would win so large a study, if it could compile the model
    got = auto.run(samples)
    assert auto.backend == "numpy"
    assert auto._kernels == {}
    xr.testing.assert_equal(got, compile_model(path, backend="numpy").run(samples))


@pytest.mark.skipif(importlib.util.find_spec("numba") is None, reason="numba is not installed")
def test_a_pilot_that_hands_the_study_to_numba_returns_numbas_runs_for_every_sample(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # As a chunk of a study of a billion runs, numba pays at once: the pilot's own runs are run
    # again by numba, so the whole result is numba's (one backend's values, no copy of a numpy part).
    monkeypatch.setenv("ARMSDYN_CACHE_DIR", str(tmp_path))  # nothing measured yet: the pilot decides
    path = tmp_path / "exp.mdl"
    path.write_text(EXP_MODEL, encoding="utf-8")
    samples = {"k": np.random.default_rng(6).uniform(0.5, 1.5, 3000)}
    want = compile_model(path, backend="numba").run(samples, chunk_size=2048)
    numpy = compile_model(path, backend="numpy").run(samples, chunk_size=2048)
    assert (want["x"].values[:, :1024] != numpy["x"].values[:, :1024]).any()  # the pilot's runs tell
    auto = CompiledModel(compile_model(path)._graph, "sha", backend="auto")
    auto.study_runs = 10**9
    got = auto.run(samples, chunk_size=2048)
    assert len(auto._kernels) == 1
    np.testing.assert_array_equal(got["x"].values, want["x"].values)


#: Two chained DELAY Ns: their states are arrays of a per-sample length, so numba compiles a
#: per-sample kernel (a loop over samples around the time loop), several times slower per line.
DELAY_N_MODEL = """{UTF-8}
input = 1 + STEP(1, 5) ~ units ~ |
d0 = DELAY N(input, dtime, 1, norder) ~ units ~ |
d1 = DELAY N(d0, dtime, 1, norder) ~ units ~ |
s = INTEG(d1 - s / 4, 0) ~ units ~ |
dtime = 3 ~ Year ~ |
norder = 3 ~ dmnl ~ |
INITIAL TIME = 0 ~ Year ~ |
FINAL TIME = 20 ~ Year ~ |
TIME STEP = 0.25 ~ Year ~ |
SAVEPER = 1 ~ Year ~ |
"""


@pytest.mark.skipif(not NUMBA, reason="numba is not installed")
def test_a_per_sample_kernel_is_estimated_on_its_own_slower_line(tmp_path: Path) -> None:
    blocked = compile_model(MODELS / "richardson.mdl", backend="numba")
    path = tmp_path / "delay_n.mdl"
    path.write_text(DELAY_N_MODEL, encoding="utf-8")
    per_sample = compile_model(path, backend="numba")
    for model, marked in ((blocked, False), (per_sample, True)):
        names = model.default_variables()
        source = model.source(names, "numba")
        assert (_engine._PER_SAMPLE_MARK in source) is marked  # the generator's per-sample function
        lines = len(source.splitlines())
        blocked_line = _engine._COMPILE_BASE + _engine._COMPILE_PER_LINE * lines + _engine._COMPILE_PER_LINE2 * lines**2
        assert (model._compile_estimate(names) > 1.2 * blocked_line) is marked


@pytest.mark.skipif(not NUMBA, reason="numba is not installed: without it no speeds are kept")
def test_a_study_no_longer_than_the_pilot_is_measured_so_that_the_next_one_weighs_numba(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The knowledge model's studies of 1,000 runs were never measured (the pilot needs more runs than
    # that), so each stayed on numpy, 1.4x numba's time, without weighing numba at all.
    path = _exp_model(tmp_path, monkeypatch, final_time=300)  # 1,201 steps
    samples = {"k": np.random.default_rng(9).uniform(0.5, 1.5, 1000)}
    auto = compile_model(path)
    grid = TimeGrid.from_settings(auto.time, path)
    assert auto.plan(["x"], (), grid, 1000) is None  # nothing measured: numpy, without weighing numba
    got = auto.run(samples, variables=["x"])
    xr.testing.assert_equal(got, compile_model(path, backend="numpy").run(samples, variables=["x"]))
    assert auto._kernels == {}  # the study itself ran on numpy
    timings = _numba.read_timings(auto.timing_key(["x"]), tmp_path / "ensemble-numba")
    assert timings.keys() == {"numpy", "numpy chunk"}
    # The next study of the model plans at once, numba weighed; with numba measured 100x faster per run
    # and its kernel loaded, numba.
    _numba.write_timing(auto.timing_key(["x"]), tmp_path / "ensemble-numba", "numba", timings["numpy"] / 100)
    later = compile_model(path).with_backend("numpy").with_backend("auto")
    later.kernel(["x"])  # compiled here: the plan finds it loaded, nothing more to pay
    plan = later.plan(["x"], (), grid, 1000)
    assert plan is not None
    assert plan.backend == "numba"


def _forget_kernels(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [m for m in sys.modules if m.startswith("armsdyn_kernel_")]:
        monkeypatch.delitem(sys.modules, name)


@pytest.mark.skipif(not NUMBA, reason="numba is not installed")
def test_loading_a_cached_kernel_is_timed_and_prices_numba_for_the_next_study(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # numba's start-up was a constant (0.7 s) where the models measure 0.34-0.56 s: on the knowledge
    # model's studies of 1,000 runs that constant alone kept numpy, 1.4x slower.
    path = _exp_model(tmp_path, monkeypatch)
    _forget_kernels(monkeypatch)  # another test's kernel of this source: compiled into another cache
    compile_model(path, backend="numba").kernel(["x"])  # compiled and cached: nothing to time as a load
    key, folder = compile_model(path).timing_key(["x"]), tmp_path / "ensemble-numba"
    assert "numba load" not in _numba.read_timings(key, folder)
    graph = compile_model(path)._graph
    _forget_kernels(monkeypatch)  # as in a later process: not imported, its compiled code in the disk cache
    CompiledModel(graph, compile_model(path).sha256, backend="numba").kernel(["x"])  # loaded from the cache
    load = _numba.read_timings(key, folder)["numba load"]
    assert 0 < load < 30
    fresh = CompiledModel(graph, compile_model(path).sha256, backend="auto")
    assert fresh._kernel_cost(["x"], ()) == load
    # Loaded again in the same process it costs nothing, and that is not what a later study would pay.
    CompiledModel(graph, compile_model(path).sha256, backend="numba").kernel(["x"])
    assert _numba.read_timings(key, folder)["numba load"] == load


@pytest.mark.skipif(not NUMBA, reason="numba is not installed: without it no speeds are kept")
def test_numpys_stored_speed_leaves_out_the_first_touch_of_the_result(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # richardson at 10^5: copying the pilot's runs into the 300 MB result touched all of it first
    # (0.84 s, which every plan pays alike), and the whole call's time, stored as numpy's speed,
    # priced numpy 4x too high for the next study. Here the copy is made to take a second.
    path = _exp_model(tmp_path, monkeypatch, final_time=300)  # 1,201 steps
    place = _engine.Begun.place

    def slow_place(self: _engine.Begun, result: list[np.ndarray]) -> None:
        time.sleep(1.0)
        place(self, result)

    monkeypatch.setattr(_engine.Begun, "place", slow_place)
    auto = compile_model(path)
    samples = {"k": np.random.default_rng(10).uniform(0.5, 1.5, 6000)}
    got = auto.with_backend("numpy").with_backend("auto").run(samples, variables=["x"])  # a pilot, then one chunk
    xr.testing.assert_equal(got, compile_model(path, backend="numpy").run(samples, variables=["x"]))
    per_run_step = _numba.read_timings(auto.timing_key(["x"]), tmp_path / "ensemble-numba")["numpy"]
    assert per_run_step * 6000 * 1201 < 0.5  # the chunks' own time (tens of milliseconds), not the copy's second
