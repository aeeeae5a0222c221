"""The numba backend: a scalar loop per sample, compiled to machine code.

The same :class:`~armsdyn.ensemble._compiler.Program` the numpy backend emits
array statements from is emitted here as scalar statements inside a loop over
samples, the time loop inside it. The kernel releases the GIL and takes a range
of samples, so :class:`~armsdyn.ensemble.CompiledModel` shares a chunk between
threads itself. (Numba's ``parallel=True`` would need a threading layer; the
only one available with the pip wheels is GNU OpenMP, which aborts in processes
forked after its first use, as :mod:`armsdyn.runner`'s workers are, and it
doubles compilation time.) Every expression is translated node for node (``np.where``
to a scalar select, ``np.minimum`` to a NaN-propagating scalar minimum, ...),
keeping the operations and their order, and ``fastmath`` stays off, so results
agree with the numpy backend and with PySD to rounding.

The generated module is written to the cache folder under a name derived from
its source, so numba's on-disk cache (``cache=True``) serves later processes,
including the workers of :func:`~armsdyn.ensemble.run_ensemble`.
"""

from __future__ import annotations

import ast
import hashlib
import importlib.util
import os
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from armsdyn.ensemble._compiler import Program, Stateful, build_program
from armsdyn.ensemble._errors import UnsupportedConstruct
from armsdyn.ensemble._optimise import optimise_loop

_DIRECT = {
    "where": "_where",
    "minimum": "_minimum",
    "maximum": "_maximum",
    "logical_and": "_land",
    "logical_or": "_lor",
    "logical_not": "_lnot",
}
_NUMPY_OK = {
    "abs", "exp", "sin", "cos", "tan", "arcsin", "arccos", "arctan", "sinh", "cosh", "tanh",
    "sqrt", "log", "power", "trunc", "empty",
}  # fmt: skip
_OWN = {"_as_float", "range", "_order", "_delay_order", "_fixed_order"}  # in this module's own statements
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
}
_PULSE_ARGS = ("repeat_time", "width", "magnitude", "end")
_PULSE_FLAGS = {"width": 1, "magnitude": 2, "end": 4, "repeat_time": 8}


def available() -> bool:
    """Whether numba can be imported."""
    return importlib.util.find_spec("numba") is not None


class _Scalar(ast.NodeTransformer):
    """Rewrites a numpy-backend expression as scalar numba code."""

    def __init__(self, path: Path, element: str, constants: dict[str, int]) -> None:
        self.path = path
        self.element = element
        self.constants = constants

    def unsupported(self, what: str) -> UnsupportedConstruct:
        return UnsupportedConstruct(self.path, self.element, what, "numba backend")

    def visit_Subscript(self, node: ast.Subscript) -> ast.AST:
        # C['name']: the sample's value of a constant.
        if isinstance(node.value, ast.Name) and node.value.id == "C" and isinstance(node.slice, ast.Constant):
            row = self.constants[node.slice.value]
            return ast.parse(f"CV[{row}, j]", mode="eval").body
        return self.generic_visit(node)

    def visit_Call(self, node: ast.Call) -> ast.AST:
        node = self.generic_visit(node)  # type: ignore[assignment]
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
            if func.id in _HELPERS:
                node.func = ast.Name(_HELPERS[func.id], ast.Load())
                return node
            if func.id == "_ramp":
                node.func = ast.Name("_ramp3" if len(node.args) == 4 else "_ramp2", ast.Load())
                return node
            if func.id == "_pulse":
                given = {kw.arg: kw.value for kw in node.keywords}
                flags = sum(_PULSE_FLAGS[k] for k in given)
                rest = [given.get(k, ast.Constant(0.0)) for k in _PULSE_ARGS]
                return ast.Call(ast.Name("_pulse", ast.Load()), [*node.args, *rest, ast.Constant(flags)], [])
        raise self.unsupported(ast.unparse(func))


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


