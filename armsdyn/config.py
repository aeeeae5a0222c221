"""Read and validate experiment config files (TOML).

Everything is checked before any simulation runs: the structure of the file,
the types and ranges of values, and every variable name against the model.
All problems found are reported together, each with its key path, what was
wrong and what is allowed. Nothing in a config is ever evaluated as code.

A config looks like::

    [experiment]
    name = "richardson"
    description = "Classic regimes of Richardson's model"
    model = "../models/richardson.mdl"      # relative to this file, or the project

    [time]                                  # optional; overrides the model's settings
    initial = 0
    final = 30
    step = 0.03125
    saveper = 0.25

    [parameters]                            # base overrides, for every scenario
    "defence coefficient k" = 0.9

    [[scenarios]]
    name = "stable"
    description = "Fatigue outweighs mutual reaction"
    parameters = { "fatigue coefficient a" = 1.2 }
    # a time series is a list of [time, value] pairs, interpolated linearly:
    # parameters = { "grievance g" = [[0, 1], [10, 3]] }

    [output]
    variables = ["arms X", "arms Y"]        # default: stocks and flows

    [[figures]]
    kind = "time_series"
    variables = ["arms X", "arms Y"]
"""

from __future__ import annotations

import itertools
import math
import os
import re
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from armsdyn import metrics
from armsdyn.attribution import CUTTABLE, MAX_GROUPS, OTHER, attribution_metric_names
from armsdyn.errors import ConfigError, ModelError, did_you_mean
from armsdyn.feedback import diagram_refusal, on_feedback_loops
from armsdyn.model import Model, TimeSettings, Variable, load_model
from armsdyn.sensitivity_methods import METHODS
from armsdyn.specs import (
    AGGREGATES,
    DISTRIBUTIONS,
    ENGINES,
    FIGURE_KINDS,
    LOOP_GROUP_KINDS,
    AttributionSpec,
    Experiment,
    FigureSpec,
    LoopDominanceSpec,
    LoopGroup,
    MetricsSpec,
    Output,
    ParameterValue,
    SampledParameter,
    Scenario,
    SensitivitySpec,
)

#: Most Euler steps a run may take from time.initial to time.final.
MAX_STEPS = 10_000_000

SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
SAFE_NAME_RULE = "1-100 characters from letters, digits, '.', '_' and '-', starting with a letter or digit"


