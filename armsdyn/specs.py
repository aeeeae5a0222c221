"""The specifications a config becomes: frozen dataclasses and the names they may hold.

A leaf of the package: every stage after the config reads these, and this
module imports nothing of armsdyn's but its errors, so any stage may import it
without pulling in another.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from armsdyn.errors import did_you_mean

if TYPE_CHECKING:
    from armsdyn.model import Model, TimeSettings

#: A parameter override: a constant, or a time series of (time, value) pairs.
ParameterValue = float | tuple[tuple[float, float], ...]

#: What may run an experiment's scenarios (``[experiment] engine``).
ENGINES = ("pysd", "compiled")

#: SALib distribution names and how many numbers each takes in ``bounds``.
DISTRIBUTIONS: dict[str, int] = {"unif": 2, "logunif": 2, "triang": 3, "norm": 2, "truncnorm": 4, "lognorm": 2}

#: How an output variable's time series becomes one number per run.
AGGREGATES = ("final", "mean", "max", "min", "at")


@dataclass(frozen=True)
class SampledParameter:
    """A model constant varied by a sensitivity study.

    Attributes
    ----------
    name : str
        Model name of the constant.
    bounds : tuple of float
        SALib's parameters of the distribution: ``[low, high]`` for ``unif`` and
        ``logunif``; ``[low, high, peak share]`` for ``triang``; ``[mean, sd]``
        for ``norm``; ``[low, high, mean, sd]`` for ``truncnorm``; ``[ln-mean,
        ln-sd]`` for ``lognorm``.
    distribution : str
        One of :data:`DISTRIBUTIONS`.
    also : tuple of str
        Other constants set to the same sampled value (e.g. the same parameter
        of the other state, to vary both together).
    """

    name: str
    bounds: tuple[float, ...]
    distribution: str = "unif"
    also: tuple[str, ...] = ()


@dataclass(frozen=True)
class Output:
    """One number per run that the study analyses.

    Attributes
    ----------
    name : str
        Label in the indices (the metric name, or ``"<variable> <aggregate>"``).
    metric : str
        A column of the metrics table (empty when `variable` is used).
    variable : str
        Model name of a saved variable (empty when `metric` is used).
    aggregate : str
        For a variable: one of :data:`AGGREGATES`.
    at : float
        For ``aggregate = "at"``: the time.
    """

    name: str
    metric: str = ""
    variable: str = ""
    aggregate: str = "final"
    at: float = float("nan")


@dataclass(frozen=True)
class SensitivitySpec:
    """A validated sensitivity study.

    Attributes
    ----------
    method : str
        One of :data:`METHODS`.
    parameters : tuple of SampledParameter
    outputs : tuple of Output
    samples : int
        SALib's ``N`` (base sample size; runs are a multiple of it for
        ``sobol`` and ``morris``); unused by ``oat`` and ``grid``.
    seed : int
        Seed for sampling and bootstrap intervals; the same seed gives the same study.
    levels : int
        Grid levels for ``morris``, ``oat`` and ``grid``.
    second_order : bool
        For ``sobol``: also estimate second-order indices.
    scenario : str
        The scenario whose parameters the samples start from.
    fan_variables : tuple of str
        Variables whose percentile bands over time are drawn (fan charts).
    variables : tuple of str
        Model variables the ensemble saves: what the outputs and fan charts need.
    """

    method: str
    parameters: tuple[SampledParameter, ...]
    outputs: tuple[Output, ...]
    samples: int = 256
    seed: int = 0
    levels: int = 4
    second_order: bool = False
    scenario: str = ""
    fan_variables: tuple[str, ...] = field(default=())
    variables: tuple[str, ...] = field(default=())

    def problem(self) -> dict[str, Any]:
        """The SALib problem dictionary."""
        return {
            "num_vars": len(self.parameters),
            "names": [p.name for p in self.parameters],
            "bounds": [list(p.bounds) for p in self.parameters],
            "dists": [p.distribution for p in self.parameters],
        }


@dataclass(frozen=True)
class Scenario:
    """One scenario: a name and the parameter overrides it runs with.

    Attributes
    ----------
    name : str
        Unique within the experiment; the label on the ``scenario`` dimension.
    description : str
        Free text for humans.
    parameters : mapping of str to ParameterValue
        The experiment's base overrides updated with the scenario's own.
    baseline : str or None
        Another scenario of the experiment that this one is compared with
        (config key ``baseline``); None when not given.
    """

    name: str
    description: str = ""
    parameters: Mapping[str, ParameterValue] = field(default_factory=dict)
    baseline: str | None = None

    def pysd_params(self) -> dict[str, float | pd.Series]:
        """The overrides in the form PySD's ``run(params=...)`` accepts."""
        out: dict[str, float | pd.Series] = {}
        for name, value in self.parameters.items():
            if isinstance(value, tuple):
                times, values = zip(*value, strict=True)
                out[name] = pd.Series(values, index=times, dtype=float)
            else:
                out[name] = value
        return out


