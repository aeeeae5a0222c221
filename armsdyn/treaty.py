"""Disarmament-treaty metrics: what hardware cuts do to insecurity, and how fast states rebuild.

Every event time and every value "at" an event comes from stocks the model
itself keeps (the knowledge model records them in the integration step in which
the event happens), and is read at the final time. The metrics therefore do not
depend on the output interval (``saveper``): a run saved every step and one
saved every year give the same numbers. Regain times are interpolated linearly
between the two integration steps around the crossing, so they converge as the
time step shrinks (see :func:`armsdyn.convergence.convergence`).

Required variables (model names): ``treaty signed``, ``treaty broken``,
``treaty signing time``, ``treaty breakdown time`` (scalars) and, subscripted
by the model's state range, ``hardware at signing``, ``hardware after cuts``,
``insecurity at signing``, ``insecurity after cuts``, ``power regained``,
``regain time``, ``mean insecurity over term``. Optional: ``breakdown by
insecurity``, ``breakdown by detection``, and per state ``peak power ratio
after breakdown``, ``cumulative arms burden``, ``cumulative civil output``.
A column for state ``S`` carries the element's name (``breakout time A``), so
a third state adds its columns without any change here.

Definitions
-----------
treaty status
    ``no treaty``, ``in force to the end``, ``expired`` (its term ended),
    ``defection`` (a state left it over its insecurity) or ``cheating
    detected``.
hardware reduction S
    ``1 - hardware after cuts / hardware at signing``: the share the cuts removed.
insecurity reduction S
    ``1 - insecurity after cuts / insecurity at signing``.
dampening efficiency S
    ``insecurity reduction / hardware reduction``: 1 means insecurity falls in
    proportion to the cuts; near 0 means the cuts barely dampen it.
mean insecurity over term S
    Insecurity averaged over the treaty's term (start to end time).
insecurity reduction vs baseline S
    ``1 - mean insecurity over term / the same in the scenario's baseline``
    (a no-treaty scenario named per scenario, or the ``[metrics]`` baseline):
    how much less insecure the treaty left the state over its term than the
    race would have.
breakout time S
    Years from breakdown until ``effective power S`` regains the model's
    ``regain share`` of its value at signing.
mobilisation edge S over R
    ``breakout time R - breakout time S``: positive when S rebuilds faster (one
    column per pair of states, in the range's order).
relative edge S
    Peak of S's effective power over its adversaries' after breakdown (1: no
    edge; for two states, over the other state's).
cumulative arms burden S, foregone output S
    Arms spending over the run; ``1 - cumulative civil output / the same in the
    baseline``, the civil output a scenario gave up (the price of arcadian
    suppression, or of a race).

Undefined values are explicit: ``breakout status S`` is ``regained``, ``not
regained``, ``no breakdown`` or ``no treaty``, and a numeric cell is empty (NaN)
only where a status says why.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import xarray as xr

from armsdyn.model import Model
from armsdyn.results import case_dim

WORLD = ("treaty signed", "treaty broken", "treaty signing time", "treaty breakdown time")
#: Event records kept per state: each is subscripted by the model's state range.
PER_STATE_RECORDS = (
    "hardware at signing",
    "hardware after cuts",
    "insecurity at signing",
    "insecurity after cuts",
    "power regained",
    "regain time",
    "mean insecurity over term",
)
OPTIONAL = (
    "breakdown by insecurity",
    "breakdown by detection",
    "peak power ratio after breakdown",
    "cumulative arms burden",
    "cumulative civil output",
)

PER_STATE = (
    "hardware reduction",
    "insecurity before",
    "insecurity after",
    "insecurity reduction",
    "dampening efficiency",
    "mean insecurity over term",
    "insecurity reduction vs baseline",
    "breakout time",
    "breakout status",
    "relative edge",
    "cumulative arms burden",
    "foregone output",
)
#: Per-state columns that compare a scenario with its baseline.
BASELINE_PER_STATE = ("insecurity reduction vs baseline", "foregone output")


def columns(states: Sequence[str]) -> list[str]:
    """Every column :func:`treaty_metrics` can produce for a model with these states.

    Per-state columns carry the element's name (``breakout time A``); the
    mobilisation edge is one column per pair of states (``mobilisation edge A
    over B``).
    """
    pairs = [f"mobilisation edge {a} over {b}" for i, a in enumerate(states) for b in states[i + 1 :]]
    return ["treaty status", "treaty start", "breakdown time", *pairs, *(f"{k} {s}" for k in PER_STATE for s in states)]


def baseline_columns(states: Sequence[str]) -> list[str]:
    """The columns of :func:`columns` that compare a scenario with its baseline."""
    return [f"{k} {s}" for k in BASELINE_PER_STATE for s in states]


def required_variables() -> list[str]:
    """Model names of the variables the treaty metrics need saved."""
    return [*WORLD, *PER_STATE_RECORDS]


def model_states(model: Model) -> tuple[str, ...] | None:
    """The states of a model with the treaty records (the elements of their one range), or None."""
    try:
        world = [model.variable(n) for n in WORLD]
        records = [model.variable(n) for n in PER_STATE_RECORDS]
    except KeyError:
        return None
    dims = {r.dims for r in records}
    if any(w.dims for w in world) or len(dims) != 1 or len(records[0].dims) != 1:
        return None
    return tuple(records[0].dims[0][1])


def _finals(ds: xr.Dataset) -> dict[str, xr.Variable]:
    """Final values of every variable the metrics may read, by model name, in one pass over the Dataset.

    Bare variables with dims ``(case,)`` or ``(case, state range)``: the
    explorer recomputes the metrics on every slider move, and building a
    DataArray (with every scenario coordinate) per lookup is what costs.
    """
    dim = case_dim(ds)
    wanted = {*WORLD, *PER_STATE_RECORDS, *OPTIONAL}
    found: dict[str, xr.Variable] = {}
    for key in ds.data_vars:
        var = ds.variables[key]
        name = next((n for n in (key, var.attrs.get("long_name")) if n in wanted), None)
        if name is not None and name not in found and var.dims[:2] == (dim, "time") and var.ndim <= 3:
            found[name] = var.isel(time=-1).astype(float)
    return found


def _states(ds: xr.Dataset, finals: Mapping[str, xr.Variable]) -> tuple[str, tuple[str, ...]] | None:
    """The state range's name and elements, read from the saved records."""
    records = [finals.get(n) for n in PER_STATE_RECORDS]
    if any(r is None or r.ndim != 2 for r in records):
        return None
    dims = {r.dims[1] for r in records if r is not None}
    if len(dims) != 1:
        return None
    (dim,) = dims
    return str(dim), tuple(str(e) for e in ds[dim].values.tolist())


