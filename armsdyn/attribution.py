"""How much of a stock's change over a window each named group of feedback loops accounts for.

Loops That Matter (:mod:`armsdyn.ltm`) says which loops dominate a stock's behaviour at each
instant, as shares of the loops' activity: its scores do not add up to the stock's change over a
window, and a driver outside every loop (the knowledge model's exogenous growth of general
knowledge, which feeds effective power along a path that closes no loop) has no score at all. The
question of Buzan's argument is a counterfactual over a window: how much less would effective
power have grown without the action-reaction loops, and how much without the knowledge engine?
This module answers it by *knockout* runs, apportioned by the Shapley value.

Definition
----------
A group ``G`` is cut by holding each of its *cut variables* (auxiliaries or flows that its loops
pass through, or an exogenous driver) at its own initial value for the whole run: the variable's
equation becomes Vensim's ``INITIAL`` of itself, so its readers see the value it had at the start
of the scenario, and every loop and pathway through it stops transmitting change (Ford 1999's
behavioural approach to loop dominance deactivates loops in the same way). The run is otherwise
the scenario's own, from the same initial state.

For a set ``A`` of active groups (the others cut), ``v(A) = S_A(t1) - S_A(t0)`` is the change of
the stock element ``S`` over the window ``[t0, t1]``. With ``N`` all ``n`` groups, ``v(N)`` is the
scenario's actual change ``ΔS``, and ``v(∅)`` the change that remains with every group cut
(``other``): what the drivers and loops outside the groups produce, and the momentum of the
initial state (a stock whose inflow is held at its initial value still grows by that inflow times
the window). Group ``i`` is credited with its
Shapley value (Shapley 1953; Shorrocks 2013 for decompositions)::

    φ_i = Σ_{A ⊆ N \\ {i}}  |A|! (n - |A| - 1)! / n!  ·  ( v(A + {i}) - v(A) )

and the shares are ``φ_i / ΔS`` and ``v(∅) / ΔS``. They sum to 1 exactly (``v(∅) + Σ φ_i =
v(N)``); a group that changes nothing in any combination gets exactly 0 (so an ablated
action-reaction mechanism has share 0); two groups enter symmetrically, an interaction between
them being split equally. A share may be negative (a group that held growth back, e.g. a treaty)
or above 1 (when others held it back). Where the stock does not change over the window (``|ΔS|``
at most ``1e-9`` of its largest level there) the shares are NaN: there is nothing to apportion.

Why this and not loop scores: a referee can check it by rerunning the model, it is in the stock's
own units (``φ_i`` is a change of the stock), it needs no assumption about how an instantaneous
score accumulates, and exogenous drivers are separated by construction (name them as a group of
``kind = "driver"``, or they fall into ``other``). It costs ``2**n`` runs per scenario, advanced
together by the compiled engine.

Invariances: every ``v`` is a difference of the same stock, so the shares do not change when the
model's units are rescaled (the stock's unit, or every capability unit at once); the runs are read
at every integration step whatever the experiment's ``saveper``, so the shares do not depend on
it; and as Euler's method converges when ``dt`` halves, so do they (all three tested).

References
----------
Ford, D. N. (1999). A behavioral approach to feedback loop dominance analysis. *System Dynamics
Review* 15(1), 3-36. https://doi.org/10.1002/(SICI)1099-1727(199921)15:1<3::AID-SDR159>3.0.CO;2-P

Shapley, L. S. (1953). A value for n-person games. In *Contributions to the Theory of Games II*,
307-317. Princeton University Press. https://doi.org/10.1515/9781400881970-018

Shorrocks, A. F. (2013). Decomposition procedures for distributional analysis: a unified framework
based on the Shapley value. *Journal of Economic Inequality* 11(1), 99-126.
https://doi.org/10.1007/s10888-011-9214-z
"""

from __future__ import annotations

import hashlib
import itertools
import math
import re
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from armsdyn.ensemble import FallbackWarning, UnsupportedConstruct, compile_model
from armsdyn.errors import ModelError, did_you_mean
from armsdyn.feedback import find_loops, on_feedback_loops
from armsdyn.ltm import loop_dominance, named_scenarios
from armsdyn.model import Model, TimeSettings, cache_dir, load_model
from armsdyn.scenario_inputs import batch_inputs
from armsdyn.specs import AttributionSpec, Experiment, LoopGroup, Scenario

#: The label of what no named group accounts for.
OTHER = "other"

#: Most groups an attribution may have (``2**n`` runs per scenario).
MAX_GROUPS = 6

