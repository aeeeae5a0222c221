"""Loop dominance by the Loops That Matter method (Schoenberg, Davidsen & Eberlein 2020).

For every scenario the model is run once with PySD, keeping every integration step, and each link
of the loops is scored at every step from the model's own equations (:class:`armsdyn.feedback.RunStates`):

- **Auxiliary links** ``x -> z`` (``z = f(x, y, ...)``): the change in `z` that `x`'s change alone
  would have caused, the other inputs held at their previous values (*ceteris paribus*), over
  `z`'s actual change::

      LS(x -> z)_t = |Δx z / Δz| · sign(Δx z / Δx),    Δx z = f(x_t, y_{t-1}, ...) - z_{t-1}

- **Links into a stock** (its flows, or whatever its rate reads inline): the same score on the
  stock's net rate. For named flows this is the corrected flow-to-stock score of Schoenberg,
  Hayward & Eberlein (2023), ``±|Δflow / Δnet rate|`` (+1 for an inflow, -1 for an outflow, whose
  change makes all of the net rate's), on the flows' changes from ``t-1`` to ``t`` as Simlin
  times it; an inline rate is scored as Simlin scores its implicit net flow (whose own link into
  the stock is then 1).
- **SMOOTH** (first order) is a stock whose rate is ``(input - state) / time``: its input's link is
  scored like any link into a stock, so a loop through a perception delay is scored through it.
  **DELAY** (DELAY1, DELAY3, DELAY N as PySD's material delay) is a chain of stocks: its stages
  are integrated again from its input and the link is scored through them (the product of the
  scores along the chain, as Simlin scores a delay module's one pathway). Other stateful functions
  (higher-order SMOOTH, TREND) keep their internal stages out of reach, so their input's link has
  the black-box unit score ``sign(Δinput) · sign(Δoutput)`` (as Simlin uses for a module without
  internal scores).
- **Zero changes**: where the target or the source does not change in a step the link score is 0
  (nothing to attribute), never NaN; so is the first step, which has no earlier values to
  compare with.

A loop's score is the product of its links' scores; its relative score is its score over the sum
of the absolute scores of the loops in its *cycle partition* (the loops through the same strongly
connected set of stocks; loops of unconnected parts of a model do not compete), 0 where that sum
is 0. Relative scores lie in [-1, 1]; a balancing loop's are negative. Scores are computed at every
integration step and reported at the run's saved times.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from armsdyn.feedback import Loop, RunStates, find_loops, group_names, run_states
from armsdyn.model import Model, TimeSettings, Variable, load_model
from armsdyn.specs import Experiment, Scenario


def loop_dominance(
    model: Model | str | Path | Experiment,
    scenarios: Mapping[str, Mapping[str, Any]] | Sequence[Scenario] | None = None,
    *,
    loops: Sequence[Loop] | None = None,
    max_length: int | None = None,
    limit: int | None = None,
    time: TimeSettings | None = None,
) -> xr.Dataset:
    """Link scores, loop scores and relative loop scores over time for every scenario.

    Parameters
    ----------
    model : Model, path or Experiment
        A loaded model, a model file, or an experiment (:func:`armsdyn.load_config`), whose
        model, scenarios and time settings are then the defaults.
    scenarios : mapping or sequence of Scenario, optional
        Scenario name to parameter overrides (as :meth:`armsdyn.model.Model.simulate` takes them),
        or an experiment's scenarios. Default: one scenario, ``"baseline"``, of the model file's own
        values.
    loops : sequence of Loop, optional
        The loops to score (default: :func:`armsdyn.feedback.find_loops` with `max_length` and `limit`).
        Relative scores are shares among these loops only, so a bounded set gives shares among
        the loops it holds.
    max_length, limit : int, optional
        Passed to :func:`armsdyn.feedback.find_loops` when `loops` is not given.
    time : TimeSettings, optional
        Time settings (default: the model file's). Scores are computed at every `time.step` and
        reported at the saved times.

    Returns
    -------
    xarray.Dataset
        ``loop_score`` and ``relative_loop_score`` with dims ``(scenario, loop, time)``,
        ``link_score`` with dims ``(scenario, link, time)``, ``stock_level`` (the levels of the
        loops' stocks) with dims ``(scenario, stock, time)``. Coordinates on ``loop``: ``polarity``
        (R, B or ?, from the links' signs over the model file's run), ``length``, ``loop_variables``
        (the loop's variables joined by ``" -> "``), ``documented_groups`` (the loop groups the model
        file's documentation names it after, joined by ``", "``; not the attribution's ``loop_group``
        dimension, which holds a config's groups) and ``partition`` (its cycle partition); on
        ``link``: ``source`` and ``target`` (model names).
    """
    if isinstance(model, Experiment):
        # Its model, and its scenarios and time settings unless given.
        scenarios = model.scenarios if scenarios is None else scenarios
        time = model.time if time is None else time
        model = model.model
    if not isinstance(model, Model):
        model = load_model(Path(model))
    settings = time or model.time
    if loops is None:
        loops = find_loops(model, max_length=max_length, limit=limit)
    loops = list(loops)
    named = named_scenarios(scenarios)
    links = sorted({link for loop in loops for link in loop.links})
    save = settings.save_times()
    every = max(1, round(settings.saveper / settings.step))
    partitions = _partitions(loops)
    ends = {node: model.element(node) for link in links for node in link}
    link_scores = np.zeros((len(named), len(links), save.size))
    # The loops' stocks (and SMOOTHs): their levels, reported beside the scores for reading them.
    stocks = sorted({n for loop in loops for n in loop.variables if model.element(n)[0].kind in ("stock", "stateful")})
    levels = np.zeros((len(named), len(stocks), save.size))
    loop_scores = np.zeros((len(named), len(loops), save.size))
    relative = np.zeros_like(loop_scores)
    index = {link: i for i, link in enumerate(links)}
    for s, (_, params) in enumerate(named):
        states = run_states(model, params, settings)
        for i, node in enumerate(stocks):
            var, element = model.element(node)
            levels[s, i] = states.values[var.py_name][_index(var, element or ())][::every][: save.size]
        scores = _link_scores(
            states, [(ends[a][0].py_name, ends[b][0].py_name, ends[a][1] or (), ends[b][1] or ()) for a, b in links]
        )
        loop_full = np.ones((len(loops), states.times.size))
        for j, loop in enumerate(loops):
            for link in loop.links:
                loop_full[j] *= scores[index[link]]
        rel_full = relative_loop_scores(loop_full, partitions)
        link_scores[s] = scores[:, ::every][:, : save.size]
        loop_scores[s] = loop_full[:, ::every][:, : save.size]
        relative[s] = rel_full[:, ::every][:, : save.size]
    coords: dict[str, Any] = {
        "scenario": [name for name, _ in named],
        "loop": [loop.id for loop in loops],
        "time": save,
        "link": [f"{a} -> {b}" for a, b in links],
        "stock": stocks,
        "polarity": ("loop", [loop.polarity for loop in loops]),
        "length": ("loop", [loop.length for loop in loops]),
        "loop_variables": ("loop", [" -> ".join(loop.variables) for loop in loops]),
        "documented_groups": ("loop", [", ".join(loop.groups) for loop in loops]),
        "partition": ("loop", partitions),
        "source": ("link", [a for a, _ in links]),
        "target": ("link", [b for _, b in links]),
    }
    return xr.Dataset(
        {
            "loop_score": (("scenario", "loop", "time"), loop_scores, {"long_name": "loop score"}),
            "relative_loop_score": (
                ("scenario", "loop", "time"),
                relative,
                {"long_name": "relative loop score", "description": "share of the cycle partition's |loop score|"},
            ),
            "link_score": (("scenario", "link", "time"), link_scores, {"long_name": "link score"}),
            "stock_level": (("scenario", "stock", "time"), levels, {"long_name": "level of a stock in the loops"}),
        },
        coords=coords,
        attrs={
            "method": "Loops That Matter (Schoenberg, Davidsen & Eberlein 2020; flow-to-stock as corrected 2023)",
            "model": str(model.path),
            "time_step": settings.step,
        },
    )


def link_score(
    states: RunStates,
    source: str,
    target: str,
    source_element: tuple[str, ...] = (),
    target_element: tuple[str, ...] = (),
) -> np.ndarray:
    """The link score of `source` -> `target` (py_names) at every step of the run `states` holds.

    Parameters
    ----------
    states : RunStates
        The run, kept at every integration step.
    source, target : str
        The link's ends, by py_name.
    source_element, target_element : tuple of str
        For a subscripted end, the element (one name per range); empty for a scalar.

    Returns
    -------
    numpy.ndarray
        One score per step; 0 where either end does not change and at the first step.
    """
    x_var, z_var = states.by_py[source], states.by_py[target]
    fx = _index(x_var, source_element)
    fz = _index(z_var, target_element)
    x = states.values[source]
    obj = states.stateful(target)
    if type(obj).__name__ == "Delay":
        return _delay_score(states, obj, source, target, fx, fz)
    if not states.evaluable(target):
        # The black-box unit transfer: the link's sign, magnitude 1 (no internal scores).
        return _shifted_sign(x[fx]) * _shifted_sign(states.values[target][fz])
    # For a stock (or SMOOTH) the equation scored is its net rate.
    z = states.evaluate(target) if states.stateful(target) is not None else states.values[target]
    held = {name: _previous(states.values[name]) for name in states.inputs(target)}
    # Ceteris paribus: only this element of the source moves; its other elements are held too.
    moved = held[source].copy() if source in held else _previous(x)
    moved[fx] = x[fx]
    held[source] = moved
    partial = states.evaluate(target, held)
    return _ratio_score(partial[fz], z[fz], x[fx])


def _link_scores(states: RunStates, links: Sequence[tuple[str, str, tuple[str, ...], tuple[str, ...]]]) -> np.ndarray:
    """:func:`link_score` of each link ``(source, target, source element, target element)``, shape ``(link, step)``.

    The links into one equation (any element of its variable) are scored from one stacked
    evaluation of it (:meth:`armsdyn.feedback.RunStates.evaluate_stacked`), its own value with
    them: the same values as link by link, for a fraction of the calls.
    """
    scores = np.zeros((len(links), states.times.size))
    by_target: dict[str, list[int]] = {}
    for i, (source, target, source_element, target_element) in enumerate(links):
        obj = states.stateful(target)
        if type(obj).__name__ == "Delay" or not states.evaluable(target):
            scores[i] = link_score(states, source, target, source_element, target_element)
        else:
            by_target.setdefault(target, []).append(i)
    for target, rows in by_target.items():
        inputs = states.inputs(target)
        cases = []
        for i in rows:
            source, _, source_element, _ = links[i]
            held = {name: _previous(states.values[name]) for name in inputs}
            # Ceteris paribus: only this element of the source moves; its other elements are held too.
            fx = _index(states.by_py[source], source_element)
            moved = held[source].copy() if source in held else _previous(states.values[source])
            moved[fx] = states.values[source][fx]
            held[source] = moved
            cases.append(held)
        # For a stock (or SMOOTH) the equation scored is its net rate, evaluated with the partials.
        own = states.stateful(target) is not None
        values = states.evaluate_stacked(target, [{}, *cases] if own else cases)
        z = values[0] if own else states.values[target]
        for i, partial in zip(rows, values[1:] if own else values, strict=True):
            source, _, source_element, target_element = links[i]
            fx = _index(states.by_py[source], source_element)
            fz = _index(states.by_py[target], target_element)
            scores[i] = _ratio_score(partial[fz], z[fz], states.values[source][fx])
    return scores


def _delay_score(
    states: RunStates, delay: Any, source: str, target: str, fx: tuple[Any, ...], fz: tuple[Any, ...]
) -> np.ndarray:
    """A link into a DELAY (material delay of order n): through its n stages, as a chain of stocks.

    The stages are not among the run's values, so they are integrated again from the delay's
    input as PySD integrates them (Euler, each stage starting at the initial output times the
    delay time). Stage k holds ``s_k``, drains at ``s_k / τ`` into stage k+1 and is filled by the
    one before (the input for the first); the output is the last stage's outflow. The score is
    the source's share of the input's change times, along the chain, each inflow's score into its
    stage, ``|Δ inflow / Δ(inflow - outflow)|``, as for any flow into a stock (the outflow's link
    from its stage scores 1).

    `delay` is the PySD ``Delay`` object `target` holds.
    """
    x = states.values[source]
    held = {name: _previous(states.values[name]) for name in states.inputs(target)}
    moved = held[source].copy() if source in held else _previous(x)
    moved[fx] = x[fx]
    held[source] = moved
    inflow = states.evaluate(target, part="input")
    score = _ratio_score(states.evaluate(target, held, part="input")[fz], inflow[fz], x[fx])
    tau = states.evaluate(target, part="delay time")[fz]
    order = int(delay.order if delay.order is not None else delay.order_func())
    dt = states.time.step
    level = np.full(inflow[fz].shape, np.nan)
    stage_in = inflow[fz]
    for _ in range(order):
        level = np.empty_like(stage_in)
        level[0] = states.values[target][fz][0] * tau[0]
        for t in range(1, level.size):
            level[t] = level[t - 1] + dt * order * (stage_in[t - 1] - level[t - 1] / tau[t - 1])
        outflow = level / tau
        net = stage_in - outflow
        d_in = stage_in - _previous(stage_in)
        d_net = net - _previous(net)
        with np.errstate(divide="ignore", invalid="ignore"):
            link = np.where((d_net == 0) | (d_in == 0), 0.0, np.abs(d_in / np.where(d_net == 0, 1.0, d_net)))
        link[0] = 0.0
        # The stage's outflow (and the output) moves with the stage alone: 1 where it moves.
        moves = (outflow - _previous(outflow)) != 0
        score = score * link * moves
        stage_in = outflow
    return score


def _index(var: Variable, element: tuple[str, ...]) -> tuple[Any, ...]:
    """Index of one element's series in a ``(time, *shape)`` array."""
    if not element:
        return (slice(None),)
    return (slice(None), *(elements.index(name) for (_, elements), name in zip(var.dims, element, strict=True)))


def relative_loop_scores(scores: np.ndarray, partitions: Sequence[int]) -> np.ndarray:
    """Each loop's score over the sum of |score| of the loops in its partition (0 where that is 0).

    Parameters
    ----------
    scores : numpy.ndarray
        Loop scores, shape ``(loop, time)``.
    partitions : sequence of int
        Each loop's cycle partition.

    Returns
    -------
    numpy.ndarray
        Same shape as `scores`, values in [-1, 1].
    """
    out = np.zeros_like(scores)
    groups = np.asarray(partitions)
    for group in set(groups.tolist()):
        rows = groups == group
        total = np.abs(scores[rows]).sum(axis=0)
        with np.errstate(divide="ignore", invalid="ignore"):
            out[rows] = np.where(total > 0, scores[rows] / np.where(total > 0, total, 1.0), 0.0)
    return out


def _ratio_score(partial: np.ndarray, z: np.ndarray, x: np.ndarray) -> np.ndarray:
    """``|Δx z / Δz| · sign(Δx z / Δx)``, 0 where Δz or Δx is 0 and at the first step."""
    dz = z - _previous(z)
    dx = x - _previous(x)
    dxz = partial - _previous(z)
    with np.errstate(divide="ignore", invalid="ignore"):
        score = np.abs(dxz / np.where(dz == 0, 1.0, dz)) * np.sign(dxz) * np.sign(dx)
    score = np.where((dz == 0) | (dx == 0) | ~np.isfinite(score), 0.0, score)
    score[0] = 0.0
    return score


def _previous(values: np.ndarray) -> np.ndarray:
    """The series one step back (the first step its own previous)."""
    return np.concatenate([values[:1], values[:-1]])


def _shifted_sign(values: np.ndarray) -> np.ndarray:
    return np.sign(values - _previous(values))


def _partitions(loops: Sequence[Loop]) -> list[int]:
    """Each loop's cycle partition: loops sharing a variable are in one, and so on transitively.

    With every loop of a model this is the strongly connected component of the causal graph the
    loop lies in (its stocks' feedback partition); with a bounded set of loops, the components
    those loops connect.
    """
    parent = list(range(len(loops)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    first: dict[str, int] = {}
    for i, loop in enumerate(loops):
        for node in loop.variables:
            j = first.setdefault(node, i)
            parent[root(i)] = root(j)
    numbers: dict[int, int] = {}
    return [numbers.setdefault(root(i), len(numbers)) for i in range(len(loops))]


def named_scenarios(
    scenarios: Mapping[str, Mapping[str, Any]] | Sequence[Scenario] | None,
) -> list[tuple[str, dict[str, Any]]]:
    """Scenarios as (name, PySD parameters) pairs: the model's own values alone when None."""
    if scenarios is None:
        return [("baseline", {})]
    if isinstance(scenarios, Mapping):
        return [(name, dict(params)) for name, params in scenarios.items()]
    return [(s.name, s.pysd_params()) for s in scenarios]


def format_dominance(
    loops: Sequence[Loop],
    ds: xr.Dataset,
    scenario: str | None = None,
    groups: Mapping[str, Sequence[str]] | None = None,
) -> str:
    """The loop table with each loop's mean and peak absolute relative score over a run.

    Parameters
    ----------
    loops : sequence of Loop
        The loops, as :func:`armsdyn.feedback.find_loops` gives them.
    ds : xarray.Dataset
        Their scores, from :func:`loop_dominance`.
    scenario : str, optional
        The scenario to report (default: the first).
    groups : mapping, optional
        Group name to variables: each loop through a group's variables is named after it.

    Returns
    -------
    str
        A header line and one line per loop: id, polarity, length, mean and peak share of its
        partition's loop activity, and its variables.
    """
    share = np.abs(ds.relative_loop_score.sel(scenario=scenario or ds.scenario.values[0]))
    mean = share.mean("time")
    peak = share.max("time")
    lines = ["id   pol  len   mean   peak  variables"]
    for loop in loops:
        path = " -> ".join((*loop.variables, loop.variables[0]))
        m, p = float(mean.sel(loop=loop.id)), float(peak.sel(loop=loop.id))
        line = f"{loop.id:<4} {loop.polarity}  {loop.length:>3}  {m:5.3f}  {p:5.3f}  {path}"
        names = group_names(loop, groups)
        lines.append(f"{line}  [{', '.join(names)}]" if names else line)
    return "\n".join(lines)
