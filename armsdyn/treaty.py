"""Disarmament-treaty metrics: what hardware cuts do to insecurity, and how fast states rebuild.

Computed from any run's saved time series (never inside the model), for every
scenario and each state ``S`` in ``A, B``. Required variables (model names):
``hardware S``, ``insecurity S``, ``effective power S`` and ``treaty in force``;
optional: ``cumulative arms burden S`` or ``arms burden S``. The times
come from the series themselves, so any model that names its variables this
way is measured the same way.

Definitions
-----------
treaty start
    First saved time at which ``treaty in force`` is on (> 0.5).
breakdown time
    First saved time after the start at which ``treaty in force`` is off again.
cut window
    From the treaty start to the end of the cuts: the start plus the constant
    ``disarmament period`` when the model has one, else the time hardware
    reaches its minimum while the treaty is in force; never past the breakdown.
pre-treaty value
    A variable's value at the last saved time before the treaty is in force.
hardware reduction S
    ``1 - hardware S at the end of the cut window / its pre-treaty value``.
insecurity before S, insecurity after S
    ``insecurity S`` before the treaty and at the end of the cut window.
insecurity reduction S
    ``1 - insecurity after / insecurity before``.
insecurity reduction vs baseline S
    When a baseline scenario (no treaty) is named: ``1 - insecurity after /
    baseline insecurity at the same time``, which removes the drift the race
    would have had anyway.
dampening efficiency S
    ``insecurity reduction / hardware reduction``: 1 means insecurity falls in
    proportion to the cuts; near 0 means the cuts barely dampen it.
breakout time S
    Time from breakdown until ``effective power S`` first regains
    ``regain_share`` (default 0.9) of its pre-treaty value (linear
    interpolation between saved times).
mobilisation edge A over B
    ``breakout time B - breakout time A``: positive when A rebuilds faster.
peak insecurity S
    Maximum of ``insecurity S`` over the run.
cumulative arms burden S
    Final ``cumulative arms burden S``, or the time integral of ``arms burden S``.

Undefined values are explicit: each state has a ``breakout status S`` of
``"regained"``, ``"not regained"``, ``"no breakdown"`` or ``"no treaty"``, and
the ``treaty status`` column says ``"no treaty"``, ``"in force to the end"``
or ``"broke down"``; the numeric cells that cannot be defined are empty (NaN)
only where the status says why.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import xarray as xr

from armsdyn.experiment import case_dim, parameter_values

STATES = ("A", "B")
REQUIRED = ("hardware {s}", "insecurity {s}", "effective power {s}")
TREATY = "treaty in force"
PERIOD = "disarmament period"
DEFAULT_REGAIN_SHARE = 0.9


PER_STATE = (
    "hardware reduction",
    "insecurity before",
    "insecurity after",
    "insecurity reduction",
    "insecurity reduction vs baseline",
    "dampening efficiency",
    "breakout time",
    "breakout status",
    "peak insecurity",
    "cumulative arms burden",
)
#: Every column :func:`treaty_metrics` can produce.
COLUMNS = (
    "treaty status",
    "treaty start",
    "breakdown time",
    "mobilisation edge A over B",
    *(f"{key} {s}" for key in PER_STATE for s in STATES),
)


def required_variables() -> list[str]:
    """Model names of the variables the treaty metrics need."""
    return [TREATY] + [r.format(s=s) for r in REQUIRED for s in STATES]


def _series(ds: xr.Dataset, name: str) -> np.ndarray | None:
    for key, da in ds.data_vars.items():
        if name in (key, da.attrs.get("long_name")) and da.dims == (case_dim(ds), "time"):
            return da.values
    return None


def applies(ds: xr.Dataset) -> bool:
    """True when the Dataset holds every variable the treaty metrics need."""
    return all(_series(ds, n) is not None for n in required_variables())


def _crossing(t: np.ndarray, y: np.ndarray, level: float) -> float:
    """First time `y` reaches `level` from below, interpolated; NaN if never."""
    above = np.flatnonzero(y >= level)
    if not above.size:
        return np.nan
    j = above[0]
    if j == 0 or y[j] == y[j - 1]:
        return float(t[j])
    return float(t[j - 1] + (level - y[j - 1]) * (t[j] - t[j - 1]) / (y[j] - y[j - 1]))


def treaty_metrics(
    ds: xr.Dataset, *, regain_share: float = DEFAULT_REGAIN_SHARE, baseline: str | None = None
) -> pd.DataFrame:
    """Treaty metrics of every scenario (see the module docstring for definitions).

    Parameters
    ----------
    ds : xarray.Dataset
        Results with dims ``(scenario, time)`` holding the required variables.
    regain_share : float
        Share of pre-treaty effective power whose recovery ends the breakout.
    baseline : str, optional
        A scenario without a treaty, for ``insecurity reduction vs baseline``.

    Returns
    -------
    pandas.DataFrame
        One row per scenario.

    Raises
    ------
    KeyError
        If a required variable or the baseline scenario is missing.
    """
    if not applies(ds):
        msg = f"treaty metrics need {TREATY!r} and, for A and B, " + ", ".join(r.format(s="S") for r in REQUIRED)
        raise KeyError(msg)
    t = ds["time"].values
    dim = case_dim(ds)
    scenarios = [str(s) if dim == "scenario" else s for s in ds[dim].values.tolist()]
    if baseline is not None and baseline not in scenarios:
        msg = f"baseline scenario {baseline!r} is not among the scenarios ({', '.join(scenarios)})"
        raise KeyError(msg)
    treaty = _series(ds, TREATY)
    period_values = parameter_values(ds, PERIOD)
    period = None if period_values is None else period_values.values
    rows = []
    for i, _name in enumerate(scenarios):
        on = np.flatnonzero(treaty[i] > 0.5)
        row: dict[str, float | str] = {}
        start = end_cut = breakdown = None
        if on.size:
            start = int(on[0])
            pre = max(start - 1, 0)
            off = np.flatnonzero(treaty[i, start:] <= 0.5)
            breakdown = start + int(off[0]) if off.size else None
            row["treaty status"] = "broke down" if breakdown is not None else "in force to the end"
        else:
            row["treaty status"] = "no treaty"
        row["treaty start"] = t[start] if start is not None else np.nan
        row["breakdown time"] = t[breakdown] if breakdown is not None else np.nan
        breakouts = {}
        for s in STATES:
            hardware = _series(ds, f"hardware {s}")[i]
            insecurity = _series(ds, f"insecurity {s}")[i]
            power = _series(ds, f"effective power {s}")[i]
            row[f"peak insecurity {s}"] = float(np.nanmax(insecurity))
            row[f"cumulative arms burden {s}"] = _burden(ds, s, i, t)
            if start is None:
                for key in (
                    "hardware reduction",
                    "insecurity before",
                    "insecurity after",
                    "insecurity reduction",
                    "dampening efficiency",
                    "breakout time",
                ):
                    row[f"{key} {s}"] = np.nan
                if baseline is not None:
                    row[f"insecurity reduction vs baseline {s}"] = np.nan
                row[f"breakout status {s}"] = "no treaty"
                breakouts[s] = np.nan
                continue
            stop = breakdown if breakdown is not None else t.size - 1
            if period is not None and np.isfinite(period[i]):
                end_cut = min(int(np.searchsorted(t, t[start] + period[i] - 1e-9)), stop)
            else:
                end_cut = start + int(np.argmin(hardware[start : stop + 1]))
            hw_red = 1.0 - hardware[end_cut] / hardware[pre]
            before, after = insecurity[pre], insecurity[end_cut]
            ins_red = 1.0 - after / before
            row[f"hardware reduction {s}"] = hw_red
            row[f"insecurity before {s}"] = before
            row[f"insecurity after {s}"] = after
            row[f"insecurity reduction {s}"] = ins_red
            if baseline is not None:
                ref = _series(ds, f"insecurity {s}")[scenarios.index(baseline), end_cut]
                row[f"insecurity reduction vs baseline {s}"] = 1.0 - after / ref
            row[f"dampening efficiency {s}"] = ins_red / hw_red if hw_red > 0 else np.nan
            if breakdown is None:
                row[f"breakout status {s}"] = "no breakdown"
                breakouts[s] = np.nan
            else:
                regained = _crossing(t[breakdown:], power[breakdown:], regain_share * power[pre])
                breakouts[s] = regained - t[breakdown]
                row[f"breakout status {s}"] = "not regained" if np.isnan(regained) else "regained"
            row[f"breakout time {s}"] = breakouts[s]
        row["mobilisation edge A over B"] = breakouts["B"] - breakouts["A"]
        rows.append(row)
    return pd.DataFrame(rows, index=pd.Index(scenarios, name=dim))


def _burden(ds: xr.Dataset, s: str, i: int, t: np.ndarray) -> float:
    cumulative = _series(ds, f"cumulative arms burden {s}")
    if cumulative is not None:
        return float(cumulative[i, -1] - cumulative[i, 0])
    rate = _series(ds, f"arms burden {s}")
    if rate is None:
        return np.nan
    return float(np.trapezoid(rate[i], t))
