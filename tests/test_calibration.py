"""Calibration: Richardson's own estimator, trajectory matching with honest intervals, configs end to end."""

from __future__ import annotations

import json
import math
import tomllib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from armsdyn.calibration import (
    FittedParameter,
    calibrate,
    diagnose,
    fit_trajectories,
    identification_note,
    load_calibration,
    near_bound,
    parse_calibration,
    richardson_combined_fit,
    richardson_stability,
    stability_verdict,
    write_calibration,
)
from armsdyn.data import load_csv
from armsdyn.errors import ConfigError, ResultsError
from armsdyn.model import TimeSettings, load_model
from armsdyn.richardson import Richardson
from tests.conftest import CONFIGS, MODELS, SHARED

RICHARDSON_TABLE = SHARED / "data" / "richardson_1909_1913.csv"

#: A stable Richardson race with a slow approach, so a 30-year record identifies all six coefficients.
TRUTH = {
    "defence coefficient k": 0.15,
    "defence coefficient l": 0.1,
    "fatigue coefficient a": 0.3,
    "fatigue coefficient b": 0.25,
    "grievance g": 1.0,
    "grievance h": 0.5,
}
START = {"initial arms X": 1.0, "initial arms Y": 2.0}
TIME = TimeSettings(0, 30, 0.0625, 1.0, "Year")
GUESSES = [
    FittedParameter(name, 1.0 if "grievance" in name else 0.5, (0, 5) if "coefficient" in name else (-20, 20))
    for name in TRUTH
]


def _synthetic(rng: np.random.Generator, sigma: float) -> pd.DataFrame:
    """Observations the model itself generates (PySD), with Gaussian noise."""
    clean = load_model(MODELS / "richardson.mdl").simulate({**TRUTH, **START}, TIME, ["arms X", "arms Y"])
    return pd.DataFrame({k: v + rng.normal(0, sigma, v.size) for k, v in clean.items()}, index=TIME.save_times())


def test_richardson_estimator_gives_the_published_result() -> None:
    if not RICHARDSON_TABLE.is_file():
        pytest.skip(f"shared reference data {RICHARDSON_TABLE} is not on this machine")
    table = load_csv(RICHARDSON_TABLE)
    totals = table.sum(axis=1)
    kappa, c, details = richardson_combined_fit(totals.index, totals.to_numpy())
    # Richardson (1960), as in Braun (1993) section 4.5: kappa ~ 0.73 per year, c ~ 194 million pounds.
    assert round(kappa, 2) == 0.73
    assert abs(c - 194) < 1.0
    np.testing.assert_allclose(details["increments"], [5.6, 10.1, 23.8, 50.3], atol=1e-9)
    np.testing.assert_allclose(details["means"], [202.0, 209.85, 226.8, 263.85], atol=1e-9)
    assert details["r2"] > 0.99
    assert details["kappa_ci"][0] < kappa < details["kappa_ci"][1]


def test_richardson_estimator_is_exact_on_its_own_model() -> None:
    # Increments on means are exact for the Euler-like difference kappa*(mean - c) recursion.
    kappa, c = 0.5, 100.0
    totals = [150.0]
    for _ in range(5):
        # Solve T1 - T0 = kappa * ((T0 + T1)/2 - c) for T1.
        t0 = totals[-1]
        totals.append((t0 * (1 + kappa / 2) - kappa * c) / (1 - kappa / 2))
    k_hat, c_hat, _ = richardson_combined_fit(range(1900, 1906), totals)
    assert k_hat == pytest.approx(kappa)
    assert c_hat == pytest.approx(c)


@pytest.mark.parametrize(
    ("years", "totals", "expected"),
    [([1, 2], [1, 2], "at least three"), ([1, 3, 2], [1, 2, 3], "increase strictly"), ([1, 2, 3], [1, 2], "same")],
)
def test_richardson_estimator_errors(years: list, totals: list, expected: str) -> None:
    with pytest.raises(ValueError, match=expected):
        richardson_combined_fit(years, totals)