#: Kinds of variable a group may be cut at: what can be held at its initial value.
CUTTABLE = ("auxiliary", "flow")

_CUT_PREFIX = "armsdyn attribution cut"
_UNSAFE_DOC = re.compile(r'[|~{}\\"]')


def attribute(
    model: Model | str | Path,
    spec: AttributionSpec,
    scenarios: Mapping[str, Mapping[str, Any]] | Sequence[Scenario] | None = None,
    *,
    time: TimeSettings | None = None,
    engine: str = "compiled",
) -> xr.Dataset:
    """Shares of each stock element's change over a window that each group of loops accounts for.

    See the module docstring for the definition (knockout runs apportioned by the Shapley value).

    Parameters
    ----------
    model : Model or path
        The model (a Vensim ``.mdl`` file).
    spec : AttributionSpec
        The stocks, the window and the groups (:class:`armsdyn.specs.AttributionSpec`).
    scenarios : mapping or sequence of Scenario, optional
        Scenario name to constant overrides, or an experiment's scenarios (default: one scenario,
        ``"baseline"``, of the model file's values).
    time : TimeSettings, optional
        Time settings (default: the model file's). The runs are read at every step.
    engine : {"compiled", "pysd"}
        What runs the knockouts: the compiled engine, all scenarios and knockouts at once, time
        series and redrawn lookups included (PySD for a model, series or table it cannot
        compile), or PySD, run by run (the reference, as ``[experiment] engine = "pysd"``).

    Returns
    -------
    xarray.Dataset
        ``attribution_share`` and ``attribution_change`` with dims ``(scenario, loop_group,
        attributed)``: each group's share of the change and its Shapley value in the stock's
        units, the last ``loop_group`` being ``"other"``; ``stock_change`` ``(scenario,
        attributed)``; ``knockout_change`` ``(scenario, knockout, attributed)``, the change in each
        knockout run (``knockout`` labelled by its active groups, ``"none"`` for all cut).
        ``attributed`` holds the stock elements (``"effective power[A]"``). Attrs ``method``,
        ``window_start``, ``window_end``, ``time_step`` and ``engine`` (``"compiled"`` or
        ``"pysd"``: what ran the knockouts).

    Raises
    ------
    ModelError
        If a group names a variable that cannot be cut, the model is not a Vensim file, or the
        window does not lie on the integration grid.
    """
    if not isinstance(model, Model):
        model = load_model(Path(model))
    settings = replace(time or model.time, saveper=(time or model.time).step)
    check_spec(model, spec)
    named = named_scenarios(scenarios)
    groups = list(spec.groups)
    n = len(groups)
    t0, t1 = spec.window if spec.window else (settings.initial, settings.final)
    i0, i1 = (_step_index(settings, t, model) for t in (t0, t1))
    path = knockout_model(model, groups)
    masks = list(itertools.product((0.0, 1.0), repeat=n))  # 1: the group is active (not cut)
    stocks = [model.variable(name) for name in spec.stocks]
    labels = stock_labels(model, spec)
    # change[s, m, j]: the change of stock element j in scenario s with active groups masks[m].
    change = np.full((len(named), len(masks), len(labels)), np.nan)
    runs, ran_on = _run_all(
        path, model, named, masks, [v.name for v in stocks], settings, compiled=engine == "compiled"
    )
    for s in range(len(named)):
        for m in range(len(masks)):
            values = runs[s][m]
            row = [values[var.name][i1].reshape(-1) - values[var.name][i0].reshape(-1) for var in stocks]
            change[s, m] = np.concatenate(row)
    levels = np.stack(
        [
            np.concatenate(
                [np.abs(runs[s][-1][v.name][i0 : i1 + 1]).reshape(i1 - i0 + 1, -1).max(axis=0) for v in stocks]
            )
            for s in range(len(named))
        ]
    )
    total = change[:, -1, :]
    shapley = np.zeros((len(named), n, len(labels)))
    index = {mask: m for m, mask in enumerate(masks)}
    for i in range(n):
        for mask in masks:
            if mask[i]:
                continue
            k = int(sum(mask))
            weight = math.factorial(k) * math.factorial(n - k - 1) / math.factorial(n)
            with_i = tuple(1.0 if j == i else mask[j] for j in range(n))
            shapley[:, i] += weight * (change[:, index[with_i]] - change[:, index[mask]])
    contributions = np.concatenate([shapley, change[:, :1, :]], axis=1)  # masks[0]: every group cut
    still = np.abs(total) <= 1e-9 * levels
    with np.errstate(divide="ignore", invalid="ignore"):
        shares = np.where(still[:, None, :], np.nan, contributions / np.where(still, 1.0, total)[:, None, :])
    units = stocks[0].units if len({v.units for v in stocks}) == 1 else ""
    knockouts = [" + ".join(g.name for g, on in zip(groups, mask, strict=True) if on) or "none" for mask in masks]
    return xr.Dataset(
        {
            "attribution_share": (
                ("scenario", "loop_group", "attributed"),
                shares,
                {"long_name": "share of the change", "units": "1"},
            ),
            "attribution_change": (
                ("scenario", "loop_group", "attributed"),
                contributions,
                {"long_name": "change attributed (Shapley value)", "units": units},
            ),
            "stock_change": (
                ("scenario", "attributed"),
                total,
                {"long_name": "change over the window", "units": units},
            ),
            "knockout_change": (
                ("scenario", "knockout", "attributed"),
                change,
                {"long_name": "change with the other groups cut", "units": units},
            ),
        },
        coords={
            "scenario": [name for name, _ in named],
            "loop_group": [*(g.name for g in groups), OTHER],
            "attributed": labels,
            "knockout": knockouts,
            "group_variables": ("loop_group", [", ".join(g.variables) for g in groups] + [""]),
            "group_kind": ("loop_group", [g.kind for g in groups] + [OTHER]),
        },
        attrs={
            "method": "knockout runs (group's cut variables held at their initial values), Shapley value",
            "window_start": float(t0),
            "window_end": float(t1),
            "time_step": settings.step,
            "model": str(model.path),
            "engine": ran_on,
        },
    )


