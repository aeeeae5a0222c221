"""Vectorised counterparts of PySD's run-time functions, used by generated code.

Every function takes floats or arrays of shape ``(n,)`` (one value per sample)
and mirrors the arithmetic of the PySD function it replaces operation by
operation, so that results agree with PySD to the last bit wherever numpy and
Python floats round alike. Scalar arguments stay cheap: numpy broadcasting
handles a constant that no sample varies.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from armsdyn.errors import ModelError

# What Vensim (and PySD) treat as zero in XIDZ, ZIDZ, QUANTUM, RAMP and PULSE.
SMALL_VENSIM = 1e-6

Num = Any  # a float or a numpy array of shape (n,)


class NonUniformOrder(Exception):
    """Samples of one chunk need different delay orders or pipe lengths.

    The generated code keeps one order per stateful object, so the engine
    regroups the chunk by these values and runs each group on its own.
    """

    def __init__(self, values: np.ndarray) -> None:
        super().__init__("non-uniform order")
        self.values = values


def full(n: int, value: Num) -> np.ndarray:
    """A fresh float array of shape ``(n,)`` holding `value` (scalar or per-sample)."""
    out = np.empty(n)
    out[...] = value
    return out


def full2(k: int, n: int, value: Num, shape: tuple[int, ...] = ()) -> np.ndarray:
    """A fresh ``(k, *shape, n)`` float array, every row holding `value`."""
    out = np.empty((k, *shape, n))
    out[...] = value
    return out


def fulls(shape: tuple[int, ...], n: int, value: Num) -> np.ndarray:
    """A fresh ``(*shape, n)`` float array holding `value` (a scalar, per sample, or aligned array)."""
    out = np.empty((*shape, n))
    out[...] = value
    return out


def shaped(value: Num, shape: tuple[int, ...]) -> np.ndarray:
    """`value` over subscript ranges of `shape`: an array ``(*shape, m)`` (a read-only view where possible).

    A scalar (a number or one value per sample) is repeated for every element;
    an aligned array (length-1 axes for the ranges it lacks) is broadcast.
    """
    arr = np.asarray(value, dtype=float)
    if arr.ndim <= 1:
        arr = arr.reshape((1,) * len(shape) + (-1,))
    return np.broadcast_to(arr, (*shape, arr.shape[-1]))


def assemble(shape: tuple[int, ...], parts: tuple[tuple[Any, Num], ...]) -> np.ndarray:
    """A variable defined element by element: each part's elements (indices per range) set from its value."""
    arrays = [np.asarray(v, dtype=float) for _, v in parts]
    m = max((a.shape[-1] if a.ndim else 1) for a in arrays)
    out = np.full((*shape, m), np.nan)
    for (index, _), arr in zip(parts, arrays, strict=True):
        out[np.ix_(*index, np.arange(m))] = arr
    return out


def lookup_many(tables: tuple[tuple[np.ndarray, np.ndarray, str], ...], index: np.ndarray, x: Num) -> np.ndarray:
    """Lookups defined element by element: element `index` of the table array applied to `x`."""
    x = np.asarray(x, dtype=float)
    shape = np.broadcast_shapes(index.shape, x.shape)
    xb = np.broadcast_to(x, shape)
    ib = np.broadcast_to(index, shape)
    out = np.empty(shape)
    funcs = {"interpolate": lookup, "extrapolate": lookup_extrapolate, "hold_backward": lookup_hold}
    for k, (xs, ys, kind) in enumerate(tables):
        mask = ib == k
        if mask.any():
            out[mask] = funcs[kind](xs, ys, xb[mask])
    return out


def as_float(value: Num) -> Num:
    """Booleans as floats: numpy refuses ``-`` on booleans where Python allows it."""
    return np.asarray(value, dtype=float)


def uniform(values: Num, name: str) -> int:
    """The single integer order in `values`, or raise NonUniformOrder to regroup samples."""
    arr = np.asarray(values)
    if arr.ndim == 0 or arr.size == 0:
        return _as_order(arr.item() if arr.size else 1, name)
    first = arr.flat[0]
    if not np.all(arr == first):
        raise NonUniformOrder(arr.astype(float))
    return _as_order(first, name)


