"""The numba backend: the model's statements as scalar code, compiled to vector machine code.

The same :class:`~armsdyn.ensemble._compiler.Program` the numpy backend emits
array statements from is emitted here as scalar statements for one sample.
Two kernel layouts (see :func:`generate_module`):

- *blocked* (models whose states are single numbers, as most are): blocks of
  samples advance one time step together, the loop over samples innermost and
  branch-free, so LLVM compiles it to SIMD instructions (8 samples at a time
  with AVX-512). ``exp``, ``log`` and ``**`` come from
  :mod:`armsdyn.ensemble._vecmath`, which vectorises; divisions by values
  fixed during the run become multiplications by reciprocals computed once.
- *per sample* (models with delays or higher-order smooths, whose states are
  arrays of a per-sample length): a loop over samples, the time loop inside.

Subscripted models are first expanded into one scalar statement per element
(:mod:`armsdyn.ensemble._expand`), so they get the same kernels; a subscripted
delay or smooth keeps an ``(elements, order)`` array advanced in a loop over
its elements. In a per-sample kernel the elements of every value are arrays
and the statements per element loops over them
(:func:`~armsdyn.ensemble._expand.roll_elements`): numba's compile time grows
faster than the number of statements, and a per-sample kernel gains nothing
from straight-line code.

Either kernel releases the GIL and takes a range of samples, so
:class:`~armsdyn.ensemble.CompiledModel` shares a chunk between threads itself.
(Numba's ``parallel=True`` would need a threading layer; the only one available
with the pip wheels is GNU OpenMP, which aborts in processes forked after its
first use, as :mod:`armsdyn.runner`'s workers are.) Expressions are translated
node for node (``np.where`` to a scalar select, ``np.minimum`` to a
NaN-propagating scalar minimum, ...) and ``fastmath`` stays off; results agree
with PySD to a few units in the last place per operation (the reciprocals and
the vectorised ``exp``/``log``/``pow`` round differently from the C library),
which the tests check at a relative tolerance of 1e-9.

The generated module is written to the cache folder under a name derived from
its source, so numba's on-disk cache (``cache=True``) serves later processes,
including the workers of :func:`~armsdyn.ensemble.run_ensemble`.
"""

from __future__ import annotations

import ast
import hashlib
import importlib.util
import itertools
import json
import math
import os
import re
import sys
import tempfile
from collections.abc import Callable
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from armsdyn.ensemble._compiler import Program, Stateful, build_program
from armsdyn.ensemble._errors import UnsupportedConstruct
from armsdyn.ensemble._expand import ElementArrays, base_name, expand_program, roll_elements, scalar_program
from armsdyn.ensemble._optimise import optimise_loop

_BLOCK = 32
"""Samples a blocked kernel advances together: four 512-bit vectors, and a working set
(one row per value the time loop reads) that stays in the first-level cache."""

_HERE = Path(__file__).parent
_RUNTIME_DIGEST = hashlib.sha256(
    b"".join((_HERE / name).read_bytes() for name in ("_nbruntime.py", "_vecmath.py"))
).hexdigest()[:16]
"""Written into every generated module, so that a new run-time library gets new kernels:
numba's disk cache does not notice changes in the functions a kernel inlines."""

_DIRECT = {
    "exp": "_exp",
    "log": "_log",
    "power": "_pow",
    "where": "_where",
    "minimum": "_minimum",
    "maximum": "_maximum",
    "logical_and": "_land",
    "logical_or": "_lor",
    "logical_not": "_lnot",
}
_NUMPY_OK = {
    "abs", "sin", "cos", "tan", "arcsin", "arccos", "arctan", "sinh", "cosh", "tanh", "sqrt", "trunc", "empty",
}  # fmt: skip
_SMALL_POWER = 8  # whole exponents up to this stay `x ** n`: numba multiplies, exactly as often as needed
_OWN = {"_as_float", "range", "_order", "_delay_order", "_fixed_order"}  # in this module's own statements
_OWN |= {"_nan0", "_nan1", "_fmin", "_fmax"}  # the expansion's reductions (armsdyn.ensemble._expand)
_HELPERS = {
    "_f": "_as_float",
    "_xidz": "_xidz",
    "_zidz": "_zidz",
    "_quantum": "_quantum",
    "_modulo": "_modulo",
    "_step": "_step",
    "_lookup": "_lookup",
    "_lookup_extrapolate": "_lookup_extrapolate",
    "_lookup_hold": "_lookup_hold",
    "_series": "_series",
    "_lookup_runs": "_lookup_runs",
}
_LOOKUPS = {"_lookup", "_lookup_extrapolate", "_lookup_hold"}
_PULSE_ARGS = ("repeat_time", "width", "magnitude", "end")
_PULSE_FLAGS = {"width": 1, "magnitude": 2, "end": 4, "repeat_time": 8}


_TABLE_POINTS = 64
"""Largest lookup table compiled to selects (a few operations per point); larger ones call ``np.interp``."""


def table_slopes(kind: str, xs: Any, ys: Any) -> list[float] | None:
    """Segment slopes of a lookup table the kernel can evaluate branch-free, or None.

    None for a table too large to unroll, with non-finite points or slopes, or of
    an unknown kind: those keep the (scalar, non-vectorising) ``np.interp`` call.
    """
    xs = [float(v) for v in xs]
    ys = [float(v) for v in ys]
    n = len(xs)
    if kind not in ("interpolate", "extrapolate", "hold_backward") or not 1 <= n <= _TABLE_POINTS:
        return None
    if not all(math.isfinite(v) for v in xs + ys):
        return None
    slopes = [(ys[i + 1] - ys[i]) / (xs[i + 1] - xs[i]) for i in range(n - 1)] or [0.0]
    return slopes if all(math.isfinite(v) for v in slopes) else None


def available() -> bool:
    """Whether numba can be imported."""
    return importlib.util.find_spec("numba") is not None


