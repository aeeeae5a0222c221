"""Bayesian calibration: convergence checks, Richardson's mode coordinates, and posteriors of known races."""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from armsdyn.calibration import (
    ACCEPTANCE_MIN,
    RIDGE_CONDITION,
    TAU_MULTIPLE,
    _run_ensembles,
    _SamplerCoordinates,
    calibrate,
    calibrate_many,
    convergence_report,
    format_summary,
    load_calibration,
    write_calibration,
)
from armsdyn.errors import ConfigError
from armsdyn.model import TimeSettings, load_model
from armsdyn.richardson import PARAMETER_NAMES, Richardson
from tests.conftest import CONFIGS, MODELS

NAMES = list(PARAMETER_NAMES.values())  # k, l, a, b, g, h, x0, y0
LOWER = np.array([0, 0, 0, 0, -100, -100, 0, 0], dtype=float)
UPPER = np.array([3, 3, 3, 3, 100, 100, 200, 200], dtype=float)


def _autocorrelation_time(chain: np.ndarray) -> np.ndarray:
    import emcee

    return emcee.autocorr.integrated_time(chain, tol=0)


# --------------------------------------------------------------------------- convergence checks


def test_independent_draws_are_converged() -> None:
    pytest.importorskip("emcee")
    chain = np.random.default_rng(0).standard_normal((2000, 32, 3))
    found = convergence_report(chain, _autocorrelation_time(chain), np.full(32, 0.3), ["x", "y", "z"])
    assert found["converged"], found["convergence"]
    assert found["convergence"].startswith("converged (max split R-hat 1.0")
    assert found["max_rhat"] < 1.01
    assert found["min_ess"] > 20_000


def test_a_chain_shorter_than_its_autocorrelation_allows_is_not_converged() -> None:
    pytest.importorskip("emcee")
    # AR(1) walkers with correlation 0.99 (autocorrelation time about 200 steps), 1000 steps from a common
    # start: R-hat may pass by luck, but 1000 steps are far fewer than 50 autocorrelation times.
    rng = np.random.default_rng(1)
    chain = np.zeros((1000, 32, 2))
    for t in range(1, 1000):
        chain[t] = 0.99 * chain[t - 1] + math.sqrt(1 - 0.99**2) * rng.standard_normal((32, 2))
    tau = _autocorrelation_time(chain)
    found = convergence_report(chain, tau, np.full(32, 0.3), ["x", "y"])
    assert not found["converged"]
    assert found["steps_per_tau"] < TAU_MULTIPLE
    assert f"1000 kept steps are fewer than {TAU_MULTIPLE} autocorrelation times" in found["convergence"]


def test_walkers_in_different_places_fail_rhat_and_stuck_walkers_are_named() -> None:
    pytest.importorskip("emcee")
    rng = np.random.default_rng(2)
    chain = rng.standard_normal((2000, 32, 2))
    chain[:, :16, 1] += 5  # half the walkers sample a different mode, and never cross
    acceptance = np.full(32, 0.3)
    acceptance[:3] = 0.0
    found = convergence_report(chain, _autocorrelation_time(chain), acceptance, ["x", "y"])
    assert not found["converged"]
    assert "split R-hat" in found["convergence"]
    assert "(y)" in found["convergence"]
    assert "3 of 32 walkers never moved" in found["convergence"]


def test_a_walker_that_never_moved_is_caught_where_rhat_misses_it() -> None:
    pytest.importorskip("emcee")
    chain = np.random.default_rng(4).standard_normal((500, 16, 2))
    chain[:, 3, :] = 1.0
    acceptance = np.full(16, 0.3)
    acceptance[3] = 0.0
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        tau = _autocorrelation_time(chain)
    found = convergence_report(chain, tau, acceptance, ["x", "y"])
    assert found["max_rhat"] < 1.1  # one still walker among sixteen hardly moves R-hat
    assert not found["converged"]
    assert "autocorrelation time undefined (a walker stood still over the kept steps)" in found["convergence"]
    assert "1 of 16 walkers never moved" in found["convergence"]


def test_rarely_accepted_proposals_are_not_convergence() -> None:
    pytest.importorskip("emcee")
    chain = np.random.default_rng(3).standard_normal((2000, 32, 2))
    found = convergence_report(chain, _autocorrelation_time(chain), np.full(32, 0.01), ["x", "y"])
    assert not found["converged"]
    assert f"acceptance fraction 0.010 < {ACCEPTANCE_MIN}: the walkers barely move" in found["convergence"]


