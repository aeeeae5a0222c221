"""Run a large ensemble in chunks: in parallel or on a Dask cluster, resumable, in bounded memory.

The samples are cut into chunks of fixed size. Each chunk is simulated by the
ensemble engine (:func:`armsdyn.ensemble.run_ensemble`, which falls back to
PySD for models it cannot compile) and immediately *reduced* to what the study
keeps: one number per run for each output, and the time series of a few runs
for fan charts. Only reduced chunks ever reach the parent process, so memory
stays bounded whatever the number of samples.

The parent writes each finished chunk to a store folder (atomically: temporary
file, then rename). A run that is interrupted (Ctrl-C, a killed process, a lost
cluster) keeps every finished chunk; running again with ``resume=True`` skips
them. The store records a hash of the samples and settings, so a resumed study
cannot silently mix chunks of two different studies.

Executors: serial (one worker), local processes (``workers > 1``), or an
existing Dask distributed cluster (``scheduler="tcp://host:port"``). Chunks are
combined in chunk order, so every executor gives identical results.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import itertools
import json
import logging
import multiprocessing
import os
import shutil
import sys
import tempfile
import warnings
import zlib
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from armsdyn.ensemble import choose_workers, run_ensemble
from armsdyn.errors import ArmsdynError
from armsdyn.model import TimeSettings
from armsdyn.sensitivity_methods import bootstrap_bytes

PLAN_FILE = "plan.json"
FAN_DIM = "fan_run"
#: Runs whose full time series are kept for fan charts (see :class:`Reducer`).
FAN_RUNS = 2000


#: Seconds to wait for a Dask scheduler to answer before giving up.
CONNECT_TIMEOUT = 5
#: Chunks submitted per worker at once: enough to keep every worker busy, few enough that
#: the parent never holds more than a handful of chunks' samples and results.
IN_FLIGHT = 2


class StoreError(ArmsdynError, RuntimeError):
    """A chunk store belongs to another study, or an interrupted study exists and was not resumed."""


class SchedulerError(ArmsdynError, ConnectionError):
    """A Dask scheduler cannot be reached, or was lost while the study ran."""


class ChunkWriteError(ArmsdynError, OSError):
    """A finished chunk could not be written to the store (a full disk, a read-only folder).

    Attributes
    ----------
    path : pathlib.Path
        The chunk file that was not written (nothing of it is left).
    reason : str
        What the writer reported.
    """

    def __init__(self, path: Path, exc: BaseException) -> None:
        self.path = path
        self.reason = " ".join(str(exc).split()) or type(exc).__name__
        super().__init__(
            f"{path}: could not write this chunk ({self.reason}; is the disk full or the folder read-only?)"
        )

    def __str__(self) -> str:
        return str(self.args[0])


@dataclass(frozen=True)
class Reducer:
    """What a study keeps of each chunk's runs (picklable, for worker processes).

    The runner only calls it; the analyses downstream (a sensitivity study, an
    audit) subclass it, so the runner imports none of them.

    Attributes
    ----------
    outputs : tuple
        What to keep, one number per run each (e.g. :class:`armsdyn.specs.Output`).
    fan_variables : tuple of str
        Variables whose full time series are kept for the first `fan_runs` runs.
    fan_runs : int
        How many runs' series are kept (the fan charts' sample).
    attrs : mapping
        Attrs set on each chunk before the outputs are computed (metric options).
    """

    outputs: tuple[Any, ...]
    fan_variables: tuple[str, ...] = ()
    fan_runs: int = FAN_RUNS
    attrs: Mapping[str, Any] | None = None

    def __call__(self, ds: xr.Dataset, start: int) -> xr.Dataset:
        """Reduce one chunk's runs (numbered from `start`); subclasses say how."""
        raise NotImplementedError