class Problems:
    """Collects validation problems so that one error reports all of them."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.items: list[str] = []

    def add(self, where: str, what: str) -> None:
        self.items.append(f"{where}: {what}" if where else what)

    def raise_if_any(self) -> None:
        if not self.items:
            return
        if len(self.items) == 1:
            msg = f"{self.source}: {self.items[0]}"
        else:
            lines = "\n".join(f"  - {item}" for item in self.items)
            msg = f"{self.source}: {len(self.items)} problems:\n{lines}"
        raise ConfigError(msg)


_SCHEMA: dict[str, dict[str, str]] = {
    "": {
        "experiment": "table",
        "time": "table",
        "parameters": "table",
        "scenarios": "array of tables",
        "output": "table",
        "figures": "array of tables",
        "metrics": "table",
        "sensitivity": "table",
        "loop_dominance": "table",
        "attribution": "table",
    },
    "loop_dominance": {"max_length": "integer", "limit": "integer", "through": "list of strings"},
    "attribution": {"stocks": "list of strings", "window": "list of numbers", "groups": "array of tables"},
    "attribution.groups": {"name": "string", "variables": "list of strings", "kind": "string"},
    "metrics": {"baseline": "string"},
    "sensitivity": {
        "method": "string",
        "samples": "integer",
        "seed": "integer",
        "levels": "integer",
        "second_order": "boolean",
        "scenario": "string",
        "fan_variables": "list of strings",
        "parameters": "array of tables",
        "outputs": "array of tables",
    },
    "sensitivity.parameters": {
        "name": "string",
        "bounds": "list of numbers",
        "distribution": "string",
        "also": "list of strings",
    },
    "sensitivity.outputs": {"metric": "string", "variable": "string", "aggregate": "string", "at": "number"},
    "experiment": {"name": "string", "description": "string", "model": "string", "engine": "string"},
    "time": {"initial": "number", "final": "number", "step": "number", "saveper": "number"},
    "scenarios": {"name": "string", "description": "string", "parameters": "table", "baseline": "string"},
    "output": {"variables": "list of strings"},
    "figures": {
        "kind": "string",
        "name": "string",
        "variables": "list of strings",
        "scenarios": "list of strings",
        "layout": "string",
        "panels": "list of lists of strings",
        "metrics": "list of strings",
        "parameter": "string",
    },
}


def _type_ok(value: Any, expected: str) -> bool:
    if expected == "table":
        return isinstance(value, dict)
    if expected == "array of tables":
        return isinstance(value, list) and all(isinstance(v, dict) for v in value)
    if expected == "string":
        return isinstance(value, str)
    if expected == "number":
        return isinstance(value, int | float) and not isinstance(value, bool)
    if expected == "list of strings":
        return isinstance(value, list) and all(isinstance(v, str) for v in value)
    if expected == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if expected == "boolean":
        return isinstance(value, bool)
    if expected == "list of numbers":
        return isinstance(value, list) and all(_type_ok(v, "number") for v in value)
    if expected == "list of lists of strings":
        return isinstance(value, list) and all(_type_ok(v, "list of strings") for v in value)
    raise AssertionError(expected)  # pragma: no cover - schema typo


def check_table(
    table: Any,
    section: str,
    where: str,
    problems: Problems,
    schemas: Mapping[str, Mapping[str, str]] = _SCHEMA,
) -> dict[str, Any]:
    """Drop and report unknown or mistyped keys; return the good ones.

    `schemas` maps each section to its keys and their types; other config
    kinds (calibration) pass their own.
    """
    if not isinstance(table, dict):
        problems.add(where, f"expected a table, got {describe_input(table)}")
        return {}
    schema = schemas[section]
    good = {}
    for key, value in table.items():
        path = f"{where}.{key}" if where else key
        if key not in schema:
            allowed = ", ".join(schema)
            problems.add(path, f"unknown key{did_you_mean(key, schema)} (allowed: {allowed})")
        elif not _type_ok(value, schema[key]):
            problems.add(path, f"expected a {schema[key]}, got {describe_input(value)}")
        else:
            good[key] = value
    return good


def unknown_name(what: str, value: str, allowed: Iterable[str]) -> str:
    """``unknown <what> 'x'; did you mean 'y'? (allowed: ...)``."""
    allowed = list(allowed)
    return f"unknown {what} {value!r}{did_you_mean(value, allowed)} (allowed: {', '.join(allowed)})"


def describe_input(value: Any) -> str:
    names = {bool: "boolean", int: "integer", float: "number", str: "string", list: "list", dict: "table"}
    return f"{names.get(type(value), type(value).__name__)} {value!r}"[:80]


def load_config(path: str | os.PathLike[str]) -> Experiment:
    """Read, validate and resolve an experiment config file.

    Parameters
    ----------
    path : path-like
        A TOML file (see the module docstring for its layout).

    Returns
    -------
    Experiment

    Raises
    ------
    ConfigError
        Listing every problem found, each with its key path.
    ModelError
        If the model file exists but cannot be translated.
    """
    path = Path(path)
    data, text = read_toml(path)
    return parse_config(data, text=text, source=path)


def config_kind(path: str | os.PathLike[str]) -> str:
    """``"experiment"``, ``"calibration"`` or ``"audit"``: which command a config file is for.

    Read from its tables (``[calibration]``; ``[[claims]]`` or ``[uncertainties]``), so that
    ``armsdyn check`` validates each with its own reader.
    """
    data, _ = read_toml(Path(path))
    if "calibration" in data:
        return "calibration"
    if "claims" in data or "uncertainties" in data:
        return "audit"
    return "experiment"


def read_toml(path: Path) -> tuple[dict[str, Any], str]:
    """Read a TOML config file; return the parsed table and the text.

    Raises
    ------
    ConfigError
        If the file is missing, unreadable or not valid TOML (with line and column).
    """
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        msg = f"{path}: config file not found"
        raise ConfigError(msg) from None
    except (OSError, UnicodeDecodeError) as exc:
        msg = f"{path}: cannot read config file: {exc}"
        raise ConfigError(msg) from None
    try:
        return tomllib.loads(text), text
    except tomllib.TOMLDecodeError as exc:
        msg = f"{path}: not valid TOML: {exc}"
        raise ConfigError(msg) from None
    except RecursionError:
        msg = f"{path}: arrays or tables are nested too deeply to read (a config needs only a few levels)"
        raise ConfigError(msg) from None


def parse_config(data: Mapping[str, Any], *, text: str = "", source: Path | None = None) -> Experiment:
    """Validate an already-parsed config mapping; see :func:`load_config`.

    Relative model paths are resolved against the directory of `source` first,
    then against the current directory.
    """
    label = str(source) if source else "<config>"
    problems = Problems(label)
    top = check_table(dict(data), "", "", problems)

    if "experiment" not in top:
        problems.add("experiment", "missing table [experiment] (with keys name and model)")
    exp, name, model = parse_experiment_table(top, source, problems)
    engine = exp.get("engine", "compiled")
    if engine not in ENGINES:
        problems.add("experiment.engine", unknown_name("engine", engine, ENGINES))
    time = parse_time(top.get("time", {}), model, problems)
    base = parse_parameters(top.get("parameters", {}), "parameters", model, problems)
    scenarios = _parse_scenarios(top.get("scenarios"), base, model, problems)
    variables = _parse_output(top.get("output", {}), model, problems)
    figures = _parse_figures(top.get("figures", []), {s.name for s in scenarios}, model, problems)
    metrics = _parse_metrics(top.get("metrics", {}), {s.name for s in scenarios}, problems)
    dominance = _parse_loop_dominance(top["loop_dominance"], model, problems) if "loop_dominance" in top else None
    attribution = _parse_attribution(top["attribution"], model, time, problems) if "attribution" in top else None
    attributed = attribution_metric_names(model, attribution) if attribution is not None else []
    figures, needed = _check_metric_names(figures, variables, model, attributed, problems)
    sensitivity = None
    if "sensitivity" in top:
        sensitivity, more = _parse_sensitivity(top["sensitivity"], scenarios, variables, model, problems)
        needed += more
    asked = {"loop_dominance": dominance, "attribution": attribution or top.get("attribution")}
    for i, fig in enumerate(figures):
        needs = FIGURE_KINDS[fig.kind].needs
        if needs and asked[needs] is None:
            problems.add(
                f"figures[{i}].kind",
                f"{fig.kind!r} draws the {needs.replace('_', ' ')} in loops.nc; add a [{needs}] table "
                "so that the run computes it",
            )
    problems.raise_if_any()

    # Figures are redrawn from saved results, so what they draw must be saved.
    for fig in figures:
        if FIGURE_KINDS[fig.kind].reads_model or FIGURE_KINDS[fig.kind].reads_loops:
            continue  # drawn from the model file or loops.nc (a metric figure's attribution columns too)
        drawn = (*fig.variables, *(v for panel in fig.panels for v in panel))
        variables += tuple(v for v in drawn if v not in variables)
    variables += tuple(v for v in needed if v not in variables)
    return Experiment(
        name=name,
        description=exp.get("description", ""),
        config_path=source,
        config_text=text,
        model=model,
        time=time,
        scenarios=scenarios,
        variables=variables,
        figures=figures,
        metrics=metrics,
        sensitivity=sensitivity,
        engine=engine,
        loop_dominance=dominance,
        attribution=attribution,
    )


def _parse_loop_dominance(table: Any, model: Model, problems: Problems) -> LoopDominanceSpec:
    good = check_table(table, "loop_dominance", "loop_dominance", problems)
    for key in ("max_length", "limit"):
        if key in good and good[key] < 1:
            problems.add(f"loop_dominance.{key}", f"must be at least 1, got {good[key]}")
    through = _check_variables(good.get("through", []), "loop_dominance.through", model, problems)
    return LoopDominanceSpec(max_length=good.get("max_length"), limit=good.get("limit"), through=tuple(through))


def _parse_attribution(table: Any, model: Model, time: TimeSettings, problems: Problems) -> AttributionSpec | None:
    """``[attribution]``: stocks, window and ``[[attribution.groups]]`` (see :mod:`armsdyn.attribution`)."""
    good = check_table(table, "attribution", "attribution", problems)
    names = list(model.variables)
    if model.path.suffix.lower() != ".mdl":
        problems.add("attribution", f"{model.path}: loop-group attribution edits Vensim (.mdl) models only")
        return None
    stocks = []
    if not good.get("stocks"):
        problems.add("attribution.stocks", "missing or empty; name the stocks whose change is attributed")
    for i, name in enumerate(good.get("stocks", [])):
        where = f"attribution.stocks[{i}]"
        if name not in model.variables:
            problems.add(where, f"{name!r} is not a variable of {model.path}{did_you_mean(name, names)}")
        elif model.variables[name].kind != "stock":
            allowed = ", ".join(v.name for v in model.of_kind("stock"))
            problems.add(where, f"{name!r} is a {model.variables[name].kind}, not a stock (allowed: {allowed})")
        else:
            stocks.append(name)
    window = None
    if "window" in good:
        w = good["window"]
        grid = (time.initial, time.final, time.step)
        if len(w) != 2 or not w[0] < w[1]:
            problems.add("attribution.window", f"expected [start, end] with start < end, got {w}")
        elif not all(time.initial <= t <= time.final and _on_grid(t, time) for t in w):
            problems.add(
                "attribution.window",
                f"{w}: both ends must be times of the integration grid ({grid[0]:g} to {grid[1]:g} by {grid[2]:g})",
            )
        else:
            window = (float(w[0]), float(w[1]))
    groups = []
    on_loops: set[str] | None = None
    raw = good.get("groups", [])
    if not raw:
        problems.add("attribution.groups", "missing; give at least one [[attribution.groups]] with name and variables")
    if len(raw) > MAX_GROUPS:
        problems.add("attribution.groups", f"at most {MAX_GROUPS} groups (2**n runs per scenario), got {len(raw)}")
    seen: set[str] = set()
    cut_by: dict[str, str] = {}
    for i, entry in enumerate(raw):
        where = f"attribution.groups[{i}]"
        g = check_table(entry, "attribution.groups", where, problems)
        name = g.get("name")
        if not name:
            problems.add(f"{where}.name", "missing; it labels the group in loops.nc and the metrics")
            continue
        if name in seen or name == OTHER:
            problems.add(f"{where}.name", f"{name!r} is used twice or reserved ({OTHER!r}: what no group explains)")
        seen.add(name)
        kind = g.get("kind", "loops")
        if kind not in LOOP_GROUP_KINDS:
            problems.add(f"{where}.kind", unknown_name("loop group kind", kind, LOOP_GROUP_KINDS))
            continue
        if not g.get("variables"):
            problems.add(f"{where}.variables", "missing or empty; name the variables the group's loops pass through")
            continue
        ok = True
        for j, var_name in enumerate(g["variables"]):
            at = f"{where}.variables[{j}]"
            if var_name not in model.variables:
                problems.add(at, f"{var_name!r} is not a variable of {model.path}{did_you_mean(var_name, names)}")
                ok = False
                continue
            if var_name in cut_by:
                problems.add(at, f"{var_name!r} already cuts group {cut_by[var_name]!r}; a variable cuts one group")
                ok = False
                continue
            cut_by[var_name] = name
            var_kind = model.variables[var_name].kind
            if var_kind not in CUTTABLE:
                problems.add(
                    at,
                    f"{var_name!r} is a {var_kind}; a group is cut by holding an auxiliary or flow at its initial "
                    "value (name one that the group's loops pass through)",
                )
                ok = False
                continue
            if kind == "loops":
                on_loops = on_feedback_loops(model) if on_loops is None else on_loops
                if var_name not in on_loops:
                    problems.add(
                        at,
                        f"{var_name!r} lies on no feedback loop of {model.path}; name a variable the group's loops "
                        'pass through, or give the group kind = "driver" to attribute an exogenous driver',
                    )
                    ok = False
        if ok:
            groups.append(LoopGroup(name, tuple(g["variables"]), kind))
    if not stocks or not groups or len(groups) != len(raw):
        return None
    return AttributionSpec(tuple(stocks), tuple(groups), window)


def _on_grid(t: float, time: TimeSettings) -> bool:
    """Whether time `t` is one of the integration steps (to rounding)."""
    k = (t - time.initial) / time.step
    return abs(k - round(k)) <= 1e-9 * max(1.0, abs(k))


def parse_experiment_table(
    top: Mapping[str, Any], source: Path | None, problems: Problems
) -> tuple[dict[str, Any], str, Model]:
    """Check ``[experiment]`` (name, description, model) and load the model.

    Returns the checked table, the name and the model; when the model cannot be
    loaded, raises the problems found so far, since nothing else can be checked
    without it. A missing name is a problem recorded in `problems` and returned as
    ``""``, which the caller's ``raise_if_any`` keeps out of any experiment.
    """
    exp = check_table(top.get("experiment", {}), "experiment", "experiment", problems)
    name = exp.get("name")
    if "experiment" in top and name is None:
        problems.add("experiment.name", "missing; it names the results folder")
    elif name is not None and not SAFE_NAME.match(name):
        problems.add("experiment.name", f"{name!r} is not a safe folder name ({SAFE_NAME_RULE})")
    model = None
    if "experiment" in top and "model" not in exp:
        problems.add("experiment.model", "missing; give the path of a .mdl, .xmile or .stmx file")
    elif "model" in exp:
        model = _resolve_model(exp["model"], source, problems)
    if model is None:
        problems.raise_if_any()
        raise AssertionError("unreachable")  # pragma: no cover - raise_if_any raised
    return exp, name if name is not None else "", model


def _resolve_model(value: str, source: Path | None, problems: Problems) -> Model | None:
    candidate = Path(value)
    tried = [candidate] if candidate.is_absolute() else []
    if not candidate.is_absolute():
        if source is not None:
            tried.append(source.parent / candidate)
        tried.append(Path.cwd() / candidate)
    for path in tried:
        if path.is_file():
            try:
                model = load_model(path)
            except ModelError as exc:
                problems.add("experiment.model", str(exc))
                return None
            loop = algebraic_loop(model)
            if loop:
                problems.add(
                    "experiment.model",
                    f"{path}: algebraic loop: {' -> '.join(map(repr, loop))}; each of these variables needs the "
                    "others' current values, so none can be computed. Break the loop with a stock "
                    "(INTEG), a delay or a SMOOTH",
                )
                return None
            return model
    looked = ", ".join(str(p) for p in dict.fromkeys(tried))
    problems.add("experiment.model", f"model file {value!r} not found (looked for {looked})")
    return None


def algebraic_loop(model: Model) -> list[str]:
    """A cycle of variables that depend on each other's current values ([] if none).

    PySD would recurse without end on such a loop. Edges are the dependencies of
    each variable's equation; a stock (or another stateful element) breaks a
    cycle through its rate, but not through its initial value. The cycle is
    returned as model names, its first variable repeated at the end.
    """
    deps = model.pysd_model.dependencies
    graph: dict[str, list[str]] = {}
    for node, dep in deps.items():
        if any(isinstance(v, dict) for v in dep.values()):  # stateful: only its initial value is needed now
            dep = dep.get("initial", {}) if isinstance(dep.get("initial"), dict) else {}
        graph[node] = [d for d in dep if d in deps]
    names = {v.py_name: v.name for v in model.variables.values()}
    state: dict[str, int] = {}  # 1: on the current path, 2: finished
    for root in graph:
        if state.get(root):
            continue
        path = [root]
        stack = [iter(graph[root])]
        state[root] = 1
        while stack:  # iterative depth-first search: a deep model must not hit the recursion limit
            nxt = next(stack[-1], None)
            if nxt is None:
                state[path.pop()] = 2
                stack.pop()
            elif state.get(nxt) == 1:
                cycle = [*path[path.index(nxt) :], nxt]
                named = [names[n] for n in cycle if n in names]
                return [*dict.fromkeys(named), named[0]] if named else cycle
            elif not state.get(nxt):
                state[nxt] = 1
                path.append(nxt)
                stack.append(iter(graph[nxt]))
    return []


def parse_time(table: dict[str, Any], model: Model, problems: Problems) -> TimeSettings:
    good = check_table(table, "time", "time", problems)
    bad = False
    for key, value in good.items():
        if not math.isfinite(value):
            problems.add(f"time.{key}", f"must be a finite number, got {value!r}")
            bad = True
    if bad:
        return model.time
    settings = TimeSettings(
        initial=float(good.get("initial", model.time.initial)),
        final=float(good.get("final", model.time.final)),
        step=float(good.get("step", model.time.step)),
        saveper=float(good.get("saveper", model.time.saveper)),
        units=model.time.units,
    )

    def origin(key: str) -> str:
        return "" if key in good else " (the model's own value)"

    if settings.step <= 0:
        problems.add("time.step", f"must be positive, got {settings.step}{origin('step')}")
        return settings
    n_steps = (settings.final - settings.initial) / settings.step
    if not n_steps <= MAX_STEPS:  # also catches an overflow to inf (e.g. step = 5e-324)
        problems.add(
            "time.step",
            f"gives {n_steps:.3g} steps from time.initial to time.final; at most {MAX_STEPS:,} are allowed "
            f"(a larger step, got {settings.step:g}{origin('step')})",
        )
        return settings
    if settings.final <= settings.initial:
        problems.add(
            "time.final",
            f"must be after time.initial ({settings.initial}{origin('initial')}), "
            f"got {settings.final}{origin('final')}",
        )
        return settings
    if settings.saveper <= 0 or not _is_multiple(settings.saveper, settings.step):
        problems.add(
            "time.saveper",
            f"must be a positive whole multiple of time.step ({settings.step}{origin('step')}), "
            f"got {settings.saveper}{origin('saveper')}",
        )
        return settings
    if not _is_multiple(settings.final - settings.initial, settings.saveper):
        problems.add(
            "time.final",
            f"the span from time.initial to time.final ({settings.final - settings.initial}) "
            f"must be a whole multiple of time.saveper ({settings.saveper})",
        )
    return settings


def _is_multiple(value: float, unit: float) -> bool:
    ratio = value / unit
    if not math.isfinite(ratio):
        return False
    return round(ratio) >= 1 and abs(ratio - round(ratio)) <= 1e-9 * max(1.0, ratio)


def parse_parameters(
    table: Any, where: str, model: Model, problems: Problems, owner: str = ""
) -> dict[str, ParameterValue]:
    """Parameter overrides keyed by model name; a subscripted constant by element.

    A subscripted constant is set whole (one value for every element, or a
    table of every element's value: ``{ USA = 50, Russia = 40, China = 150 }``;
    for several ranges keyed ``"USA, China"``) or by element
    (``"grievance g[China]" = 150``). Either way the result holds one entry
    per element, keyed ``"name[element, ...]"`` (see
    :meth:`armsdyn.model.Variable.element_name`), so a scenario can override
    one element of a base value.
    """
    if not isinstance(table, dict):
        problems.add(where, f"expected a table of parameter = value, got {describe_input(table)}")
        return {}
    constants = [v.name for v in model.of_kind("constant")]
    out: dict[str, ParameterValue] = {}
    # Elements override a whole value given in the same table, whatever the order.
    for key, value in sorted(table.items(), key=lambda item: "[" in item[0]):
        path = f'{where}."{key}"'
        base = key.split("[", 1)[0].strip() if "[" in key else key
        try:
            var = model.variable(base)
        except KeyError:
            hint = did_you_mean(base, constants)
            problems.add(path, f"unknown parameter in model {model.path}{hint}")
            continue
        if var.kind == "lookup":
            out.update(_parse_lookup(model, var, key, value, path, problems))
            continue
        if var.kind != "constant":
            problems.add(
                path,
                f"{var.name!r} is a {var.kind}, not a constant; only constants can be set "
                f"(stocks start from constants such as 'initial ...'); constants: {', '.join(constants)}",
            )
            continue
        if "[" in key:
            try:
                _, element = model.element(f"{var.name}{key[len(key.split('[', 1)[0]) :]}")
            except KeyError as exc:
                problems.add(path, str(exc.args[0]))
                continue
            parsed = _parse_value(value, path, problems)
            if parsed is not None and element is not None:
                out[var.element_name(element)] = parsed
            continue
        if not var.dims:
            if isinstance(value, dict):
                problems.add(path, f"{var.name!r} has no subscripts; give a number or a list of [time, value] pairs")
                continue
            parsed = _parse_value(value, path, problems)
            if parsed is not None:
                out[var.name] = parsed
            continue
        if not isinstance(value, dict):
            parsed = _parse_value(value, path, problems)
            if parsed is not None:  # one value for every element
                out.update({var.element_name(e): parsed for e in var.elements()})
            continue
        given: dict[tuple[str, ...], ParameterValue] = {}
        for label, item in value.items():
            try:
                _, element = model.element(f"{var.name}[{label}]")
            except KeyError as exc:
                problems.add(f"{path}.{label}", str(exc.args[0]))
                continue
            parsed = _parse_value(item, f"{path}.{label}", problems)
            if parsed is not None and element is not None:
                given[element] = parsed
        missing = [", ".join(e) for e in var.elements() if e not in given]
        if missing and len(given) + len(missing) == len(var.elements()) and len(value) == len(given):
            problems.add(
                path,
                f"sets {var.name!r} whole but misses element(s) {'; '.join(missing)}; give every element "
                f"({'; '.join(', '.join(e) for e in var.elements())}) or set single ones as "
                f'"{var.name}[{missing[0]}]"',
            )
            continue
        out.update({var.element_name(e): v for e, v in given.items()})
    in_range = _range_checker(model, problems)
    for key in list(out):
        if model.variable(key.split("[", 1)[0]).kind == "lookup":
            continue  # a graphical function's points: checked as points above
        if not in_range(out[key], model.variable(key.split("[", 1)[0]), f'{where}."{key}"', owner):
            del out[key]
    return out


def _range_checker(model: Model, problems: Problems) -> Any:
    """A check of an override against the closed range the model declares (Vensim ``units [min, max]``)."""

    def in_range(value: ParameterValue, var: Variable, path: str, owner: str) -> bool:
        lo, hi = var.limits
        values = [v for _, v in value] if isinstance(value, tuple) else [value]
        bad = [v for v in values if (not math.isnan(lo) and v < lo) or (not math.isnan(hi) and v > hi)]
        if not bad:
            return True
        allowed = f"[{'-inf' if math.isnan(lo) else f'{lo:g}'}, {'inf' if math.isnan(hi) else f'{hi:g}'}]"
        problems.add(
            path,
            f"{owner}{var.name!r} = {bad[0]:g} is outside the range {allowed} that {model.path} declares "
            "for it (its ends are allowed)",
        )
        return False

    return in_range


def _parse_lookup(
    model: Model, var: Variable, key: str, value: Any, path: str, problems: Problems
) -> dict[str, ParameterValue]:
    """A graphical function (lookup) replaced by a list of [x, y] points, as Vensim users redraw one.

    A subscripted lookup is redrawn whole (the same points for every element) or by element
    (``"effect of threat[USA]"``); either way the result holds one entry per element, keyed
    ``"name[element, ...]"``, so that an element's own points win over the whole lookup's, as
    for constants.
    """
    if "[" in key:
        try:
            _, element = model.element(f"{var.name}{key[len(key.split('[', 1)[0]) :]}")
        except KeyError as exc:
            problems.add(path, str(exc.args[0]))
            return {}
        name = var.name if element is None else var.element_name(element)
        points = _lookup_points(name, value, path, problems)
        return {} if points is None else {name: points}
    if var.dims and isinstance(value, dict):
        first = ", ".join(var.elements()[0])
        problems.add(
            path,
            f"{var.name!r} is a subscripted lookup: give one list of [x, y] points for every element, "
            f'or set one element, e.g. "{var.name}[{first}]" = [[0, 0], [1, 1]]',
        )
        return {}
    points = _lookup_points(var.name, value, path, problems)
    if points is None:
        return {}
    return {var.element_name(e): points for e in var.elements()} if var.dims else {var.name: points}


def _lookup_points(name: str, value: Any, path: str, problems: Problems) -> ParameterValue | None:
    """The [x, y] points of one lookup's (or element's) new table, or None with the problem recorded."""
    if not isinstance(value, list) or len(value) < 2:
        problems.add(
            path,
            f"{name!r} is a lookup (graphical function): give at least two [x, y] points, "
            f"e.g. [[0, 0], [1, 1]], got {describe_input(value)}",
        )
        return None
    parsed = _parse_value(value, path, Problems(""))
    if parsed is None or not isinstance(parsed, tuple):
        what = "its points must be [x, y] pairs of finite numbers, x increasing strictly"
        problems.add(path, f"{name!r} is a lookup: {what}")
        return None
    return parsed


def _parse_value(value: Any, path: str, problems: Problems) -> ParameterValue | None:
    if isinstance(value, int | float) and not isinstance(value, bool):
        if math.isnan(value):
            problems.add(path, "must be a number, got nan")
            return None
        return float(value)
    if isinstance(value, list) and value:
        pairs = []
        for i, pair in enumerate(value):
            ok = (
                isinstance(pair, list)
                and len(pair) == 2
                and all(isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x) for x in pair)
            )
            if not ok:
                what = describe_input(pair)
                problems.add(f"{path}[{i}]", f"expected a [time, value] pair of finite numbers, got {what}")
                return None
            pairs.append((float(pair[0]), float(pair[1])))
        times = [t for t, _ in pairs]
        if any(b <= a for a, b in itertools.pairwise(times)):
            problems.add(path, "times of a [time, value] series must increase strictly")
            return None
        return tuple(pairs)
    problems.add(path, f"expected a number or a list of [time, value] pairs, got {describe_input(value)}")
    return None


def _parse_scenarios(
    tables: Any, base: dict[str, ParameterValue], model: Model, problems: Problems
) -> tuple[Scenario, ...]:
    if tables is None:
        return (Scenario(name="base", description="The model with the base parameters", parameters=base),)
    if not tables:
        problems.add("scenarios", "is empty; give at least one [[scenarios]] table, or none for a single 'base' run")
    scenarios = []
    seen: dict[str, int] = {}
    for i, table in enumerate(tables):
        where = f"scenarios[{i}]"
        good = check_table(table, "scenarios", where, problems)
        name = good.get("name")
        if name is None:
            if "name" not in table:
                problems.add(f"{where}.name", "missing; every scenario needs a unique name")
            continue
        if not SAFE_NAME.match(name):
            problems.add(f"{where}.name", f"{name!r} is not a safe name ({SAFE_NAME_RULE})")
            continue
        if name in seen:
            problems.add(f"{where}.name", f"duplicate scenario name {name!r} (also scenarios[{seen[name]}])")
            continue
        seen[name] = i
        own = parse_parameters(
            good.get("parameters", {}), f"{where}.parameters", model, problems, owner=f"scenario {name!r}: "
        )
        scenarios.append(
            Scenario(
                name=name,
                description=good.get("description", ""),
                parameters={**base, **own},
                baseline=good.get("baseline"),
            )
        )
    for scenario in scenarios:
        if scenario.baseline is None:
            continue
        where = f"scenarios[{seen[scenario.name]}].baseline"
        others = [s.name for s in scenarios if s.name != scenario.name]
        if scenario.baseline == scenario.name:
            problems.add(where, f"scenario {scenario.name!r} cannot be its own baseline; name another scenario")
        elif scenario.baseline not in others:
            problems.add(
                where,
                f"unknown scenario {scenario.baseline!r}{did_you_mean(scenario.baseline, others)} "
                f"(scenarios: {', '.join(others)})",
            )
    return tuple(scenarios)


def _check_variables(names: list[str], where: str, model: Model, problems: Problems) -> list[str]:
    out = []
    for i, name in enumerate(names):
        try:
            var = model.variable(name)
        except KeyError:
            problems.add(
                f"{where}[{i}]", f"unknown variable {name!r} in model {model.path}{did_you_mean(name, model.variables)}"
            )
            continue
        if var.kind == "lookup":
            problems.add(f"{where}[{i}]", f"{var.name!r} is a lookup table, which has no values over time")
            continue
        out.append(var.name)
    return out


def _unknown_element(name: str, allowed: Iterable[str], exc: KeyError, what: str = "parameter") -> str:
    """Why `name` names nothing: an unknown name (with the closest allowed), or the model's word on an element."""
    if "[" in name:
        return str(exc.args[0])  # names the variable's elements
    return f"unknown {what} {name!r}{did_you_mean(name, allowed)}"


