"""The interactive explorer: sliders over a config's parameters, re-simulated on every change.

``armsdyn explore CONFIG`` serves a page on 127.0.0.1 (a free port; BokehJS comes from the
server itself, so the page needs no network) with

- a scenario picker: the sliders take that scenario's values, and its run as configured is
  drawn dashed under the live one;
- a slider per scenario parameter (every key any scenario or the ``[sensitivity]`` study sets; a
  subscripted constant gets one slider per element). The range is the model's declared range
  (Vensim ``units [min, max]``); an open end is taken from the study's bounds, else from the
  config's values (twice the largest, down to zero or twice the most negative). Where a config
  sets a parameter to ``inf`` the slider's last notch stands for it (shown as ``∞``);
- a time-series panel per saved variable (a line per element of a subscripted one);
- the metrics table (:func:`armsdyn.metrics.compute_metrics`) of the current settings beside the
  scenario as configured, computed on results laid out exactly as :func:`armsdyn.run` lays them
  out (the current settings take the picked scenario's row, with its baselines);
- a button that writes the current settings as a new ``[[scenarios]]`` entry: shown for copying,
  and appended (atomically) to the ``.toml`` file named beside it.

Each change runs the compiled engine (:func:`armsdyn.ensemble.compile_model`; numba's kernel when
numba is installed, as ``pip install '.[explore]'`` does) on the one parameter set, a scenario's
time series and redrawn lookups included; a model the engine cannot compile runs with PySD instead.

In a Jupyter notebook the same view is :func:`explorer`'s layout, shown through Bokeh's notebook
server::

    from bokeh.io import output_notebook, show
    from bokeh.resources import INLINE
    from armsdyn.explore import explorer

    output_notebook(resources=INLINE)  # BokehJS from the package: no network needed
    show(lambda doc: doc.add_root(explorer("configs/richardson.toml")), notebook_url="http://localhost:8888")

``notebook_url`` is where the notebook server runs (Bokeh's server checks the page's origin).
Tested in Jupyter Notebook 7; JupyterLab needs the ``jupyter_bokeh`` extension.
"""

from __future__ import annotations

import html
import json
import math
import os
import socket
import tempfile
import time
import tomllib
import warnings
import webbrowser
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr
from bokeh.application import Application
from bokeh.application.handlers.function import FunctionHandler
from bokeh.document import Document
from bokeh.layouts import column, row
from bokeh.models import (
    Button,
    ColumnDataSource,
    CustomJSTickFormatter,
    Div,
    GridBox,
    LayoutDOM,
    MultiChoice,
    PreText,
    Select,
    Slider,
    TextInput,
)
from bokeh.palettes import Category10_10
from bokeh.plotting import figure
from bokeh.server.server import Server

from armsdyn.config import SAFE_NAME, SAFE_NAME_RULE, load_config
from armsdyn.ensemble import CompiledModel, TimeGrid, UnsupportedConstruct, compile_model
from armsdyn.errors import ArmsdynError, NumericalWarning
from armsdyn.experiment import run
from armsdyn.metrics import compute_metrics
from armsdyn.model import SimulationError, Variable
from armsdyn.richardson import N_PARAMETER_NAMES, PARAMETER_NAMES
from armsdyn.specs import Experiment, ParameterValue, Scenario

#: The label of the current settings' row in the explorer's results (never a valid scenario name).
CURRENT = "(current settings)"

#: Time-series figure kinds whose variables are shown first (the others can be switched on).
_SERIES_KINDS = ("time_series", "scenario_grid", "fan_chart")


class ExploreError(ArmsdynError, ValueError):
    """The explorer was given something it cannot use (a file to write, a scenario name)."""


@dataclass(frozen=True)
class Knob:
    """One slider: a constant, or one element of a subscripted one.

    Attributes
    ----------
    key : str
        The name configs use: ``"grievance g"`` or ``"adoption time[A]"``.
    variable : Variable
        The model constant.
    index : int or None
        The element's position in :meth:`Variable.elements` (None for a scalar).
    start, end, step : float
        The slider's range and step. With `infinite`, `end` stands for ``inf``.
    infinite : bool
        True when some config value of this key is ``inf``.
    """

    key: str
    variable: Variable
    index: int | None
    start: float
    end: float
    step: float
    infinite: bool = False

    @property
    def default(self) -> float:
        """The model file's value."""
        if self.index is None:
            return float(self.variable.default if self.variable.default is not None else math.nan)
        return float(self.variable.defaults[self.index])

    def to_slider(self, value: float) -> float:
        """The slider position of a parameter value."""
        return self.end if (self.infinite and value == math.inf) else float(min(max(value, self.start), self.end))

    def from_slider(self, position: float) -> float:
        """The parameter value of a slider position (the last notch is ``inf`` when `infinite`)."""
        if self.infinite and position >= self.end - self.step / 2:
            return math.inf
        # Snap to the grid: a browser slider reports positions with float noise.
        snapped = self.start + round((position - self.start) / self.step) * self.step
        return float(f"{snapped:.12g}")


