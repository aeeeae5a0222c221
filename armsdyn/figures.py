"""Figures drawn from a results Dataset, in a style fit for journals.

Every plot function takes the Dataset (so figures can be redrawn from a saved
``results.nc`` without rerunning anything) and ``ax=None``, and returns the
figure and its axes. Axis labels come from each variable's ``long_name`` and
``units`` attrs.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import itertools
import re
import textwrap
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import xarray as xr
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.patches import FancyArrowPatch

from armsdyn.diagram import causal_diagram, diagram_layout
from armsdyn.errors import ConfigError, ResultsError
from armsdyn.metrics import compute_metrics, metrics_table, richardson_parameters
from armsdyn.model import load_model
from armsdyn.results import LOOPS_FILE, case_dim, find_variable, parameter_values
from armsdyn.specs import FIGURE_KINDS, FigureSpec

STYLE = Path(__file__).with_name("paper.mplstyle")
SINGLE_COLUMN = 3.5  # inches
DOUBLE_COLUMN = 7.2  # inches
FORMATS = ("pdf", "svg", "png")


@contextlib.contextmanager
def paper_style() -> Iterator[None]:
    """Context in which matplotlib uses armsdyn's bundled journal style."""
    with plt.style.context(STYLE):
        yield


# Units that tell a reader nothing: dimensionless, or the model's arbitrary unit of force.
_SILENT_UNITS = frozenset({"", "dmnl", "1", "units", "unit"})


def _with_units(name: str, units: str) -> str:
    return name if units.strip().lower() in _SILENT_UNITS else f"{name} ({units})"


def axis_label(da: xr.DataArray) -> str:
    """``"long_name (units)"`` for a variable; no parentheses for empty, dimensionless or arbitrary units."""
    return _with_units(str(da.attrs.get("long_name", da.name)), str(da.attrs.get("units", "")))


def _scenario_label(ds: xr.Dataset, scenario: str, width: int = 28) -> str:
    """A scenario's description (wrapped) where the results carry one, else its name."""
    if "scenario_description" in ds.coords:
        text = str(ds["scenario_description"].sel(scenario=scenario).item())
        if text:
            return textwrap.fill(text, width)
    return scenario


def _treaty_marks(panel: Axes, ds: xr.Dataset, scenario: str) -> None:
    """Shade the time a treaty is in force and mark its end, where the results hold them."""
    keys = {str(da.attrs.get("long_name", k)): k for k, da in ds.data_vars.items()}
    if "treaty in force" not in keys:
        return
    t = ds["time"].values
    on = ds[keys["treaty in force"]].sel(scenario=scenario).values > 0.5
    if not on.any():
        return
    start = t[np.argmax(on)]
    after = np.flatnonzero(~on & (t > start))
    end = t[after[0]] if after.size else t[-1]
    if "treaty breakdown time" in keys and "treaty broken" in keys:
        if float(ds[keys["treaty broken"]].sel(scenario=scenario).values[-1]) > 0.5:
            end = float(ds[keys["treaty breakdown time"]].sel(scenario=scenario).values[-1])
        if "treaty signing time" in keys:
            start = float(ds[keys["treaty signing time"]].sel(scenario=scenario).values[-1])
    panel.axvspan(start, end, color="0.9", linewidth=0, zorder=0)
    if after.size:
        panel.axvline(end, color="0.4", linestyle=":", linewidth=0.8, zorder=0)


def _lines(da: xr.DataArray, case: dict[str, Any]) -> list[tuple[str, np.ndarray]]:
    """The series to draw of one variable in one scenario (or run): ``[("", values)]`` for a
    scalar, one ``(element name, values)`` per element of a subscripted variable."""
    picked = da.sel(case)
    extra = [d for d in picked.dims if d != "time"]
    if not extra:
        return [("", picked.values)]
    picked = picked.transpose("time", *extra)
    out = []
    for element in itertools.product(*(picked[d].values for d in extra)):
        label = ", ".join(map(str, element))
        out.append((label, picked.sel(dict(zip(extra, element, strict=True))).values))
    return out


def _joined(*parts: str) -> str:
    return ", ".join(p for p in parts if p)


def _root_figure(ax: Axes) -> Figure:
    """The Figure `ax` is drawn in, to return beside the axes for saving or closing.

    An axes on a SubFigure (``fig.subfigures()``) belongs to the SubFigure, which cannot be
    saved; the drawing functions return, as they document, its root Figure.
    """
    fig = ax.figure
    return fig if isinstance(fig, Figure) else fig.figure


def _scenarios(ds: xr.Dataset, scenarios: Sequence[str] | None) -> list[str]:
    return [str(s) for s in ds["scenario"].values] if not scenarios else list(scenarios)