def _check_output_variable(
    name: str, where: str, model: Model, problems: Problems, *, whole: bool = False
) -> tuple[str, str] | None:
    """A study output's variable: (the variable to save, the name to read), e.g. ("arms", "arms[USA]").

    With `whole`, a subscripted variable may also be named whole (a fan chart draws a band per element).
    """
    try:
        var, element = model.element(name)
    except KeyError as exc:
        hint = did_you_mean(name, model.variables)
        problems.add(
            where, f"unknown variable {name!r} in model {model.path}{hint}" if "[" not in name else exc.args[0]
        )
        return None
    if var.kind == "lookup":
        problems.add(where, f"{var.name!r} is a lookup table, which has no values over time")
        return None
    if var.dims and element is None and not whole:
        problems.add(
            where, f"{var.name!r} has one value per element; name one, e.g. {var.element_name(var.elements()[0])!r}"
        )
        return None
    return var.name, var.element_name(element) if element is not None else var.name


def _parse_output(table: dict[str, Any], model: Model, problems: Problems) -> tuple[str, ...]:
    good = check_table(table, "output", "output", problems)
    if "variables" not in good:
        return tuple(v.name for v in model.of_kind("stock", "flow"))
    names = _check_variables(good["variables"], "output.variables", model, problems)
    if not good["variables"]:
        problems.add("output.variables", "is empty; name at least one variable or drop the key for stocks and flows")
    return tuple(dict.fromkeys(names))