class _Scalar(ast.NodeTransformer):
    """Rewrites a numpy-backend expression as scalar numba code."""

    def __init__(
        self,
        path: Path,
        element: str,
        constants: dict[str, int],
        tables: AbstractSet[str] = frozenset(),
        slices: dict[str, tuple[int, int]] | None = None,
    ) -> None:
        self.path = path
        self.element = element
        self.constants = constants
        self.tables = tables  # lookup tables compiled to vectorisable functions of their own
        self.slices = slices or {}  # a time series' points or values: consecutive rows of CV

    def unsupported(self, what: str) -> UnsupportedConstruct:
        return UnsupportedConstruct(self.path, self.element, what, "numba backend")

    def visit_Subscript(self, node: ast.Subscript) -> ast.AST:
        # C['name']: the sample's value of a constant.
        if (
            isinstance(node.value, ast.Name)
            and node.value.id == "C"
            and isinstance(node.slice, ast.Constant)
            and isinstance(key := node.slice.value, str)
        ):
            if key in self.slices:
                lo, hi = self.slices[key]
                return ast.parse(f"CV[{lo}:{hi}, j]", mode="eval").body
            row = self.constants[key]
            return ast.parse(f"CV[{row}, j]", mode="eval").body
        return self.generic_visit(node)

    def visit_BinOp(self, node: ast.BinOp) -> ast.AST:
        self.generic_visit(node)  # transforms the children in place (and returns node itself)
        if not isinstance(node.op, ast.Pow):
            return node
        try:
            exponent = ast.literal_eval(node.right)
        except ValueError:
            exponent = None
        if isinstance(exponent, int | float) and abs(exponent) <= _SMALL_POWER and exponent == round(exponent):
            whole = int(exponent)
            node.right = ast.Constant(whole) if whole >= 0 else ast.UnaryOp(ast.USub(), ast.Constant(-whole))
            return node
        # Any other power: the vectorisable one (numba's would call the C library per sample).
        return ast.Call(ast.Name("_pow", ast.Load()), [node.left, node.right], [])

    def visit_Call(self, node: ast.Call) -> ast.AST:
        self.generic_visit(node)  # transforms the children in place (and returns node itself)
        func = node.func
        if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) and func.value.id == "np":
            if func.attr in _DIRECT:
                node.func = ast.Name(_DIRECT[func.attr], ast.Load())
                return node
            if func.attr in _NUMPY_OK:
                return node
            raise self.unsupported(f"np.{func.attr}")
        if isinstance(func, ast.Name):
            if func.id in _OWN:
                return node
            if func.id in _LOOKUPS and isinstance(node.args[0], ast.Name):
                table = node.args[0].id.removesuffix("_x")
                if table in self.tables:
                    return ast.Call(ast.Name(table, ast.Load()), [node.args[2]], [])
            if func.id == "_lookup_runs":
                unrolled = _unrolled_lookup_runs(node)
                if unrolled is not None:
                    return unrolled
            if func.id in _HELPERS:
                node.func = ast.Name(_HELPERS[func.id], ast.Load())
                return node
            if func.id == "_ramp":
                node.func = ast.Name("_ramp3" if len(node.args) == 4 else "_ramp2", ast.Load())
                return node
            if func.id == "_pulse":
                given = {kw.arg: kw.value for kw in node.keywords if kw.arg is not None}  # the compiler names each
                flags = sum(_PULSE_FLAGS[k] for k in given)
                rest = [given.get(k, ast.Constant(0.0)) for k in _PULSE_ARGS]
                return ast.Call(ast.Name("_pulse", ast.Load()), [*node.args, *rest, ast.Constant(flags)], [])
        raise self.unsupported(ast.unparse(func))


_UNROLLED_RUNS = 12
"""Most points of a lookup redrawn per run that the kernel reads branch-free (larger ones: a search per sample)."""


def _row_bounds(arg: ast.expr) -> tuple[Any, Any]:
    """``lo, hi`` of ``CV[lo:hi, j]``: the rows of a table's points or values; ValueError for other code."""
    if isinstance(arg, ast.Subscript) and isinstance(arg.slice, ast.Tuple) and arg.slice.elts:
        rows = arg.slice.elts[0]
        if isinstance(rows, ast.Slice) and rows.lower is not None and rows.upper is not None:
            return ast.literal_eval(rows.lower), ast.literal_eval(rows.upper)
    raise ValueError(ast.unparse(arg))


def _unrolled_lookup_runs(node: ast.Call) -> ast.expr | None:
    """``_lookup_runs(kind, CV[xa:xb, j], CV[ya:yb, j], x)`` as a chain of selects, or None.

    Every sample's table has the same points, so a lookup redrawn per run can
    be read as the file's small tables are (:func:`table_slopes`): a select per
    segment, straight-line code that vectorises across samples, where
    :func:`~armsdyn.ensemble._nbruntime.lookup_runs` searches each sample's
    table in a loop. Same arithmetic as that function (``np.interp``'s).
    """
    kind_node, xs, ys, x_node = node.args
    try:
        kind = ast.literal_eval(kind_node)
        (xa, xb), (ya, _) = _row_bounds(xs), _row_bounds(ys)
    except (ValueError, TypeError):
        return None
    size = xb - xa
    if not 1 <= size <= _UNROLLED_RUNS:
        return None
    x = f"({ast.unparse(x_node)})"
    xk = [f"CV[{xa + k}, j]" for k in range(size)]
    yk = [f"CV[{ya + k}, j]" for k in range(size)]
    last = size - 1
    if kind == 2:
        value = yk[last]
        for k in range(last - 1, -1, -1):
            value = f"_where({x} < {xk[k + 1]}, {yk[k]}, {value})"
        return ast.parse(value, mode="eval").body
    if size == 1:
        return ast.parse(f"_where({x} != {x}, {x}, {yk[0]})", mode="eval").body
    if kind == 1:
        value = f"{yk[last]} + ({yk[last]} - {yk[last - 1]}) / ({xk[last]} - {xk[last - 1]}) * ({x} - {xk[last]})"
    else:
        value = yk[last]
    for k in range(last - 1, -1, -1):
        segment = f"({yk[k + 1]} - {yk[k]}) / ({xk[k + 1]} - {xk[k]}) * ({x} - {xk[k]}) + {yk[k]}"
        value = f"_where({x} < {xk[k + 1]}, _where({x} == {xk[k]}, {yk[k]}, {segment}), {value})"
    if kind == 1:
        value = f"_where({x} < {xk[0]}, {yk[0]} + ({yk[1]} - {yk[0]}) / ({xk[1]} - {xk[0]}) * ({x} - {xk[0]}), {value})"
    else:
        value = f"_where({x} <= {xk[0]}, {yk[0]}, {value})"
    return ast.parse(f"_where({x} != {x}, {x}, {value})", mode="eval").body


