"""Feedback loops of a model: its causal graph, every elementary loop, and each loop's polarity.

The causal graph has the model's variables as nodes and an edge from each variable an equation
reads to the variable it defines. A stock's inflows and outflows (everything its rate reads) are
edges into the stock; the internals of SMOOTH, DELAY and the like are collapsed to the variable
that holds them (what their rate reads points into that variable). Initial values are not edges:
they act once and close no loop. Subscripted variables are nodes as a whole, so a loop is found
once for all its elements.

Every elementary cycle of the graph is found with Johnson's algorithm (1975). The polarity of a
link is determined numerically at the model's initial state: the source is nudged up and down
through PySD and the target's equation (a stock's or a stateful's rate) evaluated; the sign of the
change is the link's polarity. A loop's polarity is the product of its links': R (reinforcing) or
B (balancing), or ``?`` when some link has no effect at the initial state (a factor that is zero
there) or elements of a subscripted link disagree.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from armsdyn.model import CONTROL_NAMES, Model, load_model, quiet_pysd

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
        +1, -1, or 0 when undetermined.
    """

    id: str
    variables: tuple[str, ...]
    polarities: tuple[int, ...]

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

    def describe(self) -> str:
        """One line: ``"R1  R  4  arms X -> arming rate Y -> ..."``."""
        path = " -> ".join((*self.variables, self.variables[0]))
        return f"{self.id:<4} {self.polarity}  {self.length:>3}  {path}"


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


class _Probe:
    """Evaluates equations of a PySD model at its initial state with one variable overridden."""

    def __init__(self, model: Model) -> None:
        self.pm = model.pysd_model
        self.module = object.__getattribute__(self.pm.components, "_components")
        self.deps = self.pm.dependencies
        with quiet_pysd():
            self.pm.initialize()

    def _evaluate(self, target: str) -> list[Any]:
        """The target's value, and the rate of each stateful object (stock, SMOOTH, ...) it holds."""
        self.pm.cache.clean()
        out = [getattr(self.module, target)()]
        for key in sorted(self.deps.get(target, {})):
            if key.startswith("_") and not key.startswith("__"):
                obj = getattr(self.module, key, None)
                if obj is not None and hasattr(obj, "ddt"):
                    out.append(obj.ddt())
        return out

    def sign(self, source: str, target: str) -> int:
        """Sign of the target's response to a small rise in the source: +1, -1, or 0 if none or mixed."""
        original = getattr(self.module, source)
        with quiet_pysd():
            try:
                self.pm.cache.clean()
                base = original()
                step = _NUDGE * (abs(base) + 1.0)
                results = []
                for value in (base + step, base - step):
                    setattr(self.module, source, lambda value=value: value)
                    results.append(self._evaluate(target))
            except Exception:  # an equation that cannot be evaluated here: undetermined
                return 0
            finally:
                setattr(self.module, source, original)
                self.pm.cache.clean()
        signs: set[int] = set()
        for up, down in zip(*results, strict=True):
            delta = np.asarray(up, dtype=float) - np.asarray(down, dtype=float)
            scale = np.maximum(np.abs(np.asarray(up, dtype=float)), 1.0)
            for d, s in zip(np.ravel(delta), np.ravel(np.broadcast_to(scale, np.shape(delta))), strict=True):
                if math.isfinite(d) and abs(d) > 1e-12 * s:
                    signs.add(1 if d > 0 else -1)
        return signs.pop() if len(signs) == 1 else 0


def find_loops(model: Model | str | Path, max_length: int | None = None, limit: int | None = None) -> list[Loop]:
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

    Returns
    -------
    list of Loop
        Ordered by length, then by variables; numbered ``R1, R2, ...``, ``B1, ...`` and ``U1, ...``
        (undetermined) within each polarity.
    """
    if not isinstance(model, Model):
        model = load_model(Path(model))
    graph = causal_graph(model)
    names = {v.py_name: v.name for v in model.variables.values()}
    stocks = {v.py_name for v in model.variables.values() if v.kind == "stock"}
    probe = _Probe(model)
    link_signs: dict[tuple[str, str], int] = {}
    cycles = []
    for cycle in itertools.islice(elementary_cycles(graph, max_length), limit):
        # Start each loop at its first stock (in name order), else its first variable.
        first = min((n for n in cycle if n in stocks), default=cycle[0], key=lambda n: names[n])
        i = cycle.index(first)
        cycle = cycle[i:] + cycle[:i]
        links = list(zip(cycle, cycle[1:] + cycle[:1], strict=True))
        for link in links:
            if link not in link_signs:
                link_signs[link] = probe.sign(*link)
        cycles.append((tuple(names[n] for n in cycle), tuple(link_signs[link] for link in links)))
    cycles.sort(key=lambda c: (len(c[0]), c[0]))
    counters = {"R": 0, "B": 0, "?": 0}
    loops = []
    for variables, polarities in cycles:
        polarity = {1: "R", -1: "B"}.get(int(np.prod(polarities)), "?")
        counters[polarity] += 1
        prefix = "U" if polarity == "?" else polarity
        loops.append(Loop(f"{prefix}{counters[polarity]}", variables, polarities))
    return loops


def format_loops(loops: list[Loop]) -> str:
    """The loop table as text: a header line and one line per loop."""
    lines = ["id   pol  len  variables"]
    lines += [loop.describe() for loop in loops]
    return "\n".join(lines)
