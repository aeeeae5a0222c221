"""Feedback loops of a model: its causal graph, every elementary loop, and each loop's polarity.

The causal graph has the model's variables as nodes and an edge from each variable an equation
reads to the variable it defines. A stock's inflows and outflows (everything its rate reads) are
edges into the stock; the internals of SMOOTH, DELAY and the like are collapsed to the variable
that holds them (what their rate reads points into that variable). Initial values are not edges:
they act once and close no loop. In a model with subscripts the graph is taken element by element
(``arms[USA] -> reaction[Russia]``): which elements an element reads is found from its equation
(:func:`element_graph`), so a loop across elements is found as such.

Every elementary cycle of the graph is found with Johnson's algorithm (1975). The polarity of a
link is determined numerically over a whole run (the model file's own, or a scenario's): at every
integration step the source is nudged up and down and the target's equation (a stock's or a
SMOOTH's rate) evaluated through PySD with everything else at that step's values; the sign of the
change is the link's polarity. A link that has one sign wherever it acts has that polarity; one
whose sign changes along the run is *mixed*. One that never acts in the run (a branch of MIN, MAX
or IF THEN ELSE that does not bind, a coefficient or switch that is zero) is signed at states
around the run's: its inputs rescaled, then its constants varied too (its structural sign); only
if it never responds is it undetermined. A loop's polarity is the product of its links': R
(reinforcing) or B (balancing), or ``?`` when a link is mixed or undetermined.

A model file names its loops in its documentation: a variable whose documentation says
``Loop group: action-reaction.`` makes every loop through it (any element) an ``action-reaction``
loop (:func:`documented_groups`), as a config's ``[[attribution.groups]]`` name loops by the
variables they pass through.
"""

from __future__ import annotations

