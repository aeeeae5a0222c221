"""The compiled model: run many parameter samples at once and assemble a Dataset."""

from __future__ import annotations

import contextlib
import copy
import functools
import importlib.metadata
import itertools
import os
import re
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from time import perf_counter, thread_time
from typing import TYPE_CHECKING, Any, TypeAlias

import numpy as np

from armsdyn.ensemble import _numba
from armsdyn.ensemble._choice import MIN_PER_THREAD, NumpyCost, Plan, choose, numpy_seconds, pilot_cost
from armsdyn.ensemble._compiler import (
    STATE_PREFIX,
    Compiler,
    ModelGraph,
    generate_source,
    parse,
    with_series,
    with_state,
)
from armsdyn.ensemble._errors import SampleError, UnsupportedConstruct
from armsdyn.ensemble._runtime import NAMESPACE, NonUniformOrder
from armsdyn.errors import ModelError
from armsdyn.model import SUFFIXES, TimeSettings, Variable, VariableLookup, cache_dir, file_sha256

if TYPE_CHECKING:
    import pandas as pd
    import xarray as xr

# pandas and xarray are imported by the functions that read inputs and build Datasets, not here: a
# worker process of a parallel study imports this module and runs chunks, and importing them was
# two thirds of its start-up (0.56 of 0.8 s of CPU), more than a small study's share of the work.

DEFAULT_CHUNK_SIZE = 8192
"""Samples advanced together: large enough to amortise numpy's per-call overhead,
small enough that a step's working set stays in the CPU cache."""

# Importing numba and loading a cached kernel, until a load of the model's kernel is measured:
# 0.34-0.56 s on the shipped models and triad_lookup (2026-12-04; 0.7 s with the numba of 2026-11).
_LOAD_SECONDS = 0.55
_COMPILE_BASE = 1.19  # seconds: importing numba (about 0.5 s) and compiling the smallest kernel
_COMPILE_PER_LINE = 2.87e-3  # seconds per line of a blocked kernel's source
_COMPILE_PER_LINE2 = 2.92e-6  # and per squared line
_PER_SAMPLE_PER_LINE = 6.4e-3  # seconds per line of a per-sample kernel (delays, higher-order smooths)
_PER_SAMPLE_PER_LINE2 = 1.7e-5  # and per squared line
_PER_SAMPLE_MARK = "\ndef sample("  # a per-sample kernel's function of one sample (armsdyn.ensemble._numba)

_PILOT_SAMPLES = 1024  # samples "auto" runs with numpy before deciding whether numba pays
_PROBE_SAMPLES = 64  # the probe's samples: with the pilot's chunk, it separates numpy's fixed cost per chunk
_PROBE_STEP_FRACTION = 8  # the probe runs the first eighth of the time steps (see CompiledModel.begin)
_SMALL_TIMED = 4 * _PROBE_SAMPLES  # samples: a study this large, and shorter than a pilot, pilots all of itself
_MIN_TIMED = _PILOT_SAMPLES  # samples: a call this large measures a backend's speed well enough to keep,
_MIN_TIMED_STEPS = 2**20  # if it also advances this many runs by a step: a smaller call's fixed costs (a thread
# pool's start, allocating the result) overstated numba's time per run up to 10x (3,000 runs of 81 steps)

BACKENDS = ("auto", "numpy", "numba")
"""Code generators: ``numpy`` (whole-chunk array statements), ``numba`` (compiled,
vectorised across samples; needs the numba package), ``auto`` (numba when it is
installed and supports every construct of the model, else numpy)."""

Samples: TypeAlias = "Mapping[str, Any] | pd.DataFrame"
SeriesLike: TypeAlias = "pd.Series | Sequence[tuple[float, float]] | Sequence[Sequence[float]]"
Spec = tuple[tuple[str, int], ...]  # constants (or elements) given as time series, with their points
_SERIES_PREFIX = "~"  # keys of series tables among the sampled values: "~x:key" and "~y:key"


@dataclass(frozen=True)
class TimeGrid:
    """The integration times and which of them are saved, exactly as PySD steps them.

    PySD advances time by repeated addition of TIME STEP (so float rounding
    accumulates like PySD's) and saves a time when it lies within ``1e-5 * TIME
    STEP`` of a multiple of SAVEPER from the initial time.
    """

    times: tuple[float, ...]
    save: tuple[bool, ...]
    settings: TimeSettings

    @classmethod
    def from_settings(cls, time: TimeSettings, path: Path) -> TimeGrid:
        """Build the grid of `time`, checking it is usable."""
        t0, tf, dt, sp = (float(v) for v in (time.initial, time.final, time.step, time.saveper))
        if not (np.isfinite([t0, tf, dt, sp]).all() and dt > 0 and sp > 0 and tf >= t0):
            msg = f"{path}: unusable time settings {time}"
            raise ModelError(msg)
        prec = dt * 1e-5
        times, save = [], []
        t = t0
        while True:
            delay = t - t0
            times.append(t)
            save.append(delay % sp < prec or -delay % sp < prec)
            if not t + dt * 1e-5 < tf:
                break
            t = t + dt
        expected = len(time.save_times())
        if sum(save) != expected:
            msg = f"{path}: SAVEPER {sp} is not a whole multiple of TIME STEP {dt} ({sum(save)} saved times)"
            raise ModelError(msg)
        return cls(tuple(times), tuple(save), time)

    def head(self, steps: int) -> TimeGrid:
        """The grid of the first `steps` time steps (at most all of them), with the same settings."""
        return TimeGrid(self.times[:steps], self.save[:steps], self.settings)

    # Read by every call of the engine: a calibration makes tens of thousands of small calls, where
    # converting the tuples each time was a fifth of a call's overhead.
    @functools.cached_property
    def time_array(self) -> np.ndarray:
        """`times` as a float array."""
        return np.asarray(self.times, dtype=float)

    @functools.cached_property
    def save_array(self) -> np.ndarray:
        """`save` as a bool array."""
        return np.asarray(self.save, dtype=np.bool_)

    @functools.cached_property
    def n_save(self) -> int:
        """Number of saved times."""
        return int(sum(self.save))


@dataclass(frozen=True)
class OutputMeta:
    """How one variable appears in a result Dataset."""

    py_name: str
    name: str
    units: str
    doc: str
    dims: tuple[tuple[str, tuple[str, ...]], ...] = ()

    def attrs(self) -> dict[str, str]:
        """``long_name``, ``units`` and ``description`` attributes."""
        return {"long_name": self.name, "units": self.units, "description": self.doc}