def applies(ds: xr.Dataset) -> bool:
    """True when the Dataset holds every variable the treaty metrics need."""
    finals = _finals(ds)
    return all(n in finals for n in WORLD) and _states(ds, finals) is not None


def treaty_metrics(
    ds: xr.Dataset, *, baseline: str | None = None, baselines: Mapping[str, str] | None = None
) -> pd.DataFrame:
    """Treaty metrics of every scenario (see the module docstring for definitions).

    Parameters
    ----------
    ds : xarray.Dataset
        Results with dims ``(scenario, time)`` holding the required variables,
        the per-state records with the state range as a third dimension.
    baseline : str, optional
        The no-treaty scenario every scenario is compared with, unless
        `baselines` names another for it.
    baselines : mapping of str to str, optional
        Each scenario's own baseline (e.g. a knowledge-lead scenario's
        no-treaty twin).

    Returns
    -------
    pandas.DataFrame
        One row per scenario (or run).

    Raises
    ------
    KeyError
        If a required variable or a named baseline scenario is missing.
    """
    finals = _finals(ds)
    missing = [n for n in required_variables() if n not in finals]
    found = _states(ds, finals)
    if missing or found is None:
        msg = (
            f"treaty metrics need these variables saved: {', '.join(missing)}"
            if missing
            else f"treaty metrics need the per-state records ({', '.join(PER_STATE_RECORDS)}) subscripted by one range"
        )
        raise KeyError(msg)
    _, states = found
    dim = case_dim(ds)
    labels = [str(s) if dim == "scenario" else s for s in ds[dim].values.tolist()]

    def world(name: str) -> np.ndarray:
        return np.asarray(finals[name].values)

    def optional_world(name: str) -> np.ndarray | None:
        return world(name) if name in finals else None

    position = {s: i for i, s in enumerate(states)}

    def of(name: str, s: str) -> np.ndarray:
        return np.asarray(finals[name].values[:, position[s]])

    def optional(name: str, s: str) -> np.ndarray | None:
        return of(name, s) if name in finals else None

    table = pd.DataFrame(index=pd.Index(labels, name=dim))
    signed = world("treaty signed") > 0.5
    broken = signed & (world("treaty broken") > 0.5)
    breakdown = world("treaty breakdown time")
    table["treaty status"] = _status(
        signed, broken, optional_world("breakdown by insecurity"), optional_world("breakdown by detection")
    )
    table["treaty start"] = np.where(signed, world("treaty signing time"), np.nan)
    table["breakdown time"] = np.where(broken, breakdown, np.nan)
    ref = _baseline_rows(labels, baseline, baselines)
    breakout = {}
    with np.errstate(divide="ignore", invalid="ignore"):
        for s in states:
            hw_red = 1.0 - of("hardware after cuts", s) / of("hardware at signing", s)
            before, after = of("insecurity at signing", s), of("insecurity after cuts", s)
            ins_red = 1.0 - after / before
            table[f"hardware reduction {s}"] = np.where(signed, hw_red, np.nan)
            table[f"insecurity before {s}"] = np.where(signed, before, np.nan)
            table[f"insecurity after {s}"] = np.where(signed, after, np.nan)
            table[f"insecurity reduction {s}"] = np.where(signed, ins_red, np.nan)
            table[f"dampening efficiency {s}"] = np.where(signed & (hw_red > 0), ins_red / hw_red, np.nan)
            mean = of("mean insecurity over term", s)
            table[f"mean insecurity over term {s}"] = mean
            regained = broken & (of("power regained", s) > 0.5)
            breakout[s] = np.where(regained, of("regain time", s) - breakdown, np.nan)
            table[f"breakout time {s}"] = breakout[s]
            table[f"breakout status {s}"] = np.select(
                [~signed, ~broken, regained], ["no treaty", "no breakdown", "regained"], "not regained"
            )
            peak = optional("peak power ratio after breakdown", s)
            if peak is not None:
                table[f"relative edge {s}"] = np.where(broken, peak, np.nan)
            burden = optional("cumulative arms burden", s)
            table[f"cumulative arms burden {s}"] = burden if burden is not None else np.nan
            if ref is not None:
                table[f"insecurity reduction vs baseline {s}"] = 1.0 - mean / mean[ref]
                civil = optional("cumulative civil output", s)
                if civil is not None:
                    table[f"foregone output {s}"] = 1.0 - civil / civil[ref]
    for i, a in enumerate(states):
        for b in states[i + 1 :]:
            table[f"mobilisation edge {a} over {b}"] = breakout[b] - breakout[a]
    return table