import itertools
import re
import warnings
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from armsdyn.ensemble import compile_model
from armsdyn.errors import ModelError
from armsdyn.model import CONTROL_NAMES, Model, TimeSettings, Variable, load_model, quiet_pysd

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
    groups : tuple of str
        The loop groups the model file's documentation names that the loop passes through
        (:func:`documented_groups`), in name order.
    """

    id: str
    variables: tuple[str, ...]
    polarities: tuple[int, ...]
    mixed: tuple[bool, ...] = ()
    groups: tuple[str, ...] = ()

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


#: Kinds of variable that are no node of the causal graph (time and the control variables are no
#: variable of a Model at all).
_OFF_GRAPH = ("constant",)


def diagram_refusal(model: Model, variables: Sequence[str]) -> str | None:
    """Why a model diagram of these variables cannot be drawn, or None if it can.

    A diagram draws nodes of the causal graph (:func:`causal_graph`); a constant is none. Config
    validation and :func:`armsdyn.diagram.causal_diagram` both ask here, so ``armsdyn check``
    refuses what drawing the figure would, in the same words.

    Parameters
    ----------
    model : Model
        The model.
    variables : sequence of str
        Model names of variables of the model.

    Returns
    -------
    str or None
        The message naming the model file and the variables that cannot be drawn.
    """
    off = [name for name in variables if model.variables[name].kind in _OFF_GRAPH]
    if not off:
        return None
    return (
        f"model diagram of {model.path}: {', '.join(map(repr, off))} cannot be drawn (a constant, "
        "time or a control variable is on no link of the diagram); name stocks, flows and auxiliaries"
    )


def causal_graph(model: Model) -> dict[str, set[str]]:
    """The model's causal graph: ``{source py_name: {target py_names}}`` over its variables.

    Stocks receive edges from what their rate reads, and a SMOOTH's or DELAY's holder from what
    the stateful object's rate reads; constants, time and the control variables have no edges.
    """
    deps = model.pysd_model.dependencies
    names = {v.py_name for v in model.variables.values() if v.kind not in _OFF_GRAPH}
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


def on_feedback_loops(model: Model) -> set[str]:
    """Model names of the variables that lie on at least one feedback loop of the causal graph.

    A variable is on a loop when it reaches itself: its strongly connected component has another
    variable, or it reads itself. Cheap (no loop is enumerated), so a config can be checked with it.

    Parameters
    ----------
    model : Model
        The model.

    Returns
    -------
    set of str
        The variables on some loop.
    """
    graph = causal_graph(model)
    by_py = {v.py_name: v.name for v in model.variables.values()}
    nodes = set(graph)
    found: set[str] = set()
    for node in graph:
        if node in found:
            continue
        component = _component_of(node, graph, nodes)
        if len(component) > 1 or node in graph[node]:
            found |= component
    return {by_py[n] for n in found}


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

    The model is run once, saving every step (by the compiled engine where it can, else PySD).
    :meth:`evaluate` then evaluates one
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
        values = self._run_compiled(dict(params or {}), names)
        if values is None:
            out = model.simulate(dict(params or {}), self.time, names)
            values = {model.variables[n].py_name: np.asarray(array, dtype=float) for n, array in out.items()}
        self.values: dict[str, np.ndarray] = values

    def _run_compiled(self, params: dict[str, Any], names: list[str]) -> dict[str, np.ndarray] | None:
        """Every variable at every step by the compiled engine (as experiments run), or None.

        None where the engine cannot run it (a construct it does not compile, an override that is
        a time series); PySD runs it then. The engine agrees with PySD to rounding, and a run of
        a subscripted model takes it seconds where PySD takes minutes.
        """
        try:
            samples = {key: np.array([float(value)]) for key, value in params.items()}
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ds = compile_model(self.model.path, backend="numpy").run(samples, time=self.time, variables=names)
        except Exception:  # unsupported construct, time-series override, ...: PySD runs it
            return None
        out = {}
        for name in names:
            var = self.model.variables[name]
            out[var.py_name] = np.asarray(ds[var.py_name].isel(run=0).transpose("time", *var.dim_names).values, float)
        return out

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
        # A DELAY's or higher-order SMOOTH's stages are not in the run's values.
        return obj is None or type(obj).__name__ == "Integ" or _smooth_order(obj) == 1

    def evaluate(
        self, target: str, overrides: Mapping[str, np.ndarray] | None = None, part: str = "equation"
    ) -> np.ndarray:
        """`target`'s equation at every step, reading `overrides` (series by py_name) for those inputs.

        For a stock or a first-order SMOOTH the equation is its rate (``d target / dt``).
        Inputs not overridden are read at their own values at each step. With `part` ``"input"``
        or ``"delay time"``, a DELAY's input or delay time instead.

        Raises
        ------
        ValueError
            If `part` is ``"input"`` or ``"delay time"`` and `target` holds no stateful object.
        """
        return self.evaluate_stacked(target, [overrides or {}], part)[0]

    def evaluate_stacked(
        self, target: str, overrides: Sequence[Mapping[str, np.ndarray]], part: str = "equation"
    ) -> list[np.ndarray]:
        """:meth:`evaluate` for several sets of overrides at once: one array per set.

        The sets' series are stacked along time, the clock repeated with them, and the equation
        called once: PySD's and xarray's cost of a call dwarfs its arithmetic, and an equation is
        evaluated step by step independently (element-wise in time), so each set's values are
        those :meth:`evaluate` gives it alone.

        Raises
        ------
        ValueError
            If `part` is ``"input"`` or ``"delay time"`` and `target` holds no stateful object.
        """
        count = len(overrides)
        names = self.inputs(target)
        series = {name: overrides[0].get(name, self.values[name]) for name in names}
        times = self.times
        if count > 1:
            series = {name: np.concatenate([o.get(name, self.values[name]) for o in overrides]) for name in names}
            times = np.tile(self.times, count)
        obj = self.stateful(target)
        if part in ("input", "delay time"):
            if obj is None:
                msg = f"{target!r} holds no stateful object (not a DELAY): it has no {part} to evaluate"
                raise ValueError(msg)
            function = obj.input_func if part == "input" else obj.delay_time_func
        elif obj is None:
            function = getattr(self.module, target)
        elif _smooth_order(obj) == 1:
            # (input - state) / smoothing time, with the state an input like any other.
            def function() -> Any:
                return (obj.input_func() - getattr(self.module, target)()) / obj.smooth_time_func()
        else:
            function = obj.ddt
        var = self.by_py.get(target)
        try:
            result = self._vectorised(function, series, var, times)
        except Exception:  # an equation PySD will not evaluate on series: one step at a time
            result = self._stepwise(function, series, var, times)
        return np.split(result, count) if count > 1 else [result]

    def _call(
        self,
        function: Callable[[], Any],
        inputs: Mapping[str, Any],
        clock: Any,
        patches: Mapping[str, Any] | None = None,
    ) -> Any:
        module = vars(self.module)
        originals = {name: module[name] for name in inputs}
        shadowed = {name: module.get(name, _ABSENT) for name in patches or {}}
        data = module["__data"]
        real_clock = data["time"]
        try:
            for name, value in inputs.items():
                setattr(self.module, name, lambda value=value: value)
            for name, value in (patches or {}).items():
                setattr(self.module, name, value)
            data["time"] = clock
            self.pm.cache.clean()
            with quiet_pysd(), np.errstate(all="ignore"):
                return function()
        finally:
            for name, original in originals.items():
                setattr(self.module, name, original)
            for name, original in shadowed.items():
                if original is _ABSENT:
                    delattr(self.module, name)
                else:
                    setattr(self.module, name, original)
            data["time"] = real_clock
            self.pm.cache.clean()

    def _as_series(self, name: str, array: np.ndarray) -> Any:
        var = self.by_py.get(name)
        dims = ["__t", *(var.dim_names if var is not None else ())]
        coords = {dim: list(elements) for dim, elements in (var.dims if var is not None else ())}
        return xr.DataArray(array, dims=dims, coords=coords)

    def _vectorised(
        self, function: Callable[[], Any], series: Mapping[str, np.ndarray], var: Variable | None, times: np.ndarray
    ) -> np.ndarray:
        inputs = {name: self._as_series(name, array) for name, array in series.items()}
        # PySD wraps scalar expressions in float() and spreads them over subscripts with
        # xr.DataArray(value, coords, dims); on series both must keep the time dimension.
        patches = {"float": _passthrough, "xr": _SeriesXarray(times.size)}
        result = self._call(function, inputs, _Clock(self._as_series("", times), self.time), patches)
        return _shaped(result, ("__t",), (times.size,), var)

    def _stepwise(
        self, function: Callable[[], Any], series: Mapping[str, np.ndarray], var: Variable | None, times: np.ndarray
    ) -> np.ndarray:
        rows = []
        for i, t in enumerate(times):
            inputs: dict[str, xr.DataArray | float] = {}
            for name, array in series.items():
                source = self.by_py.get(name)
                if source is not None and source.dims:
                    coords = {d: list(e) for d, e in source.dims}
                    inputs[name] = xr.DataArray(array[i], dims=source.dim_names, coords=coords)
                else:
                    inputs[name] = float(array[i])
            value = self._call(function, inputs, _Clock(float(t), self.time))
            rows.append(_shaped(value, (), (), var))
        return np.stack(rows)


def _shaped(value: Any, lead: tuple[str, ...], lead_shape: tuple[int, ...], var: Variable | None) -> np.ndarray:
    """An evaluated equation as an array ``(*lead, *var.shape)``, its ranges in `var`'s order."""
    dims = (*lead, *(var.dim_names if var is not None else ()))
    shape = (*lead_shape, *(var.shape if var is not None else ()))
    if isinstance(value, xr.DataArray):
        value = value.transpose(*[d for d in dims if d in value.dims], ...)
        present = [d for d in dims if d in value.dims]
        array = np.asarray(value.values, dtype=float)
        # Insert the ranges the value does not vary over, then broadcast.
        expanded = array.reshape([shape[dims.index(d)] if d in present else 1 for d in dims])
        return np.broadcast_to(expanded, shape).copy()
    return np.broadcast_to(np.asarray(value, dtype=float), shape).copy()


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