def _parse_figures(
    tables: list[dict[str, Any]], scenario_names: set[str], model: Model, problems: Problems
) -> tuple[FigureSpec, ...]:
    figures = []
    names: dict[str, int] = {}  # file name, case-folded (file systems may ignore case) -> index
    for i, table in enumerate(tables):
        where = f"figures[{i}]"
        good = check_table(table, "figures", where, problems)
        kind = good.get("kind")
        if kind not in FIGURE_KINDS:
            if "kind" not in table:
                problems.add(f"{where}.kind", f"missing (allowed: {', '.join(FIGURE_KINDS)})")
            elif kind is not None:
                problems.add(f"{where}.kind", unknown_name("figure kind", kind, FIGURE_KINDS))
            continue
        layouts, required = FIGURE_KINDS[kind].layouts, FIGURE_KINDS[kind].required
        takes = (*required, *FIGURE_KINDS[kind].optional)
        for key in ("variables", "panels", "metrics", "parameter"):
            if key in good and key not in takes:
                problems.add(f"{where}.{key}", f"not used by kind {kind!r} (it takes: {', '.join(takes) or 'none'})")
            elif key in required and not good.get(key):
                problems.add(f"{where}.{key}", f"missing or empty; kind {kind!r} needs it")
        variables = _check_variables(good.get("variables", []), f"{where}.variables", model, problems)
        # Refused here, not after the runs when the figure is drawn (and on every redraw).
        refusal = diagram_refusal(model, variables) if FIGURE_KINDS[kind].reads_model else None
        if refusal:
            problems.add(f"{where}.variables", refusal)
        if kind == "phase_portrait" and good.get("variables") and len(good["variables"]) != 2:
            problems.add(
                f"{where}.variables",
                f"a phase portrait takes exactly two variables (x, y), got {len(good['variables'])}",
            )
        panels = tuple(
            tuple(_check_variables(panel, f"{where}.panels[{j}]", model, problems))
            for j, panel in enumerate(good.get("panels", []))
        )
        parameter = ""
        if good.get("parameter"):
            try:
                var, element = model.element(good["parameter"])
                parameter = var.element_name(element) if element is not None else var.name
            except KeyError as exc:
                constants = [v.name for v in model.of_kind("constant")]
                hint = did_you_mean(good["parameter"], constants)
                unknown = f"unknown parameter {good['parameter']!r}{hint}"
                problems.add(f"{where}.parameter", exc.args[0] if "[" in good["parameter"] and not hint else unknown)
        for j, s in enumerate(good.get("scenarios", [])):
            if s not in scenario_names:
                problems.add(f"{where}.scenarios[{j}]", f"unknown scenario {s!r}{did_you_mean(s, scenario_names)}")
        layout = good.get("layout", layouts[0])
        if layout not in layouts:
            problems.add(
                f"{where}.layout",
                unknown_name(f"layout for {kind}", layout, layouts),
            )
        name = good.get("name", kind)
        if not SAFE_NAME.match(name):
            problems.add(f"{where}.name", f"{name!r} is not a safe file name ({SAFE_NAME_RULE})")
        elif name.casefold() in names:
            j = names[name.casefold()]
            problems.add(
                f"{where}.name",
                f"figure name {name!r} gives the same files as figures[{j}] ({name}.pdf, ...; "
                "file names may ignore case); give each figure its own name",
            )
        else:
            names[name.casefold()] = i
        figures.append(
            FigureSpec(
                kind=kind,
                name=name,
                variables=tuple(variables),
                scenarios=tuple(good.get("scenarios", [])),
                layout=layout,
                panels=panels,
                metrics=tuple(good.get("metrics", [])),
                parameter=parameter,
                model=str(model.path.resolve()) if FIGURE_KINDS[kind].reads_model else "",
            )
        )
    return tuple(figures)


