"""run_ensemble's worker processes (armsdyn.ensemble._parallel): their chunks, start-up and result arrays."""

from __future__ import annotations

import importlib.util
import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from armsdyn.ensemble import TimeGrid, choose_workers, compile_model, run_ensemble
from armsdyn.ensemble._engine import chunk_bounds
from armsdyn.ensemble._parallel import _mapped, _pack, _release, _Reservation, _shared_arrays
from armsdyn.errors import ResultsError
from tests.conftest import MODELS
from tests.test_backend_choice import EXP_MODEL

_NUMBA = importlib.util.find_spec("numba") is not None
SHAPES = [(201, 1000), (201, 2, 1000)]
NBYTES = 8 * (201 * 1000 + 201 * 2 * 1000)


@pytest.mark.skipif(not hasattr(os, "posix_fallocate"), reason="space is reserved only where posix_fallocate exists")
def test_the_results_space_stays_reserved_while_the_workers_write() -> None:
    # A sparse file would let a worker's write fail with SIGBUS when /dev/shm fills up.
    with _shared_arrays(SHAPES) as (where, arrays):
        assert os.stat(where[0]).st_blocks * 512 >= NBYTES
        assert [a.shape for a in arrays] == SHAPES


def test_a_workers_writes_are_the_results_and_the_file_is_gone_after() -> None:
    with _shared_arrays(SHAPES) as (where, arrays):
        worker = _mapped(where)  # what a worker process maps
        worker[0][:, 10:20] = 7.0
        worker[1][5, 1, :] = np.arange(1000)
    assert not Path(where[0]).exists()
    assert arrays[0][:, 10:20].sum() == 7.0 * 201 * 10  # still readable: the mapping outlives the name
    np.testing.assert_array_equal(arrays[1][5, 1], np.arange(1000))


def test_a_failure_inside_removes_the_file() -> None:
    with pytest.raises(RuntimeError), _shared_arrays(SHAPES) as (where, _):
        raise RuntimeError("a worker failed")
    assert not Path(where[0]).exists()


@pytest.mark.skipif(not hasattr(os, "posix_fallocate"), reason="space is reserved only where posix_fallocate exists")
def test_no_room_anywhere_is_a_results_error_naming_the_size_and_places(monkeypatch: pytest.MonkeyPatch) -> None:
    import errno

    def full(fd: int, offset: int, length: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "posix_fallocate", full)  # the operating system's answer on a full disk
    before = {p.name for p in Path("/dev/shm").glob("armsdyn-ensemble-*")} if Path("/dev/shm").is_dir() else set()
    no_room = r"no room for the ensemble's results \(0\.00 GiB\).*one worker"
    with pytest.raises(ResultsError, match=no_room), _shared_arrays(SHAPES):
        pass
    after = {p.name for p in Path("/dev/shm").glob("armsdyn-ensemble-*")} if Path("/dev/shm").is_dir() else set()
    assert after <= before  # nothing left behind


def _results_files() -> set[str]:
    return {p.name for p in Path("/dev/shm").glob("armsdyn-ensemble-*")} if Path("/dev/shm").is_dir() else set()


@pytest.mark.skipif(not hasattr(os, "posix_fallocate"), reason="space is reserved only where posix_fallocate exists")
def test_a_reservation_made_in_a_thread_is_taken_whole_or_stopped_and_removed(monkeypatch: pytest.MonkeyPatch) -> None:
    # The automatic plan reserves the result's memory while its pilot runs, before it knows whether it
    # shares the study out: taken, the file is fully reserved; not needed, it stops and is removed.
    before = _results_files()
    with _Reservation() as reservation:
        reservation.start(NBYTES)
        path = reservation.take()
    assert path is not None
    assert os.stat(path).st_blocks * 512 >= NBYTES  # the taker's file, kept
    _release(path)
    assert not Path(path).exists()

    calls: list[int] = []
    real = os.posix_fallocate
    proceed = threading.Event()

    def slow(fd: int, offset: int, length: int) -> None:
        calls.append(offset)
        proceed.wait(5)  # the first piece lasts until the study has decided
        real(fd, offset, length)

    monkeypatch.setattr(os, "posix_fallocate", slow)
    monkeypatch.setattr("armsdyn.ensemble._parallel._PIECE", 4096)
    with _Reservation() as reservation:
        reservation.start(100 * 4096)
        while not calls:
            time.sleep(0.001)
        reservation._stop.set()  # what leaving does first: the plan kept the study in this process
        proceed.set()
    assert calls == [0]  # stopped after the piece under way, not 100 pieces later
    assert _results_files() <= before


