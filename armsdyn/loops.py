"""Feedback loops of a model: its causal graph, every elementary loop, and each loop's polarity.

The causal graph has the model's variables as nodes and an edge from each variable an equation
reads to the variable it defines. A stock's inflows and outflows (everything its rate reads) are
edges into the stock; the internals of SMOOTH, DELAY and the like are collapsed to the variable
that holds them (what their rate reads points into that variable). Initial values are not edges:
they act once and close no loop. Subscripted variables are nodes as a whole, so a loop is found
once for all its elements.

Every elementary cycle of the graph is found with Johnson's algorithm (1975). The polarity of a
link is determined numerically over a whole run (the model file's own, or a scenario's): at every
integration step the source is nudged up and down and the target's equation (a stock's or a
SMOOTH's rate) evaluated through PySD with everything else at that step's values; the sign of the
change is the link's polarity. A link that has one sign wherever it acts has that polarity; one
whose sign changes along the run is *mixed*; one that never acts in the run (a factor that stays
zero) is undetermined. A loop's polarity is the product of its links': R (reinforcing) or B
(balancing), or ``?`` when a link is mixed or undetermined (or elements of a subscripted link
disagree).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from armsdyn.model import CONTROL_NAMES, Model, TimeSettings, load_model, quiet_pysd

_SKIP = {"time", *(name.lower().replace(" ", "_") for name in CONTROL_NAMES)}
_NUDGE = 1e-4


@dataclass(frozen=True)
class Loop:
    """One elementary feedback loop.

    Attributes
    ----------
    id : str
        ``"R1"``, ``"B2"``, ... (``"U1"`` for a loop of undetermined polarity), numbered by length.
    variables : tuple of str
        The loop's variables in causal order (model names), starting from a stock where there is one;
        the last one's link closes the loop back to the first.
    polarities : tuple of int
        The sign of each link, ``variables[i] -> variables[i + 1]`` (the last back to the first):
        +1, -1, or 0 when mixed or undetermined.
    mixed : tuple of bool
        Per link, whether its sign changes along the run (its polarity is then 0). Empty when not known.
    """

    id: str
    variables: tuple[str, ...]
    polarities: tuple[int, ...]
    mixed: tuple[bool, ...] = ()

    @property
    def length(self) -> int:
        """Number of links (equal to the number of variables)."""
        return len(self.variables)

    @property
    def sign(self) -> int:
        """Product of the link polarities: +1, -1, or 0 when a link is undetermined."""
        return int(np.prod(self.polarities))

    @property
    def polarity(self) -> str:
        """``"R"`` (reinforcing), ``"B"`` (balancing) or ``"?"`` (undetermined)."""
        return {1: "R", -1: "B"}.get(self.sign, "?")

    @property
    def links(self) -> tuple[tuple[str, str], ...]:
        """The loop's links as ``(source, target)`` pairs of model names, in causal order."""
        return tuple(zip(self.variables, self.variables[1:] + self.variables[:1], strict=True))

    def describe(self) -> str:
        """One line: ``"R1  R  4  arms X -> arming rate Y -> ..."``, naming any mixed link."""
        path = " -> ".join((*self.variables, self.variables[0]))
        line = f"{self.id:<4} {self.polarity}  {self.length:>3}  {path}"
        mixed = [f"{a} -> {b}" for (a, b), m in zip(self.links, self.mixed, strict=True) if m]
        return line + (f"  [mixed: {'; '.join(mixed)}]" if mixed else "")


def causal_graph(model: Model) -> dict[str, set[str]]:
    """The model's causal graph: ``{source py_name: {target py_names}}`` over its variables.

    Stocks receive edges from what their rate reads, and a SMOOTH's or DELAY's holder from what
    the stateful object's rate reads; constants, time and the control variables have no edges.
    """
    deps = model.pysd_model.dependencies
    names = {v.py_name for v in model.variables.values() if v.kind not in ("constant",)}
    graph: dict[str, set[str]] = {name: set() for name in names}
    for target in names:
        for source in _sources(deps, target, set()):
            if source in names:
                graph[source].add(target)
    return graph


