"""Run an experiment's scenarios with PySD and assemble one xarray Dataset."""

from __future__ import annotations

import itertools
import math
import os
import re
import time as _time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import numpy as np
import xarray as xr

from armsdyn import __version__
from armsdyn.config import Experiment, Scenario, load_config
from armsdyn.errors import ModelError, NumericalError, NumericalWarning
from armsdyn.model import SimulationError, Variable


@dataclass(frozen=True)
class Fault:
    """Where a scenario's results first became non-finite.

    Attributes
    ----------
    scenario, variable : str
        Scenario name and the model name of the variable.
    time : float
        First saved time at which the fault shows.
    value : float
        The value there.
    problem : str
        ``"non-finite"`` (inf or NaN), or ``"below minimum"`` / ``"above maximum"``
        of the range the model declares for the variable, or ``"simulation
        error"`` when PySD raised during the run (then `variable` and `time`
        are where it failed, "" and NaN when unknown, and `text` the exception).
    text : str
        For a simulation error, the exception's type and message.
    """

    scenario: str
    variable: str
    time: float
    value: float
    problem: str = "non-finite"
    text: str = ""

    def describe(self) -> str:
        """One line for warnings and error messages."""
        if self.problem == "simulation error":
            where = f" in {self.variable!r}" if self.variable else ""
            when = f" at time {self.time:g}" if math.isfinite(self.time) else ""
            return f"the run failed{where}{when}: {self.text}; its results are NaN"
        if self.problem == "non-finite":
            return f"{self.variable!r} became {self.value}"
        return f"{self.variable!r} = {self.value:g}, {self.problem} of its declared range"