def knobs(exp: Experiment) -> list[Knob]:
    """The sliders of an experiment, in the model's order of constants.

    Every constant any scenario or the sensitivity study sets, with every element of a
    subscripted one; every scalar constant of the model when the config sets none.
    """
    model = exp.model
    values: dict[str, list[float]] = {}
    unset: set[str] = set()  # keys some scenario leaves at the model's value
    for scenario in exp.scenarios:
        for key, value in scenario.parameters.items():
            if not isinstance(value, tuple):
                values.setdefault(key, []).append(value)
    for scenario in exp.scenarios:
        unset |= {key for key in values if key not in scenario.parameters}
    bounds: dict[str, tuple[float, ...]] = {}
    if exp.sensitivity is not None:
        for p in exp.sensitivity.parameters:
            if p.distribution == "unif":
                bounds[p.name] = tuple(p.bounds[:2])
    named = {key.split("[", 1)[0] for key in [*values, *bounds]}
    out = []
    for var in model.of_kind("constant"):
        if named and var.name not in named:
            continue
        keys: list[tuple[str, int | None]]
        if var.dims:
            keys = [(var.element_name(e), i) for i, e in enumerate(var.elements())]
        elif var.default is not None:
            keys = [(var.name, None)]
        else:
            continue
        for key, index in keys:
            knob = Knob(key, var, index, 0.0, 1.0, 1.0)
            # The model's value counts only where a scenario runs with it (a file's 1e9 for "never"
            # that every scenario replaces would stretch the slider out of use).
            used = [knob.default] if key in unset or key not in values else []
            given = [*values.get(key, []), *bounds.get(key, ()), *used]
            out.append(_ranged(knob, given, key in bounds))
    return out


def _ranged(knob: Knob, given: list[float], from_study: bool) -> Knob:
    """The knob with a range holding every value given (the model's declared range where it has one)."""
    finite = [v for v in given if math.isfinite(v)] or [0.0]
    lo, hi = knob.variable.limits
    if math.isnan(lo):
        lowest = min(finite)
        lo = lowest if from_study else (2 * lowest if lowest < 0 else 0.0)
    if math.isnan(hi):
        highest = max(finite)
        hi = highest if from_study else (2 * highest if highest > 0 else (abs(lo) if lo < 0 else 1.0))
    if hi <= lo:
        hi = lo + 1.0
    step = 10.0 ** math.floor(math.log10((hi - lo) / 100))
    # A config's own values must sit on the slider's grid, or picking a scenario would move them.
    for _ in range(6):
        if all(abs((v - lo) / step - round((v - lo) / step)) < 1e-6 for v in finite):
            break
        step /= 10
    infinite = any(v == math.inf for v in given)
    return replace(knob, start=lo, end=hi + step if infinite else hi, step=step, infinite=infinite)


@dataclass
class Outcome:
    """One run of the explorer: the current settings' results and metrics.

    Attributes
    ----------
    results : xarray.Dataset
        The current settings' row (labelled :data:`CURRENT`) and its baselines, laid out as
        :func:`armsdyn.run` lays out results.
    metrics : pandas.DataFrame
        :func:`armsdyn.compute_metrics` of `results`.
    simulate_ms, metrics_ms : float
        Time taken by the run and by the metrics, in milliseconds.
    engine : str
        What ran it.
    error : str
        A failed run's message ("" when it ran).
    """

    results: xr.Dataset
    metrics: pd.DataFrame
    simulate_ms: float
    metrics_ms: float
    engine: str
    error: str = ""