def _status(
    signed: np.ndarray, broken: np.ndarray, by_insecurity: np.ndarray | None, by_detection: np.ndarray | None
) -> np.ndarray:
    zeros = np.zeros(signed.shape)
    by_insecurity = (by_insecurity if by_insecurity is not None else zeros) > 0.5
    by_detection = (by_detection if by_detection is not None else zeros) > 0.5
    return np.select(
        [~signed, ~broken, by_detection, by_insecurity],
        ["no treaty", "in force to the end", "cheating detected", "defection"],
        "expired",
    )


def _baseline_rows(
    labels: list[object], baseline: str | None, baselines: Mapping[str, str] | None
) -> np.ndarray | None:
    """For each row, the row index of its baseline; None when no row has one."""
    named = {str(label): baseline for label in labels} if baseline else {}
    named |= {k: b for k, b in (baselines or {}).items() if b}
    if not named:
        return None
    position = {str(label): i for i, label in enumerate(labels)}
    unknown = sorted({b for b in named.values() if b not in position})
    if unknown:
        msg = f"baseline scenario {unknown[0]!r} is not among the scenarios ({', '.join(map(str, labels))})"
        raise KeyError(msg)
    if len(labels) and not all(str(label) in named for label in labels):
        # A run dimension (a study) has one baseline for all runs or none.
        return None
    return np.array([position[named[str(label)]] for label in labels])