_ABSENT = object()


class _SeriesXarray:
    """xarray as the translated model sees it, but ``DataArray(value, coords, dims)`` keeps ``__t``.

    `steps` is the length of the series being evaluated.
    """

    def __init__(self, steps: int) -> None:
        self.steps = steps

    def __getattr__(self, name: str) -> Any:
        return getattr(xr, name)

    def DataArray(self, data: Any = np.nan, coords: Any = None, dims: Any = None, **kwargs: Any) -> xr.DataArray:
        if isinstance(data, xr.DataArray) and "__t" in data.dims and dims is not None:
            template = xr.DataArray(np.zeros([len(coords[d]) for d in dims]), coords, dims, **kwargs)
            return (data + template).transpose("__t", *dims)
        if isinstance(data, np.ndarray) and dims is not None and coords is not None:
            # A subscript mapping: PySD relabels a series' values (``arms[DimB].values``) with the
            # mapped range's names by position. The series is time first; the rest must be the
            # ranges' sizes, and time's length none of them, so the time axis is not mistaken.
            sizes = tuple(len(coords[d]) for d in dims)
            if data.shape == (self.steps, *sizes) and self.steps not in sizes:
                return xr.DataArray(data, coords, ["__t", *dims], **kwargs)
        return xr.DataArray(data, coords, dims, **kwargs)


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
    through: Sequence[str] = (),
) -> list[Loop]:
    """Every elementary feedback loop of a model, with its variables, length and polarity.

    A model with subscripted variables has its loops found element by element (``arms[USA] ->
    reaction[Russia] -> ...``): which elements of a variable an element reads is found from its
    equation through PySD (each source element nudged in turn, at the run's states and at states
    around them with the constants varied, so a coefficient that is zero still counts as a link,
    as in the model's structure).

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
    through : sequence of str, optional
        Only loops through any of these variables (model names, any element of a subscripted
        one, or one element: ``"rival signal[A]"``). The search then starts from them alone, so a
        long loop (the knowledge model's action-reaction loop has 22 variables) is found without
        enumerating every loop of that length.

    Returns
    -------
    list of Loop
        Ordered by length, then by variables; numbered ``R1, R2, ...``, ``B1, ...`` and ``U1, ...``
        (mixed or undetermined) within each polarity. Elements are named ``"name[element, ...]"``.
    """
    if not isinstance(model, Model):
        model = load_model(Path(model))
    graph = causal_graph(model)
    by_py = {v.py_name: v for v in model.variables.values()}
    states: RunStates | None = None
    if any(by_py[n].dims for n in graph if graph[n]) and params:
        states = RunStates(model, params)
        nodes, link_signs = element_graph(model, states, graph)
    elif any(by_py[n].dims for n in graph if graph[n]):
        nodes, link_signs = _own_element_graph(model, graph)
    else:
        nodes = {n: {by_py[m].name for m in targets} for n, targets in graph.items()}
        nodes = {by_py[n].name: targets for n, targets in nodes.items()}
        link_signs = {}
    stocks = {
        node
        for node in nodes
        if model.element(node)[0].kind in ("stock", "stateful")  # a stock or SMOOTH (or one element of it)
    }
    found = elementary_cycles(nodes, max_length) if not through else _cycles_through(nodes, through, max_length)
    cycles = [_rotate(cycle, stocks) for cycle in itertools.islice(found, limit)]
    table = []
    for cycle in cycles:
        links = list(zip(cycle, cycle[1:] + cycle[:1], strict=True))
        for source, target in links:
            if (source, target) not in link_signs:
                states = run_states(model, params) if states is None else states
                link_signs[source, target] = link_polarity(
                    states, model.variable(source).py_name, model.variable(target).py_name
                )
        table.append(
            (
                tuple(cycle),
                tuple(link_signs[link][0] for link in links),
                tuple(link_signs[link][1] for link in links),
            )
        )
    table.sort(key=lambda c: (len(c[0]), c[0]))
    documented = documented_groups(model)
    counters = {"R": 0, "B": 0, "?": 0}
    loops = []
    for variables, polarities, mixed in table:
        polarity = {1: "R", -1: "B"}.get(int(np.prod(polarities)), "?")
        counters[polarity] += 1
        prefix = "U" if polarity == "?" else polarity
        groups = tuple(loop_groups(variables, documented))
        loops.append(Loop(f"{prefix}{counters[polarity]}", variables, polarities, mixed, groups))
    return loops