def _as_order(value: float, name: str) -> int:
    if not np.isfinite(value) or value < 1 or value != int(value):
        # PySD fails here too (empty or non-integer state array); say why instead.
        msg = f"{name}: order {value} is not a whole number of at least 1 (delay time shorter than TIME STEP?)"
        raise ModelError(msg)
    return int(value)


def delay_order(order: Num, delay_time: Num, dt: float, n: int) -> np.ndarray:
    """Per-sample order of DELAY1/DELAY3/DELAY N, as PySD's ``Delay.initialize`` sets it.

    PySD lowers the order one by one while ``order * TIME STEP > delay time``.
    """
    k = np.trunc(np.broadcast_to(np.asarray(order, dtype=float), (n,)))
    d = np.asarray(delay_time, dtype=float)
    if d.ndim > 1:  # subscripted: PySD lowers the order against the shortest delay of the sample
        d = d.reshape(-1, d.shape[-1]).min(axis=0)
    d = np.broadcast_to(d, (n,))
    for _ in range(int(np.nanmax(k, initial=0))):
        lower = k * dt > d
        if not lower.any():
            break
        k = np.where(lower, k - 1, k)
    return k


def fixed_order(delay_time: Num, dt: float, n: int) -> np.ndarray:
    """Per-sample pipe length of DELAY FIXED: ``round(max(delay / TIME STEP, 1) + 1e-6)``."""
    d = np.broadcast_to(np.asarray(delay_time, dtype=float), (n,))
    return np.round(np.maximum(d / dt, 1) + SMALL_VENSIM)


def xidz(a: Num, b: Num, x: Num) -> Num:
    """Vensim XIDZ: ``a / b``, or `x` where ``|b| < 1e-6``."""
    return np.where(np.abs(b) < SMALL_VENSIM, x, a / b)


def zidz(a: Num, b: Num) -> Num:
    """Vensim ZIDZ: ``a / b``, or 0 where ``|b| < 1e-6``."""
    return np.where(np.abs(b) < SMALL_VENSIM, 0, a / b)


def quantum(a: Num, b: Num) -> Num:
    """Vensim QUANTUM: ``b * INTEGER(a / b)``, or `a` where ``b < 1e-6``."""
    return np.where(b < SMALL_VENSIM, a, b * np.trunc(a / b))


def modulo(x: Num, m: Num) -> Num:
    """Vensim MODULO as PySD computes it: ``x - QUANTUM(x, m)``."""
    return x - quantum(x, m)


def step(t: float, dt: float, value: Num, tstep: Num) -> Num:
    """Vensim STEP with PySD's half-time-step tolerance."""
    return value * (t + dt / 2 > tstep)


def ramp(t: float, slope: Num, start: Num, finish: Num | None = None) -> Num:
    """Vensim RAMP (XMILE RAMP when `finish` is None)."""
    final = t if finish is None else np.minimum(finish, t)
    return (t + SMALL_VENSIM > start) * slope * (final - start)


def pulse(
    t: float,
    dt: float,
    start: Num,
    repeat_time: Num = 0,
    width: Num | None = None,
    magnitude: Num | None = None,
    end: Num | None = None,
) -> Num:
    """Vensim PULSE and PULSE TRAIN, XMILE PULSE: PySD's ``functions.pulse`` per sample."""
    width = 0.5 * dt if width is None else width
    out = magnitude / dt if magnitude is not None else 1
    single = np.where((start - SMALL_VENSIM <= t) & (t < start + width), out, 0)
    if isinstance(repeat_time, int | float) and repeat_time == 0:
        return single
    active = start <= t
    if end is not None:
        active = active & (t < end)
    train = np.where(active & ((t - start + SMALL_VENSIM) % repeat_time < width), out, 0)
    return np.where(repeat_time == 0, single, train)


