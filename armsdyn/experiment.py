"""Run an experiment's scenarios and assemble one xarray Dataset.

The compiled engine runs every scenario in one batch (constants, time series
and redrawn lookups alike); PySD runs them when the config asks for it
(``engine = "pysd"``) or when the engine cannot compile the model.
"""

from __future__ import annotations

import math
import os
import time as _time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import replace

import numpy as np
import xarray as xr

from armsdyn import __version__
from armsdyn.config import Experiment, Scenario, load_config
from armsdyn.ensemble import FallbackWarning, UnsupportedConstruct, compile_model
from armsdyn.errors import ModelError, NumericalError, NumericalWarning
from armsdyn.model import SimulationError, Variable
from armsdyn.results import Fault, find_faults
from armsdyn.scenario_inputs import batch_inputs


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
    compiled = _run_compiled(exp) if exp.engine == "compiled" else {}
    by_pysd = [s.name for i, s in enumerate(exp.scenarios) if i not in compiled]
    engine = "pysd" if not compiled else "compiled (numpy)" + (f"; pysd for {', '.join(by_pysd)}" if by_pysd else "")
    for i, scenario in enumerate(exp.scenarios):
        started = _time.perf_counter()
        try:
            out = compiled[i] if i in compiled else model.simulate(scenario.pysd_params(), exp.time, exp.variables)
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
            "engine": engine,
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


def _run_compiled(exp: Experiment) -> dict[int, dict[str, np.ndarray]]:
    """Every scenario, as one batch of runs of the compiled engine.

    The scenarios' overrides become the batch's samples, series and lookup
    tables as :func:`armsdyn.scenario_inputs.batch_inputs` splits them.
    Returns each scenario's values by index, shaped as
    :meth:`armsdyn.model.Model.simulate` gives them. A model, series or table
    the engine cannot compile is warned about once and left to PySD.
    """
    try:
        compiled = compile_model(exp.model.path, backend="numpy")  # a few runs: no kernel to compile
        samples, series, tables = batch_inputs(exp.model, [s.parameters for s in exp.scenarios])
        # With no overrides at all the engine runs the model once, and every scenario is that run.
        ds = compiled.run(samples, time=exp.time, variables=exp.variables, series=series, lookups=tables)
    except UnsupportedConstruct as exc:
        warnings.warn(f"{exc}; the scenarios run with PySD instead", FallbackWarning, stacklevel=3)
        return {}
    keyed = {name: exp.model.variable(name).py_name for name in exp.variables}
    several = bool(samples or series or tables)
    return {
        i: {name: ds[key].isel(run=i if several else 0).values for name, key in keyed.items()}
        for i in range(len(exp.scenarios))
    }


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


def _attrs(long_name: str, units: str, description: str) -> dict[str, str | float]:
    return {"long_name": long_name, "units": units, "description": description}