class Workbench:
    """What every explorer view of one experiment shares: the config, its sliders, the compiled
    model and every scenario run as configured.

    Parameters
    ----------
    experiment : Experiment or path-like
        A validated experiment, or a config file.
    """

    def __init__(self, experiment: Experiment | str | os.PathLike[str]) -> None:
        self.exp = experiment if isinstance(experiment, Experiment) else load_config(experiment)
        self.knobs = knobs(self.exp)
        self.compiled = _compiled(self.exp)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NumericalWarning)  # a fault shows in the metrics table
            self.configured = run(self.exp)
        self.configured_metrics = self.metrics(self.configured)
        self.grid = TimeGrid.from_settings(self.exp.time, self.exp.model.path)
        self.py_names = [self.exp.model.variable(v).py_name for v in self.exp.variables]
        self.unread = self._unread_coordinates()
        if self.compiled is not None:
            # Compile (or load) numba's kernel now, before any page waits on its first run.
            self._compiled_run(self.scenario_values(self.exp.scenarios[0].name))

    def _unread_coordinates(self) -> list[str]:
        """Coordinates the metrics do not read, dropped from the explorer's results to speed them.

        Every DataArray xarray hands the metric families carries every coordinate, which for
        the knowledge model's sixty constants triples the table's time. The constants the
        Richardson families read stay; the rest go only if the metrics of every configured
        scenario come out identical without them.
        """
        read = {*PARAMETER_NAMES.values(), *N_PARAMETER_NAMES.values()}
        unread = [
            v.py_name
            for v in self.exp.model.of_kind("constant")
            if v.name not in read and v.py_name in self.configured.coords and v.py_name not in self.configured.dims
        ]
        slim = self.configured.drop_vars(unread)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            same = compute_metrics(slim).equals(self.configured_metrics)
        return unread if same else []

    @property
    def engine(self) -> str:
        """The engine of slider updates."""
        return "pysd" if self.compiled is None else f"compiled ({self.compiled.backend})"

    def scenario_values(self, name: str) -> dict[str, float]:
        """Every slider's value in scenario `name` (the model's value where it sets none)."""
        scenario = self.exp.scenario(name)
        out = {}
        for knob in self.knobs:
            value = scenario.parameters.get(knob.key, knob.default)
            out[knob.key] = value if isinstance(value, float) else knob.default
        return out

    def fixed(self, name: str) -> dict[str, ParameterValue]:
        """Scenario `name`'s overrides that no slider moves (time series)."""
        scenario = self.exp.scenario(name)
        keys = {k.key for k in self.knobs}
        return {k: v for k, v in scenario.parameters.items() if k not in keys or isinstance(v, tuple)}

    def frame(self, name: str) -> xr.Dataset:
        """Results holding scenario `name` as configured, relabelled :data:`CURRENT`, and its baselines."""
        ds = self.configured
        labels = [str(s) for s in ds["scenario"].values]
        rows = [labels.index(name)]
        pending = [str(ds["baseline"].values[rows[0]])]
        while pending:
            label = pending.pop()
            if label and label in labels and labels.index(label) not in rows[1:]:
                rows.append(labels.index(label))
                pending.append(str(ds["baseline"].values[labels.index(label)]))
        out = ds.drop_vars(self.unread).isel(scenario=rows).copy(deep=True)
        return out.assign_coords(scenario=[CURRENT, *(labels[i] for i in rows[1:])])

    def simulate(self, frame: xr.Dataset, name: str, values: Mapping[str, float]) -> Outcome:
        """Run scenario `name` with the slider `values` into `frame`'s first row, and its metrics.

        :meth:`run_settings` then :meth:`metrics`.

        Parameters
        ----------
        frame : xarray.Dataset
            From :meth:`frame`; its first row is overwritten.
        name : str
            The scenario the settings start from (its other overrides are kept).
        values : mapping of str to float
            Each slider's parameter value, keyed as :attr:`Knob.key`.

        Returns
        -------
        Outcome
        """
        simulate_ms, engine, error = self.run_settings(frame, name, values)
        started = time.perf_counter()
        table = self.metrics(frame)
        return Outcome(frame, table, simulate_ms, (time.perf_counter() - started) * 1e3, engine, error)

    def run_settings(self, frame: xr.Dataset, name: str, values: Mapping[str, float]) -> tuple[float, str, str]:
        """Run scenario `name` with the slider `values` into `frame`'s first row.

        Returns
        -------
        tuple of (float, str, str)
            Milliseconds taken, the engine that ran it, and the error of a failed run ("").
        """
        fixed = self.fixed(name)
        params: dict[str, ParameterValue] = {**values, **fixed}  # a scenario's time series beats its slider
        started = time.perf_counter()
        engine, error = self.engine, ""
        try:
            if self.compiled is not None:
                out = self._compiled_run(params)
            else:
                engine = "pysd"
                out = self.exp.model.simulate(Scenario(CURRENT, parameters=params).pysd_params(), self.exp.time,
                                              self.exp.variables)  # fmt: skip
        except SimulationError as exc:
            error = str(exc)
            saved = zip(self.exp.variables, self.py_names, strict=True)
            out = {v: np.full(frame[py].shape[1:], np.nan) for v, py in saved}
        simulated = time.perf_counter()
        for var_name, py in zip(self.exp.variables, self.py_names, strict=True):
            frame[py].values[0] = out[var_name]
        for knob in self.knobs:
            py = knob.variable.py_name
            if knob.key in fixed:
                continue  # a time series: the coordinate keeps the NaN armsdyn.run gives it
            if py in frame.coords and py not in frame.data_vars:
                row = frame.coords[py].values[0]
                if knob.index is None:
                    frame.coords[py].values[0] = values[knob.key]
                else:
                    row.flat[knob.index] = values[knob.key]
        return (simulated - started) * 1e3, engine, error

    def metrics(self, frame: xr.Dataset) -> pd.DataFrame:
        """:func:`armsdyn.compute_metrics` of the explorer's results (one row per scenario)."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            return compute_metrics(frame)

    def _compiled_run(self, params: Mapping[str, ParameterValue]) -> dict[str, np.ndarray]:
        assert self.compiled is not None
        samples = {k: np.array([float(v)]) for k, v in params.items() if not isinstance(v, tuple)}
        lookups = {v.name for v in self.exp.model.of_kind("lookup")}
        timed = {k: [v] for k, v in params.items() if isinstance(v, tuple)}
        series = {k: v for k, v in timed.items() if self.exp.model.element(k)[0].name not in lookups}
        tables = {k: v for k, v in timed.items() if k not in series}
        values, n = self.compiled.normalise_inputs(samples, series, tables)
        arrays = self.compiled.simulate_arrays(values, max(n, 1), self.grid, self.py_names)
        # The engine puts the sample last: (time, *subscripts, run).
        return {name: a[..., 0] for name, a in zip(self.exp.variables, arrays, strict=True)}


def _compiled(exp: Experiment) -> CompiledModel | None:
    """The compiled engine for slider updates: numba's kernel when numba is there, else numpy."""
    if exp.engine != "compiled":
        return None
    try:
        model = compile_model(exp.model.path, backend="auto")
    except UnsupportedConstruct:
        return None
    # "auto" starts small runs on numpy while numba compiles; a slider wants the kernel at once.
    return model.with_backend("numba") if model.backend == "numba" else model


