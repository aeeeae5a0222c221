"""Run an experiment's scenarios with PySD and assemble one xarray Dataset."""

from __future__ import annotations

import math
import os
import time as _time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np
import xarray as xr

from armsdyn import __version__
from armsdyn.config import Experiment, load_config
from armsdyn.errors import NumericalError, NumericalWarning


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
        of the range the model declares for the variable.
    """

    scenario: str
    variable: str
    time: float
    value: float
    problem: str = "non-finite"

    def describe(self) -> str:
        """One line for warnings and error messages."""
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
    values = {name: np.empty((len(exp.scenarios), times.size)) for name in exp.variables}
    for i, scenario in enumerate(exp.scenarios):
        started = _time.perf_counter()
        out = model.simulate(scenario.pysd_params(), exp.time, exp.variables)
        for name in exp.variables:
            values[name][i] = out[name]
        if stop_on_fault:
            for name in exp.variables:
                lo, hi = model.variable(name).limits
                with np.errstate(invalid="ignore"):
                    bad = np.flatnonzero(~np.isfinite(out[name]) | (out[name] < lo) | (out[name] > hi))
                if bad.size:
                    fault = Fault(scenario.name, name, float(times[bad[0]]), float(out[name][bad[0]]))
                    if np.isfinite(fault.value):
                        fault = replace(fault, problem="below minimum" if fault.value < lo else "above maximum")
                    msg = (
                        f"scenario {scenario.name!r}: {fault.describe()} at time {fault.time:g} {exp.time.units}; "
                        "stopped (without stop_on_fault the run goes on)"
                    )
                    raise NumericalError(msg)
        if progress is not None:
            elapsed = _time.perf_counter() - started
            progress(f"[{i + 1}/{len(exp.scenarios)}] {scenario.name}: {elapsed:.2f} s")

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
            "metrics_regain_share": exp.metrics.regain_share,
            "metrics_baseline": exp.metrics.baseline,
        },
    )
    ds.coords["scenario_description"] = ("scenario", [s.description for s in exp.scenarios])
    for name in exp.variables:
        var = model.variable(name)
        attrs = _attrs(var.name, var.units, var.doc)
        # CF's names for a declared valid range; find_faults checks values against them.
        for key, bound in zip(("valid_min", "valid_max"), var.limits, strict=True):
            if math.isfinite(bound):
                attrs[key] = bound
        ds[var.py_name] = (("scenario", "time"), values[name], attrs)
    for var in model.of_kind("constant"):
        if var.default is None or var.py_name in ds.data_vars:
            # A saved constant is already a data variable; one name cannot be both.
            continue
        column = []
        for s in exp.scenarios:
            value = s.parameters.get(var.name, var.default)
            column.append(value if isinstance(value, float) else math.nan)
        attrs = _attrs(var.name, var.units, var.doc)
        if any(isinstance(s.parameters.get(var.name), tuple) for s in exp.scenarios):
            attrs["note"] = "NaN where the scenario set this parameter as a time series"
        ds.coords[var.py_name] = ("scenario", np.array(column, dtype=float), attrs)

    for fault in find_faults(ds):
        msg = f"scenario {fault.scenario!r}: {fault.describe()} at time {fault.time:g} {exp.time.units}".rstrip()
        warnings.warn(msg, NumericalWarning, stacklevel=2)
    return ds


def _attrs(long_name: str, units: str, description: str) -> dict[str, str]:
    return {"long_name": long_name, "units": units, "description": description}


def case_dim(ds: xr.Dataset) -> str:
    """The Dataset's case dimension: ``"scenario"`` for experiments, ``"run"`` for ensembles."""
    return "scenario" if "scenario" in ds.dims else "run"


def find_faults(ds: xr.Dataset) -> list[Fault]:
    """First fault in each scenario of a results Dataset.

    A fault is a value that is inf or NaN, or outside the range the model
    declares for the variable (attrs ``valid_min``/``valid_max``).

    Parameters
    ----------
    ds : xarray.Dataset
        Results with dims ``(scenario, time)``.

    Returns
    -------
    list of Fault
        At most one per scenario: the earliest time, and among variables that
        fail at that time the first in the Dataset's order.
    """
    dim = case_dim(ds)
    times = ds["time"].values
    first: dict[int, Fault] = {}
    for key, da in ds.data_vars.items():
        if da.dims != (dim, "time"):
            continue
        values = da.values
        checks = [("non-finite", ~np.isfinite(values))]
        with np.errstate(invalid="ignore"):
            if "valid_min" in da.attrs:
                checks.append(("below minimum", values < da.attrs["valid_min"]))
            if "valid_max" in da.attrs:
                checks.append(("above maximum", values > da.attrs["valid_max"]))
        for problem, bad in checks:
            for i in np.flatnonzero(bad.any(axis=1)):
                j = int(np.argmax(bad[i]))
                if i not in first or times[j] < first[i].time:
                    first[int(i)] = Fault(
                        scenario=str(ds[dim].values[i]),
                        variable=da.attrs.get("long_name", str(key)),
                        time=float(times[j]),
                        value=float(values[i, j]),
                        problem=problem,
                    )
    faults = [first[i] for i in sorted(first)]
    return faults


def parameter_values(ds: xr.Dataset, name: str) -> xr.DataArray | None:
    """The value of model constant `name` in each scenario (or run), or None if absent.

    Reads the ``scenario`` coordinate, or a saved data variable that holds the
    constant (NaN in scenarios where it varies over time).
    """
    dim = case_dim(ds)
    for key, da in ds.variables.items():
        if name in (key, da.attrs.get("long_name")) and da.dims in ((dim,), (dim, "time")):
            if da.dims == (dim,):
                return ds[key]
            first = ds[key].isel(time=0, drop=True)
            return first.where((ds[key] == first).all("time"))
    return None