#: ``Loop group: NAME`` (or ``Loop groups: NAME, NAME``) starting a sentence of a variable's
#: documentation (at its start, or after a full stop or semicolon and whitespace), up to the end of
#: that sentence: a full stop before whitespace or the end, a semicolon, or the end. Anchored so that
#: prose mentioning a loop group ("the loop group: e.g. ...") is not read as a note, and running to
#: the sentence's end so that an abbreviation ("U.S. action") is refused, not cut to "U".
_GROUP_NOTE = re.compile(
    r"(?:\A\s*|(?<=[.;])\s+)loop\s+groups?\s*:\s*((?:[^.;]|\.(?=\S))*)",
    re.IGNORECASE,
)
_GROUP_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9 _'-]*")


def documented_groups(model: Model) -> dict[str, tuple[str, ...]]:
    """The loop groups a model file's documentation names: group name to the variables naming it.

    A variable's documentation names the groups of the loops through it with a sentence
    ``Loop group: NAME.`` (``Loop groups: NAME, NAME.`` for several) in any case, starting the
    documentation or a sentence of it (after a full stop or semicolon); the words elsewhere in prose
    are not a note. A name runs to the end of its sentence (a full stop before whitespace or the
    end, a semicolon, or the end of the documentation) and is made of letters, digits, spaces,
    ``-``, ``_`` and ``'``. Every loop through such a variable (any element of it) belongs to the
    group, as with a config's ``[[attribution.groups]]``, so the variable must lie on a feedback
    loop. Name the variable only the group's loops pass through (in the knowledge model, ``rival
    signal`` for the action-reaction loops).

    Parameters
    ----------
    model : Model
        The model.

    Returns
    -------
    dict
        Group name to the model names of the variables whose documentation names it, both sorted.

    Raises
    ------
    ModelError
        For a note naming no group, a name of other characters (an abbreviation's full stop
        included), or ``other`` (the attribution's label of what no group accounts for), or a note
        on a variable on no feedback loop (:func:`on_feedback_loops`), naming the file and the
        variable.
    """
    found: dict[str, set[str]] = {}
    on_loops: set[str] | None = None
    for var in model.variables.values():
        for note in _GROUP_NOTE.finditer(var.doc):
            for raw in note.group(1).split(","):
                name = " ".join(raw.split())
                if not _GROUP_NAME.fullmatch(name) or name.lower() == "other":
                    msg = (
                        f"{model.path}: the documentation of {var.name!r} names loop group {name!r}; a loop "
                        "group is written 'Loop group: NAME.' starting a sentence, with a name of letters, "
                        "digits, spaces, '-', '_' and \"'\" (not 'other'), several separated by commas"
                    )
                    raise ModelError(msg)
                # Only computed for a model with notes: most have none.
                on_loops = on_feedback_loops(model) if on_loops is None else on_loops
                if var.name not in on_loops:
                    msg = (
                        f"{model.path}: the documentation of {var.name!r} names loop group {name!r}, but "
                        f"{var.name!r} lies on no feedback loop, so the group would name no loop; write the "
                        "note on a variable the group's loops pass through"
                    )
                    raise ModelError(msg)
                found.setdefault(name, set()).add(var.name)
    return {name: tuple(sorted(found[name])) for name in sorted(found)}


