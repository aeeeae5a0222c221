"""Subscripted programs as scalar ones: one named value per element, for the numba backend.

The numpy backend computes a subscripted variable as one array (its elements
along the leading axes, the samples along the last one). The numba backend's
kernels compute one sample's numbers, so here every array statement of a
:class:`~armsdyn.ensemble._compiler.Program` is evaluated *symbolically*: each
array value becomes a numpy object array of scalar expressions (syntax trees),
one per element, with a trailing axis of length 1 where the numpy code has its
samples. The structural operations of the generated numpy code (transposes,
``None`` axes, element picks, ``np.take``, ``_shaped``, ``_assemble``) are then
numpy's own operations on these object arrays, so they follow exactly the
layout rules the numpy backend relies on; arithmetic and functions apply element
by element after numpy broadcasting; reductions (SUM, PROD, VMIN, VMAX) become
chains of scalar operations that skip NaN as ``np.nansum`` and friends do.

The result is an ordinary scalar program (``v_x__0``, ``v_x__1``, ... in C
order of the elements), which the numba backend compiles like any scalar model:
straight-line code that vectorises across samples, with no element loops.
A model with delays or higher-order smooths gets a kernel per sample instead,
which does not vectorise across samples anyway; there :func:`roll_elements`
turns its elements into arrays and its statements per element back into
loops, as numba compiles a statement per element slowly.
"""

from __future__ import annotations

import ast
import copy
import itertools
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from armsdyn.ensemble._compiler import Code, ModelGraph, Program, Stateful
from armsdyn.ensemble._errors import UnsupportedConstruct
from armsdyn.ensemble._runtime import LOOKUP_KINDS

MAX_STATEMENTS = 3000
"""Scalar statements an expanded program may have: beyond this numba's compile time runs to minutes
(it grows with the square of the kernel's length) and the numpy backend is the better choice."""

_REDUCE = {"nansum": ("_nan0", ast.Add()), "nanprod": ("_nan1", ast.Mult()), "nanmin": ("_fmin", None)}
_REDUCE["nanmax"] = ("_fmax", None)
_LOOKUP_FUNCS = {"interpolate": "_lookup", "extrapolate": "_lookup_extrapolate", "hold_backward": "_lookup_hold"}
_LOOKUP_CALLS = frozenset(_LOOKUP_FUNCS.values())
_NUMERIC = frozenset({"arange", "array"})  # numbers only: evaluated now


@dataclass
class FlatProgram:
    """A program of scalar statements: what the numba backend translates.

    Attributes
    ----------
    constants : list of tuple of str
        ``(local name, key)`` in ``CV`` row order; the key is a constant's PySD
        name, or ``"py[e1,e2]"`` for an element of a subscripted constant.
    init : list of tuple
        ``("state", Stateful)`` or ``("node", name, text)`` in dependency order.
    static, per_step, per_save : list of tuple of str
        ``(name, text)`` statements, as in :class:`~armsdyn.ensemble._compiler.Program`.
    outputs : list of str
        Saved scalar names (a subscripted output's elements in C order).
    states : list of Stateful or ElementArrays
        Scalar stateful objects, in PySD's order (a subscripted one's elements in C order,
        or one :class:`ElementArrays` for all of them).
    """

    constants: list[tuple[str, str]]
    init: list[tuple[Any, ...]]
    static: list[tuple[str, str]]
    per_step: list[tuple[str, str]]
    per_save: list[tuple[str, str]]
    outputs: list[str]
    states: list[Any]


@dataclass
class ElementArrays:
    """A subscripted stateful object whose state is an array per element (a delay, a SMOOTH3, SMOOTH N).

    The numba kernel keeps one ``(elements, order)`` array and advances it in a
    loop over the elements (copies of the loops per element would multiply the
    kernel's compile time).

    Attributes
    ----------
    kind, var, element, construct, order
        As in :class:`~armsdyn.ensemble._compiler.Stateful`.
    size : int
        Number of elements.
    args : dict of str to list of str
        Each operand's scalar expression per element (C order); ``order`` has one.
    shortest : str
        The shortest delay time of the elements (delays lower their one order against it).
    """

    kind: str
    var: str
    element: str
    construct: str
    order: int | None
    size: int
    args: dict[str, list[str]]
    shortest: str = ""


