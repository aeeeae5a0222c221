"""Compile PySD's abstract model into vectorised Python source.

PySD parses Vensim and XMILE files into the same *abstract model* (a tree of
dataclasses per variable). This module walks that tree and produces, for every
variable, a numpy expression over arrays of shape ``(n,)``, one value per
parameter sample. Stateful constructs (INTEG, SMOOTH, DELAY, ...) become state
arrays with initialisation and update statements that copy the arithmetic of
PySD's ``statefuls`` classes step for step.

Arithmetic and logic expressions are rendered exactly as PySD's own builder
renders them (same operator templates, same parenthesisation rules), so Python
parses both into the same evaluation order and the results agree bit for bit
wherever numpy and Python floats round alike.

The compiled model (:class:`ModelGraph`) is plain picklable data; the source of
one simulation function is produced from it by :func:`generate_source` for a
given set of output variables. No user text is ever evaluated: the source is
assembled from the parsed tree, names are PySD's Python-safe identifiers, and
numbers are written with ``repr``.
"""

from __future__ import annotations

import ast as ast_module
import copy
import itertools
import math
import re
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from armsdyn.ensemble._errors import UnsupportedConstruct
from armsdyn.ensemble._optimise import optimise_loop
from armsdyn.ensemble._runtime import LOOKUP_KINDS, NAMESPACE
from armsdyn.errors import ModelError
from armsdyn.model import control_name, parse_model

CONTROL = {"initial_time": "t0", "final_time": "tf", "time_step": "dt", "saveper": "sp"}
"""PySD names of the time controls and the local names the generated code gives them."""
_CONTROL_NAMES = {
    "initial_time": "INITIAL TIME",
    "final_time": "FINAL TIME",
    "time_step": "TIME STEP",
    "saveper": "SAVEPER",
}

# PySD's OperationBuilder templates and arithmetic orders (python_expressions_builder.py).
_OPS: dict[str, tuple[str, int]] = {
    "^": ("{l}**{r}", 1),
    "*": ("{l}*{r}", 2),
    "/": ("{l}/{r}", 2),
    "+": ("{l} + {r}", 3),
    "-": ("{l} - {r}", 3),
    "=": ("{l} == {r}", 4),
    "<>": ("{l} != {r}", 4),
    ">=": ("{l} >= {r}", 4),
    ">": ("{l} > {r}", 4),
    "<=": ("{l} <= {r}", 4),
    "<": ("{l} < {r}", 4),
    ":AND:": ("np.logical_and({l}, {r})", 0),
    ":OR:": ("np.logical_or({l}, {r})", 0),
}
_UNARY: dict[str, tuple[str, int]] = {":NOT:": ("np.logical_not({x})", 0), "negative": ("-{x}", 3)}
_COMPARISONS = {"=", "<>", ">=", ">", "<=", "<"}
_BOOL_OPS = _COMPARISONS | {":AND:", ":OR:", ":NOT:"}

# One-to-one numpy functions (PySD's functionspace).
_NUMPY_FUNCS = {
    "abs": "np.abs",
    "exp": "np.exp",
    "sin": "np.sin",
    "cos": "np.cos",
    "tan": "np.tan",
    "arcsin": "np.arcsin",
    "arccos": "np.arccos",
    "arctan": "np.arctan",
    "sinh": "np.sinh",
    "cosh": "np.cosh",
    "tanh": "np.tanh",
    "sqrt": "np.sqrt",
    "ln": "np.log",
    "min": "np.minimum",
    "max": "np.maximum",
    "power": "np.power",
}

# Vensim's array reductions over the ranges marked with '!' (xarray's, NaN skipped, as PySD computes them).
_AGGREGATES = {
    "sum": "np.nansum",
    "prod": "np.nanprod",
    "vmin": "np.nanmin",
    "vmax": "np.nanmax",
    "vmin_xmile": "np.nanmin",
    "vmax_xmile": "np.nanmax",
}

_IDENT = re.compile(r"[A-Za-z_][A-Za-z_0-9]*\Z")
_NUMBER = re.compile(r"-?[0-9.]+(e[-+]?[0-9]+)?\Z")

# Names under which the model languages know PySD's function names, for messages.
_CONSTRUCT_NAMES = {
    "Xpulse": "PULSE",
    "Xpulse_train": "PULSE TRAIN",
    "Xramp": "RAMP",
    "vmax_xmile": "MAX (array)",
    "vmin_xmile": "MIN (array)",
    "a_function_of": "A FUNCTION OF",
}


@dataclass(frozen=True)
class Code:
    """A rendered expression.

    Attributes
    ----------
    text : str
        Python source of the expression.
    order : int
        PySD's arithmetic order (0 atom or call, 1 power, 2 product, 3 sum, 4 comparison).
    deps : frozenset of str
        Node names it reads; ``"T"`` for time; ``"S:<state>"`` for a state.
    boolean : bool
        True if the value is a comparison or logical result.
    dims : tuple of str
        Subscript ranges of an array value, one axis each in this order (a name
        ending in ``!`` is a range to aggregate over); the samples are the last
        axis (of length 1 when no sample varies the value). Empty for a scalar: a
        float or an array of shape ``(n,)``.
    """

    text: str
    order: int = 0
    deps: frozenset[str] = frozenset()
    boolean: bool = False
    dims: tuple[str, ...] = ()


@dataclass
class Node:
    """A named value: a model variable, a hidden argument of a stateful, or a stateful's output."""

    name: str
    step: Code
    init: Code
    constant: str | None = None  # PySD name when the node is a model constant read from the samples
    shape: tuple[int, ...] = ()  # elements along each subscript range of an array value (the numba backend's)


@dataclass
class Stateful:
    """One stateful object (INTEG, SMOOTH, DELAY, ...) and the operands it reads."""

    kind: str
    var: str
    element: str
    construct: str
    args: dict[str, Code]
    nonneg: bool = False
    order: int | None = None
    shape: tuple[int, ...] = ()


@dataclass
class ElementInfo:
    """Metadata of one model variable."""

    name: str
    py_name: str
    kind: str
    units: str
    doc: str
    node: str | None = None
    flows: tuple[str, ...] = ()
    dims: tuple[tuple[str, tuple[str, ...]], ...] = ()


# Which operands each stateful kind reads when it is initialised and when it advances
# (PySD's "initial" and "step" dependencies), and which ones its output reads.
_INIT_ARGS = {
    "integ": ("initial",),
    "smooth": ("initial", "order"),
    "delay": ("initial", "delay_time", "order"),
    "delayn": ("initial", "delay_time", "order"),
    "delayfixed": ("initial", "delay_time"),
    "trend": ("initial_trend", "input", "average_time"),
    "forecast": ("input", "initial_trend"),
    "sampleiftrue": ("initial",),
    "initial": ("initial",),
}
_STEP_ARGS = {
    "integ": ("flow",),
    "smooth": ("input", "smooth_time"),
    "delay": ("input", "delay_time"),
    "delayn": ("input", "delay_time"),
    "delayfixed": ("input",),
    "trend": ("input", "average_time"),
    "forecast": ("input", "average_time", "horizon"),
    "sampleiftrue": ("condition", "input"),
    "initial": (),
}
_OUTPUT_ARGS = {
    "delay": ("delay_time",),
    "trend": ("input", "average_time"),
    "forecast": ("input", "average_time", "horizon"),
    "sampleiftrue": ("condition", "input"),
}


@dataclass
class ModelGraph:
    """A compiled model: nodes, statefuls, lookup tables and metadata (picklable).

    Attributes
    ----------
    path : pathlib.Path
        The model file.
    nodes : dict of str to Node
        Every value, keyed by its name in the generated code.
    statefuls : list of Stateful
        Stateful objects in creation order (PySD's build order).
    lookups : dict of str to tuple
        Lookup tables by generated name: ``(xs, ys, kind)``.
    constants : dict of str to float
        Default value of every constant, by PySD name.
    elements : dict of str to ElementInfo
        Model variables by PySD name, in file order.
    controls : dict of str to float
        The model file's time controls by PySD name.
    time_units : str
        The model's time unit.
    subscripted : bool
        Whether the model has subscript ranges.
    series : dict of str to int
        Constants (PySD name) or elements of constants (``"py[e1,e2]"``) that
        this graph reads as time series, and lookups whose tables it reads per
        run, with their number of points (see :func:`with_series`); empty for
        the model as written.
    folded : dict of str to Code
        Constants whose value the compiler computed from a lookup table (``x =
        f(2)``), by PySD name: the code to compute them again from another table.
    """

    path: Path
    nodes: dict[str, Node] = field(default_factory=dict)
    statefuls: list[Stateful] = field(default_factory=list)
    lookups: dict[str, tuple[np.ndarray, np.ndarray, str]] = field(default_factory=dict)
    constants: dict[str, Any] = field(default_factory=dict)
    elements: dict[str, ElementInfo] = field(default_factory=dict)
    controls: dict[str, float] = field(default_factory=dict)
    time_units: str = ""
    subscripted: bool = False
    series: dict[str, int] = field(default_factory=dict)
    folded: dict[str, Code] = field(default_factory=dict)


