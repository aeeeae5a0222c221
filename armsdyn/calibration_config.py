"""Calibration configs: read and validate the TOML file of a calibration.

See :mod:`armsdyn.calibration` for the file format and what a calibration does;
this module turns the file into a validated :class:`CalibrationSpec`, with every
problem reported like an experiment config's (file, key path, what, allowed).
"""

from __future__ import annotations

import copy
import hashlib
import math
import os
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from armsdyn import data as data_mod
from armsdyn.config import (
    Experiment,
    ParameterValue,
    Problems,
    Scenario,
    check_table,
    describe_input,
    parse_experiment_table,
    parse_parameters,
    parse_time,
    read_toml,
    unknown_name,
)
from armsdyn.errors import did_you_mean
from armsdyn.model import Model, TimeSettings
from armsdyn.richardson import N_PARAMETER_NAMES, PARAMETER_NAMES

METHODS = ("trajectory", "richardson_combined", "lagged", "bayes")
#: Estimators of the lagged (discrete-time) specification: the equations jointly or one by one.
ESTIMATORS = ("sur", "ols")
#: Forms of the data a lagged specification regresses: levels, or first differences.
TRANSFORMS = ("levels", "differenced")
#: Methods a ``[[specifications]]`` entry may use (their likelihoods can be ranked by AIC/BIC).
COMPARABLE_METHODS = ("trajectory", "lagged")
LOSSES = ("linear", "soft_l1", "huber")
ENGINES = ("compiled", "pysd")
#: Where ``method = "bayes"`` moves its walkers (see :func:`armsdyn.calibration.sample_posterior`).
COORDINATES = ("auto", "parameters", "modes")
DATA_KINDS = ("csv", "nmc", "sipri")


#: Keys of the tables of a calibration config that are not experiment-config tables.
_SCHEMA: dict[str, dict[str, str]] = {
    "": {
        "experiment": "table",
        "time": "table",
        "parameters": "table",
        "data": "table",
        "calibration": "table",
        "specifications": "array of tables",
    },
    "data": {
        "file": "string",
        "kind": "string",
        "columns": "table",
        "units": "string",
        "scale": "number",
        "years": "list of numbers",
        "time": "string",
        "series": "string",
        "value": "string",
        "variable": "string",
        "era_conversion": "number",
    },
    "calibration": {
        "method": "string",
        "loss": "string",
        "f_scale": "number",
        "bootstrap": "integer",
        "seed": "integer",
        "engine": "string",
        "estimator": "string",
        "transform": "string",
        "name": "string",
        "parameters": "table",
        "initial_values": "table",
        "walkers": "integer",
        "steps": "integer",
        "burn": "integer",
        "priors": "table",
        "coordinates": "string",
    },
    "prior": {"normal": "list of numbers"},
    "estimate": {"initial": "number", "bounds": "list of numbers"},
    "specification": {
        "name": "string",
        "method": "string",
        "estimator": "string",
        "transform": "string",
        "fix": "table",
        "data": "table",
    },
}


@dataclass(frozen=True)
class FittedParameter:
    """A model constant to estimate.

    Attributes
    ----------
    name : str
        The constant's model name.
    initial : float
        Starting guess of the optimiser.
    bounds : (float, float)
        Lower and upper bounds (``-inf``/``inf`` for none).
    stock : str
        For the initial value of a stock: the stock's name ("" otherwise).
    """

    name: str
    initial: float
    bounds: tuple[float, float] = (-math.inf, math.inf)
    stock: str = ""


