"""Parameter sensitivity studies: sample with SALib, run an ensemble, analyse with SALib.

Every method has the same two steps, registered in :data:`METHODS` so the
config, the CLI and the API know the same ones:

``sample(problem, spec) -> X``
    an ``(n_runs, n_parameters)`` array of parameter values;
``analyze(problem, spec, X, Y) -> dict``
    index name -> array over parameters, for one output ``Y`` (one value per run).

Methods: ``oat`` (one at a time: each parameter over ``levels`` values between
its bounds, the others at the midpoint; a tornado chart's low and high),
``grid`` (full factorial, ``levels`` values per parameter; no indices),
``latin`` and ``monte_carlo`` (Latin hypercube or plain random samples;
Spearman rank correlation of each parameter with the output, with a 95%
interval), ``morris`` (elementary effects: mu, mu_star with its interval,
sigma) and ``sobol`` (first-order S1 and total ST with 95% intervals, S2 when
``second_order``). SALib samples and estimates; armsdyn only wires them up.

References
----------
.. [1] Herman, J. and Usher, W. (2017). SALib: an open-source Python library for
   sensitivity analysis. *JOSS* 2(9), 97. https://doi.org/10.21105/joss.00097
.. [2] Saltelli, A. et al. (2010). Variance based sensitivity analysis of model
   output. *Computer Physics Communications* 181(2), 259-270.
   https://doi.org/10.1016/j.cpc.2009.09.018
.. [3] Morris, M. D. (1991). Factorial sampling plans for preliminary
   computational experiments. *Technometrics* 33(2), 161-174.
   https://doi.org/10.1080/00401706.1991.10484804
"""

from __future__ import annotations

import itertools
import os
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import scipy.stats
import xarray as xr

if TYPE_CHECKING:
    from armsdyn.config import Experiment

#: SALib distribution names and how many numbers each takes in ``bounds``.
DISTRIBUTIONS: dict[str, int] = {"unif": 2, "logunif": 2, "triang": 3, "norm": 2, "truncnorm": 4, "lognorm": 2}

#: How an output variable's time series becomes one number per run.
AGGREGATES = ("final", "mean", "max", "min", "at")


@dataclass(frozen=True)
class SampledParameter:
    """A model constant varied by a sensitivity study.

    Attributes
    ----------
    name : str
        Model name of the constant.
    bounds : tuple of float
        SALib's parameters of the distribution: ``[low, high]`` for ``unif`` and
        ``logunif``; ``[low, high, peak share]`` for ``triang``; ``[mean, sd]``
        for ``norm``; ``[low, high, mean, sd]`` for ``truncnorm``; ``[ln-mean,
        ln-sd]`` for ``lognorm``.
    distribution : str
        One of :data:`DISTRIBUTIONS`.
    also : tuple of str
        Other constants set to the same sampled value (e.g. the same parameter
        of the other state, to vary both together).
    """

    name: str
    bounds: tuple[float, ...]
    distribution: str = "unif"
    also: tuple[str, ...] = ()


@dataclass(frozen=True)
class Output:
    """One number per run that the study analyses.

    Attributes
    ----------
    name : str
        Label in the indices (the metric name, or ``"<variable> <aggregate>"``).
    metric : str
        A column of the metrics table (empty when `variable` is used).
    variable : str
        Model name of a saved variable (empty when `metric` is used).
    aggregate : str
        For a variable: one of :data:`AGGREGATES`.
    at : float
        For ``aggregate = "at"``: the time.
    """

    name: str
    metric: str = ""
    variable: str = ""
    aggregate: str = "final"
    at: float = float("nan")


@dataclass(frozen=True)
class SensitivitySpec:
    """A validated sensitivity study.

    Attributes
    ----------
    method : str
        One of :data:`METHODS`.
    parameters : tuple of SampledParameter
    outputs : tuple of Output
    samples : int
        SALib's ``N`` (base sample size; runs are a multiple of it for
        ``sobol`` and ``morris``); unused by ``oat`` and ``grid``.
    seed : int
        Seed for sampling and bootstrap intervals; the same seed gives the same study.
    levels : int
        Grid levels for ``morris``, ``oat`` and ``grid``.
    second_order : bool
        For ``sobol``: also estimate second-order indices.
    scenario : str
        The scenario whose parameters the samples start from.
    fan_variables : tuple of str
        Variables whose percentile bands over time are drawn (fan charts).
    variables : tuple of str
        Model variables the ensemble saves: what the outputs and fan charts need.
    """

    method: str
    parameters: tuple[SampledParameter, ...]
    outputs: tuple[Output, ...]
    samples: int = 256
    seed: int = 0
    levels: int = 4
    second_order: bool = False
    scenario: str = ""
    fan_variables: tuple[str, ...] = field(default=())
    variables: tuple[str, ...] = field(default=())

    def problem(self) -> dict[str, Any]:
        """The SALib problem dictionary."""
        return {
            "num_vars": len(self.parameters),
            "names": [p.name for p in self.parameters],
            "bounds": [list(p.bounds) for p in self.parameters],
            "dists": [p.distribution for p in self.parameters],
        }


