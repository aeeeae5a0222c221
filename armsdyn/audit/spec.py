"""Audit configs: the [audit], [uncertainties] and [[claims]] tables, validated into an :class:`AuditSpec`.

See :mod:`armsdyn.audit` for the format.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from armsdyn.config import (
    Experiment,
    Problems,
    bounds_problem,
    check_table,
    describe_input,
    parse_config,
    read_toml,
    unknown_name,
)
from armsdyn.errors import did_you_mean
from armsdyn.metrics import metric_names
from armsdyn.predicates import Predicate, PredicateError, parse_predicate
from armsdyn.specs import DISTRIBUTIONS, SampledParameter

SAMPLINGS = ("latin", "sobol")
#: Metric columns holding text (compared with == or != in predicates); per-state ones end in the state's name.
TEXT_METRICS = ("fault", "fault variable", "stability", "regime", "treaty status")
TEXT_PER_STATE = ("breakout status ",)
#: Per-state metric columns that compare a scenario with its baseline.
BASELINE_PER_STATE = ("insecurity reduction vs baseline ", "foregone output ")


def is_text_metric(name: str) -> bool:
    """True for a metric column holding text rather than numbers."""
    return name in TEXT_METRICS or name.startswith(TEXT_PER_STATE)


def is_baseline_metric(name: str) -> bool:
    """True for a metric column that compares a scenario with its baseline."""
    return name.startswith(BASELINE_PER_STATE)


def constant_values(model: Any) -> dict[str, float]:
    """Every constant a claim or an uncertainty may name, with the model file's value.

    Scalar constants by name; each element of a subscripted constant by its
    element name (``"adoption time[A]"``).
    """
    values: dict[str, float] = {}
    for var in model.of_kind("constant"):
        if not var.dims and var.default is not None:
            values[var.name] = float(var.default)
        elif var.dims and var.defaults:
            values |= {var.element_name(e): float(v) for e, v in zip(var.elements(), var.defaults, strict=True)}
    return values


_SCHEMA: dict[str, dict[str, str]] = {
    "claims": {"name": "string", "text": "string", "predicate": "string", "scenario": "string"},
    "uncertainties": {"parameters": "array of tables", "switches": "array of tables"},
    "uncertainties.parameters": {
        "name": "string",
        "bounds": "list of numbers",
        "distribution": "string",
        "also": "list of strings",
    },
    "uncertainties.switches": {"name": "string", "values": "list of numbers", "also": "list of strings"},
    "audit": {
        "samples": "integer",
        "seed": "integer",
        "sampling": "string",
        "scenario": "string",
        "min_density": "number",
        "peel_alpha": "number",
        "paste_alpha": "number",
        "mass_min": "number",
        "boxes": "integer",
    },
}
_EXTRA = ("claims", "uncertainties", "audit")


@dataclass(frozen=True)
class Switch:
    """A structural alternative: a constant taking one of a few values, each equally likely."""

    name: str
    values: tuple[float, ...]
    also: tuple[str, ...] = ()


@dataclass(frozen=True)
class Claim:
    """A claim of a text, as a predicate over one scenario's metrics.

    Attributes
    ----------
    name, text : str
        Its label, and the claim it paraphrases with a citation.
    predicate : Predicate
    scenario : str
        The scenario it is evaluated in.
    baseline : str
        The scenario's baseline ("" for none), run with the same draws.
    """

    name: str
    text: str
    predicate: Predicate
    scenario: str
    baseline: str = ""


@dataclass(frozen=True)
class AuditSpec:
    """A validated audit: the experiment, its uncertainty space and its claims."""

    experiment: Experiment
    claims: tuple[Claim, ...]
    parameters: tuple[SampledParameter, ...]
    switches: tuple[Switch, ...] = ()
    samples: int = 1024
    seed: int = 0
    sampling: str = "latin"
    min_density: float = 0.8
    peel_alpha: float = 0.05
    paste_alpha: float = 0.05
    mass_min: float = 0.05
    boxes: int = 2

    @property
    def dimensions(self) -> tuple[str, ...]:
        """The sampled dimensions: parameters, then switches."""
        return tuple(p.name for p in self.parameters) + tuple(s.name for s in self.switches)


# --------------------------------------------------------------------------- config


def load_audit(path: str | os.PathLike[str]) -> AuditSpec:
    """Read and validate an audit config (see the module docstring).

    Raises
    ------
    ConfigError
        Listing every problem found, each with its key path.
    """
    path = Path(path)
    raw, text = read_toml(path)
    return parse_audit(raw, text=text, source=path)


def parse_audit(raw: Mapping[str, Any], *, text: str = "", source: Path | None = None) -> AuditSpec:
    """Validate an already-parsed audit config; see :func:`load_audit`."""
    rest = {k: v for k, v in raw.items() if k not in _EXTRA}
    experiment = parse_config(rest, text=text, source=source)
    problems = Problems(str(source) if source else "<config>")
    model = experiment.model
    names = [s.name for s in experiment.scenarios]

    table = _check(raw.get("audit", {}), "audit", "audit", problems)
    sampling = table.get("sampling", "latin")
    if sampling not in SAMPLINGS:
        problems.add("audit.sampling", unknown_name("sampling", sampling, SAMPLINGS))
    for key, low, high in (("samples", 2, 10_000_000), ("seed", 0, 2**63 - 1), ("boxes", 1, 10)):
        if key in table and not low <= table[key] <= high:
            problems.add(f"audit.{key}", f"must be between {low} and {high}, got {table[key]}")
    for key in ("min_density", "peel_alpha", "paste_alpha", "mass_min"):
        if key in table and not 0 < table[key] < 1:
            problems.add(f"audit.{key}", f"must be between 0 and 1 (exclusive), got {table[key]}")
    default_scenario = table.get("scenario", names[0])
    if default_scenario not in names:
        problems.add("audit.scenario", f"unknown scenario {default_scenario!r}{did_you_mean(default_scenario, names)}")
        default_scenario = names[0]

    parameters, switches = _parse_uncertainties(raw.get("uncertainties"), model, problems)
    claims = _parse_claims(raw.get("claims"), experiment, default_scenario, problems)
    sampled = {p.name for p in parameters} | {o for p in parameters for o in p.also}
    sampled |= {s.name for s in switches} | {o for s in switches for o in s.also}
    for scenario in {c.scenario for c in claims} | {c.baseline for c in claims if c.baseline}:
        series = [k for k, v in experiment.scenario(scenario).parameters.items() if isinstance(v, tuple)]
        series = [k for k in series if k not in sampled]
        if series:
            problems.add(
                "claims",
                f"scenario {scenario!r} sets {', '.join(map(repr, series))} as a time series; "
                "an audit runs scenarios whose parameters are constants",
            )
    problems.raise_if_any()
    return AuditSpec(
        experiment=experiment,
        claims=tuple(claims),
        parameters=tuple(parameters),
        switches=tuple(switches),
        samples=table.get("samples", 1024),
        seed=table.get("seed", 0),
        sampling=sampling,
        min_density=float(table.get("min_density", 0.8)),
        peel_alpha=float(table.get("peel_alpha", 0.05)),
        paste_alpha=float(table.get("paste_alpha", 0.05)),
        mass_min=float(table.get("mass_min", 0.05)),
        boxes=table.get("boxes", 2),
    )


def _check(table: Any, section: str, where: str, problems: Problems) -> dict[str, Any]:
    return check_table(table, section, where, problems, schemas=_SCHEMA)


def _constant(model: Any, name: str, where: str, problems: Problems, seen: set[str]) -> str | None:
    """The constant (or element of a subscripted constant) `name` names, or None after adding the problem."""
    constants = list(constant_values(model))
    try:
        var, element = model.element(name)
    except KeyError as exc:
        known = name.split("[", 1)[0].strip() in {c.split("[", 1)[0] for c in constants}
        problems.add(where, str(exc.args[0]) if known else f"unknown parameter {name!r}{did_you_mean(name, constants)}")
        return None
    if var.kind != "constant":
        problems.add(where, f"{var.name!r} is a {var.kind}, not a constant; constants: {', '.join(constants)}")
        return None
    if var.dims and element is None:
        problems.add(
            where, f"{var.name!r} has one value per element; sample one, e.g. {var.element_name(var.elements()[0])!r}"
        )
        return None
    key = var.element_name(element) if element is not None else var.name
    if key in seen:
        problems.add(where, f"{key!r} is sampled twice")
        return None
    seen.add(key)
    return key


def _outside(model: Any, name: str, values: Sequence[float]) -> str:
    lo, hi = model.element(name)[0].limits
    bad = [v for v in values if (not math.isnan(lo) and v < lo) or (not math.isnan(hi) and v > hi)]
    if not bad:
        return ""
    allowed = f"[{'-inf' if math.isnan(lo) else f'{lo:g}'}, {'inf' if math.isnan(hi) else f'{hi:g}'}]"
    return f"{bad[0]:g} is outside the range {allowed} that {model.path} declares for {name!r}"


def _parse_uncertainties(raw: Any, model: Any, problems: Problems) -> tuple[list[SampledParameter], list[Switch]]:
    if raw is None:
        problems.add("uncertainties", "missing; add [[uncertainties.parameters]] tables naming what to sample")
        return [], []
    table = _check(raw, "uncertainties", "uncertainties", problems)
    seen: set[str] = set()
    parameters: list[SampledParameter] = []
    for i, entry in enumerate(table.get("parameters", [])):
        where = f"uncertainties.parameters[{i}]"
        entry = _check(entry, "uncertainties.parameters", where, problems)
        if "name" not in entry:
            problems.add(f"{where}.name", "missing; name a model constant")
            continue
        name = _constant(model, entry["name"], f"{where}.name", problems, seen)
        dist = entry.get("distribution", "unif")
        if dist not in DISTRIBUTIONS:
            problems.add(f"{where}.distribution", unknown_name("distribution", dist, DISTRIBUTIONS))
            continue
        problem = bounds_problem(entry.get("bounds"), dist, None)
        if problem:
            problems.add(f"{where}.bounds", problem)
            continue
        bounds = tuple(float(b) for b in entry["bounds"])
        also = [_constant(model, o, f"{where}.also[{j}]", problems, seen) for j, o in enumerate(entry.get("also", []))]
        if name is None or None in also:
            continue
        if dist in ("unif", "logunif", "triang", "truncnorm"):
            for n in (name, *filter(None, also)):
                outside = _outside(model, n, bounds[:2])
                if outside:
                    problems.add(f"{where}.bounds", outside)
        parameters.append(SampledParameter(name, bounds, dist, tuple(a for a in also if a)))
    switches: list[Switch] = []
    for i, entry in enumerate(table.get("switches", [])):
        where = f"uncertainties.switches[{i}]"
        entry = _check(entry, "uncertainties.switches", where, problems)
        if "name" not in entry:
            problems.add(f"{where}.name", "missing; name a model constant")
            continue
        name = _constant(model, entry["name"], f"{where}.name", problems, seen)
        values = entry.get("values", [])
        if len(values) < 2 or len(set(values)) != len(values) or not all(math.isfinite(v) for v in values):
            problems.add(f"{where}.values", f"give two or more distinct finite numbers, got {describe_input(values)}")
            continue
        also = [_constant(model, o, f"{where}.also[{j}]", problems, seen) for j, o in enumerate(entry.get("also", []))]
        if name is None or None in also:
            continue
        for n in (name, *filter(None, also)):
            outside = _outside(model, n, values)
            if outside:
                problems.add(f"{where}.values", outside)
        switches.append(Switch(name, tuple(float(v) for v in values), tuple(a for a in also if a)))
    if not parameters and not switches:
        problems.add("uncertainties", "is empty; add [[uncertainties.parameters]] or [[uncertainties.switches]]")
    return parameters, switches


def predicate_names(experiment: Experiment, baseline: bool) -> tuple[list[str], list[str]]:
    """Names a claim's predicate may use (metric columns, constants and their elements), and those holding text."""
    model = experiment.model
    metrics = [m for m in metric_names(model, experiment.variables) if baseline or not is_baseline_metric(m)]
    allowed = [*metrics, *constant_values(model)]
    texts = [m for m in metrics if is_text_metric(m)]
    if baseline:
        allowed += [f"baseline {m}" for m in metrics if not is_baseline_metric(m)]
        texts += [f"baseline {m}" for m in texts]
    return allowed, texts