@dataclass(frozen=True)
class DataSpec:
    """Where the observations come from; see the module docstring's ``[data]``."""

    file: Path
    kind: str
    columns: Mapping[str, str]
    units: str
    scale: float = 1.0
    years: tuple[float, float] | None = None
    options: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class CalibrationSpec:
    """A validated calibration config.

    Attributes
    ----------
    name, description : str
        From ``[experiment]``.
    config_path : pathlib.Path or None
        The config file.
    config_text : str
        Its text, recorded in the manifest.
    model : Model
        The model calibrated.
    time : TimeSettings
        Simulation time settings.
    fixed : mapping of str to ParameterValue
        Fixed overrides from ``[parameters]`` (and initial values fixed at the data).
    data : DataSpec
        The data source.
    observations : pandas.DataFrame
        Indexed by time, one column per model variable (model names), in `data.units`.
    method, loss, engine : str
        Estimator, loss function and simulation engine.
    parameters : tuple of FittedParameter
        Constants to fit, in order.
    f_scale : float
        Soft margin of a robust loss.
    bootstrap : int
        Residual-bootstrap replicates (0 for none).
    seed : int
        Seed of the bootstrap.
    estimator : {"sur", "ols"}
        For ``method = "lagged"``: both states' equations fitted jointly (seemingly
        unrelated regression) or one by one.
    transform : {"levels", "differenced"}
        For ``method = "lagged"``: regress the data's levels or their first differences.
    label : str
        The specification's name in a comparison (``[calibration] name``, or the
        entry's ``name`` in ``[[specifications]]``).
    specifications : tuple of CalibrationSpec
        Further specifications of the same question, fitted and ranked beside
        this one by AIC/BIC (see :func:`armsdyn.calibration.compare_specifications`).
    walkers, steps, burn : int
        For ``method = "bayes"``: emcee's walkers (0: the default, see
        :func:`armsdyn.calibration.sample_posterior`), steps per walker, and the
        steps discarded as burn-in.
    priors : mapping of str to (float, float)
        For ``method = "bayes"``: normal priors (mean, sd) by fitted name, truncated
        to the bounds; a fitted quantity without one has a uniform prior on its bounds.
    coordinates : {"auto", "parameters", "modes"}
        For ``method = "bayes"``: where the walkers move (the parameters themselves,
        or Richardson's two-state modes; ``"auto"``: the modes when they apply and the
        least-squares fit lies on a ridge).
    """

    name: str
    description: str
    config_path: Path | None
    config_text: str
    model: Model
    time: TimeSettings
    fixed: Mapping[str, ParameterValue]
    data: DataSpec
    observations: pd.DataFrame
    method: str = "trajectory"
    loss: str = "linear"
    engine: str = "compiled"
    parameters: tuple[FittedParameter, ...] = ()
    f_scale: float = 1.0
    bootstrap: int = 0
    seed: int = 0
    estimator: str = "sur"
    transform: str = "levels"
    label: str = ""
    specifications: tuple[CalibrationSpec, ...] = ()
    walkers: int = 0
    steps: int = 2000
    burn: int = 1000
    priors: Mapping[str, tuple[float, float]] = field(default_factory=dict)
    coordinates: str = "auto"

    @property
    def config_sha256(self) -> str:
        """SHA-256 of the config text."""
        return hashlib.sha256(self.config_text.encode()).hexdigest()

    def experiment(self) -> Experiment:
        """The calibration as an :class:`Experiment` (one scenario: the fixed values), for the manifest."""
        return Experiment(
            name=self.name,
            description=self.description,
            config_path=self.config_path,
            config_text=self.config_text,
            model=self.model,
            time=self.time,
            scenarios=(Scenario("calibration", "fixed parameters of the calibration", dict(self.fixed)),),
            variables=tuple(self.observations.columns),
        )


def _check(table: Any, section: str, where: str, problems: Problems) -> dict[str, Any]:
    """:func:`armsdyn.config._check_table` with this module's own tables."""
    return check_table(table, section, where, problems, schemas=_SCHEMA)


def load_calibration(path: str | os.PathLike[str]) -> CalibrationSpec:
    """Read, validate and resolve a calibration config, loading its data.

    Parameters
    ----------
    path : path-like
        A TOML file (see the module docstring for its layout).

    Returns
    -------
    CalibrationSpec

    Raises
    ------
    ConfigError
        Listing every problem found (including problems with the data file),
        each with its key path.
    """
    path = Path(path)
    raw, text = read_toml(path)
    return parse_calibration(raw, text=text, source=path)


def parse_calibration(raw: Mapping[str, Any], *, text: str = "", source: Path | None = None) -> CalibrationSpec:
    """Validate an already-parsed calibration config; see :func:`load_calibration`."""
    problems = Problems(str(source) if source else "<config>")
    spec = _parse(raw, text, source, problems)
    problems.raise_if_any()
    assert spec is not None  # problems were raised otherwise
    entries = raw.get("specifications", [])
    if not entries:
        return spec
    alternatives = []
    names = {spec.label}
    for i, entry in enumerate(entries):
        alt = _parse_specification(raw, i, entry, text, source, spec, names, problems)
        if alt is not None:
            alternatives.append(alt)
    problems.raise_if_any()
    return replace(spec, specifications=tuple(alternatives))


#: Stocks of Richardson's two-state model, in the order of its equations (x, then y).
RICHARDSON_STOCKS = ("arms X", "arms Y")


@dataclass(frozen=True)
class LaggedSystem:
    """Richardson's equations of a model, as the lagged regression writes them.

    Attributes
    ----------
    stocks : tuple of str
        The observed stocks (or elements of a subscripted stock), one equation each.
    terms : tuple of tuple of (str, int or None, float)
        Per equation: each coefficient's model name (or element name), the
        index in `stocks` of the arms it multiplies (None for the constant
        grievance), and the term's sign (-1 for fatigue).
    held : mapping of str to float
        Coefficients that cannot be estimated and are held at the model's value
        unless fixed otherwise: the reaction matrix's diagonal, which multiplies
        a state's own arms as its fatigue does.
    """

    stocks: tuple[str, ...]
    terms: tuple[tuple[tuple[str, int | None, float], ...], ...]
    held: Mapping[str, float] = field(default_factory=dict)


