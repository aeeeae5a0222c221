"""Scenario overrides as the inputs of one batch of runs of the compiled engine.

A scenario overrides constants with numbers or time series and redraws lookups; the compiled
engine (:meth:`armsdyn.ensemble.CompiledModel.run`) takes a batch of runs as *samples* (one
number per run), *series* (one time series per run) and *lookups* (one table per run). Every
caller that runs several scenarios as one batch (an experiment's scenarios, an attribution's
knockouts, a calibration's fits) splits them here, so that they agree on what a value a run leaves
out and a whole subscripted constant mean.
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple, TypeAlias, TypeGuard

import numpy as np
import pandas as pd

from armsdyn.errors import ModelError
from armsdyn.model import Model

#: A time series or lookup table as a run gives it: ``(x, value)`` pairs or a ``pandas.Series``.
SeriesLike: TypeAlias = pd.Series | Sequence[tuple[float, float]] | Sequence[Sequence[float]]


class BatchInputs(NamedTuple):
    """What :meth:`armsdyn.ensemble.CompiledModel.run` takes for a batch of runs.

    Attributes
    ----------
    samples : dict of str to numpy.ndarray
        Constant (or element) to its number in each run.
    series : dict of str to list
        Constant (or element) to its time series in each run; None where the run keeps the model's value.
    lookups : dict of str to list
        Lookup to its table in each run; None where the run keeps the model's own table.
    """

    samples: dict[str, np.ndarray]
    series: dict[str, list[SeriesLike | None]]
    lookups: dict[str, list[SeriesLike | None]]


def element_params(model: Model, parameters: Mapping[str, Any]) -> dict[str, Any]:
    """A run's overrides keyed by the model's names, a whole subscripted constant or lookup by element.

    Keys become the model's own spelling (``"grievance g"``, ``"k[USA, China]"``), so that runs
    naming a constant differently (``"grievance_g"``, a whole constant or its elements) still give
    one column of a batch.

    Parameters
    ----------
    model : Model
        The model whose constants and lookups the keys name.
    parameters : mapping
        Constant, element or lookup name to its value (a number, a time series or a table).

    Returns
    -------
    dict
        The same values; a whole subscripted constant's (or lookup's) value under each of its
        elements. An element's own override wins over the whole constant's, as with PySD
        (:meth:`armsdyn.model.Model.pysd_values`).

    Raises
    ------
    KeyError
        For a name that is not a variable or element of the model (:meth:`Model.element`).
    """
    named = [(key, value, *model.element(key)) for key, value in parameters.items()]
    out: dict[str, Any] = {var.element_name(e): value for _, value, var, e in named if e is not None}
    for _, value, var, element in named:
        if element is not None:
            continue
        if var.dims and var.kind in ("constant", "lookup"):
            for each in var.elements():
                out.setdefault(var.element_name(each), value)
        else:
            out[var.name] = value
    return out


def batch_inputs(model: Model, runs: Sequence[Mapping[str, Any]]) -> BatchInputs:
    """Split the overrides of a batch of runs into the compiled engine's samples, series and lookups.

    Parameters
    ----------
    model : Model
        The model the runs override.
    runs : sequence of mapping
        One mapping per run of constant, element or lookup name to a number, a time series
        (``(time, value)`` pairs or a ``pandas.Series`` indexed by time) or, for a lookup, a
        redrawn table (``(x, y)`` pairs or a ``pandas.Series`` of y indexed by x), as a scenario
        gives them (:attr:`armsdyn.specs.Scenario.parameters` or its ``pysd_params()``).

    Returns
    -------
    BatchInputs
        ``samples``, ``series`` and ``lookups``, each with one entry per run, keyed by the model's
        names, a whole subscripted constant element by element (see :func:`element_params`). A
        constant that some run gives as a time series is a series in every run: a number as a
        series of one point (held over the whole run), None where a run leaves it (the engine's
        model value). A constant given only as numbers is a sample, the model file's value where
        a run leaves it. A lookup is a table per run, None where a run keeps the model's own. No
        override in any run gives three empty mappings (the engine then runs the model once).

    Raises
    ------
    ModelError
        If a run sets a constant that the model gives no single number to run the others with
        (one whose value is an equation), or redraws a lookup with a number.
    KeyError
        For a name that is not a variable or element of the model.
    """
    expanded = [element_params(model, params) for params in runs]
    inputs = BatchInputs({}, {}, {})
    # Sorted, so that the same scenarios give the same batch whatever order they name things in.
    for key in sorted({k for params in expanded for k in params}):
        var, _ = model.element(key)
        column = [params.get(key) for params in expanded]
        if var.kind == "lookup":
            wrong = [i for i, v in enumerate(column) if _is_number(v)]
            if wrong:
                msg = (
                    f"run {wrong[0]} redraws lookup {key!r} of model {model.path} with the number "
                    f"{column[wrong[0]]!r}; a lookup takes a table of (x, y) points"
                )
                raise ModelError(msg)
            inputs.lookups[key] = column
        elif all(v is None or _is_number(v) for v in column):
            own = _model_number(model, key) if None in column else np.nan
            inputs.samples[key] = np.array([own if v is None else float(v) for v in column], dtype=float)
        else:
            # A constant series of one point: the engine holds a series' value beyond its points.
            inputs.series[key] = [((0.0, float(v)),) if _is_number(v) else v for v in column]
    return inputs


def _is_number(value: Any) -> TypeGuard[numbers.Real]:
    return isinstance(value, numbers.Real)


def _model_number(model: Model, key: str) -> float:
    """The model file's number for a constant or element, for the runs that leave it."""
    var, element = model.element(key)
    own = var.default if element is None else dict(zip(var.elements(), var.defaults, strict=False)).get(element)
    if own is None:
        msg = (
            f"{key!r} is set by some runs, but model {model.path} gives it no single number to run "
            "the others with (its value is an equation); set it in every run or in none"
        )
        raise ModelError(msg)
    return float(own)