def _parse_claims(raw: Any, experiment: Experiment, default: str, problems: Problems) -> list[Claim]:
    if not raw:
        problems.add("claims", "missing or empty; add [[claims]] tables with name, text and predicate")
        return []
    if not isinstance(raw, list) or not all(isinstance(t, dict) for t in raw):
        problems.add("claims", f"expected an array of tables [[claims]], got {describe_input(raw)}")
        return []
    names = [s.name for s in experiment.scenarios]
    claims: list[Claim] = []
    seen: dict[str, int] = {}
    for i, entry in enumerate(raw):
        where = f"claims[{i}]"
        entry = _check(entry, "claims", where, problems)
        missing = [k for k in ("name", "text", "predicate") if k not in entry]
        if missing:
            problems.add(where, f"missing {', '.join(missing)}; a claim needs name, text and predicate")
            continue
        name = entry["name"]
        if name in seen:
            problems.add(f"{where}.name", f"duplicate claim name {name!r} (also claims[{seen[name]}])")
            continue
        seen[name] = i
        scenario = entry.get("scenario", default)
        if scenario not in names:
            problems.add(f"{where}.scenario", f"unknown scenario {scenario!r}{did_you_mean(scenario, names)}")
            continue
        found = experiment.scenario(scenario)
        baseline = found.baseline or experiment.metrics.baseline or ""
        baseline = "" if baseline == scenario else baseline
        allowed, texts = predicate_names(experiment, bool(baseline))
        try:
            predicate = parse_predicate(entry["predicate"], allowed, text_names=texts, where=f"{where}.predicate")
        except PredicateError as exc:
            problems.add("", str(exc))
            continue
        claims.append(Claim(name, entry["text"], predicate, scenario, baseline))
    return claims