def test_a_reservation_that_failed_is_the_studys_error_only_if_taken(monkeypatch: pytest.MonkeyPatch) -> None:
    def full(nbytes: int, stop: object = None) -> str:
        raise ResultsError("no room for the ensemble's results")

    monkeypatch.setattr("armsdyn.ensemble._parallel._reserve", full)
    with _Reservation() as reservation:
        reservation.start(NBYTES)  # not taken: the failure is no one's
    with _Reservation() as reservation:
        reservation.start(NBYTES)
        with pytest.raises(ResultsError, match="no room"):
            reservation.take()


@pytest.mark.skipif(not (MODELS / "knowledge_engine.mdl").is_file(), reason="the knowledge model is absent")
def test_a_workers_start_up_message_fits_a_pipes_buffer() -> None:
    # Larger than a pipe's buffer (64 KiB), the message that starts a worker blocks the parent until the
    # worker has imported the engine, so two workers started one after the other (0.2 s each). The
    # knowledge model pickles to about 116 KB, and the numba source the plan generated adds more.
    model = compile_model(MODELS / "knowledge_engine.mdl")
    model.kernel_ready(model.output_names(None))  # generates numba's kernel source, as the plan does
    assert model._sources
    # The workers of an automatic plan run numpy: they get the model without numba's sources.
    assert len(_pack(model.with_backend("numpy"))) < 32 * 1024  # room for the rest of the message


def test_a_study_the_plan_keeps_in_this_process_leaves_no_reserved_memory_behind(tmp_path: Path) -> None:
    # The pilot's time is used to reserve the shared result in case the study is shared out; a cheap
    # study stays here, and the reservation goes.
    path = tmp_path / "exp.mdl"
    path.write_text(EXP_MODEL, encoding="utf-8")
    ks = np.linspace(0.5, 2.0, 3000)
    files = _results_files()
    ds = run_ensemble(path, {"k": ks}, variables=["x"], workers=None, backend="numpy")
    assert _results_files() <= files
    xr.testing.assert_equal(ds["x"], compile_model(path, backend="numpy").run({"k": ks}, variables=["x"])["x"])


KILLED = """
import os, signal, sys
from armsdyn.ensemble._parallel import _shared_arrays
with _shared_arrays([(1000,)]) as (where, arrays):
    print(where[0], flush=True)
    os.kill(os.getpid(), signal.SIGKILL)  # the `finally` that removes the file never runs
"""


@pytest.mark.skipif(not os.path.isdir("/dev/shm"), reason="only /dev/shm files are shared-memory objects")
def test_a_killed_parents_results_file_is_removed_by_the_resource_tracker() -> None:
    import subprocess
    import sys
    import time

    done = subprocess.run([sys.executable, "-c", KILLED], capture_output=True, text=True, timeout=60)
    assert done.returncode == -9, done.stderr
    path = Path(done.stdout.strip())
    assert path.parent == Path("/dev/shm"), path
    # The tracker notices its last user gone and unlinks what was registered; poll, not a fixed sleep.
    deadline = time.monotonic() + 30
    while path.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not path.exists(), f"{path} left behind by a killed run"