def _cycles_through(nodes: dict[str, set[str]], through: Sequence[str], max_length: int | None) -> Iterator[list[str]]:
    """Every elementary cycle through any node of a variable in `through` (each once)."""
    wanted = set(through)
    starts = sorted(n for n in nodes if n in wanted or n.split("[", 1)[0] in wanted)
    if not starts:
        msg = f"no variable of the model's causal graph is called {', '.join(map(repr, through))}"
        raise ModelError(msg)
    seen: set[tuple[str, ...]] = set()
    succ = {n: sorted(targets) for n, targets in nodes.items()}
    for start in starts:
        for cycle in _bounded(start, succ, max_length or len(nodes)):
            i = cycle.index(min(cycle))
            key = tuple(cycle[i:] + cycle[:i])
            if key not in seen:
                seen.add(key)
                yield cycle


#: Each loaded model's own run at every step, and its element graph over that run (the one the
#: loops are searched in): signing every element link takes seconds for the knowledge model, and a
#: session asks for its loops again and again (each max_length, each --through, a run's loop
#: analysis, whose scores read the same run). Keyed by the Model object, which
#: :func:`armsdyn.model.load_model` replaces when the file or its data change.
_OWN_RUNS: weakref.WeakKeyDictionary[Model, RunStates] = weakref.WeakKeyDictionary()
_OWN_ELEMENT_GRAPHS: weakref.WeakKeyDictionary[
    Model, tuple[dict[str, set[str]], dict[tuple[str, str], tuple[int, bool]]]
] = weakref.WeakKeyDictionary()