def _sources(deps: dict[str, Any], name: str, seen: set[str]) -> set[str]:
    """What `name`'s equation reads, with stateful objects replaced by what their rate reads."""
    found: set[str] = set()
    for key in deps.get(name, {}):
        if key.startswith("__") or key in _SKIP:
            continue
        if key.startswith("_"):
            if key in seen:
                continue
            seen.add(key)
            step = deps.get(key, {}).get("step", {})
            for inner in step:
                if inner.startswith("__") or inner in _SKIP:
                    continue
                if inner.startswith("_"):
                    found |= _sources({**deps, "": {inner: 1}}, "", seen)
                else:
                    found.add(inner)
        else:
            found.add(key)
    return found


def elementary_cycles(graph: dict[str, set[str]], max_length: int | None = None) -> Iterator[list[str]]:
    """Every elementary cycle of a directed graph (Johnson 1975), each as its nodes in order.

    A self-loop is a cycle of one node. Each cycle starts at its least node (in sorted order).
    With `max_length`, only cycles of at most that many nodes, by a depth-bounded search
    (Johnson's blocking is not valid under a length bound).
    """
    order = sorted(graph)
    index = {node: i for i, node in enumerate(order)}
    for start_i, start in enumerate(order):
        # The subgraph induced by nodes >= start; cycles through `start` in it.
        allowed = set(order[start_i:])
        component = _component_of(start, graph, allowed)
        if not any(s in component for s in graph[start]):
            continue
        succ = {n: [m for m in sorted(graph[n], key=index.__getitem__) if m in component] for n in component}
        yield from (_circuits(start, succ) if max_length is None else _bounded(start, succ, max_length))


def _bounded(start: str, succ: dict[str, list[str]], max_length: int) -> Iterator[list[str]]:
    """Every elementary cycle through `start` of at most `max_length` nodes (depth-first)."""
    path = [start]
    on_path = {start}
    stack = [iter(succ[start])]
    while stack:
        nxt = next(stack[-1], None)
        if nxt is None:
            stack.pop()
            on_path.discard(path.pop())
        elif nxt == start:
            yield list(path)
        elif nxt not in on_path and len(path) < max_length:
            path.append(nxt)
            on_path.add(nxt)
            stack.append(iter(succ[nxt]))


def _component_of(start: str, graph: dict[str, set[str]], allowed: set[str]) -> set[str]:
    """Nodes of the strongly connected component of `start` within `allowed`."""
    forward = _reach(start, lambda n: graph[n], allowed)
    reverse: dict[str, set[str]] = {n: set() for n in allowed}
    for n in allowed:
        for m in graph[n]:
            if m in allowed:
                reverse[m].add(n)
    backward = _reach(start, lambda n: reverse[n], allowed)
    return forward & backward


def _reach(start: str, succ: Callable[[str], set[str]], allowed: set[str]) -> set[str]:
    seen = {start}
    stack = [start]
    while stack:
        for m in succ(stack.pop()):
            if m in allowed and m not in seen:
                seen.add(m)
                stack.append(m)
    return seen


def _circuits(start: str, succ: dict[str, list[str]]) -> Iterator[list[str]]:
    """Johnson's CIRCUIT procedure, iteratively: every elementary cycle through `start`."""
    blocked = {start}
    b_sets: dict[str, set[str]] = {n: set() for n in succ}
    path = [start]
    stack = [(start, iter(succ[start]))]
    closed = [False]

    def unblock(node: str) -> None:
        todo = [node]
        while todo:
            n = todo.pop()
            if n in blocked:
                blocked.discard(n)
                todo.extend(b_sets[n])
                b_sets[n].clear()

    while stack:
        node, successors = stack[-1]
        advanced = False
        for nxt in successors:
            if nxt == start:
                yield list(path)
                closed[-1] = True
            elif nxt not in blocked:
                path.append(nxt)
                blocked.add(nxt)
                stack.append((nxt, iter(succ[nxt])))
                closed.append(False)
                advanced = True
                break
        if advanced:
            continue
        stack.pop()
        found = closed.pop()
        path.pop()
        if found:
            unblock(node)
        else:
            for m in succ[node]:
                b_sets[m].add(node)
        if closed:
            closed[-1] = closed[-1] or found