def element_name(name: str, k: int) -> str:
    """The scalar name of element `k` (C order) of the array value `name`."""
    return f"{name}__{k}"


def base_name(name: str) -> str:
    """The array value a scalar element name belongs to (`name` itself if it is not one)."""
    head, sep, tail = name.rpartition("__")
    return head if sep and tail.isdigit() else name


def scalar_program(graph: ModelGraph, program: Program, output_text: Callable[[Stateful], str]) -> FlatProgram:
    """`program` of a model without subscripts, with stateful outputs written by `output_text`."""
    by_out = {f"o{st.var[1:]}": st for st in graph.statefuls}

    def text_of(name: str, text: str) -> str:
        st = by_out.get(name)
        return output_text(st) if st is not None else text

    init = [item if item[0] == "state" else ("node", item[1], text_of(item[1], item[2])) for item in program.init]
    return FlatProgram(
        constants=[(name, str(graph.nodes[name].constant)) for name in program.constants],
        init=init,
        static=[(n, text_of(n, t)) for n, t in program.static],
        per_step=[(n, text_of(n, t)) for n, t in program.per_step],
        per_save=[(n, text_of(n, t)) for n, t in program.per_save],
        outputs=list(program.outputs),
        states=list(program.states),
    )


def expand_program(
    graph: ModelGraph,
    program: Program,
    output_text: Callable[[Stateful], str],
    array_output_text: Callable[[ElementArrays, int], str],
) -> FlatProgram:
    """`program` of a subscripted model as scalar statements, one per element.

    Stateful objects become one scalar object per element, except those whose
    state is an array (delays, higher-order smooths), which become
    :class:`ElementArrays`. Their outputs are written by `output_text` and
    `array_output_text` (element `k`).

    Raises
    ------
    UnsupportedConstruct
        If a statement uses an array operation the expansion does not know, or
        the expanded program would be too long to compile (more than
        :data:`MAX_STATEMENTS` statements).
    """
    expander = _Expander(graph, output_text, array_output_text)
    try:
        return expander.run(program)
    except UnsupportedConstruct:
        raise
    except Exception as exc:  # generated code this expansion does not follow: a clean fallback, never a crash
        what = f"array code the expansion cannot follow ({type(exc).__name__}: {exc})"
        raise expander.unsupported(what) from None