def _output_text(st: Stateful) -> str:
    """Scalar value of a stateful object's output (numpy-backend syntax, translated later)."""
    s, a = st.var, {k: v.text for k, v in st.args.items()}
    if st.kind in ("integ", "delayfixed", "initial"):
        return s
    if st.kind == "smooth":
        return s if st.order == 1 else f"{s}[{s}_K - 1]"
    if st.kind == "delay":
        return f"{s}[{s}_K - 1] / {a['delay_time']}"
    if st.kind == "delayn":
        return f"{s}[{s}_K - 1] / {s}_T[0]"
    if st.kind == "trend":
        return f"_zidz({a['input']} - {s}, {a['average_time']} * np.abs({s}))"
    if st.kind == "forecast":
        return f"{a['input']} * (1 + _zidz({a['input']} - {s}, {a['average_time']} * {s}) * {a['horizon']})"
    if st.kind == "sampleiftrue":
        return f"np.where({a['condition']}, {a['input']}, {s})"
    raise AssertionError(st.kind)


def _checked_order(s: str, value: str, code: int) -> list[str]:
    return [
        f"_ov = _as_float({value})",
        f"{s}_K = _order(_ov)",
        f"if {s}_K < 1:",
        "    ERRV[j] = _ov",
        f"    return {code}",
    ]


def _init_lines(st: Stateful, code: int) -> list[str]:
    s, a = st.var, {k: v.text for k, v in st.args.items()}
    if st.kind in ("integ", "initial", "sampleiftrue"):
        return [f"{s} = _as_float({a['initial']})"]
    if st.kind == "smooth":
        if st.order == 1:
            return [f"{s}_K = 1", f"{s} = _as_float({a['initial']})"]
        lines = [f"{s}_K = {st.order}"] if st.order is not None else _checked_order(s, a["order"], code)
        return [*lines, f"{s} = np.empty({s}_K)", f"{s}[:] = {a['initial']}"]
    if st.kind in ("delay", "delayn"):
        lines = _checked_order(s, f"_delay_order({a['order']}, {a['delay_time']}, dt)", code)
        lines += [f"{s} = np.empty({s}_K)", f"{s}[:] = {a['initial']} * {a['delay_time']}"]
        if st.kind == "delayn":
            lines += [f"{s}_T = np.empty({s}_K)", f"{s}_T[:] = {a['delay_time']}"]
        return lines
    if st.kind == "delayfixed":
        lines = _checked_order(s, f"_fixed_order({a['delay_time']}, dt)", code)
        return [
            *lines,
            f"{s} = _as_float({a['initial']})",
            f"{s}_P = np.empty({s}_K)",
            f"{s}_P[:] = {a['initial']}",
            f"{s}_p = 0",
        ]
    if st.kind == "trend":
        return [f"{s} = _as_float({a['input']} / (1 + {a['initial_trend']} * {a['average_time']}))"]
    if st.kind == "forecast":
        return [f"{s} = _as_float({a['input']} / (1 + {a['initial_trend']}))"]
    raise AssertionError(st.kind)


def _update_lines(st: Stateful) -> list[str]:
    s, a = st.var, {k: v.text for k, v in st.args.items()}
    if st.kind == "integ":
        if st.nonneg:
            return [f"{s} = np.maximum({s} + {a['flow']} * dt, 0)"]
        return [f"{s} = {s} + {a['flow']} * dt"]
    if st.kind == "smooth":
        if st.order == 1:
            return [f"{s} = {s} + ({a['input']} - {s}) * {s}_K / {a['smooth_time']} * dt"]
        # Stage q reads the old value of stage q - 1: go down the stages.
        return [
            f"for _q in range({s}_K - 1, 0, -1):",
            f"    {s}[_q] = {s}[_q] + ({s}[_q - 1] - {s}[_q]) * {s}_K / {a['smooth_time']} * dt",
            f"{s}[0] = {s}[0] + ({a['input']} - {s}[0]) * {s}_K / {a['smooth_time']} * dt",
        ]
    if st.kind in ("delay", "delayn"):
        lines = []
        times = f"{a['delay_time']}"
        times_prev = times
        if st.kind == "delayn":
            lines += [
                f"for _q in range({s}_K - 1, 0, -1):",
                f"    {s}_T[_q] = {s}_T[_q - 1]",
                f"{s}_T[0] = {a['delay_time']}",
            ]
            times, times_prev = f"{s}_T[_q]", f"{s}_T[_q - 1]"
        first = f"{s}_T[0]" if st.kind == "delayn" else times
        return [
            *lines,
            f"for _q in range({s}_K - 1, 0, -1):",
            f"    {s}[_q] = {s}[_q] + ({s}[_q - 1] / {times_prev} - {s}[_q] / {times}) * {s}_K * dt",
            f"{s}[0] = {s}[0] + ({a['input']} - {s}[0] / {first}) * {s}_K * dt",
        ]
    if st.kind == "delayfixed":
        return [f"{s}_P[{s}_p] = {a['input']}", f"{s}_p = ({s}_p + 1) % {s}_K", f"{s} = {s}_P[{s}_p]"]
    if st.kind in ("trend", "forecast"):
        return [f"{s} = {s} + ({a['input']} - {s}) / {a['average_time']} * dt"]
    if st.kind == "sampleiftrue":
        return [f"{s} = {s} * 0 + np.where({a['condition']}, {a['input']}, {s})"]
    if st.kind == "initial":
        return []
    raise AssertionError(st.kind)