class RunStates:
    """A model's values at every integration step of one run, and its equations evaluated on them.

    The model is run once through PySD, saving every step. :meth:`evaluate` then evaluates one
    variable's equation (a stock's or a first-order SMOOTH's rate for their holders) at every step
    at once, with any of its inputs replaced by a series of one's choosing: the model's own
    component functions are called on ``xarray`` series over a ``__t`` dimension, so the equation
    is PySD's, not a re-implementation. An equation that will not take series (a lookup, a
    construct PySD evaluates element by element) is evaluated step by step instead.

    Parameters
    ----------
    model : Model
        The loaded model.
    params : mapping, optional
        Overrides as :meth:`armsdyn.model.Model.simulate` takes them (a scenario's).
    time : TimeSettings, optional
        Time settings (default: the model file's); values are kept at every `time.step`.

    Attributes
    ----------
    times : numpy.ndarray
        The integration steps' times.
    values : dict of str to numpy.ndarray
        Each variable's values by py_name, shape ``(time, *element shape)``.
    """

    def __init__(self, model: Model, params: Mapping[str, Any] | None = None, time: TimeSettings | None = None) -> None:
        self.model = model
        base = time or model.time
        self.time = replace(base, saveper=base.step)
        self.times = self.time.save_times()
        self.pm = model.pysd_model
        self.module = object.__getattribute__(self.pm.components, "_components")
        self.deps = self.pm.dependencies
        self.by_py = {v.py_name: v for v in model.variables.values()}
        names = [v.name for v in model.variables.values() if v.kind not in ("lookup",)]
        out = model.simulate(dict(params or {}), self.time, names)
        self.values = {model.variables[name].py_name: np.asarray(array, dtype=float) for name, array in out.items()}

    def stateful(self, target: str) -> Any | None:
        """The stateful object (INTEG, SMOOTH, ...) whose value `target` holds, or None for an auxiliary."""
        for key in self.deps.get(target, {}):
            if key.startswith("_") and not key.startswith("__"):
                return getattr(self.module, key, None)
        return None

    def inputs(self, target: str) -> list[str]:
        """The variables `target`'s equation reads (for a holder, what its rate reads; a SMOOTH's own state too)."""
        obj = self.stateful(target)
        keys: Any = self.deps.get(target, {})
        if obj is not None:
            keys = self.deps.get(obj.py_name, {}).get("step", {})
        found = [k for k in keys if not k.startswith("_") and k not in _SKIP and k in self.values]
        if obj is not None and _smooth_order(obj) == 1 and target not in found:
            found.append(target)
        return found

    def evaluable(self, target: str) -> bool:
        """Whether :meth:`evaluate` can evaluate `target`'s equation (an auxiliary, a stock, a first-order SMOOTH)."""
        obj = self.stateful(target)
        return obj is None or (hasattr(obj, "ddt") and (_smooth_order(obj) in (None, 1)))

    def evaluate(self, target: str, overrides: Mapping[str, np.ndarray] | None = None) -> np.ndarray:
        """`target`'s equation at every step, reading `overrides` (series by py_name) for those inputs.

        For a stock or a first-order SMOOTH the equation is its rate (``d target / dt``).
        Inputs not overridden are read at their own values at each step.
        """
        overrides = dict(overrides or {})
        series = {name: overrides.get(name, self.values[name]) for name in self.inputs(target)}
        obj = self.stateful(target)
        if obj is None:
            function = getattr(self.module, target)
        elif _smooth_order(obj) == 1:
            # (input - state) / smoothing time, with the state an input like any other.
            def function() -> Any:
                return (obj.input_func() - getattr(self.module, target)()) / obj.smooth_time_func()
        else:
            function = obj.ddt
        try:
            return self._vectorised(function, series)
        except Exception:  # an equation PySD will not evaluate on series: one step at a time
            return self._stepwise(function, series)

    def _call(self, function: Callable[[], Any], inputs: Mapping[str, Any], clock: Any) -> Any:
        originals = {name: getattr(self.module, name) for name in inputs}
        data = vars(self.module)["__data"]
        real_clock = data["time"]
        try:
            for name, value in inputs.items():
                setattr(self.module, name, lambda value=value: value)
            data["time"] = clock
            self.pm.cache.clean()
            with quiet_pysd(), np.errstate(all="ignore"):
                return function()
        finally:
            for name, original in originals.items():
                setattr(self.module, name, original)
            data["time"] = real_clock
            if "float" in vars(self.module):
                delattr(self.module, "float")
            self.pm.cache.clean()

    def _as_series(self, name: str, array: np.ndarray) -> Any:
        var = self.by_py.get(name)
        dims = ["__t", *(var.dim_names if var is not None else ())]
        coords = {dim: list(elements) for dim, elements in (var.dims if var is not None else ())}
        return xr.DataArray(array, dims=dims, coords=coords)

    def _vectorised(self, function: Callable[[], Any], series: Mapping[str, np.ndarray]) -> np.ndarray:
        inputs = {name: self._as_series(name, array) for name, array in series.items()}
        # PySD wraps scalar expressions in float(); on series that must pass them through.
        self.module.float = _passthrough
        result = self._call(function, inputs, _Clock(self._as_series("", self.times), self.time))
        if isinstance(result, xr.DataArray) and "__t" in result.dims:
            result = result.transpose("__t", ...)
            return np.asarray(result.values, dtype=float)
        value = np.asarray(result.values if isinstance(result, xr.DataArray) else result, dtype=float)
        return np.broadcast_to(value, (self.times.size, *value.shape)).copy()

    def _stepwise(self, function: Callable[[], Any], series: Mapping[str, np.ndarray]) -> np.ndarray:
        rows = []
        for i, t in enumerate(self.times):
            inputs = {}
            for name, array in series.items():
                var = self.by_py.get(name)
                if var is not None and var.dims:
                    inputs[name] = xr.DataArray(array[i], dims=var.dim_names, coords={d: list(e) for d, e in var.dims})
                else:
                    inputs[name] = float(array[i])
            value = self._call(function, inputs, _Clock(float(t), self.time))
            rows.append(np.asarray(value.values if isinstance(value, xr.DataArray) else value, dtype=float))
        return np.stack(rows)