class _Expander:
    def __init__(
        self,
        graph: ModelGraph,
        output_text: Callable[[Stateful], str],
        array_output_text: Callable[[ElementArrays, int], str],
    ) -> None:
        self.graph = graph
        self.output_text = output_text
        self.array_output_text = array_output_text
        self.element = graph.path.name  # the variable being expanded, for messages
        self.env: dict[str, np.ndarray] = {}  # array values: their elements' names
        self.consts: dict[str, np.ndarray] = {}  # subscripted constants: their elements' C[...] keys
        self.count = 0
        for name, node in graph.nodes.items():
            if node.shape:
                self.env[name] = _names(name, node.shape)
        for st in graph.statefuls:
            if st.shape:
                self.env[st.var] = _names(st.var, st.shape)
        for py, info in graph.elements.items():
            if info.kind == "constant" and info.dims:
                labels = [",".join(e) for e in itertools.product(*(els for _, els in info.dims))]
                shape = tuple(len(els) for _, els in info.dims)
                keys = [_const(f"{py}[{label}]") for label in labels]
                self.consts[py] = _array(keys, (*shape, 1))
        self.states: dict[str, list[Any]] = {}

    def unsupported(self, what: str) -> UnsupportedConstruct:
        return UnsupportedConstruct(self.graph.path, self.element, what, "numba backend")

    def _name_of(self, name: str) -> str:
        base = base_name(name)
        if base.startswith("v_") and base[2:] in self.graph.elements:
            return self.graph.elements[base[2:]].name
        return base

    def too_many(self) -> UnsupportedConstruct:
        sizes = {i.name: int(np.prod([len(e) for _, e in i.dims])) for i in self.graph.elements.values() if i.dims}
        largest = max(sizes, key=lambda name: sizes[name]) if sizes else self.graph.path.name
        what = f"more than {MAX_STATEMENTS} subscript elements"
        return UnsupportedConstruct(self.graph.path, largest, what, "numba backend")

    def run(self, program: Program) -> FlatProgram:
        if sum(a.size for a in self.env.values()) > 4 * MAX_STATEMENTS:
            raise self.too_many()  # before spending seconds expanding it
        constants: list[tuple[str, str]] = []
        for name in program.constants:
            node = self.graph.nodes[name]
            if name in self.env:
                keys = np.broadcast_to(self.consts[str(node.constant)], self.env[name].shape)
                constants += [
                    (element_name(name, k), key.slice.value) for k, key in enumerate(keys.flat)
                ]  # fmt: skip
            else:
                constants.append((name, str(node.constant)))
        self.count += len(constants)  # a line each in the kernel, and a row the blocked kernel loads
        init: list[tuple[Any, ...]] = []
        for item in program.init:
            if item[0] == "state":
                init += [("state", st) for st in self._states(item[1])]
            else:
                init += [("node", n, t) for n, t in self._statement(item[1], item[2])]
        flat = FlatProgram(
            constants=constants,
            init=init,
            static=self._statements(program.static),
            per_step=self._statements(program.per_step),
            per_save=self._statements(program.per_save),
            outputs=[n for name in program.outputs for n in self._scalar_names(name)],
            states=[st for state in program.states for st in self._states(state)],
        )
        if self.count > MAX_STATEMENTS:
            raise self.too_many()
        return flat

    def _scalar_names(self, name: str) -> list[str]:
        if name in self.env:
            return [element_name(name, k) for k in range(self.env[name].size)]
        return [name]

    def _statements(self, items: list[tuple[str, str]]) -> list[tuple[str, str]]:
        return [pair for name, text in items for pair in self._statement(name, text)]

    def _statement(self, name: str, text: str) -> Iterator[tuple[str, str]]:
        self.element = self._name_of(name)
        st = self._output_of(name)
        if st is not None:
            states = self._states(st)
            if isinstance(states[0], ElementArrays):
                arrays = states[0]
                yield from ((element_name(name, k), self.array_output_text(arrays, k)) for k in range(arrays.size))
            elif name in self.env:
                yield from ((element_name(name, k), self.output_text(s)) for k, s in enumerate(states))
            else:
                yield name, self.output_text(states[0])
            return
        value = self.evaluate(text)
        if name in self.env:
            target = self.env[name].shape
            try:
                value = np.broadcast_to(value, target)
            except ValueError:
                raise self.unsupported(f"an array of shape {value.shape} where {target} is expected") from None
            for k, expr in enumerate(value.flat):
                self.count += 1
                yield element_name(name, k), ast.unparse(expr)
            return
        if value.size != 1:
            raise self.unsupported("an array value in a variable without subscripts")
        self.count += 1
        yield name, ast.unparse(value.flat[0])

    def _output_of(self, name: str) -> Stateful | None:
        if name.startswith("o") and name[1:].isdigit():
            var = f"s{name[1:]}"
            return next((st for st in self.graph.statefuls if st.var == var), None)
        return None

    def _states(self, st: Stateful) -> list[Any]:
        """The scalar stateful objects of `st`: one per element (itself, arguments expanded, if it has none)."""
        if st.var in self.states:
            return self.states[st.var]
        self.element = st.element
        shape = (*st.shape, 1)
        args: dict[str, np.ndarray] = {}
        for key, code in st.args.items():
            value = self.evaluate(code.text)
            if key == "order":
                if value.size != 1:
                    raise self.unsupported(f"{st.construct} with a subscripted order")
                args[key] = value.reshape(())
                continue
            try:
                args[key] = np.broadcast_to(value, shape) if st.shape else value.reshape(())
            except ValueError:
                raise self.unsupported(f"{st.construct} with arguments of another shape") from None
        size = int(np.prod(st.shape, dtype=int))
        shortest = ""
        if st.kind in ("delay", "delayn") and st.shape:
            # One order for all elements: PySD lowers it against the shortest delay time.
            times = list(args["delay_time"].flat)
            acc = times[0]
            for other in times[1:]:
                acc = _call("np.minimum", [acc, other])
            shortest = ast.unparse(acc)
        if st.shape and (st.kind in ("delay", "delayn") or (st.kind == "smooth" and st.order != 1)):
            texts = {
                key: [ast.unparse(v.item())] if key == "order" else [ast.unparse(e) for e in v.flat]
                for key, v in args.items()
            }
            self.count += 4 * size + 10
            arrays = ElementArrays(st.kind, st.var, st.element, st.construct, st.order, size, texts, shortest)
            self.states[st.var] = [arrays]
            return [arrays]
        out = []
        for k in range(size):
            codes = {key: Code(ast.unparse(v.flat[k] if v.ndim else v.item())) for key, v in args.items()}
            var = element_name(st.var, k) if st.shape else st.var
            self.count += 2
            out.append(replace(st, var=var, args=codes, shape=()))
        self.states[st.var] = out
        return out

    # ------------------------------------------------------------------ symbolic evaluation
    def evaluate(self, text: str) -> np.ndarray:
        """`text` (numpy-backend syntax) as an object array of scalar expressions (0-d for a scalar)."""
        try:
            return self._ev(ast.parse(text, mode="eval").body)
        except UnsupportedConstruct:
            raise
        except (ValueError, IndexError, TypeError, KeyError) as exc:  # shapes that do not fit: not ours to run
            raise self.unsupported(f"array code the expansion cannot follow ({type(exc).__name__}: {exc})") from None

    def _ev(self, node: ast.expr) -> np.ndarray:
        if isinstance(node, ast.Name):
            return self.env[node.id] if node.id in self.env else _scalar(node)
        if isinstance(node, ast.Constant):
            return _scalar(node)
        if isinstance(node, ast.Attribute):
            if isinstance(node.value, ast.Name) and node.value.id == "np" and node.attr in ("pi", "inf", "nan"):
                return _scalar(node)
            raise self.unsupported(f"the attribute {ast.unparse(node)!r}")
        if isinstance(node, ast.Subscript):
            return self._subscript(node)
        if isinstance(node, ast.BinOp):
            op = node.op
            return _map(lambda a, b: ast.BinOp(a, op, b), self._ev(node.left), self._ev(node.right))
        if isinstance(node, ast.UnaryOp):
            uop = node.op
            return _map(lambda a: ast.UnaryOp(uop, a), self._ev(node.operand))
        if isinstance(node, ast.Compare):
            if len(node.ops) != 1:
                raise self.unsupported("chained comparisons")
            cop = node.ops[0]
            return _map(lambda a, b: ast.Compare(a, [cop], [b]), self._ev(node.left), self._ev(node.comparators[0]))
        if isinstance(node, ast.Call):
            return self._call(node)
        raise self.unsupported(f"the expression {ast.unparse(node)!r}")

    def _subscript(self, node: ast.Subscript) -> np.ndarray:
        if isinstance(node.value, ast.Name) and node.value.id == "C" and isinstance(node.slice, ast.Constant):
            py = node.slice.value
            return self.consts[py] if py in self.consts else _scalar(node)
        base = self._ev(node.value)
        return base[_literal_index(node.slice)]

    def _call(self, node: ast.Call) -> np.ndarray:
        func = node.func
        name = ast.unparse(func)
        if isinstance(func, ast.Attribute) and func.attr == "transpose" and not _is_np(func.value):
            axes = ast.literal_eval(node.args[0]) if node.args else None
            return self._ev(func.value).transpose(axes)
        if isinstance(func, ast.Attribute) and func.attr == "reshape" and not _is_np(func.value):
            return self._ev(func.value).reshape(ast.literal_eval(node.args[0]))
        if isinstance(func, ast.Attribute) and _is_np(func.value) and func.attr in _NUMERIC:
            args = [ast.literal_eval(a) for a in node.args]
            values = getattr(np, func.attr)(*args)
            return _array([_const(float(v)) for v in np.ravel(values)], np.shape(values))
        if name == "np.take":
            axis = _keyword(node, "axis")
            return np.take(self._ev(node.args[0]), ast.literal_eval(node.args[1]), axis=axis)
        if isinstance(func, ast.Attribute) and _is_np(func.value) and func.attr in _REDUCE:
            return self._reduce(func.attr, self._ev(node.args[0]), _keyword(node, "axis"))
        if name == "_shaped":
            shape = tuple(ast.literal_eval(node.args[1]))
            value = self._ev(node.args[0])
            if value.ndim <= 1:
                value = value.reshape((1,) * len(shape) + (-1,))
            return np.broadcast_to(value, (*shape, 1))
        if name == "_assemble":
            return self._assemble(node)
        if name in ("_lookup_many", "_lookup_many_runs"):
            return self._lookup_many(node)
        if name == "_put":
            return self._put(node)
        if name in _LOOKUP_CALLS:
            xs, ys = node.args[0], node.args[1]
            return _map(lambda x: ast.Call(ast.Name(name, ast.Load()), [xs, ys, x], []), self._ev(node.args[2]))
        # Anything else is elementwise (numpy ufuncs and the run-time functions): numpy broadcasting.
        args = [self._ev(a) for a in node.args]
        keys = [kw.arg for kw in node.keywords]
        kwargs = [self._ev(kw.value) for kw in node.keywords]
        n_args = len(args)

        def build(*values: ast.expr) -> ast.expr:
            keywords = [ast.keyword(k, v) for k, v in zip(keys, values[n_args:], strict=True)]
            return ast.Call(func, list(values[:n_args]), keywords)

        if not args and not kwargs:
            return _scalar(node)
        return _map(build, *args, *kwargs)

    def _reduce(self, func: str, value: np.ndarray, axes: tuple[int, ...]) -> np.ndarray:
        """``np.nansum(value, axis=axes)`` and friends, as a chain of scalar operations over the elements."""
        axes = tuple(a % value.ndim for a in axes)
        if value.ndim - 1 in axes:
            raise self.unsupported("a reduction over the samples")
        moved = np.moveaxis(value, axes, tuple(range(value.ndim - len(axes), value.ndim)))
        rest = moved.shape[: value.ndim - len(axes)]
        flat = moved.reshape((*rest, -1))
        wrap, op = _REDUCE[func]
        out = np.empty(rest, dtype=object)
        for index in np.ndindex(*rest):
            items = list(flat[index])
            if op is not None:
                items = [_call(wrap, [e]) for e in items]
                acc = items[0]
                for e in items[1:]:
                    acc = ast.BinOp(acc, op, e)
            else:
                acc = items[0]
                for e in items[1:]:
                    acc = _call(wrap, [acc, e])
            out[index] = acc
        return out

    def _assemble(self, node: ast.Call) -> np.ndarray:
        """``_assemble(shape, ((index, value), ...))``: a variable defined element by element."""
        shape = tuple(ast.literal_eval(node.args[0]))
        out = _array([_const(float("nan"))] * int(np.prod(shape, dtype=int)), (*shape, 1))
        parts = node.args[1]
        if not isinstance(parts, ast.Tuple):
            raise self.unsupported("an assembled variable of unknown parts")
        for part in parts.elts:
            if not isinstance(part, ast.Tuple) or len(part.elts) != 2:
                raise self.unsupported("an assembled variable of unknown parts")
            index = ast.literal_eval(part.elts[0])
            value = self._ev(part.elts[1])
            out[np.ix_(*index, [0])] = value
        return out

    def _put(self, node: ast.Call) -> np.ndarray:
        """``_put(base, ((index, value), ...))``: a constant with some elements given as time series."""
        out = self._ev(node.args[0]).copy()
        flat = out.reshape(-1)  # a view: the copy is C-contiguous
        parts = node.args[1]
        if not isinstance(parts, ast.Tuple):
            raise self.unsupported("a constant with elements of unknown series")
        for part in parts.elts:
            if not isinstance(part, ast.Tuple) or len(part.elts) != 2:
                raise self.unsupported("a constant with elements of unknown series")
            value = self._ev(part.elts[1])
            if value.size != 1:
                raise self.unsupported("an element series of more than one value")
            flat[ast.literal_eval(part.elts[0])] = value.reshape(-1)[0]
        return out

    def _lookup_many(self, node: ast.Call) -> np.ndarray:
        """``_lookup_many(tables, index, x)``: each element's own table applied to its argument.

        In ``_lookup_many_runs`` a table ``(xs, ys, kind, True)`` is redrawn per
        run: its element reads ``_lookup_runs(kind, xs, ys, x)``, the sample's own table.
        """
        runs = ast.unparse(node.func) == "_lookup_many_runs"
        tables = node.args[0]
        if not isinstance(tables, ast.Tuple):
            raise self.unsupported("a subscripted lookup of unknown tables")
        calls: list[Callable[[ast.expr], ast.expr]] = []
        for table in tables.elts:
            if not isinstance(table, ast.Tuple) or len(table.elts) != (4 if runs else 3):
                raise self.unsupported("a subscripted lookup of unknown tables")
            xs, ys, kind = table.elts[:3]
            calls.append(_table_call(xs, ys, ast.literal_eval(kind), runs and ast.literal_eval(table.elts[3])))
        index, x = np.broadcast_arrays(self._ev(node.args[1]), self._ev(node.args[2]))
        out = np.empty(index.shape, dtype=object)
        for pos in np.ndindex(*index.shape):
            out[pos] = calls[int(ast.literal_eval(index.item(pos)))](x.item(pos))
        return out