def test_richardson_1909_config_end_to_end(tmp_path: Path) -> None:
    result = calibrate(CONFIGS / "calibrate_richardson_1909.toml")
    assert round(result.summary["kappa"], 2) == 0.73
    assert abs(result.summary["c"] - 194) < 1.0
    assert result.estimates.loc["c", "units"] == "million current pounds sterling"
    folder = write_calibration(result, tmp_path / "r1909", command=["armsdyn", "calibrate"])
    names = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}
    assert {"estimates.csv", "fit.csv", "summary.json", "data.csv", "manifest.json", "figures/fit.pdf"} <= names
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["data"]["path"].endswith("models/data/richardson_1909_1913.csv")
    assert manifest["data"]["units"] == "million current pounds sterling"
    assert set(manifest["files"]) == names - {"manifest.json"}
    estimates = pd.read_csv(folder / "estimates.csv", index_col="parameter")
    assert estimates.loc["kappa", "estimate"] == pytest.approx(result.summary["kappa"])
    with pytest.raises(ResultsError, match="already exists"):
        write_calibration(result, folder)
    write_calibration(result, folder, force=True)


def test_parameters_recovered_from_synthetic_data_with_pysd() -> None:
    observed = _synthetic(np.random.default_rng(7), sigma=0.05)
    fit = fit_trajectories(load_model(MODELS / "richardson.mdl"), observed, GUESSES, TIME, fixed=START)
    est = fit.estimates
    assert fit.statistics["converged"]
    for name, true in TRUTH.items():
        assert abs(est.loc[name, "estimate"] - true) < 4 * est.loc[name, "std_error"], name
        assert est.loc[name, "estimate"] == pytest.approx(true, abs=0.1), name
    assert fit.statistics["sigma"] == pytest.approx(0.05, rel=0.3)
    assert fit.statistics["r2"] > 0.99
    assert fit.statistics["jacobian_condition"] < 1e6
    assert identification_note(fit.statistics, fit.estimates).startswith("parameters identified")