def run_states(model: Model, params: Mapping[str, Any] | None = None, time: TimeSettings | None = None) -> RunStates:
    """``RunStates(model, params, time)``, the model file's own run made once per loaded model.

    Parameters
    ----------
    model : Model
        The loaded model.
    params : mapping, optional
        Overrides (a scenario's); none for the file's own run.
    time : TimeSettings, optional
        Time settings (default: the model file's).

    Returns
    -------
    RunStates
        The run; the file's own (no `params`, the file's time settings) is shared, so not to be edited.
    """
    if params or (time is not None and time != model.time):
        return RunStates(model, params, time)
    known = _OWN_RUNS.get(model)
    if known is None:
        known = _OWN_RUNS[model] = RunStates(model)
    return known


def _own_element_graph(
    model: Model, graph: dict[str, set[str]]
) -> tuple[dict[str, set[str]], dict[tuple[str, str], tuple[int, bool]]]:
    """:func:`element_graph` over the model file's own run, computed once per loaded model (a copy to edit)."""
    known = _OWN_ELEMENT_GRAPHS.get(model)
    if known is None:
        known = element_graph(model, run_states(model), graph)
        _OWN_ELEMENT_GRAPHS[model] = known
    nodes, signs = known
    return {node: set(targets) for node, targets in nodes.items()}, dict(signs)


def element_graph(
    model: Model, states: RunStates, graph: dict[str, set[str]] | None = None
) -> tuple[dict[str, set[str]], dict[tuple[str, str], tuple[int, bool]]]:
    """The causal graph element by element, with each element link's polarity.

    Parameters
    ----------
    model : Model
        The model.
    states : RunStates
        A run of it, whose states the links are found and signed at.
    graph : dict, optional
        Its variable-level causal graph (:func:`causal_graph`), if already built.

    Returns
    -------
    (dict, dict)
        ``{node: {target nodes}}`` over element nodes (``"name[element, ...]"``; a scalar is its
        name), and ``{(source node, target node): (sign, mixed)}`` as :func:`link_polarity` gives.
    """
    graph = causal_graph(model) if graph is None else graph
    by_py = {v.py_name: v for v in model.variables.values()}
    nodes: dict[str, set[str]] = {}
    signs: dict[tuple[str, str], tuple[int, bool]] = {}
    for source, targets in graph.items():
        x = by_py[source]
        for f in _elements(x):
            nodes.setdefault(_node(x, f), set())
        for target in targets:
            z = by_py[target]
            found: dict[tuple[tuple[str, ...], tuple[str, ...]], tuple[int, bool]] = {}
            for f, by_target in _polarities_by_element(states, source, target, _elements(x)).items():
                for e, sign in by_target.items():
                    found[f, e] = sign
            if not found:
                # Never responds, even with its constants varied: the ranges' names decide.
                shared = [d for d in x.dim_names if d in z.dim_names]
                for f in _elements(x):
                    for e in _elements(z):
                        same = all(f[x.dim_names.index(d)] == e[z.dim_names.index(d)] for d in shared)
                        if same:
                            found[f, e] = (0, False)
            for (f, e), sign in found.items():
                nodes.setdefault(_node(x, f), set()).add(_node(z, e))
                signs[_node(x, f), _node(z, e)] = sign
    return nodes, signs


def _elements(var: Variable) -> list[tuple[str, ...]]:
    return var.elements() if var.dims else [()]


def _node(var: Variable, element: tuple[str, ...]) -> str:
    return var.element_name(element) if element else var.name


def _rotate(cycle: list[str], stocks: set[str]) -> list[str]:
    """The cycle started at its first stock (in name order), else at its first variable."""
    first = min((n for n in cycle if n in stocks), default=cycle[0])
    i = cycle.index(first)
    return cycle[i:] + cycle[:i]


def link_polarity(states: RunStates, source: str, target: str) -> tuple[int, bool]:
    """Polarity of the link `source` -> `target` (py_names of scalars) over the run `states` holds.

    At every step the source is nudged up and down (everything else at that step's values) and
    the target's equation evaluated; a stock's or SMOOTH's rate for its holder. A link that never
    acts in the run (a branch of MIN, MAX or IF THEN ELSE that does not bind, a factor that stays
    zero) is signed at states around the run's instead: first with its variable inputs rescaled,
    then with its constants varied too.

    Returns
    -------
    tuple of (int, bool)
        The sign (+1, -1, or 0 when mixed or never active) and whether it is mixed (both signs occur).
    """
    return _element_polarities(states, source, target, ()).get((), (0, False))