def _table_call(xs: ast.expr, ys: ast.expr, kind: str, per_run: bool) -> Callable[[ast.expr], ast.expr]:
    """The call of one element's table on an argument: the model's table, or the run's own (``_lookup_runs``)."""
    if per_run:
        code = ast.Constant(LOOKUP_KINDS[kind])
        return lambda x: ast.Call(ast.Name("_lookup_runs", ast.Load()), [code, xs, ys, x], [])
    func = _LOOKUP_FUNCS[kind]
    return lambda x: ast.Call(ast.Name(func, ast.Load()), [xs, ys, x], [])


# ---------------------------------------------------------------------- helpers
def _names(name: str, shape: tuple[int, ...]) -> np.ndarray:
    size = int(np.prod(shape, dtype=int))
    return _array([ast.Name(element_name(name, k), ast.Load()) for k in range(size)], (*shape, 1))


def _array(items: list[Any], shape: tuple[int, ...]) -> np.ndarray:
    out = np.empty(len(items), dtype=object)
    out[:] = items
    return out.reshape(shape)


def _scalar(node: ast.expr) -> np.ndarray:
    out = np.empty((), dtype=object)
    out[()] = node
    return out


def _const(value: Any) -> ast.expr:
    if isinstance(value, float) and not np.isfinite(value):
        text = "np.nan" if np.isnan(value) else ("np.inf" if value > 0 else "(-np.inf)")
        return ast.parse(text, mode="eval").body
    if isinstance(value, str):
        return ast.Subscript(ast.Name("C", ast.Load()), ast.Constant(value), ast.Load())
    return ast.Constant(value)