def check_spec(model: Model, spec: AttributionSpec) -> None:
    """Refuse an attribution the model cannot run, naming what is wrong and what is allowed.

    Raises
    ------
    ModelError
        For an unknown stock or variable (with the closest name), a stock that is not a stock, a
        cut variable that cannot be held (a stock, a constant, ...), a ``loops`` group whose
        variable lies on no feedback loop, or too many groups.
    """
    names = list(model.variables)
    for stock in spec.stocks:
        if stock not in model.variables:
            msg = f"attribution stock {stock!r} is not a variable of {model.path}{did_you_mean(stock, names)}"
            raise ModelError(msg)
        if model.variables[stock].kind != "stock":
            msg = f"attribution stock {stock!r} of {model.path} is a {model.variables[stock].kind}, not a stock (INTEG)"
            raise ModelError(msg)
    if len(spec.groups) > MAX_GROUPS:
        msg = f"an attribution has at most {MAX_GROUPS} groups (2**n runs per scenario); got {len(spec.groups)}"
        raise ModelError(msg)
    on_loops = on_feedback_loops(model)
    for group in spec.groups:
        for name in group.variables:
            if name not in model.variables:
                hint = did_you_mean(name, names)
                msg = f"loop group {group.name!r}: {name!r} is not a variable of {model.path}{hint}"
                raise ModelError(msg)
            kind = model.variables[name].kind
            if kind not in CUTTABLE:
                msg = (
                    f"loop group {group.name!r}: {name!r} is a {kind}; a group is cut at an auxiliary or flow "
                    "(held at its initial value), e.g. the one after it on the loop"
                )
                raise ModelError(msg)
            if group.kind == "loops" and name not in on_loops:
                msg = (
                    f"loop group {group.name!r}: {name!r} lies on no feedback loop of {model.path}; name a "
                    'variable the group\'s loops pass through, or give the group kind = "driver" to attribute '
                    "an exogenous driver"
                )
                raise ModelError(msg)


