"""Equilibria of any model's stocks, their Jacobians, eigenvalues and stability (``armsdyn analyse``).

For each scenario of an experiment, the stocks' derivatives :math:`f(x)` are
evaluated at a given state :math:`x` by running the model itself for one Euler
step from that state, and :math:`f(x) = (x_1 - x)/\\Delta t` is exact for
Euler's method (it is the rate the model integrates). The compiled engine
(:meth:`armsdyn.ensemble.CompiledModel.rates`) sets the stocks and evaluates a
batch of states in one call (the root finder's starts, the Jacobian's
:math:`2n` points); PySD, with ``initial_condition = (t0, {stock: value})``,
evaluates them when the experiment says ``engine = "pysd"`` or the engine
cannot compile the model (warned once, naming the construct). Both give the
same rates to rounding. The experiment's own time step is used,
because some models' flows depend on it (e.g. "remove at most what is left in
one step"). This uses the model file as the single source of the equations,
for Vensim and XMILE models alike, with no re-derivation that could drift.

Equilibria are roots of :math:`f`, found with :func:`scipy.optimize.root`
(MINPACK's hybrid method) from several starts: the scenario's own initial
state, the origin, and seeded random points around the initial state on the
scale of its values. Roots that agree to a relative tolerance are merged. At
each, the Jacobian is taken by central differences, and its eigenvalues give
the verdict:

- ``stable`` (all real parts negative), ``unstable`` (all positive), ``saddle``
  (both signs) or ``non-hyperbolic`` (a real part zero to tolerance);
- the type: ``node``, ``focus`` (complex eigenvalues: the approach or departure
  oscillates) or ``saddle``; e.g. ``"stable focus"``.
- ``undetermined`` when the rates are not finite next to the equilibrium (a
  0/0 at the origin, say): it is reported, with NaN eigenvalues and a note.

Which stocks make the state: by default every stock that feeds back on some
stock's rate (found from PySD's dependency graph); pure accumulators such as
cumulative burdens, which never settle, are left out, so they cannot prevent an
equilibrium of the stocks that drive the dynamics. Stateful smoothing and delay
functions start settled on their input at every evaluated state, so equilibria
are exact but their lags are not in the Jacobian (flagged in ``note``).
Parameters given as time series are evaluated at the initial time (the model
is then not autonomous; flagged too).
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import scipy.optimize
import xarray as xr

from armsdyn.config import Experiment, Scenario, load_config
from armsdyn.ensemble import (
    CompiledModel,
    FallbackWarning,
    RateFunction,
    TimeGrid,
    UnsupportedConstruct,
    compile_model,
)
from armsdyn.errors import ModelError
from armsdyn.model import Model, TimeSettings, pysd_module, quiet_pysd
from armsdyn.richardson import Richardson
from armsdyn.scenario_inputs import batch_inputs

#: Relative tolerance under which a real part of an eigenvalue counts as zero.
ZERO_RTOL = 1e-7
#: Random starts of the root finder, beside the initial state and the origin.
RANDOM_STARTS = 6


class _Flows:
    """Evaluate the stocks' derivatives of one scenario at given states, with a private PySD instance.

    The instance is separate from :class:`armsdyn.model.Model`'s own, so its
    constant-restoring bookkeeping is not disturbed.
    """

    _instances: ClassVar[dict[str, Any]] = {}

    def __init__(self, model: Model, scenario: Scenario, time: TimeSettings, stocks: Sequence[str]) -> None:
        self.model = model
        self.stocks = list(stocks)
        self.vars = [model.variable(s) for s in stocks]
        self.py = [v.py_name for v in self.vars]
        # A subscripted stock contributes one state component per element.
        self.sizes = [math.prod(v.shape) for v in self.vars]
        self.params = model.pysd_values(scenario.pysd_params(), time)
        self.t0 = time.initial
        self.step = time.step
        key = str(model.translation)
        if key not in self._instances:
            with quiet_pysd():
                self._instances[key] = pysd_module().load(key)
        self.pysd = self._instances[key]
        with quiet_pysd():
            self.pysd.reload()  # constants set by an earlier scenario must not leak into this one
        self.evaluations = 0

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """Rates at one state `x` (1-D), or at each row of a batch of states (2-D), one PySD run each."""
        x = np.asarray(x, dtype=float)
        if x.ndim == 2:
            return np.array([self(row) for row in x]).reshape(x.shape)
        self.evaluations += 1
        values: dict[str, float | xr.DataArray] = {}
        for var, part in zip(self.vars, np.split(np.asarray(x, dtype=float), np.cumsum(self.sizes)[:-1]), strict=True):
            if var.dims:
                values[var.py_name] = xr.DataArray(
                    part.reshape(var.shape), coords={n: list(e) for n, e in var.dims}, dims=var.dim_names
                )
            else:
                values[var.py_name] = float(part[0])
        with quiet_pysd():
            try:
                df = self.pysd.run(
                    params=self.params,
                    initial_condition=(self.t0, values),
                    final_time=self.t0 + self.step,
                    time_step=self.step,
                    saveper=self.step,
                    return_columns=self.stocks,
                    flatten_output=False,
                )
            except Exception as exc:
                shown = {k: v.values.tolist() if hasattr(v, "values") else v for k, v in values.items()}
                msg = f"{self.model.path}: PySD failed while evaluating the rates at {shown}: {exc}"
                raise ModelError(msg) from exc
        columns = [
            Model._column(df[s], v).reshape(len(df.index), -1) for s, v in zip(self.stocks, self.vars, strict=True)
        ]
        out = np.concatenate(columns, axis=1)
        return (out[-1] - out[0]) / self.step


def state_labels(model: Model, stocks: Sequence[str]) -> list[str]:
    """One label per state component: a stock's name, or ``"arms[USA]"`` per element of a subscripted one."""
    labels = []
    for name in stocks:
        var = model.variable(name)
        labels += [var.element_name(e) for e in var.elements()] if var.dims else [var.name]
    return labels