def _call(func: str, args: list[ast.expr]) -> ast.expr:
    return ast.Call(ast.parse(func, mode="eval").body, args, [])


def _map(build: Callable[..., ast.expr], *arrays: np.ndarray) -> np.ndarray:
    """`build` applied element by element to numpy-broadcast `arrays` (object arrays of expressions)."""
    parts = np.broadcast_arrays(*arrays)
    out = np.empty(parts[0].shape, dtype=object)
    for index in np.ndindex(*out.shape):
        out[index] = build(*(p[index] for p in parts))
    return out


def _is_np(node: ast.expr) -> bool:
    return isinstance(node, ast.Name) and node.id == "np"


def _keyword(node: ast.Call, name: str) -> Any:
    for kw in node.keywords:
        if kw.arg == name:
            return ast.literal_eval(kw.value)
    raise ValueError(f"{ast.unparse(node.func)} without {name}=")


def _literal_index(node: ast.expr) -> Any:
    """A numpy index written in generated code (numbers, ``:``, ``None``, ``...``) as a Python value."""
    if isinstance(node, ast.Tuple):
        return tuple(_literal_index(e) for e in node.elts)
    if isinstance(node, ast.Slice):
        parts = (node.lower, node.upper, node.step)
        return slice(*(None if p is None else ast.literal_eval(p) for p in parts))
    if isinstance(node, ast.Constant) and node.value is Ellipsis:
        return Ellipsis
    value = ast.literal_eval(node)
    if value is None or isinstance(value, int):
        return value
    raise ValueError(f"the index {ast.unparse(node)!r}")