def _midpoints(spec: SensitivitySpec) -> np.ndarray:
    return np.array([(p.bounds[0] + p.bounds[1]) / 2 for p in spec.parameters])


def _levels(p: SampledParameter, n: int) -> np.ndarray:
    lo, hi = p.bounds[:2]
    return np.geomspace(lo, hi, n) if p.distribution == "logunif" else np.linspace(lo, hi, n)


def _sample_oat(problem: dict[str, Any], spec: SensitivitySpec) -> np.ndarray:
    base = _midpoints(spec)
    rows = [base]
    for i, p in enumerate(spec.parameters):
        for value in _levels(p, spec.levels):
            row = base.copy()
            row[i] = value
            rows.append(row)
    return np.array(rows)


def _analyze_oat(problem: dict[str, Any], spec: SensitivitySpec, x: np.ndarray, y: np.ndarray) -> dict[str, Any]:
    base = y[0]
    low, high = [], []
    for i in range(len(spec.parameters)):
        block = y[1 + i * spec.levels : 1 + (i + 1) * spec.levels]
        low.append(block[0])
        high.append(block[-1])
    low_a, high_a = np.array(low), np.array(high)
    return {
        "base": np.full(len(low), base),
        "at_low": low_a,
        "at_high": high_a,
        "swing": np.abs(high_a - low_a),
    }


def _sample_grid(problem: dict[str, Any], spec: SensitivitySpec) -> np.ndarray:
    return np.array(list(itertools.product(*(_levels(p, spec.levels) for p in spec.parameters))))


def _analyze_none(problem: dict[str, Any], spec: SensitivitySpec, x: np.ndarray, y: np.ndarray) -> dict[str, Any]:
    return {}


def _sample_latin(problem: dict[str, Any], spec: SensitivitySpec) -> np.ndarray:
    from SALib.sample import latin

    return latin.sample(problem, spec.samples, seed=spec.seed)


def _sample_monte_carlo(problem: dict[str, Any], spec: SensitivitySpec) -> np.ndarray:
    from SALib.util import scale_samples

    rng = np.random.default_rng(spec.seed)
    return scale_samples(rng.random((spec.samples, problem["num_vars"])), problem)


def _analyze_rank(problem: dict[str, Any], spec: SensitivitySpec, x: np.ndarray, y: np.ndarray) -> dict[str, Any]:
    rho = np.array([scipy.stats.spearmanr(x[:, i], y).statistic for i in range(x.shape[1])])
    # Fisher z interval for a rank correlation (Bonett and Wright 2000 variance).
    n = len(y)
    se = np.sqrt((1 + rho**2 / 2) / max(n - 3, 1))
    z = np.arctanh(np.clip(rho, -0.999999, 0.999999))
    return {"spearman": rho, "spearman_low": np.tanh(z - 1.96 * se), "spearman_high": np.tanh(z + 1.96 * se)}


def _sample_morris(problem: dict[str, Any], spec: SensitivitySpec) -> np.ndarray:
    from SALib.sample import morris

    return morris.sample(problem, spec.samples, num_levels=spec.levels, seed=spec.seed)


def _analyze_morris(problem: dict[str, Any], spec: SensitivitySpec, x: np.ndarray, y: np.ndarray) -> dict[str, Any]:
    from SALib.analyze import morris

    res = morris.analyze(problem, x, y, num_levels=spec.levels, seed=spec.seed)
    return {k: np.asarray(res[k], dtype=float) for k in ("mu", "mu_star", "sigma", "mu_star_conf")}


def _sample_sobol(problem: dict[str, Any], spec: SensitivitySpec) -> np.ndarray:
    from SALib.sample import sobol

    return sobol.sample(problem, spec.samples, calc_second_order=spec.second_order, seed=spec.seed)