def feedback_stocks(model: Model) -> list[str]:
    """Stocks whose values feed back on some stock's rate (model names, sorted).

    A stock that nothing depends on (a pure accumulator such as a cumulative
    cost) is left out: it never settles and does not shape the dynamics.
    """
    deps = model.pysd_model.dependencies  # PySD's dependency graph of the translated model
    stock_of = {f"_integ_{v.py_name}": v.name for v in model.of_kind("stock")}
    by_py = {v.py_name: v for v in model.variables.values()}
    reached: set[str] = set()
    for integ in stock_of:
        stack = list(deps.get(integ, {}).get("step", {}))
        seen: set[str] = set()
        while stack:
            name = stack.pop()
            if name in seen:
                continue
            seen.add(name)
            var = by_py.get(name)
            if var is not None and var.kind == "stock":
                reached.add(var.name)
                continue
            entry = deps.get(name, {})
            if "step" in entry or "initial" in entry:  # a stateful object (SMOOTH, DELAY): follow its inputs
                stack += [*entry.get("step", {}), *entry.get("initial", {})]
            else:
                stack += list(entry)
    return sorted(reached)


def numerical_jacobian(
    f: Callable[[np.ndarray], np.ndarray], x: np.ndarray, scale: np.ndarray | None = None
) -> np.ndarray:
    """Central-difference Jacobian of `f` at `x`, steps relative to ``max(|x|, scale)``.

    `f` takes a batch of states, shape ``(m, n)``, and returns their rates,
    shape ``(m, n)``: the :math:`2n` displaced states are evaluated in one call.
    """
    x = np.asarray(x, dtype=float)
    scale = np.ones_like(x) if scale is None else scale
    h = np.cbrt(np.finfo(float).eps) * np.maximum(np.abs(x), scale)
    steps = np.diag(h)
    rates = np.asarray(f(np.concatenate([x + steps, x - steps])), dtype=float)
    # Column j is (f(x + h_j e_j) - f(x - h_j e_j)) / (2 h_j), exactly as one pair of calls at a time gives it.
    return ((rates[: x.size] - rates[x.size :]) / (2 * h[:, None])).T