class CompiledModel(VariableLookup):
    """A model compiled to vectorised numpy code; see :func:`compile_model`.

    Attributes
    ----------
    path : pathlib.Path
        The model file.
    sha256 : str
        Hash of the file's content when it was compiled.
    variables : dict of str to armsdyn.model.Variable
        Every variable except the time controls, keyed by the model's own name,
        sorted by name (as :class:`armsdyn.model.Model` lists them).
    time : armsdyn.model.TimeSettings
        The model file's own time settings.
    threads : int or None
        Threads the numba backend shares each chunk between; None (the
        default) means one per CPU. Results do not depend on it.
    study_runs : int or None
        Runs of the whole study a call belongs to (a chunk of a larger study):
        the automatic backend choice judges the call by it, so that every
        chunk of a large study runs where the study runs fastest. None: the
        call is the study.

    The automatic backend choice keeps each backend's measured speed (seconds
    per run and time step, JSON beside the cached numba kernel; read as
    untrusted data, a bad file ignored) so that a later study of the same
    kernel chooses at once instead of piloting numpy first.
    """

    def __init__(self, graph: ModelGraph, sha256: str, backend: str = "auto") -> None:
        self.path = graph.path
        self.sha256 = sha256
        self._graph = graph
        # Keyed by the saved names and the constants given as time series (see series_spec).
        self._programs: dict[tuple[tuple[str, ...], Spec], Callable[..., int]] = {}
        self._kernels: dict[tuple[tuple[str, ...], Spec], tuple[Callable[..., None], list[str], list[Any]]] = {}
        self._sources: dict[tuple[tuple[str, ...], Spec], tuple[str, list[str], list[Any]]] = {}
        self._series_graphs: dict[Spec, ModelGraph] = {}
        self._state_models: dict[tuple[str, ...], CompiledModel] = {}
        self._constants_cache: dict[str, Any] | None = None
        self._positions: dict[str, dict[str, tuple[int, ...]]] = {}
        self._timings_read: dict[tuple[Path, tuple[str, ...], Spec], dict[str, float]] = {}
        self._requested = _check_backend(backend)
        self._resolved: str | None = None
        self.threads: int | None = None
        self.study_runs: int | None = None
        variables = {}
        for info in graph.elements.values():
            default = graph.constants.get(info.py_name)
            number: float | None = None
            numbers: tuple[float, ...] = ()
            if isinstance(default, int | float | np.number) and not isinstance(default, bool):
                number = float(default)
            elif isinstance(default, np.ndarray) and info.dims:
                numbers = tuple(float(v) for v in default.ravel())
            variables[info.name] = Variable(
                name=info.name,
                py_name=info.py_name,
                kind=info.kind,
                units=info.units,
                doc=info.doc,
                default=number,
                dims=info.dims,
                defaults=numbers,
            )
        self.variables = dict(sorted(variables.items()))
        self._index_variables()
        controls = graph.controls
        missing = [k for k in ("initial_time", "final_time", "time_step") if k not in controls]
        if missing:
            msg = f"{self.path}: the model does not define {', '.join(missing)}"
            raise ModelError(msg)
        self.time = TimeSettings(
            initial=controls["initial_time"],
            final=controls["final_time"],
            step=controls["time_step"],
            saveper=controls.get("saveper", controls["time_step"]),
            units=graph.time_units,
        )

    def __getstate__(self) -> dict[str, Any]:
        # Compiled functions do not pickle; workers regenerate them from the graph.
        state = self.__dict__.copy()
        state["_programs"] = {}
        state["_kernels"] = {}
        if self._requested == "numpy":
            state["_sources"] = {}  # numba's kernel sources (a worker's start-up message) are not needed
        return state

    @property
    def backend(self) -> str:
        """The code generator in use, ``"numpy"`` or ``"numba"`` (``auto`` resolved).

        Raises
        ------
        ImportError
            If the numba backend was asked for and numba is not installed.
        UnsupportedConstruct
            If the numba backend was asked for and cannot compile the model.
        """
        if self._resolved is None:
            self._resolved = self._resolve()
        return self._resolved

    def _resolve(self) -> str:

        if self._requested == "numpy":
            return "numpy"
        if not _numba.available():
            if self._requested == "numba":
                msg = "the numba backend needs the numba package (pip install numba)"
                raise ImportError(msg)
            return "numpy"
        outputs = [f"v_{v.py_name}" for v in self.variables.values() if v.kind != "lookup"]
        try:
            self._numba_module(outputs)
        except UnsupportedConstruct:
            if self._requested == "numba":
                raise
            return "numpy"
        return "numba"

    def with_backend(self, backend: str) -> CompiledModel:
        """This model with another code generator (``"auto"``, ``"numpy"`` or ``"numba"``)."""
        if _check_backend(backend) == self._requested:
            return self
        model = copy.copy(self)
        model._requested = backend
        model._resolved = None
        model._programs = self._programs  # numpy programs do not depend on the backend choice
        model._kernels = self._kernels
        return model

    @property
    def name(self) -> str:
        """The model file's name without its suffix."""
        return self.path.stem

    def default_variables(self) -> list[str]:
        """Python-safe names of the stocks and flows, the default outputs."""
        return [v.py_name for v in self.variables.values() if v.kind in ("stock", "flow")]

    def source(self, variables: Sequence[str] | None = None, backend: str | None = None) -> str:
        """The generated simulation code for `variables` (for inspection and debugging).

        `backend` is ``"numpy"`` or ``"numba"``; the model's own by default.
        """

        outputs = [f"v_{py}" for py in self.output_names(variables)]
        if (backend or self.backend) == "numba":
            return self._numba_module(outputs)[0]
        return generate_source(self._graph, outputs)

    # ------------------------------------------------------------------ running
    def run(
        self,
        samples: Samples,
        time: TimeSettings | None = None,
        variables: Sequence[str] | None = None,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        series: Mapping[str, Sequence[SeriesLike | None]] | None = None,
        lookups: Mapping[str, Sequence[SeriesLike | None]] | None = None,
    ) -> xr.Dataset:
        """Simulate every parameter sample, advancing a chunk of samples at once.

        Parameters
        ----------
        samples : mapping or pandas.DataFrame
            Model constant name (model name in any case, or Python-safe name) to a
            1-D array of values, all of the same length n; or a DataFrame with one
            column per constant. Constants not sampled keep the model's values.
            An empty mapping runs the model once with its own values.
        time : TimeSettings, optional
            Time settings; the model file's own by default.
        variables : sequence of str, optional
            Variables to save (model or Python-safe names); stocks and flows by default.
        chunk_size : int
            Number of samples advanced together.
        series : mapping, optional
            Constants (or elements, ``"k[USA, China]"``; a whole subscripted
            constant means each of its elements not otherwise given) that vary
            with time: for each, one time series per sample, a
            ``pandas.Series`` indexed by time or a sequence of ``(time, value)``
            pairs with times increasing. They are interpolated as PySD
            interpolates a ``pandas.Series`` given for a constant: linearly
            between the points, holding the first value before them and the
            last after them. Anything computed from them, initial values
            included (read at the initial time), follows them. None stands
            for the model's own value.
        lookups : mapping, optional
            Lookups (graphical functions) that the samples redraw: for each,
            one table per sample, ``(x, y)`` pairs with x increasing (or a
            ``pandas.Series`` of y indexed by x, or None for the model's own
            table), read as the lookup's own kind reads its table (as PySD
            reads a ``pandas.Series`` given for a lookup). A subscripted
            lookup is redrawn whole (every element's table) or by element
            (``"effect of threat[USA]"``); an element's own tables win over
            the whole lookup's, None among them being the element's table in
            the model.

        Returns
        -------
        xarray.Dataset
            Dims ``(run, time)``; one data variable per saved variable, keyed by its
            Python-safe name with attrs ``long_name``, ``units`` and ``description``;
            the sampled values as coordinates on ``run`` (not the time series).

        Raises
        ------
        SampleError
            If a sample name is unknown or not a constant, or the arrays do not fit.
        ModelError
            If the time settings are unusable or the model cannot be initialised.
        """
        values, n = self.normalise_inputs(samples, series, lookups)
        names = self.output_names(variables)
        grid = TimeGrid.from_settings(time or self.time, self.path)
        arrays = self.simulate_arrays(values, n, grid, names, chunk_size)
        return self.dataset(values, grid, names, arrays)

    def rates(
        self,
        stocks: Sequence[str],
        time: TimeSettings | None = None,
        samples: Mapping[str, float] | None = None,
        series: Mapping[str, SeriesLike] | None = None,
        lookups: Mapping[str, SeriesLike] | None = None,
    ) -> RateFunction:
        """The stocks' rates as a function of their values, for a batch of states at once.

        The returned function takes states of shape ``(m, k)`` (one column per
        stock, or per element of a subscripted one, in C order) and returns
        the rates :math:`(x_1 - x_0)/\\Delta t` of one Euler step of
        ``time.step`` from each state at ``time.initial``: exactly the rate
        the model integrates, as PySD gives it for ``initial_condition =
        (t0, {stock: value})``. Stateful functions initialised from a set stock
        (SMOOTH, DELAY) start settled at the state; other stocks keep their
        own initial values.

        Parameters
        ----------
        stocks : sequence of str
            Stocks making up the state (model or Python-safe names).
        time : TimeSettings, optional
            Initial time and time step; the model file's own by default.
        samples : mapping, optional
            Constants (or elements, ``"k[USA, China]"``) to one value each, as a scenario sets them.
        series : mapping, optional
            Constants to one time series each (see :meth:`run`).
        lookups : mapping, optional
            Lookups to one redrawn table each (see :meth:`run`).

        Raises
        ------
        SampleError
            If a name is unknown or not a constant, stock or lookup.
        UnsupportedConstruct
            If a stock's state cannot be set (a stock defined piecewise).
        """
        py = []
        for name in stocks:
            var = self.variable(name)
            if var.kind != "stock":
                msg = f"{var.name!r} in model {self.path} is a {var.kind}, not a stock"
                raise SampleError(msg)
            py.append(var.py_name)
        key = tuple(py)
        if key not in self._state_models:
            try:
                graph = with_state(self._graph, py)
            except KeyError as exc:
                raise SampleError(exc.args[0]) from None
            # A handful of evaluations per call: numpy, with no kernel to compile.
            self._state_models[key] = CompiledModel(graph, self.sha256, backend="numpy")
        model = self._state_models[key]
        given = {k: [float(v)] for k, v in (samples or {}).items()}
        values, _ = model.normalise_inputs(
            given,
            {k: [v] for k, v in (series or {}).items()} or None,
            {k: [v] for k, v in (lookups or {}).items()} or None,
        )
        settings = time or self.time
        step = TimeSettings(settings.initial, settings.initial + settings.step, settings.step, settings.step,
                            settings.units)  # fmt: skip
        return RateFunction(model, py, values, TimeGrid.from_settings(step, self.path))

    def normalise_samples(self, samples: Samples) -> tuple[dict[str, np.ndarray], int]:
        """Sampled constants as float arrays keyed by Python-safe name, and their length."""
        return normalise_samples(self, samples)

    def normalise_inputs(
        self,
        samples: Samples,
        series: Mapping[str, Sequence[SeriesLike | None]] | None = None,
        lookups: Mapping[str, Sequence[SeriesLike | None]] | None = None,
    ) -> tuple[dict[str, np.ndarray], int]:
        """What :meth:`simulate_arrays` takes for `samples`, time `series` and redrawn `lookups` (see :meth:`run`).

        Returns the sampled constants by Python-safe name and the series' and
        lookups' tables (keys starting with ``"~"``, a row per sample), and the
        number of samples.
        """
        values, n = self.normalise_samples(samples)
        if not (series or lookups):
            return values, n
        tables, n = normalise_series(self, series or {}, values, n if values else None, lookups)
        return {**values, **tables}, n

    def output_names(self, variables: Sequence[str] | None) -> list[str]:
        """Python-safe names of `variables` (model or Python-safe names; stocks and flows by default)."""
        if variables is None:
            return self.default_variables()
        if isinstance(variables, str):
            variables = [variables]
        names = []
        for name in variables:
            var = self.variable(name)
            if var.kind == "lookup":
                msg = f"{var.name!r} in model {self.path} is a lookup table; it has no value to save"
                raise ModelError(msg)
            if var.py_name not in names:
                names.append(var.py_name)
        return names

    def graph(self, spec: Spec = ()) -> ModelGraph:
        """The compiled graph, with the constants of `spec` (see :func:`series_spec`) varying with time."""
        if not spec:
            return self._graph
        if spec not in self._series_graphs:
            try:
                self._series_graphs[spec] = with_series(self._graph, dict(spec))
            except KeyError as exc:
                raise SampleError(exc.args[0]) from None
        return self._series_graphs[spec]

    def program(self, names: Sequence[str], spec: Spec = ()) -> Callable[..., int]:
        """The compiled simulation function saving `names` (Python-safe), built once.

        `spec` names the constants given as time series (see :func:`series_spec`).
        """
        key = (tuple(names), spec)
        if key not in self._programs:
            source = generate_source(self.graph(spec), [f"v_{py}" for py in names])
            namespace: dict[str, Any] = dict(NAMESPACE)
            for table, (xs, ys, _kind) in self._graph.lookups.items():
                namespace[f"{table}_x"] = xs
                namespace[f"{table}_y"] = ys
            # The source was generated from the parsed model, never from user text.
            exec(compile(source, f"<armsdyn.ensemble:{self.path.name}>", "exec"), namespace)
            self._programs[key] = namespace["simulate"]
        return self._programs[key]

    def simulate_arrays(
        self,
        values: Mapping[str, np.ndarray],
        n: int,
        grid: TimeGrid,
        names: Sequence[str],
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        out: Sequence[np.ndarray] | None = None,
    ) -> list[np.ndarray]:
        """Run `n` samples chunk by chunk; one ``(n_save, *elements, n)`` array per saved variable.

        `values` are what :meth:`normalise_inputs` returns: sampled constants,
        and the tables of time series and redrawn lookups (a row per sample).
        `out`, if given, are the arrays to write the runs into (and return),
        one per saved variable of that shape: a worker process's share of the
        study's result.

        The samples are split into as few chunks of at most `chunk_size` as
        will do, of equal sizes (see :func:`chunk_bounds`; besides the automatic
        backend choice's pilot chunk of 1,024 samples), so a
        sample meets the same neighbours (and numpy the same array layout)
        whether the study runs in one process or its chunks are shared out.
        """
        begun = self.begin(values, n, grid, names, chunk_size)
        return self.finish(begun, values, n, grid, names, chunk_size, out)

    def begin(
        self,
        values: Mapping[str, np.ndarray],
        n: int,
        grid: TimeGrid,
        names: Sequence[str],
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        processes: int = 1,
        while_piloting: Callable[[], object] | None = None,
    ) -> Begun:
        """Choose how to run `n` samples: piloting numpy on the first ones where nothing is measured yet.

        The plan weighs numpy in this process, numpy shared between `processes`
        and numba on this process's threads (see :mod:`armsdyn.ensemble._choice`),
        by the study this call belongs to (:attr:`study_runs`). Without a
        measured numpy speed for this kernel, numpy pilots the first 1,024
        samples (kept in the result if numpy goes on) and probes 64 of them
        over an eighth of the time steps, which separates its cost per chunk
        from its cost per sample. A call of one chunk, of 256-1,024 samples
        and at least 2^20 runs x steps, is piloted whole: measured for the
        next study's plan. :meth:`finish` runs the rest in this process.
        `while_piloting` is called just before a pilot runs: a study that may
        share out its chunks prepares for that meanwhile.
        """
        if chunk_size < 1:
            msg = f"chunk_size must be at least 1, got {chunk_size}"
            raise ValueError(msg)
        spec = series_spec(values)
        study = max(n, self.study_runs or 0)
        plan = self.plan(names, spec, grid, study, chunk_size, processes)
        first = chunk_bounds(n, chunk_size)[1]
        # The pilot: the study's first samples; or all of a call of one chunk no longer than the pilot, where
        # it is large enough to measure for the next study (which can then weigh numba: the knowledge
        # model's studies of 1,000 runs stayed on numpy, 1.4x numba's time).
        whole = first == n and self._times_backends() and _timed(n, grid, _SMALL_TIMED)
        if plan is not None or not (first > _PILOT_SAMPLES or whole):
            return Begun(plan or Plan("numpy"))  # measured before, or nothing to measure
        m = _PILOT_SAMPLES if first > _PILOT_SAMPLES else n
        if while_piloting is not None and m < n:
            while_piloting()
        # CPU time of this thread: a pause of the process on a busy machine (10-20 ms against a short
        # chunk's 0.3-4 ms) is no cost of numpy's. The pilot's chunk goes into arrays of its own:
        # writing into the study's result first touches that memory (numpy asks for huge pages),
        # which every plan pays alike.
        func = self.program(names, spec)
        pilot = {k: v[:m] for k, v in values.items()}
        timed = thread_time()
        held = [(0, m, self._run_chunk(func, pilot, m, grid, list(names)))]
        piloted = thread_time() - timed
        # Then the probe: its first samples again, over the first eighth of the time steps, scaled to the
        # whole run. Nearly all of a short chunk's time is numpy's fixed cost per time step: a probe over
        # every step was a tenth of a first 10^4-run study's serial time (0.11 s on security_dilemma,
        # 0.37 s on the knowledge model). After the pilot's chunk, so it does not pay the first call.
        probe = grid.head(max(2, len(grid.times) // _PROBE_STEP_FRACTION))
        timed = thread_time()
        self._run_chunk(func, {k: v[:_PROBE_SAMPLES] for k, v in pilot.items()}, _PROBE_SAMPLES, probe, list(names))
        probed = (thread_time() - timed) * len(grid.times) / len(probe.times)
        cost = pilot_cost([(_PROBE_SAMPLES, probed), (m, piloted)])
        # Kept until a whole numpy call is timed (which replaces the cost per sample): saves the next
        # study its pilot.
        self.record_timing(names, spec, "numpy", cost.per_sample / len(grid.times))
        self.record_timing(names, spec, "numpy chunk", cost.per_chunk / len(grid.times))
        if m == n:
            return Begun(Plan("numpy"), m, held)
        plan = self.plan(names, spec, grid, study - m, chunk_size, processes, numpy=cost)
        assert plan is not None
        return Begun(plan, m, held)

    def finish(
        self,
        begun: Begun,
        values: Mapping[str, np.ndarray],
        n: int,
        grid: TimeGrid,
        names: Sequence[str],
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        out: Sequence[np.ndarray] | None = None,
    ) -> list[np.ndarray]:
        """Run the samples :meth:`begin` left, in this process, as its plan says (see :meth:`simulate_arrays`)."""
        spec = series_spec(values)
        if begun.plan.backend == "numba":
            try:
                # Every run, the pilot's too (a tenth of a 10^4-run study): one backend's values.
                return _into(out, self._simulate_numba(values, n, grid, names, chunk_size))
            except UnsupportedConstruct:
                if self._requested == "numba":
                    raise
                if not spec:
                    self._resolved = "numpy"  # numba could not compile the kernel: numpy can
        func = self.program(names, spec)
        # The result is allocated once numpy is to finish the study, and each chunk writes its runs
        # straight into it (a chunk's own arrays, copied in, were a quarter of security_dilemma's numpy
        # time: 46 values saved 201 times).
        if out is None and begun.whole(n):
            result = begun.held.pop()[2]  # the pilot ran the whole study: its arrays are the result
        else:
            result = list(out) if out is not None else [
                np.empty((grid.n_save, *self.element_shape(py), n)) for py in names
            ]  # fmt: skip
            begun.place(result)
        edges = [begun.done, *(b for b in chunk_bounds(n, chunk_size) if b > begun.done)]
        timed: list[tuple[int, float]] = []
        for lo, hi in itertools.pairwise(edges):
            chunk = {k: v[lo:hi] for k, v in values.items()}
            started = thread_time()
            self._run_chunk(func, chunk, hi - lo, grid, list(names), [arr[..., lo:hi] for arr in result])
            timed.append((hi - lo, thread_time() - started))
        # numpy's speed for later plans, from the study's full chunks (a short pilot chunk's time per run
        # is several times a full chunk's: numba was chosen, 1.5x slower, on a SMOOTH model at 10^5).
        # Not the whole call's time, and not a first chunk that wrote the result first: the first touch
        # of a large result (richardson, 10^5 runs: 0.84 s for 300 MB) is paid by every plan alike, and
        # counted in numpy's speed it priced numpy 4x too high.
        if begun.done == 0:
            timed = timed[1:]
        if _timed(n, grid) and timed:
            self.record_numpy(names, spec, grid, sum(t for _, t in timed), sum(m for m, _ in timed), len(timed))
        return result

    def plan(
        self,
        names: Sequence[str],
        spec: Spec,
        grid: TimeGrid,
        runs: int,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        processes: int = 1,
        numpy: NumpyCost | None = None,
    ) -> Plan | None:
        """The fastest plan for `runs` samples saving `names`; None while numpy's cost is unknown.

        numpy's cost is `numpy` (a pilot's), else its speed stored by an earlier
        study of the kernel. numba is weighed at its stored speed, else at
        numpy's :data:`~armsdyn.ensemble._choice.NUMBA_SPEEDUP` times over, plus
        loading or compiling its kernel. numpy may share its chunks between
        `processes`. A backend asked for by name is the plan's.
        """
        if self._requested == "numba":
            return Plan("numba")
        timings = self._timings(names, spec) if self._times_backends() else {}
        steps = len(grid.times)
        if numpy is None:
            if "numpy" in timings:
                numpy = NumpyCost(timings.get("numpy chunk", 0.0) * steps, timings["numpy"] * steps)
            elif processes == 1 and not self._times_backends():
                return Plan("numpy")  # numpy in this process: nothing to choose
            else:
                return None
        cpus = max(1, self.threads or os.cpu_count() or 1)
        numba = timings["numba"] * steps if "numba" in timings else None
        ready = None
        loaded = (tuple(names), spec) in self._kernels
        if loaded or (self._times_backends() and numpy_seconds(numpy, runs, chunk_size) > _LOAD_SECONDS):
            # Only a study numba could win needs numba's kernel generated (a noticeable fraction of a
            # second for a subscripted model) to see whether it is cached and what compiling it costs.
            try:
                ready = self._kernel_cost(names, spec)
            except UnsupportedConstruct:
                if not spec:
                    self._resolved = "numpy"
        return choose(numpy, runs, chunk_size, cpus, processes, ready, numba)

    def _times_backends(self) -> bool:
        """Whether the automatic choice weighs numba for this model (and so keeps the backends' speeds).

        Whether numba can compile the model is found out only when numba could
        win (:meth:`plan`): generating its kernel for a check would cost a small
        study more than running it.
        """
        return self._requested == "auto" and self._resolved != "numpy" and _numba.available()

    def record_timing(self, names: Sequence[str], spec: Spec, backend: str, seconds: float) -> None:
        """Keep `backend`'s measured `seconds` per run and time step for the kernel saving `names`.

        Kept only where the automatic choice weighs numba for this model.
        """
        if self._times_backends():
            self._record(names, spec, backend, seconds)

    def record_numpy(
        self, names: Sequence[str], spec: Spec, grid: TimeGrid, seconds: float, runs: int, chunks: int
    ) -> None:
        """Keep numpy's `seconds` for `runs` runs in `chunks` chunks on `grid`: its time per run and step.

        Less the fixed cost per chunk a pilot measured, so that a later study of a
        few chunks (or one, short) is not charged it twice; at least half the time
        counts per run, whatever that estimate.
        """
        if not self._times_backends():
            return
        steps = len(grid.times)
        per_chunk = self._timings(names, spec).get("numpy chunk", 0.0) * steps
        self._record(names, spec, "numpy", max(seconds - chunks * per_chunk, seconds / 2) / runs / steps)

    def _timings(self, names: Sequence[str], spec: Spec) -> dict[str, float]:
        """Seconds per run and time step of each backend on this kernel, as earlier studies measured them."""
        # Read once per process and cache folder (and again after this process records one): a
        # calibration's tens of thousands of small calls each read the file, a quarter of a call.
        where = (cache_dir() / "ensemble-numba", tuple(names), spec)
        if where not in self._timings_read:
            self._timings_read[where] = _numba.read_timings(self.timing_key(names, spec), where[0])
        return self._timings_read[where]

    def _record(self, names: Sequence[str], spec: Spec, backend: str, seconds: float) -> None:
        folder = cache_dir() / "ensemble-numba"
        _numba.write_timing(self.timing_key(names, spec), folder, backend, seconds)
        self._timings_read.pop((folder, tuple(names), spec), None)

    def timing_key(self, names: Sequence[str], spec: Spec = ()) -> str:
        """What the backends' stored speeds for the program saving `names` are kept under.

        The model file's hash, the saved names, the series and armsdyn's
        version: known without generating either backend's code, which would
        cost a small study more than its runs. A stale speed (code generation
        changed within a version) only skews one choice: every timed run
        stores its own.
        """
        return f"armsdyn {_armsdyn_version()}\nmodel {self.sha256}\nsaves {list(names)!r}\nseries {spec!r}\n"

    def _kernel_cost(self, names: Sequence[str], spec: Spec) -> float:
        """Seconds before the numba kernel saving `names` can run: none, loading it, or compiling it."""
        if (tuple(names), spec) in self._kernels:
            return 0.0
        if self.kernel_ready(names, spec):
            return self._timings(names, spec).get("numba load", _LOAD_SECONDS)
        return self._compile_estimate(names, spec)

    def element_shape(self, py: str) -> tuple[int, ...]:
        """Number of elements along each subscript range of variable `py` (empty for a scalar)."""
        info = self._graph.elements.get(py)
        return tuple(len(e) for _, e in info.dims) if info is not None else ()

    def _chunk_constants(self, chunk: Mapping[str, np.ndarray], m: int) -> dict[str, Any]:
        """The constants of one chunk: defaults, sampled values, sampled elements of subscripted constants."""
        constants = self._numpy_constants
        elementwise: dict[str, list[tuple[str, np.ndarray]]] = {}
        for key, arr in chunk.items():
            if key.startswith(_SERIES_PREFIX):
                # Stored a row per sample (so that slicing the samples slices them): the code reads
                # the points once, (K,), and the values as (K, m).
                constants[key] = arr[0] if key.startswith("~x:") else np.ascontiguousarray(arr.T)
                continue
            py, bracket, label = key.partition("[")
            default = self._graph.constants.get(py)
            if bracket:
                elementwise.setdefault(py, []).append((label[:-1], arr))
            elif isinstance(default, np.ndarray):
                constants[py] = np.broadcast_to(arr, (*default.shape, len(arr)))  # one value for every element
            else:
                constants[py] = arr
        for py, items in elementwise.items():
            base = constants[py]
            full = np.empty((*base.shape[:-1], m))
            full[...] = base
            labels = self._element_positions(py)
            for label, arr in items:
                full[labels[label]] = arr
            constants[py] = full
        return constants

    def _element_positions(self, py: str) -> dict[str, tuple[int, ...]]:
        if py not in self._positions:
            info = self._graph.elements[py]
            shape = tuple(len(e) for _, e in info.dims)
            labels = itertools.product(*(e for _, e in info.dims))
            self._positions[py] = {
                ",".join(label): tuple(int(k) for k in np.unravel_index(i, shape)) for i, label in enumerate(labels)
            }
        return self._positions[py]

    def kernel_ready(self, names: Sequence[str], spec: Spec = ()) -> bool:
        """Whether the numba kernel saving `names` is compiled in this process or cached on disk."""

        if (tuple(names), spec) in self._kernels:
            return True
        source, _, _ = self._numba_module([f"v_{py}" for py in names], spec)
        return _numba.kernel_cached(source, cache_dir() / "ensemble-numba")

    def _compile_estimate(self, names: Sequence[str], spec: Spec = ()) -> float:
        # Seconds to import numba and compile a kernel, from its length: numba's SSA construction
        # grows faster than linearly. Fitted on a quiet machine (2026-12-02 17:42, numba 0.68, after
        # a26a22a; `python benchmarks/bench_ensemble.py --compile-costs`, CPU of a fresh process with
        # numba's import): blocked kernels of 87-1,206 lines, richardson 1.43 s, triad_lookup 1.55-1.79
        # s, security_dilemma 3.55 s, knowledge_engine 8.89 s (the earlier fit left out numba's import
        # and gave 1.8 s and 5.1 s for the last two). Per-sample kernels (a loop over samples around
        # the time loop) cost several times more per line: fitted on chains of 1-16 DELAY Ns (64-424
        # lines, 1.3-6.9 s). The blocked line had given 1.2 s for subscripted_delays' 227 lines, which
        # took 7.8 s; this gives 3.5 s (its rolled subscript loops compile slower than the chains).
        source = self._numba_module([f"v_{py}" for py in names], spec)[0]
        lines = len(source.splitlines())
        if _PER_SAMPLE_MARK in source:
            return _COMPILE_BASE + _PER_SAMPLE_PER_LINE * lines + _PER_SAMPLE_PER_LINE2 * lines**2
        return _COMPILE_BASE + _COMPILE_PER_LINE * lines + _COMPILE_PER_LINE2 * lines**2

    def _run_chunk(
        self,
        func: Callable[..., int],
        chunk: dict[str, np.ndarray],
        m: int,
        grid: TimeGrid,
        names: list[str],
        out: list[np.ndarray] | None = None,
    ) -> list[np.ndarray]:
        """Run one chunk of `m` samples with the numpy program `func`, into `out` (new arrays by default)."""
        n_save = grid.n_save
        out = out if out is not None else [np.empty((n_save, *self.element_shape(py), m)) for py in names]
        # numpy floats throughout, so that a division by zero gives inf or nan (numpy's arithmetic,
        # PySD's with sampled values) instead of raising as Python floats do.
        constants = self._chunk_constants(chunk, m)
        time = grid.settings
        f64 = np.float64
        keys: np.ndarray | None = None
        try:
            # Overflow and NaN are results to report, not errors (as with PySD in armsdyn.model).
            with np.errstate(all="ignore"):
                saved = func(
                    constants, m, grid.time_array, grid.save, f64(time.step),
                    f64(time.initial), f64(time.final), f64(time.saveper), out,
                )  # fmt: skip
        except NonUniformOrder as exc:
            keys = exc.values
        if keys is not None:
            # Some samples need another delay order or pipe length: run each group separately.
            _, groups = np.unique(keys, return_inverse=True)
            for g in range(groups.max() + 1):
                idx = np.flatnonzero(groups == g)
                sub = {k: v[idx] for k, v in chunk.items()}  # series tables too: a row per sample
                for arr, res in zip(out, self._run_chunk(func, sub, len(idx), grid, names), strict=True):
                    arr[..., idx] = res
            return out
        if saved != n_save:
            msg = f"{self.path}: saved {saved} times, expected {n_save}"
            raise ModelError(msg)
        return out

    @property
    def _numpy_constants(self) -> dict[str, Any]:
        # Subscripted constants carry a samples axis of length 1, as every subscripted value does.
        # Built once (a chunk of a few samples, as the equilibrium analysis runs, spent a quarter of
        # its time here); a fresh dict each call, as the caller fills in its chunk's values.
        if self._constants_cache is None:
            self._constants_cache = {
                k: np.float64(v)
                if isinstance(v, int | float) and not isinstance(v, bool)
                else (v[..., None] if isinstance(v, np.ndarray) else v)
                for k, v in self._graph.constants.items()
            }
        return dict(self._constants_cache)

    def _numba_module(self, outputs: list[str], spec: Spec = ()) -> tuple[str, list[str], list[Any]]:
        """The numba kernel module saving the `outputs` nodes, generated once.

        A subscripted model's expansion takes a noticeable fraction of a second,
        and the automatic backend choice asks for the module several times.
        """
        key = (tuple(outputs), spec)
        if key not in self._sources:
            self._sources[key] = _numba.generate_module(self.graph(spec), list(outputs))
        return self._sources[key]

    def kernel(self, names: Sequence[str], spec: Spec = ()) -> tuple[Callable[..., None], list[str], list[Any]]:
        """The numba kernel saving `names` (Python-safe), its constants and stateful objects; built once.

        `spec` names the constants given as time series (see :func:`series_spec`).
        """

        key = (tuple(names), spec)
        if key not in self._kernels:
            source, constants, states = self._numba_module([f"v_{py}" for py in names], spec)
            cached = _numba.kernel_cached(source, cache_dir() / "ensemble-numba") and not _numba.kernel_imported(source)
            started = perf_counter()
            kernel = _numba.load_kernel(source, cache_dir() / "ensemble-numba")
            _numba.compile_kernel(kernel, len(constants), self.path)
            if cached:  # what a later study pays before numba runs (0.25-0.6 s measured; numba's import too)
                self._record(names, spec, "numba load", perf_counter() - started)
            self._kernels[key] = (kernel, constants, states)
        return self._kernels[key]

    def _simulate_numba(
        self, values: Mapping[str, np.ndarray], n: int, grid: TimeGrid, names: Sequence[str], chunk_size: int
    ) -> list[np.ndarray]:
        spec = series_spec(values)
        kernel, constants, states = self.kernel(names, spec)
        started = perf_counter()  # the kernel is loaded: what follows is the backend's own speed
        # The kernel writes each chunk's results into its columns of this array: no copies. A
        # subscripted output has a row per element (C order): a view reshapes it to (time, *elements, run).
        shapes = [self.element_shape(py) for py in names]
        sizes = [int(np.prod(shape, dtype=int)) for shape in shapes]
        out = np.empty((sum(sizes), grid.n_save, n))
        # Threads only where a chunk is shared: starting a pool costs more than a small batch's
        # runs (an analysis's batch of states, an explorer update of one run).
        threads = max(1, self.threads or os.cpu_count() or 1) if min(n, chunk_size) >= 2 * MIN_PER_THREAD else 1
        with ThreadPoolExecutor(threads) if threads > 1 else contextlib.nullcontext() as pool:
            self._numba_chunks(kernel, constants, states, values, n, grid, chunk_size, out, threads, pool)
        if _timed(n, grid):  # numba asked for or chosen: either way a measure for later automatic choices
            self._record(names, spec, "numba", (perf_counter() - started) / n / len(grid.times))
        starts = itertools.accumulate(sizes, initial=0)
        return [
            np.moveaxis(out[lo : lo + size], 0, 1).reshape((out.shape[1], *shape, n))
            for lo, size, shape in zip(starts, sizes, shapes, strict=False)
        ]

    def _numba_chunks(
        self,
        kernel: Callable[..., None],
        constants: list[str],
        states: list[Any],
        values: Mapping[str, np.ndarray],
        n: int,
        grid: TimeGrid,
        chunk_size: int,
        out: np.ndarray,
        threads: int,
        pool: ThreadPoolExecutor | None,
    ) -> None:
        times = grid.time_array
        save = grid.save_array
        time = grid.settings
        controls = (float(time.step), float(time.initial), float(time.final), float(time.saveper))
        rows = [self._constant_row(name, values) for name in constants]
        for lo, hi in itertools.pairwise(chunk_bounds(n, chunk_size)):
            m = hi - lo
            cv = np.empty((len(constants), m))
            for row, value in enumerate(rows):
                cv[row] = value[lo:hi] if isinstance(value, np.ndarray) else value
            err = np.zeros(m, dtype=np.int64)
            errv = np.zeros(m)
            if pool is not None and m >= 2 * MIN_PER_THREAD:
                # The kernel releases the GIL: threads share the chunk (each sample is computed alone,
                # so the split does not change any value).
                bounds = np.linspace(0, m, min(threads, m // MIN_PER_THREAD) + 1).astype(int)
                jobs = [
                    pool.submit(kernel, cv, times, save, *controls, out, lo, err, errv, int(a), int(b))
                    for a, b in itertools.pairwise(bounds)
                ]
                for job in jobs:
                    job.result()
            else:
                kernel(cv, times, save, *controls, out, lo, err, errv, 0, m)
            bad = np.flatnonzero(err)
            if len(bad):
                st = states[err[bad[0]] - 1]
                value = float(errv[bad[0]])
                # The numpy backend's message (armsdyn.ensemble._runtime.uniform).
                msg = (
                    f"{self.path}: {st.element!r} ({st.construct}): order {value} is not a whole number of "
                    "at least 1 (delay time shorter than TIME STEP?)"
                )
                raise ModelError(msg)

    def _constant_row(self, key: str, values: Mapping[str, np.ndarray]) -> np.ndarray | float:
        """A row of the numba kernel's constants: sampled values, or the model's value.

        `key` is a constant's Python-safe name or one element of a subscripted
        constant (``"py[e1,e2]"``), which takes the element's samples, else the
        whole constant's (every element alike), else the model's element value.
        """
        if key in values:
            return values[key]
        if key.startswith(_SERIES_PREFIX):
            # Row i of a series' points ("~x<i>:key") or values ("~y<i>:key"); tables have a row per sample.
            head, _, name = key.partition(":")
            table = values[f"{head[:2]}:{name}"]
            i = int(head[2:])
            return float(table[0, i]) if head[1] == "x" else table[:, i]
        py, bracket, label = key.partition("[")
        if not bracket:
            return float(self._graph.constants[py])
        if py in values:
            return values[py]
        return float(self._graph.constants[py][self._element_positions(py)[label[:-1]]])

    def output_meta(self, names: Sequence[str]) -> list[OutputMeta]:
        """Dataset metadata of the variables `names` (Python-safe; ``py[element]`` for a sampled element)."""
        return [sample_meta(self, py) for py in names]

    def dataset(
        self, values: Mapping[str, np.ndarray], grid: TimeGrid, names: Sequence[str], arrays: Sequence[np.ndarray]
    ) -> xr.Dataset:
        """Assemble the result Dataset of :meth:`run`."""
        values = {k: v for k, v in values.items() if not k.startswith(_SERIES_PREFIX)}
        return build_dataset(
            self.path, self.sha256, grid.settings, values, self.output_meta(names), self.output_meta(list(values)),
            arrays, engine="armsdyn.ensemble",
        )  # fmt: skip


class RateFunction:
    """The rates of some stocks at a batch of their states; see :meth:`CompiledModel.rates`.

    Attributes
    ----------
    size : int
        Number of state components (columns of a state).
    """

    def __init__(self, model: CompiledModel, stocks: list[str], values: dict[str, np.ndarray], grid: TimeGrid) -> None:
        self._model = model
        self._stocks = stocks
        self._values = values
        self._grid = grid
        self._keys: list[str] = []
        for py in stocks:
            dims = model._graph.elements[py].dims
            key = f"{STATE_PREFIX}{py}"
            if dims:
                self._keys += [f"{key}[{','.join(e)}]" for e in itertools.product(*(els for _, els in dims))]
            else:
                self._keys.append(key)
        self.size = len(self._keys)
        self.evaluations = 0

    def __call__(self, states: np.ndarray) -> np.ndarray:
        """Rates at `states`, shape ``(m, size)`` (or ``(size,)`` for one state, giving ``(size,)``)."""
        x = np.asarray(states, dtype=float)
        one = x.ndim == 1
        x = np.atleast_2d(x)
        if x.shape[1] != self.size:
            msg = f"states have {x.shape[1]} components; the stocks {self._stocks} have {self.size}"
            raise ValueError(msg)
        m = x.shape[0]
        self.evaluations += m
        # The scenario's values are one run's: every state of the batch runs with them.
        values = {k: np.repeat(v, m, axis=0) for k, v in self._values.items()}
        values.update({key: np.ascontiguousarray(x[:, j]) for j, key in enumerate(self._keys)})
        arrays = self._model.simulate_arrays(values, m, self._grid, self._stocks)
        dt = self._grid.settings.step
        rates = np.concatenate([((a[-1] - a[0]) / dt).reshape(-1, m) for a in arrays], axis=0).T
        return rates[0] if one else rates


def build_dataset(
    path: Path,
    sha256: str,
    time: TimeSettings,
    values: Mapping[str, np.ndarray],
    outputs: Sequence[OutputMeta],
    sampled: Sequence[OutputMeta],
    arrays: Sequence[np.ndarray],
    engine: str,
) -> xr.Dataset:
    """A ``(run, time)`` Dataset of saved variables with the sampled constants as ``run`` coordinates."""
    import xarray as xr

    n = arrays[0].shape[-1] if arrays else len(next(iter(values.values()), [0]))
    ds = xr.Dataset(
        coords={
            "run": ("run", np.arange(n), {"long_name": "Run"}),
            "time": ("time", time.save_times(), {"long_name": "Time", "units": time.units}),
        },
        attrs={
            "model": path.name,
            "model_sha256": sha256,
            "initial_time": time.initial,
            "final_time": time.final,
            "time_step": time.step,
            "saveper": time.saveper,
            "time_units": time.units,
            "engine": engine,
        },
    )
    for meta, arr in zip(outputs, arrays, strict=True):
        # Saved as (time, *elements, run) row by row; moving the run axis first is a view, not a copy.
        for dim, elements in meta.dims:
            if dim not in ds.coords:
                ds.coords[dim] = (dim, list(elements), {"long_name": dim})
        dims = ("run", "time", *(d for d, _ in meta.dims))
        ds[meta.py_name] = (dims, np.moveaxis(arr, -1, 0), meta.attrs())
    for meta in sampled:
        if meta.py_name in ds.data_vars:
            continue  # a sampled constant that is also saved is already a data variable
        # Not even inside an element's name ("Austria Hungary"): netCDF keeps a coordinate's name only
        # without a space; long_name keeps the name as written, which is what lookups read.
        key = meta.py_name.replace(" ", "_")
        ds.coords[key] = ("run", np.asarray(values[meta.py_name], dtype=float), meta.attrs())
    return ds


_compiled: dict[tuple[str, str], CompiledModel] = {}


@dataclass
class Begun:
    """A call :meth:`CompiledModel.begin` began: its plan, and the pilot's runs of the first `done` samples."""

    plan: Plan
    done: int = 0
    held: list[tuple[int, int, list[np.ndarray]]] = field(default_factory=list)

    def whole(self, n: int) -> bool:
        """Whether the pilot ran all `n` samples, in one chunk."""
        return len(self.held) == 1 and self.held[0][:2] == (0, n)

    def place(self, result: Sequence[np.ndarray]) -> None:
        """Copy the pilot's runs into their columns of the study's `result` (and let them go)."""
        for lo, hi, arrays in self.held:
            for arr, res in zip(result, arrays, strict=True):
                arr[..., lo:hi] = res
        self.held = []


@functools.cache
def _armsdyn_version() -> str:
    try:
        return importlib.metadata.version("armsdyn")
    except importlib.metadata.PackageNotFoundError:  # run from a source tree that was never installed
        return "0+unknown"


def _timed(n: int, grid: TimeGrid, least: int = _MIN_TIMED) -> bool:
    """Whether a call of `n` runs on `grid` is large enough to keep its measured speed."""
    return n >= least and n * len(grid.times) >= _MIN_TIMED_STEPS


def _into(out: Sequence[np.ndarray] | None, arrays: list[np.ndarray]) -> list[np.ndarray]:
    """`arrays` copied into `out` (and `out` returned) where the caller gave arrays to fill, else `arrays`."""
    if out is None:
        return arrays
    for target, values in zip(out, arrays, strict=True):
        target[...] = values
    return list(out)


def chunk_bounds(n: int, chunk_size: int) -> list[int]:
    """Edges of the chunks `n` samples are run in: as few as chunks of `chunk_size` allow, of equal sizes.

    Equal sizes, not full chunks and a remainder: a remainder pays a whole chunk's fixed cost for a
    few samples, and two processes given 10^4 runs in chunks of 8,192 got 8,192 and 1,808 of them.
    ``chunk_bounds(10_000, 8192)`` is ``[0, 5000, 10000]``.
    """
    k = max(1, -(-n // chunk_size))
    return [i * n // k for i in range(k + 1)]


def _check_backend(backend: str) -> str:
    if backend not in BACKENDS:
        msg = f"unknown ensemble backend {backend!r}; expected one of {', '.join(BACKENDS)}"
        raise ValueError(msg)
    return backend


def compile_model(path: str | os.PathLike[str], backend: str = "auto") -> CompiledModel:
    """Compile a Vensim (``.mdl``) or XMILE (``.xmile``, ``.stmx``) model to vectorised numpy code.

    The compiled model is cached in-process by the file's content hash, so a
    file that changes is compiled again.

    Parameters
    ----------
    path : path-like
        The model file.
    backend : {"auto", "numpy", "numba"}
        Code generator (see :data:`BACKENDS`). ``auto`` uses numba when it is
        installed and supports the model, else numpy. Both agree with PySD to
        rounding. The numba kernel is compiled on first use for each set of
        saved variables (a few seconds) and cached on disk.

    Returns
    -------
    CompiledModel

    Raises
    ------
    UnsupportedConstruct
        If the model uses a construct the engine cannot compile (macros,
        external data, :EXCEPT:, ...); the message names the file, the variable
        and the construct.
    ValueError
        If `backend` is not one of :data:`BACKENDS`.
    ModelError
        If the file is missing, has an unsupported suffix or cannot be parsed.
    """
    path = Path(path)
    _check_backend(backend)
    if path.suffix.lower() not in SUFFIXES:
        msg = f"{path}: unsupported model file type {path.suffix!r}; expected one of {', '.join(SUFFIXES)}"
        raise ModelError(msg)
    if not path.is_file():
        msg = f"{path}: model file not found"
        raise ModelError(msg)
    sha = file_sha256(path)
    key = (sha, path.suffix.lower())
    if key not in _compiled:
        graph = Compiler(path, parse(path)).compile()
        _compiled[key] = CompiledModel(graph, sha)
    model = _compiled[key]
    if model.path != path:
        # Same content under another name: share the compiled code, name this file in messages.
        model = copy.copy(model)
        model.path = path
    return model.with_backend(backend)


def normalise_samples(model: VariableLookup, samples: Samples) -> tuple[dict[str, np.ndarray], int]:
    """Check samples against a model's constants; return float arrays by Python-safe name, and their length.

    Raises
    ------
    SampleError
        For an unknown name (with the closest one), a non-constant, a constant
        sampled twice, non-numbers, or arrays that are not 1-D of one length.
    """
    import pandas as pd

    if isinstance(samples, pd.DataFrame):
        items = [(str(c), samples[c].to_numpy()) for c in samples.columns]
        n = len(samples.index)
    elif isinstance(samples, Mapping):
        items = list(samples.items())
        n = None
    else:
        msg = f"samples must be a mapping of constant names to arrays or a DataFrame, not {type(samples).__name__}"
        raise SampleError(msg)
    values: dict[str, np.ndarray] = {}
    for key, raw in items:
        var, element = _model_element(model, str(key))
        if var.kind != "constant":
            msg = f"{var.name!r} in model {model.path} is a {var.kind}, not a constant, so it cannot be sampled"
            raise SampleError(msg)
        if var.dims and not var.defaults:
            msg = f"{var.name!r} in model {model.path} is not a constant of numbers, so it cannot be sampled"
            raise SampleError(msg)
        # No space in the key: netCDF keeps a coordinate's name only without one (long_name keeps it).
        name = var.py_name if element is None else f"{var.py_name}[{','.join(element)}]"
        if name in values:
            what = var.name if element is None else var.element_name(element)
            msg = f"constant {what!r} is sampled twice"
            raise SampleError(msg)
        try:
            arr = np.asarray(raw, dtype=float)
        except (TypeError, ValueError):
            msg = f"samples of {var.name!r} are not numbers"
            raise SampleError(msg) from None
        if arr.ndim != 1:
            msg = f"samples of {var.name!r} must be a 1-D array, got shape {arr.shape}"
            raise SampleError(msg)
        if n is None:
            n = len(arr)
        if len(arr) != n:
            msg = f"samples of {var.name!r} have {len(arr)} values; the others have {n}"
            raise SampleError(msg)
        values[name] = arr
    return values, 1 if n is None else n


def series_spec(values: Mapping[str, np.ndarray]) -> Spec:
    """The constants (or elements) that sampled `values` give as time series, with their number of points."""
    return tuple(sorted((k[3:], int(v.shape[1])) for k, v in values.items() if k.startswith("~y:")))


def normalise_series(
    model: CompiledModel,
    series: Mapping[str, Sequence[SeriesLike | None]],
    values: Mapping[str, np.ndarray],
    n: int | None,
    lookups: Mapping[str, Sequence[SeriesLike | None]] | None = None,
) -> tuple[dict[str, np.ndarray], int]:
    """Time series of constants, and redrawn lookups, as tables the generated code reads.

    Each sample's series is interpolated (PySD's ``np.interp``) at the points of
    all samples together: a piecewise-linear function is linear between those
    points and constant beyond them, so the tables give every sample exactly
    its own series, and one search per time step serves them all. A lookup's
    tables are put on the points of all samples alike, continued beyond a
    sample's own points as its kind continues them (held, extrapolated or
    stepped), so that each sample reads exactly its own table.

    Parameters
    ----------
    model : CompiledModel
        The model whose constants and lookups the keys name.
    series : mapping
        Constant (or element, or whole subscripted constant) to one series per
        sample: a ``pandas.Series`` indexed by time, ``(time, value)`` pairs, or
        None for the model's own value.
    values : mapping
        The sampled constants (normalised): a constant cannot be both.
    n : int or None
        The number of samples, if the samples fix it.
    lookups : mapping, optional
        Lookup (graphical function), or one element of a subscripted one, to
        one table per sample: ``(x, y)`` pairs, a ``pandas.Series`` of y
        indexed by x, or None for the model's own table.

    Returns
    -------
    tables, n
        ``"~x:key"`` (the points) and ``"~y:key"`` (the values), both of shape
        ``(n, points)`` (a row per sample, so that slicing the samples slices
        them), keyed by Python-safe name or ``"py[e1,e2]"``.

    Raises
    ------
    SampleError
        For an unknown name, a name of the wrong kind, a constant also sampled
        or given twice, a series that is empty, not numbers, with times not
        increasing, or a number of series other than the samples'.
    UnsupportedConstruct
        If a constant the compiler computed from a redrawn lookup is sampled.
    """
    given: dict[str, tuple[str, Sequence[SeriesLike | None], Any]] = {}
    wholes: list[tuple[Variable, Sequence[SeriesLike | None]]] = []
    for key, per_sample in series.items():
        var, element = _model_element(model, str(key))
        if var.kind != "constant" or (var.dims and not var.defaults) or (not var.dims and var.default is None):
            msg = f"{var.name!r} in model {model.path} is not a constant of numbers, so it cannot vary over time"
            raise SampleError(msg)
        if var.dims and element is None:
            wholes.append((var, per_sample))
            continue
        name = var.py_name if element is None else f"{var.py_name}[{','.join(element)}]"
        what = var.name if element is None else var.element_name(element)
        if name in given or name in values:
            msg = f"constant {what!r} is given twice (as a time series and otherwise)"
            raise SampleError(msg)
        default = var.default if element is None else var.defaults[var.elements().index(element)]
        given[name] = (what, per_sample, ((0.0, default),))
    for var, per_sample in wholes:
        if var.py_name in values:
            msg = f"constant {var.name!r} is given twice (as a time series and otherwise)"
            raise SampleError(msg)
        for k, element in enumerate(var.elements()):
            name = f"{var.py_name}[{','.join(element)}]"
            if name not in given and name not in values:  # an element's own value wins, as with PySD
                given[name] = (var.element_name(element), per_sample, ((0.0, var.defaults[k]),))
    kinds = _redrawn_lookups(model, lookups or {}, values, given)
    tables: dict[str, np.ndarray] = {}
    for name, (what, per_sample, default) in given.items():
        if not isinstance(per_sample, Sequence):  # a pandas.Series is not one: one series for every sample
            msg = f"time series of {what!r}: give one series per sample (a list), not {type(per_sample).__name__}"
            raise SampleError(msg)
        if n is None:
            n = len(per_sample)
        if len(per_sample) != n:
            msg = f"time series of {what!r}: {len(per_sample)} series for {n} samples"
            raise SampleError(msg)
        groups = _grouped_points(what, [default if s is None else s for s in per_sample])
        knots = np.unique(np.concatenate([x for x, _, _ in groups])) if groups else np.zeros(1)
        kind = kinds.get(name, "interpolate")
        on_knots = np.empty((n, knots.size))
        for x, rows, ys in groups:
            on_knots[rows] = _on_points(kind, knots, x, ys)
        tables[f"~x:{name}"] = np.broadcast_to(knots, (n, knots.size))
        tables[f"~y:{name}"] = on_knots
    return tables, 1 if n is None else n


def _redrawn_lookups(
    model: CompiledModel,
    lookups: Mapping[str, Sequence[SeriesLike | None]],
    values: Mapping[str, np.ndarray],
    given: dict[str, tuple[str, Sequence[SeriesLike | None], Any]],
) -> dict[str, str]:
    """Add the tables of redrawn `lookups` to `given` (see :func:`normalise_series`); their kinds by key.

    A subscripted lookup is redrawn whole (every element's table) or by
    element (``"name[USA]"``); an element's own table wins over the whole
    lookup's, as with constants. Each element keeps its own table where a run
    gives none.
    """
    graph = model.graph()
    kinds: dict[str, str] = {}
    wholes: list[tuple[Variable, Sequence[SeriesLike | None]]] = []
    chosen: list[tuple[Variable, tuple[str, ...] | None, Sequence[SeriesLike | None]]] = []
    for key, per_sample in lookups.items():
        var, element = _model_element(model, str(key))
        if var.kind != "lookup":
            msg = f"{var.name!r} in model {model.path} is a {var.kind}, not a lookup, so it has no table to redraw"
            raise SampleError(msg)
        if var.dims and element is None:
            wholes.append((var, per_sample))
        else:
            chosen.append((var, element, per_sample))
    own = {(var.py_name, element) for var, element, _ in chosen}
    for var, per_sample in wholes:
        chosen += [(var, e, per_sample) for e in var.elements() if (var.py_name, e) not in own]
    labels: dict[str, list[str]] = {}
    for var, element, per_sample in chosen:
        if element is None:
            name, table, what = var.py_name, f"LK_{var.py_name}", var.name
        else:
            label = ",".join(element)
            all_labels = labels.setdefault(var.py_name, [",".join(e) for e in var.elements()])
            name, table = f"{var.py_name}[{label}]", f"LK_{var.py_name}_{all_labels.index(label)}"
            what = var.element_name(element)
        if name in given:
            msg = f"lookup {what!r} is given twice"
            raise SampleError(msg)
        if table not in graph.lookups:
            msg = f"{what!r} in model {model.path} has no table of points of its own, so it cannot be redrawn"
            raise SampleError(msg)
        reads = re.compile(rf"\b{re.escape(table)}_x\b")
        sampled = sorted(
            py
            for py, code in graph.folded.items()
            if reads.search(code.text) and any(k.partition("[")[0] == py for k in values)
        )
        if sampled:
            # The samples would give the file's value to the runs that leave the constant alone, where
            # PySD computes it from each run's table.
            what = f"a number computed from lookup {var.name!r}, sampled while the lookup is redrawn"
            raise UnsupportedConstruct(model.path, model.variable(sampled[0]).name, what)
        xs, ys, kind = graph.lookups[table]
        kinds[name] = kind
        given[name] = (what, per_sample, tuple(zip(xs.tolist(), ys.tolist(), strict=True)))
    return kinds


def _grouped_points(what: str, items: list[SeriesLike]) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Samples' series grouped by their points: ``(x, rows, y)``, `y` a row of values per sample in `rows`.

    Samples with the same points (the usual case: the same dates, other
    values) are put on the points of all samples together at once; series of
    pairs of one length are read and checked as one array.
    """
    lengths = {len(s) if isinstance(s, tuple | list) else -1 for s in items}
    if len(lengths) == 1 and min(lengths) > 0:
        try:
            pairs = np.asarray(items, dtype=float)
        except (TypeError, ValueError):
            pairs = None
        if pairs is not None and pairs.ndim == 3 and pairs.shape[2] == 2:
            xs, ys = pairs[:, :, 0], pairs[:, :, 1]
            if not (np.isfinite(pairs).all() and (np.diff(xs, axis=1) > 0).all()):
                for s in items:
                    series_points(what, s)  # names what is wrong
            unique, inverse = np.unique(xs, axis=0, return_inverse=True)
            inverse = inverse.reshape(-1)
            return [(x, np.flatnonzero(inverse == g), ys[inverse == g]) for g, x in enumerate(unique)]
    groups: dict[bytes, tuple[np.ndarray, list[int], list[np.ndarray]]] = {}
    for i, s in enumerate(items):
        x, y = series_points(what, s)
        _, rows, values = groups.setdefault(x.tobytes(), (x, [], []))
        rows.append(i)
        values.append(y)
    return [(x, np.array(rows), np.array(values)) for x, rows, values in groups.values()]


def _on_points(kind: str, knots: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Values at `knots` (which include every `x`) of functions of kind `kind` through `x` and each row of `y`.

    ``np.interp``'s arithmetic, row by row: a point's own value at a point (so a
    sample whose points are all the knots keeps its values to the bit).
    """
    last = len(x) - 1
    j = np.searchsorted(x, knots, side="right") - 1
    if kind == "hold_backward":
        return y[:, np.clip(j, 0, last)]
    if last == 0:
        return np.repeat(y, knots.size, axis=1)
    j = np.clip(j, 0, last - 1)
    y0, y1 = y[:, j], y[:, j + 1]
    out = np.where(knots == x[j], y0, (y1 - y0) / (x[j + 1] - x[j]) * (knots - x[j]) + y0)
    out = np.where(knots >= x[last], y[:, last : last + 1], out)
    out = np.where(knots <= x[0], y[:, :1], out)
    if kind == "extrapolate":
        # Beyond its own points the table continues its end segments (PySD's extrapolation).
        hi, lo = knots > x[last], knots < x[0]
        k_hi = (y[:, last:] - y[:, last - 1 : last]) / (x[last] - x[last - 1])
        k_lo = (y[:, 1:2] - y[:, :1]) / (x[1] - x[0])
        out[:, hi] = y[:, last:] + k_hi * (knots[hi] - x[last])
        out[:, lo] = y[:, :1] + k_lo * (knots[lo] - x[0])
    return out


def series_points(what: str, value: SeriesLike) -> tuple[np.ndarray, np.ndarray]:
    """The times and values of one series, checked."""
    import pandas as pd

    try:
        if isinstance(value, pd.Series):
            x = value.index.to_numpy(dtype=float)
            y = value.to_numpy(dtype=float)
        else:
            pairs = np.asarray(value, dtype=float)
            if pairs.size == 0:
                pairs = pairs.reshape(0, 2)  # no points: said below
            if pairs.ndim != 2 or pairs.shape[1] != 2:
                raise ValueError
            x, y = pairs[:, 0].copy(), pairs[:, 1].copy()
    except (TypeError, ValueError):
        msg = f"time series of {what!r}: expected (time, value) pairs of numbers or a pandas.Series"
        raise SampleError(msg) from None
    if x.size == 0 or not (np.isfinite(x).all() and np.isfinite(y).all()):
        msg = f"time series of {what!r}: expected at least one point, with finite times and values"
        raise SampleError(msg)
    if (np.diff(x) <= 0).any():
        msg = f"time series of {what!r}: times must increase strictly"
        raise SampleError(msg)
    return x, y


def _model_element(model: VariableLookup, key: str) -> tuple[Variable, tuple[str, ...] | None]:
    """The variable and element a sample key names: ``"grievance g"`` or ``"k[USA, China]"``.

    Raises
    ------
    SampleError
        If the model has no such variable or element (the message suggests the closest name).
    """
    try:
        return model.element(key)
    except KeyError as exc:
        raise SampleError(exc.args[0]) from None


def sample_meta(model: VariableLookup, key: str) -> OutputMeta:
    """Dataset metadata of a variable or sampled element keyed by Python-safe name (``py[element]``)."""
    py, bracket, label = key.partition("[")
    var = model.variable(py)
    if bracket:
        name = var.element_name(tuple(label[:-1].split(",")))
        return OutputMeta(key, name, var.units, var.doc)
    return OutputMeta(key, var.name, var.units, var.doc, var.dims)


def sample_name(model: VariableLookup, key: str) -> str:
    """The model's own name of a sample key: ``"grievance g"`` or ``"grievance g[China]"``."""
    return sample_meta(model, key).name
