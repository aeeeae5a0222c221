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

import os
import warnings
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import xarray as xr

from armsdyn.ensemble import FallbackWarning, UnsupportedConstruct, compile_model
from armsdyn.metrics import compute_metrics
from armsdyn.results import find_variable
from armsdyn.runner import FAN_DIM, Reducer, SharedInputs, run_chunked, study_chunk
from armsdyn.scenario_inputs import batch_inputs
from armsdyn.sensitivity_methods import METHODS
from armsdyn.specs import Experiment, Output, SensitivitySpec


def sample(spec: SensitivitySpec) -> dict[str, np.ndarray]:
    """Parameter samples of a study, by model name (one array per parameter)."""
    x = METHODS[spec.method][0](spec.problem(), spec)
    return {p.name: x[:, i] for i, p in enumerate(spec.parameters)}


def output_values(ds: xr.Dataset, outputs: tuple[Output, ...]) -> dict[str, np.ndarray]:
    """One number per run for each output, from an ensemble Dataset ``(run, time)``."""
    table = compute_metrics(ds) if any(o.metric for o in outputs) else None
    values = {}
    for o in outputs:
        if o.metric and table is not None:
            values[o.name] = table[o.metric].to_numpy(dtype=float)
            continue
        da = find_variable(ds, o.variable)
        if o.aggregate == "final":
            values[o.name] = da.isel(time=-1).values
        elif o.aggregate == "at":
            values[o.name] = da.sel(time=o.at, method="nearest").values
        else:
            values[o.name] = getattr(da, o.aggregate)("time").values
    return values


@dataclass(frozen=True)
class StudyReducer(Reducer):
    """Keeps each run's study outputs (and the fan-chart runs' series) of a chunk."""

    def __call__(self, ds: xr.Dataset, start: int) -> xr.Dataset:
        ds.attrs.update(self.attrs or {})
        values = output_values(ds, self.outputs)
        out = xr.Dataset(coords={k: v for k, v in ds.coords.items() if v.dims == ("run",)})
        # Runs are numbered across the whole study, not within the chunk.
        out = out.assign_coords(run=start + np.arange(ds.sizes["run"]))
        for label, column in values.items():
            out[f"output: {label}"] = ("run", np.asarray(column, dtype=float), {"long_name": label})
        keep = max(0, min(ds.sizes["run"], self.fan_runs - start))
        for name in self.fan_variables:
            # A whole subscripted variable keeps its ranges (a band per element); "x[A]" is one element.
            da = find_variable(ds, name)
            ranges = {d: da[d].values for d in da.dims[2:]}
            out[name if "[" in name else da.name] = ((FAN_DIM, "time", *ranges), da.values[:keep], da.attrs)
            out = out.assign_coords(ranges)
        if self.fan_variables:
            out.coords["time"] = ds["time"]
        return out


def analyze(spec: SensitivitySpec, samples: Mapping[str, np.ndarray], outputs: Mapping[str, np.ndarray]) -> xr.Dataset:
    """Sensitivity indices for every output, as a Dataset with dims ``(output, parameter)``.

    Runs whose output is not finite (e.g. a breakout that never happens) are
    left out of the estimate for ``latin`` and ``monte_carlo``; the structured
    designs (``sobol``, ``morris``, ``oat``) need every run, so an output with
    any non-finite value gets NaN indices and a ``note`` saying so.
    """
    names = [p.name for p in spec.parameters]
    x = _sample_table([np.asarray(samples[n]) for n in names])
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


def _sample_table(columns: list[np.ndarray]) -> np.ndarray:
    """The samples as one ``(runs, parameters)`` array: the sampler's own where the columns are its.

    :func:`sample` returns the columns of the sampler's array; putting them side by side again
    would copy the whole table (128 MB for a 2,000,000-run study of 8 parameters).
    """
    base = columns[0].base
    if (
        isinstance(base, np.ndarray)
        and base.ndim == 2
        and base.shape == (columns[0].size, len(columns))
        and base.dtype == float
    ):
        start = base.__array_interface__["data"][0]
        if all(
            c.base is base and c.strides == base.strides[:1] and c.__array_interface__["data"][0] == start + i * 8
            for i, c in enumerate(columns)
        ):
            return base
    return np.column_stack(columns)


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
        The most samples simulated together; fewer where a chunk's saved series
        would not fit a worker's share of memory (:func:`armsdyn.runner.study_chunk`).

    Returns
    -------
    (xarray.Dataset, xarray.Dataset)
        The ensemble's outputs, one value per run (data variables named
        ``"output: <label>"``, the sampled values as coordinates on ``run``),
        plus the fan-chart variables for the first runs on ``(fan_run, time)``;
        and the indices, dims ``(output, parameter)``.
    """
    spec = experiment.sensitivity
    if spec is None:
        msg = f"experiment {experiment.name!r} has no [sensitivity] table"
        raise ValueError(msg)
    draws = sample(spec)
    n = len(next(iter(draws.values())))
    samples = dict(draws)
    timed = {}
    for key, value in experiment.scenario(spec.scenario).parameters.items():
        if isinstance(value, tuple):  # a time series or a redrawn lookup: the same in every run
            timed[key] = value
        else:
            samples.setdefault(key, np.full(n, value))
    for p in spec.parameters:
        samples |= {other: draws[p.name] for other in p.also}
    # A parameter the study samples is the study's, even where the scenario gives it a series.
    split = batch_inputs(experiment.model, [{k: v for k, v in timed.items() if k not in samples}])
    shared = SharedInputs(
        series={k: v[0] for k, v in split.series.items() if v[0] is not None},
        lookups={k: v[0] for k, v in split.lookups.items() if v[0] is not None},
    )
    try:
        engine = f"compiled ({compile_model(experiment.model.path).backend})"
    except UnsupportedConstruct as exc:
        engine = "pysd (fallback)"
        warnings.warn(f"{exc}; the study runs PySD once per sample instead", FallbackWarning, stacklevel=2)
    reducer = StudyReducer(
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
        chunk_size=study_chunk(experiment, chunk_size),
        workers=workers,
        scheduler=scheduler,
        progress=progress,
        shared=shared,
    )
    ds.attrs.update(
        {
            "experiment": experiment.name,
            "model": experiment.model.path.name,
            "model_sha256": experiment.model.sha256,
            "scenario": spec.scenario,
            "method": spec.method,
            "fan_runs": reducer.fan_runs,
            "engine": engine,
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