def format_value(value: Any) -> str:
    """A metric value as the table shows it (6 significant digits; blank for NaN)."""
    if isinstance(value, float | np.floating):
        return "" if math.isnan(value) else f"{value:.6g}"
    return str(value)


def toml_value(value: ParameterValue) -> str:
    """A parameter value as TOML text (``inf`` and time series included), exact to the last digit."""
    if isinstance(value, tuple):
        return "[" + ", ".join(f"[{toml_value(t)}, {toml_value(v)}]" for t, v in value) + "]"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return repr(float(value))


def scenario_toml(
    name: str, parameters: Mapping[str, ParameterValue], *, description: str = "", baseline: str | None = None
) -> str:
    """A ``[[scenarios]]`` entry as TOML text.

    Parameters
    ----------
    name : str
        The scenario's name (letters, digits, '.', '_', '-').
    parameters : mapping of str to ParameterValue
        Overrides keyed as configs key them (``"adoption time[A]"`` for one element).
    description : str
        Free text.
    baseline : str, optional
        The scenario it is compared with.

    Returns
    -------
    str
        The entry, ending in a newline.

    Raises
    ------
    ExploreError
        If `name` is not a safe scenario name.
    """
    if not SAFE_NAME.match(name):
        msg = f"scenario name {name!r} is not allowed: {SAFE_NAME_RULE}"
        raise ExploreError(msg)
    pairs = ", ".join(f"{json.dumps(k)} = {toml_value(v)}" for k, v in parameters.items())
    lines = ["[[scenarios]]", f"name = {json.dumps(name)}"]
    if description:
        lines.append(f"description = {json.dumps(description)}")
    if baseline:
        lines.append(f"baseline = {json.dumps(baseline)}")
    lines.append(f"parameters = {{ {pairs} }}" if pairs else "parameters = {}")
    return "\n".join(lines) + "\n"