# --------------------------------------------------------------------------- the sampler


def _gaussian_with_a_wall(x: np.ndarray) -> np.ndarray:
    """Rows of (log density, x0 squared): a correlated Gaussian cut off at x3 = 1.5, as a box's bound cuts."""
    precision = np.linalg.inv([[1.0, 0.9, 0, 0], [0.9, 1.0, 0, 0], [0, 0, 2.0, 0], [0, 0, 0, 0.5]])
    density = -0.5 * np.einsum("ij,jk,ik->i", x, precision, x)
    return np.column_stack([np.where(x[:, 3] > 1.5, -np.inf, density), x[:, 0] ** 2])


@pytest.mark.parametrize("walkers", [16, 19])
def test_ensembles_stepped_together_are_each_emcees_chain(walkers: int) -> None:
    # Two ensembles stepped by _run_ensembles, their proposals evaluated in one call a split, against
    # emcee's own EnsembleSampler with the same moves and seed: the same chain, blobs and acceptance,
    # to the last bit (the same random numbers drawn in the same order, the same arithmetic). 19 walkers
    # split unevenly (10 and 9; 5, 5, 5 and 4), so the snooker move's draws of a walker of 5 are rejected
    # and drawn again (a mask of 7), as RandomState.randint does.
    emcee = pytest.importorskip("emcee")
    seeds = [5, 17]
    rng = np.random.default_rng(0)
    starts = [0.1 * rng.standard_normal((walkers, 4)) for _ in seeds]
    calls = []

    def both(us: np.ndarray, owner: np.ndarray) -> np.ndarray:
        calls.append(np.bincount(owner, minlength=2))
        return _gaussian_with_a_wall(us)

    runs = _run_ensembles(both, starts, 400, 100, seeds)
    # One call per split for both ensembles: 2 a differential-evolution step, 4 a snooker step.
    assert len(calls) <= 1 + 4 * 400
    assert sum(bool(c.all()) for c in calls) > 400
    for seed, start, run in zip(seeds, starts, runs, strict=True):
        moves = [(emcee.moves.DEMove(), 0.8), (emcee.moves.DESnookerMove(), 0.2)]
        sampler = emcee.EnsembleSampler(walkers, 4, _gaussian_with_a_wall, vectorize=True, moves=moves,
                                        blobs_dtype=float)  # fmt: skip
        sampler.random_state = np.random.RandomState(seed).get_state()
        sampler.run_mcmc(start, 400, progress=False)
        np.testing.assert_array_equal(run["chain"], sampler.get_chain(discard=100))
        np.testing.assert_array_equal(run["blobs"], sampler.get_blobs(discard=100))
        np.testing.assert_array_equal(run["acceptance"], sampler.acceptance_fraction)
        assert 0.1 < run["acceptance"].mean() < 0.9
    assert not np.array_equal(runs[0]["chain"], runs[1]["chain"])
    # emcee's own refusals before sampling: too few walkers, walkers on one line.
    with pytest.raises(ValueError, match="at least 8"):
        _run_ensembles(both, [s[:6] for s in starts], 10, 0, seeds)
    flat = np.outer(np.arange(float(walkers)), [1, 2, 3, 4])
    with pytest.raises(ValueError, match="not linearly independent"):
        _run_ensembles(both, [flat, flat], 10, 0, seeds)


def _race_specs(tmp_path: Path, n: int) -> list:
    """`n` short method = "bayes" calibrations of the ridge race, each with its own noise and seed."""
    spec = replace(load_calibration(_ridge_config(tmp_path, steps=120, burn=60)), walkers=26)
    rng = np.random.default_rng(8)
    out = []
    for i in range(n):
        noisy = spec.observations + rng.normal(0, RIDGE_NOISE, spec.observations.shape)
        out.append(replace(spec, observations=noisy, seed=100 + i))
    return out


def test_calibrate_many_gives_each_data_set_its_own_calibration(tmp_path: Path) -> None:
    pytest.importorskip("emcee")
    specs = _race_specs(tmp_path, 3)
    # The third data set's walkers move in the parameters themselves, the others' in Richardson's modes.
    specs[2] = replace(specs[2], coordinates="parameters")
    together = calibrate_many(specs)
    assert [r.summary["posterior"]["coordinates"] for r in together] == ["modes", "modes", "parameters"]
    for spec, batched in zip(specs, together, strict=True):
        alone = calibrate(spec)
        assert batched.posterior is not None
        assert alone.posterior is not None
        pd.testing.assert_frame_equal(batched.posterior, alone.posterior, check_exact=True)
        pd.testing.assert_frame_equal(batched.estimates, alone.estimates, check_exact=True)
        pd.testing.assert_frame_equal(batched.predictive, alone.predictive, check_exact=True)
        assert batched.summary["posterior"] == alone.summary["posterior"]
    assert not together[0].posterior.equals(together[1].posterior)


