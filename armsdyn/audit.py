"""Claim audits and scenario discovery: where in the uncertainty space does each claim hold?

An audit config is an experiment config with three more tables::

    [audit]                         # optional
    samples = 10000                 # runs (default 1024)
    seed = 1984
    sampling = "latin"              # or "sobol" (scrambled Sobol sequence)
    scenario = "disarm"             # default scenario of the claims (default: the first)
    min_density = 0.8               # a PRIM box's share of runs of the outcome it describes
    boxes = 2                       # PRIM boxes per claim and outcome, at most

    [[uncertainties.parameters]]    # the [[sensitivity.parameters]] syntax
    name = "knowledge half life A"
    bounds = [2, 200]
    distribution = "logunif"        # unif, logunif, triang, norm, truncnorm, lognorm
    also = ["knowledge half life B"]

    [[uncertainties.switches]]      # a structural alternative: one of the values, equally likely
    name = "frontier push rate"
    values = [0, 0.05]

    [[claims]]
    name = "disarmament_barely_dampens"
    text = "Removing hardware does not much dampen insecurity (Buzan 1984, s.2)"
    predicate = "dampening efficiency A < 0.5"
    scenario = "disarm_knowledge_persists"   # optional; its baseline is run too

The space is sampled (Latin hypercube or scrambled Sobol, seeded), every
sample runs with the ensemble engine (in each claim's scenario, and in its
baseline when the scenario has one, with the same draws): its numba kernel in
this process when numba is installed (see :func:`numba_model`), else through
:func:`armsdyn.runner.run_chunked`. Each run is reduced to the final values of
the saved variables, and the metrics table of :func:`armsdyn.metrics.compute_metrics` is
computed from them (treaty metrics read only final values, so they are the same
as in a full run; faults are found on the full series). A predicate (see
:mod:`armsdyn.predicates`) names metric columns, model constants, and
``baseline <metric>`` for the same metric in the baseline run.

Per claim the audit reports the share of the space where it holds with a
Wilson 95% interval, PRIM boxes (Friedman and Fisher 1999) where it fails and
where it holds, found by the EMA Workbench's PRIM (Kwakkel 2017): coverage,
density, the peeling trajectory, the restricted dimensions with a quasi-p
value each (Bryant and Lempert 2010); and a CART tree as a second view.

References
----------
.. [1] Friedman, J. H. and Fisher, N. I. (1999). Bump hunting in high-dimensional
   data. *Statistics and Computing* 9, 123-143. https://doi.org/10.1023/A:1008894516817
.. [2] Bryant, B. P. and Lempert, R. J. (2010). Thinking inside the box.
   *Technological Forecasting and Social Change* 77(1), 34-49.
   https://doi.org/10.1016/j.techfore.2009.08.002
.. [3] Kwakkel, J. H. (2017). The Exploratory Modeling Workbench. *Environmental
   Modelling & Software* 96, 239-250. https://doi.org/10.1016/j.envsoft.2017.06.054
.. [4] Wilson, E. B. (1927). Probable inference, the law of succession, and
   statistical inference. *JASA* 22(158), 209-212.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import math
import os
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

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
from armsdyn.ensemble import CompiledModel, UnsupportedConstruct, compile_model
from armsdyn.errors import ConfigError, did_you_mean
from armsdyn.figures import SINGLE_COLUMN, paper_style, save_figure
from armsdyn.metrics import compute_metrics, metric_names
from armsdyn.model import TimeSettings, file_sha256
from armsdyn.output import MANIFEST_FILE, atomic_folder, build_manifest, now
from armsdyn.predicates import Predicate, PredicateError, parse_predicate
from armsdyn.runner import Reducer, run_chunked
from armsdyn.specs import DISTRIBUTIONS, SampledParameter

AUDIT_DIR = "audit"
SAMPLINGS = ("latin", "sobol")
FAULT_COLUMNS = ("fault", "fault variable", "fault time")
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


#: Quasi-p above which a box's restriction is reported as not significant.
SIGNIFICANCE = 0.05
#: Wilson interval: the normal quantile of a 95% interval.
Z95 = 1.959963984540054

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


# --------------------------------------------------------------------------- sampling


def sample(spec: AuditSpec, samples: int | None = None) -> pd.DataFrame:
    """Draws of every dimension, one row per run (parameters, then switches)."""
    from scipy.stats import qmc

    n = samples or spec.samples
    d = len(spec.dimensions)
    if spec.sampling == "sobol":
        with warnings.catch_warnings():  # balance needs a power of two; any n is still a valid design
            warnings.simplefilter("ignore", UserWarning)
            unit = qmc.Sobol(d, scramble=True, seed=spec.seed).random(n)
    else:
        unit = qmc.LatinHypercube(d, seed=spec.seed).random(n)
    columns: dict[str, np.ndarray] = {}
    p = len(spec.parameters)
    if p:
        from SALib.util import scale_samples

        problem = {
            "num_vars": p,
            "names": [q.name for q in spec.parameters],
            "bounds": [list(q.bounds) for q in spec.parameters],
            "dists": [q.distribution for q in spec.parameters],
        }
        scaled = scale_samples(unit[:, :p].copy(), problem)
        columns |= {q.name: scaled[:, i] for i, q in enumerate(spec.parameters)}
    for j, s in enumerate(spec.switches):
        index = np.minimum((unit[:, p + j] * len(s.values)).astype(int), len(s.values) - 1)
        columns[s.name] = np.asarray(s.values)[index]
    return pd.DataFrame(columns)


# --------------------------------------------------------------------------- running


@dataclass(frozen=True)
class FinalsReducer(Reducer):
    """Keeps each run's final values of the saved variables and its first fault (see :mod:`armsdyn.runner`)."""

    def __call__(self, ds: xr.Dataset, start: int) -> xr.Dataset:
        table = compute_metrics(ds)
        out = xr.Dataset(coords={"run": start + np.arange(ds.sizes["run"])})
        for name in self.outputs:
            if name in FAULT_COLUMNS:
                column = table[name].to_numpy()
                values = column.astype(float) if name == "fault time" else column.astype(str)
            else:
                da = next(v for k, v in ds.data_vars.items() if name in (k, v.attrs.get("long_name")))
                final = da.isel(time=-1, drop=True).astype(float)
                if final.ndim > 1:  # a subscripted variable: one output per element, as the store keeps (run,) only
                    flat = final.stack(element=final.dims[1:])
                    for i, element in enumerate(flat["element"].values.tolist()):
                        label = f"{name}[{', '.join(map(str, element))}]"
                        out[f"output: {label}"] = ("run", flat.values[:, i], {"long_name": label})
                    continue
                values = final.values
            out[f"output: {name}"] = ("run", values, {"long_name": name})
        return out