def classify(eigenvalues: np.ndarray, scale: float = 1.0) -> tuple[str, str]:
    """Stability and type of an equilibrium from its Jacobian's eigenvalues.

    Parameters
    ----------
    eigenvalues : array_like of complex
        Eigenvalues of the Jacobian.
    scale : float
        Size of the Jacobian's entries; a real part below ``ZERO_RTOL * scale`` counts as zero.

    Returns
    -------
    (str, str)
        Stability (``"stable"``, ``"unstable"``, ``"saddle"``, ``"non-hyperbolic"``)
        and the verdict, e.g. ``"stable node"``, ``"unstable focus"``, ``"saddle"``,
        ``"centre"``.
    """
    ev = np.asarray(eigenvalues, dtype=complex)
    tol = ZERO_RTOL * max(scale, 1e-300)
    re, im = ev.real, ev.imag
    oscillates = bool(np.any(np.abs(im) > tol))
    if np.any(np.abs(re) <= tol):
        if oscillates and np.all(np.abs(re) <= tol):
            return "non-hyperbolic", "centre"
        return "non-hyperbolic", "non-hyperbolic"
    if np.all(re < 0):
        return "stable", "stable focus" if oscillates else "stable node"
    if np.all(re > 0):
        return "unstable", "unstable focus" if oscillates else "unstable node"
    return "saddle", "saddle"


def _starts(x0: np.ndarray, rng: np.random.Generator) -> list[np.ndarray]:
    scale = np.maximum(np.abs(x0), 1.0)
    starts = [x0, np.zeros_like(x0)]
    starts += [x0 + scale * rng.uniform(-10, 10, size=x0.size) for _ in range(RANDOM_STARTS)]
    return starts


def _initial_state(experiment: Experiment, scenario: Scenario, stocks: Sequence[str]) -> np.ndarray:
    """The stocks' values at the initial time of a scenario (one short run)."""
    time = experiment.time
    short = TimeSettings(time.initial, time.initial + time.step, time.step, time.step, time.units)
    out = experiment.model.simulate(scenario.pysd_params(), short, list(stocks))
    return np.concatenate([np.ravel(out[s][0]) for s in stocks])


def _compiled(exp: Experiment) -> CompiledModel | None:
    """The experiment's model compiled, or None (warned, naming the construct) when PySD must evaluate it."""
    try:
        return compile_model(exp.model.path, backend="numpy")  # a few hundred states: no kernel to compile
    except UnsupportedConstruct as exc:
        warnings.warn(f"{exc}; the rates are evaluated with PySD instead", FallbackWarning, stacklevel=3)
        return None


def _compiled_flows(
    exp: Experiment, compiled: CompiledModel, scenario: Scenario, stocks: Sequence[str]
) -> tuple[RateFunction, np.ndarray]:
    """A scenario's rate function on the compiled engine, and the stocks' values at the initial time."""
    inputs = batch_inputs(exp.model, [scenario.parameters])  # the one split every compiled caller uses
    numbers = {k: float(v[0]) for k, v in inputs.samples.items()}
    series = {k: v[0] for k, v in inputs.series.items() if v[0] is not None}
    tables = {k: v[0] for k, v in inputs.lookups.items() if v[0] is not None}
    flows = compiled.rates(stocks, exp.time, numbers, series, tables)
    time = exp.time
    short = TimeSettings(time.initial, time.initial + time.step, time.step, time.step, time.units)
    # Arrays, not a Dataset: building one costs more than the whole analysis of a small model.
    values, n = compiled.normalise_inputs(
        {k: [v] for k, v in numbers.items()},
        {k: [v] for k, v in series.items()} or None,
        {k: [v] for k, v in tables.items()} or None,
    )
    py = [exp.model.variable(s).py_name for s in stocks]
    arrays = compiled.simulate_arrays(values, n, TimeGrid.from_settings(short, compiled.path), py)
    x0 = np.concatenate([np.ravel(a[0, ..., 0]) for a in arrays])
    return flows, x0