def lagged_system(model: Model) -> LaggedSystem | None:
    """The lagged form of Richardson's two-state model or of its subscripted N-state form; None otherwise.

    The N-state form needs constants ``defence coefficient k[state, rival]``,
    ``fatigue coefficient a[state]`` and ``grievance g[state]`` and a stock
    subscripted like ``a`` (``arms[state]``): equation i is
    ``dx_i = g_i + sum_j k_ij x_j - a_i x_i``.
    """
    names = model.variables
    if all(n in names for n in (*RICHARDSON_STOCKS, *list(PARAMETER_NAMES.values())[:6])):
        p = PARAMETER_NAMES
        return LaggedSystem(
            RICHARDSON_STOCKS,
            (((p["g"], None, 1.0), (p["k"], 1, 1.0), (p["a"], 0, -1.0)),
             ((p["h"], None, 1.0), (p["l"], 0, 1.0), (p["b"], 1, -1.0))),
        )  # fmt: skip
    if not all(N_PARAMETER_NAMES[s] in names for s in "kag"):
        return None
    k, a, g = (model.variable(N_PARAMETER_NAMES[s]) for s in "kag")
    if len(a.dims) != 1 or g.dims != a.dims or len(k.dims) != 2 or not k.defaults:
        return None
    states = a.dims[0][1]
    if k.shape != (len(states), len(states)):
        return None
    stock = next((v for v in model.of_kind("stock") if v.dims == a.dims), None)
    if stock is None:
        return None
    rivals = k.dims[1][1]
    terms: list[tuple[tuple[str, int | None, float], ...]] = []
    for i, si in enumerate(states):
        row: list[tuple[str, int | None, float]] = [(g.element_name((si,)), None, 1.0)]
        row += [(k.element_name((si, rivals[j])), j, 1.0) for j in range(len(states)) if j != i]
        row.append((a.element_name((si,)), i, -1.0))
        terms.append(tuple(row))
    held = {k.element_name((si, rivals[i])): float(k.defaults[i * len(states) + i]) for i, si in enumerate(states)}
    diagonal = tuple((k.element_name((si, rivals[i])), i, 1.0) for i, si in enumerate(states))
    # The diagonal enters as a held term of its own equation.
    terms = [(*row, diagonal[i]) for i, row in enumerate(terms)]
    return LaggedSystem(tuple(stock.element_name((s,)) for s in states), tuple(terms), held)


def _default_label(method: str, estimator: str, transform: str) -> str:
    if method != "lagged":
        return method
    return f"lagged {estimator}" + (", differenced" if transform == "differenced" else "")