def series_keys(key: str) -> tuple[str, str]:
    """The names under which the generated code reads the points and values of series `key` from ``C``."""
    return f"~x:{key}", f"~y:{key}"


def with_series(graph: ModelGraph, series: dict[str, int]) -> ModelGraph:
    """`graph` with some constants, or elements of subscripted ones, given as time series.

    Each key of `series` (a constant's PySD name, or ``"py[e1,e2]"`` for one
    element) has that many points. Its node stops being a constant read once
    before the run: it becomes a value of time (``_series(t, ...)``, PySD's
    ``np.interp`` of the series), so everything computed from it, which the
    code generators treat as fixed (initialisation, hoisted and static values),
    follows it into the time loop by the usual dependency rules; initial values
    read it at the initial time, as PySD's do.

    Raises
    ------
    KeyError
        If a key names no constant of numbers, or no element of one.
    """
    out = copy.copy(graph)
    out.nodes = dict(graph.nodes)
    out.series = dict(series)
    by_constant: dict[str, dict[str, str]] = {}
    tables = [key for key in series if lookup_key(graph, key) is not None]
    if tables:
        _redraw(out, tables)
    for key in series:
        if key in tables:
            continue
        py, bracket, label = key.partition("[")
        node = graph.nodes.get(f"v_{py}")
        if node is None or node.constant != py:
            msg = f"{py!r} is not a constant of model {graph.path}"
            raise KeyError(msg)
        x, y = series_keys(key)
        by_constant.setdefault(py, {})[label[:-1] if bracket else ""] = f"_series(t, C[{x!r}], C[{y!r}])"
    for py, texts in by_constant.items():
        node = graph.nodes[f"v_{py}"]
        info = graph.elements[py]
        deps = frozenset({"T"})
        if not node.shape:
            if set(texts) != {""}:
                msg = f"{py!r} in model {graph.path} has no subscripts"
                raise KeyError(msg)
            code = Code(texts[""], 0, deps)
        else:
            labels = [",".join(e) for e in itertools.product(*(els for _, els in info.dims))]
            if "" in texts:
                msg = f"{py!r} in model {graph.path} is subscripted: give a series per element"
                raise KeyError(msg)
            unknown = sorted(set(texts) - set(labels))
            if unknown:
                msg = f"{py!r} in model {graph.path} has no element {unknown[0]!r}"
                raise KeyError(msg)
            # Elements in C order (the layout of every subscripted value): the others keep C[py]'s value.
            parts = ", ".join(f"({labels.index(label)}, {text})" for label, text in sorted(texts.items()))
            code = Code(f"_put(C[{py!r}], ({parts},))", 0, deps, False, node.step.dims)
        out.nodes[node.name] = Node(node.name, code, code, constant=None, shape=node.shape)
    return out


STATE_PREFIX = "armsdyn_state_"
"""Python-safe name prefix of the constants :func:`with_state` adds (PySD's names never start so)."""


def with_state(graph: ModelGraph, stocks: list[str]) -> ModelGraph:
    """`graph` with the initial values of some stocks read from constants, so samples can set them.

    Each stock's INTEG starts from a new constant ``armsdyn_state_<py>`` (same
    subscripts; its default, zero, is meant to be replaced by samples) instead
    of its own initial expression. Everything
    initialised from the stock (SMOOTH and DELAY internals, other stocks'
    initial values) then starts from the set value, in the usual dependency
    order: what PySD does for ``initial_condition=(t0, {stock: value})``, which
    re-initialises the statefuls whose initial values depend on the set ones.

    Raises
    ------
    KeyError
        If a name is not the Python-safe name of a stock.
    UnsupportedConstruct
        If a stock is not one INTEG over all its elements (defined piecewise).
    """
    out = copy.copy(graph)
    out.nodes = dict(graph.nodes)
    out.constants = dict(graph.constants)
    out.elements = dict(graph.elements)
    out.statefuls = list(graph.statefuls)
    for py in stocks:
        info = graph.elements.get(py)
        if info is None or info.kind != "stock":
            msg = f"{py!r} is not a stock of model {graph.path}"
            raise KeyError(msg)
        shape = tuple(len(e) for _, e in info.dims)
        integs = [i for i, st in enumerate(out.statefuls) if st.kind == "integ" and st.element == info.name]
        if len(integs) != 1 or out.statefuls[integs[0]].shape != shape:
            raise UnsupportedConstruct(graph.path, info.name, "a stock defined piecewise", "its state cannot be set")
        key = f"{STATE_PREFIX}{py}"
        name = f"v_{key}"
        dims = tuple(d for d, _ in info.dims)
        read = Code(f"C[{key!r}]", dims=dims)
        out.nodes[name] = Node(name, read, read, constant=key, shape=shape)
        out.constants[key] = np.zeros(shape) if shape else 0.0
        out.elements[key] = ElementInfo(f"{info.name} (state)", key, "constant", info.units, "", name, (), info.dims)
        st = out.statefuls[integs[0]]
        initial = Code(name, 0, frozenset({name}), False, dims)
        out.statefuls[integs[0]] = replace(st, args={**st.args, "initial": initial})
    return out


def lookup_key(graph: ModelGraph, key: str) -> tuple[str, str] | None:
    """``(py, label)`` if series key `key` names a lookup (``"py"``) or one element of one (``"py[e1,e2]"``)."""
    py, bracket, label = key.partition("[")
    info = graph.elements.get(py)
    if info is None or info.kind != "lookup" or bool(bracket) != bool(info.dims):
        return None
    return py, label[:-1]


def _redraw(graph: ModelGraph, lookups: list[str]) -> None:
    """Make `graph` (a copy) read the tables of `lookups` per run, from ``C``, instead of the model's.

    Every call of such a lookup (in variables, stateful operands and constants
    the compiler folded) becomes ``_lookup_runs(kind, xs, ys, x)``, which
    interpolates as the lookup's own kind does. A key ``"py[e1,e2]"`` redraws
    one element of a subscripted lookup: the calls of that lookup become
    ``_lookup_many_runs``, reading the redrawn elements' tables per run and the
    others' from the model.
    """
    calls: dict[re.Pattern[str], Any] = {}  # a replacement text or function (re.sub's repl)
    elements: dict[str, dict[int, str]] = {}
    for key in lookups:
        py, label = lookup_key(graph, key) or (key, "")
        x, y = series_keys(key)
        if label:
            info = graph.elements[py]
            labels = [",".join(e) for e in itertools.product(*(els for _, els in info.dims))]
            elements.setdefault(py, {})[labels.index(label)] = f"C[{x!r}], C[{y!r}]"
            continue
        table = f"LK_{py}"
        pattern = re.compile(rf"\b_lookup(?:_extrapolate|_hold)?\({re.escape(table)}_x, {re.escape(table)}_y, ")
        calls[pattern] = f"_lookup_runs({LOOKUP_KINDS[graph.lookups[table][2]]}, C[{x!r}], C[{y!r}], "
    for py, redrawn_tables in elements.items():
        # A call's tables are every element's, in C order from element 0 (Compiler._subscripted_lookup_call).
        start = re.compile(rf"\b_lookup_many\(\(\(LK_{re.escape(py)}_0_x, ")
        calls[start] = f"_lookup_many_runs(((LK_{py}_0_x, "
        entry = re.compile(rf"\(LK_{re.escape(py)}_(\d+)_x, LK_{re.escape(py)}_\d+_y, ('\w+')\)")

        def per_run(found: re.Match[str], tables: dict[int, str] = redrawn_tables) -> str:
            k = int(found.group(1))
            if k in tables:
                return f"({tables[k]}, {found.group(2)}, True)"
            return f"{found.group(0)[:-1]}, False)"

        calls[entry] = per_run

    def redrawn(code: Code) -> Code:
        text = code.text
        for pattern, call in calls.items():
            text = pattern.sub(call, text)
        return code if text == code.text else Code(text, code.order, code.deps, code.boolean, code.dims)

    for name, node in graph.nodes.items():
        step, init = redrawn(node.step), redrawn(node.init)
        if step is not node.step or init is not node.init:
            graph.nodes[name] = Node(name, step, init, node.constant, node.shape)
    graph.statefuls = [replace(st, args={k: redrawn(v) for k, v in st.args.items()}) for st in graph.statefuls]
    for py, code in graph.folded.items():
        new = redrawn(code)
        if new is not code:
            # Computed once before the run from the run's table, no longer a constant read from C.
            name = f"v_{py}"
            graph.nodes[name] = Node(name, new, new, None, graph.nodes[name].shape)


def parse(path: Path) -> Any:
    """PySD's abstract model of a Vensim or XMILE file (see :func:`armsdyn.model.parse_model`)."""
    return parse_model(path)