def lookup(xs: np.ndarray, ys: np.ndarray, x: Num) -> Num:
    """Vensim lookup: linear interpolation, clamped to the end values outside the table."""
    return np.interp(x, xs, ys)


def lookup_extrapolate(xs: np.ndarray, ys: np.ndarray, x: Num) -> Num:
    """XMILE extrapolating lookup: linear continuation of the first and last segments."""
    y = np.interp(x, xs, ys)
    if len(xs) < 2:
        return y
    k_hi = (ys[-1] - ys[-2]) / (xs[-1] - xs[-2])
    k_lo = (ys[1] - ys[0]) / (xs[1] - xs[0])
    y = np.where(x > xs[-1], ys[-1] + k_hi * (x - xs[-1]), y)
    return np.where(x < xs[0], ys[0] + k_lo * (x - xs[0]), y)


def lookup_hold(xs: np.ndarray, ys: np.ndarray, x: Num) -> Num:
    """XMILE discrete lookup: the value at the last point at or before `x`."""
    idx = np.clip(np.searchsorted(xs, x, side="right") - 1, 0, len(xs) - 1)
    return ys[idx]


def series(t: float, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """A constant given as a time series: ``np.interp(t, xs, ys[:, j])`` for every sample j.

    PySD evaluates a ``pandas.Series`` set on a constant with ``np.interp`` at
    the current time: linear between the points, the first value before them
    and the last after them. `xs` (``(K,)``, increasing) are the points of all
    samples together, `ys` (``(K, m)``) each sample's values there; one
    segment search serves every sample, and the arithmetic is ``np.interp``'s
    (``slope * (t - x0) + y0``, the point's own value at a point).
    """
    last = len(xs) - 1
    if not t > xs[0]:
        return ys[0].copy()
    if not t < xs[last]:
        return ys[last].copy()
    j = int(np.searchsorted(xs, t, side="right")) - 1
    if t == xs[j]:
        return ys[j].copy()
    y0, y1 = ys[j], ys[j + 1]
    slope = (y1 - y0) / (xs[j + 1] - xs[j])
    out = slope * (t - xs[j]) + y0
    bad = np.isnan(out)
    if bad.any():
        # np.interp's second try from the right end of the segment, then a flat segment's value.
        other = slope * (t - xs[j + 1]) + y1
        other = np.where(np.isnan(other) & (y0 == y1), y0, other)
        out = np.where(bad, other, out)
    return out


def put(base: np.ndarray, parts: tuple[tuple[int, Num], ...]) -> np.ndarray:
    """A subscripted constant with some elements (flat C-order index) replaced by per-sample values."""
    values = [np.asarray(v, dtype=float) for _, v in parts]
    m = max([base.shape[-1], *(v.shape[-1] if v.ndim else 1 for v in values)])
    out = np.empty((*base.shape[:-1], m))
    out[...] = base
    flat = out.reshape(-1, m)  # a view: out is C-contiguous
    for (index, _), value in zip(parts, values, strict=True):
        flat[index] = value
    return out


def lookup_runs(kind: int, xs: np.ndarray, ys: np.ndarray, x: Num) -> np.ndarray:
    """A lookup whose table each sample redraws: `ys` ``(K, m)`` at the points `xs` ``(K,)`` of all samples.

    `kind` is 0 for Vensim's interpolation (clamped to the end values), 1 for
    XMILE's extrapolation (the end segments continued), 2 for XMILE's
    discrete lookup (the value at the last point at or before `x`), as
    :func:`lookup`, :func:`lookup_extrapolate` and :func:`lookup_hold`
    compute them; `x` has the samples along its last axis.
    """
    m = ys.shape[1]
    shape = np.broadcast_shapes(np.shape(x), (m,))
    xb = np.broadcast_to(np.asarray(x, dtype=float), shape)
    return _runs_at(kind, xs, ys, xb, np.broadcast_to(np.arange(m), shape))


def _runs_at(kind: int, xs: np.ndarray, ys: np.ndarray, xb: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """:func:`lookup_runs` at values `xb`, each read from the table of the sample in `cols` (same shape)."""
    last = len(xs) - 1
    j = np.searchsorted(xs, xb, side="right") - 1
    if kind == 2:
        return ys[np.clip(j, 0, last), cols]
    if last == 0:
        return ys[np.zeros(xb.shape, dtype=int), cols]
    j = np.clip(j, 0, last - 1)
    x0 = xs[j]
    y0, y1 = ys[j, cols], ys[j + 1, cols]
    slope = (y1 - y0) / (xs[j + 1] - x0)
    # np.interp's arithmetic: a point's own value at a point, else slope * (x - x0) + y0.
    out = np.where(xb == x0, y0, slope * (xb - x0) + y0)
    bad = np.isnan(out) & ~np.isnan(xb)
    if bad.any():
        other = slope * (xb - xs[j + 1]) + y1
        out = np.where(bad, np.where(np.isnan(other) & (y0 == y1), y0, other), out)
    first, end = ys[0][cols], ys[last][cols]
    if kind == 1:
        k_hi = (ys[last] - ys[last - 1])[cols] / (xs[last] - xs[last - 1])
        k_lo = (ys[1] - ys[0])[cols] / (xs[1] - xs[0])
        out = np.where(xb >= xs[last], end, out)
        out = np.where(xb > xs[last], end + k_hi * (xb - xs[last]), out)
        out = np.where(xb < xs[0], first + k_lo * (xb - xs[0]), out)
        return np.where(xb == xs[0], first, out)
    out = np.where(xb >= xs[last], end, out)
    return np.where(xb <= xs[0], first, out)


LOOKUP_KINDS = {"interpolate": 0, "extrapolate": 1, "hold_backward": 2}
"""Lookup kinds by the code :func:`lookup_runs` takes."""


def lookup_many_runs(
    tables: tuple[tuple[np.ndarray, np.ndarray, str, bool], ...], index: np.ndarray, x: Num
) -> np.ndarray:
    """:func:`lookup_many` where some elements' tables are redrawn per sample.

    Each of `tables` is ``(xs, ys, kind, runs)``: the model's own table
    (`runs` false, as :func:`lookup_many` reads it) or one redrawn per sample
    (`runs` true: `xs` ``(K,)`` and `ys` ``(K, m)``, read as :func:`lookup_runs`
    reads them, each value from its own sample's table).
    """
    x = np.asarray(x, dtype=float)
    m = max((ys.shape[1] for _, ys, _, runs in tables if runs), default=1)
    shape = np.broadcast_shapes(index.shape, x.shape, (m,))
    xb = np.broadcast_to(x, shape)
    ib = np.broadcast_to(index, shape)
    cols = np.broadcast_to(np.arange(m), shape)
    out = np.empty(shape)
    funcs = {"interpolate": lookup, "extrapolate": lookup_extrapolate, "hold_backward": lookup_hold}
    for k, (xs, ys, kind, runs) in enumerate(tables):
        mask = ib == k
        if not mask.any():
            continue
        if runs:
            out[mask] = _runs_at(LOOKUP_KINDS[kind], xs, ys, xb[mask], cols[mask])
        else:
            out[mask] = funcs[kind](xs, ys, xb[mask])
    return out


NAMESPACE = {
    "np": np,
    "_full": full,
    "_full2": full2,
    "_fulls": fulls,
    "_shaped": shaped,
    "_assemble": assemble,
    "_lookup_many": lookup_many,
    "_lookup_many_runs": lookup_many_runs,
    "_f": as_float,
    "_uniform": uniform,
    "_delay_order": delay_order,
    "_fixed_order": fixed_order,
    "_xidz": xidz,
    "_zidz": zidz,
    "_quantum": quantum,
    "_modulo": modulo,
    "_step": step,
    "_ramp": ramp,
    "_pulse": pulse,
    "_lookup": lookup,
    "_lookup_extrapolate": lookup_extrapolate,
    "_lookup_hold": lookup_hold,
    "_series": series,
    "_put": put,
    "_lookup_runs": lookup_runs,
}
"""Names the generated code may use, besides its own lookup tables."""