def knockout_model(model: Model, groups: Sequence[LoopGroup]) -> Path:
    """A copy of the model in which each group's cut variables can be held at their initial values.

    Every cut variable's equation ``expr`` becomes ``IF THEN ELSE(armsdyn attribution cut i > 0,
    INITIAL(expr), expr)``, with one new constant per group (0: active, as in the model; 1: cut).
    The copy is written once under the translation cache (:func:`armsdyn.model.cache_dir`),
    named by its content, so its translation and compiled form are cached too.

    Returns
    -------
    pathlib.Path
        The modified model file.
    """
    if model.path.suffix.lower() != ".mdl":
        msg = f"{model.path}: loop-group attribution edits Vensim (.mdl) models only"
        raise ModelError(msg)
    text = model.path.read_text(encoding="utf-8")
    split = text.find("\\\\\\---///")
    equations, sketch = (text, "") if split < 0 else (text[:split], text[split:])
    cut_of = {_norm(name): i for i, g in enumerate(groups) for name in g.variables}
    blocks = equations.split("|")
    found: set[str] = set()
    for b, block in enumerate(blocks):
        match = re.match(r"(\s*(?:\{[^}]*\}\s*)*)([^=~\[\]{}]+?)(\s*\[[^\]]*\])?(\s*=)(?!=)", block)
        if not match or _norm(match.group(2)) not in cut_of:
            continue
        rest = block[match.end() :]
        tilde = rest.find("~")
        if tilde < 0:
            continue
        expr = rest[:tilde].strip()
        name = _norm(match.group(2))
        found.add(name)
        cut = f"{_CUT_PREFIX} {cut_of[name] + 1}"
        wrapped = f"IF THEN ELSE({cut} > 0, INITIAL({expr}), {expr})"
        blocks[b] = f"{block[: match.end()]}\n\t{wrapped}\n\t{rest[tilde:]}"
    missing = sorted(set(cut_of) - found)
    if missing:
        msg = f"{model.path}: could not find the equation of {', '.join(map(repr, missing))} to cut"
        raise ModelError(msg)
    # A group's name is free text: keep Vensim's delimiters out of the documentation string.
    labels = [_UNSAFE_DOC.sub(" ", g.name) for g in groups]
    header = "".join(
        f"{_CUT_PREFIX} {i + 1}=\n\t0\n\t~\tDmnl [0,1]\n\t~\tarmsdyn: 1 holds the variables of loop group "
        f"{label} at their initial values.\n\t|\n\n"
        for i, label in enumerate(labels)
    )
    body = "|".join(blocks)
    # After the encoding line, which must stay first.
    utf8 = "{UTF-8}"
    body = utf8 + "\n" + header + body[len(utf8) :].lstrip("\n") if body.startswith(utf8) else header + body
    new = body + sketch
    digest = hashlib.sha256(new.encode()).hexdigest()[:16]
    folder = cache_dir() / "attribution" / digest
    path = folder / model.path.name
    if not path.is_file() or path.read_text(encoding="utf-8") != new:
        folder.mkdir(parents=True, exist_ok=True)
        staged = folder / f".{model.path.name}.partial"
        staged.write_text(new, encoding="utf-8")
        staged.replace(path)
    return path


def stock_labels(model: Model, spec: AttributionSpec) -> list[str]:
    """The attributed stock elements, as the ``attributed`` coordinate names them (``"effective power[A]"``)."""
    stocks = [model.variable(name) for name in spec.stocks]
    return [var.element_name(e) if var.dims else var.name for var in stocks for e in _elements(var)]


def attribution_metric_names(model: Model, spec: AttributionSpec) -> list[str]:
    """The metrics columns :func:`armsdyn.metrics.attribution_columns` gives a run with `spec`, before it runs.

    So that a config can name them (a ``metric_bars`` figure) and be checked before anything runs.

    Parameters
    ----------
    model : Model
        The experiment's model.
    spec : AttributionSpec
        The config's ``[attribution]``.

    Returns
    -------
    list of str
        ``"<stock element> change"`` and ``"<stock element> change share: <group>"`` for every
        group and ``other``, in the order :func:`armsdyn.metrics.attribution_columns` gives them.
    """
    groups = [*(g.name for g in spec.groups), OTHER]
    return [
        name
        for stock in stock_labels(model, spec)
        for name in (f"{stock} change", *(f"{stock} change share: {group}" for group in groups))
    ]