class Compiler:
    """Turns PySD's abstract model into a :class:`ModelGraph`.

    Parameters
    ----------
    path : pathlib.Path
        The model file (for messages).
    abstract : pysd.translators.structures.abstract_model.AbstractModel
        The parsed model.
    """

    def __init__(self, path: Path, abstract: Any) -> None:
        from pysd.builders.python.namespace import NamespaceManager

        self.path = path
        self.graph = ModelGraph(path=path)
        if len(abstract.sections) > 1:
            macro = abstract.sections[1]
            raise UnsupportedConstruct(path, macro.name, "MACRO")
        self.section = abstract.sections[0]
        self.subs: Any = None
        if self.section.subscripts:
            self.subs = _subscript_manager(path, self.section.subscripts)
            self.graph.subscripted = True
        # PySD's own namespace manager, fed in file order, gives PySD's Python names.
        self.namespace = NamespaceManager()
        for element in self.section.elements:
            self.namespace.add_to_namespace(element.name)
        self.clean = self.namespace.cleanspace
        self._elements_by_py = {self.namespace.namespace[e.name]: e for e in self.section.elements}
        self._element: str = ""
        self._memo: dict[int, str] = {}
        self._memo_kind: dict[str, str] = {}
        self._memo_dims: dict[str, tuple[str, ...]] = {}
        self._keep: list[Any] = []  # keeps memoised tree nodes alive so their ids stay unique
        self._counter = 0
        self._last_stateful: str | None = None
        self._integ_refs: dict[str, tuple[str, ...]] = {}
        self._control_code: dict[str, tuple[str, Code]] = {}
        self._def_subs: dict[str, list[str]] = {}  # the component being compiled: its ranges and elements
        self._dims: dict[str, tuple[str, ...]] = {}  # final subscript ranges of every variable, by PySD name
        self._lookup_dims: dict[str, tuple[str, ...]] = {}

    # ------------------------------------------------------------------ model level
    def compile(self) -> ModelGraph:
        """Compile every variable; raise UnsupportedConstruct on the first unsupported one."""
        from pysd.translators.structures.abstract_model import (
            AbstractControlElement,
            AbstractData,
            AbstractLookup,
        )

        lookup_elements = []
        regular = []
        controls = []
        for element in self.section.elements:
            py = self.namespace.namespace[element.name]
            self._dims[py] = self._final_dims(element)
        for element in self.section.elements:
            py = self.namespace.namespace[element.name]
            component = element.components[0]
            if self._dims[py] and isinstance(element, AbstractControlElement):
                raise UnsupportedConstruct(self.path, element.name, "a subscripted time control")
            if isinstance(element, AbstractControlElement):
                controls.append((element, py))
            elif isinstance(component, AbstractData):
                raise UnsupportedConstruct(self.path, element.name, "DATA variables")
            elif isinstance(component, AbstractLookup):
                lookup_elements.append((element, py))
            else:
                regular.append((element, py))
        # Lookup tables first: calls to them may come before their definition.
        for element, py in lookup_elements:
            self._element = element.name
            self._lookup_element(element, py)
        for element, py in controls:
            self._element = element.name
            self._control(element, py)
        for element, py in regular:
            self._element = element.name
            self._variable(element, py)
        self._resolve_controls()
        self._check_references()
        return self.graph

    def _info(self, element: Any, py: str, kind: str, node: str | None = None) -> ElementInfo:
        doc = element.documentation if isinstance(element.documentation, str) else ""
        units = element.units if isinstance(element.units, str) else ""
        info = ElementInfo(element.name, py, kind, units, " ".join(doc.split()), node)
        self.graph.elements[py] = info
        return info

    def _lookup_element(self, element: Any, py: str) -> None:
        from pysd.translators.structures.abstract_expressions import LookupsStructure

        dims = self._dims[py]
        if dims:
            shape = tuple(len(self._elements(d)) for d in dims)
            for component in element.components:
                if not isinstance(component.ast, LookupsStructure):
                    raise UnsupportedConstruct(self.path, element.name, _construct_name(component.ast))
                coords = self._coords(component.subscripts[0])
                try:
                    positions = [
                        [self._elements(d).index(e) for e in c] for d, c in zip(dims, coords.values(), strict=True)
                    ]
                except ValueError:
                    what = "definitions outside the merged range"
                    raise UnsupportedConstruct(self.path, element.name, what) from None
                for combo in itertools.product(*positions):
                    self._table(component.ast, f"LK_{py}_{int(np.ravel_multi_index(combo, shape))}")
            self._lookup_dims[py] = dims
            self._info(element, py, "lookup").dims = tuple((d, tuple(self._elements(d))) for d in dims)
            return
        ast = element.components[0].ast
        if not isinstance(ast, LookupsStructure):
            raise UnsupportedConstruct(self.path, element.name, _construct_name(ast))
        self._table(ast, f"LK_{py}")
        self._info(element, py, "lookup")

    def _table(self, ast: Any, name: str) -> str:
        xs = np.asarray(ast.x, dtype=float)
        ys = np.asarray(ast.y, dtype=float)
        if len(xs) != len(ys) or len(xs) == 0:
            msg = f"{self.path}: lookup of {self._element!r} has x and y of different lengths"
            raise ModelError(msg)
        if len(set(xs.tolist())) != len(xs):
            msg = f"{self.path}: lookup of {self._element!r} repeats an x value"
            raise ModelError(msg)
        if ast.type not in ("interpolate", "extrapolate", "hold_backward"):
            raise UnsupportedConstruct(self.path, self._element, f"lookups of type {ast.type!r}")
        order = np.argsort(xs, kind="stable")  # PySD sorts the table by x
        self.graph.lookups[name] = (xs[order], ys[order], ast.type)
        return name

    def _control(self, element: Any, py: str) -> None:
        if py not in CONTROL:
            raise UnsupportedConstruct(self.path, element.name, "a time control PySD does not know")
        if control_name(element.name) != _CONTROL_NAMES[py]:
            # armsdyn.model reads the controls by these names (PySD's documentation table): the PySD path
            # cannot run the model, so the engine does not claim to.
            what = f"a time control not written {_CONTROL_NAMES[py]!r}"
            raise UnsupportedConstruct(self.path, element.name, what)
        code = self.visit(element.components[0].ast, "step")
        if code.deps:
            # PySD evaluates a control like a variable (it may even change during the run); the
            # generated code needs fixed numbers before the first step.
            what = (
                "a time control that changes during the run"
                if self._dynamic_refs(code)
                else ("a time control defined by model variables")
            )
            raise UnsupportedConstruct(self.path, element.name, what)
        self._control_code[py] = (element.name, code)
        if py == "time_step":
            units = element.units if isinstance(element.units, str) else ""
            self.graph.time_units = units

    def _resolve_controls(self) -> None:
        # Controls are constant expressions that may refer to each other (SAVEPER = TIME STEP).
        pending = {py: code for py, (_, code) in self._control_code.items()}
        env: dict[str, Any] = {}
        while pending:
            progressed = False
            for py, code in list(pending.items()):
                needed = {CONTROL[d] for d in _control_refs(code)}
                if needed <= set(env):
                    value = self._fold(code.text, env, self._control_code[py][0])
                    if np.ndim(value) != 0:
                        raise UnsupportedConstruct(self.path, self._control_code[py][0], "an array-valued time control")
                    env[CONTROL[py]] = float(value)
                    del pending[py]
                    progressed = True
            if not progressed:
                msg = f"{self.path}: the time controls {sorted(pending)} refer to each other or to model variables"
                raise ModelError(msg)
        for py, local in CONTROL.items():
            if local in env:
                self.graph.controls[py] = env[local]

    # ------------------------------------------------------------------ subscripts
    def _elements(self, dim: str) -> list[str]:
        name = dim[:-1] if dim.endswith("!") else dim
        try:
            return list(self.subs.subscripts[name])
        except (KeyError, TypeError, AttributeError):
            raise UnsupportedConstruct(self.path, self._element, f"the subscript range {name!r}") from None

    def _final_dims(self, element: Any) -> tuple[str, ...]:
        """The subscript ranges of a variable after merging its definitions (PySD's merge list)."""
        subs_list = [list(c.subscripts[0]) for c in element.components]
        if not any(subs_list):
            if len(element.components) != 1:
                raise UnsupportedConstruct(self.path, element.name, "several definitions of one variable")
            return ()
        if not all(subs_list):
            raise UnsupportedConstruct(self.path, element.name, "a mix of subscripted and scalar definitions")
        if any(c.subscripts[1] for c in element.components):
            raise UnsupportedConstruct(self.path, element.name, ":EXCEPT:")
        if self.subs is None:
            raise UnsupportedConstruct(self.path, element.name, "subscripts without subscript ranges")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                dims = self.subs.make_merge_list(subs_list, element.name)
        except Exception as exc:  # PySD's own failures to merge: not ours to run
            raise UnsupportedConstruct(self.path, element.name, "subscripts PySD cannot merge", str(exc)) from None
        if any(d is None or d not in self.subs.subscripts for d in dims):
            raise UnsupportedConstruct(self.path, element.name, "subscripts PySD cannot merge")
        return tuple(dims)

    def _coords(self, subs: list[str]) -> dict[str, list[str]]:
        try:
            coords = self.subs.make_coord_dict(list(subs))
        except Exception:
            raise UnsupportedConstruct(self.path, self._element, f"the subscripts {subs!r}") from None
        if len(coords) != len(subs) or any(k is None for k in coords):
            raise UnsupportedConstruct(self.path, self._element, "a reference with repeated subscript ranges")
        return {k: list(v) for k, v in coords.items()}

    def _align(self, code: Code, target: tuple[str, ...]) -> Code:
        """`code` with its axes in the order of `target`, length-1 axes for the ranges it lacks."""
        if not code.dims:
            return code
        extra = [d for d in code.dims if d not in target]
        if extra:
            raise UnsupportedConstruct(
                self.path, self._element, "subscripts that do not match the definition", f"ranges {extra}"
            )
        order = [d for d in target if d in code.dims]
        perm = [code.dims.index(d) for d in order]
        text = code.text if code.order == 0 else f"({code.text})"
        changed = False
        if perm != list(range(len(perm))):
            text = f"{text}.transpose({(*perm, len(perm))!r})"
            changed = True
        if len(order) < len(target):
            index = ", ".join(":" if d in code.dims else "None" for d in target)
            text = f"{text}[{index}, :]"
            changed = True
        if not changed:
            return Code(code.text, code.order, code.deps, code.boolean, tuple(target))
        return Code(text, 0, code.deps, code.boolean, tuple(target))

    def _broadcast(self, args: list[Code]) -> tuple[list[Code], tuple[str, ...]]:
        """Arguments aligned for numpy broadcasting over the union of their ranges (xarray's)."""
        union: dict[str, None] = {}
        for a in args:
            union.update(dict.fromkeys(a.dims))
        target = tuple(union)
        if not target:
            return args, ()
        return [self._align(a, target) for a in args], target

    def _shape_to(self, code: Code, target: tuple[str, ...], shape: tuple[int, ...]) -> Code:
        """`code` as a full array over `target` (PySD's reshape to the definition's subscripts)."""
        aligned = self._align(code, target)
        if code.dims == target:
            return aligned
        return Code(f"_shaped({aligned.text}, {shape!r})", 0, code.deps, code.boolean, target)

    def _select(self, code: Code, var_dims: tuple[str, ...], ref_subs: list[str]) -> Code:
        """A reference ``var[subs]``: elements picked, ranges renamed or mapped (PySD's visit_loc)."""
        if len(ref_subs) != len(var_dims):
            raise UnsupportedConstruct(self.path, self._element, "a reference with the wrong number of subscripts")
        coords = self._coords(ref_subs)
        text = code.text
        picks: list[str] = []
        dims: list[str] = []
        for axis, ((dim, elems), vdim) in enumerate(zip(coords.items(), var_dims, strict=True)):
            velems = self._elements(vdim)
            try:
                positions = [velems.index(e) for e in elems]
            except ValueError:
                if len(elems) == len(velems):
                    positions = list(range(len(velems)))  # positional, as xarray's rename
                else:
                    raise UnsupportedConstruct(
                        self.path, self._element, f"subscript {dim!r} outside the range {vdim!r}"
                    ) from None
            if len(elems) == 1:
                picks.append(str(positions[0]))
                continue
            picks.append(":")
            if len(elems) < len(velems):
                text = f"np.take({text}, {positions!r}, axis={axis})"
            dims.append(dim)
        if any(p != ":" for p in picks):
            text = f"{text}[{', '.join(picks)}, ...]"
        # PySD's mapping: a range the definition does not use becomes the one it maps to.
        final = []
        for dim in dims:
            new = dim
            if dim not in self._def_subs and not dim.endswith("!"):
                for mapped in self.subs.mapping.get(dim, []):
                    if not isinstance(mapped, str):
                        raise UnsupportedConstruct(self.path, self._element, "a subscript mapping with element lists")
                    if mapped in self._def_subs and mapped not in coords:
                        if len(self._elements(mapped)) != len(self._elements(dim)):
                            what = "a mapping between ranges of unequal size"
                            raise UnsupportedConstruct(self.path, self._element, what)
                        new = mapped
                        break
            final.append(new)
        if len(set(final)) != len(final):
            raise UnsupportedConstruct(self.path, self._element, "a reference with repeated subscript ranges")
        return Code(text, 0, code.deps, code.boolean, tuple(final))

    def _subscript_value(self, ref: str) -> Code:
        """A subscript range or element used as a number: its position(s) in its main range, from 1."""
        if self.subs is not None:
            for main, subranges in self.subs.subranges.items():
                elements = list(self.subs.subscripts[main])
                if _clean(main) == ref:
                    return Code(f"np.arange(1.0, {len(elements) + 1})[:, None]", 0, dims=(main,))
                for i, e in enumerate(elements, start=1):
                    if _clean(e) == ref:
                        return Code(repr(float(i)))
                for sub in subranges:
                    if _clean(sub) == ref:
                        pos = [float(elements.index(e) + 1) for e in self.subs.subscripts[sub]]
                        return Code(f"np.array({pos!r})[:, None]", 0, dims=(sub,))
        raise UnsupportedConstruct(self.path, self._element, f"a reference to subscript {ref!r}")

    def _subscripted_variable(self, element: Any, py: str, dims: tuple[str, ...]) -> None:
        shape = tuple(len(self._elements(d)) for d in dims)
        n_before = len(self.graph.statefuls)
        self._last_stateful = None
        parts = []
        for component in element.components:
            def_subs = self._coords(component.subscripts[0])
            self._def_subs = def_subs
            target = tuple(def_subs)
            comp_shape = tuple(len(v) for v in def_subs.values())
            try:
                positions = tuple(
                    tuple(self._elements(d).index(e) for e in coords)
                    for d, coords in zip(dims, def_subs.values(), strict=True)
                )
            except ValueError:
                raise UnsupportedConstruct(self.path, element.name, "definitions outside the merged range") from None
            step = self._shape_to(self.visit(component.ast, "step"), target, comp_shape)
            init = self._shape_to(self.visit(component.ast, "init"), target, comp_shape)
            parts.append((positions, step, init))
        self._def_subs = {}
        whole = tuple(tuple(range(k)) for k in shape)
        if len(parts) == 1 and parts[0][0] == whole:
            step, init = (Code(c.text, c.order, c.deps, c.boolean, dims) for c in parts[0][1:])
        else:
            codes = []
            for pairs in ([(p, s) for p, s, _ in parts], [(p, i) for p, _, i in parts]):
                items = ", ".join(f"({p!r}, {c.text})" for p, c in pairs)
                deps = frozenset().union(*(c.deps for _, c in pairs))
                codes.append(Code(f"_assemble({shape!r}, ({items},))", 0, deps, False, dims))
            step, init = codes
        name = f"v_{py}"
        created = self.graph.statefuls[n_before:]
        dim_info = tuple((d, tuple(self._elements(d))) for d in dims)
        if not created and not step.deps and not init.deps and not _uses_controls(step):
            value = np.asarray(self._fold(step.text, {}, element.name), dtype=float)
            self.graph.constants[py] = np.broadcast_to(value, (*shape, value.shape[-1]))[..., 0].copy()
            if "LK_" in step.text:
                self.graph.folded[py] = step
            self.graph.nodes[name] = Node(
                name, Code(f"C[{py!r}]", dims=dims), Code(f"C[{py!r}]", dims=dims), constant=py, shape=shape
            )
            self._info(element, py, "constant", name).dims = dim_info
            return
        self.graph.nodes[name] = Node(name, step, init, shape=shape)
        kind = ("stock" if self._last_stateful == "integ" else "stateful") if created else "auxiliary"
        info = self._info(element, py, kind, name)
        info.dims = dim_info
        integs = [s for s in created if s.kind == "integ"]
        if integs:
            info.flows = self._integ_refs.get(integs[0].var, ())

    def _variable(self, element: Any, py: str) -> None:
        if self._dims[py]:
            self._subscripted_variable(element, py, self._dims[py])
            return
        ast = element.components[0].ast
        n_before = len(self.graph.statefuls)
        self._last_stateful = None
        step = self.visit(ast, "step")
        init = self.visit(ast, "init")
        name = f"v_{py}"
        created = self.graph.statefuls[n_before:]
        if not created and not step.deps and not init.deps and not _uses_controls(step):
            # PySD's "Constant": a number or an expression of numbers; samples may replace it.
            value = self._fold(step.text, {}, element.name)
            if isinstance(value, np.ndarray | np.generic):
                value = value.item() if value.size == 1 else value
            self.graph.constants[py] = value
            if "LK_" in step.text:
                self.graph.folded[py] = step
            self.graph.nodes[name] = Node(name, Code(f"C[{py!r}]"), Code(f"C[{py!r}]"), constant=py)
            self._info(element, py, "constant", name)
            return
        self.graph.nodes[name] = Node(name, step, init)
        # PySD types a variable "Stateful" when it built a stateful object for it.
        kind = ("stock" if self._last_stateful == "integ" else "stateful") if created else "auxiliary"
        info = self._info(element, py, kind, name)
        # armsdyn.model counts as flows the variables named in the rate of the
        # element's own INTEG object (PySD names it _integ_<py>): the first one built.
        integs = [s for s in created if s.kind == "integ"]
        if integs:
            info.flows = self._integ_refs.get(integs[0].var, ())

    def _dynamic_refs(self, code: Code) -> bool:
        """Whether `code` reads time or a state, directly or through the variables it names."""
        seen: set[str] = set()
        todo = list(code.deps)
        while todo:
            dep = todo.pop()
            if dep == "T" or dep.startswith("S:"):
                return True
            if dep in seen:
                continue
            seen.add(dep)
            node = self.graph.nodes.get(dep)
            if node is not None:
                todo += node.step.deps | node.init.deps
            elif dep.startswith("v_"):
                # Not compiled yet (controls come before the other variables): ask the parsed model.
                element = self._elements_by_py.get(dep[2:])
                if element is None or self._element_is_dynamic(element):
                    return True
        return False

    def _element_is_dynamic(self, element: Any) -> bool:
        from pysd.translators.structures import abstract_expressions as ae

        stack = [component.ast for component in element.components]
        visited = {id(element)}
        while stack:
            ast = stack.pop()
            if isinstance(ast, ae.ReferenceStructure):
                if ast.reference == "time":
                    return True
                other = self._elements_by_py.get(self.clean.get(ast.reference, ""))
                if other is not None and id(other) not in visited:
                    visited.add(id(other))
                    stack += [component.ast for component in other.components]
            elif self._stateful_spec(ast) is not None:
                return True
            elif hasattr(ast, "__dataclass_fields__"):
                stack += [getattr(ast, f) for f in ast.__dataclass_fields__]
            elif isinstance(ast, list | tuple):
                stack += list(ast)
        return False

    def _fold(self, text: str, env: dict[str, Any], variable: str) -> Any:
        """The value of a constant expression, as PySD computes it; divisions by zero give inf or nan.

        PySD evaluates a constant with Python floats, which raise on a division by zero
        or an overflow where a run with sampled (numpy) values gives inf or nan; the
        engine folds to numpy's result and leaves reporting it to the fault scan.
        """
        tables = {
            f"{name}_{axis}": table[i] for name, table in self.graph.lookups.items() for i, axis in ((0, "x"), (1, "y"))
        }
        try:
            return _evaluate(text, {**tables, **env})
        except ArithmeticError:
            return _evaluate(text, {**tables, **env}, as_numpy=True)
        except Exception as exc:  # a name or type the folding cannot handle
            raise UnsupportedConstruct(
                self.path, variable, "an expression the engine cannot evaluate", f"{type(exc).__name__}: {exc}"
            ) from None

    def _check_references(self) -> None:
        for node in self.graph.nodes.values():
            for dep in node.step.deps | node.init.deps:
                if dep.startswith("v_") and dep not in self.graph.nodes:
                    msg = f"{self.path}: a variable refers to {dep[2:]!r}, which has no equation"
                    raise ModelError(msg)
        # Flows are auxiliaries only (armsdyn.model's classification).
        for info in self.graph.elements.values():
            if info.flows:
                info.flows = tuple(
                    f for f in info.flows if f in self.graph.elements and self.graph.elements[f].kind == "auxiliary"
                )
        for info in list(self.graph.elements.values()):
            for flow in info.flows:
                self.graph.elements[flow].kind = "flow"

    # ------------------------------------------------------------------ expressions
    def visit(self, ast: Any, mode: str) -> Code:
        """Render one abstract-syntax node in ``"init"`` or ``"step"`` mode."""
        from pysd.translators.structures import abstract_expressions as ae

        if isinstance(ast, bool):
            return Code(repr(ast))
        if isinstance(ast, int | float | np.integer | np.floating):
            return _number(ast)
        if isinstance(ast, np.ndarray):
            return self._array(ast)
        if isinstance(ast, ae.ReferenceStructure):
            return self._reference(ast)
        if isinstance(ast, ae.ArithmeticStructure | ae.LogicStructure):
            return self._operation(ast, mode)
        if isinstance(ast, ae.CallStructure):
            return self._call(ast, mode)
        if isinstance(ast, ae.GameStructure):
            return self.visit(ast.expression, mode)
        if isinstance(ast, ae.InlineLookupsStructure):
            table = self._memo_table(ast)
            return self._lookup_call(table, self.visit(ast.argument, mode))
        stateful = self._stateful_spec(ast)
        if stateful is not None:
            return self._stateful(ast, *stateful)
        raise UnsupportedConstruct(self.path, self._element, _construct_name(ast))

    def _array(self, ast: np.ndarray) -> Code:
        if not self._def_subs:
            raise UnsupportedConstruct(self.path, self._element, "an array of numbers outside a subscripted definition")
        shape = tuple(len(v) for v in self._def_subs.values())
        values = np.asarray(ast, dtype=float)
        if values.size != int(np.prod(shape)):
            raise UnsupportedConstruct(self.path, self._element, "an array of numbers of the wrong size")
        text = f"np.array({values.reshape(shape).tolist()!r})[..., None]"
        return Code(text, 0, dims=tuple(self._def_subs))

    def _reference(self, ast: Any) -> Code:
        ref = ast.reference
        subs = list(ast.subscripts.subscripts) if ast.subscripts is not None else []
        if ref == "time":
            return Code("t", deps=frozenset({"T"}))
        py = self.clean.get(ref)
        if py is None:
            return self._subscript_value(ref)
        if py in CONTROL:
            return Code(CONTROL[py])
        if f"LK_{py}" in self.graph.lookups or py in self._lookup_dims:
            raise UnsupportedConstruct(self.path, self._element, "a lookup used without an argument")
        code = Code(f"v_{py}", deps=frozenset({f"v_{py}"}))
        dims = self._dims.get(py, ())
        if not subs and not dims:
            return code
        if not dims:
            raise UnsupportedConstruct(self.path, self._element, "subscripts on a scalar variable")
        if not subs:
            if self.path.suffix.lower() == ".mdl" or not all(d in self._def_subs for d in dims):
                raise UnsupportedConstruct(self.path, self._element, "a subscripted variable used without subscripts")
            subs = list(dims)  # XMILE: the whole array, over the definition's own ranges
        return self._select(Code(code.text, 0, code.deps, False, dims), dims, subs)

    def _operation(self, ast: Any, mode: str) -> Code:
        ops = list(ast.operators)
        for op in ops:
            if op not in _OPS and op not in _UNARY:
                raise UnsupportedConstruct(self.path, self._element, f"the operator {op!r}")
        if sum(op in _COMPARISONS for op in ops) > 1:
            # Python would chain them ("a < b < c"), which numpy arrays cannot do.
            raise UnsupportedConstruct(self.path, self._element, "chained comparisons")
        args, dims = self._broadcast([self.visit(a, mode) for a in ast.arguments])
        deps = frozenset().union(*(a.deps for a in args))
        last = ops[-1]
        boolean = last in _BOOL_OPS
        arithmetic = not boolean
        # numpy refuses arithmetic negation of booleans; Python and PySD allow it.
        args = [Code(f"_f({a.text})", 0, a.deps, False, a.dims) if a.boolean and arithmetic else a for a in args]
        order = (_OPS.get(last) or _UNARY[last])[1]
        if len(args) == 1:
            template, _ = _UNARY[ops[0]]
            arg = _lower(args[0], order)
            if ops[0] == "negative":
                order = 1
            return self._fold_faults(Code(template.format(x=arg.text), order, deps, boolean, dims))
        args[-1] = _lower(args[-1], 2 if last == "^" else order)
        right = args.pop().text
        while args or ops:
            template = _OPS[ops.pop()][0]
            left = _lower(args.pop(), order)
            right = template.format(l=left.text, r=right)
        return self._fold_faults(Code(right, order, deps, boolean, dims))

    def _fold_faults(self, code: Code) -> Code:
        """`code`, or its value if it is an expression of numbers that Python floats cannot compute.

        The generated code would raise there (``1/0``, ``10.0**400``); numpy gives inf or nan.
        """
        if code.deps or code.dims or _uses_controls(code) or "LK_" in code.text:
            return code
        try:
            _evaluate(code.text, {})
        except ArithmeticError:
            value = _evaluate(code.text, {}, as_numpy=True)
            if np.ndim(value) == 0:
                folded = _number(float(value))
                return Code(f"({folded.text})" if folded.text.startswith("-") else folded.text)
        except Exception:  # not ours to judge here: the generated code reports it
            pass
        return code

    def _call(self, ast: Any, mode: str) -> Code:
        from pysd.translators.structures import abstract_expressions as ae

        func = ast.function.reference
        py = self.clean.get(func)
        if py is not None and py in self._lookup_dims:
            if len(ast.arguments) != 1:
                raise UnsupportedConstruct(self.path, self._element, "a lookup called with several arguments")
            return self._subscripted_lookup_call(py, ast.function, self.visit(ast.arguments[0], mode))
        if py is not None and f"LK_{py}" in self.graph.lookups:
            if len(ast.arguments) != 1:
                raise UnsupportedConstruct(self.path, self._element, "a lookup called with several arguments")
            return self._lookup_call(f"LK_{py}", self.visit(ast.arguments[0], mode))
        if func == "active_initial":
            # PySD returns the initial value while initialising, the expression afterwards.
            return self.visit(ast.arguments[1] if mode == "init" else ast.arguments[0], mode)
        if func == "pi":
            return Code("np.pi")
        if func in _AGGREGATES:
            if len(ast.arguments) != 1:
                raise UnsupportedConstruct(self.path, self._element, f"{_construct_name(ast)} with several arguments")
            arg = self.visit(ast.arguments[0], mode)
            if func.endswith("_xmile"):
                axes = tuple(range(len(arg.dims)))
            else:
                axes = tuple(i for i, d in enumerate(arg.dims) if d.endswith("!"))
            if not axes:
                what = f"{_construct_name(ast)} without a range to reduce"
                raise UnsupportedConstruct(self.path, self._element, what)
            dims = tuple(d for i, d in enumerate(arg.dims) if i not in axes)
            return Code(f"{_AGGREGATES[func]}({arg.text}, axis={axes!r})", 0, arg.deps, False, dims)
        if func == "elmcount" and len(ast.arguments) == 1 and isinstance(ast.arguments[0], ae.ReferenceStructure):
            dims = self._subscript_value(ast.arguments[0].reference).dims
            if len(dims) == 1:
                return _number(float(len(self._elements(dims[0]))))
        if func == "vector_select":
            raise UnsupportedConstruct(self.path, self._element, _construct_name(ast))
        args, dims = self._broadcast([self.visit(a, mode) for a in ast.arguments])
        deps = frozenset().union(*(a.deps for a in args)) if args else frozenset()
        texts = [a.text for a in args]
        time_deps = deps | {"T"}
        if func in _NUMPY_FUNCS:
            return Code(f"{_NUMPY_FUNCS[func]}({', '.join(texts)})", 0, deps, False, dims)
        simple = {
            "log": lambda a: f"(np.log({a[0]})/np.log({a[1]}))",
            "if_then_else": lambda a: f"np.where({a[0]}, {a[1]}, {a[2]})",
            "integer": lambda a: f"np.trunc({a[0]})",
            "modulo": lambda a: f"_modulo({a[0]}, {a[1]})",
            "quantum": lambda a: f"_quantum({a[0]}, {a[1]})",
            "xidz": lambda a: f"_xidz({a[0]}, {a[1]}, {a[2]})",
            "zidz": lambda a: f"_zidz({a[0]}, {a[1]})",
        }
        if func in simple:
            return Code(simple[func](texts), 0, deps, False, dims)
        timed = {
            "step": lambda a: f"_step(t, dt, {a[0]}, {a[1]})",
            "ramp": lambda a: f"_ramp(t, {a[0]}, {a[1]}, {a[2]})",
            "Xramp": lambda a: f"_ramp(t, {a[0]}, {a[1]})",
            "pulse": lambda a: f"_pulse(t, dt, {a[0]}, width={a[1]})",
            "Xpulse": lambda a: f"_pulse(t, dt, {a[0]}, magnitude={a[1]})",
            "pulse_train": lambda a: f"_pulse(t, dt, {a[0]}, repeat_time={a[1]}, width={a[2]}, end={a[3]})",
            "Xpulse_train": lambda a: f"_pulse(t, dt, {a[0]}, repeat_time={a[1]}, magnitude={a[2]})",
        }
        if func in timed:
            try:
                return Code(timed[func](texts), 0, time_deps, False, dims)
            except IndexError:
                raise UnsupportedConstruct(
                    self.path, self._element, f"{_construct_name(ast)} with {len(texts)} arguments"
                ) from None
        raise UnsupportedConstruct(self.path, self._element, _construct_name(ast))

    def _memo_table(self, ast: Any) -> str:
        key = id(ast.lookups)
        if key not in self._memo:
            self._keep.append(ast.lookups)
            self._counter += 1
            self._memo[key] = self._table(ast.lookups, f"LK__{self._counter}")
        return self._memo[key]

    def _lookup_call(self, table: str, arg: Code) -> Code:
        kind = self.graph.lookups[table][2]
        func = {"interpolate": "_lookup", "extrapolate": "_lookup_extrapolate", "hold_backward": "_lookup_hold"}[kind]
        return Code(f"{func}({table}_x, {table}_y, {arg.text})", 0, arg.deps, False, arg.dims)

    def _subscripted_lookup_call(self, py: str, function: Any, arg: Code) -> Code:
        """``table[subs](x)`` of a lookup defined element by element: each element's own table."""
        dims = self._lookup_dims[py]
        subs = list(function.subscripts.subscripts) if function.subscripts is not None else []
        if not subs:
            raise UnsupportedConstruct(self.path, self._element, "a subscripted lookup called without subscripts")
        shape = tuple(len(self._elements(d)) for d in dims)
        index = Code(f"np.arange({int(np.prod(shape))}).reshape({(*shape, 1)!r})", 0, dims=dims)
        picked = self._select(index, dims, subs)
        (picked, arg), union = self._broadcast([picked, arg])
        names = [f"LK_{py}_{k}" for k in range(int(np.prod(shape)))]
        missing = [n for n in names if n not in self.graph.lookups]
        if missing:
            raise UnsupportedConstruct(self.path, self._element, "a subscripted lookup with undefined elements")
        tables = ", ".join(f"({n}_x, {n}_y, {self.graph.lookups[n][2]!r})" for n in names)
        text = f"_lookup_many(({tables},), {picked.text}, {arg.text})"
        return Code(text, 0, arg.deps, False, union)

    # ------------------------------------------------------------------ statefuls
    def _stateful_spec(self, ast: Any) -> tuple[str, str, dict[str, Any], int | None, bool] | None:
        from pysd.translators.structures import abstract_expressions as ae

        if isinstance(ast, ae.IntegStructure):
            return "integ", "INTEG", {"flow": ast.flow, "initial": ast.initial}, None, bool(ast.non_negative)
        if isinstance(ast, ae.SmoothStructure):
            args = {"input": ast.input, "smooth_time": ast.smooth_time, "initial": ast.initial}
            name = "SMOOTH" if ast.order == 1 else "SMOOTH3"
            return "smooth", name, args, int(ast.order), False
        if isinstance(ast, ae.SmoothNStructure):
            args = {"input": ast.input, "smooth_time": ast.smooth_time, "initial": ast.initial, "order": ast.order}
            return "smooth", "SMOOTH N", args, None, False
        if isinstance(ast, ae.DelayStructure):
            args = {"input": ast.input, "delay_time": ast.delay_time, "initial": ast.initial, "order": ast.order}
            return "delay", "DELAY1" if ast.order == 1 else "DELAY3", args, None, False
        if isinstance(ast, ae.DelayNStructure):
            args = {"input": ast.input, "delay_time": ast.delay_time, "initial": ast.initial, "order": ast.order}
            return "delayn", "DELAY N", args, None, False
        if isinstance(ast, ae.DelayFixedStructure):
            args = {"input": ast.input, "delay_time": ast.delay_time, "initial": ast.initial}
            return "delayfixed", "DELAY FIXED", args, None, False
        if isinstance(ast, ae.TrendStructure):
            args = {"input": ast.input, "average_time": ast.average_time, "initial_trend": ast.initial_trend}
            return "trend", "TREND", args, None, False
        if isinstance(ast, ae.ForecastStructure):
            args = {
                "input": ast.input,
                "average_time": ast.average_time,
                "horizon": ast.horizon,
                "initial_trend": ast.initial_trend,
            }
            return "forecast", "FORECAST", args, None, False
        if isinstance(ast, ae.SampleIfTrueStructure):
            args = {"condition": ast.condition, "input": ast.input, "initial": ast.initial}
            return "sampleiftrue", "SAMPLE IF TRUE", args, None, False
        if isinstance(ast, ae.InitialStructure):
            return "initial", "INITIAL", {"initial": ast.initial}, None, False
        return None

    def _stateful(
        self, ast: Any, kind: str, construct: str, args: dict[str, Any], order: int | None, nonneg: bool
    ) -> Code:
        key = id(ast)
        if key not in self._memo:
            self._keep.append(ast)
            # Arguments first, as PySD builds them, so nested statefuls come first.
            operands = {}
            refs: tuple[str, ...] = ()
            target = tuple(self._def_subs)
            shape = tuple(len(v) for v in self._def_subs.values())
            for arg, sub in args.items():
                operands[arg], found = self._operand(sub, () if arg == "order" else target)
                if arg == "order" and operands[arg].dims:
                    raise UnsupportedConstruct(self.path, self._element, f"{construct} with a subscripted order")
                if kind == "integ" and arg == "flow":
                    refs = found
            if target and kind == "delayfixed":
                raise UnsupportedConstruct(self.path, self._element, "a subscripted DELAY FIXED")
            self._counter += 1
            var = f"s{self._counter}"
            st = Stateful(kind, var, self._element, construct, operands, nonneg, order, shape)
            self.graph.statefuls.append(st)
            self._integ_refs[var] = refs
            out = f"o{self._counter}"
            deps = {f"S:{var}"} | {d for a in _OUTPUT_ARGS.get(kind, ()) for d in operands[a].deps}
            code = Code(_output_text(st), 0, frozenset(deps), False, target)
            self.graph.nodes[out] = Node(out, code, code, shape=shape)
            self._memo[key] = out
            self._memo_kind[out] = kind
            self._memo_dims[out] = target
        out = self._memo[key]
        # PySD types the variable by the stateful object it built last.
        self._last_stateful = self._memo_kind[out]
        return Code(out, 0, frozenset({out}), False, self._memo_dims[out])

    def _operand(self, ast: Any, target: tuple[str, ...] = ()) -> tuple[Code, tuple[str, ...]]:
        """An argument of a stateful: a name or number as is, anything else as a hidden node.

        Also returns the model variables the argument names directly (PySD's "calls").
        In a subscripted definition the argument is aligned with its ranges (`target`).
        """
        step = self._align(self.visit(ast, "step"), target)
        init = self._align(self.visit(ast, "init"), target)
        refs = tuple(sorted(d[2:] for d in step.deps if d.startswith("v_")))
        if step.text == init.text and _simple(step.text):
            return step, refs
        self._counter += 1
        name = f"h{self._counter}"
        # An aligned value may have length-1 axes; it stands for the whole definition's elements.
        shape = tuple(len(v) for v in self._def_subs.values()) if step.dims or init.dims else ()
        self.graph.nodes[name] = Node(name, step, init, shape=shape)
        return Code(name, 0, frozenset({name}), False, step.dims), refs


