"""Closed-form analysis of Richardson's arms-race model, for two states and for N.

The model is the linear system

.. math::

    \\dot x = k\\,y - a\\,x + g, \\qquad \\dot y = l\\,x - b\\,y + h,

with defence coefficients :math:`k, l`, fatigue coefficients :math:`a, b` and
grievances :math:`g, h`. Writing :math:`z = (x, y)`, :math:`\\dot z = J z + c`
with :math:`J = \\begin{pmatrix} -a & k \\\\ l & -b \\end{pmatrix}` and
:math:`c = (g, h)`. When :math:`\\det J = ab - kl \\ne 0` the unique equilibrium
is :math:`z^* = -J^{-1} c`; it is stable exactly when :math:`ab > kl` (for
positive fatigue). When :math:`ab < kl` the equilibrium is a saddle and the
trajectory runs away, upward (a runaway race) or downward (a disarmament
spiral), depending on which side of the stable manifold it starts.

References
----------
.. [1] Richardson, L. F. (1960). *Arms and Insecurity*. Pittsburgh: Boxwood Press.
.. [2] Braun, M. (1993). *Differential Equations and Their Applications*, 4th ed.,
   section 4.5. New York: Springer. https://doi.org/10.1007/978-1-4612-4360-1
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import scipy.linalg

#: Model names of the Richardson parameters in ``models/richardson.mdl``.
PARAMETER_NAMES: dict[str, str] = {
    "k": "defence coefficient k",
    "l": "defence coefficient l",
    "a": "fatigue coefficient a",
    "b": "fatigue coefficient b",
    "g": "grievance g",
    "h": "grievance h",
    "x0": "initial arms X",
    "y0": "initial arms Y",
}

#: Relative tolerance under which ``a*b - k*l`` counts as zero.
DEGENERATE_RTOL = 1e-12


@dataclass(frozen=True)
class Richardson:
    """Parameters of Richardson's model, with its closed-form analysis.

    Parameters
    ----------
    k, l : float
        Defence coefficients of X and Y (1/time).
    a, b : float
        Fatigue coefficients of X and Y (1/time).
    g, h : float
        Grievances of X and Y (arms/time).
    """

    k: float
    l: float  # noqa: E741 - Richardson's own symbol
    a: float
    b: float
    g: float
    h: float

    @classmethod
    def from_values(cls, values: Mapping[str, float]) -> Richardson:
        """Build from a mapping keyed by the model names in :data:`PARAMETER_NAMES`."""
        return cls(**{sym: float(values[PARAMETER_NAMES[sym]]) for sym in "klabgh"})

    @property
    def jacobian(self) -> np.ndarray:
        """The constant Jacobian :math:`J` of the system."""
        return np.array([[-self.a, self.k], [self.l, -self.b]])

    @property
    def determinant(self) -> float:
        """:math:`ab - kl`; its sign decides stability."""
        return self.a * self.b - self.k * self.l

    def is_degenerate(self) -> bool:
        """True when :math:`ab = kl` (to rounding): no isolated equilibrium."""
        scale = max(abs(self.a * self.b), abs(self.k * self.l), 1e-300)
        return abs(self.determinant) <= DEGENERATE_RTOL * scale

    def equilibrium(self) -> np.ndarray | None:
        """The equilibrium :math:`(x^*, y^*)`, or None when the system is degenerate."""
        if self.is_degenerate():
            return None
        return np.linalg.solve(self.jacobian, -np.array([self.g, self.h]))

    def eigenvalues(self) -> np.ndarray:
        """Eigenvalues of the Jacobian, sorted by real part (largest last), as complex."""
        ev = np.linalg.eigvals(self.jacobian).astype(complex)
        return ev[np.argsort(ev.real, kind="stable")]

    def stability(self) -> str:
        """``"stable"``, ``"saddle"``, ``"unstable"`` or ``"degenerate"``.

        Decided by the eigenvalues: both with negative real part is stable, one
        positive and one negative a saddle, both positive unstable.
        """
        return _stability(self.is_degenerate(), self.eigenvalues())

    def regime(self, x0: float, y0: float) -> str:
        """Name the arms-race regime of the trajectory starting at ``(x0, y0)``.

        Returns
        -------
        str
            ``"stable equilibrium"`` (converges to an equilibrium with both arms
            non-negative), ``"stable disarmament"`` (converges to an equilibrium
            with negative arms, i.e. arms are driven to zero), ``"runaway race"``
            (diverges with growing arms), ``"disarmament spiral"`` (diverges with
            falling arms), ``"balanced"`` (starts exactly on a saddle's stable
            manifold) or ``"degenerate"``.
        """
        stability = self.stability()
        eq = self.equilibrium()
        if eq is None:
            return "degenerate"
        if stability == "stable":
            return "stable equilibrium" if np.all(eq >= 0) else "stable disarmament"
        # Unstable directions: the sign of the fastest growing mode decides.
        values, vectors = np.linalg.eig(self.jacobian)
        i = int(np.argmax(values.real))
        v = np.real(vectors[:, i])
        coeffs = np.linalg.solve(vectors, np.array([x0, y0]) - eq)
        growth = np.real(coeffs[i]) * v
        scale = max(np.abs([x0, y0, *eq]).max(), 1.0)
        if np.all(np.abs(growth) <= 1e-12 * scale):
            return "balanced"
        return "runaway race" if growth.sum() > 0 else "disarmament spiral"

    def solve(self, x0: float, y0: float, t: np.ndarray, t0: float = 0.0) -> np.ndarray:
        """Exact solution at times `t`, by the matrix exponential.

        Uses the augmented system :math:`\\frac{d}{dt}(z, 1) = \\begin{pmatrix} J & c
        \\\\ 0 & 0\\end{pmatrix} (z, 1)`, which also covers singular :math:`J`.

        Parameters
        ----------
        x0, y0 : float
            Arms at time `t0`.
        t : array_like
            Times at which to evaluate the solution.
        t0 : float
            Initial time.

        Returns
        -------
        numpy.ndarray
            Shape ``(2, len(t))``: rows x and y.
        """
        m = np.zeros((3, 3))
        m[:2, :2] = self.jacobian
        m[:2, 2] = [self.g, self.h]
        start = np.array([x0, y0, 1.0])
        t = np.atleast_1d(np.asarray(t, dtype=float))
        out = np.empty((2, t.size))
        with np.errstate(over="ignore", invalid="ignore"):
            for i, ti in enumerate(t):
                out[:, i] = (scipy.linalg.expm(m * (ti - t0)) @ start)[:2]
        return out


#: Model names of the N-state parameters in ``models/richardson_n.mdl`` (subscripted by state).
N_PARAMETER_NAMES: dict[str, str] = {
    "k": "defence coefficient k",
    "a": "fatigue coefficient a",
    "g": "grievance g",
    "x0": "initial arms",
}


@dataclass(frozen=True, eq=False)
class RichardsonN:
    """Richardson's model for N states, with its closed-form analysis.

    .. math::

        \\dot x_i = \\sum_j k_{ij} x_j - a_i x_i + g_i, \\qquad
        \\dot x = (K - A) x + g, \\quad A = \\mathrm{diag}(a).

    The unique equilibrium (when :math:`A - K` is invertible) is
    :math:`x^* = (A - K)^{-1} g`; it is stable exactly when every eigenvalue of
    :math:`K - A` has a negative real part. With two states this is
    :class:`Richardson` (``k = K[0, 1]``, ``l = K[1, 0]``).

    Parameters
    ----------
    k : array_like, shape (N, N)
        Reaction matrix: row i's response to the arms of column j (1/time);
        the diagonal adds to the state's own fatigue with the opposite sign.
    a : array_like, shape (N,)
        Fatigue coefficients (1/time).
    g : array_like, shape (N,)
        Grievances (arms/time).
    states : sequence of str, optional
        Names of the states (default ``"1"``, ``"2"``, ...).
    """

    k: np.ndarray
    a: np.ndarray
    g: np.ndarray
    states: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        k = np.atleast_2d(np.asarray(self.k, dtype=float))
        a = np.atleast_1d(np.asarray(self.a, dtype=float))
        g = np.atleast_1d(np.asarray(self.g, dtype=float))
        n = a.size
        if k.shape != (n, n) or g.shape != (n,):
            msg = f"k must be {n}x{n} and g of length {n} for {n} fatigue coefficients; got {k.shape} and {g.shape}"
            raise ValueError(msg)
        states = tuple(self.states) or tuple(str(i + 1) for i in range(n))
        if len(states) != n:
            msg = f"{len(states)} state names for {n} states"
            raise ValueError(msg)
        object.__setattr__(self, "k", k)
        object.__setattr__(self, "a", a)
        object.__setattr__(self, "g", g)
        object.__setattr__(self, "states", states)

    @classmethod
    def from_two(cls, model: Richardson) -> RichardsonN:
        """The two-state model as an N-state one (states ``X``, ``Y``)."""
        k = np.array([[0.0, model.k], [model.l, 0.0]])
        return cls(k, np.array([model.a, model.b]), np.array([model.g, model.h]), ("X", "Y"))

    @property
    def n(self) -> int:
        """Number of states."""
        return self.a.size

    @property
    def jacobian(self) -> np.ndarray:
        """The constant Jacobian :math:`K - A`."""
        return self.k - np.diag(self.a)

    @property
    def determinant(self) -> float:
        """:math:`\\det(A - K)`; zero means no isolated equilibrium (``ab - kl`` for two states)."""
        return float(np.linalg.det(-self.jacobian))

    def is_degenerate(self) -> bool:
        """True when :math:`A - K` is singular to rounding: no isolated equilibrium."""
        s = np.linalg.svd(self.jacobian, compute_uv=False)
        return bool(s[-1] <= DEGENERATE_RTOL * max(s[0], 1e-300) * self.n)

    def equilibrium(self) -> np.ndarray | None:
        """The equilibrium :math:`(A - K)^{-1} g`, or None when the system is degenerate."""
        if self.is_degenerate():
            return None
        return np.linalg.solve(-self.jacobian, self.g)

    def eigenvalues(self) -> np.ndarray:
        """Eigenvalues of :math:`K - A`, sorted by real part (largest last), then imaginary part, as complex."""
        ev = np.linalg.eigvals(self.jacobian).astype(complex)
        return ev[np.lexsort((ev.imag, ev.real))]

    def stability(self) -> str:
        """``"stable"`` (all real parts negative), ``"unstable"`` (all positive), ``"saddle"`` or ``"degenerate"``."""
        return _stability(self.is_degenerate(), self.eigenvalues())

    def regime(self, x0: np.ndarray) -> str:
        """Name the regime of the trajectory from `x0`, as :meth:`Richardson.regime` does for two states.

        For an unstable system the fastest growing mode decides: arms along it
        rising in total is a ``"runaway race"``, falling a ``"disarmament spiral"``.
        """
        stability = self.stability()
        eq = self.equilibrium()
        if eq is None:
            return "degenerate"
        if stability == "stable":
            return "stable equilibrium" if np.all(eq >= 0) else "stable disarmament"
        values, vectors = np.linalg.eig(self.jacobian)
        x0 = np.asarray(x0, dtype=float)
        coeffs = np.linalg.solve(vectors, x0 - eq)
        growing = values.real >= values.real.max() - 1e-12 * max(1.0, abs(values.real.max()))
        growth = np.real(vectors[:, growing] @ coeffs[growing])
        scale = max(np.abs(np.concatenate([x0, eq])).max(), 1.0)
        if np.all(np.abs(growth) <= 1e-9 * scale):
            return "balanced"
        return "runaway race" if growth.sum() > 0 else "disarmament spiral"

    def solve(self, x0: np.ndarray, t: np.ndarray, t0: float = 0.0) -> np.ndarray:
        """Exact solution at times `t` by the matrix exponential; shape ``(N, len(t))``."""
        n = self.n
        m = np.zeros((n + 1, n + 1))
        m[:n, :n] = self.jacobian
        m[:n, n] = self.g
        start = np.append(np.asarray(x0, dtype=float), 1.0)
        t = np.atleast_1d(np.asarray(t, dtype=float))
        out = np.empty((n, t.size))
        with np.errstate(over="ignore", invalid="ignore"):
            for i, ti in enumerate(t):
                out[:, i] = (scipy.linalg.expm(m * (ti - t0)) @ start)[:n]
        return out


@dataclass(frozen=True)
class ClosedForms:
    """The closed-form analysis of many parameter sets at once, a row each (see :func:`closed_forms`).

    Row i holds what :class:`Richardson` (or :class:`RichardsonN`) gives for
    parameter set i; a row with a non-finite parameter is left unanalysed.

    Attributes
    ----------
    analysed : numpy.ndarray of bool, shape (m,)
        False where a parameter is not finite (e.g. NaN where it varies over time).
    determinant : numpy.ndarray, shape (m,)
        ``ab - kl`` (``det(A - K)`` for N states); NaN where not analysed.
    equilibrium : numpy.ndarray, shape (m, N)
        NaN where degenerate or not analysed.
    eigenvalues : numpy.ndarray of complex, shape (m, N)
        Sorted as the scalar classes sort them; NaN where not analysed.
    stability, regime : numpy.ndarray of str, shape (m,)
        As :meth:`Richardson.stability` and :meth:`Richardson.regime`; empty
        where not analysed.
    """

    analysed: np.ndarray
    determinant: np.ndarray
    equilibrium: np.ndarray
    eigenvalues: np.ndarray
    stability: np.ndarray
    regime: np.ndarray


def closed_forms(
    k: np.ndarray, a: np.ndarray, g: np.ndarray, x0: np.ndarray, *, two_state: bool = False
) -> ClosedForms:
    """Equilibria, eigenvalues, stability and regimes of many Richardson systems in a few array calls.

    A results table of 10^4 runs needs 10^4 analyses; the scalar classes take
    about 0.1 ms each in Python, these stacked LAPACK calls (the same routines,
    so the same values) a few microseconds.

    Parameters
    ----------
    k : array_like, shape (m, N, N)
        Reaction matrices (zero diagonal for the two-state model, ``k`` and ``l``
        off it, as :meth:`RichardsonN.from_two` builds them).
    a, g, x0 : array_like, shape (m, N)
        Fatigue coefficients, grievances and initial arms.
    two_state : bool
        Analyse as :class:`Richardson` does (N = 2: its degeneracy test, its
        eigenvalue order and its regime rule), else as :class:`RichardsonN`.

    Returns
    -------
    ClosedForms
    """
    k, a, g, x0 = (np.asarray(v, dtype=float) for v in (k, a, g, x0))
    m, n = a.shape
    analysed = np.isfinite(k).all(axis=(1, 2)) & np.isfinite(a).all(axis=1) & np.isfinite(g).all(axis=1)
    analysed &= np.isfinite(x0).all(axis=1)
    # Unanalysed rows get a harmless system (identity fatigue) so that no LAPACK call sees a NaN.
    k, a, g, x0 = (np.where(analysed.reshape(-1, *[1] * (v.ndim - 1)), v, 0.0) for v in (k, a, g, x0))
    a = np.where(analysed[:, None], a, 1.0)
    jacobian = k.copy()
    diagonal = np.arange(n)
    # Two states: -a on the diagonal, as Richardson.jacobian writes it (0 - a would turn -0.0 into 0.0).
    jacobian[:, diagonal, diagonal] = -a if two_state else k[:, diagonal, diagonal] - a
    if two_state:
        ab, kl = a[:, 0] * a[:, 1], k[:, 0, 1] * k[:, 1, 0]
        determinant = ab - kl
        degenerate = np.abs(determinant) <= DEGENERATE_RTOL * np.maximum(np.maximum(np.abs(ab), np.abs(kl)), 1e-300)
    else:
        determinant = np.linalg.det(-jacobian)
        s = np.linalg.svd(jacobian, compute_uv=False)
        degenerate = s[:, -1] <= DEGENERATE_RTOL * np.maximum(s[:, 0], 1e-300) * n
    ok = analysed & ~degenerate
    equilibrium = np.full((m, n), np.nan)
    if ok.any():
        # The scalar forms solve J z = -c (two states) and (-J) z = g (N states): the same values either way.
        rhs = -g[ok] if two_state else g[ok]
        equilibrium[ok] = np.linalg.solve(jacobian[ok] if two_state else -jacobian[ok], rhs[..., None])[..., 0]
    ev = np.linalg.eigvals(jacobian).astype(complex)
    order = np.argsort(ev.real, axis=1, kind="stable") if two_state else np.lexsort((ev.imag, ev.real), axis=1)
    ev = np.take_along_axis(ev, order, axis=1)
    re = ev.real
    stability = np.where(np.all(re < 0, axis=1), "stable", np.where(np.all(re > 0, axis=1), "unstable", "saddle"))
    stability = np.where(degenerate, "degenerate", stability).astype(object)
    with np.errstate(invalid="ignore"):
        non_negative = np.all(equilibrium >= 0, axis=1)
    regime = np.where(non_negative, "stable equilibrium", "stable disarmament").astype(object)
    regime[degenerate] = "degenerate"
    moving = ok & (stability != "stable")
    if moving.any():
        regime[moving] = _growth_regimes(jacobian[moving], equilibrium[moving], x0[moving], two_state)
    ev[~analysed] = complex(np.nan, np.nan)
    determinant = np.where(analysed, determinant, np.nan)
    stability[~analysed] = ""
    regime[~analysed] = ""
    return ClosedForms(analysed, determinant, equilibrium, ev, stability, regime)


def _growth_regimes(jacobian: np.ndarray, eq: np.ndarray, x0: np.ndarray, two_state: bool) -> np.ndarray:
    """Regimes of non-stable systems: the fastest growing mode decides (rows as in :func:`closed_forms`)."""
    values, vectors = np.linalg.eig(jacobian)
    coeffs = np.linalg.solve(vectors, (x0 - eq)[..., None])[..., 0]
    scale = np.maximum(np.abs(np.concatenate([x0, eq], axis=1)).max(axis=1), 1.0)
    if two_state:
        i = np.argmax(values.real, axis=1)
        v = np.real(np.take_along_axis(vectors, i[:, None, None], axis=2)[..., 0])
        growth = np.real(np.take_along_axis(coeffs, i[:, None], axis=1)) * v
        small = 1e-12 * scale
    else:
        top = values.real.max(axis=1, keepdims=True)
        growing = values.real >= top - 1e-12 * np.maximum(1.0, np.abs(top))
        growth = np.real(np.einsum("mij,mj->mi", vectors, np.where(growing, coeffs, 0)))
        small = 1e-9 * scale
    balanced = np.all(np.abs(growth) <= small[:, None], axis=1)
    regime = np.where(growth.sum(axis=1) > 0, "runaway race", "disarmament spiral")
    return np.where(balanced, "balanced", regime)


def _stability(degenerate: bool, eigenvalues: np.ndarray) -> str:
    """The stability class from the eigenvalues, shared by the two-state and N-state forms."""
    if degenerate:
        return "degenerate"
    re = eigenvalues.real
    if np.all(re < 0):
        return "stable"
    if np.all(re > 0):
        return "unstable"
    return "saddle"
