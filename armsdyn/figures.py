"""Figures drawn from a results Dataset, in a style fit for journals.

Every plot function takes the Dataset (so figures can be redrawn from a saved
``results.nc`` without rerunning anything) and ``ax=None``, and returns the
figure and its axes. Axis labels come from each variable's ``long_name`` and
``units`` attrs.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # figures are files; never open a window

import matplotlib.pyplot as plt
import numpy as np
import xarray as xr
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from armsdyn.config import FigureSpec
from armsdyn.metrics import richardson_parameters

STYLE = Path(__file__).with_name("paper.mplstyle")
SINGLE_COLUMN = 3.5  # inches
DOUBLE_COLUMN = 7.2  # inches
FORMATS = ("pdf", "png")


@contextlib.contextmanager
def paper_style() -> Iterator[None]:
    """Context in which matplotlib uses armsdyn's bundled journal style."""
    with plt.style.context(STYLE):
        yield


def axis_label(da: xr.DataArray) -> str:
    """``"long_name (units)"`` for a variable, without empty parentheses."""
    name = da.attrs.get("long_name", da.name)
    units = da.attrs.get("units", "")
    return f"{name} ({units})" if units else str(name)


def _variable(ds: xr.Dataset, name: str) -> xr.DataArray:
    for key, da in ds.data_vars.items():
        if name in (key, da.attrs.get("long_name")):
            return da
    have = ", ".join(str(d.attrs.get("long_name", k)) for k, d in ds.data_vars.items())
    msg = f"no variable {name!r} in the results (have: {have})"
    raise KeyError(msg)


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
    arrays = [_variable(ds, v) for v in variables]
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
        fig = axes[0].figure
    t = ds["time"].values
    if layout == "overlay":
        for panel, da in zip(axes, arrays, strict=True):
            for scenario in names:
                panel.plot(t, da.sel(scenario=scenario).values, label=scenario)
            panel.set_ylabel(axis_label(da))
    else:
        units = {da.attrs.get("units", "") for da in arrays}
        ylabel = f"value ({units.pop()})" if len(units) == 1 else "value"
        for panel, scenario in zip(axes, names, strict=True):
            for da in arrays:
                panel.plot(t, da.sel(scenario=scenario).values, label=da.attrs.get("long_name", da.name))
            panel.set_title(scenario)
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


TIME_SERIES_LAYOUTS = ("overlay", "small_multiples")


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
        fig = axes[0].figure
    dx, dy = _variable(ds, x), _variable(ds, y)
    for panel, scenario in zip(axes, names, strict=True):
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


#: Figure kinds, keyed as in configs; each draws a FigureSpec from a Dataset.
FIGURE_KINDS: dict[str, Callable[[xr.Dataset, FigureSpec], tuple[Figure, list[Axes]]]] = {
    "time_series": lambda ds, spec: time_series(
        ds, spec.variables, spec.scenarios or None, layout=spec.layout or "overlay"
    ),
    "phase_portrait": lambda ds, spec: phase_portrait(ds, *spec.variables, spec.scenarios or None),
}


def save_figure(fig: Figure, stem: Path, formats: Sequence[str] = FORMATS) -> list[Path]:
    """Save a figure under ``stem.<format>`` for each format, deterministically.

    Creation dates and software versions are left out of the metadata, so the
    same results give byte-identical PDF and SVG files.
    """
    paths = []
    for fmt in formats:
        path = stem.with_suffix(f".{fmt}")
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


def draw_figures(ds: xr.Dataset, specs: Sequence[FigureSpec], folder: Path) -> list[Path]:
    """Draw every figure a config asks for into `folder`, as PDF and PNG.

    Returns
    -------
    list of pathlib.Path
        The files written.
    """
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    with paper_style():
        for spec in specs:
            fig, _ = FIGURE_KINDS[spec.kind](ds, spec)
            try:
                written += save_figure(fig, folder / spec.name)
            finally:
                plt.close(fig)
    return written