def _run_all(
    path: Path,
    model: Model,
    named: list[tuple[str, dict[str, Any]]],
    masks: list[tuple[float, ...]],
    stocks: list[str],
    settings: TimeSettings,
    *,
    compiled: bool = True,
) -> tuple[list[list[dict[str, np.ndarray]]], str]:
    """Every scenario under every knockout: ``runs[scenario][mask][stock]`` at every step, and the engine.

    Every scenario and knockout runs as one batch of the compiled engine, as an experiment runs
    its scenarios (numbers, time series and redrawn lookups alike). Where the engine cannot
    compile the model, a series or a table (warned, naming the construct), or `compiled` is false,
    PySD runs them one by one. The engine is returned as ``"compiled"`` or ``"pysd"``.
    """
    out: list[list[dict[str, np.ndarray]]] = [[{} for _ in masks] for _ in named]
    cuts = [f"{_CUT_PREFIX} {i + 1}" for i in range(len(masks[0]))]
    if compiled:
        try:
            ds = _run_compiled(path, model, named, masks, cuts, stocks, settings)
        except UnsupportedConstruct as exc:  # a construct, series or table it does not compile
            warnings.warn(f"{exc}; the attribution's knockouts run with PySD instead", FallbackWarning, stacklevel=3)
            ds = None
        if ds is not None:
            for r, (s, m) in enumerate(itertools.product(range(len(named)), range(len(masks)))):
                for name in stocks:
                    var = model.variable(name)
                    out[s][m][name] = ds[var.py_name].isel(run=r).transpose("time", *var.dim_names).values
            return out, "compiled"
    knocked = load_model(path)
    for s, (_, params) in enumerate(named):
        for m, mask in enumerate(masks):
            cut_params = {cut: 1.0 - on for cut, on in zip(cuts, mask, strict=True)}
            result = knocked.simulate({**params, **cut_params}, settings, stocks)
            out[s][m] = {name: np.asarray(result[name], dtype=float) for name in stocks}
    return out, "pysd"


def _run_compiled(
    path: Path,
    model: Model,
    named: list[tuple[str, dict[str, Any]]],
    masks: list[tuple[float, ...]],
    cuts: list[str],
    stocks: list[str],
    settings: TimeSettings,
) -> xr.Dataset:
    """The knockout runs as one batch of the compiled engine, run ``s * len(masks) + m``.

    Each run is its scenario's overrides (split by :func:`armsdyn.scenario_inputs.batch_inputs`)
    and its knockout's cut constants.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        engine = compile_model(path, backend="numpy")
    rows = list(itertools.product(range(len(named)), range(len(masks))))
    samples, series, lookups = batch_inputs(model, [named[s][1] for s, _ in rows])
    for c, cut in enumerate(cuts):
        samples[cut] = np.array([1.0 - masks[m][c] for _, m in rows])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return engine.run(samples, time=settings, variables=stocks, series=series, lookups=lookups)


def _step_index(settings: TimeSettings, t: float, model: Model) -> int:
    k = (t - settings.initial) / settings.step
    if abs(k - round(k)) > 1e-6 or not (-1e-9 <= k <= (settings.final - settings.initial) / settings.step + 1e-9):
        msg = (
            f"attribution window end {t:g} is not a time of the integration grid of {model.path} "
            f"({settings.initial:g} to {settings.final:g} by {settings.step:g})"
        )
        raise ModelError(msg)
    return round(k)


def _elements(var: Any) -> list[tuple[str, ...]]:
    return var.elements() if var.dims else [()]


def _norm(name: str) -> str:
    return " ".join(name.replace("_", " ").replace('"', "").lower().split())


def analyse_loops(experiment: Experiment) -> xr.Dataset | None:
    """The loop analysis an experiment asks for: ``[loop_dominance]`` and ``[attribution]``, merged.

    Parameters
    ----------
    experiment : Experiment
        A loaded config (:func:`armsdyn.load_config`).

    Returns
    -------
    xarray.Dataset or None
        :func:`armsdyn.ltm.loop_dominance`'s variables (dims ``scenario, loop, time``) and
        :func:`attribute`'s (dims ``scenario, loop_group, attributed``), as written to
        ``loops.nc``; None when the config asks for neither.
    """
    parts = []
    attrs: dict[str, Any] = {"experiment": experiment.name, "model": experiment.model.path.name}
    if experiment.loop_dominance is not None:
        spec = experiment.loop_dominance
        loops = find_loops(experiment.model, max_length=spec.max_length, limit=spec.limit, through=spec.through)
        dominance = loop_dominance(experiment, loops=loops)
        attrs["dominance_method"] = dominance.attrs["method"]
        parts.append(dominance.drop_attrs())
    if experiment.attribution is not None:
        asked, time = experiment.attribution, experiment.time
        shares = attribute(experiment.model, asked, experiment.scenarios, time=time, engine=experiment.engine)
        attrs.update(
            attribution_method=shares.attrs["method"],
            window_start=shares.attrs["window_start"],
            window_end=shares.attrs["window_end"],
            attribution_engine=shares.attrs["engine"],
        )
        parts.append(shares.drop_attrs())
    if not parts:
        return None
    merged = xr.merge(parts, compat="no_conflicts", join="outer")
    merged.attrs = {**attrs, "time_step": experiment.time.step, "saveper": experiment.time.saveper}
    return merged
