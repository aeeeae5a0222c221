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
    return sobol_indices(problem, y, second_order=spec.second_order, seed=spec.seed)


#: Bootstrap resamples and confidence level of the Sobol intervals (SALib's defaults).
SOBOL_RESAMPLES = 100
SOBOL_CONF_LEVEL = 0.95
#: Memory for one batch of bootstrap resamples; each resample costs about
#: :data:`_BYTES_PER_DRAW` bytes per base sample while its batch is analysed.
BOOTSTRAP_BATCH_BYTES = 128 * 2**20
#: Index (int32, widened to intp by numpy's indexing) plus the resampled A, B, AB columns
#: and the estimator's temporaries (``np.r_[A, B]`` and ``np.var``'s deviations, 2 columns
#: each): 4 + 8 + 3 * 8 + 4 * 8 = 68 bytes, rounded up.
_BYTES_PER_DRAW = 96
#: Rows of bootstrap indices drawn at a time while a batch's columns are picked out.
_DRAW_ROWS = 8192


def bootstrap_columns(n: int, resamples: int, batch_bytes: int) -> list[tuple[int, int]]:
    """The resample columns ``[start, stop)`` analysed together, for `n` base samples.

    Parameters
    ----------
    n : int
        Base samples (rows of the bootstrap index table).
    resamples : int
        Bootstrap resamples (columns of the index table).
    batch_bytes : int
        Memory allowed for one batch.

    Returns
    -------
    list of tuple of int
        Consecutive column ranges covering ``range(resamples)``.

    Notes
    -----
    No batch is one column wide: numpy reduces an ``(n, 1)`` array with
    pairwise summation but an ``(n, k >= 2)`` array row by row, so a
    one-column batch would give means that differ in the last bits from the
    unbatched (``(n, resamples)``) computation.
    """
    width = max(2, batch_bytes // max(1, _BYTES_PER_DRAW * n))
    if width >= resamples:
        return [(0, resamples)]
    bounds = [*range(0, resamples, width), resamples]
    if bounds[-1] - bounds[-2] == 1:
        del bounds[-2]  # fold a last single column into the batch before it
    return list(itertools.pairwise(bounds))


def bootstrap_bytes(n: int, resamples: int = SOBOL_RESAMPLES, batch_bytes: int = BOOTSTRAP_BATCH_BYTES) -> int:
    """The most memory one batch of the Sobol bootstrap takes, for `n` base samples (an estimate).

    Parameters
    ----------
    n : int
        Base samples (runs divided by the design's runs per base sample).
    resamples, batch_bytes : int
        As for :func:`sobol_indices`.

    Returns
    -------
    int
        Bytes.
    """
    width = max(stop - start for start, stop in bootstrap_columns(n, resamples, batch_bytes))
    return _BYTES_PER_DRAW * n * width


def _bootstrap_index(n: int, resamples: int, seed: int, start: int, stop: int) -> np.ndarray:
    """Columns ``start:stop`` of ``default_rng(seed).integers(n, size=(n, resamples))``.

    The table is drawn row block by row block (numpy's bounded integers from PCG64
    continue one stream across calls, and int32 output holds the same values as
    int64), keeping only the batch's columns, so the whole ``(n, resamples)``
    table is never held. Each batch draws the stream again: generating is cheap
    next to the indexing it feeds.
    """
    rng = np.random.default_rng(seed)
    dtype = np.int32 if n <= np.iinfo(np.int32).max else np.int64
    if start == 0 and stop == resamples:
        return rng.integers(n, size=(n, resamples), dtype=dtype)
    out = np.empty((n, stop - start), dtype=dtype)
    for row in range(0, n, _DRAW_ROWS):
        rows = min(_DRAW_ROWS, n - row)
        out[row : row + rows] = rng.integers(n, size=(rows, resamples), dtype=dtype)[:, start:stop]
    return out


def sobol_indices(
    problem: dict[str, Any],
    y: np.ndarray,
    *,
    second_order: bool = False,
    seed: int = 0,
    resamples: int = SOBOL_RESAMPLES,
    conf_level: float = SOBOL_CONF_LEVEL,
    batch_bytes: int = BOOTSTRAP_BATCH_BYTES,
) -> dict[str, np.ndarray]:
    """Sobol indices and bootstrap intervals of one output, with the bootstrap in bounded batches.

    The estimators are SALib's (``SALib.analyze.sobol``: Saltelli et al. 2010 for
    first and total order, Saltelli 2002 for second order, on the output
    normalised to zero mean and unit variance), and the bootstrap draws the same
    indices as ``sobol.analyze(..., seed=seed)`` does. SALib holds all resamples
    at once (``n x resamples`` values per resampled column: 1.6 GB of work
    arrays for a 2,000,000-run study of 8 parameters); here the resamples are
    taken a batch of columns at a time (:func:`bootstrap_columns`) and only each
    resample's estimate is kept, so the bootstrap's memory is bounded by
    `batch_bytes` (or two resamples, if more). The result does not depend on the
    batch size, bit for bit.

    Parameters
    ----------
    problem : dict
        SALib problem (``num_vars`` or ``groups`` give the number of factors).
    y : numpy.ndarray
        One output value per run, in the order of SALib's Sobol sampler.
    second_order : bool
        Whether the design (and so the analysis) has second-order indices.
    seed : int
        Seed of the bootstrap. Unlike ``sobol.analyze``, which falls back to
        numpy's global generator for a seed of 0, every seed is used as given,
        so a study's intervals are always reproducible.
    resamples : int
        Bootstrap resamples.
    conf_level : float
        Confidence level of the intervals (half-widths are returned).
    batch_bytes : int
        Memory for one batch of resamples.

    Returns
    -------
    dict
        ``S1``, ``S1_conf``, ``ST``, ``ST_conf`` (one value per factor) and, with
        `second_order`, ``S2`` and ``S2_conf`` (factor x factor, NaN below the
        diagonal).
    """
    from SALib.analyze.sobol import first_order, separate_output_values, total_order
    from SALib.analyze.sobol import second_order as second
    from SALib.util import extract_group_names
    from scipy.stats import norm

    _, d = extract_group_names(problem)
    y = np.asarray(y, dtype=float)
    step = 2 * d + 2 if second_order else d + 2
    if y.size % step:
        raise ValueError(
            f"{y.size} runs is not a multiple of {step}, as a Sobol design of {d} factors "
            f"{'with' if second_order else 'without'} second-order indices is"
        )
    if not 0 < conf_level < 1:
        raise ValueError(f"confidence level {conf_level} is not between 0 and 1")
    n = y.size // step
    # Centred and scaled as SALib does: the estimators are biased for non-centred outputs.
    y = (y - y.mean()) / y.std()
    a, b, ab, ba = separate_output_values(y, d, n, second_order)
    z = norm.ppf(0.5 + conf_level / 2)

    s1, st = np.zeros(d), np.zeros(d)
    # One contiguous row of resample estimates per index: SALib takes each interval's standard
    # deviation over a contiguous vector, and a strided or 2-D reduction sums in another order.
    s1_draws, st_draws = np.empty((d, resamples)), np.empty((d, resamples))
    s2 = np.full((d, d), np.nan)
    s2_draws = np.full((d, d, resamples), np.nan)
    for j in range(d):
        s1[j] = first_order(a, ab[:, j], b)
        st[j] = total_order(a, ab[:, j], b)
        if second_order:
            for k in range(j + 1, d):
                s2[j, k] = second(a, ab[:, j], ab[:, k], ba[:, j], b)
    low, high = np.inf, -np.inf
    for start, stop in bootstrap_columns(n, resamples, batch_bytes):
        r = _bootstrap_index(n, resamples, seed, start, stop)
        a_r, b_r = a[r], b[r]
        # SALib's test of a constant resample: the range of all resampled A and B together.
        low = min(low, a_r.min(), b_r.min())
        high = max(high, a_r.max(), b_r.max())
        for j in range(d):
            ab_rj = ab[r, j]
            s1_draws[j, start:stop] = first_order(a_r, ab_rj, b_r)
            st_draws[j, start:stop] = total_order(a_r, ab_rj, b_r)
            if second_order:
                ba_rj = ba[r, j]
                for k in range(j + 1, d):
                    s2_draws[j, k, start:stop] = second(a_r, ab_rj, ab[r, k], ba_rj, b_r)
                del ba_rj
            del ab_rj
        del r, a_r, b_r
    constant = np.subtract(high, low) == 0.0
    out = {
        "S1": s1,
        "S1_conf": np.zeros(d) if constant else np.array([z * row.std(ddof=1) for row in s1_draws]),
        "ST": st,
        "ST_conf": np.zeros(d) if constant else np.array([z * row.std(ddof=1) for row in st_draws]),
    }
    if second_order:
        s2_conf = np.full((d, d), np.nan)
        for j in range(d):
            for k in range(j + 1, d):
                s2_conf[j, k] = z * s2_draws[j, k].std(ddof=1)
        out["S2"], out["S2_conf"] = s2, s2_conf
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
