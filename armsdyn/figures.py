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

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import xarray as xr  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from armsdyn.config import FigureSpec  # noqa: E402
from armsdyn.metrics import richardson_parameters  # noqa: E402

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
    msg = f"no variable {name!r} in the results (have: {', '.join(str(d.attrs.get('long_name', k)) for k, d in ds.data_vars.items())})"
    raise KeyError(msg)


def _scenarios(ds: xr.Dataset, scenarios: Sequence[str] | None) -> list[str]:
    return [str(s) for s in ds["scenario"].values] if not scenarios else list(scenarios)


def time_series(
    ds: xr.Dataset,
    variables: Sequence[str],
    scenarios: Sequence[str] | None = None,
    ax: Axes | Sequence[Axes] | None = None,
) -> tuple[Figure, list[Axes]]:
    """Variables against time, one panel per variable, scenarios overlaid.

    Parameters
    ----------
    ds : xarray.Dataset
        Results with dims ``(scenario, time)``.
    variables : sequence of str
        Model names (or Dataset keys) of the variables, one panel each.
    scenarios : sequence of str, optional
        Scenarios to draw; all by default.
    ax : Axes or sequence of Axes, optional
        One axes per variable; new figure when omitted.

    Returns
    -------
    (Figure, list of Axes)
    """
    if ax is None:
        fig, axes_arr = plt.subplots(
            len(variables), 1, sharex=True, squeeze=False,
            figsize=(SINGLE_COLUMN, 0.4 + 1.6 * len(variables)),
        )
        axes = list(axes_arr[:, 0])
    else:
        axes = [ax] if isinstance(ax, Axes) else list(ax)
        fig = axes[0].figure
    for panel, name in zip(axes, variables, strict=True):
        da = _variable(ds, name)
        for scenario in _scenarios(ds, scenarios):
            panel.plot(ds["time"].values, da.sel(scenario=scenario).values, label=scenario)
        panel.set_ylabel(axis_label(da))
    axes[-1].set_xlabel(axis_label(ds["time"]))
    axes[0].legend(loc="best")
    return fig, axes


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
        fig, axes_arr = plt.subplots(nrows, ncols, squeeze=False, figsize=(width, 0.2 + 2.9 * nrows))
        axes = list(axes_arr.ravel())
        for extra in axes[len(names):]:
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
            eq[0], eq[1], marker="o", markersize=5, linestyle="none", color="k",
            markerfacecolor="k" if stable else "white",
            label="stable equilibrium" if stable else "unstable equilibrium",
        )


#: Figure kinds, keyed as in configs; each draws a FigureSpec from a Dataset.
FIGURE_KINDS: dict[str, Callable[[xr.Dataset, FigureSpec], tuple[Figure, list[Axes]]]] = {
    "time_series": lambda ds, spec: time_series(ds, spec.variables, spec.scenarios or None),
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
