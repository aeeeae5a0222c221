"""Disarmament-treaty metrics: what hardware cuts do to insecurity, and how fast states rebuild.

Every event time and every value "at" an event comes from stocks the model
itself keeps (the knowledge model records them in the integration step in which
the event happens), and is read at the final time. The metrics therefore do not
depend on the output interval (``saveper``): a run saved every step and one
saved every year give the same numbers. Regain times are interpolated linearly
between the two integration steps around the crossing, so they converge as the
time step shrinks (see :func:`armsdyn.convergence.convergence`).

Required variables (model names), for each state ``S`` in ``A, B``:
``treaty signed``, ``treaty broken``, ``treaty signing time``, ``treaty
breakdown time``, ``hardware at signing S``, ``hardware after cuts S``,
``insecurity at signing S``, ``insecurity after cuts S``, ``power regained S``,
``regain time S``, ``mean insecurity over term S``. Optional:
``breakdown by insecurity``, ``breakdown by detection``, ``peak power ratio A
over B after breakdown`` (and B over A), ``cumulative arms burden S``,
``cumulative civil output S``.

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
mobilisation edge A over B
    ``breakout time B - breakout time A``: positive when A rebuilds faster.
relative edge A over B
    Peak of A's effective power over B's after breakdown (1: no edge).
cumulative arms burden S, foregone output S
    Arms spending over the run; ``1 - cumulative civil output / the same in the
    baseline``, the civil output a scenario gave up (the price of arcadian
    suppression, or of a race).

Undefined values are explicit: ``breakout status S`` is ``regained``, ``not
regained``, ``no breakdown`` or ``no treaty``, and a numeric cell is empty (NaN)
only where a status says why.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd
import xarray as xr

from armsdyn.results import case_dim

STATES = ("A", "B")
WORLD = ("treaty signed", "treaty broken", "treaty signing time", "treaty breakdown time")
PER_STATE_RECORDS = (
    "hardware at signing {s}",
    "hardware after cuts {s}",
    "insecurity at signing {s}",
    "insecurity after cuts {s}",
    "power regained {s}",
    "regain time {s}",
    "mean insecurity over term {s}",
)
OPTIONAL = (
    "breakdown by insecurity",
    "breakdown by detection",
    "peak power ratio A over B after breakdown",
    "cumulative arms burden A",
    "cumulative arms burden B",
    "cumulative civil output A",
    "cumulative civil output B",
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
    "cumulative arms burden",
    "foregone output",
)
#: Every column :func:`treaty_metrics` can produce.
COLUMNS = (
    "treaty status",
    "treaty start",
    "breakdown time",
    "mobilisation edge A over B",
    "relative edge A over B",
    *(f"{key} {s}" for key in PER_STATE for s in STATES),
)
#: Columns that compare a scenario with its baseline.
BASELINE_COLUMNS = tuple(
    f"{key} {s}" for key in ("insecurity reduction vs baseline", "foregone output") for s in STATES
)


def required_variables() -> list[str]:
    """Model names of the variables the treaty metrics need saved."""
    return [*WORLD, *(r.format(s=s) for r in PER_STATE_RECORDS for s in STATES)]


def _final(ds: xr.Dataset, name: str) -> np.ndarray | None:
    """Final values of a variable (one per scenario or run), or None if not saved."""
    for key, da in ds.data_vars.items():
        if name in (key, da.attrs.get("long_name")) and da.dims == (case_dim(ds), "time"):
            return da.isel(time=-1).values.astype(float)
    return None


def applies(ds: xr.Dataset) -> bool:
    """True when the Dataset holds every variable the treaty metrics need."""
    return all(_final(ds, n) is not None for n in required_variables())


def treaty_metrics(
    ds: xr.Dataset, *, baseline: str | None = None, baselines: Mapping[str, str] | None = None
) -> pd.DataFrame:
    """Treaty metrics of every scenario (see the module docstring for definitions).

    Parameters
    ----------
    ds : xarray.Dataset
        Results with dims ``(scenario, time)`` holding the required variables.
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
    missing = [n for n in required_variables() if _final(ds, n) is None]
    if missing:
        msg = f"treaty metrics need these variables saved: {', '.join(missing)}"
        raise KeyError(msg)
    dim = case_dim(ds)
    labels = [str(s) if dim == "scenario" else s for s in ds[dim].values.tolist()]
    v = {n: _final(ds, n) for n in (*required_variables(), *OPTIONAL)}
    table = pd.DataFrame(index=pd.Index(labels, name=dim))
    signed = v["treaty signed"] > 0.5
    broken = signed & (v["treaty broken"] > 0.5)
    table["treaty status"] = _status(signed, broken, v)
    table["treaty start"] = np.where(signed, v["treaty signing time"], np.nan)
    table["breakdown time"] = np.where(broken, v["treaty breakdown time"], np.nan)
    ref = _baseline_rows(labels, baseline, baselines)
    breakout = {}
    with np.errstate(divide="ignore", invalid="ignore"):
        for s in STATES:
            hw_red = 1.0 - v[f"hardware after cuts {s}"] / v[f"hardware at signing {s}"]
            before, after = v[f"insecurity at signing {s}"], v[f"insecurity after cuts {s}"]
            ins_red = 1.0 - after / before
            table[f"hardware reduction {s}"] = np.where(signed, hw_red, np.nan)
            table[f"insecurity before {s}"] = np.where(signed, before, np.nan)
            table[f"insecurity after {s}"] = np.where(signed, after, np.nan)
            table[f"insecurity reduction {s}"] = np.where(signed, ins_red, np.nan)
            table[f"dampening efficiency {s}"] = np.where(signed & (hw_red > 0), ins_red / hw_red, np.nan)
            mean = v[f"mean insecurity over term {s}"]
            table[f"mean insecurity over term {s}"] = mean
            regained = broken & (v[f"power regained {s}"] > 0.5)
            breakout[s] = np.where(regained, v[f"regain time {s}"] - v["treaty breakdown time"], np.nan)
            table[f"breakout time {s}"] = breakout[s]
            table[f"breakout status {s}"] = np.select(
                [~signed, ~broken, regained], ["no treaty", "no breakdown", "regained"], "not regained"
            )
            burden = v[f"cumulative arms burden {s}"]
            table[f"cumulative arms burden {s}"] = burden if burden is not None else np.nan
            if ref is not None:
                table[f"insecurity reduction vs baseline {s}"] = 1.0 - mean / mean[ref]
                civil = v[f"cumulative civil output {s}"]
                if civil is not None:
                    table[f"foregone output {s}"] = 1.0 - civil / civil[ref]
    table["mobilisation edge A over B"] = breakout["B"] - breakout["A"]
    peak = v["peak power ratio A over B after breakdown"]
    if peak is not None:
        table["relative edge A over B"] = np.where(broken, peak, np.nan)
    return table


def _status(signed: np.ndarray, broken: np.ndarray, v: Mapping[str, np.ndarray | None]) -> np.ndarray:
    zeros = np.zeros(signed.shape)
    by_insecurity = (v["breakdown by insecurity"] if v["breakdown by insecurity"] is not None else zeros) > 0.5
    by_detection = (v["breakdown by detection"] if v["breakdown by detection"] is not None else zeros) > 0.5
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
