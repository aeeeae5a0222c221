"""Elementary functions the compiler can vectorise, for the numba backend.

LLVM vectorises a loop over samples only if every operation in it has a vector
form. ``exp``, ``log`` and ``pow`` from the C library do not (numba's LLVM is
built without a vector math library), so a loop calling them runs one sample at
a time. The functions here are plain arithmetic, bit operations and selects,
with no branches and no library calls, so they vectorise with the code around
them. They are written directly in LLVM's intermediate representation (as
numba intrinsics, each an always-inlined function): as numba functions, their
inlining into large kernels multiplied compilation time.

Accuracy (tested in ``tests/test_vecmath.py`` against numpy):

- :func:`exp`: Cody-Waite reduction ``x = k ln2 + r``, ``|r| <= ln2/2``, then
  the Taylor series of ``exp(r)`` to degree 13 (truncation below ``2**-60``),
  evaluated by Estrin's scheme with fused multiply-adds; within 2 ulp.
- :func:`log`: ``x = 2**e m`` with ``m`` in ``[sqrt(1/2), sqrt(2))`` read from
  the bits, then ``log(m) = 2 atanh(s)``, ``s = (m - 1)/(m + 1)``, by its
  series to ``s**23``; within 1 ulp.
- :func:`power`: ``exp(y log|x|)`` with C99's special cases (negative bases
  with whole exponents, zeros, infinities, NaN); the rounding of ``y log|x|``
  makes the relative error grow with ``|y log x|``: about ``(2 + |y ln x|)``
  ulp, below ``1e-13`` for any finite result.

Special values (0, subnormals, infinities, NaN) give numpy's results.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable
from typing import Any

from llvmlite import ir
from numba import types
from numba.extending import intrinsic

from armsdyn.ensemble._numba import table_slopes

_F64 = ir.DoubleType()
_I64 = ir.IntType(64)

_LN2_HI = 6.93147180369123816490e-01  # ln 2 to 32 bits: k * _LN2_HI is exact for |k| < 2**21
_LN2_LO = 1.90821492927058770002e-10  # ln 2 - _LN2_HI
_INV_LN2 = 1.44269504088896338700e00
_EXP_MAX = 709.782712893384  # exp overflows above this
_EXP_MIN = -745.1332191019412  # exp underflows to 0 below this
_EXP_TAYLOR = [1.0 / math.factorial(n) for n in range(14)]
_ATANH = [2.0 / (2 * n + 3) for n in range(11)]  # 2 atanh(s) = 2s + s z (2/3 + 2/5 z + ... + 2/23 z**10), z = s**2
_SQRT2 = 1.4142135623730951
_TINY = 2.2250738585072014e-308  # smallest normal number
_TWO54 = 18014398509481984.0


class Emit:
    """Shorthands for building floating-point IR."""

    def __init__(self, builder: ir.IRBuilder) -> None:
        self.b = builder

    @staticmethod
    def c(value: float) -> ir.Constant:
        return ir.Constant(_F64, value)

    def fma(self, a: Any, b: Any, c: Any) -> Any:
        return self.b.fma(a, b, c)

    def mul(self, a: Any, b: Any) -> Any:
        return self.b.fmul(a, b)

    def cmp(self, op: str, a: Any, b: Any) -> Any:
        return self.b.fcmp_ordered(op, a, b)

    def select(self, cond: Any, a: Any, b: Any) -> Any:
        return self.b.select(cond, a, b)

    def is_nan(self, x: Any) -> Any:
        return self.b.fcmp_unordered("uno", x, x)

    def estrin(self, x: Any, coeffs: list[float]) -> Any:
        """``sum(coeffs[i] * x**i)`` by Estrin's scheme: short dependency chains, one rounding per fma."""
        terms = [self.c(a) for a in coeffs]
        power = x
        while len(terms) > 1:
            pairs = [terms[i : i + 2] for i in range(0, len(terms), 2)]
            terms = [self.fma(p[1], power, p[0]) if len(p) == 2 else p[0] for p in pairs]
            power = self.mul(power, power) if len(terms) > 1 else power
        return terms[0]


def _exp_body(e: Emit, x: Any) -> Any:
    b = e.b
    # Clamped so that k converts to an integer; out-of-range results are set below.
    xc = e.select(e.cmp("<", x, e.c(-746.0)), e.c(-746.0), x)
    xc = e.select(e.cmp(">", xc, e.c(710.0)), e.c(710.0), xc)
    xc = e.select(e.is_nan(x), e.c(0.0), xc)
    rint = b.module.declare_intrinsic("llvm.rint", [_F64])
    k = b.call(rint, [e.mul(xc, e.c(_INV_LN2))])
    minus_k = b.fneg(k)
    r = e.fma(minus_k, e.c(_LN2_LO), e.fma(minus_k, e.c(_LN2_HI), xc))
    p = e.estrin(r, _EXP_TAYLOR)
    # 2**k as two factors, so that subnormal results (k < -1022) come out right.
    ki = b.fptosi(k, _I64)
    k1 = b.ashr(ki, ir.Constant(_I64, 1))
    k2 = b.sub(ki, k1)

    def two_to(n: Any) -> Any:
        return b.bitcast(b.shl(b.add(n, ir.Constant(_I64, 1023)), ir.Constant(_I64, 52)), _F64)

    y = e.mul(e.mul(p, two_to(k1)), two_to(k2))
    y = e.select(e.cmp(">", x, e.c(_EXP_MAX)), e.c(math.inf), y)
    y = e.select(e.cmp("<", x, e.c(_EXP_MIN)), e.c(0.0), y)
    return e.select(e.is_nan(x), x, y)