def _array_output_text(st: ElementArrays, k: int) -> str:
    """Element `k` of the output of a subscripted stateful object with an array per element."""
    s, a = st.var, st.args
    if st.kind == "smooth":
        return f"{s}[{k}, {s}_K - 1]"
    if st.kind == "delay":
        return f"{s}[{k}, {s}_K - 1] / {a['delay_time'][k]}"
    if st.kind == "delayn":
        return f"{s}[{k}, {s}_K - 1] / {s}_T[{k}, 0]"
    raise AssertionError(st.kind)


def _stage(s: str, buffer: str, values: list[str]) -> list[str]:
    # Each element's operand into a buffer the element loop reads.
    return [f"{s}_{buffer}[{k}] = {v}" for k, v in enumerate(values)]


def _array_init_lines(st: ElementArrays, code: int) -> list[str]:
    """Initialise an ``(elements, order)`` state: what :func:`_init_lines` does for each element."""
    s, a, n = st.var, st.args, st.size
    if st.kind == "smooth":
        lines = [f"{s}_K = {st.order}"] if st.order is not None else _checked_order(s, a["order"][0], code)
        initial = a["initial"]
    else:
        lines = _checked_order(s, f"_delay_order({a['order'][0]}, {st.shortest}, dt)", code)
        initial = [f"{i} * {d}" for i, d in zip(a["initial"], a["delay_time"], strict=True)]
    lines += [f"{s} = np.empty(({n}, {s}_K))", f"{s}_I = np.empty({n})", f"{s}_D = np.empty({n})"]
    lines += _stage(s, "I", initial)
    lines += [f"for _e in range({n}):", f"    {s}[_e, :] = {s}_I[_e]"]
    if st.kind == "delayn":
        lines += [f"{s}_T = np.empty(({n}, {s}_K))", *_stage(s, "D", a["delay_time"])]
        lines += [f"for _e in range({n}):", f"    {s}_T[_e, :] = {s}_D[_e]"]
    return lines


def _array_update_lines(st: ElementArrays) -> list[str]:
    """Advance an ``(elements, order)`` state: :func:`_update_lines`' arithmetic in a loop over elements."""
    s, a, n = st.var, st.args, st.size
    times = a["smooth_time"] if st.kind == "smooth" else a["delay_time"]
    lines = [*_stage(s, "I", a["input"]), *_stage(s, "D", times), f"for _e in range({n}):"]
    if st.kind == "smooth":
        return [
            *lines,
            f"    for _q in range({s}_K - 1, 0, -1):",
            f"        {s}[_e, _q] = {s}[_e, _q] + ({s}[_e, _q - 1] - {s}[_e, _q]) * {s}_K / {s}_D[_e] * dt",
            f"    {s}[_e, 0] = {s}[_e, 0] + ({s}_I[_e] - {s}[_e, 0]) * {s}_K / {s}_D[_e] * dt",
        ]
    if st.kind == "delay":
        now, before, first = f"{s}_D[_e]", f"{s}_D[_e]", f"{s}_D[_e]"
    else:
        lines += [
            f"    for _q in range({s}_K - 1, 0, -1):",
            f"        {s}_T[_e, _q] = {s}_T[_e, _q - 1]",
            f"    {s}_T[_e, 0] = {s}_D[_e]",
        ]
        now, before, first = f"{s}_T[_e, _q]", f"{s}_T[_e, _q - 1]", f"{s}_T[_e, 0]"
    return [
        *lines,
        f"    for _q in range({s}_K - 1, 0, -1):",
        f"        {s}[_e, _q] = {s}[_e, _q] + ({s}[_e, _q - 1] / {before} - {s}[_e, _q] / {now}) * {s}_K * dt",
        f"    {s}[_e, 0] = {s}[_e, 0] + ({s}_I[_e] - {s}[_e, 0] / {first}) * {s}_K * dt",
    ]


@dataclass
class _Code:
    """The scalar statements of one sample's simulation, section by section."""

    constants: list[str]  # PySD names, in CV row order
    states: list[Any]  # Stateful or ElementArrays, in error-code order
    init: list[str]  # before the time loop: constants, initial values, statics, hoisted values
    per_step: list[str]  # every time step
    per_save: list[str]  # at saved times only: outputs nothing else reads
    updates: list[str]  # advancing the states, after the step's values
    outputs: list[str]  # saved names


def _statements(graph: Any, outputs: list[str]) -> _Code:
    program: Program = build_program(graph, outputs)
    if getattr(graph, "subscripted", False):
        # One scalar per element (see armsdyn.ensemble._expand): the kernels stay straight-line scalar code.
        flat = expand_program(graph, program, _output_text, _array_output_text)
    else:
        flat = scalar_program(graph, program, _output_text)
    rows = {key: i for i, (_, key) in enumerate(flat.constants)}
    extra, slices = _series_rows(graph, rows)
    rows.update({key: len(rows) + i for i, key in enumerate(extra)})
    init_states = [item[1] for item in flat.init if item[0] == "state"]
    codes = {st.var: i + 1 for i, st in enumerate(init_states)}

    def element_of(name: str) -> str:
        base = base_name(name)
        if base.startswith("v_") and base[2:] in graph.elements:
            return graph.elements[base[2:]].name
        return base

    tables = _unrolled_tables(graph)

    def tr(text: str, name: str = "") -> str:
        tree = ast.parse(text, mode="eval")
        return ast.unparse(_Scalar(graph.path, element_of(name), rows, tables, slices).visit(tree))

    def tr_lines(lines: list[str], element: str) -> list[str]:
        tree = ast.parse("\n".join(lines))
        return ast.unparse(_Scalar(graph.path, element, rows, tables, slices).visit(tree)).splitlines()

    init = ["t = TS[0]"]
    init += [f"{name} = CV[{rows[key]}, j]" for name, key in flat.constants]
    for item in flat.init:
        if item[0] == "state":
            st = item[1]
            lines = (
                _array_init_lines(st, codes[st.var])
                if isinstance(st, ElementArrays)
                else _init_lines(st, codes[st.var])
            )
            init.extend(tr_lines(lines, st.element))
        else:
            init.append(f"{item[1]} = {tr(item[2], item[1])}")
    for name, text in flat.static:
        init.append(f"{name} = {tr(text, name)}")
    per_step = [(n, tr(t, n)) for n, t in flat.per_step]
    per_save = [(n, tr(t, n)) for n, t in flat.per_save]
    updates = []
    for st in flat.states:
        lines = _array_update_lines(st) if isinstance(st, ElementArrays) else _update_lines(st)
        updates += tr_lines(lines, st.element)
    states = {st.var for st in flat.states}
    changing = frozenset(states) | {f"{v}_p" for v in states} | {"_q", "_e", "_ov", "j"}
    hoisted, per_step, per_save, _ = optimise_loop(per_step, per_save, [], changing)
    init += [f"{name} = {text}" for name, text in hoisted]
    code = _Code(
        constants=[key for _, key in flat.constants] + extra,
        states=init_states,
        init=init,
        per_step=[f"{n} = {t}" for n, t in per_step],
        per_save=[f"{n} = {t}" for n, t in per_save],
        updates=updates,
        outputs=flat.outputs,
    )
    return code