@dataclass(frozen=True)
class SharedInputs:
    """Inputs every run of a study shares: a scenario's time series and redrawn lookups.

    Attributes
    ----------
    series : mapping
        Constant (or element) to its time series, ``(time, value)`` pairs.
    lookups : mapping
        Lookup (or element) to its redrawn ``(x, y)`` points.
    """

    series: Mapping[str, Any] = field(default_factory=dict)
    lookups: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class _Task:
    index: int
    start: int
    model_path: str
    samples: dict[str, np.ndarray]
    time: TimeSettings
    variables: tuple[str, ...]
    reduce: Reducer
    study_runs: int  # runs of the whole study: the engine chooses its backend for the study, not the chunk
    shared: SharedInputs
    backend: str = "auto"  # "numpy" where the automatic choice shared numpy's chunks between processes


def _run_task(task: _Task) -> tuple[int, xr.Dataset]:
    """Simulate and reduce one chunk (runs in a worker process or on a Dask worker)."""
    import warnings

    with warnings.catch_warnings():
        # Worker processes cannot report warnings usefully; the parent checks compilability.
        warnings.simplefilter("ignore")
        n = len(next(iter(task.samples.values()))) if task.samples else 1
        ds = run_ensemble(
            task.model_path,
            task.samples,
            task.time,
            list(task.variables),
            workers=1,
            backend=task.backend,
            study_runs=task.study_runs,
            series={k: [v] * n for k, v in task.shared.series.items()} or None,
            lookups={k: [v] * n for k, v in task.shared.lookups.items()} or None,
        )
    return task.index, task.reduce(ds, task.start)


def plan_hash(
    model_path: Path,
    samples: Mapping[str, np.ndarray],
    time: TimeSettings,
    chunk_size: int,
    reduce: Reducer,
    shared: SharedInputs | None = None,
) -> str:
    """A fingerprint of everything that determines a study's chunks."""
    h = hashlib.sha256()
    h.update(Path(model_path).read_bytes())
    for name in sorted(samples):
        h.update(name.encode())
        h.update(np.ascontiguousarray(samples[name], dtype=float).tobytes())
    h.update(repr((time, chunk_size, reduce)).encode())
    if shared is not None and (shared.series or shared.lookups):
        h.update(repr((sorted(shared.series.items()), sorted(shared.lookups.items()))).encode())
    return h.hexdigest()