def append_scenario(path: str | os.PathLike[str], entry: str) -> Path:
    """Append a ``[[scenarios]]`` entry to a TOML file, atomically (the file is whole or unchanged).

    Parameters
    ----------
    path : path-like
        A ``.toml`` file; created when missing.
    entry : str
        From :func:`scenario_toml`.

    Returns
    -------
    pathlib.Path
        The file written.

    Raises
    ------
    ExploreError
        If the file is not ``.toml``, is not valid TOML, already has a scenario of that name,
        or cannot be written.
    """
    target = Path(path).expanduser()
    if target.suffix.lower() != ".toml" or target.is_dir():
        msg = f"{target}: the scenario is written only to a .toml file; name one (e.g. my_scenarios.toml)"
        raise ExploreError(msg)
    try:
        old = target.read_text(encoding="utf-8") if target.exists() else ""
        existing = tomllib.loads(old)
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        msg = f"{target}: cannot add a scenario to it: {exc}"
        raise ExploreError(msg) from None
    name = tomllib.loads(entry)["scenarios"][0]["name"]
    taken = [s.get("name") for s in existing.get("scenarios", []) if isinstance(s, dict)]
    if name in taken:
        msg = f"{target}: already has a scenario named {name!r}; choose another name"
        raise ExploreError(msg)
    text = old + ("\n" if old and not old.endswith("\n") else "") + ("\n" if old else "") + entry
    tomllib.loads(text)  # the file stays valid TOML
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
            if target.exists():
                os.chmod(tmp, target.stat().st_mode & 0o7777)
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    except OSError as exc:
        msg = f"{target}: cannot write: {exc}"
        raise ExploreError(msg) from None
    return target


@dataclass
class _Series:
    """One time-series panel: its figure and data, and the columns of its lines."""

    figure: Any
    source: ColumnDataSource
    labels: list[str] = field(default_factory=list)
    reference: str | None = None  # the scenario whose configured run the dashed lines show
    stale: bool = True  # hidden panels are brought up to date when shown


