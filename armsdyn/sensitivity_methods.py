"""The sensitivity methods: one registry entry each, a sampler and an analyser.

Every method has the same two steps, registered in :data:`METHODS` so that the
config validator, the CLI and the API know the same ones:

``sample(problem, spec) -> X``
    an ``(n_runs, n_parameters)`` array of parameter values;
``analyze(problem, spec, X, Y) -> dict``
    index name -> array over parameters, for one output ``Y`` (one value per run).

SALib and scipy.stats are imported inside the methods that use them, so that
reading a config (which checks method names here) stays fast. Adding a method
is a sampler, an analyser and one line in :data:`METHODS`.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import numpy as np

from armsdyn.specs import SampledParameter, SensitivitySpec


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
    import scipy.stats

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