def run(
    experiment: Experiment | str | os.PathLike[str],
    *,
    progress: Callable[[str], None] | None = None,
    stop_on_fault: bool = False,
) -> xr.Dataset:
    """Run every scenario of an experiment and return the results.

    Parameters
    ----------
    experiment : Experiment or path-like
        A validated experiment, or the path of a config file to load.
    progress : callable, optional
        Called with one line of text after each scenario.
    stop_on_fault : bool
        Raise :class:`NumericalError` at the first scenario whose results
        become non-finite, instead of warning and going on.

    Returns
    -------
    xarray.Dataset
        Dims ``(scenario, time)``; one data variable per saved model variable,
        keyed by its Python-safe name with attrs ``long_name`` (the model's
        name), ``units`` and ``description``. Every scalar model constant is a
        coordinate on ``scenario`` holding the value each scenario ran with
        (NaN where a scenario gave it as a time series), unless it is saved as
        a data variable; :func:`parameter_values` reads either.

    Warns
    -----
    NumericalWarning
        For each scenario whose results overflow to inf or become NaN.

    Raises
    ------
    NumericalError
        With `stop_on_fault`, at the first such scenario.
    """
    exp = experiment if isinstance(experiment, Experiment) else load_config(experiment)
    model = exp.model
    times = exp.time.save_times()
    n = len(exp.scenarios)
    saved = [model.variable(name) for name in exp.variables]
    values = {var.name: np.full((n, times.size, *var.shape), np.nan) for var in saved}
    errors: list[SimulationError | None] = [None] * n
    for i, scenario in enumerate(exp.scenarios):
        started = _time.perf_counter()
        try:
            out = model.simulate(scenario.pysd_params(), exp.time, exp.variables)
        except SimulationError as exc:
            # One scenario's failure ends only that scenario: its values stay NaN.
            errors[i] = exc
            fault = _error_fault(scenario.name, exc)
            if stop_on_fault:
                msg = f"scenario {scenario.name!r}: {fault.describe()}; stopped (without stop_on_fault the run goes on)"
                raise NumericalError(msg) from None
            if progress is not None:
                progress(f"[{i + 1}/{n}] {scenario.name}: failed ({fault.describe()})")
            continue
        for name in exp.variables:
            values[name][i] = out[name]
        if stop_on_fault:
            for name in exp.variables:
                lo, hi = model.variable(name).limits
                flat = out[name].reshape(times.size, -1)
                with np.errstate(invalid="ignore"):
                    bad_rows = (~np.isfinite(flat) | (flat < lo) | (flat > hi)).any(axis=1)
                bad = np.flatnonzero(bad_rows)
                if bad.size:
                    row = flat[bad[0]]
                    with np.errstate(invalid="ignore"):
                        j = int(np.argmax(~np.isfinite(row) | (row < lo) | (row > hi)))
                    label = _element_label(model.variable(name), j)
                    fault = Fault(scenario.name, label, float(times[bad[0]]), float(row[j]))
                    if np.isfinite(fault.value):
                        fault = replace(fault, problem="below minimum" if fault.value < lo else "above maximum")
                    msg = (
                        f"scenario {scenario.name!r}: {fault.describe()} at time {fault.time:g} {exp.time.units}; "
                        "stopped (without stop_on_fault the run goes on)"
                    )
                    raise NumericalError(msg)
        if progress is not None:
            elapsed = _time.perf_counter() - started
            progress(f"[{i + 1}/{n}] {scenario.name}: {elapsed:.2f} s")

    ds = xr.Dataset(
        coords={
            "scenario": ("scenario", [s.name for s in exp.scenarios], {"long_name": "Scenario"}),
            "time": ("time", times, {"long_name": "Time", "units": exp.time.units}),
        },
        attrs={
            "experiment": exp.name,
            "description": exp.description,
            "model": model.path.name,
            "model_sha256": model.sha256,
            "config_sha256": exp.config_sha256,
            "initial_time": exp.time.initial,
            "final_time": exp.time.final,
            "time_step": exp.time.step,
            "saveper": exp.time.saveper,
            "time_units": exp.time.units,
            "armsdyn_version": __version__,
            # Metric options travel with the results so saved results give the same table.
            "metrics_baseline": exp.metrics.baseline,
        },
    )
    ds.coords["scenario_description"] = ("scenario", [s.description for s in exp.scenarios])
    ds.coords["baseline"] = ("scenario", [s.baseline or exp.metrics.baseline for s in exp.scenarios])
    for var in saved:
        _add_dims(ds, var)
    for var in saved:
        attrs = _attrs(var.name, var.units, var.doc)
        # CF's names for a declared valid range; find_faults checks values against them.
        for key, bound in zip(("valid_min", "valid_max"), var.limits, strict=True):
            if math.isfinite(bound):
                attrs[key] = bound
        ds[var.py_name] = (("scenario", "time", *var.dim_names), values[var.name], attrs)
    for var in model.of_kind("constant"):
        if var.py_name in ds.data_vars:
            # A saved constant is already a data variable; one name cannot be both.
            continue
        if var.default is not None:
            column = []
            for s in exp.scenarios:
                value = s.parameters.get(var.name, var.default)
                column.append(value if isinstance(value, float) else math.nan)
            attrs = _attrs(var.name, var.units, var.doc)
            if any(isinstance(s.parameters.get(var.name), tuple) for s in exp.scenarios):
                attrs["note"] = "NaN where the scenario set this parameter as a time series"
            ds.coords[var.py_name] = ("scenario", np.array(column, dtype=float), attrs)
        elif var.defaults:
            _add_dims(ds, var)
            table, series = _element_values(var, exp.scenarios)
            attrs = _attrs(var.name, var.units, var.doc)
            if series:
                attrs["note"] = "NaN where the scenario set this element as a time series"
            ds.coords[var.py_name] = (("scenario", *var.dim_names), table, attrs)
    # Scenarios whose run failed: the error, and where it happened, as coordinates on scenario.
    if any(errors):
        ds.coords["error"] = ("scenario", [e.text if e else "" for e in errors], {"long_name": "Simulation error"})
        ds.coords["error_variable"] = ("scenario", [e.variable if e else "" for e in errors])
        ds.coords["error_time"] = ("scenario", [e.time if e else math.nan for e in errors])

    for fault in find_faults(ds):
        msg = f"scenario {fault.scenario!r}: {fault.describe()}"
        if fault.problem != "simulation error":
            msg = f"{msg} at time {fault.time:g} {exp.time.units}".rstrip()
        warnings.warn(msg, NumericalWarning, stacklevel=2)
    return ds


def _add_dims(ds: xr.Dataset, var: Variable) -> None:
    """Add a subscripted variable's ranges as labelled coordinates (checked against those present)."""
    for dim, elements in var.dims:
        if dim in ds.coords:
            if tuple(str(e) for e in ds[dim].values) != elements:
                msg = f"subscript range {dim!r} has different elements in {var.name!r}"
                raise ModelError(msg)
            continue
        ds.coords[dim] = (dim, list(elements), {"long_name": dim})


def _element_values(var: Variable, scenarios: Sequence[Scenario]) -> tuple[np.ndarray, bool]:
    """A subscripted constant's value per scenario and element (NaN for time series)."""
    table = np.empty((len(scenarios), *var.shape))
    series = False
    for i, scenario in enumerate(scenarios):
        flat = []
        for element, default in zip(var.elements(), var.defaults, strict=True):
            value = scenario.parameters.get(var.element_name(element), default)
            series |= isinstance(value, tuple)
            flat.append(value if isinstance(value, float) else math.nan)
        table[i] = np.reshape(flat, var.shape)
    return table, series