def _check_metric_names(
    figures: tuple[FigureSpec, ...],
    variables: tuple[str, ...],
    model: Model,
    attributed: list[str],
    problems: Problems,
) -> tuple[tuple[FigureSpec, ...], tuple[str, ...]]:
    """Check metric names that figures use; return the figures and the model variables the metrics need saved.

    `attributed` are the ``[attribution]`` columns of ``metrics.csv``: a ``metric_bars`` figure may
    draw them (it then reads ``loops.nc``); they are per scenario, so no other figure can.
    """

    needed: list[str] = []
    available = metrics.metric_names(model, variables)
    known = [*available, *attributed]
    checked = []
    for i, fig in enumerate(figures):
        loops = False
        for j, name in enumerate(fig.metrics):
            where = f"figures[{i}].metrics[{j}]"
            if name in available:
                needed += available[name]
            elif name in attributed and fig.kind == "metric_bars":
                loops = True
            elif name in attributed:
                problems.add(
                    where, f"{name!r} is an [attribution] column, one value a scenario: draw it with metric_bars"
                )
            else:
                problems.add(where, f"unknown metric {name!r} for this model{did_you_mean(name, known)}")
        checked.append(replace(fig, attribution_metrics=True) if loops else fig)
    return tuple(checked), tuple(dict.fromkeys(needed))


