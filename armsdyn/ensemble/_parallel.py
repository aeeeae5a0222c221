"""Run an ensemble across processes, and fall back to PySD for models the engine cannot compile."""

from __future__ import annotations

import contextlib
import itertools
import multiprocessing
import os
import pickle
import tempfile
import threading
import warnings
import zlib
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import resource_tracker
from pathlib import Path
from time import perf_counter
from typing import TYPE_CHECKING, Any

import numpy as np

from armsdyn.ensemble._engine import (
    DEFAULT_CHUNK_SIZE,
    Begun,
    CompiledModel,
    OutputMeta,
    Samples,
    SeriesLike,
    TimeGrid,
    build_dataset,
    chunk_bounds,
    compile_model,
    normalise_samples,
    sample_meta,
    series_points,
    series_spec,
)
from armsdyn.ensemble._errors import FallbackWarning, SampleError, UnsupportedConstruct
from armsdyn.errors import ResultsError
from armsdyn.model import Model, TimeSettings, load_model

if TYPE_CHECKING:
    import pandas as pd
    import xarray as xr

# pandas is imported where PySD's inputs are built, not here: worker processes import this module
# (see armsdyn.ensemble._engine).

# Per-process state of worker processes: each compiles (or loads) its model once.
_worker_model: CompiledModel | None = None
_worker_pysd: Model | None = None


def run_ensemble(
    path: str | os.PathLike[str],
    samples: Samples,
    time: TimeSettings | None = None,
    variables: Sequence[str] | None = None,
    *,
    workers: int | None = 1,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    backend: str = "auto",
    series: Mapping[str, Sequence[SeriesLike | None]] | None = None,
    lookups: Mapping[str, Sequence[SeriesLike | None]] | None = None,
    study_runs: int | None = None,
) -> xr.Dataset:
    """Run a model for every parameter sample, on one core or several.

    Compiles the model with :func:`compile_model` and runs it with
    :meth:`CompiledModel.run`. If the model uses a construct the engine cannot
    compile, warns (:class:`FallbackWarning`, naming the construct) and runs
    PySD once per sample instead, in `workers` processes, with the same result
    layout.

    Parameters
    ----------
    path : path-like
        The model file.
    samples : mapping or pandas.DataFrame
        Constant name to a 1-D array of values (see :meth:`CompiledModel.run`).
    time : TimeSettings, optional
        Time settings; the model file's own by default.
    variables : sequence of str, optional
        Variables to save; stocks and flows by default.
    workers : int or None
        Processes to use. None chooses: numpy in this process, numpy on every
        core, or numba's threads in this process, whichever the measured
        speeds project fastest (see :meth:`CompiledModel.begin`); a model
        that falls back to PySD uses a process per core. Values do not depend
        on the number of processes; the two backends can differ in the last
        bits (numba's vectorised ``EXP``, ``LN``, ``**``). Workers are
        started with ``spawn`` (safe whatever threads the caller runs), so a
        script that uses ``workers > 1``, or None, needs the usual
        ``if __name__ == "__main__":`` guard.
    chunk_size : int
        Samples advanced together by the compiled engine.
    backend : {"auto", "numpy", "numba"}
        Code generator of the compiled engine (see :func:`compile_model`). With
        numba and ``workers > 1``, each worker process runs one thread.
    series, lookups : mapping, optional
        Constants that vary with time and lookups redrawn, one series or table
        per sample (see :meth:`CompiledModel.run`); PySD takes each as a
        ``pandas.Series``.
    study_runs : int, optional
        Runs of the whole study these samples are a chunk of: the automatic
        backend choice judges the call by it (see :class:`CompiledModel`).

    Returns
    -------
    xarray.Dataset
        Dims ``(run, time)``, as :meth:`CompiledModel.run` returns.
    """
    workers = None if workers is None else max(1, int(workers))
    try:
        model = compile_model(path, backend=backend)
    except UnsupportedConstruct as exc:
        msg = f"{exc}; running the model with PySD instead, one sample at a time"
        warnings.warn(msg, FallbackWarning, stacklevel=2)
        return _run_pysd(Path(path), samples, time, variables, workers or os.cpu_count() or 1, series, lookups)
    # The compiled model is shared in-process: the study size holds for this call only.
    model.study_runs = study_runs
    try:
        return _run_compiled(model, samples, time, variables, workers, chunk_size, series, lookups)
    finally:
        model.study_runs = None