# ---------------------------------------------------------------------- element loops for the kernel
_ELEMENT_NAME = re.compile(r"(.+)__(\d+)")
MIN_ROLLED = 3
"""Consecutive statements of one form that become a loop over elements (fewer stay as they are)."""


@dataclass
class RolledCode:
    """Scalar statements whose elements live in arrays and whose repeated forms are loops.

    Attributes
    ----------
    sections : list of list of str
        The statements given to :func:`roll_elements`, section by section.
    arrays : dict of str to int
        Each array's name and its number of elements (``x`` for the names ``x__0``, ``x__1``, ...).
    tables : list of str
        Module-level definitions of the index tables the loops read.
    """

    sections: list[list[str]]
    arrays: dict[str, int]
    tables: list[str]


def roll_elements(sections: list[list[str]]) -> RolledCode:
    """An expanded program's element statements as loops over arrays of elements.

    The expansion gives every element its own scalar statement, so a kernel
    has a statement per element and numba's compile time grows with their
    number (faster than linearly). Here each element name ``x__k`` becomes
    ``x[k]`` of an array ``x``, and each run of at least :data:`MIN_ROLLED`
    consecutive statements that differ only in the integer indices they read
    and write becomes one ``for`` loop; an index that changes from one
    statement to the next by the same step is computed from the loop counter,
    any other is read from a table of its values. The loop runs the statements
    in their order, on the same operands with the same operations: results
    are those of the statements it replaces, bit for bit.

    Parameters
    ----------
    sections : list of list of str
        Blocks of statements (the first is run first and gets no allocations:
        the caller allocates :attr:`RolledCode.arrays` before it).
    """
    trees = [ast.parse("\n".join(lines)) for lines in sections]
    sizes: dict[str, int] = {}
    plain: set[str] = set()
    for tree in trees:
        for node in ast.walk(tree):
            if isinstance(node, ast.Name):
                match = _ELEMENT_NAME.fullmatch(node.id)
                if match is None:
                    plain.add(node.id)
                else:
                    base, k = match.group(1), int(match.group(2))
                    sizes[base] = max(sizes.get(base, 0), k + 1)
    arrays = {base: size for base, size in sizes.items() if base not in plain}  # a name both ways: left alone
    roller = _Roller(arrays)
    out = []
    for tree in trees:
        body = [roller.to_arrays.visit(stmt) for stmt in tree.body]
        out.append(ast.unparse(ast.Module(roller.roll(body), [])).splitlines() if body else [])
    return RolledCode(out, arrays, roller.table_lines)


