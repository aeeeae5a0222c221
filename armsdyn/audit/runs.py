"""Running an audit: draws of the uncertainty space, each claim scenario at each draw, its metrics tables."""

from __future__ import annotations

import os
import sys
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr
from tqdm import tqdm

from armsdyn.audit.spec import AuditSpec, Switch, constant_values, is_baseline_metric
from armsdyn.ensemble import CompiledModel, UnsupportedConstruct, compile_model
from armsdyn.metrics import compute_metrics, metric_names
from armsdyn.model import TimeSettings
from armsdyn.runner import Reducer, run_chunked
from armsdyn.specs import SampledParameter

FAULT_COLUMNS = ("fault", "fault variable", "fault time")


# --------------------------------------------------------------------------- sampling


def sample(spec: AuditSpec, samples: int | None = None) -> pd.DataFrame:
    """Draws of every dimension, one row per run (parameters, then switches)."""
    from scipy.stats import qmc

    n = samples or spec.samples
    d = len(spec.dimensions)
    if spec.sampling == "sobol":
        with warnings.catch_warnings():  # balance needs a power of two; any n is still a valid design
            warnings.simplefilter("ignore", UserWarning)
            unit = qmc.Sobol(d, scramble=True, seed=spec.seed).random(n)
    else:
        unit = qmc.LatinHypercube(d, seed=spec.seed).random(n)
    columns: dict[str, np.ndarray] = {}
    p = len(spec.parameters)
    if p:
        from SALib.util import scale_samples

        problem = {
            "num_vars": p,
            "names": [q.name for q in spec.parameters],
            "bounds": [list(q.bounds) for q in spec.parameters],
            "dists": [q.distribution for q in spec.parameters],
        }
        scaled = scale_samples(unit[:, :p].copy(), problem)
        columns |= {q.name: scaled[:, i] for i, q in enumerate(spec.parameters)}
    for j, s in enumerate(spec.switches):
        index = np.minimum((unit[:, p + j] * len(s.values)).astype(int), len(s.values) - 1)
        columns[s.name] = np.asarray(s.values)[index]
    return pd.DataFrame(columns)


# --------------------------------------------------------------------------- running


@dataclass(frozen=True)
class FinalsReducer(Reducer):
    """Keeps each run's final values of the saved variables and its first fault (see :mod:`armsdyn.runner`)."""

    def __call__(self, ds: xr.Dataset, start: int) -> xr.Dataset:
        table = compute_metrics(ds)
        out = xr.Dataset(coords={"run": start + np.arange(ds.sizes["run"])})
        for name in self.outputs:
            if name in FAULT_COLUMNS:
                column = table[name].to_numpy()
                values = column.astype(float) if name == "fault time" else column.astype(str)
            else:
                da = next(v for k, v in ds.data_vars.items() if name in (k, v.attrs.get("long_name")))
                final = da.isel(time=-1, drop=True).astype(float)
                if final.ndim > 1:  # a subscripted variable: one output per element, as the store keeps (run,) only
                    flat = final.stack(element=final.dims[1:])
                    for i, element in enumerate(flat["element"].values.tolist()):
                        label = f"{name}[{', '.join(map(str, element))}]"
                        out[f"output: {label}"] = ("run", flat.values[:, i], {"long_name": label})
                    continue
                values = final.values
            out[f"output: {name}"] = ("run", values, {"long_name": name})
        return out


def _needed_variables(spec: AuditSpec) -> tuple[str, ...]:
    """Saved variables the claims' metrics need (all of them for a claim with a baseline)."""
    available = metric_names(spec.experiment.model, spec.experiment.variables)
    needed: list[str] = []
    for claim in spec.claims:
        for name in claim.predicate.names:
            metric = name.removeprefix("baseline ") if name.startswith("baseline ") else name
            needed += available.get(metric, [])
            if claim.baseline and is_baseline_metric(metric):
                needed += available[metric]
    return tuple(dict.fromkeys(needed))