def _analyze_sobol(problem: dict[str, Any], spec: SensitivitySpec, x: np.ndarray, y: np.ndarray) -> dict[str, Any]:
    from SALib.analyze import sobol

    res = sobol.analyze(problem, y, calc_second_order=spec.second_order, seed=spec.seed)
    out = {k: np.asarray(res[k], dtype=float) for k in ("S1", "S1_conf", "ST", "ST_conf")}
    if spec.second_order:
        out["S2"] = np.asarray(res["S2"], dtype=float)
        out["S2_conf"] = np.asarray(res["S2_conf"], dtype=float)
    return out


Sampler = Callable[[dict[str, Any], SensitivitySpec], np.ndarray]
Analyzer = Callable[[dict[str, Any], SensitivitySpec, np.ndarray, np.ndarray], dict[str, Any]]

#: Methods by config name: (sample, analyze).
METHODS: dict[str, tuple[Sampler, Analyzer]] = {
    "oat": (_sample_oat, _analyze_oat),
    "grid": (_sample_grid, _analyze_none),
    "latin": (_sample_latin, _analyze_rank),
    "monte_carlo": (_sample_monte_carlo, _analyze_rank),
    "morris": (_sample_morris, _analyze_morris),
    "sobol": (_sample_sobol, _analyze_sobol),
}


def sample(spec: SensitivitySpec) -> dict[str, np.ndarray]:
    """Parameter samples of a study, by model name (one array per parameter)."""
    x = METHODS[spec.method][0](spec.problem(), spec)
    return {p.name: x[:, i] for i, p in enumerate(spec.parameters)}


def output_values(ds: xr.Dataset, outputs: tuple[Output, ...]) -> dict[str, np.ndarray]:
    """One number per run for each output, from an ensemble Dataset ``(run, time)``."""
    from armsdyn.metrics import compute_metrics

    table = compute_metrics(ds) if any(o.metric for o in outputs) else None
    values = {}
    for o in outputs:
        if o.metric:
            values[o.name] = table[o.metric].to_numpy(dtype=float)
            continue
        da = next(v for k, v in ds.data_vars.items() if o.variable in (k, v.attrs.get("long_name")))
        if o.aggregate == "final":
            values[o.name] = da.isel(time=-1).values
        elif o.aggregate == "at":
            values[o.name] = da.sel(time=o.at, method="nearest").values
        else:
            values[o.name] = getattr(da, o.aggregate)("time").values
    return values


def analyze(spec: SensitivitySpec, samples: Mapping[str, np.ndarray], outputs: Mapping[str, np.ndarray]) -> xr.Dataset:
    """Sensitivity indices for every output, as a Dataset with dims ``(output, parameter)``.

    Runs whose output is not finite (e.g. a breakout that never happens) are
    left out of the estimate for ``latin`` and ``monte_carlo``; the structured
    designs (``sobol``, ``morris``, ``oat``) need every run, so an output with
    any non-finite value gets NaN indices and a ``note`` saying so.
    """
    names = [p.name for p in spec.parameters]
    x = np.column_stack([samples[n] for n in names])
    problem = spec.problem()
    analyzer = METHODS[spec.method][1]
    per_output: dict[str, dict[str, np.ndarray]] = {}
    notes = {}
    for label, y in outputs.items():
        y = np.asarray(y, dtype=float)
        finite = np.isfinite(y)
        if spec.method in ("latin", "monte_carlo") and not finite.all():
            per_output[label] = analyzer(problem, spec, x[finite], y[finite])
            notes[label] = f"{(~finite).sum()} of {y.size} runs without a finite value left out"
        elif not finite.all():
            per_output[label] = {}
            notes[label] = f"{(~finite).sum()} of {y.size} runs without a finite value: no indices"
        else:
            per_output[label] = analyzer(problem, spec, x, y)
            notes[label] = ""
    keys = sorted({k for res in per_output.values() for k, v in res.items() if np.ndim(v) == 1})
    data = {
        key: (
            ("output", "parameter"),
            np.array([per_output[o].get(key, np.full(len(names), np.nan)) for o in outputs]),
        )
        for key in keys
    }
    ds = xr.Dataset(
        data,
        coords={"output": list(outputs), "parameter": names, "note": ("output", [notes[o] for o in outputs])},
        attrs={"method": spec.method, "seed": spec.seed, "samples": spec.samples, "runs": int(x.shape[0])},
    )
    if spec.second_order and spec.method == "sobol":
        for key in ("S2", "S2_conf"):
            ds[key] = (
                ("output", "parameter", "parameter_2"),
                np.array([per_output[o].get(key, np.full((len(names),) * 2, np.nan)) for o in outputs]),
            )
        ds.coords["parameter_2"] = names
    return ds