def test_engines_agree() -> None:
    observed = _synthetic(np.random.default_rng(3), sigma=0.1)
    model = load_model(MODELS / "richardson.mdl")
    pysd = fit_trajectories(model, observed, GUESSES, TIME, fixed=START, engine="pysd").estimates
    ensemble = fit_trajectories(model, observed, GUESSES, TIME, fixed=START, engine="compiled").estimates
    np.testing.assert_allclose(ensemble["estimate"], pysd["estimate"], rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(ensemble["std_error"], pysd["std_error"], rtol=1e-3)


@pytest.mark.slow
def test_nominal_95_percent_intervals_cover_the_truth() -> None:
    # 50 noisy data sets from the model, each fitted; the Jacobian intervals should cover the true
    # values about 95% of the time. Binomial sd of a 50-fit coverage is 0.031; 300 pooled intervals
    # (6 per fit, correlated within a fit) get a tolerance of about 3.5 sd of the pooled rate.
    rng = np.random.default_rng(1984)
    model = load_model(MODELS / "richardson.mdl")
    hits = []
    for _ in range(50):
        fit = fit_trajectories(model, _synthetic(rng, sigma=0.1), GUESSES, TIME, fixed=START, engine="compiled")
        est = fit.estimates
        hits.append([est.loc[n, "ci_low"] <= TRUTH[n] <= est.loc[n, "ci_high"] for n in TRUTH])
    hits = np.array(hits)
    pooled = hits.mean()
    assert 0.90 <= pooled <= 0.99, hits.mean(axis=0)
    assert (hits.mean(axis=0) >= 0.84).all(), hits.mean(axis=0)


def _cold_war(bootstrap: int, **calibration: object) -> dict:
    path = CONFIGS / "calibrate_cold_war.toml"
    raw = tomllib.loads(path.read_text(encoding="utf-8"))
    raw["calibration"].update(bootstrap=bootstrap, **calibration)
    return raw


def test_cold_war_config_reports_stability_with_its_uncertainty(tmp_path: Path) -> None:
    path = CONFIGS / "calibrate_cold_war.toml"
    spec = parse_calibration(_cold_war(20), text=path.read_text(), source=path)
    assert spec.data.units == "billion current US dollars"
    assert spec.observations.index[0] == 1955
    assert spec.observations.loc[1988, "arms X"] == pytest.approx(281.935)
    result = calibrate(spec)
    summary = result.summary
    assert summary["converged"]
    assert summary["r2"] > 0.9
    fitted = result.estimates["estimate"]
    model = Richardson(*(fitted[f"{kind} coefficient {s}"] for kind, s in
                         (("defence", "k"), ("defence", "l"), ("fatigue", "a"), ("fatigue", "b"))),
                       fitted["grievance g"], fitted["grievance h"])  # fmt: skip
    assert summary["stability"] in ("stable", "unstable", "indeterminate")
    if summary["stability"] != "indeterminate":
        assert summary["stability"] == ("stable" if model.determinant > 0 else "unstable")
    assert summary["stability_reason"]
    assert result.derived.loc["determinant ab-kl", "estimate"] == pytest.approx(model.determinant)
    assert 0 <= summary["share_stable_bootstrap"] <= 1
    assert summary["bootstrap_replicates"] == 20
    assert not math.isnan(result.derived.loc["determinant ab-kl", "std_error"])
    # The numbers the fit has always given, with the diagnostics beside them.
    assert fitted["defence coefficient k"] == pytest.approx(0.0770, abs=2e-3)
    assert fitted["defence coefficient l"] == pytest.approx(0.0918, abs=2e-3)
    assert summary["r2"] == pytest.approx(0.980, abs=2e-3)
    assert summary["stability"] == "indeterminate"
    assert set(summary["at_bound"]) == {"fatigue coefficient a", "fatigue coefficient b"}
    assert math.isnan(result.derived.loc["equilibrium X", "estimate"])
    assert "not cointegrated" in summary["diagnostics_verdict"]
    assert "likely spurious" in summary["diagnostics_verdict"]
    assert "autocorrelated" in summary["diagnostics_verdict"]
    assert summary["diagnostics"]["residuals"]["arms X"]["durbin_watson"] < 1
    assert summary["bic"] > summary["aic"]
    assert summary["identification"].startswith("weakly identified: at a bound: fatigue coefficient a")
    assert "bootstrap fits piling at a bound" in summary["identification"]
    folder = write_calibration(result, tmp_path / "cw")
    table = pd.read_csv(folder / "diagnostics.csv")
    assert {"Ljung-Box (residuals)", "Durbin-Watson (residuals)", "ADF levels (null: unit root)",
            "KPSS levels (null: stationary)", "Engle-Granger cointegration (null: none)", "AIC", "BIC",
            "verdict"} <= set(table["test"])  # fmt: skip
    assert json.loads((folder / "summary.json").read_text())["diagnostics_verdict"] == summary["diagnostics_verdict"]
    assert (folder / "bootstrap.csv").is_file()
    assert (folder / "derived.csv").is_file()
    assert (folder / "figures" / "residuals.svg").is_file()


BASE = """
[experiment]
name = "cal"
model = "MODEL"

[data]
file = "d.csv"
columns = { x = "arms X" }
units = "u"

[calibration]
parameters = { "grievance g" = { initial = 1, bounds = [0, 5] } }
"""


def _config(tmp_path: Path, body: str = BASE, data: str = "year,x\n0,1\n1,2\n2,3\n") -> Path:
    (tmp_path / "d.csv").write_text(data, encoding="utf-8")
    path = tmp_path / "cal.toml"
    path.write_text(body.replace("MODEL", (MODELS / "richardson.mdl").as_posix()), encoding="utf-8")
    return path


def test_a_small_config_fits_with_default_time(tmp_path: Path) -> None:
    spec = load_calibration(_config(tmp_path))
    assert (spec.time.initial, spec.time.final, spec.time.saveper) == (0, 2, 1)
    assert spec.parameters[0].name == "grievance g"
    result = calibrate(spec)
    assert result.summary["n_observations"] == 3


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (("[data]", "[data]\nkindd = 'csv'"), "data.kindd: unknown key; did you mean 'kind'?"),
        (('"arms X"', '"arms Z"'), "unknown variable 'arms Z'"),
        (('units = "u"', ""), "data.units: missing; a CSV does not say its units"),
        (("x = ", "y = "), "no column 'y'"),
        (("[calibration]", "[calibration]\nloss = 'hubber'"), "unknown loss 'hubber'; did you mean 'huber'?"),
        (("[calibration]", "[parameters]\n'grievance g' = 1\n[calibration]"), "also fixed in [parameters]"),
        (('"grievance g"', '"grievance gg"'), "richardson.mdl; did you mean 'grievance g'?"),
        (("bounds = [0, 5]", "bounds = [5, 0]"), "expected [low, high] with low < high"),
        (("initial = 1", "initial = 9"), "within the bounds"),
        (("[calibration]", "[time]\nsaveper = 0.7\n[calibration]"), "time.saveper"),
        (("[calibration]", "[calibration]\ninitial_values = { 'arms Y' = 'observed' }"), "is not observed"),
        (("[calibration]", "[calibration]\ninitial_values = { 'grievance g' = 'observed' }"), "not a stock"),
    ],
)
def test_config_errors_name_the_key(tmp_path: Path, edit: tuple[str, str], expected: str) -> None:
    body = BASE.replace(*edit, 1)
    with pytest.raises(ConfigError, match=r"cal\.toml") as info:
        load_calibration(_config(tmp_path, body))
    assert expected in str(info.value)