@dataclass(frozen=True)
class FigureSpec:
    """A figure requested by a config.

    Attributes
    ----------
    kind : str
        One of :data:`FIGURE_KINDS`.
    name : str
        File name stem inside ``figures/``.
    variables : tuple of str
        Model names of the variables drawn (for a phase portrait: x then y).
    scenarios : tuple of str
        Scenarios drawn; empty means all.
    layout : str
        Arrangement of panels, for kinds that offer a choice (empty: the kind's default).
    panels : tuple of tuple of str
        For ``scenario_grid``: the variables drawn together in each column.
    metrics : tuple of str
        For metric figures: names of columns of the metrics table.
    parameter : str
        For ``metric_vs_parameter``: the model constant on the horizontal axis.
    model : str
        The model file, for ``model_diagram`` (set by the config; absolute).
    attribution_metrics : bool
        For ``metric_bars``: some metrics are loop-group attribution columns, which come from
        ``loops.nc`` (set by the config).
    """

    kind: str
    name: str
    variables: tuple[str, ...] = ()
    scenarios: tuple[str, ...] = ()
    layout: str = ""
    panels: tuple[tuple[str, ...], ...] = ()
    metrics: tuple[str, ...] = ()
    parameter: str = ""
    model: str = ""
    attribution_metrics: bool = False

    @property
    def reads_loops(self) -> bool:
        """Whether drawing this figure needs the run's loop analysis (``loops.nc``)."""
        return self.attribution_metrics or FIGURE_KINDS[self.kind].reads_loops


@dataclass(frozen=True)
class FigureKind:
    """A figure kind a config may ask for: an entry of :data:`FIGURE_KINDS`.

    Attributes
    ----------
    draw : str
        Its drawing function, ``"module:function"`` (as :data:`armsdyn.cli.COMMANDS` names a
        subcommand's), taking ``(results Dataset, FigureSpec)``, or for a kind that reads the loop
        analysis ``(results Dataset, FigureSpec, loops Dataset)``, and returning the figure and
        its axes; :func:`armsdyn.figures.figure_drawer` imports it when a figure is drawn.
    layouts : tuple of str
        The layouts it offers, the first the default.
    required : tuple of str
        The FigureSpec keys it needs (``variables``, ``panels``, ``metrics``, ``parameter``).
    optional : tuple of str
        The FigureSpec keys it may take besides.
    reads_loops : bool
        Whether it draws the loop analysis (``loops.nc``), which the config must then ask for.
    needs : str
        The config table that makes the run write what it draws (``"loop_dominance"`` or
        ``"attribution"``), for a kind that reads the loop analysis.
    reads_model : bool
        Whether it draws the model file's structure, not its results: its variables need not
        be saved, and the config gives it the model's path (``FigureSpec.model``).
    """

    draw: str
    layouts: tuple[str, ...]
    required: tuple[str, ...]
    optional: tuple[str, ...] = ()
    reads_loops: bool = False
    needs: str = ""
    reads_model: bool = False


#: Figure kinds, keyed as in configs: the one place each kind is defined. The config validator
#: reads the layouts and keys (without loading matplotlib: this module is light) and
#: :func:`armsdyn.figures.draw_figures` calls the drawing function; adding a kind is its drawing
#: function and one line here.
FIGURE_KINDS: dict[str, FigureKind] = {
    "time_series": FigureKind("armsdyn.figures:draw_time_series", ("overlay", "small_multiples"), ("variables",)),
    "phase_portrait": FigureKind("armsdyn.figures:draw_phase_portrait", ("small_multiples",), ("variables",)),
    "scenario_grid": FigureKind("armsdyn.figures:draw_scenario_grid", ("rows_are_scenarios",), ("panels",)),
    "metric_bars": FigureKind("armsdyn.figures:draw_metric_bars", ("grouped",), ("metrics",)),
    "metric_vs_parameter": FigureKind("armsdyn.figures:draw_metric_vs_parameter", ("line",), ("parameter", "metrics")),
    "loop_dominance": FigureKind(
        "armsdyn.figures:draw_loop_dominance",
        ("stacked", "lines"),
        (),
        ("variables",),
        reads_loops=True,
        needs="loop_dominance",
    ),
    "attribution_shares": FigureKind(
        "armsdyn.figures:draw_attribution_shares",
        ("stacked_bars",),
        (),
        ("variables",),
        reads_loops=True,
        needs="attribution",
    ),
    "model_diagram": FigureKind(
        "armsdyn.figures:draw_model_diagram", ("causal_loop",), (), ("variables",), reads_model=True
    ),
}


