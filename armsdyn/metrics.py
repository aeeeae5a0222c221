"""Per-scenario summary metrics of a results Dataset.

Columns (one row per scenario):

``final <name>``
    Value of each saved variable at the final time.
``fault``, ``fault variable``, ``fault time``
    The first numerical fault: ``"non-finite"`` (overflow to inf, or NaN), or a
    value ``"below minimum"`` / ``"above maximum"`` of the range the model
    declares; the variable and the time. ``"none"`` and empty where the run had none.
    ``"simulation error"`` when PySD raised during the run (e.g. a division by
    zero): the scenario's values are NaN, the fault variable and time say where
    it failed (the exception's text when PySD does not say); the other
    scenarios are unaffected. A subscripted variable's fault names its element,
    e.g. ``arms[China]``.
``final <name>[<element>]``
    The final value of each element of a subscripted variable.

For a Richardson model (all of :data:`armsdyn.richardson.PARAMETER_NAMES` are
coordinates of the Dataset) also: ``determinant ab-kl``, ``equilibrium X``,
``equilibrium Y`` (empty when degenerate), ``eigenvalue 1``/``eigenvalue 2``
(real and imaginary parts), ``stability`` and ``regime`` (see
:mod:`armsdyn.richardson`).

For an N-state Richardson model (the subscripted constants of
:data:`armsdyn.richardson.N_PARAMETER_NAMES`, as in ``models/richardson_n.mdl``)
also: ``determinant det(A-K)``, ``equilibrium <state>`` per state, ``eigenvalue
i real``/``imag`` for i = 1..N, ``stability`` and ``regime`` (see
:class:`armsdyn.richardson.RichardsonN`).

For a model with a disarmament treaty (see :mod:`armsdyn.treaty`) also the
treaty metrics: hardware and insecurity reductions, dampening efficiency,
insecurity over the treaty term against each scenario's baseline (a ``baseline``
coordinate on ``scenario``, else the ``metrics_baseline`` attr), breakout
times, mobilisation edges and the burden and foregone output of each state.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from armsdyn import treaty
from armsdyn.model import Model
from armsdyn.results import case_dim, find_faults, parameter_values
from armsdyn.richardson import (
    N_PARAMETER_NAMES,
    PARAMETER_NAMES,
    ClosedForms,
    Richardson,
    RichardsonN,
    closed_forms,
)

RICHARDSON_COLUMNS = (
    "determinant ab-kl",
    "equilibrium X",
    "equilibrium Y",
    "eigenvalue 1 real",
    "eigenvalue 1 imag",
    "eigenvalue 2 real",
    "eigenvalue 2 imag",
    "stability",
    "regime",
)


@dataclass(frozen=True)
class MetricFamily:
    """One family of metric columns: an entry of :data:`METRIC_FAMILIES`.

    Attributes
    ----------
    columns : callable
        ``(model, saved variables) -> {column: variables it needs saved}``; empty
        when the family does not apply to the model. The config validator reads it.
    compute : callable
        ``(results Dataset) -> DataFrame`` indexed like the Dataset's cases, or
        None when the family does not apply to these results.
    """

    columns: Callable[[Model, Sequence[str]], dict[str, list[str]]]
    compute: Callable[[xr.Dataset], pd.DataFrame | None]


def metric_names(model: Model, variables: Sequence[str]) -> dict[str, list[str]]:
    """Metric columns an experiment on `model` saving `variables` will have.

    Returns
    -------
    dict of str to list of str
        Each metric name mapped to the model variables it needs saved.
    """
    names: dict[str, list[str]] = {}
    for family in METRIC_FAMILIES.values():
        names.update(family.columns(model, variables))
    return names


def compute_metrics(ds: xr.Dataset) -> pd.DataFrame:
    """Summarise each scenario of a results Dataset: every metric family that applies.

    Parameters
    ----------
    ds : xarray.Dataset
        Results from :func:`armsdyn.run`.

    Returns
    -------
    pandas.DataFrame
        Indexed by scenario; columns described in the module docstring.
    """
    dim = case_dim(ds)
    table = pd.DataFrame(index=pd.Index(_labels(ds, dim), name=dim))
    for family in METRIC_FAMILIES.values():
        part = family.compute(ds)
        if part is not None:
            table = table.join(part)
    return table


def _final_names(model: Model, variables: Sequence[str]) -> dict[str, list[str]]:
    names: dict[str, list[str]] = {}
    for v in variables:
        var = model.variable(v)
        if var.dims:
            names.update({f"final {var.element_name(e)}": [v] for e in var.elements()})
        else:
            names[f"final {v}"] = [v]
    return names


def _final_values(ds: xr.Dataset) -> pd.DataFrame:
    dim = case_dim(ds)
    columns: dict[str, Any] = {}
    for key, da in ds.data_vars.items():
        if da.dims[:2] != (dim, "time"):
            continue
        name = da.attrs.get("long_name", key)
        final = da.values[:, -1]
        extra = da.dims[2:]
        if not extra:
            columns[f"final {name}"] = final
            continue
        # A subscripted variable: a column per element (row-major, as the values lie), named as configs name them.
        flat = final.reshape(final.shape[0], -1)
        for i, element in enumerate(itertools.product(*(ds[d].values for d in extra))):
            columns[f"final {name}[{', '.join(map(str, element))}]"] = flat[:, i]
    return pd.DataFrame(columns, index=pd.Index(_labels(ds, dim), name=dim))


def _fault_names(model: Model, variables: Sequence[str]) -> dict[str, list[str]]:
    return {"fault": [], "fault variable": [], "fault time": []}


def _faults(ds: xr.Dataset) -> pd.DataFrame:
    dim = case_dim(ds)
    table = pd.DataFrame(index=pd.Index(_labels(ds, dim), name=dim))
    table["fault"] = "none"
    table["fault variable"] = ""
    table["fault time"] = np.nan
    position = {str(label): i for i, label in enumerate(table.index)}
    for fault in find_faults(ds):
        row = position[fault.scenario]
        table.iloc[row, table.columns.get_loc("fault")] = fault.problem
        # A run that failed where PySD could not say: the exception's text stands in for the variable.
        table.iloc[row, table.columns.get_loc("fault variable")] = fault.variable or fault.text
        table.iloc[row, table.columns.get_loc("fault time")] = fault.time
    return table


def _richardson_names(model: Model, variables: Sequence[str]) -> dict[str, list[str]]:
    constants = {v.name for v in model.of_kind("constant")}
    return {c: [] for c in RICHARDSON_COLUMNS} if set(PARAMETER_NAMES.values()) <= constants else {}


def _richardson_n_names(model: Model, variables: Sequence[str]) -> dict[str, list[str]]:
    states = _n_state_elements(model)
    return {} if states is None else {c: [] for c in richardson_n_columns(states)}


def _treaty_names(model: Model, variables: Sequence[str]) -> dict[str, list[str]]:
    states = treaty.model_states(model)
    if states is None:
        return {}
    optional = [name for name in treaty.OPTIONAL if name in model.variables]
    return {c: [*treaty.required_variables(), *optional] for c in treaty.columns(states)}


def _treaty_table(ds: xr.Dataset) -> pd.DataFrame | None:
    if not treaty.applies(ds):
        return None
    dim = case_dim(ds)
    baselines = None
    if "baseline" in ds.coords and ds["baseline"].dims == (dim,):
        baselines = dict(zip(_labels(ds, dim), map(str, ds["baseline"].values.tolist()), strict=True))
    return treaty.treaty_metrics(ds, baseline=ds.attrs.get("metrics_baseline") or None, baselines=baselines)


def _labels(ds: xr.Dataset, dim: str) -> list[Any]:
    return [str(s) if dim == "scenario" else s for s in ds[dim].values.tolist()]


def richardson_parameters(ds: xr.Dataset, scenario: Any) -> tuple[Richardson, float, float] | None:
    """Richardson parameters and initial arms a scenario ran with, if the model is Richardson's.

    Returns
    -------
    tuple of (Richardson, x0, y0), or None
        None when the Dataset lacks any of the parameters (another model), or
        a parameter was a time series in this scenario.
    """
    columns = {}
    for name in PARAMETER_NAMES.values():
        column = parameter_values(ds, name)
        if column is None:  # another model: stop at the first missing parameter
            return None
        columns[name] = column
    dim = case_dim(ds)
    values = {name: float(c.sel({dim: scenario})) for name, c in columns.items()}
    if not all(np.isfinite(list(values.values()))):
        return None
    return Richardson.from_values(values), values[PARAMETER_NAMES["x0"]], values[PARAMETER_NAMES["y0"]]


#: The regime of a scenario whose Richardson parameters are not all finite numbers.
NOT_ANALYSED = "not analysed: a parameter varies over time"


def _closed_form_table(ds: xr.Dataset, forms: ClosedForms, states: Sequence[str], determinant: str) -> pd.DataFrame:
    """The closed-form columns of every case: equilibrium per state, eigenvalues, stability and regime."""
    dim = case_dim(ds)
    columns: dict[str, Any] = {determinant: forms.determinant}
    columns |= {f"equilibrium {state}": forms.equilibrium[:, i] for i, state in enumerate(states)}
    for i in range(len(states)):
        columns[f"eigenvalue {i + 1} real"] = forms.eigenvalues[:, i].real
        columns[f"eigenvalue {i + 1} imag"] = forms.eigenvalues[:, i].imag
    columns["stability"] = np.where(forms.analysed, forms.stability, np.nan).astype(object)
    columns["regime"] = np.where(forms.analysed, forms.regime, NOT_ANALYSED).astype(object)
    return pd.DataFrame(columns, index=pd.Index(_labels(ds, dim), name=dim))


def _richardson_columns(ds: xr.Dataset) -> pd.DataFrame | None:
    values = {}
    for symbol, name in PARAMETER_NAMES.items():
        column = parameter_values(ds, name)
        if column is None:
            return None  # not Richardson's model
        values[symbol] = column.transpose(case_dim(ds), ...).values.astype(float).reshape(-1)
    k = np.zeros((values["k"].size, 2, 2))
    k[:, 0, 1], k[:, 1, 0] = values["k"], values["l"]
    pairs = [np.stack([values[x], values[y]], axis=1) for x, y in (("a", "b"), ("g", "h"), ("x0", "y0"))]
    forms = closed_forms(k, *pairs, two_state=True)
    return _closed_form_table(ds, forms, ("X", "Y"), "determinant ab-kl")


def _n_state_elements(model: Model) -> tuple[str, ...] | None:
    """The states of an N-state Richardson model (see :data:`N_PARAMETER_NAMES`), or None for another model."""
    try:
        k, a, g, x0 = (model.variable(N_PARAMETER_NAMES[s]) for s in ("k", "a", "g", "x0"))
    except KeyError:
        return None
    if not all(v.kind == "constant" for v in (k, a, g, x0)) or len(a.dims) != 1 or len(k.dims) != 2:
        return None
    states = a.dims[0][1]
    if g.dims != a.dims or x0.dims != a.dims or k.dims[0][1] != states or k.dims[1][1] != states:
        return None
    return states


def richardson_n_columns(states: Sequence[str]) -> list[str]:
    """The metric columns of an N-state Richardson model with these states."""
    columns = ["determinant det(A-K)"]
    columns += [f"equilibrium {s}" for s in states]
    for i in range(1, len(states) + 1):
        columns += [f"eigenvalue {i} real", f"eigenvalue {i} imag"]
    return [*columns, "stability", "regime"]


def richardson_n_parameters(ds: xr.Dataset, scenario: Any) -> tuple[RichardsonN, np.ndarray] | None:
    """The N-state Richardson model and initial arms a scenario ran with, if the model is one.

    Returns
    -------
    tuple of (RichardsonN, numpy.ndarray), or None
        None when the Dataset lacks a subscripted parameter of
        :data:`armsdyn.richardson.N_PARAMETER_NAMES` (another model), or one of
        them was a time series in this scenario.
    """
    dim = case_dim(ds)
    columns: dict[str, xr.DataArray] = {}
    for s, name in N_PARAMETER_NAMES.items():
        column = parameter_values(ds, name)
        if column is None:  # another model
            return None
        columns[s] = column
    a = columns["a"]
    if a.ndim != 2 or columns["k"].ndim != 3:
        return None
    state = a.dims[1]
    states = [str(s) for s in a[state].values]
    row, col = columns["k"].dims[1:]
    if [str(s) for s in columns["k"][col].values] != states:
        return None
    at = {dim: scenario}
    k = columns["k"].sel(at).transpose(row, col).values
    values = {s: columns[s].sel(at).values for s in ("a", "g", "x0")}
    if not (np.all(np.isfinite(k)) and all(np.all(np.isfinite(v)) for v in values.values())):
        return None
    return RichardsonN(k, values["a"], values["g"], tuple(states)), values["x0"]


def _richardson_n_columns(ds: xr.Dataset) -> pd.DataFrame | None:
    columns: dict[str, xr.DataArray] = {}
    for symbol, name in N_PARAMETER_NAMES.items():
        column = parameter_values(ds, name)
        if column is None:
            return None  # not an N-state Richardson model
        columns[symbol] = column
    a = columns["a"]
    if a.ndim != 2:
        return None
    dim = case_dim(ds)
    state = a.dims[1]
    states = tuple(str(s) for s in a[state].values)
    m, n = a.shape
    k = columns["k"]
    if k.ndim == 3 and [str(s) for s in k[k.dims[2]].values] == list(states):
        matrices = k.transpose(dim, *k.dims[1:]).values.astype(float)
    else:  # not a reaction matrix over the same states: nothing to analyse
        matrices = np.full((m, n, n), np.nan)
    vectors = [columns[s].transpose(dim, ...).values.astype(float).reshape(m, n) for s in ("a", "g", "x0")]
    forms = closed_forms(matrices, *vectors)
    return _closed_form_table(ds, forms, states, "determinant det(A-K)")


#: Metric families, in column order. Adding a family is a module with its two
#: functions (or a few here) and one line in this table.
METRIC_FAMILIES: dict[str, MetricFamily] = {
    "final values": MetricFamily(_final_names, _final_values),
    "faults": MetricFamily(_fault_names, _faults),
    "richardson": MetricFamily(_richardson_names, _richardson_columns),
    "richardson_n": MetricFamily(_richardson_n_names, _richardson_n_columns),
    "treaty": MetricFamily(_treaty_names, _treaty_table),
}


def attribution_columns(ds: xr.Dataset) -> pd.DataFrame:
    """The attribution as metrics columns: ``"<stock element> change share: <group>"`` per scenario.

    Parameters
    ----------
    ds : xarray.Dataset
        From :func:`armsdyn.attribution.attribute` (or ``loops.nc``).

    Returns
    -------
    pandas.DataFrame
        Indexed by scenario; one column per stock element and group (``other`` included), and
        ``"<stock element> change"`` (the change over the window, in the stock's units).
    """
    columns: dict[str, Any] = {}
    for stock in ds["attributed"].values.tolist():
        columns[f"{stock} change"] = ds["stock_change"].sel(attributed=stock).values
        for group in ds["loop_group"].values.tolist():
            share = ds["attribution_share"].sel(attributed=stock, loop_group=group)
            columns[f"{stock} change share: {group}"] = share.values
    return pd.DataFrame(columns, index=pd.Index([str(s) for s in ds["scenario"].values], name="scenario"))


def metrics_table(ds: xr.Dataset, loops: xr.Dataset | None = None) -> pd.DataFrame:
    """The metrics table of a run as ``metrics.csv`` holds it: :func:`compute_metrics`, and the attribution.

    Parameters
    ----------
    ds : xarray.Dataset
        The results.
    loops : xarray.Dataset, optional
        The run's loop analysis (``loops.nc``); with an attribution in it, its columns
        (:func:`attribution_columns`) join the table.

    Returns
    -------
    pandas.DataFrame
        One row per scenario.
    """
    table = compute_metrics(ds)
    if loops is not None and "attribution_share" in loops:
        table = table.join(attribution_columns(loops))
    return table