class _Clock:
    """Stands in for PySD's time object while equations are evaluated: the current time(s)."""

    def __init__(self, now: Any, time: TimeSettings) -> None:
        self.now = now
        self.settings = time

    def __call__(self) -> Any:
        return self.now

    def time_step(self) -> float:
        return self.settings.step

    def initial_time(self) -> float:
        return self.settings.initial

    def final_time(self) -> float:
        return self.settings.final

    def saveper(self) -> float:
        return self.settings.saveper


def _passthrough(value: Any) -> Any:
    return value


def _smooth_order(obj: Any) -> int | None:
    """A SMOOTH's order (None for another stateful)."""
    if type(obj).__name__ != "Smooth":
        return None
    return int(obj.order if obj.order is not None else obj.order_func())


def find_loops(
    model: Model | str | Path,
    max_length: int | None = None,
    limit: int | None = None,
    params: Mapping[str, Any] | None = None,
) -> list[Loop]:
    """Every elementary feedback loop of a model, with its variables, length and polarity.

    Parameters
    ----------
    model : Model or path
        A loaded model (:func:`armsdyn.model.load_model`) or a model file.
    max_length : int, optional
        Only loops of at most this many variables. A large model can have millions of loops
        (the knowledge model has), so bound them there.
    limit : int, optional
        Stop after this many loops (which ones are found first is not defined beyond that).
    params : mapping, optional
        Overrides for the run the links are signed over (default: the model file's own run).

    Returns
    -------
    list of Loop
        Ordered by length, then by variables; numbered ``R1, R2, ...``, ``B1, ...`` and ``U1, ...``
        (mixed or undetermined) within each polarity.
    """
    if not isinstance(model, Model):
        model = load_model(Path(model))
    graph = causal_graph(model)
    names = {v.py_name: v.name for v in model.variables.values()}
    stocks = {v.py_name for v in model.variables.values() if v.kind in ("stock", "stateful")}
    cycles = [_rotate(cycle, stocks, names) for cycle in itertools.islice(elementary_cycles(graph, max_length), limit)]
    states = RunStates(model, params) if cycles else None
    link_signs: dict[tuple[str, str], tuple[int, bool]] = {}
    table = []
    for cycle in cycles:
        links = list(zip(cycle, cycle[1:] + cycle[:1], strict=True))
        for link in links:
            if link not in link_signs and states is not None:
                link_signs[link] = link_polarity(states, *link)
        table.append(
            (
                tuple(names[n] for n in cycle),
                tuple(link_signs[link][0] for link in links),
                tuple(link_signs[link][1] for link in links),
            )
        )
    table.sort(key=lambda c: (len(c[0]), c[0]))
    counters = {"R": 0, "B": 0, "?": 0}
    loops = []
    for variables, polarities, mixed in table:
        polarity = {1: "R", -1: "B"}.get(int(np.prod(polarities)), "?")
        counters[polarity] += 1
        prefix = "U" if polarity == "?" else polarity
        loops.append(Loop(f"{prefix}{counters[polarity]}", variables, polarities, mixed))
    return loops