class _ToArrays(ast.NodeTransformer):
    """``x__k`` as ``x[k]`` for the names of element arrays."""

    def __init__(self, arrays: dict[str, int]) -> None:
        self.arrays = arrays

    def visit_Name(self, node: ast.Name) -> ast.AST:
        match = _ELEMENT_NAME.fullmatch(node.id)
        if match is None or match.group(1) not in self.arrays:
            return node
        return ast.Subscript(ast.Name(match.group(1), ast.Load()), ast.Constant(int(match.group(2))), node.ctx)


class _Holes(ast.NodeTransformer):
    """Takes the integer indices out of a statement (in a fixed order), leaving a form to compare.

    For each index, :attr:`accesses` records the array it indexes (None for
    anything but a name) and whether it is written there.
    """

    HOLE = "_hole_"

    def __init__(self) -> None:
        self.values: list[int] = []
        self.accesses: list[tuple[str | None, bool]] = []

    def visit_Subscript(self, node: ast.Subscript) -> ast.AST:
        self.generic_visit(node)
        index = node.slice
        if isinstance(index, ast.Tuple) and index.elts and (value := _int(index.elts[0])) is not None:
            index.elts[0] = ast.Name(self.HOLE, ast.Load())
        elif (value := _int(index)) is not None:
            node.slice = ast.Name(self.HOLE, ast.Load())
        else:
            return node
        self.values.append(value)
        array = node.value.id if isinstance(node.value, ast.Name) else None
        self.accesses.append((array, isinstance(node.ctx, ast.Store)))
        return node


def _int(node: ast.expr) -> int | None:
    return node.value if isinstance(node, ast.Constant) and type(node.value) is int else None


class _Fill(ast.NodeTransformer):
    """Puts index expressions into a form's holes, in the order :class:`_Holes` took them out."""

    def __init__(self, fills: list[ast.expr]) -> None:
        self.fills = iter(fills)

    def visit_Subscript(self, node: ast.Subscript) -> ast.AST:
        self.generic_visit(node)
        index = node.slice
        if isinstance(index, ast.Tuple) and index.elts and _is_hole(index.elts[0]):
            index.elts[0] = next(self.fills)
        elif _is_hole(index):
            node.slice = next(self.fills)
        return node


def _is_hole(node: ast.expr) -> bool:
    return isinstance(node, ast.Name) and node.id == _Holes.HOLE