def time_series(
    ds: xr.Dataset,
    variables: Sequence[str],
    scenarios: Sequence[str] | None = None,
    ax: Axes | Sequence[Axes] | None = None,
    *,
    layout: str = "overlay",
) -> tuple[Figure, list[Axes]]:
    """Variables against time.

    Parameters
    ----------
    ds : xarray.Dataset
        Results with dims ``(scenario, time)``.
    variables : sequence of str
        Model names (or Dataset keys) of the variables.
    scenarios : sequence of str, optional
        Scenarios to draw; all by default.
    ax : Axes or sequence of Axes, optional
        One axes per panel; a new figure when omitted.
    layout : {"overlay", "small_multiples"}
        ``"overlay"``: a panel per variable with the scenarios overlaid.
        ``"small_multiples"``: a panel per scenario with the variables overlaid
        (variables must share units to be read on one axis).

    Returns
    -------
    (Figure, list of Axes)
    """
    names = _scenarios(ds, scenarios)
    arrays = [find_variable(ds, v) for v in variables]
    if layout not in TIME_SERIES_LAYOUTS:
        msg = f"unknown layout {layout!r} (allowed: {', '.join(TIME_SERIES_LAYOUTS)})"
        raise ValueError(msg)
    panels = len(arrays) if layout == "overlay" else len(names)
    if ax is None:
        ncols = 1 if layout == "overlay" or panels == 1 else 2
        nrows = -(-panels // ncols)
        width = SINGLE_COLUMN if ncols == 1 else DOUBLE_COLUMN
        fig, axes_arr = plt.subplots(
            nrows, ncols, sharex=True, squeeze=False, figsize=(width, 0.5 + 1.7 * nrows), layout="constrained"
        )
        axes = list(axes_arr.ravel())
        for extra in axes[panels:]:
            extra.set_visible(False)
        axes = axes[:panels]
    else:
        axes = [ax] if isinstance(ax, Axes) else list(ax)
        fig = _root_figure(axes[0])
    t = ds["time"].values
    # A subscripted variable is a line per element, labelled with the element's name.
    if layout == "overlay":
        for panel, da in zip(axes, arrays, strict=True):
            if len(names) == 1:
                _treaty_marks(panel, ds, names[0])
            for scenario in names:
                for element, values in _lines(da, {"scenario": scenario}):
                    label = element if element and len(names) == 1 else _joined(scenario, element)
                    panel.plot(t, values, label=label)
            panel.set_ylabel(axis_label(da))
    else:
        units = {da.attrs.get("units", "") for da in arrays}
        ylabel = _with_units("value", units.pop()) if len(units) == 1 else "value"
        for panel, scenario in zip(axes, names, strict=True):
            _treaty_marks(panel, ds, scenario)
            for da in arrays:
                name = da.attrs.get("long_name", da.name)
                for element, values in _lines(da, {"scenario": scenario}):
                    label = element if element and len(arrays) == 1 else f"{name}[{element}]" if element else name
                    panel.plot(t, values, label=label)
            panel.set_title(_scenario_label(ds, scenario, 40))
            panel.set_ylabel(ylabel)
    ncols = axes[0].get_gridspec().ncols if axes[0].get_gridspec() is not None else 1
    for i, panel in enumerate(axes):
        if i + ncols >= len(axes):  # bottom panel of its column
            panel.set_xlabel(axis_label(ds["time"]))
    handles, labels = axes[0].get_legend_handles_labels()
    if ax is None and panels > 1:
        fig.legend(handles, labels, loc="outside lower center", ncols=min(len(labels), 4))
    else:
        axes[0].legend(loc="best")
    return fig, axes


TIME_SERIES_LAYOUTS = FIGURE_KINDS["time_series"].layouts


def phase_portrait(
    ds: xr.Dataset,
    x: str,
    y: str,
    scenarios: Sequence[str] | None = None,
    ax: Axes | Sequence[Axes] | None = None,
) -> tuple[Figure, list[Axes]]:
    """Trajectories in the plane of two stocks, one panel per scenario.

    For Richardson's model each panel also shows the vector field, the two
    nullclines (where ``dx/dt = 0`` and ``dy/dt = 0``) and the equilibrium,
    filled when stable and open when not.

    Parameters
    ----------
    ds : xarray.Dataset
        Results with dims ``(scenario, time)``.
    x, y : str
        Model names (or keys) of the variables on the horizontal and vertical axes.
    scenarios : sequence of str, optional
        Scenarios to draw, a panel each; all by default.
    ax : Axes or sequence of Axes, optional
        One axes per scenario; new figure when omitted.

    Returns
    -------
    (Figure, list of Axes)
    """
    names = _scenarios(ds, scenarios)
    if ax is None:
        ncols = min(len(names), 2)
        nrows = -(-len(names) // ncols)
        width = SINGLE_COLUMN if ncols == 1 else DOUBLE_COLUMN
        fig, axes_arr = plt.subplots(
            nrows, ncols, squeeze=False, figsize=(width, 0.5 + 2.6 * nrows), layout="constrained"
        )
        axes = list(axes_arr.ravel())
        for extra in axes[len(names) :]:
            extra.set_visible(False)
        axes = axes[: len(names)]
    else:
        axes = [ax] if isinstance(ax, Axes) else list(ax)
        fig = _root_figure(axes[0])
    dx, dy = find_variable(ds, x), find_variable(ds, y)
    for panel, scenario in zip(axes, names, strict=True):
        pairs = _phase_pairs(dx, dy, scenario)
        if pairs is not None:
            # Subscripted x and y: a trajectory per element (x[e] against y[e]), labelled by element.
            for element, xs, ys in pairs:
                ok = np.isfinite(xs) & np.isfinite(ys)
                (line,) = panel.plot(xs[ok], ys[ok], label=element)
                if ok.any():
                    panel.plot(xs[ok][0], ys[ok][0], marker="o", color=line.get_color(), linestyle="none")
            panel.set_xlabel(axis_label(dx))
            panel.set_ylabel(axis_label(dy))
            panel.set_title(scenario)
            continue
        xs, ys = dx.sel(scenario=scenario).values, dy.sel(scenario=scenario).values
        ok = np.isfinite(xs) & np.isfinite(ys)
        xs, ys = xs[ok], ys[ok]
        found = richardson_parameters(ds, scenario)
        points = [xs, ys]
        if found is not None:
            eq = found[0].equilibrium()
            if eq is not None and np.all(np.isfinite(eq)):
                points = [np.append(xs, eq[0]), np.append(ys, eq[1])]
        xlim, ylim = _limits(points[0]), _limits(points[1])
        if found is not None:
            _richardson_background(panel, found[0], xlim, ylim)
        panel.plot(xs, ys, color="0.1", linestyle="-", label="trajectory")
        if xs.size:
            panel.plot(xs[0], ys[0], marker="o", color="0.1", linestyle="none", label="start")
        panel.set_xlim(xlim)
        panel.set_ylim(ylim)
        panel.set_xlabel(axis_label(dx))
        panel.set_ylabel(axis_label(dy))
        panel.set_title(scenario)
    handles, labels = axes[0].get_legend_handles_labels()
    if ax is None:
        fig.legend(handles, labels, loc="outside lower center", ncols=3)
    else:
        axes[0].legend(loc="best")
    return fig, axes


def _phase_pairs(dx: xr.DataArray, dy: xr.DataArray, scenario: str) -> list[tuple[str, np.ndarray, np.ndarray]] | None:
    """Per-element (label, x, y) when either variable is subscripted, else None."""
    lx, ly = _lines(dx, {"scenario": scenario}), _lines(dy, {"scenario": scenario})
    if len(lx) == 1 and len(ly) == 1 and not lx[0][0] and not ly[0][0]:
        return None
    if len(lx) == 1:
        lx = [(e, lx[0][1]) for e, _ in ly]
    if len(ly) == 1:
        ly = [(e, ly[0][1]) for e, _ in lx]
    if [e for e, _ in lx] != [e for e, _ in ly]:
        msg = f"cannot pair the elements of {dx.name!r} and {dy.name!r} in a phase portrait"
        raise ValueError(msg)
    return [(e, xv, yv) for (e, xv), (_, yv) in zip(lx, ly, strict=True)]


def _limits(values: np.ndarray) -> tuple[float, float]:
    lo, hi = (float(values.min()), float(values.max())) if values.size else (0.0, 1.0)
    pad = 0.08 * (hi - lo) if hi > lo else max(abs(hi), 1.0) * 0.5
    return lo - pad, hi + pad


def _richardson_background(panel: Axes, model: Any, xlim: tuple[float, float], ylim: tuple[float, float]) -> None:
    gx, gy = np.meshgrid(np.linspace(*xlim, 15), np.linspace(*ylim, 15))
    u = model.k * gy - model.a * gx + model.g
    v = model.l * gx - model.b * gy + model.h
    norm = np.hypot(u, v)
    norm[norm == 0] = 1.0
    panel.quiver(gx, gy, u / norm, v / norm, color="0.75", angles="xy", pivot="mid", width=0.003)
    line = np.linspace(*xlim, 50)
    # dx/dt = 0: k*y = a*x - g; dy/dt = 0: b*y = l*x + h
    if model.k != 0:
        panel.plot(line, (model.a * line - model.g) / model.k, color="#0072B2", linestyle="--", label="dx/dt = 0")
    if model.b != 0:
        panel.plot(line, (model.l * line + model.h) / model.b, color="#D55E00", linestyle="-.", label="dy/dt = 0")
    eq = model.equilibrium()
    if eq is not None:
        stable = model.stability() == "stable"
        panel.plot(
            eq[0],
            eq[1],
            marker="o",
            markersize=5,
            linestyle="none",
            color="k",
            markerfacecolor="k" if stable else "white",
            label="stable equilibrium" if stable else "unstable equilibrium",
        )


def scenario_grid(
    ds: xr.Dataset,
    panels: Sequence[Sequence[str]],
    scenarios: Sequence[str] | None = None,
    ax: Sequence[Sequence[Axes]] | None = None,
) -> tuple[Figure, list[Axes]]:
    """A grid of time series: a row per scenario, a column per group of variables.

    Parameters
    ----------
    ds : xarray.Dataset
        Results with dims ``(scenario, time)``.
    panels : sequence of sequence of str
        Each inner sequence is drawn together in one column (e.g. a variable of
        both states); columns share their vertical axis across scenarios.
    scenarios : sequence of str, optional
        Scenarios, a row each; all by default.
    ax : 2-D sequence of Axes, optional
        ``ax[row][column]``; a new figure when omitted.

    Returns
    -------
    (Figure, list of Axes)
        Axes in row-major order.
    """
    names = _scenarios(ds, scenarios)
    if ax is None:
        fig, grid = plt.subplots(
            len(names),
            len(panels),
            sharex=True,
            sharey="col",
            squeeze=False,
            figsize=(DOUBLE_COLUMN, 0.6 + 1.05 * len(names)),
            layout="constrained",
        )
        rows = [list(r) for r in grid]
    else:
        rows = [list(r) for r in ax]
        fig = _root_figure(rows[0][0])
    t = ds["time"].values
    for r, scenario in enumerate(names):
        for c, group in enumerate(panels):
            panel = rows[r][c]
            _treaty_marks(panel, ds, scenario)
            for name in group:
                da = find_variable(ds, name)
                long_name = da.attrs.get("long_name", name)
                for element, values in _lines(da, {"scenario": scenario}):
                    panel.plot(t, values, label=f"{long_name}[{element}]" if element else long_name)
            if r == 0:
                units = {find_variable(ds, n).attrs.get("units", "") for n in group}
                title = _common_stem([find_variable(ds, n).attrs.get("long_name", n) for n in group])
                panel.set_title(_with_units(title, units.pop()) if len(units) == 1 and title else title)
            if c == 0:
                panel.set_ylabel(_scenario_label(ds, scenario), rotation=0, ha="right", va="center", fontsize=6)
            if r == len(names) - 1:
                panel.set_xlabel(axis_label(ds["time"]))
    handles, labels = rows[0][0].get_legend_handles_labels()
    if ax is None:
        # "hardware A" -> "A"; "arms[USA]" -> "USA": the legend names what differs within a column.
        short = [m.group(1) if (m := re.search(r"\[([^\[\]]*)\]$", lab)) else lab.split()[-1] for lab in labels]
        fig.legend(handles, short, loc="outside lower center", ncols=min(len(labels), 6))
    return fig, [a for r in rows for a in r]


def _common_stem(labels: Sequence[str]) -> str:
    # "hardware A", "hardware B" -> "hardware": the shared words label the column.
    words = [label.split() for label in labels]
    common = []
    for group in zip(*words, strict=False):
        if len(set(group)) != 1:
            break
        common.append(group[0])
    return " ".join(common) or " / ".join(labels)


def metric_bars(
    ds: xr.Dataset,
    metrics: Sequence[str],
    scenarios: Sequence[str] | None = None,
    ax: Axes | None = None,
    table: pd.DataFrame | None = None,
) -> tuple[Figure, list[Axes]]:
    """Metrics per scenario as grouped horizontal bars, values labelled.

    Undefined values are not drawn as zero: the bar is left out and its status
    (e.g. "no breakdown", "not regained") is written in its place.

    Parameters
    ----------
    ds : xarray.Dataset
        Results; the metrics are computed with :func:`armsdyn.compute_metrics`.
    metrics : sequence of str
        Columns of the metrics table, a bar each per scenario.
    scenarios : sequence of str, optional
        Scenarios, a group each; all by default.
    ax : Axes, optional
    table : pandas.DataFrame, optional
        The metrics table (one row per scenario); :func:`armsdyn.compute_metrics` of `ds` by
        default. ``metrics.csv`` of a run with ``[attribution]`` adds the attribution columns.

    Returns
    -------
    (Figure, list of Axes)
    """

    table = compute_metrics(ds) if table is None else table
    names = _scenarios(ds, scenarios)
    if ax is None:
        fig, ax = plt.subplots(figsize=(SINGLE_COLUMN, 0.6 + 0.22 * len(names) * len(metrics)), layout="constrained")
    else:
        fig = _root_figure(ax)
    height = 0.8 / len(metrics)
    y = np.arange(len(names))
    hatches = ["", "///", "...", "xx"]
    for m, metric in enumerate(metrics):
        values = table.loc[names, metric].to_numpy(dtype=float)
        pos = y - 0.4 + height * (m + 0.5)
        bars = ax.barh(
            pos,
            np.nan_to_num(values),
            height=height * 0.9,
            label=metric,
            hatch=hatches[m % len(hatches)],
            edgecolor="white",
            linewidth=0,
        )
        for bar, value, scenario in zip(bars, values, names, strict=True):
            if np.isfinite(value):
                ax.annotate(
                    _value_text(ds, metric, value),
                    (bar.get_width(), bar.get_y() + bar.get_height() / 2),
                    xytext=(2, 0),
                    textcoords="offset points",
                    va="center",
                    fontsize=6,
                )
            else:
                bar.set_visible(False)
                ax.annotate(
                    _status(table, metric, scenario),
                    (0, bar.get_y() + bar.get_height() / 2),
                    xytext=(2, 0),
                    textcoords="offset points",
                    va="center",
                    fontsize=6,
                    color="0.35",
                )
    ax.set_yticks(y, names)
    ax.invert_yaxis()
    ax.set_xlabel(_metric_label(ds, metrics))
    if len(metrics) > 1:
        ax.legend(loc="best")
    return fig, [ax]


_TIME_METRICS = ("breakout time", "mobilisation edge", "breakdown time", "treaty start")


def _value_text(ds: xr.Dataset, metric: str, value: float) -> str:
    """A metric's value with the digits it has: event times resolve to about a tenth of the time step."""
    step = float(ds.attrs.get("time_step", 0) or 0)
    if metric.startswith(_TIME_METRICS) and step > 0:
        return f"{value:.{max(0, int(np.ceil(-np.log10(step / 10))) - 1)}f}"
    return f"{value:.3g}"


def _status(table: Any, metric: str, scenario: str) -> str:
    state = metric.split()[-1]
    column = f"breakout status {state}"
    if metric.startswith(("breakout time", "mobilisation edge")) and column in table.columns:
        return str(table.loc[scenario, column])
    if "treaty status" in table.columns and table.loc[scenario, "treaty status"] == "no treaty":
        return "no treaty"
    return "undefined"


def _metric_label(ds: xr.Dataset, metrics: Sequence[str]) -> str:
    stem = _common_stem(list(metrics))
    units = ds["time"].attrs.get("units", "")
    if stem.startswith(_TIME_METRICS) and units:
        return f"{stem} ({units})"
    return stem


def metric_vs_parameter(
    ds: xr.Dataset,
    parameter: str,
    metrics: Sequence[str],
    scenarios: Sequence[str] | None = None,
    ax: Axes | None = None,
) -> tuple[Figure, list[Axes]]:
    """Metrics against the value of one parameter across scenarios.

    Infinite parameter values (e.g. a knowledge half-life that never decays)
    are drawn at the right edge of a logarithmic axis and labelled "∞".

    Parameters
    ----------
    ds : xarray.Dataset
        Results; scenarios differ in `parameter`.
    parameter : str
        Model name of a constant (a coordinate on ``scenario``).
    metrics : sequence of str
        Metric columns, a line each.
    scenarios : sequence of str, optional
        Scenarios to include; all by default.
    ax : Axes, optional

    Returns
    -------
    (Figure, list of Axes)
    """

    table = compute_metrics(ds)
    names = _scenarios(ds, scenarios)
    coord = parameter_values(ds, parameter)
    if coord is None:
        msg = f"no parameter {parameter!r} among the results' coordinates"
        raise KeyError(msg)
    x = coord.sel(scenario=names).values.astype(float)
    if ax is None:
        fig, ax = plt.subplots(layout="constrained")
    else:
        fig = _root_figure(ax)
    finite = x[np.isfinite(x)]
    log = finite.size > 0 and np.all(finite > 0) and finite.max() / finite.min() >= 10
    inf_at = (finite.max() * (4 if log else 1.25)) if finite.size else 1.0
    infinite = np.isposinf(x)
    order = np.argsort(np.where(infinite, np.inf, x))
    for metric in metrics:
        y = table.loc[names, metric].to_numpy(dtype=float)
        finite_order = [i for i in order if not infinite[i]]
        (line,) = ax.plot(x[finite_order], y[finite_order], marker="o", label=metric)
        if infinite.any():
            # Infinity is no point on the axis: a separate marker past a break, never joined by a line.
            ax.plot(np.full(infinite.sum(), inf_at), y[infinite], marker="D", linestyle="none", color=line.get_color())
    if log:
        ax.set_xscale("log")
    # Few scenarios: tick exactly the parameter values they ran with.
    ticks = sorted(set(finite.tolist()))
    labels = [f"{t:g}" for t in ticks]
    if np.isposinf(x).any():
        ticks.append(inf_at)
        labels.append("∞")
    ax.set_xticks(ticks, labels)
    ax.minorticks_off()
    if infinite.any() and finite.size:
        gap = np.sqrt(finite.max() * inf_at) if log else (finite.max() + inf_at) / 2
        ax.annotate("//", (gap, 0), xycoords=("data", "axes fraction"), ha="center", va="center", fontsize=8)
    ax.set_xlabel(axis_label(coord))
    ax.set_ylabel(_metric_label(ds, metrics))
    if len(metrics) > 1:
        ax.legend(loc="best")
    return fig, [ax]


def sensitivity_indices(indices: xr.Dataset, output: str, ax: Axes | None = None) -> tuple[Figure, list[Axes]]:
    """The indices of one output, drawn as the study's method calls for.

    ``oat``: a tornado chart (output at each parameter's low and high bound,
    widest swing on top); ``morris``: mu* against sigma, with mu*'s interval;
    ``sobol``: S1 and ST bars with their 95% intervals; ``latin`` and
    ``monte_carlo``: Spearman rank correlations with 95% intervals.

    Parameters
    ----------
    indices : xarray.Dataset
        From :func:`armsdyn.sensitivity.analyze`, dims ``(output, parameter)``.
    output : str
        Which output to draw.
    ax : Axes, optional

    Returns
    -------
    (Figure, list of Axes)
    """
    method = indices.attrs["method"]
    row = indices.sel(output=output)
    names = [str(p) for p in indices["parameter"].values]
    if ax is None:
        fig, ax = plt.subplots(figsize=(SINGLE_COLUMN, 0.8 + 0.25 * len(names)), layout="constrained")
    else:
        fig = _root_figure(ax)
    y = np.arange(len(names))
    if method == "oat":
        order = np.argsort(row["swing"].values)
        base = float(row["base"].values[0])
        low, high = row["at_low"].values[order], row["at_high"].values[order]
        ax.barh(y, low - base, left=base, color="#0072B2", label="parameter at low bound")
        ax.barh(
            y,
            high - base,
            left=base,
            color="#D55E00",
            hatch="///",
            edgecolor="white",
            linewidth=0,
            label="parameter at high bound",
        )
        ax.axvline(base, color="0.2", linewidth=0.6)
        ax.set_yticks(y, [names[i] for i in order])
        ax.set_xlabel(output)
        ax.legend(loc="best")
    elif method == "morris":
        mu_star, sigma, conf = row["mu_star"].values, row["sigma"].values, row["mu_star_conf"].values
        ax.errorbar(mu_star, sigma, xerr=conf, fmt="o", color="0.1", ecolor="0.6", capsize=2)
        for name, xv, yv in zip(names, mu_star, sigma, strict=True):
            ax.annotate(name, (xv, yv), xytext=(3, 3), textcoords="offset points", fontsize=6)
        ax.set_xlabel(f"μ* (mean |elementary effect|) of {output}")
        ax.set_ylabel("σ (spread of effects)")  # noqa: RUF001 - the Greek letter is meant
        ax.set_xlim(left=0)
        ax.set_ylim(bottom=0)
    elif method == "sobol":
        h = 0.38
        ax.barh(
            y - h / 2,
            row["S1"].values,
            height=h,
            xerr=row["S1_conf"].values,
            color="#0072B2",
            label="S1 (first order)",
            error_kw={"elinewidth": 0.6, "capsize": 2},
        )
        ax.barh(
            y + h / 2,
            row["ST"].values,
            height=h,
            xerr=row["ST_conf"].values,
            color="#D55E00",
            hatch="///",
            edgecolor="white",
            linewidth=0,
            label="ST (total)",
            error_kw={"elinewidth": 0.6, "capsize": 2},
        )
        ax.set_yticks(y, names)
        ax.invert_yaxis()
        ax.set_xlabel(f"Sobol index of {output}")
        ax.legend(loc="best")
    else:
        rho = row["spearman"].values
        err = np.vstack([rho - row["spearman_low"].values, row["spearman_high"].values - rho])
        # A perfectly monotone output has rho = 1 and an interval that collapses onto it, where
        # rounding can leave a bound a hair past rho: no error bar, rather than a negative one.
        err = np.clip(err, 0.0, None)
        ax.barh(y, rho, xerr=err, color="#0072B2", error_kw={"elinewidth": 0.6, "capsize": 2})
        ax.axvline(0, color="0.2", linewidth=0.6)
        ax.set_yticks(y, names)
        ax.invert_yaxis()
        ax.set_xlabel(f"Spearman rank correlation with {output}")
    return fig, [ax]


def fan_chart(
    ds: xr.Dataset, variable: str, percentiles: Sequence[float] = (5, 25, 50, 75, 95), ax: Axes | None = None
) -> tuple[Figure, list[Axes]]:
    """Percentile bands over time of one variable across the runs of an ensemble.

    Parameters
    ----------
    ds : xarray.Dataset
        An ensemble, dims ``(run, time)``.
    variable : str
        Model name (or key) of the variable.
    percentiles : sequence of float
        Symmetric about 50: the outer pairs shade wider bands, the median is a line.
    ax : Axes, optional

    Returns
    -------
    (Figure, list of Axes)
    """
    da = find_variable(ds, variable)
    if ax is None:
        fig, ax = plt.subplots(layout="constrained")
    else:
        fig = _root_figure(ax)
    t = ds["time"].values
    qs = list(percentiles)
    pairs = [(i, len(qs) - 1 - i) for i in range(len(qs) // 2)]
    case = da.dims[0]
    extra = [d for d in da.dims if d not in (case, "time")]
    elements = list(itertools.product(*(da[d].values for d in extra))) if extra else [()]
    colours = ["#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#F0E442"]
    for n, element in enumerate(elements):
        # A subscripted variable: bands and median per element, in its own colour, labelled by element.
        values = da.sel(dict(zip(extra, element, strict=True))).transpose(case, "time").values if extra else da.values
        name = ", ".join(map(str, element))
        colour = colours[n % len(colours)] if extra else "#0072B2"
        with np.errstate(invalid="ignore"):
            bands = np.nanpercentile(values, percentiles, axis=0)
        for depth, (lo, hi) in enumerate(pairs):
            ax.fill_between(
                t,
                bands[lo],
                bands[hi],
                color=colour,
                alpha=(0.18 + 0.2 * depth) / (2 if extra else 1),
                linewidth=0,
                label=f"{qs[lo]:g}-{qs[hi]:g}th percentile" if not extra else None,
            )
        if len(qs) % 2:
            ax.plot(t, bands[len(qs) // 2], color="0.1" if not extra else colour, label=name or "median")
    ax.set_xlabel(axis_label(ds["time"]))
    ax.set_ylabel(axis_label(da))
    ax.legend(loc="best")
    return fig, [ax]


def parameter_sweep(
    ensemble: xr.Dataset, output: str, parameters: Sequence[str], ax: Axes | None = None
) -> tuple[Figure, list[Axes]]:
    """An output of a grid study against one parameter (a line) or two (a heatmap with contours).

    Parameters
    ----------
    ensemble : xarray.Dataset
        A grid study's ensemble, dims ``(run, time)``, with the output per run as
        the data variable ``"output: <output>"`` and the parameters as coordinates.
    output : str
        The output's label.
    parameters : sequence of str
        One or two model names of sampled constants.
    ax : Axes, optional

    Returns
    -------
    (Figure, list of Axes)
    """

    values = ensemble[f"output: {output}"].values
    coords: list[xr.DataArray] = []
    for p in parameters:
        coord = parameter_values(ensemble, p)
        if coord is None:
            msg = f"the ensemble has no coordinate for one of {list(parameters)}"
            raise KeyError(msg)
        coords.append(coord)
    if ax is None:
        fig, ax = plt.subplots(layout="constrained")
    else:
        fig = _root_figure(ax)
    if len(parameters) == 1:
        x = coords[0].values
        order = np.argsort(x)
        ax.plot(x[order], values[order], marker="o")
        ax.set_xlabel(axis_label(coords[0]))
        ax.set_ylabel(output)
        return fig, [ax]
    xs, ys = np.unique(coords[0].values), np.unique(coords[1].values)
    grid = np.full((ys.size, xs.size), np.nan)
    grid[np.searchsorted(ys, coords[1].values), np.searchsorted(xs, coords[0].values)] = values
    mesh = ax.pcolormesh(xs, ys, grid, shading="nearest", cmap="viridis")
    if np.isfinite(grid).sum() >= 4 and xs.size > 1 and ys.size > 1:
        lines = ax.contour(xs, ys, grid, colors="white", linewidths=0.6)
        ax.clabel(lines, fontsize=6, fmt="%.3g")
    # On the (sub)figure holding ax, which is where the colour bar belongs.
    ax.figure.colorbar(mesh, ax=ax, label=output)
    # A log-uniform grid reads best on a log axis.
    if xs.min() > 0 and xs.max() / xs.min() >= 20:
        ax.set_xscale("log")
    if ys.min() > 0 and ys.max() / ys.min() >= 20:
        ax.set_yscale("log")
    ax.set_xlabel(axis_label(coords[0]))
    ax.set_ylabel(axis_label(coords[1]))
    return fig, [ax]


def _slug(text: str) -> str:
    # Output and variable names become file names: keep them portable.
    return re.sub(r"[^A-Za-z0-9]+", "_", str(text)).strip("_")[:80] or "figure"


def draw_study_figures(ensemble: xr.Dataset, indices: xr.Dataset, spec: Any, folder: Path) -> list[Path]:
    """Draw a sensitivity study's figures: indices per output and fan charts.

    Returns
    -------
    list of pathlib.Path
        The files written.
    """
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    jobs: list[tuple[str, Callable[[], tuple[Figure, list[Axes]]]]] = []
    if spec.method == "grid" and len(spec.parameters) <= 2:
        names = [p.name for p in spec.parameters]
        for output in indices["output"].values:
            jobs.append((f"sweep_{_slug(output)}", functools.partial(parameter_sweep, ensemble, str(output), names)))
    if spec.method != "grid":
        for output in indices["output"].values:
            jobs.append(
                (
                    f"sensitivity_{spec.method}_{_slug(output)}",
                    functools.partial(sensitivity_indices, indices, str(output)),
                )
            )
    for variable in spec.fan_variables:
        jobs.append((f"fan_chart_{_slug(variable)}", functools.partial(fan_chart, ensemble, variable)))
    # Two outputs may give the same slug, and a config's own figure may already
    # have the name: never overwrite, add a number instead (file systems may ignore case).
    taken = {re.sub(r"\.(pdf|svg|png|md)$", "", p.name, flags=re.IGNORECASE).casefold() for p in folder.iterdir()}
    unique = []
    for stem, draw in jobs:
        name, n = stem, 1
        while name.casefold() in taken:
            n += 1
            name = f"{stem}_{n}"
        taken.add(name.casefold())
        unique.append((name, draw))
    with paper_style():
        for stem, draw in unique:
            fig, _ = draw()
            try:
                written += save_figure(fig, folder / stem)
            finally:
                plt.close(fig)
    return written


#: How a loop's polarity is coloured: reinforcing warm, balancing cool, undetermined grey.
_POLARITY_COLOURS = {
    "R": ("#D55E00", "#E69F00", "#CC79A7", "#F0A37A", "#8C3B00", "#B8860B"),
    "B": ("#0072B2", "#56B4E9", "#009E73", "#7FB8DA", "#004B75", "#66C2A5"),
    "?": ("#777777", "#AAAAAA", "#555555", "#CCCCCC", "#999999", "#444444"),
}

#: The colour of the loops summed as "other loops": darker than a treaty's shading.
_OTHER_LOOPS = "0.62"

#: Loops drawn one by one in a loop dominance figure; the others are summed as "other loops".
DOMINANCE_TOP = 6

LOOP_DOMINANCE_LAYOUTS = FIGURE_KINDS["loop_dominance"].layouts


def _base_name(node: str) -> str:
    """A loop variable's model name without its element (``"hardware[A]"`` -> ``"hardware"``)."""
    return node.split("[", 1)[0]


def loop_dominance(
    loops: xr.Dataset,
    scenarios: Sequence[str] | None = None,
    variables: Sequence[str] = (),
    ax: Axes | Sequence[Axes] | None = None,
    *,
    layout: str = "stacked",
    results: xr.Dataset | None = None,
    top: int = DOMINANCE_TOP,
) -> tuple[Figure, list[Axes]]:
    """Relative loop scores over time, a panel per scenario (Loops That Matter; ``loops.nc``).

    Parameters
    ----------
    loops : xarray.Dataset
        From :func:`armsdyn.ltm.loop_dominance` (``relative_loop_score``, dims ``scenario, loop, time``).
    scenarios : sequence of str, optional
        Scenarios to draw; all by default.
    variables : sequence of str
        Only loops through any of these variables (model names; any element of a subscripted one).
    ax : Axes or sequence of Axes, optional
        One axes per scenario; a new figure when omitted.
    layout : {"stacked", "lines"}
        ``"stacked"``: reinforcing loops' shares stacked above zero, balancing loops' below, so the
        band heights are each loop's share of the loop activity. ``"lines"``: a line per loop.
    results : xarray.Dataset, optional
        The run's results, to shade the time a treaty is in force.
    top : int
        The loops drawn one by one: the `top` with the largest mean share over the scenarios drawn;
        the others are summed as "other loops".

    A single scenario is drawn at single-column width (3.5 in), several at double (7.2 in).

    Returns
    -------
    (Figure, list of Axes)
    """
    if layout not in LOOP_DOMINANCE_LAYOUTS:
        msg = f"unknown layout {layout!r} (allowed: {', '.join(LOOP_DOMINANCE_LAYOUTS)})"
        raise ValueError(msg)
    names = _scenarios(loops, scenarios)
    score = loops["relative_loop_score"]
    ids = [str(i) for i in loops["loop"].values]
    members = {i: str(v).split(" -> ") for i, v in zip(ids, loops["loop_variables"].values, strict=True)}
    if variables:
        wanted = set(variables)
        ids = [i for i in ids if any(_base_name(n) in wanted or n in wanted for n in members[i])]
    if not ids:
        msg = f"no loop passes through {', '.join(variables)} (loops.nc holds {loops.sizes['loop']})"
        raise ConfigError(msg)
    picked = score.sel(loop=ids, scenario=names)
    ranking = abs(picked).mean(("scenario", "time")).values
    order = [ids[k] for k in np.argsort(-ranking, kind="stable")]
    shown, rest = order[:top], order[top:]
    polarity = dict(zip([str(i) for i in loops["loop"].values], map(str, loops["polarity"].values), strict=True))
    used = {"R": 0, "B": 0, "?": 0}
    colours = {}
    for i in shown:
        palette = _POLARITY_COLOURS[polarity[i]]
        colours[i] = palette[used[polarity[i]] % len(palette)]
        used[polarity[i]] += 1
    # One scenario fits a journal column (the legend below it in one column); more take the page.
    narrow = len(names) == 1
    width = SINGLE_COLUMN if narrow else DOUBLE_COLUMN
    if ax is None:
        fig, axes_arr = plt.subplots(
            len(names),
            1,
            sharex=True,
            squeeze=False,
            figsize=(width, 0.9 + 1.5 * len(names) + (0.9 if narrow else 0.0)),
            layout="constrained",
        )
        axes = list(axes_arr.ravel())
    else:
        axes = [ax] if isinstance(ax, Axes) else list(ax)
        fig = _root_figure(axes[0])
    # The first saved time has no score (no earlier step to compare with): start after it.
    t = loops["time"].values[1:]
    picked = picked.isel(time=slice(1, None))
    for panel, scenario in zip(axes, names, strict=True):
        if results is not None and "scenario" in results.dims and scenario in results["scenario"].values:
            _treaty_marks(panel, results, scenario)
        data = picked.sel(scenario=scenario)
        series = [data.sel(loop=i).values for i in shown]
        other = data.sel(loop=rest).sum("loop").values if rest else None
        common = set.intersection(*(set(members[i]) for i in shown)) if len(shown) > 1 else set()
        labels = [_loop_label(i, members[i], polarity[i], common, 46 if narrow else 64) for i in shown]
        if layout == "stacked":
            pos = [np.clip(s, 0, None) for s in series] + ([np.clip(other, 0, None)] if other is not None else [])
            neg = [np.clip(s, None, 0) for s in series] + ([np.clip(other, None, 0)] if other is not None else [])
            cols = [colours[i] for i in shown] + ([_OTHER_LOOPS] if other is not None else [])
            panel.stackplot(t, *pos, colors=cols, labels=[*labels, *(["other loops"] if rest else [])], linewidth=0)
            panel.stackplot(t, *neg, colors=cols, linewidth=0)
            panel.axhline(0, color="0.3", linewidth=0.5)
        else:
            for values, label, i in zip(series, labels, shown, strict=True):
                panel.plot(t, values, color=colours[i], label=label)
            if other is not None:
                panel.plot(t, other, color=_OTHER_LOOPS, label="other loops")
            panel.axhline(0, color="0.3", linewidth=0.5)
        # Shares are per cycle partition: loops of two partitions stack beyond 1.
        low, high = panel.dataLim.y0, panel.dataLim.y1
        panel.set_ylim(min(-1.05, low * 1.05), max(1.05, high * 1.05))
        panel.set_ylabel("relative loop score")
        titled = results if results is not None else loops
        panel.set_title(_scenario_label(titled, scenario, 48 if narrow else 80), loc="left")
    clock = results["time"] if results is not None and "time" in results.coords else loops["time"]
    axes[-1].set_xlabel(axis_label(clock))
    handles, labels = axes[0].get_legend_handles_labels()
    if ax is None:
        fig.legend(handles, labels, loc="outside lower center", ncols=1 if narrow else 2)
    else:
        axes[0].legend(loc="best")
    return fig, axes


def _loop_label(loop_id: str, variables: Sequence[str], polarity: str, common: set[str], width: int = 64) -> str:
    """``"R1 (R): a → b → a"``; where the loops drawn share variables, only what sets this one apart."""
    distinct = [v for v in variables if v not in common]
    if common and distinct:
        text = f"{loop_id} ({polarity}, {len(variables)} variables) via {', '.join(distinct)}"
    else:
        text = f"{loop_id} ({polarity}): {' → '.join([*variables, variables[0]])}"
    return text if len(text) <= width else text[: width - 1] + "…"


def attribution_shares(
    loops: xr.Dataset,
    scenarios: Sequence[str] | None = None,
    stocks: Sequence[str] = (),
    ax: Axes | Sequence[Axes] | None = None,
) -> tuple[Figure, list[Axes]]:
    """Each loop group's share of a stock's change, as stacked bars per scenario (``loops.nc``).

    Parameters
    ----------
    loops : xarray.Dataset
        From :func:`armsdyn.attribution.attribute` (``attribution_share``, dims ``scenario,
        loop_group, attributed``).
    scenarios : sequence of str, optional
        Scenarios to draw (a bar each, top to bottom); all by default.
    stocks : sequence of str
        The stock elements drawn, a panel each (``"effective power[A]"``; a subscripted stock's
        name draws every element); all by default.
    ax : Axes or sequence of Axes, optional
        One axes per stock element; a new figure when omitted.

    Returns
    -------
    (Figure, list of Axes)
        Positive shares stack right of zero, negative ones left, so each bar's net length is 1
        (the whole change); ``other`` (what no group explains) is grey.
    """
    names = _scenarios(loops, scenarios)
    every = [str(s) for s in loops["attributed"].values]
    drawn = [s for s in every if not stocks or s in stocks or _base_name(s) in stocks]
    if not drawn:
        msg = f"loops.nc attributes none of {', '.join(stocks)} (it holds {', '.join(every)})"
        raise ConfigError(msg)
    groups = [str(g) for g in loops["loop_group"].values]
    palette = ["#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9"]
    colours = {g: ("0.62" if g == groups[-1] else palette[i % len(palette)]) for i, g in enumerate(groups)}
    if ax is None:
        width = SINGLE_COLUMN if len(drawn) == 1 else DOUBLE_COLUMN
        fig, axes_arr = plt.subplots(
            1,
            len(drawn),
            sharey=True,
            squeeze=False,
            figsize=(width, 0.9 + 0.28 * len(names)),
            layout="constrained",
        )
        axes = list(axes_arr.ravel())
    else:
        axes = [ax] if isinstance(ax, Axes) else list(ax)
        fig = _root_figure(axes[0])
    rows = np.arange(len(names))[::-1]
    start, end = loops.attrs.get("window_start", np.nan), loops.attrs.get("window_end", np.nan)
    window = f"{start:g} to {end:g}"
    for panel, stock in zip(axes, drawn, strict=True):
        share = loops["attribution_share"].sel(attributed=stock, scenario=names).transpose("scenario", "loop_group")
        values = np.nan_to_num(share.values)
        right = np.zeros(len(names))
        left = np.zeros(len(names))
        for j, group in enumerate(groups):
            v = values[:, j]
            pos, neg = np.clip(v, 0, None), np.clip(v, None, 0)
            panel.barh(rows, pos, left=right, color=colours[group], label=group, height=0.7)
            panel.barh(rows, neg, left=left, color=colours[group], height=0.7)
            right, left = right + pos, left + neg
        panel.axvline(0, color="0.3", linewidth=0.5)
        panel.axvline(1, color="0.3", linewidth=0.5, linestyle=":")
        panel.set_title(stock, loc="left")
        panel.set_xlabel(f"share of the change from {window}")
        panel.set_yticks(rows, names)
    handles, labels = axes[0].get_legend_handles_labels()
    if ax is None:
        fig.legend(handles, labels, loc="outside lower center", ncols=min(len(labels), 3))
    else:
        axes[0].legend(loc="best")
    return fig, axes


def model_diagram(
    model: str | Path,
    variables: Sequence[str] = (),
    ax: Axes | None = None,
) -> tuple[Figure, list[Axes]]:
    """A causal-loop diagram of a model: its variables and links, with each link's polarity.

    Stocks are boxed, flows have a rounded box, auxiliaries are plain names; an arrow is a link
    (an equation reading a variable; a stock's flows point into it), labelled ``+`` or minus by its
    polarity over the model file's run (``?`` where it is mixed or never acts) and drawn dark when
    it closes a feedback loop, light when not. The diagram and its layout (networkx's Kamada-Kawai,
    deterministic) are :func:`armsdyn.diagram.causal_diagram` and :func:`armsdyn.diagram.diagram_layout`.

    Parameters
    ----------
    model : path
        The model file.
    variables : sequence of str
        The variables drawn (model names), with the links among them; by default every variable
        that is not a constant.
    ax : Axes, optional
        Where to draw; a new figure when omitted: one column wide (3.5 in) up to 12 variables,
        else two (7.2 in).

    Returns
    -------
    (Figure, list of Axes)
    """
    loaded = load_model(Path(model))
    diagram = causal_diagram(loaded, variables)
    position = diagram_layout(diagram)
    xy = np.array(list(position.values()))
    if ax is None:
        width = SINGLE_COLUMN if len(position) <= 12 else DOUBLE_COLUMN
        span = np.ptp(xy, axis=0) + 1e-9
        height = min(9.0, max(1.8, width * span[1] / span[0]))
        fig, ax = plt.subplots(figsize=(width, height), layout="constrained")
    else:
        fig = _root_figure(ax)
    links = list(diagram.edges(data=True))
    scale = float(np.median([np.linalg.norm(position[a] - position[b]) for a, b, _ in links])) if links else 1.0
    boxes = {
        "stock": {"boxstyle": "square,pad=0.3", "facecolor": "white", "edgecolor": "0.2", "linewidth": 0.8},
        "flow": {"boxstyle": "round,pad=0.25", "facecolor": "0.93", "edgecolor": "0.5", "linewidth": 0.5},
        # An auxiliary is a plain name, but its unseen box ends the arrows at the text and hides
        # any link passing behind it.
        "auxiliary": {"boxstyle": "square,pad=0.15", "facecolor": "white", "edgecolor": "none"},
    }
    texts = {}
    for name in diagram:
        kind = diagram.nodes[name]["kind"]
        bbox = boxes["stock" if kind in ("stock", "stateful") else "flow" if kind == "flow" else "auxiliary"]
        x, y = position[name]
        texts[name] = ax.text(x, y, textwrap.fill(name, 14), ha="center", va="center", fontsize=6, bbox=bbox, zorder=3)
    colours = {1: "#0072B2", -1: "#D55E00", 0: "0.45"}
    for source, target, link in links:
        sign, on_loop = link["sign"], link["on_loop"]
        arrow = FancyArrowPatch(
            posA=tuple(position[source]),
            posB=tuple(position[target]),
            patchA=texts[source].get_bbox_patch() or None,
            patchB=texts[target].get_bbox_patch() or None,
            shrinkA=6,
            shrinkB=6,
            connectionstyle="arc3,rad=0.15",
            arrowstyle="-|>",
            mutation_scale=7,
            color=colours[sign],
            alpha=1.0 if on_loop else 0.35,
            linewidth=0.8 if on_loop else 0.5,
            zorder=2,
        )
        ax.add_patch(arrow)
        a, b = np.asarray(position[source]), np.asarray(position[target])
        # The sign sits beside the arrow past its middle: on arc3's curve (control point off the
        # chord by rad * (dy, -dx)), nudged outwards.
        normal = np.array([(b - a)[1], -(b - a)[0]])
        control = (a + b) / 2 + 0.15 * normal
        s = 0.55
        on_curve = (1 - s) ** 2 * a + 2 * s * (1 - s) * control + s**2 * b
        where = on_curve + 0.08 * normal / max(float(np.linalg.norm(normal)), 1e-9) * scale
        ax.text(
            where[0],
            where[1],
            {1: "+", -1: "\N{MINUS SIGN}", 0: "?"}[sign],
            color=colours[sign],
            fontsize=7,
            ha="center",
            va="center",
            zorder=4,
            fontweight="bold",
        )
    pad = 0.08 * (np.ptp(xy, axis=0) + 1.0)
    ax.set_xlim(xy[:, 0].min() - pad[0], xy[:, 0].max() + pad[0])
    ax.set_ylim(xy[:, 1].min() - pad[1], xy[:, 1].max() + pad[1])
    ax.set_axis_off()
    ax.set_title(f"{Path(model).name} (faint links close no loop)", loc="left")
    return fig, [ax]


# The drawing functions FIGURE_KINDS (armsdyn.specs) names: each reads a config's FigureSpec.


def draw_time_series(ds: xr.Dataset, spec: FigureSpec) -> tuple[Figure, list[Axes]]:
    """Draw a ``time_series`` figure spec with :func:`time_series`.

    Parameters
    ----------
    ds : xarray.Dataset
        The results.
    spec : FigureSpec
        The figure: its variables, scenarios (empty: all) and layout.

    Returns
    -------
    tuple
        The figure and its axes.
    """
    return time_series(ds, spec.variables, spec.scenarios or None, layout=spec.layout or "overlay")


def draw_phase_portrait(ds: xr.Dataset, spec: FigureSpec) -> tuple[Figure, list[Axes]]:
    """Draw a ``phase_portrait`` figure spec with :func:`phase_portrait`.

    Parameters
    ----------
    ds : xarray.Dataset
        The results.
    spec : FigureSpec
        The figure: its two variables (x, then y) and scenarios (empty: all).

    Returns
    -------
    tuple
        The figure and its axes.

    Raises
    ------
    ValueError
        If the spec does not name exactly two variables.
    """
    if len(spec.variables) != 2:
        # A config is checked for this when read; a FigureSpec built in Python is not, and its
        # third variable would be taken for the scenarios drawn.
        msg = f"figure {spec.name!r}: a phase portrait takes exactly two variables (x, y), got {len(spec.variables)}"
        raise ValueError(msg)
    x, y = spec.variables
    return phase_portrait(ds, x, y, spec.scenarios or None)


def draw_scenario_grid(ds: xr.Dataset, spec: FigureSpec) -> tuple[Figure, list[Axes]]:
    """Draw a ``scenario_grid`` figure spec with :func:`scenario_grid`.

    Parameters
    ----------
    ds : xarray.Dataset
        The results.
    spec : FigureSpec
        The figure: its panels and scenarios (empty: all).

    Returns
    -------
    tuple
        The figure and its axes.
    """
    return scenario_grid(ds, spec.panels, spec.scenarios or None)


def draw_metric_bars(ds: xr.Dataset, spec: FigureSpec, loops: xr.Dataset | None = None) -> tuple[Figure, list[Axes]]:
    """Draw a ``metric_bars`` figure spec with :func:`metric_bars`.

    Parameters
    ----------
    ds : xarray.Dataset
        The results.
    spec : FigureSpec
        The figure: its metrics and scenarios (empty: all).
    loops : xarray.Dataset, optional
        The run's loop analysis, when the metrics include attribution columns
        (:func:`armsdyn.metrics.attribution_columns`), as ``metrics.csv`` has them.

    Returns
    -------
    tuple
        The figure and its axes.
    """
    return metric_bars(ds, spec.metrics, spec.scenarios or None, table=metrics_table(ds, loops))


def draw_metric_vs_parameter(ds: xr.Dataset, spec: FigureSpec) -> tuple[Figure, list[Axes]]:
    """Draw a ``metric_vs_parameter`` figure spec with :func:`metric_vs_parameter`.

    Parameters
    ----------
    ds : xarray.Dataset
        The results.
    spec : FigureSpec
        The figure: its parameter, metrics and scenarios (empty: all).

    Returns
    -------
    tuple
        The figure and its axes.
    """
    return metric_vs_parameter(ds, spec.parameter, spec.metrics, spec.scenarios or None)


def draw_loop_dominance(ds: xr.Dataset, spec: FigureSpec, loops: xr.Dataset) -> tuple[Figure, list[Axes]]:
    """Draw a ``loop_dominance`` figure spec with :func:`loop_dominance`.

    Parameters
    ----------
    ds : xarray.Dataset
        The results.
    spec : FigureSpec
        The figure: its stocks (variables), scenarios (empty: all) and layout.
    loops : xarray.Dataset
        The loop analysis (``loops.nc``).

    Returns
    -------
    tuple
        The figure and its axes.
    """
    return loop_dominance(loops, spec.scenarios or None, spec.variables, layout=spec.layout or "stacked", results=ds)


def draw_attribution_shares(ds: xr.Dataset, spec: FigureSpec, loops: xr.Dataset) -> tuple[Figure, list[Axes]]:
    """Draw a ``attribution_shares`` figure spec with :func:`attribution_shares`.

    Parameters
    ----------
    ds : xarray.Dataset
        The results.
    spec : FigureSpec
        The figure: its stocks (variables) and scenarios (empty: all).
    loops : xarray.Dataset
        The loop analysis (``loops.nc``).

    Returns
    -------
    tuple
        The figure and its axes.
    """
    return attribution_shares(loops, spec.scenarios or None, spec.variables)


def draw_model_diagram(ds: xr.Dataset, spec: FigureSpec) -> tuple[Figure, list[Axes]]:
    """Draw a ``model_diagram`` figure spec with :func:`model_diagram`.

    Parameters
    ----------
    ds : xarray.Dataset
        The results.
    spec : FigureSpec
        The figure: its model file and variables (empty: all but the constants).

    Returns
    -------
    tuple
        The figure and its axes.
    """
    return model_diagram(spec.model, spec.variables)


def figure_drawer(kind: str) -> Callable[..., tuple[Figure, list[Axes]]]:
    """The drawing function of figure kind `kind` (a key of :data:`armsdyn.specs.FIGURE_KINDS`), imported now.

    Parameters
    ----------
    kind : str
        A figure kind, e.g. ``"time_series"``.

    Returns
    -------
    callable
        ``(results Dataset, FigureSpec[, loops Dataset]) -> (Figure, list of Axes)``.
    """
    module, _, function = FIGURE_KINDS[kind].draw.partition(":")
    draw: Callable[..., tuple[Figure, list[Axes]]] = getattr(importlib.import_module(module), function)
    return draw


def save_figure(fig: Figure, stem: Path, formats: Sequence[str] = FORMATS) -> list[Path]:
    """Save a figure under ``stem.<format>`` for each format, deterministically.

    Creation dates and software versions are left out of the metadata, so the
    same results give byte-identical PDF and SVG files.
    """
    paths = []
    for fmt in formats:
        # Not with_suffix: a dot in a figure's name ("arms.x") is part of the name.
        path = stem.parent / f"{stem.name}.{fmt}"
        metadata: dict[str, Any] = {}
        if fmt == "pdf":
            metadata = {"CreationDate": None, "Producer": None, "Creator": None}
        elif fmt == "svg":
            metadata = {"Date": None, "Creator": None}
        elif fmt == "png":
            metadata = {"Software": None}
        fig.savefig(path, format=fmt, metadata=metadata)
        paths.append(path)
    return paths


def draw_figures(
    ds: xr.Dataset, specs: Sequence[FigureSpec], folder: Path, loops: xr.Dataset | None = None
) -> list[Path]:
    """Draw every figure a config asks for into `folder`: PDF, SVG, PNG and a caption sidecar.

    Parameters
    ----------
    ds : xarray.Dataset
        The results.
    specs : sequence of FigureSpec
        The figures.
    folder : pathlib.Path
        Where to write them (``figures/`` of a results folder, or a folder beside it).
    loops : xarray.Dataset, optional
        The loop analysis, for kinds that read it; by default ``loops.nc`` of the results folder
        `folder` is in (its parent), so a results folder's figures are redrawn from its files.

    Returns
    -------
    list of pathlib.Path
        The files written.

    Raises
    ------
    ResultsError
        When a figure reads the loop analysis and there is none.
    """
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    with paper_style():
        for spec in specs:
            draw = figure_drawer(spec.kind)
            if spec.reads_loops:
                loops = _loops_for(folder) if loops is None else loops
                fig, _ = draw(ds, spec, loops)
            else:
                fig, _ = draw(ds, spec)
            try:
                written += save_figure(fig, folder / spec.name)
            finally:
                plt.close(fig)
            caption = folder / f"{spec.name}.md"
            caption.write_text(caption_text(ds, spec), encoding="utf-8")
            written.append(caption)
    return written


def _loops_for(folder: Path) -> xr.Dataset:
    path = folder.parent / LOOPS_FILE
    if not path.is_file():
        msg = f"{path}: no loop analysis to draw (the config needs a [loop_dominance] table, and the run writes it)"
        raise ResultsError(msg)
    with xr.open_dataset(path) as opened:
        return opened.load()


def caption_text(ds: xr.Dataset, spec: FigureSpec) -> str:
    """A caption draft for a figure: model, scenarios and how they differ, time settings, config hash.

    Everything comes from the results Dataset, so a redrawn figure gets the same caption.
    """

    dim = case_dim(ds)
    names = list(spec.scenarios) or [str(s) for s in ds[dim].values]
    drawn = [*spec.variables, *(v for panel in spec.panels for v in panel), *spec.metrics]
    a = ds.attrs
    lines = [
        f"# {spec.name}",
        "",
        f"{spec.kind.replace('_', ' ').capitalize()} of {', '.join(drawn)}"
        + (f" against {spec.parameter}" if spec.parameter else "")
        + f", from model `{a.get('model', '?')}` (SHA-256 {str(a.get('model_sha256', '?'))[:12]}),"
        f" experiment `{a.get('experiment', '?')}`.",
        "",
        f"Simulated from {a.get('initial_time', '?')} to {a.get('final_time', '?')} {a.get('time_units', '')}"
        f" by Euler integration with time step {a.get('time_step', '?')}, saved every {a.get('saveper', '?')}"
        f" (PySD {_version('pysd')}).",
        "",
        "Scenarios, with the parameters that differ between them:",
        "",
    ]
    differing = []
    for key, coord in ds.coords.items():
        if coord.dims != (dim,) or key in (dim, "scenario_description") or coord.dtype.kind not in "fi":
            continue
        values = coord.sel({dim: names}).values
        if not np.all((values == values[0]) | (np.isnan(values) & np.isnan(values[0]))):
            differing.append((coord.attrs.get("long_name", key), coord.attrs.get("units", ""), values))
    for i, name in enumerate(names):
        settings = ", ".join(f"{label} = {values[i]:g}" for label, _, values in differing)
        description = ""
        if "scenario_description" in ds.coords:
            description = f": {ds['scenario_description'].sel({dim: name}).item()}"
        lines.append(f"- **{name}**{description}" + (f" ({settings})" if settings else ""))
    lines += ["", f"Config SHA-256: {a.get('config_sha256', '?')}.", ""]
    return "\n".join(lines)


def _version(dist: str) -> str:
    import importlib.metadata

    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"
