"""Scalar counterparts of :mod:`armsdyn.ensemble._runtime` for the numba backend.

Each function computes, for one sample, exactly what the vectorised function
computes for that sample's element: the same operations in the same order, so
results agree with the numpy backend (and PySD) to rounding. Importing this
module imports numba.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from llvmlite import ir
from numba import njit

from armsdyn.ensemble._vecmath import Emit, ir_function

SMALL_VENSIM = 1e-6

# The @_jit functions below are left unannotated: numba types each from the
# arguments it is compiled for (a float, or an array for a table), so an
# annotation would be unchecked and could be wrong. mypy sees numba as untyped
# and checks their bodies as untyped functions.
_jit = njit(cache=True, error_model="numpy", inline="always")
# Functions a kernel calls only before its time loop: inlining them (numba's inlining types their
# code again at each call site) made per-sample kernels slower to compile, and saves nothing at run time.
_jit_called = njit(cache=True, error_model="numpy")


# The most frequent helpers are written in LLVM IR (inlined by LLVM, not numba: faster to compile).
def _where(e: Emit, c: Any, a: Any, b: Any) -> Any:
    return e.select(e.b.fcmp_unordered("!=", c, e.c(0.0)), a, b)  # NaN is true, as in Python


def _minimum(e: Emit, a: Any, b: Any) -> Any:
    # np.minimum: NaN if either is NaN.
    r = e.select(e.cmp("<=", a, b), a, b)
    return e.select(e.is_nan(a), a, e.select(e.is_nan(b), b, r))


def _maximum(e: Emit, a: Any, b: Any) -> Any:
    r = e.select(e.cmp(">=", a, b), a, b)
    return e.select(e.is_nan(a), a, e.select(e.is_nan(b), b, r))


def _as_float(e: Emit, a: Any) -> Any:
    return a


def _near_zero(e: Emit, b: Any) -> Any:
    fabs = e.b.module.declare_intrinsic("llvm.fabs", [ir.DoubleType()])
    return e.cmp("<", e.b.call(fabs, [b]), e.c(SMALL_VENSIM))


def _xidz(e: Emit, a: Any, b: Any, x: Any) -> Any:
    return e.select(_near_zero(e, b), x, e.b.fdiv(a, b))


def _zidz(e: Emit, a: Any, b: Any) -> Any:
    return e.select(_near_zero(e, b), e.c(0.0), e.b.fdiv(a, b))


def _step(e: Emit, t: Any, dt: Any, value: Any, tstep: Any) -> Any:
    after = e.cmp(">", e.b.fadd(t, e.mul(dt, e.c(0.5))), tstep)
    return e.mul(value, e.select(after, e.c(1.0), e.c(0.0)))


def _truth(e: Emit, a: Any) -> Any:
    return e.b.fcmp_unordered("!=", a, e.c(0.0))  # Python's bool(a): NaN is true


# Logical operators give 1.0 or 0.0 (numba's bool would be the same number wherever it is used:
# a condition of _where, arithmetic, an output).
def _land(e: Emit, a: Any, b: Any) -> Any:
    return e.select(e.b.and_(_truth(e, a), _truth(e, b)), e.c(1.0), e.c(0.0))


def _lor(e: Emit, a: Any, b: Any) -> Any:
    return e.select(e.b.or_(_truth(e, a), _truth(e, b)), e.c(1.0), e.c(0.0))


def _lnot(e: Emit, a: Any) -> Any:
    return e.select(_truth(e, a), e.c(0.0), e.c(1.0))


def _quantum(e: Emit, a: Any, b: Any) -> Any:
    # a * 1.0 if b < SMALL_VENSIM else b * trunc(a / b): both computed, one chosen (no traps, error_model numpy).
    trunc = e.b.module.declare_intrinsic("llvm.trunc", [ir.DoubleType()])
    whole = e.mul(b, e.b.call(trunc, [e.b.fdiv(a, b)]))
    return e.select(e.cmp("<", b, e.c(SMALL_VENSIM)), e.mul(a, e.c(1.0)), whole)


def _modulo(e: Emit, x: Any, m: Any) -> Any:
    return e.b.fsub(x, _quantum(e, x, m))


def _started(e: Emit, t: Any, start: Any) -> Any:
    return e.select(e.cmp(">", e.b.fadd(t, e.c(SMALL_VENSIM)), start), e.c(1.0), e.c(0.0))


def _ramp2(e: Emit, t: Any, slope: Any, start: Any) -> Any:
    return e.mul(e.mul(_started(e, t, start), slope), e.b.fsub(t, start))


def _ramp3(e: Emit, t: Any, slope: Any, start: Any, finish: Any) -> Any:
    final = _minimum(e, finish, t)
    return e.mul(e.mul(_started(e, t, start), slope), e.b.fsub(final, start))


# Vensim's SUM, PROD, VMIN and VMAX skip NaN (xarray's reductions, np.nansum and friends).
def _nan0(e: Emit, a: Any) -> Any:
    return e.select(e.is_nan(a), e.c(0.0), a)


def _nan1(e: Emit, a: Any) -> Any:
    return e.select(e.is_nan(a), e.c(1.0), a)


def _fmin(e: Emit, a: Any, b: Any) -> Any:
    # np.fmin: the other value if one is NaN.
    return e.select(e.is_nan(a), b, e.select(e.cmp("<", b, a), b, a))


def _fmax(e: Emit, a: Any, b: Any) -> Any:
    return e.select(e.is_nan(a), b, e.select(e.cmp(">", b, a), b, a))


where = ir_function("where", _where)
nan0 = ir_function("nan0", _nan0)
nan1 = ir_function("nan1", _nan1)
fmin = ir_function("fmin", _fmin)
fmax = ir_function("fmax", _fmax)
minimum = ir_function("minimum", _minimum)
maximum = ir_function("maximum", _maximum)
as_float = ir_function("as_float", _as_float)
xidz = ir_function("xidz", _xidz)
zidz = ir_function("zidz", _zidz)
step = ir_function("step", _step)
land = ir_function("land", _land)
lor = ir_function("lor", _lor)
lnot = ir_function("lnot", _lnot)
quantum = ir_function("quantum", _quantum)
modulo = ir_function("modulo", _modulo)
ramp2 = ir_function("ramp2", _ramp2)
ramp3 = ir_function("ramp3", _ramp3)


@_jit
def pulse(t, dt, start, repeat_time, width, magnitude, end, flags):
    # flags: 1 width given, 2 magnitude given, 4 end given, 8 repeat_time given.
    w = width if flags & 1 else 0.5 * dt
    out = magnitude / dt if flags & 2 else 1.0
    single = out if (start - SMALL_VENSIM <= t and t < start + w) else 0.0
    if not flags & 8:
        return single
    active = start <= t
    if flags & 4:
        active = active and t < end
    train = out if (active and (t - start + SMALL_VENSIM) % repeat_time < w) else 0.0
    return single if repeat_time == 0 else train


@_jit
def lookup(xs, ys, x):
    return np.interp(x, xs, ys)


@_jit
def lookup_extrapolate(xs, ys, x):
    y = np.interp(x, xs, ys)
    if len(xs) < 2:
        return y
    if x > xs[-1]:
        return ys[-1] + (ys[-1] - ys[-2]) / (xs[-1] - xs[-2]) * (x - xs[-1])
    if x < xs[0]:
        return ys[0] + (ys[1] - ys[0]) / (xs[1] - xs[0]) * (x - xs[0])
    return y


@_jit
def lookup_hold(xs, ys, x):
    idx = np.searchsorted(xs, x, side="right") - 1
    idx = min(max(idx, 0), len(xs) - 1)
    return ys[idx]


@_jit
def series(t, xs, ys):
    # armsdyn.ensemble._runtime.series for one sample: np.interp's search and arithmetic.
    lo, _, _, _, at_point = segment(t, xs)
    if at_point:  # at a point, or beyond the ends
        return ys[lo]
    slope = (ys[lo + 1] - ys[lo]) / (xs[lo + 1] - xs[lo])
    out = slope * (t - xs[lo]) + ys[lo]
    if np.isnan(out):
        out = slope * (t - xs[lo + 1]) + ys[lo + 1]
        if np.isnan(out) and ys[lo] == ys[lo + 1]:
            out = ys[lo]
    return out


@_jit
def segment(t, xs):
    """Where time `t` falls among the points `xs` of a series: what :func:`series` searches, once per step.

    Returns the rows of the two values to interpolate between, the width of
    the segment, the time into it, and 1.0 when `t` is at a point or beyond
    the ends (the value is then the first row's, as np.interp gives it).
    """
    last = len(xs) - 1
    if not t > xs[0]:
        return 0, 0, 1.0, 0.0, 1.0
    if not t < xs[last]:
        return last, last, 1.0, 0.0, 1.0
    lo = 0
    hi = last
    while hi - lo > 1:  # xs[lo] <= t < xs[hi]
        mid = (lo + hi) // 2
        if xs[mid] <= t:
            lo = mid
        else:
            hi = mid
    if t == xs[lo]:
        return lo, lo, 1.0, 0.0, 1.0
    return lo, lo + 1, xs[lo + 1] - xs[lo], t - xs[lo], 0.0


@_jit
def lookup_runs(kind, xs, ys, x):
    # armsdyn.ensemble._runtime.lookup_runs for one sample: this sample's table is ys at the points xs.
    last = len(xs) - 1
    if kind == 2:
        idx = np.searchsorted(xs, x, side="right") - 1
        return ys[min(max(idx, 0), last)]
    if kind == 1 and last > 0:
        if x > xs[last]:
            return ys[last] + (ys[last] - ys[last - 1]) / (xs[last] - xs[last - 1]) * (x - xs[last])
        if x < xs[0]:
            return ys[0] + (ys[1] - ys[0]) / (xs[1] - xs[0]) * (x - xs[0])
    if np.isnan(x):
        return x
    return series(x, xs, ys)


@_jit_called
def order(value):
    """The order as an int, or -1 if it is not a whole number of at least 1."""
    if not np.isfinite(value) or value < 1 or value != int(value):
        return -1
    return int(value)


@_jit_called
def delay_order(k0, d, dt):
    k = np.trunc(k0 * 1.0)
    if not k > 0:
        return k
    for _ in range(int(k)):
        if k * dt > d:
            k = k - 1
        else:
            break
    return k


@_jit_called
def fixed_order(d, dt):
    return np.rint(maximum(d / dt, 1) + SMALL_VENSIM)