# ---------------------------------------------------------------------- helpers
def _clean(name: str) -> str:
    return name.replace(" ", "_").lower()


def _subscript_manager(path: Path, ranges: list[Any]) -> Any:
    """PySD's SubscriptManager of the model's ranges (subranges expanded, mappings recorded)."""
    from pysd.builders.python.subscripts import SubscriptManager

    for sub in ranges:
        if isinstance(sub.subscripts, dict):
            raise UnsupportedConstruct(path, sub.name, "subscript ranges read from files")
        if not all(isinstance(m, str) for m in sub.mapping):
            raise UnsupportedConstruct(path, sub.name, "a subscript mapping with element lists")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return SubscriptManager(ranges, path.parent)
    except Exception as exc:
        raise UnsupportedConstruct(path, ranges[0].name, "subscript ranges PySD cannot read", str(exc)) from None


def _number(value: Any) -> Code:
    if isinstance(value, np.integer):
        value = int(value)
    elif isinstance(value, np.floating):
        value = float(value)
    if isinstance(value, float) and not math.isfinite(value):
        text = "np.nan" if math.isnan(value) else ("np.inf" if value > 0 else "(-np.inf)")
        return Code(text)
    return Code(repr(value))


def _lower(code: Code, new_order: int) -> Code:
    # PySD's BuildAST.lower_order: parenthesise when the operand binds less tightly.
    if code.order >= new_order and code.order != 0 and new_order != 0:
        return Code(f"({code.text})", 0, code.deps, code.boolean)
    return code