def test_data_errors_are_reported_as_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"column 'x', line 3: 'two', which is not a number"):
        load_calibration(_config(tmp_path, data="year,x\n0,1\n1,two\n"))


def test_initial_values_fitted_from_the_first_observation(tmp_path: Path) -> None:
    body = BASE.replace("[calibration]", "[calibration]\ninitial_values = { 'arms X' = { bounds = [0, 10] } }")
    spec = load_calibration(_config(tmp_path, body, data="year,x\n0,4\n1,4.5\n2,5\n3,5.2\n"))
    fitted = {p.name: p for p in spec.parameters}
    assert fitted["initial arms X"].initial == 4
    assert fitted["initial arms X"].stock == "arms X"
    result = calibrate(spec)
    assert result.estimates.loc["initial arms X", "estimate"] == pytest.approx(4, abs=0.5)


def test_data_mapping_error_is_not_followed_by_spurious_messages(tmp_path: Path) -> None:
    body = BASE.replace("[calibration]", "[calibration]\ninitial_values = { 'arms X' = { bounds = [0, 10] } }")
    body = body.replace("x = ", "y = ", 1)
    with pytest.raises(ConfigError) as info:
        load_calibration(_config(tmp_path, body))
    assert "no column 'y'" in str(info.value)
    assert "is not observed" not in str(info.value)


def test_near_bound_is_relative_to_the_bounds_scale() -> None:
    flags = near_bound(np.array([4.6e-18, 1.2e-10, 0.3, 2.9999999, 1e-10, 5.0]), np.array([0, 0, 0, 0, 0, 0.0]),
                       np.array([3, 3, 3, 3, 1e-9, np.inf]))  # fmt: skip
    assert flags.tolist() == [True, True, False, True, False, False]