def _series_rows(graph: Any, rows: dict[str, int]) -> tuple[list[str], dict[str, tuple[int, int]]]:
    """Rows of ``CV`` the time series of `graph` read beyond the program's constants.

    A series of K points takes K rows of points (``"~x<i>:key"``, the same in
    every column) and K of values (``"~y<i>:key"``); a subscripted constant with
    an element given as a series reads its other elements from rows of their own
    (``"py[e1,e2]"``), as it is no longer a constant of the program.

    Returns
    -------
    keys, slices
        The row keys in order (after `rows`), and each series' points and values
        (``"~x:key"``, ``"~y:key"``) as a range of rows.
    """
    keys: list[str] = []
    slices: dict[str, tuple[int, int]] = {}
    done: set[str] = set()
    for key, points in graph.series.items():
        py = key.partition("[")[0]
        info = graph.elements[py]
        # A redrawn element of a subscripted lookup reads only its table: the others keep the model's.
        if info.dims and info.kind != "lookup" and py not in done:
            done.add(py)
            labels = (",".join(e) for e in itertools.product(*(els for _, els in info.dims)))
            keys += [f"{py}[{label}]" for label in labels if f"{py}[{label}]" not in rows]
        for axis in ("x", "y"):
            start = len(rows) + len(keys)
            slices[f"~{axis}:{key}"] = (start, start + points)
            keys += [f"~{axis}{i}:{key}" for i in range(points)]
    return keys, slices


def _unrolled_tables(graph: Any) -> set[str]:
    return {name for name, (xs, ys, kind) in graph.lookups.items() if table_slopes(kind, xs, ys) is not None}


def _names(lines: list[str], ctx: type) -> set[str]:
    tree = ast.parse("\n".join(lines))
    return {n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and isinstance(n.ctx, ctx)}


class _Reciprocal(ast.NodeTransformer):
    """``a / c`` with `c` fixed during the run becomes ``a * _rN``, ``_rN = 1.0 / c`` computed once.

    An element ``x[i]`` of an array fixed during the run becomes ``_rN[i]``,
    ``_rN = 1.0 / x`` (each element's reciprocal, as ``1.0 / x__i`` would be).
    """

    def __init__(self, invariant: set[str], arrays: AbstractSet[str], found: dict[str, str]) -> None:
        self.invariant = invariant
        self.arrays = arrays
        self.found = found

    def visit_BinOp(self, node: ast.BinOp) -> ast.AST:
        self.generic_visit(node)  # transforms the children in place (and returns node itself)
        if not isinstance(node.op, ast.Div):
            return node
        right = node.right
        if isinstance(right, ast.Name) and right.id in self.invariant:
            name = self.found.setdefault(right.id, f"_r{len(self.found)}")
            return ast.BinOp(node.left, ast.Mult(), ast.Name(name, ast.Load()))
        if (
            isinstance(right, ast.Subscript)
            and isinstance(right.value, ast.Name)
            and right.value.id in self.arrays
            and right.value.id in self.invariant
        ):
            name = self.found.setdefault(right.value.id, f"_r{len(self.found)}")
            return ast.BinOp(node.left, ast.Mult(), ast.Subscript(ast.Name(name, ast.Load()), right.slice, ast.Load()))
        return node