def test_calibrate_many_refuses_calibrations_that_cannot_share_a_sampler(tmp_path: Path) -> None:
    specs = _race_specs(tmp_path, 2)
    with pytest.raises(ValueError, match=r"specs\[1\] differs from specs\[0\] in steps; "):
        calibrate_many([specs[0], replace(specs[1], steps=200)])
    shorter = specs[1].observations.iloc[:-1]
    with pytest.raises(ValueError, match="in walkers, observations' times"):
        calibrate_many([specs[0], replace(specs[1], observations=shorter, walkers=30)])


# --------------------------------------------------------------------------- mode coordinates


def _inside(rng: np.random.Generator, n: int) -> np.ndarray:
    return LOWER + (UPPER - LOWER) * rng.uniform(0.01, 0.99, (n, len(NAMES)))


def test_mode_coordinates_map_back_to_the_same_parameters() -> None:
    coords = _SamplerCoordinates(NAMES, LOWER, UPPER, modes=True)
    assert coords.modes is not None
    theta = _inside(np.random.default_rng(0), 50)
    back, _ = coords.from_free(coords.to_free(theta))
    np.testing.assert_allclose(back, theta, rtol=1e-9, atol=1e-9)
    # The slow coordinate is Richardson's larger eigenvalue, whose sign is that of kl - ab.
    u = coords.to_free(theta)
    for row, slow in zip(theta, u[:, 0], strict=True):
        race = Richardson(*row[:6])
        assert slow == pytest.approx(max(race.eigenvalues().real), abs=1e-12)
        assert np.sign(slow) == -np.sign(race.determinant)


def test_mode_coordinates_jacobian_is_the_inverse_of_the_reverse_map() -> None:
    # log|det dtheta/du| (central differences of the forward map) against -log|det du/dtheta|
    # (central differences of the reverse map, a different formula): the prior's correction is right.
    coords = _SamplerCoordinates(NAMES, LOWER, UPPER, modes=True)
    theta = _inside(np.random.default_rng(1), 20)
    _, log_jac = coords.from_free(coords.to_free(theta))
    step = 1e-6 * np.maximum(1.0, np.abs(theta))
    reverse = np.empty((len(theta), len(NAMES), len(NAMES)))
    for j in range(len(NAMES)):
        up, down = theta.copy(), theta.copy()
        up[:, j] += step[:, j]
        down[:, j] -= step[:, j]
        reverse[:, :, j] = (coords.to_free(up) - coords.to_free(down)) / (2 * step[:, j : j + 1])
    np.testing.assert_allclose(log_jac, -np.linalg.slogdet(reverse)[1], atol=1e-5)


def test_mode_coordinates_apply_only_to_richardsons_coefficients() -> None:
    assert _SamplerCoordinates(NAMES, LOWER, UPPER, modes=False).modes is None
    # Without fatigue fitted there is no two-state matrix to decompose.
    assert _SamplerCoordinates(NAMES[:2] + NAMES[4:], LOWER[:6], UPPER[:6], modes=True).modes is None
    # Negative reactions allowed: eigenvalues may be complex, the map does not cover the box.
    lower = LOWER.copy()
    lower[0] = -1
    assert _SamplerCoordinates(NAMES, lower, UPPER, modes=True).modes is None
    # Grievances and starts join the modes only as pairs.
    partial = _SamplerCoordinates(NAMES[:5], LOWER[:5], UPPER[:5], modes=True)
    assert partial.modes is not None
    assert partial.modes.index == [0, 1, 2, 3]
    assert partial.names[4] == "grievance g"


# --------------------------------------------------------------------------- posteriors of known races


#: A race that trends like the Cold War's: X adjusts fast to Y (k/a fixed, a itself weakly identified),
#: and the slow mode grows (kl > ab). The least-squares fit of such data is weakly identified.
RIDGE_TRUTH = {
    "defence coefficient k": 1.2,
    "defence coefficient l": 0.1,
    "fatigue coefficient a": 1.5,
    "fatigue coefficient b": 0.05,
    "grievance g": 1.0,
    "grievance h": 0.5,
}
RIDGE_START = {"initial arms X": 10.0, "initial arms Y": 10.0}
RIDGE_NOISE = 0.3
RIDGE_TIME = TimeSettings(0, 30, 0.25, 1.0, "Year")