def generate_module(graph: Any, outputs: list[str]) -> tuple[str, list[str], list[Stateful]]:
    """Source of a module defining ``kernel(CV, TS, SV, dt, t0, tf, sp, O, ERR, ERRV, lo, hi)``.

    ``CV`` is a ``(n_constants, m)`` array of constant values, one column per
    sample; ``O`` an ``(n_outputs, n_save, m)`` array filled at saved times;
    samples ``lo`` to ``hi - 1`` are simulated.
    ``ERR[j]`` is set to 0, or to ``1 + i`` if the sample's delay order or pipe
    length of stateful object ``program.states[i]`` is unusable (its value in
    ``ERRV[j]``).

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
    program: Program = build_program(graph, outputs)
    nodes = graph.nodes
    const_names = [nodes[n].constant for n in program.constants]
    rows = {name: i for i, name in enumerate(const_names)}
    states = {st.var: st for st in program.states}
    init_states = [item[1] for item in program.init if item[0] == "state"]
    codes = {st.var: i + 1 for i, st in enumerate(init_states)}
    by_out = {f"o{st.var[1:]}": st for st in graph.statefuls}

    def text_of(name: str, text: str) -> str:
        st = by_out.get(name)
        return _output_text(st) if st is not None else text

    def element_of(name: str) -> str:
        if name.startswith("v_") and name[2:] in graph.elements:
            return graph.elements[name[2:]].name
        return name

    def tr(text: str, name: str = "") -> str:
        tree = ast.parse(text, mode="eval")
        return ast.unparse(_Scalar(graph.path, element_of(name), rows).visit(tree))

    def tr_lines(lines: list[str], element: str) -> list[str]:
        tree = ast.parse("\n".join(lines))
        return ast.unparse(_Scalar(graph.path, element, rows).visit(tree)).splitlines()

    body: list[str] = []
    add = body.append
    add("t = TS[0]")
    for name in program.constants:
        add(f"{name} = {tr(nodes[name].step.text, name)}")
    for item in program.init:
        if item[0] == "state":
            st = item[1]
            body.extend(tr_lines(_init_lines(st, codes[st.var]), st.element))
        else:
            add(f"{item[1]} = {tr(text_of(item[1], item[2]), item[1])}")
    for name, text in program.static:
        add(f"{name} = {tr(text_of(name, text), name)}")
    per_step = [(n, tr(text_of(n, t), n)) for n, t in program.per_step]
    per_save = [(n, tr(text_of(n, t), n)) for n, t in program.per_save]
    updates = []
    for st in program.states:
        updates += tr_lines(_update_lines(st), st.element)
    changing = frozenset(states) | {f"{v}_p" for v in states} | {"_q", "_ov", "j"}
    hoisted, per_step, per_save, _ = optimise_loop(per_step, per_save, [], changing)
    for name, text in hoisted:
        add(f"{name} = {text}")
    add("k = 0")
    add("last = TS.shape[0] - 1")
    add("for i in range(last + 1):")
    add("    t = TS[i]")
    for name, text in per_step:
        add(f"    {name} = {text}")
    add("    if SV[i]:")
    for name, text in per_save:
        add(f"        {name} = {text}")
    for o, name in enumerate(program.outputs):
        add(f"        O[{o}, k, j] = {name}")
    add("        k += 1")
    add("    if i == last:")
    add("        break")
    for line in updates:
        add(f"    {line}")
    add("return 0")

    lines = [
        "# Generated by armsdyn.ensemble._numba; do not edit.",
        "import numpy as np",
        "from numba import njit",
        "from armsdyn.ensemble._nbruntime import (",
        "    where as _where, minimum as _minimum, maximum as _maximum, land as _land, lor as _lor,",
        "    lnot as _lnot, as_float as _as_float, xidz as _xidz, zidz as _zidz, quantum as _quantum,",
        "    modulo as _modulo, step as _step, ramp2 as _ramp2, ramp3 as _ramp3, pulse as _pulse,",
        "    lookup as _lookup, lookup_extrapolate as _lookup_extrapolate, lookup_hold as _lookup_hold,",
        "    order as _order, delay_order as _delay_order, fixed_order as _fixed_order,",
        ")",
        "",
    ]
    for table, (xs, ys, _kind) in graph.lookups.items():
        lines.append(f"{table}_x = np.array({[float(x) for x in xs]!r})")
        lines.append(f"{table}_y = np.array({[float(y) for y in ys]!r})")
    lines += [
        "",
        "",
        "@njit(cache=True, error_model='numpy', fastmath=False)",
        "def sample(j, CV, TS, SV, dt, t0, tf, sp, O, ERRV):",
        *("    " + line for line in body),
        "",
        "",
        "@njit(cache=True, error_model='numpy', fastmath=False, nogil=True)",
        "def kernel(CV, TS, SV, dt, t0, tf, sp, O, ERR, ERRV, lo, hi):",
        "    for j in range(lo, hi):",
        "        ERR[j] = sample(j, CV, TS, SV, dt, t0, tf, sp, O, ERRV)",
        "",
    ]
    source = "\n".join(lines)
    ast.parse(source)  # generated code must be valid Python
    return source, const_names, init_states


def load_kernel(source: str, cache: Path) -> Callable[..., None]:
    """Import the generated module from `cache` (written there once) and return its kernel."""
    digest = hashlib.sha256(source.encode()).hexdigest()[:24]
    name = f"armsdyn_kernel_{digest}"
    if name in sys.modules:
        return sys.modules[name].kernel  # type: ignore[no-any-return]
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
    return module.kernel  # type: ignore[no-any-return]