def _simple(text: str) -> bool:
    return bool(_IDENT.match(text) or _NUMBER.match(text)) or text in ("np.nan", "np.inf", "(-np.inf)", "np.pi")


def _uses_controls(code: Code) -> bool:
    return bool(_control_refs(code))


def _control_refs(code: Code) -> set[str]:
    words = set(re.findall(r"[A-Za-z_][A-Za-z_0-9]*", code.text))
    return {py for py, local in CONTROL.items() if local in words}


class _AsNumpy(ast_module.NodeTransformer):
    """Number literals as numpy floats, so that arithmetic follows numpy (``1/0`` is inf, not an error)."""

    def visit_Constant(self, node: ast_module.Constant) -> ast_module.AST:
        if isinstance(node.value, int | float) and not isinstance(node.value, bool):
            call = ast_module.parse(f"np.float64({node.value!r})", mode="eval").body
            return ast_module.copy_location(call, node)
        return node


def _evaluate(text: str, env: dict[str, Any], as_numpy: bool = False) -> Any:
    # Only ever called on source this module generated from numbers, time controls and lookup tables.

    tree: Any = ast_module.parse(text, mode="eval")
    if as_numpy:
        tree = ast_module.fix_missing_locations(_AsNumpy().visit(tree))
        env = {k: np.float64(v) if isinstance(v, float) else v for k, v in env.items()}
    with np.errstate(all="ignore"):
        return eval(compile(tree, "<constant>", "eval"), {**NAMESPACE, **env})