def _ridge_config(tmp_path: Path, steps: int, burn: int, extra: str = "") -> Path:
    """A method = "bayes" config over the ridge race simulated by the model (PySD), with Gaussian noise."""
    model = load_model(MODELS / "richardson.mdl")
    clean = model.simulate({**RIDGE_TRUTH, **RIDGE_START}, RIDGE_TIME, ["arms X", "arms Y"])
    rng = np.random.default_rng(11)
    noisy = {column: clean[name] + rng.normal(0, RIDGE_NOISE, clean[name].size)
             for column, name in (("x", "arms X"), ("y", "arms Y"))}  # fmt: skip
    pd.DataFrame(noisy, index=pd.Index(RIDGE_TIME.save_times(), name="year")).to_csv(tmp_path / "d.csv")
    bounds = {n: "[0, 3]" for n in NAMES[:4]} | {n: "[-20, 20]" for n in NAMES[4:6]}
    fitted = "\n".join(f'"{n}" = {{ initial = {0.5 if "coefficient" in n else 0}, bounds = {b} }}'
                       for n, b in bounds.items())  # fmt: skip
    path = tmp_path / "ridge.toml"
    path.write_text(
        f'[experiment]\nname = "ridge"\nmodel = "{(MODELS / "richardson.mdl").as_posix()}"\n'
        "[time]\ninitial = 0\nfinal = 30\nstep = 0.25\nsaveper = 1\n"
        '[parameters]\n"initial arms X" = 10.0\n"initial arms Y" = 10.0\n'
        '[data]\nfile = "d.csv"\nunits = "u"\ncolumns = { x = "arms X", y = "arms Y" }\n'
        f'[calibration]\nmethod = "bayes"\nsteps = {steps}\nburn = {burn}\nseed = 4\n{extra}'
        f"[calibration.parameters]\n{fitted}\n",
        encoding="utf-8",
    )
    return path


@pytest.mark.slow
def test_a_ridge_race_posterior_converges_in_mode_coordinates_and_covers_the_truth(tmp_path: Path) -> None:
    pytest.importorskip("emcee")
    result = calibrate(_ridge_config(tmp_path, steps=3000, burn=1000))
    post = result.summary["posterior"]
    # Not at a bound, but k and a move together (the least-squares fit lies on the ridge): mode coordinates.
    assert result.summary["jacobian_condition"] > RIDGE_CONDITION
    assert post["coordinates"] == "modes"
    assert post["converged"], post["convergence"]
    assert post["convergence"].startswith("converged (")
    est = result.estimates
    for name, true in RIDGE_TRUTH.items():
        assert est.loc[name, "posterior_low"] <= true <= est.loc[name, "posterior_high"], name
    # The data identify the slow mode's rate: its posterior interval holds the true one, away from zero.
    slow = max(Richardson(*RIDGE_TRUTH.values()).eigenvalues().real)
    low, high = result.derived.loc["eigenvalue 2 real", ["posterior_low", "posterior_high"]]
    assert 0 < low <= slow <= high
    assert post["slow_rate"] == pytest.approx(result.derived.loc["eigenvalue 2 real", ["posterior_low",
                                              "posterior_median", "posterior_high"]].to_list())  # fmt: skip
    # The slow mode grows in the truth (kl > ab): the posterior says unstable, and the verdict follows it.
    assert result.summary["p_stable_posterior"] <= 0.025
    assert result.summary["stability"] == "unstable"
    assert "posterior converged (" in format_summary(result)


def test_a_too_short_chain_on_the_ridge_is_reported_as_not_converged(tmp_path: Path) -> None:
    pytest.importorskip("emcee")
    result = calibrate(_ridge_config(tmp_path, steps=60, burn=30))
    post = result.summary["posterior"]
    assert post["coordinates"] == "modes"
    assert not post["converged"]
    assert post["convergence"].startswith("not converged: ")
    # 30 kept steps: too few to measure the autocorrelation time, let alone to span 50 of them.
    assert "autocorrelation time" in post["convergence"]
    assert post["steps_per_autocorrelation_time"] < 50
    # No verdict is drawn from it, and the summary says why.
    assert result.summary["stability"] == "indeterminate"
    assert result.summary["stability_reason"].startswith("posterior not converged")
    assert "posterior not converged: " in result.summary["identification"]
    assert "posterior not converged: " in format_summary(result)
    folder = write_calibration(result, tmp_path / "out")
    saved = json.loads((folder / "summary.json").read_text())["posterior"]
    assert saved["converged"] is False
    assert saved["convergence"] == post["convergence"]


