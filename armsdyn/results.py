"""Helpers on result Datasets: the case dimension, the fault scan, parameter values.

A leaf of the package (it imports nothing of armsdyn's): the engine writes
Datasets, and metrics, figures and analyses read them through these helpers.
"""

from __future__ import annotations

import itertools
import math
import re
from dataclasses import dataclass

import numpy as np
import xarray as xr

# The data files of a results folder, here at the leaf so that everything that reads a folder (the
# loop table, export, figures) names them without importing the writer or the figures.
#: The runs' saved time series.
RESULTS_FILE = "results.nc"
#: The loop analysis (loop dominance and loop-group attribution) a run writes when asked.
LOOPS_FILE = "loops.nc"


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
            for i in map(int, np.flatnonzero(bad.any(axis=(1, 2)))):
                if i in failed:
                    continue
                j = int(np.argmax(bad[i].any(axis=1)))
                e = int(np.argmax(bad[i, j]))
                if i not in first or times[j] < first[i].time:
                    first[i] = Fault(
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
    # A study samples one element as its own coordinate ("knowledge half life[A]"): take it as named.
    exact = [
        k for k in ds.coords if ds.variables[k].dims == (dim,) and name in (k, ds.variables[k].attrs.get("long_name"))
    ]
    if found and exact:
        return ds[exact[0]]
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
            picked = values.sel(dict(zip(rest, element, strict=True)), drop=True)
        except KeyError:
            return None
        return picked.assign_attrs(long_name=f"{name}[{', '.join(element)}]")
    return None


def find_variable(ds: xr.Dataset, name: str) -> xr.DataArray:
    """A saved variable by model name, Dataset key, or one element of it (``"arms[USA]"``).

    Raises
    ------
    KeyError
        Naming the variables the results hold.
    """
    for key, da in ds.data_vars.items():
        if name in (key, da.attrs.get("long_name")):
            return da
    found = re.match(r"^([^\[\]]+)\[([^\[\]]*)\]\s*$", name)
    if found:  # one element of a subscripted variable: "arms[USA]"
        da = find_variable(ds, found.group(1).strip())
        extra = [d for d in da.dims if d not in ("scenario", "run", "time")]
        element = [e.strip() for e in found.group(2).split(",")]
        if len(extra) == len(element):
            try:
                picked = da.sel(dict(zip(extra, element, strict=True)), drop=True)
            except KeyError:
                pass
            else:
                picked.attrs = {**da.attrs, "long_name": f"{da.attrs.get('long_name', da.name)}[{', '.join(element)}]"}
                return picked
    have = ", ".join(str(d.attrs.get("long_name", k)) for k, d in ds.data_vars.items())
    msg = f"no variable {name!r} in the results (have: {have})"
    raise KeyError(msg)