def _construct_name(ast: Any) -> str:
    from pysd.translators.structures import abstract_expressions as ae

    if isinstance(ast, ae.CallStructure):
        func = ast.function.reference
        return _CONSTRUCT_NAMES.get(func, func.upper().replace("_", " "))
    names = {
        "AllocateAvailableStructure": "ALLOCATE AVAILABLE",
        "AllocateByPriorityStructure": "ALLOCATE BY PRIORITY",
        "GetConstantsStructure": "GET XLS/DIRECT CONSTANTS",
        "GetDataStructure": "GET XLS/DIRECT DATA",
        "GetLookupsStructure": "GET XLS/DIRECT LOOKUPS",
        "DataStructure": "DATA variables",
        "SubscriptsReferenceStructure": "subscripts",
        "LookupsStructure": "a lookup definition inside an expression",
    }
    return names.get(type(ast).__name__, type(ast).__name__)


def _output_text(st: Stateful) -> str:
    s, a = st.var, {k: v.text for k, v in st.args.items()}
    if st.kind in ("integ", "delayfixed", "initial"):
        return s
    if st.kind == "smooth":
        return f"{s}[-1]"
    if st.kind == "delay":
        return f"{s}[-1] / {a['delay_time']}"
    if st.kind == "delayn":
        return f"{s}[-1] / {s}_T[0]"
    if st.kind == "trend":
        return f"_zidz({a['input']} - {s}, {a['average_time']} * np.abs({s}))"
    if st.kind == "forecast":
        return f"{a['input']} * (1 + _zidz({a['input']} - {s}, {a['average_time']} * {s}) * {a['horizon']})"
    if st.kind == "sampleiftrue":
        return f"np.where({a['condition']}, {a['input']}, {s})"
    raise AssertionError(st.kind)