def test_modes_are_refused_where_they_do_not_apply(tmp_path: Path) -> None:
    config = _ridge_config(tmp_path, steps=60, burn=30, extra='coordinates = "modes"\n')
    text = config.read_text().replace('"fatigue coefficient a" = { initial = 0.5, bounds = [0, 3] }\n', "")
    config.write_text(text.replace("[parameters]\n", '[parameters]\n"fatigue coefficient a" = 1.5\n'))
    with pytest.raises(ConfigError, match="'modes' needs Richardson's two-state coefficients k, l, a and b fitted"):
        calibrate(config)
    config.write_text(text.replace('coordinates = "modes"', 'coordinates = "eigen"'))
    with pytest.raises(ConfigError, match=r"calibration\.coordinates"):
        calibrate(config)


def test_the_cold_war_posterior_config_is_the_least_squares_config_sampled() -> None:
    bayes = load_calibration(CONFIGS / "calibrate_cold_war_bayes.toml")
    least_squares = load_calibration(CONFIGS / "calibrate_cold_war.toml")
    assert bayes.method == "bayes"
    assert bayes.coordinates == "auto"
    # Long enough for the mode coordinates' autocorrelation time (about 140 steps) 50 times over.
    assert bayes.steps - bayes.burn >= 50 * 150
    assert bayes.parameters == least_squares.parameters
    pd.testing.assert_frame_equal(bayes.observations, least_squares.observations)


# --------------------------------------------------------------------------- Richardson 1909-1913


def test_no_posterior_draw_beats_the_least_squares_estimate() -> None:
    # Under uniform priors the posterior is SSR^(-n/2) with one noise variance for every series, so its
    # mode is the least-squares estimate. (With a variance per series, draws that fit one five-point
    # series almost exactly at the other's expense had a higher density, and the chain chased them.)
    pytest.importorskip("emcee")
    spec = replace(load_calibration(CONFIGS / "calibrate_richardson_1909_bayes.toml"), steps=200, burn=100)
    result = calibrate(spec)
    n = result.summary["n_observations"]
    at_least_squares = -n / 2 * math.log(n * result.summary["rmse"] ** 2)
    assert result.posterior is not None
    assert result.posterior["log_posterior"].max() <= at_least_squares + 1e-6
    assert result.summary["posterior"]["likelihood"].startswith("Gaussian, one noise variance shared by every")


@pytest.mark.slow
def test_richardsons_1909_posterior_converges_and_agrees_with_least_squares() -> None:
    pytest.importorskip("emcee")
    result = calibrate(CONFIGS / "calibrate_richardson_1909_bayes.toml")
    post = result.summary["posterior"]
    assert post["converged"], post["convergence"]
    assert post["max_rhat"] < 1.01
    assert post["min_ess"] > 1000
    est = result.estimates
    assert set(est.index) == {"defence coefficient k", "defence coefficient l", "grievance g", "grievance h"}
    assert np.all(est["rhat"] < 1.01)
    for name, row in est.iterrows():
        # The posterior median within a tenth of a standard error of the least-squares estimate ...
        assert abs(row["posterior_median"] - row["estimate"]) < 0.1 * row["std_error"], name
        # ... and the 95% posterior interval close to the least-squares (Student-t) interval.
        width, t_width = row["posterior_high"] - row["posterior_low"], row["ci_high"] - row["ci_low"]
        assert 0.8 < width / t_width < 1.25, name
        assert abs(row["posterior_low"] - row["ci_low"]) < 0.25 * row["std_error"], name
        assert abs(row["posterior_high"] - row["ci_high"]) < 0.25 * row["std_error"], name
    # Richardson's combined estimate kappa = k - a (0.73 a year) lies between the alliances' own rates.
    kappa = calibrate(CONFIGS / "calibrate_richardson_1909.toml").summary["kappa"]
    k_minus_a = est.loc["defence coefficient k", "posterior_median"] - 0.17
    l_minus_b = est.loc["defence coefficient l", "posterior_median"] - 0.17
    assert min(k_minus_a, l_minus_b) < kappa < max(k_minus_a, l_minus_b)
    # Fatigue was held, not fitted, and the verdict says so.
    assert result.summary["stability"] == "unstable"
    assert result.summary["stability_reason"].endswith("given the fixed a = 0.17, b = 0.17")