def _run_compiled(
    model: CompiledModel,
    samples: Samples,
    time: TimeSettings | None,
    variables: Sequence[str] | None,
    workers: int | None,
    chunk_size: int,
    series: Mapping[str, Sequence[SeriesLike | None]] | None,
    lookups: Mapping[str, Sequence[SeriesLike | None]] | None,
) -> xr.Dataset:
    if workers == 1:
        return model.run(samples, time, variables, chunk_size, series=series, lookups=lookups)
    values, n = model.normalise_inputs(samples, series, lookups)
    names = model.output_names(variables)
    grid = TimeGrid.from_settings(time or model.time, model.path)
    shapes = [(grid.n_save, *model.element_shape(py), n) for py in names]
    with _Reservation() as reservation:
        begun: Begun | None = None
        if workers is None:
            # The automatic plan: numpy here, numpy on every core, or numba's threads here (after a pilot of
            # numpy where nothing is measured yet; its runs are kept). The result's shared memory is reserved
            # while the pilot runs (a third of a second for security_dilemma's 10^4 runs, in a thread), in
            # case the plan shares the study out. Starting the workers then too made the pilot twice as
            # long on two cores, and gained nothing.
            begun = model.begin(
                values, n, grid, names, chunk_size, processes=os.cpu_count() or 1,
                while_piloting=lambda: reservation.start(_nbytes(shapes)),
            )  # fmt: skip
            if begun.plan.processes == 1:
                reservation.stop()  # now: its thread and memory are not the study's
                return model.dataset(values, grid, names, model.finish(begun, values, n, grid, names, chunk_size))
            workers = begun.plan.processes
            rest = n - begun.done
            # At least a chunk per process (a study of one chunk would leave the other cores idle).
            edges = [begun.done + b for b in chunk_bounds(rest, min(chunk_size, -(-rest // workers)))]
            task_model = model.with_backend(begun.plan.backend)
        else:
            # A task per chunk: every sample is computed in the same chunk as in a serial run, and the
            # chunks' equal sizes share a study of a few chunks evenly between the workers.
            edges = chunk_bounds(n, chunk_size)
            task_model = model
        bounds = list(itertools.pairwise(edges))
        # The processes start (a quarter of a second) while this one maps the result's memory and copies
        # the pilot's runs into it, not after. They write their runs straight into it (a file mapped by
        # every process), instead of pickling them back through a pipe to be copied again: a study's
        # saved series are gigabytes (the knowledge model, 10^4 runs on 2 processes, took 1.7x one
        # process's time).
        with (
            _started_pool(min(workers, len(bounds)), task_model) as pool,
            _shared_arrays(shapes, reservation.take()) as (where, arrays),
        ):
            futures = [
                pool.submit(_task_compiled, {k: v[lo:hi] for k, v in values.items()}, hi - lo, grid, names, where, lo)
                for lo, hi in bounds
            ]  # fmt: skip
            if begun is not None:
                begun.place(arrays)  # columns no task writes
            seconds = sum(future.result() for future in futures)
    if begun is not None and edges[-1] > edges[0]:
        # numpy's speed in a whole chunk, as the workers measured it: for later automatic choices.
        spec = series_spec(values)
        model.record_numpy(names, spec, grid, seconds, edges[-1] - edges[0], len(bounds))
    return model.dataset(values, grid, names, arrays)


def _started_pool(workers: int, model: CompiledModel) -> ProcessPoolExecutor:
    """A pool of `workers` processes running `model`, each process already starting."""
    pool = _pool(workers, _init_compiled, (_pack(model),))
    for _ in range(workers):
        pool.submit(os.getpid)  # processes start on demand: one each
    return pool


def _pack(model: CompiledModel) -> bytes:
    """`model` as the workers' initializer receives it (see :func:`_init_compiled`).

    Compressed (to a quarter): a worker's start-up message larger than a pipe's buffer (64 KiB; the
    knowledge model pickles to 116 KB) blocks this process until that worker has imported the
    engine, so the workers started one after another, 0.2 s each.
    """
    return zlib.compress(pickle.dumps(model, protocol=pickle.HIGHEST_PROTOCOL))


_SHM = "/dev/shm"  # RAM-backed where it exists (Linux): POSIX shared memory objects are its files

#: Where a worker finds the result's arrays: the file they live in and their shapes.
SharedArrays = tuple[str, list[tuple[int, ...]]]


def _nbytes(shapes: Sequence[tuple[int, ...]]) -> int:
    """Bytes of float arrays of `shapes` in one file (at least one value's, for an empty study)."""
    return 8 * max(1, sum(int(np.prod(shape, dtype=np.int64)) for shape in shapes))


@contextlib.contextmanager
def _shared_arrays(
    shapes: Sequence[tuple[int, ...]], path: str | None = None
) -> Iterator[tuple[SharedArrays, list[np.ndarray]]]:
    """Float arrays of `shapes` in one file that worker processes map too (see :func:`_mapped`).

    The file is `path` if one was reserved already (see :class:`_Reservation`), else reserved here.
    It is removed on leaving (RAM-backed under /dev/shm where there is one); the arrays stay
    valid, as a POSIX mapping outlives its file's name. Windows cannot remove a mapped file, so
    there the arrays are copied out first.
    """
    path = path or _reserve(_nbytes(shapes))
    where: SharedArrays = (path, [tuple(shape) for shape in shapes])
    arrays: list[np.ndarray] = []
    try:
        arrays = _mapped(where)  # not "w+", which would truncate the file and undo the reservation
        yield where, arrays
        if os.name == "nt":  # pragma: no cover - CI runs Linux
            arrays[:] = [np.array(a) for a in arrays]  # Windows cannot remove a mapped file
    except BaseException:
        arrays.clear()  # the mapping goes with the failed run's arrays (and, on Windows, lets the file go)
        raise
    finally:
        _release(path)


_PIECE = 2**26  # bytes reserved at a time: a reservation no longer needed stops within a few milliseconds


def _reserve(nbytes: int, stop: threading.Event | None = None) -> str:
    """A new file of `nbytes`, its space reserved, under /dev/shm if it has room, else the temp folder.

    Reserving the space first turns a full disk into an error here; writing into a mapping of a
    sparse file with no room left kills the writing process instead (SIGBUS). Containers often
    give /dev/shm only 64 MB. Reserving stops early, the file only partly reserved, once `stop`
    is set. The caller removes the file with :func:`_release`.
    """
    folders = [f for f in (_SHM, None) if f is None or os.path.isdir(f)]
    for folder in folders:
        try:
            fd, path = tempfile.mkstemp(prefix="armsdyn-ensemble-", suffix=".f64", dir=folder)
        except OSError:  # not writable: the next folder
            continue
        if os.path.dirname(path) == _SHM:
            # A file under /dev/shm is a POSIX shared-memory object: multiprocessing's resource tracker
            # (a process of its own) removes it if this process is killed before it is released,
            # instead of leaving it to fill RAM until reboot.
            resource_tracker.register("/" + os.path.basename(path), "shared_memory")
        try:
            if hasattr(os, "posix_fallocate"):
                for offset in range(0, nbytes, _PIECE):
                    if stop is not None and stop.is_set():
                        break
                    os.posix_fallocate(fd, offset, min(_PIECE, nbytes - offset))
            else:  # macOS and Windows: no reservation, only the size
                os.ftruncate(fd, nbytes)
        except OSError:
            os.close(fd)
            _release(path)
            continue
        os.close(fd)
        return path
    places = " or ".join(f or tempfile.gettempdir() for f in folders)
    msg = f"no room for the ensemble's results ({nbytes / 2**30:.2f} GiB) in {places}; run with one worker"
    raise ResultsError(msg)


def _release(path: str) -> None:
    """Remove a file :func:`_reserve` made (its mappings stay valid)."""
    with contextlib.suppress(OSError):
        os.unlink(path)
    if os.path.dirname(path) == _SHM:
        resource_tracker.unregister("/" + os.path.basename(path), "shared_memory")


class _Reservation:
    """The result's file, reserved in a thread of this process while it runs something else.

    A context manager: on leaving, a reservation not taken (:meth:`take`) is stopped and its file
    removed. :func:`os.posix_fallocate` releases the GIL, so the reservation runs on a core of
    its own.
    """

    def __init__(self) -> None:
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._path: str | None = None
        self._error: Exception | None = None

    def start(self, nbytes: int) -> None:
        """Begin reserving a file of `nbytes` (see :func:`_reserve`)."""
        self._thread = threading.Thread(target=self._reserve, args=(nbytes,), name="armsdyn-reserve", daemon=True)
        self._thread.start()

    def _reserve(self, nbytes: int) -> None:
        try:
            self._path = _reserve(nbytes, self._stop)
        except Exception as exc:  # the study's error only if it takes the file
            self._error = exc

    def take(self) -> str | None:
        """The reserved file (the taker removes it), once reserved; None if none was started."""
        if self._thread is None:
            return None
        self._thread.join()
        if self._error is not None:
            raise self._error
        path, self._path = self._path, None
        return path

    def stop(self) -> None:
        """Stop reserving and remove the file."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self._path is not None:
            _release(self._path)
            self._path = None

    def __enter__(self) -> _Reservation:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _mapped(where: SharedArrays) -> list[np.ndarray]:
    """The arrays of `where`, one after another in its file, mapped into this process."""
    path, shapes = where
    sizes = [int(np.prod(shape, dtype=np.int64)) for shape in shapes]
    block = np.memmap(path, dtype=np.float64, mode="r+", shape=(max(1, sum(sizes)),))
    starts = itertools.accumulate(sizes, initial=0)
    # Plain ndarray views (the mapping stays referenced by them): results behave as any other array.
    return [
        np.asarray(block[lo : lo + size]).reshape(shape) for lo, size, shape in zip(starts, sizes, shapes, strict=False)
    ]


def choose_workers(
    path: str | os.PathLike[str],
    n: int,
    backend: str = "auto",
    cpus: int | None = None,
    variables: Sequence[str] | None = None,
    time: TimeSettings | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> int:
    """Worker processes that run a study of `n` samples of a model fastest, saving `variables`.

    From the speeds earlier studies measured for the model's kernel (see
    :meth:`CompiledModel.plan`): more than one only where numpy shared between
    the cores beats numpy in one process and numba's threads, so the workers
    then run numpy. Where nothing is measured yet, one: that process pilots
    numpy and chooses between numpy and numba (``run_ensemble(workers=None)``
    also weighs numpy on every core after its pilot). A model that falls back
    to PySD (about one run per second) uses a process per core, up to one per
    sample.
    """
    cpus = max(1, cpus or os.cpu_count() or 1)
    try:
        model = compile_model(path, backend=backend)
    except UnsupportedConstruct:
        return max(1, min(cpus, n))
    grid = TimeGrid.from_settings(time or model.time, model.path)
    plan = model.plan(model.output_names(variables), (), grid, n, chunk_size, processes=cpus)
    return 1 if plan is None else plan.processes


def _pool(workers: int, initializer: Any, initargs: tuple[Any, ...]) -> ProcessPoolExecutor:
    # "spawn" starts clean interpreters: safe whatever threads the parent runs.
    context = multiprocessing.get_context("spawn")
    return ProcessPoolExecutor(max_workers=workers, mp_context=context, initializer=initializer, initargs=initargs)


def _init_compiled(packed: bytes) -> None:
    global _worker_model
    model: CompiledModel = pickle.loads(zlib.decompress(packed))  # this study's own model, from its parent (_pack)
    _worker_model = model
    model.threads = 1  # the processes share the cores already


def _task_compiled(
    values: dict[str, np.ndarray],
    n: int,
    grid: TimeGrid,
    names: list[str],
    where: SharedArrays,
    lo: int,
) -> float:
    """Run one chunk, its runs written straight into their place in the result; its seconds."""
    assert _worker_model is not None
    share = [arr[..., lo : lo + n] for arr in _mapped(where)]
    started = perf_counter()
    _worker_model.simulate_arrays(values, n, grid, names, chunk_size=n, out=share)
    return perf_counter() - started


# ---------------------------------------------------------------------- PySD fallback
def _run_pysd(
    path: Path,
    samples: Samples,
    time: TimeSettings | None,
    variables: Sequence[str] | None,
    workers: int,
    series: Mapping[str, Sequence[SeriesLike | None]] | None = None,
    lookups: Mapping[str, Sequence[SeriesLike | None]] | None = None,
) -> xr.Dataset:
    model = load_model(path)
    values, n, keys = _pysd_samples(model, samples)
    timed = _pysd_series(model, {**(series or {}), **(lookups or {})}, n if keys else None)
    if timed and not keys:
        n = len(next(iter(timed.values())))
    if variables is None:
        chosen = model.of_kind("stock", "flow")
    else:
        chosen = [model.variable(v) for v in ([variables] if isinstance(variables, str) else variables)]
    names = list(dict.fromkeys(v.name for v in chosen))
    time = time or model.time
    grid = TimeGrid.from_settings(time, path)
    by_name = {v.name: v for v in model.variables.values()}
    params: list[dict[str, Any]] = [{name: float(arr[i]) for name, arr in values.items()} for i in range(n)]
    for name, per_sample in timed.items():
        for p, value in zip(params, per_sample, strict=True):
            if value is not None:  # None: the model's own value or table
                p[name] = value
    if workers == 1 or n < 2:
        results = [_simulate_pysd(model, p, time, names) for p in params]
    else:
        step = -(-n // workers)
        blocks = [params[lo : lo + step] for lo in range(0, n, step)]
        with _pool(len(blocks), _init_pysd, (str(path),)) as pool:
            done = pool.map(_task_pysd, blocks, [time] * len(blocks), [names] * len(blocks))
            results = [r for block in done for r in block]
    # PySD returns (time, *elements) per run; the runs become the last axis, as the compiled engine saves them.
    arrays = [np.stack([r[name] for r in results], axis=-1) for name in names]
    outputs = [_meta(by_name[name]) for name in names]
    sampled = [sample_meta(model, key) for key in keys]
    return build_dataset(path, model.sha256, grid.settings, keys, outputs, sampled, arrays, engine="pysd")


def _meta(var: Any) -> OutputMeta:
    return OutputMeta(var.py_name, var.name, var.units, var.doc, var.dims)


def _pysd_samples(model: Model, samples: Samples) -> tuple[dict[str, np.ndarray], int, dict[str, np.ndarray]]:
    # PySD takes parameters by model name ("k[USA, China]" for an element); the checks are the compiled engine's.
    keys, n = normalise_samples(model, samples)
    return {sample_meta(model, key).name: arr for key, arr in keys.items()}, n, keys


def _pysd_series(
    model: Model, series: Mapping[str, Sequence[SeriesLike | None]], n: int | None
) -> dict[str, list[pd.Series | None]]:
    """Series and tables per sample as the ``pandas.Series`` PySD takes, by the model's name, checked."""
    out: dict[str, list[pd.Series | None]] = {}
    for key, per_sample in series.items():
        try:
            var, element = model.element(str(key))
        except KeyError as exc:
            raise SampleError(exc.args[0]) from None
        name = var.name if element is None else var.element_name(element)
        if not isinstance(per_sample, Sequence):  # a pandas.Series is not one: one series for every sample
            msg = f"time series of {name!r}: give one series per sample (a list), not {type(per_sample).__name__}"
            raise SampleError(msg)
        n = len(per_sample) if n is None else n
        if len(per_sample) != n:
            msg = f"time series of {name!r}: {len(per_sample)} series for {n} samples"
            raise SampleError(msg)
        out[name] = [None if s is None else _as_series(name, s) for s in per_sample]
    return out


def _as_series(name: str, value: SeriesLike) -> pd.Series:
    import pandas as pd

    if isinstance(value, pd.Series):
        return value
    x, y = series_points(name, value)
    return pd.Series(y, index=x, dtype=float)


def _simulate_pysd(model: Model, params: dict[str, Any], time: TimeSettings, names: list[str]) -> dict[str, Any]:
    return model.simulate(params, time, names)


def _init_pysd(path: str) -> None:
    global _worker_pysd
    _worker_pysd = load_model(path)


def _task_pysd(block: list[dict[str, Any]], time: TimeSettings, names: list[str]) -> list[dict[str, Any]]:
    assert _worker_pysd is not None
    return [_simulate_pysd(_worker_pysd, p, time, names) for p in block]