def init_lines(st: Stateful, path: Path) -> list[str]:
    """Statements that initialise one stateful object (PySD's ``initialize``)."""
    s, a = st.var, {k: v.text for k, v in st.args.items()}
    label = repr(f"{path}: {st.element!r} ({st.construct})")
    full = f"_fulls({st.shape!r}, n, " if st.shape else "_full(n, "
    shape = f", {st.shape!r}" if st.shape else ""
    if st.kind == "integ":
        return [f"{s} = {full}{a['initial']})"]
    if st.kind == "initial":
        return [f"{s} = {a['initial']}"]
    if st.kind == "sampleiftrue":
        return [f"{s} = {full}{a['initial']})"]
    if st.kind == "smooth":
        order = str(st.order) if st.order is not None else f"_uniform({a['order']}, {label})"
        return [f"{s}_K = {order}", f"{s} = _full2({s}_K, n, {a['initial']}{shape})"]
    if st.kind in ("delay", "delayn"):
        lines = [
            f"{s}_K = _uniform(_delay_order({a['order']}, {a['delay_time']}, dt, n), {label})",
            f"{s} = _full2({s}_K, n, {a['initial']} * {a['delay_time']}{shape})",
        ]
        if st.kind == "delayn":
            lines.append(f"{s}_T = _full2({s}_K, n, {a['delay_time']}{shape})")
        return lines
    if st.kind == "delayfixed":
        return [
            f"{s}_K = _uniform(_fixed_order({a['delay_time']}, dt, n), {label})",
            f"{s} = _full(n, {a['initial']})",
            f"{s}_P = _full2({s}_K, n, {a['initial']})",
            f"{s}_p = 0",
        ]
    if st.kind == "trend":
        return [f"{s} = {full}{a['input']} / (1 + {a['initial_trend']} * {a['average_time']}))"]
    if st.kind == "forecast":
        return [f"{s} = {full}{a['input']} / (1 + {a['initial_trend']}))"]
    raise AssertionError(st.kind)