@dataclass
class _Run:
    """Consecutive statements of one form: its first, and each index's values from one statement to the next."""

    first: ast.Assign
    columns: list[list[int]]
    accesses: list[tuple[str | None, bool]]

    @property
    def length(self) -> int:
        return len(self.columns[0])


def _fusable(runs: list[_Run]) -> bool:
    """Whether `runs` (of one length) can share a loop: each iteration then runs one statement of each.

    True when no element is carried from one iteration to another: every array
    a run writes is read and written by the runs at the counter's own element
    only, or (as the outputs) never read by them and written at elements no
    other run writes. Arrays only read may be read at any element.
    """
    identity = list(range(runs[0].length))
    written = {a for run in runs for a, store in run.accesses if store}
    if None in written or not all(isinstance(run.first.targets[0], ast.Subscript) for run in runs):
        return False
    for array in written:
        seen = [
            (store, col)
            for run in runs
            for (a, store), col in zip(run.accesses, run.columns, strict=True)
            if a == array
        ]
        if all(col == identity for _, col in seen):
            continue
        if any(not store for store, _ in seen):
            return False
        rows = [set(col) for _, col in seen]
        if sum(len(r) for r in rows) != len(set().union(*rows)):
            return False
    return True


class _Roller:
    def __init__(self, arrays: dict[str, int]) -> None:
        self.to_arrays = _ToArrays(arrays)
        self.tables: dict[tuple[int, ...], str] = {}
        self.table_lines: list[str] = []
        self.loops = 0

    def roll(self, body: list[ast.stmt]) -> list[ast.stmt]:
        """`body` with its runs of one form as loops, consecutive runs of one length fused where they can be."""
        forms: list[tuple[str, _Holes] | None] = []
        for stmt in body:
            if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1:
                holes = _Holes()
                form = holes.visit(copy.deepcopy(stmt))
                forms.append((ast.dump(form), holes) if holes.values else None)
            else:
                forms.append(None)
        items: list[ast.stmt | _Run] = []
        i = 0
        while i < len(body):
            j = i + 1
            here = forms[i]
            if here is not None:
                while j < len(body) and (there := forms[j]) is not None and there[0] == here[0]:
                    j += 1
            if j - i >= MIN_ROLLED and here is not None:
                found = [f[1] for f in forms[i:j] if f is not None]
                columns = [list(col) for col in zip(*(h.values for h in found), strict=True)]
                first = body[i]
                assert isinstance(first, ast.Assign)  # a form is taken of assignments only
                items.append(_Run(first, columns, here[1].accesses))
            else:
                items.extend(body[i:j])
            i = j
        out: list[ast.stmt] = []
        group: list[_Run] = []
        for item in [*items, None]:
            if isinstance(item, _Run) and group and item.length == group[0].length and _fusable([*group, item]):
                group.append(item)
                continue
            if group:
                out.append(self._loop(group))
                group = []
            if isinstance(item, _Run):
                group = [item]
            elif item is not None:
                out.append(item)
        return out

    def _loop(self, runs: list[_Run]) -> ast.stmt:
        counter = f"_l{self.loops}"
        self.loops += 1
        body = []
        for run in runs:
            fills = [self._index(counter, column) for column in run.columns]
            body.append(_Fill(fills).visit(_Holes().visit(copy.deepcopy(run.first))))
        loop = ast.For(ast.Name(counter, ast.Store()), _call("range", [ast.Constant(runs[0].length)]), body, [])
        return ast.fix_missing_locations(loop)

    def _index(self, counter: str, column: list[int]) -> ast.expr:
        """The index `column[e]` of the loop's `e`-th statement, from the counter or a table."""
        start, step = column[0], column[1] - column[0]
        if all(v == start + step * e for e, v in enumerate(column)):
            expr = counter if step == 1 else f"{step} * {counter}"
            return ast.parse(f"{start} + {expr}" if start else expr, mode="eval").body if step else ast.Constant(start)
        key = tuple(column)
        if key not in self.tables:
            name = f"_ix{len(self.tables)}"
            self.tables[key] = name
            self.table_lines.append(f"{name} = np.array({list(key)!r}, dtype=np.int64)")
        return ast.parse(f"{self.tables[key]}[{counter}]", mode="eval").body