def _forward_jacobian(f: Callable[[np.ndarray], np.ndarray]) -> Callable[[np.ndarray], np.ndarray]:
    """MINPACK's own forward-difference Jacobian (``fdjac1``), its n + 1 states evaluated in one batch.

    The same steps and arithmetic as :func:`scipy.optimize.root`'s ``hybr``
    takes without a `jac`, so the root finder follows the same path, in one
    call of `f` per Jacobian instead of n + 1.
    """
    eps = math.sqrt(np.finfo(float).eps)

    def jac(x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=float)
        h = eps * np.abs(x)
        h[h == 0] = eps
        rates = np.asarray(f(np.concatenate([x[None, :], x + np.diag(h)])), dtype=float)
        return ((rates[1:] - rates[0]) / h[:, None]).T

    return jac


def find_equilibria(
    f: Callable[[np.ndarray], np.ndarray], x0: np.ndarray, *, seed: int = 0, tol: float = 1e-9
) -> list[tuple[np.ndarray, int]]:
    """Roots of `f` from several starts around `x0`, merged; each with how many starts reached it.

    `f` takes one state (1-D) or a batch of states (2-D, a row each). A root
    is kept when :math:`\\|f(x)\\|` is below `tol` times the size of
    :math:`f` at the starts (and 1e-12 absolutely).
    """
    rng = np.random.default_rng(seed)
    starts = _starts(np.asarray(x0, dtype=float), rng)
    rate_scale = max(float(np.max(np.abs(f(np.array(starts[:2]))))), 1.0)
    found: list[list[Any]] = []
    for start in starts:
        with np.errstate(all="ignore"):
            sol = scipy.optimize.root(f, start, method="hybr", jac=_forward_jacobian(f), tol=1e-12)
        x = sol.x
        if not np.all(np.isfinite(x)):
            continue
        residual = float(np.max(np.abs(f(x))))
        if not residual <= max(tol * rate_scale, 1e-12):  # NaN rates are no root either
            continue
        for entry in found:
            if np.allclose(entry[0], x, rtol=1e-6, atol=1e-9 * max(1.0, float(np.max(np.abs(x))))):
                entry[1] += 1
                break
        else:
            found.append([x, 1])
    return [(x, n) for x, n in found]