def test_stability_verdict_rules() -> None:
    assert stability_verdict(3.58e-20, (-1.0, 1.0), 0.01)[0] == "indeterminate"
    assert stability_verdict(3.58e-20, (1e-20, 1e-19), 0.01)[0] == "indeterminate"  # noise, however tight
    assert stability_verdict(0.05, (0.01, 0.09), 0.1)[0] == "stable"
    assert stability_verdict(-0.05, (-0.09, -0.01), 0.1)[0] == "unstable"
    assert stability_verdict(0.05, (-0.01, 0.11), 0.1)[0] == "indeterminate"
    assert stability_verdict(0.05, (0.01, 0.09), 0.1, (-0.02, 0.1))[0] == "indeterminate"
    assert stability_verdict(0.05, (math.nan, math.nan), 0.1)[0] == "indeterminate"


#: Known systems (k, l, a, b): ab - kl = 0.06 (stable), -0.06 (unstable) and 0 (borderline).
SYSTEMS = {
    "stable": (0.15, 0.1, 0.3, 0.25),
    "unstable": (0.3, 0.25, 0.15, 0.1),
    "indeterminate": (0.2, 0.3, 0.3, 0.2),
}


@pytest.mark.parametrize("expected", list(SYSTEMS))
def test_verdicts_on_known_systems_over_seeds(expected: str) -> None:
    truth = {**TRUTH, **dict(zip(list(TRUTH)[:4], SYSTEMS[expected], strict=True))}
    time = TimeSettings(0, 20, 0.0625, 1.0, "Year")
    model = load_model(MODELS / "richardson.mdl")
    clean = model.simulate({**truth, **START}, time, ["arms X", "arms Y"])
    verdicts = []
    for seed in range(8):
        rng = np.random.default_rng(seed)
        observed = pd.DataFrame({n: v + rng.normal(0, 0.1, v.size) for n, v in clean.items()}, index=time.save_times())
        fit = fit_trajectories(model, observed, GUESSES, time, fixed=START)
        found = richardson_stability(fit.estimates, fit.covariance, fit.statistics["dof"], truth)
        verdicts.append(found["verdict"])
    # A 95% interval excludes zero on a borderline system about 1 time in 20: allow one miss in eight.
    assert verdicts.count(expected) >= 7, verdicts
    if expected != "indeterminate":
        wrong = "unstable" if expected == "stable" else "stable"
        assert wrong not in verdicts, verdicts


def test_two_independent_random_walks_are_flagged_as_likely_spurious() -> None:
    model = load_model(MODELS / "richardson.mdl")
    time = TimeSettings(0, 59, 0.0625, 1.0, "Year")
    flagged = 0
    for seed in range(6):
        rng = np.random.default_rng(seed)
        walks = pd.DataFrame(
            {"arms X": 50 + np.cumsum(rng.normal(0, 1, 60)), "arms Y": 50 + np.cumsum(rng.normal(0, 1, 60))},
            index=time.save_times(),
        )
        fit = fit_trajectories(model, walks, GUESSES, time, fixed={"initial arms X": 50.0, "initial arms Y": 50.0})
        found = diagnose(walks, fit.fit, fit.statistics["n_parameters"])
        flagged += "likely spurious" in found["verdict"]
    # Each of the unit-root and cointegration tests errs 1 time in 20 at most: allow one miss in six.
    assert flagged >= 5


def test_stationary_series_are_not_flagged() -> None:
    rng = np.random.default_rng(0)
    obs = pd.DataFrame({"arms X": rng.normal(10, 1, 80), "arms Y": rng.normal(5, 1, 80)}, index=np.arange(80.0))
    fit = pd.concat(
        [pd.DataFrame({"variable": c, "time": obs.index, "residual": obs[c] - obs[c].mean()}) for c in obs],
        ignore_index=True,
    )
    found = diagnose(obs, fit, 2)
    assert found["verdict"].startswith("series are stationary")
    assert found["series"]["arms X"]["order"] == "I(0)"