def _log_body(e: Emit, x: Any) -> Any:
    b = e.b
    tiny = e.cmp("<", x, e.c(_TINY))
    xs = e.select(tiny, e.mul(x, e.c(_TWO54)), x)  # subnormals: scale into the normal range first
    bits = b.bitcast(xs, _I64)
    exponent = b.and_(b.lshr(bits, ir.Constant(_I64, 52)), ir.Constant(_I64, 0x7FF))
    exponent = b.sub(exponent, b.select(tiny, ir.Constant(_I64, 1023 + 54), ir.Constant(_I64, 1023)))
    mantissa = b.or_(b.and_(bits, ir.Constant(_I64, 0x000FFFFFFFFFFFFF)), ir.Constant(_I64, 0x3FF0000000000000))
    m = b.bitcast(mantissa, _F64)  # in [1, 2)
    big = e.cmp(">", m, e.c(_SQRT2))
    m = e.select(big, e.mul(m, e.c(0.5)), m)
    exponent = b.add(exponent, b.zext(big, _I64))
    f = b.fsub(m, e.c(1.0))
    s = b.fdiv(f, b.fadd(e.c(2.0), f))
    z = e.mul(s, s)
    p = e.estrin(z, _ATANH)
    # log(1 + f) = 2s + s z p, written as f - s (f - z p) to keep f's bits.
    lg = b.fsub(f, e.mul(s, b.fsub(f, e.mul(z, p))))
    ef = b.sitofp(exponent, _F64)
    y = e.fma(ef, e.c(_LN2_HI), e.fma(ef, e.c(_LN2_LO), lg))
    y = e.select(e.cmp("==", x, e.c(0.0)), e.c(-math.inf), y)
    y = e.select(e.cmp("==", x, e.c(math.inf)), e.c(math.inf), y)
    y = e.select(e.cmp("<", x, e.c(0.0)), e.c(math.nan), y)
    return e.select(e.is_nan(x), x, y)


def _power_body(e: Emit, x: Any, y: Any) -> Any:
    b = e.b
    fabs = b.module.declare_intrinsic("llvm.fabs", [_F64])
    trunc = b.module.declare_intrinsic("llvm.trunc", [_F64])
    r = b.call(
        _function(b.module, "exp", _exp_body),
        [e.mul(y, b.call(_function(b.module, "log", _log_body), [b.call(fabs, [x])]))],
    )
    # A negative base (or -0) has a real power only for whole exponents; odd ones negate it.
    half = e.mul(y, e.c(0.5))
    odd = b.fcmp_unordered("!=", b.call(trunc, [half]), half)
    signed = e.select(odd, b.fneg(r), r)
    whole = e.cmp("==", b.call(trunc, [y]), y)
    finite_negative = b.and_(e.cmp("<", x, e.c(0.0)), e.cmp("!=", x, e.c(-math.inf)))
    negative = e.select(whole, signed, e.select(finite_negative, e.c(math.nan), r))
    sign_bit = b.icmp_signed("<", b.bitcast(x, _I64), ir.Constant(_I64, 0))
    r = e.select(sign_bit, negative, r)
    unit = b.and_(e.cmp("==", x, e.c(-1.0)), e.cmp("==", b.call(fabs, [y]), e.c(math.inf)))
    r = e.select(unit, e.c(1.0), r)
    r = e.select(e.cmp("==", y, e.c(1.0)), x, r)
    return e.select(b.or_(e.cmp("==", y, e.c(0.0)), e.cmp("==", x, e.c(1.0))), e.c(1.0), r)


def _function(module: ir.Module, name: str, body: Callable[..., Any]) -> ir.Function:
    """The module's always-inlined function `name` with the IR `body` builds; defined on first use."""
    full = f"armsdyn.vecmath.{name}"
    try:
        return module.get_global(full)
    except KeyError:
        pass
    n_args = body.__code__.co_argcount - 1
    fn = ir.Function(module, ir.FunctionType(_F64, [_F64] * n_args), full)
    fn.linkage = "internal"
    fn.attributes.add("alwaysinline")
    fn.attributes.add("nounwind")
    fn.attributes.add("readnone")
    builder = ir.IRBuilder(fn.append_basic_block())
    builder.ret(body(Emit(builder), *fn.args))
    return fn