def metric_tables(
    spec: AuditSpec,
    draws: pd.DataFrame,
    *,
    workers: int | None,
    chunk_size: int,
    progress: bool,
) -> dict[str, pd.DataFrame]:
    """Run every scenario the claims need at every draw; return the metrics tables the claims read.

    Parameters
    ----------
    spec : AuditSpec
    draws : pandas.DataFrame
        A row per run, a column per sampled dimension (:func:`sample`).
    workers : int or None
        Threads sharing the numba kernel's runs, or processes without numba (None: one per CPU).
    chunk_size : int
        Runs simulated, and reduced to final values, together.
    progress : bool
        Show a progress bar on stderr, one per scenario (with numba: one chunk of runs a step).

    Returns
    -------
    dict of str to pandas.DataFrame
        Keyed ``"scenario|baseline"``: a row per run, the metric columns of the
        claim's scenario, then those of its baseline prefixed ``baseline ``,
        and the constants each run used.
    """
    experiment = spec.experiment
    model = experiment.model
    variables = _needed_variables(spec)
    scenarios = list(dict.fromkeys([c.scenario for c in spec.claims] + [c.baseline for c in spec.claims if c.baseline]))
    n = len(draws)
    compiled = numba_model(model.path)
    defaults = constant_values(model)
    runs: dict[str, tuple[xr.Dataset, dict[str, float | np.ndarray]]] = {}
    for name in scenarios:
        scenario = experiment.scenario(name)
        samples = {k: np.full(n, float(v)) for k, v in scenario.parameters.items() if not isinstance(v, tuple)}
        entries: list[SampledParameter | Switch] = [*spec.parameters, *spec.switches]
        for entry in entries:
            for target in (entry.name, *entry.also):
                samples[target] = draws[entry.name].to_numpy(dtype=float)
        reducer = FinalsReducer(outputs=(*variables, *FAULT_COLUMNS), attrs={})
        if compiled is not None:
            ds = _run_in_process(
                compiled, samples, experiment.time, variables, reducer, workers, chunk_size, progress, name
            )
        else:
            size = chunk_size
            if workers != 1:  # one chunk per worker at least, so every worker has runs
                size = max(1, min(chunk_size, -(-n // (workers or os.cpu_count() or 1))))
            ds = run_chunked(
                model.path,
                samples,
                experiment.time,
                list(variables),
                reducer,
                chunk_size=size,
                workers=workers,
                progress=progress,
            )
        runs[name] = (ds, {**defaults, **samples})
    tables: dict[str, pd.DataFrame] = {}
    for claim in spec.claims:
        key = f"{claim.scenario}|{claim.baseline}"
        if key not in tables:
            tables[key] = _metrics_of(model, runs, claim.scenario, claim.baseline, variables, experiment.time.final)
    return tables


def numba_model(path: Path) -> CompiledModel | None:
    """The model compiled with numba's backend; None when numba is missing or cannot compile the model.

    An audit makes 10^4 to 10^5 runs of each scenario: numba's kernel runs the
    knowledge model about four times faster than numpy's generated code (3.8 s
    against 15 s for 10^4 runs on one core), and it compiles once (about 20 s,
    then cached on disk; loading it takes under a second). The engine's
    ``"auto"`` choice judges each call on its own and, in worker processes,
    each chunk, so it mostly keeps numpy.
    """
    try:
        compiled = compile_model(path, backend="numba")
        compiled.backend  # noqa: B018 - resolving the backend raises when numba is missing or cannot compile it
    except (ImportError, UnsupportedConstruct):
        return None
    return compiled


def _run_in_process(
    compiled: CompiledModel,
    samples: Mapping[str, np.ndarray],
    time: TimeSettings,
    variables: Sequence[str],
    reducer: FinalsReducer,
    threads: int | None,
    chunk_size: int,
    progress: bool = False,
    label: str = "runs",
) -> xr.Dataset:
    """Every sample through the numba kernel in this process, `threads` sharing each chunk, reduced chunk by chunk.

    Threads rather than worker processes: the kernel releases the GIL, and a
    worker process would spend seconds importing armsdyn and loading the
    kernel. Reducing each chunk as it comes keeps memory bounded as in
    :func:`armsdyn.runner.run_chunked`.
    """
    n = len(next(iter(samples.values())))
    before, compiled.threads = compiled.threads, threads
    parts = []
    bar = tqdm(
        total=n, unit="run", unit_scale=True, desc=label, file=sys.stderr, dynamic_ncols=True, disable=not progress
    )
    try:
        for lo in range(0, n, chunk_size):
            chunk = compiled.run({k: v[lo : lo + chunk_size] for k, v in samples.items()}, time, variables)
            parts.append(reducer(chunk, lo))
            bar.update(min(chunk_size, n - lo))
    finally:
        bar.close()
        compiled.threads = before
    return xr.concat(parts, dim="run") if len(parts) > 1 else parts[0]


def _metrics_of(
    model: Any,
    runs: Mapping[str, tuple[xr.Dataset, dict[str, float | np.ndarray]]],
    scenario: str,
    baseline: str,
    variables: Sequence[str],
    final_time: float,
) -> pd.DataFrame:
    """The metrics table of a scenario's runs (and its baseline's, prefixed ``baseline ``), one row per run.

    Built by :func:`armsdyn.metrics.compute_metrics` from the runs' final values
    (every metric but the faults reads only those), the constants each run used
    as coordinates, and a ``baseline`` coordinate pairing each run with the
    baseline run of the same draws.
    """
    parts = [(scenario, "s")] + ([(baseline, "b")] if baseline else [])
    n = runs[scenario][0].sizes["run"]
    labels = [f"{tag}{i}" for _, tag in parts for i in range(n)]
    data = {}
    for v in variables:
        var = model.variable(v)
        # A subscripted variable was kept one element at a time; put its ranges back.
        labels_of = [var.element_name(e) for e in var.elements()] if var.dims else [v]
        values = np.stack(
            [np.concatenate([runs[s][0][f"output: {label}"].values for s, _ in parts]) for label in labels_of], axis=-1
        ).reshape(-1, 1, *var.shape)
        data[v] = xr.DataArray(
            values,
            dims=("scenario", "time", *var.dim_names),
            coords={name: list(elements) for name, elements in var.dims},
            attrs={"long_name": v},
        )
    constants = {
        k: ("scenario", np.concatenate([np.broadcast_to(runs[s][1][k], (n,)) for s, _ in parts]), {"long_name": k})
        for k in runs[scenario][1]
        if all(k in runs[s][1] for s, _ in parts)
    }
    coords: dict[str, Any] = {"scenario": labels, "time": [final_time], **constants}
    if baseline:
        coords["baseline"] = ("scenario", [f"b{i}" for i in range(n)] * 2)
    table = compute_metrics(xr.Dataset(data, coords=coords))
    for column in FAULT_COLUMNS:
        table[column] = np.concatenate([runs[s][0][f"output: {column}"].values for s, _ in parts])
    extra = {k: values for k, (_, values, _) in constants.items() if k not in table.columns}
    table = pd.concat([table, pd.DataFrame(extra, index=table.index)], axis=1)
    own = table.iloc[:n].reset_index(drop=True)
    if baseline:
        other = table.iloc[n:].reset_index(drop=True).add_prefix("baseline ")
        own = pd.concat([own, other], axis=1)
    return own