def _needed_variables(spec: AuditSpec) -> tuple[str, ...]:
    """Saved variables the claims' metrics need (all of them for a claim with a baseline)."""
    available = metric_names(spec.experiment.model, spec.experiment.variables)
    needed: list[str] = []
    for claim in spec.claims:
        for name in claim.predicate.names:
            metric = name.removeprefix("baseline ") if name.startswith("baseline ") else name
            needed += available.get(metric, [])
            if claim.baseline and is_baseline_metric(metric):
                needed += available[metric]
    return tuple(dict.fromkeys(needed))


def _run_values(
    spec: AuditSpec,
    draws: pd.DataFrame,
    *,
    workers: int | None,
    chunk_size: int,
    progress: bool,
) -> dict[str, pd.DataFrame]:
    """Run every scenario the claims need; return each one's metrics table (a row per run)."""
    experiment = spec.experiment
    model = experiment.model
    variables = _needed_variables(spec)
    scenarios = list(dict.fromkeys([c.scenario for c in spec.claims] + [c.baseline for c in spec.claims if c.baseline]))
    n = len(draws)
    compiled = numba_model(model.path)
    defaults = constant_values(model)
    runs: dict[str, tuple[xr.Dataset, dict[str, float | np.ndarray]]] = {}
    for name in scenarios:
        scenario = experiment.scenario(name)
        samples = {k: np.full(n, float(v)) for k, v in scenario.parameters.items() if not isinstance(v, tuple)}
        entries: list[SampledParameter | Switch] = [*spec.parameters, *spec.switches]
        for entry in entries:
            for target in (entry.name, *entry.also):
                samples[target] = draws[entry.name].to_numpy(dtype=float)
        reducer = FinalsReducer(outputs=(*variables, *FAULT_COLUMNS), attrs={})
        if compiled is not None:
            ds = _run_in_process(compiled, samples, experiment.time, variables, reducer, workers, chunk_size)
        else:
            size = chunk_size
            if workers != 1:  # one chunk per worker at least, so every worker has runs
                size = max(1, min(chunk_size, -(-n // (workers or os.cpu_count() or 1))))
            ds = run_chunked(
                model.path,
                samples,
                experiment.time,
                list(variables),
                reducer,
                chunk_size=size,
                workers=workers,
                progress=progress,
            )
        runs[name] = (ds, {**defaults, **samples})
    tables: dict[str, pd.DataFrame] = {}
    for claim in spec.claims:
        key = f"{claim.scenario}|{claim.baseline}"
        if key not in tables:
            tables[key] = _metrics_of(model, runs, claim.scenario, claim.baseline, variables, experiment.time.final)
    return tables


def numba_model(path: Path) -> CompiledModel | None:
    """The model compiled with numba's backend; None when numba is missing or cannot compile the model.

    An audit makes 10^4 to 10^5 runs of each scenario: numba's kernel runs the
    knowledge model about four times faster than numpy's generated code (3.8 s
    against 15 s for 10^4 runs on one core), and it compiles once (about 20 s,
    then cached on disk; loading it takes under a second). The engine's
    ``"auto"`` choice judges each call on its own and, in worker processes,
    each chunk, so it mostly keeps numpy.
    """
    try:
        compiled = compile_model(path, backend="numba")
        compiled.backend  # noqa: B018 - resolving the backend raises when numba is missing or cannot compile it
    except (ImportError, UnsupportedConstruct):
        return None
    return compiled


def _run_in_process(
    compiled: CompiledModel,
    samples: Mapping[str, np.ndarray],
    time: TimeSettings,
    variables: Sequence[str],
    reducer: FinalsReducer,
    threads: int | None,
    chunk_size: int,
) -> xr.Dataset:
    """Every sample through the numba kernel in this process, `threads` sharing each chunk, reduced chunk by chunk.

    Threads rather than worker processes: the kernel releases the GIL, and a
    worker process would spend seconds importing armsdyn and loading the
    kernel. Reducing each chunk as it comes keeps memory bounded as in
    :func:`armsdyn.runner.run_chunked`.
    """
    n = len(next(iter(samples.values())))
    before, compiled.threads = compiled.threads, threads
    try:
        parts = [
            reducer(compiled.run({k: v[lo : lo + chunk_size] for k, v in samples.items()}, time, variables), lo)
            for lo in range(0, n, chunk_size)
        ]
    finally:
        compiled.threads = before
    return xr.concat(parts, dim="run") if len(parts) > 1 else parts[0]


def _metrics_of(
    model: Any,
    runs: Mapping[str, tuple[xr.Dataset, dict[str, float | np.ndarray]]],
    scenario: str,
    baseline: str,
    variables: Sequence[str],
    final_time: float,
) -> pd.DataFrame:
    """The metrics table of a scenario's runs (and its baseline's, prefixed ``baseline ``), one row per run.

    Built by :func:`armsdyn.metrics.compute_metrics` from the runs' final values
    (every metric but the faults reads only those), the constants each run used
    as coordinates, and a ``baseline`` coordinate pairing each run with the
    baseline run of the same draws.
    """
    parts = [(scenario, "s")] + ([(baseline, "b")] if baseline else [])
    n = runs[scenario][0].sizes["run"]
    labels = [f"{tag}{i}" for _, tag in parts for i in range(n)]
    data = {}
    for v in variables:
        var = model.variable(v)
        # A subscripted variable was kept one element at a time; put its ranges back.
        labels_of = [var.element_name(e) for e in var.elements()] if var.dims else [v]
        values = np.stack(
            [np.concatenate([runs[s][0][f"output: {label}"].values for s, _ in parts]) for label in labels_of], axis=-1
        ).reshape(-1, 1, *var.shape)
        data[v] = xr.DataArray(
            values,
            dims=("scenario", "time", *var.dim_names),
            coords={name: list(elements) for name, elements in var.dims},
            attrs={"long_name": v},
        )
    constants = {
        k: ("scenario", np.concatenate([np.broadcast_to(runs[s][1][k], (n,)) for s, _ in parts]), {"long_name": k})
        for k in runs[scenario][1]
        if all(k in runs[s][1] for s, _ in parts)
    }
    coords: dict[str, Any] = {"scenario": labels, "time": [final_time], **constants}
    if baseline:
        coords["baseline"] = ("scenario", [f"b{i}" for i in range(n)] * 2)
    table = compute_metrics(xr.Dataset(data, coords=coords))
    for column in FAULT_COLUMNS:
        table[column] = np.concatenate([runs[s][0][f"output: {column}"].values for s, _ in parts])
    extra = {k: values for k, (_, values, _) in constants.items() if k not in table.columns}
    table = pd.concat([table, pd.DataFrame(extra, index=table.index)], axis=1)
    own = table.iloc[:n].reset_index(drop=True)
    if baseline:
        other = table.iloc[n:].reset_index(drop=True).add_prefix("baseline ")
        own = pd.concat([own, other], axis=1)
    return own


# --------------------------------------------------------------------------- analysis


def wilson(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a proportion k/n (default 95%)."""
    if n == 0:
        return (math.nan, math.nan)
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return (max(0.0, centre - half), min(1.0, centre + half))


@dataclass(frozen=True)
class Box:
    """A PRIM box: where a claim fails (or holds) with high density.

    Attributes
    ----------
    outcome : str
        ``"fails"`` or ``"holds"``: the runs the box describes.
    index : int
        The chosen step of the peeling trajectory.
    coverage, density, mass : float
        Share of the outcome's runs inside the box; share of the box's runs with
        the outcome; share of all runs inside the box.
    limits : dict
        Each restricted dimension to ``(lower, upper)`` (numbers) or a tuple of
        the values kept (switches).
    qp : dict
        Each restricted dimension's quasi-p value (the larger of its sides').
    trajectory : pandas.DataFrame
        The peeling (and pasting) trajectory: coverage, density, mass, res_dim.
    """

    outcome: str
    index: int
    coverage: float
    density: float
    mass: float
    limits: dict[str, Any]
    qp: dict[str, float]
    trajectory: pd.DataFrame = field(repr=False)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence the EMA Workbench's import-time warnings and its logging."""
    logger = logging.getLogger("EMA")
    level = logger.level
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        logger.setLevel(logging.ERROR)
        try:
            yield
        finally:
            logger.setLevel(level)


_NO_PRIM = "claim audits need the EMA Workbench's PRIM: pip install 'armsdyn[audit]'"


def _require_prim() -> None:
    """Fail before the runs when the EMA Workbench is missing, without importing it (see :func:`_prim_module`)."""
    if importlib.util.find_spec("ema_workbench") is None:
        raise ImportError(_NO_PRIM)


def _prim_module() -> Any:
    """The EMA Workbench's PRIM module, imported on first use.

    Importing it takes 4 to 10 s: the workbench imports its whole modelling
    framework, and its method logger inspects the call stack at import time,
    which costs more the more modules are loaded.
    """
    with _quiet():
        try:
            from ema_workbench.analysis import prim
        except ImportError:
            raise ImportError(_NO_PRIM) from None
    return prim


def prim_frame(draws: pd.DataFrame, switches: Sequence[str] = ()) -> pd.DataFrame:
    """The draws as PRIM takes them: numbers as floats, switches as categories."""
    x = draws.astype(float).copy()
    for name in switches:
        x[name] = pd.Categorical(x[name])
    return x


def select_box(trajectory: pd.DataFrame, min_density: float) -> int:
    """The step of a peeling trajectory to report.

    Among the steps with density >= `min_density`, the one with the best balance
    of coverage and density (their harmonic mean, the F1 score of the box as a
    classifier); when no step reaches `min_density`, the densest.
    """
    dense = trajectory[trajectory["density"] >= min_density]
    if len(dense):
        c, d = dense["coverage"], dense["density"]
        return int((2 * c * d / (c + d)).idxmax())
    return int(trajectory["density"].idxmax())


def find_boxes(
    x: pd.DataFrame,
    outcome: np.ndarray,
    *,
    label: str = "fails",
    min_density: float = 0.8,
    peel_alpha: float = 0.05,
    paste_alpha: float = 0.05,
    mass_min: float = 0.05,
    boxes: int = 2,
) -> list[Box]:
    """PRIM boxes of the runs where `outcome` is true (EMA Workbench's :class:`Prim`).

    Each box is chosen on its peeling trajectory by :func:`select_box`; the next
    box is searched among the runs outside it. Boxes whose density does not
    reach `min_density` are not reported.
    """
    y = np.asarray(outcome, dtype=int)
    if y.sum() < 2 or y.sum() > len(y) - 2:
        return []
    prim = _prim_module()
    found: list[Box] = []
    with _quiet():
        alg = prim.Prim(x, y, threshold=min_density, peel_alpha=peel_alpha, paste_alpha=paste_alpha, mass_min=mass_min)
        from ema_workbench.analysis.scenario_discovery_util import _determine_restricted_dims

        for _ in range(boxes):
            box = alg.find_box()
            if box is None or box.peeling_trajectory.shape[0] < 2:
                break
            trajectory = box.peeling_trajectory.reset_index(drop=True)
            i = select_box(trajectory, min_density)
            if trajectory.loc[i, "density"] < min_density or trajectory.loc[i, "res_dim"] == 0:
                break
            box.select(i)
            lims = box.box_lims[i]
            restricted = list(_determine_restricted_dims(lims, alg.box_init))
            limits: dict[str, Any] = {}
            for dim in restricted:
                if isinstance(alg.box_init[dim].iloc[0], set):
                    limits[dim] = tuple(sorted(lims[dim].iloc[0]))
                else:
                    limits[dim] = (float(lims[dim].iloc[0]), float(lims[dim].iloc[1]))
            qp = {dim: float(max(v for v in box.qp[i].get(dim, [-1]) if v is not None)) for dim in restricted}
            row = trajectory.loc[i]
            found.append(
                Box(
                    label,
                    i,
                    float(row["coverage"]),
                    float(row["density"]),
                    float(row["mass"]),
                    limits,
                    qp,
                    trajectory[["coverage", "density", "mass", "res_dim"]].astype(float),
                )
            )
    return found


def cart_view(x: pd.DataFrame, holds: np.ndarray, *, seed: int = 0) -> tuple[str, pd.Series]:
    """A CART tree of holds/fails (its text) and feature scores; without scikit-learn, KS scores only."""
    numbers = x.astype(float)
    try:
        from sklearn.tree import DecisionTreeClassifier, export_text
    except ImportError:
        import scipy.stats

        scores = {
            c: float(scipy.stats.ks_2samp(numbers[c][holds], numbers[c][~holds]).statistic)
            if holds.any() and (~holds).any()
            else 0.0
            for c in numbers
        }
        return "(scikit-learn not installed: no tree; scores are Kolmogorov-Smirnov statistics)", pd.Series(scores)
    leaf = max(5, len(x) // 50)
    tree = DecisionTreeClassifier(max_depth=3, min_samples_leaf=leaf, random_state=seed)
    tree.fit(numbers.to_numpy(), np.where(holds, "holds", "fails"))
    text = export_text(tree, feature_names=list(numbers.columns), decimals=3, show_weights=True)
    return text, pd.Series(tree.feature_importances_, index=numbers.columns)


def _num(v: float) -> str:
    return f"{v:.3g}"


def box_words(
    box: Box, dimensions: Mapping[str, tuple[float, float]] | None = None, *, alpha: float | None = None
) -> str:
    """The box as conditions: ``"latent threat weight A < 0.2 and knowledge half life A < 8"``.

    Most significant restriction first. A side at the full range of a dimension
    (in `dimensions`) is left out. With `alpha`, restrictions whose quasi-p
    exceeds it are left out too (unless all would be).
    """
    parts = []
    items = sorted(box.limits.items(), key=lambda item: box.qp.get(item[0], 1.0))
    if alpha is not None and any(box.qp.get(d, 1.0) <= alpha for d, _ in items):
        items = [(d, lim) for d, lim in items if box.qp.get(d, 1.0) <= alpha]
    for dim, lim in items:
        if dimensions is not None and dim in dimensions and isinstance(lim, tuple) and len(lim) == 2:
            lo_full, hi_full = dimensions[dim]
            low = lim[0] > lo_full + 1e-12 * max(1.0, abs(lo_full))
            high = lim[1] < hi_full - 1e-12 * max(1.0, abs(hi_full))
        else:
            low = high = True
        if dimensions is None or dim not in dimensions:
            values = ", ".join(_num(v) for v in lim)
            parts.append(f"{dim} is {values}" if len(lim) == 1 else f"{dim} is one of {values}")
        elif low and high:
            parts.append(f"{_num(lim[0])} < {dim} < {_num(lim[1])}")
        elif low:
            parts.append(f"{dim} > {_num(lim[0])}")
        elif high:
            parts.append(f"{dim} < {_num(lim[1])}")
    return " and ".join(parts)


@dataclass
class ClaimResult:
    """One claim's audit."""

    claim: Claim
    holds: np.ndarray
    undefined: np.ndarray
    boxes: list[Box]
    cart: str
    scores: pd.Series

    @property
    def share(self) -> float:
        """Share of the runs where the claim holds."""
        return float(self.holds.mean()) if self.holds.size else math.nan

    @property
    def interval(self) -> tuple[float, float]:
        """Wilson 95% interval of :attr:`share`."""
        return wilson(int(self.holds.sum()), int(self.holds.size))


@dataclass
class AuditResult:
    """An audit's samples, claims and boxes (see :func:`audit`)."""

    spec: AuditSpec
    draws: pd.DataFrame
    claims: list[ClaimResult]
    values: dict[str, pd.DataFrame]
    folder: Path | None = None

    def summary(self) -> pd.DataFrame:
        """A row per claim: scenario, runs, share holding with its 95% interval, undefined runs."""
        rows = []
        for r in self.claims:
            low, high = r.interval
            rows.append(
                {
                    "claim": r.claim.name,
                    "scenario": r.claim.scenario,
                    "baseline": r.claim.baseline,
                    "predicate": r.claim.predicate.text,
                    "runs": int(r.holds.size),
                    "holds": int(r.holds.sum()),
                    "share": r.share,
                    "share low": low,
                    "share high": high,
                    "undefined": int(r.undefined.sum()),
                    "text": r.claim.text,
                }
            )
        return pd.DataFrame(rows).set_index("claim")

    def ranges(self) -> dict[str, tuple[float, float]]:
        """Each numeric dimension's sampled range (min, max of the draws)."""
        switches = {s.name for s in self.spec.switches}
        return {c: (float(self.draws[c].min()), float(self.draws[c].max())) for c in self.draws if c not in switches}


def evaluate_claims(spec: AuditSpec, draws: pd.DataFrame, tables: Mapping[str, pd.DataFrame]) -> list[ClaimResult]:
    """Each claim's verdict per run, its PRIM boxes (where it fails and where it holds) and its CART view.

    Parameters
    ----------
    spec : AuditSpec
    draws : pandas.DataFrame
        The draws, a row per run (:func:`sample`).
    tables : mapping of str to pandas.DataFrame
        The metrics table of each claim's ``"scenario|baseline"``, a row per run.

    Returns
    -------
    list of ClaimResult
    """
    x = prim_frame(draws, [s.name for s in spec.switches])
    results = []
    for claim in spec.claims:
        table = tables[f"{claim.scenario}|{claim.baseline}"]
        truth = claim.predicate.evaluate({n: table[n].to_numpy() for n in claim.predicate.names})
        holds = truth == 1.0
        options: dict[str, Any] = {
            "min_density": spec.min_density,
            "peel_alpha": spec.peel_alpha,
            "paste_alpha": spec.paste_alpha,
            "mass_min": spec.mass_min,
            "boxes": spec.boxes,
        }
        boxes = find_boxes(x, ~holds, label="fails", **options) + find_boxes(x, holds, label="holds", **options)
        cart, scores = cart_view(draws, holds, seed=spec.seed)
        results.append(ClaimResult(claim, holds, np.isnan(truth), boxes, cart, scores))
    return results


def audit(
    config_or_experiment: str | os.PathLike[str] | AuditSpec,
    *,
    out: str | os.PathLike[str] | None = None,
    samples: int | None = None,
    force: bool = False,
    workers: int | None = 1,
    chunk_size: int = 8192,
    progress: bool = False,
    command: Sequence[str] | None = None,
) -> AuditResult:
    """Audit the claims of a config over its uncertainty space.

    Parameters
    ----------
    config_or_experiment : path-like or AuditSpec
        An audit config (see the module docstring) or a spec from :func:`load_audit`.
    out : path-like, optional
        Write the ``audit/`` folder here (atomically, with a manifest); nothing
        is written without it.
    samples : int, optional
        Runs (default: the config's ``[audit] samples``).
    force : bool
        Replace an existing folder armsdyn wrote.
    workers : int or None
        Threads sharing the numba kernel's runs, or local processes without numba
        (None: one per CPU); results do not depend on it.
    chunk_size : int
        Samples simulated together.
    progress : bool
        Show a progress bar on stderr.
    command : sequence of str, optional
        The command line recorded in the manifest.

    Returns
    -------
    AuditResult
    """

    started = now()
    spec = config_or_experiment if isinstance(config_or_experiment, AuditSpec) else load_audit(config_or_experiment)
    if samples is not None and samples < 2:
        msg = f"--samples must be at least 2, got {samples}"
        raise ConfigError(msg)
    draws = sample(spec, samples)
    _require_prim()
    tables = _run_values(spec, draws, workers=workers, chunk_size=max(1, chunk_size), progress=progress)
    results = evaluate_claims(spec, draws, tables)
    result = AuditResult(spec, draws, results, tables)
    if out is not None:
        result.folder = write_audit(result, out, force=force, started=started, command=command)
    return result


# --------------------------------------------------------------------------- output


def _pct(v: float) -> str:
    return f"{100 * v:.0f}%" if not math.isnan(v) else "—"


def _dimension_text(spec: AuditSpec) -> list[str]:
    lines = []
    for p in spec.parameters:
        also = f" (and {', '.join(p.also)} alike)" if p.also else ""
        if p.distribution in ("unif", "logunif"):
            scale = "log-uniform" if p.distribution == "logunif" else "uniform"
            lines.append(f"| {p.name}{also} | {_num(p.bounds[0])} to {_num(p.bounds[1])} | {scale} |")
        else:
            lines.append(f"| {p.name}{also} | {', '.join(map(_num, p.bounds))} | {p.distribution} |")
    for s in spec.switches:
        also = f" (and {', '.join(s.also)} alike)" if s.also else ""
        lines.append(f"| {s.name}{also} | {', '.join(map(_num, s.values))} | switch, equally likely |")
    return lines


def report_text(result: AuditResult) -> str:
    """``report.md``: each claim, its share holding and the conditions under which it fails, in words."""
    spec = result.spec
    exp = spec.experiment
    n = len(result.draws)
    method = "a Latin hypercube" if spec.sampling == "latin" else "a scrambled Sobol sequence"
    ranges = result.ranges()
    lines = [
        f"# Claim audit: {exp.description or exp.name}",
        "",
        f"{n:,} runs of `{exp.model.path.name}` at draws from {method} (seed {spec.seed}) over "
        f"{len(spec.dimensions)} uncertain assumptions; each claim's scenario (and its baseline) ran at every "
        "draw. Shares are of the sampled space, with Wilson 95% intervals; boxes are PRIM's (EMA Workbench), "
        "each the step of its peeling trajectory with the best balance of coverage and density (harmonic "
        f"mean) at a density of at least {_pct(spec.min_density)}; quasi-p values test each restriction "
        "(Bryant and Lempert 2010).",
        "",
        "| assumption | range | distribution |",
        "|---|---|---|",
        *_dimension_text(spec),
        "",
    ]
    for r in result.claims:
        c = r.claim
        low, high = r.interval
        where = f"scenario `{c.scenario}`" + (f", compared with `{c.baseline}`" if c.baseline else "")
        lines += [
            f"## {c.name}",
            "",
            f"> {c.text}",
            "",
            f"Predicate: `{c.predicate.text}` ({where}).",
            "",
        ]
        verdict = (
            f"The claim holds in {_pct(r.share)} of the space (95% interval {100 * low:.1f} to {100 * high:.1f}%, "
            f"{n:,} runs)."
        )
        if r.undefined.any():
            verdict += (
                f" In {int(r.undefined.sum()):,} runs a metric it uses is undefined (e.g. no breakdown, "
                "so no breakout time); they count as not holding."
            )
        lines += [verdict, ""]
        for outcome in ("fails", "holds"):
            boxes = [b for b in r.boxes if b.outcome == outcome]
            total = int((~r.holds).sum()) if outcome == "fails" else int(r.holds.sum())
            if not boxes:
                if outcome == "fails" and total:
                    lines += [
                        f"PRIM finds no box where it fails with a density of {_pct(spec.min_density)}: "
                        f"its {total:,} failures are spread over the space.",
                        "",
                    ]
                continue
            for j, b in enumerate(boxes, start=1):
                qp = ", ".join(f"{d} {b.qp[d]:.2g}" for d in b.limits)
                which = "It" if j == 1 else "Also, it"
                weak = [d for d in b.limits if b.qp[d] > SIGNIFICANCE]
                note = ""
                if weak and len(weak) < len(b.limits):
                    note = (
                        f" The box also restricts {', '.join(weak)}, but not significantly "
                        f"(quasi-p above {SIGNIFICANCE:g}): {box_words(b, ranges)}."
                    )
                lines += [
                    f"{which} **{outcome} when {box_words(b, ranges, alpha=SIGNIFICANCE)}**: this box holds "
                    f"{_pct(b.coverage)} of the runs where it {outcome} (coverage), and it {outcome} in "
                    f"{_pct(b.density)} of the runs inside (density); the box is {_pct(b.mass)} of the space. "
                    f"Quasi-p: {qp}.{note}",
                    "",
                ]
        top = r.scores.sort_values(ascending=False)
        top = top[top > 0].head(3)
        if len(top):
            lines += [
                "CART (second view): the assumptions that best separate holding from failing runs are "
                + ", ".join(f"{k} ({v:.2f})" for k, v in top.items())
                + f"; the tree is in `cart/{c.name}.txt`.",
                "",
            ]
    return "\n".join(lines).rstrip() + "\n"


def write_audit(
    result: AuditResult,
    target: str | os.PathLike[str],
    *,
    force: bool = False,
    started: str | None = None,
    command: Sequence[str] | None = None,
) -> Path:
    """Write the ``audit/`` folder atomically (see :func:`armsdyn.output.atomic_folder`)."""

    started = started or now()
    target = Path(target)
    with atomic_folder(target, force=force) as tmp:
        _fill(tmp, result)
        manifest = build_manifest(result.spec.experiment, started=started, command=command)
        manifest["versions"]["ema_workbench"] = _version("ema_workbench")
        manifest["versions"]["scikit-learn"] = _version("scikit-learn")
        manifest["audit"] = {
            "runs": len(result.draws),
            "sampling": result.spec.sampling,
            "seed": result.spec.seed,
            "dimensions": list(result.spec.dimensions),
            "claims": [c.name for c in result.spec.claims],
        }
        manifest["files"] = {str(p.relative_to(tmp)): file_sha256(p) for p in sorted(tmp.rglob("*")) if p.is_file()}
        with open(tmp / MANIFEST_FILE, "w", encoding="utf-8") as fh:
            json.dump(manifest, fh, indent=2)
            fh.write("\n")
            fh.flush()
            os.fsync(fh.fileno())
    return target


def _version(dist: str) -> str:
    import importlib.metadata

    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _fill(folder: Path, result: AuditResult) -> None:
    result.summary().to_csv(folder / "claims.csv")
    runs = result.draws.copy()
    for r in result.claims:
        runs[f"holds: {r.claim.name}"] = r.holds.astype(int)
    runs.index.name = "run"
    runs.to_csv(folder / "runs.csv")
    box_rows, trajectory_rows = [], []
    for r in result.claims:
        for j, b in enumerate(r.boxes, start=1):
            for dim, lim in b.limits.items():
                numeric = len(lim) == 2 and not any(s.name == dim for s in result.spec.switches)
                box_rows.append(
                    {
                        "claim": r.claim.name,
                        "outcome": b.outcome,
                        "box": j,
                        "dimension": dim,
                        "lower": lim[0] if numeric else np.nan,
                        "upper": lim[1] if numeric else np.nan,
                        "values": "" if numeric else " ".join(_num(v) for v in lim),
                        "quasi-p": b.qp[dim],
                        "coverage": b.coverage,
                        "density": b.density,
                        "mass": b.mass,
                        "step": b.index,
                    }
                )
            t = b.trajectory.copy()
            t.insert(0, "step", range(len(t)))
            t.insert(0, "box", j)
            t.insert(0, "outcome", b.outcome)
            t.insert(0, "claim", r.claim.name)
            trajectory_rows.append(t)
    pd.DataFrame(box_rows).to_csv(folder / "boxes.csv", index=False)
    if trajectory_rows:
        pd.concat(trajectory_rows).to_csv(folder / "trajectories.csv", index=False)
    (folder / "cart").mkdir()
    scores = pd.DataFrame({r.claim.name: r.scores for r in result.claims})
    scores.index.name = "dimension"
    scores.to_csv(folder / "feature_scores.csv")
    for r in result.claims:
        (folder / "cart" / f"{r.claim.name}.txt").write_text(r.cart, encoding="utf-8")
    draw_audit_figures(result, folder / "figures")
    (folder / "report.md").write_text(report_text(result), encoding="utf-8")


# --------------------------------------------------------------------------- figures


def draw_audit_figures(result: AuditResult, folder: Path) -> list[Path]:
    """Claim summary, and per claim the trade-off, box limits and pairwise scatter of its first failing box."""
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []
    ranges = result.ranges()
    with paper_style():
        fig = claim_summary(result)
        paths += save_figure(fig, folder / "claims")
        plt.close(fig)
        for r in result.claims:
            boxes = [b for b in r.boxes if b.outcome == "fails"] or [b for b in r.boxes if b.outcome == "holds"]
            if not boxes:
                continue
            box = boxes[0]
            stem = f"{r.claim.name}_{box.outcome}"
            fig, ax = plt.subplots(figsize=(SINGLE_COLUMN, 0.8 * SINGLE_COLUMN))
            tradeoff(box, ax)
            paths += save_figure(fig, folder / f"{stem}_tradeoff")
            plt.close(fig)
            fig, ax = plt.subplots(figsize=(SINGLE_COLUMN, 0.4 + 0.35 * max(1, len(box.limits))))
            box_limits(box, ranges, ax)
            paths += save_figure(fig, folder / f"{stem}_limits")
            plt.close(fig)
            dims = _scatter_dims(box, r.scores, ranges)
            if len(dims) == 2:
                fig, ax = plt.subplots(figsize=(SINGLE_COLUMN, SINGLE_COLUMN))
                pair_scatter(result.draws, r.holds, box, dims, ax)
                paths += save_figure(fig, folder / f"{stem}_scatter")
                plt.close(fig)
    return paths


def claim_summary(result: AuditResult, ax: Any = None) -> Any:
    """One bar per claim: the share of the space where it holds, with its 95% interval."""
    import matplotlib.pyplot as plt

    n = len(result.claims)
    if ax is None:
        fig, ax = plt.subplots(figsize=(SINGLE_COLUMN, 0.5 + 0.35 * n))
    else:
        fig = ax.figure
    shares = [r.share for r in result.claims]
    lows = [max(0.0, r.share - r.interval[0]) for r in result.claims]
    highs = [max(0.0, r.interval[1] - r.share) for r in result.claims]
    y = np.arange(n)[::-1]
    ax.barh(y, shares, xerr=[lows, highs], color="C0", capsize=2, height=0.6)
    for yi, s in zip(y, shares, strict=True):
        ax.text(min(s + 0.02, 0.9), yi, _pct(s), va="center", fontsize="small")
    ax.set_yticks(y, [r.claim.name.replace("_", " ") for r in result.claims])
    ax.set_xlim(0, 1)
    ax.set_xlabel("share of the space where the claim holds")
    return fig


def tradeoff(box: Box, ax: Any) -> None:
    """PRIM's coverage against density along the peeling trajectory; the chosen box marked."""
    t = box.trajectory
    points = ax.scatter(t["coverage"], t["density"], c=t["res_dim"], cmap="viridis", s=10)
    ax.scatter([box.coverage], [box.density], s=60, facecolors="none", edgecolors="k", label="chosen box")
    ax.figure.colorbar(points, ax=ax, label="restricted dimensions")
    ax.set_xlabel("coverage")
    ax.set_ylabel("density")
    ax.set_xlim(0, 1.02)
    ax.set_ylim(0, 1.02)
    ax.legend(loc="lower left", fontsize="small")


def box_limits(box: Box, ranges: Mapping[str, tuple[float, float]], ax: Any) -> None:
    """Each restricted dimension's box limits against its full sampled range (normalised)."""
    dims = list(box.limits)
    for i, dim in enumerate(dims[::-1]):
        lim = box.limits[dim]
        ax.plot([0, 1], [i, i], color="0.8", lw=6, solid_capstyle="butt")
        if dim in ranges:
            lo, hi = ranges[dim]
            a, b = (lim[0] - lo) / (hi - lo or 1), (lim[1] - lo) / (hi - lo or 1)
            ax.plot([a, b], [i, i], color="C1", lw=6, solid_capstyle="butt")
            ax.text(a, i + 0.3, _num(lim[0]), ha="center", fontsize="x-small")
            ax.text(b, i + 0.3, _num(lim[1]), ha="center", fontsize="x-small")
        else:
            ax.text(0.5, i + 0.3, ", ".join(map(_num, lim)), ha="center", fontsize="x-small")
    ax.set_yticks(range(len(dims)), [f"{d} (qp {box.qp[d]:.1g})" for d in dims[::-1]], fontsize="small")
    ax.set_xlim(-0.05, 1.05)
    ax.set_ylim(-0.7, len(dims) - 0.2)
    ax.set_xlabel(f"position in the sampled range (box: runs where the claim {box.outcome})")


def _scatter_dims(box: Box, scores: pd.Series, ranges: Mapping[str, tuple[float, float]]) -> list[str]:
    """The two most restrictive numeric dimensions of the box (narrowest share of their range), else top scores."""

    def width(dim: str) -> float:
        lo, hi = ranges[dim]
        return (box.limits[dim][1] - box.limits[dim][0]) / (hi - lo or 1)

    dims = sorted((d for d in box.limits if d in ranges), key=width)[:2]
    for d in scores.sort_values(ascending=False).index:
        if len(dims) == 2:
            break
        if d in ranges and d not in dims:
            dims.append(d)
    return dims


def pair_scatter(draws: pd.DataFrame, holds: np.ndarray, box: Box, dims: Sequence[str], ax: Any) -> None:
    """Runs over two dimensions coloured by whether the claim holds; the box drawn."""
    from matplotlib.patches import Rectangle

    x, y = draws[dims[0]].to_numpy(), draws[dims[1]].to_numpy()
    show = np.arange(len(x))
    if len(show) > 4000:  # a readable figure: a fixed subset
        show = np.random.default_rng(0).choice(len(x), 4000, replace=False)
    ok = holds[show]
    ax.scatter(x[show][ok], y[show][ok], s=3, color="C0", label="holds", rasterized=True)
    ax.scatter(x[show][~ok], y[show][~ok], s=3, color="C1", marker="x", label="fails", rasterized=True)
    lo = [box.limits.get(d, (draws[d].min(), draws[d].max())) for d in dims]
    ax.add_patch(Rectangle((lo[0][0], lo[1][0]), lo[0][1] - lo[0][0], lo[1][1] - lo[1][0], fill=False, ec="k", lw=1.2))
    ax.set_xlabel(dims[0])
    ax.set_ylabel(dims[1])
    ax.legend(loc="best", fontsize="small", markerscale=3)


def summary_lines(result: AuditResult) -> str:
    """A few lines for the command line."""
    lines = []
    ranges = result.ranges()
    for r in result.claims:
        low, high = r.interval
        line = f"{r.claim.name}: holds in {_pct(r.share)} ({100 * low:.1f}-{100 * high:.1f}%)"
        fails = [b for b in r.boxes if b.outcome == "fails"]
        if fails:
            line += f"; fails when {box_words(fails[0], ranges, alpha=SIGNIFICANCE)}"
        lines.append(line)
    return "\n".join(lines)