def ir_function(name: str, body: Callable[..., Any]) -> Callable[..., Any]:
    """A numba intrinsic computing ``body(emit, *floats)``: numbers in (any numeric type, as float64), a float64 out.

    `body` builds the IR of an always-inlined function of its float arguments
    (``emit`` is an :class:`Emit`). Inlined by LLVM, not by numba: numba's own
    inlining of many small functions into a large kernel made compiling it slow.
    """
    n_args = body.__code__.co_argcount - 1

    def typer(typingctx: Any, *args: Any) -> Any:
        if not all(isinstance(a, types.Number | types.Boolean) for a in args):
            return None

        def codegen(context: Any, builder: Any, signature: Any, values: Any) -> Any:
            floats = [context.cast(builder, v, t, types.float64) for v, t in zip(values, signature.args, strict=True)]
            return builder.call(_function(builder.module, name, body), floats)

        return types.float64(*args), codegen

    # numba reads the intrinsic's arity from the typing function's own signature.
    typers: dict[int, Callable[..., Any]] = {
        1: lambda typingctx, a: typer(typingctx, a),
        2: lambda typingctx, a, b: typer(typingctx, a, b),
        3: lambda typingctx, a, b, c: typer(typingctx, a, b, c),
        4: lambda typingctx, a, b, c, d: typer(typingctx, a, b, c, d),
    }
    return intrinsic(typers[n_args])


exp = ir_function("exp", _exp_body)
exp.__doc__ = "``e**x``; within 2 ulp of the correctly rounded value."
log = ir_function("log", _log_body)
log.__doc__ = "Natural logarithm; within 1 ulp. ``log(0) = -inf``, negative numbers give NaN."
power = ir_function("power", _power_body)
power.__doc__ = "``x**y`` with numpy's (C99's) special cases; see the module notes for accuracy."


@intrinsic
def prefer_wide_vectors(typingctx: Any) -> Any:
    """Let LLVM use the CPU's widest vectors (512-bit with AVX-512) in the calling function.

    LLVM defaults to 256-bit vectors on Intel CPUs with AVX-512; the function
    attribute ``prefer-vector-width`` lifts that for one function (clang's
    ``-mprefer-vector-width=512``). On CPUs without AVX-512 it changes nothing.
    llvmlite's attribute set accepts only a fixed list of names, so the string
    attribute is added with ``set.add``, in LLVM's own syntax.
    """

    def codegen(context: Any, builder: Any, sig: Any, args: Any) -> Any:
        set.add(builder.function.attributes, '"prefer-vector-width"="512"')
        return context.get_dummy_value()

    return types.none(), codegen


def table_function(kind: str, xs: Any, ys: Any) -> Callable[..., Any]:
    """A vectorisable lookup of one table (see :func:`armsdyn.ensemble._numba.table_slopes` for which).

    `kind` is ``"interpolate"`` (linear, clamped to the end values: ``np.interp``),
    ``"extrapolate"`` (linear continuation of the end segments) or
    ``"hold_backward"`` (the value at the last point at or before ``x``; NaN gives
    the last value, as ``np.searchsorted`` does). `xs` must be sorted and distinct.
    The points are constants in the code: the segment containing ``x`` is chosen
    by a chain of compares and selects, with no branches, loads or calls, so the
    sample loop around it still vectorises. The arithmetic is ``np.interp``'s
    (``slope * (x - x[j]) + y[j]``, slopes computed once), so interpolated values
    agree with it to the last bit.
    """

    xs = [float(v) for v in xs]
    ys = [float(v) for v in ys]
    n = len(xs)
    slopes = table_slopes(kind, xs, ys)
    if slopes is None:
        msg = f"table of {n} points cannot be unrolled"
        raise ValueError(msg)

    def body(e: Emit, x: Any) -> Any:
        b = e.b
        if kind == "hold_backward":
            y = e.c(ys[0])
            for i in range(1, n):
                y = e.select(b.fcmp_unordered(">=", x, e.c(xs[i])), e.c(ys[i]), y)
            return y
        if n == 1:
            return e.c(ys[0])  # np.interp: even for NaN
        xc = x
        if kind == "interpolate":  # clamped: the end points give the end values exactly
            xc = e.select(e.cmp("<", x, e.c(xs[0])), e.c(xs[0]), xc)
            xc = e.select(e.cmp(">", x, e.c(xs[-1])), e.c(xs[-1]), xc)
        xj, yj, sj = e.c(xs[0]), e.c(ys[0]), e.c(slopes[0])
        for i in range(1, n):
            at_or_after = e.cmp(">=", xc, e.c(xs[i]))
            xj = e.select(at_or_after, e.c(xs[i]), xj)
            yj = e.select(at_or_after, e.c(ys[i]), yj)
            sj = e.select(at_or_after, e.c(slopes[min(i, n - 2)]), sj)
        return b.fadd(e.mul(sj, b.fsub(xc, xj)), yj)

    digest = hashlib.sha256(repr((kind, xs, ys)).encode()).hexdigest()[:16]
    return ir_function(f"lookup_{digest}", body)