def _element_label(var: Variable, flat_index: int) -> str:
    """A variable's name, with the element for a subscripted one (flat row-major index)."""
    return var.element_name(var.elements()[flat_index]) if var.dims else var.name


def _error_fault(scenario: str, exc: SimulationError) -> Fault:
    return Fault(scenario, exc.variable, exc.time, math.nan, problem="simulation error", text=exc.text)


def _attrs(long_name: str, units: str, description: str) -> dict[str, str]:
    return {"long_name": long_name, "units": units, "description": description}


def case_dim(ds: xr.Dataset) -> str:
    """The Dataset's case dimension: ``"scenario"`` for experiments, ``"run"`` for ensembles."""
    return "scenario" if "scenario" in ds.dims else "run"


def find_faults(ds: xr.Dataset) -> list[Fault]:
    """First fault in each scenario of a results Dataset.

    A fault is a run that failed (the ``error`` coordinates :func:`run` adds),
    or a value that is inf or NaN, or outside the range the model declares for
    the variable (attrs ``valid_min``/``valid_max``). For a subscripted
    variable the fault names the element, e.g. ``"arms[China]"``.

    Parameters
    ----------
    ds : xarray.Dataset
        Results with dims ``(scenario, time, ...)``.

    Returns
    -------
    list of Fault
        At most one per scenario: a failed run's error, else the earliest time,
        and among variables that fail at that time the first in the Dataset's order.
    """
    dim = case_dim(ds)
    times = ds["time"].values
    first: dict[int, Fault] = {}
    failed: dict[int, Fault] = {}
    if "error" in ds.coords and ds["error"].dims == (dim,):
        for i, text in enumerate(ds["error"].values):
            if str(text):
                variable = str(ds["error_variable"].values[i]) if "error_variable" in ds.coords else ""
                at = float(ds["error_time"].values[i]) if "error_time" in ds.coords else math.nan
                failed[i] = Fault(str(ds[dim].values[i]), variable, at, math.nan, "simulation error", str(text))
    for key, da in ds.data_vars.items():
        if da.dims[:2] != (dim, "time"):
            continue
        extra = da.dims[2:]
        values = da.values.reshape(da.shape[0], da.shape[1], -1)
        labels = [str(da.attrs.get("long_name", key))]
        if extra:
            elements = itertools.product(*(map(str, da[d].values) for d in extra))
            labels = [f"{labels[0]}[{', '.join(e)}]" for e in elements]
        checks = [("non-finite", ~np.isfinite(values))]
        with np.errstate(invalid="ignore"):
            if "valid_min" in da.attrs:
                checks.append(("below minimum", values < da.attrs["valid_min"]))
            if "valid_max" in da.attrs:
                checks.append(("above maximum", values > da.attrs["valid_max"]))
        for problem, bad in checks:
            for i in np.flatnonzero(bad.any(axis=(1, 2))):
                if int(i) in failed:
                    continue
                j = int(np.argmax(bad[i].any(axis=1)))
                e = int(np.argmax(bad[i, j]))
                if i not in first or times[j] < first[i].time:
                    first[int(i)] = Fault(
                        scenario=str(ds[dim].values[i]),
                        variable=labels[e],
                        time=float(times[j]),
                        value=float(values[i, j, e]),
                        problem=problem,
                    )
    first.update(failed)
    faults = [first[i] for i in sorted(first)]
    return faults


def parameter_values(ds: xr.Dataset, name: str) -> xr.DataArray | None:
    """The value of model constant `name` in each scenario (or run), or None if absent.

    Reads the ``scenario`` coordinate, or a saved data variable that holds the
    constant (NaN in scenarios where it varies over time). A subscripted
    constant keeps its subscript dims, e.g. ``(scenario, state, rival)``; one
    element is asked for as ``"name[element, ...]"`` and has dims ``(scenario,)``.
    """
    dim = case_dim(ds)
    element = None
    found = re.match(r"^([^\[\]]+)\[([^\[\]]*)\]\s*$", name)
    if found:
        name, element = found.group(1).strip(), [e.strip() for e in found.group(2).split(",")]
    for key, da in ds.variables.items():
        if name not in (key, da.attrs.get("long_name")) or da.dims[:1] != (dim,):
            continue
        rest = [d for d in da.dims[1:] if d != "time"]
        if da.dims[1:2] == ("time",):
            first = ds[key].isel(time=0, drop=True)
            values = first.where((ds[key] == first).all("time"))
        elif not rest or len(rest) == len(da.dims) - 1:
            values = ds[key]
        else:
            continue
        if element is None:
            return values
        if len(element) != len(rest):
            return None
        try:
            return values.sel(dict(zip(rest, element, strict=True)), drop=True)
        except KeyError:
            return None
    return None