@pytest.mark.parametrize(
    ("n", "chunk"),
    [(10_000, 8192), (50, 7), (1, 8192), (8192, 8192), (8193, 8192), (10**6, 8192)],
)
def test_chunks_are_as_few_as_the_chunk_size_allows_and_of_equal_sizes(n: int, chunk: int) -> None:
    edges = chunk_bounds(n, chunk)
    sizes = np.diff(edges)
    assert edges[0] == 0
    assert edges[-1] == n
    assert len(sizes) == -(-n // chunk)
    assert sizes.max() <= chunk
    assert sizes.max() - sizes.min() <= 1


def test_two_workers_share_a_study_of_two_chunks_evenly_and_agree_with_one_bit_for_bit(tmp_path: Path) -> None:
    # An EXP model: numpy's vectorised exp could differ in the last bits if a sample met other neighbours.
    path = tmp_path / "exp.mdl"
    path.write_text(EXP_MODEL, encoding="utf-8")
    ks = np.linspace(0.5, 2.0, 1000)
    serial = run_ensemble(path, {"k": ks}, workers=1, chunk_size=600, backend="numpy")
    parallel = run_ensemble(path, {"k": ks}, workers=2, chunk_size=600, backend="numpy")
    assert chunk_bounds(1000, 600) == [0, 500, 1000]  # two tasks of 500, not 600 and 400
    xr.testing.assert_identical(parallel, serial)


WORKER = """
import pickle, sys
from armsdyn.ensemble import _parallel
model, values, grid, names, shapes = pickle.loads(sys.stdin.buffer.read())
with _parallel._shared_arrays(shapes) as (where, arrays):
    _parallel._init_compiled(_parallel._pack(model))
    _parallel._task_compiled(values, 4, grid, names, where, 0)
    assert arrays[0][-1].min() > 0, arrays[0]
print(sorted(m for m in ("pandas", "xarray", "scipy", "pysd", "matplotlib") if m in sys.modules))
"""


def test_a_worker_process_runs_its_chunk_without_importing_pandas_or_xarray() -> None:
    # A worker's start-up is paid by every parallel study: pandas and xarray were two thirds of it.
    import pickle
    import subprocess
    import sys

    model = compile_model(MODELS / "richardson.mdl", backend="numpy")
    values, n = model.normalise_inputs({"defence coefficient k": np.full(4, 0.8)}, None, None)
    names = model.output_names(None)
    grid = TimeGrid.from_settings(model.time, model.path)
    shapes = [(sum(grid.save), n) for _ in names]
    payload = pickle.dumps((model, values, grid, names, shapes))
    done = subprocess.run([sys.executable, "-c", WORKER], input=payload, capture_output=True, timeout=120)
    assert done.returncode == 0, done.stderr.decode()
    assert done.stdout.decode().strip() == "[]"


#: Costly per run and cheap per chunk (100 elements of two stocks, 400 steps): numpy on two processes
#: runs a study of 12,000 about 1.5x faster than on one (about 3 s), so the automatic plan shares it out.
COSTLY_MODEL = """{UTF-8}
i: (i1-i100) ~~|
x[i] = INTEG(k * EXP(-x[i] / 10) - x[i] / 7, 1) ~ units ~ |
y[i] = INTEG(x[i] / 10 - y[i] / 5, 0) ~ units ~ |
total = SUM(y[i!]) ~ units ~ |
k = 1 ~ units/Year ~ |
INITIAL TIME = 0 ~ Year ~ |
FINAL TIME = 100 ~ Year ~ |
TIME STEP = 0.25 ~ Year ~ |
SAVEPER = 10 ~ Year ~ |
"""


def _children_cpu() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_utime


@pytest.mark.slow
def test_the_automatic_plan_shares_a_costly_numpy_study_between_processes_after_its_pilot(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from armsdyn.ensemble import _numba

    monkeypatch.setenv("ARMSDYN_CACHE_DIR", str(tmp_path))  # no speed measured: the pilot decides
    path = tmp_path / "costly.mdl"
    path.write_text(COSTLY_MODEL, encoding="utf-8")
    model = compile_model(path)
    # numba measured slow here: the choice is between one process and two (without numba nothing is kept,
    # and nothing needed). Not `model.backend`, which would generate numba's kernel for the whole model.
    _numba.write_timing(model.timing_key(["total"]), tmp_path / "ensemble-numba", "numba", 1e-3)
    ks = np.random.default_rng(7).uniform(0.5, 2.0, 12_000)
    before, files = _children_cpu(), _results_files()
    ds = run_ensemble(path, {"k": ks}, variables=["total"], workers=None)
    # Worker processes ran most of the study (the pilot's 1,024 runs stayed in this process).
    assert _children_cpu() - before > 1.0
    assert _results_files() <= files  # the shared result's file, reserved during the pilot, is gone
    # Every run as numpy computes it in one process: the pilot's, the first worker's and the last.
    picked = np.r_[0:1100, 11_900:12_000]
    want = compile_model(path, backend="numpy").run({"k": ks[picked]}, variables=["total"])
    np.testing.assert_array_equal(ds["total"].values[picked], want["total"].values)


@pytest.mark.skipif(not _NUMBA, reason="numba is not installed: without it no speeds are kept")
def test_stored_speeds_choose_processes_at_once_and_the_workers_measure_numpy_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from armsdyn.ensemble import _numba

    monkeypatch.setenv("ARMSDYN_CACHE_DIR", str(tmp_path))
    path = tmp_path / "exp.mdl"
    path.write_text(EXP_MODEL, encoding="utf-8")
    model = compile_model(path)
    source, kernels = model.timing_key(["x"]), tmp_path / "ensemble-numba"
    # Stored by an earlier study: both backends slow per run, so numpy on both cores pays for starting them.
    _numba.write_timing(source, kernels, "numpy", 1e-3)
    _numba.write_timing(source, kernels, "numba", 1e-3)
    ks = np.linspace(0.5, 2.0, 3000)
    grid = TimeGrid.from_settings(model.time, path)
    plan = model.plan(["x"], (), grid, len(ks), processes=2)
    assert plan is not None
    assert (plan.backend, plan.processes) == ("numpy", 2)
    before = _children_cpu()
    ds = run_ensemble(path, {"k": ks}, variables=["x"], workers=None)
    assert _children_cpu() - before > 0.2  # two interpreters started and ran the chunks
    want = compile_model(path, backend="numpy").run({"k": ks}, variables=["x"])
    xr.testing.assert_equal(ds["x"], want["x"])
    # The workers' own measure replaced the stored one; a process of this size now runs the study alone.
    assert _numba.read_timings(source, kernels)["numpy"] < 1e-4
    assert choose_workers(path, len(ks), variables=["x"]) == 1


@pytest.mark.slow
def test_a_chunked_study_with_nothing_measured_plans_its_workers_after_its_first_chunk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from armsdyn.audit.runs import FinalsReducer
    from armsdyn.ensemble import _numba
    from armsdyn.runner import run_chunked

    monkeypatch.setenv("ARMSDYN_CACHE_DIR", str(tmp_path))
    path = tmp_path / "costly.mdl"
    path.write_text(COSTLY_MODEL, encoding="utf-8")
    model = compile_model(path)
    # numba measured slow here: the choice is between one process and two (without numba nothing is kept,
    # and nothing needed). Not `model.backend`, which would generate numba's kernel for the whole model.
    _numba.write_timing(model.timing_key(["total"]), tmp_path / "ensemble-numba", "numba", 1e-3)
    assert choose_workers(path, 18_000, variables=["total"]) == 1  # numpy not measured: this process first
    ks = np.random.default_rng(8).uniform(0.5, 2.0, 18_000)
    reduce = FinalsReducer(outputs=("total",), attrs={})
    before = _children_cpu()
    ds = run_chunked(path, {"k": ks}, model.time, ["total"], reduce, chunk_size=6000, workers=None)
    # The first chunk measured numpy here; the other two, 3 s of numpy, went to two worker processes.
    assert ds.attrs["workers"] == 2
    assert _children_cpu() - before > 1.0
    want = compile_model(path, backend="numpy").run({"k": ks[[0, 5999, 6000, 17_999]]}, variables=["total"])
    np.testing.assert_array_equal(ds["output: total"].values[[0, 5999, 6000, 17_999]], want["total"].values[:, -1])