@dataclass(frozen=True)
class MetricsSpec:
    """Options of the metrics computed on an experiment's results.

    The share of power whose recovery ends a breakout is the model's own
    ``regain share`` constant: the model records the event at the integration step.

    Attributes
    ----------
    baseline : str
        Scenario without a treaty that treaty scenarios are compared with ("" for
        none), unless a scenario names its own ``baseline``.
    """

    baseline: str = ""


#: What a loop group's cut variables are: on its loops, or an exogenous driver on none.
LOOP_GROUP_KINDS = ("loops", "driver")


@dataclass(frozen=True)
class LoopGroup:
    """A named group of feedback loops (or an exogenous driver) whose share of a change is attributed.

    Attributes
    ----------
    name : str
        The label in ``loops.nc`` and the metrics (``"action-reaction"``).
    variables : tuple of str
        Model names of the auxiliaries or flows the group's loops pass through: the group is cut
        by holding them at their initial values (see :mod:`armsdyn.attribution`).
    kind : str
        One of :data:`LOOP_GROUP_KINDS`: ``"loops"`` (each variable lies on a feedback loop) or
        ``"driver"`` (an exogenous driver, on no loop).
    """

    name: str
    variables: tuple[str, ...]
    kind: str = "loops"


@dataclass(frozen=True)
class AttributionSpec:
    """Which stocks' change over which window to attribute to which loop groups (``[attribution]``).

    Attributes
    ----------
    stocks : tuple of str
        Model names of the stocks (every element of a subscripted one).
    groups : tuple of LoopGroup
        The groups, in config order.
    window : tuple of float, optional
        ``(start, end)`` times on the integration grid; None for the whole run.
    """

    stocks: tuple[str, ...]
    groups: tuple[LoopGroup, ...]
    window: tuple[float, float] | None = None


@dataclass(frozen=True)
class LoopDominanceSpec:
    """Loops That Matter scores of an experiment's scenarios (``[loop_dominance]``).

    Attributes
    ----------
    max_length : int or None
        Only loops of at most this many variables.
    limit : int or None
        At most this many loops.
    through : tuple of str
        Only loops through any of these variables (empty: every loop).
    """

    max_length: int | None = None
    limit: int | None = None
    through: tuple[str, ...] = ()


@dataclass(frozen=True)
class Experiment:
    """A fully validated experiment, ready to run.

    Attributes
    ----------
    name, description : str
        From ``[experiment]``; `name` names the results folder.
    config_path : pathlib.Path or None
        The config file (None for experiments built in Python).
    config_text : str
        The config file's text, recorded in the manifest.
    model : Model
        The loaded model.
    time : TimeSettings
        The model's time settings updated with ``[time]``.
    scenarios : tuple of Scenario
        In config order.
    variables : tuple of str
        Model names of the saved variables.
    figures : tuple of FigureSpec
        Figures to draw.
    metrics : MetricsSpec
        Options of the metrics table.
    sensitivity : SensitivitySpec or None
        The sensitivity study, when the config has a ``[sensitivity]`` table.
    engine : str
        What runs the scenarios: ``"compiled"`` (the default: the ensemble
        engine, all scenarios at once, time series and redrawn lookups
        included; PySD for a model the engine cannot compile) or ``"pysd"``
        (the reference, for checking).
    loop_dominance : LoopDominanceSpec or None
        Loops That Matter scores to write to ``loops.nc`` (``[loop_dominance]``).
    attribution : AttributionSpec or None
        The loop-group attribution to write to ``loops.nc`` and the metrics (``[attribution]``).
    """

    name: str
    description: str
    config_path: Path | None
    config_text: str
    model: Model
    time: TimeSettings
    scenarios: tuple[Scenario, ...]
    variables: tuple[str, ...]
    figures: tuple[FigureSpec, ...] = ()
    metrics: MetricsSpec = MetricsSpec()
    sensitivity: SensitivitySpec | None = None
    engine: str = "compiled"
    loop_dominance: LoopDominanceSpec | None = None
    attribution: AttributionSpec | None = None

    @property
    def config_sha256(self) -> str:
        """SHA-256 of the config text."""
        return hashlib.sha256(self.config_text.encode()).hexdigest()

    def scenario(self, name: str) -> Scenario:
        """The scenario called `name`."""
        for s in self.scenarios:
            if s.name == name:
                return s
        msg = f"no scenario {name!r}{did_you_mean(name, [s.name for s in self.scenarios])}"
        raise KeyError(msg)