def analyse(
    experiment: Experiment | str | os.PathLike[str],
    *,
    stocks: Sequence[str] | None = None,
    seed: int = 0,
) -> pd.DataFrame:
    """Equilibria of every scenario of an experiment, with Jacobian eigenvalues and a verdict.

    Parameters
    ----------
    experiment : Experiment or path-like
        A validated experiment, or an experiment config file.
    stocks : sequence of str, optional
        Stocks making up the state (model names); default :func:`feedback_stocks`.
        Other stocks are held at their scenario's initial values.
    seed : int
        Seed of the random starts of the root finder.

    Returns
    -------
    pandas.DataFrame
        One row per scenario and equilibrium (a row with verdict ``"no
        equilibrium found"`` when no start converged): ``scenario``,
        ``equilibrium`` (number within the scenario), one column per stock
        (per element, ``"arms[USA]"``, for a subscripted one) with its
        equilibrium value, ``max_rate`` (the largest remaining
        :math:`|f|`), ``starts`` (how many starts reached it), ``non_negative``,
        ``eigenvalue i real``/``eigenvalue i imag`` (sorted by real part),
        ``stability``, ``verdict``, ``jacobian`` (nested list, rows by stock) and
        ``note``.

    Raises
    ------
    ConfigError
        If the config is invalid.
    ModelError
        If a stock name is unknown or the model fails to run.
    """
    exp = experiment if isinstance(experiment, Experiment) else load_config(experiment)
    model = exp.model
    if stocks is None:
        names = feedback_stocks(model)
    else:
        names = []
        for s in stocks:
            try:
                var = model.variable(s)
            except KeyError as exc:
                raise ModelError(exc.args[0]) from None
            if var.kind != "stock":
                msg = f"{model.path}: {var.name!r} is a {var.kind}, not a stock"
                raise ModelError(msg)
            names.append(var.name)
    if not names:
        msg = f"{model.path}: no stock feeds back on the rates, so there are no equilibria to find"
        raise ModelError(msg)
    labels = state_labels(model, names)
    compiled = _compiled(exp) if exp.engine == "compiled" else None
    lagged = [v.name for v in model.of_kind("stateful")]
    rows: list[dict[str, Any]] = []
    for scenario in exp.scenarios:
        notes = []
        if lagged:
            notes.append(f"lags of {', '.join(lagged)} are settled, not in the Jacobian")
        series = [k for k, v in scenario.parameters.items() if isinstance(v, tuple)]
        if series:
            notes.append(f"time series ({', '.join(series)}) evaluated at time {exp.time.initial:g}")
        flows: Callable[[np.ndarray], np.ndarray]
        if compiled is not None:
            flows, x0 = _compiled_flows(exp, compiled, scenario, names)
        else:
            flows = _Flows(model, scenario, exp.time, names)
            x0 = _initial_state(exp, scenario, names)
        roots = find_equilibria(flows, x0, seed=seed)
        if not roots:
            rows.append(
                {
                    "scenario": scenario.name,
                    "equilibrium": 0,
                    "verdict": "no equilibrium found",
                    "note": "; ".join(notes),
                }
            )
            continue
        roots.sort(key=lambda item: tuple(item[0]))
        for i, (x, count) in enumerate(roots):
            jac = numerical_jacobian(flows, x, np.maximum(np.abs(x0), 1.0))
            row_notes = list(notes)
            if np.all(np.isfinite(jac)):
                ev = np.linalg.eigvals(jac).astype(complex)
                ev = ev[np.lexsort((ev.imag, ev.real))]
                stability, verdict = classify(ev, float(np.max(np.abs(jac))) if jac.size else 1.0)
            else:
                # E.g. a 0/0 at the origin: the equilibrium is real, its linearisation is not defined.
                ev = np.full(jac.shape[0], complex(math.nan, math.nan))
                stability, verdict = "undetermined", "undetermined"
                row_notes.append("the rates are not finite next to this equilibrium, so it has no Jacobian")
            row: dict[str, Any] = {"scenario": scenario.name, "equilibrium": i}
            row.update(dict(zip(labels, x, strict=True)))
            row["max_rate"] = float(np.max(np.abs(flows(x))))
            row["starts"] = count
            row["non_negative"] = bool(np.all(x >= 0))
            for j, value in enumerate(ev, start=1):
                row[f"eigenvalue {j} real"] = value.real
                row[f"eigenvalue {j} imag"] = value.imag
            row.update(
                {"stability": stability, "verdict": verdict, "jacobian": jac.tolist(), "note": "; ".join(row_notes)}
            )
            rows.append(row)
    table = pd.DataFrame(rows)
    table.attrs["stocks"] = labels
    table.attrs["time"] = exp.time.initial
    return table


def summarise(table: pd.DataFrame, stocks: Sequence[str] | None = None) -> str:
    """A short text table of :func:`analyse`'s result, for the command line."""
    stocks = list(stocks if stocks is not None else table.attrs.get("stocks", []))
    lines = []
    for row in table.to_dict("records"):
        if row.get("verdict") == "no equilibrium found":
            lines.append(f"{row['scenario']}: no equilibrium found")
            continue
        state = ", ".join(f"{s} = {row[s]:.6g}" for s in stocks)
        ev = []
        j = 1
        while f"eigenvalue {j} real" in row and not _isnan(row[f"eigenvalue {j} real"]):
            re, im = row[f"eigenvalue {j} real"], row[f"eigenvalue {j} imag"]
            ev.append(f"{re:.4g}{im:+.4g}i" if abs(im) > 0 else f"{re:.4g}")
            j += 1
        lines.append(f"{row['scenario']}[{row['equilibrium']}]: {state}; eigenvalues {', '.join(ev)}: {row['verdict']}")
    return "\n".join(lines)


def _isnan(value: Any) -> bool:
    return isinstance(value, float) and math.isnan(value)


def richardson_check(values: Mapping[str, float]) -> dict[str, Any]:
    """Closed-form equilibrium, eigenvalues and stability of Richardson's model (for comparison).

    `values` are keyed by the model names in :data:`armsdyn.richardson.PARAMETER_NAMES`.
    """

    model = Richardson.from_values(values)
    return {"equilibrium": model.equilibrium(), "eigenvalues": model.eigenvalues(), "stability": model.stability()}
