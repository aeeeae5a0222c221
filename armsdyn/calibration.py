"""Calibrate a model's parameters to historical data (``armsdyn calibrate CONFIG``).

Four estimators are offered:

- ``method = "trajectory"`` (the default): trajectory matching. The model is
  simulated (with PySD, or the ensemble engine) for trial parameter values and
  :func:`scipy.optimize.least_squares` minimises the differences between the
  simulated and observed series at the observed times. Standard errors come from
  the Jacobian at the estimate, :math:`\\operatorname{cov} = s^2 (J^T J)^{-1}` with
  :math:`s^2` the residual variance on :math:`n - p` degrees of freedom, and 95%
  intervals use Student's t; a residual bootstrap (``bootstrap = N``) gives
  percentile intervals that do not lean on the linearisation.
- ``method = "richardson_combined"``: Richardson's own analysis of 1909-1913.
  Adding his two equations for symmetric alliances gives
  :math:`\\frac{d}{dt}(U+V) = \\kappa\\,(U + V - c)`; he estimated
  :math:`\\kappa` and :math:`c` by regressing the yearly increments of
  :math:`U+V` on its yearly means (:func:`richardson_combined_fit`).
- ``method = "lagged"``: Richardson's equations as discrete-time regressions,
  each state's yearly change on both states' arms the year before
  (:func:`lagged_equations`), fitted jointly by seemingly unrelated regression
  (``estimator = "sur"``) or one by one (``"ols"``) with :func:`fit_system`;
  ``transform = "differenced"`` regresses changes of changes instead.
- ``method = "bayes"``: the trajectory fit's posterior, sampled with emcee on
  the compiled engine (:func:`sample_posterior`, in Richardson's mode
  coordinates where the fit lies on its ridge), with convergence checked
  (:func:`convergence_report`), a posterior predictive figure and the posterior
  probability that the race is stable. :func:`calibrate_many` calibrates one
  model to several data sets, their posteriors sampled together (a coverage
  study over simulated races).

Further specifications of the same question (``[[specifications]]``) are fitted
beside the config's own and ranked by AIC and BIC within groups fitted to the
same observations (:func:`compare_specifications`).

A calibration config looks like::

    [experiment]
    name = "calibrate_cold_war"
    description = "free text"
    model = "../models/richardson.mdl"

    [time]                      # optional; default: the data's first and last times
    initial = 1955
    final = 1988
    step = 0.0625
    saveper = 1                 # every observed time must be a saved time

    [parameters]                # optional fixed overrides (model constants)
    "grievance h" = 0

    [data]
    file = "../models/data/cold_war.csv"   # relative to this config file
    kind = "nmc"                # csv, nmc or sipri (see armsdyn.data)
    columns = { USA = "arms X", RUS = "arms Y" }   # data series -> model variable
    # series mapped to the same variable are summed (an alliance)
    years = [1955, 1988]        # optional
    scale = 1e-6                # optional factor applied to the data ...
    units = "billion current US dollars"   # ... then state the resulting units

    [calibration]
    name = "full model"         # optional: this specification's name in comparison.csv
    method = "trajectory"       # or "richardson_combined", "lagged", "bayes"
    # estimator = "sur"         # lagged only: "sur" (jointly) or "ols" (one by one)
    # transform = "levels"      # lagged only: "levels" or "differenced"
    loss = "linear"             # or the robust "soft_l1", "huber"
    f_scale = 1.0               # residual size where a robust loss turns (data units)
    bootstrap = 200             # optional residual-bootstrap replicates
    seed = 1
    engine = "compiled"         # the default: the compiled engine; "pysd" gives the same fit, slower

    [calibration.parameters]    # constants to fit: initial guess and bounds
    "defence coefficient k" = { initial = 0.1, bounds = [0, 2] }

    [calibration.initial_values]   # stocks whose initial value to fit ...
    "arms X" = { bounds = [0, 100] }   # initial guess: the first observation
    "arms Y" = "observed"       # ... or to fix at the first observation

    [calibration.priors]        # bayes only (with walkers, steps, burn, coordinates in [calibration])
    "grievance g" = { normal = [0, 10] }   # others: uniform on their bounds

    [[specifications]]          # optional, any number: fitted beside and ranked by AIC/BIC
    name = "no reaction"
    method = "lagged"           # trajectory or lagged (default: the config's own)
    fix = { "defence coefficient k" = 0, "defence coefficient l" = 0 }   # held, not fitted
    data = { file = "share_gdp.csv", scale = 100, units = "percent of GDP" }  # [data] keys replaced

The results folder holds ``estimates.csv``, ``derived.csv`` (for Richardson's
model: :math:`ab - kl` and the stability verdict), ``fit.csv`` (observed,
fitted, residual), ``covariance.csv``, ``bootstrap.csv`` (when asked),
``diagnostics.csv`` (Ljung-Box, Durbin-Watson, ADF, KPSS, Engle-Granger for each
pair, Johansen's trace test for the system, AIC/BIC and a one-line verdict; see
:func:`diagnose`),
``comparison.csv`` and ``specifications.csv`` (with ``[[specifications]]``: the
ranking, and every specification's estimates),
``posterior.csv`` and ``posterior_predictive.csv`` (method ``bayes``),
``data.csv`` (the observations used), ``summary.json``, ``figures/`` and
``manifest.json``; it is written atomically like a run's results folder.

References
----------
.. [1] Richardson, L. F. (1960). *Arms and Insecurity*. Pittsburgh: Boxwood Press.
.. [2] Braun, M. (1993). *Differential Equations and Their Applications*, 4th ed.,
   section 4.5. New York: Springer.
.. [3] Bates, D. M. and Watts, D. G. (1988). *Nonlinear Regression Analysis and Its
   Applications*, ch. 2. New York: Wiley.
.. [4] Zellner, A. (1962). An efficient method of estimating seemingly unrelated
   regressions and tests for aggregation bias. *Journal of the American Statistical
   Association* 57, 348-368.
.. [5] Burnham, K. P. and Anderson, D. R. (2002). *Model Selection and Multimodel
   Inference*, 2nd ed., section 2.6. New York: Springer.
.. [6] Greene, W. H. (2012). *Econometric Analysis*, 7th ed., section 10.2. Boston: Pearson.
.. [7] Foreman-Mackey, D., Hogg, D. W., Lang, D. and Goodman, J. (2013). emcee: the MCMC
   hammer. *Publications of the Astronomical Society of the Pacific* 125, 306-312.
.. [8] ter Braak, C. J. F. and Vrugt, J. A. (2008). Differential evolution Markov chain with
   snooker updater and fewer chains. *Statistics and Computing* 18, 435-446.
.. [9] Box, G. E. P. and Tiao, G. C. (1973). *Bayesian Inference in Statistical Analysis*,
   section 2.4. Reading, MA: Addison-Wesley.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import itertools
import json
import math
import os
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, cast

import numpy as np
import pandas as pd
import scipy.linalg
import scipy.optimize
import scipy.special
import scipy.stats
from statsmodels.stats.diagnostic import acorr_ljungbox
from statsmodels.stats.stattools import durbin_watson
from statsmodels.tools.sm_exceptions import CollinearityWarning, InterpolationWarning
from statsmodels.tsa.stattools import adfuller, coint, kpss

from armsdyn.calibration_config import (
    DATA_KINDS,
    ENGINES,
    LOSSES,
    METHODS,
    RICHARDSON_STOCKS,
    CalibrationSpec,
    DataSpec,
    FittedParameter,
    LaggedSystem,
    lagged_system,
    lagged_usable,
    load_calibration,
    on_regular_grid,
    parse_calibration,
)
from armsdyn.config import (
    ParameterValue,
    Scenario,
)
from armsdyn.ensemble import CompiledModel, FallbackWarning, TimeGrid, UnsupportedConstruct, compile_model
from armsdyn.errors import ConfigError, ModelError
from armsdyn.figures import DOUBLE_COLUMN, SINGLE_COLUMN, paper_style, save_figure
from armsdyn.model import Model, TimeSettings, file_sha256
from armsdyn.output import atomic_folder, build_manifest, now
from armsdyn.richardson import N_PARAMETER_NAMES, PARAMETER_NAMES, Richardson
from armsdyn.scenario_inputs import batch_inputs

__all__ = [
    "DATA_KINDS",
    "ENGINES",
    "LOSSES",
    "METHODS",
    "CalibrationResult",
    "CalibrationSpec",
    "DataSpec",
    "Equation",
    "FittedParameter",
    "SystemFit",
    "TrajectoryFit",
    "calibrate",
    "calibrate_many",
    "compare_specifications",
    "comparison_verdict",
    "convergence_report",
    "diagnose",
    "draw_calibration_figures",
    "fit_system",
    "fit_trajectories",
    "format_summary",
    "identification_note",
    "johansen_test",
    "johansen_text",
    "lagged_equations",
    "load_calibration",
    "near_bound",
    "one_step_levels",
    "parse_calibration",
    "richardson_combined_fit",
    "richardson_stability",
    "sample_posterior",
    "spectral_verdict",
    "stability_verdict",
    "write_calibration",
]


ESTIMATES_FILE = "estimates.csv"
DERIVED_FILE = "derived.csv"
FIT_FILE = "fit.csv"
COVARIANCE_FILE = "covariance.csv"
BOOTSTRAP_FILE = "bootstrap.csv"
DATA_FILE = "data.csv"
SUMMARY_FILE = "summary.json"
DIAGNOSTICS_FILE = "diagnostics.csv"
COMPARISON_FILE = "comparison.csv"
SPECIFICATIONS_FILE = "specifications.csv"
POSTERIOR_FILE = "posterior.csv"
PREDICTIVE_FILE = "posterior_predictive.csv"
#: Significance level of the diagnostic tests.
ALPHA = 0.05


@dataclass(frozen=True)
class TrajectoryFit:
    """The result of :func:`fit_trajectories`.

    Attributes
    ----------
    estimates : pandas.DataFrame
        Index ``parameter``; columns ``estimate``, ``std_error``, ``ci_low``,
        ``ci_high`` (95%, Student's t on n - p degrees of freedom), ``initial``,
        ``lower``, ``upper``, ``at_bound``.
    covariance : pandas.DataFrame
        Estimated covariance of the estimates.
    fit : pandas.DataFrame
        Tidy: ``variable``, ``time``, ``observed``, ``fitted``, ``residual``.
    trajectories : pandas.DataFrame
        The fitted model's variables at every saved time (for figures).
    statistics : dict
        ``n_observations``, ``n_parameters``, ``dof``, ``rmse``, ``r2`` (pooled),
        per-variable ``rmse`` and ``r2``, ``sigma``, ``cost``, ``nfev``,
        ``converged`` and the optimiser's ``message``.
    """

    estimates: pd.DataFrame
    covariance: pd.DataFrame
    fit: pd.DataFrame
    trajectories: pd.DataFrame
    statistics: dict[str, Any]


@dataclass(frozen=True)
class CalibrationResult:
    """What :func:`calibrate` found; :func:`write_calibration` writes it.

    Attributes
    ----------
    spec : CalibrationSpec
        The calibration config.
    estimates : pandas.DataFrame
        One row per estimated quantity (see :class:`TrajectoryFit`), with
        ``bootstrap_low``/``bootstrap_high`` when a bootstrap ran, and ``units``.
    derived : pandas.DataFrame
        Quantities computed from the estimates (for Richardson's model:
        ``ab - kl``, equilibrium, eigenvalues), same columns where they apply.
    fit : pandas.DataFrame
        Observed, fitted and residual values.
    covariance : pandas.DataFrame
        Covariance of the estimates.
    bootstrap : pandas.DataFrame or None
        One row per bootstrap replicate.
    summary : dict
        Fit statistics and verdicts (e.g. ``stability``, ``share_stable_bootstrap``).
    trajectories : pandas.DataFrame
        Fitted variables at every saved time.
    started : str
        ISO time the calibration started.
    comparison : pandas.DataFrame or None
        With ``[[specifications]]``: one row per specification (this one first),
        ranked by AIC and BIC within each group fitted to the same observations
        (see :func:`compare_specifications`).
    alternatives : tuple of CalibrationResult
        The other specifications' own results.
    posterior : pandas.DataFrame or None
        For ``method = "bayes"``: posterior draws (thinned), with walker, step,
        log posterior and, for Richardson's models, whether the race is stable.
    predictive : pandas.DataFrame or None
        For ``method = "bayes"``: posterior predictive quantiles (``variable``,
        ``time``, ``low``, ``median``, ``high``, ``path_median``).
    """

    spec: CalibrationSpec
    estimates: pd.DataFrame
    derived: pd.DataFrame
    fit: pd.DataFrame
    covariance: pd.DataFrame
    bootstrap: pd.DataFrame | None
    summary: dict[str, Any]
    trajectories: pd.DataFrame
    started: str
    comparison: pd.DataFrame | None = None
    alternatives: tuple[CalibrationResult, ...] = ()
    posterior: pd.DataFrame | None = None
    predictive: pd.DataFrame | None = None


# --------------------------------------------------------------------------- config


def _compiled_for_many_calls(path: Path) -> CompiledModel:
    """The compiled model with numba's backend when numba is installed and compiles it, else numpy's.

    A fit, its bootstrap and a posterior make thousands of calls of 1 to 100 runs
    each. numpy's generated code pays Python's overhead at every time step of
    every call (about 10 ms a call of Richardson's model over 528 steps), a numba
    kernel almost none (under 0.5 ms); the engine's ``"auto"`` judges each call on
    its own and never switches for so few runs. The kernel compiles once (a few
    seconds, then cached on disk).

    The kernel runs on one thread: a batch of a few hundred runs takes it well
    under a millisecond, less than starting the thread pool the engine would
    start for every call (Richardson's model, 960 runs: 0.18 ms of CPU on one
    thread, 0.7 ms shared between two).
    """
    try:
        compiled = compile_model(path, backend="numba")
        compiled.backend  # noqa: B018 - resolving the backend raises when numba is missing or cannot compile it
    except (ImportError, UnsupportedConstruct):
        return compile_model(path, backend="numpy")
    # A copy (sharing the compiled kernels): the in-process cache's model keeps its threads for other callers.
    compiled = copy.copy(compiled)
    compiled.threads = 1
    return compiled


class _Simulator:
    """Simulate the model for a batch of parameter vectors; values at every saved time.

    The PySD engine runs :meth:`Model.simulate` once per vector; the compiled
    engine runs the batch at once (it matches PySD to rounding), fixed time
    series included (every run reads the same series). A model the compiled
    engine cannot compile is warned about once (:class:`FallbackWarning`,
    naming the construct) and simulated with PySD; with ``fallback=False``
    the :class:`UnsupportedConstruct` is raised instead (a posterior's hundreds
    of thousands of runs are out of PySD's reach).
    """

    def __init__(
        self,
        model: Model,
        time: TimeSettings,
        fixed: Mapping[str, ParameterValue],
        names: Sequence[str],
        variables: Sequence[str],
        engine: str,
        *,
        fallback: bool = True,
    ) -> None:
        self.model = model
        self.fallback = fallback
        self.time = time
        self.names = list(names)
        self.variables = list(variables)
        self.engine = engine
        self.fixed = Scenario("fit", parameters=dict(fixed)).pysd_params()
        # The fixed values as the compiled engine takes them, for one run; every batch repeats them.
        self.inputs = batch_inputs(model, [fixed])
        self.runs = 0
        self.n_saved = len(time.save_times())
        # Each observed variable is a model variable, or one element of a subscripted one ("arms[USA]").
        self.sources: list[tuple[str, tuple[int, ...]]] = []
        for name in self.variables:
            var, element = model.element(name)
            index = () if element is None else tuple(e.index(x) for (_, e), x in zip(var.dims, element, strict=True))
            self.sources.append((var.name, index))
        self.model_variables = list(dict.fromkeys(v for v, _ in self.sources))
        if engine == "compiled":
            try:
                self.compiled = _compiled_for_many_calls(model.path)
            except UnsupportedConstruct as exc:
                if not fallback:
                    raise
                warnings.warn(f"{exc}; the calibration simulates with PySD instead", FallbackWarning, stacklevel=3)
                self.engine = "pysd"
                return
            self.grid = TimeGrid.from_settings(time, model.path)
            self.py_names = [self.compiled.variable(v).py_name for v in self.model_variables]
            self.one_run: tuple[dict[str, np.ndarray], list[str]] | None = None

    def _normalised_one_run(self) -> tuple[dict[str, np.ndarray], list[str]]:
        """The engine's fixed inputs of one run (the fitted names left out), and the fitted names' keys.

        Checked once by the engine (:meth:`CompiledModel.normalise_inputs`), for a
        batch of one: a batch of any size repeats those rows, which is what the
        engine's checks of that many identical runs give, at a fraction of their
        cost (a posterior makes tens of thousands of calls).
        """
        samples = {k: np.asarray(v, dtype=float) for k, v in self.inputs.samples.items()}
        # A fitted element of a constant fixed as a whole replaces its share of the fixed value.
        samples.update({name: np.zeros(1) for name in self.names})
        values, _ = self.compiled.normalise_inputs(samples, self.inputs.series, self.inputs.lookups)
        fitted = list(self.compiled.normalise_samples({name: np.zeros(1) for name in self.names})[0])
        return {k: v for k, v in values.items() if k not in fitted}, fitted

    def __call__(self, thetas: np.ndarray) -> np.ndarray:
        """Shape ``(len(thetas), n_saved, n_variables)``."""
        thetas = np.atleast_2d(thetas)
        self.runs += len(thetas)
        out = np.empty((len(thetas), self.n_saved, len(self.variables)))
        if self.engine == "compiled":
            n = len(thetas)
            # simulate_arrays skips building a Dataset, a third of the cost of a small batch.
            try:
                if self.one_run is None:
                    self.one_run = self._normalised_one_run()
                fixed, fitted = self.one_run
                # Every run has the fixed inputs of the one run (its row of each array, series and
                # lookups alike: the engine's tables are a row per run), and its own fitted values.
                values = {key: np.repeat(row, n, axis=0) for key, row in fixed.items()}
                values.update({key: thetas[:, j] for j, key in enumerate(fitted)})
                try:
                    found = self.compiled.simulate_arrays(values, n, self.grid, self.py_names)
                except UnsupportedConstruct:
                    if self.compiled.backend == "numpy":
                        raise
                    # numba could not compile this kernel (numpy covers more): numpy from now on.
                    self.compiled = compile_model(self.model.path, backend="numpy")
                    found = self.compiled.simulate_arrays(values, n, self.grid, self.py_names)
            except UnsupportedConstruct as exc:
                if not self.fallback:
                    raise
                warnings.warn(f"{exc}; the calibration simulates with PySD instead", FallbackWarning, stacklevel=2)
                self.engine = "pysd"
            else:
                arrays = dict(zip(self.model_variables, found, strict=True))
                for j, (name, index) in enumerate(self.sources):
                    # (saved, *shape, runs) -> (runs, saved) for the one element observed
                    every_run: tuple[slice | int, ...] = (slice(None), *index, slice(None))
                    out[:, :, j] = arrays[name][every_run].T
                return out
        for i, theta in enumerate(thetas):
            params = {**self.fixed, **dict(zip(self.names, map(float, theta), strict=True))}
            values = self.model.simulate(params, self.time, self.model_variables)
            for j, (name, index) in enumerate(self.sources):
                every_time: tuple[slice | int, ...] = (slice(None), *index)
                out[i, :, j] = values[name][every_time]
        return out


def fit_trajectories(
    model: Model,
    observations: pd.DataFrame,
    parameters: Sequence[FittedParameter],
    time: TimeSettings,
    *,
    fixed: Mapping[str, ParameterValue] | None = None,
    loss: str = "linear",
    f_scale: float = 1.0,
    engine: str = "compiled",
) -> TrajectoryFit:
    """Fit constants of `model` so its variables match `observations` (trajectory matching).

    Parameters
    ----------
    model : Model
        The model (see :func:`armsdyn.model.load_model`).
    observations : pandas.DataFrame
        Indexed by time, one column per observed model variable (model names);
        NaN cells are skipped. Every time must be a saved time of `time`.
    parameters : sequence of FittedParameter
        The constants to fit, with starting guesses and bounds.
    time : TimeSettings
        Simulation time settings.
    fixed : mapping, optional
        Other constant overrides.
    loss : {"linear", "soft_l1", "huber"}
        Loss of :func:`scipy.optimize.least_squares`; robust losses damp outliers.
    f_scale : float
        Where a robust loss turns from quadratic to linear, in data units.
    engine : {"compiled", "pysd"}
        Simulate with the compiled engine (the default; its numba kernel when numba is
        installed, see :func:`_compiled_for_many_calls`) or with PySD, one run at a time.

    Returns
    -------
    TrajectoryFit

    Notes
    -----
    Residuals of all series are pooled with equal weight, so series should be in
    comparable units. The Jacobian is taken by forward differences of whole
    simulations (one batch per evaluation). Standard errors are those of the
    linearised least-squares problem; with a robust loss they ignore the
    down-weighting and serve as a guide only. A parameter at a bound has its
    interval clipped there and is flagged ``at_bound``.
    """
    names = [p.name for p in parameters]
    variables = list(observations.columns)
    sim = _Simulator(model, time, fixed or {}, names, variables, engine)
    saved = time.save_times()
    obs_t = observations.index.to_numpy(dtype=float)
    rows = np.array([int(np.argmin(np.abs(saved - t))) for t in obs_t])
    observed = observations.to_numpy(dtype=float)
    mask = np.isfinite(observed)
    big = 1e6 * max(1.0, float(np.nanmax(np.abs(observed))))
    lower = np.array([p.bounds[0] for p in parameters])
    upper = np.array([p.bounds[1] for p in parameters])
    x0 = np.array([p.initial for p in parameters])
    typical = np.maximum(np.abs(x0), np.where(np.isfinite(upper - lower), 1e-3 * (upper - lower), 1e-3))
    typical = np.maximum(typical, 1e-8)

    def residuals_of(batch: np.ndarray) -> np.ndarray:
        sims = sim(batch)[:, rows, :]
        res = sims[:, mask] - observed[mask]
        # A trial that overflows is pushed away by a huge (finite) residual instead of breaking the solver.
        return np.where(np.isfinite(res), res, big)

    cache: dict[bytes, np.ndarray] = {}

    def fun(x: np.ndarray) -> np.ndarray:
        key = x.tobytes()
        if key not in cache:
            cache.clear()
            cache[key] = residuals_of(x[None, :])[0]
        return cache[key]

    def jac(x: np.ndarray) -> np.ndarray:
        h = np.sqrt(np.finfo(float).eps) * np.maximum(np.abs(x), typical)
        h = np.where(x + h > upper, -h, h)  # step inward at an upper bound
        batch = np.vstack([x, x + np.diag(h)])
        res = residuals_of(batch)
        cache.clear()
        cache[x.tobytes()] = res[0]
        return ((res[1:] - res[0]) / h[:, None]).T

    with np.errstate(all="ignore"):
        result = scipy.optimize.least_squares(
            fun, x0, jac=jac, bounds=(lower, upper), loss=loss, f_scale=f_scale, x_scale="jac", max_nfev=2000
        )
    theta = result.x
    res = fun(theta)
    jacobian = jac(theta)
    n, p = res.size, theta.size
    dof = max(n - p, 1)
    sigma2 = float(res @ res) / dof
    cov = sigma2 * np.linalg.pinv(jacobian.T @ jacobian)
    se = np.sqrt(np.clip(np.diag(cov), 0, None))
    tq = float(scipy.stats.t.ppf(0.975, dof))
    at_bound = near_bound(theta, lower, upper)
    estimates = pd.DataFrame(
        {
            "estimate": theta,
            "std_error": se,
            "ci_low": np.maximum(theta - tq * se, lower),
            "ci_high": np.minimum(theta + tq * se, upper),
            "initial": x0,
            "lower": lower,
            "upper": upper,
            "at_bound": at_bound,
        },
        index=pd.Index(names, name="parameter"),
    )
    full = sim(theta[None, :])[0]
    trajectories = pd.DataFrame(full, index=pd.Index(saved, name="time"), columns=variables)
    fitted = full[rows, :]
    tidy = []
    stats: dict[str, Any] = {"rmse_by_variable": {}, "r2_by_variable": {}}
    ss_res_total = ss_tot_total = 0.0
    for j, name in enumerate(variables):
        m = mask[:, j]
        o, f = observed[m, j], fitted[m, j]
        ss_res = float(np.sum((f - o) ** 2))
        ss_tot = float(np.sum((o - o.mean()) ** 2))
        ss_res_total += ss_res
        ss_tot_total += ss_tot
        stats["rmse_by_variable"][name] = math.sqrt(ss_res / m.sum())
        stats["r2_by_variable"][name] = 1 - ss_res / ss_tot if ss_tot > 0 else math.nan
        tidy.append(pd.DataFrame({"variable": name, "time": obs_t[m], "observed": o, "fitted": f, "residual": o - f}))
    stats.update(
        {
            "n_observations": int(n),
            "n_parameters": int(p),
            "dof": int(n - p),
            "rmse": math.sqrt(ss_res_total / n),
            "r2": 1 - ss_res_total / ss_tot_total if ss_tot_total > 0 else math.nan,
            "sigma": math.sqrt(sigma2),
            "cost": float(result.cost),
            "nfev": int(result.nfev),
            "simulations": int(sim.runs),
            "converged": bool(result.status > 0),
            "jacobian_condition": _scaled_condition(jacobian),
            "message": str(result.message),
            "loss": loss,
            "engine": sim.engine,  # "pysd" where the compiled engine fell back
            "backend": sim.compiled.backend if sim.engine == "compiled" else "pysd",
        }
    )
    return TrajectoryFit(
        estimates=estimates,
        covariance=pd.DataFrame(cov, index=names, columns=names),
        fit=pd.concat(tidy, ignore_index=True),
        trajectories=trajectories,
        statistics=stats,
    )


#: An estimate within this fraction of its bound's scale of a bound is flagged ``at_bound``.
BOUND_RTOL = 1e-6
#: ab - kl within this fraction of max(|ab|, |kl|) of zero is numerical noise, not evidence of either sign.
DETERMINANT_NOISE_RTOL = 1e-6
VERDICTS = ("stable", "unstable", "indeterminate")


def near_bound(theta: np.ndarray, lower: np.ndarray, upper: np.ndarray, rtol: float = BOUND_RTOL) -> np.ndarray:
    """True where an estimate sits at or near a bound, relative to the bound's scale.

    The scale is the width of a finite box, else the larger of the bound's size and 1
    (e.g. ``b = 1.2e-10`` in ``[0, 3]`` is at its bound; in ``[0, 1e-9]`` it is not).
    """
    theta, lower, upper = (np.asarray(v, dtype=float) for v in (theta, lower, upper))
    width = upper - lower
    out = np.zeros(theta.shape, dtype=bool)
    for bound in (lower, upper):
        fallback = np.maximum(np.where(np.isfinite(bound), np.abs(bound), 0.0), 1.0)
        scale = np.where(np.isfinite(width), width, fallback)
        with np.errstate(invalid="ignore"):
            out |= np.isfinite(bound) & (np.abs(theta - bound) <= rtol * scale)
    return out


def stability_verdict(
    determinant: float,
    interval: tuple[float, float],
    scale: float,
    bootstrap_interval: tuple[float, float] | None = None,
) -> tuple[str, str]:
    """``stable``, ``unstable`` or ``indeterminate`` for Richardson's ab - kl, with the reason in words.

    Parameters
    ----------
    determinant : float
        The estimate of ab - kl.
    interval : (float, float)
        Its 95% interval (delta method); NaN when unavailable.
    scale : float
        ``max(|ab|, |kl|)``: a determinant within :data:`DETERMINANT_NOISE_RTOL` of it is noise.
    bootstrap_interval : (float, float), optional
        The bootstrap's 2.5% and 97.5% quantiles of ab - kl, when a bootstrap ran.

    Returns
    -------
    verdict, reason : str
        ``indeterminate`` when the determinant is noise, when an interval is missing
        or straddles zero; otherwise the sign decides (stable when ab > kl).
    """
    return _sign_verdict(determinant, interval, scale, bootstrap_interval, "ab - kl", "|ab|, |kl|", stable_above=True)


def _sign_verdict(
    value: float,
    interval: tuple[float, float],
    scale: float,
    bootstrap_interval: tuple[float, float] | None,
    what: str,
    scale_name: str,
    *,
    stable_above: bool,
) -> tuple[str, str]:
    """A stability verdict decided by the sign of `value`, honest about noise and intervals that include zero."""
    if not math.isfinite(value) or abs(value) <= DETERMINANT_NOISE_RTOL * max(scale, 1e-300):
        return "indeterminate", f"{what} = {value:.3g} is zero within numerical noise ({scale_name} ~ {scale:.3g})"
    low, high = interval
    if not (math.isfinite(low) and math.isfinite(high)):
        return "indeterminate", f"{what} has no usable standard error (weakly identified fit)"
    if low <= 0 <= high:
        return "indeterminate", f"the 95% interval of {what} [{low:.3g}, {high:.3g}] includes zero"
    if bootstrap_interval is not None:
        blow, bhigh = bootstrap_interval
        if not (math.isfinite(blow) and math.isfinite(bhigh)) or blow <= 0 <= bhigh:
            return "indeterminate", f"the bootstrap 95% interval of {what} [{blow:.3g}, {bhigh:.3g}] includes zero"
    verdict = "stable" if (value > 0) == stable_above else "unstable"
    return verdict, f"{what} = {value:.3g}, 95% interval [{low:.3g}, {high:.3g}] excludes zero"


def richardson_stability(
    estimates: pd.DataFrame,
    covariance: pd.DataFrame,
    dof: int,
    defaults: Mapping[str, float],
    bootstrap_determinants: np.ndarray | None = None,
) -> dict[str, Any]:
    """ab - kl with its delta-method interval, and the honest verdict (see :func:`stability_verdict`).

    Parameters
    ----------
    estimates : pandas.DataFrame
        Fitted values (column ``estimate``), indexed by model name.
    covariance : pandas.DataFrame
        Their covariance.
    dof : int
        Residual degrees of freedom (Student's t).
    defaults : mapping
        Values of Richardson's parameters that were not fitted (model names).
    bootstrap_determinants : numpy.ndarray, optional
        ab - kl of each converged bootstrap fit.

    Returns
    -------
    dict
        ``model`` (:class:`Richardson` at the estimate), ``determinant``, ``std_error``,
        ``ci_low``, ``ci_high``, ``scale``, ``verdict``, ``reason`` and, with a bootstrap,
        ``bootstrap_low``, ``bootstrap_high``, ``share_stable_bootstrap``.
    """
    est = estimates["estimate"]
    values = {
        name: float(est[name]) if name in est.index else float(defaults[name])
        for name in (PARAMETER_NAMES[sym] for sym in "klabgh")
    }
    model = Richardson.from_values(values)
    # d(ab - kl) / d(k, l, a, b) = (-l, -k, b, a); other parameters do not enter.
    partial = {"k": -model.l, "l": -model.k, "a": model.b, "b": model.a}
    grad = np.array([next((v for s, v in partial.items() if PARAMETER_NAMES[s] == name), 0.0) for name in est.index])
    cov = covariance.loc[list(est.index), list(est.index)].to_numpy(dtype=float)
    var = float(grad @ cov @ grad)
    se = math.sqrt(var) if math.isfinite(var) and var >= 0 else math.nan
    tq = float(scipy.stats.t.ppf(0.975, max(int(dof), 1)))
    det = model.determinant
    out: dict[str, Any] = {
        "model": model,
        "determinant": det,
        "std_error": se,
        "ci_low": det - tq * se,
        "ci_high": det + tq * se,
        "scale": max(abs(model.a * model.b), abs(model.k * model.l)),
    }
    boot_interval = None
    if bootstrap_determinants is not None:
        dets = np.asarray(bootstrap_determinants, dtype=float)
        dets = dets[np.isfinite(dets)]
        boot_interval = (
            (float(np.quantile(dets, 0.025)), float(np.quantile(dets, 0.975))) if dets.size else (math.nan, math.nan)
        )
        out["bootstrap_low"], out["bootstrap_high"] = boot_interval
        out["share_stable_bootstrap"] = float(np.mean(dets > 0)) if dets.size else math.nan
    out["verdict"], out["reason"] = stability_verdict(det, (out["ci_low"], out["ci_high"]), out["scale"], boot_interval)
    return out


#: A column-scaled Jacobian with a larger condition number leaves some combination of parameters unidentified.
CONDITION_LIMIT = 1e6
#: A parameter at a bound in more than this share of bootstrap fits is weakly identified.
BOUND_SHARE_LIMIT = 0.1


def _scaled_condition(jacobian: np.ndarray) -> float:
    """Condition number of the Jacobian with unit-norm columns (insensitive to parameter units)."""
    norms = np.linalg.norm(jacobian, axis=0)
    if not np.all(np.isfinite(jacobian)) or np.any(norms == 0):
        return math.inf
    return float(np.linalg.cond(jacobian / norms))


def identification_note(summary: Mapping[str, Any], estimates: pd.DataFrame) -> str:
    """Weak identification in words: estimates at bounds, bootstrap fits piling at bounds, a collinear Jacobian."""
    notes = []
    flagged = [str(n) for n in estimates.index[estimates["at_bound"].astype(bool)]]
    if flagged:
        notes.append("at a bound: " + ", ".join(flagged))
    converged = summary.get("bootstrap_converged")
    piled = summary.get("bootstrap_at_bound") or {}
    if converged:
        heavy = [f"{n} ({c} of {converged})" for n, c in piled.items() if c > BOUND_SHARE_LIMIT * converged]
        if heavy:
            notes.append("bootstrap fits piling at a bound: " + ", ".join(heavy))
    cond = summary.get("jacobian_condition", math.nan)
    if not math.isfinite(cond) or cond > CONDITION_LIMIT:
        notes.append(f"Jacobian nearly singular (scaled condition number {cond:.2g}): some parameters move together")
    if not notes:
        return "parameters identified (no estimate at a bound; Jacobian well conditioned)"
    return "weakly identified: " + "; ".join(notes)


# --------------------------------------------------------------------------- diagnostics


def _safe(test: Any, *args: Any, **kwargs: Any) -> Any:
    """Run a statsmodels test; None when the series is too short or degenerate for it."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", InterpolationWarning)
        warnings.simplefilter("ignore", RuntimeWarning)
        warnings.simplefilter("ignore", FutureWarning)  # statsmodels 0.15 announces result objects
        try:
            return test(*args, **kwargs)
        except (ValueError, np.linalg.LinAlgError, ZeroDivisionError, IndexError):
            return None


def _integration_order(series: np.ndarray) -> dict[str, Any]:
    """ADF (null: unit root) and KPSS (null: stationary) on the levels, ADF on the differences."""
    adf = _safe(adfuller, series, regression="c", autolag="AIC")
    adf_diff = _safe(adfuller, np.diff(series), regression="c", autolag="AIC")
    kp = _safe(kpss, series, regression="c", nlags="auto")
    adf_p = math.nan if adf is None else float(adf[1])
    kpss_p = math.nan if kp is None else float(kp[1])
    adf_diff_p = math.nan if adf_diff is None else float(adf_diff[1])
    if adf is None or kp is None:
        order = "unknown"
    elif adf_p < ALPHA and kpss_p >= ALPHA:
        order = "I(0)"
    elif adf_diff is not None and adf_diff_p < ALPHA:
        order = "I(1)"
    else:
        order = "I(2) or higher"
    return {
        "adf_statistic": math.nan if adf is None else float(adf[0]),
        "adf_p": adf_p,
        "kpss_statistic": math.nan if kp is None else float(kp[0]),
        "kpss_p": kpss_p,
        "adf_diff_p": adf_diff_p,
        "order": order,
    }


#: Johansen's test: a constant in the cointegrating relations (det_order 0) and one lagged difference.
JOHANSEN_DET_ORDER = 0
JOHANSEN_LAGS = 1


def johansen_test(
    observations: pd.DataFrame, det_order: int = JOHANSEN_DET_ORDER, k_ar_diff: int = JOHANSEN_LAGS
) -> dict[str, Any] | None:
    """Johansen's trace test for the number of cointegrating relations among N series.

    Parameters
    ----------
    observations : pandas.DataFrame
        One column per series, indexed by time; rows with a missing value are dropped.
    det_order : int
        Deterministic terms, as :func:`statsmodels.tsa.vector_ar.vecm.coint_johansen` takes
        them: -1 none, 0 a constant, 1 a linear trend.
    k_ar_diff : int
        Lagged differences in the vector error-correction model.

    Returns
    -------
    dict or None
        ``rank`` (the first r whose trace statistic is below its 5% critical value,
        testing r = 0, 1, ... in turn; N when every one is rejected), ``trace``
        and ``trace_critical_95`` (one per r), ``max_eigenvalue`` and
        ``max_eigenvalue_critical_95``, ``det_order``, ``k_ar_diff``,
        ``n_observations`` and ``variables``. None with fewer than two series, too
        few observations, or a singular system.

    Notes
    -----
    Rank 0 means no cointegration: levels regressions among I(1) series are then
    likely spurious. Rank N means the series are stationary in levels, not
    cointegrated. statsmodels tabulates critical values (Osterwald-Lenum 1992) for
    at most 12 series.
    """
    from statsmodels.tsa.vector_ar.vecm import coint_johansen

    data = observations.dropna()
    n_series = data.shape[1]
    if not 2 <= n_series <= 12 or len(data) < n_series * (k_ar_diff + 1) + 10:
        return None
    found = _safe(coint_johansen, data.to_numpy(dtype=float), det_order, k_ar_diff)
    if found is None or not np.all(np.isfinite(found.lr1)):
        return None
    trace, critical = np.asarray(found.lr1, dtype=float), np.asarray(found.cvt, dtype=float)[:, 1]
    below = np.flatnonzero(trace < critical)
    return {
        "test": f"Johansen trace, {', '.join(data.columns)}",
        "rank": int(below[0]) if below.size else n_series,
        "trace": trace.tolist(),
        "trace_critical_95": critical.tolist(),
        "max_eigenvalue": np.asarray(found.lr2, dtype=float).tolist(),
        "max_eigenvalue_critical_95": np.asarray(found.cvm, dtype=float)[:, 1].tolist(),
        "det_order": det_order,
        "k_ar_diff": k_ar_diff,
        "n_observations": len(data),
        "variables": list(data.columns),
    }


def johansen_text(johansen: Mapping[str, Any]) -> str:
    """One line: the rank and each trace statistic against its 5% critical value."""
    n = len(johansen["variables"])
    steps = ", ".join(
        f"r <= {r}: trace {t:.2f} {'>' if t >= c else '<'} {c:.2f}"
        for r, (t, c) in enumerate(zip(johansen["trace"], johansen["trace_critical_95"], strict=True))
    )
    terms = {-1: "no deterministic terms", 0: "constant", 1: "linear trend"}[johansen["det_order"]]
    return (
        f"Johansen trace test ({terms}, {johansen['k_ar_diff']} lagged difference"
        f"{'s' if johansen['k_ar_diff'] != 1 else ''}, {johansen['n_observations']} observations): "
        f"rank {johansen['rank']} of {n} at 5% ({steps})"
    )


def diagnose(
    observations: pd.DataFrame, fit: pd.DataFrame, n_parameters: int, *, transform: str = "levels"
) -> dict[str, Any]:
    """Residual, unit-root and cointegration diagnostics of a trajectory fit, with a one-line verdict.

    Parameters
    ----------
    observations : pandas.DataFrame
        The observed series (one column per model variable), indexed by time.
    fit : pandas.DataFrame
        Tidy ``variable``, ``time``, ``residual`` (see :class:`TrajectoryFit`).
    n_parameters : int
        Number of fitted quantities (for AIC/BIC).
    transform : {"levels", "differenced"}
        What the fit regressed; with ``"differenced"``, `observations` are the
        differenced series and the verdict speaks of a fit in differences.

    Returns
    -------
    dict
        ``residuals`` (per variable: Ljung-Box statistic and p-value, Durbin-Watson),
        ``series`` (per variable: ADF and KPSS on the levels, ADF on the differences,
        ``order``), ``cointegration`` (Engle-Granger on the first two series),
        ``aic``/``bic`` (Gaussian likelihood of the pooled residuals) and ``verdict``.

    Notes
    -----
    Trending series fit almost anything in levels (Granger and Newbold 1974): when
    every series is I(1) and the pair is not cointegrated, the fit's R^2 says nothing
    about the mechanism. Tests at the 5% level; ADF with a constant, lag by AIC; KPSS
    level-stationarity with automatic lags (its p-value is clipped to [0.01, 0.1]).
    """
    out: dict[str, Any] = {"residuals": {}, "series": {}}
    resid_all = fit["residual"].to_numpy(dtype=float)
    n = resid_all.size
    rss = float(resid_all @ resid_all)
    llf = -n / 2 * (math.log(2 * math.pi * max(rss, 1e-300) / n) + 1) if n else math.nan
    out["log_likelihood"] = llf
    out["aic"] = -2 * llf + 2 * n_parameters
    out["bic"] = -2 * llf + n_parameters * math.log(n) if n else math.nan
    for name, part in fit.groupby("variable", sort=False):
        r = part.sort_values("time")["residual"].to_numpy(dtype=float)
        lags = max(1, min(10, r.size // 5))
        lb = _safe(acorr_ljungbox, r, lags=[lags])
        out["residuals"][str(name)] = {
            "ljung_box_lags": lags,
            "ljung_box_statistic": math.nan if lb is None else float(lb["lb_stat"].iloc[0]),
            "ljung_box_p": math.nan if lb is None else float(lb["lb_pvalue"].iloc[0]),
            "durbin_watson": float(durbin_watson(r)) if r.size > 1 else math.nan,
        }
    columns = list(observations.columns)
    for name in columns:
        out["series"][name] = _integration_order(observations[name].dropna().to_numpy(dtype=float))
    out["cointegration"] = None
    out["cointegration_pairs"] = []
    out["johansen"] = None
    if len(columns) >= 2:
        pairs = [(x, y) for i, x in enumerate(columns) for y in columns[i + 1 :]]
        out["cointegration_pairs"] = [_engle_granger(observations, x, y) for x, y in pairs]
        out["cointegration"] = out["cointegration_pairs"][0]
        out["johansen"] = johansen_test(observations[columns])
    out["verdict"] = _diagnostic_verdict(out, transform)
    return out


def _engle_granger(observations: pd.DataFrame, x: str, y: str) -> dict[str, Any]:
    """Engle-Granger test of one pair (statsmodels' ``coint``, constant, lag by AIC)."""
    pair = observations[[x, y]].dropna()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", CollinearityWarning)
        eg = _safe(coint, pair.iloc[:, 0].to_numpy(dtype=float), pair.iloc[:, 1].to_numpy(dtype=float))
    # Two series almost exactly proportional (an explosive race, say) leave the test meaningless.
    collinear = any(issubclass(w.category, CollinearityWarning) for w in caught)
    if collinear:
        eg = None
    return {
        "test": f"Engle-Granger, {x} on {y}"
        + (" (not reliable: the series are almost perfectly collinear)" if collinear else ""),
        "statistic": math.nan if eg is None else float(eg[0]),
        "p": math.nan if eg is None else float(eg[1]),
    }


def _diagnostic_verdict(d: Mapping[str, Any], transform: str = "levels") -> str:
    orders = [s["order"] for s in d["series"].values()]
    diff = transform == "differenced"
    subject, fit = ("differenced series", "differenced") if diff else ("series", "levels")
    coint_p = d["cointegration"]["p"] if d["cointegration"] else math.nan
    johansen = d.get("johansen")
    # Beyond a pair, Engle-Granger on two series says nothing of the system: Johansen's rank decides.
    system = len(d["series"]) > 2
    if orders and all(o == "I(0)" for o in orders):
        first = f"{subject} are stationary (I(0)): no spurious-regression concern"
    elif orders and all(o not in ("I(0)", "unknown") for o in orders):
        kind = "I(1)" if all(o == "I(1)" for o in orders) else "non-stationary"
        if system and johansen is not None:
            pairs = [c["p"] for c in d.get("cointegration_pairs", [])]
            together = sum(p < ALPHA for p in pairs if math.isfinite(p))
            test = f"Johansen rank {johansen['rank']} of {len(orders)}; Engle-Granger: {together} of {len(pairs)} pairs"
            if johansen["rank"] > 0:
                first = f"{subject} are {kind} and cointegrated ({test}): a {fit} fit can be meaningful"
            else:
                first = f"{subject} are {kind} and not cointegrated ({test}): a {fit} fit is likely spurious"
        elif system:
            first = f"{subject} are {kind}: a {fit} fit may be spurious (Johansen test not possible)"
        elif math.isfinite(coint_p) and coint_p < ALPHA:
            test = f"Engle-Granger p = {coint_p:.2g}"
            first = f"{subject} are {kind} and cointegrated ({test}): a {fit} fit can be meaningful"
        elif math.isfinite(coint_p):
            test = f"Engle-Granger p = {coint_p:.2g}"
            first = f"{subject} are {kind} and not cointegrated ({test}): a {fit} fit is likely spurious"
        else:
            first = f"{subject} are {kind}: a {fit} fit may be spurious"
    elif "unknown" in orders:
        first = f"{subject} too short for unit-root tests: spuriousness not assessed"
    else:
        first = f"{subject} differ in order of integration ({', '.join(orders)}): treat a {fit} fit with caution"
    bad = {n: r["ljung_box_p"] for n, r in d["residuals"].items() if r["ljung_box_p"] < ALPHA}
    if bad:
        worst = min(bad.values())
        first += f"; residuals autocorrelated (Ljung-Box p = {worst:.2g}): standard errors are too small"
    return first


def _diagnostics_table(d: Mapping[str, Any]) -> pd.DataFrame:
    rows = []
    for name, r in d["residuals"].items():
        rows.append(
            ("Ljung-Box (residuals)", name, r["ljung_box_statistic"], r["ljung_box_p"], f"lags {r['ljung_box_lags']}")
        )
        rows.append(("Durbin-Watson (residuals)", name, r["durbin_watson"], math.nan, "2 when uncorrelated"))
    for name, s in d["series"].items():
        rows.append(("ADF levels (null: unit root)", name, s["adf_statistic"], s["adf_p"], s["order"]))
        rows.append(("ADF differences (null: unit root)", name, math.nan, s["adf_diff_p"], ""))
        rows.append(
            ("KPSS levels (null: stationary)", name, s["kpss_statistic"], s["kpss_p"], "p clipped to [0.01, 0.1]")
        )
    for c in d.get("cointegration_pairs") or ([d["cointegration"]] if d["cointegration"] else []):
        rows.append(("Engle-Granger cointegration (null: none)", "pair", c["statistic"], c["p"], c["test"]))
    johansen = d.get("johansen")
    if johansen is not None:
        every = zip(johansen["trace"], johansen["trace_critical_95"], johansen["max_eigenvalue"],
                    johansen["max_eigenvalue_critical_95"], strict=True)  # fmt: skip
        for r, (trace, crit, eig, eig_crit) in enumerate(every):
            note = f"5% critical value {crit:.4g}; {'rejected' if trace >= crit else 'not rejected'}"
            rows.append((f"Johansen trace (null: rank <= {r})", "system", trace, math.nan, note))
            note = f"5% critical value {eig_crit:.4g}"
            rows.append((f"Johansen max eigenvalue (null: rank = {r})", "system", eig, math.nan, note))
        rows.append(("Johansen rank", "system", johansen["rank"], math.nan, johansen_text(johansen)))
    rows.append(("AIC", "all", d["aic"], math.nan, "Gaussian likelihood of pooled residuals"))
    rows.append(("BIC", "all", d["bic"], math.nan, ""))
    rows.append(("verdict", "all", math.nan, math.nan, d["verdict"]))
    return pd.DataFrame(rows, columns=["test", "variable", "statistic", "p_value", "note"])


# --------------------------------------------------------------------------- Richardson's estimator


def richardson_combined_fit(years: Sequence[float], totals: Sequence[float]) -> tuple[float, float, dict[str, Any]]:
    """Richardson's fit of :math:`\\frac{d}{dt}(U+V) = \\kappa\\,(U + V - c)` to yearly totals.

    As Richardson did (1960; Braun 1993, section 4.5), the yearly increments
    :math:`\\Delta(U+V)` are regressed by ordinary least squares on the yearly
    means of :math:`U+V`: the slope is :math:`\\kappa` and the intercept
    :math:`-\\kappa c`. Increments between years further apart are divided by
    the gap, so they stay rates per year.

    Parameters
    ----------
    years : sequence of float
        Strictly increasing times (at least three).
    totals : sequence of float
        :math:`U+V` at those times (e.g. both alliances' defence budgets).

    Returns
    -------
    kappa : float
        Growth rate (1/year).
    c : float
        The total at which the combined budget would stand still (units of `totals`).
    details : dict
        ``means``, ``increments``, ``fitted``, ``residuals`` (arrays),
        ``intercept``, ``kappa_se``, ``c_se`` (delta method), ``kappa_ci``,
        ``c_ci`` (95%, t with n - 2 degrees of freedom), ``r2``, ``rmse``,
        ``n`` (number of increments), ``dof``.

    Raises
    ------
    ValueError
        If the years are not strictly increasing, values are not finite, or
        there are fewer than three years.
    """
    t = np.asarray(years, dtype=float)
    y = np.asarray(totals, dtype=float)
    if t.shape != y.shape or t.ndim != 1:
        msg = f"years and totals must be 1-D of the same length, got {t.shape} and {y.shape}"
        raise ValueError(msg)
    if t.size < 3:
        msg = f"need at least three years (two increments and a degree of freedom), got {t.size}"
        raise ValueError(msg)
    if not (np.all(np.isfinite(t)) and np.all(np.isfinite(y))):
        msg = "years and totals must be finite numbers"
        raise ValueError(msg)
    if np.any(np.diff(t) <= 0):
        msg = f"years must increase strictly, got {t.tolist()}"
        raise ValueError(msg)
    gaps = np.diff(t)
    increments = np.diff(y) / gaps
    means = (y[1:] + y[:-1]) / 2
    design = np.column_stack([np.ones_like(means), means])
    coef, *_ = np.linalg.lstsq(design, increments, rcond=None)
    intercept, kappa = float(coef[0]), float(coef[1])
    fitted = design @ coef
    residuals = increments - fitted
    n = increments.size
    dof = n - 2
    ss_res = float(residuals @ residuals)
    ss_tot = float(np.sum((increments - increments.mean()) ** 2))
    if dof > 0:
        cov = ss_res / dof * np.linalg.inv(design.T @ design)
        tq = float(scipy.stats.t.ppf(0.975, dof))
    else:
        cov = np.full((2, 2), math.nan)
        tq = math.nan
    c = -intercept / kappa if kappa != 0 else math.nan
    # c = -intercept / kappa: gradient (-1/kappa, intercept/kappa^2) for the delta method.
    grad = np.array([-1 / kappa, intercept / kappa**2]) if kappa != 0 else np.full(2, math.nan)
    kappa_se = math.sqrt(cov[1, 1]) if np.isfinite(cov[1, 1]) else math.nan
    c_se = float(math.sqrt(grad @ cov @ grad)) if np.all(np.isfinite(cov)) else math.nan
    details = {
        "years": t,
        "totals": y,
        "means": means,
        "increments": increments,
        "fitted": fitted,
        "residuals": residuals,
        "intercept": intercept,
        "kappa_se": kappa_se,
        "c_se": c_se,
        "kappa_ci": (kappa - tq * kappa_se, kappa + tq * kappa_se),
        "c_ci": (c - tq * c_se, c + tq * c_se),
        "r2": 1 - ss_res / ss_tot if ss_tot > 0 else math.nan,
        "rmse": math.sqrt(ss_res / n),
        "n": int(n),
        "dof": int(dof),
    }
    return kappa, c, details


# --------------------------------------------------------------------------- lagged regression (SUR)


@dataclass(frozen=True)
class Equation:
    """One equation of a linear system, ``response = design @ beta + error``.

    Attributes
    ----------
    name : str
        What the equation explains (e.g. the stock ``"arms X"``).
    response : numpy.ndarray
        Shape ``(T,)``; every equation of a system has the same ``T`` times.
    design : numpy.ndarray
        Shape ``(T, p)``: one column per coefficient (``p`` may be 0).
    parameters : tuple of str
        The coefficients' names, one per column; each name in one equation only.
    """

    name: str
    response: np.ndarray
    design: np.ndarray
    parameters: tuple[str, ...]


@dataclass(frozen=True)
class SystemFit:
    """The result of :func:`fit_system`.

    Attributes
    ----------
    params : pandas.Series
        The coefficients, by name, equation after equation.
    covariance : pandas.DataFrame
        Their covariance.
    fitted, residuals : numpy.ndarray
        Shape ``(T, m)``, one column per equation.
    sigma : numpy.ndarray
        Maximum-likelihood covariance of the equations' errors, ``E'E / T``
        (diagonal for ``"ols"``).
    log_likelihood : float
        Gaussian log-likelihood at the estimate (with `sigma`).
    n_likelihood_parameters : int
        Coefficients plus error-covariance parameters (``m`` variances for
        ``"ols"``, ``m(m+1)/2`` for ``"sur"``): what AIC and BIC count.
    dof : numpy.ndarray
        Per coefficient: ``T`` minus the coefficients of its equation.
    iterations : int
        Feasible-GLS iterations (0 for ``"ols"``).
    converged : bool
        Whether the iterations settled.
    """

    params: pd.Series
    covariance: pd.DataFrame
    fitted: np.ndarray
    residuals: np.ndarray
    sigma: np.ndarray
    log_likelihood: float
    n_likelihood_parameters: int
    dof: np.ndarray
    iterations: int
    converged: bool


def fit_system(
    equations: Sequence[Equation], estimator: str = "sur", *, tol: float = 1e-10, max_iter: int = 1000
) -> SystemFit:
    """Fit a system of linear equations by OLS one by one, or jointly by SUR.

    Parameters
    ----------
    equations : sequence of Equation
        The equations, all over the same ``T`` times.
    estimator : {"sur", "ols"}
        ``"ols"``: each equation by ordinary least squares, errors independent
        across equations. ``"sur"``: Zellner's seemingly unrelated regression,
        iterated feasible GLS with ``Sigma = E'E / T`` until the coefficients
        settle, which is the maximum-likelihood estimate under Gaussian errors
        (Zellner 1962; Greene 2012, section 10.2).
    tol : float
        Largest change of a coefficient, relative to the largest coefficient,
        that ends the iterations.
    max_iter : int
        At most this many iterations.

    Returns
    -------
    SystemFit

    Raises
    ------
    ValueError
        If the equations differ in length, an equation has no residual degrees of
        freedom, or the residual covariance is singular (an equation fitted
        exactly, or equations that are copies of each other).

    Notes
    -----
    OLS standard errors use ``e'e / (T - p)`` per equation, as
    :class:`statsmodels.regression.linear_model.OLS` does; SUR's are
    ``(X' (Sigma^-1 kron I) X)^-1``. When every equation has the same regressors,
    SUR and OLS give the same coefficients (and SUR is the VAR's estimate).
    """
    if estimator not in ("sur", "ols"):
        msg = f"unknown estimator {estimator!r} (allowed: sur, ols)"
        raise ValueError(msg)
    sizes = {e.response.size for e in equations}
    if len(sizes) != 1:
        msg = f"every equation needs the same number of times, got {sorted(sizes)}"
        raise ValueError(msg)
    (T,) = sizes
    m = len(equations)
    ps = [e.design.shape[1] for e in equations]
    if any(p >= T for p in ps):
        msg = f"{T} times leave no residual degrees of freedom for {max(ps)} coefficients"
        raise ValueError(msg)
    names = [n for e in equations for n in e.parameters]
    dof = np.array([T - p for e, p in zip(equations, ps, strict=True) for _ in e.parameters], dtype=float)
    betas = [
        np.linalg.lstsq(e.design, e.response, rcond=None)[0] if e.design.shape[1] else np.empty(0) for e in equations
    ]
    resid = np.column_stack([e.response - e.design @ b for e, b in zip(equations, betas, strict=True)])
    beta = np.concatenate(betas)
    iterations, converged = 0, True
    if estimator == "ols":
        blocks = []
        for e, r, p in zip(equations, resid.T, ps, strict=True):
            s2 = float(r @ r) / (T - p)
            blocks.append(s2 * np.linalg.pinv(e.design.T @ e.design) if p else np.empty((0, 0)))
        cov = scipy.linalg.block_diag(*blocks) if beta.size else np.empty((0, 0))
        sigma = np.diag((resid**2).sum(axis=0) / T)
        llf = float(sum(-T / 2 * (math.log(2 * math.pi * s) + 1) for s in np.diag(sigma)))
        n_lik = beta.size + m
    else:
        big = scipy.linalg.block_diag(*[e.design for e in equations])
        y = np.concatenate([e.response for e in equations])
        converged = False
        for iteration in range(1, max_iter + 1):
            iterations = iteration
            sigma_used = resid.T @ resid / T
            _check_sigma(sigma_used)
            weight = np.kron(np.linalg.inv(sigma_used), np.eye(T))
            info = big.T @ weight @ big
            new = np.linalg.solve(info, big.T @ weight @ y) if beta.size else beta
            resid = (y - big @ new).reshape(m, T).T
            step = float(np.max(np.abs(new - beta), initial=0.0))
            beta = new
            if step <= tol * max(1.0, float(np.max(np.abs(beta), initial=0.0))):
                converged = True
                break
        cov = np.linalg.inv(info) if beta.size else np.empty((0, 0))
        cov = (cov + cov.T) / 2  # symmetric to rounding
        sigma = resid.T @ resid / T
        _check_sigma(sigma)
        llf = float(-T / 2 * (m * math.log(2 * math.pi) + np.linalg.slogdet(sigma)[1] + m))
        n_lik = beta.size + m * (m + 1) // 2
    fitted = np.column_stack([e.response for e in equations]) - resid
    return SystemFit(
        params=pd.Series(beta, index=pd.Index(names, name="parameter")),
        covariance=pd.DataFrame(cov, index=names, columns=names),
        fitted=fitted,
        residuals=resid,
        sigma=sigma,
        log_likelihood=llf,
        n_likelihood_parameters=int(n_lik),
        dof=dof,
        iterations=iterations,
        converged=converged,
    )


def _check_sigma(sigma: np.ndarray) -> None:
    sign, logdet = np.linalg.slogdet(sigma)
    if sign <= 0 or not math.isfinite(logdet):
        msg = (
            "the residual covariance of the equations is singular (an equation fits exactly, or two are copies); "
            'SUR cannot weight them: use estimator = "ols" or more data'
        )
        raise ValueError(msg)


#: Richardson's two-state model in lagged form (the default of :func:`lagged_equations`).
TWO_STATE = LaggedSystem(
    RICHARDSON_STOCKS,
    (
        ((PARAMETER_NAMES["g"], None, 1.0), (PARAMETER_NAMES["k"], 1, 1.0), (PARAMETER_NAMES["a"], 0, -1.0)),
        ((PARAMETER_NAMES["h"], None, 1.0), (PARAMETER_NAMES["l"], 0, 1.0), (PARAMETER_NAMES["b"], 1, -1.0)),
    ),
)


def lagged_equations(
    observations: pd.DataFrame,
    transform: str = "levels",
    fixed: Mapping[str, ParameterValue] | None = None,
    system: LaggedSystem | None = None,
) -> tuple[list[Equation], pd.DataFrame]:
    """Richardson's equations as lagged (discrete-time) regressions on observed arms.

    With ``transform = "levels"``, for each year ``t`` (``dt`` the data's step)::

        (X_t - X_{t-1}) / dt = g + k Y_{t-1} - a X_{t-1}
        (Y_t - Y_{t-1}) / dt = h + l X_{t-1} - b Y_{t-1}

    (the Euler step of the continuous model; for N states,
    ``(x_i,t - x_i,t-1) / dt = g_i + sum_j k_ij x_j,t-1 - a_i x_i,t-1``). With
    ``"differenced"`` both sides are differenced once, which removes the
    grievances and any shared trend::

        D^X_t - D^X_{t-1} = k dt D^Y_{t-1} - a dt D^X_{t-1},   D^X_t = (X_t - X_{t-1}) / dt

    Parameters
    ----------
    observations : pandas.DataFrame
        One column per stock of `system` (``arms X`` and ``arms Y`` by default)
        indexed by time; years with a missing value (or missing rows) drop the
        responses that need them.
    transform : {"levels", "differenced"}
        See above.
    fixed : mapping, optional
        Coefficients held at a value (model or element names): their terms move
        to the response, and they are not estimated.
    system : LaggedSystem, optional
        The equations (see :func:`armsdyn.calibration_config.lagged_system`);
        default Richardson's two-state model.

    Returns
    -------
    equations : list of Equation
        One per stock, coefficients named as the model's constants.
    context : pandas.DataFrame
        Indexed by the response times: each stock's arms the year before, its
        change the year before (``rate <stock>``; NaN for levels), and ``dt``;
        :func:`one_step_levels` uses it.
    """
    system = system or TWO_STATE
    held = {**system.held, **(fixed or {})}
    frame = observations[list(system.stocks)]
    grid, dt = on_regular_grid(frame)
    usable = lagged_usable(frame, transform)
    values = grid.to_numpy(dtype=float)
    rates = np.full_like(values, math.nan)
    rates[1:] = np.diff(values, axis=0) / dt
    rows = np.flatnonzero(usable)
    before = values[rows - 1]
    rate_before = rates[rows - 1]
    equations = []
    for i, row in enumerate(system.terms):
        if transform == "differenced":
            response = rates[rows, i] - rate_before[:, i]
            terms = [(name, sign * dt * rate_before[:, j]) for name, j, sign in row if j is not None]
        else:
            response = rates[rows, i].copy()
            terms = [(name, np.ones(rows.size) if j is None else sign * before[:, j]) for name, j, sign in row]
        columns, names = [], []
        for name, regressor in terms:
            value = held.get(name)
            if isinstance(value, int | float):
                response = response - float(value) * regressor
            else:
                columns.append(regressor)
                names.append(name)
        design = np.column_stack(columns) if columns else np.empty((rows.size, 0))
        equations.append(Equation(system.stocks[i], response, design, tuple(names)))
    context = pd.DataFrame(
        {
            **{stock: before[:, j] for j, stock in enumerate(system.stocks)},
            **{f"rate {stock}": rate_before[:, j] for j, stock in enumerate(system.stocks)},
            "dt": dt,
        },
        index=grid.index[rows],
    )
    return equations, context


def _calibrate_lagged(spec: CalibrationSpec, started: str) -> CalibrationResult:
    system = lagged_system(spec.model)
    assert system is not None  # the config was checked
    equations, context = lagged_equations(spec.observations, spec.transform, spec.fixed, system)
    try:
        fitted_system = fit_system(equations, spec.estimator)
    except ValueError as exc:
        msg = f"{spec.config_path or spec.name}: specification {spec.label!r}: {exc}"
        raise ConfigError(msg) from None
    names = list(fitted_system.params.index)
    se = np.sqrt(np.clip(np.diag(fitted_system.covariance.to_numpy()), 0, None))
    tq = scipy.stats.t.ppf(0.975, fitted_system.dof)
    theta = fitted_system.params.to_numpy()
    estimates = pd.DataFrame(
        {
            "estimate": theta,
            "std_error": se,
            "ci_low": theta - tq * se,
            "ci_high": theta + tq * se,
            "initial": math.nan,
            "lower": -math.inf,
            "upper": math.inf,
            "at_bound": False,
            "units": [_units(spec.model, n) for n in names],
        },
        index=pd.Index(names, name="parameter"),
    )
    times = context.index.to_numpy(dtype=float)
    tidy: list[pd.DataFrame] = []
    rmse_by_variable: dict[str, float] = {}
    r2_by_variable: dict[str, float] = {}
    stats: dict[str, Any] = {"rmse_by_variable": rmse_by_variable, "r2_by_variable": r2_by_variable}
    ss_res_total = ss_tot_total = 0.0
    for j, eq in enumerate(equations):
        # The observed response includes the fixed terms' values, so "observed" is what the free terms explain.
        observed, fitted = eq.response, fitted_system.fitted[:, j]
        ss_res = float(np.sum((observed - fitted) ** 2))
        ss_tot = float(np.sum((observed - observed.mean()) ** 2))
        ss_res_total += ss_res
        ss_tot_total += ss_tot
        rmse_by_variable[eq.name] = math.sqrt(ss_res / observed.size)
        r2_by_variable[eq.name] = 1 - ss_res / ss_tot if ss_tot > 0 else math.nan
        tidy.append(pd.DataFrame({"variable": eq.name, "time": times, "observed": observed, "fitted": fitted,
                                  "residual": observed - fitted}))  # fmt: skip
    fit_table = pd.concat(tidy, ignore_index=True)
    n = int(fitted_system.residuals.size)
    scaled = [_scaled_condition(e.design) for e in equations if e.design.shape[1]]
    stats.update(
        {
            "n_observations": n,
            "n_parameters": len(names),
            "dof": int(fitted_system.dof.min()) if names else n,
            "rmse": math.sqrt(ss_res_total / n),
            "r2": 1 - ss_res_total / ss_tot_total if ss_tot_total > 0 else math.nan,
            "sigma": math.sqrt(ss_res_total / max(n - len(names), 1)),
            "converged": bool(fitted_system.converged),
            "iterations": fitted_system.iterations,
            "jacobian_condition": max(scaled) if scaled else math.nan,
            "estimator": spec.estimator,
            "transform": spec.transform,
            "response": _lagged_response(spec),
        }
    )
    trajectories = one_step_levels(context, fitted_system.fitted, spec.transform)
    fit = TrajectoryFit(estimates, fitted_system.covariance, fit_table, trajectories, stats)
    summary: dict[str, Any] = {"method": spec.method, "specification": spec.label, **stats, "units": spec.data.units}
    derived = _richardson_derived(spec, fit, None, summary)
    tested = spec.observations
    if spec.transform == "differenced":
        grid, dt = on_regular_grid(spec.observations)
        tested = (grid.diff() / dt).dropna(how="all")
    diagnostics = diagnose(tested, fit_table, len(names), transform=spec.transform)
    # The system's own likelihood (error covariance included), not diagnose's pooled one.
    llf, k = fitted_system.log_likelihood, fitted_system.n_likelihood_parameters
    diagnostics.update(log_likelihood=llf, aic=-2 * llf + 2 * k, bic=-2 * llf + k * math.log(n))
    summary["likelihood"] = f"{_lagged_response(spec)} ({spec.estimator.upper()}, Gaussian errors)"
    summary["log_likelihood"] = llf
    summary["n_likelihood_parameters"] = k
    summary["sigma_errors"] = fitted_system.sigma.tolist()
    summary["aic"], summary["bic"] = diagnostics["aic"], diagnostics["bic"]
    summary["diagnostics_verdict"] = diagnostics["verdict"]
    summary["diagnostics"] = diagnostics
    summary["identification"] = identification_note(summary, estimates)
    return CalibrationResult(
        spec=spec,
        estimates=estimates,
        derived=derived,
        fit=fit_table,
        covariance=fitted_system.covariance,
        bootstrap=None,
        summary=summary,
        trajectories=trajectories,
        started=started,
    )


def _lagged_response(spec: CalibrationSpec) -> str:
    names = ", ".join(spec.observations.columns)
    if spec.transform == "differenced":
        return f"changes in the yearly changes of {names}"
    return f"yearly changes of {names} given the year before"


def one_step_levels(context: pd.DataFrame, fitted: np.ndarray, transform: str) -> pd.DataFrame:
    """One-step-ahead levels a lagged fit predicts from the year before (for figures)."""
    dt = context["dt"].to_numpy()
    out = {}
    stocks = [c for c in context.columns if c != "dt" and not c.startswith("rate ")]
    for j, stock in enumerate(stocks):
        change = fitted[:, j] + (context[f"rate {stock}"].to_numpy() if transform == "differenced" else 0.0)
        out[stock] = context[stock].to_numpy() + dt * change
    return pd.DataFrame(out, index=pd.Index(context.index.to_numpy(dtype=float), name="time"))


# --------------------------------------------------------------------------- comparison


#: Akaike differences below this leave two specifications indistinguishable (Burnham and Anderson 2002, 2.6).
DELTA_AIC_CLOSE = 2.0


def _data_label(spec: CalibrationSpec) -> str:
    obs = spec.observations
    scale = f" x {spec.data.scale:g}" if spec.data.scale != 1 else ""
    return f"{spec.data.file.name}{scale}, {obs.index[0]:g}-{obs.index[-1]:g} ({spec.data.units})"


def compare_specifications(results: Sequence[CalibrationResult]) -> pd.DataFrame:
    """Rank specifications by AIC and BIC within each group fitted to the same observations.

    A likelihood is of particular observations: the levels of the series
    (trajectory fits), their yearly changes given the year before (lagged
    levels), or the changes of those changes (lagged differenced), of one data
    file over given years. AIC and BIC compare only fits of the same observations,
    so each such group is ranked on its own and nothing is ranked across groups.

    Parameters
    ----------
    results : sequence of CalibrationResult
        One per specification (from :func:`calibrate` without specifications).

    Returns
    -------
    pandas.DataFrame
        Index ``specification``; columns ``method``, ``estimator``,
        ``transform``, ``data``, ``group`` (1, 2, ... in order of appearance),
        ``response`` (what the likelihood is of: with the data, it defines the
        group), ``likelihood``, ``n_observations``, ``n_parameters`` (counted by AIC/BIC),
        ``log_likelihood``, ``aic``, ``bic``, ``delta_aic``, ``delta_bic`` (to the
        group's best), ``akaike_weight``, ``rank_aic``, ``rank_bic``, ``r2``,
        ``stability`` and ``diagnostics_verdict``.
    """
    rows = []
    for r in results:
        spec, summary = r.spec, r.summary
        rows.append(
            {
                "specification": spec.label,
                "method": spec.method,
                "estimator": spec.estimator if spec.method == "lagged" else "",
                "transform": spec.transform if spec.method == "lagged" else "levels",
                "data": _data_label(spec),
                "likelihood": summary["likelihood"],
                "response": summary["response"],
                "n_observations": int(summary["n_observations"]),
                "n_parameters": int(summary["n_likelihood_parameters"]),
                "log_likelihood": float(summary["log_likelihood"]),
                "aic": float(summary["aic"]),
                "bic": float(summary["bic"]),
                "r2": float(summary.get("r2", math.nan)),
                "stability": summary.get("stability", "")
                + (f" (given {', '.join(summary['stability_given'])})" if summary.get("stability_given") else ""),
                "diagnostics_verdict": summary.get("diagnostics_verdict", ""),
            }
        )
    table = pd.DataFrame(rows)
    key = table["response"] + " | " + table["data"] + " | " + table["n_observations"].astype(str)
    table.insert(5, "group", pd.factorize(key)[0] + 1)
    for crit in ("aic", "bic"):
        best = table.groupby("group")[crit].transform("min")
        table[f"delta_{crit}"] = table[crit] - best
        table[f"rank_{crit}"] = table.groupby("group")[crit].rank(method="min").astype(int)
    rel = np.exp(-table["delta_aic"] / 2)
    table["akaike_weight"] = rel / rel.groupby(table["group"]).transform("sum")
    order = ["specification", "method", "estimator", "transform", "data", "group", "response", "likelihood",
             "n_observations",
             "n_parameters", "log_likelihood", "aic", "bic", "delta_aic", "delta_bic", "akaike_weight", "rank_aic",
             "rank_bic", "r2", "stability", "diagnostics_verdict"]  # fmt: skip
    return table[order].sort_values(["group", "aic"], kind="stable").set_index("specification")


def comparison_verdict(table: pd.DataFrame) -> list[str]:
    """Which specification each group prefers by AIC and by BIC, and by how much, in words."""
    lines = []
    groups = list(dict.fromkeys(table["group"]))
    for g in groups:
        part = table[table["group"] == g]
        head = f"group {g} ({part['response'].iloc[0]}; {part['data'].iloc[0]})"
        if len(part) == 1:
            lines.append(f"{head}: {part.index[0]!r} alone; nothing fitted to the same observations to rank it against")
            continue
        said = []
        for crit, label in (("aic", "AIC"), ("bic", "BIC")):
            ranked = part.sort_values(crit, kind="stable")
            first, second = ranked.index[0], ranked.index[1]
            gap = float(ranked[crit].iloc[1] - ranked[crit].iloc[0])
            text = f"by {label} {first!r}, {gap:.1f} below {second!r}"
            if crit == "aic":
                text += f" (Akaike weight {ranked['akaike_weight'].iloc[0]:.2f})"
                if gap < DELTA_AIC_CLOSE:
                    text += ", a difference under 2: the data barely tell them apart"
            said.append(text)
        lines.append(f"{head}: preferred " + "; ".join(said))
    if len(groups) > 1:
        lines.append(
            f"{len(groups)} groups fit different observations (levels, changes or differences, or other data): "
            "AIC and BIC rank specifications within a group only"
        )
    return lines


def format_summary(result: CalibrationResult) -> str:
    """The lines ``armsdyn calibrate`` prints after the estimates: fit, verdicts, and any comparison."""
    summary = result.summary
    facts = [f"{k} = {summary[k]}" for k in ("rmse", "r2", "stability", "share_stable_bootstrap") if k in summary]
    lines = ["; ".join(facts)]
    if summary.get("stability_reason"):
        lines.append(f"stability: {summary['stability']} ({summary['stability_reason']})")
    post = summary.get("posterior")
    if post:
        p_stable = summary.get("p_stable_posterior")
        text = f"posterior: {post['draws']} draws from {post['walkers']} walkers (emcee), "
        text += f"max R-hat {post['max_rhat']:.3f}, min ESS {post['min_ess']:.0f}"
        lines.append(text + (f", P(stable) = {p_stable:.3f}" if p_stable is not None else ""))
        lines.append(f"posterior {post['convergence']}")
    for key, label in (("diagnostics_verdict", "diagnostics"), ("identification", "identification")):
        if summary.get(key):
            lines.append(f"{label}: {summary[key]}")
    johansen = (summary.get("diagnostics") or {}).get("johansen")
    if johansen:
        lines.append(f"cointegration: {johansen_text(johansen)}")
    if result.comparison is not None:
        shown = result.comparison[["group", "n_parameters", "aic", "delta_aic", "bic", "delta_bic", "stability"]]
        lines.append("specifications ranked by AIC within groups fitted to the same observations:")
        lines.append(shown.to_string(float_format=lambda v: f"{v:.1f}"))
        lines += summary["comparison"]["verdict"]
    return "\n".join(lines)


# --------------------------------------------------------------------------- Bayesian posterior (emcee)


#: Posterior draws kept in posterior.csv and used for the probability of stability (thinned evenly).
POSTERIOR_DRAWS = 4000
#: Posterior trajectories simulated for the posterior predictive band (one compiled batch). With 200 the
#: band's 2.5% and 97.5% quantiles rested on five draws each: on tests/test_calibration_predictive.py's
#: data sets it held 1.9 in a hundred fewer held-out observations than the exact t band, with 1000 1.1.
PREDICTIVE_DRAWS = 1000
#: Convergence needs every split R-hat at most RHAT_LIMIT, at least ESS_MIN effective draws, kept steps
#: at least TAU_MULTIPLE integrated autocorrelation times (emcee's advice: shorter chains misestimate tau
#: itself) and a mean acceptance fraction of at least ACCEPTANCE_MIN (below it the walkers barely move).
RHAT_LIMIT = 1.1
#: A least-squares fit whose column-scaled Jacobian has a larger condition number lies on a ridge, and
#: ``coordinates = "auto"`` samples Richardson's modes (a well identified synthetic race: about 150;
#: one whose fast mode the data barely see: about 3,000).
RIDGE_CONDITION = 1e3
ESS_MIN = 100
TAU_MULTIPLE = 50
ACCEPTANCE_MIN = 0.05


def _split_rhat(chain: np.ndarray) -> np.ndarray:
    """Gelman-Rubin split R-hat per parameter; `chain` is (steps, walkers, parameters), each walker halved."""
    steps = chain.shape[0] // 2
    if steps < 2:
        return np.full(chain.shape[2], math.nan)
    halves = np.concatenate([chain[:steps], chain[steps : 2 * steps]], axis=1)
    means = halves.mean(axis=0)
    within = halves.var(axis=0, ddof=1).mean(axis=0)
    between = steps * means.var(axis=0, ddof=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.sqrt(((steps - 1) / steps * within + between / steps) / within)


class _RichardsonModes:
    """Coordinates of Richardson's two-state model in which its ridges are straight and flat.

    Richardson's :math:`\\dot x = M x + f` with :math:`M = [[-a, k], [l, -b]]` and
    :math:`k, l > 0` has two real eigenvalues, a slow :math:`\\lambda_s` and a fast
    :math:`\\lambda_f < \\lambda_s`, with eigenvectors :math:`(1, r_s)`, :math:`r_s > 0`,
    and :math:`(1, r_f)`, :math:`r_f < 0`. Trending series identify the slow mode (its
    rate, which has the sign of :math:`kl - ab`, and direction) well, and the fast one
    hardly at all: any large :math:`a` with :math:`k/a` fixed fits, which is the ridge
    :math:`ab \\approx kl` of the coefficients. The sampler therefore moves in

    ``(lambda_s, log(lambda_s - lambda_f), arctan r_s, arctan(-r_f))`` for ``(k, l, a, b)``,
    ``(phi_s, -phi_f / lambda_f)`` for the grievances ``(g, h)`` (:math:`\\phi = V^{-1}(g, h)`,
    the forcing of each mode; the second is the fast mode's equilibrium), and
    ``V^{-1}(x_0, y_0)`` for the initial values (each mode's start),

    where the weakly identified quantities are separate coordinates, flat in their
    range. The eigenvectors enter as angles in :math:`(0, \\pi/2)`, not as log slopes,
    which run off to infinity where k or l nears 0, inside the prior. The map is
    one-to-one on :math:`k, l > 0`; the density in these
    coordinates adds :math:`\\log|\\det d\\theta/du|` (numerically, by central
    differences of the closed form), so the prior stays the config's.
    """

    def __init__(self, coefficients: Sequence[int], grievances: Sequence[int] | None, starts: Sequence[int] | None):
        self.coefficients = list(coefficients)  # positions of k, l, a, b
        self.grievances = None if grievances is None else list(grievances)  # g, h
        self.starts = None if starts is None else list(starts)  # initial x, y
        self.index = self.coefficients + (self.grievances or []) + (self.starts or [])
        self.names = ["slow rate", "log rate gap", "slow angle", "fast angle"]
        self.names += ["slow forcing", "fast equilibrium"] if self.grievances else []
        self.names += ["slow start", "fast start"] if self.starts else []

    def to_free(self, theta: np.ndarray) -> np.ndarray:
        """The mode coordinates of parameter vectors (rows) with k, l > 0, in the order of :attr:`index`."""
        k, ell, a, b = (theta[:, i] for i in self.coefficients)
        disc = np.sqrt((a - b) ** 2 + 4 * k * ell)
        slow, fast = (-(a + b) + disc) / 2, (-(a + b) - disc) / 2
        r_s, r_f = (slow + a) / k, (fast + a) / k
        out = [slow, np.log(disc), np.arctan(r_s), np.arctan(-r_f)]
        spread = r_f - r_s  # det V, V = [[1, 1], [r_s, r_f]]
        for idx, kind in ((self.grievances, "forcing"), (self.starts, "start")):
            if idx is None:
                continue
            x, y = theta[:, idx[0]], theta[:, idx[1]]
            z_s, z_f = (r_f * x - y) / spread, (-r_s * x + y) / spread  # V^-1 (x, y)
            out += [z_s, -z_f / fast] if kind == "forcing" else [z_s, z_f]
        return np.column_stack(out)

    def _theta(self, u: np.ndarray) -> np.ndarray:
        """Parameter values of mode coordinates (rows): M = V diag(slow, fast) V^-1, (g, h) = V phi, x0 = V z0."""
        slow, gap, r_s, r_f = u[:, 0], np.exp(u[:, 1]), np.tan(u[:, 2]), -np.tan(u[:, 3])
        fast = slow - gap
        spread = r_s - r_f
        k = gap / spread
        out = [k, -r_s * r_f * k, (slow * r_f - fast * r_s) / spread, (r_f * fast - r_s * slow) / spread]
        col = 4
        for idx, kind in ((self.grievances, "forcing"), (self.starts, "start")):
            if idx is None:
                continue
            z_s, z_f = u[:, col], u[:, col + 1]
            if kind == "forcing":
                z_f = -z_f * fast
            out += [z_s + z_f, r_s * z_s + r_f * z_f]
            col += 2
        return np.column_stack(out)

    def from_free(self, u: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Parameter values (in the order of :attr:`index`) and :math:`\\log|\\det d\\theta/du|` per row."""
        n, d = u.shape
        step = 1e-5 * np.maximum(1.0, np.abs(u))
        # u, then u with each coordinate stepped up, then down: the closed form evaluated once for all
        # (2d + 1) n rows (it is a few dozen array operations, and a posterior calls this at every split).
        shifted = np.repeat(u[None], 2 * d + 1, axis=0)
        for j in range(d):
            shifted[1 + j, :, j] += step[:, j]
            shifted[1 + d + j, :, j] -= step[:, j]
        values = self._theta(shifted.reshape(-1, d)).reshape(2 * d + 1, n, d)
        theta = values[0]
        jac = np.empty((n, d, d))
        for j in range(d):
            jac[:, :, j] = (values[1 + j] - values[1 + d + j]) / (2 * step[:, j : j + 1])
        # The slopes' angles repeat every pi: only (0, pi/2) is the map's domain (k, l > 0).
        outside = np.any((u[:, 2:4] <= 0) | (u[:, 2:4] >= np.pi / 2), axis=1)
        return theta, np.where(outside, -np.inf, np.linalg.slogdet(jac)[1])


class _SamplerCoordinates:
    """Where the sampler moves: the parameters themselves, or Richardson's mode coordinates.

    Mode coordinates (:class:`_RichardsonModes`) need all four of Richardson's
    two-state coefficients fitted with :math:`k, l \\ge 0`; the grievances and the
    initial values join them when both of a pair are fitted. Every other fitted
    quantity is its own coordinate.

    Parameters
    ----------
    names : sequence of str
        Fitted names.
    lower, upper : numpy.ndarray
        Their bounds.
    modes : bool
        Use mode coordinates where they apply (:attr:`modes` is None where they do not).
    """

    def __init__(self, names: Sequence[str], lower: np.ndarray, upper: np.ndarray, modes: bool) -> None:
        position = {n: i for i, n in enumerate(names)}
        p = PARAMETER_NAMES

        def pair(*keys: str) -> list[int] | None:
            return [position[p[key]] for key in keys] if all(p[key] in position for key in keys) else None

        coefficients = pair("k", "l", "a", "b")
        self.modes = None
        if modes and coefficients is not None and lower[coefficients[0]] >= 0 and lower[coefficients[1]] >= 0:
            self.modes = _RichardsonModes(coefficients, pair("g", "h"), pair("x0", "y0"))
        #: A name per sampler coordinate, for convergence messages.
        self.names = list(names)
        if self.modes:
            for i, label in zip(self.modes.index, self.modes.names, strict=True):
                self.names[i] = f"{label} (mode coordinate)"
        self.kind = "modes" if self.modes else "parameters"
        self.description = (
            "Richardson's slow and fast modes (each mode's rate, eigenvector angle, forcing and start)"
            if self.modes
            else "the parameters themselves"
        )

    def to_free(self, theta: np.ndarray) -> np.ndarray:
        """Sampler coordinates of parameter vectors (rows); with modes, k and l must be positive."""
        u = np.array(theta, dtype=float)
        if self.modes:
            u[:, self.modes.index] = self.modes.to_free(theta)
        return u

    def from_free(self, u: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Parameter vectors of sampler coordinates (rows), and :math:`\\log|\\det d\\theta/du|` per row."""
        theta = np.array(u, dtype=float)
        log_jac = np.zeros(len(u))
        if self.modes:
            with np.errstate(all="ignore"):
                theta[:, self.modes.index], log_jac = self.modes.from_free(u[:, self.modes.index])
        return theta, log_jac


def convergence_report(
    chain: np.ndarray, tau: np.ndarray, acceptance: np.ndarray, names: Sequence[str]
) -> dict[str, Any]:
    """Whether an ensemble chain has converged, and why or why not, in words.

    Parameters
    ----------
    chain : numpy.ndarray
        Kept steps (after burn-in), shape (steps, walkers, parameters).
    tau : numpy.ndarray
        Integrated autocorrelation time of each parameter, in steps (NaN where a walker never moved).
    acceptance : numpy.ndarray
        Acceptance fraction of each walker.
    names : sequence of str
        Parameter names, for the message.

    Returns
    -------
    dict
        ``converged`` (bool), ``rhat`` and ``ess`` per parameter, ``max_rhat``, ``min_ess``,
        ``max_autocorrelation_time``, ``steps_per_tau``, ``acceptance``, ``stuck_walkers``,
        ``problems`` (list of str, empty when converged) and ``convergence`` (a sentence).

    Notes
    -----
    Four checks, all needed: split R-hat at most :data:`RHAT_LIMIT` for every parameter
    (each walker's halves compared, so a trend or walkers in different places show);
    the kept chain at least :data:`TAU_MULTIPLE` integrated autocorrelation times long
    (Foreman-Mackey et al. 2013; a shorter chain underestimates tau, so its ESS is
    optimistic); at least :data:`ESS_MIN` effective draws; and a mean acceptance
    fraction of at least :data:`ACCEPTANCE_MIN` with no walker that never moved.
    """
    steps, walkers, _ = chain.shape
    rhat = _split_rhat(chain)
    finite_tau = np.all(np.isfinite(tau))
    tau_max = float(np.max(tau)) if finite_tau else math.inf
    ess = steps * walkers / np.maximum(np.where(np.isfinite(tau), tau, math.inf), 1.0)
    stuck = int(np.sum(acceptance == 0))
    mean_acc = float(np.mean(acceptance))
    max_rhat = float(np.max(np.where(np.isfinite(rhat), rhat, math.inf)))
    worst = names[int(np.nanargmax(np.where(np.isfinite(rhat), rhat, math.inf)))] if len(names) else ""
    problems = []
    if not max_rhat <= RHAT_LIMIT:
        problems.append(f"split R-hat {max_rhat:.3g} > {RHAT_LIMIT} ({worst})")
    if not finite_tau:
        problems.append("autocorrelation time undefined (a walker stood still over the kept steps)")
    elif not steps >= TAU_MULTIPLE * tau_max:
        problems.append(
            f"{steps} kept steps are fewer than {TAU_MULTIPLE} autocorrelation times "
            f"({TAU_MULTIPLE} x {tau_max:.3g} steps)"
        )
    if not float(np.min(ess)) >= ESS_MIN:
        problems.append(f"{float(np.min(ess)):.0f} effective draws < {ESS_MIN}")
    if mean_acc < ACCEPTANCE_MIN:
        problems.append(f"acceptance fraction {mean_acc:.3f} < {ACCEPTANCE_MIN}: the walkers barely move")
    if stuck:
        problems.append(f"{stuck} of {walkers} walkers never moved")
    facts = (
        f"max split R-hat {max_rhat:.3f}, {steps} kept steps = {steps / tau_max:.0f} autocorrelation times "
        f"(longest {tau_max:.3g} steps), min ESS {float(np.min(ess)):.0f}, acceptance {mean_acc:.2f}"
        if finite_tau
        else f"max split R-hat {max_rhat:.3f}, autocorrelation time undefined, acceptance {mean_acc:.2f}"
    )
    sentence = f"converged ({facts})" if not problems else f"not converged: {'; '.join(problems)} ({facts})"
    return {
        "converged": not problems,
        "rhat": rhat,
        "ess": ess,
        "max_rhat": max_rhat,
        "min_ess": float(np.min(ess)),
        "max_autocorrelation_time": tau_max,
        "steps_per_tau": steps / tau_max,
        "acceptance": mean_acc,
        "stuck_walkers": stuck,
        "problems": problems,
        "convergence": sentence,
    }


def sample_posterior(spec: CalibrationSpec, start: pd.DataFrame, *, ridge: bool = False) -> dict[str, Any]:
    """Sample the posterior of a trajectory fit's parameters with emcee on the compiled engine.

    The likelihood is the least-squares fit's: Gaussian measurement error with
    one unknown variance shared by every observation, integrated out under
    Jeffreys' prior, so the posterior of the model parameters is
    :math:`p(\\theta)\\,SSR(\\theta)^{-n/2}` with :math:`SSR` the pooled sum of
    squared residuals of all :math:`n` observations (Box and Tiao 1973, section
    2.4). Under uniform priors its mode is therefore the least-squares
    estimate, and where the model is nearly linear in its parameters the
    posterior is the Student-t on :math:`n - p` degrees of freedom behind the
    least-squares intervals. One variance per series (:math:`\\prod_v
    SSR_v^{-n_v/2}`) was the earlier choice and is not well posed on short
    series: its density grows without bound as any one series is fitted
    exactly, so with five observations a series and four parameters that can
    bend one of them (Richardson's 1909-1913 budgets) the walkers chased
    near-exact fits of one series at the other's expense (acceptance 0.03, split
    R-hat 1.43 at 40,000 steps; with the shared variance: acceptance 0.14, split
    R-hat 1.007 at 20,000 steps). Priors are uniform on the bounds, or normal
    (truncated to the bounds) where ``[calibration.priors]`` says so.

    The walkers of emcee's ensemble (Foreman-Mackey et al. 2013) start around
    the least-squares estimate, spread by its standard errors, and are simulated
    together, one compiled batch per step. They move by differential evolution
    (80%) and its snooker update (20%) (ter Braak 2006; ter Braak and Vrugt
    2008), emcee's own moves, stepped by :func:`_run_ensembles` exactly as
    emcee's ``EnsembleSampler`` steps them (the same chain for the same seed).
    Both moves are affine invariant: they follow any straight ridge, but
    not a curved one, and Richardson's coefficients have one (:math:`ab \\approx kl`,
    along which only the determinant and ratios are identified; a trending series
    fixes the slow mode, not the fast one). For Richardson's two-state model the
    walkers can therefore move in its modes' coordinates instead
    (:class:`_RichardsonModes`), where that ridge is flat and straight; the
    density there includes :math:`\\log|\\det d\\theta/du|`, so the prior stays the
    config's. With ``coordinates = "auto"`` (the default) they are used when the
    least-squares fit lies on a ridge (`ridge`); a well identified fit has a
    nearly Gaussian posterior, which mixes fastest in the parameters themselves.
    On a synthetic race whose fast mode the data barely see, the mode coordinates
    cut the autocorrelation time from about 100 steps to 30 and the acceptance
    rises from 0.10 to 0.29; on a well identified race they are about three times
    slower than the parameters. Convergence is judged by
    :func:`convergence_report` on the parameters and the sampler's coordinates.

    Parameters
    ----------
    spec : CalibrationSpec
        A ``method = "bayes"`` calibration.
    start : pandas.DataFrame
        The least-squares estimates (``estimate``, ``std_error``, ``lower``,
        ``upper``), indexed by fitted name.
    ridge : bool
        Whether the least-squares fit lies on a ridge (weakly identified, see
        :func:`identification_note`, or a scaled Jacobian condition number above
        :data:`RIDGE_CONDITION`); with ``coordinates = "auto"``, the mode coordinates are then used.

    Returns
    -------
    dict
        ``chain`` (steps after burn-in, walkers, parameters; in the parameters' own
        units), ``log_prob`` (steps, walkers; the log posterior density of
        :math:`\\theta`, up to a constant), ``names``, ``walkers`` and what
        :func:`convergence_report` says of the chain (``converged``, ``rhat``, ``ess``,
        ``tau``, ``acceptance``, ``convergence``, ...), ``coordinates`` (``"parameters"``
        or ``"modes"``) and its description.

    Raises
    ------
    ConfigError
        If emcee is not installed, or the compiled engine cannot simulate the model
        or its fixed series (see :func:`_posterior_simulator`).
    """
    _emcee()
    return _sample_posteriors([spec], [start], [ridge], _posterior_simulator(spec))[0]


def _emcee() -> Any:
    """The emcee module, or a ConfigError saying how to install it."""
    try:
        import emcee
    except ImportError:
        msg = "method 'bayes' needs emcee, an optional dependency: pip install 'armsdyn[bayes]'"
        raise ConfigError(msg) from None
    return emcee


def _sample_posteriors(
    specs: Sequence[CalibrationSpec], starts: Sequence[pd.DataFrame], ridges: Sequence[bool], sim: _Simulator
) -> list[dict[str, Any]]:
    """:func:`sample_posterior` for data sets of one calibration, every data set's ensemble stepped together.

    `specs` differ in their observations' values and seeds only (see :func:`calibrate_many`)
    and `sim` simulates their shared model: the proposals of every ensemble at a step are
    one compiled batch, so a hundred data sets cost little more simulation calls than one.
    """
    emcee = _emcee()
    spec = specs[0]
    names = list(starts[0].index)
    d = len(names)
    walkers = _walkers(spec, d)
    saved = spec.time.save_times()
    obs_t = spec.observations.index.to_numpy(dtype=float)
    rows = np.array([int(np.argmin(np.abs(saved - t))) for t in obs_t])
    observed = np.stack([s.observations.to_numpy(dtype=float) for s in specs])  # (data set, time, series)
    mask = np.isfinite(observed)
    n_observed = mask.sum(axis=(1, 2))
    lower, upper = starts[0]["lower"].to_numpy(dtype=float), starts[0]["upper"].to_numpy(dtype=float)
    prior_mean = np.array([spec.priors.get(n, (0.0, math.inf))[0] for n in names])
    prior_sd = np.array([spec.priors.get(n, (0.0, math.inf))[1] for n in names])

    every_observed = bool(mask.all())

    def log_posterior(thetas: np.ndarray, owner: np.ndarray) -> np.ndarray:
        """Log posterior density of parameter vectors (rows) of data sets `owner`, -inf where a run fails."""
        with np.errstate(all="ignore"):
            # C order (take's, unlike sim(...)[:, rows, :], whose copy is laid out time first and costs
            # more than the runs), so each run's squared residuals add up in one order however the batch
            # is laid out: a sum follows the memory order.
            res = np.take(sim(thetas), rows, axis=1) - observed[owner]
            if not every_observed:
                res = np.where(mask[owner], res, 0.0)
            # One noise variance for every series, as the least-squares fit pools them (see the docstring).
            ssr = (res**2).sum(axis=(1, 2))
            value = -n_observed[owner] / 2 * np.log(ssr)
            if spec.priors:  # a uniform prior adds -0.0 to every density: nothing
                value = value - 0.5 * (((thetas - prior_mean) / prior_sd) ** 2).sum(axis=1)
        return np.where(np.isfinite(value), value, -np.inf)

    frees, p0s = [], []
    for each, start, ridge in zip(specs, starts, ridges, strict=True):
        kind = each.coordinates
        if kind == "auto":
            kind = "modes" if ridge else "parameters"
        free = _SamplerCoordinates(names, lower, upper, modes=kind == "modes")
        frees.append(free)
        p0s.append(free.to_free(_initial_walkers(each, start, walkers)))
    # The data sets' coordinates differ only in whether they are Richardson's modes: one of each serves all.
    in_modes = np.array([free.modes is not None for free in frees])
    mode_coordinates = next((free for free in frees if free.modes is not None), None)

    def log_prob(us: np.ndarray, owner: np.ndarray) -> np.ndarray:
        """Rows of (log density of u, log posterior of theta) for sampler coordinates `us` of data sets `owner`."""
        thetas, log_jac = us, np.zeros(len(us))
        if mode_coordinates is not None and (moded := in_modes[owner]).any():
            thetas = us.copy()
            thetas[moded], log_jac[moded] = mode_coordinates.from_free(us[moded])
        out = np.full((len(us), 2), -np.inf)
        # Mode coordinates reach outside the box (a < 0, say), where the prior is zero.
        inside = np.all((thetas >= lower) & (thetas <= upper), axis=1) & np.isfinite(log_jac)
        if inside.all():  # the usual batch: no copies
            dens = log_posterior(thetas, owner)
            out[:, 0], out[:, 1] = dens + log_jac, dens
        elif inside.any():
            dens = log_posterior(thetas[inside], owner[inside])
            out[inside, 0], out[inside, 1] = dens + log_jac[inside], dens
        return out

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a move into an overflowing region is just rejected
        runs = _run_ensembles(log_prob, p0s, spec.steps, spec.burn, [s.seed for s in specs])
    found = []
    for free, run in zip(frees, runs, strict=True):
        free_chain = run["chain"]
        chain = np.clip(free.from_free(free_chain.reshape(-1, d))[0], lower, upper).reshape(free_chain.shape)
        # Convergence is judged on the parameters and on the sampler's coordinates alike (the worse of the
        # two): the first are what is reported, the second are where the sampler moves.
        both = np.concatenate([chain, free_chain], axis=2) if free.modes else chain
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # a stuck walker has no autocorrelation: tau is NaN
            tau = emcee.autocorr.integrated_time(both, tol=0)
        report = convergence_report(both, tau, run["acceptance"], [*names, *free.names][: both.shape[2]])
        found.append(
            {
                **report,
                "chain": chain,
                "log_prob": run["blobs"],
                "names": names,
                "walkers": walkers,
                "coordinates": free.kind,
                "coordinates_description": free.description,
                # Per fitted quantity, for estimates.csv; the report's extremes cover the sampler's coordinates too.
                "tau": tau[:d],
                "rhat": report["rhat"][:d],
                "ess": report["ess"][:d],
            }
        )
    return found


def _initial_walkers(spec: CalibrationSpec, start: pd.DataFrame, walkers: int) -> np.ndarray:
    """Walkers' starting parameter vectors: around the least-squares estimate, spread by its standard errors."""
    lower, upper = start["lower"].to_numpy(dtype=float), start["upper"].to_numpy(dtype=float)
    rng = np.random.default_rng(spec.seed)
    theta = start["estimate"].to_numpy(dtype=float)
    width = np.where(np.isfinite(upper - lower), upper - lower, np.maximum(np.abs(theta), 1.0))
    spread = np.where(np.isfinite(start["std_error"]) & (start["std_error"] > 0), start["std_error"], 1e-3 * width)
    # Spread like the least-squares uncertainty, so burn-in need not expand a tiny ball.
    spread = np.minimum(spread, 0.1 * width)
    p0 = theta + spread * rng.standard_normal((walkers, len(theta)))
    # A walker outside the box would never move: reflect it in, then off the bounds themselves
    # (a least-squares estimate often sits on one), where mode coordinates are singular (k or l = 0).
    p0 = np.where(p0 < lower, 2 * lower - p0, p0)
    p0 = np.where(p0 > upper, 2 * upper - p0, p0)
    margin = 1e-4 * width
    return np.clip(p0, np.where(np.isfinite(lower), lower + margin, -np.inf),
                   np.where(np.isfinite(upper), upper - margin, np.inf))  # fmt: skip


#: Share of the steps emcee's ensemble takes by differential evolution; the rest by its snooker update.
_DE_WEIGHT = 0.8


def _snooker_orders() -> np.ndarray:
    """Rows of the snooker move's three drawn walkers as ``(z, z1, z2)``, by RandomState.shuffle's two draws.

    ``shuffle`` of three rows swaps row 2 with row ``a`` (``a`` in 0..2), then row 1 with row
    ``b`` (0..1), Fisher and Yates' shuffle; entry ``[a, b]`` lists which drawn row ends where.
    """
    orders = np.empty((3, 2, 3), dtype=np.intp)
    for a in range(3):
        for b in range(2):
            rows = [0, 1, 2]
            rows[2], rows[a] = rows[a], rows[2]
            rows[1], rows[b] = rows[b], rows[1]
            orders[a, b] = rows
    return orders


_SNOOKER_ORDERS = _snooker_orders()


class _EnsembleRandom:
    """``numpy.random.RandomState(seed)``, emcee's random state (:attr:`random`), and its bit generator (:attr:`bits`).

    The random state's bounded integers are the bit generator's 32-bit outputs,
    masked and rejected: :func:`_bounded_draws` reads those outputs directly.
    """

    def __init__(self, seed: int) -> None:
        self.bits = np.random.MT19937()
        # RandomState seeds MT19937 its legacy way; its state, handed over, is that seeding.
        self.bits.state = cast("Any", np.random.RandomState(seed).get_state(legacy=False))
        self.random = np.random.RandomState(self.bits)


@functools.lru_cache(maxsize=8)
def _bounded_plan(tops: tuple[int, ...], rounds: int) -> tuple[list[tuple[int, int]], list[int]]:
    """Each draw's (top, mask) for :func:`_bounded_draws`, and the least outputs the draws from each on take."""
    slots = [(top, (1 << top.bit_length()) - 1) for top in tops] * rounds
    least = [0] * (len(slots) + 1)
    for i in range(len(slots) - 1, -1, -1):
        least[i] = least[i + 1] + (slots[i][0] > 0)
    return slots, least


def _bounded_draws(bits: np.random.MT19937, tops: Sequence[int], rounds: int) -> list[int]:
    """`rounds` times, an integer in ``[0, top]`` for each of `tops` in turn, as RandomState draws them.

    ``RandomState.randint(top + 1)`` and ``shuffle``'s swap positions both take
    32-bit outputs of the bit generator, masked to the smallest ``2**k - 1`` at
    least `top` and rejected while above `top` (a top of 0 takes none). Drawing
    them here, a few hundred to a step, avoids a call per integer (what made
    emcee's snooker move slow); the state after them is that of those calls,
    for no more outputs are taken than the draws consume: each draw still to
    come takes at least one.
    """
    slots, least = _bounded_plan(tuple(tops), rounds)
    raw = bits.random_raw(least[0]).tolist()
    at = 0
    out = []
    for i, (top, mask) in enumerate(slots):
        value = 0
        if top:
            while True:
                if at == len(raw):
                    raw += bits.random_raw(least[i]).tolist()
                value = raw[at] & mask
                at += 1
                if value <= top:
                    break
        out.append(value)
    return out


def _dot(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Dot products of the last axes, each summed as ``numpy.dot`` of two vectors sums it (matmul's vector case)."""
    return (a[..., None, :] @ b[..., :, None])[..., 0, 0]


@functools.lru_cache(maxsize=4)
def _nondiagonal_pairs(n: int) -> np.ndarray:
    """emcee's ordered pairs of distinct walkers of an `n`-walker complement, in its order."""
    rows, cols = np.tril_indices(n, -1)
    return np.column_stack([np.concatenate([rows, cols]), np.concatenate([cols, rows])])


#: A split's proposals: their ensembles, walkers, positions, log Metropolis factors and acceptance uniforms.
Proposals = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]


def _split_sets(labels: np.ndarray, sizes: Sequence[int]) -> list[np.ndarray]:
    """Per split, each ensemble's (row of `labels`) walkers in it, in walker order; `sizes` are the splits' sizes."""
    order = np.argsort(labels, axis=1, kind="stable")
    edges = np.cumsum([0, *sizes])
    return [order[:, lo:hi] for lo, hi in itertools.pairwise(edges)]


def _de_proposals(
    coords: np.ndarray,
    rows: np.ndarray,
    sets: list[np.ndarray],
    split: int,
    move: Any,
    randoms: Sequence[_EnsembleRandom],
) -> Proposals:
    """emcee's ``DEMove`` proposals for the walkers of `split` in ensembles `rows`, and their acceptance uniforms.

    Per ensemble, ``choice`` of a pair of distinct complement walkers per walker
    (which is ``randint`` over the pairs), ``randn`` of its stretch, as emcee
    (3.1.5 and later) draws them, then the uniform of each proposal's
    acceptance (the log density drawn nothing in between); the arithmetic on
    every ensemble at once. `sets` are the ensembles' splits (:func:`_split_sets`).
    """
    members = sets[split]
    complement = np.concatenate(sets[:split] + sets[split + 1 :], axis=1)
    m, ns = members.shape
    pairs = _nondiagonal_pairs(complement.shape[1])
    picks = np.empty((m, ns), dtype=np.intp)
    stretch = np.empty((m, ns, 1))
    uniforms = np.empty((m, ns))
    for r, i in enumerate(rows):
        random = randoms[i].random
        picks[r] = random.randint(0, len(pairs), size=ns)
        stretch[r] = random.randn(ns, 1)
        uniforms[r] = random.random_sample(ns)
    ensemble = rows[:, None]
    pair = complement[np.arange(m)[:, None, None], pairs[picks]]  # (m, ns, 2) walkers
    diffs = coords[ensemble, pair[..., 1]] - coords[ensemble, pair[..., 0]]
    gamma = move.g0 * (1 + move.sigma * stretch)
    q = coords[ensemble, members] + gamma * diffs
    return np.repeat(rows, ns), members.ravel(), q.reshape(m * ns, -1), np.zeros(m * ns), uniforms.ravel()


def _snooker_proposals(
    coords: np.ndarray,
    rows: np.ndarray,
    sets: list[np.ndarray],
    split: int,
    move: Any,
    randoms: Sequence[_EnsembleRandom],
) -> Proposals:
    """emcee's ``DESnookerMove`` proposals for the walkers of `split` in ensembles `rows` (see :func:`_de_proposals`).

    Per walker emcee draws one walker of each of the three other splits
    (``randint``) and shuffles the three (``shuffle``): the same integers, from
    the same outputs, come from :func:`_bounded_draws`. The products are summed
    as emcee's ``numpy.dot`` and ``numpy.linalg.norm`` sum them (:func:`_dot`).
    """
    members, others = sets[split], sets[:split] + sets[split + 1 :]
    m, ns = members.shape
    tops = [s.shape[1] - 1 for s in others] + [2, 1]
    draws = np.empty((m, ns * len(tops)), dtype=np.intp)
    uniforms = np.empty((m, ns))
    for r, i in enumerate(rows):
        draws[r] = _bounded_draws(randoms[i].bits, tops, ns)
        uniforms[r] = randoms[i].random.random_sample(ns)
    draws = draws.reshape(m, ns, len(tops))
    at = np.arange(m)[:, None]
    drawn = np.stack([s[at, draws[..., j]] for j, s in enumerate(others)], axis=-1)  # (m, ns, 3) walkers
    z, z1, z2 = np.take_along_axis(drawn, _SNOOKER_ORDERS[draws[..., 3], draws[..., 4]], axis=-1).transpose(2, 0, 1)
    ensemble = rows[:, None]
    s = coords[ensemble, members]
    start = coords[ensemble, z]
    delta = s - start
    norm = np.sqrt(_dot(delta, delta))
    u = delta / np.sqrt(norm)[..., None]
    q = s + u * move.gammas * (_dot(u, coords[ensemble, z1]) - _dot(u, coords[ensemble, z2]))[..., None]
    away = q - start
    metropolis = np.log(np.sqrt(_dot(away, away))) - np.log(norm)
    d = coords.shape[2]
    factors = 0.5 * (d - 1.0) * metropolis
    return np.repeat(rows, ns), members.ravel(), q.reshape(m * ns, d), factors.ravel(), uniforms.ravel()


def _run_ensembles(
    log_prob: Callable[[np.ndarray, np.ndarray], np.ndarray],
    starts: Sequence[np.ndarray],
    steps: int,
    burn: int,
    seeds: Sequence[int],
) -> list[dict[str, np.ndarray]]:
    """Step independent emcee ensembles together, each exactly as emcee's ``EnsembleSampler`` would.

    Each ensemble moves by emcee's ``DEMove`` (weight 0.8) and ``DESnookerMove``
    (0.2) with its own ``numpy.random.RandomState(seed)``, drawing the same
    random numbers in the same order as ``EnsembleSampler(walkers, d, log_prob,
    vectorize=True, moves=..., blobs_dtype=float)`` with that random state does
    (the move, the split of the walkers, the proposal, one uniform per proposed
    walker) and doing the same arithmetic, so its chain is emcee's to the last
    bit (emcee 3.1.5 and later; tests/test_calibration_posterior.py checks it).
    What differs is the bookkeeping: the proposals of every ensemble at a split
    are computed together and go to `log_prob` in one call (the compiled engine
    simulates them as one batch), and emcee's per-walker Python loops, per-step
    State objects and random-state copies are gone. On Richardson's model those
    cost several times the simulations.

    Parameters
    ----------
    log_prob : callable
        Given proposals (rows) and the ensemble each belongs to, returns rows of (log density,
        a float kept beside it) that are -inf, never NaN, where a proposal is impossible.
    starts : sequence of numpy.ndarray
        Each ensemble's starting walkers, shape (walkers, d), alike for all ensembles.
    steps, burn : int
        Steps to take, and how many of the first to leave out of the returned chain.
    seeds : sequence of int
        Each ensemble's seed.

    Returns
    -------
    list of dict
        Per ensemble ``chain`` (steps - burn, walkers, d), ``blobs`` (steps - burn, walkers) and
        ``acceptance`` (per walker, the fraction of the steps that moved it).
    """
    import emcee

    coords = np.array(starts, dtype=float)  # (ensembles, walkers, d)
    n, walkers, d = coords.shape
    # The two checks EnsembleSampler makes before sampling: too few walkers, or walkers on one
    # line, give a chain that cannot explore the posterior.
    if walkers < 2 * d:
        msg = f"{walkers} walkers for {d} parameters: the sampler needs at least {2 * d}"
        raise ValueError(msg)
    if not all(emcee.ensemble.walkers_independent(p) for p in coords):
        msg = "the starting walkers are not linearly independent: the sampler cannot move them apart"
        raise ValueError(msg)
    de, snooker = emcee.moves.DEMove(), emcee.moves.DESnookerMove()
    de.setup(coords[0])  # the stretch factor, from the dimension
    # RandomState.choice(2, p=weights) is the first move where a uniform falls below the weights' cdf.
    cdf = np.cumsum([_DE_WEIGHT, 1 - _DE_WEIGHT])
    cdf /= cdf[-1]
    randoms = [_EnsembleRandom(seed) for seed in seeds]
    unsplit = {move.nsplits: np.arange(walkers) % move.nsplits for move in (de, snooker)}
    sizes = {k: np.bincount(labels, minlength=k).tolist() for k, labels in unsplit.items()}
    first = log_prob(coords.reshape(n * walkers, d), np.repeat(np.arange(n), walkers))
    density = first[:, 0].reshape(n, walkers).copy()
    blob = first[:, 1].reshape(n, walkers).copy()
    chains = np.empty((n, steps - burn, walkers, d))
    blobs = np.empty((n, steps - burn, walkers))
    accepted = np.zeros((n, walkers))
    labels = np.empty((n, walkers), dtype=np.intp)
    moves = ((de, _de_proposals), (snooker, _snooker_proposals))
    for step in range(steps):
        snooking = np.array([each.random.random_sample() >= cdf[0] for each in randoms])
        for i, each in enumerate(randoms):
            labels[i] = unsplit[(snooker if snooking[i] else de).nsplits]
            each.random.shuffle(labels[i])
        groups = []
        for (move, propose), rows in zip(moves, (np.flatnonzero(~snooking), np.flatnonzero(snooking)), strict=True):
            if len(rows):
                groups.append((move, propose, rows, _split_sets(labels[rows], sizes[move.nsplits])))
        for split in range(max(move.nsplits for move, *_ in groups)):
            parts = [propose(coords, rows, sets, split, move, randoms)
                     for move, propose, rows, sets in groups if split < move.nsplits]  # fmt: skip
            owner, member, q, factors, uniforms = parts[0]
            if len(parts) > 1:  # the batch in ensemble order, as one ensemble's own batch would be laid out
                owner, member, q, factors, uniforms = (np.concatenate(p) for p in zip(*parts, strict=True))
                order = np.argsort(owner, kind="stable")
                owner, member, q, factors, uniforms = (a[order] for a in (owner, member, q, factors, uniforms))
            found = log_prob(q, owner)
            with np.errstate(divide="ignore", invalid="ignore"):
                take = factors + found[:, 0] - density[owner, member] > np.log(uniforms)
            who, walker = owner[take], member[take]
            coords[who, walker] = q[take]
            density[who, walker] = found[take, 0]
            blob[who, walker] = found[take, 1]
            accepted[who, walker] += 1
        if step >= burn:
            chains[:, step - burn] = coords
            blobs[:, step - burn] = blob
    return [{"chain": chains[i], "blobs": blobs[i], "acceptance": accepted[i] / steps} for i in range(n)]


def _walkers(spec: CalibrationSpec, d: int) -> int:
    """emcee's walkers for `d` fitted quantities: the config's, else enough for the ensemble moves."""
    return spec.walkers or max(32, 2 * (2 * d + 1))


def _posterior_simulator(spec: CalibrationSpec) -> _Simulator:
    """The compiled simulator of a ``method = "bayes"`` calibration, refusing what only PySD can run.

    emcee makes ``steps x walkers`` runs (816,000 for the cold-war posterior:
    70 s of CPU compiled, over an hour on PySD at 5 ms a run, and far longer for
    a bigger model), so a model or fixed series the compiled engine cannot take
    is a config error here, not a silent fallback.
    One run at the initial values finds a series or lookup the engine refuses
    only when it reads it.

    Raises
    ------
    ConfigError
        Naming the config, the model and the construct the engine cannot compile.
    """
    names = [p.name for p in spec.parameters]
    try:
        sim = _Simulator(spec.model, spec.time, spec.fixed, names, list(spec.observations.columns), "compiled",
                         fallback=False)  # fmt: skip
        sim(np.array([p.initial for p in spec.parameters], dtype=float))
    except UnsupportedConstruct as exc:
        runs = spec.steps * _walkers(spec, len(names))
        where = spec.config_path or "the calibration config"
        msg = (
            f'{where}: calibration.method = "bayes" needs the compiled engine, which cannot simulate '
            f"{spec.model.path.name}: {exc}. The sampler's {runs:,} runs ({spec.steps} steps x "
            f'{runs // spec.steps} walkers) would run one at a time on PySD; use method = "trajectory" '
            "(least squares, which runs on PySD), or rewrite that construct so the compiled engine takes it"
        )
        raise ConfigError(msg) from None
    return sim


def _stability_of_draws(spec: CalibrationSpec, names: Sequence[str], draws: np.ndarray) -> np.ndarray | None:
    """Per draw: True where the fitted race is stable (ab > kl; or max Re eig(K - A) < 0); None if not Richardson."""
    if all(n in spec.model.variables for n in PARAMETER_NAMES.values()):
        column = {n: j for j, n in enumerate(names)}
        fixed = {n: v for n, v in spec.fixed.items() if isinstance(v, int | float)}
        values = {}
        for sym in "klab":
            name = PARAMETER_NAMES[sym]
            held = fixed.get(name, spec.model.variable(name).default)
            if name in column:
                values[sym] = draws[:, column[name]]
            elif isinstance(held, int | float):
                values[sym] = np.full(len(draws), float(held))
            else:  # a coefficient with no value to read (Richardson.from_values would fail on it)
                return None
        # Richardson.determinant's ab - kl, for every draw at once (4,000 draws a posterior).
        return values["a"] * values["b"] - values["k"] * values["l"] > 0
    if lagged_system(spec.model) is not None:
        out = []
        for row in draws:
            k_mat, a_vec, _, _ = _n_state_matrices(spec.model, spec.fixed, dict(zip(names, row, strict=True)))
            out.append(_abscissa(k_mat, a_vec)[0] < 0)
        return np.array(out)
    return None


def _calibrate_bayes(specs: Sequence[CalibrationSpec], started: str) -> list[CalibrationResult]:
    """``method = "bayes"`` calibrations of data sets of one model, their posteriors sampled together."""
    _emcee()
    # Refused before the least-squares fits, which would fall back to PySD and then be wasted.
    sim = _posterior_simulator(specs[0])
    bases = [_calibrate_trajectory(spec, started) for spec in specs]
    ridges = [
        base.summary["identification"].startswith("weakly identified")
        or not base.summary.get("jacobian_condition", math.inf) <= RIDGE_CONDITION
        for base in bases
    ]
    founds = _sample_posteriors(specs, [base.estimates for base in bases], ridges, sim)
    return [_posterior_result(*each, sim) for each in zip(specs, bases, founds, strict=True)]


def _posterior_result(
    spec: CalibrationSpec, base: CalibrationResult, found: Mapping[str, Any], sim: _Simulator
) -> CalibrationResult:
    """The least-squares result `base` with the posterior `found` (see :func:`sample_posterior`) added."""
    chain, names = found["chain"], found["names"]
    flat = chain.reshape(-1, chain.shape[2])
    keep = np.unique(np.linspace(0, len(flat) - 1, min(POSTERIOR_DRAWS, len(flat))).astype(int))
    draws = flat[keep]
    estimates = base.estimates.copy()
    estimates["posterior_mean"] = flat.mean(axis=0)
    estimates["posterior_sd"] = flat.std(axis=0, ddof=1)
    estimates["posterior_median"] = np.median(flat, axis=0)
    estimates["posterior_low"] = np.quantile(flat, 0.025, axis=0)
    estimates["posterior_high"] = np.quantile(flat, 0.975, axis=0)
    estimates["rhat"] = found["rhat"]
    estimates["ess"] = found["ess"]
    summary = dict(base.summary)
    steps_kept, walkers = chain.shape[0], chain.shape[1]
    summary["method"] = "bayes"
    summary["posterior"] = {
        "walkers": walkers,
        "steps": spec.steps,
        "burn": spec.burn,
        "draws": int(steps_kept * walkers),
        "converged": found["converged"],
        "convergence": found["convergence"],
        "acceptance": found["acceptance"],
        "max_rhat": found["max_rhat"],
        "min_ess": found["min_ess"],
        "max_autocorrelation_time": found["max_autocorrelation_time"],
        "steps_per_autocorrelation_time": found["steps_per_tau"],
        "stuck_walkers": found["stuck_walkers"],
        # The posterior's own simulator (the least-squares fit's is summary["engine"]): compiled or refused.
        "engine": sim.engine,
        "backend": sim.compiled.backend,
        "sampler": "emcee: differential evolution (80%) and snooker (20%) moves",
        "coordinates": found["coordinates"],
        "coordinates_description": found["coordinates_description"],
        "likelihood": "Gaussian, one noise variance shared by every observation, integrated out (Jeffreys prior)",
        "priors": {n: (f"normal{spec.priors[n]}" if n in spec.priors else "uniform on the bounds") for n in names},
    }
    mixed = found["converged"]
    if not mixed:
        summary["identification"] += (
            f"; posterior {found['convergence']}: raise calibration.steps (and burn), or give "
            "[calibration.priors] where the likelihood has a long ridge (a weakly identified fit); "
            "the posterior summaries are not yet reliable"
        )
    stable = _stability_of_draws(spec, names, draws)
    if stable is not None:
        p = float(stable.mean())
        summary["stability_least_squares"] = summary.get("stability")
        summary["p_stable_posterior"] = p
        if not mixed:
            verdict, reason = "indeterminate", f"posterior not converged; P(stable) = {p:.3f} is not yet reliable"
        elif p >= 0.975:
            verdict, reason = "stable", f"posterior probability of stability {p:.3f} >= 0.975"
        elif p <= 0.025:
            verdict, reason = "unstable", f"posterior probability of stability {p:.3f} <= 0.025"
        else:
            verdict, reason = "indeterminate", f"posterior probability of stability {p:.3f} is between 0.025 and 0.975"
        if summary.get("stability_given"):
            # Held coefficients decide part of the verdict by assumption, as in the least-squares one.
            reason += f"; given the fixed {', '.join(summary['stability_given'])}"
        summary["stability"], summary["stability_reason"] = verdict, reason
    derived = base.derived
    modes = _two_state_draws(spec, names, draws)
    if modes is not None and "determinant ab-kl" in derived.index:
        # What the data identify on Richardson's ridge: the slow mode's rate (the sign of kl - ab), not k, l, a, b.
        derived = derived.copy()
        for row, values in (("determinant ab-kl", modes["determinant"]), ("eigenvalue 2 real", modes["slow"])):
            low, median, high = np.quantile(values, [0.025, 0.5, 0.975])
            derived.loc[row, ["posterior_median", "posterior_low", "posterior_high"]] = [median, low, high]
            summary["posterior"]["slow_rate" if row.startswith("eigen") else "determinant"] = [low, median, high]
        derived.loc["determinant ab-kl", "note"] = (
            f"stability: {summary['stability']} ({summary['stability_reason']}); "
            f"least squares: {summary['stability_least_squares']}"
        )
    posterior = pd.DataFrame(draws, columns=names)
    posterior.insert(0, "walker", keep % walkers)
    posterior.insert(1, "step", spec.burn + keep // walkers)
    posterior["log_posterior"] = found["log_prob"].reshape(-1)[keep]
    if stable is not None:
        posterior["stable"] = stable
    predictive = _posterior_predictive(spec, sim, draws)
    return replace(
        base, estimates=estimates, derived=derived, summary=summary, posterior=posterior, predictive=predictive
    )


def _two_state_draws(spec: CalibrationSpec, names: Sequence[str], draws: np.ndarray) -> dict[str, np.ndarray] | None:
    """Per draw of Richardson's two-state model: ``determinant`` ab - kl and ``slow``, the larger eigenvalue."""
    if not all(n in spec.model.variables for n in PARAMETER_NAMES.values()):
        return None
    column = {n: j for j, n in enumerate(names)}
    values: dict[str, np.ndarray] = {}
    for sym in "klab":
        name = PARAMETER_NAMES[sym]
        if name in column:
            values[sym] = draws[:, column[name]]
            continue
        fixed = spec.fixed.get(name, spec.model.variable(name).default)
        if not isinstance(fixed, int | float):
            return None
        values[sym] = np.full(len(draws), float(fixed))
    k, ell, a, b = (values[s] for s in "klab")
    # Real when kl >= 0; otherwise the real part of the complex pair, -(a + b) / 2.
    root = np.sqrt(np.clip((a - b) ** 2 + 4 * k * ell, 0, None))
    return {"determinant": a * b - k * ell, "slow": (-(a + b) + root) / 2}


def _posterior_predictive(spec: CalibrationSpec, sim: _Simulator, draws: np.ndarray) -> pd.DataFrame:
    """Quantiles of simulated observations (model paths plus each draw's noise) at every saved time."""
    rng = np.random.default_rng(spec.seed + 1)
    pick = draws[rng.choice(len(draws), size=min(PREDICTIVE_DRAWS, len(draws)), replace=False)]
    variables = list(spec.observations.columns)
    paths = sim(pick)  # (draws, saved, variables)
    saved = spec.time.save_times()
    rows = np.array([int(np.argmin(np.abs(saved - t))) for t in spec.observations.index.to_numpy(dtype=float)])
    observed = spec.observations.to_numpy(dtype=float)
    mask = np.isfinite(observed)
    res = np.where(mask, np.take(paths, rows, axis=1) - observed, 0.0)
    # The likelihood's one noise variance is drawn, not set to its maximum-likelihood value SSR/n (too
    # narrow a band on short series): under Jeffreys' prior p(sigma^2) ~ 1/sigma^2, sigma^2 given theta has
    # density ~ sigma^-(n+2) exp(-SSR/2sigma^2), i.e. SSR/chi2 on n degrees of freedom (integrating it out
    # gives the sampled SSR^(-n/2)); theta's own uncertainty is in the draws, so not n - p.
    ssr = (res**2).sum(axis=(1, 2))  # (draws,)
    n = max(int(mask.sum()), 1)
    sigma = np.sqrt(ssr / rng.chisquare(n, size=len(ssr)))
    noisy = paths + rng.standard_normal(paths.shape) * sigma[:, None, None]
    out = []
    for j, name in enumerate(variables):
        q = np.quantile(noisy[:, :, j], [0.025, 0.5, 0.975], axis=0)
        out.append(pd.DataFrame({"variable": name, "time": saved, "low": q[0], "median": q[1], "high": q[2],
                                 "path_median": np.median(paths[:, :, j], axis=0)}))  # fmt: skip
    return pd.concat(out, ignore_index=True)


# --------------------------------------------------------------------------- calibrate


def calibrate(config_path: str | os.PathLike[str] | CalibrationSpec) -> CalibrationResult:
    """Run the calibration a config describes.

    Parameters
    ----------
    config_path : path-like or CalibrationSpec
        A calibration config file (see the module docstring), or one already loaded.

    Returns
    -------
    CalibrationResult

    Raises
    ------
    ConfigError
        If the config or its data are invalid.
    ModelError
        If the model cannot be simulated.
    """

    started = now()
    spec = config_path if isinstance(config_path, CalibrationSpec) else load_calibration(config_path)
    if spec.method == "richardson_combined":
        return _calibrate_combined(spec, started)
    if spec.method == "lagged":
        result = _calibrate_lagged(spec, started)
    elif spec.method == "bayes":
        result = _calibrate_bayes([spec], started)[0]
    else:
        result = _calibrate_trajectory(spec, started)
    return _with_specifications(result)


def _with_specifications(result: CalibrationResult) -> CalibrationResult:
    """`result` with its spec's ``[[specifications]]`` fitted and ranked beside it (unchanged without any)."""
    spec = result.spec
    if not spec.specifications:
        return result
    others = tuple(calibrate(alt) for alt in spec.specifications)
    table = compare_specifications([result, *others])
    result.summary["comparison"] = {
        "verdict": comparison_verdict(table),
        "table": table.reset_index().to_dict("records"),
    }
    return replace(result, comparison=table, alternatives=others)


#: What the calibrations of one :func:`calibrate_many` batch share: one model, simulated alike, one sampler.
_SHARED = ("method", "time", "fixed", "parameters", "priors", "walkers", "steps", "burn")


def calibrate_many(specs: Sequence[CalibrationSpec]) -> list[CalibrationResult]:
    """Calibrate one model to several data sets; ``method = "bayes"`` posteriors are sampled together.

    Each result is what :func:`calibrate` gives for its spec: a posterior's chain
    is the same chain (:func:`_run_ensembles` steps each data set's ensemble as
    emcee would, with its own seed), but every data set's proposals at a step are
    simulated as one compiled batch. A coverage study over simulated races, say,
    runs several times faster than one :func:`calibrate` call per data set.

    Parameters
    ----------
    specs : sequence of CalibrationSpec
        Calibrations of one model that differ only in their observations' values,
        their seeds and their sampler coordinates, e.g.
        ``dataclasses.replace(spec, observations=data, seed=i)`` for each data set.

    Returns
    -------
    list of CalibrationResult
        In the order of `specs`.

    Raises
    ------
    ValueError
        If the specs of a ``method = "bayes"`` batch differ in anything else (named).
    ConfigError, ModelError
        As :func:`calibrate`.
    """
    specs = list(specs)
    if not specs or specs[0].method != "bayes":
        return [calibrate(spec) for spec in specs]
    first = specs[0]
    for i, spec in enumerate(specs[1:], start=1):
        differs = [key for key in _SHARED if getattr(spec, key) != getattr(first, key)]
        if spec.model.path != first.model.path or spec.model.sha256 != first.model.sha256:
            differs.append("model")
        if list(spec.observations.columns) != list(first.observations.columns):
            differs.append("observations' columns")
        if not spec.observations.index.equals(first.observations.index):
            differs.append("observations' times")
        if differs:
            msg = (
                f"calibrate_many: specs[{i}] differs from specs[0] in {', '.join(differs)}; a batch of "
                "method 'bayes' calibrations shares everything but the observations' values, the seed "
                "and the coordinates (calibrate them one by one instead)"
            )
            raise ValueError(msg)
    return [_with_specifications(result) for result in _calibrate_bayes(specs, now())]


def _calibrate_trajectory(spec: CalibrationSpec, started: str) -> CalibrationResult:
    fit = fit_trajectories(
        spec.model,
        spec.observations,
        spec.parameters,
        spec.time,
        fixed=spec.fixed,
        loss=spec.loss,
        f_scale=spec.f_scale,
        engine=spec.engine,
    )
    estimates = fit.estimates.copy()
    boot = None
    if spec.bootstrap:
        boot = _bootstrap(spec, fit)
        ok = boot[boot["converged"]]
        estimates["bootstrap_low"] = [ok[name].quantile(0.025) for name in estimates.index]
        estimates["bootstrap_high"] = [ok[name].quantile(0.975) for name in estimates.index]
    estimates["units"] = [_units(spec.model, name) for name in estimates.index]
    summary = {"method": spec.method, "specification": spec.label, **fit.statistics, "units": spec.data.units}
    derived = _richardson_derived(spec, fit, boot, summary)
    diagnostics = diagnose(spec.observations, fit.fit, int(fit.statistics["n_parameters"]))
    summary["response"] = f"levels of {', '.join(spec.observations.columns)}"
    summary["likelihood"] = f"{summary['response']} (trajectory, measurement error with one variance)"
    summary["log_likelihood"] = diagnostics["log_likelihood"]
    summary["n_likelihood_parameters"] = int(fit.statistics["n_parameters"])
    summary["aic"], summary["bic"] = diagnostics["aic"], diagnostics["bic"]
    summary["diagnostics_verdict"] = diagnostics["verdict"]
    summary["diagnostics"] = diagnostics
    summary["identification"] = identification_note(summary, estimates)
    return CalibrationResult(
        spec=spec,
        estimates=estimates,
        derived=derived,
        fit=fit.fit,
        covariance=fit.covariance,
        bootstrap=boot,
        summary=summary,
        trajectories=fit.trajectories,
        started=started,
    )


def _units(model: Model, name: str) -> str:
    """Units of a constant or of one element of it (``"grievance g[USA]"``)."""
    return model.element(name)[0].units


def _bootstrap(spec: CalibrationSpec, fit: TrajectoryFit) -> pd.DataFrame:
    """Residual bootstrap: refit to the fitted values plus resampled residuals of the same series.

    Residuals are resampled within each observed variable (series may differ in
    spread), with replacement, and each replicate starts from the estimate.
    """
    rng = np.random.default_rng(spec.seed)
    theta = fit.estimates["estimate"].to_numpy()
    start = [
        FittedParameter(p.name, float(np.clip(t, *p.bounds)), p.bounds, p.stock)
        for p, t in zip(spec.parameters, theta, strict=True)
    ]
    rows = []
    base = fit.fit
    for i in range(spec.bootstrap):
        synthetic = spec.observations.copy() * math.nan
        for name, part in base.groupby("variable", sort=False):
            draws = rng.choice(part["residual"].to_numpy(), size=len(part), replace=True)
            synthetic.loc[part["time"].to_numpy(), name] = part["fitted"].to_numpy() + draws
        try:
            refit = fit_trajectories(
                spec.model, synthetic, start, spec.time, fixed=spec.fixed, loss=spec.loss,
                f_scale=spec.f_scale, engine=spec.engine,
            )  # fmt: skip
        except ModelError:
            rows.append({"replicate": i, "converged": False})
            continue
        row = {"replicate": i, "converged": refit.statistics["converged"], "rmse": refit.statistics["rmse"]}
        row.update(refit.estimates["estimate"].to_dict())
        rows.append(row)
    return pd.DataFrame(rows).set_index("replicate")


def _richardson_derived(
    spec: CalibrationSpec, fit: TrajectoryFit, boot: pd.DataFrame | None, summary: dict[str, Any]
) -> pd.DataFrame:
    """For Richardson's model: ab - kl (delta-method and bootstrap intervals) and the honest stability verdict."""
    if any(n not in spec.model.variables for n in PARAMETER_NAMES.values()):
        if lagged_system(spec.model) is not None:
            return _richardson_n_derived(spec, fit, boot, summary)
        return pd.DataFrame()

    # ab - kl, the equilibrium and the eigenvalues need k, l, a, b, g and h (not the initial arms). Those not
    # fitted are held at their fixed number, else at the model file's value.
    coefficients = [PARAMETER_NAMES[sym] for sym in "klabgh"]
    fitted = [name for name in coefficients if name in fit.estimates.index]
    defaults: dict[str, float] = {}
    for name in coefficients:
        if name in fitted:
            continue
        fixed = spec.fixed.get(name)
        default = spec.model.variable(name).default
        if isinstance(fixed, float):
            defaults[name] = float(fixed)
        elif default is not None:
            defaults[name] = default
        else:
            # Neither fitted, fixed to a number nor a number in the model file (an equation, say):
            # the coefficients are not Richardson's constants, so there is no ab - kl to report.
            return pd.DataFrame()
    dets = None
    if boot is not None:
        ok = boot[boot["converged"]]
        dets = np.array(
            [
                Richardson.from_values({**defaults, **{n: float(r[n]) for n in fitted}}).determinant
                for r in ok.to_dict("records")
            ]
        )
        boot["determinant ab-kl"] = np.nan
        boot.loc[ok.index, "determinant ab-kl"] = dets
    found = richardson_stability(fit.estimates, fit.covariance, fit.statistics["dof"], defaults, dets)
    model, det, se = found["model"], found["determinant"], found["std_error"]
    verdict = found["verdict"]
    # An equilibrium is reported only when ab - kl is clearly non-zero: otherwise it is an artefact.
    # Differencing removes the grievances, so a differenced fit has no equilibrium to report.
    no_grievances = spec.method == "lagged" and spec.transform == "differenced"
    eq = model.equilibrium() if verdict != "indeterminate" and not no_grievances else None
    ev = model.eigenvalues()
    rows = {
        "determinant ab-kl": {"estimate": det, "std_error": se, "ci_low": found["ci_low"], "ci_high": found["ci_high"]},
        "equilibrium X": {"estimate": math.nan if eq is None else eq[0]},
        "equilibrium Y": {"estimate": math.nan if eq is None else eq[1]},
        "eigenvalue 1 real": {"estimate": ev[0].real},
        "eigenvalue 2 real": {"estimate": ev[1].real},
        "eigenvalue imag": {"estimate": abs(ev[0].imag)},
    }
    # A coefficient held fixed (a = b = 0, say) decides part of ab - kl by assumption, not from the data.
    values = {sym: spec.fixed.get(PARAMETER_NAMES[sym]) for sym in "klab"}
    held = [f"{sym} = {float(v):g}" for sym, v in values.items() if isinstance(v, int | float)]
    if held:
        found["reason"] += f"; given the fixed {', '.join(held)}"
    summary["stability"] = verdict
    summary["stability_reason"] = found["reason"]
    summary["stability_given"] = held
    summary["determinant ab-kl"] = det
    summary["determinant_ci"] = [found["ci_low"], found["ci_high"]]
    summary["p_stable_normal"] = float(scipy.stats.norm.cdf(det / se)) if se > 0 else math.nan
    if boot is not None:
        rows["determinant ab-kl"]["bootstrap_low"] = found["bootstrap_low"]
        rows["determinant ab-kl"]["bootstrap_high"] = found["bootstrap_high"]
        summary["share_stable_bootstrap"] = found["share_stable_bootstrap"]
        summary["bootstrap_converged"] = len(ok)
        summary["bootstrap_replicates"] = len(boot)
        names = list(fit.estimates.index)
        lower, upper = fit.estimates["lower"].to_numpy(), fit.estimates["upper"].to_numpy()
        piled = {
            n: int(near_bound(ok[n].to_numpy(), lo, hi).sum()) for n, lo, hi in zip(names, lower, upper, strict=True)
        }
        summary["bootstrap_at_bound"] = {n: c for n, c in piled.items() if c}
    flagged = [n for n in fit.estimates.index if fit.estimates.loc[n, "at_bound"]]
    summary["at_bound"] = flagged
    if eq is None:
        why = "the differenced fit does not estimate g and h" if no_grievances else "ab - kl is not clearly non-zero"
        rows["equilibrium X"]["note"] = rows["equilibrium Y"]["note"] = f"not reported: {why}"
    table = pd.DataFrame.from_dict(rows, orient="index")
    table.index.name = "quantity"
    if "note" not in table:
        table["note"] = ""
    table["note"] = table["note"].fillna("")
    table.loc["determinant ab-kl", "note"] = f"stability: {verdict} ({found['reason']})"
    return table


def spectral_verdict(
    abscissa: float,
    interval: tuple[float, float],
    scale: float,
    bootstrap_interval: tuple[float, float] | None = None,
) -> tuple[str, str]:
    """``stable``, ``unstable`` or ``indeterminate`` for an N-state race, with the reason in words.

    The race is stable when every eigenvalue of ``K - A`` has a negative real
    part, i.e. when the largest real part (the spectral abscissa) is negative.

    Parameters
    ----------
    abscissa : float
        The estimate of ``max Re eig(K - A)``.
    interval : (float, float)
        Its 95% interval (delta method); NaN when unavailable.
    scale : float
        The eigenvalues' largest modulus: an abscissa within
        :data:`DETERMINANT_NOISE_RTOL` of it is numerical noise.
    bootstrap_interval : (float, float), optional
        The bootstrap's 2.5% and 97.5% quantiles of the abscissa.

    Returns
    -------
    verdict, reason : str
        ``indeterminate`` when the abscissa is noise or an interval includes zero;
        otherwise stable when it is negative.
    """
    what = "max Re eig(K - A)"
    return _sign_verdict(abscissa, interval, scale, bootstrap_interval, what, "|eig|", stable_above=False)


def _n_state_matrices(
    model: Model, fixed: Mapping[str, ParameterValue], values: Mapping[str, float]
) -> tuple[np.ndarray, np.ndarray, np.ndarray, tuple[str, ...]]:
    """K, a and g of the subscripted N-state model: fitted `values` over `fixed` over the model file."""
    k, a, g = (model.variable(N_PARAMETER_NAMES[s]) for s in "kag")

    def value(var: Any, element: tuple[str, ...], index: int) -> float:
        name = var.element_name(element)
        for source in (values, fixed):
            for key in (name, var.name):  # an element, or the whole constant fitted as one shared value
                v = source.get(key)
                if isinstance(v, int | float):
                    return float(v)
        return float(var.defaults[index]) if var.defaults else math.nan

    states = a.dims[0][1]
    n = len(states)
    k_mat = np.array([value(k, e, i) for i, e in enumerate(k.elements())]).reshape(n, n)
    a_vec = np.array([value(a, e, i) for i, e in enumerate(a.elements())])
    g_vec = np.array([value(g, e, i) for i, e in enumerate(g.elements())])
    return k_mat, a_vec, g_vec, states


def _abscissa(k_mat: np.ndarray, a_vec: np.ndarray) -> tuple[float, np.ndarray]:
    eig = np.linalg.eigvals(k_mat - np.diag(a_vec))
    return float(np.max(eig.real)), eig


def _richardson_n_derived(
    spec: CalibrationSpec, fit: TrajectoryFit, boot: pd.DataFrame | None, summary: dict[str, Any]
) -> pd.DataFrame:
    """For the subscripted N-state model: max Re eig(K - A) with its interval, the verdict and equilibrium."""
    est = fit.estimates["estimate"]
    names = list(est.index)
    theta = est.to_numpy(dtype=float)

    def abscissa_of(t: np.ndarray) -> float:
        k_mat, a_vec, _, _ = _n_state_matrices(spec.model, spec.fixed, dict(zip(names, t, strict=True)))
        return _abscissa(k_mat, a_vec)[0]

    k_mat, a_vec, g_vec, _ = _n_state_matrices(spec.model, spec.fixed, est.to_dict())
    s, eig = _abscissa(k_mat, a_vec)
    # Delta method with a central-difference gradient (grievances and initial values do not enter).
    grad = np.zeros(theta.size)
    for i in range(theta.size):
        h = 1e-6 * max(1.0, abs(theta[i]))
        up, down = theta.copy(), theta.copy()
        up[i] += h
        down[i] -= h
        grad[i] = (abscissa_of(up) - abscissa_of(down)) / (2 * h)
    cov = fit.covariance.loc[names, names].to_numpy(dtype=float)
    var = float(grad @ cov @ grad)
    se = math.sqrt(var) if math.isfinite(var) and var >= 0 else math.nan
    tq = float(scipy.stats.t.ppf(0.975, max(int(fit.statistics["dof"]), 1)))
    low, high = s - tq * se, s + tq * se
    boot_interval = None
    if boot is not None:
        ok = boot[boot["converged"]]
        values = np.array([abscissa_of(r[names].to_numpy(dtype=float)) for _, r in ok.iterrows()])
        boot["max Re eig(K - A)"] = np.nan
        boot.loc[ok.index, "max Re eig(K - A)"] = values
        values = values[np.isfinite(values)]
        boot_interval = (
            (float(np.quantile(values, 0.025)), float(np.quantile(values, 0.975))) if values.size else (math.nan,) * 2
        )
        summary["share_stable_bootstrap"] = float(np.mean(values < 0)) if values.size else math.nan
        summary["bootstrap_converged"] = len(ok)
        summary["bootstrap_replicates"] = len(boot)
    scale = float(np.max(np.abs(eig))) if eig.size else 0.0
    verdict, reason = spectral_verdict(s, (low, high), scale, boot_interval)
    held = [n for n in spec.fixed if n.partition("[")[0] in (N_PARAMETER_NAMES["k"], N_PARAMETER_NAMES["a"])]
    if held:
        reason += f"; given {len(held)} fixed coefficients of K and a"
    no_grievances = spec.method == "lagged" and spec.transform == "differenced"
    rows: dict[str, dict[str, Any]] = {
        "max Re eig(K - A)": {"estimate": s, "std_error": se, "ci_low": low, "ci_high": high,
                              "note": f"stability: {verdict} ({reason})"},
    }  # fmt: skip
    if boot_interval is not None:
        rows["max Re eig(K - A)"]["bootstrap_low"], rows["max Re eig(K - A)"]["bootstrap_high"] = boot_interval
    equilibrium = None
    if verdict != "indeterminate" and not no_grievances:
        with contextlib.suppress(np.linalg.LinAlgError):
            equilibrium = np.linalg.solve(np.diag(a_vec) - k_mat, g_vec)
    system = lagged_system(spec.model)
    assert system is not None  # the caller checked
    for i, stock in enumerate(system.stocks):
        why = "the differenced fit does not estimate g" if no_grievances else "the verdict is indeterminate"
        rows[f"equilibrium {stock}"] = {
            "estimate": math.nan if equilibrium is None else float(equilibrium[i]),
            "note": "" if equilibrium is not None else f"not reported: {why}",
        }
    for i, e in enumerate(sorted(eig, key=lambda z: -z.real)):
        rows[f"eigenvalue {i + 1}"] = {"estimate": float(e.real), "note": f"imaginary part {abs(e.imag):.3g}"}
    summary["stability"] = verdict
    summary["stability_reason"] = reason
    summary["spectral_abscissa"] = s
    summary["spectral_abscissa_ci"] = [low, high]
    summary["at_bound"] = [n for n in fit.estimates.index if fit.estimates.loc[n, "at_bound"]]
    table = pd.DataFrame.from_dict(rows, orient="index")
    table.index.name = "quantity"
    table["note"] = table["note"].fillna("")
    return table


def _calibrate_combined(spec: CalibrationSpec, started: str) -> CalibrationResult:
    obs = spec.observations.dropna()
    totals = obs.sum(axis=1)
    kappa, c, d = richardson_combined_fit(totals.index.to_numpy(dtype=float), totals.to_numpy())
    units = spec.data.units
    estimates = pd.DataFrame(
        {
            "estimate": [kappa, c],
            "std_error": [d["kappa_se"], d["c_se"]],
            "ci_low": [d["kappa_ci"][0], d["c_ci"][0]],
            "ci_high": [d["kappa_ci"][1], d["c_ci"][1]],
            "units": ["1/Year", units],
        },
        index=pd.Index(["kappa", "c"], name="parameter"),
    )
    t = totals.index.to_numpy(dtype=float)
    fit = pd.DataFrame(
        {
            "variable": "yearly increment of U+V",
            "time": (t[1:] + t[:-1]) / 2,
            "mean": d["means"],
            "observed": d["increments"],
            "fitted": d["fitted"],
            "residual": d["residuals"],
        }
    )
    # The solution through the first year: U+V = c + (U0+V0 - c) exp(kappa (t - t0)).
    grid = np.linspace(t[0], t[-1], 101)
    path = c + (totals.iloc[0] - c) * np.exp(kappa * (grid - t[0]))
    trajectories = pd.DataFrame({"U+V": path}, index=pd.Index(grid, name="time"))
    summary = {
        "method": spec.method,
        "kappa": kappa,
        "c": c,
        "intercept": d["intercept"],
        "r2": d["r2"],
        "rmse": d["rmse"],
        "n_observations": d["n"],
        "n_parameters": 2,
        "dof": d["dof"],
        "units": units,
        "series": list(spec.data.columns),
        "note": "kappa = k - a and c = -(g + h)/(k - a) when k = l and a = b (Braun 1993, section 4.5)",
    }
    cov = pd.DataFrame(np.full((2, 2), math.nan), index=["kappa", "c"], columns=["kappa", "c"])
    cov.loc["kappa", "kappa"] = d["kappa_se"] ** 2
    cov.loc["c", "c"] = d["c_se"] ** 2
    return CalibrationResult(
        spec=spec,
        estimates=estimates,
        derived=pd.DataFrame(),
        fit=fit,
        covariance=cov,
        bootstrap=None,
        summary=summary,
        trajectories=trajectories,
        started=started,
    )


# --------------------------------------------------------------------------- output


def write_calibration(
    result: CalibrationResult,
    target: str | os.PathLike[str],
    force: bool = False,
    *,
    command: Sequence[str] | None = None,
) -> Path:
    """Write a calibration's results folder atomically.

    Parameters
    ----------
    result : CalibrationResult
        From :func:`calibrate`.
    target : path-like
        The folder to create (conventionally ``results/<experiment name>``).
    force : bool
        Replace an existing folder; without it an existing folder is an error.
    command : sequence of str, optional
        The command line, for the manifest (default: ``sys.argv``).

    Returns
    -------
    pathlib.Path
        The folder.

    Raises
    ------
    ResultsError
        If the folder exists (without `force`), is being written by another run,
        or cannot be written; nothing is left half-written.
    """

    target = Path(target)
    with atomic_folder(target, force=force) as tmp:
        _fill(tmp, result, command)
    return target


def _fill(folder: Path, result: CalibrationResult, command: Sequence[str] | None) -> None:

    spec = result.spec
    result.estimates.to_csv(folder / ESTIMATES_FILE)
    if not result.derived.empty:
        result.derived.to_csv(folder / DERIVED_FILE)
    result.fit.to_csv(folder / FIT_FILE, index=False)
    result.covariance.to_csv(folder / COVARIANCE_FILE)
    if result.bootstrap is not None:
        result.bootstrap.to_csv(folder / BOOTSTRAP_FILE)
    if "diagnostics" in result.summary:
        _diagnostics_table(result.summary["diagnostics"]).to_csv(folder / DIAGNOSTICS_FILE, index=False)
    if result.posterior is not None:
        result.posterior.to_csv(folder / POSTERIOR_FILE, index=False)
    if result.predictive is not None:
        result.predictive.to_csv(folder / PREDICTIVE_FILE, index=False)
    if result.comparison is not None:
        result.comparison.to_csv(folder / COMPARISON_FILE)
        every = [result, *result.alternatives]
        tidy = pd.concat(
            [
                r.estimates[["estimate", "std_error", "ci_low", "ci_high"]].assign(specification=r.spec.label)
                for r in every
            ]
        ).reset_index()
        tidy[["specification", "parameter", "estimate", "std_error", "ci_low", "ci_high"]].to_csv(
            folder / SPECIFICATIONS_FILE, index=False
        )
    observations = spec.observations.copy()
    observations.columns = [f"{c} ({spec.data.units})" for c in observations.columns]
    observations.to_csv(folder / DATA_FILE)
    with open(folder / SUMMARY_FILE, "w", encoding="utf-8") as fh:
        json.dump(_jsonable(result.summary), fh, indent=2)
        fh.write("\n")
    draw_calibration_figures(result, folder / "figures")
    manifest = build_manifest(spec.experiment(), started=result.started, command=command)
    manifest["calibration"] = {
        "method": spec.method,
        "loss": spec.loss,
        # The engine that ran, not the one asked for (PySD where the compiled engine could not compile the
        # model); None for a method that simulates nothing (lagged, combined).
        "engine": result.summary.get("engine"),
        "posterior_engine": result.summary["posterior"]["engine"] if result.posterior is not None else None,
        "bootstrap": spec.bootstrap,
        "seed": spec.seed,
        "parameters": [p.name for p in spec.parameters],
        "estimator": spec.estimator if spec.method == "lagged" else None,
        "transform": spec.transform if spec.method == "lagged" else None,
        "specifications": [spec.label, *(s.label for s in spec.specifications)],
        "sampler": {"package": "emcee", "walkers": result.summary["posterior"]["walkers"], "steps": spec.steps,
                    "burn": spec.burn} if result.posterior is not None else None,
    }  # fmt: skip
    manifest["data"] = {
        "path": str(spec.data.file),
        "sha256": file_sha256(spec.data.file),
        "kind": spec.data.kind,
        "columns": dict(spec.data.columns),
        "units": spec.data.units,
        "scale": spec.data.scale,
    }
    manifest["files"] = {str(p.relative_to(folder)): file_sha256(p) for p in sorted(folder.rglob("*")) if p.is_file()}
    with open(folder / "manifest.json", "w", encoding="utf-8") as fh:
        json.dump(manifest, fh, indent=2)
        fh.write("\n")
        fh.flush()
        os.fsync(fh.fileno())


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | np.ndarray):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.bool_ | bool):
        return bool(value)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, float | np.floating):
        return float(value) if math.isfinite(value) else None
    return value


def draw_calibration_figures(result: CalibrationResult, folder: Path) -> list[Path]:
    """Fitted against observed, and residuals, as PDF, SVG and PNG in `folder`.

    Returns
    -------
    list of pathlib.Path
        The files written.
    """
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    folder.mkdir(parents=True, exist_ok=True)
    spec = result.spec
    units = spec.data.units
    written: list[Path] = []
    with paper_style():
        if spec.method == "richardson_combined":
            fit = result.fit
            fig, (left, right) = plt.subplots(1, 2, figsize=(DOUBLE_COLUMN, 2.6), layout="constrained")
            left.plot(fit["mean"], fit["observed"], "o", label="observed")
            grid = np.linspace(fit["mean"].min(), fit["mean"].max(), 50)
            kappa, c = result.summary["kappa"], result.summary["c"]
            left.plot(grid, kappa * (grid - c), label=f"fit: κ = {kappa:.2f}/yr, c = {c:.0f}")
            left.set_xlabel(f"mean of U+V over the year ({units})")
            left.set_ylabel("increment of U+V in the year")
            left.legend()
            totals = spec.observations.dropna().sum(axis=1)
            right.plot(totals.index, totals.to_numpy(), "o", label="observed U+V")
            right.plot(result.trajectories.index, result.trajectories["U+V"], label="solution of the fit")
            right.set_xlabel("year")
            right.xaxis.set_major_locator(MaxNLocator(integer=True))
            right.set_ylabel(f"U+V ({units})")
            right.legend()
        else:
            names = list(spec.observations.columns)
            fig, axes = plt.subplots(
                len(names), 1, sharex=True, squeeze=False, figsize=(SINGLE_COLUMN, 0.6 + 1.7 * len(names)),
                layout="constrained",
            )  # fmt: skip
            for panel, name in zip(axes[:, 0], names, strict=True):
                obs = spec.observations[name]
                panel.plot(obs.index, obs.to_numpy(), "o", label="observed")
                label = "one step ahead" if spec.method == "lagged" else "fitted"
                panel.plot(result.trajectories.index, result.trajectories[name].to_numpy(), label=label)
                panel.set_title(name)
                panel.set_ylabel(units)
            axes[0, 0].legend()
            axes[-1, 0].set_xlabel(f"time ({spec.time.units})" if spec.time.units else "time")
        written += save_figure(fig, folder / "fit")
        plt.close(fig)

        if result.predictive is not None:
            written += _draw_predictive(result, folder)

        fig, ax = plt.subplots(figsize=(SINGLE_COLUMN, 2.2), layout="constrained")
        for name, part in result.fit.groupby("variable", sort=False):
            ax.plot(part["time"], part["residual"], "o-", label=str(name))
        ax.axhline(0, color="0.5", linewidth=0.6)
        ax.set_xlabel("time")
        per = f"{units} per {spec.time.units or 'time unit'}"
        ax.set_ylabel(f"observed - fitted ({per})" if spec.method == "lagged" else f"observed - fitted ({units})")
        ax.legend()
        written += save_figure(fig, folder / "residuals")
        plt.close(fig)
    return written


def _draw_predictive(result: CalibrationResult, folder: Path) -> list[Path]:
    """Observed points over the posterior predictive 95% band and the median model path."""
    import matplotlib.pyplot as plt

    spec = result.spec
    assert result.predictive is not None
    names = list(spec.observations.columns)
    fig, axes = plt.subplots(
        len(names), 1, sharex=True, squeeze=False, figsize=(SINGLE_COLUMN, 0.6 + 1.7 * len(names)), layout="constrained"
    )
    for panel, name in zip(axes[:, 0], names, strict=True):
        part = result.predictive[result.predictive["variable"] == name]
        panel.fill_between(part["time"], part["low"], part["high"], alpha=0.3, linewidth=0, label="95% predictive")
        panel.plot(part["time"], part["path_median"], label="posterior median path")
        obs = spec.observations[name]
        panel.plot(obs.index, obs.to_numpy(), "o", markersize=3, label="observed")
        panel.set_title(name)
        panel.set_ylabel(spec.data.units)
    axes[0, 0].legend()
    axes[-1, 0].set_xlabel(f"time ({spec.time.units})" if spec.time.units else "time")
    written = save_figure(fig, folder / "posterior_predictive")
    plt.close(fig)
    return written