def _element_polarities(
    states: RunStates, source: str, target: str, element: tuple[str, ...]
) -> dict[tuple[str, ...], tuple[int, bool]]:
    """Polarity of the link from one element of `source` to each element of `target` it acts on."""
    return _polarities_by_element(states, source, target, [element])[element]


def _polarities_by_element(
    states: RunStates, source: str, target: str, elements: Sequence[tuple[str, ...]]
) -> dict[tuple[str, ...], dict[tuple[str, ...], tuple[int, bool]]]:
    """For each of `elements` of `source`, the polarity of its link to each element of `target` it acts on.

    The elements are signed side by side, each as if alone (its own draws of the states around
    the run's), so that each round of nudges is one evaluation of the target's equation.
    """
    z = states.by_py[target]
    if not states.evaluable(target):
        # DELAY, higher-order SMOOTH and the like: a positively weighted history of their input.
        if source not in states.inputs(target):
            return {f: {} for f in elements}
        return {f: dict.fromkeys(_elements(z), (1, False)) for f in elements}
    out: dict[tuple[str, ...], dict[tuple[str, ...], tuple[int, bool]]] = {f: {} for f in elements}
    runs = dict(zip(elements, _nudged_signs(states, source, target, [(f, {}) for f in elements]), strict=True))
    for f, run in runs.items():
        for e, signs in run.items():
            if signs:
                out[f][e] = (signs.pop(), False) if len(signs) == 1 else (0, True)
    # Never active in the run: states around the run's, each input rescaled by a random factor
    # (or set to 1 where it is 0), so such branches bind somewhere. Non-negative factors first,
    # which keep every input's sign; then factors of either sign (a net quantity such as indicated
    # procurement can turn negative where the run's did not); then the constants varied as well
    # (a coefficient of zero, a switch that is off), which gives the link's structural sign.
    rngs = {f: np.random.default_rng(20200417) for f in elements}
    signed = np.concatenate([_FACTORS, -_FACTORS[1:]])
    for factors, constants in ((_FACTORS, False), (signed, False), (_FACTORS, True)):
        missing = {f: [e for e in runs[f] if e not in out[f]] for f in elements}
        pending = [f for f in elements if missing[f]]
        if not pending:
            break
        cases: list[tuple[tuple[str, ...], dict[str, np.ndarray]]] = []
        for f in pending:
            for _ in range(_SAMPLED_ROUNDS):
                around = {}
                for name in states.inputs(target):
                    if states.by_py[name].kind == "constant" and not constants:
                        continue
                    values = states.values[name]
                    factor = rngs[f].choice(factors, size=values.shape)
                    around[name] = np.where(values == 0, np.sign(factor) * (np.abs(factor) > 1), values * factor)
                cases.append((f, around))
        found: dict[tuple[str, ...], dict[tuple[str, ...], set[int]]] = {
            f: {e: set() for e in missing[f]} for f in pending
        }
        for (f, _), responses in zip(cases, _nudged_signs(states, source, target, cases), strict=True):
            for e, signs in responses.items():
                if e in found[f]:
                    found[f][e] |= signs
        for f in pending:
            for e, signs in found[f].items():
                if signs:
                    out[f][e] = (signs.pop(), False) if len(signs) == 1 else (0, False)
    return out


#: Factors the inputs of a link never active in the run are rescaled by to find its sign.
_FACTORS = np.array([0.0, 0.1, 0.5, 1.0, 2.0, 10.0])
_SAMPLED_ROUNDS = 3