def update_lines(st: Stateful) -> list[str]:
    """Statements that advance one stateful object by one Euler step (``state + ddt * dt``)."""
    s, a = st.var, {k: v.text for k, v in st.args.items()}
    if st.kind == "integ":
        if st.nonneg:
            return [f"{s} = np.maximum({s} + {a['flow']} * dt, 0)"]
        return [f"{s} = {s} + {a['flow']} * dt"]
    if st.kind == "smooth":
        return [
            "_x = np.empty_like(" + s + ")",
            f"_x[0] = {a['input']}",
            f"_x[1:] = {s}[:-1]",
            f"{s} = {s} + (_x - {s}) * {s}_K / {a['smooth_time']} * dt",
        ]
    if st.kind in ("delay", "delayn"):
        lines = []
        times = a["delay_time"]
        if st.kind == "delayn":
            lines += [
                f"_x = np.empty_like({s}_T)",
                f"_x[0] = {a['delay_time']}",
                f"_x[1:] = {s}_T[:-1]",
                f"{s}_T = _x",
            ]
            times = f"{s}_T"
        return [
            *lines,
            f"_o = {s} / {times}",
            "_x = np.empty_like(_o)",
            f"_x[0] = {a['input']}",
            "_x[1:] = _o[:-1]",
            f"{s} = {s} + (_x - _o) * {s}_K * dt",
        ]
    if st.kind == "delayfixed":
        return [f"{s}_P[{s}_p] = {a['input']}", f"{s}_p = ({s}_p + 1) % {s}_K", f"{s} = {s}_P[{s}_p].copy()"]
    if st.kind in ("trend", "forecast"):
        return [f"{s} = {s} + ({a['input']} - {s}) / {a['average_time']} * dt"]
    if st.kind == "sampleiftrue":
        return [f"{s} = {s} * 0 + np.where({a['condition']}, {a['input']}, {s})"]
    if st.kind == "initial":
        return []
    raise AssertionError(st.kind)


# ---------------------------------------------------------------------- program
def _order_nodes(graph: ModelGraph, targets: list[str], phase: str) -> list[str]:
    """Topological order of everything `targets` need, in ``"init"`` or ``"step"`` phase.

    In the init phase ``"I:<state>"`` stands for initialising a stateful object,
    and reading a state requires it; in the step phase states are inputs.
    """
    by_var = {st.var: st for st in graph.statefuls}

    def deps(name: str) -> list[str]:
        if name.startswith("I:"):
            st = by_var[name[2:]]
            found: set[str] = set()
            for arg in _INIT_ARGS[st.kind]:
                if arg in st.args:
                    found |= st.args[arg].deps
            return sorted(_filter(found, phase))
        node = graph.nodes[name]
        code = node.init if phase == "init" else node.step
        return sorted(_filter(code.deps, phase))

    done: dict[str, bool] = {}
    out: list[str] = []
    for target in targets:
        if target in done:
            continue
        stack = [(target, iter(deps(target)))]
        done[target] = False
        while stack:
            name, it = stack[-1]
            for dep in it:
                state = done.get(dep)
                if state is None:
                    done[dep] = False
                    stack.append((dep, iter(deps(dep))))
                    break
                if state is False:
                    cycle = [n for n, _ in stack] + [dep]
                    shown = " -> ".join(_pretty(graph, c) for c in cycle[cycle.index(dep) :])
                    msg = f"{graph.path}: circular dependency in the {phase} equations: {shown}"
                    raise ModelError(msg)
            else:
                stack.pop()
                done[name] = True
                out.append(name)
    return out


def _filter(deps: frozenset[str] | set[str], phase: str) -> set[str]:
    found = set()
    for d in deps:
        if d == "T":
            continue
        if d.startswith("S:"):
            if phase == "init":
                found.add("I:" + d[2:])
            continue
        found.add(d)
    return found


def _pretty(graph: ModelGraph, name: str) -> str:
    if name.startswith("v_") and name[2:] in graph.elements:
        return repr(graph.elements[name[2:]].name)
    if name.startswith("I:"):
        st = next(s for s in graph.statefuls if s.var == name[2:])
        return f"{st.construct} in {st.element!r}"
    return name


def _dynamic_nodes(graph: ModelGraph) -> set[str]:
    """Nodes whose step value changes with time (reads time or a state, directly or not)."""
    dynamic: set[str] = set()
    order = _order_nodes(graph, list(graph.nodes), "step")
    for name in order:
        code = graph.nodes[name].step
        if any(d == "T" or d.startswith("S:") or d in dynamic for d in code.deps):
            dynamic.add(name)
    return dynamic


@dataclass
class Program:
    """What one simulation function computes, section by section, for a set of outputs.

    Both backends emit their code from this: the numpy backend whole-chunk array
    statements, the numba backend a scalar loop per sample.

    Attributes
    ----------
    constants : list of str
        Constant nodes read from the samples (or the model's values).
    init : list of tuple
        Initialisation in dependency order: ``("state", Stateful)`` or ``("node", name, text)``.
    static : list of tuple of str
        ``(name, text)`` of values that do not change during the run.
    per_step : list of tuple of str
        ``(name, text)`` computed every time step (what advancing the states reads).
    per_save : list of tuple of str
        ``(name, text)`` computed only at saved times (outputs nothing else reads).
    outputs : list of str
        Saved nodes.
    states : list of Stateful
        Stateful objects advanced every step, in PySD's order.
    """

    constants: list[str]
    init: list[tuple[Any, ...]]
    static: list[tuple[str, str]]
    per_step: list[tuple[str, str]]
    per_save: list[tuple[str, str]]
    outputs: list[str]
    states: list[Stateful]


def build_program(graph: ModelGraph, outputs: list[str]) -> Program:
    """The sections of the simulation function saving the `outputs` nodes."""
    nodes = graph.nodes
    dynamic = _dynamic_nodes(graph)
    by_var = {st.var: st for st in graph.statefuls}
    # Advance only the stateful objects the outputs need, directly or through other states.
    needed: list[Stateful] = []
    targets: list[str] = []  # what advancing the needed states reads
    while True:
        reached = _order_nodes(graph, [*outputs, *targets], "step")
        found = {d[2:] for n in reached for d in nodes[n].step.deps if d.startswith("S:")}
        new = [st for st in graph.statefuls if st.var in found and st not in needed]
        if not new:
            break
        needed += new
        for st in new:
            for arg in _STEP_ARGS[st.kind]:
                targets += sorted(_filter(st.args[arg].deps, "step"))
    needed = [st for st in graph.statefuls if st in needed]  # keep PySD's order
    init_order = _order_nodes(graph, [f"I:{st.var}" for st in needed], "init")
    advance = _order_nodes(graph, targets, "step")
    saved = _order_nodes(graph, [*advance, *outputs], "step")
    advance_set = set(advance)
    constants = [n for n in _order_nodes(graph, [*init_order, *saved], "init") if n in nodes and nodes[n].constant]
    const_set = set(constants)
    init: list[tuple[Any, ...]] = []
    for name in init_order:
        if name.startswith("I:"):
            init.append(("state", by_var[name[2:]]))
        elif name not in const_set:
            init.append(("node", name, nodes[name].init.text))
    return Program(
        constants=constants,
        init=init,
        static=[(n, nodes[n].step.text) for n in saved if n not in dynamic and n not in const_set],
        per_step=[(n, nodes[n].step.text) for n in advance if n in dynamic],
        per_save=[(n, nodes[n].step.text) for n in saved if n in dynamic and n not in advance_set],
        outputs=list(outputs),
        states=needed,
    )


def generate_source(graph: ModelGraph, outputs: list[str], optimise: bool = True) -> str:
    """Source of ``simulate(C, n, TS, SV, dt, t0, tf, sp, O)`` saving the `outputs` nodes.

    ``C`` maps constant names to values (floats or per-sample arrays), ``TS`` and
    ``SV`` are the step times and save flags, ``O`` a list of ``(n_save, n)``
    arrays, one per output, filled row by row. Returns the number of rows saved.

    With `optimise`, subexpressions that only read constants are computed once
    before the time loop, and repeated subexpressions once per step (see
    :mod:`armsdyn.ensemble._optimise`); either way every value is computed by
    the same operations in the same order, so results are identical.
    """

    program = build_program(graph, outputs)
    nodes = graph.nodes
    body = ["def simulate(C, n, TS, SV, dt, t0, tf, sp, O):"]
    add = body.append
    add("    t = TS[0]")
    for name in program.constants:
        add(f"    {name} = {nodes[name].step.text}")
    add("    # initialisation: stateful objects in dependency order (ACTIVE INITIAL gives its initial value)")
    for item in program.init:
        if item[0] == "state":
            for line in init_lines(item[1], graph.path):
                add(f"    {line}")
        else:
            add(f"    {item[1]} = {item[2]}")
    add("    # values that do not change during the run")
    for name, text in program.static:
        add(f"    {name} = {text}")
    per_step = list(program.per_step)
    per_save = list(program.per_save)
    updates = [line for st in program.states for line in update_lines(st)]
    hoisted: list[tuple[str, str]] = []
    if optimise:
        hoisted, per_step, per_save, updates = optimise_loop(per_step, per_save, updates)
    if hoisted:
        add("    # subexpressions of constants, computed once")
        for name, text in hoisted:
            add(f"    {name} = {text}")
    add("    k = 0")
    add("    last = len(TS) - 1")
    add("    for i in range(last + 1):")
    add("        t = TS[i]")
    for name, text in per_step:
        add(f"        {name} = {text}")
    add("        if SV[i]:")
    for name, text in per_save:
        add(f"            {name} = {text}")
    for j, name in enumerate(program.outputs):
        add(f"            O[{j}][k] = {name}")
    add("            k += 1")
    add("        if i == last:")
    add("            break")
    for line in updates:
        add(f"        {line}")
    add("    return k")
    return "\n".join(body) + "\n"