def _parse_metrics(table: dict[str, Any], scenario_names: set[str], problems: Problems) -> MetricsSpec:
    good = check_table(table, "metrics", "metrics", problems)
    baseline = good.get("baseline", "")
    if baseline and baseline not in scenario_names:
        problems.add("metrics.baseline", f"unknown scenario {baseline!r}{did_you_mean(baseline, scenario_names)}")
    return MetricsSpec(baseline=baseline)


def _parse_sensitivity(
    table: dict[str, Any],
    scenarios: tuple[Scenario, ...],
    variables: tuple[str, ...],
    model: Model,
    problems: Problems,
) -> tuple[SensitivitySpec | None, tuple[str, ...]]:
    """Validate ``[sensitivity]``; return the spec and the variables its outputs need saved."""
    good = check_table(table, "sensitivity", "sensitivity", problems)
    n_before = len(problems.items)
    method = good.get("method")
    if method is None:
        problems.add("sensitivity.method", f"missing (allowed: {', '.join(METHODS)})")
    elif method not in METHODS:
        problems.add(
            "sensitivity.method",
            unknown_name("method", method, METHODS),
        )
    for key, low in (("samples", 1), ("levels", 2), ("seed", 0)):
        if key in good and good[key] < low:
            problems.add(f"sensitivity.{key}", f"must be at least {low}, got {good[key]}")
    if method == "morris" and good.get("levels", 4) % 2:
        problems.add("sensitivity.levels", f"morris needs an even number of levels, got {good['levels']}")
    names = [s.name for s in scenarios]
    scenario = good.get("scenario", names[0] if names else "")
    if scenario not in names:
        problems.add("sensitivity.scenario", f"unknown scenario {scenario!r}{did_you_mean(scenario, names)}")
    constants = [v.name for v in model.of_kind("constant")]
    parameters = []
    seen: set[str] = set()
    for i, entry in enumerate(good.get("parameters", [])):
        where = f"sensitivity.parameters[{i}]"
        entry = check_table(entry, "sensitivity.parameters", where, problems)
        name = entry.get("name")
        if name is None:
            problems.add(f"{where}.name", "missing; name a model constant")
            continue
        try:
            var, element = model.element(name)  # a constant, or one element of a subscripted one
        except KeyError as exc:
            hint = did_you_mean(name, constants) if "[" not in name else ""
            problems.add(
                f"{where}.name", f"unknown parameter {name!r}{hint}" if hint or "[" not in name else exc.args[0]
            )
            continue
        if var.kind != "constant":
            problems.add(f"{where}.name", f"{var.name!r} is a {var.kind}, not a constant")
            continue
        sampled = var.element_name(element) if element is not None else var.name
        if sampled in seen:
            problems.add(f"{where}.name", f"{sampled!r} is sampled twice")
            continue
        seen.add(sampled)
        dist = entry.get("distribution", "unif")
        bounds = entry.get("bounds")
        if dist not in DISTRIBUTIONS:
            problems.add(
                f"{where}.distribution",
                unknown_name("distribution", dist, DISTRIBUTIONS),
            )
            continue
        problem = bounds_problem(bounds, dist, method)
        if problem or bounds is None:  # missing bounds are a problem too: both hold together
            problems.add(f"{where}.bounds", problem)
            continue
        if dist in ("unif", "logunif", "triang", "truncnorm"):  # samples lie between the first two numbers
            in_range = _range_checker(model, problems)
            if not all(in_range(float(b), var, f"{where}.bounds", "sampled ") for b in bounds[:2]):
                continue
        also = []
        for j, other in enumerate(entry.get("also", [])):
            try:
                also_var, also_element = model.element(other)
            except KeyError as exc:
                hint = did_you_mean(other, constants)
                problems.add(
                    f"{where}.also[{j}]", f"unknown parameter {other!r}{hint}" if "[" not in other else exc.args[0]
                )
                continue
            tied = also_var.element_name(also_element) if also_element is not None else also_var.name
            if also_var.kind != "constant" or tied in seen:
                problems.add(f"{where}.also[{j}]", f"{tied!r} is not a constant sampled only here")
                continue
            seen.add(tied)
            also.append(tied)
        parameters.append(SampledParameter(sampled, tuple(float(b) for b in bounds), dist, tuple(also)))
    if ("parameters" in good and not good["parameters"]) or "parameters" not in good:
        problems.add("sensitivity.parameters", "missing or empty; add [[sensitivity.parameters]] tables")
    outputs = []
    needed: list[str] = []

    available = metrics.metric_names(model, variables)
    for i, entry in enumerate(good.get("outputs", [])):
        where = f"sensitivity.outputs[{i}]"
        entry = check_table(entry, "sensitivity.outputs", where, problems)
        if ("metric" in entry) == ("variable" in entry):
            problems.add(where, "give exactly one of metric or variable")
            continue
        if "metric" in entry:
            name = entry["metric"]
            if name not in available:
                problems.add(f"{where}.metric", f"unknown metric {name!r}{did_you_mean(name, available)}")
                continue
            needed += available[name]
            outputs.append(Output(name=name, metric=name))
            continue
        checked = _check_output_variable(entry["variable"], f"{where}.variable", model, problems)
        aggregate = entry.get("aggregate", "final")
        if aggregate not in AGGREGATES:
            problems.add(
                f"{where}.aggregate",
                unknown_name("aggregate", aggregate, AGGREGATES),
            )
            continue
        if (aggregate == "at") != ("at" in entry):
            problems.add(f"{where}.at", 'give a time with aggregate = "at", and only then')
            continue
        if checked:
            saved, named = checked
            label = f"{named} at {entry['at']:g}" if aggregate == "at" else f"{named} {aggregate}"
            needed.append(saved)
            outputs.append(Output(name=label, variable=named, aggregate=aggregate, at=float(entry.get("at", "nan"))))
    if not good.get("outputs"):
        problems.add("sensitivity.outputs", "missing or empty; add [[sensitivity.outputs]] tables")
    fan_checked = [
        _check_output_variable(name, f"sensitivity.fan_variables[{i}]", model, problems, whole=True)
        for i, name in enumerate(good.get("fan_variables", []))
    ]
    fan = tuple(named for _, named in filter(None, fan_checked))
    needed += [saved for saved, _ in filter(None, fan_checked)]
    # A missing method was recorded as a problem above.
    if len(problems.items) > n_before or method is None:
        return None, ()
    spec = SensitivitySpec(
        method=method,
        parameters=tuple(parameters),
        outputs=tuple(outputs),
        samples=good.get("samples", 256),
        seed=good.get("seed", 0),
        levels=good.get("levels", 4),
        second_order=good.get("second_order", False),
        scenario=scenario,
        fan_variables=fan,
        variables=tuple(dict.fromkeys(needed)),
    )
    return spec, spec.variables


def bounds_problem(bounds: list[float] | None, dist: str, method: str | None) -> str:
    """What is wrong with a parameter's bounds for its distribution ("" if nothing)."""
    want = DISTRIBUTIONS[dist]
    if bounds is None:
        return f"missing; {dist} takes {want} numbers"
    if len(bounds) != want:
        return f"{dist} takes {want} numbers, got {len(bounds)}"
    if not all(math.isfinite(b) for b in bounds):
        return f"must be finite numbers, got {bounds}"
    if dist in ("unif", "logunif", "triang", "truncnorm") and not bounds[0] < bounds[1]:
        return f"low must be below high, got {bounds[0]} and {bounds[1]}"
    if dist == "logunif" and bounds[0] <= 0:
        return f"logunif needs a positive low bound, got {bounds[0]}"
    if dist in ("norm", "lognorm") and bounds[1] <= 0:
        return f"the standard deviation must be positive, got {bounds[1]}"
    if method in ("oat", "grid") and dist not in ("unif", "logunif"):
        return f"method {method!r} needs unif or logunif bounds, got {dist}"
    return ""