def _stored(lines: list[str]) -> set[str]:
    """Names `lines` assign, whole or through an index (``x = ...``, ``x[i] = ...``)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse("\n".join(lines))):
        target = node
        if isinstance(target, ast.Subscript) and isinstance(target.ctx, ast.Store):
            while isinstance(target, ast.Subscript):
                target = target.value
            if isinstance(target, ast.Name):
                names.add(target.id)
        elif isinstance(target, ast.Name) and isinstance(target.ctx, ast.Store):
            names.add(target.id)
    return names


def _use_reciprocals(code: _Code, arrays: AbstractSet[str] = frozenset()) -> None:
    """Divide by run-constant denominators through their reciprocals.

    Division is the slowest arithmetic instruction by far (a 512-bit vector
    division takes about 16 cycles, a multiplication 0.5), and most divisions
    of a system-dynamics model are by ``dt`` or by time constants. ``a * (1/c)``
    differs from ``a / c`` by at most one rounding (none when ``c`` is a power
    of two, as ``dt`` usually is). `arrays` are the element arrays of
    :func:`~armsdyn.ensemble._expand.roll_elements`.
    """
    loop = code.per_step + code.per_save + code.updates
    invariant = ((_names(code.init, ast.Store) | set(arrays)) - _stored(loop)) | {"dt"}
    found: dict[str, str] = {}
    rewrite = _Reciprocal(invariant, arrays, found)
    code.per_step, code.per_save, code.updates = (
        ast.unparse(rewrite.visit(ast.parse("\n".join(lines)))).splitlines() if lines else []
        for lines in (code.per_step, code.per_save, code.updates)
    )
    code.init += [f"{r} = 1.0 / {name}" for name, r in found.items()]


def _roll(code: _Code) -> tuple[list[str], int]:
    """A subscripted model's per-sample kernel with its elements in arrays and loops over them.

    Its statements, outputs included, go through
    :func:`~armsdyn.ensemble._expand.roll_elements` (numba compiles a
    statement per element in a time that grows faster than their number: 17-26 s
    of CPU for the 1,868 lines of a model of five subscripted delays); the
    outputs are then saved with the per-save statements. The element arrays
    are consecutive stretches of one scratch array ``EL``, which the kernel
    allocates once for all its samples (an allocation per array and sample
    took a third of a short model's run time).

    Returns
    -------
    tables, size
        The module-level index tables the loops read, and the length of ``EL``.
    """
    saves = [f"O[{o}, k, off + j] = {name}" for o, name in enumerate(code.outputs)]
    rolled = roll_elements([code.init, code.per_step, code.per_save + saves, code.updates])
    code.init, code.per_step, code.per_save, code.updates = rolled.sections
    code.outputs = []
    _use_reciprocals(code, rolled.arrays.keys())
    starts = dict(zip(rolled.arrays, itertools.accumulate(rolled.arrays.values(), initial=0), strict=False))
    scratch = _Scratch(starts, rolled.arrays)
    code.init, code.per_step, code.per_save, code.updates = (
        ast.unparse(scratch.visit(ast.parse("\n".join(lines)))).splitlines() if lines else []
        for lines in (code.init, code.per_step, code.per_save, code.updates)
    )
    return rolled.tables, sum(rolled.arrays.values())


class _Scratch(ast.NodeTransformer):
    """Element ``i`` of array ``x`` as ``EL[start + i]``, and ``x`` itself as its stretch ``EL[start:stop]``."""

    def __init__(self, starts: dict[str, int], sizes: dict[str, int]) -> None:
        self.starts = starts
        self.sizes = sizes

    def visit_Subscript(self, node: ast.Subscript) -> ast.AST:
        if not (isinstance(node.value, ast.Name) and node.value.id in self.starts):
            return self.generic_visit(node)
        start = self.starts[node.value.id]
        index = self.visit(node.slice)
        if isinstance(index, ast.Constant) and type(index.value) is int:
            index = ast.Constant(start + index.value)
        elif start:
            index = ast.BinOp(ast.Constant(start), ast.Add(), index)
        return ast.Subscript(ast.Name("EL", ast.Load()), index, node.ctx)

    def visit_Name(self, node: ast.Name) -> ast.AST:
        if node.id not in self.starts:
            return node
        start = self.starts[node.id]
        stretch = ast.Slice(ast.Constant(start), ast.Constant(start + self.sizes[node.id]))
        return ast.Subscript(ast.Name("EL", ast.Load()), stretch, node.ctx)


def _per_sample_body(code: _Code, scratch: int = 0) -> list[str]:
    """One sample at a time, its time loop inside: for models with array-valued states.

    With `scratch`, the kernel allocates a scratch array ``EL`` of that many
    numbers and every sample uses it (see :func:`_roll`).
    """
    body = [*code.init, "k = 0", "last = TS.shape[0] - 1", "for i in range(last + 1):", "    t = TS[i]"]
    body += [f"    {line}" for line in code.per_step]
    body.append("    if SV[i]:")
    body += [f"        {line}" for line in code.per_save]
    body += [f"        O[{o}, k, off + j] = {name}" for o, name in enumerate(code.outputs)]
    body += ["        k += 1", "    if i == last:", "        break"]
    body += [f"    {line}" for line in code.updates]
    body.append("return 0")
    extra = ", EL" if scratch else ""
    return [
        "@njit(cache=True, error_model='numpy', fastmath=False)",
        f"def sample(j, CV, TS, SV, dt, t0, tf, sp, O, off, ERRV{extra}):",
        *(f"    {line}" for line in body),
        "",
        "",
        "@njit(cache=True, error_model='numpy', fastmath=False, nogil=True)",
        "def kernel(CV, TS, SV, dt, t0, tf, sp, O, off, ERR, ERRV, lo, hi):",
        *([f"    EL = np.empty({scratch})"] if scratch else []),
        "    for j in range(lo, hi):",
        f"        ERR[j] = sample(j, CV, TS, SV, dt, t0, tf, sp, O, off, ERRV{extra})",
    ]


_SERIES_CALL = re.compile(r"_series\(t, CV\[(\d+):(\d+), j\], CV\[(\d+):(\d+), j\]\)")


def _series_segments(per_step: list[str], per_save: list[str]) -> tuple[list[str], list[str], list[str]]:
    """Time series in a blocked kernel: one segment search per step for all samples, outside the sample loop.

    Every sample's series has the same points (rows of ``CV``, the same in
    each column), so where time falls among them is found once per step (in
    the block's first column); the sample loop then reads its two values from
    rows at that segment and interpolates with ``np.interp``'s arithmetic:
    straight-line code that vectorises, as a series read by its own search
    (:func:`~armsdyn.ensemble._nbruntime.series`) does not.

    Returns
    -------
    searches, per_step, per_save
        The statements before the sample loop, and the loop's statements with
        each series read at the step's segment.
    """
    searches: list[str] = []
    found: dict[tuple[str, str], int] = {}

    def read(match: re.Match[str]) -> str:
        xa, xb, ya, _ = match.groups()
        k = found.setdefault((xa, xb), len(found))
        if k == len(searches):
            searches.append(f"_sa{k}, _sb{k}, _sd{k}, _sx{k}, _se{k} = _segment(t, CV[{xa}:{xb}, lo0])")
        y0, y1 = f"CV[{ya} + _sa{k}, j]", f"CV[{ya} + _sb{k}, j]"
        return f"_where(_se{k}, {y0}, ({y1} - {y0}) / _sd{k} * _sx{k} + {y0})"

    per_step = [_SERIES_CALL.sub(read, line) for line in per_step]
    per_save = [_SERIES_CALL.sub(read, line) for line in per_save]
    return searches, per_step, per_save


def _blocked_body(code: _Code) -> list[str]:
    """Blocks of samples advanced together, the sample loop innermost, so LLVM vectorises it.

    Each block keeps every value the time loop reads from before it (constants,
    initial values, states) in a row of the scratch array ``W``; one time step
    loads a sample's values, computes its step and stores its states back. The
    loop body is straight-line arithmetic and selects, so the compiler turns it
    into vector instructions that advance 4 or 8 samples at once. Outputs go to
    rows of ``W`` too and are copied to ``O`` after the loop: a loop storing
    into two arrays that might overlap would need run-time overlap checks, and
    with many rows LLVM gives up vectorising it.
    """
    searches, per_step, per_save = _series_segments(code.per_step, code.per_save)
    code = replace(code, per_step=per_step, per_save=per_save)
    loop = code.per_step + code.per_save + code.updates
    read = _names(loop, ast.Load) | set(code.outputs)
    live = sorted(read & (_names(code.init, ast.Store) - {"t"}))
    assigned = _names(loop, ast.Store)
    back = [name for name in live if name in assigned]
    row = {name: r * _BLOCK for r, name in enumerate(live)}
    out_row = [(len(live) + o) * _BLOCK for o in range(len(code.outputs))]
    loads = [f"{name} = W[{row[name]} + jj]" for name in live]
    stores = [f"W[{row[name]} + jj] = {name}" for name in back]
    saves = [f"W[{r} + jj] = {name}" for r, name in zip(out_row, code.outputs, strict=True)]
    # Outputs are computed and stored every step (a few more operations) so that the
    # kernel has one copy of the loop body: it compiles in half the time.
    advance = [*loads, *code.per_step, *code.per_save, *saves, *code.updates, *stores]
    if "CV" in _names(loop, ast.Load):
        # A time series reads its sample's points and values from CV in the loop (the sample's column).
        advance.insert(0, "j = lo0 + jj")
    # Initialisation is a function of its own: names assigned both there and in the
    # step loop would make numba's SSA reconstruction (quadratic) take minutes.
    init = [*code.init, *(f"W[{row[name]} + jj] = {name}" for name in live), "return 0"]
    body = [
        "prefer_wide_vectors()",
        f"W = np.empty({(len(live) + len(code.outputs)) * _BLOCK})",
        f"for lo0 in range(lo, hi, {_BLOCK}):",
        f"    b = min({_BLOCK}, hi - lo0)",
        "    for jj in range(b):",
        "        ERR[lo0 + jj] = initialise(lo0 + jj, jj, CV, TS, dt, t0, tf, sp, W, ERRV)",
        "    k = 0",
        "    for i in range(TS.shape[0]):",
        "        t = TS[i]",
        *(f"        {line}" for line in searches),
        "        for jj in range(b):",
        # Nothing to advance when no output depends on the state (e.g. a study that saves none): "pass".
        *(f"            {line}" for line in advance or ["pass"]),
        "        if SV[i]:",
    ]
    # The outputs' rows of W are consecutive: one loop copies them all (a loop per output, with a
    # subscripted model's thousands of elements, would multiply the kernel's compile time). Its
    # count is read from O (a row per output), not written as a number: LLVM unrolled a loop of a
    # known count of up to 16 or so outputs into as many vectorised copy loops, each with its
    # remainder and overlap checks, which tripled the machine-code generation time of a small kernel.
    if out_row:
        body += [
            "            for o in range(O.shape[0]):",
            "                for jj in range(b):",
            f"                    O[o, k, off + lo0 + jj] = W[{out_row[0]} + o * {_BLOCK} + jj]",
        ]
    body += ["            k += 1", "return 0"]
    return [
        "@njit(cache=True, error_model='numpy', fastmath=False)",
        "def initialise(j, jj, CV, TS, dt, t0, tf, sp, W, ERRV):",
        *(f"    {line}" for line in init),
        "",
        "",
        "@njit(cache=True, error_model='numpy', fastmath=False, nogil=True)",
        "def kernel(CV, TS, SV, dt, t0, tf, sp, O, off, ERR, ERRV, lo, hi):",
        *(f"    {line}" for line in body),
    ]


def generate_module(graph: Any, outputs: list[str]) -> tuple[str, list[str], list[Stateful]]:
    """Source of a module defining ``kernel(CV, TS, SV, dt, t0, tf, sp, O, off, ERR, ERRV, lo, hi)``.

    ``CV`` is a ``(n_constants, m)`` array of constant values, one column per
    sample; ``O`` an ``(n_outputs, n_save, n)`` array whose columns ``off`` to
    ``off + m - 1`` are filled at saved times; samples ``lo`` to ``hi - 1`` of
    the chunk are simulated.
    ``ERR[j]`` is set to 0, or to ``1 + i`` if the sample's delay order or pipe
    length of stateful object ``states[i]`` is unusable (its value in
    ``ERRV[j]``).

    Models whose states are all single numbers get the blocked, vectorised
    kernel (:func:`_blocked_body`); delays and higher-order smooths keep an
    array per state and get a loop over samples with the time loop inside.

    Returns
    -------
    source, constants, states
        The module source, the PySD names of the constants in ``CV`` row order,
        and the stateful objects in error-code order.

    Raises
    ------
    UnsupportedConstruct
        If an expression uses something the scalar translation does not know.
    """
    code = _statements(graph, outputs)
    array_states = any("np.empty(" in line for line in code.init)
    tables: list[str] = []
    scratch = 0
    if array_states and getattr(graph, "subscripted", False):
        tables, scratch = _roll(code)  # loops over elements, with their own reciprocals
    else:
        _use_reciprocals(code)
    kernel = _per_sample_body(code, scratch) if array_states else _blocked_body(code)
    lines = [
        "# Generated by armsdyn.ensemble._numba; do not edit.",
        f"# Run-time library: {_RUNTIME_DIGEST}",
        "import numpy as np",
        "from numba import njit",
        "from armsdyn.ensemble._nbruntime import (",
        "    where as _where, minimum as _minimum, maximum as _maximum, land as _land, lor as _lor,",
        "    lnot as _lnot, as_float as _as_float, xidz as _xidz, zidz as _zidz, quantum as _quantum,",
        "    modulo as _modulo, step as _step, ramp2 as _ramp2, ramp3 as _ramp3, pulse as _pulse,",
        "    lookup as _lookup, lookup_extrapolate as _lookup_extrapolate, lookup_hold as _lookup_hold,",
        "    order as _order, delay_order as _delay_order, fixed_order as _fixed_order,",
        "    nan0 as _nan0, nan1 as _nan1, fmin as _fmin, fmax as _fmax, series as _series,",
        "    lookup_runs as _lookup_runs, segment as _segment,",
        ")",
        "from armsdyn.ensemble._vecmath import (",
        "    exp as _exp, log as _log, power as _pow, prefer_wide_vectors, table_function,",
        ")",
        "",
    ]
    unrolled = _unrolled_tables(graph)
    for table, (xs, ys, kind) in graph.lookups.items():
        xs_text, ys_text = repr([float(x) for x in xs]), repr([float(y) for y in ys])
        if table in unrolled:
            lines.append(f"{table} = table_function({kind!r}, {xs_text}, {ys_text})")
        else:
            lines.append(f"{table}_x = np.array({xs_text})")
            lines.append(f"{table}_y = np.array({ys_text})")
    lines += [*tables, "", "", *kernel, ""]
    source = "\n".join(lines)
    ast.parse(source)  # generated code must be valid Python
    return source, code.constants, code.states


_RECURSION_LIMIT = 100_000
"""numba's SSA reconstruction recurses once per basic block: a large model's kernel needs thousands of frames."""


def compile_kernel(kernel: Any, n_constants: int, path: Path) -> None:
    """Compile (or load from the disk cache) `kernel` now, in this thread, with room to recurse.

    Raises
    ------
    UnsupportedConstruct
        If numba cannot compile it (the numpy backend still can).
    """
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(limit, _RECURSION_LIMIT))
    try:
        # No samples (lo == hi): the call only compiles, with the argument types of real calls.
        kernel(
            np.empty((n_constants, 1)), np.zeros(1), np.zeros(1, dtype=np.bool_), 1.0, 0.0, 0.0, 1.0,
            np.empty((1, 1, 1)), 0, np.zeros(1, dtype=np.int64), np.zeros(1), 0, 0,
        )  # fmt: skip
    except Exception as exc:  # numba's typing, lowering or recursion errors
        raise UnsupportedConstruct(path, "(the whole model)", "numba backend", f"{type(exc).__name__}: {exc}") from None
    finally:
        sys.setrecursionlimit(limit)


def kernel_cached(source: str, cache: Path) -> bool:
    """Whether numba's disk cache holds compiled code of the kernel module `source`."""
    name = f"armsdyn_kernel_{hashlib.sha256(source.encode()).hexdigest()[:24]}"
    folder = cache / "__pycache__"
    return folder.is_dir() and any(folder.glob(f"{name}.kernel-*.nbi"))


def kernel_imported(source: str) -> bool:
    """Whether this process has imported the kernel module `source` already (loading it costs nothing)."""
    return f"armsdyn_kernel_{hashlib.sha256(source.encode()).hexdigest()[:24]}" in sys.modules


def load_kernel(source: str, cache: Path) -> Callable[..., None]:
    """Import the generated module from `cache` (written there once) and return its kernel."""
    digest = hashlib.sha256(source.encode()).hexdigest()[:24]
    name = f"armsdyn_kernel_{digest}"
    if name in sys.modules:
        return sys.modules[name].kernel
    cache.mkdir(parents=True, exist_ok=True)
    path = cache / f"{name}.py"
    if not path.is_file() or path.read_text(encoding="utf-8") != source:
        fd, tmp = tempfile.mkstemp(dir=cache, suffix=".tmp")
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(source)
        os.replace(tmp, path)  # atomic: concurrent processes see a whole file
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module.kernel


TIMED_BACKENDS = ("numpy", "numba", "numpy chunk", "numba load")
"""Measured costs kept beside a kernel (see :func:`read_timings`): each backend's seconds per run and
time step, numpy's fixed seconds per chunk and time step, and the seconds numba took to be imported
and load the cached kernel."""
_TIMINGS_MAX_BYTES = 4096  # a timings file is four numbers: anything longer is not ours
_TIMING_MAX = {"numba load": 60.0}  # seconds; the others, per run (or chunk) and step, under one


def _timings_path(source: str, cache: Path) -> Path:
    return cache / f"armsdyn_kernel_{hashlib.sha256(source.encode()).hexdigest()[:24]}.timings.json"


def read_timings(source: str, cache: Path) -> dict[str, float]:
    """The costs measured on the kernel module `source` (see :data:`TIMED_BACKENDS`).

    The cache folder is untrusted: the file is read as JSON data only and
    each number kept only if it is a finite positive float below a second (a
    minute for a kernel's load); a
    missing, oversized, unreadable or malformed file, or entry, is ignored (so
    the caller measures again).
    """
    path = _timings_path(source, cache)
    try:
        if path.stat().st_size > _TIMINGS_MAX_BYTES:
            return {}
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        return {}
    if not isinstance(data, dict):
        return {}
    out = {}
    for backend in TIMED_BACKENDS:
        value = data.get(backend)
        if isinstance(value, int | float) and not isinstance(value, bool) and 0 < value < _TIMING_MAX.get(backend, 1.0):
            out[backend] = float(value)  # NaN and inf fail the comparison above
    return out


def write_timing(source: str, cache: Path, backend: str, seconds: float) -> None:
    """Keep `seconds` per run and time step measured for `backend` beside the kernel of `source`.

    Written atomically (a whole file or none); a cache that cannot be written is
    left alone: the timings only save a later study its pilot run.
    """
    if backend not in TIMED_BACKENDS or not 0 < seconds < _TIMING_MAX.get(backend, 1.0):
        return
    timings = read_timings(source, cache)
    timings[backend] = float(seconds)
    try:
        cache.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=cache, suffix=".tmp")
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(timings, fh)
        os.replace(tmp, _timings_path(source, cache))
    except OSError:
        pass