def run_chunked(
    model_path: str | os.PathLike[str],
    samples: Mapping[str, np.ndarray],
    time: TimeSettings,
    variables: Sequence[str],
    reduce: Reducer,
    *,
    store: str | os.PathLike[str] | None = None,
    resume: bool = False,
    chunk_size: int = 8192,
    workers: int | None = 1,
    scheduler: str | None = None,
    progress: bool = False,
    shared: SharedInputs | None = None,
) -> xr.Dataset:
    """Simulate every sample in chunks and return the reduced results, in run order.

    Parameters
    ----------
    model_path : path-like
        The model file.
    samples : mapping of str to numpy.ndarray
        Constant name to values, all of one length.
    time : TimeSettings
    variables : sequence of str
        Variables the reduction needs.
    reduce : Reducer
        What to keep of each chunk.
    store : path-like, optional
        Folder for finished chunks; a temporary folder (removed afterwards) by default.
    resume : bool
        Reuse the finished chunks in `store` of the same study.
    chunk_size : int
        Samples per chunk.
    workers : int or None
        Local processes; None chooses from the speeds measured for the model
        (:func:`armsdyn.ensemble.choose_workers`; where none are, after running
        the first chunk in this process). Ignored with `scheduler`.
    scheduler : str, optional
        Address of a Dask distributed scheduler to send the chunks to.
    progress : bool
        Show a progress bar with rate and ETA on stderr.
    shared : SharedInputs, optional
        Time series and redrawn lookups every run takes (a study's scenario sets them).

    Returns
    -------
    xarray.Dataset
        The reduced chunks concatenated along ``run`` (and ``fan_run``).

    Raises
    ------
    StoreError
        If `store` holds another study's chunks, or holds chunks and `resume` is false.
    """
    n = len(next(iter(samples.values())))
    auto = workers is None and scheduler is None
    if auto:
        # From speeds measured for the model: see armsdyn.ensemble.choose_workers. More than one
        # process only where numpy on every core beats numba's threads, so the processes run numpy.
        workers = choose_workers(model_path, n, variables=variables, time=time, chunk_size=chunk_size)
    model_path = Path(model_path)
    temporary = store is None
    folder = Path(tempfile.mkdtemp(prefix="armsdyn-study-")) if store is None else Path(store)
    try:
        shared = shared or SharedInputs()
        digest = plan_hash(model_path, samples, time, chunk_size, reduce, shared)
        n_chunks = max(1, -(-n // chunk_size))
        _prepare_store(folder, digest, n_chunks, resume)
        pending = [
            i
            for i in range(n_chunks)
            if not _chunk_ok(_chunk_path(folder, i), min(chunk_size, n - i * chunk_size), len(reduce.outputs))
        ]

        def task(i: int, backend: str) -> _Task:
            return _Task(
                index=i,
                start=i * chunk_size,
                model_path=str(model_path),
                samples={k: np.asarray(v)[i * chunk_size : (i + 1) * chunk_size] for k, v in samples.items()},
                time=time,
                variables=tuple(variables),
                reduce=reduce,
                study_runs=n,
                shared=shared,
                backend=backend,
            )

        bar = _progress_bar(n_chunks, n_chunks - len(pending), n, chunk_size, progress)
        try:
            if auto and workers == 1 and len(pending) > 1:
                # With nothing measured yet the choice was one process: the first chunk runs here (its
                # numpy pilot, or numba, keeps the backend's speed), and the rest is planned on that.
                index, chunk = _run_task(task(pending.pop(0), "auto"))
                _write_chunk(folder, index, chunk)
                bar.update(min(chunk_size, n - index * chunk_size))
                left = sum(min(chunk_size, n - i * chunk_size) for i in pending)
                workers = choose_workers(model_path, left, variables=variables, time=time, chunk_size=chunk_size)
            backend = "numpy" if auto and workers is not None and workers > 1 else "auto"
            tasks = (task(i, backend) for i in pending)
            for index, chunk in _execute(tasks, len(pending), workers, scheduler):
                _write_chunk(folder, index, chunk)
                bar.update(min(chunk_size, n - index * chunk_size))
        finally:
            bar.close()
        combined = _combine(folder, n_chunks, n)
        if auto:
            combined.attrs["workers"] = workers  # the choice, for the study's provenance
        return combined
    finally:
        if temporary:
            shutil.rmtree(folder, ignore_errors=True)


def remove_store(folder: str | os.PathLike[str]) -> None:
    """Delete a chunk store, but only if it holds nothing but a study's own files.

    Raises
    ------
    StoreError
        If `folder` holds anything a study does not write (it is then left untouched).
    """
    folder = Path(folder)
    if not (folder.exists() or folder.is_symlink()):
        return
    ours = folder.is_dir() and not folder.is_symlink()
    if ours:
        for entry in folder.iterdir():
            name = entry.name
            is_chunk = name.startswith(("chunk-", ".chunk-")) and name.endswith((".nc", ".nc.partial"))
            if not (entry.is_file() and not entry.is_symlink() and (name == PLAN_FILE or is_chunk)):
                ours = False
                break
    if not ours:
        msg = f"{folder}: is not a chunk store armsdyn wrote (it holds other files); remove it yourself"
        raise StoreError(msg)
    shutil.rmtree(folder)


def _prepare_store(folder: Path, digest: str, n_chunks: int, resume: bool) -> None:
    plan = folder / PLAN_FILE
    if plan.exists():
        recorded = json.loads(plan.read_text())
        if recorded.get("hash") != digest:
            msg = (
                f"{folder}: holds chunks of a different study (other samples, model or settings); "
                "remove it, or run without --resume to start over with --force"
            )
            raise StoreError(msg)
        done = len(list(folder.glob("chunk-*.nc")))
        if done and not resume:
            msg = (
                f"{folder}: an interrupted study left {done} of {n_chunks} chunks; "
                "pass --resume to continue it, or --force to start over"
            )
            raise StoreError(msg)
        return
    folder.mkdir(parents=True, exist_ok=True)
    plan.write_text(json.dumps({"hash": digest, "chunks": n_chunks}) + "\n")


def _chunk_path(folder: Path, index: int) -> Path:
    return folder / f"chunk-{index:06d}.nc"


def _chunk_ok(path: Path, runs: int, outputs: int) -> bool:
    """True if a finished chunk can be read back whole; a damaged one is removed (to be run again)."""
    if not path.exists():
        return False
    try:
        with xr.open_dataset(path) as ds:
            found = [v for v in ds.data_vars if str(v).startswith("output: ")]
            ok = ds.sizes.get("run") == runs and len(found) == outputs
            if ok:
                ds.load()
    except Exception:  # any failure to read it back means the chunk is damaged
        ok = False
    if not ok:
        warnings.warn(f"{path}: damaged chunk (truncated or unreadable); running it again", UserWarning, stacklevel=3)
        path.unlink()
    return ok


def _write_chunk(folder: Path, index: int, chunk: xr.Dataset) -> None:
    final = _chunk_path(folder, index)
    partial = folder / f".{final.name}.partial"
    try:
        # Written here, in this process: with a Dask client open, xarray would otherwise take a
        # lock on the cluster to write a local file, and fail if the scheduler is gone.
        with _local_scheduler():
            chunk.to_netcdf(partial, engine="netcdf4")
        os.replace(partial, final)
    except BaseException as exc:
        # A chunk cut short by a full disk or an interrupt must not stay behind for --resume to trip on.
        with contextlib.suppress(OSError):
            partial.unlink()
        if isinstance(exc, OSError | RuntimeError | zlib.error):
            raise ChunkWriteError(final, exc) from exc
        raise


@contextlib.contextmanager
def _local_scheduler() -> Iterator[None]:
    try:
        import dask
    except ImportError:
        yield
        return
    with dask.config.set(scheduler="synchronous"):
        yield


def _combine(folder: Path, n_chunks: int, n: int) -> xr.Dataset:
    """The finished chunks as one Dataset, read one chunk at a time into arrays of the study's size.

    Holding every chunk and concatenating them would keep the study's values
    in memory twice (three times with the executor's own references); this
    keeps them once, plus one chunk.
    """
    with xr.open_dataset(_chunk_path(folder, 0)) as first:
        template = first.load()
    per_run = [k for k, v in template.variables.items() if v.dims == ("run",)]
    fan_vars = [k for k, v in template.data_vars.items() if FAN_DIM in v.dims]
    arrays = {k: np.empty(n, dtype=template[k].dtype) for k in per_run}
    fans = []
    offset = 0
    for i in range(n_chunks):
        with xr.open_dataset(_chunk_path(folder, i)) as ds:
            size = ds.sizes["run"]
            for k in per_run:
                arrays[k][offset : offset + size] = ds[k].values
            if fan_vars and (i == 0 or ds.sizes.get(FAN_DIM, 0)):
                fans.append(ds[fan_vars].load())
        offset += size
    if offset != n:
        msg = f"{folder}: the chunks hold {offset} runs, the study has {n}; run it again without --resume"
        raise StoreError(msg)
    run_coords = {k: ("run", arrays[k], template[k].attrs) for k in per_run if k in template.coords}
    scalars = {k: template[k] for k, v in template.coords.items() if v.dims == ()}
    data = {k: ("run", arrays[k], template[k].attrs) for k in per_run if k in template.data_vars}
    combined = xr.Dataset(data, coords=run_coords | scalars, attrs=template.attrs)
    if fan_vars:
        combined = combined.merge(xr.concat(fans, dim=FAN_DIM))
    return combined


def _execute(
    tasks: Iterator[_Task], count: int, workers: int | None, scheduler: str | None
) -> Iterator[tuple[int, xr.Dataset]]:
    if count == 0:
        return
    if scheduler is not None:
        yield from _execute_dask(tasks, scheduler)
        return
    workers = (os.cpu_count() or 1) if workers is None else max(1, workers)
    if workers == 1 or count == 1:
        for task in tasks:
            yield _run_task(task)
        return
    # "spawn", as the ensemble engine's own pool: clean interpreters, safe whatever threads the parent runs.
    workers = min(workers, count)
    with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        # A few chunks in flight per worker, not all of them: every submitted chunk holds its
        # samples and, once done, its result in this process until it is taken.
        running = {pool.submit(_run_task, task) for task in itertools.islice(tasks, IN_FLIGHT * workers)}
        while running:
            done, running = wait(running, return_when=FIRST_COMPLETED)
            for future in done:
                for task in itertools.islice(tasks, 1):
                    running.add(pool.submit(_run_task, task))
                yield future.result()
            del done, future


def _execute_dask(tasks: Iterator[_Task], scheduler: str) -> Iterator[tuple[int, xr.Dataset]]:
    from distributed import Client
    from distributed import as_completed as dask_completed

    try:
        client = Client(scheduler, timeout=CONNECT_TIMEOUT)
    except (OSError, TimeoutError, ValueError, TypeError) as exc:
        msg = (
            f"{scheduler}: cannot reach the Dask scheduler within {CONNECT_TIMEOUT} s ({exc}); "
            "is it running at that address? Without --scheduler the study runs on this machine"
        )
        raise SchedulerError(msg) from None
    # The client's own log lines (reconnect attempts and their tracebacks) would bury the message.
    names = ["distributed", *(n for n in logging.root.manager.loggerDict if n.startswith("distributed."))]
    levels = {name: logging.getLogger(name).level for name in names}
    for name in names:
        logging.getLogger(name).setLevel(logging.CRITICAL)
    try:
        with client:
            # A bounded number of chunks on the cluster at once (see _execute); a finished
            # future is dropped once its result is taken, so the cluster frees it too.
            slots = IN_FLIGHT * max(1, sum(client.nthreads().values()))
            futures = dask_completed([client.submit(_run_task, t, pure=False) for t in itertools.islice(tasks, slots)])
            try:
                for future in futures:
                    for task in itertools.islice(tasks, 1):
                        futures.add(client.submit(_run_task, task, pure=False))
                    result = future.result()
                    future.release()
                    yield result
            except ArmsdynError:
                raise
            except Exception as exc:
                if client.status == "running" and not isinstance(exc, OSError | TimeoutError):
                    raise  # the task itself failed
                msg = (
                    f"{scheduler}: lost the Dask scheduler while the study ran "
                    f"({type(exc).__name__}: {' '.join(str(exc).split())}); "
                    "finished chunks are kept: run the same command with --resume to continue"
                )
                raise SchedulerError(msg) from None
    finally:
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)


class _NoBar:
    def update(self, n: int) -> None:
        pass

    def close(self) -> None:
        pass


def _progress_bar(n_chunks: int, done_chunks: int, n: int, chunk_size: int, show: bool) -> Any:
    if not show:
        return _NoBar()
    from tqdm import tqdm

    return tqdm(
        total=n,
        initial=min(n, done_chunks * chunk_size),
        unit="run",
        unit_scale=True,
        desc="ensemble",
        file=sys.stderr,
        dynamic_ncols=True,
    )


# Limits before work: what a config will need, against what the machine has.

#: Memory of the ``armsdyn`` process before it holds any results: the interpreter, numpy, xarray,
#: PySD, matplotlib and the model, translated afresh (measured 2026-12-02, cold cache: 302-373 MiB
#: peaks for the shipped scenario configs, whose results are a few MB; see ``benchmarks/README.md``).
PROCESS_BYTES = 416 * 2**20
#: Memory of one study worker process before it simulates anything (spawned: the interpreter,
#: numpy, xarray, PySD and the compiled model; measured 257 MiB for the knowledge model).
WORKER_BASE_BYTES = 288 * 2**20
#: What importing numba and LLVM and compiling a kernel adds to a process that runs a study with
#: it: measured 138 MiB for the knowledge model's kernel (the largest shipped), cold cache; the
#: rest is margin for larger (expanded subscripted) kernels.
JIT_BYTES = 256 * 2**20
#: Bytes a Sobol or other analysis holds per run beyond the outputs (the output's normalised copy
#: and its columns); a Sobol bootstrap adds at most one batch (see armsdyn.sensitivity_methods).
ANALYSIS_BYTES_PER_RUN = 4 * 8
#: Peak of SALib's samplers over the sample table they return (measured 3.6 for Sobol).
SAMPLER_COPIES = 4
#: Memory and disk of the figures, manifest and the like.
EXTRA_BYTES = 50 * 2**20


#: Memory a worker may give one chunk's saved series; a study's chunks are made smaller than
#: asked where theirs would not fit (see :func:`study_chunk`).
CHUNK_BYTES = 192 * 2**20
#: Copies of a chunk's saved values a worker holds at once (the engine's output, the Dataset,
#: the metrics' intermediates): measured on the knowledge study, about 2.4.
CHUNK_COPIES = 3


def study_chunk(experiment: Any, chunk_size: int) -> int:
    """Samples per chunk for `experiment`'s study: `chunk_size`, or fewer where memory needs it.

    A worker holds a chunk's saved series of every variable the study reads
    (:attr:`SensitivitySpec.variables`), in a few copies; a chunk is cut so that
    these stay within :data:`CHUNK_BYTES`, whatever the model's size, so the
    workers' memory does not depend on how many variables and saved times a
    study has. Results do not depend on the chunk size.

    Parameters
    ----------
    experiment : Experiment
        With a ``[sensitivity]`` table.
    chunk_size : int
        The most samples a chunk may hold (``--chunk-size``).

    Returns
    -------
    int
        At least 1 and at most `chunk_size`.
    """
    time = experiment.time
    saves = round((time.final - time.initial) / time.saveper) + 1
    width = sum(_width(experiment.model.variable(name)) for name in experiment.sensitivity.variables)
    per_run = 8 * CHUNK_COPIES * max(1, width * saves)
    return max(1, min(chunk_size, CHUNK_BYTES // per_run))


def study_runs(spec: Any) -> int:
    """Number of runs a sensitivity study's method makes (SALib's designs; exact, not sampled).

    ``oat``: 1 + levels per parameter; ``grid``: levels ** parameters; ``latin`` and
    ``monte_carlo``: samples; ``morris``: samples * (parameters + 1); ``sobol``:
    samples * (parameters + 2), or samples * (2 * parameters + 2) with second order.
    """
    d = len(spec.parameters)
    if spec.method == "oat":
        return 1 + d * spec.levels
    if spec.method == "grid":
        return spec.levels**d
    if spec.method == "morris":
        return spec.samples * (d + 1)
    if spec.method == "sobol":
        return spec.samples * ((2 * d + 2) if spec.second_order else (d + 2))
    return spec.samples


@dataclass(frozen=True)
class Needs:
    """What running a config takes: runs, time steps, saved values, memory and disk.

    Attributes
    ----------
    scenarios, runs : int
        Scenario runs, and a sensitivity study's runs (0 without one).
    steps, saves : int
        Euler steps and saved times of each run.
    saved_values : int
        Numbers written: every scenario's saved variables over time, each study
        run's outputs and sampled values, the fan-chart series.
    memory : int
        Peak bytes of memory, summed over the parent and its worker processes.
    disk : int
        Bytes written (results folder, and a study's chunk store beside it).
    workers : int
        Worker processes assumed.
    """

    scenarios: int
    runs: int
    steps: int
    saves: int
    saved_values: int
    memory: int
    disk: int
    workers: int

    def counts(self) -> str:
        """``"5 scenario runs + 160 study runs of 481 steps, 1.2e+05 saved values"``."""
        runs = f"{self.scenarios} scenario run{'s' * (self.scenarios != 1)}"
        runs += f" + {self.runs:,} study runs" if self.runs else ""
        return f"{runs} of {self.steps:,} steps, {self.saved_values:,} saved values"

    def summary(self) -> str:
        """:meth:`counts` and the memory and disk they need."""
        workers = f" with {self.workers} worker{'s' * (self.workers != 1)}" if self.runs else ""
        return f"{self.counts()}; needs about {_size(self.memory)} of memory{workers} and {_size(self.disk)} of disk"


def _size(n: float) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if n < 1024 or unit == "PiB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.3g} {unit}"
        n /= 1024
    raise AssertionError  # pragma: no cover


def needs(experiment: Any, *, workers: int | None = None, chunk_size: int = 8192) -> Needs:
    """Estimate what running `experiment` takes, without running anything.

    Memory is the peak summed over the ``armsdyn`` process and its study workers:
    a fixed cost per process (:data:`PROCESS_BYTES`, :data:`WORKER_BASE_BYTES`,
    :data:`JIT_BYTES` where numba may compile a kernel) plus the arrays each
    holds (8 bytes a value, with the copies the code makes). It is meant to be
    conservative but honest: on the shipped configs it is 1.05-2.4 times the
    measured peak (``benchmarks/bench_memory.py --configs``), never below it, so
    a config that ``check`` refuses really cannot fit.

    Parameters
    ----------
    experiment : Experiment
        The config.
    workers : int or None
        Worker processes of a study, as ``armsdyn run --workers``; None for what
        ``run`` chooses (:func:`armsdyn.ensemble.choose_workers`).
    chunk_size : int
        Samples per chunk asked for (``--chunk-size``).

    Returns
    -------
    Needs
    """
    time = experiment.time
    steps = round((time.final - time.initial) / time.step)
    saves = round((time.final - time.initial) / time.saveper) + 1
    model = experiment.model
    n_vars = sum(_width(model.variable(name)) for name in experiment.variables)  # a value per element
    n_model = sum(_width(var) for var in model.variables.values())
    scenarios = len(experiment.scenarios)
    # Scenarios run one at a time; their results are held together, then copied into the Dataset.
    scenario_values = scenarios * n_vars * saves
    memory = PROCESS_BYTES + 3 * 8 * scenario_values + 8 * n_model * saves
    disk = 8 * scenario_values + EXTRA_BYTES
    spec = experiment.sensitivity
    runs, saved, n_workers = 0, scenario_values, 1
    if spec is not None:
        runs = study_runs(spec)
        chunk_size = study_chunk(experiment, chunk_size)
        if workers is None:  # what `run` will use
            workers = choose_workers(model.path, runs, variables=spec.variables, time=experiment.time)
        chunks = -(-runs // chunk_size)
        n_workers = max(1, min(workers, chunks))
        sampled = len(spec.parameters) + sum(len(p.also) for p in spec.parameters)
        constants = len(experiment.scenario(spec.scenario).parameters) + sampled
        per_run = len(spec.outputs) + constants  # outputs and the sampled values kept as coordinates
        fan = min(runs, FAN_RUNS) * len(spec.fan_variables) * saves
        saved += runs * per_run + fan
        chunk = min(chunk_size, runs)
        # The parent: the sampler's peak, then the samples and outputs as chunks and combined, then
        # the analysis of one output at a time.
        kept = 3 * 8 * (runs * per_run + fan)
        sampling = SAMPLER_COPIES * 8 * runs * sampled
        analysis = ANALYSIS_BYTES_PER_RUN * runs + _bootstrap_bytes(spec, runs)
        parent = max(sampling, 8 * runs * sampled + kept + analysis)
        # A process that simulates: its chunk's saved series (in the copies study_chunk allows for)
        # and the engine's state for every model variable, and numba if it may be used.
        study_vars = sum(_width(model.variable(name)) for name in spec.variables)
        simulating = 8 * chunk * (CHUNK_COPIES * study_vars * saves + 4 * n_model)
        if importlib.util.find_spec("numba") is not None:  # the automatic backend may load a numba kernel
            simulating += JIT_BYTES
        if n_workers == 1:  # the chunks run in the armsdyn process itself (runner._execute)
            memory += parent + simulating
        else:
            memory += parent + n_workers * (WORKER_BASE_BYTES + simulating)
        disk += 2 * 8 * (runs * per_run + fan)  # the chunk store and ensemble.nc
    return Needs(scenarios, runs, steps, saves, saved, memory, disk, n_workers)


def _bootstrap_bytes(spec: Any, runs: int) -> int:
    """The most a study's analysis holds for a Sobol bootstrap batch (0 for other methods)."""
    if spec.method != "sobol":
        return 0
    return bootstrap_bytes(runs // (len(spec.parameters) * (2 if spec.second_order else 1) + 2))


def _width(var: Any) -> int:
    """Values a variable has at each time: one, or one per element of a subscripted variable."""
    return len(var.elements()) if getattr(var, "dims", None) else 1


def machine_memory() -> int:
    """Bytes of physical memory of this machine (0 if unknown)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 0


def free_disk(path: Path) -> int:
    """Free bytes on the file system that would hold `path` (its nearest existing ancestor)."""
    path = Path(os.path.abspath(path))
    while not path.exists() and path != path.parent:
        path = path.parent
    try:
        return shutil.disk_usage(path).free
    except OSError:
        return 0


def refuse_unfit(experiment: Any, found: Needs, target: Path) -> None:
    """Raise :class:`LimitError` if `found` cannot fit this machine's memory or the target's disk."""
    memory, disk = machine_memory(), free_disk(target)
    problems = []
    if memory and found.memory > memory:
        problems.append(f"about {_size(found.memory)} of memory, and this machine has {_size(memory)}")
    if disk and found.disk > disk:
        problems.append(f"about {_size(found.disk)} of disk, and the disk of {target} has {_size(disk)} free")
    if not problems:
        return
    source = experiment.config_path or "<config>"
    msg = (
        f"{source}: too large to run here: it needs {' and '.join(problems)} ({found.counts()}); "
        f"{_reduce(experiment, found)}"
    )
    raise LimitError(msg)


def _reduce(experiment: Any, found: Needs) -> str:
    """How to make a config smaller, for the numbers that dominate."""
    spec = experiment.sensitivity
    hints = []
    if spec is not None and found.runs:
        d = len(spec.parameters)
        if spec.method == "grid":
            hints.append(f"sensitivity.levels ({spec.levels} levels ** {d} parameters = {found.runs:,} runs)")
        elif spec.method == "oat":
            hints.append(f"sensitivity.levels (now {spec.levels})")
        else:
            hints.append(f"sensitivity.samples (now {spec.samples:,}, giving {found.runs:,} runs)")
        if d > 1:
            hints.append(f"the number of [[sensitivity.parameters]] (now {d})")
    hints.append(f"the saved times (a larger time.saveper, now {experiment.time.saveper:g}: {found.saves:,} per run)")
    if found.runs:
        hints.append("--workers or --chunk-size")
    return "reduce " + ", or ".join(hints)


class LimitError(ArmsdynError, MemoryError):
    """A config needs more memory or disk than this machine has."""