def _nudged_signs(
    states: RunStates,
    source: str,
    target: str,
    cases: Sequence[tuple[tuple[str, ...], Mapping[str, np.ndarray]]],
) -> list[dict[tuple[str, ...], set[int]]]:
    """Per case, per target element, the signs of its response to nudging one source element up, at each step.

    A case is the source element nudged and the states, the run's with some inputs overridden.
    Every case's nudges up and down are one stacked evaluation (:meth:`RunStates.evaluate_stacked`).
    """
    x = states.by_py[source]
    z = states.by_py[target]
    nudged: list[dict[str, np.ndarray]] = []
    for element, at in cases:
        base = at.get(source, states.values[source])
        mask = np.zeros(base.shape[1:])
        if element:
            mask[tuple(x.dims[i][1].index(name) for i, name in enumerate(element))] = 1.0
        else:
            mask = np.ones(base.shape[1:])
        step = _NUDGE * (np.abs(base) + 1.0) * mask
        nudged += [{**at, source: base + step}, {**at, source: base - step}]
    try:
        responses: list[np.ndarray] | None = states.evaluate_stacked(target, nudged)
    except Exception:  # some case cannot be evaluated: each on its own, so the others keep their evidence
        responses = None
    out: list[dict[tuple[str, ...], set[int]]] = []
    for k in range(len(cases)):
        if responses is not None:
            up, down = responses[2 * k], responses[2 * k + 1]
        else:
            try:
                up = states.evaluate(target, nudged[2 * k])
                down = states.evaluate(target, nudged[2 * k + 1])
            except Exception:  # an equation that cannot be evaluated on these states: no evidence
                out.append({})
                continue
        with np.errstate(all="ignore"):
            delta = up - down
            scale = np.maximum(np.abs(up), 1.0)
            active = np.isfinite(delta) & (np.abs(delta) > 1e-12 * scale)
        signs = {}
        for i, e in enumerate(_elements(z)):
            index = (slice(None), *np.unravel_index(i, z.shape)) if z.dims else (slice(None),)
            signs[e] = set(np.sign(delta[index][active[index]]).astype(int).tolist())
        out.append(signs)
    return out


def format_loops(loops: list[Loop], groups: Mapping[str, Sequence[str]] | None = None) -> str:
    """The loop table as text: a header line and one line per loop.

    Each loop is named after the groups it belongs to: those of the model file's documentation
    (:attr:`Loop.groups`) and those of `groups` (name to variables, as a config's
    ``[[attribution.groups]]`` give them) whose variables it passes through: ``[action-reaction]``.
    """
    lines = ["id   pol  len  variables"]
    for loop in loops:
        line = loop.describe()
        names = group_names(loop, groups)
        lines.append(f"{line}  [{', '.join(names)}]" if names else line)
    return "\n".join(lines)


def group_names(loop: Loop, groups: Mapping[str, Sequence[str]] | None = None) -> list[str]:
    """The groups `loop` belongs to: the documentation's (:attr:`Loop.groups`), then those of `groups`.

    Parameters
    ----------
    loop : Loop
        The loop.
    groups : mapping, optional
        Group name to the variables its loops pass through (a config's ``[[attribution.groups]]``).

    Returns
    -------
    list of str
        Each name once, the documentation's first.
    """
    return list(dict.fromkeys([*loop.groups, *loop_groups(loop.variables, groups or {})]))


def loop_groups(variables: Sequence[str], groups: Mapping[str, Sequence[str]]) -> list[str]:
    """The names of the groups whose variables a loop of `variables` passes through (any element of them)."""
    on = {n.split("[", 1)[0] for n in variables} | set(variables)
    return [name for name, variables in groups.items() if on & set(variables)]


def variable_link_polarities(
    model: Model, links: Sequence[tuple[str, str]], params: Mapping[str, Any] | None = None
) -> dict[tuple[str, str], int]:
    """The polarity of links between variables (model names), over the model file's run (or `params`').

    A link between subscripted variables has a polarity when every element link it holds has the
    same sign (as :func:`element_graph` finds them).

    Parameters
    ----------
    model : Model
        The model.
    links : sequence of (str, str)
        ``(source, target)`` model names.
    params : mapping, optional
        Overrides for the run the links are signed over.

    Returns
    -------
    dict
        ``{(source, target): sign}``: +1, -1, or 0 when element links differ, a link is mixed or
        none acts.
    """
    states = run_states(model, params)
    out: dict[tuple[str, str], int] = {}
    for source, target in links:
        x, z = model.variable(source), model.variable(target)
        signs: set[int] = set()
        for by_target in _polarities_by_element(states, x.py_name, z.py_name, _elements(x)).values():
            signs |= {sign for sign, _ in by_target.values()}
        out[source, target] = signs.pop() if len(signs) == 1 else 0
    return out