def run_study(
    experiment: Experiment,
    *,
    workers: int | None = 1,
    scheduler: str | None = None,
    store: str | os.PathLike[str] | None = None,
    resume: bool = False,
    progress: bool = False,
    chunk_size: int = 8192,
) -> tuple[xr.Dataset, xr.Dataset]:
    """Sample, run the ensemble and analyse an experiment's sensitivity study.

    The samples start from the parameters of the study's scenario (the
    experiment's base overrides plus the scenario's own); the sampled
    parameters replace those values. The ensemble runs in chunks (see
    :mod:`armsdyn.runner`), so memory stays bounded and an interrupted study
    can resume from its finished chunks.

    Parameters
    ----------
    experiment : Experiment
        With a ``[sensitivity]`` table.
    workers : int or None
        Local processes (None: one per CPU); results do not depend on it.
    scheduler : str, optional
        Address of a Dask distributed scheduler to run the chunks on instead.
    store : path-like, optional
        Folder keeping finished chunks between attempts (default: a temporary one).
    resume : bool
        Continue from the finished chunks in `store`.
    progress : bool
        Show a progress bar on stderr.
    chunk_size : int
        Samples simulated together.

    Returns
    -------
    (xarray.Dataset, xarray.Dataset)
        The ensemble's outputs, one value per run (data variables named
        ``"output: <label>"``, the sampled values as coordinates on ``run``),
        plus the fan-chart variables for the first runs on ``(fan_run, time)``;
        and the indices, dims ``(output, parameter)``.
    """
    from armsdyn.ensemble import FallbackWarning, UnsupportedConstruct, compile_model
    from armsdyn.runner import Reducer, run_chunked

    spec = experiment.sensitivity
    if spec is None:
        msg = f"experiment {experiment.name!r} has no [sensitivity] table"
        raise ValueError(msg)
    draws = sample(spec)
    n = len(next(iter(draws.values())))
    fixed = {k: v for k, v in experiment.scenario(spec.scenario).parameters.items() if k not in draws}
    samples = {k: np.full(n, float(v)) for k, v in fixed.items()} | draws
    for p in spec.parameters:
        samples |= {other: draws[p.name] for other in p.also}
    try:
        compile_model(experiment.model.path)
    except UnsupportedConstruct as exc:
        warnings.warn(f"{exc}; the study runs PySD once per sample instead", FallbackWarning, stacklevel=2)
    reducer = Reducer(
        outputs=spec.outputs,
        fan_variables=spec.fan_variables,
        attrs={"metrics_baseline": ""},
    )
    ds = run_chunked(
        experiment.model.path,
        samples,
        experiment.time,
        list(spec.variables),
        reducer,
        store=store,
        resume=resume,
        chunk_size=chunk_size,
        workers=workers,
        scheduler=scheduler,
        progress=progress,
    )
    ds.attrs.update(
        {
            "experiment": experiment.name,
            "model": experiment.model.path.name,
            "model_sha256": experiment.model.sha256,
            "scenario": spec.scenario,
            "method": spec.method,
            "fan_runs": reducer.fan_runs,
        }
    )
    outputs = {o.name: ds[f"output: {o.name}"].values for o in spec.outputs}
    return ds, analyze(spec, draws, outputs)


def reanalyse(ensemble: xr.Dataset, spec: SensitivitySpec) -> xr.Dataset:
    """Recompute a finished study's indices from its saved runs, without simulating.

    Parameters
    ----------
    ensemble : xarray.Dataset
        The study's saved ensemble (``sensitivity/ensemble.nc``): the sampled
        values as coordinates on ``run`` and one ``"output: <label>"`` variable per output.
    spec : SensitivitySpec
        The study; its method and parameters must be those the runs were sampled with.

    Returns
    -------
    xarray.Dataset
        The indices, as :func:`analyze` returns them.

    Raises
    ------
    KeyError
        If a parameter or output of `spec` is not in the saved runs.
    """
    by_name = {c.attrs.get("long_name", k): c for k, c in ensemble.coords.items() if c.dims == ("run",)}
    missing = [p.name for p in spec.parameters if p.name not in by_name]
    missing += [o.name for o in spec.outputs if f"output: {o.name}" not in ensemble]
    if missing:
        msg = f"the saved runs hold no values for {', '.join(map(repr, missing))}; rerun the study"
        raise KeyError(msg)
    samples = {p.name: by_name[p.name].values for p in spec.parameters}
    outputs = {o.name: ensemble[f"output: {o.name}"].values for o in spec.outputs}
    return analyze(spec, samples, outputs)
