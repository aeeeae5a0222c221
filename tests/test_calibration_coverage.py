"""Posterior intervals cover the truth at their nominal rate, neither more nor less, over replicated synthetic races."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.stats import binom
from scipy.stats import t as student_t

from armsdyn.calibration import CalibrationSpec, calibrate_many, load_calibration
from armsdyn.model import TimeSettings, load_model
from tests.conftest import MODELS

#: A stable race (ab > kl) approaching its equilibrium over twenty years; fatigue and starts are held.
TRUTH = {
    "defence coefficient k": 0.15,
    "defence coefficient l": 0.1,
    "grievance g": 1.0,
    "grievance h": 0.5,
}
HELD = {"fatigue coefficient a": 0.3, "fatigue coefficient b": 0.25, "initial arms X": 1.0, "initial arms Y": 2.0}
TIME = TimeSettings(0, 20, 0.25, 1.0, "Year")
NOISE = 0.1
REPLICATES = 60
LEVEL = 0.90
#: A parameter's intervals fail when they cover the truth in TOO_FEW replicates or fewer (the binomial
#: (REPLICATES, LEVEL) count's 0.1% quantile: 46 of 60, probability 0.002): too narrow, not bad luck.
TOO_FEW = int(binom.ppf(0.001, REPLICATES, LEVEL))
#: The pooled count over the four parameters (240 intervals) must lie in [POOLED_LOW, POOLED_HIGH], both
#: ways: the central 99.9% of a binomial (120, LEVEL) count, doubled, because k's and g's coverages (and
#: l's and h's) go together nearly always (measured 49 and 49, 55 and 55), so the 240 are about 120
#: independent pairs: [192, 234], measured 208. Intervals too wide to miss (true coverage 99%, about 238
#: of 240) fail it, which the former one-sided |rate - 0.9| < 0.1 did not.
POOLED_LOW = 2 * int(binom.ppf(0.0005, REPLICATES * 2, LEVEL))
POOLED_HIGH = 2 * int(binom.ppf(0.9995, REPLICATES * 2, LEVEL))
#: On each data set the posterior interval is compared with the least-squares Student-t interval of the
#: same level, which covers 90-92% on 200 such data sets (and a like count here: k 49, l 55, g 50, h 55):
#: a posterior interval too wide or too narrow shows in every replicate, not only in a count. Measured
#: width ratios 0.92-1.02, mean 0.973; each must lie within WIDTH_RANGE, their mean within MEAN_WIDTH.
WIDTH_RANGE = (0.85, 1.15)
MEAN_WIDTH = (0.93, 1.07)
#: And each parameter's count within COUNT_GAP of the t intervals' count on the same data sets (measured: 0 or 1).
COUNT_GAP = 3


def _spec(tmp_path: Path) -> CalibrationSpec:
    """The method = "bayes" calibration of the race; its observations are replaced per replicate."""
    held = "\n".join(f'"{n}" = {v}' for n, v in HELD.items())
    fitted = "\n".join(f'"{n}" = {{ initial = {v}, bounds = [-5, 5] }}' if "grievance" in n
                       else f'"{n}" = {{ initial = {v}, bounds = [0, 2] }}' for n, v in TRUTH.items())  # fmt: skip
    pd.DataFrame({"x": np.ones(21), "y": np.ones(21)}, index=pd.Index(TIME.save_times(), name="year")).to_csv(
        tmp_path / "d.csv"
    )
    path = tmp_path / "coverage.toml"
    path.write_text(
        f'[experiment]\nname = "coverage"\nmodel = "{(MODELS / "richardson.mdl").as_posix()}"\n'
        "[time]\ninitial = 0\nfinal = 20\nstep = 0.25\nsaveper = 1\n"
        f"[parameters]\n{held}\n"
        '[data]\nfile = "d.csv"\nunits = "u"\ncolumns = { x = "arms X", y = "arms Y" }\n'
        '[calibration]\nmethod = "bayes"\ncoordinates = "parameters"\nsteps = 1200\nburn = 300\n'
        f"[calibration.parameters]\n{fitted}\n",
        encoding="utf-8",
    )
    return load_calibration(path)


@pytest.mark.slow
def test_posterior_intervals_cover_the_truth_at_the_nominal_rate(tmp_path: Path) -> None:
    pytest.importorskip("emcee")
    spec = _spec(tmp_path)
    clean = load_model(MODELS / "richardson.mdl").simulate({**TRUTH, **HELD}, TIME, ["arms X", "arms Y"])
    rng = np.random.default_rng(2026)
    specs = []
    for i in range(REPLICATES):
        noisy = pd.DataFrame({v: clean[v] + rng.normal(0, NOISE, clean[v].size) for v in ("arms X", "arms Y")},
                             index=pd.Index(TIME.save_times(), name="time"))  # fmt: skip
        specs.append(replace(spec, observations=noisy, seed=i))
    covered = {name: 0 for name in TRUTH}
    t_covered = {name: 0 for name in TRUTH}
    ratios = []
    converged = 0
    # The 60 posteriors sampled together, one compiled batch a step; each is calibrate()'s (tested in
    # tests/test_calibration_posterior.py), so this is the coverage of calibrate's own intervals.
    for result in calibrate_many(specs):
        converged += result.summary["posterior"]["converged"]
        assert result.posterior is not None
        dof = result.summary["n_observations"] - len(TRUTH)
        for name, true in TRUTH.items():
            low, high = np.quantile(result.posterior[name], [(1 - LEVEL) / 2, (1 + LEVEL) / 2])
            covered[name] += bool(low <= true <= high)
            estimate, se = result.estimates.loc[name, ["estimate", "std_error"]]
            half = student_t.ppf((1 + LEVEL) / 2, dof) * se
            t_covered[name] += bool(estimate - half <= true <= estimate + half)
            ratios.append((high - low) / (2 * half))
    assert converged == REPLICATES
    for name, count in covered.items():
        assert count > TOO_FEW, f"{name}: the {LEVEL:.0%} interval covered the truth {count} of {REPLICATES}"
        assert abs(count - t_covered[name]) <= COUNT_GAP, (name, count, t_covered[name])
    pooled = sum(covered.values())
    assert POOLED_LOW <= pooled <= POOLED_HIGH, f"{pooled} of {len(TRUTH) * REPLICATES} intervals cover the truth"
    assert WIDTH_RANGE[0] < min(ratios), min(ratios)
    assert max(ratios) < WIDTH_RANGE[1], max(ratios)
    assert MEAN_WIDTH[0] < np.mean(ratios) < MEAN_WIDTH[1], np.mean(ratios)