def _rotate(cycle: list[str], stocks: set[str], names: dict[str, str]) -> list[str]:
    """The cycle started at its first stock (in name order), else at its first variable."""
    first = min((n for n in cycle if n in stocks), default=cycle[0], key=lambda n: names[n])
    i = cycle.index(first)
    return cycle[i:] + cycle[:i]


def link_polarity(states: RunStates, source: str, target: str) -> tuple[int, bool]:
    """Polarity of the link `source` -> `target` (py_names) over the run `states` holds.

    At every step the source is nudged up and down (everything else at that step's values) and
    the target's equation evaluated; a stock's or SMOOTH's rate for its holder.

    Returns
    -------
    tuple of (int, bool)
        The sign (+1, -1, or 0 when mixed or never active) and whether it is mixed (both signs occur).
    """
    if not states.evaluable(target):
        # DELAY, higher-order SMOOTH and the like: a positively weighted history of their input.
        return (1, False) if source in states.inputs(target) else (0, False)
    signs = _nudged_signs(states, source, target, {})
    if len(signs) == 1:
        return signs.pop(), False
    if signs:
        return 0, True
    # Never active in the run (a branch of MIN, MAX or IF THEN ELSE that does not bind, a factor
    # that stays zero): nudge it at states around the run's, each input rescaled by a random
    # factor (or set to 1 where it is 0), so such branches bind somewhere. Non-negative factors
    # first, which keep every input's sign; only if that finds nothing, factors of either sign
    # (a net quantity such as indicated procurement can turn negative where the run's did not).
    rng = np.random.default_rng(20200417)
    for factors in (_FACTORS, np.concatenate([_FACTORS, -_FACTORS[1:]])):
        found: set[int] = set()
        for _ in range(_SAMPLED_ROUNDS):
            around = {}
            for name in states.inputs(target):
                values = states.values[name]
                factor = rng.choice(factors, size=values.shape)
                around[name] = np.where(values == 0, np.sign(factor) * (np.abs(factor) > 1), values * factor)
            found |= _nudged_signs(states, source, target, around)
        if found:
            return (found.pop(), False) if len(found) == 1 else (0, False)
    return 0, False


#: Factors the inputs of a link never active in the run are rescaled by to find its sign.
_FACTORS = np.array([0.0, 0.1, 0.5, 1.0, 2.0, 10.0])
_SAMPLED_ROUNDS = 4


def _nudged_signs(states: RunStates, source: str, target: str, at: Mapping[str, np.ndarray]) -> set[int]:
    """Signs of the target's response to nudging the source up, at each step's state (`at` overriding)."""
    base = at.get(source, states.values[source])
    step = _NUDGE * (np.abs(base) + 1.0)
    try:
        up = states.evaluate(target, {**at, source: base + step})
        down = states.evaluate(target, {**at, source: base - step})
    except Exception:  # an equation that cannot be evaluated on these states: no evidence
        return set()
    with np.errstate(all="ignore"):
        delta = up - down
        scale = np.maximum(np.abs(up), 1.0)
        active = np.isfinite(delta) & (np.abs(delta) > 1e-12 * scale)
    return set(np.sign(delta[active]).astype(int).tolist())


def format_loops(loops: list[Loop]) -> str:
    """The loop table as text: a header line and one line per loop."""
    lines = ["id   pol  len  variables"]
    lines += [loop.describe() for loop in loops]
    return "\n".join(lines)