def _parse(
    raw: Mapping[str, Any], text: str, source: Path | None, problems: Problems, *, nested: bool = False
) -> CalibrationSpec | None:
    """One specification (the config's own, or an entry of ``[[specifications]]`` merged into it)."""
    top = _check(dict(raw), "", "", problems)
    for key, what in (("experiment", "a table [experiment] with keys name and model"), ("data", "a table [data]")):
        if key not in top:
            problems.add(key, f"missing; give {what}")
    if "calibration" not in top:
        problems.add("calibration", "missing; give a table [calibration] naming what to fit")
    exp, name, model = parse_experiment_table(top, source, problems)

    cal = _check(top.get("calibration", {}), "calibration", "calibration", problems)
    method = cal.get("method", "trajectory")
    if method not in METHODS:
        problems.add("calibration.method", unknown_name("method", method, METHODS))
    for key, allowed in (("loss", LOSSES), ("engine", ENGINES), ("estimator", ESTIMATORS), ("transform", TRANSFORMS)):
        if cal.get(key, allowed[0]) not in allowed:
            problems.add(f"calibration.{key}", unknown_name(key, cal[key], allowed))
    for key in ("estimator", "transform"):
        if key in cal and method != "lagged":
            problems.add(f"calibration.{key}", f"only used with method 'lagged', not {method!r}")
    if cal.get("bootstrap", 0) < 0 or cal.get("bootstrap", 0) > 100_000:
        problems.add("calibration.bootstrap", f"must be between 0 and 100000, got {cal['bootstrap']}")
    if cal.get("seed", 0) < 0:
        problems.add("calibration.seed", f"must be at least 0, got {cal['seed']}")
    f_scale = cal.get("f_scale", 1.0)
    if not (math.isfinite(f_scale) and f_scale > 0):
        problems.add("calibration.f_scale", f"must be a positive finite number, got {f_scale!r}")
    if "specifications" in top and method == "richardson_combined":
        problems.add("specifications", "method 'richardson_combined' has no likelihood to compare; use 'trajectory' "
                     "or 'lagged' to compare specifications")  # fmt: skip

    data_spec, observations = _parse_data(top.get("data", {}), source, model, problems, method=method)
    fixed = parse_parameters(top.get("parameters", {}), "parameters", model, problems)
    time = _data_time(top.get("time", {}), model, observations, problems)
    parameters: list[FittedParameter] = []
    if method in ("trajectory", "bayes"):
        parameters = _parse_fitted(cal, model, fixed, observations, problems)
    elif method == "richardson_combined":
        missing = [n for n in PARAMETER_NAMES.values() if n not in model.variables]
        if missing:
            problems.add(
                "calibration.method", f"richardson_combined needs Richardson's model; {model.path} lacks {missing[0]!r}"
            )
        for key in ("parameters", "initial_values", "bootstrap"):
            if key in cal:
                problems.add(f"calibration.{key}", "not used by method 'richardson_combined' (it fits kappa and c)")
    elif method == "lagged":
        _check_lagged(cal, model, fixed, observations, problems, nested=nested)
    priors = _check_bayes(cal, method, parameters, problems)
    if problems.items:
        return None
    # Problems were reported above otherwise; the asserts tell the type checker.
    assert data_spec is not None
    assert observations is not None

    for fp in parameters:
        if fp.stock:
            fixed.pop(fp.name, None)
    estimator, transform = cal.get("estimator", "sur"), cal.get("transform", "levels")
    return CalibrationSpec(
        name=name,
        description=exp.get("description", ""),
        config_path=source,
        config_text=text,
        model=model,
        time=time,
        fixed=fixed,
        data=data_spec,
        observations=observations,
        method=method,
        loss=cal.get("loss", "linear"),
        # The compiled engine by default, fixed time series included; PySD where it cannot compile the model.
        engine=cal.get("engine", "compiled"),
        parameters=tuple(parameters),
        f_scale=float(f_scale),
        bootstrap=cal.get("bootstrap", 0),
        seed=cal.get("seed", 0),
        estimator=estimator,
        transform=transform,
        label=cal.get("name") or _default_label(method, estimator, transform),
        walkers=cal.get("walkers", 0),
        steps=cal.get("steps", 2000),
        burn=cal.get("burn", cal.get("steps", 2000) // 2),
        priors=priors,
        coordinates=cal.get("coordinates", "auto"),
    )


def _check_bayes(
    cal: Mapping[str, Any], method: str, parameters: Sequence[FittedParameter], problems: Problems
) -> dict[str, tuple[float, float]]:
    """Sampler settings and priors of ``method = "bayes"``; they are refused with any other method."""
    keys = ("walkers", "steps", "burn", "priors", "coordinates")
    if method != "bayes":
        for key in keys:
            if key in cal:
                problems.add(f"calibration.{key}", f"only used with method 'bayes', not {method!r}")
        return {}
    if cal.get("engine", "compiled") != "compiled":
        problems.add("calibration.engine", "method 'bayes' runs on the compiled engine (thousands of runs)")
    steps = cal.get("steps", 2000)
    if not 10 <= steps <= 1_000_000:
        problems.add("calibration.steps", f"must be between 10 and 1000000, got {steps}")
    burn = cal.get("burn", steps // 2)
    if not 0 <= burn < steps:
        problems.add("calibration.burn", f"must be at least 0 and below steps ({steps}), got {burn}")
    coordinates = cal.get("coordinates", "auto")
    if coordinates not in COORDINATES:
        problems.add("calibration.coordinates", unknown_name("coordinates", coordinates, COORDINATES))
    walkers = cal.get("walkers", 0)
    if walkers and not (2 * len(parameters) < walkers <= 10_000 and walkers % 2 == 0):
        problems.add(
            "calibration.walkers",
            f"must be even and more than twice the {len(parameters)} fitted quantities, at most 10000, got {walkers}",
        )
    priors: dict[str, tuple[float, float]] = {}
    names = [p.name for p in parameters]
    for key, value in cal.get("priors", {}).items():
        where = f'calibration.priors."{key}"'
        if key not in names:
            problems.add(where, f"not a fitted quantity{did_you_mean(key, names)} (fitted: {', '.join(names)})")
            continue
        good = _check(value, "prior", where, problems)
        pair = good.get("normal")
        if pair is None:
            problems.add(where, "give normal = [mean, sd] (without a prior, the prior is uniform on the bounds)")
            continue
        if len(pair) != 2 or not (math.isfinite(pair[0]) and math.isfinite(pair[1]) and pair[1] > 0):
            problems.add(f"{where}.normal", f"expected [mean, sd] with sd > 0, got {pair}")
            continue
        priors[key] = (float(pair[0]), float(pair[1]))
    coefficients = [PARAMETER_NAMES[key] for key in ("k", "l", "a", "b")]
    fitted = {p.name: p for p in parameters}
    if coordinates == "modes" and not (
        all(n in fitted for n in coefficients) and all(fitted[n].bounds[0] >= 0 for n in coefficients[:2])
    ):
        problems.add(
            "calibration.coordinates",
            "'modes' needs Richardson's two-state coefficients k, l, a and b fitted, with k and l bounded below by 0",
        )
    for p in parameters:
        if p.name not in priors and not all(map(math.isfinite, p.bounds)):
            where = f'calibration.initial_values."{p.stock}"' if p.stock else f'calibration.parameters."{p.name}"'
            problems.add(
                f"{where}.bounds",
                f"method 'bayes' needs finite bounds (a uniform prior) or a normal prior in [calibration.priors], "
                f"got {list(p.bounds)}",
            )
    return priors


def _check_lagged(
    cal: Mapping[str, Any],
    model: Model,
    fixed: Mapping[str, ParameterValue],
    observations: pd.DataFrame | None,
    problems: Problems,
    *,
    nested: bool,
) -> None:
    """The lagged regression needs Richardson's model, every stock observed, constants fixed and enough years."""
    system = lagged_system(model)
    if system is None:
        problems.add(
            "calibration.method",
            f"'lagged' regresses Richardson's equations; {model.path} has neither the two-state model's "
            f"constants ({', '.join(list(PARAMETER_NAMES.values())[:6])}) nor the subscripted N-state ones "
            f"({', '.join(N_PARAMETER_NAMES[s] for s in 'kag')} with a stock subscripted like them)",
        )
        return
    if "bootstrap" in cal and cal["bootstrap"] and not nested:
        problems.add("calibration.bootstrap", "not used by method 'lagged' (its intervals come from the regression)")
    for row in system.terms:
        for name, _, _ in row:
            if isinstance(fixed.get(name), tuple):
                problems.add(f'parameters."{name}"', "the lagged regression can fix a coefficient to a number only")
    if observations is None:
        return
    absent = [s for s in system.stocks if s not in observations.columns]
    if absent:
        every = "both stocks" if len(system.stocks) == 2 else f"all {len(system.stocks)} states' stocks"
        problems.add("data.columns", f"'lagged' needs {every} observed; map a data series to {absent[0]!r}")
        return
    usable = lagged_rows(observations[list(system.stocks)], cal.get("transform", "levels"))
    # Every coefficient of an equation, and at least two residual degrees of freedom.
    needed = max(sum(name not in system.held for name, _, _ in row) for row in system.terms) + 2
    if usable < needed:
        problems.add(
            "data",
            f"the lagged {cal.get('transform', 'levels')} regression has {usable} usable years (consecutive "
            f"observations of every state); it needs at least {needed}: widen data.years",
        )


def on_regular_grid(observations: pd.DataFrame) -> tuple[pd.DataFrame, float]:
    """`observations` on the regular grid of their smallest time step (missing times as NaN rows), and the step."""
    t = observations.index.to_numpy(dtype=float)
    if t.size < 2:
        return observations, 1.0
    step = float(np.diff(t).min())
    grid = t[0] + step * np.arange(round((t[-1] - t[0]) / step) + 1)
    return observations.reindex(_match_index(grid, observations.index)), step


def lagged_usable(observations: pd.DataFrame, transform: str) -> np.ndarray:
    """Per row of :func:`on_regular_grid`: True where a lagged regression has a response.

    A response needs every series finite at its time and the one (levels) or two
    (differenced) grid times before it.
    """
    grid, _ = on_regular_grid(observations)
    ok = np.isfinite(grid.to_numpy(dtype=float)).all(axis=1)
    lag = 2 if transform == "differenced" else 1
    usable = np.zeros(ok.shape, dtype=bool)
    if ok.size > lag:
        usable[lag:] = ok[lag:]
        for k in range(1, lag + 1):
            usable[lag:] &= ok[lag - k : ok.size - k]
    return usable


def lagged_rows(observations: pd.DataFrame, transform: str) -> int:
    """How many responses a lagged regression of `observations` has (consecutive times, all series finite)."""
    return int(lagged_usable(observations, transform).sum())


def _overlaps(model: Model, key: str, name: str) -> bool:
    """Whether fitting `key` and holding `name` (canonical) touch the same constant or element."""
    try:
        var, element = model.element(key)
    except KeyError:
        return False
    own = var.name if element is None else var.element_name(element)
    return own == name or own == name.partition("[")[0] or name == own.partition("[")[0]


def _match_index(grid: np.ndarray, index: pd.Index) -> pd.Index:
    """`grid` as labels of `index` where they coincide (integer years stay integers)."""
    if pd.api.types.is_integer_dtype(index.dtype) and np.all(grid == np.round(grid)):
        return pd.Index(grid.astype(np.int64), name=index.name)
    return pd.Index(grid, name=index.name)


def _parse_specification(
    raw: Mapping[str, Any],
    i: int,
    entry: Any,
    text: str,
    source: Path | None,
    main: CalibrationSpec,
    names: set[str],
    problems: Problems,
) -> CalibrationSpec | None:
    """An entry of ``[[specifications]]``: the config with its method, fixed constants and data changed."""
    where = f"specifications[{i}]"
    good = _check(entry, "specification", where, problems)
    label = good.get("name")
    if label is None:
        problems.add(f"{where}.name", "missing; name the specification (it labels its row of comparison.csv)")
        return None
    where = f'{where} ("{label}")'
    if label in names:
        problems.add(f"{where}.name", f"{label!r} names two specifications (the config's own is {main.label!r})")
        return None
    names.add(label)
    sampler = ("walkers", "steps", "burn", "priors", "coordinates")  # a specification is a point fit, not a posterior
    cal = {k: v for k, v in dict(raw.get("calibration", {})).items() if k not in ("bootstrap", "name", *sampler)}
    method = good.get("method", "trajectory" if cal.get("method") == "bayes" else cal.get("method", "trajectory"))
    if method not in COMPARABLE_METHODS:
        problems.add(f"{where}.method", unknown_name("method", method, COMPARABLE_METHODS))
        return None
    cal["method"] = method
    cal["name"] = label
    for key in ("estimator", "transform"):
        cal.pop(key, None)
        if key in good:
            cal[key] = good[key]
        elif method == "lagged" and key in raw.get("calibration", {}):
            cal[key] = raw["calibration"][key]
    fixed = dict(raw.get("parameters", {}))
    fitted = dict(cal.get("parameters", {}))
    constants = [v.name for v in main.model.of_kind("constant")]
    for key, value in good.get("fix", {}).items():
        try:
            var, element = main.model.element(key)
        except KeyError:
            var, element = None, None
        if var is None or var.kind != "constant":
            problems.add(f'{where}.fix."{key}"', f"unknown constant in model {main.model.path}"
                         f"{did_you_mean(key, constants)}")  # fmt: skip
            continue
        if not (isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)):
            problems.add(f'{where}.fix."{key}"', f"expected a finite number, got {describe_input(value)}")
            continue
        fixed[key] = value
        # A constant the config fits is held at this value instead.
        name = var.name if element is None else var.element_name(element)
        fitted = {k: v for k, v in fitted.items() if not _overlaps(main.model, k, name)}
    cal["parameters"] = fitted
    merged = {k: v for k, v in raw.items() if k != "specifications"}
    merged.update(calibration=cal, parameters=fixed, data={**dict(raw.get("data", {})), **good.get("data", {})})
    sub = Problems(problems.source)
    spec = _parse(merged, text, source, sub, nested=True)
    for item in sub.items:
        problems.add(where, item)
    return spec


def _parse_data(
    table: Any, source: Path | None, model: Model, problems: Problems, *, method: str = "trajectory"
) -> tuple[DataSpec | None, pd.DataFrame | None]:
    good = _check(table, "data", "data", problems)
    n_before = len(problems.items)
    kind = good.get("kind", "csv")
    if kind not in DATA_KINDS:
        problems.add("data.kind", unknown_name("data kind", kind, DATA_KINDS))
    if "file" not in good:
        problems.add("data.file", "missing; give the data file's path, relative to this config")
        return None, None
    file = Path(good["file"])
    if not file.is_absolute() and source is not None:
        file = source.parent / file
    columns: dict[str, str] = {}
    raw_columns = good.get("columns")
    if not raw_columns:
        problems.add("data.columns", 'missing or empty; map data series to model variables, e.g. { usa = "arms X" }')
    for key, value in (raw_columns or {}).items():
        where = f'data.columns."{key}"'
        if not isinstance(value, str):
            problems.add(where, f"expected a model variable name, got {describe_input(value)}")
            continue
        try:
            var, element = model.element(value)
        except KeyError as exc:
            text = str(exc.args[0])
            if text.startswith("no variable"):
                text = f"unknown variable {value!r} in model {model.path}{did_you_mean(value, model.variables)}"
            problems.add(where, text)
            continue
        if var.kind in ("lookup", "constant"):
            problems.add(where, f"{var.name!r} is a {var.kind}; map data to a variable that changes over time")
            continue
        if var.dims and element is None:
            first = var.element_name(var.elements()[0])
            problems.add(where, f"{var.name!r} is subscripted by {', '.join(var.dim_names)}; map each data series "
                         f"to one element, e.g. {first!r}")  # fmt: skip
            continue
        columns[key] = var.name if element is None else var.element_name(element)
    for key, allowed in (
        ("time", ("csv",)),
        ("series", ("csv",)),
        ("value", ("csv",)),
        ("variable", ("nmc",)),
        ("era_conversion", ("nmc",)),
    ):
        if key in good and kind not in allowed:
            problems.add(f"data.{key}", f"only used with kind {' or '.join(map(repr, allowed))}, not {kind!r}")
    years = good.get("years")
    if years is not None and (len(years) != 2 or years[0] > years[1] or not all(map(math.isfinite, years))):
        problems.add("data.years", f"expected [first, last] with first <= last, got {years}")
        years = None
    scale = good.get("scale", 1.0)
    if not (math.isfinite(scale) and scale != 0):
        problems.add("data.scale", f"must be a finite non-zero number, got {scale!r}")
    if (kind == "csv" or scale != 1.0) and "units" not in good:
        why = "a CSV does not say its units" if kind == "csv" else "data.scale changes the loader's units"
        problems.add("data.units", f"missing; {why}, so state the units of the values used")
    if len(problems.items) > n_before:
        return None, None
    try:
        frame = _load(file, kind, list(columns), good, years)
    except data_mod.DataError as exc:
        problems.add("data", str(exc))
        return None, None
    units_in = {frame.attrs["units"][c] for c in columns}
    if len(units_in) > 1 and any(list(columns.values()).count(v) > 1 for v in columns.values()):
        problems.add("data.columns", f"series summed into one variable have different units: {sorted(units_in)}")
        return None, None
    units = good.get("units") or units_in.pop()
    observations = pd.DataFrame(index=frame.index)
    for variable in dict.fromkeys(columns.values()):
        members = [c for c, v in columns.items() if v == variable]
        observations[variable] = frame[members].sum(axis=1, min_count=len(members)) * scale
    if years is not None:
        observations = observations.loc[(observations.index >= years[0]) & (observations.index <= years[1])]
    observations = observations.dropna(how="all")
    if observations.empty:
        problems.add("data", f"{file}: no observations of {', '.join(columns)} in the years asked for")
        return None, None
    if not _data_quality(frame[list(columns)] * scale, observations.index, file, method, problems):
        return None, None
    observations.attrs = {"units": dict.fromkeys(observations.columns, units), "source": str(file)}
    spec = DataSpec(
        file=file,
        kind=kind,
        columns=columns,
        units=units,
        scale=float(scale),
        years=None if years is None else (float(years[0]), float(years[1])),
        options={k: good[k] for k in ("time", "series", "value", "variable", "era_conversion") if k in good},
    )
    return spec, observations


def _data_quality(series: pd.DataFrame, times: pd.Index, file: Path, method: str, problems: Problems) -> bool:
    """Warn of gaps and negative values in the years used; refuse gaps a method cannot take.

    Returns False when a problem was added.
    """
    used = series.loc[(series.index >= times.min()) & (series.index <= times.max())]
    found = data_mod.find_gaps(used)
    if found.has_gaps and method == "richardson_combined":
        problems.add(
            "data",
            f"{file}: gaps in the years used: {found.describe_gaps()}; Richardson's combined estimator needs the "
            "totals of consecutive years (increments and means), so choose data.years without gaps, "
            'or use method = "trajectory", which fits the observed years only',
        )
        return False
    if found.has_gaps:
        msg = f"{file}: gaps in the years used: {found.describe_gaps()}; the fit uses the observed values only"
        warnings.warn(msg, data_mod.DataWarning, stacklevel=2)
    if found.describe_negative():
        msg = (
            f"{file}: negative values: {found.describe_negative()}; expenditure cannot be negative "
            "(a missing-value code such as -9 read as a number?): check the data"
        )
        warnings.warn(msg, data_mod.DataWarning, stacklevel=2)
    return True


def _load(
    file: Path, kind: str, series: list[str], good: Mapping[str, Any], years: Sequence[float] | None
) -> pd.DataFrame:
    if kind == "nmc":
        span = None if years is None else (int(years[0]), int(years[1]))
        return data_mod.load_nmc(
            file, series, variable=good.get("variable", "milex"), years=span, era_conversion=good.get("era_conversion")
        )
    if kind == "sipri":
        span = None if years is None else (int(years[0]), int(years[1]))
        return data_mod.load_sipri(file, series, years=span)
    return data_mod.load_csv(
        file,
        time=good.get("time", "year"),
        columns=series,
        units=good.get("units"),
        series=good.get("series"),
        value=good.get("value", "value"),
    )


def _data_time(table: Any, model: Model, observations: pd.DataFrame | None, problems: Problems) -> TimeSettings:
    """Time settings: ``[time]`` over defaults spanning the data, with yearly saves."""
    if observations is None:
        return model.time
    t = observations.index.to_numpy(dtype=float)
    gaps = np.diff(t)
    saveper = float(gaps.min()) if gaps.size else 1.0
    step = model.time.step if _whole(saveper, model.time.step) else saveper
    defaults = TimeSettings(float(t[0]), float(t[-1]), step, saveper, model.time.units)
    # parse_time validates against a model's own settings (it reads only model.time): give it a
    # shallow copy of the model whose own settings are the data's defaults.
    spanning = copy.copy(model)
    spanning.time = defaults
    time = parse_time(table if isinstance(table, dict) else {}, spanning, problems)
    if not isinstance(table, dict):
        problems.add("time", f"expected a table, got {describe_input(table)}")
    saved = time.save_times()
    off = [x for x in t if not np.any(np.isclose(saved, x, rtol=0, atol=1e-9 * max(1.0, abs(x))))]
    if off and not problems.items:
        problems.add(
            "time",
            f"observed time {off[0]:g} is not a saved time (saved: {saved[0]:g} to {saved[-1]:g} every "
            f"{time.saveper:g}); set time.initial, time.final and time.saveper to cover the data",
        )
    return time


def _whole(value: float, unit: float) -> bool:
    ratio = value / unit
    return round(ratio) >= 1 and abs(ratio - round(ratio)) <= 1e-9 * max(1.0, ratio)


def _stock_initial(model: Model, stock: str) -> str | None:
    """The constant a stock starts from (e.g. ``initial arms X``), if it starts from exactly one."""
    var = model.variable(stock)
    # PySD records what each stock's initial value depends on; only a lone constant can be fitted.
    deps = model.pysd_model.dependencies.get(f"_integ_{var.py_name}", {}).get("initial", {})
    by_py = {v.py_name: v for v in model.variables.values()}
    if len(deps) == 1:
        (py,) = deps
        if py in by_py and by_py[py].kind == "constant":
            return by_py[py].name
    return None


def _parse_fitted(
    cal: Mapping[str, Any],
    model: Model,
    fixed: dict[str, ParameterValue],
    observations: pd.DataFrame | None,
    problems: Problems,
) -> list[FittedParameter]:
    out: list[FittedParameter] = []
    constants = [v.name for v in model.of_kind("constant")]
    # (constant, its table, key path, stock whose initial value it is or "")
    entries = [(k, v, f'calibration.parameters."{k}"', "") for k, v in cal.get("parameters", {}).items()]
    stocks = [v.name for v in model.of_kind("stock")]
    for stock, value in cal.get("initial_values", {}).items():
        where = f'calibration.initial_values."{stock}"'
        try:
            var, element = model.element(stock)
        except KeyError:
            problems.add(where, f"unknown stock{did_you_mean(stock, stocks)} (stocks: {', '.join(stocks)})")
            continue
        if var.kind != "stock":
            problems.add(where, f"{var.name!r} is a {var.kind}, not a stock")
            continue
        if var.dims and element is None:
            example = var.element_name(var.elements()[0])
            problems.add(where, f"{var.name!r} is subscripted; name one element, e.g. {example!r}")
            continue
        constant = _stock_initial(model, var.name)
        if constant is not None and element is not None:
            # The stock's element starts from the same element of its initial constant.
            start = model.variable(constant)
            constant = start.element_name(element) if start.dims == var.dims else None
        if constant is None:
            problems.add(
                where, f"{var.name!r} does not start from a single constant, so its initial value cannot be set"
            )
            continue
        if element is not None:
            var = replace(var, name=var.element_name(element))
        # When the data failed to load (already reported), say nothing about what is observed.
        no_data = observations is None
        first = math.nan
        if observations is not None and var.name in observations:
            column = observations[var.name].dropna()
            first = float(column.iloc[0]) if not column.empty else math.nan
        if value == "observed":
            if not math.isfinite(first):
                if not no_data:
                    problems.add(where, f"{var.name!r} is not observed, so it cannot start at the first observation")
            else:
                fixed[constant] = first
            continue
        if not isinstance(value, dict):
            problems.add(where, f'expected "observed" or a table {{ initial, bounds }}, got {describe_input(value)}')
            continue
        if "initial" not in value and not math.isfinite(first):
            if not no_data:
                problems.add(where, f"{var.name!r} is not observed; give an initial guess")
            continue
        entries.append((constant, {"initial": first, **value}, where, var.name))
    seen: set[str] = set()
    for key, value, where, stock in entries:
        default: float | None = None
        elements: list[str] = []
        if not stock:
            try:
                var, element = model.element(key)
            except KeyError as exc:
                text = str(exc.args[0])
                if text.startswith("no variable"):
                    text = f"unknown parameter in model {model.path}{did_you_mean(key, constants)}"
                problems.add(where, text)
                continue
            if var.kind != "constant":
                problems.add(where, f"{var.name!r} is a {var.kind}, not a constant; only constants can be fitted")
                continue
            default, elements = _constant_default(var, element)
            key = var.name if element is None else var.element_name(element)
        if key in seen:
            problems.add(where, f"{key!r} is fitted twice")
            continue
        seen.add(key)
        if (key in fixed or any(e in fixed for e in elements)) and not stock:
            problems.add(where, f"{key!r} is also fixed in [parameters]; fit it or fix it, not both")
            continue
        overlap = [e for e in elements if e in seen]
        whole = next((k for k in seen if key in _constant_default_elements(model, k)), None)
        clash = overlap[0] if overlap else whole
        if clash:
            problems.add(where, f"{key!r} overlaps {clash!r}, also fitted; fit each element once")
            continue
        good = _check(value, "estimate", where, problems)
        bounds = good.get("bounds", [-math.inf, math.inf])
        if len(bounds) != 2 or not bounds[0] < bounds[1] or any(math.isnan(b) for b in bounds):
            problems.add(f"{where}.bounds", f"expected [low, high] with low < high, got {bounds}")
            continue
        if stock:
            default = None
        guess = good.get("initial")
        if guess is None:
            guess = default if default is not None and bounds[0] <= default <= bounds[1] else _middle(bounds)
        if not (math.isfinite(guess) and bounds[0] <= guess <= bounds[1]):
            problems.add(f"{where}.initial", f"must be a finite number within the bounds {bounds}, got {guess!r}")
            continue
        out.append(FittedParameter(key, float(guess), (float(bounds[0]), float(bounds[1])), stock))
    if not out and "parameters" not in cal and "initial_values" not in cal:
        problems.add("calibration.parameters", "missing; name at least one constant to fit")
    elif not out and not problems.items:
        problems.add("calibration.parameters", "nothing to fit; name at least one constant to fit")
    return out


def _constant_default(var: Any, element: tuple[str, ...] | None) -> tuple[float | None, list[str]]:
    """A fitted constant's value in the model file, and the element names a whole subscripted one sets.

    A whole subscripted constant is fitted as one value shared by every element
    (Richardson's symmetric assumption); its default is the elements' common value, if any.
    """
    if not var.dims:
        return var.default, []
    names = [var.element_name(e) for e in var.elements()]
    if element is not None:
        index = var.elements().index(tuple(element))
        return (float(var.defaults[index]) if var.defaults else None), []
    same = var.defaults and all(v == var.defaults[0] for v in var.defaults)
    return (float(var.defaults[0]) if same else None), names


def _constant_default_elements(model: Model, key: str) -> list[str]:
    try:
        var, element = model.element(key)
    except KeyError:
        return []
    return _constant_default(var, element)[1]


def _middle(bounds: Sequence[float]) -> float:
    low, high = bounds
    if math.isfinite(low) and math.isfinite(high):
        return (low + high) / 2
    if math.isfinite(low):
        return low + 1.0
    if math.isfinite(high):
        return high - 1.0
    return 0.0


# --------------------------------------------------------------------------- simulation