class _View:
    """One page (or notebook cell) of the explorer: its widgets and the current settings."""

    def __init__(self, bench: Workbench) -> None:
        self.bench = bench
        exp = bench.exp
        self.name = exp.scenarios[0].name
        self.frame = bench.frame(self.name)
        self.pending = False
        self.picking = False
        self.generation = 0  # runs started; the table is computed for the latest only
        self.count = 0  # finished updates, shown on the page so a test can wait for the next
        self.times: list[tuple[float, float]] = []  # (panels, panels and table) in ms, per update
        self.picker = Select(title="Scenario", value=self.name, options=[s.name for s in exp.scenarios],
                             name="scenario", width=320)  # fmt: skip
        self.picker.on_change("value", lambda _a, _o, new: self.pick(new))
        values = bench.scenario_values(self.name)
        fixed = bench.fixed(self.name)
        self.sliders: dict[str, Slider] = {}
        for knob in bench.knobs:
            units = f" [{knob.variable.units}]" if knob.variable.units else ""
            decimals = max(0, -math.floor(math.log10(knob.step)))
            fmt: Any = "0[.]" + "0" * decimals if decimals else "0"
            if knob.infinite:
                fmt = CustomJSTickFormatter(
                    args={"end": knob.end, "half": knob.step / 2, "digits": decimals},
                    code="return tick >= end - half ? '∞' : tick.toFixed(digits)",
                )
            slider = Slider(title=f"{knob.key}{units}", start=knob.start, end=knob.end, step=knob.step,
                            value=knob.to_slider(values[knob.key]), format=fmt, name=f"slider:{knob.key}",
                            width=320, disabled=knob.key in fixed)  # fmt: skip
            slider.on_change("value", lambda _a, _o, _n: self.changed())
            self.sliders[knob.key] = slider
        self.series = self._panels()
        shown = _shown_variables(exp)
        self.panels = GridBox(children=[], spacing=4)
        self.chooser = MultiChoice(title="Panels", value=shown, options=list(exp.variables), width=320)
        self.chooser.on_change("value", lambda _a, _o, new: self._show(new))
        self._show(shown)
        # An HTML table rather than Bokeh's DataTable, which Bokeh 3.9 does not redraw when its data
        # change; each value cell carries the exact number as data-value.
        self.metrics_data: dict[str, list[Any]] = {}
        self.metrics_table = Div(text="", width=620, height=400, name="metrics_table")  # fixed: no relayout
        self.save_name = TextInput(title="New scenario name", value=f"{self.name}_explored", width=320,
                                   name="save_name")  # fmt: skip
        self.save_file = TextInput(title="Append to file (.toml; empty: only show the entry)", value="", width=320,
                                   name="save_file")  # fmt: skip
        self.save_button = Button(label="Save as scenario", button_type="primary", width=320, name="save")
        self.save_button.on_click(lambda _event: self.save())
        self.entry = PreText(text="", width=600, name="entry")
        self.status = Div(text="", width=600, name="status")
        self.timing = Div(text="", width=600, name="timing")
        title = Div(
            text=f"<h2 style='margin:0'>{_html(exp.name)}</h2><p style='margin:2px 0'>{_html(exp.description)}</p>"
            "<p style='margin:2px 0;color:#555'>Solid: current settings; dashed: the scenario as configured.</p>",
            width=900,
        )
        controls = column(self.picker, *self.sliders.values(), self.chooser, self.save_name, self.save_file,
                          self.save_button, width=340)  # fmt: skip
        grid = self.panels
        right = column(grid, self.timing, self.metrics_table, self.status, self.entry)
        self.layout = column(title, row(controls, right), name="armsdyn_explorer")
        self.update()

    def _panels(self) -> dict[str, _Series]:
        exp = self.bench.exp
        units = exp.time.units
        out = {}
        for var_name, py in zip(exp.variables, self.bench.py_names, strict=True):
            var = exp.model.variable(var_name)
            labels = [", ".join(e) for e in var.elements()] if var.dims else [var_name]
            title = var_name + (f" [{var.units}]" if var.units else "")
            fig = figure(height=210, width=330, title=title, x_axis_label=units, name=f"panel:{var_name}",
                         tools="pan,wheel_zoom,box_zoom,reset")  # fmt: skip
            n = self.frame["time"].size
            data: dict[str, Any] = {"time": self.frame["time"].values}
            for i in range(len(labels)):
                data[f"y{i}"] = np.zeros(n)
                data[f"r{i}"] = np.zeros(n)
            source = ColumnDataSource(data, name=f"series:{var_name}")
            for i, label in enumerate(labels):
                color = Category10_10[i % 10]
                legend = {"legend_label": label} if var.dims else {}
                fig.line("time", f"r{i}", source=source, line_dash="dashed", line_alpha=0.6, color=color)
                fig.line("time", f"y{i}", source=source, line_width=2, color=color, **legend)
            if var.dims:
                fig.legend.location = "top_left"
                fig.legend.label_text_font_size = "8pt"
                fig.legend.background_fill_alpha = 0.5
                fig.legend.padding = 2
                fig.legend.spacing = 0
                fig.legend.label_height = 10
                fig.legend.glyph_height = 10
            fig.title.text_font_size = "9pt"
            out[py] = _Series(fig, source, labels)
        return out

    def _show(self, names: Iterable[str]) -> None:
        chosen = set(names)
        shown = []
        for var_name, (py, series) in zip(self.bench.exp.variables, self.series.items(), strict=True):
            series.figure.visible = var_name in chosen
            if series.figure.visible:
                shown.append(series.figure)
                if series.stale and self.count:
                    self._push(py, series)
        # Two columns of the chosen panels only, so hiding one leaves no hole.
        self.panels.children = [(fig, i // 2, i % 2) for i, fig in enumerate(shown)]

    def _push(self, py: str, series: _Series) -> None:
        """Send a panel the current run (and the dashed reference, after a pick): changed columns only."""
        n = self.frame["time"].size
        current = self.frame[py].values[0].reshape(n, -1)
        patch: dict[str, Any] = {f"y{i}": current[:, i] for i in range(len(series.labels))}
        if series.reference != self.name:
            reference = self.bench.configured[py].sel(scenario=self.name).values.reshape(current.shape)
            patch |= {f"r{i}": reference[:, i] for i in range(len(series.labels))}
            patch["time"] = self.frame["time"].values
            series.reference = self.name
        series.source.data.update(patch)
        series.stale = False

    def values(self) -> dict[str, float]:
        """Each slider's parameter value."""
        return {k.key: k.from_slider(self.sliders[k.key].value) for k in self.bench.knobs}

    def pick(self, name: str) -> None:
        """Load scenario `name`: its values onto the sliders, its configured run as the reference."""
        self.name = name
        self.frame = self.bench.frame(name)
        self.save_name.value = f"{name}_explored"
        values = self.bench.scenario_values(name)
        fixed = self.bench.fixed(name)
        self.picking = True  # one update after all sliders moved, not one per slider
        try:
            for knob in self.bench.knobs:
                slider = self.sliders[knob.key]
                slider.value = knob.to_slider(values[knob.key])
                # A parameter this scenario gives as a time series keeps it; its slider rests.
                slider.disabled = knob.key in fixed
        finally:
            self.picking = False
        self.update()

    def changed(self) -> None:
        """A slider moved: update once the burst of changes is over (coalesced on the next tick)."""
        if self.picking or self.pending:
            return
        doc = self.layout.document
        if doc is None:
            self.update()
            return
        self.pending = True
        doc.add_next_tick_callback(self._tick)

    def _tick(self) -> None:
        self.pending = False
        self.update()

    def update(self) -> None:
        """Re-simulate the current settings: push the series at once, then the metrics table.

        In a served document the metrics follow on the next tick, so the panels reach the
        page before the (slower) table is computed.
        """
        started = time.perf_counter()
        simulate_ms, engine, error = self.bench.run_settings(self.frame, self.name, self.values())
        for py, series in self.series.items():
            series.stale = True
            if series.figure.visible:  # the page gets only what it shows
                self._push(py, series)
        self.status.text = f"<b>run failed:</b> {_html(error)}" if error else ""
        series_ms = (time.perf_counter() - started) * 1e3
        doc = self.layout.document if hasattr(self, "layout") else None
        self.generation += 1
        generation = self.generation
        finish = lambda: self._metrics(generation, started, series_ms, simulate_ms, engine)  # noqa: E731
        if doc is None:
            finish()
        else:
            doc.add_next_tick_callback(finish)

    def _metrics(self, generation: int, started: float, series_ms: float, simulate_ms: float, engine: str) -> None:
        if generation != self.generation:
            return  # the settings moved on while this waited: a drag keeps the panels live, the table follows
        begun = time.perf_counter()
        table = self.bench.metrics(self.frame)
        row_now = table.loc[CURRENT]
        row_then = self.bench.configured_metrics.loc[self.name]
        names = list(row_now.index)
        self.metrics_data = {
            "metric": names,
            "current": [row_now[n] for n in names],
            "configured": [row_then.get(n, math.nan) for n in names],
        }
        self.metrics_table.text = metrics_html(names, self.metrics_data["current"], self.metrics_data["configured"])
        done = time.perf_counter()
        self.count += 1
        self.times.append((series_ms, (done - started) * 1e3))
        self.timing.text = (
            f"<span style='color:#555' data-update='{self.count}'>update {self.count}: panels in {series_ms:.0f} ms "
            f"({engine} run {simulate_ms:.0f} ms), metrics table {(done - begun) * 1e3:.0f} ms later</span>"
        )

    def save(self) -> None:
        """Show the current settings as a ``[[scenarios]]`` entry; append it to the named file."""
        scenario = self.bench.exp.scenario(self.name)
        params = {**self.values(), **self.bench.fixed(self.name)}
        try:
            entry = scenario_toml(
                self.save_name.value.strip(),
                params,
                description=f"Saved from armsdyn explore, starting from scenario {self.name!r}",
                baseline=scenario.baseline,
            )
            self.entry.text = entry
            where = self.save_file.value.strip()
            if where:
                target = append_scenario(where, entry)
                self.status.text = f"appended scenario {_html(self.save_name.value.strip())!r} to {_html(str(target))}"
            else:
                self.status.text = "the entry below is ready to copy into a config's [[scenarios]]"
        except ExploreError as exc:
            self.status.text = f"<b>not saved:</b> {_html(str(exc))}"


def metrics_html(names: list[str], current: list[Any], configured: list[Any]) -> str:
    """The metrics table as HTML: a row per metric, the exact number of each cell in ``data-value``."""

    def cell(value: Any, column: str, metric: str) -> str:
        number = _number(value)
        exact = f" data-value='{number!r}'" if not math.isnan(number) else ""
        return f"<td data-column='{column}' data-metric='{html.escape(metric, quote=True)}'{exact}>" + (
            f"{html.escape(format_value(value))}</td>"
        )

    rows = "".join(
        f"<tr><td>{html.escape(n)}</td>{cell(a, 'current', n)}{cell(b, 'configured', n)}</tr>"
        for n, a, b in zip(names, current, configured, strict=True)
    )
    return (
        "<style>td, th {padding: 1px 10px 1px 4px; white-space: nowrap}</style>"
        "<div style='max-height:380px;overflow-y:auto;border:1px solid #ddd'>"
        "<table style='border-collapse:collapse;font-size:12px;width:100%'>"
        "<thead><tr style='position:sticky;top:0;background:#f4f4f4;text-align:left'>"
        "<th>metric</th><th>current settings</th><th>scenario as configured</th></tr></thead>"
        f"<tbody>{rows}</tbody></table></div>"
    )


def _number(value: Any) -> float:
    return float(value) if isinstance(value, int | float | np.number) and not isinstance(value, bool) else math.nan


def _html(text: str) -> str:
    return html.escape(text)


def _shown_variables(exp: Experiment) -> list[str]:
    """The variables the config's time-series figures draw, else the first six saved ones."""
    shown: list[str] = []
    for spec in exp.figures:
        if spec.kind in _SERIES_KINDS:
            for name in (*spec.variables, *(v for panel in spec.panels for v in panel)):
                base = name.split("[", 1)[0].strip()
                if base in exp.variables and base not in shown:
                    shown.append(base)
    return shown or list(exp.variables[:6])


def explorer(experiment: Experiment | Workbench | str | os.PathLike[str]) -> LayoutDOM:
    """The explorer's layout for one page or notebook cell.

    Its callbacks run in Python, so it needs a Bokeh server document: ``armsdyn explore``
    serves it; in a notebook, ``show(lambda doc: doc.add_root(explorer(config)))`` after
    ``bokeh.io.output_notebook()``.

    Parameters
    ----------
    experiment : Experiment, Workbench or path-like
        A config file, a validated experiment, or a :class:`Workbench` shared between views.

    Returns
    -------
    bokeh.models.LayoutDOM
        The page: scenario picker, sliders, time-series panels, metrics table, save button.
    """
    bench = experiment if isinstance(experiment, Workbench) else Workbench(experiment)
    return _View(bench).layout


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def serve(
    config: str | os.PathLike[str],
    *,
    port: int = 0,
    open_browser: bool = True,
    announce: Callable[[str], None] = print,
) -> None:
    """Serve the explorer of `config` on 127.0.0.1 until interrupted.

    Parameters
    ----------
    config : path-like
        The experiment config (validated before the server starts).
    port : int
        The port; 0 picks a free one.
    open_browser : bool
        Open the page in the default browser.
    announce : callable
        Called once with the page's URL when the server is ready.

    Raises
    ------
    ConfigError
        If the config is invalid.
    ExploreError
        If `port` is out of range or taken.
    """
    if not 0 <= port <= 65535:
        msg = f"--port {port}: give a port between 1 and 65535, or 0 for a free one"
        raise ExploreError(msg)
    if port:
        # Asked here, not of Bokeh: tornado leaks the socket of a failed bind.
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as tornado binds
            try:
                probe.bind(("127.0.0.1", port))
            except OSError as exc:
                msg = f"--port {port}: cannot listen on 127.0.0.1:{port} ({exc.strerror}); try another port or 0"
                raise ExploreError(msg) from None
    bench = Workbench(config)
    port = port or free_port()

    def make_document(doc: Document) -> None:
        doc.title = f"armsdyn explore: {bench.exp.name}"
        doc.add_root(explorer(bench))

    try:
        server = Server(
            {"/": Application(FunctionHandler(make_document))},
            address="127.0.0.1",
            port=port,
            allow_websocket_origin=[f"127.0.0.1:{port}", f"localhost:{port}"],
        )
    except OSError as exc:
        msg = f"--port {port}: cannot listen on 127.0.0.1:{port} ({exc.strerror}); try another port or 0"
        raise ExploreError(msg) from None
    server.start()
    url = f"http://127.0.0.1:{port}/"
    announce(url)
    if open_browser:
        server.io_loop.add_callback(webbrowser.open, url)
    try:
        server.io_loop.start()
    finally:
        server.stop()
